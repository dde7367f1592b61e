//! Scale benchmark of `kubekms-operator` on a real control plane: N KmsKeys (1,000 by
//! default) created at once; how long until every one is `Enabled`, and the operator's
//! memory. Goal: 1,000 keys in 30 s, at most 150 MiB, on 2 cores.
//!
//! ```sh
//! cargo bench -p kubekms-e2e --bench operator_scale [-- --keys N --concurrency C --timeout-secs S --baseline-rounds R --keep-state]
//! ```
//!
//! Machines are shared and noisy, so the absolute times are reported next to a baseline
//! measured in the same run, on the same API server, with the same client and the same
//! bounded concurrency: creating N ConfigMaps of about the same size (median of R rounds).
//! Nothing is asserted about the timings; the process fails only on errors (a control
//! plane that does not start, a create that fails, a key that is not `Enabled` within the
//! timeout, which lists those keys and their status).
//!
//! Steps: a private control plane (`hack/control-plane.sh up --watch-pid <this process>`,
//! no KMS plugin) → CRDs applied and Established → baseline: N ConfigMaps created, R
//! times → N KmsKeys created with no operator running (the API server's cost of the
//! custom resource alone), then deleted → the real operator binary started (built by this
//! bench with the bench's own profile, normally release; `KUBEKMS_OPERATOR_BIN`
//! overrides) and waited for until it holds its Lease → N KmsKeys created in another
//! namespace; a watch records when each one first reports `status.keyState: Enabled`; the
//! operator's VmRSS is sampled every 100 ms and its VmHWM read at the end → a table on
//! stdout → teardown (`control-plane.sh down`, also on error; the launcher's watchdog
//! covers a killed bench).
//!
//! Run without `--bench` (as `cargo test --benches` does) it only prints how to run it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use futures::StreamExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::Client;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, ObjectMeta,
    PostParams, WatchEvent, WatchParams,
};
use kubekms_e2e::process::{is_zombie, sibling_bin, tools_bin};
use kubekms_e2e::{ControlPlane, repo_root, unique_name};
use serde_json::json;

const OPERATOR_ENV: &str = "KUBEKMS_OPERATOR_BIN";
const OPERATOR_PROCESS: &str = "kubekms-operator";
const IDENTITY: &str = "bench";
const LEASE_NAME: &str = "kubekms-operator";
const NS_BASELINE_CM: &str = "bench-baseline-configmaps";
const NS_BASELINE_KEYS: &str = "bench-baseline-kmskeys";
const NS_KEYS: &str = "bench-operator-scale";
const GOAL_SECONDS: f64 = 30.0;
const GOAL_MIB: f64 = 150.0;
const GOAL_KEYS: usize = 1000;
const RSS_EVERY: Duration = Duration::from_millis(100);
const MIB: f64 = 1024.0 * 1024.0;

struct Options {
    keys: usize,
    concurrency: usize,
    timeout: Duration,
    baseline_rounds: usize,
    keep_state: bool,
}

enum Mode {
    Run(Options),
    Help,
    NotBench,
}

const USAGE: &str = "\
usage: cargo bench -p kubekms-e2e --bench operator_scale [-- OPTIONS]
  --keys N            how many KmsKeys (and baseline ConfigMaps) to create (default 1000)
  --concurrency C     requests in flight while creating (default 32)
  --timeout-secs S    how long every key may take to become Enabled (default 300)
  --baseline-rounds R how many times the ConfigMap baseline is measured; the median
                      is the baseline (default 3)
  --keep-state        keep the state folder (logs, etcd data) after a successful run
env: KUBEKMS_OPERATOR_BIN=<path> measures that binary instead of building the operator
     with this bench's profile";

