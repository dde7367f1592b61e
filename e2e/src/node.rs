//! A control plane with a node: `hack/control-plane.sh up --node` (hack/node.sh) starts
//! containerd, kubelet, kube-proxy, a CNI bridge, kube-controller-manager and
//! kube-scheduler beside etcd and kube-apiserver, so the tests run real pods.
//!
//! One node per test process, started on first use and torn down by the launcher's
//! watchdog when the process exits (pods, network namespaces, mounts and iptables chains
//! included). Secrets are not encrypted at first: a test that runs the kubekms plugin as
//! a static pod restarts kube-apiserver with a KMS v2 EncryptionConfiguration
//! ([`NodeCluster::restart_apiserver`]).
//!
//! Images: every `NAME.oci.tar` of `KUBEKMS_IMAGES_DIR` (default `<repo>/target/images`)
//! is imported as `kubekms.local/NAME:dev`. Without `KUBEKMS_IMAGES_DIR`, `hack/images.sh
//! build pause busybox` writes them first. `KUBEKMS_E2E_NODE_STATE` names a control plane
//! with a node started by someone else (never stopped here).

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};

use crate::process::tools_bin;
use crate::{ControlPlane, repo_root};

/// Environment variable naming the state folder of a running control plane with a node.
pub const ENV_NODE_STATE: &str = "KUBEKMS_E2E_NODE_STATE";
/// Environment variable naming the folder of the `NAME.oci.tar` images to import.
pub const ENV_IMAGES_DIR: &str = "KUBEKMS_IMAGES_DIR";
/// The test image: Debian's busybox-static (httpd, cat, sleep).
pub const BUSYBOX_IMAGE: &str = "kubekms.local/busybox:dev";

/// How long a node may take to report Ready again (its Lease is renewed every 10 s, and
/// the kubelet retries a failed status update at once).
pub const NODE_READY_TIMEOUT: Duration = Duration::from_secs(120);

/// A control plane with a Ready node.
#[derive(Debug, Clone)]
pub struct NodeCluster {
    /// The control plane (kubectl, etcd, logs).
    pub cp: ControlPlane,
    /// The Node object's name.
    pub node_name: String,
    /// The kubelet's staticPodPath.
    pub manifests: PathBuf,
    /// containerd's socket (for `ctr`).
    pub containerd_socket: PathBuf,
}

static SHARED_NODE: OnceLock<std::result::Result<NodeCluster, String>> = OnceLock::new();

