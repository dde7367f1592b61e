//! Wycheproof vectors, valid and invalid, through the same kms-core primitives the KMS
//! operations use. A valid vector must succeed with the expected output, an invalid one
//! must make the operation fail (decrypt, verify, agree), and an acceptable one must do
//! what its family's rule says (see `AcceptableRule`). Each test prints how many vectors
//! ran (`hack/test.sh` greps the `wycheproof ` lines); run with `--show-output`.

use kms_core::primitives::{self, AesGcmKey, HmacKey, RsaPrivateKey, SignInput};
use kms_core::spec::HashAlgorithm;
use kms_core::{KeySpec, MacAlgorithm, SigningAlgorithm};
use wycheproof::TestResult;

/// What our primitive did with one vector.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    /// It returned an error.
    Rejected,
    /// It succeeded; `output_matches` is whether what it produced (plaintext, shared
    /// secret, tag, ciphertext) equals the vector's expected value. A verification
    /// produces nothing beyond its success, so it passes `true`.
    Accepted { output_matches: bool },
}

impl Outcome {
    fn of<T>(
        result: &Result<T, impl std::fmt::Debug>,
        output_matches: impl FnOnce(&T) -> bool,
    ) -> Self {
        match result {
            Ok(output) => Self::Accepted {
                output_matches: output_matches(output),
            },
            Err(_) => Self::Rejected,
        }
    }

    fn verified(ok: bool) -> Self {
        if ok {
            Self::Accepted {
                output_matches: true,
            }
        } else {
            Self::Rejected
        }
    }
}

/// What we do with an Acceptable vector. Wycheproof leaves the choice to the
/// implementation (a lenient DER parser, a legacy encoding); each family decides per flag,
/// and the test asserts that decision, so a change of behaviour in aws-lc-rs is noticed
/// instead of silently allowed either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AcceptableRule {
    /// We accept it, and the output must equal the expected value.
    Accept,
    /// We refuse it.
    Reject,
}

#[derive(Default)]
struct Tally {
    valid: usize,
    invalid: usize,
    acceptable_accepted: usize,
    acceptable_rejected: usize,
    skipped: usize,
}

impl Tally {
    /// Records one vector. Valid: accepted with the expected output. Invalid: rejected
    /// (the operation returned an error, whatever it would have produced). Acceptable: as
    /// `rule` says; `None` means the family has no decision for this vector, which fails,
    /// so new Acceptable vectors in a Wycheproof update get a decision before they pass.
    fn check(
        &mut self,
        family: &str,
        tc_id: usize,
        expected: &TestResult,
        outcome: Outcome,
        rule: Option<AcceptableRule>,
    ) {
        match expected {
            TestResult::Valid => {
                self.valid += 1;
                assert!(
                    matches!(
                        outcome,
                        Outcome::Accepted {
                            output_matches: true
                        }
                    ),
                    "{family} tcId {tc_id}: valid vector gave {outcome:?}"
                );
            }
            TestResult::Invalid => {
                self.invalid += 1;
                assert!(
                    matches!(outcome, Outcome::Rejected),
                    "{family} tcId {tc_id}: invalid vector accepted ({outcome:?})"
                );
            }
            TestResult::Acceptable => {
                let rule = rule.unwrap_or_else(|| {
                    panic!("{family} tcId {tc_id}: acceptable vector without a rule ({outcome:?})")
                });
                match rule {
                    AcceptableRule::Accept => {
                        self.acceptable_accepted += 1;
                        assert!(
                            matches!(
                                outcome,
                                Outcome::Accepted {
                                    output_matches: true
                                }
                            ),
                            "{family} tcId {tc_id}: acceptable vector we accept gave {outcome:?}"
                        );
                    }
                    AcceptableRule::Reject => {
                        self.acceptable_rejected += 1;
                        assert!(
                            matches!(outcome, Outcome::Rejected),
                            "{family} tcId {tc_id}: acceptable vector we refuse was accepted ({outcome:?})"
                        );
                    }
                }
            }
        }
    }

    fn report(&self, family: &str, minimum: usize) {
        let acceptable = self.acceptable_accepted + self.acceptable_rejected;
        let ran = self.valid + self.invalid + acceptable;
        println!(
            "wycheproof {family}: {ran} vectors ran ({} valid, {} invalid, {acceptable} acceptable: {} accepted, {} rejected), {} skipped",
            self.valid,
            self.invalid,
            self.acceptable_accepted,
            self.acceptable_rejected,
            self.skipped
        );
        assert!(
            ran >= minimum,
            "{family}: only {ran} vectors ran, expected at least {minimum}"
        );
        assert!(
            self.valid > 0 && self.invalid > 0,
            "{family}: needs both valid and invalid vectors"
        );
    }
}

