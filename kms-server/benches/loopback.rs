//! Rough throughput of Encrypt 4 KiB over HTTP/1.1 keep-alive on loopback, against the
//! floor: an axum handler that reads the same request and returns a fixed JSON body of the
//! same size. Both servers run in this process on a 2-worker runtime; the client replays
//! one request pre-signed with `aws-sigv4` (valid for 15 minutes), so the client's cost is
//! the same for both and the server does the full SigV4 verification every time.
//!
//! `cargo bench -p kubekms-server --bench loopback` (KUBEKMS_BENCH_SECONDS, default 5;
//! KUBEKMS_BENCH_CONNECTIONS, default 16). Reported as a ratio measured in the same run.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::post;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use kms_core::{KeyId, KeySpec, KeyUsage, KmsKey, SecretBytes};
use kubekms_server::memory::{MemoryAuthorizer, MemoryDirectory, MemoryReviewer};
use kubekms_server::{
    AuditLog, Dependencies, Readiness, Server, ServerConfig, SessionSealer, StaticCredentials,
    Transport,
};
use time::OffsetDateTime;

const AK: &str = "AKIAKUBEKMSBENCH0001";
const SK: &str = "bench-secret-0123456789abcdefghijklmnop";

fn signed(addr: SocketAddr, body: &[u8]) -> http::Request<Full<Bytes>> {
    use kubekms_server::test_util::sign_v4;
    let uri = format!("http://{addr}/");
    let mut request = http::Request::builder()
        .method("POST")
        .uri(&uri)
        .header("host", addr.to_string())
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", "TrentService.Encrypt")
        .body(body.to_vec())
        .expect("request");
    sign_v4(
        &mut request,
        AK,
        SK,
        None,
        "local",
        std::time::SystemTime::now(),
    );
    request.map(|b| Full::new(Bytes::from(b)))
}

struct Result {
    requests: u64,
    seconds: f64,
    p50_us: u64,
    p99_us: u64,
}

async fn load(
    addr: SocketAddr,
    template: http::Request<Full<Bytes>>,
    connections: usize,
    seconds: u64,
) -> Result {
    let (parts, body) = template.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    let warmup = Duration::from_secs(1);
    let run = Duration::from_secs(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (parts, body) = (parts.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .expect("handshake");
            tokio::spawn(conn);
            let mut latencies = Vec::with_capacity(100_000);
            loop {
                let now = Instant::now();
                if now - start > warmup + run {
                    break;
                }
                let request = http::Request::from_parts(parts.clone(), Full::new(body.clone()));
                let response = sender.send_request(request).await.expect("send");
                assert_eq!(response.status(), 200, "the benchmark request must succeed");
                response.into_body().collect().await.expect("body");
                if now - start > warmup {
                    latencies.push(u64::try_from(now.elapsed().as_micros()).unwrap_or(u64::MAX));
                }
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("client"));
    }
    all.sort_unstable();
    let pick = |q: f64| {
        all.get(((all.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0)
    };
    Result {
        requests: all.len() as u64,
        seconds: run.as_secs_f64(),
        p50_us: pick(0.5),
        p99_us: pick(0.99),
    }
}

fn main() {
    let seconds: u64 = std::env::var("KUBEKMS_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let connections: usize = std::env::var("KUBEKMS_BENCH_CONNECTIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (kms_addr, floor_addr, response_len) = server_runtime.block_on(async {
        let directory = Arc::new(MemoryDirectory::new("aws", "local"));
        let key = KmsKey::generate(KeyId::generate().expect("id"), KeySpec::SymmetricDefault, KeyUsage::EncryptDecrypt, OffsetDateTime::now_utc()).expect("key");
        let resolved = directory.add_key("bench", "bench-key", key, false);
        directory.add_alias("bench", "alias/bench", resolved.key().key_id()).expect("alias");
        let authorizer = Arc::new(MemoryAuthorizer::new());
        authorizer.allow_all("system:serviceaccount:bench:load", "bench");
        let credentials = StaticCredentials::from_yaml(&format!(
            "credentials:\n- accessKeyId: {AK}\n  secretAccessKey: \"{SK}\"\n  serviceAccount: bench/load\n"
        ))
        .expect("credentials");
        let dependencies = Dependencies {
            directory,
            authorizer,
            reviewer: Arc::new(MemoryReviewer::new()),
            sealer: Arc::new(SessionSealer::new(&SecretBytes::from_slice(&[1; 32])).expect("sealer")),
            credentials: Arc::new(credentials),
            audit: AuditLog::to_writer(std::io::sink()).expect("audit"),
            readiness: Readiness::new(true),
            clock: kubekms_server::system_clock(),
        };
        let config = ServerConfig::new("127.0.0.1:0".parse().expect("addr"), Transport::PlainHttp, "local");
        let server = Server::bind(config, dependencies).await.expect("bind");
        let kms_addr = server.local_addr().expect("addr");
        tokio::spawn(server.run(std::future::pending()));
        // The floor replies with a body as large as Encrypt's (a 4 KiB ciphertext blob).
        let fixed: Bytes = Bytes::from(format!(
            "{{\"CiphertextBlob\":\"{}\",\"KeyId\":\"arn:aws:kms:local:123456789012:key/00000000-0000-4000-8000-000000000000\",\"EncryptionAlgorithm\":\"SYMMETRIC_DEFAULT\"}}",
            "A".repeat(5580)
        ));
        let response_len = fixed.len();
        let floor = axum::Router::new().route(
            "/",
            post(move |_body: Bytes| {
                let fixed = fixed.clone();
                async move { ([("content-type", "application/x-amz-json-1.1")], fixed) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let floor_addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, floor).await });
        (kms_addr, floor_addr, response_len)
    });
    let plaintext =
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, vec![0x5a; 4096]);
    let body = format!("{{\"KeyId\":\"alias/bench\",\"Plaintext\":\"{plaintext}\"}}");
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let floor = client.block_on(load(
        floor_addr,
        signed(floor_addr, body.as_bytes()),
        connections,
        seconds,
    ));
    let kms = client.block_on(load(
        kms_addr,
        signed(kms_addr, body.as_bytes()),
        connections,
        seconds,
    ));
    let rate = |r: &Result| r.requests as f64 / r.seconds.max(f64::MIN_POSITIVE);
    println!(
        "connections={connections} seconds={seconds} request_body={} floor_response={response_len}",
        body.len()
    );
    println!(
        "floor (axum fixed JSON): {:>9.0} req/s  p50 {} us  p99 {} us",
        rate(&floor),
        floor.p50_us,
        floor.p99_us
    );
    println!(
        "kubekms Encrypt 4 KiB:   {:>9.0} req/s  p50 {} us  p99 {} us",
        rate(&kms),
        kms.p50_us,
        kms.p99_us
    );
    println!(
        "cost per request, kubekms / floor: {:.2}x",
        rate(&floor) / rate(&kms)
    );
}
