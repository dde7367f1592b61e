//! The local state folder: the file root key and each key's metadata with its material
//! versions, wrapped under the root key. Everything the plugin needs to start and answer
//! with the API server down (cold start, brand-new cluster).
//!
//! Layout (documented in docs/plugin.md):
//!
//! ```text
//! <state-dir>/            mode 0700
//!   root.key              32 random bytes, 0600 (kms-core FileKeyStore)
//!   active-key.json       {"format":1,"key_id":"<uuid>","source":"local"}: the key Encrypt uses
//!   keys/<uuid>.json      one record per key: metadata + every retained material version,
//!                         each wrapped under the root key with (key id, version, spec) as AAD
//!   .lock                 advisory lock taken by writers (init, rotate, a future follower)
//! ```
//!
//! Every file is written atomically (temp file in the same folder, fsync, rename, fsync of
//! the folder) with mode 0600, so a reader sees either the old or the new record, never a
//! torn one. Readers never lock.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use kms_core::keystore::{FileKeyStore, KeyOwner, RootKeyStore, WrapContext};
use kms_core::{
    KeyId, KeyMaterial, KeyMetadata, KeySpec, KeyState, KeyUsage, KmsKey, MaterialVersion, Origin,
    RotationType,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::PluginError;

/// File name of the root key.
pub const ROOT_KEY_FILE: &str = "root.key";
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
/// The record format written today.
pub const FORMAT: u32 = 1;

/// Who wrote a key record: the local subcommands, or (later) the Kubernetes follower.
pub const SOURCE_LOCAL: &str = "local";
/// A record (or active-key choice) written by the Kubernetes follower (`serve --follow`).
pub const SOURCE_KUBERNETES: &str = "kubernetes";

/// `active-key.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveKey {
    /// Record format.
    pub format: u32,
    /// The key id (UUID) of the key that Encrypt uses.
    pub key_id: String,
    /// Who chose it (`local`, later `kubernetes`).
    pub source: String,
}

/// One material version in a key record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// 1, 2, ... never reused.
    pub version: u32,
    /// RFC 3339 creation time.
    pub created: String,
    /// `null` for the original material, else `ON_DEMAND` or `AUTOMATIC`.
    pub rotation_type: Option<String>,
    /// The material wrapped under the root key (base64), `null` once destroyed.
    pub wrapped_material: Option<String>,
}

/// `keys/<uuid>.json`: metadata plus wrapped material. Never holds unwrapped material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Record format.
    pub format: u32,
    /// Key id (UUID or `mrk-...`).
    pub key_id: String,
    /// AWS key spec name.
    pub key_spec: String,
    /// AWS key usage name.
    pub key_usage: String,
    /// AWS origin name.
    pub origin: String,
    /// Key state name (Enabled, Disabled, ...).
    pub key_state: String,
    /// RFC 3339 creation time.
    pub created: String,
    /// Free text.
    pub description: String,
    /// On-demand rotations done so far.
    pub on_demand_rotations: u32,
    /// Fingerprint of the root key that wraps the material (not secret).
    pub root_key_id: String,
    /// Who wrote the record (`local`, later `kubernetes`).
    pub source: String,
    /// Material versions, oldest first.
    pub versions: Vec<VersionRecord>,
    /// For records written by the Kubernetes follower: the KmsKey (`namespace/name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_object: Option<String>,
    /// For records written by the Kubernetes follower: the key state that the KmsKey and
    /// its record imply (`key_state` is the state this plugin serves the key in, which
    /// stays Enabled so kube-apiserver keeps working; see docs/plugin.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_state: Option<String>,
}

/// What [`StateDir::adopt`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adopted {
    /// The key.
    pub key_id: KeyId,
    /// Its newest material version.
    pub current_version: u32,
    /// Whether `keys/<uuid>.json` was (re)written.
    pub record_written: bool,
    /// Whether `active-key.json` was (re)written.
    pub active_written: bool,
}

#[derive(Serialize, Deserialize)]
struct SeededRecord {
    key_id: String,
    at: String,
}

fn fmt_time(t: OffsetDateTime) -> Result<String, PluginError> {
    t.format(&Rfc3339)
        .map_err(|e| PluginError::State(format!("formatting a time: {e}")))
}

