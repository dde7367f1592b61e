//! Prometheus metrics: reconciles, their durations and errors per controller, and keys by
//! state.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels naming a controller.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// `kmskey`, `kmsalias` or `kmsgrant`.
    pub controller: String,
}

/// Labels naming a key state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// The AWS key state.
    pub state: String,
}

/// Labels of the root key migration's record counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MigrationLabels {
    /// `moved` (under the primary root key) or `pending` (a version under a previous one).
    pub state: String,
}

/// Every metric of the operator, registered in one registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ControllerLabels, Counter>,
    errors: Family<ControllerLabels, Counter>,
    durations: Family<ControllerLabels, Histogram>,
    keys_by_state: Family<StateLabels, Gauge>,
    secrets_reencrypted: Counter,
    migration_records: Family<MigrationLabels, Gauge>,
    migration_versions: Counter,
    /// The last state seen per key (namespace/name), to recount keys by state.
    key_states: Mutex<HashMap<String, String>>,
    versions_promoted: Counter,
    promotions_waiting: Gauge,
    /// The keys (namespace/name) whose staged version waits for plugins.
    waiting_keys: Mutex<std::collections::HashSet<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn duration_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

impl Metrics {
    /// Fresh metrics.
    #[must_use]
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kubekms_operator");
        let reconciles = Family::<ControllerLabels, Counter>::default();
        let errors = Family::<ControllerLabels, Counter>::default();
        let durations = Family::<ControllerLabels, Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        let keys_by_state = Family::<StateLabels, Gauge>::default();
        registry.register("reconciles", "Reconciliations run", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciliations that failed",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconciliation",
            durations.clone(),
        );
        registry.register("keys", "KmsKeys by key state", keys_by_state.clone());
        let secrets_reencrypted = Counter::default();
        registry.register(
            "secrets_reencrypted",
            "Secrets rewritten under the current key after a rotation",
            secrets_reencrypted.clone(),
        );
        let migration_records = Family::<MigrationLabels, Gauge>::default();
        registry.register(
            "root_key_migration_records",
            "KmsKeyMaterial records under the primary root key (moved) or not yet (pending), at the last migration pass",
            migration_records.clone(),
        );
        let migration_versions = Counter::default();
        registry.register(
            "root_key_migration_versions",
            "Key versions rewrapped under the primary root key by the migration",
            migration_versions.clone(),
        );
        let versions_promoted = Counter::default();
        registry.register(
            "versions_promoted",
            "Staged material versions made current (every plugin serving the key held them)",
            versions_promoted.clone(),
        );
        let promotions_waiting = Gauge::default();
        registry.register(
            "promotions_waiting",
            "KmsKeys whose staged material version waits for plugins to hold it (see their VersionPromoted condition)",
            promotions_waiting.clone(),
        );
        Self {
            registry,
            versions_promoted,
            promotions_waiting,
            waiting_keys: Mutex::new(std::collections::HashSet::new()),
            migration_records,
            migration_versions,
            reconciles,
            errors,
            durations,
            keys_by_state,
            secrets_reencrypted,
            key_states: Mutex::new(HashMap::new()),
        }
    }

    fn labels(controller: &str) -> ControllerLabels {
        ControllerLabels {
            controller: controller.to_owned(),
        }
    }

    /// Counts a reconciliation of `controller` that took `seconds`.
    pub fn reconciled(&self, controller: &str, seconds: f64) {
        self.reconciles
            .get_or_create(&Self::labels(controller))
            .inc();
        self.durations
            .get_or_create(&Self::labels(controller))
            .observe(seconds);
    }

    /// Runs one reconciliation of `controller`, counting it, its duration and a failure.
    pub async fn measure<T, E>(
        &self,
        controller: &str,
        reconciliation: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let started = std::time::Instant::now();
        let result = reconciliation.await;
        self.reconciled(controller, started.elapsed().as_secs_f64());
        if result.is_err() {
            self.failed(controller);
        }
        result
    }

    /// Counts a failed reconciliation.
    pub fn failed(&self, controller: &str) {
        self.errors.get_or_create(&Self::labels(controller)).inc();
    }

    /// Counts Secrets rewritten by a re-encryption pass.
    pub fn secrets_reencrypted(&self, count: u64) {
        self.secrets_reencrypted.inc_by(count);
    }

    /// Records the counts of the last root key migration pass.
    pub fn root_key_migration_records(&self, moved: usize, pending: usize) {
        for (state, count) in [("moved", moved), ("pending", pending)] {
            self.migration_records
                .get_or_create(&MigrationLabels {
                    state: state.to_owned(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// Counts versions rewrapped by the root key migration.
    pub fn root_key_migration_versions(&self, count: u64) {
        self.migration_versions.inc_by(count);
    }

    /// Counts a staged version made current.
    pub fn version_promoted(&self) {
        self.versions_promoted.inc();
    }

    /// Records whether key `key` (namespace/name) has a staged version waiting for plugins.
    pub fn promotion_waiting(&self, key: &str, waiting: bool) {
        let mut keys = self
            .waiting_keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if waiting {
            keys.insert(key.to_owned());
        } else {
            keys.remove(key);
        }
        self.promotions_waiting
            .set(i64::try_from(keys.len()).unwrap_or(i64::MAX));
    }

    /// Records the state of a key (`None` when the key is gone) and recounts.
    pub fn key_state(&self, key: &str, state: Option<&str>) {
        let mut states = self
            .key_states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match state {
            Some(state) => {
                states.insert(key.to_owned(), state.to_owned());
            }
            None => {
                states.remove(key);
            }
        }
        let mut counts: HashMap<&str, i64> = HashMap::new();
        for state in states.values() {
            *counts.entry(state.as_str()).or_default() += 1;
        }
        for name in [
            "Creating",
            "Enabled",
            "Disabled",
            "PendingDeletion",
            "PendingImport",
            "Unavailable",
        ] {
            self.keys_by_state
                .get_or_create(&StateLabels {
                    state: name.to_owned(),
                })
                .set(counts.get(name).copied().unwrap_or(0));
        }
    }

    /// The OpenMetrics text of every metric.
    ///
    /// # Errors
    /// When encoding fails (writing to a String does not).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_counted_by_their_last_state() {
        let metrics = Metrics::new();
        metrics.key_state("a/one", Some("Enabled"));
        metrics.key_state("a/two", Some("Enabled"));
        metrics.key_state("a/two", Some("Disabled"));
        metrics.reconciled("kmskey", 0.01);
        metrics.failed("kmskey");
        metrics.secrets_reencrypted(3);
        let text = metrics.encode().expect("encode");
        assert!(
            text.contains("kubekms_operator_keys{state=\"Enabled\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("kubekms_operator_keys{state=\"Disabled\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("kubekms_operator_reconciles_total{controller=\"kmskey\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("kubekms_operator_reconcile_errors_total{controller=\"kmskey\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("kubekms_operator_secrets_reencrypted_total 3"),
            "{text}"
        );
        metrics.promotion_waiting("a/one", true);
        metrics.promotion_waiting("a/two", true);
        metrics.promotion_waiting("a/one", false);
        metrics.version_promoted();
        let text = metrics.encode().expect("encode");
        assert!(
            text.contains("kubekms_operator_promotions_waiting 1"),
            "{text}"
        );
        assert!(
            text.contains("kubekms_operator_versions_promoted_total 1"),
            "{text}"
        );
        metrics.key_state("a/one", None);
        let text = metrics.encode().expect("encode");
        assert!(
            text.contains("kubekms_operator_keys{state=\"Enabled\"} 0"),
            "{text}"
        );
    }
}
