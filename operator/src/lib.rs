//! The KubeKMS operator: reconcilers for KmsKey (material, enable/disable, rotation,
//! scheduled deletion behind a finalizer), KmsAlias and KmsGrant, plus the runtime around
//! them (leader election on a Lease, metrics over HTTP, graceful shutdown).
//!
//! Key material is generated here, wrapped at once under the root key and stored only in
//! the wrapped form in a KmsKeyMaterial record. Plaintext material never reaches a log line,
//! an error, an Event or a status.

use std::sync::Arc;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kms_core::ArnScope;
use kms_core::keystore::RootKeyStore;
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::runtime::reflector::store::Writer;

pub mod alias;
pub mod clients;
pub mod clock;
pub mod events;
pub mod grant;
pub mod key;
pub mod leader;
pub mod liveness;
pub mod metrics;
pub mod migrate;
pub mod protection;
pub mod reencrypt;
pub mod root_key;
pub mod run;
pub mod server;
#[cfg(any(test, feature = "test-util"))]
pub mod test_util;

pub use clock::{Clock, OffsetFileClock, SystemClock, TestClock};
pub use metrics::Metrics;

/// The field manager of every write the operator makes (status by server-side apply).
pub const FIELD_MANAGER: &str = "kubekms-operator";

/// Writes `status` by server-side apply, only when it differs from the object's (a write
/// would trigger another reconciliation). One writer for every kind, so every status has
/// the same field manager.
///
/// # Errors
/// The API server's error.
pub async fn apply_status<K, S>(
    api: &kube::Api<K>,
    object: &K,
    current: Option<&S>,
    status: &S,
) -> Result<(), Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: serde::Serialize + PartialEq,
{
    if current == Some(status) {
        return Ok(());
    }
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &kube::ResourceExt::name_any(object),
        &kube::api::PatchParams::apply(FIELD_MANAGER).force(),
        &kube::api::Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// What every reconciler needs.
pub struct Context {
    /// The Kubernetes client of calls (reads and writes).
    pub client: Client,
    /// The Kubernetes client of watches (see [`clients`]: a read timeout longer than a
    /// quiet watch lasts). The same as `client` unless [`Context::with_watch_client`] sets it.
    pub watch_client: Client,
    /// The root key that wraps all material.
    pub root_keys: Arc<dyn RootKeyStore>,
    /// Partition and region of the ARNs.
    pub scope: ArnScope,
    /// The time source (moved by tests).
    pub clock: Arc<dyn Clock>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Publishes Events.
    pub recorder: Recorder,
    /// The plugins' heartbeat Leases (see [`kubekms_k8s::heartbeat`]), kept by the
    /// reflector that [`run::run_controllers`] starts.
    pub plugin_leases: Store<Lease>,
    /// When this process last saw each heartbeat Lease change (liveness on this process's
    /// monotonic clock, never the plugins' `renewTime`).
    pub lease_observer: Arc<liveness::LeaseObserver>,
    /// The writer of [`Self::plugin_leases`], taken once by whoever runs the reflector.
    lease_writer: std::sync::Mutex<Option<Writer<Lease>>>,
    /// The Namespaces (their `kubekms.io/account-id` annotations give the account ids
    /// that ARNs carry), kept by the reflector that [`run::run_controllers`] starts.
    pub namespaces: Store<Namespace>,
    /// The writer of [`Self::namespaces`], taken once by whoever runs the reflector.
    namespace_writer: std::sync::Mutex<Option<Writer<Namespace>>>,
    /// How fast Secrets may be re-encrypted after a rotation (ceilings).
    pub reencryption: reencrypt::ReencryptConfig,
    /// How many Secret rewrites may be in flight, adapted to kube-apiserver's answers
    /// (shared by every pass: they load the same API server).
    pub reencrypt_limit: std::sync::Mutex<reencrypt::AdaptiveLimit>,
    /// The client of the Secret rewrites: without kube-client's own retries of 429, 503
    /// and 504, which are the adaptive limit's signals (see [`clients::Clients::rewrites`]).
    pub rewrite_client: Client,
}

impl Context {
    /// A context whose Events are reported by `instance` of the kubekms-operator.
    #[must_use]
    pub fn new(
        client: Client,
        root_keys: Arc<dyn RootKeyStore>,
        scope: ArnScope,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        instance: Option<String>,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.to_owned(),
                instance,
            },
        );
        let writer = Writer::default();
        let reencryption = reencrypt::ReencryptConfig::default();
        let namespace_writer = Writer::default();
        Self {
            watch_client: client.clone(),
            rewrite_client: client.clone(),
            client,
            root_keys,
            scope,
            clock,
            metrics,
            recorder,
            plugin_leases: writer.as_reader(),
            lease_observer: Arc::new(liveness::LeaseObserver::new()),
            lease_writer: std::sync::Mutex::new(Some(writer)),
            namespaces: namespace_writer.as_reader(),
            namespace_writer: std::sync::Mutex::new(Some(namespace_writer)),
            reencrypt_limit: std::sync::Mutex::new(reencrypt::AdaptiveLimit::new(
                reencryption.max_in_flight,
            )),
            reencryption,
        }
    }

    /// This context, re-encrypting within `config` and rewriting Secrets through `client`
    /// (one that does not retry 429, 503 and 504 itself: [`clients::Clients::rewrites`]).
    #[must_use]
    pub fn with_reencryption(mut self, config: reencrypt::ReencryptConfig, client: Client) -> Self {
        self.reencrypt_limit =
            std::sync::Mutex::new(reencrypt::AdaptiveLimit::new(config.max_in_flight));
        self.reencryption = config;
        self.rewrite_client = client;
        self
    }

    /// This context, watching through `client` (see [`clients`]).
    #[must_use]
    pub fn with_watch_client(mut self, client: Client) -> Self {
        self.watch_client = client;
        self
    }

    /// The writer that fills [`Self::namespaces`]; `None` after the first call.
    pub fn take_namespace_writer(&self) -> Option<Writer<Namespace>> {
        match self.namespace_writer.lock() {
            Ok(mut writer) => writer.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        }
    }

    /// The 12-digit account id of `namespace` that ARNs carry: its Namespace's
    /// `kubekms.io/account-id` annotation, or derived from its name (also while the
    /// Namespace is not in the store yet; its arrival requeues the namespace's keys).
    #[must_use]
    pub fn account_id(&self, namespace: &str) -> String {
        let object = self
            .namespaces
            .get(&kube::runtime::reflector::ObjectRef::new(namespace));
        let (account, problem) = match object {
            Some(object) => kubekms_k8s::account::account_id_of(&object),
            None => kubekms_k8s::account::account_id(namespace, None),
        };
        if let Some(problem) = problem {
            tracing::warn!(%problem, "namespace account id");
        }
        account
    }

    /// The writer that fills [`Self::plugin_leases`]; `None` after the first call.
    pub fn take_lease_writer(&self) -> Option<Writer<Lease>> {
        match self.lease_writer.lock() {
            Ok(mut writer) => writer.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        }
    }
}

