//! kubekms-operator: reconciles KmsKey, KmsAlias and KmsGrant objects.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use keystore_pkcs11::args::{Pkcs11Args, PreviousRootKeyArgs, RootKeyLocation};
use kms_core::ArnScope;
use kms_core::keystore::{FileKeyStore, MigratingKeyStore, RootKeyStore};
use kubekms_operator::clients::{Clients, clients};
use kubekms_operator::clock::ALLOW_TEST_CLOCK_ENV;
use kubekms_operator::leader::{LeaderElector, LeaseConfig};
use kubekms_operator::migrate::MigrationConfig;
use kubekms_operator::reencrypt::ReencryptConfig;
use kubekms_operator::root_key::open_or_init_migrating;
use kubekms_operator::run::{run_controllers, until_shutdown};
use kubekms_operator::server::{Health, serve};
use kubekms_operator::{Clock, Context, Metrics, OffsetFileClock, SystemClock};
use tokio::sync::watch;

/// The KubeKMS operator.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The root key file (32 bytes, mode 0600) that wraps all key material.
    #[arg(
        long,
        env = "KUBEKMS_ROOT_KEY",
        required_unless_present = "pkcs11_module",
        conflicts_with = "pkcs11_module"
    )]
    root_key: Option<PathBuf>,
    /// Or the root keys in a PKCS#11 token (generated there by --init-root-key).
    #[command(flatten)]
    pkcs11: Pkcs11Args,
    /// Migrating to the root key above from this root key file: material under it still
    /// unwraps, and the leader rewraps every KmsKeyMaterial record under the root key
    /// above (docs/hsm.md). With --init-root-key, the new root key is created even though
    /// records exist, as long as they are all under this file's root key.
    #[command(flatten)]
    previous_root_key: PreviousRootKeyArgs,
    /// At most this many KmsKeyMaterial records rewrapped per second by the migration.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    root_key_migration_records_per_second: u32,
    /// Create the root key file if it does not exist (first start of a new installation).
    /// Refused when KmsKeyMaterial records exist: they need the root key of the backup.
    #[arg(long)]
    init_root_key: bool,
    /// Watch only this namespace (default: every namespace).
    #[arg(long)]
    namespace: Option<String>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "kubekms-operator")]
    lease_name: String,
    /// This replica's identity in the Lease (default: the pod name, or host name and pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a Lease stays valid without renewal.
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
    /// Seconds between renewals.
    #[arg(long, default_value_t = 5)]
    lease_renew_seconds: u64,
    /// Seconds the leader keeps reconciling without a successful renewal before it stops
    /// (and exits, to restart as a standby); shorter than the Lease duration (default: two
    /// thirds of it).
    #[arg(long)]
    lease_renew_deadline_seconds: Option<f64>,
    /// Seconds an API call (not a watch) may wait for its answer.
    #[arg(long, default_value_t = 30)]
    api_read_timeout_seconds: u64,
    /// ARN partition (AWS's own by default: clients parse ARNs).
    #[arg(long, default_value = kms_core::ids::DEFAULT_PARTITION)]
    partition: String,
    /// ARN region: the cluster's name (kubekms-server's `--region` must be the same).
    #[arg(long, default_value = kms_core::ids::DEFAULT_REGION)]
    region: String,
    /// Secrets per list page when re-encrypting after a rotation (the progress is saved
    /// after each page, so a restart resumes there).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=1000))]
    reencrypt_page_size: u32,
    /// At most this many Secret rewrites per second, per key being re-encrypted (a
    /// ceiling: below it the pace follows kube-apiserver's latency and 429s).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10000))]
    reencrypt_secrets_per_second: u32,
    /// At most this many Secret rewrites in flight at once (a ceiling: the number in
    /// flight adapts to kube-apiserver's latency and 429s).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=256))]
    reencrypt_max_in_flight: u32,
    /// Log format.
    #[arg(long, value_enum, default_value = "json")]
    log_format: LogFormat,
    /// TESTS ONLY: add the number of seconds in this file to the clock. Refused unless
    /// KUBEKMS_ALLOW_TEST_CLOCK=1: a moved clock rotates keys and destroys material early.
    #[arg(long, hide = true)]
    test_clock_offset_file: Option<PathBuf>,
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

fn clock(args: &Args) -> anyhow::Result<Arc<dyn Clock>> {
    let Some(path) = &args.test_clock_offset_file else {
        return Ok(Arc::new(SystemClock));
    };
    if std::env::var(ALLOW_TEST_CLOCK_ENV).as_deref() != Ok("1") {
        bail!(
            "--test-clock-offset-file is for tests only and needs {ALLOW_TEST_CLOCK_ENV}=1; refusing to start"
        );
    }
    tracing::warn!(
        path = %path.display(),
        "TEST CLOCK IN USE: time is shifted by the offset in this file; keys rotate and material is destroyed by the shifted time. Never run this in production."
    );
    Ok(Arc::new(OffsetFileClock::new(path.clone())))
}

