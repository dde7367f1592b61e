use std::time::Duration;

use base64::Engine as _;
use kms_core::SecretBytes;
use time::OffsetDateTime;

use super::*;
use crate::memory::MemoryReviewer;

fn jwt(exp: i64) -> String {
    let claims = format!(
        r#"{{"iss":"https://kubernetes.default.svc","sub":"system:serviceaccount:team-a:app","aud":["kubekms"],"exp":{exp}}}"#
    );
    format!(
        "eyJhbGciOiJSUzI1NiJ9.{}.c2lnbmF0dXJl",
        URL_SAFE_NO_PAD.encode(claims)
    )
}

fn form(token: &str, extra: &str) -> Vec<u8> {
    format!(
        "Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fkubekms-app&RoleSessionName=app-session&WebIdentityToken={token}{extra}"
    )
    .into_bytes()
}

fn parse(body: &[u8]) -> Result<AssumeRoleWithWebIdentity, StsError> {
    parse_request(body).map(|StsRequest::AssumeRoleWithWebIdentity(r)| r)
}

#[test]
fn parses_the_query_protocol() {
    let request = parse(&form("tok.en.x", "&DurationSeconds=900")).expect("parse");
    assert_eq!(
        request.role_arn,
        "arn:aws:iam::123456789012:role/kubekms-app"
    );
    assert_eq!(request.role_session_name, "app-session");
    assert_eq!(request.web_identity_token.as_str(), "tok.en.x");
    assert_eq!(request.duration_seconds, Some(900));
    let code = |body: &[u8]| parse(body).map(|_| ()).map_err(|e| e.code);
    assert_eq!(code(b"Version=2011-06-15"), Err("MissingAction"));
    assert_eq!(
        code(b"Action=GetSessionToken&Version=2011-06-15"),
        Err("InvalidAction")
    );
    assert_eq!(
        code(b"Action=AssumeRoleWithWebIdentity&Version=2010-01-01"),
        Err("InvalidAction")
    );
    assert_eq!(
        code(b"Action=AssumeRoleWithWebIdentity&Version=2011-06-15"),
        Err("ValidationError")
    );
    assert_eq!(
        code(&form("tok", "")),
        Err("ValidationError"),
        "token under 4 characters"
    );
    assert_eq!(
        code(&form("token", "&DurationSeconds=899")),
        Err("ValidationError")
    );
    assert_eq!(
        code(&form("token", "&DurationSeconds=43201")),
        Err("ValidationError")
    );
    assert_eq!(
        code(&form("token", "&DurationSeconds=soon")),
        Err("ValidationError")
    );
    assert_eq!(
        code(&form("token", "&Policy=%7B%7D")),
        Err("ValidationError"),
        "session policies"
    );
    assert_eq!(
        code(&form("token", "&RoleSessionName=bad%20name")),
        Err("ValidationError")
    );
    let missing = parse(b"Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleSessionName=ab")
        .expect_err("missing");
    assert!(
        missing
            .message
            .starts_with("2 validation errors detected: Value null at 'roleArn'"),
        "{}",
        missing.message
    );
}

#[test]
fn reads_jwt_claims() {
    let claims = jwt_claims(&jwt(1_900_000_000)).expect("claims");
    assert_eq!(claims.exp, Some(1_900_000_000));
    assert_eq!(
        claims.iss.as_deref(),
        Some("https://kubernetes.default.svc")
    );
    assert_eq!(jwt_claims("not-a-jwt"), None);
    assert_eq!(jwt_claims("a.b"), None);
}

struct Fixture {
    reviewer: MemoryReviewer,
    sealer: SessionSealer,
    config: StsConfig,
}

impl Fixture {
    fn new() -> Self {
        Self {
            reviewer: MemoryReviewer::new(),
            sealer: SessionSealer::new(&SecretBytes::from_slice(&[3; 32])).expect("sealer"),
            config: StsConfig {
                review_timeout: Duration::from_millis(200),
                ..StsConfig::default()
            },
        }
    }

    async fn exchange(&self, body: &[u8], now: OffsetDateTime) -> Result<IssuedSession, StsError> {
        let account = |_: &str| "111122223333".to_owned();
        let exchange = WebIdentityExchange {
            reviewer: &self.reviewer,
            sealer: &self.sealer,
            config: &self.config,
            partition: "aws",
            account_id: &account,
        };
        exchange.assume_role(&parse(body)?, now).await
    }
}

