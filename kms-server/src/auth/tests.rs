//! The authenticator against requests signed by the official Rust signer (`aws-sigv4`).

use std::sync::Arc;
use std::time::SystemTime;

use http::Request;
use kms_core::SecretBytes;
use time::OffsetDateTime;

use super::*;
use crate::principal::CredentialKind;
use crate::test_util::sign_v4;

const AK: &str = "AKIAKUBEKMSUNITTEST1";
const SK: &str = "unit-secret-key-0123456789abcdefghijklm";

fn credentials() -> Arc<StaticCredentials> {
    Arc::new(
        StaticCredentials::from_yaml(&format!(
            "credentials:\n- accessKeyId: {AK}\n  secretAccessKey: \"{SK}\"\n  serviceAccount: team-a/app\n"
        ))
        .expect("credentials"),
    )
}

fn sealer() -> Arc<SessionSealer> {
    Arc::new(SessionSealer::new(&SecretBytes::from_slice(&[9; 32])).expect("sealer"))
}

fn authenticator() -> Authenticator {
    Authenticator::new("local", credentials(), sealer())
}

fn to_system(t: OffsetDateTime) -> SystemTime {
    SystemTime::from(t)
}

/// A KMS request signed by `aws-sigv4` as the Rust SDK signs it.
fn signed(
    access_key: &str,
    secret: &str,
    token: Option<&str>,
    region: &str,
    at: OffsetDateTime,
    body: &[u8],
) -> Request<Vec<u8>> {
    let mut request = Request::builder()
        .method("POST")
        .uri("http://127.0.0.1:8443/")
        .header("host", "127.0.0.1:8443")
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", "TrentService.Encrypt")
        .body(body.to_vec())
        .expect("request");
    sign_v4(
        &mut request,
        access_key,
        secret,
        token,
        region,
        to_system(at),
    );
    request
}

fn verify(
    auth: &Authenticator,
    request: &Request<Vec<u8>>,
    now: OffsetDateTime,
) -> Result<Arc<Credential>, AuthError> {
    let parts = SignedParts {
        method: request.method(),
        uri: request.uri(),
        headers: request.headers(),
    };
    auth.authenticate("kms", parts, request.body(), now)
}

fn code(result: Result<Arc<Credential>, AuthError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(e) => e.aws_exception_name(),
    }
}

#[test]
fn static_credentials_signed_by_aws_sigv4() {
    let auth = authenticator();
    let now = OffsetDateTime::now_utc();
    let request = signed(
        AK,
        SK,
        None,
        "local",
        now,
        br#"{"KeyId":"alias/app","Plaintext":"aGk="}"#,
    );
    let credential = verify(&auth, &request, now).expect("valid signature");
    assert_eq!(
        credential.principal().username,
        "system:serviceaccount:team-a:app"
    );
    assert_eq!(credential.principal().credential, CredentialKind::Static);
    // The cached signing key serves the next request.
    let again = signed(AK, SK, None, "local", now, b"{}");
    assert!(verify(&auth, &again, now).is_ok());
}

#[test]
fn every_signature_failure_has_its_exception() {
    let auth = authenticator();
    let now = OffsetDateTime::now_utc();
    let body = br#"{"KeyId":"alias/app"}"#;
    assert_eq!(
        code(verify(
            &auth,
            &signed(AK, "wrong-secret-0123456789", None, "local", now, body),
            now
        )),
        "InvalidSignatureException"
    );
    assert_eq!(
        code(verify(
            &auth,
            &signed("AKIAUNKNOWN000000000", SK, None, "local", now, body),
            now
        )),
        "UnrecognizedClientException"
    );
    assert_eq!(
        code(verify(
            &auth,
            &signed(AK, SK, None, "us-east-1", now, body),
            now
        )),
        "InvalidSignatureException",
        "region"
    );
    let old = now - time::Duration::minutes(16);
    assert_eq!(
        code(verify(
            &auth,
            &signed(AK, SK, None, "local", old, body),
            now
        )),
        "InvalidSignatureException",
        "expired"
    );
    let skewed = now + time::Duration::minutes(16);
    assert_eq!(
        code(verify(
            &auth,
            &signed(AK, SK, None, "local", skewed, body),
            now
        )),
        "InvalidSignatureException",
        "future"
    );
    let within = now - time::Duration::minutes(14);
    assert_eq!(
        code(verify(
            &auth,
            &signed(AK, SK, None, "local", within, body),
            now
        )),
        "ok",
        "14 minutes is fine"
    );

    let mut tampered_body = signed(AK, SK, None, "local", now, body);
    tampered_body.body_mut()[3] ^= 1;
    assert_eq!(
        code(verify(&auth, &tampered_body, now)),
        "InvalidSignatureException",
        "body"
    );
    let mut tampered_target = signed(AK, SK, None, "local", now, body);
    tampered_target.headers_mut().insert(
        "x-amz-target",
        http::HeaderValue::from_static("TrentService.Decrypt"),
    );
    // x-amz-target is signed by the SDKs: changing the operation breaks the signature.
    assert_eq!(
        code(verify(&auth, &tampered_target, now)),
        "InvalidSignatureException",
        "target"
    );
    let mut declared = signed(AK, SK, None, "local", now, body);
    declared.headers_mut().insert(
        "x-amz-content-sha256",
        http::HeaderValue::from_static("UNSIGNED-PAYLOAD"),
    );
    assert_eq!(
        code(verify(&auth, &declared, now)),
        "InvalidSignatureException",
        "unsigned payload"
    );
    let mut no_date = signed(AK, SK, None, "local", now, body);
    no_date.headers_mut().remove("x-amz-date");
    assert_eq!(
        code(verify(&auth, &no_date, now)),
        "IncompleteSignatureException"
    );
    let mut no_auth = signed(AK, SK, None, "local", now, body);
    no_auth.headers_mut().remove("authorization");
    assert_eq!(
        code(verify(&auth, &no_auth, now)),
        "MissingAuthenticationTokenException"
    );
}

