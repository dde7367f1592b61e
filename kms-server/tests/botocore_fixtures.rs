//! SigV4 verification of requests signed by botocore (committed fixtures captured from
//! boto3 clients by fixtures/botocore/generate.py), so the server accepts the Python SDK
//! and the AWS CLI byte for byte, including a session token and the unsigned STS call.

use std::sync::Arc;

use base64::Engine as _;
use kms_core::SecretBytes;
use kubekms_server::auth::SignedParts;
use kubekms_server::auth::session::SessionClaims;
use kubekms_server::auth::sigv4::parse_amz_date;
use kubekms_server::{Authenticator, SessionSealer, StaticCredentials};

const FIXTURES: &str = include_str!("fixtures/botocore/requests.json");
const SEALER_KEY: [u8; 32] = [0x5e; 32];

fn sealer() -> Arc<SessionSealer> {
    Arc::new(SessionSealer::new(&SecretBytes::from_slice(&SEALER_KEY)).expect("sealer"))
}

struct Fixture {
    name: String,
    request: http::Request<Vec<u8>>,
}

fn load() -> (serde_json::Value, Vec<Fixture>) {
    let doc: serde_json::Value = serde_json::from_str(FIXTURES).expect("fixtures");
    let fixtures = doc["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .map(|r| {
            let url: http::Uri = r["url"].as_str().expect("url").parse().expect("uri");
            let mut builder = http::Request::builder()
                .method(r["method"].as_str().expect("method"))
                .uri(url.clone());
            let mut has_host = false;
            for pair in r["headers"].as_array().expect("headers") {
                let (k, v) = (pair[0].as_str().expect("k"), pair[1].as_str().expect("v"));
                has_host |= k.eq_ignore_ascii_case("host");
                builder = builder.header(k, v);
            }
            if !has_host {
                // urllib3 adds Host on the wire from the URL, as botocore signed it.
                builder = builder.header("host", url.authority().expect("authority").as_str());
            }
            let body = base64::engine::general_purpose::STANDARD
                .decode(r["body_base64"].as_str().expect("body"))
                .expect("b64");
            Fixture {
                name: r["name"].as_str().expect("name").to_owned(),
                request: builder.body(body).expect("request"),
            }
        })
        .collect();
    (doc, fixtures)
}

fn authenticator(doc: &serde_json::Value) -> Authenticator {
    let yaml = format!(
        "credentials:\n- accessKeyId: {}\n  secretAccessKey: \"{}\"\n  serviceAccount: team-a/app\n",
        doc["access_key"].as_str().expect("ak"),
        doc["secret_key"].as_str().expect("sk")
    );
    Authenticator::new(
        doc["region"].as_str().expect("region"),
        Arc::new(StaticCredentials::from_yaml(&yaml).expect("credentials")),
        sealer(),
    )
}

fn verify(
    auth: &Authenticator,
    request: &http::Request<Vec<u8>>,
    at: time::OffsetDateTime,
) -> Result<String, &'static str> {
    let parts = SignedParts {
        method: request.method(),
        uri: request.uri(),
        headers: request.headers(),
    };
    auth.authenticate("kms", parts, request.body(), at)
        .map(|c| c.principal().username.clone())
        .map_err(|e| e.aws_exception_name())
}

#[test]
fn botocore_signed_requests_verify() {
    let (doc, fixtures) = load();
    let auth = authenticator(&doc);
    let at = parse_amz_date(doc["time"].as_str().expect("time")).expect("time");
    let mut verified = 0;
    for fixture in &fixtures {
        if fixture.name.starts_with("sts_") {
            let request = &fixture.request;
            assert!(
                request.headers().get("authorization").is_none(),
                "STS web identity is unsigned"
            );
            assert!(
                request.headers()["content-type"]
                    .to_str()
                    .expect("ct")
                    .starts_with("application/x-www-form-urlencoded")
            );
            let parsed = kubekms_server::sts::parse_request(request.body())
                .expect("botocore's STS form parses");
            let kubekms_server::sts::StsRequest::AssumeRoleWithWebIdentity(r) = parsed;
            assert_eq!(r.role_session_name, "web-session");
            continue;
        }
        let user =
            verify(&auth, &fixture.request, at).unwrap_or_else(|e| panic!("{}: {e}", fixture.name));
        assert!(user.starts_with("system:serviceaccount:team-a:"), "{user}");
        let mut tampered = fixture.request.clone();
        if let Some(byte) = tampered.body_mut().first_mut() {
            *byte ^= 1;
            assert_eq!(
                verify(&auth, &tampered, at),
                Err("InvalidSignatureException"),
                "{}",
                fixture.name
            );
        }
        verified += 1;
    }
    assert_eq!(verified, 6, "every signed fixture was checked");
}

/// Prints a session token for the generator (the fixture's session credentials, sealed
/// under this file's test key, valid until 2030).
#[test]
#[ignore = "a generator helper, not a test"]
fn print_session_token() {
    let token = sealer()
        .seal(&SessionClaims {
            access_key_id: "ASIAKUBEKMSBOTOCORE2".to_owned(),
            secret_access_key: SecretBytes::from_slice(b"botocore-session-secret-0123456789abcdef"),
            username: "system:serviceaccount:team-a:web".to_owned(),
            uid: None,
            groups: vec!["system:serviceaccounts".to_owned()],
            namespace: "team-a".to_owned(),
            audience: "kubekms".to_owned(),
            issued_at: time::macros::datetime!(2026-01-01 00:00 UTC),
            expires_at: time::macros::datetime!(2030-01-01 00:00 UTC),
        })
        .expect("seal");
    println!("{token}");
}
