//! Moving a state folder from its root key file to root keys in a PKCS#11 token, beside
//! the operator's migration of the KmsKeyMaterial records (docs/hsm.md, "Migrating").
//!
//! `kubekms-plugin migrate-root-key` records the token in the folder
//! ([`super::PKCS11_FILE`]) and keeps `root.key`: from then on the folder's store wraps
//! under the token and unwraps under either ([`kms_core::keystore::MigratingKeyStore`]).
//! Then it rewraps every version of every record in `keys/` under the token, one record
//! file at a time (atomic write, under the folder's lock), each checked by unwrapping it
//! under the token first. Running it again finishes what a kill interrupted. When it
//! reports nothing left under the file, `root.key` can be removed from the folder.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use keystore_pkcs11::{Pkcs11Config, Pkcs11KeyStore};
use kms_core::KeyId;
use kms_core::keystore::{RootKeyStore, rewrap, wrapped_by};

use super::files::{read_private, write_atomic};
use super::record::{record_metadata, record_owner, wrap_context};
use super::{FORMAT, KeyRecord, Pkcs11Record, StateDir, absolute};
use crate::error::PluginError;

/// What a migration of the folder did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FolderMigration {
    /// The token's root key id.
    pub root_key_id: String,
    /// Record files rewritten by this run.
    pub rewrapped: Vec<String>,
    /// Record files already under the token.
    pub already: usize,
    /// Record files left as they were, with why.
    pub failed: Vec<String>,
}

impl FolderMigration {
    /// For people: counts, and whether `root.key` may go.
    #[must_use]
    pub fn report(&self) -> String {
        let mut out = format!(
            "{} key records rewrapped under root key {} (PKCS#11 token), {} already under it, {} not moved\n",
            self.rewrapped.len(),
            self.root_key_id,
            self.already,
            self.failed.len()
        );
        for failed in &self.failed {
            out.push_str(&format!("  not moved: {failed}\n"));
        }
        if self.failed.is_empty() {
            out.push_str(
                "every record of this folder is under the token; once the operator's migration is done \
                 (docs/hsm.md), root.key can be removed from this folder\n",
            );
        }
        out
    }
}

fn record_needs_rewrap(record: &KeyRecord, primary: &dyn RootKeyStore) -> bool {
    record.root_key_id != primary.root_key_id()
        || record.versions.iter().any(|v| {
            v.wrapped_material.as_ref().is_some_and(|w| {
                BASE64
                    .decode(w)
                    .map_or(true, |bytes| !wrapped_by(primary, &bytes))
            })
        })
}

fn rewrap_folder_record(
    from: &dyn RootKeyStore,
    to: &dyn RootKeyStore,
    record: &KeyRecord,
) -> Result<KeyRecord, PluginError> {
    let metadata = record_metadata(record)?;
    let owner = record_owner(record)?;
    let mut next = record.clone();
    for version in &mut next.versions {
        let Some(wrapped) = &version.wrapped_material else {
            continue;
        };
        let bytes = BASE64.decode(wrapped).map_err(|e| {
            PluginError::StateFolder(format!(
                "key {} version {}: {e}",
                record.key_id, version.version
            ))
        })?;
        let context = wrap_context(&metadata, owner.as_ref(), version.version);
        let moved = rewrap(from, to, &context, &bytes).map_err(PluginError::Core)?;
        version.wrapped_material = Some(BASE64.encode(moved));
    }
    next.root_key_id = to.root_key_id();
    Ok(next)
}

impl StateDir {
    /// Records the PKCS#11 token `config` (whose root keys exist: the operator's
    /// `--init-root-key` made them) as this folder's primary store, keeping `root.key` as
    /// the previous one, and rewraps every record under the token.
    ///
    /// # Errors
    /// A folder without `root.key` and without a token, or recorded with another token;
    /// the token's errors (it is opened before anything is written).
    pub fn migrate_root_key(&self, config: &Pkcs11Config) -> Result<FolderMigration, PluginError> {
        if !self.is_initialized() {
            return Err(PluginError::NotInitialized(self.root.clone()));
        }
        let config = Pkcs11Config {
            module: absolute(&config.module)?,
            token_label: config.token_label.clone(),
            pin_file: absolute(&config.pin_file)?,
        };
        let _lock = self.lock()?;
        let token = Pkcs11KeyStore::open(&config).map_err(PluginError::Core)?;
        let wanted = Pkcs11Record {
            format: FORMAT,
            module: config.module.display().to_string(),
            token_label: config.token_label.clone(),
            pin_file: config.pin_file.display().to_string(),
        };
        match read_private(&self.pkcs11_path())? {
            Some(bytes) => {
                let recorded: Pkcs11Record = serde_json::from_slice(&bytes).map_err(|e| {
                    PluginError::StateFolder(format!("{}: {e}", self.pkcs11_path().display()))
                })?;
                if recorded.token_label != wanted.token_label || recorded.module != wanted.module {
                    return Err(PluginError::StateFolder(format!(
                        "{} already names token {:?} (module {}); not switching to another token mid-migration",
                        self.pkcs11_path().display(),
                        recorded.token_label,
                        recorded.module
                    )));
                }
            }
            None => {
                if !self.root_key_path().exists() {
                    return Err(PluginError::StateFolder(format!(
                        "{} has no root.key to migrate from",
                        self.root.display()
                    )));
                }
                let bytes = serde_json::to_vec_pretty(&wanted)
                    .map_err(|e| PluginError::StateFolder(e.to_string()))?;
                write_atomic(&self.pkcs11_path(), &bytes)?;
            }
        }
        let to: Arc<dyn RootKeyStore> = Arc::new(token);
        let from = self.open_root_key()?;
        let mut out = FolderMigration {
            root_key_id: to.root_key_id(),
            ..FolderMigration::default()
        };
        let mut names: Vec<String> = std::fs::read_dir(self.keys_dir())
            .map_err(|e| PluginError::StateFolder(format!("{}: {e}", self.keys_dir().display())))?
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|name| name.ends_with(".json"))
            .collect();
        names.sort();
        for name in names {
            let Ok(key_id) = KeyId::parse(name.trim_end_matches(".json")) else {
                continue;
            };
            let record = self.read_record(&key_id)?;
            if !record_needs_rewrap(&record, &*to) {
                out.already += 1;
                continue;
            }
            match rewrap_folder_record(&*from, &*to, &record) {
                Ok(next) => {
                    let json = serde_json::to_vec_pretty(&next).map_err(|e| {
                        PluginError::StateFolder(format!("encoding the key record: {e}"))
                    })?;
                    write_atomic(&self.key_path(&key_id), &json)?;
                    out.rewrapped.push(record.key_id);
                }
                Err(error) => out.failed.push(format!("{}: {error}", record.key_id)),
            }
        }
        Ok(out)
    }
}