fn parse_args() -> Result<Mode> {
    let mut opts = Options {
        keys: GOAL_KEYS,
        concurrency: 32,
        timeout: Duration::from_secs(300),
        baseline_rounds: 3,
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
            "--keys" => opts.keys = value("--keys")?,
            "--concurrency" => opts.concurrency = value("--concurrency")?,
            "--timeout-secs" => opts.timeout = Duration::from_secs(value("--timeout-secs")? as u64),
            "--baseline-rounds" => opts.baseline_rounds = value("--baseline-rounds")?,
            "--keep-state" => opts.keep_state = true,
            "-h" | "--help" => return Ok(Mode::Help),
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    ensure!(opts.keys > 0, "--keys must be at least 1");
    ensure!(opts.concurrency > 0, "--concurrency must be at least 1");
    ensure!(
        opts.baseline_rounds > 0,
        "--baseline-rounds must be at least 1"
    );
    Ok(if bench {
        Mode::Run(opts)
    } else {
        Mode::NotBench
    })
}

fn main() -> ExitCode {
    match parse_args() {
        Ok(Mode::Run(opts)) => match run(&opts) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("operator_scale: error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Ok(Mode::Help) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Mode::NotBench) => {
            println!(
                "operator_scale: not run (no --bench argument); run it with `cargo bench -p kubekms-e2e --bench operator_scale`"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("operator_scale: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn log(started: Instant, what: &str) {
    eprintln!(
        "[operator_scale] {:>7.1}s {what}",
        started.elapsed().as_secs_f64()
    );
}

// ------------------------------------------------------------------ the control plane

/// The private control plane; `down` (operator first) when dropped, whatever happened.
struct Plane {
    cp: ControlPlane,
    base: PathBuf,
    keep: bool,
}

impl Plane {
    fn start(base: &Path) -> Result<Self> {
        let tools = tools_bin()?;
        let cp_state = base.join("cp");
        let launcher = repo_root().join("hack/control-plane.sh");
        let out = Command::new(&launcher)
            .arg("up")
            .arg("--state-dir")
            .arg(&cp_state)
            .arg("--tools-bin")
            .arg(&tools)
            .args(["--watch-pid", &std::process::id().to_string()])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", launcher.display()))?;
        let mut plane = Self {
            // Even a failed `up` may have left something to stop: `down` runs in drop.
            cp: ControlPlane {
                state_dir: cp_state.clone(),
                kubeconfig: cp_state.join("kubeconfig"),
                etcd_endpoint: String::new(),
                apiserver_url: String::new(),
                tools_bin: tools,
                kms_socket: None,
                etcdctl_cmd: None,
                expected_kube_version: None,
            },
            base: base.to_path_buf(),
            keep: true,
        };
        ensure!(
            out.status.success(),
            "control-plane.sh up failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        plane.cp = ControlPlane::from_state_dir(&cp_state)?;
        Ok(plane)
    }
}

impl Drop for Plane {
    fn drop(&mut self) {
        if self.cp.pid_file(OPERATOR_PROCESS).exists()
            && let Err(e) = self.cp.stop_process(OPERATOR_PROCESS)
        {
            eprintln!("[operator_scale] stopping the operator: {e:#}");
        }
        if let Err(e) = kubekms_e2e::control_plane_down(&self.cp.state_dir) {
            eprintln!("[operator_scale] {e:#}");
        }
        if self.keep {
            eprintln!(
                "[operator_scale] state kept in {} (logs in {})",
                self.base.display(),
                self.cp.state_dir.join("logs").display()
            );
        } else if let Err(e) = std::fs::remove_dir_all(&self.base) {
            eprintln!("[operator_scale] removing {}: {e}", self.base.display());
        }
    }
}

async fn create_namespace(client: &Client, name: &str) -> Result<()> {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    Ok(())
}

// ------------------------------------------------------------------ the operator binary

/// The operator binary to measure: `KUBEKMS_OPERATOR_BIN`, or the one of this bench's
/// profile (`target/release` under `cargo bench`), built (or brought up to date) first so
/// a stale binary is never measured.
fn operator_binary(started: Instant) -> Result<PathBuf> {
    if std::env::var_os(OPERATOR_ENV).is_some_and(|v| !v.is_empty()) {
        return sibling_bin(OPERATOR_ENV, OPERATOR_PROCESS);
    }
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("no profile folder above {}", exe.display()))?;
    let target_dir = profile_dir
        .parent()
        .ok_or_else(|| anyhow!("no target folder above {}", profile_dir.display()))?;
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("odd profile folder {}", profile_dir.display()))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(repo_root())
        .args(["build", "-p", "kubekms-operator", "--bin", OPERATOR_PROCESS])
        .arg("--target-dir")
        .arg(target_dir);
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    log(
        started,
        &format!("building the operator: {cmd:?} (a no-op when up to date)"),
    );
    match cmd.stdin(Stdio::null()).status() {
        Ok(status) => ensure!(status.success(), "{cmd:?} failed ({status})"),
        // No cargo at hand (the bench binary run by hand): use what is there.
        Err(e) => log(
            started,
            &format!("cannot run {cmd:?} ({e}); using the binary already built, if any"),
        ),
    }
    sibling_bin(OPERATOR_ENV, OPERATOR_PROCESS)
}

/// Starts the operator as a process of the control plane (own session, log in
/// `logs/kubekms-operator.log`, pid file: `control-plane.sh down` and its watchdog stop
/// it too) and returns its pid once it runs the operator binary.
fn start_operator(cp: &ControlPlane, bin: &Path, root_key: &Path) -> Result<i32> {
    let argv: Vec<String> = vec![
        "env".into(),
        format!("KUBECONFIG={}", cp.kubeconfig.display()),
        bin.display().to_string(),
        "--root-key".into(),
        root_key.display().to_string(),
        "--init-root-key".into(),
        "--metrics-addr".into(),
        "127.0.0.1:0".into(),
        "--lease-namespace".into(),
        NS_KEYS.into(),
        "--identity".into(),
        IDENTITY.into(),
        "--log-format".into(),
        "text".into(),
    ];
    cp.start_process(OPERATOR_PROCESS, &argv)?;
    let pid = cp.pid_of(OPERATOR_PROCESS)?;
    // `env` execs the operator in the same process.
    let want = std::fs::canonicalize(bin)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == want) {
            return Ok(pid);
        }
        ensure!(
            !is_zombie(pid) && Instant::now() < deadline,
            "pid {pid} does not run {} ({}); log {}",
            want.display(),
            if is_zombie(pid) { "exited" } else { "timeout" },
            cp.log_path(OPERATOR_PROCESS).display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Waits until the operator logged that it holds the Lease and the Lease names it.
async fn wait_leader(cp: &ControlPlane, client: &Client, pid: i32) -> Result<()> {
    let log_path = cp.log_path(OPERATOR_PROCESS);
    let leases: Api<Lease> = Api::namespaced(client.clone(), NS_KEYS);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let logged = std::fs::read_to_string(&log_path)
            .is_ok_and(|t| t.contains("acquired the leader Lease"));
        if logged {
            let lease = leases.get(LEASE_NAME).await?;
            let holder = lease.spec.and_then(|s| s.holder_identity);
            ensure!(
                holder.as_deref() == Some(IDENTITY),
                "the operator logged it leads but the Lease names {holder:?}"
            );
            return Ok(());
        }
        ensure!(
            !is_zombie(pid),
            "the operator exited before leading; its log:\n{}",
            log_tail(&log_path, 40)
        );
        ensure!(
            Instant::now() < deadline,
            "the operator did not take the Lease within 60 s; its log:\n{}",
            log_tail(&log_path, 40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ------------------------------------------------------------------ /proc readings

/// A `kB` field of /proc/PID/status, in bytes.
fn proc_status_bytes(pid: i32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    })
}

/// CPU time the process has used, all its threads (utime + stime of /proc/PID/stat,
/// in clock ticks of 1/100 s: USER_HZ is 100 on Linux).
fn cpu_time(pid: i32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(") ")?.1.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Samples VmRSS every [`RSS_EVERY`] on a thread of its own until stopped.
struct RssSampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<(u64, usize)>,
}

impl RssSampler {
    fn start(pid: i32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let (mut peak, mut samples) = (0, 0);
            while !flag.load(Ordering::Relaxed) {
                if let Some(rss) = proc_status_bytes(pid, "VmRSS") {
                    peak = peak.max(rss);
                    samples += 1;
                }
                std::thread::sleep(RSS_EVERY);
            }
            (peak, samples)
        });
        Self { stop, handle }
    }

    /// (peak VmRSS seen, number of samples).
    fn finish(self) -> Result<(u64, usize)> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| anyhow!("the RSS sampler panicked"))
    }
}

// ------------------------------------------------------------------ creating objects

struct Created {
    elapsed: Duration,
    retries: usize,
}

fn retryable(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => matches!(s.code, 429 | 500 | 502 | 503 | 504),
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// Creates every object with at most `concurrency` requests in flight; the time is from
/// the first request to the last answer (after which every object exists). Transient
/// errors are retried (and counted); anything else fails.
async fn create_all(
    api: &Api<DynamicObject>,
    objects: Vec<DynamicObject>,
    concurrency: usize,
) -> Result<Created> {
    let objects = Arc::new(objects);
    let next = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.min(objects.len()) {
        let (api, objects, next, retries) =
            (api.clone(), objects.clone(), next.clone(), retries.clone());
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(obj) = objects.get(i) else {
                    return Ok::<(), anyhow::Error>(());
                };
                let name = obj.metadata.name.clone().unwrap_or_default();
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    match api.create(&PostParams::default(), obj).await {
                        Ok(_) => break,
                        // A retried create whose first attempt went through.
                        Err(kube::Error::Api(s)) if s.code == 409 && attempt > 1 => break,
                        Err(e) if retryable(&e) && attempt < 6 => {
                            retries.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                        }
                        Err(e) => return Err(e).with_context(|| format!("creating {name}")),
                    }
                }
            }
        });
    }
    while let Some(joined) = workers.join_next().await {
        joined.context("a create worker panicked")??;
    }
    Ok(Created {
        elapsed: started.elapsed(),
        retries: retries.load(Ordering::Relaxed),
    })
}

