//! The local state folder: the file root key and each key's metadata with its material
//! versions, wrapped under the root key. Everything the plugin needs to start and answer
//! with the API server down (cold start, brand-new cluster).
//!
//! Layout (documented in docs/plugin.md):
//!
//! ```text
//! <state-dir>/            mode 0700, owned by the plugin's user (checked on every load)
//!   root.key              32 random bytes, 0600 (kms-core FileKeyStore); or, when the root
//!                         key is in an HSM:
//!   root-key-pkcs11.json  {"format":1,"module":..,"token_label":..,"pin_file":..}, 0600: where
//!                         the PKCS#11 store (kubekms-keystore-pkcs11) finds the root keys
//!   active-key.json       {"format":1,"key_id":"<uuid>","source":"local"}: the key Encrypt uses
//!   keys/<uuid>.json      one record per key: metadata + every retained material version,
//!                         each wrapped under the root key with the key's identity as AAD
//!   seeded.json           the key_id of kube-apiserver's latest DEK seed
//!   .lock                 advisory lock taken by writers (init, rotate, the follower, seeds)
//! ```
//!
//! - [`files`]: atomic private writes, reads that refuse links, the lock, the folder check;
//! - [`record`]: the record schema and record ⇄ key;
//! - [`adopt`]: the rules for records that come from Kubernetes.
//!
//! Readers never lock: every file is replaced by an atomic rename, so a reader sees the old
//! or the new record, never a torn one.

pub mod adopt;
pub mod files;
pub mod migrate;
pub mod record;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use keystore_pkcs11::{Pkcs11Config, Pkcs11KeyStore};
use kms_core::keystore::{FileKeyStore, MigratingKeyStore, RootKeyStore};
use kms_core::{KeyId, KeySpec, KeyUsage, KmsKey, RotationType};
use time::OffsetDateTime;

pub use adopt::{ActiveChoice, Adopted};
pub use record::{
    ActiveKey, FORMAT, KeyRecord, SOURCE_KUBERNETES, SOURCE_LOCAL, VersionRecord, key_to_record,
    record_owner, record_to_key, state_warning, wrap_context,
};

use crate::error::PluginError;
use files::{io_err, read_private, write_atomic};
use record::{SeededRecord, fmt_time, parse_time};

/// File name of the root key.
pub const ROOT_KEY_FILE: &str = "root.key";
/// File naming the PKCS#11 token that holds the root keys, in place of [`ROOT_KEY_FILE`].
pub const PKCS11_FILE: &str = "root-key-pkcs11.json";
/// File naming the key that Encrypt uses.
pub const ACTIVE_KEY_FILE: &str = "active-key.json";
/// Folder of key records.
pub const KEYS_DIR: &str = "keys";
/// Writers' lock file.
pub const LOCK_FILE: &str = ".lock";
/// The key_id of kube-apiserver's latest Encrypt call (a DEK seed), kept across restarts:
/// kube-apiserver re-seeds only when the key_id changes, so a restarted plugin would
/// otherwise not know what the API server's DEK is under.
pub const SEEDED_FILE: &str = "seeded.json";

/// The state folder.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

/// One key of the folder, unwrapped.
#[derive(Debug, Clone)]
pub struct LoadedKey {
    /// The key, in the state this plugin serves it in.
    pub key: Arc<KmsKey>,
    /// Who wrote its record.
    pub source: String,
    /// The KmsKey it came from.
    pub kubernetes_object: Option<String>,
    /// Why it should not be relied on although it serves (its KmsKey is not Enabled).
    pub warning: Option<String>,
}

impl LoadedKey {
    /// A key read from `record`.
    ///
    /// # Errors
    /// As [`record_to_key`].
    pub fn from_record(store: &dyn RootKeyStore, record: &KeyRecord) -> Result<Self, PluginError> {
        Ok(Self {
            key: Arc::new(record_to_key(store, record)?),
            source: record.source.clone(),
            kubernetes_object: record.kubernetes_object.clone(),
            warning: state_warning(record),
        })
    }
}

/// The folder as loaded: every usable key, the active one, and the records that could not
/// be used (each named with the reason).
#[derive(Debug, Clone)]
pub struct LoadedState {
    /// Every usable key of the folder, unwrapped (memory only).
    pub keys: BTreeMap<KeyId, LoadedKey>,
    /// The key Encrypt uses.
    pub active: KeyId,
    /// `active-key.json`.
    pub active_file: ActiveKey,
    /// Records skipped: `keys/<file>: reason`.
    pub unusable: Vec<String>,
}

