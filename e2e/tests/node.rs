//! End-to-end tests of the node beside the local control plane (`hack/control-plane.sh up
//! --node`, see docs/node.md): the node registers Ready; a Deployment of the busybox test
//! image becomes Ready and answers through its ClusterIP Service from the host
//! (kube-proxy); deleting the Deployment removes its ReplicaSet and pods (garbage
//! collection) and the namespace goes away (namespace deletion); a pod reads a projected
//! ServiceAccount token of the audience it asked for; the kubekms KMS v2 plugin runs as a
//! static pod of the kubelet (deploy/static-pod/kubekms-plugin.yaml, hostPath state and
//! socket folders), kube-apiserver encrypts Secrets through it, and when its container is
//! killed the kubelet starts it again and Secrets still read (through a restarted
//! kube-apiserver, which holds no cached key).
//!
//! Not in `cargo test --workspace` (hack/test.sh): every test is `#[ignore]`d, because
//! the file needs root and takes about 3.5 minutes. Run it with
//! `cargo test -p kubekms-e2e --test node -- --include-ignored`.
//!
//! Needs root, containerd, runc, the CNI plugins and iptables (hack/install-deps.sh), and
//! the pause, busybox and kubekms images (`KUBEKMS_IMAGES_DIR`, or built by
//! hack/images.sh).

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{RwLock, RwLockReadGuard};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use base64::Engine as _;
use kubekms_e2e::node::{
    BUSYBOX_IMAGE, NODE_READY_TIMEOUT, NodeCluster, http_get, images_dir, wait_until,
};
use kubekms_e2e::process::{init_plugin_state, sibling_bin};
use kubekms_e2e::{
    KMS_PROVIDER_NAME, check_kms_encrypted, repo_root, secret_etcd_key, unique_name,
};

const POD_TIMEOUT: Duration = Duration::from_secs(120);

/// The static-pod test restarts kube-apiserver; the other tests must not run meanwhile.
static APISERVER_RESTARTS: RwLock<()> = RwLock::new(());

fn node() -> (&'static NodeCluster, RwLockReadGuard<'static, ()>) {
    let guard = APISERVER_RESTARTS
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    (
        NodeCluster::shared().expect("a control plane with a node"),
        guard,
    )
}

#[test]
#[ignore = "needs root and starts a node (about 3.5 min): cargo test -p kubekms-e2e --test node -- --include-ignored"]
fn node_registers_ready_with_the_pinned_kubelet() -> Result<()> {
    let (node, _shared) = node();
    // Ready is a heartbeat, not a fact fixed at start: a test before this one may have
    // restarted kube-apiserver, and the kubelet reports Ready again within a Lease period.
    node.wait_node_ready(NODE_READY_TIMEOUT)?;
    let obj = node.get_json(&["node", &node.node_name])?;
    let info = obj
        .pointer("/status/nodeInfo")
        .ok_or_else(|| anyhow!("node has no nodeInfo"))?;
    let kubelet = info.get("kubeletVersion").and_then(|v| v.as_str());
    let expected = node.cp.expected_kube_version()?;
    ensure!(
        kubelet == Some(expected.as_str()),
        "kubelet {kubelet:?}, pinned {expected}"
    );
    let runtime = info
        .get("containerRuntimeVersion")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    ensure!(runtime.starts_with("containerd://"), "runtime {runtime:?}");
    Ok(())
}

