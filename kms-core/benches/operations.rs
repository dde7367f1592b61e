//! Each KMS operation beside the bare aws-lc-rs primitive on the same input, so the cost of
//! the KMS layer (blob format, key derivation, checks) is a ratio.
//!
//! criterion measures every benchmark the filter selects, as usual. The ratio table that
//! follows is measured here, in this process, for the pairs of which criterion ran at least
//! one benchmark: the primitive and the operation are timed in alternating batches, so
//! both see the same machine load, and nothing is read from an earlier run (criterion's
//! `target/criterion/**/estimates.json` keeps the medians of every benchmark ever run, and
//! a filtered run would mix them in).

use std::hint::black_box;
use std::rc::Rc;
use std::time::{Duration, Instant};

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

/// One benchmark: criterion's id (`function` or `function/parameter` in its group) and the
/// routine both criterion and the ratio measurement call.
struct Bench {
    function: &'static str,
    parameter: Option<usize>,
    routine: Box<dyn FnMut()>,
    /// Set when criterion called this benchmark in this process (the filter selected it).
    ran: bool,
}

impl Bench {
    fn new(
        function: &'static str,
        parameter: Option<usize>,
        routine: impl FnMut() + 'static,
    ) -> Self {
        Self {
            function,
            parameter,
            routine: Box::new(routine),
            ran: false,
        }
    }

    fn name(&self) -> String {
        match self.parameter {
            Some(parameter) => format!("{}/{parameter}", self.function),
            None => self.function.to_owned(),
        }
    }
}

/// A KMS operation and the bare primitive it is compared with.
struct Pair {
    primitive: Bench,
    operation: Bench,
}

struct Group {
    name: &'static str,
    sample_size: Option<usize>,
    pairs: Vec<Pair>,
}

fn symmetric() -> [Group; 2] {
    let key = Rc::new(kms_key(KeySpec::SymmetricDefault, KeyUsage::EncryptDecrypt));
    let context = Rc::new(EncryptionContext::from_pairs([("app", "bench")]).expect("ctx"));
    let bare = Rc::new(aead::LessSafeKey::new(
        aead::UnboundKey::new(&aead::AES_256_GCM, &[7u8; 32]).expect("aes key"),
    ));
    let mut encrypt = Vec::new();
    let mut decrypt = Vec::new();
    for size in [32usize, 4096] {
        let plaintext = Rc::new(vec![0x42u8; size]);
        let seal = {
            let (bare, plaintext) = (Rc::clone(&bare), Rc::clone(&plaintext));
            move || {
                let mut nonce = [0u8; 12];
                aws_lc_rs::rand::fill(&mut nonce).expect("rng");
                let mut buffer = plaintext.to_vec();
                let tag = bare
                    .seal_in_place_separate_tag(
                        aead::Nonce::assume_unique_for_key(nonce),
                        aead::Aad::from(b"app:bench"),
                        &mut buffer,
                    )
                    .expect("seal");
                drop(black_box((buffer, tag)));
            }
        };
        let kms_encrypt = {
            let (key, context, plaintext) =
                (Rc::clone(&key), Rc::clone(&context), Rc::clone(&plaintext));
            move || {
                black_box(
                    ops::encrypt(
                        &key,
                        &plaintext,
                        &context,
                        EncryptionAlgorithm::SymmetricDefault,
                    )
                    .expect("encrypt"),
                );
            }
        };
        encrypt.push(Pair {
            primitive: Bench::new("aes_gcm_seal", Some(size), seal),
            operation: Bench::new("kms_encrypt", Some(size), kms_encrypt),
        });

        let nonce = [9u8; 12];
        let mut sealed = plaintext.to_vec();
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
        let open = {
            let bare = Rc::clone(&bare);
            move || {
                let mut buffer = sealed.clone();
                let len = bare
                    .open_in_place(
                        aead::Nonce::assume_unique_for_key(nonce),
                        aead::Aad::from(b"app:bench"),
                        &mut buffer,
                    )
                    .expect("open")
                    .len();
                black_box(len);
            }
        };
        let kms_decrypt = {
            let (key, context) = (Rc::clone(&key), Rc::clone(&context));
            move || {
                black_box(
                    ops::decrypt(&key, &blob, &context, EncryptionAlgorithm::SymmetricDefault)
                        .expect("decrypt"),
                );
            }
        };
        decrypt.push(Pair {
            primitive: Bench::new("aes_gcm_open", Some(size), open),
            operation: Bench::new("kms_decrypt", Some(size), kms_decrypt),
        });
    }
    [
        Group {
            name: "symmetric_encrypt",
            sample_size: None,
            pairs: encrypt,
        },
        Group {
            name: "symmetric_decrypt",
            sample_size: None,
            pairs: decrypt,
        },
    ]
}

