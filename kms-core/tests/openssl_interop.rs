//! Interoperability with an independent implementation, the `openssl` command line:
//! signatures made here verify with openssl and openssl's verify here; RSA-OAEP ciphertexts
//! made by `openssl pkeyutl` decrypt here; ECDH agrees with openssl's; HMACs match.

mod common;

use std::path::Path;
use std::process::Command;

use common::{key, key_with_material};
use kms_core::ops;
use kms_core::primitives::{self, SignInput};
use kms_core::spec::HashAlgorithm;
use kms_core::{
    EncryptionAlgorithm, EncryptionContext, KeyAgreementAlgorithm, KeyMaterial, KeySpec, KeyUsage,
    MacAlgorithm, MessageType, SecretBytes, SigningAlgorithm,
};

fn openssl(args: &[&str]) -> Vec<u8> {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl (install the openssl package)");
    assert!(
        output.status.success(),
        "openssl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

fn digest_name(hash: HashAlgorithm) -> &'static str {
    match hash {
        HashAlgorithm::Sha1 => "sha1",
        HashAlgorithm::Sha224 => "sha224",
        HashAlgorithm::Sha256 => "sha256",
        HashAlgorithm::Sha384 => "sha384",
        HashAlgorithm::Sha512 => "sha512",
    }
}

fn is_pss(algorithm: SigningAlgorithm) -> bool {
    algorithm.as_str().starts_with("RSASSA_PSS")
}

/// `openssl dgst` arguments selecting the signature scheme AWS uses for `algorithm`.
fn scheme_args(algorithm: SigningAlgorithm) -> Vec<String> {
    let mut args = vec![format!("-{}", digest_name(algorithm.hash()))];
    if is_pss(algorithm) {
        for opt in ["rsa_padding_mode:pss", "rsa_pss_saltlen:digest"] {
            args.push("-sigopt".into());
            args.push(opt.into());
        }
        args.push("-sigopt".into());
        args.push(format!("rsa_mgf1_md:{}", digest_name(algorithm.hash())));
    }
    args
}

fn der_public_to_pem(dir: &Path, name: &str, der: &[u8]) -> std::path::PathBuf {
    let der_path = dir.join(format!("{name}.der"));
    let pem_path = dir.join(format!("{name}.pem"));
    std::fs::write(&der_path, der).expect("write der");
    openssl(&[
        "pkey",
        "-pubin",
        "-inform",
        "DER",
        "-in",
        path_str(&der_path),
        "-out",
        path_str(&pem_path),
    ]);
    pem_path
}

#[test]
fn signatures_made_here_verify_with_openssl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let message_path = dir.path().join("message");
    let message = b"KubeKMS signs this message for openssl to verify";
    std::fs::write(&message_path, message).expect("write message");
    let mut checked = 0;
    for spec in [
        KeySpec::Rsa2048,
        KeySpec::Rsa3072,
        KeySpec::Rsa4096,
        KeySpec::EccNistP256,
        KeySpec::EccNistP384,
        KeySpec::EccNistP521,
        KeySpec::EccSecgP256k1,
    ] {
        let signer = key(spec, KeyUsage::SignVerify);
        let public = ops::get_public_key(&signer).expect("public key");
        let pem = der_public_to_pem(dir.path(), spec.as_str(), &public.public_key);
        for algorithm in public.signing_algorithms.iter().copied() {
            for message_type in [MessageType::Raw, MessageType::Digest] {
                let input = match message_type {
                    MessageType::Raw => message.to_vec(),
                    MessageType::Digest => primitives::hash(algorithm.hash(), message),
                };
                let signature = ops::sign(&signer, &input, message_type, algorithm).expect("sign");
                let signature_path = dir.path().join("signature");
                std::fs::write(&signature_path, &signature).expect("write signature");
                let mut args: Vec<String> = vec!["dgst".into()];
                args.extend(scheme_args(algorithm));
                args.extend([
                    "-verify".into(),
                    path_str(&pem).into(),
                    "-signature".into(),
                    path_str(&signature_path).into(),
                    path_str(&message_path).into(),
                ]);
                let out = openssl(&args.iter().map(String::as_str).collect::<Vec<_>>());
                assert!(
                    String::from_utf8_lossy(&out).contains("Verified OK"),
                    "{spec} {algorithm} {message_type}"
                );
                checked += 1;
            }
        }
    }
    println!("openssl verified {checked} KubeKMS signatures");
    assert_eq!(checked, 3 * 6 * 2 + 4 * 2);
}

