//! The AWS KMS API benchmark of KubeKMS.
//!
//! - [`load`]: a load client — N keep-alive HTTP/1.1 connections on loopback, each request a
//!   real AWS JSON 1.1 KMS call signed with SigV4 ([`kms`]), a warm-up then a timed phase,
//!   throughput, latency percentiles (HDR histogram) and every error by its AWS type.
//! - [`floor`]: the HTTP floor, an axum handler that returns a fixed KMS-shaped reply: what
//!   a request costs on this stack when the server does no work.
//! - [`targets`]: how each measured server is started (the floor, local-kms, kubekms-server)
//!   behind one trait, so the `api_load` bench runs the same load against each in turn.
//! - [`kubekms_server`]: kubekms-server started as users run it (a private control plane,
//!   the operator, RBAC, static credentials) for the benchmark.
//! - [`cpu`]: CPU time of the client, the server and the rest of the machine from /proc,
//!   to tell whether the client or the machine's other load limited a run.

pub mod cpu;
pub mod floor;
pub mod kms;
pub mod kubekms_server;
pub mod load;
pub mod process;
pub mod report;
pub mod targets;
