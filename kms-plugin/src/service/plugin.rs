//! The plugin: the keys it serves ([`ServingKeys`]), kept fresh from the state folder
//! (periodic reloads that unwrap only changed records) and from Kubernetes (keys adopted
//! by the follower go straight into memory and into the folder), and its health.
//!
//! Nothing on the Encrypt / Decrypt / Status path reads the disk: a Decrypt of a key or
//! version not in memory asks the reloader for a reload ([`Plugin::request_reload`]) and
//! answers NOT_FOUND at once.

use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use kms_core::{KeyState, KmsKey, SecretBytes};
use time::OffsetDateTime;

use super::ring::ServingKeys;
use super::{ANNOTATION_FORMAT, ANNOTATION_FORMAT_VALUE, API_VERSION, HEALTHZ_OK};
use crate::error::PluginError;
use crate::metrics::Metrics;
use crate::pb;
use crate::state::adopt::{check_keeps_versions, check_key_switch};
use crate::state::record::record_metadata;
use crate::state::{
    ActiveChoice, Adopted, FolderCache, KeyRecord, LoadedKey, LoadedState, SOURCE_KUBERNETES,
    StateDir, state_warning,
};

struct Inner {
    state: StateDir,
    ring: RwLock<Arc<ServingKeys>>,
    /// What the last reload read; held by whoever changes the keys (a reload, an
    /// adoption), so they do not interleave.
    folder: Mutex<FolderCache>,
    reload_error: RwLock<Option<String>>,
    unusable: RwLock<Vec<String>>,
    follow_problem: RwLock<Option<String>>,
    seeded: RwLock<Option<(String, OffsetDateTime)>>,
    metrics: Arc<Metrics>,
    reload_wanted: tokio::sync::Notify,
    /// Woken when the keys served change, so the heartbeat reports a newly loaded
    /// (staged) version at once instead of at its next tick.
    keys_changed: tokio::sync::Notify,
}

/// The plugin: keys + state folder + metrics. Cheap to clone.
#[derive(Clone)]
pub struct Plugin {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("state", &self.inner.state.path())
            .field("key_id", &self.ring().key_id())
            .finish()
    }
}

