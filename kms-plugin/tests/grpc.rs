//! The KMS v2 server over a real Unix socket, called by a real tonic client, exactly as
//! kube-apiserver calls it: Status/Encrypt/Decrypt, every kind of bad input, socket
//! handling, rotation without restart (the periodic reload, and the reload a Decrypt asks
//! for), and two instances on one state folder.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kms_plugin::client::{Client, connect};
use kms_plugin::metrics::Metrics;
use kms_plugin::pb::{DecryptRequest, EncryptRequest, StatusRequest, StatusResponse};
use kms_plugin::server::{ServeConfig, serve};
use kms_plugin::service::{ANNOTATION_FORMAT, MAX_PLAINTEXT};
use kms_plugin::{Plugin, PluginError, StateDir, format_key_id, parse_key_id};
use time::OffsetDateTime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

struct Running {
    socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), PluginError>>,
    plugin: Plugin,
}

impl Running {
    async fn client(&self) -> Client {
        for _ in 0..200 {
            if self.socket.exists()
                && let Ok(c) = connect(&self.socket).await
            {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("server on {} never came up", self.socket.display());
    }

    async fn stop(mut self) -> Result<(), PluginError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.handle.await.expect("server task panicked")
    }
}

fn start(state: &Path, socket: &Path, reload: Duration) -> Running {
    let plugin = Plugin::open(StateDir::new(state), Arc::new(Metrics::new())).expect("open state");
    let (tx, rx) = oneshot::channel::<()>();
    let config = ServeConfig {
        socket: socket.to_path_buf(),
        http_addr: None,
        reload_interval: reload,
    };
    let handle = tokio::spawn(serve(plugin.clone(), config, async move {
        let _ = rx.await;
    }));
    Running {
        socket: socket.to_path_buf(),
        stop: Some(tx),
        handle,
        plugin,
    }
}

fn init(dir: &Path) {
    StateDir::new(dir)
        .init(OffsetDateTime::now_utc())
        .expect("init");
}

async fn status(c: &mut Client) -> StatusResponse {
    c.status(StatusRequest {})
        .await
        .expect("status")
        .into_inner()
}

async fn encrypt(c: &mut Client, plaintext: &[u8]) -> kms_plugin::pb::EncryptResponse {
    c.encrypt(EncryptRequest {
        plaintext: plaintext.to_vec(),
        uid: "test-encrypt".into(),
    })
    .await
    .expect("encrypt")
    .into_inner()
}

async fn decrypt(
    c: &mut Client,
    ciphertext: &[u8],
    key_id: &str,
    annotations: HashMap<String, Vec<u8>>,
) -> Result<Vec<u8>, tonic::Status> {
    c.decrypt(DecryptRequest {
        ciphertext: ciphertext.to_vec(),
        uid: "test-decrypt".into(),
        key_id: key_id.to_owned(),
        annotations,
    })
    .await
    .map(|r| r.into_inner().plaintext)
}

fn is_fqdn(name: &str) -> bool {
    let labels: Vec<&str> = name.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn random(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let n = (len - out.len()).min(1024);
        out.extend_from_slice(kms_core::ops::generate_random(n).expect("random").expose());
    }
    out
}

#[tokio::test]
async fn status_encrypt_decrypt_round_trip_as_kube_apiserver_expects() {
    let tmp = tempfile::tempdir().expect("tempdir");
    init(&tmp.path().join("state"));
    let server = start(
        &tmp.path().join("state"),
        &tmp.path().join("kms.sock"),
        Duration::from_secs(2),
    );
    let mut c = server.client().await;

    let st = status(&mut c).await;
    assert_eq!(st.version, "v2");
    assert_eq!(st.healthz, "ok");
    assert!(
        !st.key_id.is_empty() && st.key_id.len() <= 1024,
        "{}",
        st.key_id
    );
    let (_, version) = parse_key_id(&st.key_id).expect("key_id parses");
    assert_eq!(version, 1);

    let seed = random(32);
    let enc = encrypt(&mut c, &seed).await;
    assert!(!enc.ciphertext.is_empty() && enc.ciphertext.len() <= 1024);
    assert_eq!(
        enc.key_id, st.key_id,
        "Encrypt's key_id must equal Status's"
    );
    let total: usize = enc.annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    assert!(total < 32 * 1024);
    for k in enc.annotations.keys() {
        assert!(
            is_fqdn(k),
            "annotation key {k:?} is not a fully qualified domain name"
        );
    }
    assert!(
        !enc.ciphertext.windows(seed.len()).any(|w| w == seed),
        "the seed appears in the ciphertext"
    );
    let back = decrypt(
        &mut c,
        &enc.ciphertext,
        &enc.key_id,
        enc.annotations.clone(),
    )
    .await
    .expect("decrypt");
    assert_eq!(back, seed);

    // Two encryptions of one seed differ (random salt and nonce).
    let again = encrypt(&mut c, &seed).await;
    assert_ne!(again.ciphertext, enc.ciphertext);

    // The largest plaintext whose ciphertext kube-apiserver accepts, and one byte more.
    let max = encrypt(&mut c, &random(MAX_PLAINTEXT)).await;
    assert_eq!(max.ciphertext.len(), 1024);
    let too_big = c
        .encrypt(EncryptRequest {
            plaintext: random(MAX_PLAINTEXT + 1),
            uid: "too-big".into(),
        })
        .await
        .expect_err("too large");
    assert_eq!(too_big.code(), tonic::Code::InvalidArgument);
    let empty = c
        .encrypt(EncryptRequest {
            plaintext: Vec::new(),
            uid: "empty".into(),
        })
        .await
        .expect_err("empty");
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn bad_input_is_refused_with_a_grpc_error_and_the_server_stays_healthy() {
    let tmp = tempfile::tempdir().expect("tempdir");
    init(&tmp.path().join("state"));
    let server = start(
        &tmp.path().join("state"),
        &tmp.path().join("kms.sock"),
        Duration::from_secs(2),
    );
    let mut c = server.client().await;
    let seed = b"0123456789abcdef0123456789ABCDEF".to_vec();
    let enc = encrypt(&mut c, &seed).await;
    let key_id = enc.key_id.clone();
    let ann = enc.annotations.clone();
    let mut refusals: Vec<tonic::Status> = Vec::new();

    // Random garbage of many lengths up to 64 KiB.
    for len in [
        0, 1, 2, 16, 81, 82, 83, 113, 114, 115, 500, 1023, 1024, 1025, 4096, 6144, 6145, 65_536,
    ] {
        let garbage = random(len);
        let err = decrypt(&mut c, &garbage, &key_id, ann.clone())
            .await
            .expect_err("garbage decrypted");
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "len {len}: {err:?}"
        );
        refusals.push(err);
    }
    // Garbage that starts like a real blob (same header), random after it.
    for len in [114, 200, 1024, 65_536] {
        let mut g = enc.ciphertext[..66].to_vec();
        g.extend(random(len - 66));
        let err = decrypt(&mut c, &g, &key_id, ann.clone())
            .await
            .expect_err("forged header decrypted");
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "len {len}: {err:?}"
        );
    }
    // Every single flipped byte.
    for i in 0..enc.ciphertext.len() {
        let mut flipped = enc.ciphertext.clone();
        flipped[i] ^= 0x40;
        let err = decrypt(&mut c, &flipped, &key_id, ann.clone())
            .await
            .expect_err("flipped byte decrypted");
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "byte {i}: {err:?}"
        );
        refusals.push(err);
    }
    // Truncated and extended.
    for len in [0, 1, 65, 66, 82, enc.ciphertext.len() - 1] {
        let err = decrypt(&mut c, &enc.ciphertext[..len], &key_id, ann.clone())
            .await
            .expect_err("truncated decrypted");
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "len {len}: {err:?}"
        );
    }
    for extra in [1usize, 16, 1000] {
        let mut longer = enc.ciphertext.clone();
        longer.extend(random(extra));
        let err = decrypt(&mut c, &longer, &key_id, ann.clone())
            .await
            .expect_err("extended decrypted");
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "+{extra}: {err:?}"
        );
    }
    // An unknown material version: a well-formed blob and key_id naming version 9.
    let (key, _) = parse_key_id(&key_id).expect("parse");
    let mut v9 = enc.ciphertext.clone();
    v9[18..22].copy_from_slice(&9u32.to_be_bytes());
    let err = decrypt(&mut c, &v9, &format_key_id(key, 9), ann.clone())
        .await
        .expect_err("unknown version");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    // A key_id that does not match the blob: another version, another key, junk, empty.
    let stranger = format_key_id(kms_core::KeyId::single_from_random([42; 16]), 1);
    for wrong in [
        format_key_id(key, 2),
        stranger,
        "junk".to_owned(),
        String::new(),
    ] {
        let err = decrypt(&mut c, &enc.ciphertext, &wrong, ann.clone())
            .await
            .expect_err("mismatched key_id");
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{wrong:?}: {err:?}"
        );
        refusals.push(err);
    }
    // Annotations that this plugin did not write.
    let mut extra = ann.clone();
    extra.insert("other.example.com".into(), b"x".to_vec());
    let wrong_value = HashMap::from([(ANNOTATION_FORMAT.to_owned(), b"99".to_vec())]);
    for bad in [extra, wrong_value] {
        let err = decrypt(&mut c, &enc.ciphertext, &key_id, bad)
            .await
            .expect_err("bad annotation");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        refusals.push(err);
    }

    // Nothing secret in any error text.
    let seed_text = String::from_utf8_lossy(&seed).into_owned();
    for r in &refusals {
        assert!(!r.message().contains(&seed_text), "{r:?}");
        assert!(!r.message().contains("0123456789abcdef"), "{r:?}");
    }
    // Still up and healthy, and still decrypting the real thing.
    let st = status(&mut c).await;
    assert_eq!(st.healthz, "ok");
    let back = decrypt(&mut c, &enc.ciphertext, &key_id, ann)
        .await
        .expect("decrypt after abuse");
    assert_eq!(back, seed);
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn socket_is_private_stale_sockets_are_replaced_and_files_are_never_deleted() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    init(&state);

    // A stale socket left by a crashed process: replaced.
    let socket = tmp.path().join("kms.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("stale socket"));
    assert!(
        std::fs::symlink_metadata(&socket)
            .expect("stat")
            .file_type()
            .is_socket()
    );
    let server = start(&state, &socket, Duration::from_secs(2));
    let mut c = server.client().await;
    assert_eq!(status(&mut c).await.healthz, "ok");
    let mode = std::fs::metadata(&socket)
        .expect("stat")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");

    // A socket that a live server holds: refused, and the live one keeps working.
    let second = start(&state, &socket, Duration::from_secs(2));
    let err = second.stop().await.expect_err("took over a live socket");
    assert!(err.to_string().contains("in use"), "{err}");
    assert_eq!(status(&mut c).await.healthz, "ok");

    // Graceful stop removes the socket.
    server.stop().await.expect("clean stop");
    assert!(!socket.exists(), "socket left behind");

    // A regular file where the socket should go: refused, and the file is untouched.
    let file = tmp.path().join("not-a-socket");
    std::fs::write(&file, b"precious").expect("write");
    let refused = start(&state, &file, Duration::from_secs(2));
    let err = refused.stop().await.expect_err("deleted a regular file");
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&file).expect("read"), b"precious");
}

