//! The PKCS#11 store against a real SoftHSM2 token. SoftHSM2 reads its configuration
//! (`SOFTHSM2_CONF`, the token folder) once per process at `C_Initialize`, and the test
//! process may not change its own environment, so each test runs its body in a child
//! process of this test binary with its own configuration and token folder.

use std::os::unix::fs::PermissionsExt as _;

use cryptoki::context::Pkcs11;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use keystore_pkcs11::args::{Pkcs11Args, RootKeyLocation};
use keystore_pkcs11::softhsm::{SOFTHSM_MODULE as MODULE, SoftHsmToken, USER_PIN, in_own_token};
use keystore_pkcs11::{
    DERIVE_KEY_LABEL, Pkcs11Config, Pkcs11KeyStore, WRAP_FORMAT_PKCS11, WRAP_KEY_LABEL,
};
use kms_core::keystore::{DerivedKeyPurpose, FileKeyStore, KeyOwner, RootKeyStore, WrapContext};
use kms_core::{KeyId, KeySpec, KeyUsage, Origin, SecretBytes};

const LABEL: &str = "kubekms-test";
const OTHER_LABEL: &str = "other-token";

/// Runs `body` in a child process with its own SoftHSM2 configuration and two tokens,
/// `LABEL` and `OTHER_LABEL`.
fn in_own_softhsm(name: &str, body: impl FnOnce(&SoftHsmToken)) {
    in_own_token(name, &[LABEL, OTHER_LABEL], body);
}

/// The configuration of the other token in the same folder.
fn other_config(token: &SoftHsmToken) -> Pkcs11Config {
    Pkcs11Config {
        token_label: OTHER_LABEL.into(),
        ..token.config()
    }
}

fn context() -> WrapContext {
    WrapContext {
        key_id: KeyId::single_from_random([9; 16]),
        version: 1,
        spec: KeySpec::SymmetricDefault,
        usage: KeyUsage::EncryptDecrypt,
        origin: Origin::AwsKms,
        owner: Some(KeyOwner::new("team-a", "app-key")),
    }
}

#[test]
fn wrap_round_trip_binds_every_context_field() {
    in_own_softhsm("wrap_round_trip_binds_every_context_field", |token| {
        let store = Pkcs11KeyStore::init(&token.config()).expect("init");
        let material = SecretBytes::from_slice(&[42u8; 32]);
        let wrapped = store.wrap(&context(), &material).expect("wrap");
        assert_eq!(wrapped[0], WRAP_FORMAT_PKCS11);
        assert_eq!(hex(&wrapped[1..9]), store.root_key_id());
        assert!(!wrapped.windows(32).any(|w| w == material.expose()));
        assert_eq!(
            store.unwrap(&context(), &wrapped).expect("unwrap"),
            material
        );
        let again = store.wrap(&context(), &material).expect("wrap again");
        assert_ne!(again, wrapped, "a fresh IV each time");
        let changed = [
            WrapContext {
                version: 2,
                ..context()
            },
            WrapContext {
                spec: KeySpec::Hmac256,
                ..context()
            },
            WrapContext {
                usage: KeyUsage::SignVerify,
                ..context()
            },
            WrapContext {
                origin: Origin::External,
                ..context()
            },
            WrapContext {
                key_id: KeyId::single_from_random([8; 16]),
                ..context()
            },
            WrapContext {
                owner: Some(KeyOwner::new("team-b", "app-key")),
                ..context()
            },
            WrapContext {
                owner: Some(KeyOwner::new("team-a", "other")),
                ..context()
            },
            WrapContext {
                owner: None,
                ..context()
            },
        ];
        for other in changed {
            let err = store.unwrap(&other, &wrapped).expect_err("another context");
            assert_eq!(
                err.aws_exception_name(),
                "KMSInternalException",
                "{other:?}: {err}"
            );
        }
        // The store still works after failed authentications (no session was dropped).
        assert_eq!(
            store.unwrap(&context(), &wrapped).expect("unwrap"),
            material
        );
        let mut tampered = wrapped.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(store.unwrap(&context(), &tampered).is_err());
        let mut header = wrapped.clone();
        header[12] ^= 1; // in the IV
        assert!(store.unwrap(&context(), &header).is_err());
        let mut foreign = wrapped.clone();
        foreign[1] ^= 1;
        let err = store
            .unwrap(&context(), &foreign)
            .expect_err("another root key");
        assert_eq!(err.aws_exception_name(), "KeyUnavailableException");
        assert!(err.to_string().contains("wrapped under root key"), "{err}");
    });
}

