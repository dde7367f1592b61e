//! STS with the AWS SDK for Rust (AssumeRoleWithWebIdentity, then KMS with the session),
//! and the audit/log redaction run of every operation.

mod common;

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use aws_sdk_kms::primitives::Blob;
use base64::Engine as _;
use common::*;

fn jwt(exp: i64) -> String {
    let claims = format!(
        r#"{{"iss":"https://kubernetes.default.svc","sub":"system:serviceaccount:team-a:web","aud":["kubekms"],"exp":{exp}}}"#
    );
    format!(
        "eyJhbGciOiJSUzI1NiJ9.{}.c2lnbmF0dXJlLXNlY3JldA",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims)
    )
}

async fn assume(h: &Harness, token: &str) -> Result<aws_sdk_sts::types::Credentials, String> {
    let config = aws_sdk_sts::Config::builder()
        .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
        .region(aws_sdk_sts::config::Region::new(REGION))
        .endpoint_url(h.endpoint())
        .build();
    let sts = aws_sdk_sts::Client::from_conf(config);
    sts.assume_role_with_web_identity()
        .role_arn("arn:aws:iam::111122223333:role/kubekms")
        .role_session_name("web-session")
        .web_identity_token(token)
        .duration_seconds(900)
        .send()
        .await
        .map_err(|e| {
            e.into_service_error()
                .meta()
                .code()
                .unwrap_or("?")
                .to_owned()
        })
        .map(|out| out.credentials().expect("credentials").clone())
}

#[tokio::test]
async fn web_identity_session_with_the_sdk() {
    let h = start().await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    // The ServiceAccount token expires in 2 minutes: the session may not outlive it.
    let token = jwt(now + 120);
    h.reviewer
        .add_service_account(&token, NAMESPACE, "web", "kubekms");
    h.authorizer
        .allow_all("system:serviceaccount:team-a:web", NAMESPACE);

    assert_eq!(
        assume(&h, &jwt(now + 3601)).await.err().as_deref(),
        Some("InvalidIdentityToken")
    );
    assert_eq!(
        assume(&h, &jwt(now - 10)).await.err().as_deref(),
        Some("ExpiredTokenException")
    );

    let credentials = assume(&h, &token).await.expect("assume role");
    assert!(credentials.access_key_id().starts_with("ASIA"));
    let expires = credentials.expiration().secs();
    assert!(
        expires <= now + 121 && expires >= now + 110,
        "bounded by the token's exp, not DurationSeconds=900"
    );
    let kms = h.kms_client(
        credentials.access_key_id(),
        credentials.secret_access_key(),
        Some(credentials.session_token()),
    );
    let encrypted = kms
        .encrypt()
        .key_id("alias/app")
        .plaintext(Blob::new(b"session-plaintext".to_vec()))
        .send()
        .await
        .expect("encrypt with session credentials");
    let decrypted = kms
        .decrypt()
        .ciphertext_blob(encrypted.ciphertext_blob().expect("blob").clone())
        .send()
        .await
        .expect("decrypt");
    assert_eq!(
        decrypted.plaintext().expect("plaintext").as_ref(),
        b"session-plaintext"
    );

    h.clock_offset.store(300, Ordering::Relaxed);
    let error = kms.list_keys().send().await.expect_err("session over");
    assert_eq!(
        error.into_service_error().meta().code(),
        Some("ExpiredTokenException")
    );
    h.clock_offset.store(0, Ordering::Relaxed);

    let forged = kms_with_forged_token(&h, &credentials);
    let error = forged.list_keys().send().await.expect_err("forged");
    assert_eq!(
        error.into_service_error().meta().code(),
        Some("UnrecognizedClientException")
    );
    let audit = h.stop().await;
    assert!(audit.contains("\"eventName\":\"AssumeRoleWithWebIdentity\""));
    assert!(
        !audit.contains(credentials.session_token()),
        "session token in the audit"
    );
    assert!(
        !audit.contains(credentials.secret_access_key()),
        "session secret in the audit"
    );
    assert!(!audit.contains(&token), "web identity token in the audit");
}

fn kms_with_forged_token(
    h: &Harness,
    credentials: &aws_sdk_sts::types::Credentials,
) -> aws_sdk_kms::Client {
    let mut token = credentials.session_token().to_owned();
    let last = token.pop().expect("char");
    token.push(if last == 'A' { 'B' } else { 'A' });
    h.kms_client(
        credentials.access_key_id(),
        credentials.secret_access_key(),
        Some(&token),
    )
}

/// Captures everything the server logs, at every level.
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

/// The SDK's own web-identity flow, driven by the environment as in a pod:
/// `AWS_WEB_IDENTITY_TOKEN_FILE`, `AWS_ROLE_ARN`, `AWS_ENDPOINT_URL_STS`,
/// `AWS_ENDPOINT_URL_KMS`. The environment of this process cannot be changed safely, so the
/// test binary runs itself as a child with that environment.
#[tokio::test]
async fn sdk_web_identity_flow_from_the_environment() {
    let h = start().await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let token = jwt(now + 3600);
    h.reviewer
        .add_service_account(&token, NAMESPACE, "web", "kubekms");
    h.authorizer
        .allow_all("system:serviceaccount:team-a:web", NAMESPACE);
    let dir = tempfile::tempdir().expect("dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &token).expect("token file");
    let endpoint = h.endpoint();
    let output = tokio::process::Command::new(std::env::current_exe().expect("exe"))
        .args(["--ignored", "--exact", "web_identity_child", "--nocapture"])
        .env_clear()
        .env("KUBEKMS_WEB_IDENTITY_CHILD", "1")
        .env("AWS_WEB_IDENTITY_TOKEN_FILE", &token_file)
        .env("AWS_ROLE_ARN", "arn:aws:iam::111122223333:role/kubekms")
        .env("AWS_ROLE_SESSION_NAME", "child")
        .env("AWS_ENDPOINT_URL_STS", &endpoint)
        .env("AWS_ENDPOINT_URL_KMS", &endpoint)
        .env("AWS_REGION", REGION)
        .env("AWS_CONFIG_FILE", dir.path().join("none"))
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.path().join("none"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .await
        .expect("child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("1 passed"),
        "the child ran the flow: {stdout}"
    );
    let audit = h.stop().await;
    assert!(
        audit.contains("\"eventName\":\"AssumeRoleWithWebIdentity\""),
        "{audit}"
    );
    assert!(
        audit.contains("system:serviceaccount:team-a:web"),
        "{audit}"
    );
}

#[tokio::test]
#[ignore = "run by sdk_web_identity_flow_from_the_environment as a child process"]
async fn web_identity_child() {
    if std::env::var("KUBEKMS_WEB_IDENTITY_CHILD").is_err() {
        return;
    }
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let kms = aws_sdk_kms::Client::new(&config);
    let encrypted = kms
        .encrypt()
        .key_id("alias/app")
        .plaintext(Blob::new(b"web-identity".to_vec()))
        .send()
        .await
        .expect("encrypt through the web-identity flow");
    let decrypted = kms
        .decrypt()
        .ciphertext_blob(encrypted.ciphertext_blob().expect("blob").clone())
        .send()
        .await
        .expect("decrypt");
    assert_eq!(
        decrypted.plaintext().expect("plaintext").as_ref(),
        b"web-identity"
    );
}
