//! Harness for the kubekms-server end-to-end tests: the server and the operator as
//! processes of the control plane, each running with its own ServiceAccount's RBAC; a
//! serving certificate signed by the control plane's CA; ServiceAccount tokens minted with
//! the TokenRequest API; and Python (boto3, the AWS CLI) from the venv of
//! `hack/tools/python.sh`.
//!
//! [`ServerWorld::shared`] builds, once per test process, what every test of a file shares:
//! two namespaces (two accounts), one operator binary per namespace (the operator watches
//! one namespace or all, and other test processes may share this control plane), one
//! kubekms-server, a root key they all use, the certificate and a static credentials file.
//! Every process is stopped when the test process exits, however it exits.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};

use crate::process::{is_zombie, proc_starttime, sibling_bin};
use crate::{ControlPlane, repo_root, unique_name};

/// Namespace of the server's and the operator's ServiceAccounts (deploy/rbac).
pub const SYSTEM_NAMESPACE: &str = "kubekms-system";
/// The server's ServiceAccount (deploy/rbac/server.yaml).
pub const SERVER_SERVICE_ACCOUNT: &str = "kubekms-server";
/// The operator's ServiceAccount (deploy/rbac/operator.yaml).
pub const OPERATOR_SERVICE_ACCOUNT: &str = "kubekms-operator";
/// The audience the server reviews web identity tokens for (its `--sts-audience` default).
pub const STS_AUDIENCE: &str = "kubekms";
/// The region of the e2e installation: not the default, so a server or client that ignored
/// `--region` / `AWS_REGION` would fail SigV4's scope check.
pub const REGION: &str = "e2e-west-1";
/// Any role ARN: the server records it and does not evaluate it.
pub const ROLE_ARN: &str = "arn:aws:iam::000000000000:role/kubekms-e2e";
/// Seconds the server caches authorization decisions in these tests (its default).
pub const AUTHZ_CACHE_SECONDS: u64 = 5;
/// How long a process may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a process may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A long-running process of the control plane, started the way the launcher starts its
/// own (own session, log in `<state>/logs/<name>.log`, pid file, so `control-plane.sh
/// down` stops it too), and watched by a small shell watchdog that kills its process group
/// when this test process exits, so nothing outlives the tests (even after SIGKILL).
#[derive(Debug)]
pub struct Supervised {
    cp: ControlPlane,
    name: String,
    pid: i32,
    start_time: Option<String>,
    watchdog: Option<Child>,
}

impl Supervised {
    /// Starts `program args` with `env` added to this process's environment.
    ///
    /// # Errors
    /// When the process cannot be started.
    pub fn start(
        cp: &ControlPlane,
        name: &str,
        env: &[(&str, OsString)],
        program: &Path,
        args: &[OsString],
    ) -> Result<Self> {
        let mut argv: Vec<String> = vec!["env".to_owned()];
        for (key, value) in env {
            argv.push(format!("{key}={}", value.to_string_lossy()));
        }
        argv.push(program.display().to_string());
        argv.extend(args.iter().map(|a| a.to_string_lossy().into_owned()));
        cp.start_process(name, &argv)
            .with_context(|| format!("starting {name}"))?;
        let pid = cp.pid_of(name)?;
        let start_time = proc_starttime(pid);
        // The watchdog: while this test process lives and the child runs, wait; when the
        // test process is gone, TERM the child's process group, then KILL it.
        let watchdog = Command::new("bash")
            .arg("-c")
            .arg(
                r#"while kill -0 "$1" 2>/dev/null; do
                     [ -e "/proc/$2" ] || exit 0
                     sleep 1
                   done
                   kill -TERM -- "-$2" 2>/dev/null || exit 0
                   for _ in 1 2 3 4 5 6 7 8 9 10; do
                     sleep 0.5
                     kill -0 -- "-$2" 2>/dev/null || exit 0
                   done
                   kill -KILL -- "-$2" 2>/dev/null || true"#,
            )
            .arg(format!("watchdog-{name}"))
            .arg(std::process::id().to_string())
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the watchdog")?;
        Ok(Self {
            cp: cp.clone(),
            name: name.to_owned(),
            pid,
            start_time,
            watchdog: Some(watchdog),
        })
    }

    /// The process name (its log is `<state>/logs/<name>.log`).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its pid.
    #[must_use]
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Its log file.
    #[must_use]
    pub fn log_path(&self) -> PathBuf {
        self.cp.log_path(&self.name)
    }

    /// Everything it has logged so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `lines` lines of its log, for failure messages.
    #[must_use]
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Whether the process still runs.
    #[must_use]
    pub fn is_running(&self) -> bool {
        self.start_time.is_some()
            && proc_starttime(self.pid) == self.start_time
            && !is_zombie(self.pid)
    }

    /// SIGTERM to its process group; waits until it is gone (SIGKILL after a timeout).
    ///
    /// # Errors
    /// When it had to be killed.
    pub fn stop(&mut self) -> Result<()> {
        let result = self.signal_and_wait();
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        std::fs::remove_file(self.cp.pid_file(&self.name)).ok();
        result
    }

