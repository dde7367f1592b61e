//! The follower's rules over a keyring snapshot of the followed KmsKey: what it takes into
//! the plugin (a symmetric encryption key with material, unwrapped under this plugin's
//! root key, bound to this KmsKey, keeping every version the plugin holds, and the same key
//! id as the one adopted before), and what it reports when it takes nothing.

use kms_core::{KeySpec, KeyState, KeyUsage, RotationType};
use kubekms_keyring::{KeyEntry, KeySet};

use super::FollowTarget;
use crate::error::PluginError;
use crate::service::{Plugin, format_key_id};
use crate::state::{Adopted, FORMAT, KeyRecord, SOURCE_KUBERNETES, VersionRecord};

/// The local record of a followed key: the wrapped versions of its KmsKeyMaterial
/// verbatim (the operator and the plugin wrap with the same root key store and context),
/// served Enabled, the Kubernetes state alongside.
#[must_use]
pub fn local_record(target: &FollowTarget, entry: &KeyEntry, key: &kms_core::KmsKey) -> KeyRecord {
    let record = &entry.record.spec;
    let metadata = &key.metadata;
    KeyRecord {
        format: FORMAT,
        key_id: record.key_id.clone(),
        key_spec: metadata.spec.as_str().to_owned(),
        key_usage: metadata.usage.as_str().to_owned(),
        origin: metadata.origin.as_str().to_owned(),
        // kube-apiserver must keep reading and writing Secrets; the Kubernetes state goes
        // to health (docs/plugin.md).
        served_state: KeyState::Enabled.as_str().to_owned(),
        created: record.created_at.clone(),
        description: metadata.description.clone(),
        on_demand_rotations: record.on_demand_rotations,
        root_key_id: record.root_key_id.clone(),
        source: SOURCE_KUBERNETES.to_owned(),
        versions: record
            .versions
            .iter()
            .map(|v| VersionRecord {
                version: v.version,
                created: v.created.clone(),
                rotation_type: v
                    .rotation_type
                    .map(|r| RotationType::from(r).as_str().to_owned()),
                wrapped_material: Some(v.wrapped.clone()),
            })
            .collect(),
        current_version: record.current_version,
        kubernetes_object: Some(target.to_string()),
        kubernetes_state: Some(entry.state.as_str().to_owned()),
    }
}

/// Takes the followed key of a snapshot entry into the plugin.
///
/// # Errors
/// The entry's key does not unwrap, is not a symmetric encryption key or has no material;
/// the plugin's rules refuse it (see [`Plugin::adopt_followed`]).
pub fn adopt_entry(
    plugin: &Plugin,
    target: &FollowTarget,
    entry: &KeyEntry,
    allow_key_switch: bool,
) -> Result<(Adopted, KeyState), PluginError> {
    let refuse = |reason: String| PluginError::FollowedKey {
        target: target.to_string(),
        reason,
    };
    let key = entry.key.as_ref().map_err(|e| refuse(e.to_string()))?;
    let metadata = &key.metadata;
    if metadata.spec != KeySpec::SymmetricDefault || metadata.usage != KeyUsage::EncryptDecrypt {
        return Err(refuse(format!(
            "key {} is {} / {}; kube-apiserver needs a SYMMETRIC_DEFAULT ENCRYPT_DECRYPT key",
            metadata.key_id, metadata.spec, metadata.usage
        )));
    }
    if entry.record.spec.versions.is_empty() {
        return Err(refuse(format!(
            "key {} has no material yet (PendingImport)",
            metadata.key_id
        )));
    }
    let record = local_record(target, entry, key);
    let adopted = plugin.adopt_followed(
        &target.to_string(),
        &record,
        key,
        entry.state,
        allow_key_switch,
    )?;
    Ok((adopted, entry.state))
}

/// What the follower remembers between snapshots.
#[derive(Debug)]
pub struct Follower {
    target: FollowTarget,
    allow_key_switch: bool,
    ever_key: bool,
    ever_record: bool,
    last_problem: Option<String>,
    last_adopted: Option<String>,
}

impl Follower {
    /// A follower of `target`; `allow_key_switch` lifts the key-switch rule.
    #[must_use]
    pub fn new(target: FollowTarget, allow_key_switch: bool) -> Self {
        Self {
            target,
            allow_key_switch,
            ever_key: false,
            ever_record: false,
            last_problem: None,
            last_adopted: None,
        }
    }

    /// Acts on a snapshot: adopts the followed key, or reports why not (nothing to
    /// report: the objects do not exist yet, as on a brand-new cluster). A snapshot that
    /// is not ready (the watches have not listed yet) is ignored. Blocking (file writes).
    pub fn apply(&mut self, plugin: &Plugin, set: &KeySet) {
        if !set.is_ready() {
            return;
        }
        let target = &self.target;
        self.ever_key |= set.kms_key(&target.namespace, &target.name).is_some();
        self.ever_record |= set.record(&target.namespace, &target.name).is_some();
        let problem = match set.get(&target.namespace, &target.name) {
            Some(entry) => match adopt_entry(plugin, target, entry, self.allow_key_switch) {
                Ok((adopted, state)) => {
                    let key_id = format_key_id(adopted.key_id, adopted.current_version);
                    let summary = format!("{key_id} {state}");
                    if self.last_adopted.as_deref() != Some(&summary)
                        || adopted.record_written
                        || adopted.active_written
                    {
                        tracing::info!(
                            kmskey = %target,
                            key_id = %key_id,
                            state = %state,
                            record_written = adopted.record_written,
                            active = adopted.active_written,
                            "followed KmsKey taken into the plugin"
                        );
                        self.last_adopted = Some(summary);
                    }
                    None
                }
                Err(e) => Some(format!(
                    "not following KmsKey {target}: {e}; serving the keys of the state folder"
                )),
            },
            None if set.kms_key(&target.namespace, &target.name).is_none() && self.ever_key => {
                Some(format!(
                    "KmsKey {target} was deleted; serving the last copy in the state folder"
                ))
            }
            None if set.record(&target.namespace, &target.name).is_none() && self.ever_record => {
                Some(format!(
                    "the KmsKeyMaterial {target} was deleted; serving the last copy in the state folder"
                ))
            }
            None => None,
        };
        if problem != self.last_problem {
            match &problem {
                Some(p) => tracing::error!(kmskey = %target, problem = %p, "follow problem"),
                None if self.last_problem.is_some() => {
                    tracing::info!(kmskey = %target, "follow problem cleared");
                }
                None => {}
            }
            self.last_problem.clone_from(&problem);
        }
        plugin.set_follow_problem(problem);
    }
}
