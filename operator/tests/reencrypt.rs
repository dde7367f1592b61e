//! One page of a re-encryption pass against a fake Secrets API (a `tower_test` mock, the
//! controller-rs pattern): what is sent (a metadata list, then one empty merge patch per
//! Secret), and what each answer does: 429 with Retry-After pauses every rewrite and
//! halves the limit, then the Secret is tried again; 422 names the Secret and the pass
//! goes on; 404 counts as rewritten; 500 fails the page without counting anything.
//! The clock is tokio's paused clock, so the Retry-After is measured, not slept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use kubekms_k8s::ReencryptionStatus;
use kubekms_operator::reencrypt::{
    AdaptiveLimit, PHASE_DONE, PHASE_REWRITING, ReencryptConfig, rewrite_page,
};
use serde_json::json;
use tokio::time::Instant;

/// What the fake answers to the patch of one Secret, in order (then 200).
type Script = HashMap<String, Vec<(u16, Option<&'static str>)>>;

#[derive(Default)]
struct Seen {
    /// (method, path, accept or content-type, body) of each request.
    requests: Vec<(String, String, String, String)>,
    /// When each patch arrived, by Secret.
    patched_at: HashMap<String, Vec<Instant>>,
}

fn secret_meta(namespace: &str, name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadata",
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": "7"}
    })
}

fn start(
    secrets: &[(&str, &str)],
    continue_token: Option<&str>,
    mut script: Script,
) -> (Client, Arc<Mutex<Seen>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let items: Vec<serde_json::Value> = secrets.iter().map(|(ns, n)| secret_meta(ns, n)).collect();
    let list = json!({
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadataList",
        "metadata": {"resourceVersion": "9", "continue": continue_token.unwrap_or("")},
        "items": items,
    });
    let record = seen.clone();
    tokio::spawn(async move {
        while let Some((request, respond)) = handle.next_request().await {
            let method = request.method().to_string();
            let path = request.uri().path().to_owned();
            let header = if method == "GET" {
                "accept"
            } else {
                "content-type"
            };
            let kind = request
                .headers()
                .get(header)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let body = http_body_util::BodyExt::collect(request.into_body())
                .await
                .expect("body")
                .to_bytes();
            let body = String::from_utf8_lossy(&body).into_owned();
            record
                .lock()
                .expect("seen")
                .requests
                .push((method.clone(), path.clone(), kind, body));
            let (status, retry_after, reply) = if method == "GET" {
                (200, None, list.clone())
            } else {
                let name = path.rsplit('/').next().unwrap_or_default().to_owned();
                record
                    .lock()
                    .expect("seen")
                    .patched_at
                    .entry(name.clone())
                    .or_default()
                    .push(Instant::now());
                let (status, retry_after) = script
                    .get_mut(&name)
                    .and_then(|answers| (!answers.is_empty()).then(|| answers.remove(0)))
                    .unwrap_or((200, None));
                let reply = if status == 200 {
                    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}})
                } else {
                    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                           "message": format!("refused {name} with {status}"), "code": status})
                };
                (status, retry_after, reply)
            };
            let mut response = Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .header("x-kubernetes-pf-flowschema-uid", "flow-uid")
                .header("x-kubernetes-pf-prioritylevel-uid", "level-uid");
            if let Some(seconds) = retry_after {
                response = response.header("retry-after", seconds);
            }
            respond.send_response(
                response
                    .body(Body::from(serde_json::to_vec(&reply).expect("json")))
                    .expect("response"),
            );
        }
    });
    (Client::new(service, "default"), seen)
}

fn rewriting() -> ReencryptionStatus {
    ReencryptionStatus {
        target_version: 2,
        phase: PHASE_REWRITING.to_owned(),
        continue_token: Some("page-2".to_owned()),
        secrets_rewritten: 500,
        ..ReencryptionStatus::default()
    }
}

