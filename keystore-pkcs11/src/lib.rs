//! A root key store in a PKCS#11 token (an HSM, or SoftHSM2 in tests).
//!
//! Two secret-key objects are generated in the token by [`Pkcs11KeyStore::init`], both
//! `CKA_TOKEN`, `CKA_PRIVATE`, `CKA_SENSITIVE`, not `CKA_EXTRACTABLE`, not `CKA_MODIFIABLE`:
//! - `kubekms-root-wrap`, an AES-256 key allowed only `CKA_ENCRYPT`/`CKA_DECRYPT`: material is
//!   wrapped with `CKM_AES_GCM` in the token (format 3, see `docs/wrapped-material.md`);
//! - `kubekms-root-derive`, a generic secret allowed only `CKA_SIGN`: the PRF of the
//!   NIST SP 800-108r1 counter-mode KDF (`CKM_SHA256_HMAC` by `C_Sign` in the token), which
//!   gives the keys other components ask for ([`DerivedKeyPurpose`]) and the root key id.
//!
//! The root keys never leave the token; derived keys do, because the process uses them.
//!
//! Calls into the module block the calling thread (one session behind a mutex, each call
//! a single short `C_Encrypt`/`C_Decrypt`/`C_Sign`). A token that goes away turns the call
//! into `KeyUnavailableException`; the next call opens a new session and logs in again,
//! so service resumes when the token returns.

pub mod args;
#[cfg(feature = "softhsm")]
pub mod softhsm;

use std::fs;
use std::io::Read as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use kms_core::keystore::{DerivedKeyPurpose, FINGERPRINT_LEN, RootKeyStore, WrapContext};
use kms_core::primitives::{self, GCM_NONCE_LEN, GCM_TAG_LEN};
use kms_core::{KmsError, KmsResult, SecretBytes};

/// Format version of material wrapped in a PKCS#11 token: the token's AES-256-GCM key.
pub const WRAP_FORMAT_PKCS11: u8 = 3;
/// Label of the AES-256 wrapping key object.
pub const WRAP_KEY_LABEL: &str = "kubekms-root-wrap";
/// Label of the HMAC (SP 800-108 PRF) key object.
pub const DERIVE_KEY_LABEL: &str = "kubekms-root-derive";
const WRAP_HEADER_LEN: usize = 1 + FINGERPRINT_LEN + GCM_NONCE_LEN;
const ROOT_KEY_ID_LABEL: &[u8] = b"kubekms/v3/root-key-id";
/// Longest PIN file read; PINs are short.
const MAX_PIN_LEN: usize = 256;

/// Where the root keys are: the module, the token, and the file that holds the user PIN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Config {
    /// Path of the PKCS#11 module (shared library), e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// Label of the token that holds the keys.
    pub token_label: String,
    /// File with the user PIN (mode 0600 or 0400, owned by this process's user); one
    /// trailing newline is ignored.
    pub pin_file: PathBuf,
}

/// The session in use and the handles of the two root keys in it.
struct Live {
    session: Session,
    wrap: ObjectHandle,
    derive: ObjectHandle,
}

/// The root key store in a PKCS#11 token.
pub struct Pkcs11KeyStore {
    config: Pkcs11Config,
    pkcs11: Pkcs11,
    pin: AuthPin,
    fingerprint: [u8; FINGERPRINT_LEN],
    live: Mutex<Option<Live>>,
}

impl std::fmt::Debug for Pkcs11KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11KeyStore")
            .field("config", &self.config)
            .field("root_key_id", &self.root_key_id())
            .finish_non_exhaustive()
    }
}

/// `CKR_PIN_INCORRECT` for `RvError::PinIncorrect`: the name the PKCS#11 specification and
/// HSM manuals use.
fn ckr_name(rv: RvError) -> String {
    let camel = format!("{rv:?}");
    let mut out = String::from("CKR");
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

fn describe(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, function) => format!("{function} returned {}", ckr_name(*rv)),
        other => other.to_string(),
    }
}

impl Pkcs11Config {
    fn unavailable(&self, why: impl std::fmt::Display) -> KmsError {
        KmsError::KeyUnavailable(format!(
            "PKCS#11 token {:?} (module {}): {why}",
            self.token_label,
            self.module.display()
        ))
    }
}

