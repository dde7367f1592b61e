//! Several control-plane hosts, each a network namespace, made by `hack/multi-host.sh`
//! (issue 11, part 2): a 3-member etcd cluster on hosts 1-3, kube-apiservers on hosts 1 and
//! 2, each with its own kubekms plugin following `kubekms-system/apiserver-key` through its
//! own host's API server, the operator on host 1 and a standby on host 2. The tests run in
//! the root namespace and reach every host over the bridge; partitions are iptables rules
//! in a host's namespace (`cut`/`heal`).
//!
//! Each host's folder holds an `env` file in the format of `hack/control-plane.sh`'s, so
//! [`Hosts::host`] is a [`ControlPlane`] whose kubectl talks to that host's API server,
//! whose etcdctl talks to every member, and whose pid files are that host's
//! (`kill_process`, `is_running` work per host).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use base64::Engine as _;

use crate::ControlPlane;
use crate::process::{sibling_bin, tools_bin};
use crate::repo_root;

/// The namespace of the API server's KmsKey, the plugins' heartbeats and the operator's
/// Lease.
pub const SYSTEM_NAMESPACE: &str = "kubekms-system";
/// The KmsKey both plugins follow.
pub const APISERVER_KEY: &str = "apiserver-key";
/// Hosts that run a kube-apiserver (and its plugin, and an operator).
pub const APISERVER_HOSTS: [usize; 2] = [1, 2];

/// The hosts of one `hack/multi-host.sh up`; `down` when dropped (and by the script's
/// watchdog when this process dies).
#[derive(Debug)]
pub struct Hosts {
    /// The state folder of the script.
    pub state_dir: PathBuf,
    /// Third octet of the subnet 10.213.NET.0/24.
    pub net: u8,
    hosts: Vec<ControlPlane>,
}

fn script() -> PathBuf {
    repo_root().join("hack/multi-host.sh")
}