#[tokio::test]
async fn issues_sealed_sessions_bounded_by_the_token() {
    let f = Fixture::new();
    let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("now");
    let token = jwt(1_800_000_000 + 600);
    f.reviewer
        .add_service_account(&token, "team-a", "app", "kubekms");
    let issued = f
        .exchange(&form(&token, "&DurationSeconds=3600"), now)
        .await
        .expect("issued");
    assert_eq!(
        issued.expiration.unix_timestamp(),
        1_800_000_600,
        "no later than the token"
    );
    assert!(issued.access_key_id.starts_with("ASIA"));
    assert_eq!(
        issued.assumed_role_arn,
        "arn:aws:sts::111122223333:assumed-role/kubekms-app/app-session"
    );
    assert!(
        issued.assumed_role_id.starts_with("AROA")
            && issued.assumed_role_id.ends_with(":app-session")
    );
    assert_eq!(issued.provider, "https://kubernetes.default.svc");
    assert_eq!(issued.audience, "kubekms");
    let claims = f
        .sealer
        .open(&issued.access_key_id, &issued.session_token)
        .expect("opens");
    assert_eq!(claims.username, "system:serviceaccount:team-a:app");
    assert_eq!(claims.namespace, "team-a");
    assert_eq!(
        claims.secret_access_key.expose(),
        issued.secret_access_key.expose()
    );

    let long_token = jwt(1_800_000_000 + 86_400);
    f.reviewer
        .add_service_account(&long_token, "team-a", "app", "kubekms");
    let issued = f
        .exchange(&form(&long_token, "&DurationSeconds=900"), now)
        .await
        .expect("issued");
    assert_eq!(
        issued.expiration.unix_timestamp(),
        1_800_000_900,
        "no later than DurationSeconds"
    );
    let issued = f
        .exchange(&form(&long_token, ""), now)
        .await
        .expect("issued");
    assert_eq!(
        issued.expiration.unix_timestamp(),
        1_800_003_600,
        "default one hour"
    );

    let xml = encode_assume_role(&issued, "req-1");
    for part in [
        "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">",
        "<AccessKeyId>ASIA",
        "<Expiration>2027-01-15T09:00:00Z</Expiration>",
        "<RequestId>req-1</RequestId>",
        "<SubjectFromWebIdentityToken>system:serviceaccount:team-a:app</SubjectFromWebIdentityToken>",
    ] {
        assert!(xml.contains(part), "{part} missing");
    }
}

#[tokio::test]
async fn refusals_have_sts_codes() {
    let f = Fixture::new();
    let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("now");
    let expired = jwt(1_800_000_000 - 1);
    f.reviewer
        .add_service_account(&expired, "team-a", "app", "kubekms");
    let code = |r: Result<IssuedSession, StsError>| r.map(|_| ()).map_err(|e| (e.code, e.status));
    assert_eq!(
        code(f.exchange(&form(&expired, ""), now).await),
        Err(("ExpiredTokenException", 400))
    );
    assert_eq!(
        code(f.exchange(&form(&jwt(1_900_000_000), ""), now).await),
        Err(("InvalidIdentityToken", 400)),
        "unknown token"
    );
    let wrong_audience = jwt(1_900_000_001);
    f.reviewer
        .add_service_account(&wrong_audience, "team-a", "app", "vault");
    assert_eq!(
        code(f.exchange(&form(&wrong_audience, ""), now).await),
        Err(("InvalidIdentityToken", 400))
    );
    let user = jwt(1_900_000_002);
    f.reviewer.add_identity(
        &user,
        ReviewedIdentity {
            username: "alice".to_owned(),
            uid: None,
            groups: vec![],
            audiences: vec!["kubekms".to_owned()],
        },
    );
    assert_eq!(
        code(f.exchange(&form(&user, ""), now).await),
        Err(("InvalidIdentityToken", 400)),
        "not a ServiceAccount"
    );
    let good = jwt(1_900_000_003);
    f.reviewer
        .add_service_account(&good, "team-a", "app", "kubekms");
    f.reviewer.set_unavailable(true);
    assert_eq!(
        code(f.exchange(&form(&good, ""), now).await),
        Err(("IDPCommunicationError", 400))
    );
    f.reviewer.set_unavailable(false);
    f.reviewer.set_delay(Some(Duration::from_secs(30)));
    assert_eq!(
        code(f.exchange(&form(&good, ""), now).await),
        Err(("IDPCommunicationError", 400)),
        "a hung review times out"
    );
    f.reviewer.set_delay(None);
    assert!(f.exchange(&form(&good, ""), now).await.is_ok());
}

#[test]
fn errors_are_sts_xml_and_escaped() {
    let xml = encode_error(
        &StsError {
            code: "ValidationError",
            message: "bad <value> & 'quote'".to_owned(),
            status: 400,
        },
        "req-2",
    );
    assert!(xml.contains("<Type>Sender</Type>"));
    assert!(xml.contains("<Code>ValidationError</Code>"));
    assert!(xml.contains("<Message>bad &lt;value&gt; &amp; &apos;quote&apos;</Message>"));
    assert!(xml.contains("<RequestId>req-2</RequestId>"));
}
