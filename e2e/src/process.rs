//! Stopping and restarting one process of a running control plane the way the launcher
//! started it (own session, log appended, pid file with start time), so tests can restart
//! kube-apiserver or the KMS plugin while `control-plane.sh down` and the watchdog still
//! find what runs.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};

use crate::{ControlPlane, repo_root};

/// How long a process may take to exit after SIGTERM (a client's open watch holds
/// kube-apiserver's graceful shutdown for up to 60 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(90);
/// How long kube-apiserver may take to become ready after a restart.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The start time of a process (field 22 of /proc/PID/stat), which tells a pid reused by
/// another process from the one we started.
#[must_use]
pub fn proc_starttime(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(") ")?.1;
    after.split_whitespace().nth(19).map(str::to_owned)
}

/// Whether the process has exited (gone, or a zombie not reaped yet).
#[must_use]
pub fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, a)| a.starts_with('Z')))
        .unwrap_or(true)
}

/// The packages whose binaries the e2e tests run, built together by
/// [`build_workspace_bins`] (one `cargo build`, so one feature resolution, the same as
/// `hack/test.sh` and `hack/local-up.sh` use).
pub const WORKSPACE_BIN_PACKAGES: &[&str] =
    &["kubekms-plugin", "kubekms-operator", "kubekms-server"];

/// Where cargo put this test binary: `<target>[/<triple>]/<profile>/deps/<exe>`.
struct BuildLayout {
    target_dir: PathBuf,
    triple: Option<String>,
    profile: String,
    bin_dir: PathBuf,
}

fn build_layout() -> Result<BuildLayout> {
    let exe = std::env::current_exe()?;
    let bin_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("no profile folder above {}", exe.display()))?
        .to_path_buf();
    let profile = bin_dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("odd profile folder {}", bin_dir.display()))?
        .to_owned();
    let above = bin_dir
        .parent()
        .ok_or_else(|| anyhow!("no target folder above {}", bin_dir.display()))?;
    // cargo marks the root of a target folder with CACHEDIR.TAG; one level more means
    // `--target <triple>`.
    let (target_dir, triple) = match above.parent() {
        Some(root)
            if !above.join("CACHEDIR.TAG").exists() && root.join("CACHEDIR.TAG").exists() =>
        {
            (
                root.to_path_buf(),
                above
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(str::to_owned),
            )
        }
        _ => (above.to_path_buf(), None),
    };
    Ok(BuildLayout {
        target_dir,
        triple,
        profile,
        bin_dir,
    })
}

static WORKSPACE_BINS: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();

/// Builds (or brings up to date) the plugin, operator and server binaries with this test binary's
/// profile, target and target folder, once per process, and returns the folder that holds
/// them. `cargo test` builds neither binary for the e2e crate, so without this a test would
/// run whatever an earlier build left there, or nothing.
///
/// # Errors
/// When cargo cannot be run or the build fails: the message says how to build them by
/// hand, or to name binaries with `KUBEKMS_PLUGIN_BIN` / `KUBEKMS_OPERATOR_BIN` /
/// `KUBEKMS_SERVER_BIN`.
pub fn build_workspace_bins() -> Result<PathBuf> {
    WORKSPACE_BINS
        .get_or_init(|| run_workspace_build().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!("{e}"))
}

fn run_workspace_build() -> Result<PathBuf> {
    let layout = build_layout()?;
    // Under `cargo test`, CARGO names the cargo that runs us.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(repo_root())
        .args(["build", "--quiet", "--bins"]);
    for package in WORKSPACE_BIN_PACKAGES {
        cmd.args(["-p", package]);
    }
    cmd.arg("--target-dir").arg(&layout.target_dir);
    if let Some(triple) = &layout.triple {
        cmd.args(["--target", triple]);
    }
    match layout.profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let shown = format!("{cmd:?}");
    let hint = format!(
        "build them with `cargo build -p {}` (the profile and target folder of the tests), or \
         name binaries with KUBEKMS_PLUGIN_BIN / KUBEKMS_OPERATOR_BIN / KUBEKMS_SERVER_BIN",
        WORKSPACE_BIN_PACKAGES.join(" -p ")
    );
    let started = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {shown}; {hint}"))?;
    ensure!(
        out.status.success(),
        "{shown} failed ({}):\n{}\n{hint}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "[e2e] {} up to date in {} ({:.1}s)",
        WORKSPACE_BIN_PACKAGES.join(", "),
        layout.bin_dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(layout.bin_dir)
}

/// A binary of this workspace: `$env` when set (used as it is), else `name` from
/// [`build_workspace_bins`], which builds it first (once per process) so a stale or
/// missing binary is never run.
///
/// # Errors
/// When `$env` names no file, or the build fails or does not produce `name`.
pub fn sibling_bin(env: &str, name: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(p);
        ensure!(path.is_file(), "{env}={} is not a file", path.display());
        return Ok(path);
    }
    let path = build_workspace_bins()?.join(name);
    ensure!(
        path.is_file(),
        "{} not found after building {}: is {name} one of their binaries? (or set {env})",
        path.display(),
        WORKSPACE_BIN_PACKAGES.join(", ")
    );
    Ok(path)
}