fn kmskey_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kubekms.io", "v1alpha1", "KmsKey"),
        "kmskeys",
    )
}

/// The mix: mostly SYMMETRIC_DEFAULT; 1 in 10 HMAC_256, 1 in 20 ECC_NIST_P256, 1 in 100
/// RSA_2048 (no RSA_4096: its generation alone would dominate).
fn key_spec(i: usize) -> &'static str {
    if i.is_multiple_of(100) {
        "RSA_2048"
    } else if i % 20 == 10 {
        "ECC_NIST_P256"
    } else if i % 10 == 5 {
        "HMAC_256"
    } else {
        "SYMMETRIC_DEFAULT"
    }
}

fn description(i: usize, n: usize) -> String {
    format!("operator scale benchmark key {i:05} of {n}, created by e2e/benches/operator_scale.rs")
}

fn labels() -> BTreeMap<String, String> {
    [("kubekms.io/bench".to_owned(), "operator-scale".to_owned())].into()
}

fn key_name(i: usize) -> String {
    format!("key-{i:05}")
}

fn kmskeys(ns: &str, n: usize) -> Vec<DynamicObject> {
    let ar = kmskey_resource();
    (0..n)
        .map(|i| {
            let mut obj = DynamicObject::new(&key_name(i), &ar)
                .within(ns)
                .data(json!({
                    "spec": {
                        "keySpec": key_spec(i),
                        "description": description(i, n),
                        "tags": {"bench": "operator-scale", "index": i.to_string()},
                    }
                }));
            obj.metadata.labels = Some(labels());
            obj
        })
        .collect()
}

