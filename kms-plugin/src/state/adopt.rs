//! The rules for taking a key record from elsewhere (the Kubernetes follower) into the
//! folder: nothing decryptable is ever dropped or replaced, and a plugin that adopted a key
//! from Kubernetes stays on it.

use std::path::PathBuf;

use kms_core::{KeyId, KeyMaterial, KmsKey};

use super::StateDir;
use super::files::{self, write_atomic};
use super::record::{
    ActiveKey, FORMAT, KeyRecord, SOURCE_KUBERNETES, record_metadata, unwrap_version,
};
use crate::error::PluginError;

/// What [`StateDir::adopt`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adopted {
    /// The key.
    pub key_id: KeyId,
    /// Its newest material version.
    pub current_version: u32,
    /// Whether `keys/<uuid>.json` was (re)written.
    pub record_written: bool,
    /// Whether `active-key.json` was (re)written.
    pub active_written: bool,
    /// The files written and their new contents.
    pub written: Vec<(PathBuf, Vec<u8>)>,
}

/// The key Encrypt uses now, as far as the key-switch rule is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveChoice {
    /// Its key id.
    pub key_id: KeyId,
    /// Who made it active (`local`: the bootstrap key; `kubernetes`: adopted by the
    /// follower).
    pub source: String,
    /// The KmsKey it was adopted from (`namespace/name`).
    pub kubernetes_object: Option<String>,
}

/// The key-switch rule: once the plugin has adopted a key from the KmsKey it follows, a
/// record of that KmsKey with another key id is refused, unless `allow_switch`. Moving away
/// from the local bootstrap key (the hand-over, or an operator-made key taking over) is
/// allowed, as is a first adoption from another KmsKey (the plugin was pointed elsewhere).
///
/// Why: anyone who can delete and re-create the KmsKeyMaterial (or holds the operator's
/// token) could otherwise move kube-apiserver to another key wrapped under the same root
/// key, one that nothing protects.
///
/// # Errors
/// [`PluginError::KeySwitch`].
pub fn check_key_switch(
    active: &ActiveChoice,
    target: &str,
    offered: KeyId,
    allow_switch: bool,
) -> Result<(), PluginError> {
    let pinned = active.source == SOURCE_KUBERNETES
        && active.kubernetes_object.as_deref() == Some(target)
        && active.key_id != offered;
    if pinned && !allow_switch {
        return Err(PluginError::KeySwitch {
            target: target.to_owned(),
            pinned: active.key_id,
            offered,
        });
    }
    if pinned {
        tracing::warn!(kmskey = target, from = %active.key_id, to = %offered, "switching to another key of the followed KmsKey (--allow-key-switch)");
    }
    Ok(())
}

/// Checks that `new` keeps every version of `held` with the same material (compared in
/// constant time), so that nothing the plugin can decrypt today is lost.
///
/// # Errors
/// `FollowedKey` naming the version dropped or changed.
pub fn check_keeps_versions<'a>(
    target: &str,
    held: impl IntoIterator<Item = (u32, &'a KeyMaterial)>,
    new: &KmsKey,
) -> Result<(), PluginError> {
    let key_id = new.key_id();
    for (version, material) in held {
        let Some(offered) = new.material(version) else {
            return Err(PluginError::FollowedKey {
                target: target.to_owned(),
                reason: format!(
                    "key {key_id}: this plugin holds material version {version} that the new \
                     record lacks; refusing to drop it (export the local key again)"
                ),
            });
        };
        if !material.same_as(offered) {
            return Err(PluginError::FollowedKey {
                target: target.to_owned(),
                reason: format!(
                    "key {key_id}: material version {version} differs between this plugin and \
                     the new record; refusing to replace it"
                ),
            });
        }
    }
    Ok(())
}

impl StateDir {
    /// Writes a key record that came from Kubernetes, whose material `key` is (already
    /// unwrapped by the keyring from the same wrapped bytes). Under `.lock`, it checks that
    /// the record keeps every version the folder holds for that key with the same
    /// material; with `make_active`, the key becomes the one Encrypt uses. Writes only
    /// what changed, atomically.
    ///
    /// # Errors
    /// A record that would drop or change a version; I/O errors.
    pub fn adopt(
        &self,
        target: &str,
        record: &KeyRecord,
        key: &KmsKey,
        make_active: bool,
    ) -> Result<Adopted, PluginError> {
        let key_id = key.key_id();
        if record.key_id != key_id.to_string() {
            return Err(PluginError::FollowedKey {
                target: target.to_owned(),
                reason: format!(
                    "the record names key {} but its material is of key {key_id}",
                    record.key_id
                ),
            });
        }
        let current_version = key
            .current_material()
            .map_err(|e| PluginError::NoKey(format!("key {key_id}: {e}")))?
            .0;
        let _lock = self.lock()?;
        let existing = self.read_record_opt(&key_id)?;
        if let Some(old) = &existing {
            self.check_file_versions(target, old, record, key)?;
        }
        let mut written = Vec::new();
        let record_written = existing.as_ref() != Some(record);
        if record_written {
            files::ensure_private_folder(&self.keys_dir())?;
            let json = serde_json::to_vec_pretty(record)
                .map_err(|e| PluginError::StateFolder(format!("encoding the key record: {e}")))?;
            let path = self.key_path(&key_id);
            write_atomic(&path, &json)?;
            written.push((path, json));
        }
        let mut active_written = false;
        if make_active {
            let wanted = ActiveKey {
                format: FORMAT,
                key_id: key_id.to_string(),
                source: record.source.clone(),
            };
            if self.read_active_file().ok().as_ref() != Some(&wanted) {
                written.push((self.active_path(), self.write_active(&wanted)?));
                active_written = true;
            }
        }
        Ok(Adopted {
            key_id,
            current_version,
            record_written,
            active_written,
            written,
        })
    }

    /// The versions of the record file `old` are all in `record`, with the same material:
    /// the same wrapped bytes, or (re-wrapped, e.g. for the KmsKey it became) material that
    /// compares equal.
    fn check_file_versions(
        &self,
        target: &str,
        old: &KeyRecord,
        record: &KeyRecord,
        key: &KmsKey,
    ) -> Result<(), PluginError> {
        let mut store = None;
        let mut metadata = None;
        for version in &old.versions {
            let Some(wrapped) = &version.wrapped_material else {
                continue;
            };
            let same_bytes = old.kubernetes_object == record.kubernetes_object
                && record.versions.iter().any(|v| {
                    v.version == version.version && v.wrapped_material.as_ref() == Some(wrapped)
                });
            if same_bytes {
                continue;
            }
            if store.is_none() {
                store = Some(self.open_root_key()?);
            }
            if metadata.is_none() {
                metadata = Some(record_metadata(old)?);
            }
            let (Some(store), Some(metadata)) = (&store, &metadata) else {
                continue;
            };
            let material = unwrap_version(&**store, old, metadata, version)?;
            if let Some(material) = &material {
                check_keeps_versions(target, [(version.version, material)], key)?;
            }
        }
        Ok(())
    }
}
