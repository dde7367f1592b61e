//! End-to-end test of `hack/local-up.sh --node` (KubeKMS run as users deploy it), run as
//! the README says, with `KUBEKMS_LOCAL_STATE` in a temporary folder and the launcher's
//! watchdog on this test process. local-up builds the binaries and the image itself.
//!
//! Checked: it exits 0; the plugin runs as the kubelet's static pod (a mirror pod of
//! `deploy/static-pod/kubekms-plugin.yaml`, in follow mode) and not as a host process; a
//! Secret created now is stored as `k8s:enc:kms:v2:kubekms:` under a key_id of the
//! operator-managed KmsKey `kubekms-system/apiserver-key`; the operator's and the server's
//! Deployments have every replica Ready and an operator pod holds the Lease; the demo's
//! `aws kms encrypt`/`decrypt` printed its plaintext, and its ciphertext decrypts again
//! through the Service's ClusterIP; then `hack/control-plane.sh down` leaves no process,
//! mount, network namespace, bridge, iptables chain or node owner file behind.
//!
//! It needs root and a node (one per host), so it is `#[ignore]`d like e2e/tests/node.rs;
//! hack/test.sh runs it in its root section after the node tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, ensure};
use kubekms_e2e::{
    ControlPlane, KMS_PROVIDER_NAME, check_kms_encrypted, kms_v2_prefix, repo_root,
    secret_etcd_key, unique_name,
};

/// Where local-up records the control plane it started (in `KUBEKMS_LOCAL_STATE`).
const RECORD: &str = "local-up-control-plane";
const NODE_OWNER: &str = "/run/kubekms-node.owner";
const SYSTEM_NS: &str = "kubekms-system";
const DEMO_PLAINTEXT: &str = "hello from kubekms-demo/app";

fn phase(started: Instant, what: &str) {
    eprintln!(
        "[e2e local-up --node] {:>6.1}s {what}",
        started.elapsed().as_secs_f64()
    );
}

/// The temporary folder; on drop, `control-plane.sh down` (if the test did not get to it),
/// then the folder is removed unless the test failed.
struct LocalState {
    base: PathBuf,
    keep: bool,
}

impl LocalState {
    fn control_plane_dir(&self) -> Option<PathBuf> {
        std::fs::canonicalize(self.base.join(RECORD)).ok()
    }
}