#[test]
fn aes_gcm() {
    use wycheproof::aead::{TestName, TestSet};
    let set = TestSet::load(TestName::AesGcm).expect("AES-GCM vectors");
    let mut tally = Tally::default();
    for group in &set.test_groups {
        // AWS's SYMMETRIC_DEFAULT is AES-GCM with a 96-bit nonce and a 128-bit tag.
        let supported = group.nonce_size == 96
            && group.tag_size == 128
            && [128, 192, 256].contains(&group.key_size);
        for test in &group.tests {
            if !supported {
                tally.skipped += 1;
                continue;
            }
            let key = AesGcmKey::new(&test.key).expect("key size checked");
            // Decrypt is the operation under test: an Invalid vector must fail to open.
            // Sealing the expected plaintext must give the expected ciphertext and tag.
            let opened = key.open(&test.nonce, &test.aad, &test.ct, &test.tag);
            let mut nonce = [0u8; 12];
            nonce.copy_from_slice(&test.nonce);
            let (ct, tag) = key.seal(&nonce, &test.aad, &test.pt).expect("seal");
            let seal_matches = ct == *test.ct && tag.as_slice() == test.tag.as_slice();
            let outcome = Outcome::of(&opened, |pt| {
                pt.expose() == test.pt.as_slice() && seal_matches
            });
            // The 96-bit-nonce, 128-bit-tag groups hold no Acceptable vectors.
            tally.check("AES-GCM", test.tc_id, &test.result, outcome, None);
        }
    }
    tally.report("AES-GCM", 150);
}

#[test]
fn rsa_oaep() {
    use wycheproof::HashFunction;
    use wycheproof::rsa_oaep::{TestName, TestSet};
    let sets = [
        (TestName::Rsa2048Sha1Mgf1Sha1, "RSA-OAEP-2048-SHA1"),
        (TestName::Rsa2048Sha256Mgf1Sha256, "RSA-OAEP-2048-SHA256"),
        (TestName::Rsa3072Sha256Mgf1Sha256, "RSA-OAEP-3072-SHA256"),
        (TestName::Rsa4096Sha256Mgf1Sha256, "RSA-OAEP-4096-SHA256"),
    ];
    for (name, family) in sets {
        let set = TestSet::load(name).expect("OAEP vectors");
        let mut tally = Tally::default();
        for group in &set.test_groups {
            let hash = match (&group.hash, &group.mgf_hash) {
                (HashFunction::Sha1, HashFunction::Sha1) => HashAlgorithm::Sha1,
                (HashFunction::Sha2_256, HashFunction::Sha2_256) => HashAlgorithm::Sha256,
                _ => {
                    tally.skipped += group.tests.len();
                    continue;
                }
            };
            let key = RsaPrivateKey::from_pkcs8(&group.pkcs8).expect("wycheproof private key");
            for test in &group.tests {
                let label = (!test.label.is_empty()).then_some(test.label.as_slice());
                let result = key.decrypt_oaep_with_label(hash, &test.ct, label);
                let outcome = Outcome::of(&result, |pt| pt.expose() == test.pt.as_slice());
                // These sets hold no Acceptable vectors.
                tally.check(family, test.tc_id, &test.result, outcome, None);
            }
        }
        tally.report(family, 20);
    }
}

fn rsa_signing_algorithm(pss: bool, hash: &wycheproof::HashFunction) -> Option<SigningAlgorithm> {
    use SigningAlgorithm as S;
    use wycheproof::HashFunction as H;
    Some(match (pss, hash) {
        (true, H::Sha2_256) => S::RsassaPssSha256,
        (true, H::Sha2_384) => S::RsassaPssSha384,
        (true, H::Sha2_512) => S::RsassaPssSha512,
        (false, H::Sha2_256) => S::RsassaPkcs1V15Sha256,
        (false, H::Sha2_384) => S::RsassaPkcs1V15Sha384,
        (false, H::Sha2_512) => S::RsassaPkcs1V15Sha512,
        _ => return None,
    })
}

