//! `kubekms-plugin export`: the bootstrap key of a state folder as a KmsKeyMaterial record
//! and a KmsKey with the same key id, creation time and material, for `kubectl apply`, so
//! the operator adopts the key with nothing to re-encrypt. The material is wrapped again,
//! bound to the KmsKey it becomes (its namespace and name are part of the wrap AAD).

use base64::Engine as _;
use kms_core::{KeySpec, KeyUsage, Origin, RotationType};
use kubekms_k8s::material::WrappedVersion;
use kubekms_k8s::names::{KeySpecName, KeyUsageName, OriginName, RotationTypeName};
use kubekms_k8s::{KmsKey, KmsKeyMaterial, KmsKeyMaterialSpec, KmsKeySpec};

use super::FollowTarget;
use crate::error::PluginError;
use crate::state::StateDir;

/// The active key of a state folder as YAML for `kubectl apply`: its KmsKeyMaterial
/// record first (so an operator that is already running finds it and adopts the key
/// instead of creating a new one), then its KmsKey, with the same key id, creation time
/// and wrapped versions. Nothing needs re-encrypting.
///
/// # Errors
/// A folder without a usable active key, a destroyed version, a key the operator could
/// not manage.
pub fn export(dir: &StateDir, target: &FollowTarget) -> Result<String, PluginError> {
    let record = dir.active_record()?;
    let store = dir.open_root_key()?;
    let store = &*store;
    let key = crate::state::record_to_key(store, &record)?;
    let parse = |what: &str, text: &str| PluginError::StateFolder(format!("{what} {text:?}"));
    let spec: KeySpec = record
        .key_spec
        .parse()
        .map_err(|_| parse("key spec", &record.key_spec))?;
    let usage: KeyUsage = record
        .key_usage
        .parse()
        .map_err(|_| parse("key usage", &record.key_usage))?;
    let origin: Origin = record
        .origin
        .parse()
        .map_err(|_| parse("origin", &record.origin))?;
    // The material is wrapped again, bound to the KmsKey it becomes: same material, same
    // key id and versions, so nothing kube-apiserver stored needs re-encrypting.
    let owner = kms_core::keystore::KeyOwner::new(&target.namespace, &target.name);
    let mut versions = Vec::with_capacity(record.versions.len());
    for v in &record.versions {
        let material = key.material(v.version).ok_or_else(|| {
            PluginError::StateFolder(format!(
                "version {} of key {} is destroyed; the operator's record cannot hold it",
                v.version, record.key_id
            ))
        })?;
        let wrapped = kms_core::keystore::RootKeyStore::wrap(
            store,
            &crate::state::wrap_context(&key.metadata, Some(&owner), v.version),
            material.serialized(),
        )
        .map_err(PluginError::Core)?;
        let rotation_type = match v.rotation_type.as_deref() {
            None => None,
            Some(text) => Some(RotationTypeName::from(
                text.parse::<RotationType>()
                    .map_err(|_| parse("rotation type", text))?,
            )),
        };
        versions.push(WrappedVersion {
            version: v.version,
            created: v.created.clone(),
            rotation_type,
            wrapped: base64::engine::general_purpose::STANDARD.encode(wrapped),
        });
    }
    let mut material = KmsKeyMaterial::new(
        &target.name,
        KmsKeyMaterialSpec {
            key_id: record.key_id.clone(),
            key_spec: KeySpecName::from(spec),
            key_usage: KeyUsageName::from(usage),
            origin: OriginName::from(origin),
            created_at: record.created.clone(),
            root_key_id: kms_core::keystore::RootKeyStore::root_key_id(store),
            versions,
            current_version: record.current_version,
            on_demand_rotations: record.on_demand_rotations,
            last_on_demand_token: None,
            next_rotation_time: None,
            rotation_period_in_days: None,
            deletion_date: None,
        },
    );
    material.metadata.namespace = Some(target.namespace.clone());
    let key_spec: KmsKeySpec = serde_json::from_value(serde_json::json!({
        "description": record.description,
        "keySpec": spec.as_str(),
        "keyUsage": usage.as_str(),
        "origin": origin.as_str(),
        "enabled": true,
    }))
    .map_err(|e| PluginError::StateFolder(format!("building the KmsKey: {e}")))?;
    let mut key = KmsKey::new(&target.name, key_spec);
    key.metadata.namespace = Some(target.namespace.clone());
    Ok(format!(
        "# KubeKMS key {} exported from {} for the operator (apply the record first)\n---\n{}---\n{}",
        record.key_id,
        dir.path().display(),
        to_yaml(&material)?,
        to_yaml(&key)?
    ))
}

fn to_yaml<T: serde::Serialize>(value: &T) -> Result<String, PluginError> {
    serde_yaml::to_string(value)
        .map_err(|e| PluginError::StateFolder(format!("encoding YAML: {e}")))
}
