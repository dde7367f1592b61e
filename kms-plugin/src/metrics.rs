//! Prometheus metrics: calls, errors and latency by method and code, the current key
//! version, health and reloads. No label ever carries a key_id, uid or byte of data.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: &'static str,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

type LatencyFamily = Family<MethodLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 10 µs .. ~5 s
    Histogram::new(exponential_buckets(0.000_01, 2.0, 20))
}

/// The plugin's metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    errors: Family<CallLabels, Counter>,
    latency: LatencyFamily,
    key_version: Gauge,
    /// 1 when the last health check passed.
    pub healthy: Gauge,
    /// Successful reloads of the state folder.
    pub reloads: Counter,
    /// Failed reloads of the state folder.
    pub reload_failures: Counter,
    /// Reloads asked for by a Decrypt of a key or version not in memory.
    pub reload_requests: Counter,
    /// Records of the state folder that cannot be used (skipped).
    unusable_records: Gauge,
    /// Heartbeat Lease writes that succeeded.
    pub heartbeat_renewals: Counter,
    /// Heartbeat Lease writes that failed or timed out.
    pub heartbeat_failures: Counter,
    /// The keyring of follow mode (`kubekms_plugin_keyring_*`).
    pub keyring: std::sync::Arc<kubekms_keyring::KeyringMetrics>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered under the `kubekms_plugin` prefix.
    #[must_use]
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kubekms_plugin");
        let calls = Family::<CallLabels, Counter>::default();
        let errors = Family::<CallLabels, Counter>::default();
        let latency: LatencyFamily = Family::new_with_constructor(latency_histogram);
        let key_version = Gauge::default();
        let healthy = Gauge::default();
        let reloads = Counter::default();
        let reload_failures = Counter::default();
        let reload_requests = Counter::default();
        let unusable_records = Gauge::default();
        let heartbeat_renewals = Counter::default();
        let heartbeat_failures = Counter::default();
        let keyring = std::sync::Arc::new(kubekms_keyring::KeyringMetrics::new());
        registry.register(
            "state_reload_requests",
            "Reloads of the state folder asked for by a Decrypt of a key or version not in memory",
            reload_requests.clone(),
        );
        registry.register(
            "state_unusable_records",
            "Records of the state folder that cannot be used (skipped; health reports them)",
            unusable_records.clone(),
        );
        registry.register(
            "heartbeat_renewals",
            "Heartbeat Lease writes that succeeded (follow mode)",
            heartbeat_renewals.clone(),
        );
        registry.register(
            "heartbeat_failures",
            "Heartbeat Lease writes that failed or timed out (follow mode)",
            heartbeat_failures.clone(),
        );
        keyring.register(registry.sub_registry_with_prefix("keyring"));
        registry.register(
            "grpc_requests",
            "KMS v2 gRPC calls by method and status code",
            calls.clone(),
        );
        registry.register(
            "grpc_errors",
            "KMS v2 gRPC calls that failed, by method and status code",
            errors.clone(),
        );
        registry.register(
            "grpc_request_duration_seconds",
            "KMS v2 gRPC handling time by method",
            latency.clone(),
        );
        registry.register(
            "key_version",
            "Current material version of the key Encrypt uses",
            key_version.clone(),
        );
        registry.register(
            "healthy",
            "1 when the last health check (key usable, self-test round trip) passed",
            healthy.clone(),
        );
        registry.register(
            "state_reloads",
            "Reloads of the state folder after a change",
            reloads.clone(),
        );
        registry.register(
            "state_reload_failures",
            "Failed reloads of the state folder",
            reload_failures.clone(),
        );
        Self {
            registry,
            calls,
            errors,
            latency,
            key_version,
            healthy,
            reloads,
            reload_failures,
            reload_requests,
            unusable_records,
            heartbeat_renewals,
            heartbeat_failures,
            keyring,
        }
    }

    /// Records one call.
    pub fn observe(&self, method: &'static str, code: tonic::Code, seconds: f64) {
        let labels = CallLabels {
            method,
            code: format!("{code:?}"),
        };
        self.calls.get_or_create(&labels).inc();
        if code != tonic::Code::Ok {
            self.errors.get_or_create(&labels).inc();
        }
        self.latency
            .get_or_create(&MethodLabels { method })
            .observe(seconds);
    }

    /// Sets the number of unusable records.
    pub fn set_unusable_records(&self, count: usize) {
        self.unusable_records
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Sets the current key version.
    pub fn set_key_version(&self, version: u32) {
        self.key_version.set(i64::from(version));
    }

    /// The text exposition format.
    #[must_use]
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_calls_errors_latency_and_version() {
        let m = Metrics::new();
        m.observe("Encrypt", tonic::Code::Ok, 0.0001);
        m.observe("Decrypt", tonic::Code::InvalidArgument, 0.0002);
        m.set_key_version(3);
        let text = m.encode();
        for expected in [
            "kubekms_plugin_grpc_requests_total{method=\"Encrypt\",code=\"Ok\"} 1",
            "kubekms_plugin_grpc_errors_total{method=\"Decrypt\",code=\"InvalidArgument\"} 1",
            "kubekms_plugin_grpc_request_duration_seconds_count{method=\"Decrypt\"} 1",
            "kubekms_plugin_key_version 3",
        ] {
            assert!(text.contains(expected), "missing {expected}:\n{text}");
        }
        assert!(!text.contains("kubekms_plugin_grpc_errors_total{method=\"Encrypt\""));
    }
}
