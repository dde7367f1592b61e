//! kubekms-plugin: the KubeKMS data plane for kube-apiserver.
//!
//! - [`pb`]: the KMS v2 gRPC API (`v2.KeyManagementService`: Status, Encrypt, Decrypt),
//!   compiled from `proto/kms_v2.proto` at build time.
//! - [`state`]: the local state folder (root key + wrapped material), so the plugin starts
//!   and answers with no API server (cold start, bootstrap of a brand-new cluster).
//! - [`service`]: the keys in memory, the plugin that keeps them fresh, the handlers.
//! - [`server`]: the Unix-socket gRPC server (mode 0600), HTTP health and metrics, the
//!   reloader of the state folder, graceful shutdown.
//! - [`http2`]: the socket's connections as h2 reads them: any `:authority` accepted, so
//!   gRPC C-core clients (Python, C++, Ruby, PHP) work as Go's do.
//! - [`follow`]: follow mode: a KmsKey and its KmsKeyMaterial through the keyring
//!   (`kubekms-keyring`), into memory and the state folder; the heartbeat Lease; `export`
//!   of the bootstrap key for the operator.
//! - [`restore`]: disaster recovery: `verify` a root key against a backup's records, and
//!   `restore` a state folder on a new host from a restored etcd (docs/disaster-recovery.md).
//! - [`client`]: a client over the Unix socket (tests, benchmarks, `status` subcommand).
//!
//! See docs/plugin.md.

pub mod client;
pub mod error;
pub mod follow;
pub mod http2;
pub mod metrics;
pub mod restore;
pub mod server;
pub mod service;
pub mod state;

/// The generated KMS v2 messages, client and server.
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used)]
pub mod pb {
    tonic::include_proto!("v2");
}

pub use error::PluginError;
pub use service::{Plugin, ServingKeys, format_key_id, parse_key_id};
pub use state::StateDir;
