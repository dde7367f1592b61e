//! Property tests: round trips for every key spec and algorithm, and detection of every
//! kind of damage to a ciphertext blob.

mod common;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use common::{T0, key, symmetric};
use kms_core::ops::{self, ReEncryptSide};
use kms_core::primitives::{self, SignInput};
use kms_core::spec::HashAlgorithm;
use kms_core::{
    DataKeyPairSpec, EncryptionAlgorithm, EncryptionContext, KeyAgreementAlgorithm, KeyId, KeySpec,
    KeyUsage, KmsError, KmsKey, MessageType, RotationType,
};
use proptest::prelude::*;

fn context_strategy() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map("[a-zA-Z0-9:/_-]{1,12}", ".{0,16}", 0..4)
}

fn shared_symmetric() -> &'static (KmsKey, KmsKey) {
    static KEYS: OnceLock<(KmsKey, KmsKey)> = OnceLock::new();
    KEYS.get_or_init(|| (symmetric(), symmetric()))
}

fn lookup(id: &KeyId) -> Option<&'static KmsKey> {
    let (a, b) = shared_symmetric();
    [a, b].into_iter().find(|k| k.key_id() == *id)
}

fn seal(plaintext: &[u8], context: &EncryptionContext) -> Vec<u8> {
    ops::encrypt(
        &shared_symmetric().0,
        plaintext,
        context,
        EncryptionAlgorithm::SymmetricDefault,
    )
    .expect("encrypt")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn symmetric_round_trip(plaintext in prop::collection::vec(any::<u8>(), 1..=4096), pairs in context_strategy()) {
        let context = EncryptionContext::from_map(pairs.clone()).expect("ctx");
        let blob = seal(&plaintext, &context);
        prop_assert!(blob.len() <= ops::MAX_CIPHERTEXT);
        // Same pairs given in reverse order: the context is a map, order does not matter.
        let reordered = EncryptionContext::from_pairs(pairs.into_iter().rev()).expect("ctx");
        let (plain, version) = ops::decrypt_symmetric(lookup, None, &blob, &reordered).expect("decrypt");
        prop_assert_eq!(plain.expose(), plaintext.as_slice());
        prop_assert_eq!(version, 1);
    }

    #[test]
    fn any_flipped_bit_is_invalid_ciphertext(plaintext in prop::collection::vec(any::<u8>(), 1..64), position in any::<prop::sample::Index>(), bit in 0u8..8) {
        let blob = seal(&plaintext, &EncryptionContext::new());
        let mut damaged = blob.clone();
        let i = position.index(damaged.len());
        damaged[i] ^= 1 << bit;
        let result = ops::decrypt_symmetric(lookup, Some(shared_symmetric().0.key_id()), &damaged, &EncryptionContext::new());
        prop_assert_eq!(result.map(|_| ()), Err(KmsError::InvalidCiphertext), "byte {}", i);
    }

    #[test]
    fn truncated_or_extended_blobs_are_invalid_ciphertext(plaintext in prop::collection::vec(any::<u8>(), 1..64), cut in any::<prop::sample::Index>(), extra in prop::collection::vec(any::<u8>(), 1..8)) {
        let blob = seal(&plaintext, &EncryptionContext::new());
        let truncated = &blob[..cut.index(blob.len())];
        let result = ops::decrypt_symmetric(lookup, None, truncated, &EncryptionContext::new()).map(|_| ());
        prop_assert!(matches!(result, Err(KmsError::InvalidCiphertext) | Err(KmsError::Validation(_))), "{:?}", result);
        let mut extended = blob.clone();
        extended.extend_from_slice(&extra);
        let result = ops::decrypt_symmetric(lookup, None, &extended, &EncryptionContext::new()).map(|_| ());
        prop_assert_eq!(result, Err(KmsError::InvalidCiphertext));
    }

    #[test]
    fn a_different_context_never_decrypts(pairs in context_strategy(), key_name in "[a-z]{1,8}", value in ".{0,8}") {
        let context = EncryptionContext::from_map(pairs.clone()).expect("ctx");
        let blob = seal(b"payload", &context);
        let mut changed = pairs;
        let previous = changed.insert(key_name, value.clone());
        prop_assume!(previous.as_deref() != Some(value.as_str()));
        let changed = EncryptionContext::from_map(changed).expect("ctx");
        let result = ops::decrypt_symmetric(lookup, None, &blob, &changed).map(|_| ());
        prop_assert_eq!(result, Err(KmsError::InvalidCiphertext));
    }

    #[test]
    fn garbage_never_panics(garbage in prop::collection::vec(any::<u8>(), 0..8192)) {
        let result = ops::decrypt_symmetric(lookup, None, &garbage, &EncryptionContext::new());
        prop_assert!(result.is_err());
    }
}