#[test]
fn a_second_open_unwraps_and_derives_the_same_keys() {
    in_own_softhsm("a_second_open_unwraps_and_derives_the_same_keys", |token| {
        let first = Pkcs11KeyStore::init(&token.config()).expect("init");
        let material = SecretBytes::from_slice(b"some key material of any length");
        let wrapped = first.wrap(&context(), &material).expect("wrap");
        let grant = first
            .derive_key(DerivedKeyPurpose::GrantToken)
            .expect("derive");
        let sts = first
            .derive_key(DerivedKeyPurpose::StsSession)
            .expect("derive");
        assert_eq!(grant.len(), 32);
        assert_eq!(sts.len(), 32);
        assert_ne!(grant, sts);
        let id = first.root_key_id();
        assert_eq!(id.len(), 16);
        drop(first);
        let second = Pkcs11KeyStore::open(&token.config()).expect("open");
        assert_eq!(second.root_key_id(), id);
        assert!(second.holds(&id));
        assert_eq!(
            second.unwrap(&context(), &wrapped).expect("unwrap"),
            material
        );
        assert_eq!(
            second
                .derive_key(DerivedKeyPurpose::GrantToken)
                .expect("derive"),
            grant
        );
        assert_eq!(
            second
                .derive_key(DerivedKeyPurpose::StsSession)
                .expect("derive"),
            sts
        );
        // Through the shared flags, as the binaries open it.
        let args = Pkcs11Args {
            pkcs11_module: Some(MODULE.into()),
            pkcs11_token_label: Some(LABEL.into()),
            pkcs11_pin_file: Some(token.pin_file.clone()),
        };
        let location = RootKeyLocation::from_flags("unused".into(), &args);
        assert_eq!(location.open().expect("open by flags").root_key_id(), id);
        // Another token's root keys are other keys.
        let other = Pkcs11KeyStore::init(&other_config(token)).expect("init other");
        assert_ne!(other.root_key_id(), id);
        let err = other.unwrap(&context(), &wrapped).expect_err("other token");
        assert_eq!(err.aws_exception_name(), "KeyUnavailableException");
        // Material of a root key file is refused by name, not as corrupt.
        let file = FileKeyStore::init(&token.folder().join("root.key")).expect("file store");
        let from_file = file.wrap(&context(), &material).expect("file wrap");
        let err = second
            .unwrap(&context(), &from_file)
            .expect_err("file format");
        assert_eq!(err.aws_exception_name(), "KeyUnavailableException");
        assert!(err.to_string().contains("root key file"), "{err}");
    });
}

#[test]
fn init_twice_is_refused() {
    in_own_softhsm("init_twice_is_refused", |token| {
        let location = RootKeyLocation::Pkcs11(token.config());
        assert!(
            !location.exists().expect("ask the token"),
            "no keys before init"
        );
        let store = Pkcs11KeyStore::init(&token.config()).expect("init");
        assert!(location.exists().expect("ask the token"), "keys after init");
        let Err(err) = location.init() else {
            panic!("init through the flags over existing keys");
        };
        assert_eq!(err.aws_exception_name(), "AlreadyExistsException");
        let err = Pkcs11KeyStore::init(&token.config()).expect_err("second init");
        assert_eq!(err.aws_exception_name(), "AlreadyExistsException");
        assert!(err.to_string().contains(WRAP_KEY_LABEL), "{err}");
        let reopened = Pkcs11KeyStore::open(&token.config()).expect("open");
        assert_eq!(reopened.root_key_id(), store.root_key_id());
    });
}

