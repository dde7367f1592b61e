//! End-to-end tests of the node beside the local control plane (`hack/control-plane.sh up
//! --node`, see docs/node.md): the node registers Ready; a Deployment of the busybox test
//! image becomes Ready and answers through its ClusterIP Service from the host
//! (kube-proxy); deleting the Deployment removes its ReplicaSet and pods (garbage
//! collection) and the namespace goes away (namespace deletion); a pod reads a projected
//! ServiceAccount token of the audience it asked for; the kubekms KMS v2 plugin runs as a
//! static pod of the kubelet (deploy/static-pod/kubekms-plugin.yaml, hostPath state and
//! socket folders), kube-apiserver encrypts Secrets through it, and when its container is
//! killed the kubelet starts it again and Secrets still read (through a restarted
//! kube-apiserver, which holds no cached key); the operator and kubekms-server run as the
//! Deployments of deploy/ (kube-apiserver reached through the `kubernetes` Service): the
//! operator leads and reconciles a KmsKey, the AWS CLI calls the server through its
//! ClusterIP from the host, and after its containers are killed the kubelet restarts them
//! and an earlier ciphertext still decrypts.
//!
//! Not in `cargo test --workspace` (hack/test.sh): every test is `#[ignore]`d, because
//! the file needs root and takes about 4 minutes. Run it with
//! `cargo test -p kubekms-e2e --test node -- --include-ignored`.
//!
//! Needs root, containerd, runc, the CNI plugins and iptables (hack/install-deps.sh), and
//! the pause, busybox and kubekms images (`KUBEKMS_IMAGES_DIR`, or built by
//! hack/images.sh).

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{OnceLock, RwLock, RwLockReadGuard};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use base64::Engine as _;
use kubekms_e2e::kms_server::{Identity, aws_env, run_aws_cli};
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

    let plugin_bin = sibling_bin("KUBEKMS_PLUGIN_BIN", "kubekms-plugin")?;
    import_kubekms_image(node)?;

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

static KUBEKMS_IMAGE: OnceLock<std::result::Result<(), String>> = OnceLock::new();

