//! Harness for the KubeKMS end-to-end tests.
//!
//! The tests run against a real kube-apiserver and a real etcd, built from their Go
//! modules by `hack/tools/build.sh` and started by `hack/control-plane.sh`. There is no
//! fake API server and no etcd stand-in: what the tests read from etcd is what the API
//! server really stored.
//!
//! Where the control plane comes from:
//! - `KUBEKMS_E2E_STATE=<state folder>`: one started by someone else (`hack/test.sh`, a
//!   developer's `hack/local-up.sh`, or `hack/kind-e2e.sh`), described by the `env` file
//!   in that folder. The harness never stops it.
//! - otherwise the harness starts one per test process, as `hack/test.sh` does: it builds
//!   the plugin, operator and server binaries ([`process::build_workspace_bins`], once per
//!   process), makes a plugin state folder with `kubekms-plugin init`, and runs
//!   `hack/control-plane.sh up --kms-socket <sock> --plugin-cmd 'kubekms-plugin serve ...'
//!   --watch-pid <this process>`, so Secrets are encrypted by the kubekms KMS v2 plugin.
//!   The launcher's watchdog stops the plugin, etcd and kube-apiserver as soon as the test
//!   process exits, however it exits (success, failed test, panic, SIGINT, SIGKILL).
//!
//! Each test runs in a namespace of its own (see [`in_namespace`]), deleted afterwards.

pub mod crash;
pub mod drill;
pub mod kms_server;
pub mod multi_host;
pub mod node;
pub mod process;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, bail, ensure};
use base64::Engine as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

/// Environment variable naming the state folder of an already running control plane.
pub const ENV_STATE: &str = "KUBEKMS_E2E_STATE";
/// The provider name that `hack/control-plane.sh --kms-socket` writes into the
/// EncryptionConfiguration, and so into every stored prefix.
pub const KMS_PROVIDER_NAME: &str = "kubekms";
/// What kube-apiserver writes in front of an unencrypted protobuf object.
pub const PROTOBUF_MAGIC: &[u8] = b"k8s\0";

