//! STS with the AWS SDK for Rust (AssumeRoleWithWebIdentity, then KMS with the session),
//! and the audit/log redaction run of every operation.

mod common;

use std::sync::atomic::Ordering;

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
