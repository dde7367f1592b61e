//! From the objects to a usable key: a KmsKey and its KmsKeyMaterial record, unwrapped
//! under the root key into a `kms_core::KmsKey` (metadata from [`convert::metadata`], every
//! material version unwrapped with [`convert::wrap_context`], the state the objects
//! imply). Pure: no API calls, no clock; the root key store is passed in.
//!
//! The steps are public one by one so that a cache (the keyring crate) can unwrap a
//! record once per change of the record and rebuild the key around the same material
//! when only the KmsKey changed:
//! [`check_record`] → [`unwrap_version`] for each version → [`assemble`]. The one-call
//! form is [`key_from_objects`].
//!
//! Errors carry identifiers, versions and reasons, never material.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use kms_core::keystore::RootKeyStore;
use kms_core::{KeyMaterial, KeySpec, KeyState, KmsError};
use kube::ResourceExt as _;

use crate::convert::{self, ConvertError};
use crate::material::{KmsKeyMaterialSpec, WrappedVersion};
use crate::{KmsKey, KmsKeyMaterial};

/// Unwrapped material of a record, by version, shareable between keys.
pub type Materials = BTreeMap<u32, Arc<KeyMaterial>>;

/// Why a KmsKey and its record do not give a usable key. Never holds material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnwrapError {
    /// The record is damaged, or disagrees with its KmsKey on an immutable property.
    #[error("KmsKeyMaterial {object}: {source}")]
    Convert {
        /// `namespace/name`.
        object: String,
        /// What is wrong.
        source: ConvertError,
    },
    /// The objects lack a namespace or a name, or the record is not the KmsKey's (records
    /// have the name of their KmsKey).
    #[error("KmsKeyMaterial {record} does not belong to KmsKey {key}")]
    NotItsRecord {
        /// The KmsKey, `namespace/name`.
        key: String,
        /// The record, `namespace/name`.
        record: String,
    },
    /// The record is wrapped under another root key than the store's.
    #[error(
        "the material of key {key_id} is wrapped under root key {record_root_key}, but this \
         root key is {this_root_key}"
    )]
    ForeignRootKey {
        /// The record's key id.
        key_id: String,
        /// The record's `rootKeyId`.
        record_root_key: String,
        /// The store's.
        this_root_key: String,
    },
    /// The KmsKey's status names another key id than its record.
    #[error(
        "KmsKey {object}: its status names key {status} but its KmsKeyMaterial holds key {record}"
    )]
    StatusKeyIdMismatch {
        /// `namespace/name`.
        object: String,
        /// `status.keyId`.
        status: String,
        /// The record's `keyId`.
        record: String,
    },
    /// A version's wrapped material is not base64.
    #[error("key {key_id} version {version}: the wrapped material is not base64")]
    NotBase64 {
        /// The key id.
        key_id: String,
        /// The version.
        version: u32,
    },
    /// A version does not unwrap under this key's identity and this object: tampered,
    /// wrapped for another key, version or KmsKey (moved or copied), or under another
    /// root key.
    #[error("key {key_id} version {version} does not unwrap: {reason}")]
    Unwrap {
        /// The key id.
        key_id: String,
        /// The version.
        version: u32,
        /// The key store's reason.
        reason: String,
        /// Whether the store says the material is under another root key (AWS
        /// KeyUnavailableException) rather than failing authentication.
        unavailable: bool,
    },
    /// The unwrapped bytes are not material of the key's spec.
    #[error(
        "key {key_id} version {version}: the unwrapped bytes are not {spec} material: {reason}"
    )]
    Material {
        /// The key id.
        key_id: String,
        /// The version.
        version: u32,
        /// The key spec.
        spec: KeySpec,
        /// Why.
        reason: String,
    },
    /// Metadata and material do not fit together.
    #[error("key {key_id}: {reason}")]
    Inconsistent {
        /// The key id.
        key_id: String,
        /// Why.
        reason: String,
    },
}

impl UnwrapError {
    /// The AWS error a caller of the key gets: KeyUnavailableException when the material
    /// is under another root key, KMSInternalException otherwise.
    #[must_use]
    pub fn to_kms_error(&self) -> KmsError {
        match self {
            Self::ForeignRootKey { .. }
            | Self::Unwrap {
                unavailable: true, ..
            } => KmsError::KeyUnavailable(self.to_string()),
            _ => KmsError::Internal(self.to_string()),
        }
    }
}