impl Drop for LocalState {
    fn drop(&mut self) {
        if let Some(state) = self.control_plane_dir() {
            let _ = down(&state);
        }
        if std::thread::panicking() {
            eprintln!(
                "[e2e local-up --node] state kept in {}",
                self.base.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }
}

fn down(state: &Path) -> Result<Output> {
    Ok(Command::new(repo_root().join("hack/control-plane.sh"))
        .arg("down")
        .arg("--state-dir")
        .arg(state)
        .stdin(Stdio::null())
        .output()?)
}

/// `hack/local-up.sh --node` as the README says, pointed at `base`.
fn local_up_node(base: &Path) -> Result<Output> {
    let started = Instant::now();
    let out = Command::new(repo_root().join("hack/local-up.sh"))
        .arg("--node")
        .arg("--watch-pid")
        .arg(std::process::id().to_string())
        .env("KUBEKMS_LOCAL_STATE", base)
        // What names other binaries, control planes or plugins in this environment
        // (hack/test.sh, a developer's shell) must not reach the script.
        .env_remove("KUBEKMS_PLUGIN_BIN")
        .env_remove("KUBEKMS_OPERATOR_BIN")
        .env_remove("KUBEKMS_SERVER_BIN")
        .env_remove("KUBEKMS_KMS_SOCKET")
        .env_remove("KUBEKMS_PLUGIN_CMD")
        .env_remove("KUBEKMS_STATE_DIR")
        .env_remove("KUBECONFIG")
        .env_remove("KUBEKMS_E2E_STATE")
        .stdin(Stdio::null())
        .output()
        .context("running hack/local-up.sh --node")?;
    eprintln!(
        "[e2e local-up --node] hack/local-up.sh --node took {:.1}s ({})",
        started.elapsed().as_secs_f64(),
        out.status
    );
    ensure!(
        out.status.success(),
        "hack/local-up.sh --node failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

fn json_of(cp: &ControlPlane, args: &[&str]) -> Result<serde_json::Value> {
    let out = cp.kubectl(["get"].iter().chain(args).chain(&["-o", "json"]))?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn str_at<'a>(v: &'a serde_json::Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(|s| s.as_str())
}

fn pod_ready(pod: &serde_json::Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(|c| c.as_array())
        .into_iter()
        .flatten()
        .any(|c| str_at(c, "/type") == Some("Ready") && str_at(c, "/status") == Some("True"))
}

/// The Deployment has every one of its replicas (at least one) Ready, and its pods run
/// on the node; the names of its pods.
fn deployment_ready(cp: &ControlPlane, name: &str) -> Result<Vec<String>> {
    let deploy = json_of(cp, &["deployment", name, "-n", SYSTEM_NS])?;
    let want = deploy.pointer("/spec/replicas").and_then(|v| v.as_u64());
    let ready = deploy
        .pointer("/status/readyReplicas")
        .and_then(|v| v.as_u64());
    ensure!(
        want.is_some_and(|w| w >= 1) && ready == want,
        "deployment {SYSTEM_NS}/{name}: {ready:?} of {want:?} replicas Ready"
    );
    let pods = json_of(
        cp,
        &[
            "pods",
            "-n",
            SYSTEM_NS,
            "-l",
            &format!("app.kubernetes.io/name={name}"),
        ],
    )?;
    let mut names = Vec::new();
    for pod in pods
        .pointer("/items")
        .and_then(|i| i.as_array())
        .into_iter()
        .flatten()
    {
        let pod_name = str_at(pod, "/metadata/name").unwrap_or_default().to_owned();
        if pod_ready(pod) {
            ensure!(
                str_at(pod, "/spec/nodeName") == Some("kubekms-node"),
                "pod {pod_name} runs on {:?}",
                str_at(pod, "/spec/nodeName")
            );
            names.push(pod_name);
        }
    }
    ensure!(
        names.len() as u64 == want.unwrap_or(0),
        "deployment {SYSTEM_NS}/{name}: Ready pods {names:?}"
    );
    Ok(names)
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
    // EncryptedObject's key_id is field 2 (a string); read it without the proto type.
    #[derive(Clone, PartialEq, prost::Message)]
    struct KeyIdOnly {
        #[prost(string, tag = "2")]
        key_id: String,
    }
    let obj = <KeyIdOnly as prost::Message>::decode(body).context("not an EncryptedObject")?;
    Ok(obj.key_id)
}

/// Processes whose command line names `dir`.
fn processes_naming(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let line = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if line.contains(&needle) {
                found.push(format!("{name}: {line}"));
            }
        }
    }
    found
}

fn command_stdout(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
#[ignore = "needs root and starts a node (about 1 min): cargo test -p kubekms-e2e --test local_up_node -- --include-ignored"]
fn local_up_node_runs_kubekms_as_pods_and_down_leaves_nothing() -> Result<()> {
    let mut local = LocalState {
        base: std::env::temp_dir().join(unique_name("kubekms-e2e-local-up-node")),
        keep: false,
    };
    let result = check_local_up_node(&local);
    // The state folder (logs of every process) stays for a post-mortem.
    local.keep = result.is_err();
    result
}

fn check_local_up_node(local: &LocalState) -> Result<()> {
    let t0 = Instant::now();
    std::fs::create_dir_all(&local.base)?;
    // A folder others may not search, like a clone under /root: nothing of local-up may
    // depend on the image's user (65532) reaching the host folders through it.
    std::fs::set_permissions(
        &local.base,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )?;

    let out = local_up_node(&local.base)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let state = local
        .control_plane_dir()
        .ok_or_else(|| anyhow!("local-up recorded no control plane in {RECORD}"))?;
    let cp = ControlPlane::from_state_dir(&state)?;
    phase(t0, "local-up --node exited 0");

    // The plugin: the kubelet's static pod (its mirror pod), following the KmsKey, and no
    // host process of the launcher.
    let plugin = json_of(
        &cp,
        &["pod", "kubekms-plugin-kubekms-node", "-n", "kube-system"],
    )?;
    ensure!(
        plugin
            .pointer("/metadata/annotations/kubernetes.io~1config.mirror")
            .is_some(),
        "kube-system/kubekms-plugin-kubekms-node is not a mirror (static) pod: {}",
        plugin.pointer("/metadata").cloned().unwrap_or_default()
    );
    ensure!(pod_ready(&plugin), "the plugin's static pod is not Ready");
    let command = plugin
        .pointer("/spec/containers/0/command")
        .cloned()
        .unwrap_or_default();
    ensure!(
        command
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a.as_str() == Some("--follow=kubekms-system/apiserver-key")),
        "the plugin's static pod does not follow kubekms-system/apiserver-key: {command}"
    );
    for host_process in ["kms-plugin", "kubekms-operator", "kubekms-server"] {
        let pid_file = state.join("pids").join(format!("{host_process}.pid"));
        ensure!(
            !pid_file.exists(),
            "{host_process} runs as a host process ({})",
            pid_file.display()
        );
    }

    // Secrets: under a key_id of the operator-managed KmsKey.
    let key = json_of(&cp, &["kmskey", "apiserver-key", "-n", SYSTEM_NS])?;
    let key_id = str_at(&key, "/status/keyId")
        .ok_or_else(|| anyhow!("KmsKey apiserver-key has no status.keyId: {key}"))?
        .to_owned();
    let value = unique_name("node-secret");
    cp.create_secret("default", "local-up-node", &value)?;
    let stored = stored_key_id(&cp, "default", "local-up-node", &value)?;
    ensure!(
        stored.starts_with(&format!("{key_id}/v")),
        "the Secret is stored under key_id {stored}, not a version of KmsKey {SYSTEM_NS}/apiserver-key ({key_id})"
    );
    phase(t0, "Secret stored under the KmsKey's key");

    // The operator and the server: their Deployments, every replica Ready.
    let operators = deployment_ready(&cp, "kubekms-operator")?;
    deployment_ready(&cp, "kubekms-server")?;
    let lease = json_of(&cp, &["lease", "kubekms-operator", "-n", SYSTEM_NS])?;
    let holder = str_at(&lease, "/spec/holderIdentity").unwrap_or_default();
    ensure!(
        operators.iter().any(|p| p == holder),
        "the operator Lease is held by {holder:?}, not one of the operator pods {operators:?}"
    );

    // The demo ran, and its ciphertext decrypts again through the Service's ClusterIP.
    ensure!(
        stdout.contains(&format!("it printed: {DEMO_PLAINTEXT}")),
        "local-up did not report the demo's decrypt:\n{stdout}"
    );
    let service = json_of(&cp, &["service", "kubekms-server", "-n", SYSTEM_NS])?;
    let cluster_ip =
        str_at(&service, "/spec/clusterIP").ok_or_else(|| anyhow!("no clusterIP: {service}"))?;
    let server_dir = state.join("kubekms-server");
    let aws_env = std::fs::read_to_string(server_dir.join("aws-env.sh"))?;
    ensure!(
        aws_env.contains(&format!("AWS_ENDPOINT_URL_KMS=https://{cluster_ip}:443\n")),
        "the demo does not go through the Service's ClusterIP {cluster_ip}:\n{aws_env}"
    );
    let aws_dir = command_stdout(
        repo_root()
            .join("hack/tools/python.sh")
            .to_str()
            .unwrap_or_default(),
        &["--print-dir"],
    )?;
    let decrypt = Command::new("bash")
        .arg("-c")
        .arg(
            r#". "$1/aws-env.sh" && HOME="$1/aws-home" "$2/aws" kms decrypt --ciphertext-blob "fileb://$1/demo.bin" --output text --query Plaintext | base64 -d"#,
        )
        .arg("decrypt")
        .arg(&server_dir)
        .arg(aws_dir.trim())
        .stdin(Stdio::null())
        .output()?;
    ensure!(
        decrypt.status.success() && decrypt.stdout == DEMO_PLAINTEXT.as_bytes(),
        "aws kms decrypt of the demo's ciphertext: {} {:?} {}",
        decrypt.status,
        String::from_utf8_lossy(&decrypt.stdout),
        String::from_utf8_lossy(&decrypt.stderr)
    );
    phase(
        t0,
        "operator, server and the AWS CLI through the Service checked",
    );

    // down leaves nothing.
    let out = down(&state)?;
    ensure!(
        out.status.success(),
        "hack/control-plane.sh down failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    phase(t0, "down");
    let left = processes_naming(&state);
    ensure!(left.is_empty(), "processes left after down: {left:#?}");
    ensure!(
        !Path::new(NODE_OWNER).exists(),
        "{NODE_OWNER} is left after down"
    );
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    let state_str = state.to_string_lossy().into_owned();
    ensure!(
        !mounts.contains(&state_str),
        "mounts under {state_str} left after down"
    );
    let kube_chains: Vec<String> = command_stdout("iptables-save", &[])?
        .lines()
        .filter(|l| l.contains("KUBE-"))
        .map(str::to_owned)
        .collect();
    ensure!(
        kube_chains.is_empty(),
        "iptables rules left after down: {kube_chains:#?}"
    );
    let netns = command_stdout("ip", &["netns", "list"])?;
    ensure!(
        !netns.contains("cni-"),
        "pod network namespaces left after down: {netns}"
    );
    let bridge = Command::new("ip")
        .args(["link", "show", "kubekms0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    ensure!(!bridge.success(), "the bridge kubekms0 is left after down");
    phase(t0, "nothing left");
    Ok(())
}
