//! The Kubernetes side of kubekms-server: the three seams implemented over the keyring and
//! kube-apiserver, and [`app::run`], what the `kubekms-server` binary runs.
//!
//! - [`directory`]: [`crate::KeyDirectory`] over the keyring's snapshots and the
//!   Namespaces' account ids ([`accounts`]);
//! - [`authorizer`]: [`crate::Authorizer`] by KmsGrant, then RBAC (SubjectAccessReview,
//!   with the decision [`cache`]);
//! - [`review`]: [`crate::TokenReviewer`] by TokenReview;
//! - [`metrics`]: what they count.
//!
//! Nothing here knows HTTP; the protocol layer knows nothing of this.

pub mod accounts;
pub mod app;
pub mod authorizer;
pub mod cache;
pub mod directory;
pub mod metrics;
pub mod review;

pub use app::{AuditTarget, RunError, Settings, run};
pub use authorizer::{AuthorizerConfig, KubeAuthorizer};
pub use directory::{KeyringDirectory, View, ViewBuilder};
pub use metrics::KubernetesMetrics;
pub use review::KubeTokenReviewer;
