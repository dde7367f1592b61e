//! Test support (feature `test-util`): KmsKeyMaterial records with material wrapped as the
//! operator wraps it, for tests that build objects without a cluster.

use base64::Engine as _;
use kms_core::keystore::RootKeyStore;
use kms_core::{KeyMaterial, KeySpec};

use crate::KmsKeyMaterial;
use crate::convert;
use crate::material::WrappedVersion;
use crate::names::RotationTypeName;

/// Adds to `record` its next version: new material of its key spec, wrapped under `store`
/// with the record's [`convert::wrap_context`], created 2026-01-01, rotated on demand
/// unless it is the first version.
///
/// # Panics
/// When the record has no namespace or name, or the material cannot be made or wrapped
/// (the test's set-up is wrong).
pub fn add_version(store: &dyn RootKeyStore, record: &mut KmsKeyMaterial) {
    let version = u32::try_from(record.spec.versions.len()).expect("len") + 1;
    let material = KeyMaterial::generate(KeySpec::from(record.spec.key_spec)).expect("material");
    let context = convert::wrap_context(
        &record.spec,
        record.metadata.namespace.as_deref().expect("namespace"),
        record.metadata.name.as_deref().expect("name"),
        version,
    )
    .expect("wrap context");
    record.spec.versions.push(WrappedVersion {
        version,
        created: "2026-01-01T00:00:00Z".to_owned(),
        rotation_type: (version > 1).then_some(RotationTypeName::OnDemand),
        wrapped: base64::engine::general_purpose::STANDARD
            .encode(store.wrap(&context, material.serialized()).expect("wrap")),
    });
}
