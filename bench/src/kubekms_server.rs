//! kubekms-server as users run it, for the benchmark: a private control plane
//! (`hack/control-plane.sh up --watch-pid <bench>`), the CRDs, the operator binary as its
//! ServiceAccount (deploy/rbac/operator.yaml) making one `SYMMETRIC_DEFAULT` KmsKey, the
//! server binary as its ServiceAccount (deploy/rbac/server.yaml) over the same root key,
//! and static credentials for the load client that act as a ServiceAccount allowed by a
//! Role to `encrypt`, `decrypt` and `generatedatakey` on that key and nothing else.
//!
//! The server serves plain HTTP on loopback (`--insecure-http`): the floor and local-kms
//! are plain HTTP too, and the comparison is of the request path, not of TLS. Every
//! request is still SigV4-verified, resolved, authorized (RBAC through the decision
//! cache: one SubjectAccessReview per 5 s, the rest answered locally) and audited (to a
//! file in the scratch folder).
//!
//! Everything stops when the target is dropped: the server (SIGTERM: it drains and
//! flushes its audit log), the operator, then `control-plane.sh down`; the launcher's
//! watchdog and [`ServerProcess`]'s cover a killed bench.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kubekms_e2e::ControlPlane;

use crate::kms::{KmsEndpoint, StaticCredentials};
use crate::process::ServerProcess;
use crate::targets::{ExternalServer, RunningTarget, StartContext, StartError, Target};

/// The namespace (account) of the benchmark's key and of its client's ServiceAccount.
pub const NAMESPACE: &str = "kubekms-bench";
/// The KmsKey the load names.
pub const KEY_NAME: &str = "bench-key";
/// The ServiceAccount the load client's static credentials act as.
pub const CLIENT_SERVICE_ACCOUNT: &str = "load-client";
/// The access key id of the load client.
pub const CLIENT_ACCESS_KEY_ID: &str = "AKIAKUBEKMSBENCHLOAD";

/// The two binaries the target runs.
#[derive(Debug, Clone)]
pub struct ServerBinaries {
    /// `kubekms-server`.
    pub server: PathBuf,
    /// `kubekms-operator`.
    pub operator: PathBuf,
}

impl ServerBinaries {
    /// `KUBEKMS_SERVER_BIN` and `KUBEKMS_OPERATOR_BIN` when both are set; otherwise both
    /// built (or found up to date) by `cargo build -p kubekms-server -p kubekms-operator`
    /// with the profile and target folder of `exe` (a bench binary: release under
    /// `cargo bench`), so a stale server is never measured.
    ///
    /// # Errors
    /// Why there are no binaries (the build failed, cargo is missing), as a message.
    pub fn locate(exe: &Path) -> Result<Self, String> {
        let env = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        if let (Some(server), Some(operator)) =
            (env("KUBEKMS_SERVER_BIN"), env("KUBEKMS_OPERATOR_BIN"))
        {
            return Ok(Self { server, operator });
        }
        // <target>/<profile>/deps/<bench>-<hash>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .ok_or_else(|| format!("no profile folder above {}", exe.display()))?;
        let target_dir = profile_dir
            .parent()
            .ok_or_else(|| format!("no target folder above {}", profile_dir.display()))?;
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| format!("odd profile folder {}", profile_dir.display()))?;
        let repo_root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .ok_or("the bench crate has no parent folder")?;
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .current_dir(repo_root)
            .args([
                "build",
                "--bins",
                "-p",
                "kubekms-server",
                "-p",
                "kubekms-operator",
            ])
            .arg("--target-dir")
            .arg(target_dir);
        match profile {
            "debug" => {}
            "release" => {
                build.arg("--release");
            }
            other => {
                build.args(["--profile", other]);
            }
        }
        let shown = format!("{build:?}");
        let status = build
            .stdin(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run {shown}: {e}"))?;
        if !status.success() {
            return Err(format!("{shown} failed ({status})"));
        }
        let binaries = Self {
            server: profile_dir.join("kubekms-server"),
            operator: profile_dir.join("kubekms-operator"),
        };
        for bin in [&binaries.server, &binaries.operator] {
            if !bin.is_file() {
                return Err(format!("{} is missing after {shown}", bin.display()));
            }
        }
        Ok(binaries)
    }
}