#[test]
fn wrong_pin_wrong_token_missing_keys_and_module_are_named() {
    in_own_softhsm(
        "wrong_pin_wrong_token_missing_keys_and_module_are_named",
        |token| {
            let err = Pkcs11KeyStore::open(&token.config()).expect_err("no keys yet");
            assert_eq!(err.aws_exception_name(), "KeyUnavailableException");
            let text = err.to_string();
            assert!(
                text.contains(WRAP_KEY_LABEL) && text.contains(LABEL),
                "{text}"
            );
            Pkcs11KeyStore::init(&token.config()).expect("init");

            let wrong_pin = token.folder().join("wrong-pin");
            std::fs::write(&wrong_pin, "9999-wrong").expect("write");
            std::fs::set_permissions(&wrong_pin, std::fs::Permissions::from_mode(0o400))
                .expect("chmod");
            let config = Pkcs11Config {
                pin_file: wrong_pin.clone(),
                ..token.config()
            };
            let err = Pkcs11KeyStore::open(&config).expect_err("wrong PIN");
            assert_eq!(err.aws_exception_name(), "KeyUnavailableException");
            let text = err.to_string();
            assert!(text.contains("CKR_PIN_INCORRECT"), "{text}");
            assert!(
                !text.contains("9999"),
                "the PIN is never in an error: {text}"
            );

            std::fs::set_permissions(&wrong_pin, std::fs::Permissions::from_mode(0o644))
                .expect("chmod");
            let err = Pkcs11KeyStore::open(&config).expect_err("loose PIN file");
            assert!(err.to_string().contains("chmod 600"), "{err}");

            let config = Pkcs11Config {
                token_label: "no-such-token".into(),
                ..token.config()
            };
            let err = Pkcs11KeyStore::open(&config).expect_err("wrong token");
            assert_eq!(err.aws_exception_name(), "KeyUnavailableException");
            let text = err.to_string();
            assert!(
                text.contains("no-such-token")
                    && text.contains(LABEL)
                    && text.contains("other-token"),
                "{text}"
            );

            let err =
                Pkcs11KeyStore::open(&other_config(token)).expect_err("keys not in that token");
            assert!(err.to_string().contains("no key object labelled"), "{err}");

            let config = Pkcs11Config {
                module: "/nonexistent/libpkcs11.so".into(),
                ..token.config()
            };
            let err = Pkcs11KeyStore::open(&config).expect_err("no module");
            assert_eq!(err.aws_exception_name(), "KeyUnavailableException");
            assert!(
                err.to_string().contains("/nonexistent/libpkcs11.so"),
                "{err}"
            );
        },
    );
}

