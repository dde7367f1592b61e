//! Wiring: the root key, the Kubernetes clients (with read timeouts, see
//! [`kubekms_keyring::client`]), the keyring (KmsKeys, records, aliases, grants and the
//! plugins' heartbeats), the Namespaces' accounts, the three seams, the audit log and the
//! metrics, then [`crate::serve`] until shutdown. /readyz answers 200 only once the keyring
//! and the Namespaces have been listed.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keystore_pkcs11::args::{PreviousRootKeyArgs, RootKeyLocation, open_with_previous};
use kms_core::ArnScope;
use kms_core::keystore::RootKeyStore;
use kubekms_keyring::client::{self, ClientError};
use kubekms_keyring::{Keyring, KeyringConfig, KeyringMetrics, Scope, WatchTimeouts};
use tokio::sync::watch;

use crate::audit::AuditLog;
use crate::auth::{SessionSealer, StaticCredentials};
use crate::kubernetes::accounts;
use crate::kubernetes::authorizer::{AuthorizerConfig, KubeAuthorizer};
use crate::kubernetes::directory::{KeyringDirectory, ViewBuilder};
use crate::kubernetes::metrics::KubernetesMetrics;
use crate::kubernetes::review::KubeTokenReviewer;
use crate::metrics::ServerMetrics;
use crate::server::{
    Dependencies, Readiness, ServeError, Server, ServerConfig, Transport, system_clock,
};

/// Where audit records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditTarget {
    /// Standard output.
    Stdout,
    /// Appended to this file (created with mode 0600).
    File(PathBuf),
}

