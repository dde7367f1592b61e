//! End-to-end tests of the kubekms KMS v2 plugin behind a real kube-apiserver and etcd.
//!
//! Each test starts a control plane of its own with `hack/control-plane.sh up
//! --kms-socket ... --plugin-cmd "kubekms-plugin serve ..."` on a state folder made by
//! `kubekms-plugin init`, because the tests restart kube-apiserver and the plugin. They
//! restart a process the way an operator would: SIGTERM to its process group, then the
//! same command line again, recorded in the launcher's pid file so `down` and the
//! watchdog still stop it.
//!
//! The plugin binary: `KUBEKMS_PLUGIN_BIN`, or `kubekms-plugin` next to the test
//! binary's folder (built by `cargo test --workspace` or `cargo build -p kubekms-plugin`).

mod envelope;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use base64::Engine as _;
use envelope::{EncryptedObject, parse_stored};
use kms_plugin::client::connect;
use kms_plugin::pb::{DecryptRequest, EncryptRequest, StatusRequest};
use kubekms_e2e::process::{init_plugin_state, sh_quote, sibling_bin};
use kubekms_e2e::{ControlPlane, KMS_PROVIDER_NAME, kms_v2_prefix, secret_etcd_key, unique_name};

/// A private control plane whose Secrets are encrypted by the kubekms plugin.
struct PluginPlane {
    cp: ControlPlane,
    bin: PathBuf,
    plugin_state: PathBuf,
    socket: PathBuf,
    base: PathBuf,
}

impl PluginPlane {
    fn start(name: &str) -> Result<Self> {
        let bin = sibling_bin("KUBEKMS_PLUGIN_BIN", "kubekms-plugin")?;
        let base = std::env::temp_dir().join(unique_name(&format!("kubekms-e2e-{name}")));
        std::fs::create_dir_all(&base)?;
        let plugin_state = base.join("plugin-state");
        let socket = base.join("kms.sock");
        let cp_state = base.join("cp");
        init_plugin_state(&bin, &plugin_state)?;
        let plugin_cmd = format!(
            "exec {} serve --state-dir {} --socket {} --reload-interval-ms 1000",
            sh_quote(&bin),
            sh_quote(&plugin_state),
            sh_quote(&socket)
        );
        let started = Instant::now();
        let cp = ControlPlane::start_with_plugin(&cp_state, &socket, &plugin_cmd)?;
        eprintln!(
            "[e2e {name}] control plane with the kubekms plugin up in {:?} ({})",
            started.elapsed(),
            cp_state.display()
        );
        Ok(Self {
            cp,
            bin,
            plugin_state,
            socket,
            base,
        })
    }