/// Errors that say the session or token is gone (or the login was lost): the session is
/// dropped and the next call opens a new one.
fn session_lost(e: &CkError) -> bool {
    !matches!(
        e,
        CkError::Pkcs11(
            RvError::EncryptedDataInvalid
                | RvError::EncryptedDataLenRange
                | RvError::DataLenRange
                | RvError::DataInvalid
                | RvError::MechanismParamInvalid,
            _
        )
    )
}

/// Reads the PIN file with the checks of a root key file: not a symbolic link, a regular
/// file, owned by this process's user, no access for group or others.
fn read_pin(config: &Pkcs11Config) -> KmsResult<AuthPin> {
    let path = &config.pin_file;
    let bad = |why: &dyn std::fmt::Display| {
        KmsError::KeyUnavailable(format!("PIN file {}: {why}", path.display()))
    };
    // The flag's bits fit an i32 (they are a C int).
    let no_follow = i32::try_from(rustix::fs::OFlags::NOFOLLOW.bits()).unwrap_or(0);
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(no_follow)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
                bad(&"it is a symbolic link; give the path of the file itself")
            } else {
                bad(&e)
            }
        })?;
    let metadata = file.metadata().map_err(|e| bad(&e))?;
    if !metadata.is_file() {
        return Err(bad(&"not a regular file"));
    }
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(bad(&format_args!(
            "mode {mode:04o} lets group or others access it; run chmod 600"
        )));
    }
    let euid = rustix::process::geteuid().as_raw();
    if metadata.uid() != euid {
        return Err(bad(&format_args!(
            "it is owned by uid {}, this process runs as uid {euid}",
            metadata.uid()
        )));
    }
    let mut bytes = SecretBytes::zeroed(MAX_PIN_LEN + 1);
    let mut read = 0;
    loop {
        let n = file
            .read(&mut bytes.expose_mut()[read..])
            .map_err(|e| bad(&e))?;
        if n == 0 || read + n == bytes.len() {
            read += n;
            break;
        }
        read += n;
    }
    if read > MAX_PIN_LEN {
        return Err(bad(&format_args!("longer than {MAX_PIN_LEN} bytes")));
    }
    bytes.truncate(read);
    let mut pin = bytes.expose();
    if let Some(rest) = pin.strip_suffix(b"\n") {
        pin = rest.strip_suffix(b"\r").unwrap_or(rest);
    }
    if pin.is_empty() {
        return Err(bad(&"it is empty"));
    }
    let pin = std::str::from_utf8(pin).map_err(|_| bad(&"the PIN is not UTF-8"))?;
    Ok(AuthPin::from(pin.to_owned()))
}

/// Loads and initializes the module. A module already initialized in this process (a second
/// store, or `init` then `open`) is used as it is.
fn load(config: &Pkcs11Config) -> KmsResult<Pkcs11> {
    if !config.module.is_file() {
        return Err(config.unavailable("the module file does not exist"));
    }
    let pkcs11 = Pkcs11::new(&config.module)
        .map_err(|e| config.unavailable(format_args!("cannot load the module: {e}")))?;
    initialize(&pkcs11, config)?;
    Ok(pkcs11)
}

/// `C_Initialize`, also after the module was finalized under us (a module reset after the
/// device went away): a new session is only possible on an initialized module.
fn initialize(pkcs11: &Pkcs11, config: &Pkcs11Config) -> KmsResult<()> {
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
        Err(e) => Err(config.unavailable(describe(&e))),
    }
}

fn find_slot(pkcs11: &Pkcs11, config: &Pkcs11Config) -> KmsResult<Slot> {
    let slots = pkcs11
        .get_slots_with_token()
        .map_err(|e| config.unavailable(describe(&e)))?;
    let mut labels = Vec::new();
    for slot in slots {
        let info = pkcs11
            .get_token_info(slot)
            .map_err(|e| config.unavailable(describe(&e)))?;
        let label = info.label().trim_end().to_owned();
        if label == config.token_label {
            return Ok(slot);
        }
        // SoftHSM2 and others show a free slot with an uninitialized, unlabelled token.
        if info.token_initialized() {
            labels.push(label);
        }
    }
    Err(config.unavailable(format_args!(
        "no token has this label; the module shows tokens {labels:?}"
    )))
}