/// What the server runs with (the binary's flags).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The root key: a file, or root keys in a PKCS#11 token.
    pub root_key: RootKeyLocation,
    /// During a migration to `root_key`: the old root key file, which still unwraps the
    /// material not yet rewrapped.
    pub previous_root_key: PreviousRootKeyArgs,
    /// A kubeconfig; none: in-cluster, else `$KUBECONFIG` / `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// The API address.
    pub listen: SocketAddr,
    /// TLS or plain HTTP.
    pub transport: Transport,
    /// /healthz, /readyz and /metrics.
    pub health_listen: Option<SocketAddr>,
    /// ARN partition and region (the region also scopes SigV4).
    pub scope: ArnScope,
    /// The static credentials file.
    pub static_credentials: Option<PathBuf>,
    /// Audiences a web identity token must be bound to.
    pub sts_audiences: Vec<String>,
    /// How long an RBAC decision is reused.
    pub authz_cache: Duration,
    /// Where audit records go.
    pub audit: AuditTarget,
    /// Serve one namespace only.
    pub namespace: Option<String>,
    /// Read timeout of request/response calls (reviews), and the bound of each review.
    pub api_timeout: Duration,
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The root key could not be opened (the store's error names the file or token).
    #[error("{error}")]
    RootKey {
        /// Its path.
        path: String,
        /// Why.
        error: kms_core::KmsError,
    },
    /// No Kubernetes client.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The static credentials file.
    #[error("static credentials: {0}")]
    Credentials(#[from] crate::auth::credentials::CredentialsError),
    /// The audit log could not be opened.
    #[error("audit log {path}: {error}")]
    Audit {
        /// Its path.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// Serving failed.
    #[error(transparent)]
    Serve(#[from] ServeError),
}

fn open_audit(target: &AuditTarget) -> Result<AuditLog, RunError> {
    match target {
        AuditTarget::Stdout => {
            AuditLog::to_writer(std::io::stdout()).map_err(|error| RunError::Audit {
                path: "-".to_owned(),
                error,
            })
        }
        AuditTarget::File(path) => {
            use std::os::unix::fs::OpenOptionsExt as _;
            let failed = |error| RunError::Audit {
                path: path.display().to_string(),
                error,
            };
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .map_err(failed)?;
            AuditLog::to_writer(file).map_err(failed)
        }
    }
}

/// Runs the server until `shutdown` completes.
///
/// # Errors
/// [`RunError`]: what could not be set up, or a bind/TLS error.
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    // The PKCS#11 store's calls block; opening it is one C_Sign after the login, and
    // the sealer derives its key once here.
    let root: Arc<dyn RootKeyStore> =
        open_with_previous(&settings.root_key, &settings.previous_root_key).map_err(|error| {
            RunError::RootKey {
                path: settings.root_key.to_string(),
                error,
            }
        })?;
    let sealer =
        SessionSealer::from_root_store(root.as_ref()).map_err(|error| RunError::RootKey {
            path: settings.root_key.to_string(),
            error,
        })?;
    let credentials = match &settings.static_credentials {
        Some(path) => StaticCredentials::load(path)?,
        None => StaticCredentials::empty(),
    };
    let audit = open_audit(&settings.audit)?;

    let config = client::load_config(settings.kubeconfig.as_deref()).await?;
    let timeouts = WatchTimeouts::default();
    let keyring_metrics = Arc::new(KeyringMetrics::new());
    let kubernetes_metrics = Arc::new(KubernetesMetrics::new());
    let watches = client::watch_client(&config, &timeouts, keyring_metrics.clone())?;
    let calls = client::call_client(&config, settings.api_timeout)?;

    let scope = match &settings.namespace {
        Some(namespace) => Scope::Namespace(namespace.clone()),
        None => Scope::AllNamespaces,
    };
    let keyring_config = KeyringConfig {
        timeouts: timeouts.clone(),
        ..KeyringConfig::new(scope)
            .with_aliases()
            .with_grants()
            .with_heartbeats()
    };
    let (keyring, keys) = Keyring::start_with_metrics(
        watches.clone(),
        root.clone(),
        keyring_config,
        keyring_metrics.clone(),
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let timeout_seconds =
        u32::try_from(timeouts.server_timeout.as_secs().max(1)).unwrap_or(u32::MAX);
    let (accounts, mut namespaces_listed, namespace_task) = accounts::spawn(
        watches,
        settings.namespace.clone(),
        timeout_seconds,
        kubernetes_metrics.clone(),
        stop_rx.clone(),
    );
    let (mut views, view_task) =
        ViewBuilder::spawn(settings.scope.clone(), keys, accounts, root.clone());
    let directory = Arc::new(KeyringDirectory::new(settings.scope.clone(), views.clone()));
    let authorizer = Arc::new(KubeAuthorizer::new(
        calls.clone(),
        directory.clone(),
        AuthorizerConfig {
            cache_ttl: settings.authz_cache,
            review_timeout: settings.api_timeout,
            ..AuthorizerConfig::default()
        },
        kubernetes_metrics.clone(),
    ));
    let reviewer = Arc::new(KubeTokenReviewer::new(
        calls,
        settings.api_timeout,
        kubernetes_metrics.clone(),
    ));

    let readiness = Readiness::new(false);
    let ready = readiness.clone();
    let mut stop = stop_rx.clone();
    let readiness_task = tokio::spawn(async move {
        loop {
            let synced = views.borrow_and_update().key_set().is_ready();
            if synced && *namespaces_listed.borrow_and_update() {
                tracing::info!("keyring and Namespaces listed: ready");
                ready.set(true);
                return;
            }
            tokio::select! {
                changed = views.changed() => if changed.is_err() { return },
                changed = namespaces_listed.changed() => if changed.is_err() { return },
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    });

    let metrics = Arc::new(ServerMetrics::with_extra(|registry| {
        keyring_metrics.register(registry.sub_registry_with_prefix("keyring"));
        kubernetes_metrics.register(registry.sub_registry_with_prefix("kubernetes"));
    }));
    let mut server_config = ServerConfig::new(
        settings.listen,
        settings.transport.clone(),
        settings.scope.region.clone(),
    );
    server_config.partition = settings.scope.partition.clone();
    server_config.health_listen = settings.health_listen;
    server_config.sts.audiences = settings.sts_audiences.clone();
    server_config.sts.review_timeout = settings.api_timeout;
    // The review's own bound answers first (DependencyTimeout, not cached).
    server_config.authorize_timeout = settings.api_timeout + Duration::from_secs(1);
    let dependencies = Dependencies {
        directory,
        authorizer,
        reviewer,
        sealer: Arc::new(sealer),
        credentials: Arc::new(credentials),
        audit,
        readiness,
        clock: system_clock(),
    };
    let server = Server::bind_with_metrics(server_config, dependencies, metrics).await;
    let served = match server {
        Ok(server) => {
            tracing::info!(
                listen = %server.local_addr().map_or_else(|_| "?".to_owned(), |a| a.to_string()),
                health = %server.health_addr().map_or_else(|| "none".to_owned(), |a| a.to_string()),
                root_key = root.root_key_id(),
                region = settings.scope.region,
                partition = settings.scope.partition,
                namespace = settings.namespace.as_deref().unwrap_or("(all)"),
                "kubekms-server serving"
            );
            server.run(shutdown).await
        }
        Err(error) => Err(error),
    };
    let _ = stop_tx.send(true);
    keyring.shutdown().await;
    let _ = namespace_task.await;
    let _ = readiness_task.await;
    view_task.abort();
    served.map_err(RunError::from)
}