/// ConfigMaps carrying the same strings as the keys' specs (about the same size stored),
/// sent the same way (dynamic objects, JSON) as the keys.
fn configmaps(ns: &str, n: usize) -> Vec<DynamicObject> {
    let ar = ApiResource::erase::<ConfigMap>(&());
    (0..n)
        .map(|i| {
            let mut obj = DynamicObject::new(&format!("cm-{i:05}"), &ar)
                .within(ns)
                .data(json!({
                    "data": {
                        "keySpec": key_spec(i),
                        "description": description(i, n),
                        "bench": "operator-scale",
                        "index": i.to_string(),
                    }
                }));
            obj.metadata.labels = Some(labels());
            obj
        })
        .collect()
}

/// Creates and deletes one object first, so that the timed creates do not pay for the
/// API server's lazy set-up of a resource (a CRD's storage and CEL programs are built on
/// its first request).
async fn warm_up(api: &Api<DynamicObject>, mut obj: DynamicObject) -> Result<()> {
    obj.metadata.name = Some("warm-up".into());
    api.create(&PostParams::default(), &obj)
        .await
        .context("warm-up create")?;
    api.delete("warm-up", &DeleteParams::default())
        .await
        .context("warm-up delete")?;
    Ok(())
}

async fn count(api: &Api<DynamicObject>) -> Result<usize> {
    Ok(api.list_metadata(&ListParams::default()).await?.items.len())
}

// ------------------------------------------------------------------ waiting for Enabled

fn key_state(obj: &DynamicObject) -> Option<&str> {
    obj.data
        .pointer("/status/keyState")
        .and_then(|s| s.as_str())
}