fn object_name(namespace: Option<String>, name: String) -> String {
    format!("{}/{name}", namespace.unwrap_or_default())
}

/// The state a KmsKey and its record imply. A KmsKey being deleted counts as
/// PendingDeletion: its finalizer holds it until the deletion window has passed.
#[must_use]
pub fn kubernetes_state(key: &KmsKey, record: &KmsKeyMaterialSpec) -> KeyState {
    if key.metadata.deletion_timestamp.is_some() {
        KeyState::PendingDeletion
    } else {
        convert::desired_state(&key.spec, record)
    }
}

/// The record's namespace and name (a record always has both once stored).
///
/// # Errors
/// [`UnwrapError::NotItsRecord`] for an object without a namespace.
pub fn record_owner(record: &KmsKeyMaterial) -> Result<(String, String), UnwrapError> {
    match record.namespace() {
        Some(namespace) if !namespace.is_empty() => Ok((namespace, record.name_any())),
        _ => Err(UnwrapError::NotItsRecord {
            key: "?".to_owned(),
            record: object_name(None, record.name_any()),
        }),
    }
}

/// The checks made before unwrapping anything: the record is wrapped under `store`'s root
/// key (by fingerprint, so a foreign record is refused without trying), and its key id
/// parses.
///
/// # Errors
/// [`UnwrapError::ForeignRootKey`], [`UnwrapError::Convert`].
pub fn check_record(record: &KmsKeyMaterial, store: &dyn RootKeyStore) -> Result<(), UnwrapError> {
    let (namespace, name) = record_owner(record)?;
    let spec = &record.spec;
    convert::wrap_context(spec, &namespace, &name, 1).map_err(|source| UnwrapError::Convert {
        object: format!("{namespace}/{name}"),
        source,
    })?;
    if !store.holds(&spec.root_key_id) {
        return Err(UnwrapError::ForeignRootKey {
            key_id: spec.key_id.clone(),
            record_root_key: spec.root_key_id.clone(),
            this_root_key: store.root_key_id(),
        });
    }
    Ok(())
}

/// Unwraps one version of a record, bound to the record's key id, version, spec, usage,
/// origin and object (`namespace`/`name`), and parses the material.
///
/// # Errors
/// [`UnwrapError::NotBase64`], [`UnwrapError::Unwrap`], [`UnwrapError::Material`],
/// [`UnwrapError::Convert`].
pub fn unwrap_version(
    record: &KmsKeyMaterial,
    version: &WrappedVersion,
    store: &dyn RootKeyStore,
) -> Result<Arc<KeyMaterial>, UnwrapError> {
    let (namespace, name) = record_owner(record)?;
    let spec = &record.spec;
    let context =
        convert::wrap_context(spec, &namespace, &name, version.version).map_err(|source| {
            UnwrapError::Convert {
                object: format!("{namespace}/{name}"),
                source,
            }
        })?;
    let wrapped = base64::engine::general_purpose::STANDARD
        .decode(&version.wrapped)
        .map_err(|_| UnwrapError::NotBase64 {
            key_id: spec.key_id.clone(),
            version: version.version,
        })?;
    let serialized = store
        .unwrap(&context, &wrapped)
        .map_err(|e| UnwrapError::Unwrap {
            key_id: spec.key_id.clone(),
            version: version.version,
            unavailable: matches!(e, KmsError::KeyUnavailable(_)),
            reason: e.to_string(),
        })?;
    KeyMaterial::from_serialized(context.spec, serialized)
        .map(Arc::new)
        .map_err(|e| UnwrapError::Material {
            key_id: spec.key_id.clone(),
            version: version.version,
            spec: context.spec,
            reason: e.to_string(),
        })
}

/// Every version of a record, unwrapped ([`check_record`] first).
///
/// # Errors
/// As [`check_record`] and [`unwrap_version`].
pub fn unwrap_record(
    record: &KmsKeyMaterial,
    store: &dyn RootKeyStore,
) -> Result<Materials, UnwrapError> {
    check_record(record, store)?;
    record
        .spec
        .versions
        .iter()
        .map(|v| Ok((v.version, unwrap_version(record, v, store)?)))
        .collect()
}

