//! Kubernetes clients with timeouts, and why there are two.
//!
//! kube 5 sets no read timeout by default (`Config::read_timeout` is `None`), so a call to
//! an API server that accepted the connection and then stopped answering never returns.
//! The read timeout is an inactivity timeout on the connection (each read that returns
//! data restarts it), so it also cuts a watch that is merely quiet: a watch on objects
//! that do not change receives nothing between bookmarks, and kube-apiserver sends a
//! bookmark about once a minute. One timeout cannot fit both, hence:
//!
//! - [`watch_client`]: for the keyring's list and watch calls. Each watch request asks the
//!   server to end it after [`crate::WatchTimeouts::server_timeout`] (`timeoutSeconds`);
//!   kube's watcher then renews it from the last resourceVersion (no re-list), and treats
//!   a stream silent for that timeout + 5 s as dead. The read timeout is twice the server
//!   timeout: it never fires on a healthy quiet watch (each request ends before it), and it
//!   bounds a list call that hangs.
//! - [`call_client`]: for request/response calls (the plugin's heartbeat Lease patch, the
//!   server's reviews and writes), with a short read timeout. Callers still bound each call
//!   with `tokio::time::timeout` ([`bounded`]): the read timeout does not cover a stalled
//!   TLS handshake or a server that trickles bytes.
//!
//! Both reset the read timer when a request is written (`reset_reader_on_write`), so the
//! time a pooled connection sat idle does not count against the next response.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::metrics::KeyringMetrics;

/// Read timeout of [`call_client`] when none is given.
pub const CALL_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Why no client could be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The kubeconfig could not be read or used.
    #[error("kubeconfig {path}: {reason}")]
    Kubeconfig {
        /// Its path.
        path: String,
        /// Why.
        reason: String,
    },
    /// Neither an in-cluster config nor `$KUBECONFIG` / `~/.kube/config`.
    #[error("no in-cluster config or KUBECONFIG: {0}")]
    Infer(String),
    /// The client could not be built from the config (TLS, auth).
    #[error("building the Kubernetes client: {0}")]
    Build(String),
}

/// The config of `kubeconfig`, or the in-cluster config, else `$KUBECONFIG` /
/// `~/.kube/config`.
///
/// # Errors
/// [`ClientError::Kubeconfig`], [`ClientError::Infer`].
pub async fn load_config(kubeconfig: Option<&Path>) -> Result<Config, ClientError> {
    match kubeconfig {
        Some(path) => {
            let shown = path.display().to_string();
            let kc = Kubeconfig::read_from(path).map_err(|e| ClientError::Kubeconfig {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| ClientError::Kubeconfig {
                    path: shown,
                    reason: e.to_string(),
                })
        }
        None => Config::infer()
            .await
            .map_err(|e| ClientError::Infer(e.to_string())),
    }
}

fn with_read_timeout(config: &Config, read_timeout: Duration) -> Config {
    let mut config = config.clone();
    config.read_timeout = Some(read_timeout);
    config.reset_reader_on_write = true;
    config
}

/// A client for the keyring's watches: read timeout `2 × server_timeout`, and every watch
/// request counted in `metrics.watch_requests`.
///
/// # Errors
/// [`ClientError::Build`].
pub fn watch_client(
    config: &Config,
    timeouts: &crate::WatchTimeouts,
    metrics: Arc<KeyringMetrics>,
) -> Result<Client, ClientError> {
    let config = with_read_timeout(config, timeouts.read_timeout());
    let builder = kube::client::ClientBuilder::try_from(config)
        .map_err(|e| ClientError::Build(e.to_string()))?;
    let count =
        tower::util::MapRequestLayer::new(move |request: http::Request<kube::client::Body>| {
            if request
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|p| p == "watch=true"))
            {
                metrics.watch_requests.inc();
            }
            request
        });
    Ok(builder.with_layer(&count).build())
}

/// A client for request/response calls, with read timeout `read_timeout`.
///
/// # Errors
/// [`ClientError::Build`].
pub fn call_client(config: &Config, read_timeout: Duration) -> Result<Client, ClientError> {
    Client::try_from(with_read_timeout(config, read_timeout))
        .map_err(|e| ClientError::Build(e.to_string()))
}

/// A call that did not answer within its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no answer within {0:?}")]
pub struct TimedOut(pub Duration);

/// Runs `call`, giving up after `limit`: the future is dropped (the request cancelled),
/// so a hung API server cannot hold the caller.
///
/// # Errors
/// [`TimedOut`].
pub async fn bounded<T>(limit: Duration, call: impl Future<Output = T>) -> Result<T, TimedOut> {
    tokio::time::timeout(limit, call)
        .await
        .map_err(|_| TimedOut(limit))
}