/// Lists the namespace, records keys already Enabled, returns the resourceVersion.
async fn relist(
    api: &Api<DynamicObject>,
    enabled: &mut HashMap<String, Instant>,
) -> Result<String> {
    let list = api.list(&ListParams::default()).await?;
    for obj in &list.items {
        if key_state(obj) == Some("Enabled")
            && let Some(name) = &obj.metadata.name
        {
            enabled.entry(name.clone()).or_insert_with(Instant::now);
        }
    }
    list.metadata
        .resource_version
        .ok_or_else(|| anyhow!("a list without resourceVersion"))
}

/// Watches the namespace and returns when each of `expected` keys was first seen
/// Enabled, stopping when all were or at `deadline`. Started before the keys are created.
async fn watch_enabled(
    api: Api<DynamicObject>,
    expected: HashSet<String>,
    deadline: Instant,
    progress: Instant,
) -> Result<HashMap<String, Instant>> {
    let mut enabled = HashMap::new();
    let mut rv = relist(&api, &mut enabled).await?;
    let mut next_report = Instant::now() + Duration::from_secs(5);
    let done = |e: &HashMap<String, Instant>| expected.iter().all(|n| e.contains_key(n));
    while !done(&enabled) && Instant::now() < deadline {
        let stream = match api.watch(&WatchParams::default().timeout(60), &rv).await {
            Ok(s) => s,
            Err(e) if retryable(&e) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(e) => return Err(e).context("watching KmsKeys"),
        };
        let mut stream = std::pin::pin!(stream);
        loop {
            if done(&enabled) {
                break;
            }
            let Ok(event) = tokio::time::timeout_at(deadline.into(), stream.next()).await else {
                break; // deadline
            };
            if Instant::now() >= next_report {
                log(
                    progress,
                    &format!("{}/{} keys Enabled", enabled.len(), expected.len()),
                );
                next_report += Duration::from_secs(5);
            }
            match event {
                None => break, // the watch timed out: resume from rv
                Some(Ok(WatchEvent::Added(obj) | WatchEvent::Modified(obj))) => {
                    if key_state(&obj) == Some("Enabled")
                        && let Some(name) = &obj.metadata.name
                    {
                        enabled.entry(name.clone()).or_insert_with(Instant::now);
                    }
                    if let Some(v) = obj.metadata.resource_version {
                        rv = v;
                    }
                }
                Some(Ok(WatchEvent::Deleted(obj))) => {
                    if let Some(v) = obj.metadata.resource_version {
                        rv = v;
                    }
                }
                Some(Ok(WatchEvent::Bookmark(b))) => rv = b.metadata.resource_version,
                Some(Ok(WatchEvent::Error(status))) if status.code == 410 => {
                    rv = relist(&api, &mut enabled).await?;
                    break;
                }
                Some(Ok(WatchEvent::Error(status))) => bail!("watch error: {status:?}"),
                Some(Err(e)) => {
                    log(progress, &format!("watch interrupted ({e}); listing again"));
                    rv = relist(&api, &mut enabled).await?;
                    break;
                }
            }
        }
    }
    Ok(enabled)
}

/// One line per key that is not Enabled: spec, state, Ready condition.
async fn describe_missing(api: &Api<DynamicObject>, expected: &HashSet<String>) -> Result<String> {
    let list = api.list(&ListParams::default()).await?;
    let mut by_name: BTreeMap<String, &DynamicObject> = BTreeMap::new();
    for obj in &list.items {
        if let Some(n) = &obj.metadata.name {
            by_name.insert(n.clone(), obj);
        }
    }
    let mut missing: Vec<&String> = expected.iter().collect();
    missing.sort();
    let mut out = String::new();
    for name in missing {
        match by_name.get(name) {
            None => writeln!(out, "  {name}: does not exist")?,
            Some(obj) if key_state(obj) == Some("Enabled") => {}
            Some(obj) => {
                let spec = obj.data.pointer("/spec/keySpec").and_then(|s| s.as_str());
                let ready = obj
                    .data
                    .pointer("/status/conditions")
                    .and_then(|c| c.as_array())
                    .and_then(|c| {
                        c.iter()
                            .find(|c| c.get("type").and_then(|t| t.as_str()) == Some("Ready"))
                    })
                    .map(|c| {
                        format!(
                            "Ready={} {}: {}",
                            c.get("status").and_then(|s| s.as_str()).unwrap_or("?"),
                            c.get("reason").and_then(|s| s.as_str()).unwrap_or("?"),
                            c.get("message").and_then(|s| s.as_str()).unwrap_or("")
                        )
                    })
                    .unwrap_or_else(|| "no Ready condition".into());
                writeln!(
                    out,
                    "  {name} ({}): keyState {:?}, {ready}",
                    spec.unwrap_or("?"),
                    key_state(obj)
                )?;
            }
        }
    }
    Ok(out)
}

