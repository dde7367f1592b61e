//! The disaster-recovery drill of docs/disaster-recovery.md, one host at a time: a
//! [`Site`] is one control-plane host (its own folder: the control plane's state, the
//! plugin's state folder, the operator), built either as a new installation
//! ([`Site::install`]: `kubekms-plugin init`, the plugin following the API server's KmsKey,
//! the hand-over by `export`, the operator on the plugin's root key) or from a backup
//! ([`Site::restore`]: an etcd snapshot and the root key file, nothing else, following the
//! runbook's steps in its order). [`Site::destroy`] removes a host's whole folder.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, ensure};
use kms_core::KmsKey;
use kms_core::keystore::RootKeyStore;
use kms_plugin::restore::BackupObjects;

use crate::process::{sh_quote, sibling_bin};
use crate::{ControlPlane, repo_root, unique_name};

/// The namespace of the API server's KmsKey (and of the operator's Lease).
pub const SYSTEM_NAMESPACE: &str = "kubekms-system";
/// The API server's KmsKey, which the plugin follows.
pub const APISERVER_KEY: &str = "apiserver-key";
/// The plugin's instance name (its heartbeat Lease): the rebuilt host keeps the name.
pub const PLUGIN_INSTANCE: &str = "cp-1";
/// How long the operator may take to make or rotate keys (RSA-4096 included).
const KEY_TIMEOUT: Duration = Duration::from_secs(180);

/// `NAMESPACE/NAME` of the API server's KmsKey.
#[must_use]
pub fn apiserver_target() -> String {
    format!("{SYSTEM_NAMESPACE}/{APISERVER_KEY}")
}

/// One control-plane host of the drill.
#[derive(Debug)]
pub struct Site {
    /// Everything of this host lives here; [`Site::destroy`] removes it.
    pub base: PathBuf,
    /// Its control plane (etcd, the plugin, kube-apiserver).
    pub cp: ControlPlane,
    /// The plugin binary.
    pub plugin_bin: PathBuf,
    /// The plugin's state folder (`root.key`, `keys/`, `active-key.json`).
    pub plugin_state: PathBuf,
    /// The plugin's socket.
    pub socket: PathBuf,
    operator: Option<Child>,
    destroyed: bool,
}

/// A host's folders before its control plane is up.
struct Layout {
    base: PathBuf,
    plugin_state: PathBuf,
    socket: PathBuf,
    cp_state: PathBuf,
}

impl Layout {
    fn new(name: &str) -> Result<Self> {
        let base = std::env::temp_dir().join(unique_name(&format!("kubekms-dr-{name}")));
        std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
        Ok(Self {
            plugin_state: base.join("kubekms"),
            socket: base.join("kms.sock"),
            cp_state: base.join("cp"),
            base,
        })
    }

    /// `serve --follow` the API server's KmsKey, as on every host of the drill.
    fn serve_cmd(&self, plugin_bin: &Path) -> String {
        format!(
            "exec {} serve --state-dir {} --socket {} --reload-interval-ms 1000 --follow {} --instance {PLUGIN_INSTANCE} --kubeconfig {}",
            sh_quote(plugin_bin),
            sh_quote(&self.plugin_state),
            sh_quote(&self.socket),
            apiserver_target(),
            sh_quote(&self.cp_state.join("kubeconfig")),
        )
    }
}

/// Mode bits of a path.
fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// Copies a root key file the way the runbook says to put it back: mode 0600, owned by
/// the user that runs the plugin (here: this process's user).
///
/// # Errors
/// I/O errors.
pub fn put_back_root_key(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    set_mode(to, 0o600)
}

