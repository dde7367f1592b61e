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

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use base64::Engine as _;
use kms_plugin::client::connect;
use kms_plugin::pb::StatusRequest;
use kubekms_e2e::process::{sh_quote, sibling_bin, tools_bin};
use kubekms_e2e::{
    ControlPlane, KMS_PROVIDER_NAME, check_kms_encrypted, kms_v2_prefix, preview, repo_root,
    secret_etcd_key, unique_name,
};

/// kube-apiserver's stored envelope (`EncryptedObject`), field numbers from the published API.
#[derive(Clone, PartialEq, prost::Message)]
struct EncryptedObject {
    #[prost(bytes = "vec", tag = "1")]
    encrypted_data: Vec<u8>,
    #[prost(string, tag = "2")]
    key_id: String,
    #[prost(bytes = "vec", tag = "3")]
    encrypted_dek_source: Vec<u8>,
}

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
}

impl Plane {
    fn start(target: &str) -> Result<Self> {
        let tools = tools_bin()?;
        let plugin_bin = sibling_bin("KUBEKMS_PLUGIN_BIN", "kubekms-plugin")?;
        let base = std::env::temp_dir().join(unique_name("kubekms-e2e-follow"));
        std::fs::create_dir_all(&base)?;
        let plugin_state = base.join("plugin-state");
        let socket = base.join("kms.sock");
        let cp_state = base.join("cp");
        let init = Command::new(&plugin_bin)
            .args(["init", "--state-dir"])
            .arg(&plugin_state)
            .stdin(Stdio::null())
            .output()?;
        ensure!(
            init.status.success(),
            "kubekms-plugin init: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        // The kubeconfig is written by control-plane.sh before the plugin starts, but the
        // API server comes up only after the plugin: the follower must wait for it.
        let plugin_cmd = format!(
            "exec {} serve --state-dir {} --socket {} --reload-interval-ms 1000 --follow {target} --kubeconfig {}",
            sh_quote(&plugin_bin),
            sh_quote(&plugin_state),
            sh_quote(&socket),
            sh_quote(&cp_state.join("kubeconfig")),
        );
        let out = Command::new(repo_root().join("hack/control-plane.sh"))
            .arg("up")
            .arg("--state-dir")
            .arg(&cp_state)
            .arg("--tools-bin")
            .arg(&tools)
            .args(["--watch-pid", &std::process::id().to_string()])
            .arg("--kms-socket")
            .arg(&socket)
            .arg("--plugin-cmd")
            .arg(&plugin_cmd)
            .stdin(Stdio::null())
            .output()?;
        ensure!(
            out.status.success(),
            "control-plane.sh up with the following plugin failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Self {
            cp: ControlPlane::from_state_dir(&cp_state)?,
            plugin_bin,
            plugin_state,
            socket,
            base,
            operator: None,
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

    fn kubectl_stdin(&self, args: &[&str], stdin: &[u8]) -> Result<String> {
        let mut child = Command::new(self.cp.tool("kubectl"))
            .env("KUBECONFIG", &self.cp.kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .ok_or_else(|| anyhow!("no stdin"))?
            .write_all(stdin)?;
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn create_secret(&self, ns: &str, name: &str, value: &str) -> Result<()> {
        self.cp.kubectl([
            "create",
            "secret",
            "generic",
            name,
            "-n",
            ns,
            &format!("--from-literal=value={value}"),
        ])?;
        Ok(())
    }

    fn check_all_read(
        &self,
        ns: &str,
        expected: &BTreeMap<String, String>,
        when: &str,
    ) -> Result<()> {
        for (name, value) in expected {
            let out = self
                .cp
                .kubectl(["get", "secret", name, "-n", ns, "-o", "json"])
                .with_context(|| format!("{when}: reading {ns}/{name}"))?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            let b64 = v
                .pointer("/data/value")
                .and_then(|x| x.as_str())
                .ok_or_else(|| anyhow!("secret {ns}/{name} has no data.value"))?;
            let got = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64)?)?;
            ensure!(
                &got == value,
                "{when}: {ns}/{name} reads {got:?}, expected {value:?}"
            );
        }
        Ok(())
    }

    /// The key_id a Secret is stored under in etcd (checked: KMS v2 envelope, no plaintext,
    /// DEK source a KubeKMS blob of that key and version).
    fn stored_key_id(&self, ns: &str, name: &str, plaintext: &str) -> Result<String> {
        let key = secret_etcd_key(ns, name);
        let bytes = self
            .cp
            .etcd_get(&key)?
            .ok_or_else(|| anyhow!("etcd has no {key}"))?;
        check_kms_encrypted(&bytes, KMS_PROVIDER_NAME, &[plaintext.as_bytes()])?;
        let prefix = kms_v2_prefix(KMS_PROVIDER_NAME);
        let body = bytes
            .get(prefix.len()..)
            .ok_or_else(|| anyhow!("short value"))?;
        let obj = <EncryptedObject as prost::Message>::decode(body)
            .with_context(|| format!("not an EncryptedObject: {}", preview(&bytes)))?;
        let (k, v) = kms_plugin::parse_key_id(&obj.key_id)?;
        ensure!(
            kms_core::blob::peek(&obj.encrypted_dek_source)? == (k, v),
            "{key}: key_id {} does not match its DEK source",
            obj.key_id
        );
        Ok(obj.key_id)
    }

    fn kmskey_json(&self, ns: &str, name: &str) -> Result<serde_json::Value> {
        let out = self
            .cp
            .kubectl(["get", "kmskey", name, "-n", ns, "-o", "json"])?;
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    fn local_record(&self, key: &str) -> Result<serde_json::Value> {
        let path = self.plugin_state.join("keys").join(format!("{key}.json"));
        Ok(serde_json::from_slice(&std::fs::read(&path)?)?)
    }
}

impl Drop for Plane {
    fn drop(&mut self) {
        if let Some(mut op) = self.operator.take() {
            let _ = op.kill();
            let _ = op.wait();
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
        plane.create_secret(&ns, &format!("s{i}"), &value)?;
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
    let crds = repo_root().join("crds");
    plane.cp.kubectl([
        "apply".as_ref(),
        "--server-side".as_ref(),
        "--force-conflicts".as_ref(),
        "-f".as_ref(),
        crds.as_os_str(),
    ])?;
    plane.cp.kubectl([
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/kmskeys.kubekms.io",
        "crd/kmskeymaterials.kubekms.io",
    ])?;
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
    plane.kubectl_stdin(&["apply", "--server-side", "-f", "-"], yaml.as_bytes())?;
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
    let operator_bin = sibling_bin("KUBEKMS_OPERATOR_BIN", "kubekms-operator")?;
    let op_log = std::fs::File::create(plane.cp.log_path("kubekms-operator"))?;
    plane.operator = Some(
        Command::new(&operator_bin)
            .env("KUBECONFIG", &plane.cp.kubeconfig)
            .arg("--root-key")
            .arg(plane.plugin_state.join("root.key"))
            .args([
                "--namespace",
                &ns,
                "--metrics-addr",
                "127.0.0.1:0",
                "--lease-namespace",
                &ns,
                "--identity",
                "e2e-follow",
                "--log-format",
                "text",
            ])
            .stdin(Stdio::null())
            .stdout(op_log.try_clone()?)
            .stderr(op_log)
            .spawn()
            .context("starting kubekms-operator")?,
    );
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

    // Rotate through the operator.
    plane.cp.kubectl([
        "patch",
        "kmskey",
        name,
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"rotation":{"onDemandToken":"handover-1"}}}"#,
    ])?;
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
        plane.create_secret(&ns, &n, &value)?;
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
    ensure!(plane.stored_key_id(&ns, "s0", &secrets["s0"])? == k1);
    plane.check_all_read(&ns, &secrets, "after the rotation")?;
    phase(t0, "new Secrets stored under v2, old ones (v1) still read");

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
    plane.check_all_read(&ns, &secrets, "after the cold start")?;
    let value = format!("after-cold-start-{}", unique_name("pw"));
    plane.create_secret(&ns, "after", &value)?;
    ensure!(plane.stored_key_id(&ns, "after", &value)? == k2);
    secrets.insert("after".into(), value);
    plane.check_all_read(&ns, &secrets, "at the end")?;
    let (healthz, key_id) = plane.status().await?;
    ensure!(
        healthz == "ok" && key_id == k2,
        "at the end: {healthz} {key_id}"
    );
    phase(t0, "API server back: every Secret reads, new ones under v2");
    Ok(())
}
