//! Re-encryption at scale on a real control plane: N Secrets (10,000 of 4 KiB by
//! default) stored under the KubeKMS plugin's key, a rotation, and the operator's pass
//! that rewrites them all under the new key_id, compared in the same run with the
//! upstream way (`kubectl get secrets -A -o json | kubectl replace -f -`), and what
//! kube-apiserver's cold start costs with those Secrets stored under the plugin versus
//! stored in the clear (identity), same data. Goal: every Secret rewritten within 60 s of
//! the last plugin seeding the new key_id, on 2 cores, while kube-apiserver keeps
//! answering another client.
//!
//! ```sh
//! cargo bench -p kubekms-e2e --bench reencrypt_scale            # the full run (about 15 min)
//! cargo bench -p kubekms-e2e --bench reencrypt_scale -- --secrets 1000 --cold-starts 1   # short
//! ```
//!
//! Steps: a private control plane whose plugin follows `kubekms-system/apiserver-key`
//! (`hack/control-plane.sh up --plugin-cmd 'kubekms-plugin serve --follow ...'`, the
//! plugin's /metrics on loopback) → the bootstrap key exported and applied (the plugin
//! adopts it) → N Secrets created in 10 namespaces → the operator binary (this bench's
//! profile, normally release; `KUBEKMS_OPERATOR_BIN` overrides) started with its own
//! ServiceAccount token and RBAC (deploy/rbac/operator.yaml), so API Priority and Fairness
//! treats it as it would in a cluster, and waited for until the key is Enabled and the
//! first pass (of v1) is Done → a probe client (another ServiceAccount) GETs a ConfigMap
//! every 50 ms for the whole run → baseline window of 30 s with nothing else running →
//! rotation on demand; the bench records when the plugin's heartbeat Lease reports
//! kube-apiserver's DEK seed under the new key_id (`seeded-at`), when the pass starts and
//! when it is `Done` → every Secret read back from etcd under the new key_id → the
//! upstream way: `spec.reencryptSecrets: false`, another rotation, the same wait for the
//! seed, then the kubectl pipeline, timed, and etcd read back → cold starts: the operator
//! stopped, kube-apiserver restarted R times with the plugin (time to /readyz and to a
//! full list of Secrets, the plugin's Decrypt calls), then every Secret moved to identity
//! (EncryptionConfiguration identity first, an empty patch of each Secret, etcd checked),
//! the plugin removed from the configuration, and R restarts again.
//!
//! CPU is utime + stime of /proc/PID/stat over each window (USER_HZ = 100); memory is the
//! peak VmRSS sampled every 100 ms (and VmHWM). Nothing about timings is asserted (the
//! machine is shared); the bench fails on errors only: a Secret left under an older
//! key_id, a step that does not finish within its timeout.
//!
//! Run without `--bench` (as `cargo test --benches` does) it only prints how to run it.

#[path = "../tests/envelope/mod.rs"]
mod envelope;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use base64::Engine as _;
use futures::StreamExt as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, ObjectMeta, Patch, PatchParams,
    PostParams,
};
use kube::{Client, Config};
use kubekms_e2e::process::{init_plugin_state, is_zombie, sh_quote, sibling_bin};
use kubekms_e2e::{ControlPlane, repo_root, unique_name};
use serde_json::json;
use time::format_description::well_known::Rfc3339;

const KEY_NS: &str = "kubekms-system";
const KEY_NAME: &str = "apiserver-key";
const PLUGIN_INSTANCE: &str = "bench-cp-1";
const OPERATOR_PROCESS: &str = "kubekms-operator";
const PROBE_EVERY: Duration = Duration::from_millis(50);
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
const BASELINE_WINDOW: Duration = Duration::from_secs(30);
const GOAL_SECONDS: f64 = 60.0;
const MIB: f64 = 1024.0 * 1024.0;

struct Options {
    secrets: usize,
    size: usize,
    namespaces: usize,
    concurrency: usize,
    cold_starts: usize,
    upstream: bool,
    keep_state: bool,
}

const USAGE: &str = "\
usage: cargo bench -p kubekms-e2e --bench reencrypt_scale [-- OPTIONS]
  --secrets N        Secrets to create (default 10000)
  --size BYTES       bytes of data per Secret (default 4096)
  --namespaces K     namespaces they are spread over (default 10)
  --concurrency C    requests in flight while the bench creates or moves Secrets (default 32)
  --cold-starts R    kube-apiserver restarts per storage (default 3; 0 skips that part)
  --no-upstream      skip the kubectl get | kubectl replace comparison
  --keep-state       keep the state folder (logs, etcd data) after a successful run
env: KUBEKMS_OPERATOR_BIN / KUBEKMS_PLUGIN_BIN=<path> measure those binaries instead of
     building them with this bench's profile";

enum Mode {
    Run(Options),
    Help,
    NotBench,
}

