//! `kubekms-plugin`: the KMS v2 plugin for kube-apiserver, and the subcommands that manage
//! its local state folder.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};
use keystore_pkcs11::args::{Pkcs11Args, RootKeyLocation};
use kms_plugin::follow::{FollowConfig, FollowTarget, HeartbeatConfig, export, follow};
use kms_plugin::metrics::Metrics;
use kms_plugin::restore::{read_objects, restore, verify};
use kms_plugin::server::{ServeConfig, serve, shutdown_signal};
use kms_plugin::{Plugin, StateDir, format_key_id};
use time::OffsetDateTime;

#[derive(Parser, Debug)]
#[command(
    name = "kubekms-plugin",
    version,
    about = "KubeKMS KMS v2 plugin for kube-apiserver"
)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a state folder: a root key (0600) and a first SYMMETRIC_DEFAULT key.
    /// Refuses to overwrite an existing one.
    Init {
        #[arg(long)]
        state_dir: PathBuf,
        /// Generate the root keys in this PKCS#11 token instead of a root.key file; the
        /// folder records where they are (root-key-pkcs11.json), so later commands need
        /// no flags.
        #[command(flatten)]
        pkcs11: Pkcs11Args,
    },
    /// Rotate the active key on demand: a new material version becomes current (running
    /// servers on this folder pick it up within seconds; kube-apiserver within a minute).
    Rotate {
        #[arg(long)]
        state_dir: PathBuf,
    },
    /// List the active key's material versions.
    Versions {
        #[arg(long)]
        state_dir: PathBuf,
    },
    /// Serve KMS v2 on a Unix socket.
    Serve {
        #[arg(long)]
        state_dir: PathBuf,
        /// Unix socket path (created with mode 0600; a stale socket is replaced).
        #[arg(long)]
        socket: PathBuf,
        /// Address for /healthz, /readyz and /metrics (e.g. 127.0.0.1:9464).
        #[arg(long)]
        http_addr: Option<SocketAddr>,
        /// How often to check the state folder for a rotation, in milliseconds.
        #[arg(long, default_value_t = 2000)]
        reload_interval_ms: u64,
        /// Follow this KmsKey (NAMESPACE/NAME) and its KmsKeyMaterial: write what they
        /// hold into the state folder and make an Enabled key the active one. The plugin
        /// starts and serves from the folder alone; the watch runs in the background.
        #[arg(long, value_name = "NAMESPACE/NAME")]
        follow: Option<FollowTarget>,
        /// Kubeconfig for --follow (default: in-cluster config, else $KUBECONFIG or
        /// ~/.kube/config).
        #[arg(long, requires = "follow")]
        kubeconfig: Option<PathBuf>,
        /// This plugin's name in its heartbeat Lease `kubekms-plugin-<instance>` (with
        /// --follow), which protects the KmsKey and tells the operator when a rotation is
        /// live. One per kube-apiserver: default the node name, else the host name.
        /// Unused without --follow; not refused then, because a pod sets NODE_NAME from
        /// the Downward API whether or not it follows (deploy/static-pod/).
        #[arg(long, env = "NODE_NAME")]
        instance: Option<String>,
        /// With --follow: accept a KmsKeyMaterial of the followed KmsKey that names another
        /// key than the one this plugin adopted from it. Without it such a record is
        /// refused (and reported in health): a replaced record must not move kube-apiserver
        /// to a key that nothing protects. Moving away from the local bootstrap key needs
        /// no flag.
        #[arg(long, requires = "follow")]
        allow_key_switch: bool,
    },
    /// Print the active key as a KmsKeyMaterial record and a KmsKey (YAML for `kubectl
    /// apply --server-side -f -`) with the same key id and wrapped versions, so the
    /// operator adopts the bootstrap key and nothing needs re-encrypting.
    Export {
        #[arg(long)]
        state_dir: PathBuf,
        /// Namespace of the KmsKey to create.
        #[arg(long)]
        namespace: String,
        /// Name of the KmsKey (and of its KmsKeyMaterial).
        #[arg(long)]
        name: String,
    },
    /// Check a backup: unwrap every version of every KmsKeyMaterial in OBJECTS under the
    /// root key file, each bound to its KmsKey (a record whose KmsKey is gone: alone, with
    /// a note), and print one line per key and a summary
    /// (ids, specs and counts only, never material). Exits non-zero when any key does not
    /// unwrap. OBJECTS: JSON as etcd stores it (`etcdctl get --prefix /registry/kubekms.io/
    /// --print-value-only`) or a `kubectl get kmskeys,kmskeymaterials -A -o json` List;
    /// `-` for standard input.
    Verify {
        #[arg(
            long,
            required_unless_present = "pkcs11_module",
            conflicts_with = "pkcs11_module"
        )]
        root_key: Option<PathBuf>,
        /// The root key is in this PKCS#11 token instead of a file.
        #[command(flatten)]
        pkcs11: Pkcs11Args,
        #[arg(long, value_name = "FILE")]
        objects: PathBuf,
    },
    /// Move a state folder from its root key file to root keys in a PKCS#11 token (made
    /// by the operator's --init-root-key): records the token in the folder, keeps
    /// root.key as the previous root key (it still unwraps what it wrapped), and rewraps
    /// every key record under the token, each checked first. Run again to finish after an
    /// interruption; restart `serve` afterwards so the follower unwraps under both.
    MigrateRootKey {
        #[arg(long)]
        state_dir: PathBuf,
        /// The token that becomes the folder's root key.
        #[command(flatten)]
        pkcs11: Pkcs11Args,
    },
    /// Rebuild a state folder on a new host from a restored etcd, before kube-apiserver
    /// starts: the folder holds only the root key put back from the backup; the followed
    /// KmsKey's record (from OBJECTS, as for `verify`) is checked to unwrap under it and
    /// written as the active key, as follow mode would. Then `serve --follow` the same key.
    Restore {
        #[arg(long)]
        state_dir: PathBuf,
        /// The KmsKey the plugin follows (NAMESPACE/NAME).
        #[arg(long, value_name = "NAMESPACE/NAME")]
        follow: FollowTarget,
        #[arg(long, value_name = "FILE")]
        objects: PathBuf,
    },
    /// Ask a running plugin for its Status (as kube-apiserver does).
    Status {
        #[arg(long)]
        socket: PathBuf,
    },
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let now = OffsetDateTime::now_utc();
    match cli.command {
        Command::Init { state_dir, pkcs11 } => {
            let dir = StateDir::new(&state_dir);
            let key = dir.init_with(now, pkcs11.config().as_ref())?;
            println!(
                "initialised {}: key {key}, key_id {}",
                state_dir.display(),
                format_key_id(key, 1)
            );
        }
        Command::Rotate { state_dir } => {
            let (key, version) = StateDir::new(&state_dir).rotate(now)?;
            println!(
                "rotated {key}: version {version} is current, key_id {}",
                format_key_id(key, version)
            );
        }
        Command::Versions { state_dir } => {
            let record = StateDir::new(&state_dir).active_record()?;
            let current = record.versions.last().map(|v| v.version);
            println!(
                "key {} ({}, {})",
                record.key_id, record.key_spec, record.served_state
            );
            println!(
                "{:<8} {:<26} {:<12} {:<8} KEY_ID",
                "VERSION", "CREATED", "TYPE", "CURRENT"
            );
            for v in &record.versions {
                println!(
                    "{:<8} {:<26} {:<12} {:<8} {}/v{}",
                    v.version,
                    v.created,
                    v.rotation_type.as_deref().unwrap_or("ORIGINAL"),
                    if Some(v.version) == current {
                        "yes"
                    } else {
                        ""
                    },
                    record.key_id,
                    v.version
                );
            }
        }
        Command::Serve {
            state_dir,
            socket,
            http_addr,
            reload_interval_ms,
            follow: target,
            kubeconfig,
            instance,
            allow_key_switch,
        } => {
            let instance = kubekms_k8s::heartbeat::instance_name(&instance.unwrap_or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_owned())
                    .unwrap_or_default()
            }));
            let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            runtime.block_on(async move {
                let metrics = Arc::new(Metrics::new());
                let plugin = Plugin::open(StateDir::new(&state_dir), metrics)
                    .with_context(|| format!("loading {}", state_dir.display()))?;
                let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
                let follower = target.map(|target| {
                    tokio::spawn(follow(
                        plugin.clone(),
                        FollowConfig {
                            target,
                            instance,
                            kubeconfig,
                            allow_key_switch,
                            heartbeat: HeartbeatConfig::default(),
                        },
                        stop_rx,
                    ))
                });
                let signal = shutdown_signal()?;
                let shutdown = async move {
                    signal.await;
                    let _ = stop_tx.send(true);
                };
                let served = serve(
                    plugin,
                    ServeConfig {
                        socket,
                        http_addr,
                        reload_interval: Duration::from_millis(reload_interval_ms.max(100)),
                    },
                    shutdown,
                )
                .await;
                if let Some(follower) = follower {
                    follower.abort();
                    let _ = follower.await;
                }
                served?;
                Ok::<_, anyhow::Error>(())
            })?;
        }
        Command::Export {
            state_dir,
            namespace,
            name,
        } => {
            let target: FollowTarget = format!("{namespace}/{name}")
                .parse()
                .map_err(|e: String| anyhow::anyhow!(e))?;
            print!("{}", export(&StateDir::new(&state_dir), &target)?);
        }
        Command::Verify {
            root_key,
            pkcs11,
            objects,
        } => {
            let objects = read_objects(&objects)?;
            let location = RootKeyLocation::from_flags(root_key.unwrap_or_default(), &pkcs11);
            if let RootKeyLocation::File(root_key) = &location
                && !root_key.exists()
            {
                let needed = objects.root_key_ids();
                return Err(kms_plugin::PluginError::RootKeyMissing {
                    path: root_key.clone(),
                    what: format!(
                        "each of the {} KmsKeyMaterial records",
                        objects.records.len()
                    ),
                    needed: needed.keys().cloned().collect::<Vec<_>>().join(", "),
                }
                .into());
            }
            let store = location.open().context("opening the root key")?;
            let verification = verify(&objects, &*store);
            print!("{}", verification.report(&store.root_key_id()));
            if verification.keys.is_empty() {
                anyhow::bail!("no KmsKeyMaterial in the objects given: nothing was verified");
            }
            if verification.unusable() > 0 {
                anyhow::bail!(
                    "{} of {} keys do not unwrap under {}",
                    verification.unusable(),
                    verification.keys.len(),
                    location
                );
            }
        }
        Command::MigrateRootKey { state_dir, pkcs11 } => {
            let Some(config) = pkcs11.config() else {
                anyhow::bail!(
                    "migrate-root-key needs --pkcs11-module, --pkcs11-token-label and --pkcs11-pin-file"
                );
            };
            let migration = StateDir::new(&state_dir).migrate_root_key(&config)?;
            print!("{}", migration.report());
            if !migration.failed.is_empty() {
                anyhow::bail!("{} key records were not moved", migration.failed.len());
            }
        }
        Command::Restore {
            state_dir,
            follow: target,
            objects,
        } => {
            let objects = read_objects(&objects)?;
            let restored = restore(&StateDir::new(&state_dir), &target, &objects)?;
            println!(
                "restored {}: KmsKey {target}, {} versions, key_id {}",
                state_dir.display(),
                restored.versions,
                restored.key_id
            );
        }
        Command::Status { socket } => {
            let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            let status = runtime.block_on(async move {
                let mut client = kms_plugin::client::connect(&socket)
                    .await
                    .with_context(|| format!("connecting to {}", socket.display()))?;
                let status = client
                    .status(kms_plugin::pb::StatusRequest {})
                    .await
                    .context("Status")?
                    .into_inner();
                Ok::<_, anyhow::Error>(status)
            })?;
            println!("version: {}", status.version);
            println!("healthz: {}", status.healthz);
            println!("key_id:  {}", status.key_id);
            if status.healthz != "ok" {
                anyhow::bail!("the plugin is not healthy");
            }
        }
    }
    Ok(())
}
