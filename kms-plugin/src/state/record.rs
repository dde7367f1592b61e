//! The record schema of the state folder (`active-key.json`, `keys/<uuid>.json`,
//! `seeded.json`) and the conversion between a key record and a usable key.

use std::collections::BTreeMap;

use base64::Engine as _;
use kms_core::keystore::{KeyOwner, RootKeyStore, WrapContext};
use kms_core::{
    KeyId, KeyMaterial, KeyMetadata, KeySpec, KeyState, KeyUsage, KmsKey, MaterialVersion, Origin,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::PluginError;

/// The record format written today.
pub const FORMAT: u32 = 1;
/// A record (or active-key choice) written by the local subcommands (`init`, `rotate`).
pub const SOURCE_LOCAL: &str = "local";
/// A record (or active-key choice) written by the Kubernetes follower (`serve --follow`).
pub const SOURCE_KUBERNETES: &str = "kubernetes";

/// `active-key.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveKey {
    /// Record format.
    pub format: u32,
    /// The key id (UUID) of the key that Encrypt uses.
    pub key_id: String,
    /// Who chose it: `local` (the bootstrap key of `init`) or `kubernetes` (the follower
    /// adopted it; the plugin is then pinned to it, see docs/plugin.md).
    pub source: String,
}

/// One material version in a key record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// 1, 2, ... never reused.
    pub version: u32,
    /// RFC 3339 creation time.
    pub created: String,
    /// `null` for the original material, else `ON_DEMAND` or `AUTOMATIC`.
    pub rotation_type: Option<String>,
    /// The material wrapped under the root key (base64), `null` once destroyed.
    pub wrapped_material: Option<String>,
}

/// `keys/<uuid>.json`: metadata plus wrapped material. Never holds unwrapped material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Record format.
    pub format: u32,
    /// Key id (UUID or `mrk-...`).
    pub key_id: String,
    /// AWS key spec name.
    pub key_spec: String,
    /// AWS key usage name.
    pub key_usage: String,
    /// AWS origin name.
    pub origin: String,
    /// The state this plugin serves the key in. For a followed key it stays Enabled
    /// whatever Kubernetes says, so kube-apiserver keeps reading and writing Secrets; the
    /// Kubernetes state is in `kubernetes_state` and goes to health. (Records written before
    /// this name call it `key_state`.)
    #[serde(alias = "key_state")]
    pub served_state: String,
    /// RFC 3339 creation time.
    pub created: String,
    /// Free text.
    pub description: String,
    /// On-demand rotations done so far.
    pub on_demand_rotations: u32,
    /// Fingerprint of the root key that wraps the material (not secret).
    pub root_key_id: String,
    /// Who wrote the record (`local` or `kubernetes`).
    pub source: String,
    /// Material versions, oldest first.
    pub versions: Vec<VersionRecord>,
    /// The version Encrypt uses when it is not the newest: the versions after it are
    /// staged (decrypt only) until the operator promotes them. Absent: the newest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<u32>,
    /// For records written by the Kubernetes follower: the KmsKey (`namespace/name`), which
    /// the versions are wrapped for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_object: Option<String>,
    /// For records written by the Kubernetes follower: the key state that the KmsKey and
    /// its record imply (Disabled, PendingDeletion, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_state: Option<String>,
}

/// `seeded.json`.
#[derive(Serialize, Deserialize)]
pub(crate) struct SeededRecord {
    pub key_id: String,
    pub at: String,
}

pub(crate) fn fmt_time(t: OffsetDateTime) -> Result<String, PluginError> {
    t.format(&Rfc3339)
        .map_err(|e| PluginError::StateFolder(format!("formatting a time: {e}")))
}

pub(crate) fn parse_time(what: &str, text: &str) -> Result<OffsetDateTime, PluginError> {
    OffsetDateTime::parse(text, &Rfc3339).map_err(|e| {
        PluginError::StateFolder(format!("{what}: {text:?} is not an RFC 3339 time: {e}"))
    })
}