/// The key that a KmsKey, its record and the record's unwrapped material make: metadata
/// by [`convert::metadata`], the state by [`kubernetes_state`]. Checks that the record is
/// the KmsKey's (same namespace and name) and that the KmsKey's `status.keyId`, when set,
/// is the record's key id (the operator rebuilds status from the record, so this proves
/// little; the binding that counts is the wrap AAD).
///
/// # Errors
/// [`UnwrapError::NotItsRecord`], [`UnwrapError::StatusKeyIdMismatch`],
/// [`UnwrapError::Convert`], [`UnwrapError::Inconsistent`].
pub fn assemble(
    key: &KmsKey,
    record: &KmsKeyMaterial,
    materials: &Materials,
) -> Result<kms_core::KmsKey, UnwrapError> {
    let key_object = object_name(key.namespace(), key.name_any());
    let record_object = object_name(record.namespace(), record.name_any());
    if key_object != record_object || key.namespace().is_none_or(|n| n.is_empty()) {
        return Err(UnwrapError::NotItsRecord {
            key: key_object,
            record: record_object,
        });
    }
    let spec = &record.spec;
    if let Some(status_id) = key.status.as_ref().and_then(|s| s.key_id.as_deref())
        && status_id != spec.key_id
    {
        return Err(UnwrapError::StatusKeyIdMismatch {
            object: key_object,
            status: status_id.to_owned(),
            record: spec.key_id.clone(),
        });
    }
    let mut metadata =
        convert::metadata(&key.spec, spec).map_err(|source| UnwrapError::Convert {
            object: record_object,
            source,
        })?;
    metadata.state = kubernetes_state(key, spec);
    kms_core::KmsKey::from_shared(metadata, materials.clone()).map_err(|e| {
        UnwrapError::Inconsistent {
            key_id: spec.key_id.clone(),
            reason: e.to_string(),
        }
    })
}

/// A KmsKey and its KmsKeyMaterial record as a usable key: every version unwrapped under
/// `store`, bound to the record's key id and object.
///
/// # Errors
/// See [`UnwrapError`].
pub fn key_from_objects(
    key: &KmsKey,
    record: &KmsKeyMaterial,
    store: &dyn RootKeyStore,
) -> Result<kms_core::KmsKey, UnwrapError> {
    let materials = unwrap_record(record, store)?;
    assemble(key, record, &materials)
}

#[cfg(test)]
mod tests {
    use kms_core::keystore::{FileKeyStore, KeyOwner, WrapContext};
    use kms_core::{KeyId, Operation, Origin};

    use super::*;
    use crate::KmsKeySpec;
    use crate::names::{KeySpecName, KeyUsageName, OriginName, RotationTypeName};

    const NS: &str = "team-a";

    fn store(dir: &std::path::Path, name: &str) -> FileKeyStore {
        FileKeyStore::init(&dir.join(name)).expect("root key")
    }

    /// What the operator makes: a KmsKey and its record with `versions` versions of fresh
    /// material of `spec`, wrapped for `namespace/name` under `store`.
    fn objects(
        store: &dyn RootKeyStore,
        name: &str,
        spec: KeySpec,
        versions: u32,
    ) -> (KmsKey, KmsKeyMaterial) {
        let usage = spec.default_usage();
        let key_id = KeyId::generate().expect("id");
        let mut wrapped = Vec::new();
        for version in 1..=versions {
            let material = KeyMaterial::generate(spec).expect("material");
            let context = WrapContext {
                key_id,
                version,
                spec,
                usage,
                origin: Origin::AwsKms,
                owner: Some(KeyOwner::new(NS, name)),
            };
            wrapped.push(WrappedVersion {
                version,
                created: "2026-01-01T00:00:00Z".to_owned(),
                rotation_type: (version > 1).then_some(RotationTypeName::OnDemand),
                wrapped: base64::engine::general_purpose::STANDARD
                    .encode(store.wrap(&context, material.serialized()).expect("wrap")),
            });
        }
        let mut record = KmsKeyMaterial::new(
            name,
            KmsKeyMaterialSpec {
                key_id: key_id.to_string(),
                key_spec: KeySpecName::from(spec),
                key_usage: KeyUsageName::from(usage),
                origin: OriginName::AwsKms,
                created_at: "2026-01-01T00:00:00Z".to_owned(),
                root_key_id: store.root_key_id(),
                versions: wrapped,
                current_version: None,
                on_demand_rotations: versions.saturating_sub(1),
                last_on_demand_token: None,
                next_rotation_time: None,
                rotation_period_in_days: None,
                deletion_date: None,
            },
        );
        record.metadata.namespace = Some(NS.to_owned());
        let key_spec: KmsKeySpec =
            serde_json::from_value(serde_json::json!({"keySpec": spec.as_str()})).expect("spec");
        let mut key = KmsKey::new(name, key_spec);
        key.metadata.namespace = Some(NS.to_owned());
        (key, record)
    }

