//! One AWS KMS call on the wire: the JSON 1.1 body of each measured operation, and the
//! SigV4 signature of the request by the official `aws-sigv4` crate, as the AWS SDKs
//! compute it.

use std::fmt;
use std::net::SocketAddr;
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http_body_util::Full;

/// The content type of every AWS JSON 1.1 request and reply.
pub const AMZ_JSON: &str = "application/x-amz-json-1.1";
/// The size of the plaintext that Encrypt sends (and Decrypt gets back).
pub const PLAINTEXT_LEN: usize = 4096;

/// A measured operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    /// Encrypt of 4 KiB of plaintext under the target's symmetric key.
    Encrypt4k,
    /// Decrypt of one blob of 4 KiB, made by one Encrypt before the run.
    Decrypt4k,
    /// GenerateDataKey with `KeySpec` AES_256.
    GenerateDataKey,
}

impl Operation {
    /// Every operation, in the order the benchmark runs them.
    pub const ALL: [Self; 3] = [Self::Encrypt4k, Self::Decrypt4k, Self::GenerateDataKey];

    /// The name on the command line and in RESULT lines.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Encrypt4k => "encrypt-4k",
            Self::Decrypt4k => "decrypt-4k",
            Self::GenerateDataKey => "generate-data-key",
        }
    }

    /// The AWS operation name (the part of `X-Amz-Target` after `TrentService.`).
    #[must_use]
    pub fn aws_name(self) -> &'static str {
        match self {
            Self::Encrypt4k => "Encrypt",
            Self::Decrypt4k => "Decrypt",
            Self::GenerateDataKey => "GenerateDataKey",
        }
    }

    /// The `X-Amz-Target` header.
    #[must_use]
    pub fn amz_target(self) -> &'static str {
        match self {
            Self::Encrypt4k => "TrentService.Encrypt",
            Self::Decrypt4k => "TrentService.Decrypt",
            Self::GenerateDataKey => "TrentService.GenerateDataKey",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl std::str::FromStr for Operation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|op| op.label() == s || op.aws_name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!(
                    "unknown operation {s:?} (one of: {})",
                    Self::ALL.map(Self::label).join(", ")
                )
            })
    }
}

/// The 4 KiB that Encrypt sends: a fixed pattern, since its content changes nothing.
#[must_use]
pub fn plaintext_4k() -> Vec<u8> {
    (0..PLAINTEXT_LEN)
        .map(|i| u8::try_from(i % 251).unwrap_or(0))
        .collect()
}

/// The JSON body of an Encrypt of `plaintext` under `key_id`.
#[must_use]
pub fn encrypt_body(key_id: &str, plaintext: &[u8]) -> Bytes {
    json_body(&serde_json::json!({
        "KeyId": key_id,
        "Plaintext": BASE64.encode(plaintext),
    }))
}

/// The JSON body of a Decrypt of `ciphertext_blob` (base64, as an Encrypt reply holds it).
/// No KeyId: the blob names its key.
#[must_use]
pub fn decrypt_body(ciphertext_blob_b64: &str) -> Bytes {
    json_body(&serde_json::json!({ "CiphertextBlob": ciphertext_blob_b64 }))
}

/// The JSON body of a GenerateDataKey of an AES-256 key under `key_id`.
#[must_use]
pub fn generate_data_key_body(key_id: &str) -> Bytes {
    json_body(&serde_json::json!({ "KeyId": key_id, "KeySpec": "AES_256" }))
}

fn json_body(value: &serde_json::Value) -> Bytes {
    Bytes::from(value.to_string())
}

/// A request body with its SHA-256, which the signature covers. The load client sends the
/// same body many times, so the hash is computed once; the signature itself is computed
/// anew for every request, and is the same as with the hash computed per request.
#[derive(Debug, Clone)]
pub struct RequestBody {
    bytes: Bytes,
    sha256_hex: String,
}

impl RequestBody {
    /// `bytes` and their hash.
    #[must_use]
    pub fn new(bytes: Bytes) -> Self {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
        Self {
            sha256_hex: hex::encode(digest.as_ref()),
            bytes,
        }
    }

    /// The bytes.
    #[must_use]
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }
}

/// Static AWS credentials (an access key id, its secret, and a session token for
/// temporary ones).
#[derive(Clone)]
pub struct StaticCredentials {
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
    /// The session token of temporary credentials.
    pub session_token: Option<String>,
}

