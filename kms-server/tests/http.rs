//! The HTTP server on loopback, driven by raw signed requests: bad input of every class,
//! HTTP/2 (h2c), timeouts, health endpoints, graceful shutdown.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use time::OffsetDateTime;

const ENCRYPT: &str = "TrentService.Encrypt";

fn app(
    h: &Harness,
    target: Option<&str>,
    body: &[u8],
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    signed_request(
        &h.endpoint(),
        target,
        body,
        ACCESS_KEY,
        SECRET_KEY,
        None,
        OffsetDateTime::now_utc(),
    )
}

#[tokio::test]
async fn every_reply_has_a_request_id_and_bad_input_its_exception() {
    let h = start().await;
    let good = br#"{"KeyId":"alias/app","Plaintext":"aGVsbG8="}"#;
    let (status, headers, body) = send(app(&h, Some(ENCRYPT), good), false).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers["content-type"], "application/x-amz-json-1.1");
    assert_eq!(headers["x-amzn-requestid"].len(), 36);

    let cases: Vec<(Option<&str>, Vec<u8>, u16, &str)> = vec![
        (
            Some("TrentService.CreateKey"),
            b"{}".to_vec(),
            400,
            "UnknownOperationException",
        ),
        (
            Some("DynamoDB_20120810.GetItem"),
            b"{}".to_vec(),
            400,
            "UnknownOperationException",
        ),
        (None, b"{}".to_vec(), 400, "UnknownOperationException"),
        (
            Some(ENCRYPT),
            b"{\"KeyId\":".to_vec(),
            400,
            "SerializationException",
        ),
        (
            Some(ENCRYPT),
            br#"{"KeyId":["alias/app"],"Plaintext":"aGk="}"#.to_vec(),
            400,
            "SerializationException",
        ),
        (
            Some(ENCRYPT),
            br#"{"KeyId":"alias/app"}"#.to_vec(),
            400,
            "ValidationException",
        ),
        (
            Some(ENCRYPT),
            br#"{"KeyId":"not-a-key-id","Plaintext":"aGk="}"#.to_vec(),
            400,
            "NotFoundException",
        ),
        (
            Some(ENCRYPT),
            br#"{"KeyId":"arn:aws:kms:local:1:key/x","Plaintext":"aGk="}"#.to_vec(),
            400,
            "InvalidArnException",
        ),
        (
            Some(ENCRYPT),
            br#"{"KeyId":"alias/bad name","Plaintext":"aGk="}"#.to_vec(),
            400,
            "InvalidAliasNameException",
        ),
    ];
    for (target, body, status, name) in cases {
        let (got, headers, reply) = send(app(&h, target, &body), false).await;
        assert_eq!(
            (got, error_type(&reply).as_str()),
            (status, name),
            "{target:?} {}",
            String::from_utf8_lossy(&body)
        );
        assert!(headers.contains_key("x-amzn-requestid"));
    }

    let huge = vec![b' '; 300 * 1024];
    let (status, headers, reply) = send(app(&h, Some(ENCRYPT), &huge), false).await;
    assert_eq!(
        (status, error_type(&reply).as_str()),
        (413, "RequestEntityTooLargeException")
    );
    assert!(headers.contains_key("x-amzn-requestid"));

    let mut unsigned = app(&h, Some(ENCRYPT), good);
    unsigned.headers_mut().remove("authorization");
    let (status, _, reply) = send(unsigned, false).await;
    assert_eq!(
        (status, error_type(&reply).as_str()),
        (400, "MissingAuthenticationTokenException")
    );

    let get = http::Request::get(format!("{}/", h.endpoint()))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("get");
    let (status, headers, _) = send(get, false).await;
    assert_eq!(status, 404);
    assert!(headers.contains_key("x-amzn-requestid"));

    let (status, _, _) = send(app(&h, Some(ENCRYPT), good), false).await;
    assert_eq!(status, 200, "the server is still up after all of it");
    h.stop().await;
}

#[tokio::test]
async fn http2_with_prior_knowledge() {
    let h = start().await;
    let body = br#"{"KeyId":"alias/app","Plaintext":"aDJj"}"#;
    let (status, headers, reply) = send(app(&h, Some(ENCRYPT), body), true).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
    assert!(headers.contains_key("x-amzn-requestid"));
    h.stop().await;
}

#[tokio::test]
async fn skewed_server_clock_is_signature_expired() {
    let h = start().await;
    h.clock_offset.store(20 * 60, Ordering::Relaxed);
    let (status, _, reply) = send(app(&h, Some("TrentService.ListKeys"), b"{}"), false).await;
    assert_eq!(
        (status, error_type(&reply).as_str()),
        (400, "InvalidSignatureException")
    );
    let message: serde_json::Value = serde_json::from_slice(&reply).expect("json");
    assert!(
        message["message"]
            .as_str()
            .expect("message")
            .starts_with("Signature expired"),
        "{message}"
    );
    h.clock_offset.store(0, Ordering::Relaxed);
    let (status, _, _) = send(app(&h, Some("TrentService.ListKeys"), b"{}"), false).await;
    assert_eq!(status, 200);
    h.stop().await;
}

