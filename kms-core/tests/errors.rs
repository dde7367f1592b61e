//! A negative test for every AWS exception kms-core can return: each is produced by a real
//! call with bad input or in a forbidden state, and the name is checked exactly.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;

use common::{T0, key, symmetric};
use kms_core::grants::{self, Grant, GrantConstraints, GrantId, GrantOperation};
use kms_core::keystore::{FileKeyStore, RootKeyStore, WrapContext};
use kms_core::ops;
use kms_core::{
    AliasName, Arn, EncryptionAlgorithm, EncryptionContext, KeyId, KeyMaterial, KeySpec, KeyUsage,
    KmsError, MacAlgorithm, MessageType, RotationType, SecretBytes, SigningAlgorithm,
};

fn name<T: std::fmt::Debug>(result: Result<T, KmsError>) -> &'static str {
    result.expect_err("the call must fail").aws_exception_name()
}

fn no_context() -> EncryptionContext {
    EncryptionContext::new()
}

#[test]
fn every_exception_is_reachable_with_its_exact_name() {
    let mut seen = BTreeSet::new();
    let mut expect = |expected: &'static str, got: &'static str| {
        assert_eq!(got, expected);
        seen.insert(got);
    };
    let sym = symmetric();
    let ctx = no_context();

    expect("NotFoundException", name(KeyId::parse("not-a-key-id")));
    expect(
        "ValidationException",
        name(ops::encrypt(
            &sym,
            &[],
            &ctx,
            EncryptionAlgorithm::SymmetricDefault,
        )),
    );
    expect(
        "InvalidArnException",
        name(Arn::parse("arn:aws:s3:::bucket")),
    );
    expect(
        "InvalidAliasNameException",
        name(AliasName::parse_for_create("alias/aws/reserved")),
    );
    expect("InvalidGrantIdException", name(GrantId::parse("xyz")));
    expect(
        "InvalidGrantTokenException",
        name(grants::validate_grant_token("")),
    );

    let mut disabled = symmetric();
    disabled.metadata.disable().expect("disable");
    expect(
        "DisabledException",
        name(ops::encrypt(
            &disabled,
            b"x",
            &ctx,
            EncryptionAlgorithm::SymmetricDefault,
        )),
    );

    let mut pending = symmetric();
    pending
        .metadata
        .schedule_deletion(T0, Some(7))
        .expect("schedule");
    expect(
        "KMSInvalidStateException",
        name(ops::encrypt(
            &pending,
            b"x",
            &ctx,
            EncryptionAlgorithm::SymmetricDefault,
        )),
    );

    let blob = ops::encrypt(&sym, b"secret", &ctx, EncryptionAlgorithm::SymmetricDefault)
        .expect("encrypt");
    let mut tampered = blob.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    expect(
        "InvalidCiphertextException",
        name(ops::decrypt(
            &sym,
            &tampered,
            &ctx,
            EncryptionAlgorithm::SymmetricDefault,
        )),
    );
    let other = symmetric();
    expect(
        "IncorrectKeyException",
        name(ops::decrypt(
            &other,
            &blob,
            &ctx,
            EncryptionAlgorithm::SymmetricDefault,
        )),
    );

    expect(
        "InvalidKeyUsageException",
        name(ops::sign(
            &sym,
            b"m",
            MessageType::Raw,
            SigningAlgorithm::EcdsaSha256,
        )),
    );
    let signer = key(KeySpec::EccNistP256, KeyUsage::SignVerify);
    expect(
        "KMSInvalidSignatureException",
        name(ops::verify(
            &signer,
            b"m",
            MessageType::Raw,
            &[0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01],
            SigningAlgorithm::EcdsaSha256,
        )),
    );
    let mac = key(KeySpec::Hmac256, KeyUsage::GenerateVerifyMac);
    expect(
        "KMSInvalidMacException",
        name(ops::verify_mac(
            &mac,
            b"m",
            &[0u8; 32],
            MacAlgorithm::HmacSha256,
        )),
    );

    let grant = Grant::new(
        KeySpec::SymmetricDefault,
        KeyUsage::EncryptDecrypt,
        [GrantOperation::Decrypt],
        GrantConstraints::default(),
    )
    .expect("grant");
    expect(
        "AccessDeniedException",
        name(grant.authorize(GrantOperation::Encrypt, &ctx, None)),
    );
    // A constrained grant allows CreateGrant only for a child whose constraints are known
    // and at least as strict: unknown (None) is refused.
    let constrained = Grant::new(
        KeySpec::SymmetricDefault,
        KeyUsage::EncryptDecrypt,
        [GrantOperation::CreateGrant],
        GrantConstraints {
            encryption_context_subset: Some(
                EncryptionContext::from_pairs([("team", "billing")]).expect("context"),
            ),
            ..GrantConstraints::default()
        },
    )
    .expect("constrained grant");
    expect(
        "AccessDeniedException",
        name(constrained.authorize(GrantOperation::CreateGrant, &ctx, None)),
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root.key");
    let store = FileKeyStore::init(&root).expect("init");
    expect("AlreadyExistsException", name(FileKeyStore::init(&root)));
    let wrapped = store
        .wrap(
            &WrapContext {
                key_id: sym.key_id(),
                version: 1,
                spec: KeySpec::SymmetricDefault,
                usage: KeyUsage::EncryptDecrypt,
                origin: kms_core::Origin::AwsKms,
                owner: None,
            },
            &SecretBytes::from_slice(&[1; 32]),
        )
        .expect("wrap");
    expect(
        "KMSInternalException",
        name(store.unwrap(
            &WrapContext {
                key_id: sym.key_id(),
                version: 2,
                spec: KeySpec::SymmetricDefault,
                usage: KeyUsage::EncryptDecrypt,
                origin: kms_core::Origin::AwsKms,
                owner: None,
            },
            &wrapped,
        )),
    );
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    expect("KeyUnavailableException", name(FileKeyStore::open(&root)));

    let mut rotating = symmetric();
    for _ in 0..25 {
        rotating.rotate(T0, RotationType::OnDemand).expect("rotate");
    }
    expect(
        "LimitExceededException",
        name(rotating.rotate(T0, RotationType::OnDemand)),
    );
    expect(
        "UnsupportedOperationException",
        name(ops::get_public_key(&sym)),
    );

    let mut external = kms_core::KmsKey::new(
        kms_core::KeyMetadata::new(
            KeyId::generate().expect("id"),
            KeySpec::SymmetricDefault,
            KeyUsage::EncryptDecrypt,
            kms_core::Origin::External,
            T0,
        )
        .expect("metadata"),
        Default::default(),
    )
    .expect("external key");
    let first =
        KeyMaterial::from_serialized(KeySpec::SymmetricDefault, SecretBytes::from_slice(&[7; 32]))
            .expect("material");
    external.import_material(T0, first).expect("first import");
    let different =
        KeyMaterial::from_serialized(KeySpec::SymmetricDefault, SecretBytes::from_slice(&[8; 32]))
            .expect("material");
    expect(
        "IncorrectKeyMaterialException",
        name(external.import_material(T0, different)),
    );

    let missing: Vec<_> = KmsError::ALL_EXCEPTION_NAMES
        .iter()
        .filter(|n| !seen.contains(*n))
        .collect();
    assert!(
        missing.is_empty(),
        "exceptions without a negative test: {missing:?}"
    );
}

#[test]
fn validation_limits_of_every_operation() {
    let sym = symmetric();
    let ctx = no_context();
    let alg = EncryptionAlgorithm::SymmetricDefault;
    assert_eq!(
        name(ops::encrypt(&sym, &[0; 4097], &ctx, alg)),
        "ValidationException"
    );
    assert!(ops::encrypt(&sym, &[0; 4096], &ctx, alg).is_ok());
    assert_eq!(
        name(ops::decrypt(&sym, &[], &ctx, alg)),
        "ValidationException"
    );
    assert_eq!(
        name(ops::decrypt(&sym, &[0; 6145], &ctx, alg)),
        "ValidationException"
    );
    assert_eq!(
        name(ops::data_key_length(None, None)),
        "ValidationException"
    );
    assert_eq!(
        name(ops::data_key_length(
            Some(kms_core::DataKeySpec::Aes256),
            Some(32)
        )),
        "ValidationException"
    );
    assert_eq!(
        name(ops::data_key_length(None, Some(0))),
        "ValidationException"
    );
    assert_eq!(
        name(ops::data_key_length(None, Some(1025))),
        "ValidationException"
    );
    assert_eq!(
        ops::data_key_length(Some(kms_core::DataKeySpec::Aes128), None),
        Ok(16)
    );
    assert_eq!(name(ops::generate_random(0)), "ValidationException");
    assert_eq!(name(ops::generate_random(1025)), "ValidationException");
    assert_eq!(ops::generate_random(1024).expect("random").len(), 1024);

    let signer = key(KeySpec::EccNistP384, KeyUsage::SignVerify);
    let sha384 = SigningAlgorithm::EcdsaSha384;
    assert_eq!(
        name(ops::sign(&signer, &[], MessageType::Raw, sha384)),
        "ValidationException"
    );
    assert_eq!(
        name(ops::sign(&signer, &[0; 4097], MessageType::Raw, sha384)),
        "ValidationException"
    );
    assert_eq!(
        name(ops::sign(&signer, &[0; 32], MessageType::Digest, sha384)),
        "ValidationException"
    );
    assert!(ops::sign(&signer, &[0; 48], MessageType::Digest, sha384).is_ok());
    assert_eq!(
        name(ops::sign(
            &signer,
            b"m",
            MessageType::Raw,
            SigningAlgorithm::EcdsaSha256
        )),
        "InvalidKeyUsageException"
    );

    let mac = key(KeySpec::Hmac512, KeyUsage::GenerateVerifyMac);
    assert_eq!(
        name(ops::generate_mac(&mac, &[], MacAlgorithm::HmacSha512)),
        "ValidationException"
    );
    assert_eq!(
        name(ops::generate_mac(&mac, b"m", MacAlgorithm::HmacSha256)),
        "InvalidKeyUsageException"
    );
    let tag = ops::generate_mac(&mac, b"m", MacAlgorithm::HmacSha512).expect("mac");
    assert_eq!(
        name(ops::verify_mac(
            &mac,
            b"m",
            &tag[..63],
            MacAlgorithm::HmacSha512
        )),
        "KMSInvalidMacException"
    );
    assert_eq!(
        name(ops::verify_mac(&mac, b"n", &tag, MacAlgorithm::HmacSha512)),
        "KMSInvalidMacException"
    );

    let rsa = key(KeySpec::Rsa2048, KeyUsage::EncryptDecrypt);
    let oaep256 = EncryptionAlgorithm::RsaesOaepSha256;
    assert!(ops::encrypt(&rsa, &[1; 190], &ctx, oaep256).is_ok());
    assert_eq!(
        name(ops::encrypt(&rsa, &[1; 191], &ctx, oaep256)),
        "ValidationException"
    );
    assert!(ops::encrypt(&rsa, &[1; 214], &ctx, EncryptionAlgorithm::RsaesOaepSha1).is_ok());
    assert_eq!(
        name(ops::encrypt(
            &rsa,
            &[1; 215],
            &ctx,
            EncryptionAlgorithm::RsaesOaepSha1
        )),
        "ValidationException"
    );
    assert_eq!(
        name(ops::encrypt(&rsa, b"x", &ctx, alg)),
        "InvalidKeyUsageException"
    );
    let with_context = EncryptionContext::from_pairs([("a", "b")]).expect("ctx");
    assert_eq!(
        name(ops::encrypt(&rsa, b"x", &with_context, oaep256)),
        "ValidationException"
    );
    assert_eq!(
        name(ops::decrypt(&rsa, &[0; 256], &ctx, oaep256)),
        "InvalidCiphertextException"
    );
    assert_eq!(
        name(ops::generate_data_key(&rsa, 32, &ctx)),
        "InvalidKeyUsageException"
    );

    let agreement = key(KeySpec::EccNistP256, KeyUsage::KeyAgreement);
    let ecdh = kms_core::KeyAgreementAlgorithm::Ecdh;
    assert_eq!(
        name(ops::derive_shared_secret(&agreement, ecdh, b"not a key")),
        "ValidationException"
    );
    assert_eq!(
        name(ops::derive_shared_secret(&agreement, ecdh, &[])),
        "ValidationException"
    );
    let p384 = key(KeySpec::EccNistP384, KeyUsage::KeyAgreement);
    let p384_public = ops::get_public_key(&p384).expect("public").public_key;
    assert_eq!(
        name(ops::derive_shared_secret(&agreement, ecdh, &p384_public)),
        "ValidationException"
    );
    assert_eq!(
        name(ops::derive_shared_secret(&signer, ecdh, &p384_public)),
        "InvalidKeyUsageException"
    );
}

#[test]
fn decrypt_without_key_id_finds_the_key_or_calls_the_blob_corrupt() {
    let a = symmetric();
    let b = symmetric();
    let ctx = no_context();
    let lookup = |id: &KeyId| [&a, &b].into_iter().find(|k| k.key_id() == *id);
    let blob =
        ops::encrypt(&a, b"hello", &ctx, EncryptionAlgorithm::SymmetricDefault).expect("encrypt");
    let (plain, version) = ops::decrypt_symmetric(lookup, None, &blob, &ctx).expect("decrypt");
    assert_eq!((plain.expose(), version), (&b"hello"[..], 1));
    assert_eq!(
        name(ops::decrypt_symmetric(
            lookup,
            Some(b.key_id()),
            &blob,
            &ctx
        )),
        "IncorrectKeyException"
    );
    let mut unknown_key = blob.clone();
    unknown_key[5] ^= 0xff;
    assert_eq!(
        name(ops::decrypt_symmetric(
            lookup,
            Some(a.key_id()),
            &unknown_key,
            &ctx
        )),
        "InvalidCiphertextException"
    );
}
