//! Crash drill (issue 11, part 1): while a rotation of kube-apiserver's KmsKey and the
//! operator's re-encryption of every Secret are under way and clients keep writing and
//! reading Secrets, one component is killed with SIGKILL at a seeded random point and
//! started again with the same command line. After each trial every acknowledged write
//! must read back with its last acknowledged value (or with a later write whose answer
//! was lost in the crash: it may have been applied), the pass must reach `Done` for the
//! new version, etcd must hold every Secret under the new key_id, and the KmsKey's record
//! must hold versions 1..n that all unwrap under the root key.
//!
//! Components: the plugin (`kms-plugin`, follow mode), the operator, kube-apiserver, etcd
//! and kubekms-server, in turn from a seeded offset (a run of fewer trials than components
//! always includes the server). During every trial a client of kubekms-server's AWS API
//! calls it (see `crash_server`): every blob or signature it acknowledged must still
//! decrypt or verify after the trial, across the rotations of its key, and all of them at
//! the end of the drill.
//!
//! Where the kill lands is chosen by phase: in most trials inside the re-encryption pass
//! (`Rewriting`, after a seeded number of Secrets are rewritten), otherwise 0-4 s after the
//! rotation; the phase seen at the kill is logged and counted.
//!
//! `KUBEKMS_CRASH_TRIALS` (3), `KUBEKMS_CRASH_SEED` (random, printed first),
//! `KUBEKMS_CRASH_SECRETS` (500 Secrets created before the first trial, which every
//! pass rewrites). `hack/crash-drill.sh` runs the longer drill.
//!
//! A process that exits by itself (the operator does when its Lease cannot be renewed
//! while kube-apiserver or etcd is down, by design) is started again the way a
//! Deployment or systemd would, and counted separately from the kills.

mod crash_server;
mod envelope;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use base64::Engine as _;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kms_core::keystore::{FileKeyStore, RootKeyStore as _};
use kms_plugin::restore::{BackupObjects, verify};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Config};
use kubekms_e2e::crash::{DrillRng, fresh_seed};
use kubekms_e2e::drill::{APISERVER_KEY, SYSTEM_NAMESPACE, Site};
use kubekms_e2e::kms_server::KmsServer;

use crash_server::{APP_KEY, APP_NS, ServerSetup, SharedEndpoint, SharedServerLedger};
use serde_json::json;

const BULK_NS: &str = "crash-bulk";
const LIVE_NS: &str = "crash-live";
/// Writer tasks; each owns the live names `i` with `i % WRITERS == its index`, so the
/// writes of one name are sequential and "its last acknowledged value" is well defined.
const WRITERS: usize = 3;
const LIVE_NAMES: usize = 60;
/// A client call that takes longer has an unknown outcome (as a crash makes it).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Rotation, seeding (kube-apiserver polls the plugin's Status once a minute) and the
/// pass, with restarts in between.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(300);
/// Pages of 100 and at most 300 rewrites a second, so that a kill lands inside a pass.
const REENCRYPT_PAGE: u64 = 100;
const OPERATOR_ARGS: &[&str] = &[
    "--reencrypt-page-size",
    "100",
    "--reencrypt-secrets-per-second",
    "300",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Component {
    Plugin,
    Operator,
    KubeApiserver,
    Etcd,
    Server,
}

const COMPONENTS: [Component; 5] = [
    Component::Plugin,
    Component::Operator,
    Component::KubeApiserver,
    Component::Etcd,
    Component::Server,
];

/// The component trial `number` kills: in turn from `offset`.
fn component_of(offset: usize, number: usize) -> Component {
    COMPONENTS[(offset + number) % COMPONENTS.len()]
}

/// A seeded offset into [`COMPONENTS`]; with fewer trials than components, one that puts
/// the server among the components killed.
fn component_offset(rng: &mut DrillRng, trials: usize) -> usize {
    let n = COMPONENTS.len();
    if trials >= n {
        return usize::try_from(rng.below(n as u64)).unwrap_or(0);
    }
    let server = n - 1;
    let at = usize::try_from(rng.below(trials.max(1) as u64)).unwrap_or(0);
    (server + n - at) % n
}

/// Share of trials (in percent) whose kill is aimed inside the pass's `Rewriting` phase.
const IN_PASS_PERCENT: u64 = 80;

impl Component {
    /// The launcher's process name (its pid file and log).
    fn process(self) -> &'static str {
        match self {
            Self::Plugin => "kms-plugin",
            Self::Operator => "kubekms-operator",
            Self::KubeApiserver => "kube-apiserver",
            Self::Etcd => "etcd",
            Self::Server => "kubekms-server",
        }
    }
}

