//! The HTTP floor: the cheapest server of the AWS KMS API on kubekms-server's stack (tokio,
//! hyper, axum). `POST /` reads the whole body and returns a fixed reply of the shape and
//! size of a real KMS reply for the operation in `X-Amz-Target`, with the headers a KMS
//! reply has (`Content-Type: application/x-amz-json-1.1`, `x-amzn-RequestId`). It checks no
//! signature, parses no JSON and does no cryptography: what a request costs a server that
//! does no work is the baseline of "cost per request".

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::ListenerExt as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;

use crate::kms::{AMZ_JSON, PLAINTEXT_LEN};

/// What `kubekms-http-floor` prints on stdout, followed by its address, once it listens.
pub const LISTENING: &str = "listening on ";

/// The key ARN in the floor's replies.
pub const FLOOR_KEY_ARN: &str =
    "arn:aws:kms:us-east-1:111122223333:key/00000000-0000-4000-8000-000000000000";
/// Bytes a ciphertext blob adds to its plaintext in the floor's replies (a KubeKMS blob:
/// format, key id, material version, nonce and tag; AWS's adds about as much).
pub const BLOB_OVERHEAD: usize = 128;

/// The replies, made once.
struct Replies {
    encrypt: Bytes,
    decrypt: Bytes,
    generate_data_key: Bytes,
    unknown: Bytes,
}

impl Replies {
    fn new() -> Self {
        let pattern = |len: usize| -> String {
            BASE64.encode(
                (0..len)
                    .map(|i| u8::try_from(i % 253).unwrap_or(0))
                    .collect::<Vec<u8>>(),
            )
        };
        let json = |v: serde_json::Value| Bytes::from(v.to_string());
        Self {
            encrypt: json(serde_json::json!({
                "CiphertextBlob": pattern(PLAINTEXT_LEN + BLOB_OVERHEAD),
                "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
                "KeyId": FLOOR_KEY_ARN,
            })),
            decrypt: json(serde_json::json!({
                "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
                "KeyId": FLOOR_KEY_ARN,
                "Plaintext": pattern(PLAINTEXT_LEN),
            })),
            generate_data_key: json(serde_json::json!({
                "CiphertextBlob": pattern(32 + BLOB_OVERHEAD),
                "KeyId": FLOOR_KEY_ARN,
                "Plaintext": pattern(32),
            })),
            unknown: json(serde_json::json!({
                "__type": "UnknownOperationException",
                "message": "the HTTP floor answers Encrypt, Decrypt and GenerateDataKey",
            })),
        }
    }
}

/// The floor's router: `POST /` only.
pub fn router() -> Router {
    Router::new()
        .route("/", post(handle))
        .with_state(Arc::new(Replies::new()))
}

async fn handle(State(replies): State<Arc<Replies>>, headers: HeaderMap, _body: Bytes) -> Response {
    let (status, body) = match headers.get("x-amz-target").map(HeaderValue::as_bytes) {
        Some(b"TrentService.Encrypt") => (StatusCode::OK, replies.encrypt.clone()),
        Some(b"TrentService.Decrypt") => (StatusCode::OK, replies.decrypt.clone()),
        Some(b"TrentService.GenerateDataKey") => {
            (StatusCode::OK, replies.generate_data_key.clone())
        }
        _ => (StatusCode::BAD_REQUEST, replies.unknown.clone()),
    };
    let request_id = uuid::Uuid::new_v4().hyphenated().to_string();
    (
        status,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(AMZ_JSON)),
            (
                header::HeaderName::from_static("x-amzn-requestid"),
                HeaderValue::from_str(&request_id).unwrap_or(HeaderValue::from_static("0")),
            ),
        ],
        body,
    )
        .into_response()
}

/// Serves the floor on `listener` (with TCP_NODELAY, as a KMS server sets it) until the
/// process ends.
///
/// # Errors
/// When accepting fails for good.
pub async fn serve(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    let listener = listener.tap_io(|tcp| {
        // Only latency depends on it; a failure leaves a working connection.
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router()).await
}