#[test]
fn openssl_signatures_verify_here() {
    let dir = tempfile::tempdir().expect("tempdir");
    let message_path = dir.path().join("message");
    let message = b"openssl signs, KubeKMS verifies";
    std::fs::write(&message_path, message).expect("write message");
    for (spec, genpkey) in [
        (
            KeySpec::Rsa2048,
            vec!["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        ),
        (
            KeySpec::EccNistP256,
            vec!["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        ),
        (
            KeySpec::EccSecgP256k1,
            vec![
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:secp256k1",
            ],
        ),
    ] {
        let private_path = dir.path().join(format!("{spec}.key"));
        let mut args = vec!["genpkey"];
        args.extend(genpkey);
        args.extend(["-out", path_str(&private_path)]);
        openssl(&args);
        let public = openssl(&[
            "pkey",
            "-in",
            path_str(&private_path),
            "-pubout",
            "-outform",
            "DER",
        ]);
        for algorithm in spec.signing_algorithms().iter().copied() {
            let signature_path = dir.path().join("sig");
            let mut args: Vec<String> = vec!["dgst".into()];
            args.extend(scheme_args(algorithm));
            args.extend([
                "-sign".into(),
                path_str(&private_path).into(),
                "-out".into(),
                path_str(&signature_path).into(),
                path_str(&message_path).into(),
            ]);
            openssl(&args.iter().map(String::as_str).collect::<Vec<_>>());
            let signature = std::fs::read(&signature_path).expect("read signature");
            primitives::verify_signature(
                spec,
                &public,
                algorithm,
                SignInput::Raw(message),
                &signature,
            )
            .unwrap_or_else(|e| panic!("{spec} {algorithm}: {e}"));
            let mut tampered = signature.clone();
            tampered[4] ^= 1;
            assert!(
                primitives::verify_signature(
                    spec,
                    &public,
                    algorithm,
                    SignInput::Raw(message),
                    &tampered
                )
                .is_err()
            );
        }
    }
}

#[test]
fn openssl_rsa_oaep_ciphertexts_decrypt_here() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plaintext_path = dir.path().join("plaintext");
    let plaintext = b"a data key encrypted by openssl pkeyutl";
    std::fs::write(&plaintext_path, plaintext).expect("write plaintext");
    for spec in [KeySpec::Rsa2048, KeySpec::Rsa3072, KeySpec::Rsa4096] {
        let rsa = key(spec, KeyUsage::EncryptDecrypt);
        let pem = der_public_to_pem(
            dir.path(),
            spec.as_str(),
            &ops::get_public_key(&rsa).expect("public").public_key,
        );
        for (algorithm, md) in [
            (EncryptionAlgorithm::RsaesOaepSha1, "sha1"),
            (EncryptionAlgorithm::RsaesOaepSha256, "sha256"),
        ] {
            let ciphertext = openssl(&[
                "pkeyutl",
                "-encrypt",
                "-pubin",
                "-inkey",
                path_str(&pem),
                "-in",
                path_str(&plaintext_path),
                "-pkeyopt",
                "rsa_padding_mode:oaep",
                "-pkeyopt",
                &format!("rsa_oaep_md:{md}"),
                "-pkeyopt",
                &format!("rsa_mgf1_md:{md}"),
            ]);
            let (plain, _) = ops::decrypt(&rsa, &ciphertext, &EncryptionContext::new(), algorithm)
                .expect("decrypt openssl ciphertext");
            assert_eq!(plain.expose(), plaintext, "{spec} {algorithm}");
        }
    }
}

#[test]
fn ecdh_agrees_with_openssl() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (spec, curve) in [
        (KeySpec::EccNistP256, "P-256"),
        (KeySpec::EccNistP384, "P-384"),
        (KeySpec::EccNistP521, "P-521"),
    ] {
        let ours = key(spec, KeyUsage::KeyAgreement);
        let our_public = der_public_to_pem(
            dir.path(),
            spec.as_str(),
            &ops::get_public_key(&ours).expect("public").public_key,
        );
        let peer_private = dir.path().join(format!("peer-{curve}.key"));
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            &format!("ec_paramgen_curve:{curve}"),
            "-pkeyopt",
            "ec_param_enc:named_curve",
            "-out",
            path_str(&peer_private),
        ]);
        let peer_public = openssl(&[
            "pkey",
            "-in",
            path_str(&peer_private),
            "-pubout",
            "-outform",
            "DER",
        ]);
        let theirs = openssl(&[
            "pkeyutl",
            "-derive",
            "-inkey",
            path_str(&peer_private),
            "-peerkey",
            path_str(&our_public),
        ]);
        let here = ops::derive_shared_secret(&ours, KeyAgreementAlgorithm::Ecdh, &peer_public)
            .expect("derive");
        assert_eq!(here.expose(), theirs.as_slice(), "{spec}");
    }
}

#[test]
fn hmac_matches_openssl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let message_path = dir.path().join("message");
    std::fs::write(&message_path, b"mac me").expect("write");
    for spec in [
        KeySpec::Hmac224,
        KeySpec::Hmac256,
        KeySpec::Hmac384,
        KeySpec::Hmac512,
    ] {
        let len = spec.hmac_key_len().expect("hmac len");
        let raw: Vec<u8> = (0..len)
            .map(|i| u8::try_from(i * 7 % 251).expect("byte"))
            .collect();
        let material =
            KeyMaterial::from_serialized(spec, SecretBytes::from_slice(&raw)).expect("material");
        let mac_key = key_with_material(spec, KeyUsage::GenerateVerifyMac, material);
        let algorithm: MacAlgorithm = spec.mac_algorithms()[0];
        let ours = ops::generate_mac(&mac_key, b"mac me", algorithm).expect("mac");
        let hex_key: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let theirs = openssl(&[
            "dgst",
            &format!("-{}", digest_name(algorithm.hash())),
            "-mac",
            "HMAC",
            "-macopt",
            &format!("hexkey:{hex_key}"),
            "-binary",
            path_str(&message_path),
        ]);
        assert_eq!(ours, theirs, "{spec}");
    }
}

#[test]
fn data_key_pairs_are_standard_pkcs8_and_spki() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sym = key(KeySpec::SymmetricDefault, KeyUsage::EncryptDecrypt);
    for pair_spec in kms_core::DataKeyPairSpec::ALL.iter().copied() {
        let pair = ops::generate_data_key_pair(&sym, pair_spec, &EncryptionContext::new(), true)
            .expect("pair");
        let private_path = dir.path().join("private.der");
        std::fs::write(
            &private_path,
            pair.private_key_plaintext.expect("private").expose(),
        )
        .expect("write");
        let public_from_openssl = openssl(&[
            "pkey",
            "-inform",
            "DER",
            "-in",
            path_str(&private_path),
            "-pubout",
            "-outform",
            "DER",
        ]);
        assert_eq!(public_from_openssl, pair.public_key, "{pair_spec}");
    }
}