/// `hack/dr-check-backup.sh`: the runbook's check of a backup (a scratch etcd restored
/// from `snapshot`, `kubekms-plugin verify` with `root_key`). Its output, whatever its exit.
///
/// # Errors
/// When the script cannot be run.
pub fn check_backup(snapshot: &Path, root_key: &Path) -> Result<std::process::Output> {
    let plugin_bin = sibling_bin("KUBEKMS_PLUGIN_BIN", "kubekms-plugin")?;
    Command::new(repo_root().join("hack/dr-check-backup.sh"))
        .arg("--snapshot")
        .arg(snapshot)
        .arg("--root-key")
        .arg(root_key)
        .arg("--tools-bin")
        .arg(crate::process::tools_bin()?)
        .arg("--plugin-bin")
        .arg(plugin_bin)
        .stdin(Stdio::null())
        .output()
        .context("running hack/dr-check-backup.sh")
}

/// How a restore went when it was expected to fail: the text `control-plane.sh up`
/// printed (with the plugin's log tail) and the plugin's whole log.
#[derive(Debug)]
pub struct FailedRestore {
    /// `control-plane.sh up`'s stderr.
    pub up_stderr: String,
    /// The plugin's log.
    pub plugin_log: String,
    /// The plugin's state folder after the attempt.
    pub plugin_state: PathBuf,
    /// The host's folder (removed on drop).
    base: PathBuf,
}

impl Drop for FailedRestore {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }
}

impl Site {
    /// A new installation on a new host: `kubekms-plugin init`, the control plane with the
    /// plugin following `kubekms-system/apiserver-key` (serving the bootstrap key at once),
    /// the CRDs, the hand-over (`export | kubectl apply --server-side`), the operator on the
    /// plugin's root key, and the API server's KmsKey Enabled.
    ///
    /// # Errors
    /// When a step fails; the message says which.
    pub fn install(name: &str) -> Result<Self> {
        let plugin_bin = sibling_bin("KUBEKMS_PLUGIN_BIN", "kubekms-plugin")?;
        let layout = Layout::new(name)?;
        crate::process::init_plugin_state(&plugin_bin, &layout.plugin_state)?;
        let cp = ControlPlane::start_with_plugin(
            &layout.cp_state,
            &layout.socket,
            &layout.serve_cmd(&plugin_bin),
        )?;
        let mut site = Self {
            base: layout.base,
            cp,
            plugin_bin,
            plugin_state: layout.plugin_state,
            socket: layout.socket,
            operator: None,
            destroyed: false,
        };
        site.cp.apply_crds()?;
        site.cp.kubectl(["create", "namespace", SYSTEM_NAMESPACE])?;
        let exported = Command::new(&site.plugin_bin)
            .arg("export")
            .arg("--state-dir")
            .arg(&site.plugin_state)
            .args(["--namespace", SYSTEM_NAMESPACE, "--name", APISERVER_KEY])
            .stdin(Stdio::null())
            .output()?;
        ensure!(
            exported.status.success(),
            "kubekms-plugin export: {}",
            String::from_utf8_lossy(&exported.stderr)
        );
        site.cp
            .kubectl_stdin(&["apply", "--server-side", "-f", "-"], &exported.stdout)?;
        let root_key = site.plugin_state.join("root.key");
        site.start_operator(&root_key, &[])?;
        site.wait_key(SYSTEM_NAMESPACE, APISERVER_KEY, "Enabled", |k| {
            k.pointer("/status/keyState").and_then(|s| s.as_str()) == Some("Enabled")
        })?;
        Ok(site)
    }

    /// A new host built from a backup only, in the runbook's order: a new folder holding
    /// the root key put back (0700 folder, 0600 file); etcd restored from `snapshot` by
    /// `etcdutl snapshot restore` and started alone; the KubeKMS objects read from it with
    /// `etcdctl get --prefix /registry/kubekms.io/`; `kubekms-plugin verify` and
    /// `kubekms-plugin restore` of the plugin's folder; the plugin; kube-apiserver. The
    /// operator is not started (see [`Site::start_operator`]). `root_key` `None`: the
    /// root key is lost.
    ///
    /// # Errors
    /// When the control plane does not come up: the message holds `up`'s output.
    pub fn restore(name: &str, snapshot: &Path, root_key: Option<&Path>) -> Result<Self> {
        match Self::try_restore(name, snapshot, root_key)? {
            Ok(site) => Ok(site),
            Err(failed) => Err(anyhow!(
                "the restore failed:\n{}\nplugin log:\n{}",
                failed.up_stderr,
                failed.plugin_log
            )),
        }
    }