/// What the last load read, so the next one re-reads every file but unwraps only those
/// whose bytes changed.
#[derive(Debug, Default, Clone)]
pub struct FolderCache {
    active: Option<Vec<u8>>,
    records: BTreeMap<PathBuf, (Vec<u8>, Result<LoadedKey, String>)>,
}

impl FolderCache {
    /// Notes a file this process wrote (and the key it holds), so the next load does not
    /// unwrap it again.
    pub fn wrote(&mut self, path: &Path, bytes: &[u8], key: Option<LoadedKey>) {
        match key {
            Some(key) => {
                self.records
                    .insert(path.to_owned(), (bytes.to_vec(), Ok(key)));
            }
            None => {
                if path.file_name().is_some_and(|n| n == ACTIVE_KEY_FILE) {
                    self.active = Some(bytes.to_vec());
                }
            }
        }
    }
}

impl StateDir {
    /// A state folder at `root` (not touched until used).
    #[must_use]
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The folder.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.root
    }

    fn root_key_path(&self) -> PathBuf {
        self.root.join(ROOT_KEY_FILE)
    }

    fn pkcs11_path(&self) -> PathBuf {
        self.root.join(PKCS11_FILE)
    }

    /// Whether the folder names a root key: the file, or a PKCS#11 token.
    #[must_use]
    pub fn has_root_key(&self) -> bool {
        self.root_key_path().exists() || self.pkcs11_path().exists()
    }

    pub(crate) fn active_path(&self) -> PathBuf {
        self.root.join(ACTIVE_KEY_FILE)
    }

    pub(crate) fn keys_dir(&self) -> PathBuf {
        self.root.join(KEYS_DIR)
    }

    /// The record file of a key.
    #[must_use]
    pub fn key_path(&self, key_id: &KeyId) -> PathBuf {
        self.keys_dir().join(format!("{key_id}.json"))
    }

    /// Whether `init` has run here.
    #[must_use]
    pub fn is_initialized(&self) -> bool {
        self.active_path().exists()
    }

    pub(crate) fn lock(&self) -> Result<std::fs::File, PluginError> {
        files::check_private_folder(&self.root)?;
        files::lock(&self.root.join(LOCK_FILE))
    }

    /// Creates the folder, a root key and a first SYMMETRIC_DEFAULT key, made active.
    /// Refuses to touch a folder that already has a root key or an active key.
    ///
    /// # Errors
    /// `AlreadyInitialized`, or I/O and key-store errors.
    pub fn init(&self, now: OffsetDateTime) -> Result<KeyId, PluginError> {
        self.init_with(now, None)
    }

    /// As [`StateDir::init`], with the root keys generated in the PKCS#11 token `pkcs11`
    /// (recorded in [`PKCS11_FILE`]) when given, else in a root key file.
    ///
    /// # Errors
    /// As [`StateDir::init`]; `AlreadyExists` when the token already holds root keys.
    pub fn init_with(
        &self,
        now: OffsetDateTime,
        pkcs11: Option<&Pkcs11Config>,
    ) -> Result<KeyId, PluginError> {
        for existing in [self.active_path(), self.root_key_path(), self.pkcs11_path()] {
            if existing.exists() {
                return Err(PluginError::AlreadyInitialized(existing));
            }
        }
        files::ensure_private_folder(&self.root)?;
        let _lock = self.lock()?;
        let store: Box<dyn RootKeyStore> = match pkcs11 {
            None => Box::new(FileKeyStore::init(&self.root_key_path()).map_err(PluginError::Core)?),
            Some(config) => {
                let config = Pkcs11Config {
                    module: absolute(&config.module)?,
                    token_label: config.token_label.clone(),
                    pin_file: absolute(&config.pin_file)?,
                };
                let store = Pkcs11KeyStore::init(&config).map_err(PluginError::Core)?;
                let record = Pkcs11Record {
                    format: FORMAT,
                    module: config.module.display().to_string(),
                    token_label: config.token_label.clone(),
                    pin_file: config.pin_file.display().to_string(),
                };
                let bytes = serde_json::to_vec_pretty(&record)
                    .map_err(|e| PluginError::StateFolder(e.to_string()))?;
                write_atomic(&self.pkcs11_path(), &bytes)?;
                Box::new(store)
            }
        };
        let store = &*store;
        let key_id = KeyId::generate().map_err(PluginError::Core)?;
        let mut key = KmsKey::generate(
            key_id,
            KeySpec::SymmetricDefault,
            KeyUsage::EncryptDecrypt,
            now,
        )
        .map_err(PluginError::Core)?;
        key.metadata.description = "KubeKMS bootstrap key for kube-apiserver (local state)".into();
        self.write_key(store, &key, SOURCE_LOCAL)?;
        self.write_active(&ActiveKey {
            format: FORMAT,
            key_id: key_id.to_string(),
            source: SOURCE_LOCAL.into(),
        })?;
        Ok(key_id)
    }

    /// Rotates the active key on demand: a new material version becomes current.
    /// Returns the key id and the new version.
    ///
    /// # Errors
    /// State, key-store and rotation-limit errors.
    pub fn rotate(&self, now: OffsetDateTime) -> Result<(KeyId, u32), PluginError> {
        if !self.is_initialized() {
            return Err(PluginError::NotInitialized(self.root.clone()));
        }
        let _lock = self.lock()?;
        let store = self.open_root_key()?;
        let store = &*store;
        let active = self.read_active()?;
        let record = self.read_record(&active)?;
        if record.source == SOURCE_KUBERNETES {
            return Err(PluginError::StateFolder(format!(
                "key {active} is managed by the operator (KmsKey {}): rotate it there \
                 (spec.rotation.onDemandToken), not in the local folder",
                record.kubernetes_object.as_deref().unwrap_or("?")
            )));
        }
        let mut key = record_to_key(store, &record)?;
        let version = key
            .rotate(now, RotationType::OnDemand)
            .map_err(PluginError::Core)?;
        self.write_key(store, &key, &record.source)?;
        Ok((active, version))
    }

    /// The active key's record (no unwrapping).
    ///
    /// # Errors
    /// When the folder is not initialised or a file is unreadable.
    pub fn active_record(&self) -> Result<KeyRecord, PluginError> {
        let active = self.read_active()?;
        self.read_record(&active)
    }

    /// Opens the root key (refusing a file that group or others can read).
    ///
    /// # Errors
    /// `KeyUnavailable` from the key store.
    pub fn open_root_key(&self) -> Result<Arc<dyn RootKeyStore>, PluginError> {
        let path = self.root_key_path();
        if let Some(bytes) = read_private(&self.pkcs11_path())? {
            let record: Pkcs11Record = serde_json::from_slice(&bytes).map_err(|e| {
                PluginError::StateFolder(format!("{}: {e}", self.pkcs11_path().display()))
            })?;
            let config = Pkcs11Config {
                module: record.module.into(),
                token_label: record.token_label,
                pin_file: record.pin_file.into(),
            };
            let token: Arc<dyn RootKeyStore> =
                Arc::new(Pkcs11KeyStore::open(&config).map_err(PluginError::Core)?);
            // Both: a folder being migrated from its root key file to the token
            // (`migrate-root-key`); the file only unwraps what it wrapped.
            if path.exists() {
                let file: Arc<dyn RootKeyStore> =
                    Arc::new(FileKeyStore::open(&path).map_err(PluginError::Core)?);
                return Ok(Arc::new(
                    MigratingKeyStore::new(token, vec![file]).map_err(PluginError::Core)?,
                ));
            }
            return Ok(token);
        }
        if !path.exists() {
            // A folder with keys but no root key lost it (a restore that forgot it, a wrong
            // path): say which root key the keys need, never suggest `init`.
            if let Ok(record) = self.active_record() {
                return Err(PluginError::RootKeyMissing {
                    path,
                    what: format!("the active key {}", record.key_id),
                    needed: record.root_key_id,
                });
            }
            return Err(PluginError::NotInitialized(self.root.clone()));
        }
        Ok(Arc::new(
            FileKeyStore::open(&path).map_err(PluginError::Core)?,
        ))
    }

    fn parse_active(&self, bytes: &[u8]) -> Result<(KeyId, ActiveKey), PluginError> {
        let path = self.active_path();
        let active: ActiveKey = serde_json::from_slice(bytes)
            .map_err(|e| PluginError::StateFolder(format!("{}: {e}", path.display())))?;
        if active.format != FORMAT {
            return Err(PluginError::StateFolder(format!(
                "{}: format {} is not supported (expected {FORMAT})",
                path.display(),
                active.format
            )));
        }
        let id = KeyId::parse(&active.key_id)
            .map_err(|e| PluginError::StateFolder(format!("{}: {e}", path.display())))?;
        Ok((id, active))
    }

    /// The active key and who chose it.
    ///
    /// # Errors
    /// When the folder is not initialised or the file is unreadable.
    pub fn read_active_file(&self) -> Result<ActiveKey, PluginError> {
        let bytes = read_private(&self.active_path())?
            .ok_or_else(|| PluginError::NotInitialized(self.root.clone()))?;
        let (id, mut active) = self.parse_active(&bytes)?;
        active.key_id = id.to_string();
        Ok(active)
    }

    fn read_active(&self) -> Result<KeyId, PluginError> {
        let bytes = read_private(&self.active_path())?
            .ok_or_else(|| PluginError::NotInitialized(self.root.clone()))?;
        Ok(self.parse_active(&bytes)?.0)
    }

    fn parse_record(path: &Path, key_id: &KeyId, bytes: &[u8]) -> Result<KeyRecord, PluginError> {
        let record: KeyRecord = serde_json::from_slice(bytes)
            .map_err(|e| PluginError::StateFolder(format!("{}: {e}", path.display())))?;
        if record.format != FORMAT || record.key_id != key_id.to_string() {
            return Err(PluginError::StateFolder(format!(
                "{}: format {} / key id {} does not match the file name",
                path.display(),
                record.format,
                record.key_id
            )));
        }
        Ok(record)
    }

    pub(crate) fn read_record_opt(&self, key_id: &KeyId) -> Result<Option<KeyRecord>, PluginError> {
        let path = self.key_path(key_id);
        read_private(&path)?
            .map(|bytes| Self::parse_record(&path, key_id, &bytes))
            .transpose()
    }

    /// A key's record.
    ///
    /// # Errors
    /// A missing, unreadable or malformed record.
    pub fn read_record(&self, key_id: &KeyId) -> Result<KeyRecord, PluginError> {
        self.read_record_opt(key_id)?.ok_or_else(|| {
            PluginError::StateFolder(format!("{} is missing", self.key_path(key_id).display()))
        })
    }

    /// Loads and unwraps every key. Unusable records are skipped and listed (a damaged
    /// record of an old key must not block a cold start); the active key must be usable.
    ///
    /// # Errors
    /// A folder others can write, missing or unreadable files, an unusable active key.
    pub fn load(&self) -> Result<LoadedState, PluginError> {
        self.reload(&mut FolderCache::default())
            .map(|(state, _)| state)
    }

    /// As [`StateDir::load`], unwrapping only the records whose bytes differ from
    /// `cache` (which is updated). The flag says whether anything differed.
    ///
    /// # Errors
    /// As [`StateDir::load`].
    pub fn reload(&self, cache: &mut FolderCache) -> Result<(LoadedState, bool), PluginError> {
        if !self.root.exists() {
            return Err(PluginError::NotInitialized(self.root.clone()));
        }
        files::check_private_folder(&self.root)?;
        let active_bytes = read_private(&self.active_path())?
            .ok_or_else(|| PluginError::NotInitialized(self.root.clone()))?;
        let (active, active_file) = self.parse_active(&active_bytes)?;
        let mut changed = cache.active.as_deref() != Some(active_bytes.as_slice());
        cache.active = Some(active_bytes);

        let dir = self.keys_dir();
        files::check_private_folder(&dir)?;
        let mut paths: Vec<(PathBuf, KeyId)> = std::fs::read_dir(&dir)
            .map_err(|e| io_err("listing", &dir, e))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter_map(|path| {
                let key_id = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".json"))
                    .and_then(|stem| KeyId::parse(stem).ok())?;
                Some((path, key_id))
            })
            .collect();
        paths.sort();
        let before = cache.records.len();
        let mut store: Option<Result<Arc<dyn RootKeyStore>, String>> = None;
        let mut records = BTreeMap::new();
        for (path, key_id) in paths {
            let bytes = match read_private(&path) {
                Ok(Some(bytes)) => bytes,
                Ok(None) => continue,
                Err(e) => {
                    records.insert(path, (Vec::new(), Err(e.to_string())));
                    changed = true;
                    continue;
                }
            };
            if let Some((old, loaded)) = cache.records.remove(&path)
                && old == bytes
            {
                records.insert(path, (old, loaded));
                continue;
            }
            changed = true;
            let store =
                store.get_or_insert_with(|| self.open_root_key().map_err(|e| e.to_string()));
            let loaded = match store {
                Ok(store) => Self::parse_record(&path, &key_id, &bytes)
                    .and_then(|record| LoadedKey::from_record(&**store, &record)),
                Err(e) => Err(PluginError::StateFolder(e.clone())),
            };
            records.insert(path, (bytes, loaded.map_err(|e| e.to_string())));
        }
        changed |= !cache.records.is_empty() || records.len() != before;
        cache.records = records;

        let mut keys = BTreeMap::new();
        let mut unusable = Vec::new();
        let mut active_problem = None;
        for (path, (_, loaded)) in &cache.records {
            let name = path
                .strip_prefix(&self.root)
                .unwrap_or(path)
                .display()
                .to_string();
            match loaded {
                Ok(key) => {
                    keys.insert(key.key.key_id(), key.clone());
                }
                Err(reason) => {
                    if path == &self.key_path(&active) {
                        active_problem = Some(format!("{name}: {reason}"));
                    }
                    unusable.push(format!("{name}: {reason}"));
                }
            }
        }
        if let Some(problem) = active_problem {
            return Err(PluginError::StateFolder(format!(
                "the active key {active} is unusable, refusing to serve: {problem}"
            )));
        }
        if !keys.contains_key(&active) {
            return Err(PluginError::StateFolder(format!(
                "the active key {active} has no record in {}",
                dir.display()
            )));
        }
        Ok((
            LoadedState {
                keys,
                active,
                active_file,
                unusable,
            },
            changed,
        ))
    }

    /// The last DEK seed kube-apiserver had encrypted through this folder's plugin:
    /// (key_id, when). `None` when never recorded or unreadable (it is advisory).
    #[must_use]
    pub fn read_seeded(&self) -> Option<(String, OffsetDateTime)> {
        let bytes = read_private(&self.root.join(SEEDED_FILE)).ok()??;
        let seeded: SeededRecord = serde_json::from_slice(&bytes).ok()?;
        Some((seeded.key_id, parse_time("at", &seeded.at).ok()?))
    }

    /// Records the key_id of kube-apiserver's latest DEK seed (under `.lock`: concurrent
    /// Encrypt calls may record at once).
    ///
    /// # Errors
    /// I/O errors.
    pub fn write_seeded(&self, key_id: &str, at: OffsetDateTime) -> Result<(), PluginError> {
        let json = serde_json::to_vec_pretty(&SeededRecord {
            key_id: key_id.to_owned(),
            at: fmt_time(at)?,
        })
        .map_err(|e| PluginError::StateFolder(format!("encoding {SEEDED_FILE}: {e}")))?;
        let _lock = self.lock()?;
        write_atomic(&self.root.join(SEEDED_FILE), &json)
    }

    pub(crate) fn write_active(&self, active: &ActiveKey) -> Result<Vec<u8>, PluginError> {
        let json = serde_json::to_vec_pretty(active)
            .map_err(|e| PluginError::StateFolder(format!("encoding {ACTIVE_KEY_FILE}: {e}")))?;
        write_atomic(&self.active_path(), &json)?;
        Ok(json)
    }

    /// Writes a key record: metadata and every material version wrapped under `store`.
    ///
    /// # Errors
    /// Wrapping or I/O errors.
    pub fn write_key(
        &self,
        store: &dyn RootKeyStore,
        key: &KmsKey,
        source: &str,
    ) -> Result<(), PluginError> {
        let record = key_to_record(store, key, source)?;
        files::ensure_private_folder(&self.keys_dir())?;
        let json = serde_json::to_vec_pretty(&record)
            .map_err(|e| PluginError::StateFolder(format!("encoding the key record: {e}")))?;
        write_atomic(&self.key_path(&key.key_id()), &json)
    }
}

#[cfg(test)]
mod tests;

/// The content of [`PKCS11_FILE`]: paths as absolute strings.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Pkcs11Record {
    format: u32,
    module: String,
    token_label: String,
    pin_file: String,
}

fn absolute(path: &Path) -> Result<PathBuf, PluginError> {
    std::path::absolute(path)
        .map_err(|e| PluginError::StateFolder(format!("{}: {e}", path.display())))
}
