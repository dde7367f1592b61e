//! End-to-end test of `hack/local-up.sh` without `--node` (the README's no-root way; the
//! first command, `--node`, is e2e/tests/local_up_node.rs), run as a user runs it but
//! isolated: `KUBEKMS_LOCAL_STATE` puts the plugin's keys and the control plane's
//! state folder in a temporary folder (nothing in the clone's `.state`, no control plane
//! of anyone else reused), the already built binaries and Go tools are passed in, and the
//! launcher's watchdog watches this test process.
//!
//! Checked: it exits 0; the demo Secret is stored as a KMS v2 envelope without plaintext,
//! under a key_id of the operator-managed KmsKey `kubekms-system/apiserver-key`; the
//! sample KmsKey is Enabled and its alias and grant Ready; the plugin runs in follow mode
//! and the operator runs with the plugin's root key, as its ServiceAccount; kubekms-server
//! runs, and the `aws kms encrypt` / `decrypt` that local-up runs as the ServiceAccount
//! kubekms-demo/app worked; a second run reuses everything;
//! `hack/control-plane.sh down` leaves no process behind; and in a shell that ran the
//! README's `eval "$(hack/control-plane.sh env)"` before that `down`, local-up starts
//! KubeKMS again (what `env` exports must not steer the scripts to the stopped one).
//!
//! Binaries: `KUBEKMS_PLUGIN_BIN` / `KUBEKMS_OPERATOR_BIN` / `KUBEKMS_SERVER_BIN`, or built
//! here (the three packages in one `cargo build`, as local-up builds them).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use kubekms_e2e::process::{is_zombie, proc_starttime, sibling_bin, tools_bin};
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

/// Where local-up records the control plane it started (in `KUBEKMS_LOCAL_STATE`).
const RECORD: &str = "local-up-control-plane";
/// The processes of the control plane local-up starts.
const PROCESSES: [&str; 6] = [
    "etcd",
    "kms-plugin",
    "kube-apiserver",
    "kubekms-operator",
    "kubekms-server",
    "watchdog",
];

fn phase(started: Instant, what: &str) {
    eprintln!(
        "[e2e local-up] {:>6.1}s {what}",
        started.elapsed().as_secs_f64()
    );
}

/// The temporary folder; on drop, `control-plane.sh down` on the control plane recorded
/// there (the watchdog would do it too when the test process exits), then the folder is
/// removed unless the test failed.
struct LocalState {
    base: PathBuf,
}

impl LocalState {
    fn control_plane_dir(&self) -> Option<PathBuf> {
        std::fs::canonicalize(self.base.join(RECORD)).ok()
    }
}