impl StaticCredentials {
    /// Credentials for a target that checks no signature (the floor, local-kms): still
    /// signed with, so every target costs the client the same.
    #[must_use]
    pub fn unchecked() -> Self {
        Self {
            access_key_id: "AKIDKUBEKMSBENCH0000".to_owned(),
            secret_access_key: "kubekms-bench-secret-access-key-not-checked".to_owned(),
            session_token: None,
        }
    }
}

impl fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Where a KMS API listens and how to sign for it.
#[derive(Debug, Clone)]
pub struct KmsEndpoint {
    /// The address on loopback.
    pub addr: SocketAddr,
    /// The region in the credential scope.
    pub region: String,
    /// The credentials that sign every request.
    pub credentials: StaticCredentials,
}

/// Why a request could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// aws-sigv4 refused the parameters or the request.
    #[error("SigV4 signing failed: {0}")]
    Sigv4(String),
    /// The request could not be assembled (a header value that is not valid).
    #[error("invalid request: {0}")]
    Request(#[from] http::Error),
}

/// Signs requests to one endpoint with SigV4 (service `kms`), a new signature per request.
pub struct RequestSigner {
    identity: Identity,
    region: String,
    host: String,
    uri: String,
}

impl RequestSigner {
    /// A signer for `endpoint`.
    #[must_use]
    pub fn new(endpoint: &KmsEndpoint) -> Self {
        let c = &endpoint.credentials;
        let credentials = Credentials::new(
            c.access_key_id.clone(),
            c.secret_access_key.clone(),
            c.session_token.clone(),
            None,
            "kubekms-bench",
        );
        let host = endpoint.addr.to_string();
        Self {
            identity: credentials.into(),
            region: endpoint.region.clone(),
            uri: format!("http://{host}/"),
            host,
        }
    }

    /// The signed `POST /` of `operation` with `body`, at time `now`.
    ///
    /// # Errors
    /// When aws-sigv4 refuses to sign (never for the inputs this crate makes).
    pub fn signed_request(
        &self,
        operation: Operation,
        body: &RequestBody,
        now: SystemTime,
    ) -> Result<http::Request<Full<Bytes>>, SignError> {
        self.signed_request_for_target(operation.amz_target(), body, now)
    }

    /// The signed `POST /` with `X-Amz-Target: target` and `body`, at time `now`.
    ///
    /// # Errors
    /// When aws-sigv4 refuses to sign.
    pub fn signed_request_for_target(
        &self,
        target: &str,
        body: &RequestBody,
        now: SystemTime,
    ) -> Result<http::Request<Full<Bytes>>, SignError> {
        let mut request = http::Request::builder()
            .method(http::Method::POST)
            .uri(&self.uri)
            .header(http::header::HOST, &self.host)
            .header(http::header::CONTENT_TYPE, AMZ_JSON)
            .header("x-amz-target", target)
            .body(Full::new(body.bytes.clone()))?;
        let params = v4::SigningParams::builder()
            .identity(&self.identity)
            .region(&self.region)
            .name("kms")
            .time(now)
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| SignError::Sigv4(e.to_string()))?
            .into();
        let signable = SignableRequest::new(
            "POST",
            self.uri.as_str(),
            [
                ("host", self.host.as_str()),
                ("content-type", AMZ_JSON),
                ("x-amz-target", target),
            ]
            .into_iter(),
            SignableBody::Precomputed(body.sha256_hex.clone()),
        )
        .map_err(|e| SignError::Sigv4(e.to_string()))?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| SignError::Sigv4(e.to_string()))?
            .into_parts();
        instructions.apply_to_request_http1x(&mut request);
        Ok(request)
    }
}

