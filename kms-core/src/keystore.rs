//! Root-key wrapping. A key store holds the root key and wraps key material under it, with
//! the key id, material version and key spec bound as associated data, so wrapped
//! material cannot be swapped between keys or versions. Implementations: [`FileKeyStore`]
//! here; a PKCS#11 store (the root key never leaves the HSM) implements the same trait.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{KmsError, KmsResult};
use crate::ids::KeyId;
use crate::primitives::{self, AesGcmKey, GCM_NONCE_LEN, GCM_TAG_LEN, HmacKey};
use crate::secret::SecretBytes;
use crate::spec::KeySpec;

/// Length of a file root key.
pub const ROOT_KEY_LEN: usize = 32;
/// Format version of wrapped material.
pub const WRAP_FORMAT_VERSION: u8 = 1;
/// Length of the root key fingerprint carried by wrapped material.
pub const FINGERPRINT_LEN: usize = 8;
const WRAP_HEADER_LEN: usize = 1 + FINGERPRINT_LEN + GCM_NONCE_LEN;

/// What wrapped material is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrapContext {
    /// The key the material belongs to.
    pub key_id: KeyId,
    /// Its material version.
    pub version: u32,
    /// Its key spec.
    pub spec: KeySpec,
}

impl WrapContext {
    /// The associated data: a label, the key id, the version and the spec name.
    #[must_use]
    pub fn associated_data(&self) -> Vec<u8> {
        let mut aad = b"kubekms/v1/wrap\0".to_vec();
        aad.extend_from_slice(&self.key_id.to_wire());
        aad.extend_from_slice(&self.version.to_be_bytes());
        aad.extend_from_slice(self.spec.as_str().as_bytes());
        aad
    }
}

/// A holder of the root key.
pub trait RootKeyStore: Send + Sync {
    /// A stable, non-secret identifier of the root key (hex), recorded beside wrapped
    /// material so a restore with the wrong root key says so instead of failing obscurely.
    fn root_key_id(&self) -> String;

    /// Wraps serialized material.
    ///
    /// # Errors
    /// `KMSInternalException` or `KeyUnavailableException` from the store.
    fn wrap(&self, context: &WrapContext, material: &SecretBytes) -> KmsResult<Vec<u8>>;

    /// Unwraps material wrapped by [`RootKeyStore::wrap`] with the same context.
    ///
    /// # Errors
    /// `KeyUnavailableException` when it was wrapped under another root key;
    /// `KMSInternalException` when it fails authentication (tampered, or another context).
    fn unwrap(&self, context: &WrapContext, wrapped: &[u8]) -> KmsResult<SecretBytes>;
}

/// A root key in a file of 32 random bytes, mode 0600.
pub struct FileKeyStore {
    path: PathBuf,
    aead: AesGcmKey,
    fingerprint: [u8; FINGERPRINT_LEN],
}

impl std::fmt::Debug for FileKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileKeyStore")
            .field("path", &self.path)
            .field("root_key_id", &self.root_key_id())
            .finish_non_exhaustive()
    }
}

fn fingerprint_of(root_key: &[u8]) -> [u8; FINGERPRINT_LEN] {
    let tag = HmacKey::sha256_prf(root_key).sign(b"kubekms/v1/root-key-id");
    let mut out = [0u8; FINGERPRINT_LEN];
    out.copy_from_slice(&tag[..FINGERPRINT_LEN]);
    out
}

fn unavailable(path: &Path, why: impl std::fmt::Display) -> KmsError {
    KmsError::KeyUnavailable(format!("root key file {}: {why}", path.display()))
}