#[test]
#[ignore = "needs root and starts a node (about 3.5 min): cargo test -p kubekms-e2e --test node -- --include-ignored"]
fn deployment_answers_through_its_cluster_ip_and_is_collected() -> Result<()> {
    let (node, _shared) = node();
    let ns = node.new_namespace("web")?;
    // A value only this run serves: an answer cannot come from anything else.
    let token = unique_name("served");
    let manifest = format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {ns}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - name: httpd
        image: {BUSYBOX_IMAGE}
        imagePullPolicy: Never
        command: ["/bin/busybox", "sh", "-c", "echo {token} > /www/index.html && exec /bin/busybox httpd -f -p 8080 -h /www"]
        readinessProbe: {{httpGet: {{path: /index.html, port: 8080}}, periodSeconds: 1}}
        volumeMounts: [{{name: www, mountPath: /www}}]
      volumes: [{{name: www, emptyDir: {{}}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {ns}}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
"#
    );
    node.cp
        .kubectl_stdin(&["apply", "-f", "-"], manifest.as_bytes())?;
    node.cp
        .kubectl([
            "rollout",
            "status",
            "deployment/web",
            "-n",
            &ns,
            &format!("--timeout={}s", POD_TIMEOUT.as_secs()),
        ])
        .with_context(|| node.where_to_look("kubelet"))?;

    let svc = node.get_json(&["service", "web", "-n", &ns])?;
    let cluster_ip = svc
        .pointer("/spec/clusterIP")
        .and_then(|v| v.as_str())
        .ok_or_else(|| anyhow!("service web has no clusterIP: {svc}"))?
        .to_owned();
    let addr = format!("{cluster_ip}:80");
    // kube-proxy writes the Service's rules a moment after the endpoints become ready.
    wait_until(
        &format!("{token} from the Service web at {addr}"),
        Duration::from_secs(60),
        || {
            let (status, body) = http_get(&addr, "/index.html")?;
            ensure!(status.contains(" 200 "), "status {status:?}");
            Ok(body.trim() == token)
        },
    )
    .with_context(|| node.where_to_look("kube-proxy"))?;

    // Garbage collection: the ReplicaSet and the pods go with their Deployment.
    node.cp
        .kubectl(["delete", "deployment", "web", "-n", &ns, "--wait=false"])?;
    wait_until(
        "the ReplicaSet and pods of the deleted Deployment to be collected",
        POD_TIMEOUT,
        || {
            let rs = node.get_json(&["replicasets", "-n", &ns, "-l", "app=web"])?;
            let pods = node.get_json(&["pods", "-n", &ns, "-l", "app=web"])?;
            let count = |v: &serde_json::Value| {
                v.get("items")
                    .and_then(|i| i.as_array())
                    .map_or(0, Vec::len)
            };
            Ok(count(&rs) == 0 && count(&pods) == 0)
        },
    )
    .with_context(|| node.where_to_look("kube-controller-manager"))?;

    // Namespace deletion: the namespace controller empties and finalizes it.
    node.cp
        .kubectl(["delete", "namespace", &ns, "--wait=false"])?;
    wait_until(
        &format!("namespace {ns} to be deleted"),
        POD_TIMEOUT,
        || {
            let out = node.cp.kubectl(["get", "namespaces", "-o", "name"])?;
            Ok(!String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l == format!("namespace/{ns}")))
        },
    )
    .with_context(|| node.where_to_look("kube-controller-manager"))?;
    Ok(())
}

#[test]
#[ignore = "needs root and starts a node (about 3.5 min): cargo test -p kubekms-e2e --test node -- --include-ignored"]
fn pod_reads_a_projected_token_of_its_audience() -> Result<()> {
    let (node, _shared) = node();
    let ns = node.new_namespace("token")?;
    let audience = unique_name("kubekms-audience");
    let manifest = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: reader, namespace: {ns}}}
spec:
  restartPolicy: Never
  containers:
  - name: cat
    image: {BUSYBOX_IMAGE}
    imagePullPolicy: Never
    command: ["/bin/busybox", "cat", "/var/run/secrets/kubekms/token"]
    volumeMounts: [{{name: token, mountPath: /var/run/secrets/kubekms, readOnly: true}}]
  volumes:
  - name: token
    projected:
      sources:
      - serviceAccountToken: {{audience: {audience}, expirationSeconds: 600, path: token}}