/// The repository root (this crate lives in `<root>/e2e`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `hack/control-plane.sh down --state-dir STATE_DIR`: stops every process of the control
/// plane whose state folder is `state_dir`.
///
/// # Errors
/// When the script cannot be run or fails (its stderr in the message).
pub fn control_plane_down(state_dir: &Path) -> Result<()> {
    let out = Command::new(repo_root().join("hack/control-plane.sh"))
        .arg("down")
        .arg("--state-dir")
        .arg(state_dir)
        .stdin(Stdio::null())
        .output()
        .context("running control-plane.sh down")?;
    ensure!(
        out.status.success(),
        "control-plane.sh down failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A running control plane: etcd + kube-apiserver (and, once it exists, the kubekms plugin).
#[derive(Debug, Clone)]
pub struct ControlPlane {
    /// Folder with certificates, etcd data, logs of every process, pids.
    pub state_dir: PathBuf,
    /// Admin kubeconfig (client certificate in `system:masters`).
    pub kubeconfig: PathBuf,
    /// `http://127.0.0.1:<port>` of etcd.
    pub etcd_endpoint: String,
    /// `https://127.0.0.1:<port>` of kube-apiserver.
    pub apiserver_url: String,
    /// Folder holding the built `kubectl`, `etcdctl`, `kube-apiserver`, `etcd`.
    pub tools_bin: PathBuf,
    /// The KMS v2 plugin socket, when Secrets are configured to be encrypted by it.
    pub kms_socket: Option<PathBuf>,
    /// How to run etcdctl when etcd is not ours on loopback (kind: `kubectl exec` into
    /// the etcd pod), from `KUBEKMS_ETCDCTL_CMD` (words split on spaces). `None`: the
    /// built etcdctl with `--endpoints <etcd_endpoint>`.
    pub etcdctl_cmd: Option<Vec<String>>,
    /// The Kubernetes version the API server must report (`KUBEKMS_KUBE_VERSION`);
    /// `None`: the one pinned in hack/tools/kubernetes/go.mod.
    pub expected_kube_version: Option<String>,
}

static SHARED: OnceLock<std::result::Result<ControlPlane, String>> = OnceLock::new();

impl ControlPlane {
    /// The control plane of this test process: the one named by `KUBEKMS_E2E_STATE`, or
    /// one started (once) for this process and stopped when it exits.
    pub fn shared() -> Result<&'static ControlPlane> {
        let cp = SHARED.get_or_init(|| {
            let found = match std::env::var_os(ENV_STATE) {
                Some(dir) if !dir.is_empty() => Self::from_state_dir(Path::new(&dir))
                    .with_context(|| format!("{ENV_STATE}={}", PathBuf::from(&dir).display())),
                _ => Self::start_for_this_process(),
            };
            found.map_err(|e| format!("{e:#}"))
        });
        cp.as_ref()
            .map_err(|e| anyhow!("no control plane for the e2e tests: {e}"))
    }

    /// Reads the `env` file that `hack/control-plane.sh up` wrote into `dir`.
    pub fn from_state_dir(dir: &Path) -> Result<Self> {
        let env_file = dir.join("env");
        let text = std::fs::read_to_string(&env_file).with_context(|| {
            format!(
                "reading {} (is {} the state folder of a control plane started by hack/control-plane.sh?)",
                env_file.display(),
                dir.display()
            )
        })?;
        let vars: HashMap<&str, &str> = text
            .lines()
            .filter_map(|line| line.split_once('='))
            .collect();
        let get = |k: &str| {
            vars.get(k)
                .map(|v| v.to_string())
                .ok_or_else(|| anyhow!("{} has no {k}=", env_file.display()))
        };
        Ok(Self {
            state_dir: dir.to_path_buf(),
            kubeconfig: PathBuf::from(get("KUBECONFIG")?),
            etcd_endpoint: get("KUBEKMS_ETCD_ENDPOINT")?,
            apiserver_url: get("KUBEKMS_APISERVER_URL")?,
            tools_bin: PathBuf::from(get("KUBEKMS_TOOLS_BIN")?),
            kms_socket: vars
                .get("KUBEKMS_KMS_SOCKET")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            etcdctl_cmd: vars
                .get("KUBEKMS_ETCDCTL_CMD")
                .filter(|v| !v.trim().is_empty())
                .map(|v| v.split_whitespace().map(str::to_owned).collect()),
            expected_kube_version: vars
                .get("KUBEKMS_KUBE_VERSION")
                .filter(|v| !v.is_empty())
                .map(|v| v.to_string()),
        })
    }

    /// Starts a control plane in a new state folder whose Secrets are encrypted by the
    /// kubekms plugin, as `hack/test.sh` starts its own: the plugin binary
    /// (`KUBEKMS_PLUGIN_BIN`, or built now), `kubekms-plugin init` in `<state>/kubekms-plugin`,
    /// `kubekms-plugin serve` on `<state>/kms.sock` started by `hack/control-plane.sh up`
    /// before kube-apiserver. Watched by the launcher's watchdog, so everything stops when
    /// this process exits.
    pub fn start_for_this_process() -> Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("kubekms-e2e-{}", uuid::Uuid::new_v4().simple()));
        eprintln!(
            "[e2e] {ENV_STATE} is not set: starting a control plane with the kubekms plugin in {} \
             (builds the plugin, and the Go tools on first use)",
            dir.display()
        );
        let plugin_bin = process::sibling_bin("KUBEKMS_PLUGIN_BIN", "kubekms-plugin")
            .context("the kubekms plugin encrypts the Secrets of the e2e control plane")?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let plugin_state = dir.join("kubekms-plugin");
        process::init_plugin_state(&plugin_bin, &plugin_state)?;
        let socket = dir.join("kms.sock");
        let plugin_cmd = format!(
            "exec {} serve --state-dir {} --socket {}",
            process::sh_quote(&plugin_bin),
            process::sh_quote(&plugin_state),
            process::sh_quote(&socket)
        );
        Self::start_with_plugin(&dir, &socket, &plugin_cmd)
    }

    /// Log file of one process of this control plane (`etcd`, `kube-apiserver`, `kms-plugin`).
    pub fn log_path(&self, process: &str) -> PathBuf {
        self.state_dir.join("logs").join(format!("{process}.log"))
    }

    /// A hint to put in failure messages: where to look.
    pub fn where_to_look(&self) -> String {
        format!(
            "control plane state {}; logs: {} and {}",
            self.state_dir.display(),
            self.log_path("kube-apiserver").display(),
            self.log_path("etcd").display()
        )
    }

    /// A kube client for the admin user. Make one per test: a client belongs to the
    /// tokio runtime it was made on.
    pub async fn client(&self) -> Result<Client> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)
            .with_context(|| format!("reading kubeconfig {}", self.kubeconfig.display()))?;
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .context("building a client config from the kubeconfig")?;
        Client::try_from(config).context("building the kube client")
    }

    /// Path of one of the built tools.
    pub fn tool(&self, name: &str) -> PathBuf {
        self.tools_bin.join(name)
    }

    /// Runs the built kubectl against this control plane; fails (with its stderr) on a
    /// non-zero exit.
    pub fn kubectl<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = Command::new(self.tool("kubectl"));
        cmd.env("KUBECONFIG", &self.kubeconfig).args(args);
        self.run_checked(cmd)
    }

    /// Runs the built kubectl with `stdin` as its input (`apply -f -`); its stdout, or an
    /// error with its stderr on a non-zero exit.
    ///
    /// # Errors
    /// When kubectl cannot start or fails.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &[u8]) -> Result<String> {
        use std::io::Write as _;
        let mut child = Command::new(self.tool("kubectl"))
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .ok_or_else(|| anyhow!("no stdin"))?
            .write_all(stdin)?;
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs the built etcdctl against this control plane's etcd.
    pub fn etcdctl<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = match self.etcdctl_cmd.as_deref() {
            Some([program, rest @ ..]) => {
                let mut cmd = Command::new(program);
                cmd.env("KUBECONFIG", &self.kubeconfig).args(rest);
                cmd
            }
            _ => {
                let mut cmd = Command::new(self.tool("etcdctl"));
                // etcdctl refuses a flag that an ETCDCTL_* variable also sets; a shell that
                // ran `eval "$(hack/control-plane.sh env)"` exports ETCDCTL_ENDPOINTS.
                for (name, _) in std::env::vars_os() {
                    if name.to_string_lossy().starts_with("ETCDCTL_") {
                        cmd.env_remove(name);
                    }
                }
                cmd.arg("--endpoints").arg(&self.etcd_endpoint);
                cmd
            }
        };
        cmd.arg("--command-timeout=5s").args(args);
        self.run_checked(cmd)
    }

    fn run_checked(&self, mut cmd: Command) -> Result<Output> {
        let shown = format!("{cmd:?}");
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("starting {shown}"))?;
        if !out.status.success() {
            bail!(
                "{shown} failed ({}):\nstdout: {}\nstderr: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.where_to_look()
            );
        }
        Ok(out)
    }

    /// The raw bytes etcd holds under `key`, exactly as kube-apiserver wrote them, or
    /// `None` when there is no such key.
    pub fn etcd_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let out = self.etcdctl(["get", key, "-w", "json"])?;
        decode_etcdctl_get_json(&out.stdout)
            .with_context(|| format!("reading etcd key {key}; {}", self.where_to_look()))
    }

    /// The version etcd reports (`etcdserver` in its `/version` document).
    pub fn etcd_server_version(&self) -> Result<String> {
        let out = self.etcdctl(["endpoint", "status", "-w", "json"])?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .context("parsing `etcdctl endpoint status -w json`")?;
        v.pointer("/0/Status/version")
            .and_then(|s| s.as_str())
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no Status.version in etcdctl endpoint status: {v}"))
    }
}