    /// As [`Site::restore`], returning a failed restore as a value.
    ///
    /// # Errors
    /// When the host cannot even be prepared.
    pub fn try_restore(
        name: &str,
        snapshot: &Path,
        root_key: Option<&Path>,
    ) -> Result<std::result::Result<Self, FailedRestore>> {
        let plugin_bin = sibling_bin("KUBEKMS_PLUGIN_BIN", "kubekms-plugin")?;
        let tools = crate::process::tools_bin()?;
        let layout = Layout::new(name)?;
        std::fs::create_dir(&layout.plugin_state)?;
        set_mode(&layout.plugin_state, 0o700)?;
        if let Some(root_key) = root_key {
            put_back_root_key(root_key, &layout.plugin_state.join("root.key"))?;
        }
        let objects = layout.base.join("kubekms-objects.json");
        // control-plane.sh runs this after etcd is up and before kube-apiserver, with
        // KUBEKMS_ETCD_ENDPOINT set: the runbook's steps 4 to 6.
        let plugin_cmd = format!(
            "set -e -o pipefail; {etcdctl} --endpoints \"$KUBEKMS_ETCD_ENDPOINT\" get --prefix /registry/kubekms.io/ --print-value-only \
             | tee {objects} | {plugin} verify --root-key {root} --objects -; \
             {plugin} restore --state-dir {state} --follow {target} --objects {objects}; \
             {serve}",
            etcdctl = sh_quote(&tools.join("etcdctl")),
            objects = sh_quote(&objects),
            plugin = sh_quote(&plugin_bin),
            root = sh_quote(&layout.plugin_state.join("root.key")),
            state = sh_quote(&layout.plugin_state),
            target = apiserver_target(),
            serve = layout.serve_cmd(&plugin_bin),
        );
        let out = Command::new(repo_root().join("hack/control-plane.sh"))
            .arg("up")
            .arg("--state-dir")
            .arg(&layout.cp_state)
            .arg("--tools-bin")
            .arg(&tools)
            .args(["--watch-pid", &std::process::id().to_string()])
            .arg("--etcd-snapshot")
            .arg(snapshot)
            .arg("--kms-socket")
            .arg(&layout.socket)
            .arg("--plugin-cmd")
            .arg(&plugin_cmd)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            let plugin_log = std::fs::read_to_string(layout.cp_state.join("logs/kms-plugin.log"))
                .unwrap_or_default();
            return Ok(Err(FailedRestore {
                up_stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                plugin_log,
                plugin_state: layout.plugin_state,
                base: layout.base,
            }));
        }
        let cp = ControlPlane::from_state_dir(&layout.cp_state)?;
        Ok(Ok(Self {
            base: layout.base,
            cp,
            plugin_bin,
            plugin_state: layout.plugin_state,
            socket: layout.socket,
            operator: None,
            destroyed: false,
        }))
    }

    /// Starts the operator (admin kubeconfig, all namespaces, Lease in kubekms-system
    /// with a 4 s duration: a restored cluster holds the old operator's Lease, which must
    /// expire first). Its log is the control plane's `logs/kubekms-operator.log`.
    ///
    /// # Errors
    /// When it cannot be spawned.
    pub fn start_operator(&mut self, root_key: &Path, extra: &[&str]) -> Result<()> {
        self.stop_operator();
        let child = self.operator_command(root_key, extra)?.spawn()?;
        self.operator = Some(child);
        Ok(())
    }

    /// The operator's command line on the root key file `root_key`, for a run the test
    /// watches itself.
    ///
    /// # Errors
    /// When the binary or the log cannot be found.
    pub fn operator_command(&self, root_key: &Path, extra: &[&str]) -> Result<Command> {
        self.operator_command_with(
            &["--root-key".into(), root_key.into()],
            "dr-operator",
            extra,
        )
    }

    /// The operator's command line with the root key flags `root_key_flags` and the
    /// identity `identity`: admin kubeconfig, all namespaces, Lease in kubekms-system with a
    /// 4 s duration, log appended to the control plane's `logs/kubekms-operator.log`.
    ///
    /// # Errors
    /// When the binary or the log cannot be found.
    pub fn operator_command_with(
        &self,
        root_key_flags: &[OsString],
        identity: &str,
        extra: &[&str],
    ) -> Result<Command> {
        let bin = sibling_bin("KUBEKMS_OPERATOR_BIN", "kubekms-operator")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.cp.log_path("kubekms-operator"))?;
        let mut cmd = Command::new(bin);
        cmd.env("KUBECONFIG", &self.cp.kubeconfig)
            .env("RUST_LOG", "info")
            .args(root_key_flags)
            .args([
                "--lease-namespace",
                SYSTEM_NAMESPACE,
                "--metrics-addr",
                "127.0.0.1:0",
                "--identity",
                identity,
                "--lease-duration-seconds",
                "4",
                "--lease-renew-seconds",
                "1",
                "--log-format",
                "text",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        Ok(cmd)
    }

    /// Stops the operator, if one runs.
    pub fn stop_operator(&mut self) {
        if let Some(mut child) = self.operator.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The runbook's backup: `etcdctl snapshot save FILE`.
    ///
    /// # Errors
    /// When etcdctl fails.
    pub fn snapshot(&self, to: &Path) -> Result<()> {
        let mut cmd = Command::new(self.cp.tool("etcdctl"));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ETCDCTL_") {
                cmd.env_remove(name);
            }
        }
        let out = cmd
            .arg("--endpoints")
            .arg(&self.cp.etcd_endpoint)
            .arg("--command-timeout=60s")
            .args(["snapshot", "save"])
            .arg(to)
            .stdin(Stdio::null())
            .output()?;
        ensure!(
            out.status.success(),
            "etcdctl snapshot save: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Stops everything of this host and deletes its whole folder (the plugin's state
    /// folder and root key, etcd's data, the certificates).
    ///
    /// # Errors
    /// When the folder cannot be removed.
    pub fn destroy(mut self) -> Result<()> {
        self.shut_down();
        std::fs::remove_dir_all(&self.base)
            .with_context(|| format!("removing {}", self.base.display()))?;
        self.destroyed = true;
        Ok(())
    }

    fn shut_down(&mut self) {
        self.stop_operator();
        let _ = crate::control_plane_down(&self.cp.state_dir);
    }

    /// `kubectl get KIND NAME -n NS -o json`.
    ///
    /// # Errors
    /// When kubectl fails.
    pub fn get_json(&self, kind: &str, ns: &str, name: &str) -> Result<serde_json::Value> {
        let out = self
            .cp
            .kubectl(["get", kind, name, "-n", ns, "-o", "json"])?;
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Polls a KmsKey until `ready` holds; returns it.
    ///
    /// # Errors
    /// After a timeout, with its status and the operator's log path.
    pub fn wait_key(
        &self,
        ns: &str,
        name: &str,
        what: &str,
        ready: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let deadline = Instant::now() + KEY_TIMEOUT;
        loop {
            let key = self.get_json("kmskey", ns, name).ok();
            if let Some(key) = key.as_ref().filter(|k| ready(k)) {
                return Ok(key.clone());
            }
            ensure!(
                Instant::now() < deadline,
                "KmsKey {ns}/{name} not {what} after {}s: {}; operator log {}",
                KEY_TIMEOUT.as_secs(),
                key.and_then(|k| k.get("status").cloned())
                    .unwrap_or_default(),
                self.cp.log_path("kubekms-operator").display()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Polls a KmsKeyMaterial until it holds `versions` material versions; returns it.
    ///
    /// # Errors
    /// After a timeout.
    pub fn wait_versions(
        &self,
        ns: &str,
        name: &str,
        versions: usize,
    ) -> Result<serde_json::Value> {
        let deadline = Instant::now() + KEY_TIMEOUT;
        loop {
            let record = self.get_json("kmskeymaterial", ns, name).ok();
            let held = record
                .as_ref()
                .and_then(|r| r.pointer("/spec/versions"))
                .and_then(|v| v.as_array())
                .map_or(0, Vec::len);
            if held == versions {
                return record.ok_or_else(|| anyhow!("no record"));
            }
            ensure!(
                Instant::now() < deadline,
                "KmsKeyMaterial {ns}/{name} holds {held} versions, not {versions}, after {}s; operator log {}",
                KEY_TIMEOUT.as_secs(),
                self.cp.log_path("kubekms-operator").display()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Rotates a KmsKey on demand (a new `spec.rotation.onDemandToken`) and waits for the
    /// record to hold `versions` versions.
    ///
    /// # Errors
    /// When the patch is refused or the version does not appear.
    pub fn rotate(
        &self,
        ns: &str,
        name: &str,
        token: &str,
        versions: usize,
    ) -> Result<serde_json::Value> {
        let patch = serde_json::json!({"spec": {"rotation": {"onDemandToken": token}}});
        self.cp.kubectl([
            "patch",
            "kmskey",
            name,
            "-n",
            ns,
            "--type",
            "merge",
            "-p",
            &patch.to_string(),
        ])?;
        self.wait_versions(ns, name, versions)
    }

    /// Creates the KmsKeys `keys` (name, spec) in the namespace `ns` and waits until each
    /// is Enabled.
    ///
    /// # Errors
    /// When kubectl fails or a key is not Enabled in time.
    pub fn create_keys<S: AsRef<str>>(
        &self,
        ns: &str,
        keys: &[(S, serde_json::Value)],
    ) -> Result<()> {
        let manifests: Vec<serde_json::Value> = keys
            .iter()
            .map(|(name, spec)| {
                serde_json::json!({
                    "apiVersion": "kubekms.io/v1alpha1", "kind": "KmsKey",
                    "metadata": {"name": name.as_ref(), "namespace": ns}, "spec": spec,
                })
            })
            .collect();
        self.cp.apply(&serde_json::Value::Array(manifests))?;
        for (name, _) in keys {
            self.wait_key(ns, name.as_ref(), "Enabled", |k| {
                k.pointer("/status/keyState").and_then(|s| s.as_str()) == Some("Enabled")
            })?;
        }
        Ok(())
    }

    /// Every KmsKey and KmsKeyMaterial, as `kubectl get -A -o json` prints them (a List).
    ///
    /// # Errors
    /// When kubectl fails.
    pub fn objects_json(&self) -> Result<String> {
        let out = self
            .cp
            .kubectl(["get", "kmskeys,kmskeymaterials", "-A", "-o", "json"])?;
        Ok(String::from_utf8(out.stdout)?)
    }
}

/// Every key of `objects` (`namespace/name` to key), unwrapped under `store` by
/// `kubekms_k8s::unwrap::key_from_objects`, the function the keyring of kubekms-server and
/// of the plugin's follow mode unwraps with.
///
/// # Errors
/// On any record without its KmsKey, or that does not unwrap.
pub fn unwrap_all(
    objects: &BackupObjects,
    store: &dyn RootKeyStore,
) -> Result<BTreeMap<String, KmsKey>> {
    let mut keys = BTreeMap::new();
    for ((ns, name), record) in &objects.records {
        let object = objects
            .keys
            .get(&(ns.clone(), name.clone()))
            .ok_or_else(|| anyhow!("no KmsKey {ns}/{name}"))?;
        let key = kubekms_k8s::unwrap::key_from_objects(object, record, store)
            .with_context(|| format!("unwrapping {ns}/{name}"))?;
        keys.insert(format!("{ns}/{name}"), key);
    }
    Ok(keys)
}

impl Drop for Site {
    fn drop(&mut self) {
        if self.destroyed {
            return;
        }
        self.shut_down();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }
}
