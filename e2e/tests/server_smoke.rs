//! Smoke test of the `kubekms-server` binary on the real control plane: the server runs as
//! a process with its ServiceAccount's RBAC (deploy/rbac/server.yaml); a ServiceAccount
//! token minted with TokenRequest (audience `kubekms`) is exchanged at the server's STS by
//! boto3's own web-identity provider (the `AWS_WEB_IDENTITY_TOKEN_FILE`, `AWS_ROLE_ARN`,
//! `AWS_ENDPOINT_URL_STS` variables); an Encrypt/Decrypt round trip is allowed by a Role,
//! and the same ServiceAccount is denied Encrypt on a key its Role does not name
//! (AccessDeniedException naming the caller and the verb).
//!
//! How to start the server in a test (what [`Server::start`] does):
//!
//! 1. `cargo build -p kubekms-plugin -p kubekms-operator -p kubekms-server` (one feature
//!    resolution; [`server_bin`] does it, or set `KUBEKMS_SERVER_BIN`);
//! 2. a root key file shared with the operator that made the keys (here an in-process
//!    operator on `FileKeyStore::open` of the same file);
//! 3. `kubectl apply --server-side -f deploy/rbac/server.yaml` and a kubeconfig for the
//!    ServiceAccount `kubekms-system/kubekms-server`
//!    (`ControlPlane::write_service_account_kubeconfig`);
//! 4. `kubekms-server --root-key F --kubeconfig K --listen 127.0.0.1:0 --health-addr
//!    127.0.0.1:0 --insecure-http --audit-log FILE --log-format json [--namespace NS]`
//!    (or `--tls-cert/--tls-key` with a certificate signed by `<state>/pki/ca.crt`, as
//!    hack/local-up.sh does); the bound addresses are in the log line
//!    `"message":"kubekms-server serving"` (fields `listen`, `health`);
//! 5. wait until `GET http://<health>/readyz` answers 200 (keyring and Namespaces listed);
//! 6. SIGTERM stops it gracefully (exit status 0, audit flushed).

use std::io::{BufRead as _, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use kms_core::ArnScope;
use kms_core::keystore::FileKeyStore;
use kube::Api;
use kube::api::PostParams;
use kubekms_e2e::process::sibling_bin;
use kubekms_e2e::{ControlPlane, in_namespace, repo_root};
use kubekms_k8s::KmsKey;
use kubekms_k8s::names::KeyStateName;
use kubekms_operator::run::run_controllers;
use kubekms_operator::{Context, Metrics, SystemClock};
use serde_json::{Value, json};
use tokio::sync::watch;

/// The kubekms-server binary: `KUBEKMS_SERVER_BIN`, or built now (with the plugin and the
/// operator, as the harness builds them) into this test binary's target folder.
pub fn server_bin() -> Result<PathBuf> {
    sibling_bin("KUBEKMS_SERVER_BIN", "kubekms-server")
}

/// A running kubekms-server process.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:<port>` of the KMS and STS API.
    pub endpoint: String,
    /// Address of /healthz, /readyz, /metrics.
    pub health: String,
    /// Its log (JSON lines).
    pub log: PathBuf,
    /// Its audit log.
    pub audit: PathBuf,
}

