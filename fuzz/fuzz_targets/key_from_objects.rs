//! A KmsKey and its KmsKeyMaterial as the keyring and the plugin's follow mode read them
//! from the API server: JSON into the CRD types, then `kubekms_k8s::unwrap`
//! (check_record, record_owner, key_from_objects: every wrapped version unwrapped under
//! the fixture's root key, bound to the record's key id, version and object).
//! Input: JSON `{"key": <KmsKey>, "material": <KmsKeyMaterial>}`. Invariants: never a
//! panic; a key that comes out has the record's key id and every version it lists.
#![no_main]

use kubekms_k8s::unwrap::{check_record, key_from_objects, kubernetes_state, record_owner};
use kubekms_k8s::{KmsKey, KmsKeyMaterial};
use libfuzzer_sys::fuzz_target;

#[derive(serde::Deserialize)]
struct Objects {
    key: KmsKey,
    material: KmsKeyMaterial,
}

fuzz_target!(|data: &[u8]| {
    let Ok(objects) = serde_json::from_slice::<Objects>(data) else {
        return;
    };
    let store = &kubekms_fuzz::plugin_fixture().store;
    let _ = record_owner(&objects.material);
    let _ = check_record(&objects.material, store);
    let Ok(key) = key_from_objects(&objects.key, &objects.material, store) else {
        return;
    };
    kubekms_fuzz::trace(format_args!("unwrapped {}", key.key_id()));
    assert_eq!(key.key_id().to_string(), objects.material.spec.key_id);
    assert_eq!(
        key.material_versions().count(),
        objects.material.spec.versions.len()
    );
    assert_eq!(
        key.metadata.state,
        kubernetes_state(&objects.key, &objects.material.spec)
    );
});