#[test]
fn rsa_pss() {
    use wycheproof::rsa_pss_verify::{TestName, TestSet};
    // AWS's RSASSA_PSS_SHA_* use MGF1 with the same hash and a salt as long as the hash.
    let sets = [
        TestName::RsaPss2048Sha256Mgf1SaltLen32,
        TestName::RsaPss2048Sha384Mgf1SaltLen48,
        TestName::RsaPss3072Sha256Mgf1SaltLen32,
        TestName::RsaPss4096Sha256Mgf1SaltLen32,
        TestName::RsaPss4096Sha384Mgf1SaltLen48,
        TestName::RsaPss4096Sha512Mgf1SaltLen64,
    ];
    let mut tally = Tally::default();
    for name in sets {
        let set = TestSet::load(name).expect("PSS vectors");
        for group in &set.test_groups {
            let Some(algorithm) = rsa_signing_algorithm(true, &group.hash) else {
                tally.skipped += group.tests.len();
                continue;
            };
            let spec = KeySpec::Rsa2048;
            for test in &group.tests {
                let ok = primitives::verify_signature(
                    spec,
                    &group.der,
                    algorithm,
                    SignInput::Raw(&test.msg),
                    &test.sig,
                )
                .is_ok();
                // These sets hold no Acceptable vectors.
                tally.check(
                    "RSA-PSS",
                    test.tc_id,
                    &test.result,
                    Outcome::verified(ok),
                    None,
                );
            }
        }
    }
    tally.report("RSA-PSS", 100);
}

/// PKCS#1 v1.5 signatures whose DigestInfo omits the NULL parameters of the hash
/// algorithm (RFC 8017 allows both forms, Wycheproof marks the short one Acceptable): aws-lc
/// requires the NULL, as AWS KMS produces it, so we refuse them.
fn pkcs1_acceptable_rule(
    flags: &[wycheproof::rsa_pkcs1_verify::TestFlag],
) -> Option<AcceptableRule> {
    use wycheproof::rsa_pkcs1_verify::TestFlag;
    flags
        .contains(&TestFlag::MissingNull)
        .then_some(AcceptableRule::Reject)
}

#[test]
fn rsa_pkcs1_v1_5_signatures() {
    use wycheproof::rsa_pkcs1_verify::{TestName, TestSet};
    let sets = [
        TestName::Rsa2048Sha256,
        TestName::Rsa2048Sha384,
        TestName::Rsa2048Sha512,
        TestName::Rsa3072Sha256,
        TestName::Rsa3072Sha384,
        TestName::Rsa3072Sha512,
        TestName::Rsa4096Sha256,
        TestName::Rsa4096Sha384,
        TestName::Rsa4096Sha512,
    ];
    let mut tally = Tally::default();
    for name in sets {
        let set = TestSet::load(name).expect("PKCS#1 vectors");
        for group in &set.test_groups {
            let Some(algorithm) = rsa_signing_algorithm(false, &group.hash) else {
                tally.skipped += group.tests.len();
                continue;
            };
            for test in &group.tests {
                let ok = primitives::verify_signature(
                    KeySpec::Rsa2048,
                    &group.der,
                    algorithm,
                    SignInput::Raw(&test.msg),
                    &test.sig,
                )
                .is_ok();
                tally.check(
                    "RSA-PKCS1-v1_5",
                    test.tc_id,
                    &test.result,
                    Outcome::verified(ok),
                    pkcs1_acceptable_rule(&test.flags),
                );
            }
        }
    }
    tally.report("RSA-PKCS1-v1_5", 500);
}

#[test]
fn ecdsa() {
    use wycheproof::ecdsa::{TestName, TestSet};
    let sets = [
        (
            TestName::EcdsaSecp256r1Sha256,
            KeySpec::EccNistP256,
            SigningAlgorithm::EcdsaSha256,
            "ECDSA-P256-SHA256",
        ),
        (
            TestName::EcdsaSecp384r1Sha384,
            KeySpec::EccNistP384,
            SigningAlgorithm::EcdsaSha384,
            "ECDSA-P384-SHA384",
        ),
        (
            TestName::EcdsaSecp521r1Sha512,
            KeySpec::EccNistP521,
            SigningAlgorithm::EcdsaSha512,
            "ECDSA-P521-SHA512",
        ),
        (
            TestName::EcdsaSecp256k1Sha256,
            KeySpec::EccSecgP256k1,
            SigningAlgorithm::EcdsaSha256,
            "ECDSA-secp256k1-SHA256",
        ),
    ];
    for (name, spec, algorithm, family) in sets {
        let set = TestSet::load(name).expect("ECDSA vectors");
        let mut tally = Tally::default();
        for group in &set.test_groups {
            for test in &group.tests {
                let ok = primitives::verify_signature(
                    spec,
                    &group.der,
                    algorithm,
                    SignInput::Raw(&test.msg),
                    &test.sig,
                )
                .is_ok();
                // These sets hold no Acceptable vectors.
                tally.check(
                    family,
                    test.tc_id,
                    &test.result,
                    Outcome::verified(ok),
                    None,
                );
            }
        }
        tally.report(family, 200);
    }
}

