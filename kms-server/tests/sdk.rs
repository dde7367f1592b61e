//! The AWS SDK for Rust against the real server on loopback: proof that an unchanged AWS
//! client accepts the wire format (requests, blobs, errors) and that SigV4 of the official
//! signer verifies.

mod common;

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{
    DataKeySpec, KeySpec, MacAlgorithmSpec, MessageType, SigningAlgorithmSpec,
};
use common::*;

#[tokio::test]
async fn encrypt_decrypt_with_context_and_without_key_id() {
    let h = start().await;
    let kms = h.app_client();
    let plaintext = b"sdk-plaintext-4f1c2b".to_vec();
    let encrypted = kms
        .encrypt()
        .key_id("alias/app")
        .plaintext(Blob::new(plaintext.clone()))
        .encryption_context("purpose", "sdk-test")
        .send()
        .await
        .expect("encrypt");
    assert_eq!(encrypted.key_id(), Some(h.keys.symmetric.arn_text()));
    assert_eq!(
        encrypted.encryption_algorithm().map(|a| a.as_str()),
        Some("SYMMETRIC_DEFAULT")
    );
    let blob = encrypted.ciphertext_blob().expect("blob").clone();

    let decrypted = kms
        .decrypt()
        .ciphertext_blob(blob.clone())
        .encryption_context("purpose", "sdk-test")
        .send()
        .await
        .expect("decrypt without KeyId: the blob names its key");
    assert_eq!(
        decrypted.plaintext().expect("plaintext").as_ref(),
        plaintext.as_slice()
    );
    assert_eq!(decrypted.key_id(), Some(h.keys.symmetric.arn_text()));

    let wrong_context = kms
        .decrypt()
        .ciphertext_blob(blob.clone())
        .encryption_context("purpose", "other")
        .send()
        .await
        .expect_err("context is bound");
    assert_eq!(
        wrong_context.into_service_error().meta().code(),
        Some("InvalidCiphertextException")
    );

    let wrong_key = kms
        .decrypt()
        .key_id(h.keys.second.arn_text())
        .ciphertext_blob(blob)
        .encryption_context("purpose", "sdk-test")
        .send()
        .await
        .expect_err("another key named");
    assert_eq!(
        wrong_key.into_service_error().meta().code(),
        Some("IncorrectKeyException")
    );
    h.stop().await;
}

#[tokio::test]
async fn data_keys_random_and_re_encrypt() {
    let h = start().await;
    let kms = h.app_client();
    let data_key = kms
        .generate_data_key()
        .key_id(h.keys.symmetric.arn_text())
        .key_spec(DataKeySpec::Aes256)
        .send()
        .await
        .expect("generate data key");
    let plaintext = data_key.plaintext().expect("plaintext").as_ref().to_vec();
    assert_eq!(plaintext.len(), 32);
    let decrypted = kms
        .decrypt()
        .ciphertext_blob(data_key.ciphertext_blob().expect("blob").clone())
        .send()
        .await
        .expect("decrypt data key");
    assert_eq!(
        decrypted.plaintext().expect("plaintext").as_ref(),
        plaintext.as_slice()
    );

    let without = kms
        .generate_data_key_without_plaintext()
        .key_id("alias/app")
        .number_of_bytes(16)
        .send()
        .await
        .expect("without plaintext");
    let reencrypted = kms
        .re_encrypt()
        .ciphertext_blob(without.ciphertext_blob().expect("blob").clone())
        .destination_key_id(h.keys.rsa_encrypt.arn_text())
        .destination_encryption_algorithm(
            aws_sdk_kms::types::EncryptionAlgorithmSpec::RsaesOaepSha256,
        )
        .send()
        .await
        .expect("re-encrypt to RSA");
    assert_eq!(reencrypted.key_id(), Some(h.keys.rsa_encrypt.arn_text()));
    assert_eq!(
        reencrypted.source_key_id(),
        Some(h.keys.symmetric.arn_text())
    );
    let back = kms
        .decrypt()
        .key_id(h.keys.rsa_encrypt.arn_text())
        .encryption_algorithm(aws_sdk_kms::types::EncryptionAlgorithmSpec::RsaesOaepSha256)
        .ciphertext_blob(reencrypted.ciphertext_blob().expect("blob").clone())
        .send()
        .await
        .expect("RSA decrypt");
    assert_eq!(back.plaintext().expect("plaintext").as_ref().len(), 16);

    let random = kms
        .generate_random()
        .number_of_bytes(64)
        .send()
        .await
        .expect("random");
    assert_eq!(random.plaintext().expect("bytes").as_ref().len(), 64);

    let pair = kms
        .generate_data_key_pair()
        .key_id("alias/app")
        .key_pair_spec(aws_sdk_kms::types::DataKeyPairSpec::EccNistP256)
        .send()
        .await
        .expect("pair");
    assert!(pair.private_key_plaintext().is_some() && pair.public_key().is_some());
    h.stop().await;
}