    fn signal_and_wait(&self) -> Result<()> {
        if !self.is_running() {
            return Ok(());
        }
        let Some(group) = rustix::process::Pid::from_raw(self.pid) else {
            return Ok(());
        };
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::TERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while self.is_running() {
            if Instant::now() > deadline {
                let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
                bail!(
                    "{} (pid {}) still ran {}s after SIGTERM; killed",
                    self.name,
                    self.pid,
                    STOP_TIMEOUT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if self.watchdog.is_some() {
            let _ = self.stop();
        }
    }
}

fn run(cmd: &mut Command) -> Result<std::process::Output> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {shown}"))?;
    ensure!(
        out.status.success(),
        "{shown} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// A TLS serving certificate for `127.0.0.1` and `localhost`, and the CA bundle that
/// clients trust it with (`AWS_CA_BUNDLE`).
#[derive(Debug, Clone)]
pub struct ServingCert {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, mode 0600).
    pub key: PathBuf,
    /// The CA that signed it (PEM).
    pub ca_bundle: PathBuf,
}

impl ServingCert {
    /// A new certificate in `dir`, signed by the control plane's CA (`<state>/pki/ca.key`)
    /// when this harness can read it, else by a CA made for it in `dir` (a control plane
    /// started elsewhere, kind).
    ///
    /// # Errors
    /// When openssl fails.
    pub fn issue(cp: &ControlPlane, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let pki = cp.state_dir.join("pki");
        let (ca_cert, ca_key) = if pki.join("ca.key").is_file() && pki.join("ca.crt").is_file() {
            (pki.join("ca.crt"), pki.join("ca.key"))
        } else {
            let (cert, key) = (dir.join("ca.crt"), dir.join("ca.key"));
            run(Command::new("openssl")
                .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
                .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
                .args(["-subj", "/CN=kubekms-e2e-ca"])
                .args(["-addext", "basicConstraints=critical,CA:TRUE"])
                .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert))?;
            (cert, key)
        };
        let key = dir.join("server.key");
        let csr = dir.join("server.csr");
        let cert = dir.join("server.crt");
        let ext = dir.join("server.ext");
        run(Command::new("openssl")
            .args(["req", "-new", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes"])
            .args(["-subj", "/CN=kubekms-server"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr))?;
        set_mode(&key, 0o600)?;
        std::fs::write(
            &ext,
            "basicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\n\
             subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )?;
        // A random serial instead of -CAcreateserial: nothing is written next to the CA.
        let serial = format!("0x{}", uuid::Uuid::new_v4().simple());
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-set_serial", &serial])
            .arg("-in")
            .arg(&csr)
            .arg("-CA")
            .arg(&ca_cert)
            .arg("-CAkey")
            .arg(&ca_key)
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(&cert))?;
        std::fs::remove_file(&csr).ok();
        std::fs::remove_file(&ext).ok();
        let ca_bundle = dir.join("ca-bundle.pem");
        std::fs::copy(&ca_cert, &ca_bundle)?;
        Ok(Self {
            cert,
            key,
            ca_bundle,
        })
    }
}

impl ControlPlane {
    /// A ServiceAccount token minted with the TokenRequest API (`kubectl create token`)
    /// for `audience`, valid `seconds`.
    ///
    /// # Errors
    /// When kubectl fails (no such ServiceAccount, a duration the server refuses).
    pub fn service_account_token(
        &self,
        namespace: &str,
        name: &str,
        audience: &str,
        seconds: u32,
    ) -> Result<String> {
        let out = self.kubectl([
            "create",
            "token",
            name,
            "-n",
            namespace,
            "--audience",
            audience,
            &format!("--duration={seconds}s"),
        ])?;
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    }

    /// `kubectl apply -f -` of `manifests` (objects or a `List`), server-side.
    ///
    /// # Errors
    /// When kubectl refuses them.
    pub fn apply(&self, manifests: &serde_json::Value) -> Result<()> {
        let items = match manifests {
            serde_json::Value::Array(items) => items.clone(),
            other => vec![other.clone()],
        };
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
        self.kubectl_stdin(
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager",
                "kubekms-e2e",
                "-f",
                "-",
            ],
            &serde_json::to_vec(&list)?,
        )
        .with_context(|| {
            format!(
                "applying {}",
                serde_json::to_string_pretty(&list).unwrap_or_default()
            )
        })?;
        Ok(())
    }
}

/// A plain HTTP/1.1 GET on loopback (the health listener): status code and body.
///
/// # Errors
/// When the connection fails or the answer is not HTTP.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply)?;
    let text = String::from_utf8_lossy(&reply);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("not an HTTP reply from {addr}{path}: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The API and health addresses of a server, from its JSON log line
/// `"message":"kubekms-server serving"` (fields `listen` and `health`).
fn serving_addresses(process: &Supervised) -> Result<(SocketAddr, SocketAddr)> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        for line in process.log().lines() {
            let Ok(line) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if line.pointer("/fields/message").and_then(|m| m.as_str())
                == Some("kubekms-server serving")
            {
                let field = |name: &str| -> Result<SocketAddr> {
                    line.pointer(&format!("/fields/{name}"))
                        .and_then(|v| v.as_str())
                        .ok_or_else(|| anyhow!("no {name} in {line}"))?
                        .parse()
                        .with_context(|| format!("{name} in {line}"))
                };
                return Ok((field("listen")?, field("health")?));
            }
        }
        ensure!(
            process.is_running(),
            "{} exited before serving; its log:\n{}",
            process.name(),
            process.log_tail(60)
        );
        ensure!(
            Instant::now() < deadline,
            "{} logged no serving line in {}s; its log:\n{}",
            process.name(),
            READY_TIMEOUT.as_secs(),
            process.log_tail(60)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Settings of one kubekms-server process.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The root key file (the operator's).
    pub root_key: PathBuf,
    /// TLS certificate.
    pub cert: ServingCert,
    /// `--static-credentials`.
    pub static_credentials: Option<PathBuf>,
    /// `--authz-cache-seconds`.
    pub authz_cache_seconds: u64,
    /// `RUST_LOG` of the process.
    pub rust_log: String,
    /// Folder for its kubeconfig and audit log.
    pub dir: PathBuf,
}

/// One kubekms-server process, running as `kubekms-system/kubekms-server`.
#[derive(Debug)]
pub struct KmsServer {
    /// The process.
    pub process: Supervised,
    /// `https://127.0.0.1:<port>`: KMS and STS.
    pub endpoint: String,
    /// The health listener (/healthz, /readyz, /metrics), plain HTTP.
    pub health: SocketAddr,
    /// The audit log file.
    pub audit_log: PathBuf,
}

impl KmsServer {
    /// Starts the server binary (`KUBEKMS_SERVER_BIN`, or built by
    /// [`crate::process::build_workspace_bins`]) as its ServiceAccount and waits for
    /// /readyz (its keyring synced).
    ///
    /// # Errors
    /// When it does not start or become ready; the message holds its log.
    pub fn start(cp: &ControlPlane, name: &str, options: &ServerOptions) -> Result<Self> {
        let bin = sibling_bin("KUBEKMS_SERVER_BIN", "kubekms-server")?;
        std::fs::create_dir_all(&options.dir)?;
        let kubeconfig = options.dir.join(format!("{name}.kubeconfig"));
        cp.write_service_account_kubeconfig(SYSTEM_NAMESPACE, SERVER_SERVICE_ACCOUNT, &kubeconfig)?;
        let audit_log = options.dir.join(format!("{name}-audit.log"));
        let mut args: Vec<OsString> = vec![
            "--root-key".into(),
            options.root_key.clone().into(),
            "--kubeconfig".into(),
            kubeconfig.into(),
            // Port 0: the bound addresses are in the "kubekms-server serving" log line.
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--tls-cert".into(),
            options.cert.cert.clone().into(),
            "--tls-key".into(),
            options.cert.key.clone().into(),
            "--health-addr".into(),
            "127.0.0.1:0".into(),
            "--region".into(),
            REGION.into(),
            "--sts-audience".into(),
            STS_AUDIENCE.into(),
            "--authz-cache-seconds".into(),
            options.authz_cache_seconds.to_string().into(),
            "--audit-log".into(),
            audit_log.clone().into(),
            "--log-format".into(),
            "json".into(),
        ];
        if let Some(file) = &options.static_credentials {
            args.push("--static-credentials".into());
            args.push(file.clone().into());
        }
        let process = Supervised::start(
            cp,
            name,
            &[("RUST_LOG", options.rust_log.clone().into())],
            &bin,
            &args,
        )?;
        let (listen, health) = serving_addresses(&process)?;
        let server = Self {
            process,
            endpoint: format!("https://{listen}"),
            health,
            audit_log,
        };
        server.wait_ready()?;
        Ok(server)
    }

    /// Waits until /readyz answers 200.
    ///
    /// # Errors
    /// When the process exits or is not ready within a timeout.
    pub fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok((200, _)) = http_get(self.health, "/readyz") {
                return Ok(());
            }
            ensure!(
                self.process.is_running(),
                "{} exited before it was ready; its log:\n{}",
                self.process.name(),
                self.process.log_tail(60)
            );
            ensure!(
                Instant::now() < deadline,
                "{} not ready {}s after its start; its log:\n{}",
                self.process.name(),
                READY_TIMEOUT.as_secs(),
                self.process.log_tail(60)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The status of GET /healthz.
    ///
    /// # Errors
    /// When the health listener does not answer.
    pub fn healthz(&self) -> Result<u16> {
        Ok(http_get(self.health, "/healthz")?.0)
    }

    /// The audit log so far.
    #[must_use]
    pub fn audit(&self) -> String {
        std::fs::read(&self.audit_log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The audit records so far, parsed (a line that is not JSON fails).
    ///
    /// # Errors
    /// When a line is not a JSON object.
    pub fn audit_records(&self) -> Result<Vec<serde_json::Value>> {
        self.audit()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).with_context(|| format!("audit line {l:?}")))
            .collect()
    }

    /// Waits until the audit log holds a record that satisfies `wanted`; returns it.
    ///
    /// # Errors
    /// When there is none after a timeout.
    pub fn wait_record(
        &self,
        what: &str,
        wanted: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(found) = self.audit_records()?.into_iter().find(&wanted) {
                return Ok(found);
            }
            ensure!(
                Instant::now() < deadline,
                "no audit record of {what} in {} after 30 s",
                self.audit_log.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the audit log holds a record of every request id of `ids` (records are
    /// written by a thread of their own), and returns those records.
    ///
    /// # Errors
    /// When some are still missing after a timeout.
    pub fn wait_audited(&self, ids: &[String]) -> Result<Vec<serde_json::Value>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let records = self.audit_records()?;
            let found: Vec<serde_json::Value> = records
                .into_iter()
                .filter(|r| {
                    r.get("requestId")
                        .and_then(|v| v.as_str())
                        .is_some_and(|id| ids.iter().any(|x| x == id))
                })
                .collect();
            let missing: Vec<&String> = ids
                .iter()
                .filter(|id| {
                    !found
                        .iter()
                        .any(|r| r.get("requestId").and_then(|v| v.as_str()) == Some(id))
                })
                .collect();
            if missing.is_empty() {
                return Ok(found);
            }
            ensure!(
                Instant::now() < deadline,
                "{} request ids not in the audit log {} after 30 s: {missing:?}",
                missing.len(),
                self.audit_log.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// One operator binary over one namespace, running as `kubekms-system/kubekms-operator`.
///
/// # Errors
/// When it cannot be started.
pub fn start_operator(
    cp: &ControlPlane,
    name: &str,
    namespace: &str,
    root_key: &Path,
    dir: &Path,
) -> Result<Supervised> {
    let bin = sibling_bin("KUBEKMS_OPERATOR_BIN", "kubekms-operator")?;
    let kubeconfig = dir.join(format!("{name}.kubeconfig"));
    cp.write_service_account_kubeconfig(SYSTEM_NAMESPACE, OPERATOR_SERVICE_ACCOUNT, &kubeconfig)?;
    let args: Vec<OsString> = [
        "--root-key".into(),
        root_key.as_os_str().to_owned(),
        "--namespace".into(),
        namespace.into(),
        "--lease-namespace".into(),
        SYSTEM_NAMESPACE.into(),
        "--lease-name".into(),
        format!("kubekms-operator-{namespace}").into(),
        "--identity".into(),
        name.into(),
        "--metrics-addr".into(),
        "127.0.0.1:0".into(),
        "--region".into(),
        REGION.into(),
        "--log-format".into(),
        "json".into(),
    ]
    .into();
    Supervised::start(
        cp,
        name,
        &[
            ("KUBECONFIG", kubeconfig.into()),
            ("RUST_LOG", "debug,kube=info,hyper=info,tower=info".into()),
        ],
        &bin,
        &args,
    )
}

/// The venv bin folder of `hack/tools/python.sh --print-dir` (made once per machine).
///
/// # Errors
/// When the venv cannot be made.
pub fn python_bin_dir() -> Result<PathBuf> {
    static DIR: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = Command::new(repo_root().join("hack/tools/python.sh"))
            .arg("--print-dir")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running hack/tools/python.sh: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "hack/tools/python.sh --print-dir failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    })
    .clone()
    .map_err(|e| anyhow!("{e}"))
}

/// How a Python script or the AWS CLI authenticates: the environment of a pod (web
/// identity), static credentials, or none at all.
#[derive(Debug, Clone)]
pub enum Identity {
    /// `AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN` with STS at `sts_endpoint`.
    WebIdentity {
        /// The token file.
        token_file: PathBuf,
        /// Where the SDK exchanges it.
        sts_endpoint: String,
    },
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
    Static {
        /// The access key id.
        access_key_id: String,
        /// The secret.
        secret_access_key: String,
    },
    /// No credentials in the environment.
    Anonymous,
}

/// The environment of an AWS client (boto3, the AWS CLI, the Rust SDK) that talks to
/// kubekms-server at `endpoint` as `identity`: what a pod sets, and nothing inherited
/// from this process (no `~/.aws`, no instance metadata).
#[must_use]
pub fn aws_env(
    endpoint: &str,
    identity: &Identity,
    ca_bundle: &Path,
    scratch: &Path,
) -> Vec<(String, OsString)> {
    let mut env: Vec<(String, OsString)> = vec![
        ("AWS_ENDPOINT_URL_KMS".into(), endpoint.into()),
        ("AWS_REGION".into(), REGION.into()),
        // botocore reads only AWS_DEFAULT_REGION.
        ("AWS_DEFAULT_REGION".into(), REGION.into()),
        ("AWS_CA_BUNDLE".into(), ca_bundle.into()),
        (
            "AWS_CONFIG_FILE".into(),
            scratch.join("no-aws-config").into(),
        ),
        (
            "AWS_SHARED_CREDENTIALS_FILE".into(),
            scratch.join("no-aws-credentials").into(),
        ),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ("AWS_PAGER".into(), "".into()),
        // The AWS CLI caches web-identity sessions in ~/.aws/cli/cache: never the home of
        // the person running the tests.
        ("HOME".into(), scratch.join("home").into()),
    ];
    match identity {
        Identity::WebIdentity {
            token_file,
            sts_endpoint,
        } => {
            env.push(("AWS_WEB_IDENTITY_TOKEN_FILE".into(), token_file.into()));
            env.push(("AWS_ROLE_ARN".into(), ROLE_ARN.into()));
            // One session name per identity: the CLI's session cache is keyed by it.
            let session_name: String = token_file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || "=,.@-_".contains(*c))
                .take(64)
                .collect();
            env.push(("AWS_ROLE_SESSION_NAME".into(), session_name.into()));
            env.push(("AWS_ENDPOINT_URL_STS".into(), sts_endpoint.into()));
        }
        Identity::Static {
            access_key_id,
            secret_access_key,
        } => {
            env.push(("AWS_ACCESS_KEY_ID".into(), access_key_id.into()));
            env.push(("AWS_SECRET_ACCESS_KEY".into(), secret_access_key.into()));
        }
        Identity::Anonymous => {}
    }
    env
}

/// Removes every `AWS_*` variable a developer's shell may hold from `cmd`.
pub fn clear_aws_env(cmd: &mut Command) {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("AWS_") {
            cmd.env_remove(name);
        }
    }
}

/// Runs `e2e/tests/server/<script>` with the venv's Python, `input` as JSON on stdin, and
/// returns the JSON it prints on stdout. A non-zero exit (a traceback) is an error that
/// shows both outputs.
///
/// # Errors
/// When Python fails or prints something that is not JSON.
pub fn run_python(
    script: &str,
    env: &[(String, OsString)],
    input: &serde_json::Value,
) -> Result<serde_json::Value> {
    let python = python_bin_dir()?.join("python");
    let path = repo_root().join("e2e/tests/server").join(script);
    let mut cmd = Command::new(&python);
    clear_aws_env(&mut cmd);
    cmd.arg(&path)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", path.display()))?;
    let input_bytes = serde_json::to_vec(input)?;
    let mut stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
    // Written from a thread: a script that prints much before it reads would block both.
    let writer = std::thread::spawn(move || stdin.write_all(&input_bytes));
    let out = child.wait_with_output()?;
    let _ = writer.join();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "{script} failed ({}) after {:.1}s:\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status,
        started.elapsed().as_secs_f64()
    );
    eprintln!("[e2e] {script}: {:.1}s", started.elapsed().as_secs_f64());
    serde_json::from_str(stdout.trim()).with_context(|| {
        format!("{script} printed no JSON:\n--- stdout\n{stdout}\n--- stderr\n{stderr}")
    })
}

/// Runs the AWS CLI (awscli v1 from the venv) with `args` and `env`; returns exit status,
/// stdout and stderr. Nothing inherited from this process's `AWS_*` variables.
///
/// # Errors
/// When it cannot be started.
pub fn run_aws_cli(
    args: &[&str],
    env: &[(String, OsString)],
) -> Result<(std::process::ExitStatus, String, String)> {
    let aws = python_bin_dir()?.join("aws");
    let mut cmd = Command::new(&aws);
    clear_aws_env(&mut cmd);
    let out = cmd
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {}", aws.display()))?;
    Ok((
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The files of a kubekms-server whose client acts as a cluster-admin user, made by
/// [`admin_client_files`].
#[derive(Debug, Clone)]
pub struct AdminClientFiles {
    /// The client's credential.
    pub credential: StaticCredential,
    /// The server's `--static-credentials` file, holding `credential` only.
    pub credentials: PathBuf,
    /// The server's certificate.
    pub cert: ServingCert,
}

/// Applies deploy/rbac (the server's ServiceAccount and its RBAC) to `cp`, binds the
/// Kubernetes user `user` to cluster-admin (ClusterRoleBinding `binding`), and writes into
/// `dir` (made if needed) a static credential of `user` in the account `account`
/// (`static-credentials.json`) and a serving certificate signed by the control plane's CA
/// (`tls/`).
///
/// # Errors
/// When kubectl, a file or the certificate fails.
pub fn admin_client_files(
    cp: &ControlPlane,
    dir: &Path,
    binding: &str,
    user: &str,
    account: &str,
) -> Result<AdminClientFiles> {
    let rbac = repo_root().join("deploy/rbac");
    cp.kubectl(["apply".as_ref(), "-f".as_ref(), rbac.as_os_str()])?;
    cp.apply(&serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": binding},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }))?;
    std::fs::create_dir_all(dir)?;
    let credential = StaticCredential::new(user, account);
    let credentials = dir.join("static-credentials.json");
    write_static_credentials(&credentials, std::slice::from_ref(&credential))?;
    let cert = ServingCert::issue(cp, &dir.join("tls"))?;
    Ok(AdminClientFiles {
        credential,
        credentials,
        cert,
    })
}

/// The HTTPS client of an AWS SDK that trusts `ca_pem` only (the CA of a [`ServingCert`]).
///
/// # Errors
/// When `ca_pem` is not a PEM certificate.
pub fn https_client_trusting(ca_pem: Vec<u8>) -> Result<aws_sdk_kms::config::SharedHttpClient> {
    use aws_smithy_http_client::tls::{self, TlsContext, TrustStore};
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::AwsLc,
        ))
        .tls_context(
            TlsContext::builder()
                .with_trust_store(TrustStore::empty().with_pem_certificate(ca_pem))
                .build()?,
        )
        .build_https())
}

/// An AWS SDK configuration for kubekms-server at `endpoint`: TLS that trusts `ca_pem`
/// only (the CA of a [`ServingCert`]), region [`REGION`], requests signed with
/// `credential` (named `provider` in the SDK's logs). Callers add retry or timeout
/// settings and build it.
///
/// # Errors
/// When `ca_pem` is not a PEM certificate.
pub fn sdk_config(
    endpoint: &str,
    ca_pem: Vec<u8>,
    credential: &StaticCredential,
    provider: &'static str,
) -> Result<aws_sdk_kms::config::Builder> {
    Ok(aws_sdk_kms::Config::builder()
        .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
        .http_client(https_client_trusting(ca_pem)?)
        .endpoint_url(endpoint)
        .region(aws_sdk_kms::config::Region::new(REGION))
        .credentials_provider(aws_credential_types::Credentials::new(
            credential.access_key_id.clone(),
            credential.secret_access_key.clone(),
            None,
            None,
            provider,
        )))
}

/// A static credential of the server's `--static-credentials` file.
#[derive(Debug, Clone)]
pub struct StaticCredential {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// The Kubernetes user it acts as.
    pub user: String,
    /// Its account (namespace).
    pub namespace: String,
}

impl StaticCredential {
    /// A new random credential for `user` in `namespace`.
    #[must_use]
    pub fn new(user: &str, namespace: &str) -> Self {
        let id = uuid::Uuid::new_v4()
            .simple()
            .to_string()
            .to_ascii_uppercase();
        Self {
            access_key_id: format!("AKIAE2E{}", &id[..16]),
            secret_access_key: format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            ),
            user: user.to_owned(),
            namespace: namespace.to_owned(),
        }
    }

    /// As [`Identity::Static`].
    #[must_use]
    pub fn identity(&self) -> Identity {
        Identity::Static {
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
        }
    }
}

/// Writes the server's static credentials file (mode 0400): swapped in by a rename, so the
/// server never reads half a file.
///
/// # Errors
/// On I/O errors.
pub fn write_static_credentials(path: &Path, credentials: &[StaticCredential]) -> Result<()> {
    let list: Vec<serde_json::Value> = credentials
        .iter()
        .map(|c| {
            serde_json::json!({
                "accessKeyId": c.access_key_id,
                "secretAccessKey": c.secret_access_key,
                "user": c.user,
                "namespace": c.namespace,
            })
        })
        .collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(&serde_json::json!({ "credentials": list }))?,
    )?;
    set_mode(&tmp, 0o400)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// What the tests of one file share: see the module documentation.
#[derive(Debug)]
pub struct ServerWorld {
    /// The control plane.
    pub cp: &'static ControlPlane,
    /// Files of this world (certificates, root key, tokens, kubeconfigs, audit logs).
    pub dir: PathBuf,
    /// The root key every process here uses.
    pub root_key: PathBuf,
    /// The serving certificate and its CA bundle.
    pub cert: ServingCert,
    /// The main account.
    pub namespace: String,
    /// A second account.
    pub other_namespace: String,
    /// The operators (one per namespace).
    pub operators: Vec<Supervised>,
    /// The server.
    pub server: KmsServer,
    /// The server's static credentials file.
    pub static_credentials: PathBuf,
    /// The credentials in it when the server started.
    pub initial_credentials: Vec<StaticCredential>,
}

static WORLD: OnceLock<std::result::Result<ServerWorld, String>> = OnceLock::new();

impl ServerWorld {
    /// The world of this test process, made on first use.
    ///
    /// # Errors
    /// When any part of it cannot be started.
    pub fn shared() -> Result<&'static ServerWorld> {
        WORLD
            .get_or_init(|| Self::build().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow!("no kubekms-server world for the e2e tests: {e}"))
    }

    fn build() -> Result<Self> {
        let started = Instant::now();
        let cp = ControlPlane::shared()?;
        // Build the three binaries before anything else (one cargo run).
        sibling_bin("KUBEKMS_SERVER_BIN", "kubekms-server")?;
        python_bin_dir()?;
        cp.apply_crds()?;
        let rbac = repo_root().join("deploy/rbac");
        cp.kubectl(["apply".as_ref(), "-f".as_ref(), rbac.as_os_str()])?;
        // Inside the control plane's state folder: kept with its logs for a look after a
        // failure, and removed with it (hack/test.sh removes it after a passing run).
        let dir = cp.state_dir.join(unique_name("kubekms-server-e2e"));
        std::fs::create_dir_all(&dir)?;
        set_mode(&dir, 0o700)?;
        let namespace = unique_name("e2e-srv");
        let other_namespace = unique_name("e2e-srv-other");
        for ns in [&namespace, &other_namespace] {
            cp.apply(&serde_json::json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "labels": {"kubekms.io/e2e": "true"}},
            }))?;
        }
        let root_key = dir.join("root.key");
        // 32 random bytes, mode 0600: what `--init-root-key` makes.
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        std::fs::write(&root_key, bytes)?;
        set_mode(&root_key, 0o600)?;
        let mut operators = Vec::new();
        for (i, ns) in [&namespace, &other_namespace].into_iter().enumerate() {
            operators.push(start_operator(
                cp,
                &unique_name(&format!("kubekms-operator-{i}")),
                ns,
                &root_key,
                &dir,
            )?);
        }
        let cert = ServingCert::issue(cp, &dir.join("tls"))?;
        let static_credentials = dir.join("static-credentials.yaml");
        let initial_credentials = vec![StaticCredential::new("e2e-outsider", &namespace)];
        write_static_credentials(&static_credentials, &initial_credentials)?;
        let server = KmsServer::start(
            cp,
            &unique_name("kubekms-server"),
            &ServerOptions {
                root_key: root_key.clone(),
                cert: cert.clone(),
                static_credentials: Some(static_credentials.clone()),
                authz_cache_seconds: AUTHZ_CACHE_SECONDS,
                rust_log: "trace,hyper=debug,h2=debug,rustls=debug,tower=debug,kube=debug"
                    .to_owned(),
                dir: dir.clone(),
            },
        )?;
        eprintln!(
            "[e2e] kubekms-server world ready in {:.1}s: server {} (log {}), namespaces {namespace} and {other_namespace}, files in {}",
            started.elapsed().as_secs_f64(),
            server.endpoint,
            server.process.log_path().display(),
            dir.display()
        );
        Ok(Self {
            cp,
            dir,
            root_key,
            cert,
            namespace,
            other_namespace,
            operators,
            server,
            static_credentials,
            initial_credentials,
        })
    }

    /// A ServiceAccount in `namespace` with a fresh token for the server's audience written
    /// to a file: the environment of a pod running as it, with STS and KMS at `endpoint`.
    ///
    /// # Errors
    /// When the ServiceAccount or token cannot be made.
    pub fn pod_identity(&self, namespace: &str, service_account: &str) -> Result<PodIdentity> {
        self.cp.apply(&serde_json::json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": service_account, "namespace": namespace},
        }))?;
        let token =
            self.cp
                .service_account_token(namespace, service_account, STS_AUDIENCE, 3600)?;
        let token_file = self
            .dir
            .join(format!("token-{namespace}-{service_account}"));
        std::fs::write(&token_file, &token)?;
        set_mode(&token_file, 0o600)?;
        Ok(PodIdentity {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            token,
            token_file,
        })
    }

    /// The environment of a client as `identity`, against the world's server.
    #[must_use]
    pub fn env(&self, identity: &Identity) -> Vec<(String, OsString)> {
        aws_env(
            &self.server.endpoint,
            identity,
            &self.cert.ca_bundle,
            &self.dir,
        )
    }

    /// A Role in `namespace` allowing `verbs` on `kmskeys` (only `resource_names` when
    /// some are given), bound to `subject` (a ServiceAccount `ns/name`, or a user).
    ///
    /// # Errors
    /// When kubectl refuses it.
    pub fn grant_rbac(
        &self,
        namespace: &str,
        role: &str,
        verbs: &[&str],
        resource_names: &[&str],
        subject: &Subject,
    ) -> Result<()> {
        let mut rule = serde_json::json!({
            "apiGroups": ["kubekms.io"], "resources": ["kmskeys"], "verbs": verbs,
        });
        if !resource_names.is_empty() {
            rule["resourceNames"] = serde_json::json!(resource_names);
        }
        let subject = match subject {
            Subject::ServiceAccount { namespace, name } => serde_json::json!({
                "kind": "ServiceAccount", "name": name, "namespace": namespace,
            }),
            Subject::User(name) => serde_json::json!({
                "kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": name,
            }),
        };
        self.cp.apply(&serde_json::json!([
            {
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": role, "namespace": namespace},
                "rules": [rule],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": role, "namespace": namespace},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
                "subjects": [subject],
            },
        ]))
    }

    /// Every process log of this world (server and operators), by process name.
    #[must_use]
    pub fn process_logs(&self) -> BTreeMap<String, String> {
        std::iter::once(&self.server.process)
            .chain(self.operators.iter())
            .map(|p| (p.name().to_owned(), p.log()))
            .collect()
    }
}

/// A ServiceAccount with a token file, as a pod has it.
#[derive(Debug, Clone)]
pub struct PodIdentity {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub service_account: String,
    /// The token (audience [`STS_AUDIENCE`]).
    pub token: String,
    /// The file holding it.
    pub token_file: PathBuf,
}

impl PodIdentity {
    /// Its Kubernetes username.
    #[must_use]
    pub fn username(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace, self.service_account
        )
    }

    /// Web identity with STS at `sts_endpoint`.
    #[must_use]
    pub fn web_identity(&self, sts_endpoint: &str) -> Identity {
        Identity::WebIdentity {
            token_file: self.token_file.clone(),
            sts_endpoint: sts_endpoint.to_owned(),
        }
    }

    /// As an RBAC subject.
    #[must_use]
    pub fn subject(&self) -> Subject {
        Subject::ServiceAccount {
            namespace: self.namespace.clone(),
            name: self.service_account.clone(),
        }
    }
}

/// Who a RoleBinding binds.
#[derive(Debug, Clone)]
pub enum Subject {
    /// A ServiceAccount.
    ServiceAccount {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// A user.
    User(String),
}

/// A key the operator made, as the tests address it.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    /// The KmsKey's name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// `status.keyId`.
    pub key_id: String,
    /// `status.arn`.
    pub arn: String,
    /// `spec.keySpec`.
    pub spec: String,
    /// `status.keyUsage`.
    pub usage: String,
}

/// How long the operator may take to make a key (RSA-4096 generation included).
const KEY_TIMEOUT: Duration = Duration::from_secs(120);

impl ServerWorld {
    /// The KmsKeys of `namespace`, by name (`kubectl get kmskeys -o json`).
    ///
    /// # Errors
    /// When kubectl fails.
    pub fn kms_keys(&self, namespace: &str) -> Result<BTreeMap<String, serde_json::Value>> {
        let out = self
            .cp
            .kubectl(["get", "kmskeys", "-n", namespace, "-o", "json"])?;
        let list: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Ok(list
            .get("items")
            .and_then(|i| i.as_array())
            .into_iter()
            .flatten()
            .filter_map(|item| {
                let name = item.pointer("/metadata/name")?.as_str()?.to_owned();
                Some((name, item.clone()))
            })
            .collect())
    }

    /// Polls the KmsKeys of `namespace` until `ready` holds for every one of `names`.
    ///
    /// # Errors
    /// After a timeout, naming the keys that are not there and their status.
    pub fn wait_keys(
        &self,
        namespace: &str,
        names: &[&str],
        what: &str,
        ready: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<BTreeMap<String, serde_json::Value>> {
        let deadline = Instant::now() + KEY_TIMEOUT;
        loop {
            let keys = self.kms_keys(namespace)?;
            let missing: Vec<String> = names
                .iter()
                .filter(|n| !keys.get(**n).is_some_and(&ready))
                .map(|n| {
                    let status = keys.get(*n).and_then(|k| k.get("status"));
                    format!("{n}: {}", status.map(|s| s.to_string()).unwrap_or_default())
                })
                .collect();
            if missing.is_empty() {
                return Ok(keys
                    .into_iter()
                    .filter(|(n, _)| names.contains(&n.as_str()))
                    .collect());
            }
            ensure!(
                Instant::now() < deadline,
                "{} keys of {namespace} not {what} after {}s:\n{}\noperator logs: {}",
                missing.len(),
                KEY_TIMEOUT.as_secs(),
                missing.join("\n"),
                self.operators
                    .iter()
                    .map(|o| o.log_path().display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Creates KmsKeys (name → spec) in `namespace` and waits until the operator has made
    /// each one and it is Enabled.
    ///
    /// # Errors
    /// When they are refused or not Enabled in time.
    pub fn create_keys(
        &self,
        namespace: &str,
        keys: &[(&str, serde_json::Value)],
    ) -> Result<BTreeMap<String, KeyInfo>> {
        let manifests: Vec<serde_json::Value> = keys
            .iter()
            .map(|(name, spec)| {
                serde_json::json!({
                    "apiVersion": "kubekms.io/v1alpha1", "kind": "KmsKey",
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": spec,
                })
            })
            .collect();
        self.cp.apply(&serde_json::Value::Array(manifests))?;
        let names: Vec<&str> = keys.iter().map(|(n, _)| *n).collect();
        let made = self.wait_keys(namespace, &names, "Enabled", |k| {
            k.pointer("/status/keyState").and_then(|s| s.as_str()) == Some("Enabled")
                && k.pointer("/status/arn").is_some()
        })?;
        made.into_iter()
            .map(|(name, key)| {
                let text = |p: &str| {
                    key.pointer(p)
                        .and_then(|v| v.as_str())
                        .map(str::to_owned)
                        .ok_or_else(|| anyhow!("KmsKey {namespace}/{name} has no {p}: {key}"))
                };
                Ok((
                    name.clone(),
                    KeyInfo {
                        namespace: namespace.to_owned(),
                        key_id: text("/status/keyId")?,
                        arn: text("/status/arn")?,
                        spec: text("/spec/keySpec")?,
                        usage: text("/status/keyUsage")?,
                        name,
                    },
                ))
            })
            .collect()
    }

    /// `kubectl patch kmskey NAME --type merge -p {"spec": spec}`.
    ///
    /// # Errors
    /// When the patch is refused.
    pub fn patch_key_spec(
        &self,
        namespace: &str,
        name: &str,
        spec: &serde_json::Value,
    ) -> Result<()> {
        self.cp.kubectl([
            "patch",
            "kmskey",
            name,
            "-n",
            namespace,
            "--type",
            "merge",
            "-p",
            &serde_json::json!({ "spec": spec }).to_string(),
        ])?;
        Ok(())
    }

    /// Waits for one KmsKey's status to satisfy `ready`; returns the KmsKey.
    ///
    /// # Errors
    /// After a timeout.
    pub fn wait_key(
        &self,
        namespace: &str,
        name: &str,
        what: &str,
        ready: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let mut keys = self.wait_keys(namespace, &[name], what, ready)?;
        keys.remove(name)
            .ok_or_else(|| anyhow!("KmsKey {namespace}/{name} vanished"))
    }

    /// Waits until `kind/name` in `namespace` has a condition of type or reason `reason`
    /// with status True; returns the object.
    ///
    /// # Errors
    /// After a timeout.
    pub fn wait_condition(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        reason: &str,
    ) -> Result<serde_json::Value> {
        let deadline = Instant::now() + KEY_TIMEOUT;
        loop {
            let out = self
                .cp
                .kubectl(["get", kind, name, "-n", namespace, "-o", "json"])?;
            let object: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            let found = object
                .pointer("/status/conditions")
                .and_then(|c| c.as_array())
                .is_some_and(|c| {
                    c.iter().any(|c| {
                        (c.get("reason").and_then(|r| r.as_str()) == Some(reason)
                            || c.get("type").and_then(|r| r.as_str()) == Some(reason))
                            && c.get("status").and_then(|s| s.as_str()) == Some("True")
                    })
                });
            if found {
                return Ok(object);
            }
            ensure!(
                Instant::now() < deadline,
                "{kind} {namespace}/{name} has no condition {reason} after {}s: {}",
                KEY_TIMEOUT.as_secs(),
                object.get("status").cloned().unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// The outcomes a script under `e2e/tests/server/` prints: `{"results": {step: outcome}}`
/// where an outcome is `{"ok": reply, "status", "requestId"}` or `{"error": code,
/// "message", "status", "requestId"}`; blobs are `{"b64": ...}`.
#[derive(Debug, Clone)]
pub struct Outcomes {
    /// Everything the script printed.
    pub json: serde_json::Value,
}

impl Outcomes {
    /// Wraps a script's output.
    #[must_use]
    pub fn new(json: serde_json::Value) -> Self {
        Self { json }
    }

    /// One step's outcome.
    ///
    /// # Errors
    /// When there is no such step.
    pub fn step(&self, name: &str) -> Result<&serde_json::Value> {
        self.json
            .pointer("/results")
            .and_then(|r| r.get(name))
            .ok_or_else(|| anyhow!("no step {name:?} in the script's results"))
    }

    /// The reply of a step that must have succeeded.
    ///
    /// # Errors
    /// When it failed (the error code and message are in the error).
    pub fn ok(&self, name: &str) -> Result<&serde_json::Value> {
        let step = self.step(name)?;
        step.get("ok").ok_or_else(|| {
            anyhow!(
                "{name}: expected success, got {} ({}): {}",
                step.get("error").unwrap_or(&serde_json::Value::Null),
                step.get("status").unwrap_or(&serde_json::Value::Null),
                step.get("message").unwrap_or(&serde_json::Value::Null)
            )
        })
    }

    /// The message of a step that must have failed with `code`.
    ///
    /// # Errors
    /// When it succeeded or failed otherwise.
    pub fn error(&self, name: &str, code: &str) -> Result<String> {
        let step = self.step(name)?;
        let got = step.get("error").and_then(|c| c.as_str());
        ensure!(
            got == Some(code),
            "{name}: expected {code}, got {}",
            match got {
                Some(other) => format!(
                    "{other} ({}): {}",
                    step.get("status").unwrap_or(&serde_json::Value::Null),
                    step.get("message").unwrap_or(&serde_json::Value::Null)
                ),
                None => format!("success: {}", step.get("ok").unwrap_or(step)),
            }
        );
        Ok(step
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or_default()
            .to_owned())
    }

    /// The HTTP status of a step.
    ///
    /// # Errors
    /// When there is no such step.
    pub fn status(&self, name: &str) -> Result<u64> {
        Ok(self
            .step(name)?
            .get("status")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or_default())
    }

    /// A text field of a successful step's reply.
    ///
    /// # Errors
    /// When the step failed or the field is missing.
    pub fn text(&self, name: &str, field: &str) -> Result<String> {
        let reply = self.ok(name)?;
        reply
            .pointer(field)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("{name}: no text at {field} in {reply}"))
    }

    /// A blob field (`{"b64": ...}`) of a successful step's reply.
    ///
    /// # Errors
    /// When the step failed or the field is missing.
    pub fn blob(&self, name: &str, field: &str) -> Result<Vec<u8>> {
        let reply = self.ok(name)?;
        let value = reply
            .pointer(field)
            .ok_or_else(|| anyhow!("{name}: no {field} in {reply}"))?;
        blob(value).with_context(|| format!("{name}: {field}"))
    }

    /// Every request id the server answered (successes and AWS errors).
    #[must_use]
    pub fn request_ids(&self) -> Vec<String> {
        self.json
            .pointer("/results")
            .and_then(|r| r.as_object())
            .into_iter()
            .flatten()
            .filter_map(|(_, o)| o.get("requestId").and_then(|v| v.as_str()))
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// The bytes of a `{"b64": ...}` value.
///
/// # Errors
/// When it is not one.
pub fn blob(value: &serde_json::Value) -> Result<Vec<u8>> {
    use base64::Engine as _;
    let text = value
        .get("b64")
        .and_then(|v| v.as_str())
        .ok_or_else(|| anyhow!("not a blob: {value}"))?;
    Ok(base64::engine::general_purpose::STANDARD.decode(text)?)
}

/// `{"b64": ...}` of `bytes`, as the scripts take blobs.
#[must_use]
pub fn b64(bytes: &[u8]) -> serde_json::Value {
    use base64::Engine as _;
    serde_json::json!({ "b64": base64::engine::general_purpose::STANDARD.encode(bytes) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_tell_success_from_each_error() -> Result<()> {
        let out = Outcomes::new(serde_json::json!({"results": {
            "encrypt": {"ok": {"KeyId": "arn:k", "CiphertextBlob": {"b64": "AQID"}},
                        "status": 200, "requestId": "r1"},
            "denied": {"error": "AccessDeniedException", "message": "User: u is not authorized",
                       "status": 400, "requestId": "r2"},
        }}));
        assert_eq!(out.text("encrypt", "/KeyId")?, "arn:k");
        assert_eq!(out.blob("encrypt", "/CiphertextBlob")?, vec![1, 2, 3]);
        assert!(
            out.ok("denied")
                .is_err_and(|e| e.to_string().contains("AccessDenied"))
        );
        assert_eq!(
            out.error("denied", "AccessDeniedException")?,
            "User: u is not authorized"
        );
        assert!(out.error("denied", "NotFoundException").is_err());
        assert!(out.error("encrypt", "AccessDeniedException").is_err());
        assert!(out.step("absent").is_err());
        assert_eq!(out.status("denied")?, 400);
        let mut ids = out.request_ids();
        ids.sort();
        assert_eq!(ids, ["r1", "r2"]);
        assert_eq!(blob(&b64(b"\x00\xffxyz"))?, b"\x00\xffxyz");
        assert!(blob(&serde_json::json!("AQID")).is_err());
        Ok(())
    }

    #[test]
    fn a_pods_environment_and_nothing_of_the_developers() {
        let identity = Identity::WebIdentity {
            token_file: PathBuf::from(format!("/x/token-ns-{}", "a".repeat(80))),
            sts_endpoint: "https://127.0.0.1:1".to_owned(),
        };
        let env: BTreeMap<String, String> = aws_env(
            "https://127.0.0.1:2",
            &identity,
            Path::new("/ca.pem"),
            Path::new("/scratch"),
        )
        .into_iter()
        .map(|(k, v)| (k, v.to_string_lossy().into_owned()))
        .collect();
        assert_eq!(env["AWS_ENDPOINT_URL_STS"], "https://127.0.0.1:1");
        assert_eq!(env["AWS_ENDPOINT_URL_KMS"], "https://127.0.0.1:2");
        assert_eq!(env["AWS_REGION"], REGION);
        assert_eq!(env["AWS_DEFAULT_REGION"], REGION);
        assert_eq!(env["HOME"], "/scratch/home");
        assert_eq!(env["AWS_CONFIG_FILE"], "/scratch/no-aws-config");
        let session = &env["AWS_ROLE_SESSION_NAME"];
        assert!(
            session.len() <= 64 && session.starts_with("token-ns-"),
            "{session}"
        );
        assert!(!env.contains_key("AWS_ACCESS_KEY_ID"));
        let static_env: BTreeMap<String, OsString> = aws_env(
            "https://e",
            &StaticCredential::new("u", "ns").identity(),
            Path::new("/ca.pem"),
            Path::new("/s"),
        )
        .into_iter()
        .collect();
        assert!(static_env.contains_key("AWS_SECRET_ACCESS_KEY"));
        assert!(!static_env.contains_key("AWS_WEB_IDENTITY_TOKEN_FILE"));
    }

    #[test]
    fn static_credentials_have_the_shape_the_server_accepts() {
        let c = StaticCredential::new("alice", "team-a");
        assert!(
            c.access_key_id.len() >= 16
                && c.access_key_id.chars().all(|ch| ch.is_ascii_alphanumeric())
        );
        assert!(c.secret_access_key.len() >= 40);
        assert_ne!(
            c.secret_access_key,
            StaticCredential::new("alice", "team-a").secret_access_key
        );
    }
}