impl ControlPlane {
    /// `kubectl create secret generic NAME -n NS --from-literal=value=VALUE`.
    pub fn create_secret(&self, namespace: &str, name: &str, value: &str) -> Result<()> {
        self.kubectl([
            "create",
            "secret",
            "generic",
            name,
            "-n",
            namespace,
            &format!("--from-literal=value={value}"),
        ])?;
        Ok(())
    }

    /// The `value` key of a Secret made by [`Self::create_secret`], read through the API.
    pub fn read_secret(&self, namespace: &str, name: &str) -> Result<String> {
        let out = self.kubectl(["get", "secret", name, "-n", namespace, "-o", "json"])?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let b64 = v
            .pointer("/data/value")
            .and_then(|x| x.as_str())
            .ok_or_else(|| anyhow!("secret {namespace}/{name} has no data.value"))?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64)?;
        Ok(String::from_utf8(bytes)?)
    }

    /// Every Secret of `expected` (name → value) still reads back with its value.
    pub fn check_all_read(
        &self,
        namespace: &str,
        expected: &std::collections::BTreeMap<String, String>,
        when: &str,
    ) -> Result<()> {
        for (name, value) in expected {
            let got = self
                .read_secret(namespace, name)
                .with_context(|| format!("{when}: reading {namespace}/{name}"))?;
            if &got != value {
                bail!("{when}: {namespace}/{name} reads {got:?}, expected {value:?}");
            }
        }
        Ok(())
    }

    /// Applies the committed CRDs (`crds/`, server-side) and waits until all four are
    /// Established.
    pub fn apply_crds(&self) -> Result<()> {
        let crds = repo_root().join("crds");
        self.kubectl([
            "apply".as_ref(),
            "--server-side".as_ref(),
            "--force-conflicts".as_ref(),
            "-f".as_ref(),
            crds.as_os_str(),
        ])?;
        // `kubectl wait --for=condition=...` fails at once, instead of waiting, on a CRD
        // whose status has no conditions yet (".status.conditions accessor error: <nil>"):
        // seen under load right after the apply. Asked again until the deadline.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            match self.kubectl([
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/kmskeys.kubekms.io",
                "crd/kmskeymaterials.kubekms.io",
                "crd/kmsaliases.kubekms.io",
                "crd/kmsgrants.kubekms.io",
            ]) {
                Ok(_) => return Ok(()),
                Err(e)
                    if format!("{e:#}").contains(".status.conditions accessor error")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes to `path` a kubeconfig for this API server that authenticates as the
    /// ServiceAccount `namespace/name` with a fresh one-hour token (TokenRequest), so a
    /// process runs with exactly the RBAC granted to that ServiceAccount.
    pub fn write_service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
        path: &Path,
    ) -> Result<()> {
        let token = self.kubectl(["create", "token", name, "-n", namespace, "--duration=1h"])?;
        let token = String::from_utf8(token.stdout)?.trim().to_owned();
        let view = self.kubectl(["config", "view", "--raw", "--minify", "-o", "json"])?;
        let view: serde_json::Value = serde_json::from_slice(&view.stdout)?;
        let cluster = view
            .pointer("/clusters/0/cluster")
            .cloned()
            .ok_or_else(|| anyhow!("no cluster in the admin kubeconfig"))?;
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kubekms", "cluster": cluster}],
            "users": [{"name": name, "user": {"token": token}}],
            "contexts": [{"name": name, "context": {"cluster": "kubekms", "user": name}}],
            "current-context": name,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&config)?)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// The Kubernetes version kube-apiserver must report.
    pub fn expected_kube_version(&self) -> Result<String> {
        match &self.expected_kube_version {
            Some(v) => Ok(v.clone()),
            None => pinned_go_module("kubernetes", "k8s.io/kubernetes"),
        }
    }

    /// True when etcd is the one hack/control-plane.sh started from the pinned build.
    pub fn etcd_is_pinned_build(&self) -> bool {
        self.etcdctl_cmd.is_none()
    }
}