fn parse_time(what: &str, text: &str) -> Result<OffsetDateTime, PluginError> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|e| PluginError::State(format!("{what}: {text:?} is not an RFC 3339 time: {e}")))
}

fn parse_named<T: std::str::FromStr<Err = kms_core::KmsError>>(
    what: &str,
    text: &str,
) -> Result<T, PluginError> {
    text.parse()
        .map_err(|e: kms_core::KmsError| PluginError::State(format!("{what}: {e}")))
}

fn parse_state(text: &str) -> Result<KeyState, PluginError> {
    KeyState::ALL
        .iter()
        .copied()
        .find(|s| s.as_str() == text)
        .ok_or_else(|| PluginError::State(format!("unknown key state {text:?}")))
}

/// The state folder.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

/// A key with its metadata, loaded and unwrapped.
#[derive(Debug)]
pub struct LoadedState {
    /// Every key in the folder, unwrapped (memory only).
    pub keys: BTreeMap<KeyId, KmsKey>,
    /// The key Encrypt uses.
    pub active: KeyId,
    /// Why the active key should not be relied on although it serves (its KmsKey is
    /// Disabled or PendingDeletion), for health.
    pub active_warning: Option<String>,
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

    fn active_path(&self) -> PathBuf {
        self.root.join(ACTIVE_KEY_FILE)
    }

    fn keys_dir(&self) -> PathBuf {
        self.root.join(KEYS_DIR)
    }

    fn key_path(&self, key_id: &KeyId) -> PathBuf {
        self.keys_dir().join(format!("{key_id}.json"))
    }

    /// Whether `init` has run here.
    #[must_use]
    pub fn is_initialized(&self) -> bool {
        self.active_path().exists()
    }