/// Why a reconciliation failed (it is retried with a back-off).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the API server failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A key operation failed. kms-core errors never carry material.
    #[error("{name}: {0}", name = .0.aws_exception_name())]
    Kms(#[from] kms_core::KmsError),
    /// A KmsKeyMaterial record does not parse or does not match its key.
    #[error("KmsKeyMaterial record: {0}")]
    Record(#[from] kubekms_k8s::convert::ConvertError),
    /// The finalizer helper failed (adding or removing the finalizer, or the cleanup).
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// The KmsKeyMaterial record holds another key than the one the KmsKey recorded.
    #[error("the KmsKeyMaterial record holds key {found}, the KmsKey is key {recorded}")]
    RecordMismatch {
        /// The key id the KmsKey's status recorded.
        recorded: String,
        /// The key id in the record.
        found: String,
    },
    /// Generating or wrapping material on a blocking thread did not finish (it panicked).
    #[error("material generation: {0}")]
    Generation(#[from] tokio::task::JoinError),
    /// An API call did not answer in time (the call client's read timeout is the usual
    /// bound; writes that decide a key's state are bounded here as well).
    #[error("{0} did not answer within {1:?}")]
    Timeout(&'static str, std::time::Duration),
    /// The object lacks a field the API server always sets.
    #[error("object has no {0}")]
    MissingField(&'static str),
    /// Serialization of a patch failed.
    #[error("serialization: {0}")]
    Json(#[from] serde_json::Error),
    /// A Secret rewrite of a re-encryption pass failed in a way that fails its page (a
    /// server error, or overload that did not pass); the page is retried.
    #[error("rewriting a Secret: HTTP {code}: {message}")]
    SecretRewrite {
        /// The HTTP status.
        code: u16,
        /// What kube-apiserver said, shortened.
        message: String,
    },
}
