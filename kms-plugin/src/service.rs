//! The KMS v2 service: a keyring loaded from the state folder, kept fresh by re-reading
//! the folder, and the Status / Encrypt / Decrypt handlers.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use kms_core::ops;
use kms_core::{
    EncryptionAlgorithm, EncryptionContext, KeyId, KmsError, KmsKey, Operation, SecretBytes,
};
use time::OffsetDateTime;
use tonic::{Request, Response, Status};

use crate::error::PluginError;
use crate::metrics::Metrics;
use crate::pb;
use crate::state::{LoadedState, StateDir};

/// The API version reported by Status.
pub const API_VERSION: &str = "v2";
/// What Status reports when healthy.
pub const HEALTHZ_OK: &str = "ok";
/// kube-apiserver refuses ciphertexts over 1024 bytes; a blob adds 82 bytes.
pub const MAX_PLAINTEXT: usize = 1024 - kms_core::blob::MIN_BLOB_LEN + 1;
/// The one annotation Encrypt writes: the plugin's envelope format.
pub const ANNOTATION_FORMAT: &str = "format.kubekms.io";
/// Its value.
pub const ANNOTATION_FORMAT_VALUE: &[u8] = b"1";
/// Encryption context bound to every ciphertext of this plugin, so a blob made for
/// another purpose (the workload API) is refused here and vice versa.
const CONTEXT_KEY: &str = "kubekms:purpose";
const CONTEXT_VALUE: &str = "kube-apiserver-kms-v2";

/// The KMS v2 key_id for a key and material version: `<key-id>/v<version>`. A new
/// version gives a new key_id; versions are never reused, so neither are key_ids.
#[must_use]
pub fn format_key_id(key_id: KeyId, version: u32) -> String {
    format!("{key_id}/v{version}")
}

