//! Root-key wrapping. A key store holds the root key and wraps key material under it, with
//! what the material belongs to bound as associated data (key id, version, spec, usage,
//! origin, and the KmsKey's namespace and name), so wrapped material cannot be moved to
//! another key, version or object. Implementations: [`FileKeyStore`] here; a PKCS#11 store
//! (the root key never leaves the HSM) implements the same trait.
//!
//! The root key itself is used for one thing only: as the key of the NIST SP 800-108r1 KDF
//! (counter mode, HMAC-SHA-256), from which every working key is derived under its own
//! label — the wrapping key, the root key's identifier, and the keys other components ask
//! for by [`DerivedKeyPurpose`] (grant tokens, STS session tokens). Wrapped material of
//! format 1 (the raw root key as the AES-GCM key, before this separation) is still read.

use std::fs;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use crate::error::{KmsError, KmsResult};
use crate::ids::KeyId;
use crate::primitives::{self, AesGcmKey, GCM_NONCE_LEN, GCM_TAG_LEN, HmacKey};
use crate::secret::SecretBytes;
use crate::spec::{KeySpec, KeyUsage, Origin};

mod migrating;
#[cfg(any(test, feature = "test-util"))]
pub mod test_util;
pub use migrating::{MigratingKeyStore, rewrap, wrapped_by, wrapped_root_key_id};

/// Length of a file root key.
pub const ROOT_KEY_LEN: usize = 32;
/// Format version of wrapped material written today: derived wrapping key, full binding.
pub const WRAP_FORMAT_VERSION: u8 = 2;
/// The first format: the raw root key as AES-GCM key; AAD binds key id, version and spec.
/// Read, never written.
pub const WRAP_FORMAT_V1: u8 = 1;
/// Length of the root key fingerprint carried by wrapped material.
pub const FINGERPRINT_LEN: usize = 8;
const WRAP_HEADER_LEN: usize = 1 + FINGERPRINT_LEN + GCM_NONCE_LEN;

/// The Kubernetes object a key's material belongs to: the KmsKey's namespace and name.
/// Not its uid: a restore from exported YAML gives new uids, and must still unwrap.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyOwner {
    /// The KmsKey's namespace.
    pub namespace: String,
    /// The KmsKey's name (also the name of its KmsKeyMaterial).
    pub name: String,
}

impl KeyOwner {
    /// An owner.
    #[must_use]
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for KeyOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What wrapped material is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrapContext {
    /// The key the material belongs to.
    pub key_id: KeyId,
    /// Its material version.
    pub version: u32,
    /// Its key spec.
    pub spec: KeySpec,
    /// Its key usage.
    pub usage: KeyUsage,
    /// Its origin.
    pub origin: Origin,
    /// The KmsKey it belongs to; `None` for a key that lives only in a plugin's local
    /// state folder (the bootstrap key before its hand-over).
    pub owner: Option<KeyOwner>,
}

fn push_field(aad: &mut Vec<u8>, field: &[u8]) {
    // Lengths are bounded by Kubernetes names and AWS enum names; u32 cannot overflow.
    let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
    aad.extend_from_slice(&len.to_be_bytes());
    aad.extend_from_slice(field);
}

impl WrapContext {
    /// The associated data of format 2: a label, the key id, the version, then the spec,
    /// usage, origin and owner, each length-prefixed (an absent owner is a 0 byte, a
    /// present one a 1 byte and two fields), so no two contexts encode alike.
    #[must_use]
    pub fn associated_data(&self) -> Vec<u8> {
        let mut aad = b"kubekms/v2/wrap\0".to_vec();
        aad.extend_from_slice(&self.key_id.to_wire());
        aad.extend_from_slice(&self.version.to_be_bytes());
        push_field(&mut aad, self.spec.as_str().as_bytes());
        push_field(&mut aad, self.usage.as_str().as_bytes());
        push_field(&mut aad, self.origin.as_str().as_bytes());
        match &self.owner {
            None => aad.push(0),
            Some(owner) => {
                aad.push(1);
                push_field(&mut aad, owner.namespace.as_bytes());
                push_field(&mut aad, owner.name.as_bytes());
            }
        }
        aad
    }