"#
    );
    node.cp
        .kubectl_stdin(&["apply", "-f", "-"], manifest.as_bytes())?;
    wait_until("pod reader to finish", POD_TIMEOUT, || {
        let pod = node.get_json(&["pod", "reader", "-n", &ns])?;
        match pod.pointer("/status/phase").and_then(|p| p.as_str()) {
            Some("Succeeded") => Ok(true),
            Some("Failed") => Err(anyhow!("pod reader failed: {}", pod["status"])),
            _ => Ok(false),
        }
    })
    .with_context(|| node.where_to_look("kubelet"))?;
    let logs = node.cp.kubectl(["logs", "reader", "-n", &ns])?;
    let jwt = String::from_utf8(logs.stdout)?;
    let payload = jwt
        .trim()
        .split('.')
        .nth(1)
        .ok_or_else(|| anyhow!("the pod printed no JWT: {jwt:?}"))?;
    let claims: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?)?;
    let aud: Vec<&str> = claims
        .get("aud")
        .and_then(|a| a.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    ensure!(aud == [audience.as_str()], "aud {aud:?}, asked {audience}");
    let sub = claims.get("sub").and_then(|s| s.as_str());
    let expected_sub = format!("system:serviceaccount:{ns}:default");
    ensure!(
        sub == Some(expected_sub.as_str()),
        "sub {sub:?}, expected {expected_sub}"
    );
    node.cp
        .kubectl(["delete", "namespace", &ns, "--wait=false"])?;
    Ok(())
}

/// The user the kubekms image runs as (hack/images.sh).
const KUBEKMS_UID: u32 = 65532;

