//! `--init-root-key` against the fake API server: a root key is created only when no
//! KmsKeyMaterial exists; with records (a restored cluster whose root key was not put back)
//! the operator refuses and names the root key they need; a hung API server is not taken
//! for an empty one.

mod fake_api;

use fake_api::{FakeApi, NAMESPACE, record_under};
use kubekms_operator::root_key::{RootKeyError, open_or_init};

#[tokio::test]
async fn init_on_an_empty_cluster_creates_the_root_key() {
    let (client, _fake) = FakeApi::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("root.key");
    let store = open_or_init(&path, true, &client, Some(NAMESPACE))
        .await
        .expect("a new installation");
    assert!(path.is_file());
    // The second start opens the same key.
    let again = open_or_init(&path, true, &client, Some(NAMESPACE))
        .await
        .expect("open");
    assert_eq!(store.root_key_id(), again.root_key_id());
}

#[tokio::test]
async fn init_over_existing_records_is_refused_naming_their_root_key() {
    let (client, fake) = FakeApi::start();
    fake.put_record(&record_under("a", "5f3a9c0e12d4b7a8"));
    fake.put_record(&record_under("b", "5f3a9c0e12d4b7a8"));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("root.key");
    let err = open_or_init(&path, true, &client, Some(NAMESPACE))
        .await
        .err()
        .expect("records need the backup's root key");
    assert!(
        matches!(
            err,
            RootKeyError::RecordsNeedAnotherRootKey { records: 2, .. }
        ),
        "{err}"
    );
    let text = err.to_string();
    assert!(text.contains("5f3a9c0e12d4b7a8 (2 records)"), "{text}");
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(!path.exists(), "no root key may be created");
}

#[tokio::test(start_paused = true)]
async fn a_hung_api_server_is_not_an_empty_cluster() {
    let (client, fake) = FakeApi::start();
    fake.stall();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("root.key");
    let err = open_or_init(&path, true, &client, Some(NAMESPACE))
        .await
        .err()
        .expect("no answer");
    assert!(matches!(err, RootKeyError::CannotList(_)), "{err}");
    assert!(!path.exists());
}

#[tokio::test]
async fn without_init_a_missing_file_is_an_error_naming_it() {
    let (client, _fake) = FakeApi::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("root.key");
    let err = open_or_init(&path, false, &client, Some(NAMESPACE))
        .await
        .err()
        .expect("missing");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert!(!path.exists());
}

/// A migration (`--previous-root-key-file`): records under the previous root key do not
/// stop the new root key from being created; a record under any third root key still does.
#[tokio::test]
async fn init_during_a_migration_ignores_only_the_previous_root_keys_records() {
    use keystore_pkcs11::args::RootKeyLocation;
    use kms_core::keystore::{FileKeyStore, RootKeyStore};
    use kubekms_operator::root_key::open_or_init_migrating;

    let dir = tempfile::tempdir().expect("tempdir");
    let previous = FileKeyStore::init(&dir.path().join("old.key")).expect("old");
    let (client, fake) = FakeApi::start();
    fake.put_record(&record_under("a", &previous.root_key_id()));
    fake.put_record(&record_under("b", "0123456789abcdef"));
    let new = RootKeyLocation::File(dir.path().join("new.key"));
    let err = open_or_init_migrating(&new, true, Some(&previous), &client, Some(NAMESPACE))
        .await
        .err()
        .expect("b is under a third root key");
    assert!(
        matches!(
            err,
            RootKeyError::RecordsNeedAnotherRootKey { records: 1, .. }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("0123456789abcdef (1 record)"),
        "{err}"
    );
    assert!(!dir.path().join("new.key").exists());

    fake.put_record(&record_under("b", &previous.root_key_id()));
    let store = open_or_init_migrating(&new, true, Some(&previous), &client, Some(NAMESPACE))
        .await
        .expect("every record is under the previous root key");
    assert_ne!(store.root_key_id(), previous.root_key_id());
    // Without the previous root key, the same records refuse it, as before.
    let other = RootKeyLocation::File(dir.path().join("other.key"));
    assert!(
        open_or_init_migrating(&other, true, None, &client, Some(NAMESPACE))
            .await
            .is_err()
    );
}
