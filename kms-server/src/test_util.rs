//! Test support (feature `test-util`, and this crate's own tests): requests signed by
//! `aws-sigv4`, the official Rust signer, as the AWS SDK for Rust signs them, for tests and
//! benchmarks that send raw HTTP.

use std::time::SystemTime;

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_smithy_runtime_api::client::identity::Identity;

/// Signs `request` (its method, URI, headers and body as they are) for the service `kms`
/// in `region` at `at` with the key pair `access_key`/`secret` and the session token
/// `token`, adding the SigV4 headers.
///
/// # Panics
/// When a header is not ASCII or the signer refuses the request (the test's set-up is
/// wrong).
pub fn sign_v4(
    request: &mut http::Request<Vec<u8>>,
    access_key: &str,
    secret: &str,
    token: Option<&str>,
    region: &str,
    at: SystemTime,
) {
    let identity: Identity = aws_credential_types::Credentials::new(
        access_key,
        secret,
        token.map(str::to_owned),
        None,
        "kubekms-test",
    )
    .into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("kms")
        .time(at)
        .settings(SigningSettings::default())
        .build()
        .expect("params")
        .into();
    let uri = request.uri().to_string();
    let signable = SignableRequest::new(
        request.method().as_str(),
        uri,
        request
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().expect("ascii"))),
        SignableBody::Bytes(request.body()),
    )
    .expect("signable");
    let (instructions, _) = sign(signable, &params).expect("sign").into_parts();
    instructions.apply_to_request_http1x(request);
}