#[test]
fn every_retained_version_decrypts_after_rotation() {
    let mut key = symmetric();
    let ctx = EncryptionContext::from_pairs([("app", "billing")]).expect("ctx");
    let mut blobs = Vec::new();
    for round in 0..5u8 {
        let blob = ops::encrypt(
            &key,
            &[round; 16],
            &ctx,
            EncryptionAlgorithm::SymmetricDefault,
        )
        .expect("encrypt");
        assert_eq!(
            kms_core::blob::peek(&blob).expect("peek").1,
            u32::from(round) + 1
        );
        blobs.push(blob);
        key.rotate(T0, RotationType::OnDemand).expect("rotate");
    }
    for (round, blob) in blobs.iter().enumerate() {
        let (plain, version) =
            ops::decrypt(&key, blob, &ctx, EncryptionAlgorithm::SymmetricDefault)
                .expect("decrypt old version");
        assert_eq!(plain.expose(), &[u8::try_from(round).expect("small"); 16]);
        assert_eq!(version as usize, round + 1);
    }
}

#[test]
fn re_encrypt_moves_between_keys_and_contexts() {
    let a = symmetric();
    let b = symmetric();
    let ctx_a = EncryptionContext::from_pairs([("k", "a")]).expect("ctx");
    let ctx_b = EncryptionContext::from_pairs([("k", "b")]).expect("ctx");
    let sym = EncryptionAlgorithm::SymmetricDefault;
    let blob = ops::encrypt(&a, b"moving", &ctx_a, sym).expect("encrypt");
    let source = ReEncryptSide {
        key: &a,
        context: &ctx_a,
        algorithm: sym,
    };
    let destination = ReEncryptSide {
        key: &b,
        context: &ctx_b,
        algorithm: sym,
    };
    let moved = ops::re_encrypt(&blob, source, destination).expect("re-encrypt");
    assert_eq!(
        ops::decrypt(&b, &moved, &ctx_b, sym)
            .expect("decrypt")
            .0
            .expose(),
        b"moving"
    );
    let wrong_source = ReEncryptSide {
        key: &a,
        context: &ctx_b,
        algorithm: sym,
    };
    assert_eq!(
        ops::re_encrypt(&blob, wrong_source, destination).map(|_| ()),
        Err(KmsError::InvalidCiphertext)
    );
    let rsa = key(KeySpec::Rsa2048, KeyUsage::EncryptDecrypt);
    let to_rsa = ReEncryptSide {
        key: &rsa,
        context: &EncryptionContext::new(),
        algorithm: EncryptionAlgorithm::RsaesOaepSha256,
    };
    let rsa_blob = ops::re_encrypt(&blob, source, to_rsa).expect("to RSA");
    let (plain, _) = ops::decrypt(
        &rsa,
        &rsa_blob,
        &EncryptionContext::new(),
        EncryptionAlgorithm::RsaesOaepSha256,
    )
    .expect("rsa decrypt");
    assert_eq!(plain.expose(), b"moving");
}

