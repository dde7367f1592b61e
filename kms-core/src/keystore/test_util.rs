//! Test support (feature `test-util`, and this crate's own tests): root key stores in a
//! temporary folder, for the tests of every crate that migrates between root keys.

use std::sync::Arc;

use super::{FileKeyStore, RootKeyStore};

/// Two new file root key stores in a temporary folder (removed when the returned
/// [`tempfile::TempDir`] drops): `old.key`, the previous store of a migration, and
/// `new.key`, the primary one.
///
/// # Panics
/// If the folder or a key file cannot be made (the test's set-up failed).
#[must_use]
pub fn old_and_new_file_stores() -> (
    tempfile::TempDir,
    Arc<dyn RootKeyStore>,
    Arc<dyn RootKeyStore>,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let old: Arc<dyn RootKeyStore> =
        Arc::new(FileKeyStore::init(&dir.path().join("old.key")).expect("old"));
    let new: Arc<dyn RootKeyStore> =
        Arc::new(FileKeyStore::init(&dir.path().join("new.key")).expect("new"));
    (dir, old, new)
}
