//! Test support (feature `softhsm`): a SoftHSM2 token in a folder of its own, made with
//! `softhsm2-util` as an operator would, for the tests of every crate that use the PKCS#11
//! store. SoftHSM2 reads `SOFTHSM2_CONF` once per process, at `C_Initialize`, and a test
//! may not change its own environment: processes that use the token get
//! [`SoftHsmToken::env`]; an in-process check runs in a child test process.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Pkcs11Config;

/// Debian's SoftHSM2 module.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

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
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .map_err(|e| io("softhsm2.conf", e))?;
        let out = Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", label])
            .args(["--pin", "3141", "--so-pin", "2718"])
            .env("SOFTHSM2_CONF", &conf)
            .output()
            .map_err(|e| io("softhsm2-util", e))?;
        if !out.status.success() {
            return Err(format!(
                "softhsm2-util --init-token: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let pin_file = folder.join("hsm.pin");
        std::fs::write(&pin_file, "3141\n").map_err(|e| io("PIN file", e))?;
        std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io("PIN file mode", e))?;
        Ok(Self {
            conf,
            pin_file,
            label: label.to_owned(),
        })
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
}