fn rsa2048() -> Group {
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
    let encrypt_key = Rc::new(encrypt_key);
    let rng = SystemRandom::new();
    let bare_sign = move || {
        let mut sig = vec![0u8; bare_pair.public_modulus_len()];
        bare_pair
            .sign(&signature::RSA_PSS_SHA256, &rng, &message, &mut sig)
            .expect("sign");
        black_box(sig);
    };
    let kms_sign = move || {
        black_box(
            ops::sign(
                &sign_key,
                &message,
                MessageType::Raw,
                SigningAlgorithm::RsassaPssSha256,
            )
            .expect("sign"),
        );
    };
    let bare_decrypt = move || {
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
        black_box(len);
    };
    let kms_decrypt = move || {
        black_box(
            ops::decrypt(
                &encrypt_key,
                &kms_ciphertext,
                &EncryptionContext::new(),
                EncryptionAlgorithm::RsaesOaepSha256,
            )
            .expect("decrypt"),
        );
    };
    Group {
        name: "rsa2048",
        sample_size: Some(30),
        pairs: vec![
            Pair {
                primitive: Bench::new("bare_sign_pss_sha256", None, bare_sign),
                operation: Bench::new("kms_sign_pss_sha256", None, kms_sign),
            },
            Pair {
                primitive: Bench::new("bare_decrypt_oaep_sha256", None, bare_decrypt),
                operation: Bench::new("kms_decrypt_oaep_sha256", None, kms_decrypt),
            },
        ],
    }
}

fn ecdsa_p256() -> Group {
    let key = Rc::new(kms_key(KeySpec::EccNistP256, KeyUsage::SignVerify));
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
    let bare_sign = move || {
        black_box(bare.sign(&rng, &message).expect("sign"));
    };
    let kms_sign = {
        let key = Rc::clone(&key);
        move || {
            black_box(
                ops::sign(
                    &key,
                    &message,
                    MessageType::Raw,
                    SigningAlgorithm::EcdsaSha256,
                )
                .expect("sign"),
            );
        }
    };
    let bare_verify = move || {
        black_box(bare_public.verify(&message, &bare_signature).is_ok());
    };
    let kms_verify = move || {
        black_box(
            ops::verify(
                &key,
                &message,
                MessageType::Raw,
                &kms_signature,
                SigningAlgorithm::EcdsaSha256,
            )
            .is_ok(),
        );
    };
    Group {
        name: "ecdsa_p256",
        sample_size: None,
        pairs: vec![
            Pair {
                primitive: Bench::new("bare_sign", None, bare_sign),
                operation: Bench::new("kms_sign", None, kms_sign),
            },
            Pair {
                primitive: Bench::new("bare_verify", None, bare_verify),
                operation: Bench::new("kms_verify", None, kms_verify),
            },
        ],
    }
}

fn hmac_sha256() -> Group {
    let key = kms_key(KeySpec::Hmac256, KeyUsage::GenerateVerifyMac);
    let bare = hmac::Key::new(hmac::HMAC_SHA256, &[5u8; 32]);
    let message = [0x44u8; 256];
    let bare_hmac = move || {
        black_box(hmac::sign(&bare, &message));
    };
    let kms_generate_mac = move || {
        black_box(ops::generate_mac(&key, &message, MacAlgorithm::HmacSha256).expect("mac"));
    };
    Group {
        name: "hmac_sha256",
        sample_size: None,
        pairs: vec![Pair {
            primitive: Bench::new("bare_hmac", None, bare_hmac),
            operation: Bench::new("kms_generate_mac", None, kms_generate_mac),
        }],
    }
}

fn run_criterion(criterion: &mut Criterion, groups: &mut [Group]) {
    for group in groups {
        let mut benchmark_group = criterion.benchmark_group(group.name);
        if let Some(sample_size) = group.sample_size {
            benchmark_group.sample_size(sample_size);
        }
        for pair in &mut group.pairs {
            for bench in [&mut pair.primitive, &mut pair.operation] {
                let (function, parameter) = (bench.function, bench.parameter);
                let mut routine = |b: &mut criterion::Bencher<'_>| {
                    bench.ran = true;
                    b.iter(|| (bench.routine)());
                };
                // The ids of the earlier version of this bench, so criterion's saved
                // baselines still compare.
                match parameter {
                    Some(parameter) => benchmark_group
                        .bench_function(BenchmarkId::new(function, parameter), &mut routine),
                    None => benchmark_group.bench_function(function, &mut routine),
                };
            }
        }
        benchmark_group.finish();
    }
}