#[test]
fn every_signing_spec_and_algorithm_round_trips() {
    let messages: [&[u8]; 3] = [b"m", b"a longer message to sign", &[0xa5; 4096]];
    for spec in KeySpec::ALL
        .iter()
        .copied()
        .filter(|s| s.allowed_usages().contains(&KeyUsage::SignVerify))
    {
        let signer = key(spec, KeyUsage::SignVerify);
        for algorithm in spec.signing_algorithms().iter().copied() {
            for message in messages {
                let signature =
                    ops::sign(&signer, message, MessageType::Raw, algorithm).expect("sign");
                ops::verify(&signer, message, MessageType::Raw, &signature, algorithm)
                    .expect("verify raw");
                let digest = primitives::hash(algorithm.hash(), message);
                ops::verify(&signer, &digest, MessageType::Digest, &signature, algorithm)
                    .expect("verify as digest");
                let digest_signature = ops::sign(&signer, &digest, MessageType::Digest, algorithm)
                    .expect("sign digest");
                ops::verify(
                    &signer,
                    message,
                    MessageType::Raw,
                    &digest_signature,
                    algorithm,
                )
                .expect("digest signature verifies raw");
                for i in [0, signature.len() / 2, signature.len() - 1] {
                    let mut bad = signature.clone();
                    bad[i] ^= 0x40;
                    assert_eq!(
                        ops::verify(&signer, message, MessageType::Raw, &bad, algorithm),
                        Err(KmsError::InvalidSignature),
                        "{spec} {algorithm} byte {i}"
                    );
                }
                let mut other_message = message.to_vec();
                other_message[0] ^= 1;
                assert_eq!(
                    ops::verify(
                        &signer,
                        &other_message,
                        MessageType::Raw,
                        &signature,
                        algorithm
                    ),
                    Err(KmsError::InvalidSignature)
                );
            }
        }
    }
}

#[test]
fn rsa_encryption_round_trips_at_aws_limits() {
    for spec in [KeySpec::Rsa2048, KeySpec::Rsa3072, KeySpec::Rsa4096] {
        let rsa = key(spec, KeyUsage::EncryptDecrypt);
        for algorithm in spec.encryption_algorithms().iter().copied() {
            let max = algorithm.rsa_max_plaintext(spec).expect("rsa limit");
            for len in [1, max] {
                let plaintext = vec![0x5a; len];
                let ciphertext =
                    ops::encrypt(&rsa, &plaintext, &EncryptionContext::new(), algorithm)
                        .expect("encrypt");
                assert_eq!(ciphertext.len(), spec.rsa_bits().expect("bits") / 8);
                let (plain, _) =
                    ops::decrypt(&rsa, &ciphertext, &EncryptionContext::new(), algorithm)
                        .expect("decrypt");
                assert_eq!(
                    plain.expose(),
                    plaintext.as_slice(),
                    "{spec} {algorithm} {len}"
                );
            }
            let other = if algorithm == EncryptionAlgorithm::RsaesOaepSha1 {
                EncryptionAlgorithm::RsaesOaepSha256
            } else {
                EncryptionAlgorithm::RsaesOaepSha1
            };
            let ciphertext =
                ops::encrypt(&rsa, b"x", &EncryptionContext::new(), algorithm).expect("encrypt");
            assert_eq!(
                ops::decrypt(&rsa, &ciphertext, &EncryptionContext::new(), other).map(|_| ()),
                Err(KmsError::InvalidCiphertext)
            );
        }
    }
}

#[test]
fn every_mac_spec_round_trips() {
    for spec in [
        KeySpec::Hmac224,
        KeySpec::Hmac256,
        KeySpec::Hmac384,
        KeySpec::Hmac512,
    ] {
        let mac_key = key(spec, KeyUsage::GenerateVerifyMac);
        let algorithm = spec.mac_algorithms()[0];
        let tag = ops::generate_mac(&mac_key, b"message", algorithm).expect("mac");
        assert_eq!(tag.len(), algorithm.hash().output_len());
        ops::verify_mac(&mac_key, b"message", &tag, algorithm).expect("verify");
        let other = key(spec, KeyUsage::GenerateVerifyMac);
        assert_eq!(
            ops::verify_mac(&other, b"message", &tag, algorithm),
            Err(KmsError::InvalidMac)
        );
    }
}