fn login(session: &Session, pin: &AuthPin, config: &Pkcs11Config) -> KmsResult<()> {
    match session.login(UserType::User, Some(pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(e) => Err(config.unavailable(format_args!(
            "login as user failed: {} (the PIN is read from {})",
            describe(&e),
            config.pin_file.display()
        ))),
    }
}

fn find_key(
    session: &Session,
    config: &Pkcs11Config,
    label: &str,
) -> KmsResult<Option<ObjectHandle>> {
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .map_err(|e| config.unavailable(describe(&e)))?;
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        many => Err(config.unavailable(format_args!(
            "{} key objects are labelled {label:?}; exactly one is expected",
            many.len()
        ))),
    }
}

/// Refuses a key object that could leave the token: one made by hand without
/// `CKA_SENSITIVE`, or with `CKA_EXTRACTABLE`.
fn check_never_leaves(
    session: &Session,
    config: &Pkcs11Config,
    label: &str,
    key: ObjectHandle,
) -> KmsResult<()> {
    let attributes = session
        .get_attributes(key, &[AttributeType::Sensitive, AttributeType::Extractable])
        .map_err(|e| config.unavailable(describe(&e)))?;
    let sensitive = attributes
        .iter()
        .any(|a| matches!(a, Attribute::Sensitive(true)));
    let not_extractable = attributes
        .iter()
        .any(|a| matches!(a, Attribute::Extractable(false)));
    if !(sensitive && not_extractable) {
        return Err(config.unavailable(format_args!(
            "key object {label:?} is not CKA_SENSITIVE and non-CKA_EXTRACTABLE; it could leave the token and is not used"
        )));
    }
    Ok(())
}

fn connect(pkcs11: &Pkcs11, config: &Pkcs11Config, pin: &AuthPin) -> KmsResult<Live> {
    initialize(pkcs11, config)?;
    let slot = find_slot(pkcs11, config)?;
    let session = pkcs11
        .open_ro_session(slot)
        .map_err(|e| config.unavailable(describe(&e)))?;
    login(&session, pin, config)?;
    let missing = |label: &str| {
        config.unavailable(format_args!(
            "the token holds no key object labelled {label:?}; run init to create the root keys"
        ))
    };
    let wrap =
        find_key(&session, config, WRAP_KEY_LABEL)?.ok_or_else(|| missing(WRAP_KEY_LABEL))?;
    let derive =
        find_key(&session, config, DERIVE_KEY_LABEL)?.ok_or_else(|| missing(DERIVE_KEY_LABEL))?;
    check_never_leaves(&session, config, WRAP_KEY_LABEL, wrap)?;
    check_never_leaves(&session, config, DERIVE_KEY_LABEL, derive)?;
    Ok(Live {
        session,
        wrap,
        derive,
    })
}

/// SP 800-108r1 counter mode, one 256-bit block: `[1]_32 || label || 0x00 || [256]_32`,
/// the same fixed input the file store uses.
fn kdf_input(label: &[u8]) -> Vec<u8> {
    let mut input = 1u32.to_be_bytes().to_vec();
    input.extend_from_slice(label);
    input.push(0);
    input.extend_from_slice(&256u32.to_be_bytes());
    input
}

