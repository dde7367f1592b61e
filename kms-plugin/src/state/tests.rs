use std::fs;
use std::os::unix::fs::PermissionsExt as _;

use base64::Engine as _;

use super::*;

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("valid time")
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

#[test]
fn init_writes_private_files_and_refuses_to_clobber() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = StateDir::new(tmp.path().join("state"));
    let key_id = dir.init(now()).expect("init");
    assert_eq!(mode(dir.path()), 0o700);
    assert_eq!(mode(&dir.path().join(ROOT_KEY_FILE)), 0o600);
    assert_eq!(mode(&dir.path().join(ACTIVE_KEY_FILE)), 0o600);
    assert_eq!(mode(&dir.key_path(&key_id)), 0o600);
    let err = dir.init(now()).expect_err("second init must refuse");
    assert!(matches!(err, PluginError::AlreadyInitialized(_)), "{err}");

    let loaded = dir.load().expect("load");
    assert_eq!(loaded.active, key_id);
    assert!(loaded.unusable.is_empty());
    let key = &loaded.keys[&key_id].key;
    assert_eq!(key.current_material().expect("material").0, 1);
}

#[test]
fn records_hold_no_unwrapped_material() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = StateDir::new(tmp.path().join("state"));
    let key_id = dir.init(now()).expect("init");
    let loaded = dir.load().expect("load");
    let material = loaded.keys[&key_id]
        .key
        .material(1)
        .expect("v1")
        .serialized()
        .expose()
        .to_vec();
    let file = fs::read(dir.key_path(&key_id)).expect("read");
    let b64 = base64::engine::general_purpose::STANDARD.encode(&material);
    assert!(!file.windows(material.len()).any(|w| w == material));
    assert!(!file.windows(b64.len()).any(|w| w == b64.as_bytes()));
}

#[test]
fn rotate_adds_versions_and_keeps_old_ones() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = StateDir::new(tmp.path().join("state"));
    let key_id = dir.init(now()).expect("init");
    assert_eq!(dir.rotate(now()).expect("rotate"), (key_id, 2));
    assert_eq!(dir.rotate(now()).expect("rotate"), (key_id, 3));
    let record = dir.active_record().expect("record");
    let versions: Vec<u32> = record.versions.iter().map(|v| v.version).collect();
    assert_eq!(versions, [1, 2, 3]);
    assert_eq!(
        record.versions[1].rotation_type.as_deref(),
        Some("ON_DEMAND")
    );
    let loaded = dir.load().expect("load");
    let key = &loaded.keys[&key_id].key;
    assert_eq!(key.material_versions().collect::<Vec<_>>(), [1, 2, 3]);
}

#[test]
fn a_swapped_root_key_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = StateDir::new(tmp.path().join("a"));
    dir.init(now()).expect("init");
    let other = StateDir::new(tmp.path().join("b"));
    other.init(now()).expect("init b");
    // b's root key under a's records: unwrapping must fail, not yield garbage.
    fs::copy(other.root_key_path(), dir.root_key_path()).expect("copy");
    let err = dir.load().expect_err("wrong root key");
    assert!(err.to_string().contains("root key"), "{err}");
}

/// A second key in the same folder, under the same root key.
fn second_key(dir: &StateDir) -> KeyId {
    let store = dir.open_root_key().expect("root");
    let key = KmsKey::generate(
        KeyId::generate().expect("id"),
        KeySpec::SymmetricDefault,
        KeyUsage::EncryptDecrypt,
        now(),
    )
    .expect("key");
    dir.write_key(&*store, &key, SOURCE_LOCAL).expect("write");
    key.key_id()
}