/// The etcd key under which kube-apiserver stores a Secret.
pub fn secret_etcd_key(namespace: &str, name: &str) -> String {
    format!("/registry/secrets/{namespace}/{name}")
}

/// Decodes the output of `etcdctl get KEY -w json` into the value's bytes.
pub fn decode_etcdctl_get_json(json: &[u8]) -> Result<Option<Vec<u8>>> {
    let v: serde_json::Value = serde_json::from_slice(json).context("parsing etcdctl JSON")?;
    let Some(kvs) = v.get("kvs").and_then(|k| k.as_array()) else {
        return Ok(None);
    };
    let Some(first) = kvs.first() else {
        return Ok(None);
    };
    let value = first
        .get("value")
        .and_then(|x| x.as_str())
        .unwrap_or_default();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value)
        .context("etcdctl value is not base64")?;
    Ok(Some(bytes))
}

/// The prefix kube-apiserver writes in front of a value encrypted by a KMS v2 provider.
pub fn kms_v2_prefix(provider: &str) -> String {
    format!("k8s:enc:kms:v2:{provider}:")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// A short, printable view of stored bytes for failure messages.
pub fn preview(bytes: &[u8]) -> String {
    let shown: String = bytes
        .iter()
        .take(48)
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect();
    format!(
        "{} bytes: \"{shown}{}\"",
        bytes.len(),
        if bytes.len() > 48 { "..." } else { "" }
    )
}

/// Checks a value stored without encryption (identity provider): the protobuf magic
/// `k8s\0` and, since nothing hides it, the plaintext itself.
pub fn check_stored_unencrypted(stored: &[u8], plaintext: &[u8]) -> Result<()> {
    if !stored.starts_with(PROTOBUF_MAGIC) {
        bail!(
            "expected an unencrypted protobuf value starting with k8s\\0, found {}",
            preview(stored)
        );
    }
    if !contains(stored, plaintext) {
        bail!(
            "the unencrypted value does not hold the plaintext {:?}: {}",
            String::from_utf8_lossy(plaintext),
            preview(stored)
        );
    }
    Ok(())
}

/// Checks a value encrypted by the KMS v2 provider `provider`: it starts with
/// `k8s:enc:kms:v2:<provider>:`, is not protobuf in the clear, and holds none of
/// `plaintexts`.
pub fn check_kms_encrypted(stored: &[u8], provider: &str, plaintexts: &[&[u8]]) -> Result<()> {
    let prefix = kms_v2_prefix(provider);
    if !stored.starts_with(prefix.as_bytes()) {
        bail!(
            "expected a value starting with {prefix:?}, found {}",
            preview(stored)
        );
    }
    if stored.len() <= prefix.len() {
        bail!("nothing follows the prefix: {}", preview(stored));
    }
    for p in plaintexts {
        if contains(stored, p) {
            bail!(
                "the encrypted value contains the plaintext {:?}: {}",
                String::from_utf8_lossy(p),
                preview(stored)
            );
        }
    }
    Ok(())
}

/// Reads the version pinned for a Go module in one of hack/tools' go.mod files, e.g.
/// `pinned_go_module("kubernetes", "k8s.io/kubernetes")`.
pub fn pinned_go_module(tools_module: &str, module: &str) -> Result<String> {
    let path = repo_root()
        .join("hack/tools")
        .join(tools_module)
        .join("go.mod");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .map(|l| l.trim().trim_start_matches("require").trim())
        .filter(|l| !l.contains("=>"))
        .find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some(module))
                .then(|| it.next().map(str::to_owned))
                .flatten()
        })
        .ok_or_else(|| anyhow!("{} does not require {module}", path.display()))
}

