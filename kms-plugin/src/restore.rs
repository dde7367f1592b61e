//! Disaster recovery (docs/disaster-recovery.md): `kubekms-plugin verify`, which checks
//! that a root key unwraps every version of every KmsKeyMaterial of a backup, and
//! `kubekms-plugin restore`, which rebuilds a plugin's state folder on a new host from
//! the followed KmsKey and its KmsKeyMaterial as a restored etcd holds them, before
//! kube-apiserver starts.
//!
//! Both read the objects as JSON: what etcd stores for a custom resource (`etcdctl get
//! --prefix /registry/kubekms.io/ --print-value-only`, one object after another) or a
//! `kubectl get ... -o json` List. Neither ever prints material: only ids, specs, counts
//! and reasons.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use kms_core::keystore::RootKeyStore;
use kms_core::{KeySpec, KeyUsage};
use kubekms_k8s::unwrap::{key_from_objects, kubernetes_state, unwrap_record};
use kubekms_k8s::{KmsKey, KmsKeyMaterial};
use kubekms_keyring::KeyEntry;

use crate::error::PluginError;
use crate::follow::FollowTarget;
use crate::follow::objects::local_record;
use crate::service::format_key_id;
use crate::state::StateDir;

type Name = (String, String);

/// KmsKeys and KmsKeyMaterial records read from a backup, by namespace and name.
#[derive(Debug, Default)]
pub struct BackupObjects {
    /// KmsKeys.
    pub keys: BTreeMap<Name, KmsKey>,
    /// KmsKeyMaterial records.
    pub records: BTreeMap<Name, KmsKeyMaterial>,
}

fn bad_input(why: impl std::fmt::Display) -> PluginError {
    PluginError::Restore(format!("reading the objects: {why}"))
}

fn name_of(value: &serde_json::Value) -> Option<Name> {
    let namespace = value.pointer("/metadata/namespace")?.as_str()?.to_owned();
    let name = value.pointer("/metadata/name")?.as_str()?.to_owned();
    Some((namespace, name))
}

impl BackupObjects {
    /// Parses a stream of JSON objects (and Lists of them); objects of other kinds are
    /// skipped.
    ///
    /// # Errors
    /// Text that is not JSON, or a KmsKey / KmsKeyMaterial that does not parse.
    pub fn parse(text: &str) -> Result<Self, PluginError> {
        let mut objects = Self::default();
        let mut pending: Vec<serde_json::Value> = Vec::new();
        for value in serde_json::Deserializer::from_str(text).into_iter::<serde_json::Value>() {
            pending.push(value.map_err(bad_input)?);
        }
        while let Some(value) = pending.pop() {
            let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
            match kind {
                "List" | "KmsKeyList" | "KmsKeyMaterialList" => {
                    if let Some(items) = value.get("items").and_then(|i| i.as_array()) {
                        pending.extend(items.iter().cloned());
                    }
                }
                "KmsKey" => {
                    let name = name_of(&value)
                        .ok_or_else(|| bad_input("a KmsKey without a namespace or name"))?;
                    let key: KmsKey = serde_json::from_value(value)
                        .map_err(|e| bad_input(format!("KmsKey {}/{}: {e}", name.0, name.1)))?;
                    objects.keys.insert(name, key);
                }
                "KmsKeyMaterial" => {
                    let name = name_of(&value)
                        .ok_or_else(|| bad_input("a KmsKeyMaterial without a namespace or name"))?;
                    let record: KmsKeyMaterial = serde_json::from_value(value).map_err(|e| {
                        bad_input(format!("KmsKeyMaterial {}/{}: {e}", name.0, name.1))
                    })?;
                    objects.records.insert(name, record);
                }
                _ => {}
            }
        }
        Ok(objects)
    }

    /// The root key ids the records were wrapped under, with how many records each.
    #[must_use]
    pub fn root_key_ids(&self) -> BTreeMap<String, usize> {
        let mut ids = BTreeMap::new();
        for record in self.records.values() {
            *ids.entry(record.spec.root_key_id.clone()).or_insert(0) += 1;
        }
        ids
    }
}

/// One record as `verify` found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedKey {
    /// `namespace/name`.
    pub object: String,
    /// The record's key id.
    pub key_id: String,
    /// The key spec.
    pub spec: String,
    /// Versions unwrapped (0 when the key is unusable).
    pub versions: usize,
    /// Why the key is unusable, if it is.
    pub problem: Option<String>,
    /// Something to know that does not make it unusable (a record without its KmsKey).
    pub note: Option<String>,
}

/// What `verify` found.
#[derive(Debug, Clone, Default)]
pub struct Verification {
    /// Every record, by `namespace/name`.
    pub keys: Vec<VerifiedKey>,
}

impl Verification {
    /// Records that do not unwrap.
    #[must_use]
    pub fn unusable(&self) -> usize {
        self.keys.iter().filter(|k| k.problem.is_some()).count()
    }

    /// Versions unwrapped in all.
    #[must_use]
    pub fn versions(&self) -> usize {
        self.keys.iter().map(|k| k.versions).sum()
    }

