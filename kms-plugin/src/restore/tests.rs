//! `verify` and `restore` over objects exported from a bootstrap folder and read back as
//! etcd stores them (JSON, one object after another).

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use kms_core::keystore::FileKeyStore;
use time::OffsetDateTime;

use super::*;
use crate::follow::export;

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("valid time")
}

fn target() -> FollowTarget {
    "kube-system/apiserver-key".parse().expect("target")
}

/// A bootstrap folder rotated once, and its key exported as the JSON etcd would hold.
fn backup(tmp: &Path) -> (StateDir, String) {
    let dir = StateDir::new(tmp.join("a"));
    dir.init(now()).expect("init");
    dir.rotate(now()).expect("rotate");
    let yaml = export(&dir, &target()).expect("export");
    let mut json = String::new();
    for doc in yaml.split("\n---\n").filter(|d| d.contains("kind:")) {
        let value: serde_json::Value = serde_yaml::from_str(doc).expect("yaml");
        json.push_str(&serde_json::to_string(&value).expect("json"));
        json.push('\n');
    }
    (dir, json)
}

/// A new host's folder holding only `root_key`'s bytes.
fn new_host(tmp: &Path, name: &str, root_key: &Path) -> StateDir {
    let root = tmp.join(name);
    std::fs::create_dir(&root).expect("mkdir");
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let dest = root.join(crate::state::ROOT_KEY_FILE);
    std::fs::copy(root_key, &dest).expect("copy root key");
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    StateDir::new(root)
}

#[test]
fn restore_rebuilds_the_folder_that_serves_every_version() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, json) = backup(tmp.path());
    let objects = BackupObjects::parse(&json).expect("parse");
    let b = new_host(tmp.path(), "b", &a.path().join("root.key"));
    let restored = restore(&b, &target(), &objects).expect("restore");
    let key_id = a.active_record().expect("record").key_id;
    assert_eq!(restored.key_id, format!("{key_id}/v2"));
    assert_eq!(restored.versions, 2);
    let loaded = b.load().expect("the restored folder loads");
    let key = &loaded.keys[&loaded.active].key;
    let original = a.load().expect("a loads");
    for version in [1, 2] {
        let mine = key.material(version).expect("restored version");
        let theirs = original.keys[&original.active]
            .key
            .material(version)
            .expect("original version");
        assert!(mine.same_as(theirs), "version {version} differs");
    }
    let again = restore(&b, &target(), &objects).expect_err("a second restore");
    assert!(
        again.to_string().contains("already has an active key"),
        "{again}"
    );
}

#[test]
fn restore_with_the_wrong_root_key_names_both_and_writes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, json) = backup(tmp.path());
    let objects = BackupObjects::parse(&json).expect("parse");
    let other = tmp.path().join("other.key");
    let other_store = FileKeyStore::init(&other).expect("another root key");
    let b = new_host(tmp.path(), "b", &other);
    let err = restore(&b, &target(), &objects).expect_err("wrong root key");
    let text = err.to_string();
    let needed = a.active_record().expect("record").root_key_id;
    assert!(text.contains(&needed), "{text}");
    assert!(text.contains(&other_store.root_key_id()), "{text}");
    assert!(!b.is_initialized(), "nothing may be written");
    assert!(!b.path().join("keys").exists());

    let verification = verify(&objects, &other_store);
    assert_eq!(verification.unusable(), 1);
    let report = verification.report(&other_store.root_key_id());
    assert!(
        report.contains("UNUSABLE  kube-system/apiserver-key"),
        "{report}"
    );
    assert!(report.contains(&needed), "{report}");
}

#[test]
fn restore_without_the_root_key_names_the_path_and_the_key_it_needs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, json) = backup(tmp.path());
    let objects = BackupObjects::parse(&json).expect("parse");
    let b = new_host(tmp.path(), "b", &a.path().join("root.key"));
    std::fs::remove_file(b.path().join("root.key")).expect("rm");
    let text = restore(&b, &target(), &objects)
        .expect_err("no root key")
        .to_string();
    let needed = a.active_record().expect("record").root_key_id;
    assert!(text.contains(&needed), "{text}");
    assert!(
        text.contains(&b.path().join("root.key").display().to_string()),
        "{text}"
    );
    assert!(!text.contains("is not initialised"), "{text}");
    assert!(!b.is_initialized());

    let missing = restore(&b, &"kube-system/other".parse().expect("t"), &objects)
        .expect_err("no such record")
        .to_string();
    assert!(
        missing.contains("no KmsKeyMaterial kube-system/other"),
        "{missing}"
    );
    assert!(missing.contains("kube-system/apiserver-key"), "{missing}");
}

#[test]
fn a_folder_that_lost_its_root_key_says_which_one_it_needs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = StateDir::new(tmp.path().join("a"));
    dir.init(now()).expect("init");
    let needed = dir.active_record().expect("record").root_key_id;
    std::fs::remove_file(dir.path().join("root.key")).expect("rm");
    let text = dir.load().expect_err("no root key").to_string();
    assert!(text.contains("root key file"), "{text}");
    assert!(text.contains("is missing"), "{text}");
    assert!(text.contains(&needed), "{text}");
    assert!(!text.contains("is not initialised"), "{text}");
}

#[test]
fn verify_counts_every_version_also_of_a_record_without_its_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, json) = backup(tmp.path());
    let store = a.open_root_key().expect("root key");
    let objects = BackupObjects::parse(&json).expect("parse");
    let verification = verify(&objects, &*store);
    assert_eq!((verification.keys.len(), verification.versions()), (1, 2));
    assert_eq!(verification.unusable(), 0);

    // A List as kubectl prints it, holding only the record.
    let record_only: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
        .filter(|v| v["kind"] == "KmsKeyMaterial")
        .collect();
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": record_only});
    let objects = BackupObjects::parse(&list.to_string()).expect("parse list");
    let verification = verify(&objects, &*store);
    assert_eq!((verification.unusable(), verification.versions()), (0, 2));
    let report = verification.report(&store.root_key_id());
    assert!(
        report.contains("versions 2 (no KmsKey kube-system/apiserver-key)"),
        "{report}"
    );
    let other = FileKeyStore::init(&tmp.path().join("other.key")).expect("another root key");
    assert_eq!(verify(&objects, &other).unusable(), 1);
    assert!(BackupObjects::parse("{not json").is_err());
}