// ------------------------------------------------------------------ the run

struct Figures {
    keys: usize,
    mix: String,
    concurrency: usize,
    operator_bin: PathBuf,
    load_before: String,
    load_after: String,
    cm_create: Created,
    cm_all: Vec<Duration>,
    key_create_alone: Created,
    key_create: Created,
    first_enabled: Duration,
    median_enabled: Duration,
    all_enabled: Duration,
    rss_idle: u64,
    rss_peak_sampled: u64,
    rss_samples: usize,
    hwm: u64,
    rss_end: u64,
    operator_cpu: Option<Duration>,
    apiserver_cpu: Option<Duration>,
    etcd_cpu: Option<Duration>,
    log_warnings: usize,
}

fn run(opts: &Options) -> Result<()> {
    let started = Instant::now();
    let operator_bin = operator_binary(started)?;
    let base = std::env::temp_dir().join(unique_name("kubekms-bench-scale"));
    std::fs::create_dir_all(&base)?;
    let load_before = loadavg();
    log(
        started,
        &format!(
            "starting a control plane in {} (load average {load_before})",
            base.display()
        ),
    );
    let mut plane = Plane::start(&base)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let figures = runtime.block_on(measure(opts, &plane, &operator_bin, started, load_before));
    drop(runtime);
    let figures = figures?;
    print_table(&figures);
    plane.keep = opts.keep_state;
    Ok(())
}