    /// The associated data of format 1: label, key id, version, spec name.
    #[must_use]
    pub fn associated_data_v1(&self) -> Vec<u8> {
        let mut aad = b"kubekms/v1/wrap\0".to_vec();
        aad.extend_from_slice(&self.key_id.to_wire());
        aad.extend_from_slice(&self.version.to_be_bytes());
        aad.extend_from_slice(self.spec.as_str().as_bytes());
        aad
    }
}

/// What a key derived from the root key is for. Each purpose has its own KDF label, so
/// the keys are independent; a component never sees the root key itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DerivedKeyPurpose {
    /// HMAC key of KmsGrant ids and tokens.
    GrantToken,
    /// AES-256-GCM key that seals the session tokens of the AWS API's STS.
    StsSession,
}

impl DerivedKeyPurpose {
    fn label(self) -> &'static [u8] {
        match self {
            Self::GrantToken => b"kubekms/v2/grant-token",
            Self::StsSession => b"kubekms/v2/sts-session",
        }
    }
}

/// A holder of the root key.
pub trait RootKeyStore: Send + Sync {
    /// A stable, non-secret identifier of the root key (hex), recorded beside wrapped
    /// material so a restore with the wrong root key says so instead of failing obscurely.
    fn root_key_id(&self) -> String;

    /// Whether `root_key_id` names this store's root key: its identifier, or the one that
    /// records written before format 2 carry.
    fn holds(&self, root_key_id: &str) -> bool {
        root_key_id == self.root_key_id()
    }

    /// Wraps serialized material (format 2).
    ///
    /// # Errors
    /// `KMSInternalException` or `KeyUnavailableException` from the store.
    fn wrap(&self, context: &WrapContext, material: &SecretBytes) -> KmsResult<Vec<u8>>;

    /// Unwraps material wrapped by [`RootKeyStore::wrap`] with the same context (format 1
    /// or 2).
    ///
    /// # Errors
    /// `KeyUnavailableException` when it was wrapped under another root key;
    /// `KMSInternalException` when it fails authentication (tampered, or another context).
    fn unwrap(&self, context: &WrapContext, wrapped: &[u8]) -> KmsResult<SecretBytes>;

    /// A 32-byte key derived from the root key for `purpose`; the same on every replica
    /// that holds the same root key.
    ///
    /// # Errors
    /// `KeyUnavailableException` from the store.
    fn derive_key(&self, purpose: DerivedKeyPurpose) -> KmsResult<SecretBytes>;
}

/// The working keys derived from a root key held in memory.
struct RootKeys {
    kdf: HmacKey,
    wrap: AesGcmKey,
    /// The raw root key as AES-GCM key, for format 1 only.
    legacy_wrap: AesGcmKey,
    fingerprint: [u8; FINGERPRINT_LEN],
    legacy_fingerprint: [u8; FINGERPRINT_LEN],
}

fn kdf(prf: &HmacKey, label: &[u8]) -> SecretBytes {
    // Fixed input: label || 0x00 || [L]_32 with L = 256 bits (no context).
    let mut info = label.to_vec();
    info.push(0);
    info.extend_from_slice(&256u32.to_be_bytes());
    primitives::sp800_108_ctr_hmac_sha256(prf.backend(), &info)
}

fn truncated_fingerprint(bytes: &[u8]) -> [u8; FINGERPRINT_LEN] {
    let mut out = [0u8; FINGERPRINT_LEN];
    out.copy_from_slice(&bytes[..FINGERPRINT_LEN]);
    out
}

impl RootKeys {
    fn new(root_key: &SecretBytes) -> KmsResult<Self> {
        let kdf_key = HmacKey::sha256_prf(root_key.expose());
        let wrap = AesGcmKey::new(kdf(&kdf_key, b"kubekms/v2/wrap").expose())?;
        let fingerprint = truncated_fingerprint(kdf(&kdf_key, b"kubekms/v2/root-key-id").expose());
        let legacy_fingerprint = truncated_fingerprint(&kdf_key.sign(b"kubekms/v1/root-key-id"));
        Ok(Self {
            wrap,
            legacy_wrap: AesGcmKey::new(root_key.expose())?,
            fingerprint,
            legacy_fingerprint,
            kdf: kdf_key,
        })
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
        let (ciphertext, tag) = self.wrap.seal(&nonce, &aad, material.expose())?;
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
        if wrapped.len() < WRAP_HEADER_LEN + GCM_TAG_LEN {
            return Err(corrupt());
        }
        let (aead, expected, context_aad) = match wrapped[0] {
            WRAP_FORMAT_VERSION => (&self.wrap, &self.fingerprint, context.associated_data()),
            WRAP_FORMAT_V1 => (
                &self.legacy_wrap,
                &self.legacy_fingerprint,
                context.associated_data_v1(),
            ),
            _ => return Err(corrupt()),
        };
        let fingerprint = &wrapped[1..1 + FINGERPRINT_LEN];
        if fingerprint != expected {
            return Err(KmsError::KeyUnavailable(format!(
                "material of {} version {} is wrapped under root key {}, this store holds {}",
                context.key_id,
                context.version,
                hex(fingerprint),
                hex(&self.fingerprint)
            )));
        }
        let header = &wrapped[..WRAP_HEADER_LEN];
        let nonce = &wrapped[1 + FINGERPRINT_LEN..WRAP_HEADER_LEN];
        let tag_start = wrapped.len() - GCM_TAG_LEN;
        let mut aad = header.to_vec();
        aad.extend_from_slice(&context_aad);
        aead.open(
            nonce,
            &aad,
            &wrapped[WRAP_HEADER_LEN..tag_start],
            &wrapped[tag_start..],
        )
        .map_err(|_| corrupt())
    }
}