/// Interleaved rounds per pair; each round times one batch of each side.
const ROUNDS: usize = 21;
/// Shortest batch: long enough that timer resolution and one preemption matter little.
const MIN_BATCH: Duration = Duration::from_millis(10);

fn time_batch(routine: &mut dyn FnMut(), iterations: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iterations {
        routine();
    }
    start.elapsed()
}

/// How many calls make a batch of at least `MIN_BATCH` (the doubling also warms up).
fn batch_size(routine: &mut dyn FnMut()) -> u64 {
    let mut iterations = 1;
    while time_batch(routine, iterations) < MIN_BATCH {
        iterations *= 2;
    }
    iterations
}

fn per_call_ns(elapsed: Duration, iterations: u64) -> f64 {
    elapsed.as_secs_f64() * 1e9 / iterations as f64
}

/// The value at quantile `q` (0..=1) of sorted values, nearest rank.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index]
}

fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values
}

struct RatioEstimate {
    primitive_ns: f64,
    operation_ns: f64,
    /// Median, first and third quartile of the per-round ratios.
    ratio: (f64, f64, f64),
}

/// Times the two sides in alternating batches (the order flips every round), so a change of
/// machine load affects both; each round gives one ratio.
fn measure_pair(pair: &mut Pair) -> RatioEstimate {
    let primitive = &mut *pair.primitive.routine;
    let operation = &mut *pair.operation.routine;
    let primitive_iterations = batch_size(primitive);
    let operation_iterations = batch_size(operation);
    let mut primitive_ns = Vec::with_capacity(ROUNDS);
    let mut operation_ns = Vec::with_capacity(ROUNDS);
    let mut ratios = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let (p, o) = if round % 2 == 0 {
            let p = time_batch(primitive, primitive_iterations);
            (p, time_batch(operation, operation_iterations))
        } else {
            let o = time_batch(operation, operation_iterations);
            (time_batch(primitive, primitive_iterations), o)
        };
        let (p, o) = (
            per_call_ns(p, primitive_iterations),
            per_call_ns(o, operation_iterations),
        );
        primitive_ns.push(p);
        operation_ns.push(o);
        ratios.push(o / p);
    }
    let ratios = sorted(ratios);
    RatioEstimate {
        primitive_ns: quantile(&sorted(primitive_ns), 0.5),
        operation_ns: quantile(&sorted(operation_ns), 0.5),
        ratio: (
            quantile(&ratios, 0.5),
            quantile(&ratios, 0.25),
            quantile(&ratios, 0.75),
        ),
    }
}

fn report_ratios(groups: &mut [Group]) {
    let selected = groups
        .iter()
        .flat_map(|group| &group.pairs)
        .filter(|pair| pair.primitive.ran || pair.operation.ran)
        .count();
    if selected == 0 {
        println!("\nratio table: no benchmark ran in this invocation, nothing to compare");
        return;
    }
    println!(
        "\nratios measured now for the {selected} pair(s) this run selected \
         (operation / primitive per call, medians of {ROUNDS} alternating rounds of >= {} ms \
         batches; q1-q3 = quartiles of the per-round ratios)",
        MIN_BATCH.as_millis()
    );
    println!(
        "{:<20} {:<26} {:<26} {:>12} {:>12} {:>7} {:>13}",
        "group", "operation", "primitive", "primitive", "operation", "ratio", "q1-q3"
    );
    for group in groups {
        for pair in &mut group.pairs {
            if !(pair.primitive.ran || pair.operation.ran) {
                continue;
            }
            let estimate = measure_pair(pair);
            let (median, q1, q3) = estimate.ratio;
            println!(
                "{:<20} {:<26} {:<26} {:>10.0}ns {:>10.0}ns {:>6.2}x {:>13}",
                group.name,
                pair.operation.name(),
                pair.primitive.name(),
                estimate.primitive_ns,
                estimate.operation_ns,
                median,
                format!("{q1:.2}-{q3:.2}x"),
            );
        }
    }
}

/// Whether criterion measured (its own rule): `cargo bench` passes `--bench`; without it
/// (`cargo test --benches`) or with `--test` it runs each routine once to check it works,
/// `--list` only names them, `--profile-time` runs without analysis.
fn measuring() -> bool {
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|arg| arg == flag);
    has("--bench")
        && !has("--test")
        && !has("--list")
        && !args.iter().any(|arg| arg.starts_with("--profile-time"))
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    let [encrypt, decrypt] = symmetric();
    let mut groups = [encrypt, decrypt, rsa2048(), ecdsa_p256(), hmac_sha256()];
    run_criterion(&mut criterion, &mut groups);
    criterion.final_summary();
    if measuring() {
        report_ratios(&mut groups);
    } else {
        println!("ratio table skipped: not a measurement run (test, list or profile mode)");
    }
}