#[test]
fn the_root_keys_are_sensitive_and_never_leave_the_token() {
    in_own_softhsm(
        "the_root_keys_are_sensitive_and_never_leave_the_token",
        |token| {
            let _store = Pkcs11KeyStore::init(&token.config()).expect("init");
            let pkcs11 = Pkcs11::new(MODULE).expect("module");
            // Already initialized by the store in this process.
            let _ = pkcs11.initialize(cryptoki::context::CInitializeArgs::new(
                cryptoki::context::CInitializeFlags::OS_LOCKING_OK,
            ));
            let slot = pkcs11
                .get_slots_with_token()
                .expect("slots")
                .into_iter()
                .find(|s| pkcs11.get_token_info(*s).expect("info").label().trim_end() == LABEL)
                .expect("token");
            let session = pkcs11.open_rw_session(slot).expect("session");
            match session.login(UserType::User, Some(&AuthPin::from(USER_PIN.to_owned()))) {
                Ok(())
                | Err(cryptoki::error::Error::Pkcs11(
                    cryptoki::error::RvError::UserAlreadyLoggedIn,
                    _,
                )) => {}
                Err(e) => panic!("login: {e}"),
            }
            let find = |label: &str| {
                let found = session
                    .find_objects(&[
                        Attribute::Class(ObjectClass::SECRET_KEY),
                        Attribute::Label(label.as_bytes().to_vec()),
                    ])
                    .expect("find");
                assert_eq!(found.len(), 1, "{label}");
                found[0]
            };
            let wrap = find(WRAP_KEY_LABEL);
            let derive = find(DERIVE_KEY_LABEL);
            for (label, key) in [(WRAP_KEY_LABEL, wrap), (DERIVE_KEY_LABEL, derive)] {
                let attributes = session
                    .get_attributes(
                        key,
                        &[
                            AttributeType::Token,
                            AttributeType::Sensitive,
                            AttributeType::Extractable,
                            AttributeType::AlwaysSensitive,
                            AttributeType::NeverExtractable,
                        ],
                    )
                    .expect("attributes");
                for expected in [
                    Attribute::Token(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::AlwaysSensitive(true),
                    Attribute::NeverExtractable(true),
                ] {
                    assert!(
                        attributes.contains(&expected),
                        "{label}: {expected:?} in {attributes:?}"
                    );
                }
                let value = session.get_attributes(key, &[AttributeType::Value]);
                assert!(
                    !matches!(&value, Ok(v) if v.iter().any(|a| matches!(a, Attribute::Value(_)))),
                    "{label}: CKA_VALUE was readable"
                );
                // Wrapping the root key out under a key the caller knows fails.
                let known = session
                    .generate_key(
                        &Mechanism::AesKeyGen,
                        &[
                            Attribute::Token(false),
                            Attribute::ValueLen(32.into()),
                            Attribute::Wrap(true),
                            Attribute::Extractable(true),
                        ],
                    )
                    .expect("session key");
                assert!(
                    session
                        .wrap_key(&Mechanism::AesKeyWrapPad, known, key)
                        .is_err(),
                    "{label}: C_WrapKey exported the root key"
                );
            }
        },
    );
}

#[test]
fn a_key_object_that_could_leave_the_token_is_refused() {
    in_own_softhsm(
        "a_key_object_that_could_leave_the_token_is_refused",
        |token| {
            // Someone made the objects by hand, extractable.
            let pkcs11 = Pkcs11::new(MODULE).expect("module");
            pkcs11
                .initialize(cryptoki::context::CInitializeArgs::new(
                    cryptoki::context::CInitializeFlags::OS_LOCKING_OK,
                ))
                .expect("initialize");
            let slot = pkcs11
                .get_slots_with_token()
                .expect("slots")
                .into_iter()
                .find(|s| pkcs11.get_token_info(*s).expect("info").label().trim_end() == LABEL)
                .expect("token");
            let session = pkcs11.open_rw_session(slot).expect("session");
            session
                .login(UserType::User, Some(&AuthPin::from(USER_PIN.to_owned())))
                .expect("login");
            for (label, mechanism) in [
                (WRAP_KEY_LABEL, Mechanism::AesKeyGen),
                (DERIVE_KEY_LABEL, Mechanism::GenericSecretKeyGen),
            ] {
                session
                    .generate_key(
                        &mechanism,
                        &[
                            Attribute::Token(true),
                            Attribute::Private(true),
                            Attribute::Sensitive(false),
                            Attribute::Extractable(true),
                            Attribute::ValueLen(32.into()),
                            Attribute::Label(label.as_bytes().to_vec()),
                            Attribute::Encrypt(true),
                            Attribute::Decrypt(true),
                            Attribute::Sign(true),
                        ],
                    )
                    .expect("generate");
            }
            drop(session);
            let err = Pkcs11KeyStore::open(&token.config()).expect_err("extractable keys");
            assert_eq!(err.aws_exception_name(), "KeyUnavailableException");
            assert!(err.to_string().contains("could leave the token"), "{err}");
        },
    );
}

#[test]
fn a_token_that_goes_away_is_unavailable_then_service_resumes() {
    in_own_softhsm(
        "a_token_that_goes_away_is_unavailable_then_service_resumes",
        |token| {
            let store = Pkcs11KeyStore::init(&token.config()).expect("init");
            let material = SecretBytes::from_slice(&[7u8; 32]);
            let wrapped = store.wrap(&context(), &material).expect("wrap");
            // The token goes away: its folder is gone and the module is reset under the store
            // (every session handle becomes invalid).
            let away = token.folder().join("tokens-away");
            std::fs::rename(token.tokens(), &away).expect("remove the token");
            Pkcs11::new(MODULE)
                .expect("module")
                .finalize()
                .expect("finalize");
            let err = store.unwrap(&context(), &wrapped).expect_err("token away");
            assert_eq!(err.aws_exception_name(), "KeyUnavailableException");
            assert!(err.to_string().contains(LABEL), "{err}");
            let err = store
                .derive_key(DerivedKeyPurpose::GrantToken)
                .expect_err("still away");
            assert_eq!(err.aws_exception_name(), "KeyUnavailableException", "{err}");
            // The token returns: the next call opens a new session.
            std::fs::rename(&away, token.tokens()).expect("return the token");
            // SoftHSM2 reads its token folder at C_Initialize; the second call above may have
            // initialized it without the token, so reset it once more (a real HSM's module
            // sees the device return by itself).
            let _ = Pkcs11::new(MODULE).expect("module").finalize();
            assert_eq!(
                store.unwrap(&context(), &wrapped).expect("unwrap again"),
                material
            );
            store
                .derive_key(DerivedKeyPurpose::GrantToken)
                .expect("derive again");
        },
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