#[test]
fn a_version_relabelled_to_another_key_or_owner_under_the_same_root_key_does_not_unwrap() {
    // The fingerprint check cannot refuse these (same root key): the wrap AAD must.
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = StateDir::new(tmp.path().join("state"));
    let first = dir.init(now()).expect("init");
    let second = second_key(&dir);
    let store = dir.open_root_key().expect("root");
    let mut record = dir.read_record(&second).expect("record");
    assert!(record_to_key(&*store, &record).is_ok());
    // Key 1's version 1 relabelled as key 2's version 1.
    record.versions[0].wrapped_material = dir.read_record(&first).expect("first").versions[0]
        .wrapped_material
        .clone();
    let err = record_to_key(&*store, &record).expect_err("relabelled to another key id");
    assert!(err.to_string().contains("failed authentication"), "{err}");
    // Key 2's own bytes, claimed for a KmsKey (an owner it was not wrapped for).
    let mut owned = dir.read_record(&second).expect("record");
    owned.kubernetes_object = Some("kube-system/apiserver-key".to_owned());
    let err = record_to_key(&*store, &owned).expect_err("relabelled to an owner");
    assert!(err.to_string().contains("failed authentication"), "{err}");
    // Key 2's version 1 claimed as its version 2.
    let mut renumbered = dir.read_record(&second).expect("record");
    renumbered.versions[0].version = 2;
    assert!(record_to_key(&*store, &renumbered).is_err());
}

#[test]
fn an_unusable_record_is_skipped_and_named_unless_it_is_the_active_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = StateDir::new(tmp.path().join("state"));
    let active = dir.init(now()).expect("init");
    let old = second_key(&dir);
    let mut record = dir.read_record(&old).expect("record");
    record.versions[0].wrapped_material = Some("AAAA".to_owned());
    fs::write(
        dir.key_path(&old),
        serde_json::to_vec(&record).expect("json"),
    )
    .expect("damage");
    let loaded = dir
        .load()
        .expect("a damaged old record does not block a cold start");
    assert_eq!(loaded.active, active);
    assert!(!loaded.keys.contains_key(&old));
    assert_eq!(loaded.unusable.len(), 1);
    assert!(
        loaded.unusable[0].contains(&format!("keys/{old}.json")),
        "{:?}",
        loaded.unusable
    );
    // Garbage in the active key's record: refused, naming it.
    fs::write(dir.key_path(&active), b"{not json").expect("damage");
    let err = dir.load().expect_err("the active key is unusable");
    let text = err.to_string();
    assert!(
        text.contains("active key") && text.contains(&format!("keys/{active}.json")),
        "{text}"
    );
}

#[test]
fn a_reload_unwraps_only_records_that_changed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = StateDir::new(tmp.path().join("state"));
    let active = dir.init(now()).expect("init");
    second_key(&dir);
    let mut cache = FolderCache::default();
    let (first, changed) = dir.reload(&mut cache).expect("load");
    assert!(changed);
    let (again, changed) = dir.reload(&mut cache).expect("again");
    assert!(!changed);
    for (id, key) in &first.keys {
        assert!(
            Arc::ptr_eq(&key.key, &again.keys[id].key),
            "{id} not reused"
        );
    }
    dir.rotate(now()).expect("rotate");
    let (rotated, changed) = dir.reload(&mut cache).expect("rotated");
    assert!(changed);
    assert!(!Arc::ptr_eq(
        &first.keys[&active].key,
        &rotated.keys[&active].key
    ));
    let other = first.keys.keys().find(|id| **id != active).expect("other");
    assert!(Arc::ptr_eq(
        &first.keys[other].key,
        &rotated.keys[other].key
    ));
}

#[test]
fn a_folder_others_can_write_is_not_loaded() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = StateDir::new(tmp.path().join("state"));
    dir.init(now()).expect("init");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).expect("chmod");
    let err = dir.load().expect_err("world-writable");
    assert!(err.to_string().contains("chmod 700"), "{err}");
    assert!(dir.rotate(now()).is_err(), "writers check it too");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).expect("chmod");
    fs::set_permissions(dir.keys_dir(), fs::Permissions::from_mode(0o770)).expect("chmod");
    assert!(dir.load().is_err(), "keys/ too");
}

#[test]
fn records_written_before_the_rename_of_key_state_still_read() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = StateDir::new(tmp.path().join("state"));
    let key_id = dir.init(now()).expect("init");
    let text = fs::read_to_string(dir.key_path(&key_id)).expect("read");
    assert!(text.contains("\"served_state\""), "{text}");
    fs::write(
        dir.key_path(&key_id),
        text.replace("\"served_state\"", "\"key_state\""),
    )
    .expect("write");
    dir.load().expect("an older record reads");
}

#[test]
fn not_initialized_is_reported() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = StateDir::new(tmp.path().join("none"));
    assert!(matches!(dir.load(), Err(PluginError::NotInitialized(_))));
    assert!(matches!(
        dir.rotate(now()),
        Err(PluginError::NotInitialized(_))
    ));
}
