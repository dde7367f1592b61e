//! Prometheus metrics of the server. Labels carry operation names and AWS exception names
//! only: never a key id, a principal or a byte of data.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::protocol::operation::ApiOperation;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    service: &'static str,
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    service: &'static str,
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

type LatencyFamily = Family<OperationLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 10 µs .. ~5 s
    Histogram::new(exponential_buckets(0.000_01, 2.0, 20))
}

/// The server's metrics and their registry.
#[derive(Debug)]
pub struct ServerMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: LatencyFamily,
    credential_reloads: Family<ResultLabels, Counter>,
    certificate_reloads: Family<ResultLabels, Counter>,
    /// The series of successful KMS calls, one per operation, looked up once here so the
    /// hot path touches no map and no label set.
    kms_success: Vec<(Counter, Histogram)>,
}

impl Default for ServerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerMetrics {
    /// Every metric registered under `kubekms_server`.
    #[must_use]
    pub fn new() -> Self {
        Self::with_extra(|_| {})
    }

    /// Every metric registered under `kubekms_server`, and whatever `extra` registers in
    /// the same registry (the Kubernetes layer's, under sub-registries).
    #[must_use]
    pub fn with_extra(extra: impl FnOnce(&mut Registry)) -> Self {
        let mut registry = Registry::with_prefix("kubekms_server");
        extra(&mut registry);
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: LatencyFamily = Family::new_with_constructor(latency_histogram);
        let credential_reloads = Family::<ResultLabels, Counter>::default();
        let certificate_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests by service (kms, sts), operation and outcome (Success or the AWS exception name)",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from a complete request body to the reply, by service and operation",
            latency.clone(),
        );
        registry.register(
            "credential_reloads",
            "Reloads of the static credentials file by result (changed, failed)",
            credential_reloads.clone(),
        );
        registry.register(
            "certificate_reloads",
            "Reloads of the TLS certificate and key by result (changed, failed)",
            certificate_reloads.clone(),
        );
        let kms_success = ApiOperation::ALL
            .iter()
            .map(|op| {
                let counter = requests
                    .get_or_create(&RequestLabels {
                        service: "kms",
                        operation: op.as_str(),
                        outcome: "Success",
                    })
                    .clone();
                let histogram = latency
                    .get_or_create(&OperationLabels {
                        service: "kms",
                        operation: op.as_str(),
                    })
                    .clone();
                (counter, histogram)
            })
            .collect();
        Self {
            registry,
            requests,
            latency,
            credential_reloads,
            certificate_reloads,
            kms_success,
        }
    }

    /// Counts one KMS request.
    pub fn observe_kms(
        &self,
        operation: Option<ApiOperation>,
        outcome: &'static str,
        seconds: f64,
    ) {
        if outcome == "Success"
            && let Some((counter, histogram)) =
                operation.and_then(|op| self.kms_success.get(op as usize))
        {
            counter.inc();
            histogram.observe(seconds);
            return;
        }
        self.observe(
            "kms",
            operation.map_or("Unknown", ApiOperation::as_str),
            outcome,
            seconds,
        );
    }

    /// Counts one request.
    pub fn observe(
        &self,
        service: &'static str,
        operation: &'static str,
        outcome: &'static str,
        seconds: f64,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                service,
                operation,
                outcome,
            })
            .inc();
        self.latency
            .get_or_create(&OperationLabels { service, operation })
            .observe(seconds);
    }

    /// Counts a credentials reload.
    pub fn credential_reload(&self, result: &'static str) {
        self.credential_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Counts a certificate reload.
    pub fn certificate_reload(&self, result: &'static str) {
        self.certificate_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// The text exposition format.
    #[must_use]
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_series_are_the_family_series() {
        let metrics = ServerMetrics::new();
        metrics.observe_kms(Some(ApiOperation::Decrypt), "Success", 0.001);
        metrics.observe_kms(Some(ApiOperation::Decrypt), "NotFoundException", 0.001);
        metrics.observe_kms(None, "UnknownOperationException", 0.001);
        let text = metrics.encode();
        assert!(text.contains(r#"kubekms_server_requests_total{service="kms",operation="Decrypt",outcome="Success"} 1"#), "{text}");
        assert!(text.contains(r#"kubekms_server_requests_total{service="kms",operation="Decrypt",outcome="NotFoundException"} 1"#));
        assert!(text.contains(r#"operation="Unknown",outcome="UnknownOperationException"} 1"#));
        assert!(text.contains(r#"kubekms_server_request_duration_seconds_count{service="kms",operation="Decrypt"} 2"#), "{text}");
    }
}