async fn measure(
    opts: &Options,
    plane: &Plane,
    operator_bin: &Path,
    started: Instant,
    load_before: String,
) -> Result<Figures> {
    let cp = &plane.cp;
    let n = opts.keys;
    cp.apply_crds()?;
    log(started, "CRDs Established");
    let client = cp.client().await?;
    for ns in [NS_BASELINE_KEYS, NS_KEYS] {
        create_namespace(&client, ns).await?;
    }

    // Baseline: ConfigMaps, same client, same concurrency; a fresh namespace per round,
    // the median round is the baseline (one round lasts about a second: too short to trust
    // alone on a shared machine).
    let mut cm_rounds = Vec::new();
    for round in 1..=opts.baseline_rounds {
        let ns = format!("{NS_BASELINE_CM}-{round}");
        create_namespace(&client, &ns).await?;
        let cms: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &ns, &ApiResource::erase::<ConfigMap>(&()));
        let objects = configmaps(&ns, n);
        if let Some(first) = objects.first() {
            warm_up(&cms, first.clone()).await?;
        }
        let created = create_all(&cms, objects, opts.concurrency).await?;
        ensure!(
            count(&cms).await? == n,
            "not every ConfigMap exists in {ns}"
        );
        log(
            started,
            &format!(
                "baseline round {round}: {n} ConfigMaps created in {:.2} s",
                created.elapsed.as_secs_f64()
            ),
        );
        cm_rounds.push(created);
    }
    cm_rounds.sort_by_key(|c| c.elapsed);
    let cm_all: Vec<Duration> = cm_rounds.iter().map(|c| c.elapsed).collect();
    let cm_create = cm_rounds.swap_remove(cm_rounds.len() / 2);

    // The custom resource alone (CRD validation, CEL rules), no operator running.
    let ar = kmskey_resource();
    let alone: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS_BASELINE_KEYS, &ar);
    let objects = kmskeys(NS_BASELINE_KEYS, n);
    if let Some(first) = objects.first() {
        warm_up(&alone, first.clone()).await?;
    }
    let key_create_alone = create_all(&alone, objects, opts.concurrency).await?;
    ensure!(
        count(&alone).await? == n,
        "not every baseline KmsKey exists"
    );
    log(
        started,
        &format!(
            "{n} KmsKeys created with no operator in {:.2} s; deleting them",
            key_create_alone.elapsed.as_secs_f64()
        ),
    );
    alone
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&alone).await? > 0 {
        ensure!(
            Instant::now() < deadline,
            "baseline KmsKeys not deleted after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The operator, ready (leading) before the clock starts.
    let pid = start_operator(cp, operator_bin, &plane.base.join("root.key"))?;
    wait_leader(cp, &client, pid).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = proc_status_bytes(pid, "VmRSS").ok_or_else(|| anyhow!("no VmRSS"))?;
    log(
        started,
        &format!(
            "operator (pid {pid}) leads; RSS idle {:.1} MiB",
            rss_idle as f64 / MIB
        ),
    );

    let keys: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS_KEYS, &ar);
    let objects = kmskeys(NS_KEYS, n);
    let expected: HashSet<String> = (0..n).map(key_name).collect();
    let deadline = Instant::now() + opts.timeout;
    let apiserver_pid = cp.pid_of("kube-apiserver")?;
    let etcd_pid = cp.pid_of("etcd")?;
    let cpu_before = [pid, apiserver_pid, etcd_pid].map(cpu_time);
    let sampler = RssSampler::start(pid);
    let watcher = tokio::spawn(watch_enabled(
        keys.clone(),
        expected.clone(),
        deadline,
        started,
    ));
    // Give the watch a moment to be established before the clock starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    log(started, &format!("creating {n} KmsKeys"));
    let t0 = Instant::now();
    let key_create = create_all(&keys, objects, opts.concurrency).await;
    let key_create = match key_create {
        Ok(c) => c,
        Err(e) => {
            watcher.abort();
            sampler.finish()?;
            return Err(e);
        }
    };
    log(
        started,
        &format!(
            "{n} KmsKeys created in {:.2} s; waiting for Enabled",
            key_create.elapsed.as_secs_f64()
        ),
    );
    let enabled = watcher.await.context("the watch task panicked")?;
    let (rss_peak_sampled, rss_samples) = sampler.finish()?;
    let cpu_after = [pid, apiserver_pid, etcd_pid].map(cpu_time);
    let hwm = proc_status_bytes(pid, "VmHWM");
    let rss_end = proc_status_bytes(pid, "VmRSS");
    let load_after = loadavg();
    let log_path = cp.log_path(OPERATOR_PROCESS);
    ensure!(
        !is_zombie(pid),
        "the operator exited during the run; its log:\n{}",
        log_tail(&log_path, 40)
    );
    let enabled = enabled?;
    if enabled.len() < n {
        let missing = describe_missing(&keys, &expected).await?;
        bail!(
            "{} of {n} KmsKeys were not Enabled {} s after their creation started:\n{missing}operator log: {}",
            n - enabled.len(),
            opts.timeout.as_secs(),
            log_path.display()
        );
    }
    let mut times: Vec<Duration> = enabled
        .values()
        .map(|t| t.saturating_duration_since(t0))
        .collect();
    times.sort();
    let log_text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let log_warnings = log_text
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .count();
    let diff = |i: usize| match (cpu_before[i], cpu_after[i]) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b)),
        _ => None,
    };
    let mut mix: BTreeMap<&str, usize> = BTreeMap::new();
    for i in 0..n {
        *mix.entry(key_spec(i)).or_default() += 1;
    }
    Ok(Figures {
        keys: n,
        mix: mix
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", "),
        concurrency: opts.concurrency,
        operator_bin: operator_bin.to_path_buf(),
        load_before,
        load_after,
        cm_create,
        cm_all,
        key_create_alone,
        key_create,
        first_enabled: times.first().copied().unwrap_or_default(),
        median_enabled: times.get(times.len() / 2).copied().unwrap_or_default(),
        all_enabled: times.last().copied().unwrap_or_default(),
        rss_idle,
        rss_peak_sampled,
        rss_samples,
        hwm: hwm.ok_or_else(|| anyhow!("no VmHWM"))?,
        rss_end: rss_end.unwrap_or_default(),
        operator_cpu: diff(0),
        apiserver_cpu: diff(1),
        etcd_cpu: diff(2),
        log_warnings,
    })
}