/// Wycheproof private scalars are ASN.1 integers: strip a sign byte, left-pad to the field size.
fn fixed_scalar(bytes: &[u8], len: usize) -> Option<Vec<u8>> {
    let trimmed: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
    if trimmed.len() > len {
        return None;
    }
    let mut out = vec![0u8; len - trimmed.len()];
    out.extend_from_slice(&trimmed);
    Some(out)
}

/// ECDH peer keys (DER SubjectPublicKeyInfo) that Wycheproof marks Acceptable:
/// - a compressed point on the right curve is a valid key: we accept it and derive the
///   expected secret;
/// - a non-DER encoding (long-form or padded lengths, ...) is refused: the parser is strict
///   DER, so one key has one encoding;
/// - explicit curve parameters instead of a named curve (even when they equal the named
///   curve's, or differ only in fields ECDH does not use) are refused: only the named
///   curve of the key's spec is accepted.
fn ecdh_acceptable_rule(flags: &[wycheproof::ecdh::TestFlag]) -> Option<AcceptableRule> {
    use wycheproof::ecdh::TestFlag;
    if flags.contains(&TestFlag::CompressedPublic) {
        Some(AcceptableRule::Accept)
    } else if flags.contains(&TestFlag::InvalidAsn) || flags.contains(&TestFlag::UnnamedCurve) {
        Some(AcceptableRule::Reject)
    } else {
        None
    }
}

#[test]
fn ecdh() {
    use wycheproof::ecdh::{TestName, TestSet};
    let sets = [
        (
            TestName::EcdhSecp256r1,
            KeySpec::EccNistP256,
            32,
            "ECDH-P256",
        ),
        (
            TestName::EcdhSecp384r1,
            KeySpec::EccNistP384,
            48,
            "ECDH-P384",
        ),
        (
            TestName::EcdhSecp521r1,
            KeySpec::EccNistP521,
            66,
            "ECDH-P521",
        ),
    ];
    for (name, spec, scalar_len, family) in sets {
        let set = TestSet::load(name).expect("ECDH vectors");
        let mut tally = Tally::default();
        for group in &set.test_groups {
            for test in &group.tests {
                let Some(scalar) = fixed_scalar(&test.private_key, scalar_len) else {
                    tally.skipped += 1;
                    continue;
                };
                let result = primitives::ecdh_raw_private(spec, &scalar, &test.public_key);
                let outcome = Outcome::of(&result, |s| s.expose() == test.shared_secret.as_slice());
                tally.check(
                    family,
                    test.tc_id,
                    &test.result,
                    outcome,
                    ecdh_acceptable_rule(&test.flags),
                );
            }
        }
        tally.report(family, 100);
    }
}

#[test]
fn hmac() {
    use wycheproof::mac::{TestName, TestSet};
    let sets = [
        (
            TestName::HmacSha224,
            MacAlgorithm::HmacSha224,
            224,
            "HMAC-SHA224",
        ),
        (
            TestName::HmacSha256,
            MacAlgorithm::HmacSha256,
            256,
            "HMAC-SHA256",
        ),
        (
            TestName::HmacSha384,
            MacAlgorithm::HmacSha384,
            384,
            "HMAC-SHA384",
        ),
        (
            TestName::HmacSha512,
            MacAlgorithm::HmacSha512,
            512,
            "HMAC-SHA512",
        ),
    ];
    for (name, algorithm, full_bits, family) in sets {
        let set = TestSet::load(name).expect("HMAC vectors");
        let mut tally = Tally::default();
        for group in &set.test_groups {
            // AWS MACs are never truncated: groups with shortened tags are out of scope.
            if group.tag_size != full_bits {
                tally.skipped += group.tests.len();
                continue;
            }
            for test in &group.tests {
                let key = HmacKey::new(algorithm, &test.key).expect("hmac key");
                // Verify is the operation under test: an Invalid tag must fail to verify.
                // Signing the message must give the expected tag.
                let verified = key.verify(&test.msg, &test.tag);
                let signed_matches = key.sign(&test.msg) == *test.tag;
                let outcome = Outcome::of(&verified, |()| signed_matches);
                // These sets hold no Acceptable vectors.
                tally.check(family, test.tc_id, &test.result, outcome, None);
            }
        }
        tally.report(family, 30);
    }
}
