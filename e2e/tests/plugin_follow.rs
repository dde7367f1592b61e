//! End-to-end test of the plugin's follow mode and of the hand-over of the bootstrap key to
//! the operator, on a real kube-apiserver + etcd (`hack/control-plane.sh`) with the real
//! `kubekms-plugin` and `kubekms-operator` binaries:
//!
//! `init` makes the bootstrap key → the control plane starts with the plugin in follow mode
//! (`serve --follow NS/NAME`, nothing to follow yet) → Secrets are encrypted under v1 →
//! `kubekms-plugin export` + `kubectl apply --server-side` create the KmsKeyMaterial and
//! KmsKey with the same key id → the plugin adopts them → the operator (sharing the root
//! key file) takes the existing record as its own → an on-demand rotation through
//! `spec.rotation.onDemandToken` becomes the plugin's key_id v2 → kube-apiserver writes new
//! Secrets under v2, old ones still read → API server and plugin stopped, the plugin
//! cold-starts from its folder with v2 while the API server is down → the API server comes
//! back and every Secret reads.
//!
//! Binaries: `KUBEKMS_PLUGIN_BIN` / `KUBEKMS_OPERATOR_BIN`, or next to the test binary's
//! folder (built by `cargo test --workspace`).

mod envelope;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use base64::Engine as _;
use envelope::parse_stored;
use kms_plugin::client::connect;
use kms_plugin::pb::StatusRequest;
use kubekms_e2e::process::{init_plugin_state, sh_quote, sibling_bin};
use kubekms_e2e::{ControlPlane, repo_root, secret_etcd_key, unique_name};

fn phase(started: Instant, what: &str) {
    eprintln!(
        "[e2e plugin-follow] {:>6.1}s {what}",
        started.elapsed().as_secs_f64()
    );
}

/// A private control plane whose plugin follows a KmsKey; the operator when started.
struct Plane {
    cp: ControlPlane,
    plugin_bin: PathBuf,
    plugin_state: PathBuf,
    socket: PathBuf,
    base: PathBuf,
    operator: Option<Child>,
    /// Where the running operator serves /metrics.
    operator_metrics: Option<u16>,
    /// A second plugin following the same KmsKey, as on a second control-plane node.
    second_plugin: Option<Child>,
}

impl Plane {
    fn start(target: &str) -> Result<Self> {
        let plugin_bin = sibling_bin("KUBEKMS_PLUGIN_BIN", "kubekms-plugin")?;
        let base = std::env::temp_dir().join(unique_name("kubekms-e2e-follow"));
        std::fs::create_dir_all(&base)?;
        let plugin_state = base.join("plugin-state");
        let socket = base.join("kms.sock");
        let cp_state = base.join("cp");
        init_plugin_state(&plugin_bin, &plugin_state)?;
        // The kubeconfig is written by control-plane.sh before the plugin starts, but the
        // API server comes up only after the plugin: the follower must wait for it.
        let plugin_cmd = format!(
            "exec {} serve --state-dir {} --socket {} --reload-interval-ms 1000 --follow {target} --instance e2e-cp-1 --kubeconfig {}",
            sh_quote(&plugin_bin),
            sh_quote(&plugin_state),
            sh_quote(&socket),
            sh_quote(&cp_state.join("kubeconfig")),
        );
        Ok(Self {
            cp: ControlPlane::start_with_plugin(&cp_state, &socket, &plugin_cmd)?,
            plugin_bin,
            plugin_state,
            socket,
            base,
            operator: None,
            operator_metrics: None,
            second_plugin: None,
        })
    }

    /// Status as kube-apiserver sees it: (healthz, key_id).
    async fn status(&self) -> Result<(String, String)> {
        let mut c = connect(&self.socket).await?;
        let st = c.status(StatusRequest {}).await?.into_inner();
        Ok((st.healthz, st.key_id))
    }

