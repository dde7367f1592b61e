//! The servers: KMS v2 gRPC on a Unix socket (mode 0600) and HTTP for /healthz, /readyz
//! and /metrics; the reloader of the state folder (periodic, and at once when a Decrypt
//! met a key or version not in memory); graceful shutdown.

use std::future::Future;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::error::PluginError;
use crate::http2::AnyAuthority;
use crate::pb::key_management_service_server::KeyManagementServiceServer;
use crate::service::Plugin;

/// Makes `path` free for a new socket: removes a stale socket, refuses to delete
/// anything that is not a socket, and refuses a socket that another process still serves.
///
/// # Errors
/// `Socket` with the reason.
pub async fn clear_stale_socket(path: &Path) -> Result<(), PluginError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PluginError::Socket(format!("{}: {e}", path.display()))),
        Ok(meta) if !meta.file_type().is_socket() => Err(PluginError::Socket(format!(
            "{} exists and is not a socket; refusing to delete it",
            path.display()
        ))),
        Ok(_) => {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Err(PluginError::Socket(format!(
                    "{} is in use by a running process; refusing to take it over",
                    path.display()
                )));
            }
            tracing::info!(socket = %path.display(), "removing stale socket");
            std::fs::remove_file(path)
                .map_err(|e| PluginError::Socket(format!("removing stale {}: {e}", path.display())))
        }
    }
}

/// Binds a Unix socket with mode 0600 (the umask is tightened during bind, so the socket
/// is never reachable by others, not even for an instant).
///
/// # Errors
/// `Socket` with the reason.
pub async fn bind_socket(path: &Path) -> Result<UnixListener, PluginError> {
    clear_stale_socket(path).await?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| PluginError::Socket(format!("creating {}: {e}", parent.display())))?;
    }
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let listener = UnixListener::bind(path);
    rustix::process::umask(old);
    let listener =
        listener.map_err(|e| PluginError::Socket(format!("binding {}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| PluginError::Socket(format!("chmod 600 {}: {e}", path.display())))?;
    Ok(listener)
}

/// Removes the socket file if it is still a socket.
pub fn remove_socket(path: &Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
        && let Err(e) = std::fs::remove_file(path)
    {
        tracing::warn!(socket = %path.display(), error = %e, "could not remove the socket");
    }
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The Unix socket kube-apiserver connects to.
    pub socket: PathBuf,
    /// Where /healthz, /readyz and /metrics listen (loopback recommended), if anywhere.
    pub http_addr: Option<SocketAddr>,
    /// How often the state folder is checked for changes (also soon after a Decrypt of a
    /// key or version not in memory).
    pub reload_interval: Duration,
}

#[derive(Clone)]
struct HttpState {
    plugin: Plugin,
    serving: Arc<AtomicBool>,
}

async fn check(plugin: &Plugin) -> (StatusCode, String) {
    let plugin = plugin.clone();
    match tokio::task::spawn_blocking(move || plugin.health()).await {
        Ok(Ok(())) => (StatusCode::OK, "ok\n".to_owned()),
        Ok(Err(reason)) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("health check failed: {e}\n"),
        ),
    }
}

async fn healthz(State(s): State<HttpState>) -> impl IntoResponse {
    check(&s.plugin).await
}

async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    if !s.serving.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not serving the socket\n".to_owned(),
        );
    }
    check(&s.plugin).await
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.plugin.metrics().encode(),
    )
}

/// The HTTP router for /healthz, /readyz and /metrics.
fn http_router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serves until `shutdown` resolves, then stops accepting, finishes in-flight calls and
/// removes the socket.
///
/// # Errors
/// Binding or serving errors.
pub async fn serve(
    plugin: Plugin,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), PluginError> {
    let listener = bind_socket(&config.socket).await?;
    let serving = Arc::new(AtomicBool::new(true));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    let http = match config.http_addr {
        Some(addr) => {
            let tcp = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| PluginError::Http(format!("binding {addr}: {e}")))?;
            tracing::info!(addr = %tcp.local_addr().map_or(addr, |a| a), "HTTP /healthz /readyz /metrics");
            let router = http_router(HttpState {
                plugin: plugin.clone(),
                serving: serving.clone(),
            });
            let mut rx = stop_rx.clone();
            Some(tokio::spawn(async move {
                let stop = async move {
                    let _ = rx.wait_for(|s| *s).await;
                };
                if let Err(e) = axum::serve(tcp, router).with_graceful_shutdown(stop).await {
                    tracing::error!(error = %e, "HTTP server failed");
                }
            }))
        }
        None => None,
    };

    let reloader = tokio::spawn(reload_loop(
        plugin.clone(),
        config.reload_interval,
        stop_rx.clone(),
    ));

    tracing::info!(
        socket = %config.socket.display(),
        key_id = %plugin.ring().key_id(),
        "serving KMS v2 on the Unix socket"
    );
    let stop_tx2 = stop_tx.clone();
    let result = tonic::transport::Server::builder()
        .add_service(KeyManagementServiceServer::new(plugin))
        .serve_with_incoming_shutdown(accept_any_authority(listener), async move {
            shutdown.await;
            tracing::info!("shutting down");
            let _ = stop_tx2.send(true);
        })
        .await;
    serving.store(false, Ordering::SeqCst);
    let _ = stop_tx.send(true);
    remove_socket(&config.socket);
    let _ = reloader.await;
    if let Some(h) = http {
        let _ = h.await;
    }
    result.map_err(|e| PluginError::Socket(format!("serving {}: {e}", config.socket.display())))
}

/// The socket's connections, each read through [`AnyAuthority`] so that h2 accepts the
/// `:authority` of every gRPC client (see [`crate::http2`]).
fn accept_any_authority(
    listener: UnixListener,
) -> impl futures::Stream<Item = std::io::Result<AnyAuthority<tokio::net::UnixStream>>> {
    use futures::StreamExt as _;
    UnixListenerStream::new(listener).map(|conn| conn.map(AnyAuthority::new))
}

/// The shortest time between two reloads that Decrypts asked for: a flood of ciphertexts
/// of unknown keys must not turn into a flood of folder reads.
pub const RELOAD_REQUEST_MIN_GAP: Duration = Duration::from_millis(250);

/// Reloads the state folder every `interval`, and soon after a Decrypt asked for it, until
/// `stop`. Reloads run on the blocking pool (they read files and unwrap changed records).
async fn reload_loop(
    plugin: Plugin,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut last = Instant::now();
    loop {
        let requested = tokio::select! {
            () = tokio::time::sleep(interval) => false,
            () = plugin.reload_requested() => true,
            _ = stop.wait_for(|s| *s) => break,
        };
        let since = last.elapsed();
        if requested && since < RELOAD_REQUEST_MIN_GAP {
            tokio::select! {
                () = tokio::time::sleep(RELOAD_REQUEST_MIN_GAP - since) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        let p = plugin.clone();
        let _ = tokio::task::spawn_blocking(move || p.refresh()).await;
        last = Instant::now();
    }
}

/// Resolves on SIGTERM or SIGINT.
///
/// # Errors
/// When the signal handlers cannot be installed.
pub fn shutdown_signal() -> Result<impl Future<Output = ()> + Send + 'static, PluginError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| PluginError::Signal(format!("installing a SIGTERM handler: {e}")))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| PluginError::Signal(format!("installing a SIGINT handler: {e}")))?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
    })
}