/// Builds the kubekms image of the binaries this test build uses (hack/images.sh, no cargo
/// run) and imports it into the node's containerd, once per test process.
fn import_kubekms_image(node: &NodeCluster) -> Result<()> {
    KUBEKMS_IMAGE
        .get_or_init(|| {
            let build = || -> Result<()> {
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
                node.import_images(&[images.join("kubekms.oci.tar")])
            };
            build().map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(|e| anyhow!("the kubekms image: {e}"))
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

/// A container's state as the kubelet reports it.
struct PluginStatus {
    ready: bool,
    restarts: u64,
    container_id: String,
}

fn plugin_status(node: &NodeCluster, mirror: &str) -> Result<PluginStatus> {
    container_status(node, "kube-system", mirror)
}

/// The status of the first container of a pod.
fn container_status(node: &NodeCluster, namespace: &str, pod: &str) -> Result<PluginStatus> {
    let obj = node.get_json(&["pod", pod, "-n", namespace])?;
    let status = obj
        .pointer("/status/containerStatuses/0")
        .ok_or_else(|| anyhow!("{namespace}/{pod} has no container status yet"))?;
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

/// Where deploy/ puts the operator and the server, and their Lease.
const SYSTEM_NAMESPACE: &str = "kubekms-system";
/// The region of a server and an operator started without `--region` (deploy/).
const DEFAULT_REGION: &str = "local";

#[test]
#[ignore = "needs root and starts a node (about 3.5 min): cargo test -p kubekms-e2e --test node -- --include-ignored"]
fn operator_and_server_run_as_pods_from_the_deploy_manifests() -> Result<()> {
    let (node, _shared) = node();
    let cp = &node.cp;
    let plugin_bin = sibling_bin("KUBEKMS_PLUGIN_BIN", "kubekms-plugin")?;
    import_kubekms_image(node)?;

    // The root key, made as docs/images.md says (`kubekms-plugin init`), owned by the
    // image's user; the manifests read it from the host (hostPath).
    let base = cp.state_dir.join("kubekms-pods");
    let state = base.join("state");
    init_plugin_state(&plugin_bin, &state)?;
    let root_key = state.join("root.key");
    ensure!(root_key.is_file(), "{} was not made", root_key.display());
    let status = Command::new("chown")
        .args(["-R", &format!("{KUBEKMS_UID}:{KUBEKMS_UID}")])
        .arg(&state)
        .status()?;
    ensure!(status.success(), "chown {}", state.display());
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700))?;

    // As a user installs it: the CRDs, the RBAC, the admission policies, then the two
    // Deployments with the root key's host path of this node.
    cp.apply_crds()?;
    for dir in ["deploy/rbac", "deploy/admission"] {
        let path = repo_root().join(dir);
        cp.kubectl(["apply".as_ref(), "-f".as_ref(), path.as_os_str()])?;
    }
    for file in [
        "deploy/operator/deployment.yaml",
        "deploy/server/deployment.yaml",
    ] {
        let manifest = deploy_manifest(file, &root_key)?;
        cp.kubectl_stdin(&["apply", "-f", "-"], manifest.as_bytes())?;
    }

    // The server's TLS Secret, for the names its clients use (the Service's DNS names and
    // ClusterIP), signed by the cluster's CA: what cert-manager would make.
    let service = node.get_json(&["service", "kubekms-server", "-n", SYSTEM_NAMESPACE])?;
    let cluster_ip = service
        .pointer("/spec/clusterIP")
        .and_then(|v| v.as_str())
        .ok_or_else(|| anyhow!("service kubekms-server has no clusterIP: {service}"))?
        .to_owned();
    let tls = base.join("tls");
    let (cert, key) = serving_cert(node, &tls, &cluster_ip)?;
    cp.kubectl([
        "create".as_ref(),
        "secret".as_ref(),
        "tls".as_ref(),
        "kubekms-server-tls".as_ref(),
        "-n".as_ref(),
        SYSTEM_NAMESPACE.as_ref(),
        "--cert".as_ref(),
        cert.as_os_str(),
        "--key".as_ref(),
        key.as_os_str(),
    ])?;

    // The operator: both replicas Ready (they reach kube-apiserver through the
    // `kubernetes` Service), one of them holding the Lease and renewing it.
    rollout(node, "kubekms-operator")?;
    let operators = pod_names(node, "kubekms-operator")?;
    let lease_of = || -> Result<(String, String)> {
        let lease = node.get_json(&["lease", "kubekms-operator", "-n", SYSTEM_NAMESPACE])?;
        let field = |p: &str| {
            lease
                .pointer(p)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned()
        };
        Ok((field("/spec/holderIdentity"), field("/spec/renewTime")))
    };
    let mut first = None;
    wait_until(
        "an operator pod holding the Lease kubekms-system/kubekms-operator",
        POD_TIMEOUT,
        || {
            let (holder, renewed) = lease_of()?;
            first = Some((holder.clone(), renewed));
            Ok(operators.contains(&holder))
        },
    )
    .with_context(|| {
        format!(
            "operator pods {operators:?}; {}",
            node.where_to_look("kubelet")
        )
    })?;
    let (holder, renewed) = first.ok_or_else(|| anyhow!("no Lease read"))?;
    wait_until(
        &format!("{holder} to renew the Lease"),
        Duration::from_secs(60),
        || {
            let (now_holder, now_renewed) = lease_of()?;
            ensure!(
                now_holder == holder,
                "the Lease moved from {holder} to {now_holder}"
            );
            Ok(now_renewed != renewed)
        },
    )?;

    // A key made with kubectl: the operator in the pod makes its material.
    let ns = node.new_namespace("pods-app")?;
    let key_manifest = format!(
        "apiVersion: kubekms.io/v1alpha1\nkind: KmsKey\nmetadata: {{name: app-key, namespace: {ns}}}\n\
         spec: {{keySpec: SYMMETRIC_DEFAULT, keyUsage: ENCRYPT_DECRYPT, enabled: true}}\n"
    );
    cp.kubectl_stdin(&["apply", "-f", "-"], key_manifest.as_bytes())?;
    let mut kmskey = serde_json::Value::Null;
    wait_until(&format!("KmsKey {ns}/app-key Ready"), POD_TIMEOUT, || {
        kmskey = node.get_json(&["kmskey", "app-key", "-n", &ns])?;
        Ok(condition(&kmskey, "Ready") == Some("True"))
    })
    .with_context(|| {
        format!(
            "operator pods' logs under {}",
            cp.state_dir.join("pod-logs").display()
        )
    })?;
    let arn = kmskey
        .pointer("/status/arn")
        .and_then(|v| v.as_str())
        .ok_or_else(|| anyhow!("KmsKey without status.arn: {kmskey}"))?
        .to_owned();
    ensure!(
        arn.starts_with(&format!("arn:aws:kms:{DEFAULT_REGION}:")),
        "arn {arn}"
    );

    // The server, through its Service from the host, with the AWS CLI as a workload
    // would call it: web identity (a ServiceAccount token of audience kubekms) for STS,
    // then KMS with the session, allowed by RBAC on the key.
    rollout(node, "kubekms-server")?;
    node.cp.kubectl_stdin(
        &["apply", "-f", "-"],
        format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: app, namespace: {ns}}}\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: app-key-user, namespace: {ns}}}\n\
             rules: [{{apiGroups: [kubekms.io], resources: [kmskeys], resourceNames: [app-key], \
             verbs: [describekey, encrypt, decrypt, generatedatakey]}}]\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: app-key-user, namespace: {ns}}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: app-key-user}}\n\
             subjects: [{{kind: ServiceAccount, name: app, namespace: {ns}}}]\n"
        )
        .as_bytes(),
    )?;
    let token = cp.kubectl([
        "create",
        "token",
        "app",
        "-n",
        &ns,
        "--audience",
        "kubekms",
        "--duration=1h",
    ])?;
    let scratch = base.join("aws");
    std::fs::create_dir_all(scratch.join("home"))?;
    let token_file = scratch.join("token");
    std::fs::write(&token_file, &token.stdout)?;
    let endpoint = format!("https://{cluster_ip}:443");
    let mut env = aws_env(
        &endpoint,
        &Identity::WebIdentity {
            token_file,
            sts_endpoint: endpoint.clone(),
        },
        &cp.state_dir.join("pki/ca.crt"),
        &scratch,
    );
    env.push(("AWS_REGION".into(), DEFAULT_REGION.into()));
    env.push(("AWS_DEFAULT_REGION".into(), DEFAULT_REGION.into()));
    let aws = |args: &[&str]| -> Result<serde_json::Value> {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--output", "json"]);
        let (status, stdout, stderr) = run_aws_cli(&all, &env)?;
        ensure!(
            status.success(),
            "aws {}: {status}\n{stdout}\n{stderr}",
            args.join(" ")
        );
        serde_json::from_str(&stdout).with_context(|| format!("aws {}: {stdout}", args.join(" ")))
    };
    // kube-proxy writes the Service's rules, and the keyring loads the key, a moment after
    // the pods are Ready.
    wait_until(
        &format!("describe-key of {arn} at {endpoint}"),
        POD_TIMEOUT,
        || {
            let described = aws(&["kms", "describe-key", "--key-id", &arn])?;
            Ok(described["KeyMetadata"]["Arn"] == arn.as_str())
        },
    )
    .with_context(|| node.where_to_look("kube-proxy"))?;
    let plaintext = unique_name("pods-plaintext");
    let plaintext_file = scratch.join("plaintext");
    std::fs::write(&plaintext_file, &plaintext)?;
    let encrypted = aws(&[
        "kms",
        "encrypt",
        "--key-id",
        &arn,
        "--plaintext",
        &format!("fileb://{}", plaintext_file.display()),
        "--encryption-context",
        "purpose=pods",
    ])?;
    ensure!(encrypted["KeyId"] == arn.as_str(), "encrypt: {encrypted}");
    let blob = base64::engine::general_purpose::STANDARD.decode(
        encrypted["CiphertextBlob"]
            .as_str()
            .ok_or_else(|| anyhow!("encrypt: {encrypted}"))?,
    )?;
    let blob_file = scratch.join("ciphertext");
    std::fs::write(&blob_file, &blob)?;
    let decrypt = || -> Result<Vec<u8>> {
        let out = aws(&[
            "kms",
            "decrypt",
            "--ciphertext-blob",
            &format!("fileb://{}", blob_file.display()),
            "--encryption-context",
            "purpose=pods",
        ])?;
        ensure!(out["KeyId"] == arn.as_str(), "decrypt: {out}");
        Ok(base64::engine::general_purpose::STANDARD.decode(
            out["Plaintext"]
                .as_str()
                .ok_or_else(|| anyhow!("decrypt: {out}"))?,
        )?)
    };
    ensure!(
        decrypt()? == plaintext.as_bytes(),
        "decrypt gave another plaintext"
    );
    let data_key = aws(&[
        "kms",
        "generate-data-key",
        "--key-id",
        &arn,
        "--key-spec",
        "AES_256",
    ])?;
    let key_bytes = base64::engine::general_purpose::STANDARD.decode(
        data_key["Plaintext"]
            .as_str()
            .ok_or_else(|| anyhow!("generate-data-key: {data_key}"))?,
    )?;
    ensure!(
        key_bytes.len() == 32,
        "generate-data-key: {} bytes",
        key_bytes.len()
    );

    // Every server container killed behind the kubelet's back: the kubelet starts them
    // again, and the ciphertext made before decrypts through the new processes.
    let before = server_containers(node)?;
    ensure!(!before.is_empty(), "no kubekms-server pods");
    for (pod, status) in &before {
        let id = status
            .container_id
            .strip_prefix("containerd://")
            .ok_or_else(|| anyhow!("{pod}: container id {:?}", status.container_id))?;
        node.ctr(&["tasks", "kill", "--signal", "SIGKILL", id])?;
    }
    wait_until(
        "the kubelet to start every kubekms-server container again after the kill",
        POD_TIMEOUT,
        || {
            let now = server_containers(node)?;
            Ok(before.iter().all(|(pod, was)| {
                now.iter().any(|(p, s)| {
                    p == pod
                        && s.restarts > was.restarts
                        && s.ready
                        && s.container_id != was.container_id
                })
            }))
        },
    )
    .with_context(|| node.where_to_look("kubelet"))?;
    let mut plain = Vec::new();
    wait_until(
        "the ciphertext made before the kill to decrypt",
        Duration::from_secs(60),
        || {
            plain = decrypt()?;
            Ok(true)
        },
    )?;
    ensure!(
        plain == plaintext.as_bytes(),
        "decrypt after the kill gave another plaintext"
    );
    node.cp
        .kubectl(["delete", "namespace", &ns, "--wait=false"])?;
    Ok(())
}

