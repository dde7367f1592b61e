//! The plugin's socket called by a gRPC client of another implementation: gRPC C-core
//! through Python's grpcio (the pinned venv of hack/tools/grpcio.sh), with its default
//! channel options. C-core sends the percent-encoded socket path as `:authority`, which h2
//! refused with RST_STREAM(PROTOCOL_ERROR) before the plugin read its connections through
//! `kms_plugin::http2::AnyAuthority`. Requests are encoded and replies decoded by prost
//! here, so Python needs no generated code.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use kms_plugin::client::connect;
use kms_plugin::metrics::Metrics;
use kms_plugin::pb::{
    DecryptRequest, DecryptResponse, EncryptRequest, EncryptResponse, StatusRequest, StatusResponse,
};
use kms_plugin::server::{ServeConfig, serve};
use kms_plugin::{Plugin, StateDir};
use prost::Message as _;
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::io::AsyncWriteExt as _;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate is in the repository")
        .to_path_buf()
}

/// The venv's python, made (or found in the cache) by hack/tools/grpcio.sh.
async fn grpcio_python() -> PathBuf {
    let script = repo_root().join("hack/tools/grpcio.sh");
    let out = tokio::time::timeout(
        Duration::from_secs(600),
        tokio::process::Command::new(&script)
            .arg("--print-dir")
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("hack/tools/grpcio.sh finishes within 10 minutes")
    .expect("run hack/tools/grpcio.sh");
    assert!(out.status.success(), "hack/tools/grpcio.sh failed");
    let bin = String::from_utf8(out.stdout).expect("utf-8");
    Path::new(bin.trim()).join("python")
}

enum Call {
    Status,
    Encrypt(EncryptRequest),
    Decrypt(DecryptRequest),
}

/// Runs the calls in one grpcio channel (one connection, so C-core's HPACK table carries
/// over from call to call); one JSON result per call.
async fn grpcio_calls(
    python: &Path,
    socket: &Path,
    authority: Option<&str>,
    calls: &[Call],
) -> Vec<Value> {
    let calls: Vec<Value> = calls
        .iter()
        .map(|c| {
            let (method, bytes) = match c {
                Call::Status => ("Status", StatusRequest {}.encode_to_vec()),
                Call::Encrypt(r) => ("Encrypt", r.encode_to_vec()),
                Call::Decrypt(r) => ("Decrypt", r.encode_to_vec()),
            };
            json!({ "method": method, "request": hex::encode(bytes) })
        })
        .collect();
    let job = json!({ "socket": socket, "authority": authority, "calls": calls });
    let mut child = tokio::process::Command::new(python)
        .arg(repo_root().join("kms-plugin/tests/grpcio_client.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start the grpcio client");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(job.to_string().as_bytes())
        .await
        .expect("write the job");
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the grpcio client finishes within 2 minutes")
        .expect("grpcio client");
    assert!(out.status.success(), "the grpcio client failed");
    serde_json::from_slice(&out.stdout).expect("JSON results")
}

fn response<M: prost::Message + Default>(result: &Value) -> M {
    let hex_bytes = result["response"]
        .as_str()
        .unwrap_or_else(|| panic!("the call failed: {result}"));
    M::decode(hex::decode(hex_bytes).expect("hex").as_slice()).expect("protobuf")
}

#[tokio::test]
async fn grpc_c_core_clients_are_served_whatever_their_authority() {
    let python = grpcio_python().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    StateDir::new(&state)
        .init(OffsetDateTime::now_utc())
        .expect("init");
    let socket = tmp.path().join("kms.sock");
    let plugin = Plugin::open(StateDir::new(&state), Arc::new(Metrics::new())).expect("open");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let config = ServeConfig {
        socket: socket.clone(),
        http_addr: None,
        reload_interval: Duration::from_secs(60),
    };
    let server = tokio::spawn(serve(plugin, config, async move {
        let _ = stop_rx.await;
    }));
    let mut tonic_client = None;
    for _ in 0..500 {
        if let Ok(c) = connect(&socket).await {
            tonic_client = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut tonic_client = tonic_client.expect("the plugin serves its socket");
    let expected_key_id = tonic_client
        .status(StatusRequest {})
        .await
        .expect("status over tonic")
        .into_inner()
        .key_id;

    // C-core's default (the percent-encoded path), the bare path (grpc-java, old C-core),
    // and `localhost` (what grpc-go and kube-apiserver send).
    for authority in [
        None,
        Some(socket.to_str().expect("utf-8 path")),
        Some("localhost"),
    ] {
        let seed = format!("dek seed sent with authority {authority:?}").into_bytes();
        let results = grpcio_calls(
            &python,
            &socket,
            authority,
            &[
                Call::Status,
                Call::Encrypt(EncryptRequest {
                    plaintext: seed.clone(),
                    uid: "grpcio-encrypt".into(),
                }),
                // The second Status reuses C-core's dynamic HPACK entries.
                Call::Status,
            ],
        )
        .await;
        assert_eq!(results.len(), 3);
        for i in [0, 2] {
            let st: StatusResponse = response(&results[i]);
            assert_eq!(
                (st.version.as_str(), st.healthz.as_str()),
                ("v2", "ok"),
                "authority {authority:?}"
            );
            assert_eq!(st.key_id, expected_key_id);
        }
        let enc: EncryptResponse = response(&results[1]);
        assert_eq!(enc.key_id, expected_key_id);

        // What grpcio encrypted, tonic decrypts, and the other way round.
        let back = tonic_client
            .decrypt(DecryptRequest {
                ciphertext: enc.ciphertext.clone(),
                uid: "tonic-decrypt".into(),
                key_id: enc.key_id.clone(),
                annotations: enc.annotations.clone(),
            })
            .await
            .expect("tonic decrypts grpcio's ciphertext")
            .into_inner()
            .plaintext;
        assert_eq!(back, seed);
        let from_tonic = tonic_client
            .encrypt(EncryptRequest {
                plaintext: seed.clone(),
                uid: "tonic-encrypt".into(),
            })
            .await
            .expect("tonic encrypt")
            .into_inner();
        let mut tampered = from_tonic.ciphertext.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        let results = grpcio_calls(
            &python,
            &socket,
            authority,
            &[
                Call::Decrypt(DecryptRequest {
                    ciphertext: from_tonic.ciphertext.clone(),
                    uid: "grpcio-decrypt".into(),
                    key_id: from_tonic.key_id.clone(),
                    annotations: from_tonic.annotations.clone(),
                }),
                // An error comes back as the plugin's gRPC status, not as a reset stream.
                Call::Decrypt(DecryptRequest {
                    ciphertext: tampered,
                    uid: "grpcio-tampered".into(),
                    key_id: from_tonic.key_id.clone(),
                    annotations: HashMap::from_iter(from_tonic.annotations.clone()),
                }),
            ],
        )
        .await;
        let dec: DecryptResponse = response(&results[0]);
        assert_eq!(dec.plaintext, seed);
        assert_eq!(
            results[1]["code"], "INVALID_ARGUMENT",
            "authority {authority:?}: {}",
            results[1]
        );
    }

    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("the server stops")
        .expect("server task")
        .expect("serve");
}