impl Server {
    /// Starts the server as `kubekms-system/kubekms-server` with its RBAC and waits until
    /// it is ready.
    pub fn start(cp: &ControlPlane, root_key: &Path, dir: &Path, extra: &[&str]) -> Result<Self> {
        let rbac = repo_root().join("deploy/rbac/server.yaml");
        cp.kubectl([
            "apply".as_ref(),
            "--server-side".as_ref(),
            "-f".as_ref(),
            rbac.as_os_str(),
        ])?;
        let kubeconfig = dir.join("server.kubeconfig");
        cp.write_service_account_kubeconfig("kubekms-system", "kubekms-server", &kubeconfig)?;
        let log = dir.join("server.log");
        let audit = dir.join("audit.log");
        let child = Command::new(server_bin()?)
            .arg("--root-key")
            .arg(root_key)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--listen", "127.0.0.1:0", "--health-addr", "127.0.0.1:0"])
            .args(["--insecure-http", "--log-format", "json"])
            .arg("--audit-log")
            .arg(&audit)
            .args(extra)
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting kubekms-server")?;
        let mut server = Self {
            child,
            endpoint: String::new(),
            health: String::new(),
            log,
            audit,
        };
        let started = Instant::now();
        while server.endpoint.is_empty() {
            ensure!(
                started.elapsed() < Duration::from_secs(30),
                "kubekms-server logged no serving line in 30 s:\n{}",
                server.log_text()
            );
            if let Some(status) = server.child.try_wait()? {
                bail!("kubekms-server exited ({status}):\n{}", server.log_text());
            }
            for line in std::io::BufReader::new(std::fs::File::open(&server.log)?).lines() {
                let Ok(line) = serde_json::from_str::<Value>(&line?) else {
                    continue;
                };
                if line.pointer("/fields/message").and_then(Value::as_str)
                    == Some("kubekms-server serving")
                {
                    let field = |name: &str| {
                        line.pointer(&format!("/fields/{name}"))
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                    };
                    server.endpoint = format!("http://{}", field("listen").unwrap_or_default());
                    server.health = field("health").unwrap_or_default();
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        while http_status(&server.health, "/readyz")? != 200 {
            ensure!(
                started.elapsed() < Duration::from_secs(60),
                "kubekms-server not ready in 60 s:\n{}",
                server.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(server)
    }

    /// The server's log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, and the exit status.
    pub fn stop(mut self) -> Result<std::process::ExitStatus> {
        let pid = rustix::process::Pid::from_raw(i32::try_from(self.child.id())?)
            .ok_or_else(|| anyhow!("no pid"))?;
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if started.elapsed() > Duration::from_secs(30) {
                let _ = self.child.kill();
                bail!("kubekms-server did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The status code of `GET http://<address><path>` (plain HTTP/1.1 over a socket).
fn http_status(address: &str, path: &str) -> Result<u16> {
    let mut stream = std::net::TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow!("no HTTP status in {reply:?}"))
}

/// boto3, as a pod would run it: credentials from the web identity variables only.
const BOTO3_SCRIPT: &str = r#"
import json, sys, boto3, botocore
allowed, other = sys.argv[1], sys.argv[2]
kms = boto3.client("kms")
out = {"botocore": botocore.__version__}
blob = kms.encrypt(KeyId=allowed, Plaintext=b"smoke-plaintext-0451")["CiphertextBlob"]
out["decrypted"] = kms.decrypt(CiphertextBlob=blob)["Plaintext"].decode()
try:
    kms.encrypt(KeyId=other, Plaintext=b"x")
    out["other"] = "allowed"
except botocore.exceptions.ClientError as e:
    out["other"] = {"code": e.response["Error"]["Code"], "message": e.response["Error"]["Message"]}
print(json.dumps(out))
"#;

fn python_bin() -> Result<PathBuf> {
    let out = Command::new(repo_root().join("hack/tools/python.sh"))
        .arg("--print-dir")
        .stdin(Stdio::null())
        .output()?;
    ensure!(
        out.status.success(),
        "hack/tools/python.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("python"))
}

async fn enabled_key(keys: &Api<KmsKey>, name: &str) -> Result<KmsKey> {
    let started = Instant::now();
    loop {
        if let Some(key) = keys.get_opt(name).await?
            && key.status.as_ref().and_then(|s| s.key_state) == Some(KeyStateName::Enabled)
        {
            return Ok(key);
        }
        ensure!(
            started.elapsed() < Duration::from_secs(60),
            "KmsKey {name} not Enabled within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn web_identity_round_trip_allowed_by_rbac_and_denied_elsewhere() -> Result<()> {
    let cp = ControlPlane::shared()?;
    cp.apply_crds()?;
    let cp = cp.clone();
    in_namespace(&cp.clone(), "server-smoke", move |client, ns| async move {
        let dir = std::env::temp_dir().join(kubekms_e2e::unique_name("kubekms-server-smoke"));
        std::fs::create_dir_all(&dir)?;
        let root_key = dir.join("root.key");
        let root = Arc::new(FileKeyStore::init(&root_key)?);

        // The operator makes the keys (in process, sharing the root key file).
        let ctx = Arc::new(Context::new(
            client.clone(),
            root,
            ArnScope::default(),
            Arc::new(SystemClock),
            Arc::new(Metrics::new()),
            Some("server-smoke".to_owned()),
        ));
        let (stop_operator, shutdown) = watch::channel(false);
        let operator = tokio::spawn(run_controllers(ctx, Some(ns.clone()), shutdown));

        let manifests = dir.join("manifests.json");
        let items = json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "ServiceAccount",
             "metadata": {"name": "app", "namespace": ns}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
             "metadata": {"name": "app-key-user", "namespace": ns},
             "rules": [{"apiGroups": ["kubekms.io"], "resources": ["kmskeys"],
                        "resourceNames": ["allowed"], "verbs": ["encrypt", "decrypt"]}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": {"name": "app-key-user", "namespace": ns},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "app-key-user"},
             "subjects": [{"kind": "ServiceAccount", "name": "app", "namespace": ns}]},
        ]});
        std::fs::write(&manifests, serde_json::to_vec(&items)?)?;
        cp.kubectl(["apply".as_ref(), "-f".as_ref(), manifests.as_os_str()])?;
        let keys: Api<KmsKey> = Api::namespaced(client.clone(), &ns);
        for name in ["allowed", "other"] {
            let key: KmsKey = serde_json::from_value(json!({
                "apiVersion": "kubekms.io/v1alpha1", "kind": "KmsKey",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"keySpec": "SYMMETRIC_DEFAULT"},
            }))?;
            keys.create(&PostParams::default(), &key).await?;
        }
        let allowed = enabled_key(&keys, "allowed").await?;
        let other = enabled_key(&keys, "other").await?;
        let arn = |key: &KmsKey| key.status.as_ref().and_then(|s| s.arn.clone()).unwrap_or_default();
        let account = kms_core::derive_account_id(&ns);
        ensure!(
            arn(&allowed).starts_with(&format!("arn:aws:kms:local:{account}:key/")),
            "ARN {}",
            arn(&allowed)
        );

        let server = Server::start(&cp, &root_key, &dir, &["--namespace", &ns])?;
        let token = cp.kubectl(["create", "token", "app", "-n", &ns, "--audience", "kubekms"])?;
        let token_file = dir.join("app.token");
        std::fs::write(&token_file, String::from_utf8(token.stdout)?.trim())?;
        let out = Command::new(python_bin()?)
            .args(["-c", BOTO3_SCRIPT, &arn(&allowed), &arn(&other)])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &dir)
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_WEB_IDENTITY_TOKEN_FILE", &token_file)
            .env("AWS_ROLE_ARN", format!("arn:aws:iam::{account}:role/kubekms"))
            .env("AWS_ENDPOINT_URL_KMS", &server.endpoint)
            .env("AWS_ENDPOINT_URL_STS", &server.endpoint)
            .env("AWS_REGION", "local")
            // botocore reads only AWS_DEFAULT_REGION; the other SDKs AWS_REGION.
            .env("AWS_DEFAULT_REGION", "local")
            .stdin(Stdio::null())
            .output()?;
        let log = server.log_text();
        ensure!(
            out.status.success(),
            "boto3 failed:\n{}\n{}\nserver log:\n{log}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
        );
        let result: Value = serde_json::from_slice(&out.stdout)?;
        ensure!(
            result["decrypted"] == "smoke-plaintext-0451",
            "round trip: {result}"
        );
        let caller = format!("system:serviceaccount:{ns}:app");
        let message = result["other"]["message"].as_str().unwrap_or_default();
        ensure!(
            result["other"]["code"] == "AccessDeniedException"
                && message.contains(&caller)
                && message.contains("kms:Encrypt")
                && message.contains("\"encrypt\""),
            "the key the Role does not name: {result}"
        );
        ensure!(
            !message.contains("other") && !message.contains(&arn(&other)),
            "the denial names only the caller and the verb: {message}"
        );

        let status = server.stop()?;
        let audit = std::fs::read_to_string(dir.join("audit.log"))?;
        let events: Vec<Value> = audit
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        let sts = events
            .iter()
            .filter(|e| e["eventName"] == "AssumeRoleWithWebIdentity" && e["status"] == 200)
            .count();
        ensure!(
            sts >= 1,
            "boto3 {} exchanged the token at the server's STS (AWS_ENDPOINT_URL_STS): {audit}",
            result["botocore"]
        );
        ensure!(
            events
                .iter()
                .any(|e| e["eventName"] == "Encrypt" && e["authorizedBy"] == json!(["rbac"])),
            "the Encrypt was allowed by RBAC: {audit}"
        );
        ensure!(
            events
                .iter()
                .any(|e| e["errorCode"] == "AccessDeniedException"),
            "the denial is audited: {audit}"
        );
        ensure!(
            !audit.contains("smoke-plaintext-0451"),
            "no plaintext in the audit log"
        );
        ensure!(status.success(), "SIGTERM: exit status {status}");

        stop_operator.send(true)?;
        tokio::time::timeout(Duration::from_secs(30), operator).await??;
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    })
    .await
}