fn parse_args() -> Result<Mode> {
    let mut opts = Options {
        secrets: 10_000,
        size: 4096,
        namespaces: 10,
        concurrency: 32,
        cold_starts: 3,
        upstream: true,
        keep_state: false,
    };
    let mut bench = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> Result<usize> {
            let v = args.next().ok_or_else(|| anyhow!("{name} needs a value"))?;
            v.parse()
                .with_context(|| format!("{name} {v:?}: not a number"))
        };
        match arg.as_str() {
            "--bench" => bench = true,
            "--secrets" => opts.secrets = value("--secrets")?,
            "--size" => opts.size = value("--size")?,
            "--namespaces" => opts.namespaces = value("--namespaces")?,
            "--concurrency" => opts.concurrency = value("--concurrency")?,
            "--cold-starts" => opts.cold_starts = value("--cold-starts")?,
            "--no-upstream" => opts.upstream = false,
            "--keep-state" => opts.keep_state = true,
            "-h" | "--help" => return Ok(Mode::Help),
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    ensure!(
        opts.secrets > 0 && opts.namespaces > 0 && opts.concurrency > 0,
        "{USAGE}"
    );
    Ok(if bench {
        Mode::Run(opts)
    } else {
        Mode::NotBench
    })
}

fn main() -> ExitCode {
    match parse_args() {
        Ok(Mode::Run(opts)) => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("reencrypt_scale: error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run(&opts)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("reencrypt_scale: error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Ok(Mode::Help) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Mode::NotBench) => {
            println!(
                "reencrypt_scale: not run (no --bench argument); run it with `cargo bench -p kubekms-e2e --bench reencrypt_scale`"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("reencrypt_scale: {e:#}");
            ExitCode::FAILURE
        }
    }
}

static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn log(what: &str) {
    let t0 = *STARTED.get_or_init(Instant::now);
    eprintln!(
        "[reencrypt_scale] {:>7.1}s {what}",
        t0.elapsed().as_secs_f64()
    );
}

// ------------------------------------------------------------------ /proc readings

/// CPU time of a process, all threads (utime + stime, USER_HZ = 100).
fn cpu_time(pid: i32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(") ")?.1.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// A `kB` field of /proc/PID/status, in bytes.
fn proc_status_bytes(pid: i32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    })
}

/// Peak VmRSS of the watched pids, sampled every [`SAMPLE_EVERY`] on its own thread.
#[derive(Clone, Default)]
struct RssPeaks {
    peaks: Arc<Mutex<HashMap<i32, u64>>>,
    watched: Arc<Mutex<Vec<i32>>>,
    stop: Arc<AtomicBool>,
}

impl RssPeaks {
    fn start() -> Self {
        let me = Self::default();
        let s = me.clone();
        std::thread::spawn(move || {
            while !s.stop.load(Ordering::Relaxed) {
                let pids = s.watched.lock().map(|w| w.clone()).unwrap_or_default();
                for pid in pids {
                    if let Some(rss) = proc_status_bytes(pid, "VmRSS")
                        && let Ok(mut peaks) = s.peaks.lock()
                    {
                        let peak = peaks.entry(pid).or_default();
                        *peak = (*peak).max(rss);
                    }
                }
                std::thread::sleep(SAMPLE_EVERY);
            }
        });
        me
    }

    /// Watches `pids` from now on, their peaks reset.
    fn watch(&self, pids: &[i32]) {
        if let (Ok(mut w), Ok(mut p)) = (self.watched.lock(), self.peaks.lock()) {
            *w = pids.to_vec();
            p.clear();
        }
    }

    fn peak_mib(&self, pid: i32) -> f64 {
        self.peaks
            .lock()
            .ok()
            .and_then(|p| p.get(&pid).copied())
            .unwrap_or_default() as f64
            / MIB
    }
}

impl Drop for RssPeaks {
    fn drop(&mut self) {
        if Arc::strong_count(&self.stop) <= 2 {
            self.stop.store(true, Ordering::Relaxed);
        }
    }
}

/// CPU seconds and peak RSS of a set of processes over a window.
struct Window {
    started: Instant,
    cpu_at_start: Vec<(String, i32, Duration)>,
}

struct WindowCost {
    seconds: f64,
    /// (name, CPU seconds, peak RSS MiB).
    processes: Vec<(String, f64, f64)>,
}

impl Window {
    fn open(rss: &RssPeaks, processes: &[(&str, i32)]) -> Self {
        rss.watch(&processes.iter().map(|(_, p)| *p).collect::<Vec<_>>());
        Self {
            started: Instant::now(),
            cpu_at_start: processes
                .iter()
                .map(|(n, p)| ((*n).to_owned(), *p, cpu_time(*p).unwrap_or_default()))
                .collect(),
        }
    }

    fn close(&self, rss: &RssPeaks) -> WindowCost {
        WindowCost {
            seconds: self.started.elapsed().as_secs_f64(),
            processes: self
                .cpu_at_start
                .iter()
                .map(|(n, p, c)| {
                    let now = cpu_time(*p).unwrap_or(*c);
                    (n.clone(), (now - *c).as_secs_f64(), rss.peak_mib(*p))
                })
                .collect(),
        }
    }
}

// ------------------------------------------------------------------ the probe client

/// Another client of kube-apiserver: a GET of one ConfigMap every [`PROBE_EVERY`],
/// recording when each started and how long it took (a failure counts as 10 s).
struct Probe {
    samples: Arc<Mutex<Vec<(Instant, Duration)>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Probe {
    fn start(client: Client, namespace: &str) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let api: Api<ConfigMap> = Api::namespaced(client, namespace);
        let (s, halt) = (samples.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut complained = false;
            let mut tick = tokio::time::interval(PROBE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !halt.load(Ordering::Relaxed) {
                tick.tick().await;
                let at = Instant::now();
                let ok = match tokio::time::timeout(Duration::from_secs(10), api.get("probe")).await
                {
                    Ok(Ok(_)) => true,
                    Ok(Err(e)) => {
                        if !complained {
                            log(&format!("probe GET failed: {e}"));
                            complained = true;
                        }
                        false
                    }
                    Err(_) => false,
                };
                let took = if ok {
                    at.elapsed()
                } else {
                    Duration::from_secs(10)
                };
                if let Ok(mut v) = s.lock() {
                    v.push((at, took));
                }
            }
        });
        Self {
            samples,
            stop,
            task,
        }
    }

    /// (count, p50, p99) in ms of the requests started within `[from, to)`.
    fn window(&self, from: Instant, to: Instant) -> (usize, f64, f64) {
        let mut ms: Vec<f64> = self
            .samples
            .lock()
            .map(|v| {
                v.iter()
                    .filter(|(at, _)| *at >= from && *at < to)
                    .map(|(_, d)| d.as_secs_f64() * 1000.0)
                    .collect()
            })
            .unwrap_or_default();
        ms.sort_by(f64::total_cmp);
        let q = |p: f64| -> f64 {
            if ms.is_empty() {
                return f64::NAN;
            }
            let i = ((ms.len() as f64 - 1.0) * p).round() as usize;
            ms[i.min(ms.len() - 1)]
        };
        (ms.len(), q(0.5), q(0.99))
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
    }
}

// ------------------------------------------------------------------ the control plane

struct Plane {
    cp: ControlPlane,
    base: PathBuf,
    plugin_state: PathBuf,
    plugin_metrics: u16,
    keep: bool,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Plane {
    fn start(keep: bool) -> Result<Self> {
        let plugin_bin = sibling_bin("KUBEKMS_PLUGIN_BIN", "kubekms-plugin")?;
        let base = std::env::temp_dir().join(unique_name("kubekms-e2e-reencrypt-bench"));
        std::fs::create_dir_all(&base)?;
        let plugin_state = base.join("plugin-state");
        let socket = base.join("kms.sock");
        let cp_state = base.join("cp");
        init_plugin_state(&plugin_bin, &plugin_state)?;
        let plugin_metrics = free_port()?;
        let plugin_cmd = format!(
            "exec {} serve --state-dir {} --socket {} --http-addr 127.0.0.1:{plugin_metrics} --follow {KEY_NS}/{KEY_NAME} --instance {PLUGIN_INSTANCE} --kubeconfig {}",
            sh_quote(&plugin_bin),
            sh_quote(&plugin_state),
            sh_quote(&socket),
            sh_quote(&cp_state.join("kubeconfig")),
        );
        let cp = ControlPlane::start_with_plugin(&cp_state, &socket, &plugin_cmd)?;
        Ok(Self {
            cp,
            base,
            plugin_state,
            plugin_metrics,
            keep,
        })
    }

    /// The plugin's Decrypt calls so far (its /metrics).
    fn plugin_decrypts(&self) -> Result<f64> {
        use std::io::{Read as _, Write as _};
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", self.plugin_metrics))?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut text = String::new();
        conn.read_to_string(&mut text)?;
        Ok(text
            .lines()
            .filter(|l| l.contains("grpc_requests") && l.contains("Decrypt") && !l.starts_with('#'))
            .filter_map(|l| {
                l.rsplit_once(' ')
                    .and_then(|(_, v)| v.trim().parse::<f64>().ok())
            })
            .sum())
    }

    /// Every Secret's key_id in etcd: (stored under KMS by key_id, stored in the clear).
    fn stored(&self) -> Result<(BTreeMap<String, usize>, usize)> {
        let out = self
            .cp
            .etcdctl(["get", "/registry/secrets/", "--prefix", "-w", "json"])?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut ids = BTreeMap::new();
        let mut clear = 0;
        for kv in v
            .get("kvs")
            .and_then(|k| k.as_array())
            .into_iter()
            .flatten()
        {
            let value = b64.decode(kv.get("value").and_then(|x| x.as_str()).unwrap_or_default())?;
            if value.starts_with(b"k8s:enc:") {
                *ids.entry(envelope::parse_stored(&value, &[])?.key_id)
                    .or_default() += 1;
            } else {
                clear += 1;
            }
        }
        Ok((ids, clear))
    }
}

impl Drop for Plane {
    fn drop(&mut self) {
        if self.cp.pid_file(OPERATOR_PROCESS).exists() {
            let _ = self.cp.stop_process(OPERATOR_PROCESS);
        }
        let _ = Command::new(repo_root().join("hack/control-plane.sh"))
            .arg("down")
            .arg("--state-dir")
            .arg(&self.cp.state_dir)
            .stdin(Stdio::null())
            .output();
        if self.keep || std::thread::panicking() {
            eprintln!(
                "[reencrypt_scale] state kept in {} (logs in {})",
                self.base.display(),
                self.cp.state_dir.join("logs").display()
            );
        } else if let Err(e) = std::fs::remove_dir_all(&self.base) {
            eprintln!("[reencrypt_scale] removing {}: {e}", self.base.display());
        }
    }
}

async fn wait_until<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + limit;
    loop {
        let last = match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => String::new(),
            Err(e) => format!(" (last error: {e:#})"),
        };
        ensure!(
            Instant::now() < deadline,
            "{what}: not reached within {limit:?}{last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn kmskeys(client: &Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("kubekms.io", "v1alpha1", "KmsKey");
    Api::namespaced_with(client.clone(), KEY_NS, &ApiResource::from_gvk(&gvk))
}

async fn kmskey_status(client: &Client) -> Result<serde_json::Value> {
    Ok(kmskeys(client)
        .get(KEY_NAME)
        .await?
        .data
        .get("status")
        .cloned()
        .unwrap_or_default())
}

/// The plugin's heartbeat: (seeded key_id, seeded-at) as kube-apiserver's latest Encrypt.
async fn seeded(client: &Client) -> Result<Option<(String, time::OffsetDateTime)>> {
    let lease = Api::<Lease>::namespaced(client.clone(), KEY_NS)
        .get_opt(&format!("kubekms-plugin-{PLUGIN_INSTANCE}"))
        .await?;
    let Some(annotations) = lease.and_then(|l| l.metadata.annotations) else {
        return Ok(None);
    };
    let (Some(id), Some(at)) = (
        annotations.get("kubekms.io/seeded-key-id"),
        annotations.get("kubekms.io/seeded-at"),
    ) else {
        return Ok(None);
    };
    let at = time::OffsetDateTime::parse(at, &Rfc3339)?;
    Ok(Some((id.clone(), at)))
}

/// How long ago (by the wall clock of this machine, the plugin's too) `at` was.
fn age(at: time::OffsetDateTime) -> Duration {
    let d = time::OffsetDateTime::now_utc() - at;
    Duration::from_secs_f64(d.as_seconds_f64().max(0.0))
}

async fn rotate(client: &Client, token: &str) -> Result<()> {
    kmskeys(client)
        .patch(
            KEY_NAME,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rotation": {"onDemandToken": token}}})),
        )
        .await?;
    Ok(())
}

/// Waits until kube-apiserver seeded a DEK under `key_id`; returns when (bench clock).
async fn wait_seeded(client: &Client, key_id: &str) -> Result<Instant> {
    let at = wait_until(
        &format!("kube-apiserver seeding a DEK under {key_id}"),
        Duration::from_secs(240),
        || async {
            Ok(seeded(client)
                .await?
                .filter(|(id, _)| id == key_id)
                .map(|(_, at)| at))
        },
    )
    .await?;
    Ok(Instant::now() - age(at))
}

/// The key's current key_id (the status's keyId and currentVersion).
async fn current_key_id(client: &Client) -> Result<Option<String>> {
    let st = kmskey_status(client).await?;
    Ok(
        match (st["keyId"].as_str(), st["currentVersion"].as_u64()) {
            (Some(id), Some(v)) => Some(format!("{id}/v{v}")),
            _ => None,
        },
    )
}

// ------------------------------------------------------------------ steps

async fn create_namespace(client: &Client, name: &str) -> Result<()> {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating namespace {name}")),
    }
}

async fn create_secrets(client: &Client, opts: &Options) -> Result<f64> {
    for n in 0..opts.namespaces {
        create_namespace(client, &format!("bench-secrets-{n}")).await?;
    }
    let started = Instant::now();
    let results: Vec<Result<()>> = futures::stream::iter(0..opts.secrets)
        .map(|i| {
            let client = client.clone();
            let size = opts.size;
            let ns = format!("bench-secrets-{}", i % opts.namespaces);
            async move {
                let mut data = vec![0u8; size];
                for (j, b) in data.iter_mut().enumerate() {
                    *b = (i.wrapping_mul(31).wrapping_add(j.wrapping_mul(7)) % 251) as u8;
                }
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(format!("s-{i:05}")),
                        ..ObjectMeta::default()
                    },
                    data: Some(BTreeMap::from([("value".to_owned(), ByteString(data))])),
                    ..Secret::default()
                };
                Api::<Secret>::namespaced(client, &ns)
                    .create(&PostParams::default(), &secret)
                    .await
                    .with_context(|| format!("creating {ns}/s-{i:05}"))?;
                Ok(())
            }
        })
        .buffer_unordered(opts.concurrency)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>>>()?;
    Ok(started.elapsed().as_secs_f64())
}