struct Options {
    trials: usize,
    seed: u64,
    secrets: usize,
}

fn env_number<T: std::str::FromStr>(name: &str) -> Result<Option<T>> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| anyhow!("{name}={v:?} is not a number")),
        _ => Ok(None),
    }
}

/// Every trial rotates the keys on demand, and a key allows 25 on-demand rotations (AWS
/// KMS's quota, `LimitExceededException` after that): one control plane runs at most
/// this many trials; hack/crash-drill.sh splits longer drills into runs of this size.
const MAX_TRIALS: usize = 25;

fn options() -> Result<Options> {
    let opts = Options {
        trials: env_number("KUBEKMS_CRASH_TRIALS")?.unwrap_or(3),
        seed: env_number("KUBEKMS_CRASH_SEED")?.unwrap_or_else(fresh_seed),
        secrets: env_number("KUBEKMS_CRASH_SECRETS")?.unwrap_or(500),
    };
    ensure!(
        opts.trials <= MAX_TRIALS,
        "KUBEKMS_CRASH_TRIALS={}: at most {MAX_TRIALS} per run (each trial rotates the keys on demand, 25 times at most per key); hack/crash-drill.sh splits a longer drill into runs",
        opts.trials
    );
    Ok(opts)
}

fn log(t0: Instant, what: &str) {
    eprintln!("[crash-drill] {:>7.1}s {what}", t0.elapsed().as_secs_f64());
}

/// What the clients know of one Secret they write.
#[derive(Debug, Default)]
struct NameLedger {
    /// The value of the last write kube-apiserver acknowledged.
    acked: Option<String>,
    /// Writes whose answer never came (error, timeout, connection cut): each may or may
    /// not have been applied, possibly after a later acknowledged one.
    unsure: BTreeSet<String>,
}

#[derive(Debug, Default)]
struct Ledger {
    names: BTreeMap<String, NameLedger>,
    written: u64,
    acked: u64,
    unacked: u64,
    reads_ok: u64,
    /// A read right after an acknowledged write that returned an older value.
    stale_reads: Vec<String>,
}

type SharedLedger = Arc<Mutex<Ledger>>;

fn lock(ledger: &SharedLedger) -> std::sync::MutexGuard<'_, Ledger> {
    ledger
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn secret_value(secret: &Secret) -> Option<String> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get("value"))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
}

/// One writer: server-side apply of a new value to one of its names, then a read of it.
async fn writer(
    api: Api<Secret>,
    owner: usize,
    seed: u64,
    trial: usize,
    stop: Arc<AtomicBool>,
    ledger: SharedLedger,
) {
    let mut rng = DrillRng::new(seed);
    let params = PatchParams::apply("kubekms-crash-writer").force();
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let per_owner = (LIVE_NAMES / WRITERS) as u64;
        let index = owner + WRITERS * usize::try_from(rng.below(per_owner)).unwrap_or(0);
        let name = format!("live-{index:03}");
        seq += 1;
        let value = format!("trial{trial}-writer{owner}-{seq}");
        let body = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name},
            "data": {"value": b64.encode(&value)},
        });
        lock(&ledger).written += 1;
        let answer = tokio::time::timeout(
            CALL_TIMEOUT,
            api.patch(&name, &params, &Patch::Apply(&body)),
        )
        .await;
        if !matches!(answer, Ok(Ok(_))) {
            {
                let mut l = lock(&ledger);
                l.unacked += 1;
                l.names.entry(name).or_default().unsure.insert(value);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        {
            let mut l = lock(&ledger);
            l.acked += 1;
            l.names.entry(name.clone()).or_default().acked = Some(value.clone());
        }
        if let Ok(Ok(read)) = tokio::time::timeout(CALL_TIMEOUT, api.get(&name)).await {
            let got = secret_value(&read);
            let mut l = lock(&ledger);
            let overtaken = got
                .as_ref()
                .is_some_and(|g| l.names.get(&name).is_some_and(|n| n.unsure.contains(g)));
            if got.as_deref() == Some(value.as_str()) || overtaken {
                l.reads_ok += 1;
            } else {
                l.stale_reads.push(format!(
                    "{name}: wrote {value:?} (acknowledged), read {got:?}"
                ));
            }
        }
    }
}

async fn client_for(kubeconfig: &std::path::Path) -> Result<Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let mut config =
        Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
            .await?;
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(CALL_TIMEOUT);
    config.write_timeout = Some(CALL_TIMEOUT);
    Ok(Client::try_from(config)?)
}

