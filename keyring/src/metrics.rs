//! What the keyring counts, as Prometheus metrics that a binary registers under its own
//! prefix ([`KeyringMetrics::register`]) and tests read directly.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The keyring's counters. Cheap to share; every field is an atomic.
#[derive(Debug, Default)]
pub struct KeyringMetrics {
    /// Material versions unwrapped (and parsed) under the root key.
    pub unwraps: Counter,
    /// Records found unusable (counted once per distinct problem).
    pub unwrap_failures: Counter,
    /// Snapshots built and published.
    pub snapshots: Counter,
    /// Watch requests sent to kube-apiserver (each ends at the server's timeout, or earlier
    /// on an error, and is renewed from the last resourceVersion).
    pub watch_requests: Counter,
    /// Errors of the watches (list or watch failed, connection lost); each is retried with
    /// the watcher's back-off.
    pub watch_errors: Counter,
    /// Keys in the last snapshot that unwrapped and resolve by key id.
    pub usable_keys: Gauge,
    /// 1 once every configured watch has listed.
    pub ready: Gauge,
}

impl KeyringMetrics {
    /// Fresh counters.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers every metric in `registry` (prefix it with a sub-registry, e.g.
    /// `registry.sub_registry_with_prefix("keyring")`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "unwraps",
            "Material versions unwrapped under the root key",
            self.unwraps.clone(),
        );
        registry.register(
            "unwrap_failures",
            "KmsKeyMaterial records found unusable (wrong root key, tampered, moved)",
            self.unwrap_failures.clone(),
        );
        registry.register(
            "snapshots",
            "Key set snapshots published",
            self.snapshots.clone(),
        );
        registry.register(
            "watch_requests",
            "Watch requests sent to kube-apiserver",
            self.watch_requests.clone(),
        );
        registry.register(
            "watch_errors",
            "Failed lists and watches (retried with back-off)",
            self.watch_errors.clone(),
        );
        registry.register(
            "usable_keys",
            "Keys of the last snapshot that unwrapped",
            self.usable_keys.clone(),
        );
        registry.register(
            "ready",
            "1 once every watch of the keyring has listed",
            self.ready.clone(),
        );
    }
}