/// A client authenticated as ServiceAccount `namespace/name` (a token from `kubectl
/// create token`), so API Priority and Fairness classifies it as a workload.
async fn service_account_client(
    plane: &Plane,
    namespace: &str,
    name: &str,
) -> Result<(Client, PathBuf)> {
    let path = plane.base.join(format!("{name}.kubeconfig"));
    plane
        .cp
        .write_service_account_kubeconfig(namespace, name, &path)?;
    let kubeconfig = kube::config::Kubeconfig::read_from(&path)?;
    let config =
        Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
            .await?;
    Ok((Client::try_from(config)?, path))
}

fn start_operator(plane: &Plane, kubeconfig: &Path) -> Result<i32> {
    let bin = sibling_bin("KUBEKMS_OPERATOR_BIN", OPERATOR_PROCESS)?;
    let argv: Vec<String> = vec![
        "env".into(),
        format!("KUBECONFIG={}", kubeconfig.display()),
        bin.display().to_string(),
        "--root-key".into(),
        plane.plugin_state.join("root.key").display().to_string(),
        "--metrics-addr".into(),
        "127.0.0.1:0".into(),
        "--lease-namespace".into(),
        KEY_NS.into(),
        "--identity".into(),
        "bench".into(),
        "--log-format".into(),
        "text".into(),
    ];
    plane.cp.start_process(OPERATOR_PROCESS, &argv)?;
    let pid = plane.cp.pid_of(OPERATOR_PROCESS)?;
    let want = std::fs::canonicalize(&bin)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_link(format!("/proc/{pid}/exe")).ok() != Some(want.clone()) {
        ensure!(
            !is_zombie(pid) && Instant::now() < deadline,
            "the operator did not start; log {}",
            plane.cp.log_path(OPERATOR_PROCESS).display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(pid)
}

struct PassFigures {
    secrets: u64,
    seeded_to_done: f64,
    seeded_to_start: f64,
    pass: f64,
    probe_baseline: (usize, f64, f64),
    probe_during: (usize, f64, f64),
    cost: WindowCost,
}

/// Rotates to the next version and times the operator's pass.
async fn operator_pass(
    client: &Client,
    probe: &Probe,
    rss: &RssPeaks,
    pids: &[(&str, i32)],
    token: &str,
) -> Result<PassFigures> {
    let before = current_key_id(client)
        .await?
        .ok_or_else(|| anyhow!("no key_id"))?;
    let baseline_from = Instant::now();
    tokio::time::sleep(BASELINE_WINDOW).await;
    let probe_baseline = probe.window(baseline_from, Instant::now());
    rotate(client, token).await?;
    let target = wait_until("the rotation", Duration::from_secs(60), || async {
        Ok(current_key_id(client).await?.filter(|k| *k != before))
    })
    .await?;
    log(&format!(
        "rotated to {target}; waiting for kube-apiserver to seed a DEK under it"
    ));
    let seeded_at = wait_seeded(client, &target).await?;
    let window = Window::open(rss, pids);
    log("seeded; waiting for the pass");
    let version: u64 = target
        .rsplit_once("/v")
        .and_then(|(_, v)| v.parse().ok())
        .ok_or_else(|| anyhow!("key_id {target} has no version"))?;
    let done = wait_until("the pass to be Done", Duration::from_secs(900), || async {
        let st = kmskey_status(client).await?;
        let r = &st["reencryption"];
        Ok(
            (r["targetVersion"].as_u64() == Some(version) && r["phase"] == "Done")
                .then(|| r.clone()),
        )
    })
    .await?;
    let cost = window.close(rss);
    ensure!(
        done["secretsFailed"].as_u64().unwrap_or(0) == 0,
        "the pass refused Secrets: {done}"
    );
    // The operator's own timestamps (this machine's wall clock, as the plugin's seed
    // time): polling the status would round a short pass to the polling interval.
    let stamp = |field: &str| -> Result<Instant> {
        let text = done[field]
            .as_str()
            .ok_or_else(|| anyhow!("the Done status has no {field}: {done}"))?;
        Ok(Instant::now() - age(time::OffsetDateTime::parse(text, &Rfc3339)?))
    };
    let (started_at, done_at) = (stamp("started")?, stamp("finished")?);
    Ok(PassFigures {
        secrets: done["secretsRewritten"].as_u64().unwrap_or_default(),
        seeded_to_done: (done_at.saturating_duration_since(seeded_at)).as_secs_f64(),
        seeded_to_start: (started_at.saturating_duration_since(seeded_at)).as_secs_f64(),
        pass: (done_at.saturating_duration_since(started_at)).as_secs_f64(),
        probe_baseline,
        probe_during: probe.window(started_at, done_at),
        cost,
    })
}

struct UpstreamFigures {
    seconds: f64,
    probe_baseline: (usize, f64, f64),
    probe_during: (usize, f64, f64),
    cost: WindowCost,
    kubectl_cpu: f64,
    kubectl_peak_mib: f64,
}

/// `kubectl get secrets -A -o json | kubectl replace -f -`, after a rotation with the
/// operator's pass switched off.
async fn upstream_pass(
    plane: &Plane,
    client: &Client,
    probe: &Probe,
    rss: &RssPeaks,
    pids: &[(&str, i32)],
) -> Result<(UpstreamFigures, String)> {
    kmskeys(client)
        .patch(
            KEY_NAME,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"reencryptSecrets": false}})),
        )
        .await?;
    let before = current_key_id(client)
        .await?
        .ok_or_else(|| anyhow!("no key_id"))?;
    rotate(client, "bench-upstream").await?;
    let target = wait_until("the rotation", Duration::from_secs(60), || async {
        Ok(current_key_id(client).await?.filter(|k| *k != before))
    })
    .await?;
    wait_seeded(client, &target).await?;
    log(&format!(
        "{target} seeded with the operator's pass off; baseline, then kubectl"
    ));
    let baseline_from = Instant::now();
    tokio::time::sleep(BASELINE_WINDOW).await;
    let probe_baseline = probe.window(baseline_from, Instant::now());
    let kubectl = plane.cp.tool("kubectl");
    let mut get = Command::new(&kubectl)
        .env("KUBECONFIG", &plane.cp.kubeconfig)
        .args(["get", "secrets", "-A", "-o", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = get.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let replace = Command::new(&kubectl)
        .env("KUBECONFIG", &plane.cp.kubeconfig)
        .args(["replace", "-f", "-"])
        .stdin(Stdio::from(stdout))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let (get_pid, replace_pid) = (get.id() as i32, replace.id() as i32);
    let mut watched: Vec<(&str, i32)> = pids.to_vec();
    watched.extend([("kubectl get", get_pid), ("kubectl replace", replace_pid)]);
    let window = Window::open(rss, &watched);
    let started = Instant::now();
    // Read each kubectl's CPU while it is a zombie, before it is reaped.
    let mut kubectl_cpu = HashMap::new();
    let mut peak = 0.0f64;
    let deadline = Instant::now() + Duration::from_secs(1800);
    while kubectl_cpu.len() < 2 {
        for pid in [get_pid, replace_pid] {
            if !kubectl_cpu.contains_key(&pid) && is_zombie(pid) {
                kubectl_cpu.insert(pid, cpu_time(pid).unwrap_or_default());
                peak = peak.max(rss.peak_mib(pid));
            }
        }
        ensure!(
            Instant::now() < deadline,
            "kubectl replace did not finish in 30 min"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let during = probe.window(started, Instant::now());
    let cost = window.close(rss);
    let get_status = get.wait()?;
    let out = replace.wait_with_output()?;
    ensure!(
        get_status.success() && out.status.success(),
        "kubectl get | kubectl replace failed: {}",
        String::from_utf8_lossy(&out.stderr)
            .chars()
            .take(2000)
            .collect::<String>()
    );
    let cost = WindowCost {
        processes: cost
            .processes
            .into_iter()
            .filter(|(n, ..)| !n.starts_with("kubectl"))
            .collect(),
        ..cost
    };
    Ok((
        UpstreamFigures {
            seconds,
            probe_baseline,
            probe_during: during,
            cost,
            kubectl_cpu: kubectl_cpu.values().map(Duration::as_secs_f64).sum(),
            kubectl_peak_mib: peak,
        },
        target,
    ))
}

/// Restarts kube-apiserver; returns (seconds to /readyz, seconds to a full list of the
/// Secrets, the plugin's Decrypt calls during the start).
async fn cold_start(plane: &Plane, client: &Client, secrets: usize) -> Result<(f64, f64, f64)> {
    let argv = plane.cp.argv_of("kube-apiserver")?;
    let decrypts_before = plane.plugin_decrypts().unwrap_or(f64::NAN);
    plane.cp.stop_process("kube-apiserver")?;
    let started = Instant::now();
    plane.cp.start_process("kube-apiserver", &argv)?;
    let readyz = wait_until(
        "kube-apiserver /readyz",
        Duration::from_secs(300),
        || async {
            let request = http::Request::get("/readyz").body(Vec::new())?;
            Ok(client
                .request_text(request)
                .await
                .ok()
                .filter(|t| t.trim() == "ok")
                .map(|_| started.elapsed().as_secs_f64()))
        },
    )
    .await?;
    let listed = wait_until(
        "a full list of Secrets",
        Duration::from_secs(300),
        || async {
            let list = Api::<Secret>::all(client.clone())
                .list_metadata(&ListParams::default())
                .await?;
            Ok((list.items.len() >= secrets).then(|| started.elapsed().as_secs_f64()))
        },
    )
    .await?;
    let decrypts = plane.plugin_decrypts().unwrap_or(f64::NAN) - decrypts_before;
    Ok((readyz, listed, decrypts))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Every Secret moved to identity storage: identity first in the EncryptionConfiguration
/// (the plugin still reads), kube-apiserver restarted, an empty patch of each Secret.
async fn move_to_identity(plane: &Plane, client: &Client, opts: &Options) -> Result<()> {
    let argv = plane.cp.argv_of("kube-apiserver")?;
    let config_path = argv
        .iter()
        .zip(argv.iter().skip(1))
        .find_map(|(a, b)| {
            a.strip_prefix("--encryption-provider-config=")
                .map(str::to_owned)
                .or_else(|| (a == "--encryption-provider-config").then(|| b.clone()))
        })
        .ok_or_else(|| anyhow!("kube-apiserver has no --encryption-provider-config"))?;
    let original = std::fs::read_to_string(&config_path)?;
    let providers_at = original
        .find("  providers:\n")
        .ok_or_else(|| anyhow!("unexpected EncryptionConfiguration:\n{original}"))?
        + "  providers:\n".len();
    let (head, kms) = original.split_at(providers_at);
    let identity_first = format!(
        "{head}  - identity: {{}}\n{}",
        kms.replace("  - identity: {}\n", "")
    );
    std::fs::write(&config_path, identity_first)?;
    plane.cp.stop_process("kube-apiserver")?;
    plane.cp.start_process("kube-apiserver", &argv)?;
    plane.cp.wait_apiserver_ready()?;
    let list = Api::<Secret>::all(client.clone())
        .list_metadata(&ListParams::default())
        .await?;
    let results: Vec<Result<()>> = futures::stream::iter(list.items)
        .map(|s| {
            let client = client.clone();
            async move {
                let ns = s.metadata.namespace.unwrap_or_default();
                let name = s.metadata.name.unwrap_or_default();
                Api::<Secret>::namespaced(client, &ns)
                    .patch(&name, &PatchParams::default(), &Patch::Merge(json!({})))
                    .await
                    .with_context(|| format!("moving {ns}/{name} to identity"))?;
                Ok(())
            }
        })
        .buffer_unordered(opts.concurrency)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>>>()?;
    let (kms, clear) = plane.stored()?;
    ensure!(
        kms.is_empty(),
        "after the move to identity etcd still holds Secrets under the plugin: {kms:?}"
    );
    // The plugin out of the configuration altogether: a start with identity alone.
    std::fs::write(
        &config_path,
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources:\n  - secrets\n  providers:\n  - identity: {}\n",
    )?;
    log(&format!(
        "{clear} Secrets stored in the clear; the plugin removed from the configuration"
    ));
    Ok(())
}

fn cost_line(cost: &WindowCost) -> String {
    cost.processes
        .iter()
        .map(|(n, cpu, mib)| {
            format!(
                "{n} {cpu:.1} CPU-s ({:.0}% of a core), peak {mib:.0} MiB",
                100.0 * cpu / cost.seconds.max(1e-9)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

async fn run(opts: &Options) -> Result<()> {
    log(&format!(
        "{} Secrets of {} bytes in {} namespaces; load average {}",
        opts.secrets,
        opts.size,
        opts.namespaces,
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    ));
    let plane = Plane::start(opts.keep_state)?;
    let client = plane.cp.client().await?;
    log("control plane up, plugin following kubekms-system/apiserver-key");
    plane.cp.kubectl(["create", "namespace", KEY_NS])?;
    plane.cp.apply_crds()?;
    let rbac = std::fs::read_to_string(repo_root().join("deploy/rbac/operator.yaml"))?;
    plane
        .cp
        .kubectl_stdin(&["apply", "-f", "-"], rbac.as_bytes())?;
    let plugin_bin = sibling_bin("KUBEKMS_PLUGIN_BIN", "kubekms-plugin")?;
    let export = Command::new(&plugin_bin)
        .args([
            "export",
            "--namespace",
            KEY_NS,
            "--name",
            KEY_NAME,
            "--state-dir",
        ])
        .arg(&plane.plugin_state)
        .stdin(Stdio::null())
        .output()?;
    ensure!(
        export.status.success(),
        "export: {}",
        String::from_utf8_lossy(&export.stderr)
    );
    plane
        .cp
        .kubectl_stdin(&["apply", "--server-side", "-f", "-"], &export.stdout)?;
    let keys_dir = plane.plugin_state.join("keys");
    wait_until(
        "the plugin adopting the KmsKey",
        Duration::from_secs(60),
        || async {
            let adopted = std::fs::read_dir(&keys_dir)?.flatten().any(|e| {
                std::fs::read_to_string(e.path())
                    .is_ok_and(|t| t.contains("\"source\": \"kubernetes\""))
            });
            Ok(adopted.then_some(()))
        },
    )
    .await?;
    log("bootstrap key handed over");

    let created_in = create_secrets(&client, opts).await?;
    let total = Api::<Secret>::all(client.clone())
        .list_metadata(&ListParams::default())
        .await?
        .items
        .len();
    log(&format!(
        "{} Secrets created in {created_in:.1}s ({:.0}/s); {total} Secrets in the cluster",
        opts.secrets,
        opts.secrets as f64 / created_in
    ));

    // The probe: another workload's client, and its ConfigMap.
    plane.cp.kubectl(["create", "namespace", "bench-probe"])?;
    plane
        .cp
        .kubectl(["create", "serviceaccount", "probe", "-n", "bench-probe"])?;
    plane.cp.kubectl([
        "create",
        "configmap",
        "probe",
        "-n",
        "bench-probe",
        "--from-literal=k=v",
    ])?;
    // Not the `view` ClusterRole: without kube-controller-manager its aggregated rules
    // stay empty.
    plane.cp.kubectl([
        "create",
        "role",
        "probe",
        "-n",
        "bench-probe",
        "--verb=get",
        "--resource=configmaps",
    ])?;
    plane.cp.kubectl([
        "create",
        "rolebinding",
        "probe",
        "-n",
        "bench-probe",
        "--role=probe",
        "--serviceaccount=bench-probe:probe",
    ])?;
    let (probe_client, _) = service_account_client(&plane, "bench-probe", "probe").await?;
    let probe = Probe::start(probe_client, "bench-probe");

    let (_, operator_kubeconfig) =
        service_account_client(&plane, KEY_NS, "kubekms-operator").await?;
    let operator_pid = start_operator(&plane, &operator_kubeconfig)?;
    let apiserver_pid = plane.cp.pid_of("kube-apiserver")?;
    let etcd_pid = plane.cp.pid_of("etcd")?;
    let plugin_pid = plane.cp.pid_of("kms-plugin")?;
    let rss = RssPeaks::start();
    // The key Enabled, and the pass of its current version (v1: nothing stale) Done.
    wait_until(
        "the key Enabled and its first pass Done",
        Duration::from_secs(600),
        || async {
            let st = kmskey_status(&client).await?;
            Ok(
                (st["keyState"] == "Enabled" && st["reencryption"]["phase"] == "Done")
                    .then_some(()),
            )
        },
    )
    .await?;
    log("operator running, key Enabled, first pass Done; 30 s baseline, then the rotation");
    let pids = [
        ("kube-apiserver", apiserver_pid),
        ("etcd", etcd_pid),
        ("kms-plugin", plugin_pid),
        ("operator", operator_pid),
    ];
    let ours = operator_pass(&client, &probe, &rss, &pids, "bench-2").await?;
    let target = current_key_id(&client).await?.unwrap_or_default();
    let (stored, clear) = plane.stored()?;
    ensure!(
        clear == 0 && stored.len() == 1 && stored.contains_key(&target),
        "after the operator's pass etcd holds {stored:?} (+{clear} in the clear), not every Secret under {target}"
    );
    let operator_hwm = proc_status_bytes(operator_pid, "VmHWM").unwrap_or_default() as f64 / MIB;
    log(&format!(
        "operator pass: {} Secrets in {:.1}s from the seed ({:.1}s rewriting); all {} in etcd under {target}",
        ours.secrets, ours.seeded_to_done, ours.pass, stored[&target]
    ));

    let upstream = if opts.upstream {
        let (figures, target) = upstream_pass(&plane, &client, &probe, &rss, &pids[..3]).await?;
        let (stored, clear) = plane.stored()?;
        ensure!(
            clear == 0 && stored.len() == 1 && stored.contains_key(&target),
            "after kubectl replace etcd holds {stored:?} (+{clear}), not every Secret under {target}"
        );
        log(&format!("kubectl get | replace: {:.1}s", figures.seconds));
        Some(figures)
    } else {
        None
    };
    probe.stop().await;

    let mut starts = Vec::new();
    if opts.cold_starts > 0 {
        plane.cp.stop_process(OPERATOR_PROCESS)?;
        let mut kms = Vec::new();
        for _ in 0..opts.cold_starts {
            kms.push(cold_start(&plane, &client, total).await?);
        }
        move_to_identity(&plane, &client, opts).await?;
        let mut identity = Vec::new();
        for _ in 0..opts.cold_starts {
            identity.push(cold_start(&plane, &client, total).await?);
        }
        starts.push(("plugin (KMS v2)", kms));
        starts.push(("identity", identity));
    }

    // ------------------------------------------------------------------ report
    let ratio = |during: (usize, f64, f64), base: (usize, f64, f64)| during.2 / base.2;
    println!();
    println!(
        "## reencrypt_scale: {} Secrets of {} bytes ({total} in the cluster), load average {}",
        opts.secrets,
        opts.size,
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!();
    println!("| | operator (adaptive) | kubectl get \\| replace |");
    println!("|---|---|---|");
    let up = upstream.as_ref();
    let or_dash = |f: Option<String>| f.unwrap_or_else(|| "-".into());
    println!("| Secrets rewritten | {} | {total} |", ours.secrets);
    println!(
        "| time, seed to Done (goal {GOAL_SECONDS:.0} s) | **{:.1} s** (detection {:.1} s + pass {:.1} s) | {} |",
        ours.seeded_to_done,
        ours.seeded_to_start,
        ours.pass,
        or_dash(up.map(|u| format!("{:.1} s (the pipeline alone)", u.seconds)))
    );
    println!(
        "| Secrets per second | {:.0} (pass) / {:.0} (from the seed) | {} |",
        ours.secrets as f64 / ours.pass,
        ours.secrets as f64 / ours.seeded_to_done,
        or_dash(up.map(|u| format!("{:.0}", total as f64 / u.seconds)))
    );
    println!(
        "| probe p99 during / without (same run) | **{:.2}x** ({:.1} / {:.1} ms, p50 {:.1} / {:.1} ms, {} / {} GETs) | {} |",
        ratio(ours.probe_during, ours.probe_baseline),
        ours.probe_during.2,
        ours.probe_baseline.2,
        ours.probe_during.1,
        ours.probe_baseline.1,
        ours.probe_during.0,
        ours.probe_baseline.0,
        or_dash(up.map(|u| format!(
            "{:.2}x ({:.1} / {:.1} ms, p50 {:.1} / {:.1} ms)",
            ratio(u.probe_during, u.probe_baseline),
            u.probe_during.2,
            u.probe_baseline.2,
            u.probe_during.1,
            u.probe_baseline.1
        )))
    );
    println!(
        "| CPU and peak RSS over the window | {} | {} |",
        cost_line(&ours.cost),
        or_dash(up.map(|u| format!(
            "{}; kubectl (both) {:.1} CPU-s, peak {:.0} MiB",
            cost_line(&u.cost),
            u.kubectl_cpu,
            u.kubectl_peak_mib
        )))
    );
    println!("| operator VmHWM (whole run) | {operator_hwm:.0} MiB | - |");
    if !starts.is_empty() {
        println!();
        println!(
            "| kube-apiserver cold start, {total} Secrets | /readyz (median) | full Secret list (median) | plugin Decrypt calls | runs |"
        );
        println!("|---|---|---|---|---|");
        let mut medians = Vec::new();
        for (name, runs) in &starts {
            let r = median(runs.iter().map(|r| r.0).collect());
            let l = median(runs.iter().map(|r| r.1).collect());
            let d: Vec<String> = runs.iter().map(|r| format!("{:.0}", r.2)).collect();
            let all: Vec<String> = runs
                .iter()
                .map(|r| format!("{:.1}/{:.1}", r.0, r.1))
                .collect();
            println!(
                "| {name} | {r:.2} s | {l:.2} s | {} | {} |",
                d.join(", "),
                all.join(", ")
            );
            medians.push((r, l));
        }
        if let [(kr, kl), (ir, il)] = medians[..] {
            println!(
                "| ratio plugin / identity | {:.2}x | {:.2}x | | |",
                kr / ir,
                kl / il
            );
        }
    }
    Ok(())
}
