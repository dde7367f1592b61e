//! Metrics of the Kubernetes layer (authorization, token reviews, accounts), registered
//! under `kubekms_server_kubernetes_*`. Labels carry results only, never a principal or a
//! key.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

fn api_histogram() -> Histogram {
    // 100 µs .. ~6.5 s
    Histogram::new(exponential_buckets(0.000_1, 2.0, 17))
}

/// The counters. Cheap to share.
#[derive(Debug)]
pub struct KubernetesMetrics {
    /// Decisions answered from the cache.
    pub authz_cache_hits: Counter,
    /// Decisions that called a SubjectAccessReview.
    pub authz_cache_misses: Counter,
    /// Decisions that waited for a review another request had started.
    pub authz_coalesced: Counter,
    /// Entries in the decision cache.
    pub authz_cache_entries: Gauge,
    /// Requests allowed by a KmsGrant (no review needed).
    pub grant_allowed: Counter,
    /// SubjectAccessReviews by result (allowed, denied, error, timeout).
    sar_results: Family<ResultLabels, Counter>,
    /// Time of each SubjectAccessReview call.
    pub sar_seconds: Histogram,
    /// TokenReviews by result (authenticated, rejected, error, timeout).
    token_review_results: Family<ResultLabels, Counter>,
    /// Time of each TokenReview call.
    pub token_review_seconds: Histogram,
    /// Failed lists and watches of Namespaces.
    pub namespace_watch_errors: Counter,
    /// Invalid account-id annotations and conflicting claims in the last listing.
    pub account_problems: Gauge,
}

impl Default for KubernetesMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl KubernetesMetrics {
    /// Fresh counters.
    #[must_use]
    pub fn new() -> Self {
        Self {
            authz_cache_hits: Counter::default(),
            authz_cache_misses: Counter::default(),
            authz_coalesced: Counter::default(),
            authz_cache_entries: Gauge::default(),
            grant_allowed: Counter::default(),
            sar_results: Family::default(),
            sar_seconds: api_histogram(),
            token_review_results: Family::default(),
            token_review_seconds: api_histogram(),
            namespace_watch_errors: Counter::default(),
            account_problems: Gauge::default(),
        }
    }

    /// Counts a SubjectAccessReview.
    pub fn sar(&self, result: &'static str) {
        self.sar_results
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// SubjectAccessReviews with this result so far.
    #[must_use]
    pub fn sar_count(&self, result: &'static str) -> u64 {
        self.sar_results
            .get_or_create(&ResultLabels { result })
            .get()
    }

    /// Counts a TokenReview.
    pub fn token_review(&self, result: &'static str) {
        self.token_review_results
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "authz_cache_hits",
            "Authorization decisions answered from the cache",
            self.authz_cache_hits.clone(),
        );
        registry.register(
            "authz_cache_misses",
            "Authorization decisions that called a SubjectAccessReview",
            self.authz_cache_misses.clone(),
        );
        registry.register(
            "authz_coalesced",
            "Authorization decisions that waited for a review already in flight",
            self.authz_coalesced.clone(),
        );
        registry.register(
            "authz_cache_entries",
            "Entries in the authorization decision cache",
            self.authz_cache_entries.clone(),
        );
        registry.register(
            "grant_allowed",
            "Requests allowed by a KmsGrant",
            self.grant_allowed.clone(),
        );
        registry.register(
            "subject_access_reviews",
            "SubjectAccessReviews by result (allowed, denied, error, timeout)",
            self.sar_results.clone(),
        );
        registry.register(
            "subject_access_review_seconds",
            "Time of each SubjectAccessReview call",
            self.sar_seconds.clone(),
        );
        registry.register(
            "token_reviews",
            "TokenReviews by result (authenticated, rejected, error, timeout)",
            self.token_review_results.clone(),
        );
        registry.register(
            "token_review_seconds",
            "Time of each TokenReview call",
            self.token_review_seconds.clone(),
        );
        registry.register(
            "namespace_watch_errors",
            "Failed lists and watches of Namespaces (retried with back-off)",
            self.namespace_watch_errors.clone(),
        );
        registry.register(
            "account_problems",
            "Invalid kubekms.io/account-id annotations and account ids claimed by several namespaces",
            self.account_problems.clone(),
        );
    }
}
