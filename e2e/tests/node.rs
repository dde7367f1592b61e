//! End-to-end tests of the node beside the local control plane (`hack/control-plane.sh up
//! --node`, see docs/node.md): the node registers Ready; a Deployment of the busybox test
//! image becomes Ready and answers through its ClusterIP Service from the host
//! (kube-proxy); deleting the Deployment removes its ReplicaSet and pods (garbage
//! collection) and the namespace goes away (namespace deletion); a pod reads a projected
//! ServiceAccount token of the audience it asked for.
//!
//! Needs root, containerd, runc, the CNI plugins and iptables (hack/install-deps.sh), and
//! the pause and busybox images (`KUBEKMS_IMAGES_DIR`, or built by hack/images.sh).

use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use base64::Engine as _;
use kubekms_e2e::node::{BUSYBOX_IMAGE, NodeCluster, http_get, wait_until};
use kubekms_e2e::unique_name;

const POD_TIMEOUT: Duration = Duration::from_secs(120);

fn node() -> &'static NodeCluster {
    NodeCluster::shared().expect("a control plane with a node")
}

#[test]
fn node_registers_ready_with_the_pinned_kubelet() -> Result<()> {
    let node = node();
    let obj = node.get_json(&["node", &node.node_name])?;
    let ready = obj
        .pointer("/status/conditions")
        .and_then(|c| c.as_array())
        .and_then(|c| {
            c.iter()
                .find(|c| c.get("type").and_then(|t| t.as_str()) == Some("Ready"))
        })
        .and_then(|c| c.get("status"))
        .and_then(|s| s.as_str());
    ensure!(
        ready == Some("True"),
        "node {} is not Ready: {ready:?}; {}",
        node.node_name,
        node.where_to_look("kubelet")
    );
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
fn deployment_answers_through_its_cluster_ip_and_is_collected() -> Result<()> {
    let node = node();
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
fn pod_reads_a_projected_token_of_its_audience() -> Result<()> {
    let node = node();
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