#[tokio::test(start_paused = true)]
async fn overload_pauses_every_rewrite_and_each_secret_is_counted_once() {
    let secrets = [
        ("team-a", "s1"),
        ("team-a", "s2"),
        ("team-b", "frozen"),
        ("team-b", "deleted"),
        ("team-b", "s5"),
    ];
    let script = Script::from([
        ("s2".to_owned(), vec![(429, Some("3")), (429, None)]),
        ("frozen".to_owned(), vec![(422, None)]),
        ("deleted".to_owned(), vec![(404, None)]),
    ]);
    let (client, seen) = start(&secrets, Some("page-3"), script);
    let limit = Mutex::new(AdaptiveLimit::new(8));
    let mut status = rewriting();
    let config = ReencryptConfig {
        page_size: 500,
        secrets_per_second: 1000,
        max_in_flight: 8,
    };
    let started = Instant::now();
    let rewritten = rewrite_page(&client, &limit, &mut status, config, "t1")
        .await
        .expect("page");

    assert_eq!(rewritten, 4, "s1, s2 (third try), deleted, s5");
    assert_eq!(status.secrets_rewritten, 504);
    assert_eq!(status.secrets_failed, 1);
    assert_eq!(
        status.failed_secrets,
        vec!["team-b/frozen: refused frozen with 422".to_owned()]
    );
    assert_eq!(status.continue_token.as_deref(), Some("page-3"));
    assert_eq!(status.phase, PHASE_REWRITING);

    let seen = seen.lock().expect("seen");
    // The list asks for metadata only, from the saved token, one page.
    let (method, path, accept, _) = &seen.requests[0];
    assert_eq!((method.as_str(), path.as_str()), ("GET", "/api/v1/secrets"));
    assert!(accept.contains("as=PartialObjectMetadataList"), "{accept}");
    // Every rewrite is an empty merge patch of one Secret in its namespace.
    for (method, path, content_type, body) in &seen.requests[1..] {
        assert_eq!(method, "PATCH");
        assert!(path.starts_with("/api/v1/namespaces/team-"), "{path}");
        assert_eq!(content_type, "application/merge-patch+json");
        assert_eq!(body, "{}");
    }
    // s2 was tried three times: after the first 429 nothing was sent for its 3 s, after
    // the second (no Retry-After) for 1 s.
    let tries = &seen.patched_at["s2"];
    assert_eq!(tries.len(), 3);
    assert!(tries[1] - tries[0] >= Duration::from_secs(3), "{tries:?}");
    assert!(tries[2] - tries[1] >= Duration::from_secs(1), "{tries:?}");
    for (name, at) in &seen.patched_at {
        for t in at {
            let during_pause = *t > tries[0] && *t < tries[0] + Duration::from_secs(3);
            assert!(!during_pause, "{name} was sent during the Retry-After");
        }
    }
    assert_eq!(seen.patched_at["s1"].len(), 1);
    assert_eq!(seen.patched_at["frozen"].len(), 1);
    assert!(started.elapsed() >= Duration::from_secs(4));
    // Two refusals halved the limit twice, to one at a time; the four answers after them
    // grew it by at most one.
    assert!(limit.lock().expect("limit").allowed() <= 2);
}

#[tokio::test(start_paused = true)]
async fn the_last_page_finishes_the_pass_and_a_server_error_counts_nothing() {
    let (client, _) = start(&[("team-a", "s1")], None, Script::new());
    let limit = Mutex::new(AdaptiveLimit::new(4));
    let mut status = rewriting();
    rewrite_page(
        &client,
        &limit,
        &mut status,
        ReencryptConfig::default(),
        "t9",
    )
    .await
    .expect("page");
    assert_eq!(
        (status.phase.as_str(), status.finished.as_deref()),
        (PHASE_DONE, Some("t9"))
    );
    assert_eq!(
        (status.secrets_rewritten, status.continue_token),
        (501, None)
    );

    let script = Script::from([("s2".to_owned(), vec![(500, None)])]);
    let (client, _) = start(&[("team-a", "s1"), ("team-a", "s2")], Some("next"), script);
    let mut status = rewriting();
    let before = status.clone();
    let error = rewrite_page(
        &client,
        &limit,
        &mut status,
        ReencryptConfig::default(),
        "t9",
    )
    .await
    .expect_err("a 500 fails the page");
    assert!(error.to_string().contains("HTTP 500"), "{error}");
    assert_eq!(
        status, before,
        "a failed page is retried from the same token"
    );
}

#[tokio::test(start_paused = true)]
async fn the_ceiling_on_secrets_per_second_holds() {
    let secrets: Vec<(String, String)> = (0..20)
        .map(|i| ("team-a".to_owned(), format!("s{i}")))
        .collect();
    let refs: Vec<(&str, &str)> = secrets
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let (client, _) = start(&refs, None, Script::new());
    let limit = Mutex::new(AdaptiveLimit::new(16));
    let mut status = rewriting();
    let config = ReencryptConfig {
        page_size: 500,
        secrets_per_second: 10,
        max_in_flight: 16,
    };
    let started = Instant::now();
    rewrite_page(&client, &limit, &mut status, config, "t1")
        .await
        .expect("page");
    // 20 rewrites spaced 100 ms apart: the last starts 1.9 s after the first.
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
}

/// A kube-apiserver that answers the list and then never answers a rewrite: the rewrite
/// client's read timeout (the calls' timeout, see `clients::rewrites_client`) ends the
/// wait, the page fails and nothing is counted. A real TCP server, since the timeout is
/// in the client's connector.
#[tokio::test]
async fn a_rewrite_that_is_never_answered_times_out_and_fails_the_page() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let patches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen_patches = patches.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            if head.starts_with(b"GET ") {
                let body = serde_json::to_vec(&json!({
                    "apiVersion": "meta.k8s.io/v1",
                    "kind": "PartialObjectMetadataList",
                    "metadata": {"resourceVersion": "9"},
                    "items": [secret_meta("team-a", "s1")],
                }))
                .expect("json");
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(&body).await;
            } else {
                // A rewrite: read, never answered, connection kept open.
                seen_patches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(conn);
            }
        }
    });
    let mut config = kube::Config::new(format!("http://127.0.0.1:{port}").parse().expect("url"));
    config.read_timeout = Some(Duration::from_secs(1));
    let client = kubekms_operator::clients::rewrites_client(config).expect("client");
    let limit = Mutex::new(AdaptiveLimit::new(4));
    let mut status = rewriting();
    let before = status.clone();
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        rewrite_page(
            &client,
            &limit,
            &mut status,
            ReencryptConfig::default(),
            "t1",
        ),
    )
    .await
    .expect("the page gives up on its own, within the read timeout");
    assert!(result.is_err(), "a hung rewrite fails the page");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(patches.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(
        status, before,
        "nothing counted; the page is retried from its token"
    );
}
