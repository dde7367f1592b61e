//! Wycheproof vectors, valid and invalid, through the same kms-core primitives the KMS
//! operations use. Each test prints how many vectors ran; run with `--show-output`.

use kms_core::primitives::{self, AesGcmKey, HmacKey, RsaPrivateKey, SignInput};
use kms_core::spec::HashAlgorithm;
use kms_core::{KeySpec, MacAlgorithm, SigningAlgorithm};
use wycheproof::TestResult;

#[derive(Default)]
struct Tally {
    valid: usize,
    invalid: usize,
    acceptable: usize,
    skipped: usize,
}

impl Tally {
    /// Records one vector: `passed` is whether our primitive accepted it, `matched` whether
    /// the output equals the expected value when it did.
    fn check(
        &mut self,
        family: &str,
        tc_id: usize,
        expected: &TestResult,
        passed: bool,
        matched: bool,
    ) {
        match expected {
            TestResult::Valid => {
                self.valid += 1;
                assert!(
                    passed && matched,
                    "{family} tcId {tc_id}: valid vector rejected or mismatched"
                );
            }
            TestResult::Invalid => {
                self.invalid += 1;
                assert!(
                    !passed || !matched,
                    "{family} tcId {tc_id}: invalid vector accepted"
                );
            }
            TestResult::Acceptable => {
                self.acceptable += 1;
                assert!(
                    !passed || matched,
                    "{family} tcId {tc_id}: acceptable vector gave a wrong result"
                );
            }
        }
    }

    fn report(&self, family: &str, minimum: usize) {
        let ran = self.valid + self.invalid + self.acceptable;
        println!(
            "wycheproof {family}: {ran} vectors ran ({} valid, {} invalid, {} acceptable), {} skipped",
            self.valid, self.invalid, self.acceptable, self.skipped
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
            let opened = key.open(&test.nonce, &test.aad, &test.ct, &test.tag);
            let open_ok = opened
                .as_ref()
                .is_ok_and(|pt| pt.expose() == test.pt.as_slice());
            let mut nonce = [0u8; 12];
            nonce.copy_from_slice(&test.nonce);
            let (ct, tag) = key.seal(&nonce, &test.aad, &test.pt).expect("seal");
            let seal_matches = ct == *test.ct && tag.as_slice() == test.tag.as_slice();
            tally.check(
                "AES-GCM",
                test.tc_id,
                &test.result,
                opened.is_ok(),
                open_ok && seal_matches,
            );
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
                let matched = result
                    .as_ref()
                    .is_ok_and(|pt| pt.expose() == test.pt.as_slice());
                tally.check(family, test.tc_id, &test.result, result.is_ok(), matched);
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
                tally.check("RSA-PSS", test.tc_id, &test.result, ok, true);
            }
        }
    }
    tally.report("RSA-PSS", 100);
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
                tally.check("RSA-PKCS1-v1_5", test.tc_id, &test.result, ok, true);
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
                tally.check(family, test.tc_id, &test.result, ok, true);
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
                let matched = result
                    .as_ref()
                    .is_ok_and(|s| s.expose() == test.shared_secret.as_slice());
                tally.check(family, test.tc_id, &test.result, result.is_ok(), matched);
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
                let verified = key.verify(&test.msg, &test.tag).is_ok();
                let signed_matches = key.sign(&test.msg) == *test.tag;
                tally.check(family, test.tc_id, &test.result, verified, signed_matches);
            }
        }
        tally.report(family, 30);
    }
}
