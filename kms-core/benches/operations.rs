//! Each KMS operation beside the bare aws-lc-rs primitive on the same input, in the same
//! run, so the cost of the KMS layer (blob format, key derivation, checks) is a ratio.
//! After criterion's own output, a table of ratios (operation median / primitive median).

use std::hint::black_box;
use std::path::{Path, PathBuf};

use aws_lc_rs::{aead, hmac, rand::SystemRandom, rsa, signature, signature::KeyPair as _};
use criterion::{BenchmarkId, Criterion};
use kms_core::{
    EncryptionAlgorithm, EncryptionContext, KeyId, KeySpec, KeyUsage, KmsKey, MacAlgorithm,
    MessageType, SigningAlgorithm, ops,
};
use time::macros::datetime;

fn kms_key(spec: KeySpec, usage: KeyUsage) -> KmsKey {
    KmsKey::generate(
        KeyId::generate().expect("id"),
        spec,
        usage,
        datetime!(2026-01-01 0:00 UTC),
    )
    .expect("key")
}

/// Pairs of (group, primitive id, operation id) whose medians become ratios.
const PAIRS: &[(&str, &str, &str)] = &[
    ("symmetric_encrypt", "aes_gcm_seal/32", "kms_encrypt/32"),
    ("symmetric_encrypt", "aes_gcm_seal/4096", "kms_encrypt/4096"),
    ("symmetric_decrypt", "aes_gcm_open/32", "kms_decrypt/32"),
    ("symmetric_decrypt", "aes_gcm_open/4096", "kms_decrypt/4096"),
    ("rsa2048", "bare_sign_pss_sha256", "kms_sign_pss_sha256"),
    (
        "rsa2048",
        "bare_decrypt_oaep_sha256",
        "kms_decrypt_oaep_sha256",
    ),
    ("ecdsa_p256", "bare_sign", "kms_sign"),
    ("ecdsa_p256", "bare_verify", "kms_verify"),
    ("hmac_sha256", "bare_hmac", "kms_generate_mac"),
];

fn symmetric(c: &mut Criterion) {
    let key = kms_key(KeySpec::SymmetricDefault, KeyUsage::EncryptDecrypt);
    let context = EncryptionContext::from_pairs([("app", "bench")]).expect("ctx");
    let bare = aead::LessSafeKey::new(
        aead::UnboundKey::new(&aead::AES_256_GCM, &[7u8; 32]).expect("aes key"),
    );
    let mut encrypt = c.benchmark_group("symmetric_encrypt");
    for size in [32usize, 4096] {
        let plaintext = vec![0x42u8; size];
        encrypt.bench_with_input(
            BenchmarkId::new("aes_gcm_seal", size),
            &plaintext,
            |b, pt| {
                b.iter(|| {
                    let mut nonce = [0u8; 12];
                    aws_lc_rs::rand::fill(&mut nonce).expect("rng");
                    let mut buffer = pt.clone();
                    let tag = bare
                        .seal_in_place_separate_tag(
                            aead::Nonce::assume_unique_for_key(nonce),
                            aead::Aad::from(b"app:bench"),
                            &mut buffer,
                        )
                        .expect("seal");
                    black_box((buffer, tag))
                });
            },
        );
        encrypt.bench_with_input(
            BenchmarkId::new("kms_encrypt", size),
            &plaintext,
            |b, pt| {
                b.iter(|| {
                    black_box(
                        ops::encrypt(&key, pt, &context, EncryptionAlgorithm::SymmetricDefault)
                            .expect("encrypt"),
                    )
                });
            },
        );
    }
    encrypt.finish();

    let mut decrypt = c.benchmark_group("symmetric_decrypt");
    for size in [32usize, 4096] {
        let plaintext = vec![0x42u8; size];
        let nonce = [9u8; 12];
        let mut sealed = plaintext.clone();
        bare.seal_in_place_append_tag(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::from(b"app:bench"),
            &mut sealed,
        )
        .expect("seal");
        let blob = ops::encrypt(
            &key,
            &plaintext,
            &context,
            EncryptionAlgorithm::SymmetricDefault,
        )
        .expect("encrypt");
        decrypt.bench_with_input(
            BenchmarkId::new("aes_gcm_open", size),
            &sealed,
            |b, sealed| {
                b.iter(|| {
                    let mut buffer = sealed.clone();
                    let len = bare
                        .open_in_place(
                            aead::Nonce::assume_unique_for_key(nonce),
                            aead::Aad::from(b"app:bench"),
                            &mut buffer,
                        )
                        .expect("open")
                        .len();
                    black_box(len)
                });
            },
        );
        decrypt.bench_with_input(BenchmarkId::new("kms_decrypt", size), &blob, |b, blob| {
            b.iter(|| {
                black_box(
                    ops::decrypt(&key, blob, &context, EncryptionAlgorithm::SymmetricDefault)
                        .expect("decrypt"),
                )
            });
        });
    }
    decrypt.finish();
}