impl NodeCluster {
    /// The node of this test process (started once; see the module docs).
    ///
    /// # Errors
    /// When the images cannot be built or the node does not become Ready.
    pub fn shared() -> Result<&'static NodeCluster> {
        let node = SHARED_NODE.get_or_init(|| {
            let found = match std::env::var_os(ENV_NODE_STATE) {
                Some(dir) if !dir.is_empty() => Self::from_state_dir(Path::new(&dir)),
                _ => Self::start_for_this_process(),
            };
            found.map_err(|e| format!("{e:#}"))
        });
        node.as_ref()
            .map_err(|e| anyhow!("no node for the e2e tests: {e}"))
    }

    /// Reads the `env` file of a control plane started with `--node`.
    ///
    /// # Errors
    /// When the folder holds no control plane with a node.
    pub fn from_state_dir(dir: &Path) -> Result<Self> {
        let cp = ControlPlane::from_state_dir(dir)?;
        let env = std::fs::read_to_string(dir.join("env"))?;
        let get = |key: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_owned)
                .ok_or_else(|| {
                    anyhow!(
                        "{}/env has no {key}= (was the control plane started with --node?)",
                        dir.display()
                    )
                })
        };
        Ok(Self {
            node_name: get("KUBEKMS_NODE_NAME")?,
            manifests: PathBuf::from(get("KUBEKMS_NODE_MANIFESTS")?),
            containerd_socket: PathBuf::from(get("KUBEKMS_CONTAINERD_SOCKET")?),
            cp,
        })
    }

    fn start_for_this_process() -> Result<Self> {
        let images = images_dir()?;
        let dir =
            std::env::temp_dir().join(format!("kubekms-node-{}", uuid::Uuid::new_v4().simple()));
        eprintln!(
            "[e2e] starting a control plane with a node in {} (images from {})",
            dir.display(),
            images.display()
        );
        let started = Instant::now();
        let out = Command::new(repo_root().join("hack/control-plane.sh"))
            .arg("up")
            .arg("--node")
            .arg("--images")
            .arg(&images)
            .arg("--state-dir")
            .arg(&dir)
            .arg("--tools-bin")
            .arg(tools_bin()?)
            .args(["--watch-pid", &std::process::id().to_string()])
            .stdin(Stdio::null())
            .output()?;
        ensure!(
            out.status.success(),
            "control-plane.sh up --node failed:\n{}\nlogs of every process: {}",
            String::from_utf8_lossy(&out.stderr),
            dir.join("logs").display()
        );
        eprintln!(
            "[e2e] control plane and node Ready after {:.1}s",
            started.elapsed().as_secs_f64()
        );
        Self::from_state_dir(&dir)
    }

    /// Imports `NAME.oci.tar` archives into the node's containerd as
    /// `kubekms.local/NAME:dev` (`hack/control-plane.sh import-image`).
    ///
    /// # Errors
    /// When the import fails.
    pub fn import_images(&self, archives: &[PathBuf]) -> Result<()> {
        let out = Command::new(repo_root().join("hack/control-plane.sh"))
            .arg("import-image")
            .arg("--state-dir")
            .arg(&self.cp.state_dir)
            .args(archives)
            .stdin(Stdio::null())
            .output()?;
        ensure!(
            out.status.success(),
            "control-plane.sh import-image {archives:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Stops kube-apiserver and starts it again with its command line plus `extra_args`
    /// (given twice, a flag's last value wins), then waits until it is ready.
    ///
    /// # Errors
    /// When it does not come back ready.
    pub fn restart_apiserver(&self, extra_args: &[String]) -> Result<()> {
        let mut argv = self.cp.argv_of("kube-apiserver")?;
        argv.extend_from_slice(extra_args);
        self.cp.stop_process("kube-apiserver")?;
        self.cp.start_process("kube-apiserver", &argv)?;
        self.cp.wait_apiserver_ready()?;
        // While kube-apiserver was down the kubelet could not renew its Lease, and
        // kube-controller-manager may have marked the node Unknown: the tests after this
        // one share the node and must find it as it was.
        self.wait_node_ready(NODE_READY_TIMEOUT)
    }

    /// The status of the Node's Ready condition (`True`, `False`, `Unknown`), if it has one.
    ///
    /// # Errors
    /// When the Node cannot be read.
    pub fn node_ready_status(&self) -> Result<Option<String>> {
        let obj = self.get_json(&["node", &self.node_name])?;
        Ok(obj
            .pointer("/status/conditions")
            .and_then(|c| c.as_array())
            .and_then(|c| {
                c.iter()
                    .find(|c| c.get("type").and_then(|t| t.as_str()) == Some("Ready"))
            })
            .and_then(|c| c.get("status"))
            .and_then(|s| s.as_str())
            .map(str::to_owned))
    }

    /// Waits until the Node's Ready condition is `True`.
    ///
    /// # Errors
    /// When it is not `True` within `timeout` (the last status in the message).
    pub fn wait_node_ready(&self, timeout: Duration) -> Result<()> {
        let mut last = None;
        wait_until(&format!("node {} Ready", self.node_name), timeout, || {
            last = self.node_ready_status()?;
            Ok(last.as_deref() == Some("True"))
        })
        .with_context(|| {
            format!(
                "node {} Ready is {last:?}; {}",
                self.node_name,
                self.where_to_look("kubelet")
            )
        })
    }

    /// Runs `ctr` against the node's containerd, namespace `k8s.io` (the CRI's).
    ///
    /// # Errors
    /// When ctr fails.
    pub fn ctr(&self, args: &[&str]) -> Result<Output> {
        let out = Command::new("timeout")
            .arg("30")
            .arg("ctr")
            .arg("--address")
            .arg(&self.containerd_socket)
            .args(["--namespace", "k8s.io"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running ctr")?;
        ensure!(
            out.status.success(),
            "ctr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out)
    }

    /// `kubectl get -o json` of one object, parsed.
    ///
    /// # Errors
    /// When kubectl fails or prints no JSON.
    pub fn get_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        let out = self.cp.kubectl(&all)?;
        serde_json::from_slice(&out.stdout).context("parsing kubectl's JSON")
    }

    /// A new namespace whose `default` ServiceAccount exists (made by
    /// kube-controller-manager; pods are refused without it).
    ///
    /// # Errors
    /// When the namespace cannot be made or its ServiceAccount does not appear.
    pub fn new_namespace(&self, prefix: &str) -> Result<String> {
        let name = crate::unique_name(&format!("e2e-{prefix}"));
        self.cp.kubectl(["create", "namespace", &name])?;
        wait_until(
            &format!("the default ServiceAccount of namespace {name}"),
            Duration::from_secs(60),
            || {
                Ok(self
                    .cp
                    .kubectl(["get", "serviceaccount", "default", "-n", &name])
                    .is_ok())
            },
        )
        .with_context(|| self.where_to_look("kube-controller-manager"))?;
        Ok(name)
    }

    /// Where to look when something of `component` failed.
    #[must_use]
    pub fn where_to_look(&self, component: &str) -> String {
        format!(
            "{} log: {}; containers' logs under {}; {}",
            component,
            self.cp.log_path(component).display(),
            self.cp.state_dir.join("pod-logs").display(),
            self.cp.where_to_look()
        )
    }
}

/// The images folder: `KUBEKMS_IMAGES_DIR`, or `<repo>/target/images` filled by
/// `hack/images.sh build pause busybox`.
///
/// # Errors
/// When the images cannot be built.
pub fn images_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(ENV_IMAGES_DIR).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let dir = repo_root().join("target/images");
    let script = repo_root().join("hack/images.sh");
    ensure!(
        script.exists(),
        "no {ENV_IMAGES_DIR} given and no hack/images.sh to build the pause and busybox images"
    );
    let out = Command::new(&script)
        .args(["build", "--out"])
        .arg(&dir)
        .args(["pause", "busybox"])
        .stdin(Stdio::null())
        .output()
        .context("running hack/images.sh")?;
    ensure!(
        out.status.success(),
        "hack/images.sh build pause busybox: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(dir)
}

/// Polls `check` every 500 ms until it returns true; fails after `timeout` (the last
/// error of `check`, if any, in the message).
///
/// # Errors
/// When `timeout` passes first.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match check() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_err = Some(format!("{e:#}")),
        }
        if Instant::now() >= deadline {
            bail!(
                "waited {}s for {what}{}",
                timeout.as_secs(),
                last_err
                    .map(|e| format!("; last error: {e}"))
                    .unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `GET path` over plain HTTP/1.0 to `addr` (`ip:port`), with 5 s timeouts; the status
/// line and the body.
///
/// # Errors
/// When the connection fails or times out.
pub fn http_get(addr: &str, path: &str) -> Result<(String, String)> {
    let sock = addr
        .parse()
        .with_context(|| format!("not an ip:port: {addr}"))?;
    let mut stream = TcpStream::connect_timeout(&sock, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .with_context(|| format!("reading the response of {addr}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP response from {addr}: {response:?}"))?;
    let status = head.lines().next().unwrap_or_default().to_owned();
    Ok((status, body.to_owned()))
}