impl Drop for LocalState {
    fn drop(&mut self) {
        if let Some(state) = self.control_plane_dir() {
            let _ = kubekms_e2e::control_plane_down(&state);
        }
        if std::thread::panicking() {
            eprintln!("[e2e local-up] state kept in {}", self.base.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }
}

/// Runs `hack/local-up.sh` the way the README says, pointed at `base`.
fn local_up(base: &Path, plugin: &Path, operator: &Path, tools: &Path) -> Result<Output> {
    local_up_in_shell(base, plugin, operator, tools, "")
}

/// [`local_up`] in a bash that first evaluates `shell_setup` (e.g. the output of
/// `hack/control-plane.sh env`), as a user's shell would have.
fn local_up_in_shell(
    base: &Path,
    plugin: &Path,
    operator: &Path,
    tools: &Path,
    shell_setup: &str,
) -> Result<Output> {
    let started = Instant::now();
    let out = Command::new("bash")
        .arg("-c")
        .arg(r#"eval "$1"; shift; exec "$@""#)
        .arg("local-up-shell")
        .arg(shell_setup)
        .arg(repo_root().join("hack/local-up.sh"))
        .arg("--watch-pid")
        .arg(std::process::id().to_string())
        .arg("--tools-bin")
        .arg(tools)
        .env("KUBEKMS_LOCAL_STATE", base)
        .env("KUBEKMS_PLUGIN_BIN", plugin)
        .env("KUBEKMS_OPERATOR_BIN", operator)
        .env(
            "KUBEKMS_SERVER_BIN",
            sibling_bin("KUBEKMS_SERVER_BIN", "kubekms-server")?,
        )
        // Whatever names another control plane or plugin in this environment (hack/test.sh,
        // a developer's shell) must not reach the script.
        .env_remove("KUBEKMS_KMS_SOCKET")
        .env_remove("KUBEKMS_PLUGIN_CMD")
        .env_remove("KUBEKMS_STATE_DIR")
        .env_remove("KUBECONFIG")
        .env_remove("KUBEKMS_E2E_STATE")
        .stdin(Stdio::null())
        .output()
        .context("running hack/local-up.sh")?;
    eprintln!(
        "[e2e local-up] hack/local-up.sh took {:.1}s ({})",
        started.elapsed().as_secs_f64(),
        out.status
    );
    ensure!(
        out.status.success(),
        "hack/local-up.sh failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

fn json_of(cp: &ControlPlane, args: &[&str]) -> Result<serde_json::Value> {
    let out = cp.kubectl(args.iter().chain(&["-o", "json"]))?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn str_at<'a>(v: &'a serde_json::Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(|s| s.as_str())
}

fn ready(v: &serde_json::Value) -> bool {
    v.pointer("/status/conditions")
        .and_then(|c| c.as_array())
        .into_iter()
        .flatten()
        .any(|c| str_at(c, "/type") == Some("Ready") && str_at(c, "/status") == Some("True"))
}

/// (pid, start time) of each process of the control plane, from its pid files.
fn running_processes(cp: &ControlPlane) -> Result<Vec<(&'static str, i32, String)>> {
    let mut found = Vec::new();
    for name in PROCESSES {
        let pid = cp.pid_of(name)?;
        let start = proc_starttime(pid).ok_or_else(|| anyhow!("{name} (pid {pid}) is gone"))?;
        ensure!(!is_zombie(pid), "{name} (pid {pid}) has exited");
        found.push((name, pid, start));
    }
    Ok(found)
}

/// The key_id of the Secret as etcd stores it, checking the envelope and the plaintext.
fn stored_key_id(cp: &ControlPlane, ns: &str, name: &str, plaintext: &str) -> Result<String> {
    let key = secret_etcd_key(ns, name);
    let bytes = cp
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

#[test]
fn local_up_runs_kubekms_with_an_operator_managed_key() -> Result<()> {
    let t0 = Instant::now();
    let tools = tools_bin()?;
    let plugin = sibling_bin("KUBEKMS_PLUGIN_BIN", "kubekms-plugin")?;
    let operator = sibling_bin("KUBEKMS_OPERATOR_BIN", "kubekms-operator")?;
    let local = LocalState {
        base: std::env::temp_dir().join(unique_name("kubekms-e2e-local-up")),
    };
    std::fs::create_dir_all(&local.base)?;
    let repo_pointer = repo_root().join(".state/control-plane");
    let repo_pointer_before = std::fs::read_link(&repo_pointer).ok();

    let out = local_up(&local.base, &plugin, &operator, &tools)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let state = local
        .control_plane_dir()
        .ok_or_else(|| anyhow!("local-up recorded no control plane in {RECORD}"))?;
    ensure!(
        state.starts_with(std::fs::canonicalize(&local.base)?),
        "the control plane's state folder {} is not inside KUBEKMS_LOCAL_STATE",
        state.display()
    );
    ensure!(
        std::fs::read_link(&repo_pointer).ok() == repo_pointer_before,
        "local-up with KUBEKMS_LOCAL_STATE changed {}",
        repo_pointer.display()
    );
    ensure!(
        stdout.contains("KubeKMS is up") && stdout.contains("hack/control-plane.sh down"),
        "local-up printed no summary:\n{stdout}"
    );
    let cp = ControlPlane::from_state_dir(&state)?;
    phase(t0, "local-up exited 0 (cold start)");

    // Every process runs: the plugin in follow mode, the operator on the plugin's root key.
    let before = running_processes(&cp)?;
    let plugin_argv = cp.argv_of("kms-plugin")?;
    ensure!(
        plugin_argv
            .windows(2)
            .any(|w| w[0] == "--follow" && w[1] == "kubekms-system/apiserver-key"),
        "the plugin does not follow kubekms-system/apiserver-key: {plugin_argv:?}"
    );
    let operator_argv = cp.argv_of("kubekms-operator")?;
    let root_key = local.base.join("kubekms-plugin/root.key");
    ensure!(
        operator_argv
            .windows(2)
            .any(|w| w[0] == "--root-key" && Path::new(&w[1]) == root_key),
        "the operator does not use the plugin's root key {}: {operator_argv:?}",
        root_key.display()
    );

    let environ = std::fs::read(format!("/proc/{}/environ", cp.pid_of("kubekms-operator")?))?;
    ensure!(
        environ
            .split(|b| *b == 0)
            .any(|var| var.starts_with(b"KUBECONFIG=")
                && var.ends_with(b"kubekms-operator.kubeconfig")),
        "the operator does not run with its ServiceAccount's kubeconfig"
    );
    let server_argv = cp.argv_of("kubekms-server")?;
    ensure!(
        server_argv
            .windows(2)
            .any(|w| w[0] == "--root-key" && Path::new(&w[1]) == root_key)
            && server_argv.iter().any(|a| a == "--tls-cert"),
        "kubekms-server does not serve TLS with the plugin's root key: {server_argv:?}"
    );
    ensure!(
        stdout.contains("it printed: hello from kubekms-demo/app"),
        "the aws kms encrypt/decrypt of local-up did not round-trip:\n{stdout}"
    );
    let audit = std::fs::read_to_string(state.join("kubekms-server/audit.log"))?;
    ensure!(
        audit.contains("\"eventName\":\"AssumeRoleWithWebIdentity\"")
            && audit.contains("\"eventName\":\"Decrypt\"")
            && audit.contains("system:serviceaccount:kubekms-demo:app"),
        "the demo's calls are not in the audit log: {audit}"
    );

    // The key kube-apiserver encrypts with is the operator's KmsKey.
    let key = json_of(
        &cp,
        &["get", "kmskey", "apiserver-key", "-n", "kubekms-system"],
    )?;
    ensure!(
        str_at(&key, "/status/keyState") == Some("Enabled") && ready(&key),
        "KmsKey kubekms-system/apiserver-key is not Enabled: {key}"
    );
    let key_id = str_at(&key, "/status/keyId")
        .ok_or_else(|| anyhow!("apiserver-key has no status.keyId: {key}"))?;
    let stored = stored_key_id(&cp, "default", "kubekms-demo", "s3cr3t")?;
    ensure!(
        stored.starts_with(&format!("{key_id}/v")),
        "the demo Secret is stored under {stored}, not under the KmsKey's id {key_id}"
    );
    ensure!(
        stdout.contains(&stored),
        "local-up did not print the key_id {stored}:\n{stdout}"
    );
    // The plugin follows that KmsKey: its record of the key now comes from Kubernetes.
    let record = local
        .base
        .join("kubekms-plugin/keys")
        .join(format!("{key_id}.json"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(&record)?)?;
        if str_at(&rec, "/source") == Some("kubernetes") {
            ensure!(
                str_at(&rec, "/kubernetes_object") == Some("kubekms-system/apiserver-key"),
                "the plugin's record names {:?}",
                rec.get("kubernetes_object")
            );
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the plugin did not adopt KmsKey kubekms-system/apiserver-key: {rec}; log {}",
            cp.log_path("kms-plugin").display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    phase(
        t0,
        &format!(
            "demo Secret stored under {stored}, a version of KmsKey apiserver-key, which the plugin follows"
        ),
    );

    // The samples.
    let app_key = json_of(&cp, &["get", "kmskey", "app-key", "-n", "kubekms-demo"])?;
    ensure!(
        str_at(&app_key, "/status/keyState") == Some("Enabled"),
        "KmsKey kubekms-demo/app-key: {app_key}"
    );
    ensure!(
        app_key.pointer("/spec/rotation/automatic") == Some(&serde_json::Value::Bool(true))
            && str_at(&app_key, "/status/nextRotationTime").is_some(),
        "app-key has no automatic rotation scheduled: {app_key}"
    );
    let alias = json_of(&cp, &["get", "kmsalias", "app", "-n", "kubekms-demo"])?;
    ensure!(
        ready(&alias) && str_at(&alias, "/status/targetKeyId") == str_at(&app_key, "/status/keyId"),
        "KmsAlias kubekms-demo/app: {alias}"
    );
    let grant = json_of(&cp, &["get", "kmsgrant", "app", "-n", "kubekms-demo"])?;
    ensure!(
        ready(&grant) && str_at(&grant, "/status/grantId").is_some(),
        "KmsGrant kubekms-demo/app: {grant}"
    );
    phase(t0, "app-key Enabled, alias/app and the grant Ready");

    // A second run while it runs reuses all of it.
    let again = local_up(&local.base, &plugin, &operator, &tools)?;
    ensure!(
        String::from_utf8_lossy(&again.stderr).contains("reusing it"),
        "the second run did not reuse the control plane:\n{}",
        String::from_utf8_lossy(&again.stderr)
    );
    ensure!(
        local.control_plane_dir().as_deref() == Some(state.as_path()),
        "the second run recorded another control plane"
    );
    let after = running_processes(&cp)?;
    ensure!(
        before == after,
        "the second run restarted processes: {before:?} -> {after:?}"
    );
    ensure!(
        stored_key_id(&cp, "default", "kubekms-demo", "s3cr3t")? == stored,
        "the demo Secret changed key_id on the second run"
    );
    phase(t0, "second run reused the control plane, nothing restarted");

    // What the README's `eval "$(hack/control-plane.sh env)"` puts in a user's shell: only
    // what the user needs, none of the settings the scripts read.
    let env = Command::new(repo_root().join("hack/control-plane.sh"))
        .arg("env")
        .arg("--state-dir")
        .arg(&state)
        .stdin(Stdio::null())
        .output()?;
    ensure!(
        env.status.success(),
        "control-plane.sh env: {}",
        String::from_utf8_lossy(&env.stderr)
    );
    let shell_env = String::from_utf8(env.stdout)?;
    let exported: Vec<&str> = shell_env
        .lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('=').map(|(k, _)| k))
        .collect();
    ensure!(
        exported == ["KUBECONFIG", "ETCDCTL_ENDPOINTS", "PATH"],
        "control-plane.sh env exports {exported:?}:\n{shell_env}"
    );

    // `down` stops every process, the operator included.
    kubekms_e2e::control_plane_down(&state)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<_> = after
            .iter()
            .filter(|(_, pid, start)| {
                proc_starttime(*pid).as_ref() == Some(start) && !is_zombie(*pid)
            })
            .collect();
        if left.is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "still running after down: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    phase(t0, "hack/control-plane.sh down: no process left");

    // The same shell runs local-up again after that `down`: a cold start of a new control
    // plane, whatever the shell still says about the stopped one (its etcd endpoint and
    // kubeconfig).
    let restarted = local_up_in_shell(&local.base, &plugin, &operator, &tools, &shell_env)?;
    ensure!(
        String::from_utf8_lossy(&restarted.stdout).contains("KubeKMS is up"),
        "local-up after down printed no summary:\n{}",
        String::from_utf8_lossy(&restarted.stdout)
    );
    let new_state = local
        .control_plane_dir()
        .ok_or_else(|| anyhow!("local-up recorded no control plane in {RECORD}"))?;
    ensure!(
        new_state != state,
        "local-up after down reused the stopped control plane {}",
        state.display()
    );
    let cp = ControlPlane::from_state_dir(&new_state)?;
    let restored = stored_key_id(&cp, "default", "kubekms-demo", "s3cr3t")?;
    ensure!(
        restored.starts_with(&format!("{key_id}/v")),
        "after the restart the demo Secret is stored under {restored}, not under {key_id}"
    );
    phase(
        t0,
        "local-up in the shell that evaluated `control-plane.sh env` before `down`: up again",
    );
    Ok(())
}