#[test]
fn ecdh_between_two_kms_keys_agrees() {
    for spec in [
        KeySpec::EccNistP256,
        KeySpec::EccNistP384,
        KeySpec::EccNistP521,
    ] {
        let alice = key(spec, KeyUsage::KeyAgreement);
        let bob = key(spec, KeyUsage::KeyAgreement);
        let alice_public = ops::get_public_key(&alice).expect("public");
        let bob_public = ops::get_public_key(&bob).expect("public");
        assert_eq!(
            alice_public.key_agreement_algorithms,
            vec![KeyAgreementAlgorithm::Ecdh]
        );
        let ab =
            ops::derive_shared_secret(&alice, KeyAgreementAlgorithm::Ecdh, &bob_public.public_key)
                .expect("derive");
        let ba =
            ops::derive_shared_secret(&bob, KeyAgreementAlgorithm::Ecdh, &alice_public.public_key)
                .expect("derive");
        assert_eq!(ab, ba, "{spec}");
    }
}

#[test]
fn data_keys_and_pairs() {
    let (sym, _) = shared_symmetric();
    let ctx = EncryptionContext::from_pairs([("purpose", "test")]).expect("ctx");
    for length in [1, 16, 32, 1024] {
        let data_key = ops::generate_data_key(sym, length, &ctx).expect("data key");
        assert_eq!(data_key.plaintext.len(), length);
        let (plain, _) = ops::decrypt(
            sym,
            &data_key.ciphertext_blob,
            &ctx,
            EncryptionAlgorithm::SymmetricDefault,
        )
        .expect("decrypt");
        assert_eq!(plain, data_key.plaintext);
    }
    let blob = ops::generate_data_key_without_plaintext(sym, 32, &ctx).expect("without plaintext");
    assert_eq!(
        ops::decrypt(sym, &blob, &ctx, EncryptionAlgorithm::SymmetricDefault)
            .expect("decrypt")
            .0
            .len(),
        32
    );
    for pair_spec in DataKeyPairSpec::ALL.iter().copied() {
        let pair = ops::generate_data_key_pair(sym, pair_spec, &ctx, true).expect("pair");
        let private = pair.private_key_plaintext.expect("plaintext private key");
        let (decrypted, _) = ops::decrypt(
            sym,
            &pair.private_key_ciphertext_blob,
            &ctx,
            EncryptionAlgorithm::SymmetricDefault,
        )
        .expect("decrypt");
        assert_eq!(decrypted, private);
        assert_eq!(
            primitives::public_key_of(pair_spec.key_spec(), private.expose()).expect("public"),
            pair.public_key
        );
        let without = ops::generate_data_key_pair(sym, pair_spec, &ctx, false).expect("pair");
        assert!(without.private_key_plaintext.is_none());
    }
}

#[test]
fn sign_input_digest_length_must_match_hash() {
    let signer = key(KeySpec::Rsa2048, KeyUsage::SignVerify);
    for algorithm in KeySpec::Rsa2048.signing_algorithms().iter().copied() {
        let right = algorithm.hash().output_len();
        assert!(ops::sign(&signer, &vec![1; right], MessageType::Digest, algorithm).is_ok());
        assert!(ops::sign(&signer, &vec![1; right + 1], MessageType::Digest, algorithm).is_err());
    }
    assert!(
        primitives::verify_signature(
            KeySpec::Rsa2048,
            b"junk",
            kms_core::SigningAlgorithm::RsassaPssSha256,
            SignInput::Raw(b"m"),
            b"sig"
        )
        .is_err()
    );
    assert_eq!(HashAlgorithm::Sha512.output_len(), 64);
}
