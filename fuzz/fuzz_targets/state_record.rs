//! A key record of the plugin's state folder (`keys/<uuid>.json`): JSON parsing, the
//! metadata it describes, and the unwrapping of each version's wrapped material under the
//! fixture's root key (kms-plugin state/record.rs, kms-core keystore). Invariants: never
//! a panic; a record that loads writes back (key_to_record) to a record that loads to
//! the same key; material never appears in an error.
#![no_main]

use kms_plugin::state::LoadedKey;
use kms_plugin::state::record::{
    KeyRecord, key_to_record, record_metadata, record_owner, state_warning,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(record) = serde_json::from_slice::<KeyRecord>(data) else {
        return;
    };
    let fixture = kubekms_fuzz::plugin_fixture();
    let _ = record_metadata(&record);
    let _ = record_owner(&record);
    let _ = state_warning(&record);
    let loaded = match LoadedKey::from_record(&fixture.store, &record) {
        Ok(loaded) => loaded,
        Err(e) => {
            let text = e.to_string();
            for v in fixture.key.material_versions() {
                let secret = fixture.key.material(v).expect("material").serialized();
                assert!(!text.contains(&hex::encode(secret.expose())));
            }
            return;
        }
    };
    kubekms_fuzz::trace(format_args!("loaded {}", loaded.key.key_id()));
    let again = key_to_record(&fixture.store, &loaded.key, &record.source)
        .expect("a loaded key writes back");
    let reloaded = LoadedKey::from_record(&fixture.store, &again).expect("and loads again");
    assert_eq!(reloaded.key.metadata, loaded.key.metadata);
    for v in loaded.key.material_versions() {
        assert!(
            reloaded
                .key
                .material(v)
                .expect("same versions")
                .same_as(loaded.key.material(v).expect("material"))
        );
    }
});
