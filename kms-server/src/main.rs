//! kubekms-server: the AWS KMS API (and STS AssumeRoleWithWebIdentity) for workloads, over
//! the keys the operator manages as Kubernetes objects. See docs/api.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use keystore_pkcs11::args::{Pkcs11Args, PreviousRootKeyArgs, RootKeyLocation};
use kms_core::ArnScope;
use kubekms_server::Transport;
use kubekms_server::kubernetes::{AuditTarget, Settings, run};

/// The KubeKMS API server: AWS KMS JSON 1.1 with SigV4, and STS web identity.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "The KubeKMS API server: AWS KMS (JSON 1.1, SigV4) and STS AssumeRoleWithWebIdentity for workloads",
    long_about = None
)]
struct Args {
    /// The root key file (32 bytes, mode 0600): the one the operator wraps material under.
    #[arg(
        long,
        env = "KUBEKMS_ROOT_KEY",
        required_unless_present = "pkcs11_module",
        conflicts_with = "pkcs11_module"
    )]
    root_key: Option<PathBuf>,
    /// Or the root keys in a PKCS#11 token (the operator's token).
    #[command(flatten)]
    pkcs11: Pkcs11Args,
    /// During a migration of the operator to a new root key: the old root key file.
    #[command(flatten)]
    previous_root_key: PreviousRootKeyArgs,
    /// Address of the KMS and STS API.
    #[arg(long, env = "KUBEKMS_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// TLS certificate chain (PEM), reloaded when it changes. With --tls-key.
    #[arg(long, env = "KUBEKMS_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM, not readable by others). With --tls-cert.
    #[arg(long, env = "KUBEKMS_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve plain HTTP (behind a mesh, or on loopback in tests); never the default.
    #[arg(long, env = "KUBEKMS_INSECURE_HTTP", conflicts_with_all = ["tls_cert", "tls_key"])]
    insecure_http: bool,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "KUBEKMS_HEALTH_ADDR", default_value = "0.0.0.0:8080")]
    health_addr: SocketAddr,
    /// ARN region and SigV4 scope: the cluster's name (the operator's --region).
    #[arg(long, env = "KUBEKMS_REGION", default_value = kms_core::ids::DEFAULT_REGION)]
    region: String,
    /// ARN partition (the operator's --partition).
    #[arg(long, env = "KUBEKMS_PARTITION", default_value = kms_core::ids::DEFAULT_PARTITION)]
    partition: String,
    /// Static credentials file (YAML; access key id → secret and the identity it acts as),
    /// for clients outside the cluster. Re-read when it changes.
    #[arg(long, env = "KUBEKMS_STATIC_CREDENTIALS")]
    static_credentials: Option<PathBuf>,
    /// Audience a ServiceAccount token must be bound to for AssumeRoleWithWebIdentity
    /// (repeat, or separate with commas, for several).
    #[arg(
        long,
        env = "KUBEKMS_STS_AUDIENCE",
        default_value = "kubekms",
        value_delimiter = ','
    )]
    sts_audience: Vec<String>,
    /// Seconds an RBAC decision (allowed or denied) is reused; 0: ask every time.
    #[arg(long, env = "KUBEKMS_AUTHZ_CACHE_SECONDS", default_value_t = 5)]
    authz_cache_seconds: u64,
    /// Where audit records go: a file (appended, mode 0600) or `-` for standard output.
    #[arg(long, env = "KUBEKMS_AUDIT_LOG", default_value = "-")]
    audit_log: String,
    /// Serve the keys of this namespace only (default: every namespace).
    #[arg(long, env = "KUBEKMS_NAMESPACE")]
    namespace: Option<String>,
    /// Kubeconfig (default: in-cluster, else $KUBECONFIG or ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Seconds each TokenReview and SubjectAccessReview may take.
    #[arg(long, env = "KUBEKMS_API_TIMEOUT_SECONDS", default_value_t = 5)]
    api_timeout_seconds: u64,
    /// Log format.
    #[arg(long, env = "KUBEKMS_LOG_FORMAT", value_enum, default_value = "json")]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn settings(args: Args) -> anyhow::Result<Settings> {
    let transport = match (args.tls_cert, args.tls_key, args.insecure_http) {
        (Some(certificate), Some(private_key), false) => Transport::Tls {
            certificate,
            private_key,
        },
        (None, None, true) => Transport::PlainHttp,
        _ => bail!("give --tls-cert and --tls-key, or --insecure-http for plain HTTP"),
    };
    if args.sts_audience.iter().any(|a| a.trim().is_empty()) {
        bail!("--sts-audience: an audience is empty");
    }
    let audit = match args.audit_log.as_str() {
        "-" => AuditTarget::Stdout,
        path => AuditTarget::File(PathBuf::from(path)),
    };
    Ok(Settings {
        root_key: RootKeyLocation::from_flags(args.root_key.unwrap_or_default(), &args.pkcs11),
        previous_root_key: args.previous_root_key,
        kubeconfig: args.kubeconfig,
        listen: args.listen,
        transport,
        health_listen: Some(args.health_addr),
        scope: ArnScope {
            partition: args.partition,
            region: args.region,
        },
        static_credentials: args.static_credentials,
        sts_audiences: args.sts_audience,
        authz_cache: Duration::from_secs(args.authz_cache_seconds),
        audit,
        namespace: args.namespace.filter(|n| !n.is_empty()),
        api_timeout: Duration::from_secs(args.api_timeout_seconds.max(1)),
    })
}

async fn wait_for_signal() {
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    let mut term = match term {
        Ok(term) => term,
        Err(error) => {
            tracing::error!(%error, "no SIGTERM handler; only Ctrl-C stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: shutting down"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_format);
    let settings = settings(args)?;
    run(settings, wait_for_signal())
        .await
        .context("kubekms-server")?;
    tracing::info!("stopped");
    Ok(())
}
