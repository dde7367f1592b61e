//! The servers the benchmark measures, each behind [`Target`]: how to start it, where it
//! listens, how to sign for it, which key to use. The `api_load` bench runs the same load
//! against every target that starts; adding one is an implementation of `start`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::floor::FLOOR_KEY_ARN;
use crate::kms::{KmsEndpoint, StaticCredentials};
use crate::process::{ProcessError, ServerProcess};

pub use crate::kubekms_server::{KubekmsServer, ServerBinaries};

/// The account of local-kms's ARNs.
pub const LOCAL_KMS_ACCOUNT: &str = "111122223333";

/// What a target needs to start.
#[derive(Debug, Clone)]
pub struct StartContext {
    /// A fresh folder of the target's own (logs, data, seed files), removed after the run.
    pub scratch: PathBuf,
    /// The region every request is signed for.
    pub region: String,
    /// The root of this repository (for hack/ scripts).
    pub repo_root: PathBuf,
    /// How long the target may take to start listening.
    pub ready_timeout: Duration,
}

/// Why a target did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The target cannot run on this machine or in this tree (not built yet, a toolchain
    /// missing): reported, and the others are measured.
    #[error("not available: {0}")]
    Unavailable(String),
    /// Its process failed.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// Anything else that went wrong while starting it.
    #[error("{0}")]
    Failed(String),
}

/// A started target, stopped when dropped.
pub struct RunningTarget {
    /// Its name in tables and RESULT lines.
    pub name: &'static str,
    /// Where it listens and how to sign for it.
    pub endpoint: KmsEndpoint,
    /// The symmetric key that Encrypt and GenerateDataKey name.
    pub key_id: String,
    /// What a reader of the figures should know (e.g. "checks no signature").
    pub notes: &'static str,
    /// Its process, whose CPU time is measured.
    pub pid: u32,
    /// The process when this benchmark started it (stopped on drop); `None` for a server
    /// started by someone else.
    pub process: Option<ServerProcess>,
    /// Where its output goes, when known.
    pub log: Option<PathBuf>,
    /// What it needs while it runs (kubekms-server: its control plane and the operator),
    /// dropped after its process is stopped.
    pub support: Option<Box<dyn std::any::Any>>,
}

impl RunningTarget {
    /// A target whose process this benchmark started (and stops when dropped).
    #[must_use]
    pub fn started(
        name: &'static str,
        endpoint: KmsEndpoint,
        key_id: String,
        notes: &'static str,
        process: ServerProcess,
    ) -> Self {
        Self {
            name,
            endpoint,
            key_id,
            notes,
            pid: process.pid(),
            log: Some(process.log().to_owned()),
            process: Some(process),
            support: None,
        }
    }

    /// The pid of its process.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether its process still runs.
    pub fn is_running(&mut self) -> bool {
        match &mut self.process {
            Some(process) => process.is_running(),
            None => std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
                .ok()
                .and_then(|s| s.rsplit_once(") ").map(|(_, a)| !a.starts_with('Z')))
                .unwrap_or(false),
        }
    }
}

/// A server that the benchmark can measure.
pub trait Target {
    /// Its name in tables and RESULT lines.
    fn name(&self) -> &'static str;
    /// Starts it and waits until it listens.
    ///
    /// # Errors
    /// [`StartError::Unavailable`] when it cannot run here, else why it failed.
    fn start(&self, context: &StartContext) -> Result<RunningTarget, StartError>;
}

/// The HTTP floor (`kubekms-http-floor`, [`crate::floor`]).
pub struct HttpFloor {
    /// The `kubekms-http-floor` binary.
    pub bin: PathBuf,
}