/// `file` of the repository with the root key's host path replaced by `root_key`.
fn deploy_manifest(file: &str, root_key: &Path) -> Result<String> {
    let path = repo_root().join(file);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let from = "path: /var/lib/kubekms/root.key\n";
    if !text.contains(from) {
        bail!(
            "{} no longer holds {from:?}; update this test",
            path.display()
        );
    }
    Ok(text.replace(from, &format!("path: {}\n", root_key.display())))
}

/// A serving certificate of kubekms-server for its Service's names and `cluster_ip`,
/// signed by the control plane's CA; (certificate, key).
fn serving_cert(
    node: &NodeCluster,
    dir: &Path,
    cluster_ip: &str,
) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let pki = node.cp.state_dir.join("pki");
    let (key, csr, cert, ext) = (
        dir.join("tls.key"),
        dir.join("tls.csr"),
        dir.join("tls.crt"),
        dir.join("tls.ext"),
    );
    let openssl = |args: &mut Command| -> Result<()> {
        let out = args.stdin(Stdio::null()).output()?;
        ensure!(
            out.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    openssl(
        Command::new("openssl")
            .args(["req", "-new", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes"])
            .args(["-subj", "/CN=kubekms-server.kubekms-system.svc"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr),
    )?;
    std::fs::write(
        &ext,
        format!(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=DNS:kubekms-server.kubekms-system.svc,\
             DNS:kubekms-server.kubekms-system.svc.cluster.local,IP:{cluster_ip}\n"
        ),
    )?;
    let serial = format!("0x{}", uuid::Uuid::new_v4().simple());
    openssl(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-set_serial", &serial])
            .arg("-in")
            .arg(&csr)
            .arg("-CA")
            .arg(pki.join("ca.crt"))
            .arg("-CAkey")
            .arg(pki.join("ca.key"))
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(&cert),
    )?;
    Ok((cert, key))
}

/// `kubectl rollout status` of a Deployment of deploy/ (every replica Ready).
fn rollout(node: &NodeCluster, deployment: &str) -> Result<()> {
    node.cp
        .kubectl([
            "rollout",
            "status",
            &format!("deployment/{deployment}"),
            "-n",
            SYSTEM_NAMESPACE,
            &format!("--timeout={}s", POD_TIMEOUT.as_secs()),
        ])
        .with_context(|| {
            format!(
                "{deployment} pods: {}; {}",
                node.cp
                    .kubectl(["get", "pods", "-n", SYSTEM_NAMESPACE, "-o", "wide"])
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default(),
                node.where_to_look("kubelet")
            )
        })?;
    Ok(())
}

/// The names of the pods of a Deployment of deploy/.
fn pod_names(node: &NodeCluster, app: &str) -> Result<Vec<String>> {
    let pods = node.get_json(&[
        "pods",
        "-n",
        SYSTEM_NAMESPACE,
        "-l",
        &format!("app.kubernetes.io/name={app}"),
    ])?;
    Ok(pods
        .get("items")
        .and_then(|i| i.as_array())
        .into_iter()
        .flatten()
        .filter_map(|p| p.pointer("/metadata/name").and_then(|n| n.as_str()))
        .map(str::to_owned)
        .collect())
}

/// The container status of each kubekms-server pod, by pod name.
fn server_containers(node: &NodeCluster) -> Result<Vec<(String, PluginStatus)>> {
    pod_names(node, "kubekms-server")?
        .into_iter()
        .map(|pod| {
            let status = container_status(node, SYSTEM_NAMESPACE, &pod)?;
            Ok((pod, status))
        })
        .collect()
}

/// The status of `type` in an object's `status.conditions`.
fn condition<'a>(object: &'a serde_json::Value, type_: &str) -> Option<&'a str> {
    object
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(|t| t.as_str()) == Some(type_))?
        .get("status")?
        .as_str()
}