fn identity(args: &Args) -> String {
    args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "kubekms-operator".to_owned());
        format!("{host}-{}", std::process::id())
    })
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        result = tokio::signal::ctrl_c() => {
            result.context("waiting for Ctrl-C")?;
            tracing::info!("interrupt: shutting down");
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_format);
    let clock = clock(&args)?;
    let config = kube::Config::infer()
        .await
        .context("reading the Kubernetes client configuration")?;
    let Clients {
        calls: client,
        watches: watch_client,
        rewrites: rewrite_client,
    } = clients(config, Duration::from_secs(args.api_read_timeout_seconds))
        .context("building the Kubernetes clients")?;
    let location =
        RootKeyLocation::from_flags(args.root_key.clone().unwrap_or_default(), &args.pkcs11);
    let previous: Option<Arc<dyn RootKeyStore>> =
        match &args.previous_root_key.previous_root_key_file {
            Some(path) => Some(Arc::new(
                FileKeyStore::open(path)
                    .context("the previous root key (--previous-root-key-file)")?,
            )),
            None => None,
        };
    let primary: Arc<dyn RootKeyStore> = open_or_init_migrating(
        &location,
        args.init_root_key,
        previous.as_deref(),
        &client,
        args.namespace.as_deref(),
    )
    .await
    .context("the root key")?;
    let migrating = match previous {
        Some(previous) => Some(Arc::new(
            MigratingKeyStore::new(primary.clone(), vec![previous])
                .context("--previous-root-key-file")?,
        )),
        None => None,
    };
    let root_keys: Arc<dyn RootKeyStore> = match &migrating {
        Some(migrating) => migrating.clone(),
        None => primary,
    };
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());

    let (stop, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        if let Err(error) = wait_for_signal().await {
            tracing::error!(%error, "signal handling");
        }
        let _ = stop.send(true);
    });
    let server = tokio::spawn(serve(
        args.metrics_addr,
        metrics.clone(),
        health.clone(),
        until_shutdown(shutdown.clone()),
    ));

    let identity = identity(&args);
    let lease_duration = Duration::from_secs(args.lease_duration_seconds);
    let lease_config = LeaseConfig {
        namespace: args.lease_namespace.clone(),
        name: args.lease_name.clone(),
        identity: identity.clone(),
        lease_duration,
        renew_deadline: match args.lease_renew_deadline_seconds {
            Some(seconds) => {
                Duration::try_from_secs_f64(seconds).context("--lease-renew-deadline-seconds")?
            }
            None => LeaseConfig::default_renew_deadline(lease_duration),
        },
        renew_every: Duration::from_secs(args.lease_renew_seconds),
    };
    if let Err(problem) = lease_config.validate() {
        bail!("leader election settings: {problem}");
    }
    let elector = LeaderElector::new(client.clone(), lease_config);
    health.ready.store(true, Ordering::Relaxed);
    tracing::info!(
        identity,
        root_key = root_keys.root_key_id(),
        "waiting for the leader Lease"
    );
    let acquired = tokio::select! {
        acquired = elector.acquire() => acquired,
        () = until_shutdown(shutdown.clone()) => {
            tracing::info!("stopped before becoming leader");
            return Ok(());
        }
    };
    health.leader.store(true, Ordering::Relaxed);

    let ctx = Context::new(
        client,
        root_keys,
        ArnScope {
            partition: args.partition.clone(),
            region: args.region.clone(),
        },
        clock,
        metrics,
        Some(identity),
    )
    .with_watch_client(watch_client)
    .with_reencryption(
        ReencryptConfig {
            page_size: args.reencrypt_page_size,
            secrets_per_second: args.reencrypt_secrets_per_second,
            max_in_flight: args.reencrypt_max_in_flight,
        },
        rewrite_client,
    );
    let ctx = Arc::new(ctx);
    let migration = {
        let (ctx, namespace, shutdown) = (ctx.clone(), args.namespace.clone(), shutdown.clone());
        let config = MigrationConfig {
            records_per_second: args.root_key_migration_records_per_second,
        };
        async move {
            if let Some(stores) = migrating {
                kubekms_operator::migrate::run(ctx, stores, namespace, config, shutdown).await;
            }
        }
    };
    let controllers = async {
        tokio::join!(
            run_controllers(ctx, args.namespace.clone(), shutdown.clone()),
            migration
        )
    };
    tokio::select! {
        _ = controllers => {
            elector.release().await;
        }
        end = elector.hold(acquired) => {
            // Another replica may lead soon: stop at once rather than reconcile beside it.
            // Exiting drops every reconciliation in flight; the process restarts as a
            // standby.
            health.leader.store(false, Ordering::Relaxed);
            tracing::error!(?end, "no longer the leader; exiting so this replica restarts as a standby");
            std::process::exit(1);
        }
    }
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "metrics server"),
        Err(error) => tracing::warn!(%error, "metrics server task"),
    }
    tracing::info!("stopped");
    Ok(())
}