/// A fresh name with a random suffix: `<prefix>-<8 hex digits>`.
pub fn unique_name(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", id.get(..8).unwrap_or(&id))
}

/// Runs `body` in a namespace made for it (`e2e-<prefix>-<random>`) and deletes the
/// namespace afterwards, whether `body` returned an error, panicked or passed.
///
/// Without kube-controller-manager nothing finalizes a deleted namespace, so it stays
/// `Terminating` in the throw-away control plane; its objects are left for inspection.
pub async fn in_namespace<F, Fut>(cp: &ControlPlane, prefix: &str, body: F) -> Result<()>
where
    F: FnOnce(Client, String) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let client = cp.client().await.with_context(|| cp.where_to_look())?;
    let name = unique_name(&format!("e2e-{prefix}"));
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some([("kubekms.io/e2e".to_owned(), "true".to_owned())].into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .with_context(|| format!("creating namespace {name}; {}", cp.where_to_look()))?;

    let outcome = tokio::spawn(body(client, name.clone())).await;

    let deleted = match namespaces.delete(&name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e),
    };
    match outcome {
        Ok(result) => {
            result.with_context(|| format!("in namespace {name}; {}", cp.where_to_look()))?;
            deleted.with_context(|| format!("deleting namespace {name}"))?;
            Ok(())
        }
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        Err(join) => Err(anyhow!(
            "test body in namespace {name} was cancelled: {join}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unencrypted_value_check() {
        let stored = b"k8s\0\n\x0c\n\x02v1\x12\x06Secret\x12\x10hunter2";
        assert!(check_stored_unencrypted(stored, b"hunter2").is_ok());
        assert!(check_stored_unencrypted(stored, b"absent").is_err());
        assert!(check_stored_unencrypted(b"k8s:enc:kms:v2:kubekms:xyz", b"xyz").is_err());
    }

    #[test]
    fn kms_value_check() {
        let good = b"k8s:enc:kms:v2:kubekms:\x0a\x20\xde\xad\xbe\xef";
        assert!(check_kms_encrypted(good, KMS_PROVIDER_NAME, &[b"hunter2"]).is_ok());
        // Wrong provider name, identity storage, plaintext inside: all rejected.
        assert!(check_kms_encrypted(good, "other", &[b"hunter2"]).is_err());
        assert!(check_kms_encrypted(b"k8s\0hunter2", KMS_PROVIDER_NAME, &[]).is_err());
        let leaky = b"k8s:enc:kms:v2:kubekms:...hunter2...";
        let err = check_kms_encrypted(leaky, KMS_PROVIDER_NAME, &[b"hunter2"]);
        assert!(err.is_err_and(|e| e.to_string().contains("contains the plaintext")));
    }

    #[test]
    fn etcdctl_json_decoding() {
        let json = br#"{"header":{},"kvs":[{"key":"L3g=","value":"azhzAGFi"}],"count":1}"#;
        assert_eq!(
            decode_etcdctl_get_json(json).ok().flatten(),
            Some(b"k8s\0ab".to_vec())
        );
        assert_eq!(
            decode_etcdctl_get_json(br#"{"header":{}}"#).ok().flatten(),
            None
        );
        assert!(decode_etcdctl_get_json(b"not json").is_err());
    }

    #[test]
    fn pins_are_readable() {
        let kube = pinned_go_module("kubernetes", "k8s.io/kubernetes");
        assert!(
            kube.as_deref().is_ok_and(|v| v.starts_with("v1.")),
            "{kube:?}"
        );
        let etcd = pinned_go_module("etcd", "go.etcd.io/etcd/server/v3");
        assert!(
            etcd.as_deref().is_ok_and(|v| v.starts_with("v3.")),
            "{etcd:?}"
        );
    }
}
