//! kubekms-server: the AWS KMS API for workloads, everything of the request path that does
//! not need Kubernetes.
//!
//! One request, one straight path, each step its own module:
//!
//! 1. [`protocol::decode`]: AWS JSON 1.1 → typed request, with botocore's model limits;
//! 2. [`auth`]: SigV4 with static credentials or an STS session → [`Principal`];
//! 3. [`resolve`]: key id, ARN or alias in the caller's account → [`ResolvedKey`] (through
//!    the [`KeyDirectory`] seam), and the protocol's own rules (served keys and the
//!    `kubekms:` context prefix are refused);
//! 4. [`authorize`]: the [`Authorizer`] seam (policy Deny, RBAC, grants);
//! 5. [`execute`]: the kms-core operation (private-key work on the blocking pool);
//! 6. [`protocol::response`]: typed response → JSON;
//! 7. [`audit`]: one JSON line per request.
//!
//! [`sts`] serves AssumeRoleWithWebIdentity (the [`TokenReviewer`] seam); [`server`] the
//! HTTP/1.1 and HTTP/2 listener with TLS, health and metrics. The Kubernetes layer
//! implements [`KeyDirectory`], [`Authorizer`] and [`TokenReviewer`] and calls [`serve`];
//! [`memory`] has in-memory implementations for tests.

pub mod audit;
pub mod auth;
pub mod authorize;
pub mod directory;
pub mod error;
pub mod execute;
pub mod kubernetes;
pub mod memory;
pub mod metrics;
pub mod principal;
pub mod protocol;
pub mod resolve;
pub mod server;
pub mod sts;
#[cfg(any(test, feature = "test-util"))]
pub mod test_util;
pub mod tls;

pub use audit::{AuditLog, AuditRecord};
pub use auth::{Authenticator, SessionSealer, StaticCredentials};
pub use authorize::{Action, Allowed, AuthorizationRequest, Authorizer, Denied, Resource};
pub use directory::{AliasEntry, GrantEntry, KeyDirectory, KeyEntry, ResolvedKey, Tag};
pub use error::{ApiError, AuthError};
pub use principal::{CredentialKind, Principal};
pub use server::{
    Clock, Dependencies, Readiness, ServeError, Server, ServerConfig, Transport, serve,
    system_clock,
};
pub use sts::{ReviewError, ReviewedIdentity, StsConfig, TokenReviewer};