/// Creates `count` Secrets in [`BULK_NS`]; returns name → value.
async fn create_bulk(client: &Client, count: usize, seed: u64) -> Result<BTreeMap<String, String>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), BULK_NS);
    let results: Vec<Result<(String, String)>> = futures::stream::iter(0..count)
        .map(|i| {
            let api = api.clone();
            async move {
                let name = format!("bulk-{i:05}");
                let value = format!("bulk-{seed}-{i}-{}", "x".repeat(200));
                let secret = Secret {
                    metadata: kube::api::ObjectMeta {
                        name: Some(name.clone()),
                        ..Default::default()
                    },
                    data: Some(BTreeMap::from([(
                        "value".to_owned(),
                        k8s_openapi::ByteString(value.clone().into_bytes()),
                    )])),
                    ..Secret::default()
                };
                api.create(&PostParams::default(), &secret)
                    .await
                    .with_context(|| format!("creating {BULK_NS}/{name}"))?;
                Ok((name, value))
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Every Secret of a namespace: name → value, listed through kube-apiserver (retried
/// while it is not answering, up to a minute).
async fn read_all(client: &Client, ns: &str) -> Result<BTreeMap<String, Option<String>>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match api.list(&ListParams::default()).await {
            Ok(list) => {
                return Ok(list
                    .items
                    .iter()
                    .filter_map(|s| s.metadata.name.clone().map(|n| (n, secret_value(s))))
                    .collect());
            }
            Err(e) if Instant::now() < deadline => {
                eprintln!("[crash-drill] listing {ns}: {e}; again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("listing Secrets of {ns}")),
        }
    }
}

/// Restarts what was killed and what exited by itself.
struct Supervisor<'a> {
    site: &'a Site,
    argv: BTreeMap<&'static str, Vec<String>>,
    root_key: PathBuf,
    operator: Option<Child>,
    server_setup: Arc<ServerSetup>,
    server: Option<KmsServer>,
    /// Where the server listens now (a restarted server binds a new port).
    endpoint: SharedEndpoint,
    /// Server processes started so far (each gets a new process name).
    server_starts: u32,
    /// Exits nobody asked for, by component.
    exited: BTreeMap<&'static str, u32>,
}

impl<'a> Supervisor<'a> {
    fn new(site: &'a Site, server_setup: ServerSetup) -> Result<Self> {
        let mut argv = BTreeMap::new();
        for c in [Component::Etcd, Component::Plugin, Component::KubeApiserver] {
            argv.insert(c.process(), site.cp.argv_of(c.process())?);
        }
        let root_key = site.plugin_state.join("root.key");
        let mut sup = Self {
            site,
            argv,
            operator: None,
            server_setup: Arc::new(server_setup),
            root_key,
            server: None,
            endpoint: SharedEndpoint::default(),
            server_starts: 0,
            exited: BTreeMap::new(),
        };
        sup.start(Component::Operator)?;
        sup.start(Component::Server)?;
        Ok(sup)
    }

    fn start(&mut self, c: Component) -> Result<()> {
        let cp = &self.site.cp;
        match c {
            Component::Operator => {
                let child = self
                    .site
                    .operator_command(&self.root_key, OPERATOR_ARGS)?
                    .spawn()
                    .context("starting the operator")?;
                self.operator = Some(child);
            }
            Component::Server => {
                let name = format!("kubekms-server-{}", self.server_starts);
                self.server_starts += 1;
                let server = self.server_setup.start(cp, &name)?;
                *self
                    .endpoint
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = server.endpoint.clone();
                self.server = Some(server);
            }
            other => {
                let argv = self
                    .argv
                    .get(other.process())
                    .ok_or_else(|| anyhow!("no command line for {other:?}"))?;
                cp.start_process(other.process(), argv)?;
                if other == Component::Etcd {
                    cp.wait_etcd_healthy()?;
                }
            }
        }
        Ok(())
    }

    fn kill(&mut self, c: Component) -> Result<()> {
        match c {
            Component::Operator => {
                let mut child = self
                    .operator
                    .take()
                    .ok_or_else(|| anyhow!("the operator is not running"))?;
                // Child::kill is SIGKILL.
                child.kill().context("SIGKILL to the operator")?;
                child.wait()?;
                Ok(())
            }
            Component::Server => {
                let server = self
                    .server
                    .take()
                    .ok_or_else(|| anyhow!("kubekms-server is not running"))?;
                self.site.cp.kill_process(server.process.name())?;
                // Its stop finds it gone; it ends the watchdog.
                drop(server);
                Ok(())
            }
            other => self.site.cp.kill_process(other.process()),
        }
    }

    fn server_endpoint(&self) -> String {
        self.endpoint
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Starts again whatever is not running (counted in `exited`), then waits for
    /// kube-apiserver's /readyz.
    fn ensure_running(&mut self) -> Result<()> {
        let mut any = false;
        for c in [Component::Etcd, Component::Plugin, Component::KubeApiserver] {
            if !self.site.cp.is_running(c.process()) {
                eprintln!(
                    "[crash-drill] {} exited by itself; starting it again",
                    c.process()
                );
                *self.exited.entry(c.process()).or_default() += 1;
                self.start(c)?;
                any = true;
            }
        }
        let exited = match self.operator.as_mut() {
            None => true,
            Some(child) => child.try_wait()?.is_some(),
        };
        if exited {
            let status = self
                .operator
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            eprintln!(
                "[crash-drill] the operator exited by itself ({status:?}); starting it again"
            );
            *self
                .exited
                .entry(Component::Operator.process())
                .or_default() += 1;
            self.start(Component::Operator)?;
        }
        if any {
            self.site.cp.wait_apiserver_ready()?;
        }
        if !self.server.as_ref().is_some_and(|s| s.process.is_running()) {
            eprintln!(
                "[crash-drill] kubekms-server exited by itself; its log: {}; starting it again",
                self.server
                    .as_ref()
                    .map(|s| s.process.log_tail(20))
                    .unwrap_or_default()
            );
            *self.exited.entry(Component::Server.process()).or_default() += 1;
            self.server = None;
            self.start(Component::Server)?;
        }
        Ok(())
    }
}

impl Drop for Supervisor<'_> {
    fn drop(&mut self) {
        if let Some(mut child) = self.operator.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.server = None;
    }
}

/// Polls `check` (every 200 ms, restarting what exited) until it yields a value.
fn wait_for<T>(
    sup: &mut Supervisor<'_>,
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
    evidence: impl Fn() -> String,
) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        sup.ensure_running()?;
        let last = match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => String::new(),
            Err(e) => format!(" (last error: {e:#})"),
        };
        if Instant::now() >= deadline {
            bail!(
                "{what}: not within {}s{last}\n{}\n{}",
                limit.as_secs(),
                evidence(),
                sup.site.cp.where_to_look()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn key_status(site: &Site) -> Result<serde_json::Value> {
    Ok(site
        .get_json("kmskey", SYSTEM_NAMESPACE, APISERVER_KEY)?
        .get("status")
        .cloned()
        .unwrap_or_default())
}

fn plugin_lease(site: &Site) -> String {
    site.get_json("lease", SYSTEM_NAMESPACE, "kubekms-plugin-cp-1")
        .ok()
        .and_then(|l| l.pointer("/metadata/annotations").cloned())
        .map_or_else(
            || "no plugin Lease".to_owned(),
            |a| format!("plugin Lease: {a}"),
        )
}

#[derive(Debug, Default)]
struct Totals {
    kills: BTreeMap<&'static str, u32>,
    /// The re-encryption phase seen at each kill.
    phases: BTreeMap<String, u32>,
    /// Kills aimed inside the pass (the rest: 0-4 s after the rotation).
    aimed_in_pass: u32,
    bulk: usize,
    lost: Vec<String>,
    overtaken: u64,
}

/// The KmsKey's status read through the client (quicker than kubectl, for aiming).
async fn key_status_now(client: &Client, ns: &str, name: &str) -> Result<serde_json::Value> {
    let resource = kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
        "kubekms.io",
        "v1alpha1",
        "KmsKey",
    ));
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    let key = tokio::time::timeout(CALL_TIMEOUT, api.get(name))
        .await
        .map_err(|_| anyhow!("reading KmsKey {ns}/{name}: timed out"))??;
    Ok(key.data.get("status").cloned().unwrap_or_default())
}

/// Where the rotation to `version` stands: `Rotating` (the new version not current yet),
/// `PassNotStarted` (no pass for it yet), or the pass's phase.
fn phase_label(status: &serde_json::Value, version: u64) -> String {
    let pass = &status["reencryption"];
    if status["currentVersion"]
        .as_u64()
        .is_none_or(|v| v < version)
    {
        "Rotating".to_owned()
    } else if pass["targetVersion"].as_u64() != Some(version) {
        "PassNotStarted".to_owned()
    } else {
        pass["phase"].as_str().unwrap_or("?").to_owned()
    }
}

/// Waits until the pass for `version` has rewritten at least `target` Secrets (or is
/// done); polls every 50 ms.
fn wait_rewritten(
    rt: &tokio::runtime::Runtime,
    sup: &mut Supervisor<'_>,
    client: &Client,
    version: u64,
    target: u64,
) -> Result<()> {
    let deadline = Instant::now() + TRIAL_TIMEOUT;
    let mut last = serde_json::Value::Null;
    loop {
        sup.ensure_running()?;
        if let Ok(st) = rt.block_on(key_status_now(client, SYSTEM_NAMESPACE, APISERVER_KEY)) {
            let pass = &st["reencryption"];
            if pass["targetVersion"].as_u64() == Some(version)
                && (pass["phase"] == "Done"
                    || (pass["phase"] == "Rewriting"
                        && pass["secretsRewritten"].as_u64().unwrap_or(0) >= target))
            {
                return Ok(());
            }
            last = st;
        }
        ensure!(
            Instant::now() < deadline,
            "the pass for v{version} did not reach {target} rewritten Secrets in {}s: {last}; {}",
            TRIAL_TIMEOUT.as_secs(),
            plugin_lease(sup.site)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What a trial shares with the drill.
struct Shared<'a> {
    rt: &'a tokio::runtime::Runtime,
    client: &'a Client,
    seed: u64,
    bulk: &'a BTreeMap<String, String>,
    ledger: &'a SharedLedger,
    server_ledger: &'a SharedServerLedger,
    t0: Instant,
}

/// One trial: writers and the KMS client on, rotation to `version` (kube-apiserver's key
/// and the client's), one kill and restart, clients off, then the checks.
fn trial(
    shared: &Shared<'_>,
    sup: &mut Supervisor<'_>,
    rng: &mut DrillRng,
    number: usize,
    component: Component,
    totals: &mut Totals,
) -> Result<()> {
    let Shared {
        rt,
        client,
        seed,
        bulk,
        ledger,
        server_ledger,
        t0,
    } = *shared;
    let site = sup.site;
    let version = u64::try_from(number).unwrap_or(u64::MAX) + 2;
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|owner| {
            rt.spawn(writer(
                Api::namespaced(client.clone(), LIVE_NS),
                owner,
                rng.next_u64(),
                number,
                stop.clone(),
                ledger.clone(),
            ))
        })
        .collect();
    let kms_client = rt.spawn(crash_server::client(
        sup.server_setup.clone(),
        sup.endpoint.clone(),
        rng.next_u64(),
        number,
        stop.clone(),
        server_ledger.clone(),
    ));
    let acked_before = lock(ledger).acked;
    let server_acked_before = crash_server::lock(server_ledger).acked_total();
    wait_for(
        sup,
        "the writers' and the KMS client's first acknowledged calls",
        Duration::from_secs(60),
        || {
            Ok((lock(ledger).acked > acked_before
                && crash_server::acked_since(server_ledger, server_acked_before))
            .then_some(()))
        },
        || {
            format!(
                "writes unacknowledged: {}; server calls unanswered: {:?}, the last one: {}",
                lock(ledger).unacked,
                crash_server::lock(server_ledger).unanswered,
                crash_server::lock(server_ledger).last_error
            )
        },
    )?;

    let token = format!("crash-{seed}-{number}");
    site.cp.kubectl([
        "patch",
        "kmskey",
        APISERVER_KEY,
        "-n",
        SYSTEM_NAMESPACE,
        "--type",
        "merge",
        "-p",
        &json!({"spec": {"rotation": {"onDemandToken": token}}}).to_string(),
    ])?;
    crash_server::rotate(site, &token)?;
    // Where the kill lands: mostly inside the pass's Rewriting phase, after a seeded
    // number of the Secrets are rewritten (plus up to one page's time); otherwise 0-4 s
    // after the rotation (the operator making the version, the plugin reloading it,
    // kube-apiserver not yet seeded).
    let in_pass = rng.below(100) < IN_PASS_PERCENT;
    let secrets = (bulk.len() + LIVE_NAMES) as u64;
    let aimed = if in_pass {
        // Before the last page: a later target finds the pass Done.
        let target = rng.below(secrets.saturating_sub(REENCRYPT_PAGE).max(1));
        let extra = rng.millis(Duration::from_millis(300));
        wait_rewritten(rt, sup, client, version, target)?;
        std::thread::sleep(extra);
        totals.aimed_in_pass += 1;
        format!(
            "pass after {target} of {secrets} rewritten +{}ms",
            extra.as_millis()
        )
    } else {
        let delay = rng.millis(Duration::from_millis(4000));
        std::thread::sleep(delay);
        format!("rotation +{}ms", delay.as_millis())
    };
    let st = rt
        .block_on(key_status_now(client, SYSTEM_NAMESPACE, APISERVER_KEY))
        .unwrap_or_default();
    let phase = phase_label(&st, version);
    let outage = rng.millis(Duration::from_millis(2000));
    sup.kill(component)?;
    log(
        t0,
        &format!(
            "trial {number}: SIGKILL {} at {aimed}: phase {phase} ({} rewritten, currentVersion {}), down {}ms",
            component.process(),
            st["reencryption"]["secretsRewritten"],
            st["currentVersion"],
            outage.as_millis()
        ),
    );
    *totals.kills.entry(component.process()).or_default() += 1;
    *totals.phases.entry(phase).or_default() += 1;
    std::thread::sleep(outage);
    sup.start(component)?;
    sup.site.cp.wait_apiserver_ready()?;
    // Evidence that clients get through again before they stop.
    let acked = lock(ledger).acked;
    let server_acked = crash_server::lock(server_ledger).acked_total();
    wait_for(
        sup,
        "an acknowledged write and server call after the restart",
        Duration::from_secs(120),
        || {
            Ok((lock(ledger).acked > acked
                && crash_server::acked_since(server_ledger, server_acked))
            .then_some(()))
        },
        || {
            format!(
                "unacknowledged so far: {}; server calls unanswered: {:?}, the last one: {}",
                lock(ledger).unacked,
                crash_server::lock(server_ledger).unanswered,
                crash_server::lock(server_ledger).last_error
            )
        },
    )?;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        rt.block_on(w)?;
    }
    rt.block_on(kms_client)?;

    let st = wait_for(
        sup,
        &format!("re-encryption Done for v{version}"),
        TRIAL_TIMEOUT,
        || {
            let st = key_status(site)?;
            let r = &st["reencryption"];
            Ok((st["currentVersion"].as_u64() == Some(version)
                && r["targetVersion"].as_u64() == Some(version)
                && r["phase"] == "Done")
                .then_some(st))
        },
        || {
            format!(
                "{}; {}",
                key_status(site).unwrap_or_default(),
                plugin_lease(site)
            )
        },
    )?;
    let pass = &st["reencryption"];
    ensure!(
        pass["secretsFailed"].as_u64().unwrap_or(0) == 0,
        "the pass refused Secrets: {pass}"
    );
    let key_id = format!(
        "{}/v{version}",
        st["keyId"]
            .as_str()
            .ok_or_else(|| anyhow!("no keyId: {st}"))?
    );
    check_reads(rt, client, bulk, ledger, totals)?;
    let stored = check_etcd(site, &key_id)?;
    crash_server::wait_version(site, version, TRIAL_TIMEOUT)?;
    let versions = check_versions(site, &sup.root_key, version)?;
    rt.block_on(crash_server::wait_encrypts_under(
        &sup.server_setup,
        &sup.server_endpoint(),
        version,
        Duration::from_secs(60),
    ))?;
    let mut sample_rng = DrillRng::new(rng.next_u64());
    let (blobs, signatures) = rt.block_on(crash_server::check_trial(
        &sup.server_setup,
        &sup.server_endpoint(),
        server_ledger,
        &mut sample_rng,
    ))?;
    {
        let l = crash_server::lock(server_ledger);
        ensure!(
            l.lost.is_empty(),
            "kubekms-server lost acknowledged results: {}",
            l.lost.join("; ")
        );
    }
    log(
        t0,
        &format!(
            "trial {number}: ok: pass Done ({} rewritten), {stored} Secrets in etcd under {key_id}, versions 1..{versions} unwrap (both keys), the server encrypts under v{version}, {blobs} blobs decrypt and {signatures} signatures verify through kubekms-server",
            pass["secretsRewritten"]
        ),
    );
    Ok(())
}

/// Every acknowledged Secret reads back with its last acknowledged value (or a later
/// unacknowledged one); missing or older values are lost.
fn check_reads(
    rt: &tokio::runtime::Runtime,
    client: &Client,
    bulk: &BTreeMap<String, String>,
    ledger: &SharedLedger,
    totals: &mut Totals,
) -> Result<()> {
    let bulk_now = rt.block_on(read_all(client, BULK_NS))?;
    for (name, value) in bulk {
        let got = bulk_now.get(name).cloned().flatten();
        if got.as_deref() != Some(value.as_str()) {
            totals.lost.push(format!(
                "{BULK_NS}/{name}: expected its created value, read {got:?}"
            ));
        }
    }
    let live_now = rt.block_on(read_all(client, LIVE_NS))?;
    let l = lock(ledger);
    for (name, known) in &l.names {
        let got = live_now.get(name).cloned().flatten();
        let Some(acked) = &known.acked else { continue };
        if got.as_deref() == Some(acked.as_str()) {
            continue;
        }
        if got.as_ref().is_some_and(|g| known.unsure.contains(g)) {
            totals.overtaken += 1;
            continue;
        }
        totals.lost.push(format!(
            "{LIVE_NS}/{name}: last acknowledged {acked:?}, read {got:?}"
        ));
    }
    drop(l);
    ensure!(
        totals.lost.is_empty(),
        "Secrets lost: {}",
        totals.lost.join("; ")
    );
    Ok(())
}

/// Every Secret etcd holds is under `key_id`; returns how many.
fn check_etcd(site: &Site, key_id: &str) -> Result<usize> {
    let out = site
        .cp
        .etcdctl(["get", "/registry/secrets/", "--prefix", "-w", "json"])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut other = BTreeMap::<String, Vec<String>>::new();
    let mut count = 0;
    for kv in v
        .get("kvs")
        .and_then(|k| k.as_array())
        .into_iter()
        .flatten()
    {
        let key = String::from_utf8(b64.decode(kv["key"].as_str().unwrap_or_default())?)?;
        let value = b64.decode(kv["value"].as_str().unwrap_or_default())?;
        let stored = envelope::parse_stored(&value, &[]).with_context(|| format!("etcd {key}"))?;
        count += 1;
        if stored.key_id != key_id {
            other.entry(stored.key_id).or_default().push(key);
        }
    }
    ensure!(
        other.is_empty(),
        "Secrets in etcd not under {key_id} after Done: {:?}",
        other
            .iter()
            .map(|(id, keys)| format!("{id}: {} ({:?}...)", keys.len(), keys.first()))
            .collect::<Vec<_>>()
    );
    Ok(count)
}

/// The KmsKeyMaterial holds versions 1..=`version`, each unwrapping under the root key;
/// so does the KMS client's key's.
fn check_versions(site: &Site, root_key: &std::path::Path, version: u64) -> Result<u64> {
    let record = site.get_json("kmskeymaterial", SYSTEM_NAMESPACE, APISERVER_KEY)?;
    let numbers: Vec<u64> = record
        .pointer("/spec/versions")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .filter_map(|v| v["version"].as_u64())
        .collect();
    ensure!(
        numbers == (1..=version).collect::<Vec<_>>(),
        "KmsKeyMaterial versions {numbers:?}, expected 1..={version}"
    );
    let store = FileKeyStore::open(root_key)?;
    let objects = BackupObjects::parse(&site.objects_json()?)?;
    let verification = verify(&objects, &store);
    let ours = verification
        .keys
        .iter()
        .find(|k| k.object == format!("{SYSTEM_NAMESPACE}/{APISERVER_KEY}"))
        .ok_or_else(|| anyhow!("verify did not see the key: {verification:?}"))?;
    let app = verification
        .keys
        .iter()
        .find(|k| k.object == format!("{APP_NS}/{APP_KEY}"))
        .ok_or_else(|| anyhow!("verify did not see {APP_NS}/{APP_KEY}: {verification:?}"))?;
    ensure!(
        verification.unusable() == 0
            && ours.versions == usize::try_from(version)?
            && app.versions == usize::try_from(version)?,
        "not every version unwraps:\n{}",
        verification.report(&store.root_key_id())
    );
    Ok(version)
}

#[test]
fn crash_drill_kills_each_component_during_rotation_and_reencryption() -> Result<()> {
    let opts = options()?;
    let t0 = Instant::now();
    eprintln!(
        "[crash-drill] seed {} trials {} secrets {} (replay: KUBEKMS_CRASH_SEED={} KUBEKMS_CRASH_TRIALS={} KUBEKMS_CRASH_SECRETS={})",
        opts.seed, opts.trials, opts.secrets, opts.seed, opts.trials, opts.secrets
    );
    let mut rng = DrillRng::new(opts.seed);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut site = Site::install("crash")?;
    let server_setup = ServerSetup::prepare(&site, &site.plugin_state.join("root.key"))?;
    // Our own operator (smaller pages), supervised.
    site.stop_operator();
    let site = site;
    log(
        t0,
        "control plane up, the plugin following the API server's KmsKey, the server's keys made",
    );
    let mut sup = Supervisor::new(&site, server_setup)?;
    log(t0, &format!("kubekms-server at {}", sup.server_endpoint()));
    let client = rt.block_on(client_for(&site.cp.kubeconfig))?;
    site.cp.kubectl(["create", "namespace", BULK_NS])?;
    site.cp.kubectl(["create", "namespace", LIVE_NS])?;
    let bulk = rt.block_on(create_bulk(&client, opts.secrets, opts.seed))?;
    log(t0, &format!("{} Secrets created", bulk.len()));

    let ledger = SharedLedger::default();
    let server_ledger = SharedServerLedger::default();
    let mut totals = Totals {
        bulk: bulk.len(),
        ..Totals::default()
    };
    let shared = Shared {
        rt: &rt,
        client: &client,
        seed: opts.seed,
        bulk: &bulk,
        ledger: &ledger,
        server_ledger: &server_ledger,
        t0,
    };
    let offset = component_offset(&mut rng, opts.trials);
    for number in 0..opts.trials {
        let component = component_of(offset, number);
        trial(&shared, &mut sup, &mut rng, number, component, &mut totals).with_context(|| {
            format!(
                "trial {number} of seed {} ({} killed); logs in {}",
                opts.seed,
                component.process(),
                site.cp.state_dir.join("logs").display()
            )
        })?;
    }
    let (blobs, signatures) = rt.block_on(crash_server::check_all(
        &sup.server_setup,
        &sup.server_endpoint(),
        &server_ledger,
    ))?;
    log(
        t0,
        &format!(
            "every blob ({blobs}) decrypts and every signature ({signatures}) verifies through kubekms-server"
        ),
    );
    let l = lock(&ledger);
    let s = crash_server::lock(&server_ledger);
    eprintln!(
        "[crash-drill] SUMMARY seed {} trials {} kills {:?} phase-at-kill {:?} aimed-in-pass {} exits-by-themselves {:?} secrets-written {} (bulk {} + writes {}) acknowledged {} (bulk {} + writes {}) unacknowledged {} overtaken-by-unacknowledged {} reads-after-write-ok {} stale-reads {} lost {} server-calls-acknowledged {} {:?} server-calls-unanswered {} {:?} server-blobs {} by-key-version {:?} server-signatures {} server-refusals {:?} {:?} server-lost {} time {:.0}s",
        opts.seed,
        opts.trials,
        totals.kills,
        totals.phases,
        totals.aimed_in_pass,
        sup.exited,
        totals.bulk as u64 + l.written,
        totals.bulk,
        l.written,
        totals.bulk as u64 + l.acked,
        totals.bulk,
        l.acked,
        l.unacked,
        totals.overtaken,
        l.reads_ok,
        l.stale_reads.len(),
        totals.lost.len(),
        s.acked_total(),
        s.acked,
        s.unanswered_total(),
        s.unanswered,
        blobs,
        s.by_version,
        signatures,
        s.refused,
        s.refused_examples,
        s.lost.len(),
        t0.elapsed().as_secs_f64()
    );
    ensure!(
        l.stale_reads.is_empty(),
        "reads older than an acknowledged write (seed {}): {:?}",
        opts.seed,
        l.stale_reads
    );
    ensure!(totals.lost.is_empty(), "lost: {:?}", totals.lost);
    ensure!(s.lost.is_empty(), "kubekms-server lost: {:?}", s.lost);
    Ok(())
}

#[test]
fn a_run_shorter_than_the_components_still_kills_the_server() {
    for seed in 0..200 {
        for trials in 1..COMPONENTS.len() {
            let offset = component_offset(&mut DrillRng::new(seed), trials);
            let killed: Vec<Component> = (0..trials).map(|n| component_of(offset, n)).collect();
            assert!(
                killed.contains(&Component::Server),
                "seed {seed}, {trials} trials: {killed:?}"
            );
        }
    }
    let offset = component_offset(&mut DrillRng::new(7), COMPONENTS.len());
    let all: BTreeSet<Component> = (0..COMPONENTS.len())
        .map(|n| component_of(offset, n))
        .collect();
    assert_eq!(all.len(), COMPONENTS.len(), "a full round kills each once");
}

#[test]
fn the_phase_at_a_kill_names_where_the_rotation_stands() {
    let status = |current: u64, target: u64, phase: &str| json!({"currentVersion": current, "reencryption": {"targetVersion": target, "phase": phase}});
    assert_eq!(phase_label(&status(2, 2, "Done"), 3), "Rotating");
    assert_eq!(phase_label(&json!({}), 3), "Rotating");
    assert_eq!(phase_label(&status(3, 2, "Done"), 3), "PassNotStarted");
    assert_eq!(
        phase_label(&status(3, 3, "WaitingForPlugins"), 3),
        "WaitingForPlugins"
    );
    assert_eq!(phase_label(&status(3, 3, "Rewriting"), 3), "Rewriting");
}