/// kubekms-server, the AWS KMS API of KubeKMS: started as described in the module
/// documentation, or measured where it already runs ([`ExternalServer`], from the bench's
/// `--kubekms-server-*` options).
pub struct KubekmsServer {
    /// Its binaries, or why there are none (reported as not available).
    pub binaries: Result<ServerBinaries, String>,
    /// A server that runs already, measured instead of starting one.
    pub external: Option<ExternalServer>,
}

impl Target for KubekmsServer {
    fn name(&self) -> &'static str {
        "kubekms-server"
    }

    fn start(&self, context: &StartContext) -> Result<RunningTarget, StartError> {
        if let Some(external) = &self.external {
            return Ok(RunningTarget {
                name: self.name(),
                endpoint: external.endpoint.clone(),
                key_id: external.key_id.clone(),
                notes: "started outside the benchmark; SigV4 verified by the server",
                pid: external.pid,
                process: None,
                log: None,
                support: None,
            });
        }
        let binaries = self.binaries.as_ref().map_err(|why| {
            StartError::Unavailable(format!("kubekms-server is not built: {why}"))
        })?;
        start(self.name(), binaries, context)
    }
}

fn failed(what: &str) -> impl Fn(anyhow::Error) -> StartError + '_ {
    move |e| StartError::Failed(format!("{what}: {e:#}"))
}

/// The control plane of the target, and the operator on it; stopped when dropped (the
/// operator first, then `control-plane.sh down`).
struct Cluster {
    plane: ControlPlane,
    operator: Option<ServerProcess>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        drop(self.operator.take());
        if let Err(e) = kubekms_e2e::control_plane_down(&self.plane.state_dir) {
            eprintln!("[api_load] {e:#}");
        }
    }
}

fn start(
    name: &'static str,
    binaries: &ServerBinaries,
    context: &StartContext,
) -> Result<RunningTarget, StartError> {
    let began = Instant::now();
    let mut cluster = start_cluster(context)?;
    let plane = &cluster.plane;
    let step = |what: &str| {
        eprintln!(
            "[api_load] kubekms-server: {what} ({:.1}s)",
            began.elapsed().as_secs_f64()
        );
    };
    step("control plane ready");
    plane.apply_crds().map_err(failed("applying the CRDs"))?;
    let repo = &context.repo_root;
    plane
        .kubectl([
            "apply".as_ref(),
            "--server-side".as_ref(),
            "-f".as_ref(),
            repo.join("deploy/rbac/operator.yaml").as_os_str(),
            "-f".as_ref(),
            repo.join("deploy/rbac/server.yaml").as_os_str(),
        ])
        .map_err(failed("applying deploy/rbac"))?;
    let objects = context.scratch.join("objects.yaml");
    write(&objects, &bench_objects(&context.region))?;
    plane
        .kubectl(["apply".as_ref(), "-f".as_ref(), objects.as_os_str()])
        .map_err(failed(
            "applying the key, the Role and the client's ServiceAccount",
        ))?;

    let root_key = context.scratch.join("root.key");
    let operator_kubeconfig = context.scratch.join("operator.kubeconfig");
    plane
        .write_service_account_kubeconfig(
            "kubekms-system",
            "kubekms-operator",
            &operator_kubeconfig,
        )
        .map_err(failed("the operator's kubeconfig"))?;
    let mut operator = Command::new(&binaries.operator);
    operator
        .arg("--root-key")
        .arg(&root_key)
        .arg("--init-root-key")
        .args([
            "--metrics-addr",
            "127.0.0.1:0",
            "--lease-namespace",
            "kubekms-system",
        ])
        .args(["--region", &context.region, "--log-format", "text"])
        .env("KUBECONFIG", &operator_kubeconfig);
    cluster.operator = Some(ServerProcess::spawn(
        "kubekms-operator",
        operator,
        &context.scratch.join("operator.log"),
    )?);
    let key_id = wait_enabled(&cluster, context.ready_timeout)?;
    step(&format!(
        "the operator made KmsKey {NAMESPACE}/{KEY_NAME} ({key_id})"
    ));

    let server_kubeconfig = context.scratch.join("server.kubeconfig");
    cluster
        .plane
        .write_service_account_kubeconfig("kubekms-system", "kubekms-server", &server_kubeconfig)
        .map_err(failed("the server's kubeconfig"))?;
    let credentials = StaticCredentials {
        access_key_id: CLIENT_ACCESS_KEY_ID.to_owned(),
        secret_access_key: random_secret()?,
        session_token: None,
    };
    let credentials_file = context.scratch.join("credentials.yaml");
    write_private(
        &credentials_file,
        &format!(
            "credentials:\n  - accessKeyId: {}\n    secretAccessKey: \"{}\"\n    serviceAccount: {NAMESPACE}/{CLIENT_SERVICE_ACCOUNT}\n",
            credentials.access_key_id, credentials.secret_access_key
        ),
    )?;
    let mut server = Command::new(&binaries.server);
    server
        .arg("--root-key")
        .arg(&root_key)
        .arg("--kubeconfig")
        .arg(&server_kubeconfig)
        .args(["--listen", "127.0.0.1:0", "--health-addr", "127.0.0.1:0"])
        .args(["--insecure-http", "--region", &context.region])
        .arg("--static-credentials")
        .arg(&credentials_file)
        .arg("--audit-log")
        .arg(context.scratch.join("audit.log"))
        .args(["--log-format", "json"])
        .env_remove("KUBECONFIG");
    let mut process = ServerProcess::spawn(name, server, &context.scratch.join("server.log"))?;
    let (listen, health) = process.wait_for_line(context.ready_timeout, serving_line)?;
    wait_ready(&mut process, health, context.ready_timeout)?;
    step(&format!("kubekms-server ready on {listen}"));
    let mut target = RunningTarget::started(
        name,
        KmsEndpoint {
            addr: listen,
            region: context.region.clone(),
            credentials,
        },
        key_id,
        "SigV4 verified, RBAC through the decision cache, audited to a file; plain HTTP",
        process,
    );
    target.support = Some(Box::new(cluster));
    Ok(target)
}