    fn lock(&self) -> Result<File, PluginError> {
        let path = self.root.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io_err("opening", &path, e))?;
        file.lock().map_err(|e| io_err("locking", &path, e))?;
        Ok(file)
    }

    /// Creates the folder, a root key and a first SYMMETRIC_DEFAULT key, made active.
    /// Refuses to touch a folder that already has a root key or an active key.
    ///
    /// # Errors
    /// `AlreadyInitialized`, or I/O and key-store errors.
    pub fn init(&self, now: OffsetDateTime) -> Result<KeyId, PluginError> {
        for existing in [self.active_path(), self.root_key_path()] {
            if existing.exists() {
                return Err(PluginError::AlreadyInitialized(existing));
            }
        }
        fs::create_dir_all(&self.root).map_err(|e| io_err("creating", &self.root, e))?;
        fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700))
            .map_err(|e| io_err("chmod 700", &self.root, e))?;
        let _lock = self.lock()?;
        let store = FileKeyStore::init(&self.root_key_path()).map_err(PluginError::Core)?;
        let key_id = KeyId::generate().map_err(PluginError::Core)?;
        let mut key = KmsKey::generate(
            key_id,
            KeySpec::SymmetricDefault,
            KeyUsage::EncryptDecrypt,
            now,
        )
        .map_err(PluginError::Core)?;
        key.metadata.description = "KubeKMS bootstrap key for kube-apiserver (local state)".into();
        self.write_key(&store, &key, SOURCE_LOCAL)?;
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
        let active = self.read_active()?;
        let record = self.read_record(&active)?;
        if record.source == SOURCE_KUBERNETES {
            return Err(PluginError::State(format!(
                "key {active} is managed by the operator (KmsKey {}): rotate it there \
                 (spec.rotation.onDemandToken), not in the local folder",
                record.kubernetes_object.as_deref().unwrap_or("?")
            )));
        }
        let mut key = record_to_key(&store, &record)?;
        let version = key
            .rotate(now, RotationType::OnDemand)
            .map_err(PluginError::Core)?;
        self.write_key(&store, &key, &record.source)?;
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
    pub fn open_root_key(&self) -> Result<FileKeyStore, PluginError> {
        let path = self.root_key_path();
        if !path.exists() {
            return Err(PluginError::NotInitialized(self.root.clone()));
        }
        FileKeyStore::open(&path).map_err(PluginError::Core)
    }

    /// The active key and who chose it.
    ///
    /// # Errors
    /// When the folder is not initialised or the file is unreadable.
    pub fn read_active_file(&self) -> Result<ActiveKey, PluginError> {
        let id = self.read_active()?;
        let bytes =
            fs::read(self.active_path()).map_err(|e| io_err("reading", &self.active_path(), e))?;
        let mut active: ActiveKey = serde_json::from_slice(&bytes)
            .map_err(|e| PluginError::State(format!("{ACTIVE_KEY_FILE}: {e}")))?;
        active.key_id = id.to_string();
        Ok(active)
    }

    /// Writes a key record that came from elsewhere (the Kubernetes follower), after
    /// checking it: wrapped under this folder's root key, every version unwraps under its
    /// (key id, version, spec), and it keeps every version (with the same material) that
    /// the folder already holds for that key, so nothing decryptable is ever lost. With
    /// `make_active`, the key becomes the one Encrypt uses. Writes only what changed,
    /// atomically, under `.lock`.
    ///
    /// # Errors
    /// A record that does not unwrap or would drop or change a version; I/O errors.
    pub fn adopt(&self, record: &KeyRecord, make_active: bool) -> Result<Adopted, PluginError> {
        let store = self.open_root_key()?;
        let key = record_to_key(&store, record)?;
        let key_id = key.key_id();
        let current_version = key
            .current_material()
            .map_err(|e| PluginError::NoKey(format!("key {key_id}: {e}")))?
            .0;
        let _lock = self.lock()?;
        let path = self.key_path(&key_id);
        let existing = if path.exists() {
            Some(self.read_record(&key_id)?)
        } else {
            None
        };
        if let Some(old) = &existing {
            let old_key = record_to_key(&store, old)?;
            for version in old_key.material_versions() {
                let (Some(a), Some(b)) = (old_key.material(version), key.material(version)) else {
                    return Err(PluginError::State(format!(
                        "key {key_id}: the local folder holds material version {version} that the \
                         new record lacks; refusing to drop it (export the local key again)"
                    )));
                };
                if a.serialized().expose() != b.serialized().expose() {
                    return Err(PluginError::State(format!(
                        "key {key_id}: material version {version} differs between the local \
                         folder and the new record; refusing to replace it"
                    )));
                }
            }
        }
        let record_written = existing.as_ref() != Some(record);
        if record_written {
            let dir = self.keys_dir();
            fs::create_dir_all(&dir).map_err(|e| io_err("creating", &dir, e))?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                .map_err(|e| io_err("chmod 700", &dir, e))?;
            let json = serde_json::to_vec_pretty(record)
                .map_err(|e| PluginError::State(format!("encoding the key record: {e}")))?;
            write_atomic(&path, &json)?;
        }
        let mut active_written = false;
        if make_active {
            let wanted = ActiveKey {
                format: FORMAT,
                key_id: key_id.to_string(),
                source: record.source.clone(),
            };
            let current = self.read_active_file().ok();
            if current.as_ref() != Some(&wanted) {
                self.write_active(&wanted)?;
                active_written = true;
            }
        }
        Ok(Adopted {
            key_id,
            current_version,
            record_written,
            active_written,
        })
    }

    fn read_active(&self) -> Result<KeyId, PluginError> {
        let path = self.active_path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(PluginError::NotInitialized(self.root.clone()));
            }
            Err(e) => return Err(io_err("reading", &path, e)),
        };
        let active: ActiveKey = serde_json::from_slice(&bytes)
            .map_err(|e| PluginError::State(format!("{}: {e}", path.display())))?;
        if active.format != FORMAT {
            return Err(PluginError::State(format!(
                "{}: format {} is not supported (expected {FORMAT})",
                path.display(),
                active.format
            )));
        }
        KeyId::parse(&active.key_id)
            .map_err(|e| PluginError::State(format!("{}: {e}", path.display())))
    }

    fn read_record(&self, key_id: &KeyId) -> Result<KeyRecord, PluginError> {
        let path = self.key_path(key_id);
        let bytes = fs::read(&path).map_err(|e| io_err("reading", &path, e))?;
        let record: KeyRecord = serde_json::from_slice(&bytes)
            .map_err(|e| PluginError::State(format!("{}: {e}", path.display())))?;
        if record.format != FORMAT || record.key_id != key_id.to_string() {
            return Err(PluginError::State(format!(
                "{}: format {} / key id {} does not match the file name",
                path.display(),
                record.format,
                record.key_id
            )));
        }
        Ok(record)
    }

    /// The raw bytes of every state file that a reload depends on, for cheap change
    /// detection (the root key is excluded: it never changes in place).
    ///
    /// # Errors
    /// I/O errors other than "not found".
    pub fn snapshot(&self) -> Result<Vec<(String, Vec<u8>)>, PluginError> {
        let mut out = Vec::new();
        let active = self.active_path();
        match fs::read(&active) {
            Ok(b) => out.push((ACTIVE_KEY_FILE.to_owned(), b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("reading", &active, e)),
        }
        let dir = self.keys_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_err("listing", &dir, e)),
        };
        let mut names: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        names.sort();
        for p in names {
            let bytes = fs::read(&p).map_err(|e| io_err("reading", &p, e))?;
            out.push((p.display().to_string(), bytes));
        }
        Ok(out)
    }

    /// Loads and unwraps every key. The active key must be present and usable.
    ///
    /// # Errors
    /// Missing or unreadable files, a wrong root key, a corrupt record.
    pub fn load(&self) -> Result<LoadedState, PluginError> {
        let store = self.open_root_key()?;
        let active = self.read_active()?;
        let mut keys = BTreeMap::new();
        let mut active_warning = None;
        let dir = self.keys_dir();
        let entries = fs::read_dir(&dir).map_err(|e| io_err("listing", &dir, e))?;
        for entry in entries {
            let path = entry.map_err(|e| io_err("listing", &dir, e))?.path();
            let Some(stem) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            let Ok(key_id) = KeyId::parse(stem) else {
                continue;
            };
            let record = self.read_record(&key_id)?;
            let key = record_to_key(&store, &record)?;
            if key_id == active {
                active_warning = state_warning(&record);
            }
            keys.insert(key_id, key);
        }
        if !keys.contains_key(&active) {
            return Err(PluginError::State(format!(
                "the active key {active} has no record in {}",
                dir.display()
            )));
        }
        Ok(LoadedState {
            keys,
            active,
            active_warning,
        })
    }

    /// The last DEK seed kube-apiserver had encrypted through this folder's plugin:
    /// (key_id, when). `None` when never recorded or unreadable (it is advisory).
    #[must_use]
    pub fn read_seeded(&self) -> Option<(String, OffsetDateTime)> {
        let bytes = fs::read(self.root.join(SEEDED_FILE)).ok()?;
        let seeded: SeededRecord = serde_json::from_slice(&bytes).ok()?;
        Some((seeded.key_id, parse_time("at", &seeded.at).ok()?))
    }

    /// Records the key_id of kube-apiserver's latest DEK seed.
    ///
    /// # Errors
    /// I/O errors.
    pub fn write_seeded(&self, key_id: &str, at: OffsetDateTime) -> Result<(), PluginError> {
        let json = serde_json::to_vec_pretty(&SeededRecord {
            key_id: key_id.to_owned(),
            at: fmt_time(at)?,
        })
        .map_err(|e| PluginError::State(format!("encoding {SEEDED_FILE}: {e}")))?;
        write_atomic(&self.root.join(SEEDED_FILE), &json)
    }

    fn write_active(&self, active: &ActiveKey) -> Result<(), PluginError> {
        let json = serde_json::to_vec_pretty(active)
            .map_err(|e| PluginError::State(format!("encoding {ACTIVE_KEY_FILE}: {e}")))?;
        write_atomic(&self.active_path(), &json)
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
        let dir = self.keys_dir();
        fs::create_dir_all(&dir).map_err(|e| io_err("creating", &dir, e))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| io_err("chmod 700", &dir, e))?;
        let json = serde_json::to_vec_pretty(&record)
            .map_err(|e| PluginError::State(format!("encoding the key record: {e}")))?;
        write_atomic(&self.key_path(&key.key_id()), &json)
    }
}

