//! Test support (feature `test-util`, and this crate's own tests): KmsKeyMaterial records
//! as the operator writes them, for tests that start from records already wrapped.

use std::sync::Arc;

use kms_core::KeyId;
use kms_core::keystore::RootKeyStore;
use kubekms_k8s::{KmsKeyMaterialSpec, KmsKeySpec};
use time::OffsetDateTime;

use crate::key::material::wrap_new_versions;
use crate::key::plan::{NewVersion, new_record};

/// The record of the KmsKey `namespace/name` (`spec`, a KmsKey spec as JSON) with id
/// `key_id` and versions 1 to `versions`, new material wrapped under `root`, everything
/// created at the Unix epoch.
///
/// # Panics
/// If `spec` is not a KmsKey spec or the material cannot be made or wrapped (the test's
/// set-up failed).
pub async fn wrapped_record(
    root: &Arc<dyn RootKeyStore>,
    spec: serde_json::Value,
    key_id: KeyId,
    namespace: &str,
    name: &str,
    versions: u32,
) -> KmsKeyMaterialSpec {
    let spec: KmsKeySpec = serde_json::from_value(spec).expect("spec");
    let now = OffsetDateTime::UNIX_EPOCH;
    let (mut record, _) = new_record(&spec, key_id, &root.root_key_id(), now).expect("record");
    let wanted = (1..=versions)
        .map(|version| NewVersion {
            version,
            created: now,
            rotation_type: None,
        })
        .collect();
    record.versions = wrap_new_versions(root.clone(), &record, namespace, name, wanted)
        .await
        .expect("wrapped");
    record
}