/// Polls Encrypt (which never reloads anything) until its key_id is not `before`.
async fn encrypt_until_key_id_changes(c: &mut Client, before: &str) -> String {
    for _ in 0..300 {
        let key_id = encrypt(c, b"probe").await.key_id;
        if key_id != before {
            return key_id;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("Encrypt still answers {before} 15 s after a rotation of the folder");
}

#[tokio::test]
async fn the_periodic_reload_picks_up_a_rotation_with_no_status_call() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    init(&state);
    let server = start(
        &state,
        &tmp.path().join("kms.sock"),
        Duration::from_millis(100),
    );
    let mut c = server.client().await;
    let old = encrypt(&mut c, b"seed-under-version-one-----------").await;
    assert!(old.key_id.ends_with("/v1"), "{}", old.key_id);
    let reloads = server.plugin.metrics().reloads.get();
    // What `kubekms-plugin rotate` does.
    let (_, version) = StateDir::new(&state)
        .rotate(OffsetDateTime::now_utc())
        .expect("rotate");
    assert_eq!(version, 2);
    // No Status call: only the reloader can bring the new version.
    let after = encrypt_until_key_id_changes(&mut c, &old.key_id).await;
    assert!(after.ends_with("/v2"), "{after}");
    assert!(server.plugin.metrics().reloads.get() > reloads);
    assert_eq!(status(&mut c).await.key_id, after);
    // Every retained version still decrypts.
    let back = decrypt(
        &mut c,
        &old.ciphertext,
        &old.key_id,
        old.annotations.clone(),
    )
    .await
    .expect("old decrypts");
    assert_eq!(back, b"seed-under-version-one-----------");
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn status_reads_no_folder_and_decrypt_of_an_unknown_version_only_asks_for_a_reload() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    init(&state);
    // A timer that never fires during the test: only a request can bring a reload.
    let a = start(
        &state,
        &tmp.path().join("a.sock"),
        Duration::from_secs(3600),
    );
    let mut ca = a.client().await;
    let v1 = status(&mut ca).await.key_id;
    StateDir::new(&state)
        .rotate(OffsetDateTime::now_utc())
        .expect("rotate");
    assert_eq!(status(&mut ca).await.key_id, v1, "Status does not reload");
    // A v2 ciphertext made by a fresh plugin on the same folder (another node).
    let b = start(
        &state,
        &tmp.path().join("b.sock"),
        Duration::from_secs(3600),
    );
    let mut cb = b.client().await;
    let e2 = encrypt(&mut cb, b"from-b-v2").await;
    assert!(e2.key_id.ends_with("/v2"));
    let reloads = a.plugin.metrics().reloads.get();
    let err = decrypt(&mut ca, &e2.ciphertext, &e2.key_id, e2.annotations.clone())
        .await
        .expect_err("v2 is not in A's memory yet");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
    assert_eq!(
        a.plugin.metrics().reloads.get(),
        reloads,
        "the Decrypt answered without reloading the folder itself"
    );
    assert_eq!(a.plugin.metrics().reload_requests.get(), 1);
    // The reloader, woken by the request, loads v2: kube-apiserver's retry succeeds.
    let mut back = None;
    for _ in 0..200 {
        if let Ok(plaintext) =
            decrypt(&mut ca, &e2.ciphertext, &e2.key_id, e2.annotations.clone()).await
        {
            back = Some(plaintext);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(back.as_deref(), Some(&b"from-b-v2"[..]));
    assert_eq!(status(&mut ca).await.key_id, e2.key_id);
    a.stop().await.expect("stop a");
    b.stop().await.expect("stop b");
}

#[tokio::test]
async fn two_instances_on_one_state_folder_agree_and_decrypt_each_other() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    init(&state);
    let a = start(
        &state,
        &tmp.path().join("a.sock"),
        Duration::from_millis(200),
    );
    let b = start(
        &state,
        &tmp.path().join("b.sock"),
        Duration::from_millis(200),
    );
    let mut ca = a.client().await;
    let mut cb = b.client().await;
    assert_eq!(status(&mut ca).await.key_id, status(&mut cb).await.key_id);
    let ea = encrypt(&mut ca, b"from-a").await;
    let eb = encrypt(&mut cb, b"from-b").await;
    assert_eq!(
        decrypt(&mut cb, &ea.ciphertext, &ea.key_id, ea.annotations.clone())
            .await
            .expect("b decrypts a"),
        b"from-a"
    );
    assert_eq!(
        decrypt(&mut ca, &eb.ciphertext, &eb.key_id, eb.annotations.clone())
            .await
            .expect("a decrypts b"),
        b"from-b"
    );
    // Rotate: both pick it up and agree, and each decrypts the other's v2.
    StateDir::new(&state)
        .rotate(OffsetDateTime::now_utc())
        .expect("rotate");
    let ka = encrypt_until_key_id_changes(&mut ca, &ea.key_id).await;
    let kb = encrypt_until_key_id_changes(&mut cb, &eb.key_id).await;
    assert_eq!(ka, kb);
    let ea2 = encrypt(&mut ca, b"from-a-v2").await;
    assert_eq!(
        decrypt(
            &mut cb,
            &ea2.ciphertext,
            &ea2.key_id,
            ea2.annotations.clone()
        )
        .await
        .expect("b decrypts a's v2"),
        b"from-a-v2"
    );
    assert_eq!(status(&mut ca).await.key_id, status(&mut cb).await.key_id);
    a.stop().await.expect("stop a");
    b.stop().await.expect("stop b");
}