#[test]
fn http2_requests_sign_host_from_the_authority() {
    let auth = authenticator();
    let now = OffsetDateTime::now_utc();
    let mut request = signed(AK, SK, None, "local", now, b"{}");
    request.headers_mut().remove("host");
    assert_eq!(
        code(verify(&auth, &request, now)),
        "ok",
        "host taken from :authority"
    );
}

fn session(auth: &Authenticator, expires_at: OffsetDateTime) -> (String, String, String) {
    let access_key_id = session::new_access_key_id().expect("id");
    let secret = session::new_secret_access_key().expect("secret");
    let secret_text = String::from_utf8(secret.expose().to_vec()).expect("ascii");
    let token = auth
        .sealer()
        .seal(&SessionClaims {
            access_key_id: access_key_id.clone(),
            secret_access_key: secret,
            username: "system:serviceaccount:team-a:web".to_owned(),
            uid: None,
            groups: vec!["system:serviceaccounts".to_owned()],
            namespace: "team-a".to_owned(),
            audience: "kubekms".to_owned(),
            issued_at: OffsetDateTime::now_utc(),
            expires_at,
        })
        .expect("seal");
    (access_key_id, secret_text, token)
}

#[test]
fn sessions_verify_until_they_expire_and_forgeries_fail() {
    let auth = authenticator();
    let now = OffsetDateTime::now_utc();
    let (id, secret, token) = session(&auth, now + time::Duration::hours(1));
    let request = signed(&id, &secret, Some(&token), "local", now, b"{}");
    let credential = verify(&auth, &request, now).expect("session");
    assert_eq!(
        credential.principal().username,
        "system:serviceaccount:team-a:web"
    );
    assert!(matches!(
        credential.principal().credential,
        CredentialKind::Session { .. }
    ));
    assert_eq!(code(verify(&auth, &request, now)), "ok", "cached session");

    let later = now + time::Duration::hours(1) + time::Duration::seconds(1);
    let late_request = signed(&id, &secret, Some(&token), "local", later, b"{}");
    assert_eq!(
        code(verify(&auth, &late_request, later)),
        "ExpiredTokenException",
        "cached, then expired"
    );
    let fresh = authenticator_with_same_key();
    assert_eq!(
        code(verify(&fresh, &late_request, later)),
        "ExpiredTokenException",
        "another replica agrees"
    );
    assert_eq!(
        code(verify(&fresh, &request, now)),
        "ok",
        "another replica with the same root key verifies it"
    );

    let mut forged = token.clone().into_bytes();
    let i = forged.len() - 3;
    forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).expect("ascii");
    let forged_request = signed(&id, &secret, Some(&forged), "local", now, b"{}");
    assert_eq!(
        code(verify(&auth, &forged_request, now)),
        "UnrecognizedClientException",
        "tampered token"
    );
    let (other_id, other_secret, _) = session(&auth, now + time::Duration::hours(1));
    let swapped = signed(&other_id, &other_secret, Some(&token), "local", now, b"{}");
    assert_eq!(
        code(verify(&auth, &swapped, now)),
        "UnrecognizedClientException",
        "token of another key id"
    );
    let without_token = signed(&id, &secret, None, "local", now, b"{}");
    assert_eq!(
        code(verify(&auth, &without_token, now)),
        "UnrecognizedClientException",
        "session key without its token"
    );
    let wrong_secret = signed(
        &id,
        "wrong-secret-0123456789",
        Some(&token),
        "local",
        now,
        b"{}",
    );
    assert_eq!(
        code(verify(&auth, &wrong_secret, now)),
        "InvalidSignatureException"
    );
    let other_root = Authenticator::new(
        "local",
        credentials(),
        Arc::new(SessionSealer::new(&SecretBytes::from_slice(&[10; 32])).expect("sealer")),
    );
    assert_eq!(
        code(verify(&other_root, &request, now)),
        "UnrecognizedClientException",
        "another root key"
    );
    let static_with_token = signed(AK, SK, Some(&token), "local", now, b"{}");
    assert_eq!(
        code(verify(&auth, &static_with_token, now)),
        "UnrecognizedClientException"
    );
}

fn authenticator_with_same_key() -> Authenticator {
    Authenticator::new("local", credentials(), sealer())
}