#[tokio::test]
async fn sign_verify_and_mac() {
    let h = start().await;
    let kms = h.app_client();
    for (key, algorithm) in [
        (&h.keys.ecc_sign, SigningAlgorithmSpec::EcdsaSha256),
        (&h.keys.rsa_sign, SigningAlgorithmSpec::RsassaPssSha256),
    ] {
        let message = Blob::new(b"sdk-message-to-sign".to_vec());
        let signed = kms
            .sign()
            .key_id(key.arn_text())
            .message(message.clone())
            .message_type(MessageType::Raw)
            .signing_algorithm(algorithm.clone())
            .send()
            .await
            .expect("sign");
        let signature = signed.signature().expect("signature").clone();
        let verified = kms
            .verify()
            .key_id(key.arn_text())
            .message(message.clone())
            .signature(signature.clone())
            .signing_algorithm(algorithm.clone())
            .send()
            .await
            .expect("verify");
        assert!(verified.signature_valid());
        let mut bad = signature.into_inner();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let error = kms
            .verify()
            .key_id(key.arn_text())
            .message(message)
            .signature(Blob::new(bad))
            .signing_algorithm(algorithm)
            .send()
            .await
            .expect_err("tampered signature");
        assert_eq!(
            error.into_service_error().meta().code(),
            Some("KMSInvalidSignatureException")
        );
    }
    let public = kms
        .get_public_key()
        .key_id(h.keys.ecc_sign.arn_text())
        .send()
        .await
        .expect("public key");
    assert_eq!(public.key_spec(), Some(&KeySpec::EccNistP256));

    let mac = kms
        .generate_mac()
        .key_id(h.keys.hmac.arn_text())
        .message(Blob::new(b"sdk-mac-message".to_vec()))
        .mac_algorithm(MacAlgorithmSpec::HmacSha256)
        .send()
        .await
        .expect("mac");
    let verified = kms
        .verify_mac()
        .key_id(h.keys.hmac.arn_text())
        .message(Blob::new(b"sdk-mac-message".to_vec()))
        .mac(mac.mac().expect("mac").clone())
        .mac_algorithm(MacAlgorithmSpec::HmacSha256)
        .send()
        .await
        .expect("verify mac");
    assert!(verified.mac_valid());
    h.stop().await;
}