fn rsa2048(c: &mut Criterion) {
    let sign_key = kms_key(KeySpec::Rsa2048, KeyUsage::SignVerify);
    let encrypt_key = kms_key(KeySpec::Rsa2048, KeyUsage::EncryptDecrypt);
    let bare_pair = rsa::KeyPair::generate(rsa::KeySize::Rsa2048).expect("rsa");
    let bare_private = rsa::PrivateDecryptingKey::generate(rsa::KeySize::Rsa2048).expect("rsa");
    let bare_public =
        rsa::OaepPublicEncryptingKey::new(bare_private.public_key()).expect("oaep public");
    let bare_decrypting = rsa::OaepPrivateDecryptingKey::new(bare_private).expect("oaep");
    let message = [0x11u8; 256];
    let seed = [0x22u8; 32];
    let mut bare_ciphertext = vec![0u8; bare_public.ciphertext_size()];
    let bare_ciphertext = bare_public
        .encrypt(
            &rsa::OAEP_SHA256_MGF1SHA256,
            &seed,
            &mut bare_ciphertext,
            None,
        )
        .expect("encrypt")
        .to_vec();
    let kms_ciphertext = ops::encrypt(
        &encrypt_key,
        &seed,
        &EncryptionContext::new(),
        EncryptionAlgorithm::RsaesOaepSha256,
    )
    .expect("encrypt");
    let rng = SystemRandom::new();
    let mut group = c.benchmark_group("rsa2048");
    group.sample_size(30);
    group.bench_function("bare_sign_pss_sha256", |b| {
        b.iter(|| {
            let mut sig = vec![0u8; bare_pair.public_modulus_len()];
            bare_pair
                .sign(&signature::RSA_PSS_SHA256, &rng, &message, &mut sig)
                .expect("sign");
            black_box(sig)
        });
    });
    group.bench_function("kms_sign_pss_sha256", |b| {
        b.iter(|| {
            black_box(
                ops::sign(
                    &sign_key,
                    &message,
                    MessageType::Raw,
                    SigningAlgorithm::RsassaPssSha256,
                )
                .expect("sign"),
            )
        });
    });
    group.bench_function("bare_decrypt_oaep_sha256", |b| {
        b.iter(|| {
            let mut out = vec![0u8; bare_decrypting.min_output_size()];
            let len = bare_decrypting
                .decrypt(
                    &rsa::OAEP_SHA256_MGF1SHA256,
                    &bare_ciphertext,
                    &mut out,
                    None,
                )
                .expect("decrypt")
                .len();
            black_box(len)
        });
    });
    group.bench_function("kms_decrypt_oaep_sha256", |b| {
        b.iter(|| {
            black_box(
                ops::decrypt(
                    &encrypt_key,
                    &kms_ciphertext,
                    &EncryptionContext::new(),
                    EncryptionAlgorithm::RsaesOaepSha256,
                )
                .expect("decrypt"),
            )
        });
    });
    group.finish();
}

fn ecdsa_p256(c: &mut Criterion) {
    let key = kms_key(KeySpec::EccNistP256, KeyUsage::SignVerify);
    let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(
        &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &SystemRandom::new(),
    )
    .expect("pkcs8");
    let bare = signature::EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        pkcs8.as_ref(),
    )
    .expect("pair");
    let bare_public = signature::UnparsedPublicKey::new(
        &signature::ECDSA_P256_SHA256_ASN1,
        bare.public_key().as_ref().to_vec(),
    );
    let message = [0x33u8; 64];
    let rng = SystemRandom::new();
    let bare_signature = bare.sign(&rng, &message).expect("sign").as_ref().to_vec();
    let kms_signature = ops::sign(
        &key,
        &message,
        MessageType::Raw,
        SigningAlgorithm::EcdsaSha256,
    )
    .expect("sign");
    let mut group = c.benchmark_group("ecdsa_p256");
    group.bench_function("bare_sign", |b| {
        b.iter(|| black_box(bare.sign(&rng, &message).expect("sign")))
    });
    group.bench_function("kms_sign", |b| {
        b.iter(|| {
            black_box(
                ops::sign(
                    &key,
                    &message,
                    MessageType::Raw,
                    SigningAlgorithm::EcdsaSha256,
                )
                .expect("sign"),
            )
        });
    });
    group.bench_function("bare_verify", |b| {
        b.iter(|| black_box(bare_public.verify(&message, &bare_signature).is_ok()))
    });
    group.bench_function("kms_verify", |b| {
        b.iter(|| {
            black_box(
                ops::verify(
                    &key,
                    &message,
                    MessageType::Raw,
                    &kms_signature,
                    SigningAlgorithm::EcdsaSha256,
                )
                .is_ok(),
            )
        });
    });
    group.finish();
}

fn hmac_sha256(c: &mut Criterion) {
    let key = kms_key(KeySpec::Hmac256, KeyUsage::GenerateVerifyMac);
    let bare = hmac::Key::new(hmac::HMAC_SHA256, &[5u8; 32]);
    let message = [0x44u8; 256];
    let mut group = c.benchmark_group("hmac_sha256");
    group.bench_function("bare_hmac", |b| {
        b.iter(|| black_box(hmac::sign(&bare, &message)))
    });
    group.bench_function("kms_generate_mac", |b| {
        b.iter(|| {
            black_box(ops::generate_mac(&key, &message, MacAlgorithm::HmacSha256).expect("mac"))
        });
    });
    group.finish();
}

fn median_ns(root: &Path, group: &str, id: &str) -> Option<f64> {
    let path = root.join(group).join(id).join("new").join("estimates.json");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    json["median"]["point_estimate"].as_f64()
}

fn criterion_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    target.join("criterion")
}

fn report_ratios() {
    let root = criterion_dir();
    println!(
        "\n{:<20} {:<28} {:>12} {:>12} {:>7}",
        "group", "operation", "primitive", "operation", "ratio"
    );
    for (group, primitive, operation) in PAIRS {
        if let (Some(base), Some(op)) = (
            median_ns(&root, group, primitive),
            median_ns(&root, group, operation),
        ) {
            println!(
                "{group:<20} {operation:<28} {:>10.0}ns {:>10.0}ns {:>6.2}x",
                base,
                op,
                op / base
            );
        }
    }
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    symmetric(&mut criterion);
    rsa2048(&mut criterion);
    ecdsa_p256(&mut criterion);
    hmac_sha256(&mut criterion);
    criterion.final_summary();
    report_ratios();
}