fn read_lock<T: Clone>(lock: &RwLock<T>) -> T {
    match lock.read() {
        Ok(g) => g.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

fn write_lock<T>(lock: &RwLock<T>, value: T) {
    match lock.write() {
        Ok(mut g) => *g = value,
        Err(poisoned) => *poisoned.into_inner() = value,
    }
}

fn report_unusable(previous: &[String], now: &[String]) {
    for record in now.iter().filter(|r| !previous.contains(r)) {
        tracing::error!(record = %record, "a record of the state folder cannot be used; skipped (its key does not decrypt)");
    }
}

impl Plugin {
    /// Loads the state folder. Fails when it holds no usable active key: the server must
    /// not start without one. Other unusable records are skipped, logged and reported by
    /// health.
    ///
    /// # Errors
    /// State errors.
    pub fn open(state: StateDir, metrics: Arc<Metrics>) -> Result<Self, PluginError> {
        let mut cache = FolderCache::default();
        let (loaded, _) = state.reload(&mut cache)?;
        let ring = ServingKeys::from_loaded(&loaded)?;
        report_unusable(&[], &loaded.unusable);
        metrics.set_key_version(ring.current_version());
        metrics.set_unusable_records(loaded.unusable.len());
        let seeded = state.read_seeded();
        Ok(Self {
            inner: Arc::new(Inner {
                state,
                ring: RwLock::new(Arc::new(ring)),
                folder: Mutex::new(cache),
                reload_error: RwLock::new(None),
                unusable: RwLock::new(loaded.unusable),
                follow_problem: RwLock::new(None),
                seeded: RwLock::new(seeded),
                metrics,
                reload_wanted: tokio::sync::Notify::new(),
                keys_changed: tokio::sync::Notify::new(),
            }),
        })
    }

    /// The keys served now.
    #[must_use]
    pub fn ring(&self) -> Arc<ServingKeys> {
        read_lock(&self.inner.ring)
    }

    /// The metrics.
    #[must_use]
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The state folder this plugin serves from.
    #[must_use]
    pub fn state_dir(&self) -> &StateDir {
        &self.inner.state
    }

    fn folder(&self) -> MutexGuard<'_, FolderCache> {
        match self.inner.folder.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn install(&self, old: &ServingKeys, ring: ServingKeys) {
        if old.key_id() != ring.key_id() {
            tracing::info!(old_key_id = %old.key_id(), new_key_id = %ring.key_id(), "key_id changed");
        }
        self.inner.metrics.set_key_version(ring.current_version());
        write_lock(&self.inner.ring, Arc::new(ring));
        self.inner.keys_changed.notify_waiters();
    }

    /// Resolves at the next change of the keys served (a new version loaded, a key
    /// adopted, a reload) after it is created (or `enable`d).
    pub fn keys_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.inner.keys_changed.notified()
    }

    /// Re-reads the state folder (a rotation by `rotate`, by another node on a shared
    /// folder), unwrapping only records whose bytes changed. Returns true when the keys
    /// changed. A failed reload keeps the keys served and makes health report why.
    /// Blocking: call it off the async threads.
    pub fn refresh(&self) -> bool {
        let mut folder = self.folder();
        match self.inner.state.reload(&mut folder) {
            Ok((loaded, changed)) => {
                let failed_before = read_lock(&self.inner.reload_error).is_some();
                if !changed && !failed_before {
                    return false;
                }
                match self.rebuild(&loaded) {
                    Ok(()) => {
                        if failed_before {
                            tracing::info!("the state folder reads again");
                        }
                        write_lock(&self.inner.reload_error, None);
                        self.inner.metrics.reloads.inc();
                        changed
                    }
                    Err(e) => {
                        self.reload_failed(&e);
                        false
                    }
                }
            }
            Err(e) => {
                self.reload_failed(&e);
                false
            }
        }
    }

    fn rebuild(&self, loaded: &LoadedState) -> Result<(), PluginError> {
        let ring = ServingKeys::from_loaded(loaded)?;
        let previous = read_lock(&self.inner.unusable);
        report_unusable(&previous, &loaded.unusable);
        self.inner
            .metrics
            .set_unusable_records(loaded.unusable.len());
        write_lock(&self.inner.unusable, loaded.unusable.clone());
        self.install(&self.ring(), ring);
        Ok(())
    }

    fn reload_failed(&self, e: &PluginError) {
        let reason = format!("reloading the state folder failed, serving the last good keys: {e}");
        if read_lock(&self.inner.reload_error).as_deref() != Some(&reason) {
            tracing::error!(error = %e, "reloading the state folder failed");
        }
        self.inner.metrics.reload_failures.inc();
        write_lock(&self.inner.reload_error, Some(reason));
    }

    /// Asks the reloader for a reload soon (a Decrypt met a key or version not in
    /// memory). Never waits.
    pub fn request_reload(&self) {
        self.inner.metrics.reload_requests.inc();
        self.inner.reload_wanted.notify_one();
    }

    /// Resolves when a reload was requested.
    pub async fn reload_requested(&self) {
        self.inner.reload_wanted.notified().await;
    }

    /// Takes a key that the follower read from Kubernetes: `record` is its local form
    /// (the wrapped bytes of the KmsKeyMaterial), `key` its material (unwrapped by the
    /// keyring), `state` the state its objects imply. Refuses a switch away from a key
    /// adopted from the same KmsKey (unless `allow_switch`) and a record that drops or
    /// changes a version this plugin holds; writes the folder; updates the keys in memory
    /// (no folder reload). The key becomes active when Enabled or when it already is.
    /// Blocking: call it off the async threads.
    ///
    /// # Errors
    /// `KeySwitch`, `FollowedKey`, I/O errors.
    pub fn adopt_followed(
        &self,
        target: &str,
        record: &KeyRecord,
        key: &KmsKey,
        state: KeyState,
        allow_switch: bool,
    ) -> Result<Adopted, PluginError> {
        let mut folder = self.folder();
        let ring = self.ring();
        let key_id = key.key_id();
        check_key_switch(ring.active_choice(), target, key_id, allow_switch)?;
        if let Some(held) = ring.key(&key_id) {
            check_keeps_versions(
                target,
                held.shared_materials()
                    .iter()
                    .map(|(version, material)| (*version, material.as_ref())),
                key,
            )?;
        }
        // Served as a cold start would serve it from the record written.
        let served = Arc::new(
            key.with_metadata(record_metadata(record)?)
                .map_err(PluginError::Core)?,
        );
        let make_active = state == KeyState::Enabled || ring.active() == key_id;
        let adopted = self
            .inner
            .state
            .adopt(target, record, &served, make_active)?;
        let loaded = LoadedKey {
            key: served.clone(),
            source: record.source.clone(),
            kubernetes_object: record.kubernetes_object.clone(),
            warning: state_warning(record),
        };
        let record_path = self.inner.state.key_path(&key_id);
        for (path, bytes) in &adopted.written {
            folder.wrote(path, bytes, (*path == record_path).then(|| loaded.clone()));
        }
        let choice = make_active.then(|| ActiveChoice {
            key_id,
            source: SOURCE_KUBERNETES.to_owned(),
            kubernetes_object: Some(target.to_owned()),
        });
        let next = ring.with_key(served, choice, loaded.warning)?;
        self.install(&ring, next);
        Ok(adopted)
    }

    /// Sets (or clears) a problem of the Kubernetes follower that health reports, such as
    /// a record wrapped under another root key. The plugin keeps serving its keys.
    pub fn set_follow_problem(&self, problem: Option<String>) {
        write_lock(&self.inner.follow_problem, problem);
    }

    /// Health: the folder read cleanly at the last reload, the active key is usable and a
    /// self-test round trip succeeds, the followed KmsKey is Enabled and its record could
    /// be adopted, and every record of the folder is usable. `Err` carries the reason.
    ///
    /// # Errors
    /// The reason.
    pub fn health(&self) -> Result<(), String> {
        let result = match read_lock(&self.inner.reload_error) {
            Some(reason) => Err(reason),
            None => self.ring().self_test().and_then(|()| {
                if let Some(problem) = read_lock(&self.inner.follow_problem) {
                    return Err(problem);
                }
                let unusable = read_lock(&self.inner.unusable);
                if unusable.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "records of the state folder cannot be used, their keys do not decrypt: {}",
                        unusable.join("; ")
                    ))
                }
            }),
        };
        self.inner.metrics.healthy.set(i64::from(result.is_ok()));
        result
    }

    /// Status, as kube-apiserver sees it.
    #[must_use]
    pub fn status(&self) -> pb::StatusResponse {
        let healthz = match self.health() {
            Ok(()) => HEALTHZ_OK.to_owned(),
            Err(reason) => reason,
        };
        pb::StatusResponse {
            version: API_VERSION.to_owned(),
            healthz,
            key_id: self.ring().key_id().to_owned(),
        }
    }

    /// The key_id of kube-apiserver's latest Encrypt call (a DEK seed), and when.
    #[must_use]
    pub fn seeded(&self) -> Option<(String, OffsetDateTime)> {
        read_lock(&self.inner.seeded)
    }

    /// Notes a DEK seed that kube-apiserver had encrypted under `key_id` at `now`; a new
    /// key_id is also written to the state folder so a restart remembers it. Blocking.
    pub fn note_seeded(&self, key_id: &str, now: OffsetDateTime) {
        let changed = self.seeded().is_none_or(|(previous, _)| previous != key_id);
        write_lock(&self.inner.seeded, Some((key_id.to_owned(), now)));
        if changed && let Err(e) = self.inner.state.write_seeded(key_id, now) {
            tracing::warn!(error = %e, "could not record the DEK seed's key_id in the state folder");
        }
    }

    /// Encrypt.
    ///
    /// # Errors
    /// As [`ServingKeys::encrypt`].
    pub fn encrypt(&self, plaintext: &[u8]) -> Result<pb::EncryptResponse, PluginError> {
        let (ciphertext, key_id) = self.ring().encrypt(plaintext)?;
        Ok(pb::EncryptResponse {
            ciphertext,
            key_id,
            annotations: std::collections::HashMap::from([(
                ANNOTATION_FORMAT.to_owned(),
                ANNOTATION_FORMAT_VALUE.to_vec(),
            )]),
        })
    }

    /// Decrypt, from memory only. A key or version not in memory (a rotation on another
    /// node sharing the folder, not reloaded yet) answers NOT_FOUND and asks for a reload,
    /// so kube-apiserver's retry finds it.
    ///
    /// # Errors
    /// As [`ServingKeys::decrypt`].
    pub fn decrypt(&self, req: &pb::DecryptRequest) -> Result<SecretBytes, PluginError> {
        let result = self
            .ring()
            .decrypt(&req.ciphertext, &req.key_id, &req.annotations);
        if matches!(
            result,
            Err(PluginError::UnknownKey(_) | PluginError::UnknownVersion { .. })
        ) {
            self.request_reload();
        }
        result
    }
}