pub(crate) fn parse_named<T: std::str::FromStr<Err = kms_core::KmsError>>(
    what: &str,
    text: &str,
) -> Result<T, PluginError> {
    text.parse()
        .map_err(|e: kms_core::KmsError| PluginError::StateFolder(format!("{what}: {e}")))
}

fn parse_state(text: &str) -> Result<KeyState, PluginError> {
    KeyState::ALL
        .iter()
        .copied()
        .find(|s| s.as_str() == text)
        .ok_or_else(|| PluginError::StateFolder(format!("unknown key state {text:?}")))
}

/// Why a followed key should not be relied on although the plugin keeps serving it: its
/// KmsKey is not Enabled (Disabled, PendingDeletion, ...).
#[must_use]
pub fn state_warning(record: &KeyRecord) -> Option<String> {
    let state = record.kubernetes_state.as_deref()?;
    if state == KeyState::Enabled.as_str() {
        return None;
    }
    Some(format!(
        "key {} is {state} in Kubernetes (KmsKey {}); the plugin keeps encrypting and \
         decrypting with it so kube-apiserver keeps working: enable the key again, or move \
         the plugin to another key and re-encrypt the Secrets before it is deleted",
        record.key_id,
        record.kubernetes_object.as_deref().unwrap_or("?")
    ))
}

/// What a version of `key` is wrapped with: its identity, and the KmsKey it belongs to
/// (none for a key of this folder alone, such as the bootstrap key).
#[must_use]
pub fn wrap_context(key: &KeyMetadata, owner: Option<&KeyOwner>, version: u32) -> WrapContext {
    WrapContext {
        key_id: key.key_id,
        version,
        spec: key.spec,
        usage: key.usage,
        origin: key.origin,
        owner: owner.cloned(),
    }
}

/// The KmsKey a record belongs to (`kubernetes_object`, `namespace/name`).
///
/// # Errors
/// A `kubernetes_object` that is not `namespace/name`.
pub fn record_owner(record: &KeyRecord) -> Result<Option<KeyOwner>, PluginError> {
    record
        .kubernetes_object
        .as_deref()
        .map(|object| {
            object
                .split_once('/')
                .map(|(namespace, name)| KeyOwner::new(namespace, name))
                .ok_or_else(|| {
                    PluginError::StateFolder(format!(
                        "key record {}: kubernetes_object {object:?} is not namespace/name",
                        record.key_id
                    ))
                })
        })
        .transpose()
}

/// A key as a record: metadata and wrapped material (bound to no KmsKey: local keys).
///
/// # Errors
/// Wrapping errors.
pub fn key_to_record(
    store: &dyn RootKeyStore,
    key: &KmsKey,
    source: &str,
) -> Result<KeyRecord, PluginError> {
    let m = &key.metadata;
    let mut versions = Vec::with_capacity(m.versions.len());
    for v in &m.versions {
        let wrapped_material = match key.material(v.version) {
            Some(material) => {
                let wrapped = store
                    .wrap(&wrap_context(m, None, v.version), material.serialized())
                    .map_err(PluginError::Core)?;
                Some(base64::engine::general_purpose::STANDARD.encode(wrapped))
            }
            None => None,
        };
        versions.push(VersionRecord {
            version: v.version,
            created: fmt_time(v.created)?,
            rotation_type: v.rotation_type.map(|r| r.as_str().to_owned()),
            wrapped_material,
        });
    }
    Ok(KeyRecord {
        format: FORMAT,
        key_id: m.key_id.to_string(),
        key_spec: m.spec.as_str().to_owned(),
        key_usage: m.usage.as_str().to_owned(),
        origin: m.origin.as_str().to_owned(),
        served_state: m.state.as_str().to_owned(),
        created: fmt_time(m.created)?,
        description: m.description.clone(),
        on_demand_rotations: m.on_demand_rotations,
        root_key_id: store.root_key_id(),
        source: source.to_owned(),
        versions,
        current_version: m.current,
        kubernetes_object: None,
        kubernetes_state: None,
    })
}

