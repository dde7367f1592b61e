//! Conversion between the resources and kubekms-core: the key metadata a KmsKey and its
//! KmsKeyMaterial record describe, and the status they imply.

use kms_core::key::{KeyMetadata, MaterialVersion, RotationSchedule};
use kms_core::keystore::{KeyOwner, WrapContext};
use kms_core::{Arn, ArnScope, KeyId, KeySpec, KeyState, KeyUsage, Origin};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::key::{KmsKeySpec, KmsKeyStatus, VersionStatus};
use crate::material::KmsKeyMaterialSpec;
use crate::names::{KeyStateName, KeyUsageName};

/// Why a resource cannot be turned into core types.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// A stored field does not parse (a damaged or hand-edited record).
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The record and the key disagree on an immutable property.
    #[error("the KmsKeyMaterial record does not match its KmsKey: {0}")]
    Mismatch(String),
}

/// RFC 3339 text of a time, as every timestamp in the resources is written.
#[must_use]
pub fn format_time(time: OffsetDateTime) -> String {
    time.format(&Rfc3339)
        .unwrap_or_else(|_| time.unix_timestamp().to_string())
}

/// Parses an RFC 3339 timestamp of field `field`.
///
/// # Errors
/// [`ConvertError::Invalid`].
pub fn parse_time(field: &'static str, text: &str) -> Result<OffsetDateTime, ConvertError> {
    OffsetDateTime::parse(text, &Rfc3339).map_err(|e| ConvertError::Invalid {
        field,
        reason: e.to_string(),
    })
}

/// The key usage in effect: the spec's, or AWS's default for the key spec.
#[must_use]
pub fn effective_usage(spec: &KmsKeySpec) -> KeyUsage {
    spec.key_usage.map_or_else(
        || KeySpec::from(spec.key_spec).default_usage(),
        KeyUsage::from,
    )
}

/// The state the spec and record imply: scheduled deletion wins, then PendingImport for a
/// key without material, then enabled or disabled.
#[must_use]
pub fn desired_state(spec: &KmsKeySpec, record: &KmsKeyMaterialSpec) -> KeyState {
    if record.deletion_date.is_some() {
        KeyState::PendingDeletion
    } else if record.versions.is_empty() {
        KeyState::PendingImport
    } else if spec.enabled {
        KeyState::Enabled
    } else {
        KeyState::Disabled
    }
}

/// Core metadata from a KmsKey's spec and its record.
///
/// # Errors
/// [`ConvertError`] when the record is damaged or disagrees with the spec.
pub fn metadata(
    spec: &KmsKeySpec,
    record: &KmsKeyMaterialSpec,
) -> Result<KeyMetadata, ConvertError> {
    let key_id = KeyId::parse(&record.key_id).map_err(|e| ConvertError::Invalid {
        field: "keyId",
        reason: e.to_string(),
    })?;
    let key_spec = KeySpec::from(record.key_spec);
    if key_spec != KeySpec::from(spec.key_spec) {
        return Err(ConvertError::Mismatch(format!(
            "record keySpec {key_spec}, KmsKey keySpec {}",
            KeySpec::from(spec.key_spec)
        )));
    }
    let usage = KeyUsage::from(record.key_usage);
    if usage != effective_usage(spec) {
        return Err(ConvertError::Mismatch(format!(
            "record keyUsage {usage}, KmsKey keyUsage {}",
            effective_usage(spec)
        )));
    }
    let mut versions = Vec::with_capacity(record.versions.len());
    for (i, version) in record.versions.iter().enumerate() {
        if usize::try_from(version.version).ok() != Some(i + 1) {
            return Err(ConvertError::Invalid {
                field: "versions",
                reason: format!("version {} at position {}", version.version, i + 1),
            });
        }
        versions.push(MaterialVersion {
            version: version.version,
            created: parse_time("versions.created", &version.created)?,
            rotation_type: version.rotation_type.map(Into::into),
        });
    }
    if let Some(current) = record.current_version
        && !versions.iter().any(|v| v.version == current)
    {
        return Err(ConvertError::Invalid {
            field: "currentVersion",
            reason: format!("version {current} is not listed"),
        });
    }
    let rotation = match (&spec.rotation, &record.next_rotation_time) {
        (Some(rotation), Some(next)) if rotation.automatic => Some(RotationSchedule {
            period_days: rotation.period_in_days,
            next_rotation: parse_time("nextRotationTime", next)?,
        }),
        _ => None,
    };
    let deletion_date = record
        .deletion_date
        .as_deref()
        .map(|d| parse_time("deletionDate", d))
        .transpose()?;
    Ok(KeyMetadata {
        key_id,
        spec: key_spec,
        usage,
        origin: Origin::from(record.origin),
        state: desired_state(spec, record),
        created: parse_time("createdAt", &record.created_at)?,
        description: spec.description.clone().unwrap_or_default(),
        versions,
        rotation,
        on_demand_rotations: record.on_demand_rotations,
        deletion_date,
        state_before_deletion: None,
        current: record.current_version,
    })
}