/// Parses [`format_key_id`]'s output.
///
/// # Errors
/// `MalformedKeyId`.
pub fn parse_key_id(text: &str) -> Result<(KeyId, u32), PluginError> {
    let bad = || PluginError::MalformedKeyId(truncate(text, 80));
    let (key, version) = text.rsplit_once("/v").ok_or_else(bad)?;
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let version: u32 = version.parse().map_err(|_| bad())?;
    let key_id = KeyId::parse(key).map_err(|_| bad())?;
    if version == 0 {
        return Err(bad());
    }
    Ok((key_id, version))
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

fn context() -> Result<EncryptionContext, PluginError> {
    EncryptionContext::from_pairs([(CONTEXT_KEY, CONTEXT_VALUE)]).map_err(PluginError::Core)
}

/// The keys in memory: every key of the state folder, and which one Encrypt uses.
#[derive(Debug)]
pub struct Keyring {
    keys: BTreeMap<KeyId, KmsKey>,
    active: KeyId,
    current_version: u32,
    key_id: String,
    warning: Option<String>,
}

impl Keyring {
    /// Builds a keyring from a loaded state folder.
    ///
    /// # Errors
    /// `NoKey` when the active key has no material.
    pub fn new(state: LoadedState) -> Result<Self, PluginError> {
        let key = state.keys.get(&state.active).ok_or_else(|| {
            PluginError::NoKey(format!("active key {} is not loaded", state.active))
        })?;
        let (current_version, _) = key
            .current_material()
            .map_err(|e| PluginError::NoKey(e.to_string()))?;
        Ok(Self {
            key_id: format_key_id(state.active, current_version),
            warning: state.active_warning,
            keys: state.keys,
            active: state.active,
            current_version,
        })
    }

    /// Status's key_id.
    #[must_use]
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The current material version of the active key.
    #[must_use]
    pub fn current_version(&self) -> u32 {
        self.current_version
    }

    /// The active key.
    #[must_use]
    pub fn active(&self) -> KeyId {
        self.active
    }

    /// Whether the active key can encrypt now, and a round trip works.
    ///
    /// # Errors
    /// The reason, in words.
    pub fn self_test(&self) -> Result<(), String> {
        let key = self
            .keys
            .get(&self.active)
            .ok_or_else(|| format!("active key {} is not loaded", self.active))?;
        key.metadata
            .check(Operation::Encrypt)
            .map_err(|e| format!("key {} cannot encrypt: {e}", self.active))?;
        let probe = ops::generate_random(32).map_err(|e| format!("self-test: {e}"))?;
        let (blob, key_id) = self
            .encrypt(probe.expose())
            .map_err(|e| format!("self-test encrypt failed: {e}"))?;
        if key_id != self.key_id {
            return Err(format!(
                "self-test: encrypt used {key_id}, expected {}",
                self.key_id
            ));
        }
        let annotations = HashMap::from([(
            ANNOTATION_FORMAT.to_owned(),
            ANNOTATION_FORMAT_VALUE.to_vec(),
        )]);
        let back = self
            .decrypt(&blob, &key_id, &annotations)
            .map_err(|e| format!("self-test decrypt failed: {e}"))?;
        if back != probe {
            return Err("self-test: decrypt returned other bytes than were encrypted".into());
        }
        match &self.warning {
            Some(warning) => Err(warning.clone()),
            None => Ok(()),
        }
    }

    /// Encrypts under the active key's current version; returns the blob and its key_id.
    ///
    /// # Errors
    /// `PlaintextSize`, key state errors.
    pub fn encrypt(&self, plaintext: &[u8]) -> Result<(Vec<u8>, String), PluginError> {
        if plaintext.is_empty() || plaintext.len() > MAX_PLAINTEXT {
            return Err(PluginError::PlaintextSize(plaintext.len()));
        }
        let key = self
            .keys
            .get(&self.active)
            .ok_or(PluginError::UnknownKey(self.active))?;
        let blob = ops::encrypt(
            key,
            plaintext,
            &context()?,
            EncryptionAlgorithm::SymmetricDefault,
        )
        .map_err(PluginError::Core)?;
        let (_, version) = kms_core::blob::peek(&blob).map_err(PluginError::Core)?;
        Ok((blob, format_key_id(self.active, version)))
    }

    /// Decrypts a blob of any retained version of any key in the ring. `key_id` must be
    /// the one Encrypt returned with it; annotations must be ones this plugin writes.
    ///
    /// # Errors
    /// `InvalidCiphertext`, `MalformedKeyId`, `KeyIdMismatch`, `BadAnnotation`,
    /// `UnknownKey`, `UnknownVersion`, key state errors.
    pub fn decrypt(
        &self,
        ciphertext: &[u8],
        key_id: &str,
        annotations: &HashMap<String, Vec<u8>>,
    ) -> Result<SecretBytes, PluginError> {
        let (blob_key, blob_version) = kms_core::blob::peek(ciphertext)
            .map_err(|_| PluginError::InvalidCiphertext("not a KubeKMS ciphertext blob"))?;
        for (name, value) in annotations {
            if name != ANNOTATION_FORMAT || value.as_slice() != ANNOTATION_FORMAT_VALUE {
                return Err(PluginError::BadAnnotation(truncate(name, 80)));
            }
        }
        let (req_key, req_version) = parse_key_id(key_id)?;
        if (req_key, req_version) != (blob_key, blob_version) {
            return Err(PluginError::KeyIdMismatch {
                request: truncate(key_id, 80),
                blob: format_key_id(blob_key, blob_version),
            });
        }
        let key = self
            .keys
            .get(&blob_key)
            .ok_or(PluginError::UnknownKey(blob_key))?;
        if key.material(blob_version).is_none() {
            return Err(PluginError::UnknownVersion {
                key_id: blob_key,
                version: blob_version,
            });
        }
        match ops::decrypt(
            key,
            ciphertext,
            &context()?,
            EncryptionAlgorithm::SymmetricDefault,
        ) {
            Ok((plaintext, _)) => Ok(plaintext),
            Err(KmsError::InvalidCiphertext | KmsError::IncorrectKey) => {
                Err(PluginError::InvalidCiphertext(
                    "authentication failed: modified, truncated or extended",
                ))
            }
            Err(KmsError::Validation(_)) => Err(PluginError::InvalidCiphertext(
                "ciphertext size out of range",
            )),
            Err(e) => Err(PluginError::Core(e)),
        }
    }
}

struct Inner {
    state: StateDir,
    ring: RwLock<Arc<Keyring>>,
    snapshot: Mutex<Vec<(String, Vec<u8>)>>,
    reload_error: RwLock<Option<String>>,
    follow_problem: RwLock<Option<String>>,
    seeded: RwLock<Option<(String, OffsetDateTime)>>,
    metrics: Arc<Metrics>,
}

/// The plugin: keyring + state folder + metrics. Cheap to clone.
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

impl Plugin {
    /// Loads the state folder. Fails when it holds no usable key: the server must not
    /// start without one.
    ///
    /// # Errors
    /// State errors.
    pub fn open(state: StateDir, metrics: Arc<Metrics>) -> Result<Self, PluginError> {
        let snapshot = state.snapshot()?;
        let ring = Keyring::new(state.load()?)?;
        metrics.set_key_version(ring.current_version());
        let seeded = state.read_seeded();
        Ok(Self {
            inner: Arc::new(Inner {
                state,
                ring: RwLock::new(Arc::new(ring)),
                snapshot: Mutex::new(snapshot),
                reload_error: RwLock::new(None),
                follow_problem: RwLock::new(None),
                seeded: RwLock::new(seeded),
                metrics,
            }),
        })
    }

    /// The current keyring.
    #[must_use]
    pub fn ring(&self) -> Arc<Keyring> {
        read_lock(&self.inner.ring)
    }

    /// The metrics.
    #[must_use]
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Re-reads the state folder when a file changed (a rotation by `rotate`, by another
    /// node, or later by the Kubernetes follower). Returns true when the keyring changed.
    /// A failed reload keeps the previous keyring and makes health report why.
    pub fn refresh(&self) -> bool {
        let inner = &self.inner;
        let mut last = match inner.snapshot.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let snapshot = match inner.state.snapshot() {
            Ok(s) => s,
            Err(e) => {
                self.reload_failed(e);
                return false;
            }
        };
        if *last == snapshot && read_lock(&inner.reload_error).is_none() {
            return false;
        }
        match inner.state.load().and_then(Keyring::new) {
            Ok(ring) => {
                let old = self.ring().key_id().to_owned();
                if old != ring.key_id() {
                    tracing::info!(old_key_id = %old, new_key_id = %ring.key_id(), "key changed in the state folder");
                }
                inner.metrics.set_key_version(ring.current_version());
                inner.metrics.reloads.inc();
                write_lock(&inner.ring, Arc::new(ring));
                write_lock(&inner.reload_error, None);
                *last = snapshot;
                true
            }
            Err(e) => {
                self.reload_failed(e);
                false
            }
        }
    }

    fn reload_failed(&self, e: PluginError) {
        let reason = format!("reloading the state folder failed, serving the last good keys: {e}");
        if read_lock(&self.inner.reload_error).as_deref() != Some(&reason) {
            tracing::error!(error = %e, "reloading the state folder failed");
        }
        self.inner.metrics.reload_failures.inc();
        write_lock(&self.inner.reload_error, Some(reason));
    }

    /// The state folder this plugin serves from.
    #[must_use]
    pub fn state_dir(&self) -> &StateDir {
        &self.inner.state
    }

    /// Sets (or clears) a problem of the Kubernetes follower that health reports, such as
    /// a record wrapped under another root key. The plugin keeps serving its local keys.
    pub fn set_follow_problem(&self, problem: Option<String>) {
        write_lock(&self.inner.follow_problem, problem);
    }

    /// Health: the key is usable, the state folder reads, a self-test round trip
    /// succeeds, the followed KmsKey is Enabled and its record could be adopted. `Err`
    /// carries the reason in words.
    ///
    /// # Errors
    /// The reason.
    pub fn health(&self) -> Result<(), String> {
        if let Some(reason) = read_lock(&self.inner.reload_error) {
            return Err(reason);
        }
        let result =
            self.ring()
                .self_test()
                .and_then(|()| match read_lock(&self.inner.follow_problem) {
                    Some(problem) => Err(problem),
                    None => Ok(()),
                });
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
    /// key_id is also written to the state folder so a restart remembers it.
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
    /// As [`Keyring::encrypt`].
    pub fn encrypt(&self, plaintext: &[u8]) -> Result<pb::EncryptResponse, PluginError> {
        let (ciphertext, key_id) = self.ring().encrypt(plaintext)?;
        Ok(pb::EncryptResponse {
            ciphertext,
            key_id,
            annotations: HashMap::from([(
                ANNOTATION_FORMAT.to_owned(),
                ANNOTATION_FORMAT_VALUE.to_vec(),
            )]),
        })
    }

    /// Decrypt; a key or version not (yet) in memory triggers one reload first, so a
    /// rotation made on another node is found at once.
    ///
    /// # Errors
    /// As [`Keyring::decrypt`].
    pub fn decrypt(&self, req: &pb::DecryptRequest) -> Result<SecretBytes, PluginError> {
        match self
            .ring()
            .decrypt(&req.ciphertext, &req.key_id, &req.annotations)
        {
            Err(PluginError::UnknownKey(_) | PluginError::UnknownVersion { .. })
                if self.refresh() =>
            {
                self.ring()
                    .decrypt(&req.ciphertext, &req.key_id, &req.annotations)
            }
            other => other,
        }
    }
}

fn finish<T>(
    plugin: &Plugin,
    method: &'static str,
    uid: &str,
    started: Instant,
    result: Result<T, PluginError>,
) -> Result<Response<T>, Status> {
    let code = match &result {
        Ok(_) => tonic::Code::Ok,
        Err(e) => e.code(),
    };
    plugin
        .metrics()
        .observe(method, code, started.elapsed().as_secs_f64());
    match result {
        Ok(v) => {
            tracing::debug!(method, uid, "ok");
            Ok(Response::new(v))
        }
        Err(e) => {
            // Only identifiers, sizes and names reach the log: PluginError never holds bytes.
            tracing::warn!(method, uid, code = ?code, error = %e, "request refused");
            Err(e.into())
        }
    }
}

#[tonic::async_trait]
impl pb::key_management_service_server::KeyManagementService for Plugin {
    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let started = Instant::now();
        let plugin = self.clone();
        let response = tokio::task::spawn_blocking(move || {
            plugin.refresh();
            plugin.status()
        })
        .await
        .map_err(|e| PluginError::State(format!("status task failed: {e}")));
        if let Ok(r) = &response
            && r.healthz != HEALTHZ_OK
        {
            tracing::warn!(healthz = %r.healthz, key_id = %r.key_id, "unhealthy");
        }
        finish(self, "Status", "", started, response)
    }

    async fn encrypt(
        &self,
        request: Request<pb::EncryptRequest>,
    ) -> Result<Response<pb::EncryptResponse>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        let plaintext = SecretBytes::new(req.plaintext);
        let result = Plugin::encrypt(self, plaintext.expose());
        if let Ok(r) = &result {
            tracing::info!(uid = %req.uid, key_id = %r.key_id, "encrypted a DEK seed");
            let plugin = self.clone();
            let key_id = r.key_id.clone();
            // The record is an fsync'd file write: off the async threads.
            let _ = tokio::task::spawn_blocking(move || {
                plugin.note_seeded(&key_id, OffsetDateTime::now_utc());
            })
            .await;
        }
        finish(self, "Encrypt", &req.uid, started, result)
    }

    async fn decrypt(
        &self,
        request: Request<pb::DecryptRequest>,
    ) -> Result<Response<pb::DecryptResponse>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        // The plaintext leaves in the response; prost needs a Vec, so the copy there is
        // outside our control, but ours is wiped.
        let result = Plugin::decrypt(self, &req).map(|p| pb::DecryptResponse {
            plaintext: p.expose().to_vec(),
        });
        finish(self, "Decrypt", &req.uid, started, result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::OffsetDateTime;

    fn ring_in(dir: &std::path::Path) -> (StateDir, Keyring) {
        let state = StateDir::new(dir);
        state.init(OffsetDateTime::now_utc()).expect("init");
        let ring = Keyring::new(state.load().expect("load")).expect("ring");
        (state, ring)
    }

    fn ann() -> HashMap<String, Vec<u8>> {
        HashMap::from([(
            ANNOTATION_FORMAT.to_owned(),
            ANNOTATION_FORMAT_VALUE.to_vec(),
        )])
    }

    #[test]
    fn key_id_format_round_trips_and_rejects_junk() {
        let key = KeyId::single_from_random([3; 16]);
        let text = format_key_id(key, 42);
        assert_eq!(parse_key_id(&text).expect("parse"), (key, 42));
        for bad in [
            "",
            "v1",
            "/v1",
            "abc/v1",
            &format!("{key}/v"),
            &format!("{key}/v0"),
            &format!("{key}/v-1"),
            &format!("{key}/v1x"),
            &format!("{key}/v99999999999"),
        ] {
            assert!(parse_key_id(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn round_trip_and_self_test() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (_, ring) = ring_in(tmp.path());
        ring.self_test().expect("self test");
        let seed = [9u8; 32];
        let (blob, key_id) = ring.encrypt(&seed).expect("encrypt");
        assert!(blob.len() <= 1024);
        assert_eq!(key_id, ring.key_id());
        assert_eq!(
            ring.decrypt(&blob, &key_id, &ann())
                .expect("decrypt")
                .expose(),
            seed
        );
        assert_eq!(
            ring.decrypt(&blob, &key_id, &HashMap::new())
                .expect("no annotations")
                .expose(),
            seed
        );
    }

    #[test]
    fn plaintext_limits_keep_ciphertext_under_1024() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (_, ring) = ring_in(tmp.path());
        let (blob, _) = ring.encrypt(&vec![1u8; MAX_PLAINTEXT]).expect("max");
        assert_eq!(blob.len(), 1024);
        assert!(matches!(
            ring.encrypt(&vec![1u8; MAX_PLAINTEXT + 1]),
            Err(PluginError::PlaintextSize(_))
        ));
        assert!(matches!(
            ring.encrypt(&[]),
            Err(PluginError::PlaintextSize(0))
        ));
    }

    #[test]
    fn every_tampering_is_refused_with_the_right_code() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (_, ring) = ring_in(tmp.path());
        let (blob, key_id) = ring.encrypt(&[5u8; 32]).expect("encrypt");
        for i in 0..blob.len() {
            let mut flipped = blob.clone();
            flipped[i] ^= 0x01;
            let err = ring
                .decrypt(&flipped, &key_id, &ann())
                .expect_err("flipped");
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "byte {i}: {err}");
        }
        for len in 0..blob.len() {
            let err = ring
                .decrypt(&blob[..len], &key_id, &ann())
                .expect_err("truncated");
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "len {len}: {err}");
        }
        let mut longer = blob.clone();
        longer.push(0);
        assert_eq!(
            ring.decrypt(&longer, &key_id, &ann())
                .expect_err("extended")
                .code(),
            tonic::Code::InvalidArgument
        );
        let other_version = key_id.replace("/v1", "/v2");
        assert!(matches!(
            ring.decrypt(&blob, &other_version, &ann()),
            Err(PluginError::KeyIdMismatch { .. })
        ));
        assert!(matches!(
            ring.decrypt(&blob, "nonsense", &ann()),
            Err(PluginError::MalformedKeyId(_))
        ));
        let mut bad = ann();
        bad.insert("other.example.com".into(), b"x".to_vec());
        assert!(matches!(
            ring.decrypt(&blob, &key_id, &bad),
            Err(PluginError::BadAnnotation(_))
        ));
        let wrong_value = HashMap::from([(ANNOTATION_FORMAT.to_owned(), b"2".to_vec())]);
        assert!(matches!(
            ring.decrypt(&blob, &key_id, &wrong_value),
            Err(PluginError::BadAnnotation(_))
        ));
    }

    #[test]
    fn unknown_versions_and_keys_are_not_found() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (_, ring) = ring_in(tmp.path());
        let (mut blob, _) = ring.encrypt(&[5u8; 32]).expect("encrypt");
        blob[18..22].copy_from_slice(&7u32.to_be_bytes());
        let key_id = format_key_id(ring.active(), 7);
        let err = ring.decrypt(&blob, &key_id, &ann()).expect_err("v7");
        assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
        let stranger = KeyId::single_from_random([1; 16]);
        blob[1..18].copy_from_slice(&stranger.to_wire());
        let err = ring
            .decrypt(&blob, &format_key_id(stranger, 7), &ann())
            .expect_err("stranger");
        assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
    }

    #[test]
    fn errors_hold_no_plaintext() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (_, ring) = ring_in(tmp.path());
        let secret = b"correct-horse-battery-staple-000";
        let (blob, key_id) = ring.encrypt(secret).expect("encrypt");
        let mut flipped = blob.clone();
        flipped[70] ^= 0x80;
        let err = ring
            .decrypt(&flipped, &key_id, &ann())
            .expect_err("flipped")
            .to_string();
        assert!(!err.contains("correct-horse"), "{err}");
    }
}