/// The built kube-apiserver/etcd/kubectl: those of the suite's control plane when one is
/// named, else from `hack/tools/build.sh` (cached).
///
/// # Errors
/// When the tools cannot be built.
pub fn tools_bin() -> Result<PathBuf> {
    if std::env::var_os(crate::ENV_STATE).is_some_and(|v| !v.is_empty()) {
        return Ok(ControlPlane::shared()?.tools_bin.clone());
    }
    let out = Command::new(repo_root().join("hack/tools/build.sh"))
        .arg("--print-dir")
        .stdin(Stdio::null())
        .output()?;
    ensure!(
        out.status.success(),
        "hack/tools/build.sh --print-dir: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Quotes a path for a `sh -c` command line.
#[must_use]
pub fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// `kubekms-plugin init --state-dir DIR`: a new root key and bootstrap key.
pub fn init_plugin_state(plugin_bin: &Path, dir: &Path) -> Result<()> {
    let init = Command::new(plugin_bin)
        .args(["init", "--state-dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .output()?;
    ensure!(
        init.status.success(),
        "kubekms-plugin init: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    Ok(())
}

impl ControlPlane {
    /// A private control plane in `state_dir` whose Secrets are encrypted by the KMS v2
    /// plugin `plugin_cmd` (a shell command, started before kube-apiserver) on `socket`;
    /// torn down by the launcher's watchdog when this process exits.
    pub fn start_with_plugin(state_dir: &Path, socket: &Path, plugin_cmd: &str) -> Result<Self> {
        let out = Command::new(repo_root().join("hack/control-plane.sh"))
            .arg("up")
            .arg("--state-dir")
            .arg(state_dir)
            .arg("--tools-bin")
            .arg(tools_bin()?)
            .args(["--watch-pid", &std::process::id().to_string()])
            .arg("--kms-socket")
            .arg(socket)
            .arg("--plugin-cmd")
            .arg(plugin_cmd)
            .stdin(Stdio::null())
            .output()?;
        ensure!(
            out.status.success(),
            "control-plane.sh up with the plugin ({plugin_cmd}) failed:\n{}\nlogs of every process: {}",
            String::from_utf8_lossy(&out.stderr),
            state_dir.join("logs").display()
        );
        Self::from_state_dir(state_dir)
    }

    /// The launcher's pid file of `process` (`kube-apiserver`, `kms-plugin`, `etcd`).
    #[must_use]
    pub fn pid_file(&self, process: &str) -> PathBuf {
        self.state_dir.join("pids").join(format!("{process}.pid"))
    }

    /// The pid of a process of this control plane.
    ///
    /// # Errors
    /// When there is no pid file or it does not parse.
    pub fn pid_of(&self, process: &str) -> Result<i32> {
        let text = std::fs::read_to_string(self.pid_file(process))
            .with_context(|| format!("no pid file for {process}"))?;
        text.split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| anyhow!("bad pid file for {process}: {text:?}"))
    }

    /// The command line of a running process of this control plane.
    ///
    /// # Errors
    /// When the process is not running.
    pub fn argv_of(&self, process: &str) -> Result<Vec<String>> {
        let pid = self.pid_of(process)?;
        let raw = std::fs::read(format!("/proc/{pid}/cmdline"))
            .with_context(|| format!("{process} (pid {pid}) is not running"))?;
        Ok(raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect())
    }

    /// SIGTERM to the process group, then wait until it is gone.
    ///
    /// # Errors
    /// When the signal cannot be sent or the process outlives [`STOP_TIMEOUT`].
    pub fn stop_process(&self, process: &str) -> Result<()> {
        let pid = self.pid_of(process)?;
        let start = proc_starttime(pid);
        let group = rustix::process::Pid::from_raw(pid).ok_or_else(|| anyhow!("pid {pid}"))?;
        rustix::process::kill_process_group(group, rustix::process::Signal::TERM)
            .with_context(|| format!("SIGTERM to {process} (pid {pid})"))?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        while start.is_some() && proc_starttime(pid) == start && !is_zombie(pid) {
            ensure!(
                Instant::now() < deadline,
                "{process} (pid {pid}) still runs {}s after SIGTERM",
                STOP_TIMEOUT.as_secs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        std::fs::remove_file(self.pid_file(process)).ok();
        Ok(())
    }

    /// Starts `argv` as `process` the way the launcher does (own session, log appended,
    /// pid file written), detached from this test process.
    ///
    /// # Errors
    /// When the process cannot be started or its pid file written.
    pub fn start_process(&self, process: &str, argv: &[String]) -> Result<()> {
        let log = self.log_path(process);
        let out = Command::new("bash")
            .arg("-c")
            .arg(r#"log="$1"; shift; setsid "$@" >>"${log}" 2>&1 </dev/null & echo $!"#)
            .arg("start")
            .arg(&log)
            .args(argv)
            .stdin(Stdio::null())
            .output()?;
        ensure!(out.status.success(), "starting {process} failed");
        let pid: i32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .context("pid of the started process")?;
        let started = proc_starttime(pid).unwrap_or_else(|| "0".to_owned());
        let mut file = std::fs::File::create(self.pid_file(process))?;
        writeln!(file, "{pid} {started}")?;
        Ok(())
    }

    /// Waits until kube-apiserver answers /readyz.
    ///
    /// # Errors
    /// After [`READY_TIMEOUT`], naming where to look.
    pub fn wait_apiserver_ready(&self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if self.kubectl(["get", "--raw", "/readyz"]).is_ok() {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "kube-apiserver not ready {}s after its start; {}",
                READY_TIMEOUT.as_secs(),
                self.where_to_look()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}