impl Target for HttpFloor {
    fn name(&self) -> &'static str {
        "floor"
    }

    fn start(&self, context: &StartContext) -> Result<RunningTarget, StartError> {
        let mut command = Command::new(&self.bin);
        command.args(["--listen", "127.0.0.1:0"]);
        let mut process =
            ServerProcess::spawn(self.name(), command, &context.scratch.join("floor.log"))?;
        let addr = process.wait_for_line(context.ready_timeout, |line| {
            line.strip_prefix(crate::floor::LISTENING)?
                .trim()
                .parse()
                .ok()
        })?;
        Ok(RunningTarget::started(
            self.name(),
            KmsEndpoint {
                addr,
                region: context.region.clone(),
                credentials: StaticCredentials::unchecked(),
            },
            FLOOR_KEY_ARN.to_owned(),
            "fixed reply, no signature check, no JSON, no cryptography",
            process,
        ))
    }
}

/// local-kms, the Go emulator of AWS KMS, built from its pinned Go module by
/// `hack/tools/local-kms.sh`, with one seeded AES key.
pub struct LocalKms {
    /// Its binary; `None` builds it (or finds it cached) with `hack/tools/local-kms.sh`.
    pub bin: Option<PathBuf>,
}

impl LocalKms {
    fn binary(&self, repo_root: &Path) -> Result<PathBuf, StartError> {
        if let Some(bin) = &self.bin {
            return Ok(bin.clone());
        }
        let script = repo_root.join("hack/tools/local-kms.sh");
        let out = Command::new(&script)
            .arg("--print-dir")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(|e| StartError::Failed(format!("{}: {e}", script.display())))?;
        if !out.status.success() {
            return Err(which_failure(&script, out.status));
        }
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Ok(PathBuf::from(dir).join("local-kms"))
    }
}

/// A build that failed because Go is missing makes the target unavailable; any other
/// failure is an error.
fn which_failure(script: &Path, status: std::process::ExitStatus) -> StartError {
    let go_missing = Command::new("go")
        .arg("version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| !s.success())
        .unwrap_or(true);
    if go_missing {
        StartError::Unavailable("the Go toolchain is not installed (it builds local-kms)".into())
    } else {
        StartError::Failed(format!("{} failed ({status})", script.display()))
    }
}

impl Target for LocalKms {
    fn name(&self) -> &'static str {
        "local-kms"
    }

    fn start(&self, context: &StartContext) -> Result<RunningTarget, StartError> {
        let bin = self.binary(&context.repo_root)?;
        let key_id = uuid::Uuid::new_v4().hyphenated().to_string();
        // 32 bytes of backing key, hex; two v4 UUIDs are random enough for a benchmark key.
        let backing_key = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let seed = context.scratch.join("seed.yaml");
        std::fs::write(
            &seed,
            format!(
                "Keys:\n  Symmetric:\n    Aes:\n      - Metadata:\n          KeyId: {key_id}\n          Description: kubekms api_load benchmark\n        BackingKeys:\n          - {backing_key}\n"
            ),
        )
        .map_err(|e| StartError::Failed(format!("writing {}: {e}", seed.display())))?;
        let mut command = Command::new(&bin);
        // local-kms listens on all addresses (":PORT"); only loopback is used.
        command
            .env("PORT", "0")
            .env("KMS_REGION", &context.region)
            .env("KMS_ACCOUNT_ID", LOCAL_KMS_ACCOUNT)
            .env("KMS_DATA_PATH", context.scratch.join("data"))
            .env("KMS_SEED_PATH", &seed);
        let mut process =
            ServerProcess::spawn(self.name(), command, &context.scratch.join("local-kms.log"))?;
        let port: u16 = process.wait_for_line(context.ready_timeout, |line| {
            let (_, rest) = line.split_once("Local KMS started on 0.0.0.0:")?;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })?;
        Ok(RunningTarget::started(
            self.name(),
            KmsEndpoint {
                addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                region: context.region.clone(),
                credentials: StaticCredentials::unchecked(),
            },
            key_id,
            "checks no signature; logs one line per request to a file",
            process,
        ))
    }
}

/// A server that runs already (started by hand or by a test harness): measured where it
/// listens, with the credentials and key given.
#[derive(Debug, Clone)]
pub struct ExternalServer {
    /// Where it listens (loopback) and how to sign for it.
    pub endpoint: KmsEndpoint,
    /// The symmetric key that Encrypt and GenerateDataKey name.
    pub key_id: String,
    /// Its process, for its CPU time.
    pub pid: u32,
}