/// What version `version` of a record is wrapped with: the record's key id, spec, usage
/// and origin, and the KmsKey it belongs to (`namespace`/`name`, the record's own).
///
/// # Errors
/// [`ConvertError::Invalid`] for a record whose key id does not parse.
pub fn wrap_context(
    record: &KmsKeyMaterialSpec,
    namespace: &str,
    name: &str,
    version: u32,
) -> Result<WrapContext, ConvertError> {
    Ok(WrapContext {
        key_id: KeyId::parse(&record.key_id).map_err(|e| ConvertError::Invalid {
            field: "keyId",
            reason: e.to_string(),
        })?,
        version,
        spec: KeySpec::from(record.key_spec),
        usage: KeyUsage::from(record.key_usage),
        origin: Origin::from(record.origin),
        owner: Some(KeyOwner::new(namespace, name)),
    })
}

/// The status a key's metadata implies (conditions and re-encryption are the caller's).
/// `account` is the 12-digit account id of the key's namespace ([`crate::account`]).
#[must_use]
pub fn status(
    metadata: &KeyMetadata,
    scope: &ArnScope,
    account: &str,
    generation: Option<i64>,
) -> KmsKeyStatus {
    let spec = metadata.spec;
    let usage = metadata.usage;
    let names = |items: &[String]| items.to_vec();
    let when = |usage_needed: KeyUsage, list: Vec<String>| {
        if usage == usage_needed {
            list
        } else {
            Vec::new()
        }
    };
    KmsKeyStatus {
        key_id: Some(metadata.key_id.to_string()),
        arn: Some(Arn::for_key(scope, account, metadata.key_id).to_string()),
        account_id: Some(account.to_owned()),
        key_usage: Some(KeyUsageName::from(usage)),
        key_state: Some(KeyStateName::from(metadata.state)),
        current_version: metadata.current_version(),
        versions: metadata
            .versions
            .iter()
            .map(|v| VersionStatus {
                version: v.version,
                created: format_time(v.created),
                rotation_type: v.rotation_type.map(Into::into),
                staged: metadata.current_version().is_some_and(|c| v.version > c),
            })
            .collect(),
        next_rotation_time: metadata.rotation.map(|r| format_time(r.next_rotation)),
        deletion_date: metadata.deletion_date.map(format_time),
        on_demand_rotations: metadata.on_demand_rotations,
        encryption_algorithms: when(
            KeyUsage::EncryptDecrypt,
            names(
                &spec
                    .encryption_algorithms()
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
            ),
        ),
        signing_algorithms: when(
            KeyUsage::SignVerify,
            spec.signing_algorithms()
                .iter()
                .map(ToString::to_string)
                .collect(),
        ),
        mac_algorithms: when(
            KeyUsage::GenerateVerifyMac,
            spec.mac_algorithms()
                .iter()
                .map(ToString::to_string)
                .collect(),
        ),
        key_agreement_algorithms: when(
            KeyUsage::KeyAgreement,
            spec.key_agreement_algorithms()
                .iter()
                .map(ToString::to_string)
                .collect(),
        ),
        reencryption: None,
        served_by: Vec::new(),
        conditions: Vec::new(),
        observed_generation: generation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::RotationSpec;
    use crate::material::WrappedVersion;
    use crate::names::{KeySpecName, OriginName, RotationTypeName};

    fn spec() -> KmsKeySpec {
        serde_json::from_value(serde_json::json!({"keySpec": "SYMMETRIC_DEFAULT"})).expect("spec")
    }

    fn record() -> KmsKeyMaterialSpec {
        KmsKeyMaterialSpec {
            key_id: "1234abcd-12ab-34cd-56ef-1234567890ab".to_owned(),
            key_spec: KeySpecName::SymmetricDefault,
            key_usage: KeyUsageName::EncryptDecrypt,
            origin: OriginName::AwsKms,
            created_at: "2026-01-01T00:00:00Z".to_owned(),
            root_key_id: "00".to_owned(),
            versions: vec![
                WrappedVersion {
                    version: 1,
                    created: "2026-01-01T00:00:00Z".to_owned(),
                    rotation_type: None,
                    wrapped: String::new(),
                },
                WrappedVersion {
                    version: 2,
                    created: "2026-04-01T00:00:00Z".to_owned(),
                    rotation_type: Some(RotationTypeName::Automatic),
                    wrapped: String::new(),
                },
            ],
            current_version: None,
            on_demand_rotations: 0,
            last_on_demand_token: None,
            next_rotation_time: Some("2026-06-30T00:00:00Z".to_owned()),
            rotation_period_in_days: Some(90),
            deletion_date: None,
        }
    }

    #[test]
    fn defaults_and_state() {
        let mut spec = spec();
        assert!(spec.enabled, "enabled defaults to true");
        assert_eq!(effective_usage(&spec), KeyUsage::EncryptDecrypt);
        let mut record = record();
        assert_eq!(desired_state(&spec, &record), KeyState::Enabled);
        spec.enabled = false;
        assert_eq!(desired_state(&spec, &record), KeyState::Disabled);
        record.deletion_date = Some("2026-02-01T00:00:00Z".to_owned());
        assert_eq!(desired_state(&spec, &record), KeyState::PendingDeletion);
        record.deletion_date = None;
        record.versions.clear();
        assert_eq!(desired_state(&spec, &record), KeyState::PendingImport);
        let hmac: KmsKeySpec =
            serde_json::from_value(serde_json::json!({"keySpec": "HMAC_384"})).expect("spec");
        assert_eq!(effective_usage(&hmac), KeyUsage::GenerateVerifyMac);
    }

    #[test]
    fn metadata_and_status_round_trip_the_record() {
        let mut spec = spec();
        spec.rotation = Some(RotationSpec {
            automatic: true,
            period_in_days: 90,
            on_demand_token: None,
        });
        let metadata = metadata(&spec, &record()).expect("metadata");
        assert_eq!(metadata.current_version(), Some(2));
        assert_eq!(metadata.rotation.map(|r| r.period_days), Some(90));
        let account = kms_core::derive_account_id("team-a");
        let status = status(&metadata, &ArnScope::default(), &account, Some(3));
        assert_eq!(status.key_state, Some(KeyStateName::Enabled));
        assert_eq!(
            status.arn.as_deref(),
            Some("arn:aws:kms:local:194955301523:key/1234abcd-12ab-34cd-56ef-1234567890ab")
        );
        assert_eq!(status.account_id.as_deref(), Some("194955301523"));
        kms_core::Arn::parse(status.arn.as_deref().unwrap_or_default())
            .expect("the ARN parses as AWS clients parse it");
        assert_eq!(
            status.next_rotation_time.as_deref(),
            Some("2026-06-30T00:00:00Z")
        );
        assert_eq!(
            status.encryption_algorithms,
            vec!["SYMMETRIC_DEFAULT".to_owned()]
        );
        assert!(status.signing_algorithms.is_empty());
        assert_eq!(status.versions.len(), 2);
    }

    #[test]
    fn damaged_records_are_refused() {
        let mut damaged = record();
        damaged.versions[1].version = 3;
        assert!(matches!(
            metadata(&spec(), &damaged),
            Err(ConvertError::Invalid {
                field: "versions",
                ..
            })
        ));
        let mut other_spec = record();
        other_spec.key_spec = KeySpecName::Hmac256;
        assert!(matches!(
            metadata(&spec(), &other_spec),
            Err(ConvertError::Mismatch(_))
        ));
        let mut bad_id = record();
        bad_id.key_id = "nope".to_owned();
        assert!(metadata(&spec(), &bad_id).is_err());
        let mut bad_time = record();
        bad_time.created_at = "yesterday".to_owned();
        assert!(metadata(&spec(), &bad_time).is_err());
    }

    #[test]
    fn a_record_without_current_version_uses_its_newest_and_a_staged_one_does_not() {
        // A record as written before staged versions existed: no currentVersion field.
        let mut json = serde_json::to_value(record()).expect("json");
        assert!(
            json.get("currentVersion").is_none(),
            "absent is not written"
        );
        json.as_object_mut().map(|o| o.remove("currentVersion"));
        let old: KmsKeyMaterialSpec = serde_json::from_value(json).expect("old record");
        assert_eq!(old.current_version, None);
        assert_eq!(
            metadata(&spec(), &old).expect("metadata").current_version(),
            Some(2)
        );
        let mut staged = record();
        staged.current_version = Some(1);
        let json = serde_json::to_value(&staged).expect("json");
        assert_eq!(json["currentVersion"], 1);
        let metadata = metadata(&spec(), &staged).expect("metadata");
        assert_eq!(metadata.current_version(), Some(1));
        assert_eq!(metadata.staged_versions().collect::<Vec<_>>(), vec![2]);
        let account = kms_core::derive_account_id("team-a");
        let status = status(&metadata, &ArnScope::default(), &account, None);
        assert_eq!(status.current_version, Some(1));
        let mut unlisted = record();
        unlisted.current_version = Some(3);
        assert!(matches!(
            super::metadata(&spec(), &unlisted),
            Err(ConvertError::Invalid {
                field: "currentVersion",
                ..
            })
        ));
    }
}
