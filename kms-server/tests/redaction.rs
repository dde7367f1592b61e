//! No plaintext, data key, signature input, ciphertext, secret or session token reaches the
//! audit log or the server's logs, for a run of every operation.
//!
//! Alone in its test binary: it captures logs with a thread-local subscriber
//! (`set_default`), and tracing caches each call site's interest process-wide, so tests
//! running beside it on other threads without a subscriber could make the server's call
//! sites look uninteresting and its log lines vanish (seen as a flaky "nothing logged").

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use aws_sdk_kms::primitives::Blob;
use base64::Engine as _;
use common::*;

#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn variants(secret: &[u8]) -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = vec![b64.encode(secret), hex::encode(secret)];
    if let Ok(text) = std::str::from_utf8(secret) {
        out.push(text.to_owned());
    }
    // A base64 substring that does not depend on alignment within a larger blob.
    out.retain(|v| v.len() >= 8);
    out
}

#[tokio::test]
async fn no_secret_reaches_the_audit_or_the_logs() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    // Everything at TRACE, except the AWS SDK's own client-side logs (the test's client runs
    // on this thread and logs its request bodies at TRACE; they are not the server's).
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    let subscriber = tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .with_writer(move || writer.clone())
            .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                !m.target().starts_with("aws_")
            }))
            .with_filter(tracing_subscriber::filter::LevelFilter::TRACE),
    );
    let _guard = tracing::subscriber::set_default(subscriber);

    let h = start().await;
    let kms = h.app_client();
    let mut secrets: Vec<Vec<u8>> = Vec::new();
    let plaintext = b"PLAINTEXT-CANARY-7d1e9a".to_vec();
    let message = b"MESSAGE-CANARY-c4b8f2".to_vec();
    secrets.push(plaintext.clone());
    secrets.push(message.clone());

    let encrypted = kms
        .encrypt()
        .key_id("alias/app")
        .plaintext(Blob::new(plaintext.clone()))
        .encryption_context("tenant", "visible-context")
        .send()
        .await
        .expect("encrypt");
    let blob = encrypted.ciphertext_blob().expect("blob").as_ref().to_vec();
    secrets.push(blob.clone());
    let decrypted = kms
        .decrypt()
        .ciphertext_blob(Blob::new(blob.clone()))
        .encryption_context("tenant", "visible-context")
        .send()
        .await
        .expect("decrypt");
    assert_eq!(
        decrypted.plaintext().expect("pt").as_ref(),
        plaintext.as_slice()
    );
    let re = kms
        .re_encrypt()
        .ciphertext_blob(Blob::new(blob.clone()))
        .source_encryption_context("tenant", "visible-context")
        .destination_key_id(h.keys.second.arn_text())
        .send()
        .await
        .expect("re-encrypt");
    secrets.push(re.ciphertext_blob().expect("blob").as_ref().to_vec());
    let data_key = kms
        .generate_data_key()
        .key_id("alias/app")
        .number_of_bytes(32)
        .send()
        .await
        .expect("gdk");
    secrets.push(data_key.plaintext().expect("pt").as_ref().to_vec());
    secrets.push(data_key.ciphertext_blob().expect("ct").as_ref().to_vec());
    let without = kms
        .generate_data_key_without_plaintext()
        .key_id("alias/app")
        .number_of_bytes(32)
        .send()
        .await
        .expect("gdkwp");
    secrets.push(without.ciphertext_blob().expect("ct").as_ref().to_vec());
    let pair = kms
        .generate_data_key_pair()
        .key_id("alias/app")
        .key_pair_spec(aws_sdk_kms::types::DataKeyPairSpec::EccNistP256)
        .send()
        .await
        .expect("pair");
    secrets.push(
        pair.private_key_plaintext()
            .expect("private")
            .as_ref()
            .to_vec(),
    );
    let pair = kms
        .generate_data_key_pair_without_plaintext()
        .key_id("alias/app")
        .key_pair_spec(aws_sdk_kms::types::DataKeyPairSpec::EccNistP256)
        .send()
        .await
        .expect("pair wp");
    secrets.push(
        pair.private_key_ciphertext_blob()
            .expect("ct")
            .as_ref()
            .to_vec(),
    );
    let random = kms
        .generate_random()
        .number_of_bytes(32)
        .send()
        .await
        .expect("random");
    secrets.push(random.plaintext().expect("random").as_ref().to_vec());
    kms.get_public_key()
        .key_id(h.keys.ecc_sign.arn_text())
        .send()
        .await
        .expect("public key");
    let signature = kms
        .sign()
        .key_id(h.keys.ecc_sign.arn_text())
        .message(Blob::new(message.clone()))
        .signing_algorithm(aws_sdk_kms::types::SigningAlgorithmSpec::EcdsaSha256)
        .send()
        .await
        .expect("sign");
    secrets.push(signature.signature().expect("sig").as_ref().to_vec());
    kms.verify()
        .key_id(h.keys.ecc_sign.arn_text())
        .message(Blob::new(message.clone()))
        .signature(signature.signature().expect("sig").clone())
        .signing_algorithm(aws_sdk_kms::types::SigningAlgorithmSpec::EcdsaSha256)
        .send()
        .await
        .expect("verify");
    let mac = kms
        .generate_mac()
        .key_id(h.keys.hmac.arn_text())
        .message(Blob::new(message.clone()))
        .mac_algorithm(aws_sdk_kms::types::MacAlgorithmSpec::HmacSha256)
        .send()
        .await
        .expect("mac");
    secrets.push(mac.mac().expect("mac").as_ref().to_vec());
    kms.verify_mac()
        .key_id(h.keys.hmac.arn_text())
        .message(Blob::new(message.clone()))
        .mac(mac.mac().expect("mac").clone())
        .mac_algorithm(aws_sdk_kms::types::MacAlgorithmSpec::HmacSha256)
        .send()
        .await
        .expect("verify mac");
    let peer = kms_core::primitives::generate_private_key_pkcs8(kms_core::KeySpec::EccNistP256)
        .expect("peer");
    let peer_public =
        kms_core::primitives::public_key_of(kms_core::KeySpec::EccNistP256, peer.expose())
            .expect("pub");
    let shared = kms
        .derive_shared_secret()
        .key_id(h.keys.ecc_agree.arn_text())
        .key_agreement_algorithm(aws_sdk_kms::types::KeyAgreementAlgorithmSpec::Ecdh)
        .public_key(Blob::new(peer_public))
        .send()
        .await
        .expect("derive");
    secrets.push(shared.shared_secret().expect("secret").as_ref().to_vec());
    kms.describe_key()
        .key_id("alias/app")
        .send()
        .await
        .expect("describe");
    kms.list_keys().send().await.expect("list keys");
    kms.list_aliases().send().await.expect("list aliases");
    kms.list_grants()
        .key_id("alias/app")
        .send()
        .await
        .expect("list grants");
    kms.get_key_rotation_status()
        .key_id("alias/app")
        .send()
        .await
        .expect("rotation");
    kms.list_key_rotations()
        .key_id("alias/app")
        .send()
        .await
        .expect("rotations");
    kms.list_resource_tags()
        .key_id("alias/app")
        .send()
        .await
        .expect("tags");
    // Failures log too: a wrong context and a bad signature.
    let _ = kms
        .decrypt()
        .ciphertext_blob(Blob::new(blob.clone()))
        .send()
        .await
        .expect_err("no context");
    let _ = kms
        .verify()
        .key_id(h.keys.ecc_sign.arn_text())
        .message(Blob::new(b"MESSAGE-CANARY-other".to_vec()))
        .signature(signature.signature().expect("sig").clone())
        .signing_algorithm(aws_sdk_kms::types::SigningAlgorithmSpec::EcdsaSha256)
        .send()
        .await
        .expect_err("bad sig");
    let bad = h.kms_client(ACCESS_KEY, "WRONG-SECRET-CANARY-0123456789", None);
    let _ = bad.list_keys().send().await.expect_err("bad secret");
    secrets.push(b"WRONG-SECRET-CANARY".to_vec());
    secrets.push(SECRET_KEY.as_bytes().to_vec());

    let symmetric_arn = h.keys.symmetric.arn_text().to_owned();
    let audit = h.stop().await;
    let logs = String::from_utf8(logs.0.lock().expect("lock").clone()).expect("utf8");
    let records: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(records.len(), 24, "one record per request");
    let names: std::collections::BTreeSet<_> = records
        .iter()
        .filter_map(|r| r["eventName"].as_str())
        .collect();
    for op in kubekms_server::protocol::operation::ApiOperation::ALL {
        assert!(names.contains(op.as_str()), "no audit record of {op}");
    }
    assert!(
        audit.contains("visible-context"),
        "the encryption context is recorded"
    );
    assert!(audit.contains(&symmetric_arn), "the key ARN is recorded");
    assert!(
        logs.contains("kubekms_server"),
        "the server logged something to grep: {logs}"
    );
    for secret in &secrets {
        for form in variants(secret) {
            assert!(!audit.contains(&form), "audit holds a secret: {form}");
            let line = logs.lines().find(|l| l.contains(&form));
            assert!(line.is_none(), "logs hold a secret: {line:?}");
        }
    }
}