fn print_table(f: &Figures) {
    let secs = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / MIB);
    let cpu = |d: Option<Duration>, wall: Duration| match d {
        Some(d) => format!(
            "{:.2} s ({:.2} cores on average)",
            d.as_secs_f64(),
            d.as_secs_f64() / wall.as_secs_f64().max(1e-9)
        ),
        None => "n/a".into(),
    };
    let baseline = f.cm_create.elapsed.as_secs_f64().max(1e-9);
    let all = f.all_enabled.as_secs_f64();
    let met = |ok: bool| if ok { "met" } else { "MISSED" };
    let profile = f
        .operator_bin
        .parent()
        .and_then(Path::file_name)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let scale_note = if f.keys == GOAL_KEYS {
        String::new()
    } else {
        format!(
            " (the goal is for {GOAL_KEYS} keys; this run made {})",
            f.keys
        )
    };
    let rows: Vec<(String, String)> = vec![
        (
            format!("baseline: {} ConfigMaps created (median)", f.keys),
            format!(
                "{} ({:.0}/s, {} retries; rounds: {})",
                secs(f.cm_create.elapsed),
                f.keys as f64 / baseline,
                f.cm_create.retries,
                f.cm_all
                    .iter()
                    .map(|d| format!("{:.2}", d.as_secs_f64()))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        ),
        (
            format!("{} KmsKeys created, no operator", f.keys),
            format!(
                "{} (x{:.2} baseline, {} retries)",
                secs(f.key_create_alone.elapsed),
                f.key_create_alone.elapsed.as_secs_f64() / baseline,
                f.key_create_alone.retries
            ),
        ),
        (
            format!("{} KmsKeys created, operator running", f.keys),
            format!(
                "{} (x{:.2} baseline, {} retries)",
                secs(f.key_create.elapsed),
                f.key_create.elapsed.as_secs_f64() / baseline,
                f.key_create.retries
            ),
        ),
        (
            "first / median key Enabled".into(),
            format!("{} / {}", secs(f.first_enabled), secs(f.median_enabled)),
        ),
        (
            "time until all Enabled (from first create)".into(),
            secs(f.all_enabled),
        ),
        (
            "ratio all-Enabled / ConfigMap baseline".into(),
            format!("{:.2}", all / baseline),
        ),
        (
            "keys/s (all Enabled)".into(),
            format!("{:.1}", f.keys as f64 / all.max(1e-9)),
        ),
        (
            "operator RSS idle (leading, 0 keys)".into(),
            mib(f.rss_idle),
        ),
        (
            format!(
                "operator RSS peak, sampled every {} ms",
                RSS_EVERY.as_millis()
            ),
            format!("{} ({} samples)", mib(f.rss_peak_sampled), f.rss_samples),
        ),
        ("operator peak RSS (VmHWM)".into(), mib(f.hwm)),
        ("operator RSS at the end".into(), mib(f.rss_end)),
        (
            "CPU during the key phase: operator".into(),
            cpu(f.operator_cpu, f.all_enabled),
        ),
        (
            "CPU during the key phase: kube-apiserver".into(),
            cpu(f.apiserver_cpu, f.all_enabled),
        ),
        (
            "CPU during the key phase: etcd".into(),
            cpu(f.etcd_cpu, f.all_enabled),
        ),
        (
            "operator log lines WARN/ERROR".into(),
            f.log_warnings.to_string(),
        ),
        (
            format!("goal: all Enabled <= {GOAL_SECONDS:.0} s"),
            format!("{} ({})", met(all <= GOAL_SECONDS), secs(f.all_enabled)),
        ),
        (
            format!("goal: peak RSS <= {GOAL_MIB:.0} MiB"),
            format!("{} ({})", met(f.hwm as f64 / MIB <= GOAL_MIB), mib(f.hwm)),
        ),
    ];
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    println!();
    println!(
        "kubekms-operator scale: {} KmsKeys ({}), {} requests in flight{scale_note}",
        f.keys, f.mix, f.concurrency
    );
    println!(
        "operator binary: {} ({profile} profile)",
        f.operator_bin.display()
    );
    println!(
        "CPUs: {}; load average before {}, after {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        f.load_before,
        f.load_after
    );
    println!();
    for (k, v) in &rows {
        println!("  {k:<width$}  {v}");
    }
    println!();
    println!(
        "RESULT keys={} configmaps_s={:.3} kmskeys_alone_s={:.3} kmskeys_s={:.3} all_enabled_s={:.3} ratio={:.2} keys_per_s={:.1} rss_idle_mib={:.1} vmhwm_mib={:.1} loadavg=\"{}\"",
        f.keys,
        f.cm_create.elapsed.as_secs_f64(),
        f.key_create_alone.elapsed.as_secs_f64(),
        f.key_create.elapsed.as_secs_f64(),
        all,
        all / baseline,
        f.keys as f64 / all.max(1e-9),
        f.rss_idle as f64 / MIB,
        f.hwm as f64 / MIB,
        f.load_after
    );
}