    /// Polls Status until `pred` holds on (healthz, key_id), or fails after `limit`.
    async fn wait_status(
        &self,
        limit: Duration,
        what: &str,
        pred: impl Fn(&str, &str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + limit;
        loop {
            let last = match self.status().await {
                Ok((healthz, key_id)) if pred(&healthz, &key_id) => return Ok(key_id),
                other => format!("{other:?}"),
            };
            ensure!(
                Instant::now() < deadline,
                "{what}: not reached after {limit:?}; last Status {last}; plugin log {}",
                self.cp.log_path("kms-plugin").display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The key_id a Secret is stored under in etcd (checked: KMS v2 envelope, no plaintext,
    /// DEK source a KubeKMS blob of that key and version).
    fn stored_key_id(&self, ns: &str, name: &str, plaintext: &str) -> Result<String> {
        let key = secret_etcd_key(ns, name);
        let bytes = self
            .cp
            .etcd_get(&key)?
            .ok_or_else(|| anyhow!("etcd has no {key}"))?;
        Ok(parse_stored(&bytes, &[plaintext.as_bytes()])
            .with_context(|| format!("etcd key {key}"))?
            .key_id)
    }

    /// The key_id of every Secret etcd holds (all namespaces), by etcd key.
    fn all_stored_key_ids(&self) -> Result<BTreeMap<String, String>> {
        let out = self
            .cp
            .etcdctl(["get", "/registry/secrets/", "--prefix", "-w", "json"])?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut ids = BTreeMap::new();
        for kv in v
            .get("kvs")
            .and_then(|k| k.as_array())
            .into_iter()
            .flatten()
        {
            let field = |name: &str| -> Result<Vec<u8>> {
                Ok(b64.decode(kv.get(name).and_then(|x| x.as_str()).unwrap_or_default())?)
            };
            let key = String::from_utf8(field("key")?)?;
            let obj =
                parse_stored(&field("value")?, &[]).with_context(|| format!("etcd key {key}"))?;
            ids.insert(key, obj.key_id);
        }
        Ok(ids)
    }

    /// Waits until `status.reencryption` of the KmsKey satisfies `pred`; returns it.
    async fn wait_reencryption(
        &self,
        ns: &str,
        name: &str,
        limit: Duration,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let deadline = Instant::now() + limit;
        loop {
            let key = self.kmskey_json(ns, name)?;
            let progress = key
                .pointer("/status/reencryption")
                .cloned()
                .unwrap_or_default();
            if pred(&progress) {
                return Ok(progress);
            }
            ensure!(
                Instant::now() < deadline,
                "{what}: not reached after {limit:?}; status {}; operator log {}",
                key.get("status").cloned().unwrap_or_default(),
                self.cp.log_path("kubekms-operator").display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Starts the operator binary (sharing the plugin's root key) over namespace `ns`.
    fn start_operator(&mut self, ns: &str, extra: &[&str]) -> Result<()> {
        let operator_bin = sibling_bin("KUBEKMS_OPERATOR_BIN", "kubekms-operator")?;
        let op_log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.cp.log_path("kubekms-operator"))?;
        let port = free_port()?;
        let metrics_addr = format!("127.0.0.1:{port}");
        self.operator_metrics = Some(port);
        self.operator = Some(
            Command::new(&operator_bin)
                .env("KUBECONFIG", &self.cp.kubeconfig)
                .arg("--root-key")
                .arg(self.plugin_state.join("root.key"))
                .args([
                    "--namespace",
                    ns,
                    "--metrics-addr",
                    &metrics_addr,
                    "--lease-namespace",
                    ns,
                    "--identity",
                    "e2e-follow",
                    "--lease-duration-seconds",
                    "4",
                    "--lease-renew-seconds",
                    "1",
                    "--log-format",
                    "text",
                ])
                .args(extra)
                .stdin(Stdio::null())
                .stdout(op_log.try_clone()?)
                .stderr(op_log)
                .spawn()
                .context("starting kubekms-operator")?,
        );
        Ok(())
    }

    /// A second plugin (instance e2e-cp-2) following `target` from a copy of the first
    /// one's state folder, on its own socket, as on a second control-plane node whose
    /// kube-apiserver the test plays through gRPC.
    fn start_second_plugin(&mut self, target: &str) -> Result<PathBuf> {
        let state = self.base.join("plugin-state-2");
        let copied = Command::new("cp")
            .arg("-a")
            .arg(&self.plugin_state)
            .arg(&state)
            .status()?;
        ensure!(copied.success(), "copying the plugin state folder");
        let _ = std::fs::remove_file(state.join("seeded.json"));
        let socket = self.base.join("kms-2.sock");
        let log = std::fs::File::create(self.cp.log_path("kms-plugin-2"))?;
        self.second_plugin = Some(
            Command::new(&self.plugin_bin)
                .arg("serve")
                .arg("--state-dir")
                .arg(&state)
                .arg("--socket")
                .arg(&socket)
                .args(["--reload-interval-ms", "1000", "--follow", target])
                .args(["--instance", "e2e-cp-2", "--kubeconfig"])
                .arg(&self.cp.kubeconfig)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?,
        );
        Ok(socket)
    }

    /// `kubectl patch --type=merge` of a KmsKey.
    fn patch_kmskey(&self, ns: &str, name: &str, patch: &str) -> Result<()> {
        self.cp.kubectl(patch_args(ns, name, patch))?;
        Ok(())
    }

    /// The same patch, which must be refused; returns kubectl's stderr.
    fn patch_kmskey_refused(&self, ns: &str, name: &str, patch: &str) -> Result<String> {
        self.kubectl_refused(&patch_args(ns, name, patch))
    }

    /// `kubectl` that must fail; returns its stderr.
    fn kubectl_refused(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(self.cp.tool("kubectl"))
            .env("KUBECONFIG", &self.cp.kubeconfig)
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        ensure!(
            !out.status.success(),
            "kubectl {args:?} was accepted: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }

    fn kmskey_json(&self, ns: &str, name: &str) -> Result<serde_json::Value> {
        let out = self
            .cp
            .kubectl(["get", "kmskey", name, "-n", ns, "-o", "json"])?;
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Reconciliations the running operator has run so far (its /metrics).
    fn operator_reconciles(&self) -> Result<u64> {
        let port = self
            .operator_metrics
            .ok_or_else(|| anyhow!("no operator running"))?;
        let text = http_get(port, "/metrics")?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with("kubekms_operator_reconciles_total"))
            .filter_map(|l| {
                l.rsplit_once(' ')
                    .and_then(|(_, v)| v.trim().parse::<f64>().ok())
            })
            .map(|v| v as u64)
            .sum())
    }

    /// Waits until the operator has run `more` reconciliations after this call: evidence
    /// that it looked at the keys again (it rechecks a waiting re-encryption when a
    /// heartbeat Lease is renewed, every 15 s, and on its requeue).
    async fn wait_reconciles(&self, more: u64, what: &str) -> Result<()> {
        let mut start = None;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match (self.operator_reconciles(), start) {
                (Ok(n), None) => start = Some(n),
                (Ok(n), Some(s)) if n >= s + more => return Ok(()),
                _ => {}
            }
            ensure!(
                Instant::now() < deadline,
                "{what}: the operator ran fewer than {more} reconciliations in 120 s (from {start:?}); log {}",
                self.cp.log_path("kubekms-operator").display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn local_record(&self, key: &str) -> Result<serde_json::Value> {
        let path = self.plugin_state.join("keys").join(format!("{key}.json"));
        Ok(serde_json::from_slice(&std::fs::read(&path)?)?)
    }
}

impl Drop for Plane {
    fn drop(&mut self) {
        for mut child in [self.operator.take(), self.second_plugin.take()]
            .into_iter()
            .flatten()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new(repo_root().join("hack/control-plane.sh"))
            .arg("down")
            .arg("--state-dir")
            .arg(&self.cp.state_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bootstrap_key_handed_over_to_the_operator_and_followed() -> Result<()> {
    let t0 = Instant::now();
    let ns = unique_name("e2e-follow");
    let name = "apiserver-key";
    let target = format!("{ns}/{name}");
    let mut plane = Plane::start(&target)?;
    phase(
        t0,
        "control plane up, plugin in follow mode (no KmsKey yet)",
    );

    // Bootstrap: the plugin serves the key `init` made; nothing to follow yet is healthy.
    let k1 = plane
        .wait_status(Duration::from_secs(30), "bootstrap Status ok", |h, _| {
            h == "ok"
        })
        .await?;
    ensure!(k1.ends_with("/v1"), "bootstrap key_id {k1}");
    let (key_uuid, _) = kms_plugin::parse_key_id(&k1)?;
    let key_uuid = key_uuid.to_string();
    plane.cp.kubectl(["create", "namespace", &ns])?;
    let mut secrets = BTreeMap::new();
    for i in 0..3 {
        let value = format!("bootstrap-{i}-{}", unique_name("pw"));
        plane.cp.create_secret(&ns, &format!("s{i}"), &value)?;
        secrets.insert(format!("s{i}"), value);
    }
    for (n, v) in &secrets {
        ensure!(
            plane.stored_key_id(&ns, n, v)? == k1,
            "{n} not stored under {k1}"
        );
    }
    phase(t0, "3 Secrets stored under the bootstrap key_id v1");

    // Hand-over: export the bootstrap key, apply CRDs and the objects.
    plane.cp.apply_crds()?;
    let export = Command::new(&plane.plugin_bin)
        .args(["export", "--namespace", &ns, "--name", name, "--state-dir"])
        .arg(&plane.plugin_state)
        .stdin(Stdio::null())
        .output()?;
    ensure!(
        export.status.success(),
        "export: {}",
        String::from_utf8_lossy(&export.stderr)
    );
    let yaml = String::from_utf8(export.stdout)?;
    ensure!(yaml.contains(&key_uuid), "export does not name {key_uuid}");
    plane
        .cp
        .kubectl_stdin(&["apply", "--server-side", "-f", "-"], yaml.as_bytes())?;
    phase(
        t0,
        "exported bootstrap key applied as KmsKeyMaterial + KmsKey",
    );

    // The follower adopts the record: same key, now sourced from Kubernetes.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rec = plane.local_record(&key_uuid)?;
        if rec.get("source").and_then(|s| s.as_str()) == Some("kubernetes") {
            ensure!(
                rec.get("kubernetes_object").and_then(|s| s.as_str()) == Some(target.as_str()),
                "adopted record names {:?}",
                rec.get("kubernetes_object")
            );
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the plugin did not adopt KmsKey {target} within 60s; log {}",
            plane.cp.log_path("kms-plugin").display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (healthz, key_id) = plane.status().await?;
    ensure!(
        healthz == "ok" && key_id == k1,
        "after adoption: {healthz} {key_id}"
    );
    phase(
        t0,
        "plugin adopted the KmsKey: same key_id, source kubernetes",
    );

    // The operator, sharing the root key file, treats the existing record as its own.
    // Slow re-encryption (pages of 10, 20 Secrets/s) so the test can stop it half-way.
    plane.start_operator(&ns, SLOW_REENCRYPTION)?;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let key = plane.kmskey_json(&ns, name)?;
        let state = key.pointer("/status/keyState").and_then(|s| s.as_str());
        let id = key.pointer("/status/keyId").and_then(|s| s.as_str());
        if state == Some("Enabled") {
            ensure!(
                id == Some(key_uuid.as_str()),
                "operator shows key id {id:?}, not {key_uuid}"
            );
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "KmsKey {target} not Enabled 90s after the operator started: {key}; log {}",
            plane.cp.log_path("kubekms-operator").display()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    phase(
        t0,
        "operator adopted the record: KmsKey Enabled with the bootstrap key id",
    );

    check_protection(&plane, &ns, name).await?;
    phase(
        t0,
        "protected: disable, deletion and delete refused by the admission policy and by the operator",
    );

    // A second control-plane node: its plugin follows the same key and heartbeats too.
    let socket2 = plane.start_second_plugin(&target)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let key = plane.kmskey_json(&ns, name)?;
        let live = key
            .pointer("/status/servedBy")
            .and_then(|s| s.as_array())
            .map_or(0, |a| a.iter().filter(|p| p["live"] == true).count());
        if live == 2 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the second plugin never showed in status.servedBy: {}; log {}",
            key["status"],
            plane.cp.log_path("kms-plugin-2").display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    phase(
        t0,
        "a second plugin (e2e-cp-2) follows the key: servedBy lists both",
    );

    // Rotate through the operator.
    plane.patch_kmskey(
        &ns,
        name,
        r#"{"spec":{"rotation":{"onDemandToken":"handover-1"}}}"#,
    )?;
    let rotated = Instant::now();
    let k2 = plane
        .wait_status(
            Duration::from_secs(60),
            "key_id v2 after rotation",
            |h, k| h == "ok" && k != k1,
        )
        .await?;
    let took = rotated.elapsed();
    ensure!(k2 == format!("{key_uuid}/v2"), "rotated key_id {k2}");
    phase(
        t0,
        &format!("operator rotation became the plugin's key_id {k2} after {took:?}"),
    );
    let rec = plane.local_record(&key_uuid)?;
    let versions: Vec<u64> = rec
        .get("versions")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .filter_map(|v| v.get("version").and_then(serde_json::Value::as_u64))
        .collect();
    ensure!(versions == [1, 2], "local record versions {versions:?}");

    // kube-apiserver polls Status every minute, then re-seeds: probe until a write is v2.
    let deadline = Instant::now() + Duration::from_secs(200);
    let mut probe = 0;
    loop {
        let n = format!("probe{probe}");
        let value = format!("probe-{probe}-{}", unique_name("pw"));
        plane.cp.create_secret(&ns, &n, &value)?;
        let stored = plane.stored_key_id(&ns, &n, &value)?;
        secrets.insert(n, value);
        if stored == k2 {
            break;
        }
        ensure!(
            stored == k1,
            "probe stored under unexpected key_id {stored}"
        );
        ensure!(
            Instant::now() < deadline,
            "kube-apiserver still writes under {k1} 200s after the rotation; {}",
            plane.cp.where_to_look()
        );
        probe += 1;
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    plane
        .cp
        .check_all_read(&ns, &secrets, "after the rotation")?;
    phase(t0, "new Secrets stored under v2, every Secret reads");

    // kube-apiserver seeded a DEK under v2 through e2e-cp-1; nothing went through
    // e2e-cp-2 yet, whose API server would still write under v1: the rewrite waits for it.
    let waiting = plane
        .wait_reencryption(
            &ns,
            name,
            Duration::from_secs(60),
            "re-encryption waiting for e2e-cp-2 only",
            |r| {
                let message = r["message"].as_str().unwrap_or_default();
                r["targetVersion"] == 2
                    && r["phase"] == "WaitingForPlugins"
                    && message.contains("e2e-cp-2 (")
                    && !message.contains("e2e-cp-1 (")
            },
        )
        .await?;
    // Not a fixed sleep: two more reconciliations (so at least one began after the phase
    // was seen) must run and still hold the rewrite.
    plane
        .wait_reconciles(2, "the operator rechecking the held re-encryption")
        .await?;
    let still = plane.kmskey_json(&ns, name)?["status"]["reencryption"]["phase"].clone();
    ensure!(
        still == "WaitingForPlugins",
        "the rewrite started before every plugin had a DEK seeded under v2: {still}"
    );
    phase(t0, &format!("re-encryption waits: {}", waiting["message"]));
    // The second API server seeds its DEK (its Encrypt call, as kube-apiserver makes it).
    let mut c2 = connect(&socket2).await?;
    let seeded = c2
        .encrypt(kms_plugin::pb::EncryptRequest {
            plaintext: vec![7; 32],
            uid: "e2e-cp-2-seed".to_owned(),
        })
        .await?
        .into_inner();
    ensure!(
        seeded.key_id == k2,
        "e2e-cp-2 encrypted under {}",
        seeded.key_id
    );

    // The operator saw every kube-apiserver seed a DEK under v2 and rewrote every Secret.
    let done = plane
        .wait_reencryption(
            &ns,
            name,
            Duration::from_secs(120),
            "re-encryption to v2 done",
            |r| r["targetVersion"] == 2 && r["phase"] == "Done",
        )
        .await?;
    let stored = plane.all_stored_key_ids()?;
    ensure!(
        stored.len() >= secrets.len() && stored.values().all(|id| *id == k2),
        "after re-encryption to v2 etcd still holds Secrets under another key_id: {stored:?}"
    );
    // e2e-cp-2's node is decommissioned: its plugin stops, and its Lease is deleted (the
    // deliberate release); the key is served by e2e-cp-1 alone.
    if let Some(mut second) = plane.second_plugin.take() {
        second.kill()?;
        second.wait()?;
    }
    plane
        .cp
        .kubectl(["delete", "lease", "kubekms-plugin-e2e-cp-2", "-n", &ns])?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while plane.kmskey_json(&ns, name)?["status"]["servedBy"]
        .as_array()
        .map_or(0, Vec::len)
        != 1
    {
        ensure!(
            Instant::now() < deadline,
            "servedBy still lists the deleted Lease"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    phase(
        t0,
        &format!(
            "re-encrypted: {} Secrets rewritten, all {} in etcd under {k2}",
            done["secretsRewritten"],
            stored.len()
        ),
    );

    // Cold start: API server down, then the plugin restarts from its folder alone.
    if let Some(mut op) = plane.operator.take() {
        op.kill()?;
        op.wait()?;
    }
    let apiserver = plane.cp.argv_of("kube-apiserver")?;
    let plugin = plane.cp.argv_of("kms-plugin")?;
    // The plugin first: its watch would hold kube-apiserver's graceful shutdown for its
    // 60 s timeout (as any client's watch does).
    plane.cp.stop_process("kms-plugin")?;
    plane.cp.stop_process("kube-apiserver")?;
    plane.cp.start_process("kms-plugin", &plugin)?;
    let cold = plane
        .wait_status(
            Duration::from_secs(60),
            "cold start with the API server down",
            |h, _| h == "ok",
        )
        .await?;
    ensure!(cold == k2, "cold start serves {cold}, expected {k2}");
    phase(
        t0,
        "plugin cold-started with the API server down: Status ok, key_id v2",
    );

    plane.cp.start_process("kube-apiserver", &apiserver)?;
    plane.cp.wait_apiserver_ready()?;
    plane
        .cp
        .check_all_read(&ns, &secrets, "after the cold start")?;
    let value = format!("after-cold-start-{}", unique_name("pw"));
    plane.cp.create_secret(&ns, "after", &value)?;
    ensure!(plane.stored_key_id(&ns, "after", &value)? == k2);
    secrets.insert("after".into(), value);
    plane.cp.check_all_read(&ns, &secrets, "at the end")?;
    let (healthz, key_id) = plane.status().await?;
    ensure!(
        healthz == "ok" && key_id == k2,
        "at the end: {healthz} {key_id}"
    );
    phase(t0, "API server back: every Secret reads, new ones under v2");

    kill_mid_reencryption_and_resume(&mut plane, &ns, name, &key_uuid, t0).await?;
    Ok(())
}

/// A free loopback port (bound then released).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// GET `path` on `127.0.0.1:port` over plain HTTP/1.0; the body.
fn http_get(port: u16, path: &str) -> Result<String> {
    use std::io::Read as _;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP response: {text:?}"))?;
    ensure!(head.contains(" 200 "), "GET {path}: {head}");
    Ok(body.to_owned())
}

/// Refuses updates of Secrets labelled `e2e.kubekms.io/frozen` (reason Invalid: 422).
const FREEZE_POLICY: &str = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: e2e-frozen-secrets}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
      - {apiGroups: [""], apiVersions: ["v1"], operations: ["UPDATE"], resources: ["secrets"]}
  validations:
    - expression: "!has(object.metadata.labels) || !('e2e.kubekms.io/frozen' in object.metadata.labels)"
      message: "frozen by the e2e test"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: e2e-frozen-secrets}
spec:
  policyName: e2e-frozen-secrets
  validationActions: ["Deny"]
"#;

fn patch_args<'a>(ns: &'a str, name: &'a str, patch: &'a str) -> [&'a str; 8] {
    [
        "patch",
        "kmskey",
        name,
        "-n",
        ns,
        "--type=merge",
        "-p",
        patch,
    ]
}

const SLOW_REENCRYPTION: &[&str] = &[
    "--reencrypt-page-size",
    "10",
    "--reencrypt-secrets-per-second",
    "20",
];

/// The key the plugin serves cannot be disabled, scheduled for deletion or deleted: the
/// ValidatingAdmissionPolicy refuses with a message that says why; without the policy the
/// operator refuses and says so in a condition and an Event.
async fn check_protection(plane: &Plane, ns: &str, name: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let key = plane.kmskey_json(ns, name)?;
        let served = key
            .pointer("/status/servedBy/0/plugin")
            .and_then(|p| p.as_str())
            .map(str::to_owned);
        if let Some(plugin) = served {
            ensure!(
                key.pointer("/status/servedBy/0/live") == Some(&serde_json::Value::Bool(true)),
                "servedBy: {key}"
            );
            ensure!(plugin == "e2e-cp-1", "served by {plugin}");
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "status.servedBy never filled from the plugin's heartbeat: {key}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let policy = repo_root().join("deploy/admission/kmskey-protection.yaml");
    plane
        .cp
        .kubectl(["apply".as_ref(), "-f".as_ref(), policy.as_os_str()])?;
    let disable = r#"{"spec":{"enabled":false}}"#;
    let enable = r#"{"spec":{"enabled":true}}"#;
    // A new policy takes effect within seconds: until then an accepted disable is undone.
    let deadline = Instant::now() + Duration::from_secs(60);
    let refusal = loop {
        match plane.patch_kmskey_refused(ns, name, disable) {
            Ok(stderr) => break stderr,
            Err(_) => {
                plane.patch_kmskey(ns, name, enable)?;
            }
        }
        ensure!(
            Instant::now() < deadline,
            "the ValidatingAdmissionPolicy never refused disabling the served key"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    ensure!(
        refusal.contains("is protected")
            && refusal.contains("e2e-cp-1")
            && refusal.contains("Disabling it"),
        "refusal does not say why: {refusal}"
    );
    let refusal = plane.patch_kmskey_refused(
        ns,
        name,
        r#"{"spec":{"deletion":{"pendingWindowInDays":7}}}"#,
    )?;
    ensure!(
        refusal.contains("Scheduling its deletion"),
        "deletion refusal: {refusal}"
    );
    let refusal = plane.kubectl_refused(&["delete", "kmskey", name, "-n", ns, "--wait=false"])?;
    ensure!(refusal.contains("Deleting it"), "delete refusal: {refusal}");

    // Without the policy, the operator refuses.
    plane.cp.kubectl([
        "delete",
        "validatingadmissionpolicybinding",
        "kubekms-served-key-protection",
    ])?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while plane.patch_kmskey_refused(ns, name, disable).is_ok() {
        ensure!(
            Instant::now() < deadline,
            "the policy kept refusing after its binding was deleted"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let key = plane.kmskey_json(ns, name)?;
        let protected = key
            .pointer("/status/conditions")
            .and_then(|c| c.as_array())
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Protected")
            .cloned()
            .unwrap_or_default();
        if protected["reason"] == "DisableRefused" {
            ensure!(
                key.pointer("/status/keyState").and_then(|s| s.as_str()) == Some("Enabled"),
                "the operator disabled a served key: {key}"
            );
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the operator did not refuse disabling the served key: {key}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let events = plane.cp.kubectl([
        "get",
        "events",
        "-n",
        ns,
        "--field-selector",
        "reason=ProtectionRefused",
        "-o",
        "name",
    ])?;
    ensure!(
        !events.stdout.is_empty(),
        "no ProtectionRefused Event was published"
    );
    plane.patch_kmskey(ns, name, enable)?;
    Ok(())
}

/// Many Secrets, a rotation, the operator killed (SIGKILL) half-way through the rewrite:
/// the restarted operator resumes from the saved continue token (the count comes out
/// exact, not a second pass) and finishes; etcd holds nothing under an older key_id.
async fn kill_mid_reencryption_and_resume(
    plane: &mut Plane,
    ns: &str,
    name: &str,
    key_uuid: &str,
    t0: Instant,
) -> Result<()> {
    use k8s_openapi::api::core::v1::Secret;
    let client = plane.cp.client().await?;
    let api: kube::Api<Secret> = kube::Api::namespaced(client.clone(), ns);
    for i in 0..150 {
        let mut secret = Secret::default();
        secret.metadata.name = Some(format!("bulk-{i:03}"));
        secret.string_data = Some(BTreeMap::from([(
            "value".to_owned(),
            format!("bulk-{i}-{}", unique_name("pw")),
        )]));
        api.create(&kube::api::PostParams::default(), &secret)
            .await?;
    }
    // One Secret that an admission policy refuses to update: the pass names it and goes on.
    let frozen_value = format!("frozen-{}", unique_name("pw"));
    let mut frozen = Secret::default();
    frozen.metadata.name = Some("frozen".to_owned());
    frozen.metadata.labels = Some(BTreeMap::from([(
        "e2e.kubekms.io/frozen".to_owned(),
        "true".to_owned(),
    )]));
    frozen.string_data = Some(BTreeMap::from([("value".to_owned(), frozen_value.clone())]));
    api.create(&kube::api::PostParams::default(), &frozen)
        .await?;
    let k2 = plane.stored_key_id(ns, "frozen", &frozen_value)?;
    plane
        .cp
        .kubectl_stdin(&["apply", "-f", "-"], FREEZE_POLICY.as_bytes())?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while plane
        .kubectl_refused(&[
            "annotate",
            "secret",
            "frozen",
            "-n",
            ns,
            "e2e.kubekms.io/probe=1",
            "--dry-run=server",
        ])
        .is_err()
    {
        ensure!(
            Instant::now() < deadline,
            "the freeze policy never took effect"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let total = kube::Api::<Secret>::all(client)
        .list(&kube::api::ListParams::default())
        .await?
        .items
        .len();
    plane.start_operator(ns, SLOW_REENCRYPTION)?;
    plane.patch_kmskey(
        ns,
        name,
        r#"{"spec":{"rotation":{"onDemandToken":"handover-2"}}}"#,
    )?;
    let k3 = format!("{key_uuid}/v3");
    phase(
        t0,
        &format!("{total} Secrets in the cluster; rotated to {k3}"),
    );
    let running = plane
        .wait_reencryption(
            ns,
            name,
            Duration::from_secs(200),
            "re-encryption to v3 half-way",
            |r| {
                r["targetVersion"] == 3
                    && r["phase"] == "Rewriting"
                    && r["secretsRewritten"].as_u64() >= Some(30)
            },
        )
        .await?;
    if let Some(mut op) = plane.operator.take() {
        op.kill()?;
        op.wait()?;
    }
    let at_kill = plane.kmskey_json(ns, name)?["status"]["reencryption"].clone();
    let done_at_kill = at_kill["secretsRewritten"].as_u64().unwrap_or_default();
    ensure!(
        at_kill["phase"] == "Rewriting"
            && at_kill["continueToken"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
            && done_at_kill < total as u64,
        "after SIGKILL the progress is not resumable: {at_kill}"
    );
    phase(
        t0,
        &format!("operator killed (SIGKILL) with {done_at_kill}/{total} Secrets rewritten"),
    );
    plane.start_operator(ns, SLOW_REENCRYPTION)?;
    let done = plane
        .wait_reencryption(
            ns,
            name,
            Duration::from_secs(120),
            "re-encryption to v3 done after the restart",
            |r| r["targetVersion"] == 3 && r["phase"] == "Done",
        )
        .await?;
    ensure!(
        done["started"] == running["started"],
        "the pass restarted instead of resuming: {running} then {done}"
    );
    ensure!(
        done["secretsRewritten"].as_u64() == Some(total as u64 - 1)
            && done["secretsFailed"].as_u64() == Some(1),
        "resumed pass counted {} rewritten and {} refused Secrets, the cluster has {total} with 1 frozen: \
         pages were skipped or done twice",
        done["secretsRewritten"],
        done["secretsFailed"]
    );
    let refused = done["failedSecrets"][0].as_str().unwrap_or_default();
    ensure!(
        refused.starts_with(&format!("{ns}/frozen: "))
            && refused.contains("frozen by the e2e test"),
        "failedSecrets: {}",
        done["failedSecrets"]
    );
    let stored = plane.all_stored_key_ids()?;
    let frozen_key = secret_etcd_key(ns, "frozen");
    let stale: Vec<_> = stored
        .iter()
        .filter(|(key, id)| **id != k3 && **key != frozen_key)
        .collect();
    ensure!(
        stored.len() == total && stale.is_empty() && stored.get(&frozen_key) == Some(&k2),
        "after the resumed re-encryption {} of {} Secrets are not under {k3} (the frozen one must stay under {k2}): {stale:?}",
        stale.len(),
        stored.len()
    );
    plane.cp.check_all_read(
        ns,
        &BTreeMap::from([("frozen".to_owned(), frozen_value)]),
        "the refused Secret under its older version",
    )?;
    phase(
        t0,
        &format!(
            "restarted operator resumed and finished: {} of {total} Secrets under {k3} in etcd, the refused one named in status and still under {k2}",
            total - 1
        ),
    );
    Ok(())
}