#[test]
#[ignore = "needs root and starts a node (about 3.5 min): cargo test -p kubekms-e2e --test node -- --include-ignored"]
fn kms_plugin_as_a_static_pod_encrypts_secrets_and_comes_back_after_a_kill() -> Result<()> {
    let _exclusive = APISERVER_RESTARTS
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let node = NodeCluster::shared()?;
    let cp = &node.cp;

    // The image of the binaries this test build uses.
    let plugin_bin = sibling_bin("KUBEKMS_PLUGIN_BIN", "kubekms-plugin")?;
    let images = images_dir()?;
    let out = Command::new(repo_root().join("hack/images.sh"))
        .args(["build", "--out"])
        .arg(&images)
        .arg("kubekms")
        .env("KUBEKMS_IMAGES_NO_CARGO", "1")
        .stdin(Stdio::null())
        .output()?;
    ensure!(
        out.status.success(),
        "hack/images.sh build kubekms: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    node.import_images(&[images.join("kubekms.oci.tar")])?;

    // The host folders of the manifest's hostPath volumes, as its header says to make
    // them: the state made by `kubekms-plugin init`, both owned by the image's user.
    let base = cp.state_dir.join("kubekms-static");
    let state = base.join("state");
    let run = base.join("run");
    init_plugin_state(&plugin_bin, &state)?;
    std::fs::create_dir_all(&run)?;
    for dir in [&state, &run] {
        let status = Command::new("chown")
            .args(["-R", &format!("{KUBEKMS_UID}:{KUBEKMS_UID}")])
            .arg(dir)
            .status()?;
        ensure!(status.success(), "chown {}", dir.display());
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let socket = run.join("kms.sock");
    let health_port = free_port()?;
    let manifest = static_pod_manifest(&state, &run, health_port)?;
    std::fs::write(node.manifests.join("kubekms-plugin.yaml"), manifest)?;

    let mirror = format!("kubekms-plugin-{}", node.node_name);
    wait_until(
        &format!("static pod {mirror} Ready and {} served", socket.display()),
        POD_TIMEOUT,
        || {
            let status = plugin_status(node, &mirror)?;
            Ok(status.ready && socket.exists())
        },
    )
    .with_context(|| node.where_to_look("kubelet"))?;

    // kube-apiserver encrypts Secrets through the plugin from now on.
    let config = base.join("encryption-config.yaml");
    std::fs::write(
        &config,
        format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n\
             - resources: [secrets]\n  providers:\n  - kms:\n      apiVersion: v2\n      \
             name: {KMS_PROVIDER_NAME}\n      endpoint: unix://{}\n      timeout: 3s\n  \
             - identity: {{}}\n",
            socket.display()
        ),
    )?;
    node.restart_apiserver(&[format!("--encryption-provider-config={}", config.display())])?;
    let ns = node.new_namespace("static-kms")?;
    let value = unique_name("secret-value");
    cp.create_secret(&ns, "before-kill", &value)?;
    let stored = cp
        .etcd_get(&secret_etcd_key(&ns, "before-kill"))?
        .ok_or_else(|| anyhow!("etcd has no Secret {ns}/before-kill"))?;
    check_kms_encrypted(&stored, KMS_PROVIDER_NAME, &[value.as_bytes()])?;

    // Kill the plugin's container behind the kubelet's back.
    let before = plugin_status(node, &mirror)?;
    let id = before
        .container_id
        .strip_prefix("containerd://")
        .ok_or_else(|| anyhow!("container id {:?}", before.container_id))?
        .to_owned();
    node.ctr(&["tasks", "kill", "--signal", "SIGKILL", &id])?;
    wait_until(
        &format!("the kubelet to start {mirror} again after the kill"),
        POD_TIMEOUT,
        || {
            let now = plugin_status(node, &mirror)?;
            Ok(now.restarts > before.restarts
                && now.ready
                && now.container_id != before.container_id)
        },
    )
    .with_context(|| node.where_to_look("kubelet"))?;

    // A new kube-apiserver holds no key in memory: reading the Secret needs the plugin.
    node.restart_apiserver(&[])?;
    let read = cp.read_secret(&ns, "before-kill")?;
    ensure!(read == value, "{ns}/before-kill reads {read:?}");
    let value2 = unique_name("secret-value");
    cp.create_secret(&ns, "after-kill", &value2)?;
    let stored = cp
        .etcd_get(&secret_etcd_key(&ns, "after-kill"))?
        .ok_or_else(|| anyhow!("etcd has no Secret {ns}/after-kill"))?;
    check_kms_encrypted(&stored, KMS_PROVIDER_NAME, &[value2.as_bytes()])?;
    Ok(())
}

/// deploy/static-pod/kubekms-plugin.yaml with its host folders and health port replaced.
fn static_pod_manifest(state: &Path, run: &Path, health_port: u16) -> Result<String> {
    let path = repo_root().join("deploy/static-pod/kubekms-plugin.yaml");
    let mut text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    for (from, to) in [
        (
            "path: /var/lib/kubekms\n",
            format!("path: {}\n", state.display()),
        ),
        ("path: /run/kubekms\n", format!("path: {}\n", run.display())),
        ("9464", health_port.to_string()),
    ] {
        if !text.contains(from) {
            bail!(
                "{} no longer holds {from:?}; update this test",
                path.display()
            );
        }
        text = text.replace(from, &to);
    }
    Ok(text)
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

struct PluginStatus {
    ready: bool,
    restarts: u64,
    container_id: String,
}

fn plugin_status(node: &NodeCluster, mirror: &str) -> Result<PluginStatus> {
    let pod = node.get_json(&["pod", mirror, "-n", "kube-system"])?;
    let status = pod
        .pointer("/status/containerStatuses/0")
        .ok_or_else(|| anyhow!("{mirror} has no container status yet"))?;
    Ok(PluginStatus {
        ready: status.get("ready").and_then(serde_json::Value::as_bool) == Some(true),
        restarts: status
            .get("restartCount")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0),
        container_id: status
            .get("containerID")
            .and_then(|c| c.as_str())
            .unwrap_or_default()
            .to_owned(),
    })
}