impl FileKeyStore {
    /// Creates a new root key file (32 bytes from the CSPRNG, mode 0600, created exclusively
    /// and synced) and opens it.
    ///
    /// # Errors
    /// `AlreadyExistsException` when the file exists (a root key is never overwritten);
    /// `KeyUnavailableException` for other I/O errors.
    pub fn init(path: &Path) -> KmsResult<Self> {
        let root_key = primitives::random_secret(ROOT_KEY_LEN)?;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => KmsError::AlreadyExists(format!(
                    "root key file {} already exists; it is never overwritten",
                    path.display()
                )),
                _ => unavailable(path, e),
            })?;
        file.write_all(root_key.expose())
            .map_err(|e| unavailable(path, e))?;
        file.sync_all().map_err(|e| unavailable(path, e))?;
        Self::from_root_key(path, &root_key)
    }

    /// Opens an existing root key file.
    ///
    /// # Errors
    /// `KeyUnavailableException` when the file is missing, not a regular file, readable or
    /// writable by group or others, or not exactly 32 bytes.
    pub fn open(path: &Path) -> KmsResult<Self> {
        let metadata = fs::metadata(path).map_err(|e| unavailable(path, e))?;
        if !metadata.is_file() {
            return Err(unavailable(path, "not a regular file"));
        }
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(unavailable(
                path,
                format_args!("mode {mode:04o} lets group or others access it; run chmod 600"),
            ));
        }
        let bytes = SecretBytes::new(fs::read(path).map_err(|e| unavailable(path, e))?);
        if bytes.len() != ROOT_KEY_LEN {
            return Err(unavailable(
                path,
                format_args!(
                    "it holds {} bytes, a root key is {ROOT_KEY_LEN}",
                    bytes.len()
                ),
            ));
        }
        Self::from_root_key(path, &bytes)
    }

    fn from_root_key(path: &Path, root_key: &SecretBytes) -> KmsResult<Self> {
        Ok(Self {
            path: path.to_owned(),
            aead: AesGcmKey::new(root_key.expose())?,
            fingerprint: fingerprint_of(root_key.expose()),
        })
    }

    /// The file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl RootKeyStore for FileKeyStore {
    fn root_key_id(&self) -> String {
        hex(&self.fingerprint)
    }

    fn wrap(&self, context: &WrapContext, material: &SecretBytes) -> KmsResult<Vec<u8>> {
        let mut nonce = [0u8; GCM_NONCE_LEN];
        primitives::fill_random(&mut nonce)?;
        let mut out = Vec::with_capacity(WRAP_HEADER_LEN + material.len() + GCM_TAG_LEN);
        out.push(WRAP_FORMAT_VERSION);
        out.extend_from_slice(&self.fingerprint);
        out.extend_from_slice(&nonce);
        let mut aad = out.clone();
        aad.extend_from_slice(&context.associated_data());
        let (ciphertext, tag) = self.aead.seal(&nonce, &aad, material.expose())?;
        out.extend_from_slice(&ciphertext);
        out.extend_from_slice(&tag);
        Ok(out)
    }

    fn unwrap(&self, context: &WrapContext, wrapped: &[u8]) -> KmsResult<SecretBytes> {
        let corrupt = || {
            KmsError::Internal(format!(
                "wrapped material of {} version {} failed authentication",
                context.key_id, context.version
            ))
        };
        if wrapped.len() < WRAP_HEADER_LEN + GCM_TAG_LEN || wrapped[0] != WRAP_FORMAT_VERSION {
            return Err(corrupt());
        }
        let fingerprint = &wrapped[1..1 + FINGERPRINT_LEN];
        if fingerprint != self.fingerprint {
            return Err(KmsError::KeyUnavailable(format!(
                "material of {} version {} is wrapped under root key {}, this store holds {}",
                context.key_id,
                context.version,
                hex(fingerprint),
                self.root_key_id()
            )));
        }
        let header = &wrapped[..WRAP_HEADER_LEN];
        let nonce = &wrapped[1 + FINGERPRINT_LEN..WRAP_HEADER_LEN];
        let tag_start = wrapped.len() - GCM_TAG_LEN;
        let mut aad = header.to_vec();
        aad.extend_from_slice(&context.associated_data());
        self.aead
            .open(
                nonce,
                &aad,
                &wrapped[WRAP_HEADER_LEN..tag_start],
                &wrapped[tag_start..],
            )
            .map_err(|_| corrupt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(version: u32) -> WrapContext {
        WrapContext {
            key_id: KeyId::single_from_random([9; 16]),
            version,
            spec: KeySpec::SymmetricDefault,
        }
    }

    #[test]
    fn init_creates_0600_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("root.key");
        let store = FileKeyStore::init(&path).expect("init");
        let mode = fs::metadata(&path).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::read(&path).expect("read").len(), ROOT_KEY_LEN);
        let err = FileKeyStore::init(&path).expect_err("exists");
        assert_eq!(err.aws_exception_name(), "AlreadyExistsException");
        let reopened = FileKeyStore::open(&path).expect("open");
        assert_eq!(reopened.root_key_id(), store.root_key_id());
        assert!(!format!("{store:?}").contains("aead"));
    }

    #[test]
    fn open_refuses_loose_permissions_and_wrong_sizes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("root.key");
        FileKeyStore::init(&path).expect("init");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).expect("chmod");
        let err = FileKeyStore::open(&path).expect_err("group-readable");
        assert_eq!(err.aws_exception_name(), "KeyUnavailableException");
        assert!(err.to_string().contains("chmod 600"), "{err}");
        let short = dir.path().join("short.key");
        fs::write(&short, [0u8; 31]).expect("write");
        fs::set_permissions(&short, fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(FileKeyStore::open(&short).is_err());
        assert!(FileKeyStore::open(&dir.path().join("missing")).is_err());
        assert!(FileKeyStore::open(dir.path()).is_err());
    }

    #[test]
    fn wrapping_binds_key_version_and_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileKeyStore::init(&dir.path().join("a.key")).expect("init");
        let material = SecretBytes::from_slice(&[42u8; 32]);
        let wrapped = store.wrap(&context(1), &material).expect("wrap");
        assert!(
            !wrapped.windows(32).any(|w| w == material.expose()),
            "no plaintext in the wrapped form"
        );
        assert_eq!(
            store.unwrap(&context(1), &wrapped).expect("unwrap"),
            material
        );
        assert_eq!(
            store
                .unwrap(&context(2), &wrapped)
                .map_err(|e| e.aws_exception_name()),
            Err("KMSInternalException")
        );
        let mut other_spec = context(1);
        other_spec.spec = KeySpec::Hmac256;
        assert!(store.unwrap(&other_spec, &wrapped).is_err());
        for i in 0..wrapped.len() {
            let mut tampered = wrapped.clone();
            tampered[i] ^= 0x01;
            assert!(store.unwrap(&context(1), &tampered).is_err(), "byte {i}");
        }
        assert!(
            store
                .unwrap(&context(1), &wrapped[..wrapped.len() - 1])
                .is_err()
        );
        let other = FileKeyStore::init(&dir.path().join("b.key")).expect("init");
        let err = other.unwrap(&context(1), &wrapped).expect_err("other root");
        assert_eq!(err.aws_exception_name(), "KeyUnavailableException");
    }
}
