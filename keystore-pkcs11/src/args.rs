//! The command-line flags that name a PKCS#11 root key store, shared by the plugin, the
//! operator and kubekms-server. Each binary keeps its own `--root-key PATH` flag and
//! declares it `conflicts_with = "pkcs11_module"`.

use std::path::PathBuf;
use std::sync::Arc;

use kms_core::KmsResult;
use kms_core::keystore::{FileKeyStore, MigratingKeyStore, RootKeyStore};

use crate::{Pkcs11Config, Pkcs11KeyStore};

/// `--pkcs11-module PATH --pkcs11-token-label L --pkcs11-pin-file F`: all three or none.
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct Pkcs11Args {
    /// PKCS#11 module (shared library) of the HSM that holds the root key, instead of a
    /// root key file; e.g. /usr/lib/softhsm/libsofthsm2.so.
    #[arg(long, requires_all = ["pkcs11_token_label", "pkcs11_pin_file"])]
    pub pkcs11_module: Option<PathBuf>,
    /// Label of the token that holds the root key.
    #[arg(long, requires = "pkcs11_module")]
    pub pkcs11_token_label: Option<String>,
    /// File with the token's user PIN (mode 0600 or 0400, owned by this user).
    #[arg(long, requires = "pkcs11_module")]
    pub pkcs11_pin_file: Option<PathBuf>,
}

impl Pkcs11Args {
    /// The configuration, when the flags name a token.
    #[must_use]
    pub fn config(&self) -> Option<Pkcs11Config> {
        match (
            &self.pkcs11_module,
            &self.pkcs11_token_label,
            &self.pkcs11_pin_file,
        ) {
            (Some(module), Some(token_label), Some(pin_file)) => Some(Pkcs11Config {
                module: module.clone(),
                token_label: token_label.clone(),
                pin_file: pin_file.clone(),
            }),
            _ => None,
        }
    }
}

/// `--previous-root-key-file PATH`: the root key file a cluster is moving away from, while
/// the operator rewraps its material under the new store (docs/hsm.md, "Migrating").
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct PreviousRootKeyArgs {
    /// The old root key file, during a migration to the root key given by the other flags:
    /// material wrapped under it still unwraps; nothing new is wrapped under it.
    #[arg(long)]
    pub previous_root_key_file: Option<PathBuf>,
}

/// Opens the store at `location`, and, with a previous root key file, a store that wraps
/// under `location`'s root key and unwraps under either.
///
/// # Errors
/// `KeyUnavailableException` from a store; `ValidationException` when the previous file
/// holds the same root key.
pub fn open_with_previous(
    location: &RootKeyLocation,
    previous: &PreviousRootKeyArgs,
) -> KmsResult<Arc<dyn RootKeyStore>> {
    let primary = location.open()?;
    with_previous(primary, previous)
}

/// `primary`, or a [`MigratingKeyStore`] over it and the previous root key file.
///
/// # Errors
/// As [`open_with_previous`].
pub fn with_previous(
    primary: Arc<dyn RootKeyStore>,
    previous: &PreviousRootKeyArgs,
) -> KmsResult<Arc<dyn RootKeyStore>> {
    match &previous.previous_root_key_file {
        None => Ok(primary),
        Some(path) => {
            let old: Arc<dyn RootKeyStore> = Arc::new(FileKeyStore::open(path)?);
            Ok(Arc::new(MigratingKeyStore::new(primary, vec![old])?))
        }
    }
}

/// Where the root key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootKeyLocation {
    /// A root key file (kms-core `FileKeyStore`).
    File(PathBuf),
    /// Root keys in a PKCS#11 token.
    Pkcs11(Pkcs11Config),
}

impl RootKeyLocation {
    /// The token the flags name, else the file.
    #[must_use]
    pub fn from_flags(root_key: PathBuf, pkcs11: &Pkcs11Args) -> Self {
        match pkcs11.config() {
            Some(config) => Self::Pkcs11(config),
            None => Self::File(root_key),
        }
    }

    /// Opens the store.
    ///
    /// # Errors
    /// `KeyUnavailableException` from the store.
    pub fn open(&self) -> KmsResult<Arc<dyn RootKeyStore>> {
        Ok(match self {
            Self::File(path) => Arc::new(FileKeyStore::open(path)?),
            Self::Pkcs11(config) => Arc::new(Pkcs11KeyStore::open(config)?),
        })
    }

    /// Whether the root key exists: the file, or both key objects in the token.
    ///
    /// # Errors
    /// `KeyUnavailableException` when the token cannot be asked.
    pub fn exists(&self) -> KmsResult<bool> {
        match self {
            Self::File(path) => Ok(path.exists()),
            Self::Pkcs11(config) => Pkcs11KeyStore::root_keys_present(config),
        }
    }

    /// Creates the root key (file or token objects).
    ///
    /// # Errors
    /// `AlreadyExistsException` when it exists; `KeyUnavailableException` from the store.
    pub fn init(&self) -> KmsResult<Arc<dyn RootKeyStore>> {
        Ok(match self {
            Self::File(path) => Arc::new(FileKeyStore::init(path)?),
            Self::Pkcs11(config) => Arc::new(Pkcs11KeyStore::init(config)?),
        })
    }
}

impl std::fmt::Display for RootKeyLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "root key file {}", path.display()),
            Self::Pkcs11(config) => write!(
                f,
                "PKCS#11 token {:?} (module {})",
                config.token_label,
                config.module.display()
            ),
        }
    }
}