/// A root key in a file of 32 random bytes, mode 0600, owned by the user that runs the
/// process.
pub struct FileKeyStore {
    path: PathBuf,
    keys: RootKeys,
}

impl std::fmt::Debug for FileKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileKeyStore")
            .field("path", &self.path)
            .field("root_key_id", &self.root_key_id())
            .finish_non_exhaustive()
    }
}

fn unavailable(path: &Path, why: impl std::fmt::Display) -> KmsError {
    KmsError::KeyUnavailable(format!("root key file {}: {why}", path.display()))
}

/// `O_NOFOLLOW`: a root key path that is a symbolic link is refused, so nobody who can
/// write the folder can point the store at a file of their choosing.
fn no_follow() -> i32 {
    // The flag's bits fit an i32 (they are a C int).
    i32::try_from(rustix::fs::OFlags::NOFOLLOW.bits()).unwrap_or(0)
}

impl FileKeyStore {
    /// Creates a new root key file (32 bytes from the CSPRNG, mode 0600, created exclusively,
    /// never through a symbolic link) and syncs the file and its folder, so that a crash
    /// cannot lose the root key after material wrapped under it was stored elsewhere.
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
            .custom_flags(no_follow())
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
        let folder = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        fs::File::open(folder)
            .and_then(|d| d.sync_all())
            .map_err(|e| unavailable(path, format_args!("syncing its folder: {e}")))?;
        Self::from_root_key(path, &root_key)
    }

    /// Opens an existing root key file. Everything is checked on the one handle that is
    /// read (no check-then-open race): a regular file, not a symbolic link, owned by this
    /// process's user, not accessible by group or others, exactly 32 bytes.
    ///
    /// # Errors
    /// `KeyUnavailableException` naming what is wrong.
    pub fn open(path: &Path) -> KmsResult<Self> {
        let mut file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(no_follow())
            .open(path)
            .map_err(|e| {
                if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
                    unavailable(
                        path,
                        "it is a symbolic link; give the path of the file itself",
                    )
                } else {
                    unavailable(path, e)
                }
            })?;
        let metadata = file.metadata().map_err(|e| unavailable(path, e))?;
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
        let euid = rustix::process::geteuid().as_raw();
        if metadata.uid() != euid {
            return Err(unavailable(
                path,
                format_args!(
                    "it is owned by uid {}, this process runs as uid {euid}; the root key must belong to the user that uses it",
                    metadata.uid()
                ),
            ));
        }
        if metadata.len() != ROOT_KEY_LEN as u64 {
            return Err(unavailable(
                path,
                format_args!(
                    "it holds {} bytes, a root key is {ROOT_KEY_LEN}",
                    metadata.len()
                ),
            ));
        }
        let mut bytes = SecretBytes::zeroed(ROOT_KEY_LEN + 1);
        let mut read = 0;
        loop {
            let n = file
                .read(&mut bytes.expose_mut()[read..])
                .map_err(|e| unavailable(path, e))?;
            if n == 0 {
                break;
            }
            read += n;
            if read == bytes.len() {
                break;
            }
        }
        if read != ROOT_KEY_LEN {
            return Err(unavailable(
                path,
                format_args!("it holds {read} bytes, a root key is {ROOT_KEY_LEN}"),
            ));
        }
        bytes.truncate(ROOT_KEY_LEN);
        Self::from_root_key(path, &bytes)
    }

    fn from_root_key(path: &Path, root_key: &SecretBytes) -> KmsResult<Self> {
        Ok(Self {
            path: path.to_owned(),
            keys: RootKeys::new(root_key)?,
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
        hex(&self.keys.fingerprint)
    }

    fn holds(&self, root_key_id: &str) -> bool {
        root_key_id == hex(&self.keys.fingerprint)
            || root_key_id == hex(&self.keys.legacy_fingerprint)
    }

    fn wrap(&self, context: &WrapContext, material: &SecretBytes) -> KmsResult<Vec<u8>> {
        self.keys.wrap(context, material)
    }

    fn unwrap(&self, context: &WrapContext, wrapped: &[u8]) -> KmsResult<SecretBytes> {
        self.keys.unwrap(context, wrapped)
    }

    fn derive_key(&self, purpose: DerivedKeyPurpose) -> KmsResult<SecretBytes> {
        Ok(kdf(&self.keys.kdf, purpose.label()))
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
            usage: KeyUsage::EncryptDecrypt,
            origin: Origin::AwsKms,
            owner: Some(KeyOwner::new("team-a", "app-key")),
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
        assert!(!format!("{store:?}").contains("wrap"));
    }

    #[test]
    fn open_refuses_loose_permissions_links_and_wrong_sizes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("root.key");
        FileKeyStore::init(&path).expect("init");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).expect("chmod");
        let err = FileKeyStore::open(&path).expect_err("group-readable");
        assert_eq!(err.aws_exception_name(), "KeyUnavailableException");
        assert!(err.to_string().contains("chmod 600"), "{err}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        let link = dir.path().join("link.key");
        std::os::unix::fs::symlink(&path, &link).expect("symlink");
        let err = FileKeyStore::open(&link).expect_err("symlink");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        let short = dir.path().join("short.key");
        fs::write(&short, [0u8; 31]).expect("write");
        fs::set_permissions(&short, fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(FileKeyStore::open(&short).is_err());
        let long = dir.path().join("long.key");
        fs::write(&long, [0u8; 33]).expect("write");
        fs::set_permissions(&long, fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(FileKeyStore::open(&long).is_err());
        assert!(FileKeyStore::open(&dir.path().join("missing")).is_err());
        assert!(FileKeyStore::open(dir.path()).is_err());
        let err = FileKeyStore::init(&link).expect_err("init through a link");
        assert_eq!(err.aws_exception_name(), "AlreadyExistsException");
    }

    #[test]
    fn a_root_key_of_another_user_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("root.key");
        FileKeyStore::init(&path).expect("init");
        let other = rustix::process::geteuid().as_raw() + 1;
        match std::os::unix::fs::chown(&path, Some(other), None) {
            Ok(()) => {}
            // Only root can give a file away; elsewhere this check cannot be set up.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                eprintln!("not run: chown needs root ({e})");
                return;
            }
            Err(e) => panic!("chown: {e}"),
        }
        let err = FileKeyStore::open(&path).expect_err("owned by another uid");
        assert_eq!(err.aws_exception_name(), "KeyUnavailableException");
        assert!(
            err.to_string().contains(&format!("owned by uid {other}")),
            "{err}"
        );
    }

    #[test]
    fn wrapping_binds_key_version_usage_origin_owner_and_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileKeyStore::init(&dir.path().join("a.key")).expect("init");
        let material = SecretBytes::from_slice(&[42u8; 32]);
        let wrapped = store.wrap(&context(1), &material).expect("wrap");
        assert_eq!(wrapped[0], WRAP_FORMAT_VERSION);
        assert!(
            !wrapped.windows(32).any(|w| w == material.expose()),
            "no plaintext in the wrapped form"
        );
        assert_eq!(
            store.unwrap(&context(1), &wrapped).expect("unwrap"),
            material
        );
        let changed: Vec<(&str, WrapContext)> = vec![
            ("version", context(2)),
            (
                "spec",
                WrapContext {
                    spec: KeySpec::Hmac256,
                    ..context(1)
                },
            ),
            (
                "usage",
                WrapContext {
                    usage: KeyUsage::SignVerify,
                    ..context(1)
                },
            ),
            (
                "origin",
                WrapContext {
                    origin: Origin::External,
                    ..context(1)
                },
            ),
            (
                "key id",
                WrapContext {
                    key_id: KeyId::single_from_random([8; 16]),
                    ..context(1)
                },
            ),
            (
                "namespace",
                WrapContext {
                    owner: Some(KeyOwner::new("team-b", "app-key")),
                    ..context(1)
                },
            ),
            (
                "name",
                WrapContext {
                    owner: Some(KeyOwner::new("team-a", "other-key")),
                    ..context(1)
                },
            ),
            (
                "no owner",
                WrapContext {
                    owner: None,
                    ..context(1)
                },
            ),
            // Length prefixes: moving a character between namespace and name changes the AAD.
            (
                "split",
                WrapContext {
                    owner: Some(KeyOwner::new("team-aa", "pp-key")),
                    ..context(1)
                },
            ),
        ];
        for (what, other) in changed {
            assert_eq!(
                store
                    .unwrap(&other, &wrapped)
                    .map_err(|e| e.aws_exception_name()),
                Err("KMSInternalException"),
                "{what}"
            );
        }
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

    /// Format 1 as it was written before the derived keys: the raw root key as AES-GCM
    /// key, the v1 fingerprint, AAD of key id, version and spec only.
    fn wrap_v1(root_key: &[u8], context: &WrapContext, material: &[u8]) -> Vec<u8> {
        let fingerprint = HmacKey::sha256_prf(root_key).sign(b"kubekms/v1/root-key-id");
        let nonce = [7u8; GCM_NONCE_LEN];
        let mut out = vec![WRAP_FORMAT_V1];
        out.extend_from_slice(&fingerprint[..FINGERPRINT_LEN]);
        out.extend_from_slice(&nonce);
        let mut aad = out.clone();
        aad.extend_from_slice(&context.associated_data_v1());
        let (ciphertext, tag) = AesGcmKey::new(root_key)
            .expect("key")
            .seal(&nonce, &aad, material)
            .expect("seal");
        out.extend_from_slice(&ciphertext);
        out.extend_from_slice(&tag);
        out
    }

    #[test]
    fn format_1_still_reads_and_its_root_key_id_is_recognised() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("root.key");
        FileKeyStore::init(&path).expect("init");
        let root = fs::read(&path).expect("read");
        let store = FileKeyStore::open(&path).expect("open");
        let legacy = wrap_v1(&root, &context(1), &[5u8; 32]);
        let back = store.unwrap(&context(1), &legacy).expect("v1 reads");
        assert_eq!(back.expose(), &[5u8; 32]);
        // Format 1 binds neither usage, origin nor owner; key id and version still count.
        assert!(store.unwrap(&context(2), &legacy).is_err());
        let legacy_id = hex(&HmacKey::sha256_prf(&root).sign(b"kubekms/v1/root-key-id")[..8]);
        assert_ne!(
            legacy_id,
            store.root_key_id(),
            "format 2 has its own identifier"
        );
        assert!(store.holds(&legacy_id) && store.holds(&store.root_key_id()));
        assert!(!store.holds("0000000000000000"));
        // A v1 blob relabelled as v2 does not open (another key, another AAD).
        let mut relabelled = legacy.clone();
        relabelled[0] = WRAP_FORMAT_VERSION;
        assert!(store.unwrap(&context(1), &relabelled).is_err());
    }

    #[test]
    fn working_keys_are_independent_of_each_other_and_of_the_root_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("root.key");
        let store = FileKeyStore::init(&path).expect("init");
        let root = fs::read(&path).expect("read");
        let grant = store
            .derive_key(DerivedKeyPurpose::GrantToken)
            .expect("grant");
        let sts = store
            .derive_key(DerivedKeyPurpose::StsSession)
            .expect("sts");
        assert_eq!(grant.len(), 32);
        assert_ne!(grant.expose(), sts.expose());
        assert_ne!(grant.expose(), root.as_slice());
        let again = FileKeyStore::open(&path).expect("open");
        assert_eq!(
            again
                .derive_key(DerivedKeyPurpose::GrantToken)
                .expect("grant")
                .expose(),
            grant.expose(),
            "every replica derives the same key"
        );
        // The wrapping key is not the root key: a wrap does not open under the raw root key.
        let wrapped = store
            .wrap(&context(1), &SecretBytes::from_slice(&[1u8; 32]))
            .expect("wrap");
        let mut aad = wrapped[..WRAP_HEADER_LEN].to_vec();
        aad.extend_from_slice(&context(1).associated_data());
        let tag_start = wrapped.len() - GCM_TAG_LEN;
        assert!(
            AesGcmKey::new(&root)
                .expect("key")
                .open(
                    &wrapped[1 + FINGERPRINT_LEN..WRAP_HEADER_LEN],
                    &aad,
                    &wrapped[WRAP_HEADER_LEN..tag_start],
                    &wrapped[tag_start..]
                )
                .is_err()
        );
    }
}