    async fn wait_plugin_healthy(&self, socket: &Path) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut c) = connect(socket).await
                && let Ok(st) = c.status(StatusRequest {}).await
                && st.get_ref().healthz == "ok"
            {
                return Ok(st.into_inner().key_id);
            }
            ensure!(
                Instant::now() < deadline,
                "plugin on {} not healthy after 60s; log {}",
                socket.display(),
                self.cp.log_path("kms-plugin").display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn restart_apiserver(&self) -> Result<()> {
        let argv = self.cp.argv_of("kube-apiserver")?;
        self.cp.stop_process("kube-apiserver")?;
        self.cp.start_process("kube-apiserver", &argv)?;
        self.cp.wait_apiserver_ready()
    }

    async fn restart_plugin(&self) -> Result<()> {
        let argv = self.cp.argv_of("kms-plugin")?;
        self.cp.stop_process("kms-plugin")?;
        self.cp.start_process("kms-plugin", &argv)?;
        self.wait_plugin_healthy(&self.socket).await.map(|_| ())
    }

    async fn status_key_id(&self, socket: &Path) -> Result<String> {
        let mut c = connect(socket).await?;
        let st = c.status(StatusRequest {}).await?.into_inner();
        ensure!(st.healthz == "ok", "plugin unhealthy: {}", st.healthz);
        Ok(st.key_id)
    }

    fn plugin(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.bin)
            .args(args)
            .arg("--state-dir")
            .arg(&self.plugin_state)
            .stdin(Stdio::null())
            .output()?;
        ensure!(
            out.status.success(),
            "kubekms-plugin {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The stored envelope of one Secret, checked: prefix, no plaintext, and the DEK
    /// source is a KubeKMS blob of the key and version the key_id names.
    fn stored(&self, key: &str, plaintext: &str) -> Result<EncryptedObject> {
        let bytes = self
            .cp
            .etcd_get(key)?
            .ok_or_else(|| anyhow!("etcd has no {key}"))?;
        parse_stored(&bytes, &[plaintext.as_bytes()]).with_context(|| format!("etcd key {key}"))
    }

    /// key_id of every Secret stored in etcd.
    fn all_stored_key_ids(&self) -> Result<BTreeMap<String, String>> {
        let out = self
            .cp
            .etcdctl(["get", "/registry/secrets/", "--prefix", "-w", "json"])?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let mut ids = BTreeMap::new();
        for kv in v
            .get("kvs")
            .and_then(|k| k.as_array())
            .into_iter()
            .flatten()
        {
            let dec = |f: &str| -> Result<Vec<u8>> {
                Ok(base64::engine::general_purpose::STANDARD
                    .decode(kv.get(f).and_then(|x| x.as_str()).unwrap_or_default())?)
            };
            let key = String::from_utf8_lossy(&dec("key")?).into_owned();
            let obj =
                parse_stored(&dec("value")?, &[]).with_context(|| format!("etcd key {key}"))?;
            ids.insert(key, obj.key_id);
        }
        Ok(ids)
    }
}

impl Drop for PluginPlane {
    fn drop(&mut self) {
        let _ = kubekms_e2e::control_plane_down(&self.cp.state_dir);
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }
}

fn phase(name: &str, started: Instant, what: &str) {
    eprintln!(
        "[e2e {name}] {:>6.1}s {what}",
        started.elapsed().as_secs_f64()
    );
}

/// Secrets encrypted by the plugin survive restarts of kube-apiserver, of the plugin, and
/// of both (plugin first, API server down); a rotation becomes the new key_id without a
/// restart, new Secrets use it, old ones still read, and a no-op replace of every Secret
/// moves them all to the new key_id.
#[tokio::test(flavor = "multi_thread")]
async fn plugin_encrypts_secrets_across_restarts_and_rotation() -> Result<()> {
    let t0 = Instant::now();
    let name = "rotation";
    let plane = PluginPlane::start(name)?;
    let k1 = plane.status_key_id(&plane.socket).await?;
    ensure!(k1.ends_with("/v1"), "first key_id {k1}");

    let ns = unique_name("e2e-plugin");
    plane.cp.kubectl(["create", "namespace", &ns])?;
    let mut secrets = BTreeMap::new();
    for i in 0..3 {
        let value = format!("before-rotation-{i}-{}", unique_name("pw"));
        plane.cp.create_secret(&ns, &format!("s{i}"), &value)?;
        secrets.insert(format!("s{i}"), value);
    }
    for (n, value) in &secrets {
        let obj = plane.stored(&secret_etcd_key(&ns, n), value)?;
        ensure!(
            obj.key_id == k1,
            "{n} stored under {} while Status says {k1}",
            obj.key_id
        );
        ensure!(obj.encrypted_dek_source.len() <= 1024);
    }
    plane.cp.check_all_read(&ns, &secrets, "after create")?;
    phase(
        name,
        t0,
        "3 Secrets stored as k8s:enc:kms:v2:kubekms: under the Status key_id",
    );

    plane.restart_apiserver()?;
    plane
        .cp
        .check_all_read(&ns, &secrets, "after a kube-apiserver restart")?;
    phase(name, t0, "kube-apiserver restarted: every Secret reads");

    plane.restart_plugin().await?;
    plane
        .cp
        .check_all_read(&ns, &secrets, "after a plugin restart")?;
    let value = format!("after-plugin-restart-{}", unique_name("pw"));
    plane.cp.create_secret(&ns, "s3", &value)?;
    secrets.insert("s3".into(), value);
    plane
        .cp
        .check_all_read(&ns, &secrets, "after a plugin restart")?;
    phase(
        name,
        t0,
        "plugin restarted: every Secret reads, new ones are written",
    );

    // Both: API server down, then the plugin restarts (cold start from the state folder
    // with no API server), then the API server starts and decrypts every DEK anew.
    let apiserver = plane.cp.argv_of("kube-apiserver")?;
    let plugin = plane.cp.argv_of("kms-plugin")?;
    plane.cp.stop_process("kube-apiserver")?;
    plane.cp.stop_process("kms-plugin")?;
    plane.cp.start_process("kms-plugin", &plugin)?;
    ensure!(plane.wait_plugin_healthy(&plane.socket).await? == k1);
    plane.cp.start_process("kube-apiserver", &apiserver)?;
    plane.cp.wait_apiserver_ready()?;
    plane
        .cp
        .check_all_read(&ns, &secrets, "after restarting both")?;
    phase(
        name,
        t0,
        "both restarted (plugin first, API server down): every Secret reads",
    );

    // Rotate in the state folder while everything runs.
    let out = plane.plugin(&["rotate"])?;
    ensure!(out.contains("version 2 is current"), "rotate said: {out}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let k2 = loop {
        let k = plane.status_key_id(&plane.socket).await?;
        if k != k1 {
            break k;
        }
        ensure!(
            Instant::now() < deadline,
            "Status key_id still {k1} 30s after rotate"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    ensure!(k2.ends_with("/v2"), "rotated key_id {k2}");
    phase(name, t0, &format!("rotated: Status key_id {k1} -> {k2}"));

    // kube-apiserver polls Status every minute, then re-seeds its DEK: write probes until
    // one is stored under the new key_id.
    let deadline = Instant::now() + Duration::from_secs(200);
    let mut probe = 0;
    loop {
        let n = format!("probe{probe}");
        let value = format!("probe-{probe}-{}", unique_name("pw"));
        plane.cp.create_secret(&ns, &n, &value)?;
        let obj = plane.stored(&secret_etcd_key(&ns, &n), &value)?;
        secrets.insert(n, value);
        if obj.key_id == k2 {
            break;
        }
        ensure!(
            obj.key_id == k1,
            "probe stored under unexpected key_id {}",
            obj.key_id
        );
        ensure!(
            Instant::now() < deadline,
            "kube-apiserver still writes under {k1} 200s after the rotation; {}",
            plane.cp.where_to_look()
        );
        probe += 1;
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    phase(
        name,
        t0,
        "kube-apiserver writes new Secrets under the new key_id",
    );
    let value = format!("after-rotation-{}", unique_name("pw"));
    plane.cp.create_secret(&ns, "after", &value)?;
    ensure!(plane.stored(&secret_etcd_key(&ns, "after"), &value)?.key_id == k2);
    secrets.insert("after".into(), value);
    ensure!(
        plane
            .stored(&secret_etcd_key(&ns, "s0"), &secrets["s0"])?
            .key_id
            == k1,
        "an old Secret changed key_id without being rewritten"
    );
    plane
        .cp
        .check_all_read(&ns, &secrets, "after the rotation")?;
    phase(name, t0, "old Secrets (under v1) still read");

    // Rewrite every Secret: kubectl get secrets -A -o json | kubectl replace -f -
    let kubectl = plane.cp.tool("kubectl");
    let out = Command::new("bash")
        .arg("-c")
        .arg(r#""$1" get secrets -A -o json | "$1" replace -f -"#)
        .arg("replace-all")
        .arg(&kubectl)
        .env("KUBECONFIG", &plane.cp.kubeconfig)
        .stdin(Stdio::null())
        .output()?;
    ensure!(
        out.status.success(),
        "get | replace failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids = plane.all_stored_key_ids()?;
    ensure!(
        ids.len() >= secrets.len(),
        "only {} Secrets in etcd",
        ids.len()
    );
    let stale: Vec<_> = ids.iter().filter(|(_, k)| **k != k2).collect();
    ensure!(
        stale.is_empty(),
        "after replace, still under an old key_id: {stale:?}"
    );
    plane
        .cp
        .check_all_read(&ns, &secrets, "after replacing every Secret")?;
    phase(
        name,
        t0,
        &format!(
            "after get|replace all {} stored Secrets carry {k2}",
            ids.len()
        ),
    );

    let versions = plane.plugin(&["versions"])?;
    ensure!(versions.contains("ON_DEMAND"), "versions: {versions}");
    Ok(())
}

/// Two plugin processes on one state folder (two control-plane nodes) report the same
/// key_id, decrypt each other's ciphertexts, and kube-apiserver, restarted onto one and
/// then the other, reads every Secret either wrote.
#[tokio::test(flavor = "multi_thread")]
async fn two_plugin_instances_on_one_state_folder_agree() -> Result<()> {
    let t0 = Instant::now();
    let name = "ha";
    let plane = PluginPlane::start(name)?;
    let second_socket = plane.base.join("second.sock");
    let mut second = Command::new(&plane.bin)
        .args(["serve", "--state-dir"])
        .arg(&plane.plugin_state)
        .arg("--socket")
        .arg(&second_socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(plane.base.join("second-plugin.log"))?)
        .spawn()?;
    let result = async {
        let k_second = plane.wait_plugin_healthy(&second_socket).await?;
        let k_first = plane.status_key_id(&plane.socket).await?;
        ensure!(
            k_first == k_second,
            "instances disagree: {k_first} vs {k_second}"
        );

        let a = connect(&plane.socket).await?;
        let b = connect(&second_socket).await?;
        for (mut from, mut to, label) in [
            (a.clone(), b.clone(), "first->second"),
            (b.clone(), a.clone(), "second->first"),
        ] {
            let seed = kms_core::ops::generate_random(32)?;
            let enc = from
                .encrypt(EncryptRequest {
                    plaintext: seed.expose().to_vec(),
                    uid: label.into(),
                })
                .await?
                .into_inner();
            ensure!(
                enc.key_id == k_first,
                "{label}: Encrypt key_id {}",
                enc.key_id
            );
            let back = to
                .decrypt(DecryptRequest {
                    ciphertext: enc.ciphertext,
                    uid: label.into(),
                    key_id: enc.key_id,
                    annotations: enc.annotations,
                })
                .await?
                .into_inner();
            ensure!(back.plaintext == seed.expose(), "{label}: wrong plaintext");
        }
        phase(
            name,
            t0,
            "two instances agree on key_id and decrypt each other's ciphertexts",
        );

        let ns = unique_name("e2e-ha");
        plane.cp.kubectl(["create", "namespace", &ns])?;
        let mut secrets = BTreeMap::new();
        for i in 0..3 {
            let value = format!("written-via-first-{i}-{}", unique_name("pw"));
            plane.cp.create_secret(&ns, &format!("a{i}"), &value)?;
            secrets.insert(format!("a{i}"), value);
        }

        // Node failover: the first instance goes away; the second node's plugin (its
        // own process on the same folder) takes the socket; the API server restarts.
        let apiserver = plane.cp.argv_of("kube-apiserver")?;
        plane.cp.stop_process("kms-plugin")?;
        plane.cp.stop_process("kube-apiserver")?;
        let other: Vec<String> = [
            plane.bin.display().to_string(),
            "serve".into(),
            "--state-dir".into(),
            plane.plugin_state.display().to_string(),
            "--socket".into(),
            plane.socket.display().to_string(),
            "--reload-interval-ms".into(),
            "3000".into(),
            "--log-format".into(),
            "json".into(),
        ]
        .into();
        plane.cp.start_process("kms-plugin", &other)?;
        ensure!(plane.wait_plugin_healthy(&plane.socket).await? == k_first);
        plane.cp.start_process("kube-apiserver", &apiserver)?;
        plane.cp.wait_apiserver_ready()?;
        plane.cp.check_all_read(
            &ns,
            &secrets,
            "API server restarted onto the other instance",
        )?;
        for i in 0..2 {
            let value = format!("written-via-other-{i}-{}", unique_name("pw"));
            plane.cp.create_secret(&ns, &format!("b{i}"), &value)?;
            let obj = plane.stored(&secret_etcd_key(&ns, &format!("b{i}")), &value)?;
            ensure!(obj.key_id == k_first, "stored under {}", obj.key_id);
            secrets.insert(format!("b{i}"), value);
        }
        phase(
            name,
            t0,
            "API server restart #1 onto the other instance: every Secret reads",
        );

        // And back: the other instance stops, the original command line serves again.
        let original = vec![
            plane.bin.display().to_string(),
            "serve".into(),
            "--state-dir".into(),
            plane.plugin_state.display().to_string(),
            "--socket".into(),
            plane.socket.display().to_string(),
        ];
        plane.cp.stop_process("kms-plugin")?;
        plane.cp.stop_process("kube-apiserver")?;
        plane.cp.start_process("kms-plugin", &original)?;
        ensure!(plane.wait_plugin_healthy(&plane.socket).await? == k_first);
        plane.cp.start_process("kube-apiserver", &apiserver)?;
        plane.cp.wait_apiserver_ready()?;
        plane
            .cp
            .check_all_read(&ns, &secrets, "API server restarted back onto the first")?;
        ensure!(
            plane.status_key_id(&second_socket).await? == k_first,
            "the concurrent second instance drifted"
        );
        phase(
            name,
            t0,
            "API server restart #2 back: every Secret either wrote reads",
        );
        Ok(())
    }
    .await;
    let _ = second.kill();
    let _ = second.wait();
    if result.is_err() {
        eprintln!(
            "[e2e {name}] logs: {}",
            plane.cp.state_dir.join("logs").display()
        );
    }
    result
}

#[test]
fn stored_value_parser_rejects_what_is_not_a_kubekms_envelope() -> Result<()> {
    assert!(parse_stored(b"k8s\0plain", &[]).is_err());
    let prefix = kms_v2_prefix(KMS_PROVIDER_NAME);
    let mut junk = prefix.clone().into_bytes();
    junk.extend_from_slice(b"\x12\x05abc/v1");
    assert!(parse_stored(&junk, &[]).is_err(), "bad key_id accepted");
    if parse_stored(b"", &[]).is_ok() {
        bail!("empty accepted");
    }
    Ok(())
}