/// Why a followed key should not be relied on although the plugin keeps serving it: its
/// KmsKey is not Enabled (Disabled, PendingDeletion, ...).
#[must_use]
pub fn state_warning(record: &KeyRecord) -> Option<String> {
    let state = record.kubernetes_state.as_deref()?;
    if state == KeyState::Enabled.as_str() {
        return None;
    }
    Some(format!(
        "key {} is {state} in Kubernetes (KmsKey {}); the plugin keeps encrypting and \
         decrypting with it so kube-apiserver keeps working: enable the key again, or move \
         the plugin to another key and re-encrypt the Secrets before it is deleted",
        record.key_id,
        record.kubernetes_object.as_deref().unwrap_or("?")
    ))
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> PluginError {
    PluginError::State(format!("{what} {}: {e}", path.display()))
}

/// Writes `bytes` to `path` atomically with mode 0600: a temp file in the same folder,
/// fsync, rename over `path`, fsync of the folder.
///
/// # Errors
/// I/O errors.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PluginError> {
    let dir = path
        .parent()
        .ok_or_else(|| PluginError::State(format!("{} has no parent folder", path.display())))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| PluginError::State(format!("{} has no file name", path.display())))?;
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io_err("creating", &tmp, e))?;
        // The mode passed to open is filtered by the umask and ignored for an existing
        // file: set it explicitly.
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| io_err("chmod 600", &tmp, e))?;
        file.write_all(bytes)
            .map_err(|e| io_err("writing", &tmp, e))?;
        file.sync_all().map_err(|e| io_err("fsync", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| io_err("renaming into", path, e))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err("fsync", dir, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// What a version of `key` is wrapped with: its identity, and the KmsKey it belongs to
/// (none for a key of this folder alone, such as the bootstrap key).
pub fn wrap_context(key: &KeyMetadata, owner: Option<&KeyOwner>, version: u32) -> WrapContext {
    WrapContext {
        key_id: key.key_id,
        version,
        spec: key.spec,
        usage: key.usage,
        origin: key.origin,
        owner: owner.cloned(),
    }
}

/// The KmsKey a record belongs to (`kubernetes_object`, `namespace/name`).
///
/// # Errors
/// A `kubernetes_object` that is not `namespace/name`.
pub fn record_owner(record: &KeyRecord) -> Result<Option<KeyOwner>, PluginError> {
    record
        .kubernetes_object
        .as_deref()
        .map(|object| {
            object
                .split_once('/')
                .map(|(namespace, name)| KeyOwner::new(namespace, name))
                .ok_or_else(|| {
                    PluginError::State(format!(
                        "key record {}: kubernetes_object {object:?} is not namespace/name",
                        record.key_id
                    ))
                })
        })
        .transpose()
}

/// A key as a record: metadata and wrapped material.
///
/// # Errors
/// Wrapping errors.
pub fn key_to_record(
    store: &dyn RootKeyStore,
    key: &KmsKey,
    source: &str,
) -> Result<KeyRecord, PluginError> {
    let m = &key.metadata;
    let mut versions = Vec::with_capacity(m.versions.len());
    for v in &m.versions {
        let wrapped_material = match key.material(v.version) {
            Some(material) => {
                let wrapped = store
                    .wrap(&wrap_context(m, None, v.version), material.serialized())
                    .map_err(PluginError::Core)?;
                Some(base64::engine::general_purpose::STANDARD.encode(wrapped))
            }
            None => None,
        };
        versions.push(VersionRecord {
            version: v.version,
            created: fmt_time(v.created)?,
            rotation_type: v.rotation_type.map(|r| r.as_str().to_owned()),
            wrapped_material,
        });
    }
    Ok(KeyRecord {
        format: FORMAT,
        key_id: m.key_id.to_string(),
        key_spec: m.spec.as_str().to_owned(),
        key_usage: m.usage.as_str().to_owned(),
        origin: m.origin.as_str().to_owned(),
        key_state: m.state.as_str().to_owned(),
        created: fmt_time(m.created)?,
        description: m.description.clone(),
        on_demand_rotations: m.on_demand_rotations,
        root_key_id: store.root_key_id(),
        source: source.to_owned(),
        versions,
        kubernetes_object: None,
        kubernetes_state: None,
    })
}

/// A record as a key: parses the metadata and unwraps every retained version.
///
/// # Errors
/// A malformed record, a record wrapped under another root key, failed unwrapping.
pub fn record_to_key(store: &dyn RootKeyStore, record: &KeyRecord) -> Result<KmsKey, PluginError> {
    let key_id =
        KeyId::parse(&record.key_id).map_err(|e| PluginError::State(format!("key record: {e}")))?;
    if !store.holds(&record.root_key_id) {
        return Err(PluginError::State(format!(
            "the material of {key_id} is wrapped under root key {}, but this folder's root key is {}",
            record.root_key_id,
            store.root_key_id()
        )));
    }
    let spec: KeySpec = parse_named("key_spec", &record.key_spec)?;
    let usage: KeyUsage = parse_named("key_usage", &record.key_usage)?;
    let origin: Origin = parse_named("origin", &record.origin)?;
    let owner = record_owner(record)?;
    let mut metadata = KeyMetadata::new(
        key_id,
        spec,
        usage,
        origin,
        parse_time("created", &record.created)?,
    )
    .map_err(PluginError::Core)?;
    metadata.state = parse_state(&record.key_state)?;
    metadata.description = record.description.clone();
    metadata.on_demand_rotations = record.on_demand_rotations;
    metadata.versions = Vec::with_capacity(record.versions.len());
    let mut materials = BTreeMap::new();
    for v in &record.versions {
        if v.version == 0
            || metadata
                .versions
                .last()
                .is_some_and(|l| l.version >= v.version)
        {
            return Err(PluginError::State(format!(
                "key {key_id}: material versions must be increasing from 1"
            )));
        }
        metadata.versions.push(MaterialVersion {
            version: v.version,
            created: parse_time("version created", &v.created)?,
            rotation_type: v
                .rotation_type
                .as_deref()
                .map(|r| parse_named("rotation_type", r))
                .transpose()?,
        });
        if let Some(wrapped) = &v.wrapped_material {
            let wrapped = base64::engine::general_purpose::STANDARD
                .decode(wrapped)
                .map_err(|e| {
                    PluginError::State(format!("key {key_id} version {}: {e}", v.version))
                })?;
            let serialized = store
                .unwrap(
                    &wrap_context(&metadata, owner.as_ref(), v.version),
                    &wrapped,
                )
                .map_err(PluginError::Core)?;
            let material =
                KeyMaterial::from_serialized(spec, serialized).map_err(PluginError::Core)?;
            materials.insert(v.version, material);
        }
    }
    KmsKey::new(metadata, materials).map_err(PluginError::Core)
}

#[cfg(test)]
mod tests {
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
        let key = &loaded.keys[&key_id];
        assert_eq!(key.current_material().expect("material").0, 1);
    }

    #[test]
    fn records_hold_no_unwrapped_material() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = StateDir::new(tmp.path());
        let key_id = dir.init(now()).expect("init");
        let loaded = dir.load().expect("load");
        let material = loaded.keys[&key_id]
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
        let dir = StateDir::new(tmp.path());
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
        let key = &loaded.keys[&key_id];
        assert_eq!(key.material_versions().collect::<Vec<_>>(), [1, 2, 3]);
    }

    #[test]
    fn a_swapped_root_key_or_tampered_record_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = StateDir::new(tmp.path().join("a"));
        let key_id = dir.init(now()).expect("init");
        let other = StateDir::new(tmp.path().join("b"));
        other.init(now()).expect("init b");
        // Put b's root key under a's records: unwrapping must fail, not yield garbage.
        fs::copy(other.root_key_path(), dir.root_key_path()).expect("copy");
        let err = dir.load().expect_err("wrong root key");
        assert!(err.to_string().contains("root key"), "{err}");

        let dir = StateDir::new(tmp.path().join("b"));
        let active = dir.read_active().expect("active");
        let mut record = dir.read_record(&active).expect("record");
        let store = dir.open_root_key().expect("root");
        // Re-label a's version as b's: the wrap AAD binds the key id.
        record.versions[0].wrapped_material = StateDir::new(tmp.path().join("a"))
            .read_record(&key_id)
            .expect("a record")
            .versions[0]
            .wrapped_material
            .clone();
        assert!(record_to_key(&store, &record).is_err());
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
}