    /// A report with one line per key and a summary; no material.
    #[must_use]
    pub fn report(&self, root_key_id: &str) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        for key in &self.keys {
            let _ = match &key.problem {
                None => writeln!(
                    out,
                    "ok        {} key {} {} versions {}{}",
                    key.object,
                    key.key_id,
                    key.spec,
                    key.versions,
                    key.note
                        .as_deref()
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default()
                ),
                Some(p) => writeln!(out, "UNUSABLE  {} key {}: {p}", key.object, key.key_id),
            };
        }
        let _ = writeln!(
            out,
            "{} keys, {} versions unwrapped under root key {root_key_id}; {} unusable",
            self.keys.len(),
            self.versions(),
            self.unusable()
        );
        out
    }
}

/// Unwraps every version of every record of `objects` under `store`, each bound to its
/// KmsKey (a record without its KmsKey alone, with a note).
#[must_use]
pub fn verify(objects: &BackupObjects, store: &dyn RootKeyStore) -> Verification {
    let keys = objects
        .records
        .iter()
        .map(|((namespace, name), record)| {
            let object = format!("{namespace}/{name}");
            // A record whose KmsKey is gone (its finalizer forced away) still holds
            // material that must unwrap: it is checked alone and noted.
            let (checked, note) = match objects.keys.get(&(namespace.clone(), name.clone())) {
                None => (
                    unwrap_record(record, store)
                        .map(|m| m.len())
                        .map_err(|e| e.to_string()),
                    Some(format!("no KmsKey {object}")),
                ),
                Some(key) => (
                    key_from_objects(key, record, store)
                        .map(|k| k.shared_materials().len())
                        .map_err(|e| e.to_string()),
                    None,
                ),
            };
            VerifiedKey {
                object,
                key_id: record.spec.key_id.clone(),
                spec: KeySpec::from(record.spec.key_spec).as_str().to_owned(),
                versions: *checked.as_ref().unwrap_or(&0),
                problem: checked.err(),
                note,
            }
        })
        .collect();
    Verification { keys }
}

/// What `restore` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The key_id the plugin will serve (`<uuid>/v<current>`).
    pub key_id: String,
    /// Versions in the record.
    pub versions: usize,
}

/// Writes the followed KmsKey's record of `objects` into the state folder `dir` as its
/// active key, exactly as follow mode would once the API server is up, after checking that
/// the folder's root key unwraps every version. `dir` must hold only the root key put back
/// from the backup: a folder with an active key is refused (its keys would be left behind).
///
/// # Errors
/// `RootKeyMissing` (naming the root key the record needs), `Restore` naming what is
/// missing or wrong (no such object, another root key, a key kube-apiserver cannot use, an
/// initialised folder), I/O errors.
pub fn restore(
    dir: &StateDir,
    target: &FollowTarget,
    objects: &BackupObjects,
) -> Result<Restored, PluginError> {
    let id = (target.namespace.clone(), target.name.clone());
    let record = objects.records.get(&id).ok_or_else(|| {
        PluginError::Restore(format!(
            "no KmsKeyMaterial {target} in the objects given (records found: {}); it is the \
             record of the KmsKey the plugin follows",
            list(objects.records.keys())
        ))
    })?;
    let object = objects
        .keys
        .get(&id)
        .ok_or_else(|| PluginError::Restore(format!("no KmsKey {target} in the objects given")))?;
    let root_key = dir.path().join(crate::state::ROOT_KEY_FILE);
    if !dir.has_root_key() {
        return Err(PluginError::RootKeyMissing {
            path: root_key,
            what: format!("KmsKeyMaterial {target}"),
            needed: record.spec.root_key_id.clone(),
        });
    }
    if dir.is_initialized() {
        return Err(PluginError::Restore(format!(
            "{} already has an active key; restore writes a new folder (the root key only)",
            dir.path().display()
        )));
    }
    let store = dir.open_root_key()?;
    let store = &*store;
    let key = key_from_objects(object, record, store)
        .map_err(|e| PluginError::Restore(format!("KmsKey {target}: {e}")))?;
    if key.metadata.spec != KeySpec::SymmetricDefault
        || key.metadata.usage != KeyUsage::EncryptDecrypt
    {
        return Err(PluginError::Restore(format!(
            "KmsKey {target} is {} / {}; kube-apiserver needs a SYMMETRIC_DEFAULT ENCRYPT_DECRYPT key",
            key.metadata.spec, key.metadata.usage
        )));
    }
    let entry = KeyEntry {
        namespace: target.namespace.clone(),
        name: target.name.clone(),
        object: Arc::new(object.clone()),
        record: Arc::new(record.clone()),
        state: kubernetes_state(object, &record.spec),
        key: Ok(Arc::new(key.clone())),
        served_by_plugin: false,
    };
    let local = local_record(target, &entry, &key);
    let adopted = dir.adopt(&target.to_string(), &local, &key, true)?;
    Ok(Restored {
        key_id: format_key_id(adopted.key_id, adopted.current_version),
        versions: local.versions.len(),
    })
}

fn list<'a>(names: impl Iterator<Item = &'a Name>) -> String {
    let all: Vec<String> = names.map(|(n, m)| format!("{n}/{m}")).collect();
    if all.is_empty() {
        "none".to_owned()
    } else {
        all.join(", ")
    }
}

/// Reads the objects of `path` (`-`: standard input).
///
/// # Errors
/// I/O errors and what [`BackupObjects::parse`] refuses.
pub fn read_objects(path: &Path) -> Result<BackupObjects, PluginError> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).map_err(bad_input)?
    } else {
        std::fs::read_to_string(path).map_err(|e| bad_input(format!("{}: {e}", path.display())))?
    };
    BackupObjects::parse(&text)
}

#[cfg(test)]
mod tests;
