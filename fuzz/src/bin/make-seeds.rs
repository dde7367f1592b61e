//! Writes the seed corpora that come from the Rust side, each made by the real code path
//! on the fixtures (fuzz/src/lib.rs), into fuzz/corpus/<target>/. Run once after a
//! change of a format, then commit what it wrote:
//!
//!   cargo run --manifest-path fuzz/Cargo.toml --bin make-seeds
//!
//! The AWS API seeds come from botocore (fuzz/seeds/capture_aws.py) and the gRPC C-core
//! stream from grpcio (fuzz/seeds/capture_grpcio.py).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use kms_core::{EncryptionAlgorithm, EncryptionContext, KeyMaterial, KmsKey, SecretBytes, ops};
use kms_plugin::pb::{DecryptRequest, EncryptRequest, StatusRequest};
use kms_plugin::state::record::key_to_record;
use prost::Message as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let folder = kubekms_fuzz::fixtures().join("../corpus").join(target);
    std::fs::create_dir_all(&folder).expect("corpus folder");
    std::fs::write(folder.join(name), bytes).expect("write seed");
}

/// The fixture key cut back to its first `versions` versions, so each version has blobs.
fn key_at(key: &KmsKey, versions: u32) -> KmsKey {
    let mut metadata = key.metadata.clone();
    metadata.versions.truncate(versions as usize);
    let materials: BTreeMap<u32, KeyMaterial> = (1..=versions)
        .map(|v| {
            let m = key.material(v).expect("material");
            let copy = KeyMaterial::from_serialized(
                m.spec(),
                SecretBytes::from_slice(m.serialized().expose()),
            )
            .expect("material copy");
            (v, copy)
        })
        .collect();
    KmsKey::new(metadata, materials).expect("key")
}

async fn tonic_client_stream() -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("kms.sock");
    let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
    let server = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.expect("accept");
        conn.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
            .await
            .expect("settings");
        let mut received = Vec::new();
        let mut buf = [0u8; 65536];
        let mut acked = false;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            received.extend_from_slice(&buf[..n]);
            if !acked && received.len() > 24 {
                conn.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0])
                    .await
                    .expect("ack");
                acked = true;
            }
        }
        received
    });
    let mut client = kms_plugin::client::connect(&socket).await.expect("connect");
    let mut second = client.clone();
    let status = tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(1), client.status(StatusRequest {})).await;
    });
    let encrypt = tokio::spawn(async move {
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            second.encrypt(EncryptRequest {
                plaintext: vec![7; 32],
                uid: "tonic-seed".into(),
            }),
        )
        .await;
    });
    let _ = status.await;
    let _ = encrypt.await;
    server.await.expect("server")
}

#[tokio::main]
async fn main() {
    let fixture = kubekms_fuzz::plugin_fixture();
    let key = &fixture.key;

    // blob_decrypt: a blob of every version, under each context the target offers.
    let contexts = [
        EncryptionContext::new(),
        EncryptionContext::from_pairs([("kubekms:purpose", "kube-apiserver-kms-v2")]).expect("ctx"),
        EncryptionContext::from_pairs([("app", "demo"), ("tier", "db")]).expect("ctx"),
    ];
    for version in 1..=3u32 {
        let older = key_at(key, version);
        for (choice, ctx) in contexts.iter().enumerate() {
            let blob = ops::encrypt(
                &older,
                &[0x5a; 32],
                ctx,
                EncryptionAlgorithm::SymmetricDefault,
            )
            .expect("encrypt");
            let mut seed = vec![choice as u8];
            seed.extend_from_slice(&blob);
            write(
                "blob_decrypt",
                &format!("v{version}-context{choice}"),
                &seed,
            );
        }
    }

    // plugin_kms_v2: what kube-apiserver sends (a 32-byte DEK seed), and a Decrypt of a
    // real reply.
    let plugin = &fixture.plugin;
    let request = EncryptRequest {
        plaintext: (0..32).collect(),
        uid: "6f7cc5a4-0a1b-4c0e-9a51-3c1f5c3c1a27".into(),
    };
    let mut seed = vec![0];
    seed.extend(request.encode_to_vec());
    write("plugin_kms_v2", "encrypt", &seed);
    let reply = plugin.encrypt(&request.plaintext).expect("encrypt");
    let decrypt = DecryptRequest {
        ciphertext: reply.ciphertext,
        uid: "0d6a2b4e-5a4f-4b8e-8d0c-2f6b8a1c9e33".into(),
        key_id: reply.key_id,
        annotations: reply.annotations,
    };
    let mut seed = vec![1];
    seed.extend(decrypt.encode_to_vec());
    write("plugin_kms_v2", "decrypt", &seed);

    // plugin_http2: what a tonic (hyper/h2) client sends; the C-core stream is captured
    // by fuzz/seeds/capture_grpcio.py. Both without the preface, after a 0 (whole).
    let stream = tonic_client_stream().await;
    assert!(stream.len() > 24, "the tonic client sent nothing");
    let mut seed = vec![0];
    seed.extend_from_slice(&stream[24..]);
    write("plugin_http2", "tonic-h2", &seed);

    // state_record: the fixture's record, and records the plugin writes for the key at
    // each version count.
    let keys_dir = kubekms_fuzz::fixtures().join("plugin-state/keys");
    for entry in std::fs::read_dir(&keys_dir).expect("keys") {
        let entry = entry.expect("entry");
        write(
            "state_record",
            "fixture-record.json",
            &std::fs::read(entry.path()).expect("record"),
        );
    }
    for version in 1..=2u32 {
        let record =
            key_to_record(&fixture.store, &key_at(key, version), "kubernetes").expect("record");
        write(
            "state_record",
            &format!("record-v{version}.json"),
            &serde_json::to_vec_pretty(&record).expect("json"),
        );
    }

    // key_from_objects and crd_convert: the objects `kubekms-plugin export` wrote.
    let (kms_key, material) = kubekms_fuzz::exported_objects();
    let pair = serde_json::json!({ "key": kms_key, "material": material });
    write(
        "key_from_objects",
        "exported.json",
        &serde_json::to_vec(&pair).expect("json"),
    );
    let mut with_now = pair.clone();
    with_now["now"] = serde_json::json!(1_796_000_000);
    write(
        "crd_convert",
        "exported.json",
        &serde_json::to_vec(&with_now).expect("json"),
    );

    // key_state_machine: byte strings that `arbitrary` reads as short scenarios.
    for (i, bytes) in [
        &b"\x00\x00\x00\x10\x20\x30\x40\x01\x05\x02\x03\x01\x07\x00\x0a\x08\x09\x0b"[..],
        &b"\x00\x00\x01\x00\x00\x00\x00\x04\x04\x00\x01\x05\x02\x03\x0b\x06\x0a\xff\x03"[..],
        &b"\x00\x01\x00\x22\x00\x00\x00\x07\x05\x01\x6d\x01\x09\x07\x07\x07\x07\x08\x0a\x10"[..],
    ]
    .iter()
    .enumerate()
    {
        write("key_state_machine", &format!("scenario-{i}"), bytes);
    }
    println!("seeds written under {}", Path::new("fuzz/corpus").display());
}