/// The metadata a record describes (no unwrapping).
///
/// # Errors
/// A malformed record.
pub fn record_metadata(record: &KeyRecord) -> Result<KeyMetadata, PluginError> {
    let key_id = KeyId::parse(&record.key_id)
        .map_err(|e| PluginError::StateFolder(format!("key record: {e}")))?;
    let spec: KeySpec = parse_named("key_spec", &record.key_spec)?;
    let usage: KeyUsage = parse_named("key_usage", &record.key_usage)?;
    let origin: Origin = parse_named("origin", &record.origin)?;
    let mut metadata = KeyMetadata::new(
        key_id,
        spec,
        usage,
        origin,
        parse_time("created", &record.created)?,
    )
    .map_err(PluginError::Core)?;
    metadata.state = parse_state(&record.served_state)?;
    metadata.description = record.description.clone();
    metadata.on_demand_rotations = record.on_demand_rotations;
    metadata.versions = Vec::with_capacity(record.versions.len());
    for v in &record.versions {
        if v.version == 0
            || metadata
                .versions
                .last()
                .is_some_and(|l| l.version >= v.version)
        {
            return Err(PluginError::StateFolder(format!(
                "key {key_id}: material versions must be increasing from 1"
            )));
        }
        metadata.versions.push(MaterialVersion {
            version: v.version,
            created: parse_time("version created", &v.created)?,
            rotation_type: v
                .rotation_type
                .as_deref()
                .map(|r| parse_named("rotation_type", r))
                .transpose()?,
        });
    }
    if let Some(current) = record.current_version
        && !metadata.versions.iter().any(|v| v.version == current)
    {
        return Err(PluginError::StateFolder(format!(
            "key {key_id}: current version {current} is not listed"
        )));
    }
    metadata.current = record.current_version;
    Ok(metadata)
}

/// Unwraps one version of a record (bound to its key id, version, spec, usage, origin and
/// owner) and parses it.
///
/// # Errors
/// Base64, unwrap (tampered, relabelled, another root key) and parse errors.
pub fn unwrap_version(
    store: &dyn RootKeyStore,
    record: &KeyRecord,
    metadata: &KeyMetadata,
    version: &VersionRecord,
) -> Result<Option<KeyMaterial>, PluginError> {
    let Some(wrapped) = &version.wrapped_material else {
        return Ok(None);
    };
    let owner = record_owner(record)?;
    let wrapped = base64::engine::general_purpose::STANDARD
        .decode(wrapped)
        .map_err(|e| {
            PluginError::StateFolder(format!(
                "key {} version {}: {e}",
                record.key_id, version.version
            ))
        })?;
    let serialized = store
        .unwrap(
            &wrap_context(metadata, owner.as_ref(), version.version),
            &wrapped,
        )
        .map_err(PluginError::Core)?;
    KeyMaterial::from_serialized(metadata.spec, serialized)
        .map(Some)
        .map_err(PluginError::Core)
}

/// A record as a key: parses the metadata and unwraps every retained version.
///
/// # Errors
/// A malformed record, a record wrapped under another root key, failed unwrapping.
pub fn record_to_key(store: &dyn RootKeyStore, record: &KeyRecord) -> Result<KmsKey, PluginError> {
    let metadata = record_metadata(record)?;
    if !store.holds(&record.root_key_id) {
        return Err(PluginError::StateFolder(format!(
            "the material of {} is wrapped under root key {}, but this folder's root key is {}",
            metadata.key_id,
            record.root_key_id,
            store.root_key_id()
        )));
    }
    let mut materials = BTreeMap::new();
    for v in &record.versions {
        if let Some(material) = unwrap_version(store, record, &metadata, v)? {
            materials.insert(v.version, material);
        }
    }
    KmsKey::new(metadata, materials).map_err(PluginError::Core)
}
