//! The load client against small servers on loopback that count what they receive: every
//! request is accounted for (a success or an error by its type, in the warm-up or the timed
//! phase), every request is signed, Decrypt sends the blob of the Encrypt made first, and
//! hung requests and dropped connections are counted, not lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use kubekms_bench::kms::{KmsEndpoint, Operation, StaticCredentials};
use kubekms_bench::load::{LoadConfig, LoadReport, run_load};

#[derive(Default)]
struct Seen {
    requests: AtomicU64,
    unsigned: AtomicU64,
}

async fn serve(router: Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

fn config(addr: std::net::SocketAddr, operation: Operation) -> LoadConfig {
    let mut config = LoadConfig::new(
        KmsEndpoint {
            addr,
            region: "us-east-1".to_owned(),
            credentials: StaticCredentials::unchecked(),
        },
        "alias/bench",
        operation,
    );
    config.connections = 4;
    config.warmup = Duration::from_millis(100);
    config.duration = Duration::from_millis(400);
    config.request_timeout = Duration::from_secs(5);
    config
}

fn total(report: &LoadReport) -> u64 {
    report.ok
        + report.untimed_ok
        + report.errors.values().sum::<u64>()
        + report.untimed_errors.values().sum::<u64>()
}

fn signed(headers: &HeaderMap) -> bool {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDKUBEKMSBENCH0000/")
        && auth.contains("/us-east-1/kms/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=")
        && headers.contains_key("x-amz-date")
}

/// Every other request fails with a KMS error; the server counts all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_counted_as_a_success_or_by_its_error_type() {
    let seen = Arc::new(Seen::default());
    let router = Router::new()
        .route(
            "/",
            post(
                |State(seen): State<Arc<Seen>>, headers: HeaderMap, _body: Bytes| async move {
                    if !signed(&headers) {
                        seen.unsigned.fetch_add(1, Ordering::Relaxed);
                    }
                    let n = seen.requests.fetch_add(1, Ordering::Relaxed);
                    if n % 2 == 0 {
                        (StatusCode::OK, r#"{"CiphertextBlob":"AA=="}"#.to_owned())
                    } else {
                        (
                        StatusCode::BAD_REQUEST,
                        r#"{"__type":"com.amazonaws.kms#DisabledException","message":"disabled"}"#
                            .to_owned(),
                    )
                    }
                },
            ),
        )
        .with_state(Arc::clone(&seen));
    let addr = serve(router).await;
    let report = run_load(&config(addr, Operation::Encrypt4k))
        .await
        .expect("run");
    assert_eq!(total(&report), seen.requests.load(Ordering::Relaxed));
    assert!(report.ok > 0, "{report:?}");
    let disabled = report
        .errors
        .get("400 DisabledException")
        .copied()
        .unwrap_or(0);
    assert!(disabled > 0, "{report:?}");
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    assert_eq!(report.error_count(), disabled);
    assert_eq!(report.latency.len(), report.ok);
    assert_eq!(seen.unsigned.load(Ordering::Relaxed), 0);
}

/// Decrypt first makes a blob with one Encrypt, then sends exactly that blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decrypt_sends_the_blob_that_encrypt_returned() {
    let seen = Arc::new(Seen::default());
    let router = Router::new()
        .route(
            "/",
            post(
                |State(seen): State<Arc<Seen>>, headers: HeaderMap, body: Bytes| async move {
                    seen.requests.fetch_add(1, Ordering::Relaxed);
                    let target = headers
                        .get("x-amz-target")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let request: serde_json::Value =
                        serde_json::from_slice(&body).unwrap_or_default();
                    match target.as_str() {
                        "TrentService.Encrypt" if request["Plaintext"].as_str().is_some() => {
                            (StatusCode::OK, r#"{"CiphertextBlob":"YmxvYi0xMjM="}"#)
                        }
                        "TrentService.Decrypt" if request["CiphertextBlob"] == "YmxvYi0xMjM=" => {
                            (StatusCode::OK, r#"{"Plaintext":"AA=="}"#)
                        }
                        _ => (
                            StatusCode::BAD_REQUEST,
                            r#"{"__type":"InvalidCiphertextException"}"#,
                        ),
                    }
                },
            ),
        )
        .with_state(Arc::clone(&seen));
    let addr = serve(router).await;
    let report = run_load(&config(addr, Operation::Decrypt4k))
        .await
        .expect("run");
    assert!(report.ok > 0, "{report:?}");
    assert!(report.all_errors().is_empty(), "{report:?}");
    // The one Encrypt that made the blob, and every Decrypt.
    assert_eq!(total(&report) + 1, seen.requests.load(Ordering::Relaxed));
}

/// A Decrypt whose Encrypt fails stops with the AWS error, not a run of garbage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decrypt_without_a_blob_is_an_error_naming_the_failure() {
    let router = Router::new().route(
        "/",
        post(|| async {
            (
                StatusCode::BAD_REQUEST,
                r#"{"__type":"NotFoundException","message":"no such key"}"#,
            )
        }),
    );
    let addr = serve(router).await;
    let err = run_load(&config(addr, Operation::Decrypt4k))
        .await
        .expect_err("no blob");
    assert!(err.to_string().contains("400 NotFoundException"), "{err}");
}

/// A request that never gets a reply counts as `timeout`; the client drops that
/// connection, opens another and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_requests_are_timeouts_and_the_load_goes_on() {
    let seen = Arc::new(Seen::default());
    let router = Router::new()
        .route(
            "/",
            post(|State(seen): State<Arc<Seen>>| async move {
                let n = seen.requests.fetch_add(1, Ordering::Relaxed);
                if n % 10 == 3 {
                    // Hangs past the client's timeout.
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
                (StatusCode::OK, "{}")
            }),
        )
        .with_state(Arc::clone(&seen));
    let addr = serve(router).await;
    let mut config = config(addr, Operation::GenerateDataKey);
    config.request_timeout = Duration::from_millis(100);
    config.duration = Duration::from_millis(600);
    let report = run_load(&config).await.expect("run");
    let all = report.all_errors();
    // More timeouts than connections: connections were replaced after a timeout.
    let timeouts = all.get("timeout").copied().unwrap_or(0);
    assert!(timeouts > config.connections as u64, "{report:?}");
    assert!(report.ok > 0, "{report:?}");
    assert_eq!(all.keys().filter(|k| *k != "timeout").count(), 0, "{all:?}");
}

/// A server that closes every connection without a reply: each request is a transport
/// error, and each is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_closed_without_reply_are_transport_errors() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                // The start of the request, then the connection is closed.
                let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await;
            });
        }
    });
    let report = run_load(&config(addr, Operation::Encrypt4k))
        .await
        .expect("run");
    let all = report.all_errors();
    assert_eq!(report.ok + report.untimed_ok, 0, "{report:?}");
    // Closed before or after the request was written: reset or closed, nothing else.
    assert!(
        all.keys()
            .all(|k| k == "transport: connection closed" || k == "transport: connection reset"),
        "{all:?}"
    );
    let closed: u64 = all.values().sum();
    assert!(closed > 4, "{all:?}");
    // One connection per failed request: each failure was followed by a new connection.
    assert!(accepted.load(Ordering::Relaxed) >= closed, "{all:?}");
}

#[tokio::test]
async fn a_closed_port_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let err = run_load(&config(addr, Operation::Encrypt4k))
        .await
        .expect_err("nothing listens");
    assert!(err.to_string().contains("connecting to"), "{err}");
}