#[tokio::test]
async fn describe_list_and_errors_as_the_sdk_sees_them() {
    let h = start().await;
    let kms = h.app_client();
    let described = kms
        .describe_key()
        .key_id("alias/app")
        .send()
        .await
        .expect("describe");
    let metadata = described.key_metadata().expect("metadata");
    assert_eq!(metadata.arn(), Some(h.keys.symmetric.arn_text()));
    assert_eq!(
        metadata.key_id(),
        h.keys.symmetric.key().key_id().to_string()
    );
    assert!(metadata.enabled());
    assert!(metadata.creation_date().is_some());

    let keys = kms.list_keys().send().await.expect("list keys");
    let listed: Vec<_> = keys.keys().iter().filter_map(|k| k.key_id()).collect();
    assert!(listed.contains(&h.keys.symmetric.key().key_id().to_string().as_str()));
    assert!(
        !listed.contains(&h.keys.served.key().key_id().to_string().as_str()),
        "a key served to kube-apiserver is not listed"
    );
    assert!(
        !listed.contains(&h.keys.foreign.key().key_id().to_string().as_str()),
        "another namespace's key is not listed"
    );
    let aliases = kms.list_aliases().send().await.expect("aliases");
    let names: Vec<_> = aliases
        .aliases()
        .iter()
        .filter_map(|a| a.alias_name())
        .collect();
    assert_eq!(names, ["alias/app"]);
    let status = kms
        .get_key_rotation_status()
        .key_id("alias/app")
        .send()
        .await
        .expect("rotation");
    assert!(!status.key_rotation_enabled());

    let cases: Vec<(&str, String)> = vec![
        ("NotFoundException", "alias/missing".to_owned()),
        (
            "NotFoundException",
            h.keys.foreign.key().key_id().to_string(),
        ),
        ("NotFoundException", h.keys.foreign.arn_text().to_owned()),
        ("DisabledException", h.keys.disabled.arn_text().to_owned()),
        (
            "UnsupportedOperationException",
            h.keys.served.arn_text().to_owned(),
        ),
        (
            "UnsupportedOperationException",
            "alias/apiserver".to_owned(),
        ),
        (
            "InvalidKeyUsageException",
            h.keys.hmac.arn_text().to_owned(),
        ),
    ];
    for (expected, key_id) in cases {
        let error = kms
            .encrypt()
            .key_id(&key_id)
            .plaintext(Blob::new(b"x".to_vec()))
            .send()
            .await
            .expect_err(&key_id);
        let error = error.into_service_error();
        assert_eq!(error.meta().code(), Some(expected), "{key_id}: {error:?}");
    }
    let reserved = kms
        .encrypt()
        .key_id("alias/app")
        .plaintext(Blob::new(b"x".to_vec()))
        .encryption_context("kubekms:purpose", "dek-seed")
        .send()
        .await
        .expect_err("reserved prefix");
    assert_eq!(
        reserved.into_service_error().meta().code(),
        Some("ValidationException")
    );

    let dry_run = kms
        .encrypt()
        .key_id("alias/app")
        .plaintext(Blob::new(b"x".to_vec()))
        .dry_run(true)
        .send()
        .await
        .expect_err("dry run");
    assert_eq!(
        dry_run.into_service_error().meta().code(),
        Some("DryRunOperationException")
    );

    let bad_secret = h.kms_client(ACCESS_KEY, "not-the-secret-0123456789", None);
    let error = bad_secret.list_keys().send().await.expect_err("bad secret");
    assert_eq!(
        error.into_service_error().meta().code(),
        Some("InvalidSignatureException")
    );
    let unknown = h.kms_client("AKIAUNKNOWNKEY000000", SECRET_KEY, None);
    let error = unknown.list_keys().send().await.expect_err("unknown key");
    assert_eq!(
        error.into_service_error().meta().code(),
        Some("UnrecognizedClientException")
    );
    h.stop().await;
}

#[tokio::test]
async fn access_denied_names_caller_and_verb_only() {
    let h = start().await;
    let other = h.kms_client(OTHER_ACCESS_KEY, OTHER_SECRET_KEY, None);
    let error = other
        .encrypt()
        .key_id("alias/app")
        .plaintext(Blob::new(b"x".to_vec()))
        .send()
        .await
        .expect_err("no rule for other");
    let error = error.into_service_error();
    assert_eq!(error.meta().code(), Some("AccessDeniedException"));
    let message = error.meta().message().expect("message");
    assert!(
        message.contains("system:serviceaccount:team-a:other"),
        "{message}"
    );
    assert!(message.contains("encrypt"), "{message}");
    assert!(
        !message.contains("no rule or grant"),
        "the reason stays in the audit: {message}"
    );
    let audit = h.stop().await;
    assert!(audit.contains("no rule or grant allows encrypt"), "{audit}");
}