fn start_cluster(context: &StartContext) -> Result<Cluster, StartError> {
    // No Go tools (no Go to build them with): this machine cannot run the target.
    let tools = kubekms_e2e::process::tools_bin().map_err(|e| {
        StartError::Unavailable(format!(
            "no control plane: the Go tools of hack/tools/build.sh: {e:#}"
        ))
    })?;
    let state = context.scratch.join("cp");
    let launcher = context.repo_root.join("hack/control-plane.sh");
    let out = Command::new(&launcher)
        .arg("up")
        .arg("--state-dir")
        .arg(&state)
        .arg("--tools-bin")
        .arg(&tools)
        .args(["--watch-pid", &std::process::id().to_string()])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| StartError::Failed(format!("running {}: {e}", launcher.display())))?;
    // Whatever `up` started is stopped by `down`, even after a failed `up`.
    let placeholder = ControlPlane {
        state_dir: state.clone(),
        kubeconfig: state.join("kubeconfig"),
        etcd_endpoint: String::new(),
        apiserver_url: String::new(),
        tools_bin: tools,
        kms_socket: None,
        etcdctl_cmd: None,
        expected_kube_version: None,
    };
    let mut cluster = Cluster {
        plane: placeholder,
        operator: None,
    };
    if !out.status.success() {
        return Err(StartError::Failed(format!(
            "control-plane.sh up failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    cluster.plane = ControlPlane::from_state_dir(&state).map_err(failed("the control plane"))?;
    Ok(cluster)
}

/// The namespace, the KmsKey, the client's ServiceAccount and its Role, as
/// deploy/samples/ has them for an application.
fn bench_objects(region: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: {NAMESPACE}
---
apiVersion: kubekms.io/v1alpha1
kind: KmsKey
metadata:
  name: {KEY_NAME}
  namespace: {NAMESPACE}
spec:
  description: kubekms api_load benchmark key ({region})
  keySpec: SYMMETRIC_DEFAULT
  keyUsage: ENCRYPT_DECRYPT
  enabled: true
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {CLIENT_SERVICE_ACCOUNT}
  namespace: {NAMESPACE}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: bench-key-user
  namespace: {NAMESPACE}
rules:
  - apiGroups: ["kubekms.io"]
    resources: ["kmskeys"]
    resourceNames: ["{KEY_NAME}"]
    verbs: ["encrypt", "decrypt", "generatedatakey"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: bench-key-user
  namespace: {NAMESPACE}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: bench-key-user
subjects:
  - kind: ServiceAccount
    name: {CLIENT_SERVICE_ACCOUNT}
    namespace: {NAMESPACE}
"#
    )
}

/// Waits until the operator reports the key `Enabled` and returns its key id.
fn wait_enabled(cluster: &Cluster, within: Duration) -> Result<String, StartError> {
    let started = Instant::now();
    let key = format!("kmskey/{KEY_NAME}");
    loop {
        let out = cluster
            .plane
            .kubectl([
                "get",
                &key,
                "-n",
                NAMESPACE,
                "-o",
                "jsonpath={.status.keyState} {.status.keyId}",
            ])
            .map_err(failed("reading the KmsKey"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some(("Enabled", key_id)) = text.trim().split_once(' ') {
            return Ok(key_id.to_owned());
        }
        if started.elapsed() > within {
            return Err(StartError::Failed(format!(
                "KmsKey {NAMESPACE}/{KEY_NAME} not Enabled after {within:?} (status: {text:?}); operator log in {}",
                cluster
                    .operator
                    .as_ref()
                    .map_or_else(String::new, |o| o.log().display().to_string())
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The API and health addresses of the JSON log line `kubekms-server serving`.
fn serving_line(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = value.get("fields")?;
    if fields.get("message")?.as_str()? != "kubekms-server serving" {
        return None;
    }
    let listen = fields.get("listen")?.as_str()?.parse().ok()?;
    let health = fields.get("health")?.as_str()?.parse().ok()?;
    Some((listen, health))
}

/// Waits until `GET /readyz` answers 200 (the keyring and the Namespaces are listed).
fn wait_ready(
    process: &mut ServerProcess,
    health: SocketAddr,
    within: Duration,
) -> Result<(), StartError> {
    let started = Instant::now();
    loop {
        if readyz(health) == Some(200) {
            return Ok(());
        }
        if !process.is_running() || started.elapsed() > within {
            return Err(StartError::Failed(format!(
                "kubekms-server not ready within {within:?} (http://{health}/readyz); log {}",
                process.log().display()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn readyz(health: SocketAddr) -> Option<u16> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect_timeout(&health, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET /readyz HTTP/1.1\r\nHost: {health}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    reply.split_whitespace().nth(1)?.parse().ok()
}

/// 40 characters of a fresh random secret access key.
fn random_secret() -> Result<String, StartError> {
    let mut bytes = [0u8; 30];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| StartError::Failed("no random bytes for the client's secret".to_owned()))?;
    use base64::Engine as _;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn write(path: &Path, text: &str) -> Result<(), StartError> {
    std::fs::write(path, text)
        .map_err(|e| StartError::Failed(format!("writing {}: {e}", path.display())))
}

/// Writes a file of mode 0600 (the server refuses a credentials file others can read).
fn write_private(path: &Path, text: &str) -> Result<(), StartError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| StartError::Failed(format!("writing {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_serving_line_gives_both_addresses() {
        let line = r#"{"timestamp":"x","level":"INFO","fields":{"message":"kubekms-server serving","listen":"127.0.0.1:4000","health":"127.0.0.1:4001","root_key":"r"},"target":"kubekms_server::kubernetes::app"}"#;
        assert_eq!(
            serving_line(line),
            Some((
                "127.0.0.1:4000".parse().expect("addr"),
                "127.0.0.1:4001".parse().expect("addr")
            ))
        );
        assert_eq!(serving_line(r#"{"fields":{"message":"other"}}"#), None);
        assert_eq!(serving_line("not json"), None);
    }

    #[test]
    fn the_client_secret_is_long_enough_for_the_server() {
        let secret = random_secret().expect("secret");
        assert_eq!(secret.len(), 40);
        assert!(secret.bytes().all(|b| b.is_ascii_graphic()));
    }
}