fn purpose_label(purpose: DerivedKeyPurpose) -> &'static [u8] {
    match purpose {
        DerivedKeyPurpose::GrantToken => b"kubekms/v2/grant-token",
        DerivedKeyPurpose::StsSession => b"kubekms/v2/sts-session",
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Pkcs11KeyStore {
    /// Generates the two root keys in the token.
    ///
    /// # Errors
    /// `AlreadyExistsException` when either key object exists (root keys are never
    /// replaced); `KeyUnavailableException` when the module, token, PIN or generation fail.
    pub fn init(config: &Pkcs11Config) -> KmsResult<Self> {
        let pin = read_pin(config)?;
        let pkcs11 = load(config)?;
        let slot = find_slot(&pkcs11, config)?;
        let session = pkcs11
            .open_rw_session(slot)
            .map_err(|e| config.unavailable(describe(&e)))?;
        login(&session, &pin, config)?;
        for label in [WRAP_KEY_LABEL, DERIVE_KEY_LABEL] {
            if find_key(&session, config, label)?.is_some() {
                return Err(KmsError::AlreadyExists(format!(
                    "PKCS#11 token {:?} already holds a key object labelled {label:?}; root keys are never replaced",
                    config.token_label
                )));
            }
        }
        let common = |label: &str| {
            vec![
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Modifiable(false),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::ValueLen(32.into()),
                Attribute::Wrap(false),
                Attribute::Unwrap(false),
                Attribute::Derive(false),
                Attribute::Verify(false),
            ]
        };
        let mut wrap_template = common(WRAP_KEY_LABEL);
        wrap_template.extend([
            Attribute::KeyType(KeyType::AES),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Sign(false),
        ]);
        let mut derive_template = common(DERIVE_KEY_LABEL);
        derive_template.extend([
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::Sign(true),
            Attribute::Encrypt(false),
            Attribute::Decrypt(false),
        ]);
        session
            .generate_key(&Mechanism::AesKeyGen, &wrap_template)
            .map_err(|e| {
                config.unavailable(format_args!(
                    "generating the wrapping key: {}",
                    describe(&e)
                ))
            })?;
        session
            .generate_key(&Mechanism::GenericSecretKeyGen, &derive_template)
            .map_err(|e| {
                config.unavailable(format_args!(
                    "generating the derivation key: {}",
                    describe(&e)
                ))
            })?;
        drop(session);
        Self::with_module(config, pkcs11, pin)
    }

    /// Whether the token holds the root keys (both objects); for the operator's
    /// `--init-root-key`, which creates them only when absent.
    ///
    /// # Errors
    /// `KeyUnavailableException` when the token cannot be reached or logged into, or holds
    /// one root key object without the other.
    pub fn root_keys_present(config: &Pkcs11Config) -> KmsResult<bool> {
        let pin = read_pin(config)?;
        let pkcs11 = load(config)?;
        let slot = find_slot(&pkcs11, config)?;
        let session = pkcs11
            .open_ro_session(slot)
            .map_err(|e| config.unavailable(describe(&e)))?;
        login(&session, &pin, config)?;
        let wrap = find_key(&session, config, WRAP_KEY_LABEL)?.is_some();
        let derive = find_key(&session, config, DERIVE_KEY_LABEL)?.is_some();
        if wrap != derive {
            return Err(config.unavailable(format_args!(
                "the token holds only one of the key objects {WRAP_KEY_LABEL:?} and {DERIVE_KEY_LABEL:?}"
            )));
        }
        Ok(wrap)
    }

    /// Opens the root keys of a token initialized by [`Pkcs11KeyStore::init`].
    ///
    /// # Errors
    /// `KeyUnavailableException` naming what is wrong: the module, the token label (and the
    /// labels there are), the PIN (without it), a missing or extractable key object.
    pub fn open(config: &Pkcs11Config) -> KmsResult<Self> {
        let pin = read_pin(config)?;
        let pkcs11 = load(config)?;
        Self::with_module(config, pkcs11, pin)
    }

    fn with_module(config: &Pkcs11Config, pkcs11: Pkcs11, pin: AuthPin) -> KmsResult<Self> {
        let live = connect(&pkcs11, config, &pin)?;
        let mac = live
            .session
            .sign(
                &Mechanism::Sha256Hmac,
                live.derive,
                &kdf_input(ROOT_KEY_ID_LABEL),
            )
            .map_err(|e| config.unavailable(describe(&e)))?;
        let mut fingerprint = [0u8; FINGERPRINT_LEN];
        let Some(prefix) = mac.get(..FINGERPRINT_LEN) else {
            return Err(config.unavailable("the token's HMAC-SHA-256 is too short"));
        };
        fingerprint.copy_from_slice(prefix);
        Ok(Self {
            config: config.clone(),
            pkcs11,
            pin,
            fingerprint,
            live: Mutex::new(Some(live)),
        })
    }

    /// Whether the token still answers with this store's root keys.
    fn probe(&self) -> KmsResult<()> {
        let mac = self
            .with_session(|live| {
                live.session.sign(
                    &Mechanism::Sha256Hmac,
                    live.derive,
                    &kdf_input(ROOT_KEY_ID_LABEL),
                )
            })?
            .map_err(|e| self.config.unavailable(describe(&e)))?;
        if mac.get(..FINGERPRINT_LEN) == Some(&self.fingerprint[..]) {
            Ok(())
        } else {
            Err(self
                .config
                .unavailable("the token's root keys changed since this store was opened"))
        }
    }

    /// Where the keys are.
    #[must_use]
    pub fn config(&self) -> &Pkcs11Config {
        &self.config
    }

    /// Runs `op` on the live session, opening one first if the last was lost. An error that
    /// says the session or token is gone drops the session and is `KeyUnavailableException`;
    /// others are returned to the caller to classify.
    fn with_session<T>(
        &self,
        op: impl FnOnce(&Live) -> Result<T, CkError>,
    ) -> KmsResult<Result<T, CkError>> {
        let mut guard = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        let live = match guard.take() {
            Some(live) => live,
            None => connect(&self.pkcs11, &self.config, &self.pin)?,
        };
        match op(&live) {
            Ok(value) => {
                *guard = Some(live);
                Ok(Ok(value))
            }
            Err(e) if session_lost(&e) => {
                drop(live);
                Err(self.config.unavailable(format_args!(
                    "{}; a new session is opened on the next call",
                    describe(&e)
                )))
            }
            Err(e) => {
                *guard = Some(live);
                Ok(Err(e))
            }
        }
    }
}

impl RootKeyStore for Pkcs11KeyStore {
    fn root_key_id(&self) -> String {
        hex(&self.fingerprint)
    }

    fn wrap(&self, context: &WrapContext, material: &SecretBytes) -> KmsResult<Vec<u8>> {
        let mut nonce = [0u8; GCM_NONCE_LEN];
        primitives::fill_random(&mut nonce)?;
        let mut out = Vec::with_capacity(WRAP_HEADER_LEN + material.len() + GCM_TAG_LEN);
        out.push(WRAP_FORMAT_PKCS11);
        out.extend_from_slice(&self.fingerprint);
        out.extend_from_slice(&nonce);
        let mut aad = out.clone();
        aad.extend_from_slice(&context.associated_data());
        let sealed = self
            .with_session(|live| {
                let mut iv = nonce;
                let params = GcmParams::new(&mut iv, &aad, 128.into())?;
                live.session
                    .encrypt(&Mechanism::AesGcm(params), live.wrap, material.expose())
            })?
            .map_err(|e| KmsError::Internal(format!("wrapping in the token: {}", describe(&e))))?;
        if sealed.len() != material.len() + GCM_TAG_LEN {
            return Err(KmsError::Internal(
                "the token's AES-GCM output has an unexpected length".into(),
            ));
        }
        out.extend_from_slice(&sealed);
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
        if wrapped[0] != WRAP_FORMAT_PKCS11 {
            return Err(KmsError::KeyUnavailable(format!(
                "material of {} version {} is wrapped in format {}, by a root key file; this store holds the root key in PKCS#11 token {:?}",
                context.key_id, context.version, wrapped[0], self.config.token_label
            )));
        }
        let fingerprint = &wrapped[1..1 + FINGERPRINT_LEN];
        if fingerprint != self.fingerprint {
            return Err(KmsError::KeyUnavailable(format!(
                "material of {} version {} is wrapped under root key {}, this store holds {}",
                context.key_id,
                context.version,
                hex(fingerprint),
                hex(&self.fingerprint)
            )));
        }
        let mut aad = wrapped[..WRAP_HEADER_LEN].to_vec();
        aad.extend_from_slice(&context.associated_data());
        let mut nonce = [0u8; GCM_NONCE_LEN];
        nonce.copy_from_slice(&wrapped[1 + FINGERPRINT_LEN..WRAP_HEADER_LEN]);
        let decrypted = self.with_session(|live| {
            let params = GcmParams::new(&mut nonce, &aad, 128.into())?;
            live.session.decrypt(
                &Mechanism::AesGcm(params),
                live.wrap,
                &wrapped[WRAP_HEADER_LEN..],
            )
        });
        match decrypted {
            Ok(Ok(plain)) => Ok(SecretBytes::new(plain)),
            // A wrong tag is CKR_GENERAL_ERROR in SoftHSM2 (CKR_ENCRYPTED_DATA_INVALID in
            // others), alike to a device fault: ask the token whether it still computes
            // the root key id before calling the material corrupt.
            failed => match self.probe() {
                Ok(()) => Err(corrupt()),
                Err(probe) => Err(match failed {
                    Err(unavailable) => unavailable,
                    Ok(_) => probe,
                }),
            },
        }
    }

    fn derive_key(&self, purpose: DerivedKeyPurpose) -> KmsResult<SecretBytes> {
        let input = kdf_input(purpose_label(purpose));
        self.with_session(|live| {
            live.session
                .sign(&Mechanism::Sha256Hmac, live.derive, &input)
        })?
        .map(SecretBytes::new)
        .map_err(|e| KmsError::Internal(format!("deriving in the token: {}", describe(&e))))
    }
}
