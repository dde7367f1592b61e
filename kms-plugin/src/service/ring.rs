//! The keys in memory: every key the plugin can decrypt with, and the one Encrypt uses.
//! Immutable: a change (a reload, a key adopted from Kubernetes) builds a new
//! [`ServingKeys`] that replaces the old one at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use kms_core::ops;
use kms_core::{EncryptionAlgorithm, KeyId, KmsError, KmsKey, Operation, SecretBytes};

use super::{
    ANNOTATION_FORMAT, ANNOTATION_FORMAT_VALUE, MAX_PLAINTEXT, context, format_key_id,
    parse_key_id, truncate,
};
use crate::error::PluginError;
use crate::state::{ActiveChoice, LoadedState};

/// Every key of the state folder (and the followed one), and which one Encrypt uses.
#[derive(Debug, Clone)]
pub struct ServingKeys {
    keys: BTreeMap<KeyId, Arc<KmsKey>>,
    active: ActiveChoice,
    current_version: u32,
    key_id: String,
    warning: Option<String>,
}

impl ServingKeys {
    /// The keys of a loaded state folder.
    ///
    /// # Errors
    /// `NoKey` when the active key is missing or has no material.
    pub fn from_loaded(state: &LoadedState) -> Result<Self, PluginError> {
        let active = state.keys.get(&state.active).ok_or_else(|| {
            PluginError::NoKey(format!("active key {} is not loaded", state.active))
        })?;
        Self::new(
            state
                .keys
                .iter()
                .map(|(id, k)| (*id, k.key.clone()))
                .collect(),
            ActiveChoice {
                key_id: state.active,
                source: state.active_file.source.clone(),
                kubernetes_object: active.kubernetes_object.clone(),
            },
            active.warning.clone(),
        )
    }

    fn new(
        keys: BTreeMap<KeyId, Arc<KmsKey>>,
        active: ActiveChoice,
        warning: Option<String>,
    ) -> Result<Self, PluginError> {
        let key = keys.get(&active.key_id).ok_or_else(|| {
            PluginError::NoKey(format!("active key {} is not loaded", active.key_id))
        })?;
        let (current_version, _) = key
            .current_material()
            .map_err(|e| PluginError::NoKey(e.to_string()))?;
        Ok(Self {
            key_id: format_key_id(active.key_id, current_version),
            keys,
            active,
            current_version,
            warning,
        })
    }

    /// These keys with `key` added or replaced; with `active`, it becomes the key Encrypt
    /// uses (`warning`: why it should not be relied on). A key that stays active keeps
    /// its choice and takes the new warning.
    ///
    /// # Errors
    /// `NoKey` when the active key would have no material.
    pub fn with_key(
        &self,
        key: Arc<KmsKey>,
        active: Option<ActiveChoice>,
        warning: Option<String>,
    ) -> Result<Self, PluginError> {
        let key_id = key.key_id();
        let mut keys = self.keys.clone();
        keys.insert(key_id, key);
        match active {
            Some(choice) => Self::new(keys, choice, warning),
            None if key_id == self.active.key_id => Self::new(keys, self.active.clone(), warning),
            None => Self::new(keys, self.active.clone(), self.warning.clone()),
        }
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

    /// The material versions of the active key held (staged ones included): what the
    /// heartbeat reports, so the operator promotes a staged version only once every plugin
    /// can decrypt under it.
    #[must_use]
    pub fn held_versions(&self) -> Vec<u32> {
        self.keys
            .get(&self.active.key_id)
            .map(|k| k.material_versions().collect())
            .unwrap_or_default()
    }

    /// The active key.
    #[must_use]
    pub fn active(&self) -> KeyId {
        self.active.key_id
    }

    /// The active key and who chose it.
    #[must_use]
    pub fn active_choice(&self) -> &ActiveChoice {
        &self.active
    }

    /// A key, if held.
    #[must_use]
    pub fn key(&self, key_id: &KeyId) -> Option<&Arc<KmsKey>> {
        self.keys.get(key_id)
    }

    /// Whether the active key can encrypt now, and a round trip works.
    ///
    /// # Errors
    /// The reason, in words.
    pub fn self_test(&self) -> Result<(), String> {
        let active = self.active.key_id;
        let key = self
            .keys
            .get(&active)
            .ok_or_else(|| format!("active key {active} is not loaded"))?;
        key.metadata
            .check(Operation::Encrypt)
            .map_err(|e| format!("key {active} cannot encrypt: {e}"))?;
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
        let active = self.active.key_id;
        let key = self
            .keys
            .get(&active)
            .ok_or(PluginError::UnknownKey(active))?;
        let blob = ops::encrypt(
            key,
            plaintext,
            &context()?,
            EncryptionAlgorithm::SymmetricDefault,
        )
        .map_err(PluginError::Core)?;
        let (_, version) = kms_core::blob::peek(&blob).map_err(PluginError::Core)?;
        Ok((blob, format_key_id(active, version)))
    }

    /// Decrypts a blob of any retained version of any key held. `key_id` must be the one
    /// Encrypt returned with it; annotations must be ones this plugin writes.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateDir;
    use time::OffsetDateTime;

    fn ring_in(dir: &std::path::Path) -> (StateDir, ServingKeys) {
        let state = StateDir::new(dir.join("state"));
        state.init(OffsetDateTime::now_utc()).expect("init");
        let ring = ServingKeys::from_loaded(&state.load().expect("load")).expect("ring");
        (state, ring)
    }

    fn ann() -> HashMap<String, Vec<u8>> {
        HashMap::from([(
            ANNOTATION_FORMAT.to_owned(),
            ANNOTATION_FORMAT_VALUE.to_vec(),
        )])
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