/// The AWS error name of a failed reply: `__type` of its JSON body (without the
/// `namespace#` prefix that some services put there), else its `x-amzn-ErrorType`
/// header, else the HTTP status.
#[must_use]
pub fn error_type(status: http::StatusCode, headers: &http::HeaderMap, body: &[u8]) -> String {
    let from_body = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("__type")?.as_str().map(str::to_owned));
    let from_header = || {
        headers
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(':').next().unwrap_or(v).to_owned())
    };
    match from_body.or_else(from_header) {
        Some(t) => {
            let name = t.rsplit('#').next().unwrap_or(&t);
            format!("{} {name}", status.as_u16())
        }
        None => format!("HTTP {status}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The expected signatures are what botocore 1.44.8 (`SigV4Auth(creds, "kms",
    /// "us-east-1").add_auth`, the pinned venv of hack/tools/python.sh) computes for the same
    /// request at the same time, so a difference in canonicalization or signed headers
    /// between this client and the AWS SDKs shows here.
    #[test]
    fn signature_matches_botocore() {
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_767_323_045); // 2026-01-02T03:04:05Z
        let body = RequestBody::new(Bytes::from_static(
            br#"{"KeyId":"alias/bench","Plaintext":"aGVsbG8="}"#,
        ));
        let cases = [
            (
                None,
                "content-type;host;x-amz-date;x-amz-target",
                "c06f617f6424be11d7e2290cf84fc5b85d5421804033f99c40865cc8e75e8b7a",
            ),
            (
                Some("session-token-example"),
                "content-type;host;x-amz-date;x-amz-security-token;x-amz-target",
                "799d5d03c2b59427b41095aaff65789e11b345d38864e35c5d20652737b9e966",
            ),
        ];
        for (token, signed_headers, signature) in cases {
            let endpoint = KmsEndpoint {
                addr: "127.0.0.1:8080".parse().expect("addr"),
                region: "us-east-1".to_owned(),
                credentials: StaticCredentials {
                    access_key_id: "AKIDEXAMPLE".to_owned(),
                    secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_owned(),
                    session_token: token.map(str::to_owned),
                },
            };
            let request = RequestSigner::new(&endpoint)
                .signed_request(Operation::Encrypt4k, &body, now)
                .expect("signed");
            let header = |name: &str| {
                request
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            assert_eq!(header("x-amz-date").as_deref(), Some("20260102T030405Z"));
            assert_eq!(
                header("authorization").expect("authorization"),
                format!(
                    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260102/us-east-1/kms/aws4_request, SignedHeaders={signed_headers}, Signature={signature}"
                )
            );
            assert_eq!(header("x-amz-security-token").as_deref(), token);
            assert_eq!(header("host").as_deref(), Some("127.0.0.1:8080"));
        }
    }

    #[test]
    fn operations_parse_from_label_and_aws_name() {
        for op in Operation::ALL {
            assert_eq!(op.label().parse::<Operation>(), Ok(op));
            assert_eq!(op.aws_name().parse::<Operation>(), Ok(op));
            assert_eq!(op.amz_target(), format!("TrentService.{}", op.aws_name()));
        }
        assert!("Sign".parse::<Operation>().is_err());
    }

    #[test]
    fn error_type_prefers_the_body_then_the_header_then_the_status() {
        let status = http::StatusCode::BAD_REQUEST;
        let mut headers = http::HeaderMap::new();
        assert_eq!(
            error_type(
                status,
                &headers,
                br#"{"__type":"com.amazonaws.kms#NotFoundException","message":"x"}"#
            ),
            "400 NotFoundException"
        );
        headers.insert(
            "x-amzn-errortype",
            http::HeaderValue::from_static("AccessDeniedException:http://internal"),
        );
        assert_eq!(
            error_type(http::StatusCode::FORBIDDEN, &headers, b"not json"),
            "403 AccessDeniedException"
        );
        assert_eq!(
            error_type(
                http::StatusCode::NOT_IMPLEMENTED,
                &http::HeaderMap::new(),
                b"Passed X-Amz-Target is not implemented"
            ),
            "HTTP 501 Not Implemented"
        );
    }

    #[test]
    fn bodies_are_what_the_aws_json_protocol_expects() {
        let body = encrypt_body("k", &plaintext_4k());
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        let pt = BASE64
            .decode(v["Plaintext"].as_str().expect("Plaintext"))
            .expect("base64");
        assert_eq!(pt.len(), PLAINTEXT_LEN);
        assert_eq!(v["KeyId"], "k");
        let v: serde_json::Value =
            serde_json::from_slice(&generate_data_key_body("k")).expect("json");
        assert_eq!(v["KeySpec"], "AES_256");
        let v: serde_json::Value = serde_json::from_slice(&decrypt_body("AAAA")).expect("json");
        assert_eq!(v["CiphertextBlob"], "AAAA");
        assert!(v.get("KeyId").is_none());
    }
}