impl Hosts {
    /// `hack/multi-host.sh up` with the workspace's plugin and operator binaries, this
    /// process as the watched pid, and `operator_args` for both operators.
    ///
    /// # Errors
    /// When the script fails (its stderr, with the tail of the failing process's log).
    pub fn up(operator_args: &str) -> Result<Self> {
        let plugin = sibling_bin("KUBEKMS_PLUGIN_BIN", "kubekms-plugin")?;
        let operator = sibling_bin("KUBEKMS_OPERATOR_BIN", "kubekms-operator")?;
        let state_dir = std::env::temp_dir().join(crate::unique_name("kubekms-mh"));
        let out = Command::new(script())
            .arg("up")
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("--tools-bin")
            .arg(tools_bin()?)
            .arg("--plugin-bin")
            .arg(&plugin)
            .arg("--operator-bin")
            .arg(&operator)
            .args(["--watch-pid", &std::process::id().to_string()])
            .args(["--operator-args", operator_args])
            .stdin(Stdio::null())
            .output()
            .context("running hack/multi-host.sh up")?;
        ensure!(
            out.status.success(),
            "hack/multi-host.sh up failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let net_file = std::fs::read_to_string(state_dir.join("net"))?;
        let net = net_file
            .lines()
            .find_map(|l| l.strip_prefix("NET="))
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| anyhow!("no NET= in {}", state_dir.join("net").display()))?;
        let hosts = (1..=3)
            .map(|i| ControlPlane::from_state_dir(&state_dir.join("hosts").join(format!("h{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            state_dir,
            net,
            hosts,
        })
    }

    /// Host `i` (1-based) as a control plane: its API server (host 1's for a host without
    /// one), every etcd member, its own pid files and logs.
    ///
    /// # Panics
    /// When `i` is not a host (a bug in the test).
    #[must_use]
    #[allow(clippy::expect_used)]
    pub fn host(&self, i: usize) -> &ControlPlane {
        self.hosts
            .get(i.wrapping_sub(1))
            .expect("hosts are numbered 1..=3")
    }

    /// The address of host `i`.
    #[must_use]
    pub fn ip(&self, i: usize) -> String {
        format!("10.213.{}.{i}", self.net)
    }

    /// Runs `hack/multi-host.sh CMD ARGS... --state-dir <ours>`.
    ///
    /// # Errors
    /// On a non-zero exit.
    pub fn script(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(script())
            .args(args)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .stdin(Stdio::null())
            .output()?;
        ensure!(
            out.status.success(),
            "hack/multi-host.sh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Nothing on `host` reaches any kube-apiserver (its own included).
    ///
    /// # Errors
    /// When the script fails.
    pub fn cut_from_apiservers(&self, host: usize) -> Result<()> {
        self.script(&["cut", &host.to_string(), "--apiserver"])
            .map(drop)
    }

    /// `host` loses its network (both ways); its loopback still works.
    ///
    /// # Errors
    /// When the script fails.
    pub fn cut_off(&self, host: usize) -> Result<()> {
        self.script(&["cut", &host.to_string()]).map(drop)
    }

    /// Every cut removed.
    ///
    /// # Errors
    /// When the script fails.
    pub fn heal(&self) -> Result<()> {
        self.script(&["heal"]).map(drop)
    }

    /// Starts again, in its host's namespace and with its first command line, a process
    /// that was stopped or killed.
    ///
    /// # Errors
    /// When the script fails.
    pub fn start(&self, host: usize, process: &str) -> Result<()> {
        self.script(&["start", &host.to_string(), process])
            .map(drop)
    }

    /// The KmsKey both plugins follow, read through the first API server that answers.
    ///
    /// # Errors
    /// When neither answers.
    pub fn kmskey(&self) -> Result<serde_json::Value> {
        let mut last = None;
        for h in APISERVER_HOSTS {
            match self.host(h).kubectl([
                "get",
                "kmskey",
                APISERVER_KEY,
                "-n",
                SYSTEM_NAMESPACE,
                "-o",
                "json",
                "--request-timeout=10s",
            ]) {
                Ok(out) => return Ok(serde_json::from_slice(&out.stdout)?),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("no API server host")))
    }

    /// Polls the KmsKey until `pred` holds on it; returns it.
    ///
    /// # Errors
    /// After `limit`, with the last status seen and where the logs are.
    pub fn wait_kmskey(
        &self,
        limit: Duration,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let deadline = Instant::now() + limit;
        loop {
            let last = match self.kmskey() {
                Ok(key) if pred(&key) => return Ok(key),
                Ok(key) => key.get("status").cloned().unwrap_or_default().to_string(),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "{what}: not reached after {limit:?}; last status {last}; logs under {}/hosts/h*/logs",
                    self.state_dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The text of host `host`'s operator's /metrics.
    ///
    /// # Errors
    /// When it does not answer.
    pub fn operator_metrics(&self, host: usize) -> Result<String> {
        http_get(&format!("{}:8080", self.ip(host)), "/metrics")
    }

    /// Sum of the samples of `metric` in host `host`'s operator's /metrics.
    ///
    /// # Errors
    /// When it does not answer.
    pub fn operator_counter(&self, host: usize, metric: &str) -> Result<u64> {
        let text = self.operator_metrics(host)?;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Ok(text
            .lines()
            .filter(|l| {
                l.strip_prefix(metric)
                    .is_some_and(|rest| rest.starts_with([' ', '{']))
            })
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .map(|v| v as u64)
            .sum())
    }

    /// The raw value of every Secret etcd holds, by etcd key.
    ///
    /// # Errors
    /// When etcdctl fails.
    pub fn stored_secrets(&self) -> Result<BTreeMap<String, Vec<u8>>> {
        let out = self
            .host(1)
            .etcdctl(["get", "/registry/secrets/", "--prefix", "-w", "json"])?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut all = BTreeMap::new();
        for kv in v
            .get("kvs")
            .and_then(|k| k.as_array())
            .into_iter()
            .flatten()
        {
            let field = |name: &str| -> Result<Vec<u8>> {
                Ok(b64.decode(kv.get(name).and_then(|x| x.as_str()).unwrap_or_default())?)
            };
            all.insert(String::from_utf8(field("key")?)?, field("value")?);
        }
        Ok(all)
    }

    /// The plugin socket of host `host`.
    #[must_use]
    pub fn socket(&self, host: usize) -> PathBuf {
        self.host(host).state_dir.join("kms.sock")
    }

    /// Where the logs of host `host` are.
    #[must_use]
    pub fn logs(&self, host: usize) -> PathBuf {
        self.host(host).state_dir.join("logs")
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .arg("down")
            .arg("--state-dir")
            .arg(&self.state_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !std::thread::panicking() && std::env::var_os("KUBEKMS_KEEP_STATE").is_none() {
            let _ = std::fs::remove_dir_all(&self.state_dir);
        }
    }
}

/// A plain HTTP GET with a 5 s timeout (the operator's /metrics).
fn http_get(addr: &str, path: &str) -> Result<String> {
    use std::io::{Read as _, Write as _};
    let sock: std::net::SocketAddr = addr.parse()?;
    let mut stream = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    Ok(body)
}

/// Whether the path is a socket (the plugin serves).
#[must_use]
pub fn is_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket())
}
