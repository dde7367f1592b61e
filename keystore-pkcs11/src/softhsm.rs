//! Test support (feature `softhsm`): a SoftHSM2 token in a folder of its own, made with
//! `softhsm2-util` as an operator would, for the tests of every crate that use the PKCS#11
//! store. SoftHSM2 reads `SOFTHSM2_CONF` once per process, at `C_Initialize`, and a test
//! may not change its own environment: processes that use the token get
//! [`SoftHsmToken::env`] (or are made by [`SoftHsmToken::command`]); an in-process check
//! runs in a child test process ([`in_own_token`]).

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Pkcs11Config;

/// Debian's SoftHSM2 module.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// The user PIN of every token made here (the content of [`SoftHsmToken::pin_file`]).
pub const USER_PIN: &str = "3141";

const SO_PIN: &str = "2718";

/// Tells a child test process of [`in_own_token`] the folder of its token.
const CHILD_ENV: &str = "KUBEKMS_TEST_SOFTHSM_DIR";

/// A token, its configuration file and its PIN file, under one folder.
#[derive(Debug, Clone)]
pub struct SoftHsmToken {
    /// `softhsm2.conf` (tokens in `<folder>/tokens`).
    pub conf: PathBuf,
    /// The user PIN, mode 0600.
    pub pin_file: PathBuf,
    /// The token's label.
    pub label: String,
}

impl SoftHsmToken {
    /// Initializes a token labelled `label` in `folder` (created if needed).
    ///
    /// # Errors
    /// I/O errors, or `softhsm2-util` failing (its stderr in the message).
    pub fn create(folder: &Path, label: &str) -> Result<Self, String> {
        let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
        let tokens = folder.join("tokens");
        std::fs::create_dir_all(&tokens).map_err(|e| io("token folder", e))?;
        let conf = folder.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            ),
        )
        .map_err(|e| io("softhsm2.conf", e))?;
        let token = Self::at(folder, label);
        token.add_token(label)?;
        std::fs::write(&token.pin_file, format!("{USER_PIN}\n")).map_err(|e| io("PIN file", e))?;
        std::fs::set_permissions(&token.pin_file, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io("PIN file mode", e))?;
        Ok(token)
    }

    /// The token labelled `label` that [`SoftHsmToken::create`] made in `folder`.
    #[must_use]
    pub fn at(folder: &Path, label: &str) -> Self {
        Self {
            conf: folder.join("softhsm2.conf"),
            pin_file: folder.join("hsm.pin"),
            label: label.to_owned(),
        }
    }

    /// Initializes one more token, labelled `label`, under the same configuration and PIN
    /// (done before any process of the test loads the module, which lists the tokens once).
    ///
    /// # Errors
    /// `softhsm2-util` failing (its stderr in the message).
    pub fn add_token(&self, label: &str) -> Result<Self, String> {
        let out = self
            .command("softhsm2-util")
            .args(["--init-token", "--free", "--label", label])
            .args(["--pin", USER_PIN, "--so-pin", SO_PIN])
            .output()
            .map_err(|e| format!("softhsm2-util: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "softhsm2-util --init-token: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(Self {
            label: label.to_owned(),
            ..self.clone()
        })
    }

    /// The folder of the configuration, the tokens and the PIN file.
    #[must_use]
    pub fn folder(&self) -> &Path {
        self.conf.parent().unwrap_or(Path::new("."))
    }

    /// The folder SoftHSM2 keeps the tokens in.
    #[must_use]
    pub fn tokens(&self) -> PathBuf {
        self.folder().join("tokens")
    }

    /// The store's configuration.
    #[must_use]
    pub fn config(&self) -> Pkcs11Config {
        Pkcs11Config {
            module: SOFTHSM_MODULE.into(),
            token_label: self.label.clone(),
            pin_file: self.pin_file.clone(),
        }
    }

    /// `--pkcs11-module M --pkcs11-token-label L --pkcs11-pin-file F`.
    #[must_use]
    pub fn flags(&self) -> Vec<String> {
        vec![
            "--pkcs11-module".into(),
            SOFTHSM_MODULE.into(),
            "--pkcs11-token-label".into(),
            self.label.clone(),
            "--pkcs11-pin-file".into(),
            self.pin_file.display().to_string(),
        ]
    }

    /// The environment a process that opens the token needs.
    #[must_use]
    pub fn env(&self) -> (&'static str, PathBuf) {
        ("SOFTHSM2_CONF", self.conf.clone())
    }

    /// `program`, with the environment that opens the token.
    #[must_use]
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(program);
        let (name, value) = self.env();
        command.env(name, value);
        command
    }
}

/// Runs `body` with a token of its own, labelled `labels[0]` (and one more token for each
/// further label, same PIN). The test process cannot point SoftHSM2 at a new configuration,
/// so `body` runs in a child process of this test binary that runs only the test
/// `test_name` (which must call this function with the same labels), with `SOFTHSM2_CONF`
/// set; in the parent this function returns once the child's test passed.
///
/// # Panics
/// If the token cannot be made, the child cannot run, or its test fails (the child's
/// output in the message).
pub fn in_own_token(test_name: &str, labels: &[&str], body: impl FnOnce(&SoftHsmToken)) {
    let label = labels.first().copied().unwrap_or("kubekms-test");
    if let Some(folder) = std::env::var_os(CHILD_ENV) {
        body(&SoftHsmToken::at(Path::new(&folder), label));
        return;
    }
    let folder = tempfile::tempdir().expect("tempdir");
    let token = SoftHsmToken::create(folder.path(), label).expect("SoftHSM2 token");
    for other in labels.iter().skip(1) {
        token.add_token(other).expect("another SoftHSM2 token");
    }
    let output = token
        .command(std::env::current_exe().expect("current exe"))
        .args([test_name, "--exact", "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, folder.path())
        .output()
        .expect("child test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "child {test_name}:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