    #[test]
    fn every_key_spec_unwraps_into_a_usable_key() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = store(tmp.path(), "root.key");
        for spec in KeySpec::ALL {
            let (key, record) = objects(&root, "k", *spec, 2);
            let unwrapped =
                key_from_objects(&key, &record, &root).unwrap_or_else(|e| panic!("{spec}: {e}"));
            assert_eq!(unwrapped.key_id().to_string(), record.spec.key_id);
            assert_eq!(unwrapped.metadata.state, KeyState::Enabled, "{spec}");
            assert_eq!(
                unwrapped.material_versions().collect::<Vec<_>>(),
                [1, 2],
                "{spec}"
            );
            assert_eq!(unwrapped.metadata.usage, spec.default_usage());
        }
    }

    #[test]
    fn a_symmetric_key_encrypts_and_the_state_follows_the_objects() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = store(tmp.path(), "root.key");
        let (mut key, mut record) = objects(&root, "k", KeySpec::SymmetricDefault, 1);
        let unwrapped = key_from_objects(&key, &record, &root).expect("key");
        let context = kms_core::EncryptionContext::default();
        let blob = kms_core::ops::encrypt(
            &unwrapped,
            b"x",
            &context,
            kms_core::EncryptionAlgorithm::SymmetricDefault,
        )
        .expect("encrypt");
        assert!(!blob.is_empty());
        key.spec.enabled = false;
        let disabled = key_from_objects(&key, &record, &root).expect("disabled");
        assert_eq!(disabled.metadata.state, KeyState::Disabled);
        assert!(disabled.metadata.check(Operation::Encrypt).is_err());
        key.spec.enabled = true;
        record.spec.deletion_date = Some("2026-02-01T00:00:00Z".to_owned());
        assert_eq!(
            key_from_objects(&key, &record, &root)
                .expect("pending")
                .metadata
                .state,
            KeyState::PendingDeletion
        );
        record.spec.deletion_date = None;
        key.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        assert_eq!(
            kubernetes_state(&key, &record.spec),
            KeyState::PendingDeletion,
            "a KmsKey being deleted is PendingDeletion"
        );
    }

    #[test]
    fn a_tampered_version_fails_authentication() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = store(tmp.path(), "root.key");
        let (key, mut record) = objects(&root, "k", KeySpec::SymmetricDefault, 2);
        let mut bytes = base64::engine::general_purpose::STANDARD
            .decode(&record.spec.versions[1].wrapped)
            .expect("base64");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        record.spec.versions[1].wrapped = base64::engine::general_purpose::STANDARD.encode(bytes);
        match key_from_objects(&key, &record, &root) {
            Err(UnwrapError::Unwrap {
                version: 2,
                unavailable: false,
                ..
            }) => {}
            other => panic!("expected version 2 to fail authentication: {other:?}"),
        }
        record.spec.versions[1].wrapped = "not base64!".to_owned();
        assert!(matches!(
            key_from_objects(&key, &record, &root),
            Err(UnwrapError::NotBase64 { version: 2, .. })
        ));
    }

    #[test]
    fn a_record_under_another_root_key_is_refused_before_unwrapping() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = store(tmp.path(), "root.key");
        let other = store(tmp.path(), "other.key");
        let (key, record) = objects(&other, "k", KeySpec::SymmetricDefault, 1);
        let err = key_from_objects(&key, &record, &root).expect_err("foreign");
        assert!(matches!(err, UnwrapError::ForeignRootKey { .. }), "{err:?}");
        assert!(err.to_string().contains("root key"), "{err}");
        assert!(matches!(err.to_kms_error(), KmsError::KeyUnavailable(_)));
        // A record that claims our root key but carries another's wrapped bytes.
        let mut lying = record;
        lying.spec.root_key_id = root.root_key_id();
        let err = key_from_objects(&key, &lying, &root).expect_err("lying");
        assert!(
            matches!(
                err,
                UnwrapError::Unwrap {
                    unavailable: true,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn a_record_moved_to_another_name_or_namespace_does_not_unwrap() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = store(tmp.path(), "root.key");
        let (_, record) = objects(&root, "original", KeySpec::SymmetricDefault, 1);
        // Copied under another name, with a KmsKey of that name.
        let (key, _) = objects(&root, "copy", KeySpec::SymmetricDefault, 1);
        let mut moved = record.clone();
        moved.metadata.name = Some("copy".to_owned());
        let err = key_from_objects(&key, &moved, &root).expect_err("moved");
        assert!(
            matches!(
                err,
                UnwrapError::Unwrap {
                    version: 1,
                    unavailable: false,
                    ..
                }
            ),
            "{err:?}"
        );
        let mut other_ns = record.clone();
        other_ns.metadata.namespace = Some("team-b".to_owned());
        let mut key_b = key.clone();
        key_b.metadata.name = Some("original".to_owned());
        key_b.metadata.namespace = Some("team-b".to_owned());
        assert!(matches!(
            key_from_objects(&key_b, &other_ns, &root),
            Err(UnwrapError::Unwrap { .. })
        ));
        // The record of another KmsKey.
        assert!(matches!(
            key_from_objects(&key, &record, &root),
            Err(UnwrapError::NotItsRecord { .. })
        ));
    }

    #[test]
    fn a_version_relabelled_to_another_key_id_does_not_unwrap() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = store(tmp.path(), "root.key");
        let (key, mut record) = objects(&root, "k", KeySpec::SymmetricDefault, 1);
        record.spec.key_id = KeyId::generate().expect("id").to_string();
        assert!(matches!(
            key_from_objects(&key, &record, &root),
            Err(UnwrapError::Unwrap { .. })
        ));
    }

    #[test]
    fn status_and_record_must_name_the_same_key_and_agree_on_the_spec() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = store(tmp.path(), "root.key");
        let (mut key, record) = objects(&root, "k", KeySpec::SymmetricDefault, 1);
        key.status = Some(crate::KmsKeyStatus {
            key_id: Some(KeyId::generate().expect("id").to_string()),
            ..crate::KmsKeyStatus::default()
        });
        assert!(matches!(
            key_from_objects(&key, &record, &root),
            Err(UnwrapError::StatusKeyIdMismatch { .. })
        ));
        key.status = None;
        key.spec.key_spec = KeySpecName::Hmac256;
        assert!(matches!(
            key_from_objects(&key, &record, &root),
            Err(UnwrapError::Convert {
                source: ConvertError::Mismatch(_),
                ..
            })
        ));
    }

    #[test]
    fn errors_hold_no_material() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = store(tmp.path(), "root.key");
        let (key, record) = objects(&root, "k", KeySpec::SymmetricDefault, 1);
        let good = unwrap_record(&record, &root).expect("unwrap");
        let secret = good[&1].serialized().expose();
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
        let mut relabelled = record.clone();
        relabelled.spec.key_id = KeyId::generate().expect("id").to_string();
        let mut moved = record;
        moved.metadata.name = Some("elsewhere".to_owned());
        for err in [
            key_from_objects(&key, &relabelled, &root).expect_err("relabelled"),
            unwrap_record(&moved, &root).expect_err("moved"),
        ] {
            let text = format!("{err} {err:?}");
            assert!(!text.contains(&hex) && !text.contains(&b64), "{text}");
        }
    }
}
