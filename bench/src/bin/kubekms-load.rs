//! `kubekms-load`: the load client against one running AWS KMS endpoint on loopback.
//!
//! ```text
//! AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... \
//!   kubekms-load --endpoint http://127.0.0.1:8080 --key-id <key> --operation encrypt-4k
//! ```
//! Prints a table and one `RESULT` line; exits non-zero when any request failed.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use kubekms_bench::kms::{KmsEndpoint, Operation, StaticCredentials};
use kubekms_bench::load::{LoadConfig, run_load};
use kubekms_bench::report::{Run, aggregate, result_line, table};

/// SigV4-signed AWS KMS load over keep-alive HTTP/1.1 connections on loopback.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The endpoint, `http://127.0.0.1:PORT` or `127.0.0.1:PORT` (loopback only).
    #[arg(long)]
    endpoint: String,
    /// The key id, ARN or alias that Encrypt and GenerateDataKey name.
    #[arg(long)]
    key_id: String,
    /// encrypt-4k, decrypt-4k (of one blob made by an Encrypt first) or generate-data-key.
    #[arg(long, default_value = "encrypt-4k")]
    operation: Operation,
    /// Keep-alive connections, one request in flight on each.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Seconds of load before the timed phase.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Seconds of the timed phase.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// The region the requests are signed for.
    #[arg(long, default_value = "us-east-1")]
    region: String,
    /// Tokio worker threads of the client.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// The server's pid, to report its CPU use.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Seconds a request may take before it counts as an error.
    #[arg(long, default_value_t = 10.0)]
    request_timeout: f64,
}

fn endpoint_addr(endpoint: &str) -> Result<SocketAddr> {
    let bare = endpoint
        .strip_prefix("http://")
        .unwrap_or(endpoint)
        .trim_end_matches('/');
    let addr: SocketAddr = bare
        .parse()
        .with_context(|| format!("--endpoint {endpoint:?}: expected http://IP:PORT"))?;
    // A load generator aims only at this machine.
    if !addr.ip().is_loopback() {
        bail!("--endpoint {addr}: only loopback addresses are allowed");
    }
    Ok(addr)
}

fn credentials_from_env() -> StaticCredentials {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        (Some(access_key_id), Some(secret_access_key)) => StaticCredentials {
            access_key_id,
            secret_access_key,
            session_token: var("AWS_SESSION_TOKEN"),
        },
        _ => {
            eprintln!(
                "kubekms-load: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY not set; signing with placeholder credentials"
            );
            StaticCredentials::unchecked()
        }
    }
}

fn seconds(name: &str, v: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(v).with_context(|| format!("{name} {v}: not a duration"))
}

fn run(args: Args) -> Result<bool> {
    let mut config = LoadConfig::new(
        KmsEndpoint {
            addr: endpoint_addr(&args.endpoint)?,
            region: args.region,
            credentials: credentials_from_env(),
        },
        args.key_id,
        args.operation,
    );
    config.connections = args.connections;
    config.warmup = seconds("--warmup", args.warmup)?;
    config.duration = seconds("--duration", args.duration)?;
    config.request_timeout = seconds("--request-timeout", args.request_timeout)?;
    config.server_pid = args.server_pid;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    let report = runtime.block_on(run_load(&config))?;
    let aggregates = aggregate(&[Run {
        target: "endpoint",
        round: 0,
        report,
    }]);
    print!("{}", table(&aggregates));
    let mut clean = true;
    for a in &aggregates {
        println!("{}", result_line(a));
        clean &= a.error_count() == 0;
    }
    Ok(clean)
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("kubekms-load: some requests failed (see the errors above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("kubekms-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}