#[tokio::test]
async fn a_hung_authorizer_is_a_dependency_timeout() {
    let h = start_with(Options {
        configure: Box::new(|c| c.authorize_timeout = Duration::from_millis(200)),
        ..Options::default()
    })
    .await;
    h.authorizer.set_delay(Some(Duration::from_secs(30)));
    let started = std::time::Instant::now();
    let (status, _, reply) = send(
        app(
            &h,
            Some(ENCRYPT),
            br#"{"KeyId":"alias/app","Plaintext":"aGk="}"#,
        ),
        false,
    )
    .await;
    assert_eq!(
        (status, error_type(&reply).as_str()),
        (500, "DependencyTimeoutException")
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "answered by the timeout, not the hang"
    );
    h.authorizer.set_delay(None);
    let (status, _, _) = send(
        app(
            &h,
            Some(ENCRYPT),
            br#"{"KeyId":"alias/app","Plaintext":"aGk="}"#,
        ),
        false,
    )
    .await;
    assert_eq!(status, 200);
    h.stop().await;
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let h = start().await;
    let get = |path: &str| {
        http::Request::get(format!("http://{}{path}", h.health))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("get")
    };
    assert_eq!(send(get("/healthz"), false).await.0, 200);
    assert_eq!(send(get("/readyz"), false).await.0, 200);
    h.readiness.set(false);
    assert_eq!(send(get("/readyz"), false).await.0, 503);
    h.readiness.set(true);
    let (status, _, _) = send(
        app(
            &h,
            Some(ENCRYPT),
            br#"{"KeyId":"alias/missing","Plaintext":"aGk="}"#,
        ),
        false,
    )
    .await;
    assert_eq!(status, 400);
    let (_, _, text) = send(get("/metrics"), false).await;
    let text = String::from_utf8(text).expect("utf8");
    assert!(
        text.contains(r#"kubekms_server_requests_total{service="kms",operation="Encrypt",outcome="NotFoundException"} 1"#),
        "{text}"
    );
    h.stop().await;
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let h = start().await;
    h.authorizer.set_delay(Some(Duration::from_millis(500)));
    let request = app(
        &h,
        Some(ENCRYPT),
        br#"{"KeyId":"alias/app","Plaintext":"aGk="}"#,
    );
    let in_flight = tokio::spawn(send(request, false));
    // Wait for evidence that the request reached the server: the authorizer was asked.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while h.authorizer.calls() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the request never arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let audit = h.stop().await;
    let (status, _, _) = in_flight.await.expect("request task");
    assert_eq!(
        status, 200,
        "the in-flight request completed during shutdown"
    );
    assert!(
        audit.contains("\"eventName\":\"Encrypt\""),
        "its audit record was flushed: {audit}"
    );
}

/// A client that sends its whole body before reading (as most HTTP clients do) and whose
/// body is over the limit reads the 413 and its AWS JSON error: the server reads and
/// discards the rest of the body before it answers, instead of closing on unread data
/// (which resets the connection under a client still sending). Both ways of framing a
/// body: a declared Content-Length over the limit (refused before any of it is read) and
/// a chunked body that crosses the limit while it is read.
#[tokio::test]
async fn an_oversized_body_sent_in_full_gets_the_413_reply_not_a_reset() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let h = start().await;
    // 2 MiB against the default limit of 256 KiB, through a client send buffer of a
    // fixed 64 KiB (no autotuning): far more than the socket buffers hold, so the client
    // is still writing when the server has its answer.
    let body = vec![b' '; 2 * 1024 * 1024];
    for chunked in [false, true] {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_send_buffer_size(64 * 1024).expect("SO_SNDBUF");
        let mut stream = socket.connect(h.addr).await.expect("connect");
        let framing = if chunked {
            "Transfer-Encoding: chunked".to_owned()
        } else {
            format!("Content-Length: {}", body.len())
        };
        let head = format!(
            "POST / HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-amz-json-1.1\r\nX-Amz-Target: {ENCRYPT}\r\n{framing}\r\n\r\n",
            h.addr
        );
        let mut wire = head.into_bytes();
        if chunked {
            for chunk in body.chunks(64 * 1024) {
                wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                wire.extend_from_slice(chunk);
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b"0\r\n\r\n");
        } else {
            wire.extend_from_slice(&body);
        }
        let sent = tokio::time::timeout(Duration::from_secs(30), stream.write_all(&wire))
            .await
            .expect("the server reads the body rather than leaving the client blocked");
        let mut reply = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(30), async {
            let mut buf = [0u8; 16 * 1024];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) => return Ok(()),
                    Ok(n) => {
                        reply.extend_from_slice(&buf[..n]);
                        if complete_reply(&reply) {
                            return Ok(());
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        })
        .await
        .expect("a reply within 30 s");
        assert!(
            sent.is_ok() && read.is_ok(),
            "chunked={chunked}: sending {sent:?}, reading {read:?}, got {:?}",
            String::from_utf8_lossy(&reply)
        );
        let text = String::from_utf8_lossy(&reply);
        let (head, json) = text.split_once("\r\n\r\n").expect("a full reply");
        assert!(
            head.starts_with("HTTP/1.1 413 "),
            "chunked={chunked}: {head}"
        );
        assert!(
            head.to_ascii_lowercase().contains("x-amzn-requestid: "),
            "{head}"
        );
        assert_eq!(
            error_type(json.as_bytes()),
            "RequestEntityTooLargeException",
            "chunked={chunked}"
        );
    }
    let good = br#"{"KeyId":"alias/app","Plaintext":"aGVsbG8="}"#;
    let (status, _, _) = send(app(&h, Some(ENCRYPT), good), false).await;
    assert_eq!(status, 200, "the server is still up");
    h.stop().await;
}

/// Whether `reply` holds a whole HTTP/1.1 reply with a Content-Length body.
fn complete_reply(reply: &[u8]) -> bool {
    let text = String::from_utf8_lossy(reply);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .is_some_and(|length| body.len() >= length)
}
