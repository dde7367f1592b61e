//! The real `kubekms-plugin` binary: subcommands on a state folder, `serve` with its HTTP
//! endpoints, rotation picked up by a running server, and graceful shutdown on SIGTERM.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kms_plugin::client::connect;
use kms_plugin::pb::{DecryptRequest, EncryptRequest, StatusRequest};

const BIN: &str = env!("CARGO_BIN_EXE_kubekms-plugin");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run kubekms-plugin")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

struct Server {
    child: Child,
    log: PathBuf,
}

impl Server {
    fn start(state: &Path, socket: &Path, http_port: Option<u16>, log: PathBuf) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--state-dir", p(state), "--socket", p(socket)])
            .args(["--reload-interval-ms", "200"])
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        if let Some(port) = http_port {
            cmd.args(["--http-addr", &format!("127.0.0.1:{port}")]);
        }
        let child = cmd.spawn().expect("spawn serve");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "socket never appeared; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, log }
    }

    fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"))
            .expect("pid");
        rustix::process::kill_process(pid, sig).expect("kill");
    }

    fn wait(mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the plugin did not exit within 30s after the signal");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect http");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, out)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

#[test]
fn init_versions_rotate_and_init_refuses_to_clobber() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    let out = run(&["init", "--state-dir", p(&state)]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("/v1"), "{}", text(&out));
    let root_key = std::fs::read(state.join("root.key")).expect("root key");

    let again = run(&["init", "--state-dir", p(&state)]);
    assert!(!again.status.success(), "second init succeeded");
    assert!(
        text(&again).contains("refusing to overwrite"),
        "{}",
        text(&again)
    );
    assert_eq!(
        std::fs::read(state.join("root.key")).expect("root key"),
        root_key
    );

    let rotated = run(&["rotate", "--state-dir", p(&state)]);
    assert!(rotated.status.success(), "{}", text(&rotated));
    assert!(
        text(&rotated).contains("version 2 is current"),
        "{}",
        text(&rotated)
    );

    let versions = run(&["versions", "--state-dir", p(&state)]);
    let listing = text(&versions);
    assert!(versions.status.success(), "{listing}");
    let rows: Vec<&str> = listing
        .lines()
        .filter(|l| l.starts_with(['1', '2']))
        .collect();
    assert_eq!(rows.len(), 2, "{listing}");
    assert!(
        rows[0].contains("ORIGINAL") && !rows[0].contains("yes"),
        "{listing}"
    );
    assert!(
        rows[1].contains("ON_DEMAND") && rows[1].contains("yes"),
        "{listing}"
    );

    let missing = run(&["rotate", "--state-dir", p(&tmp.path().join("absent"))]);
    assert!(!missing.status.success());
    assert!(
        text(&missing).contains("not initialised"),
        "{}",
        text(&missing)
    );
}

#[test]
fn serve_reports_health_and_metrics_follows_rotation_and_stops_on_sigterm() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    assert!(run(&["init", "--state-dir", p(&state)]).status.success());
    let socket = tmp.path().join("kms.sock");
    let port = free_port();
    let server = Server::start(&state, &socket, Some(port), tmp.path().join("plugin.log"));

    let seed = b"do-not-log-me-0123456789abcdefgh".to_vec();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (first_key_id, enc) = rt.block_on(async {
        let mut c = connect(&socket).await.expect("connect");
        let st = c
            .status(StatusRequest {})
            .await
            .expect("status")
            .into_inner();
        let enc = c
            .encrypt(EncryptRequest {
                plaintext: seed.clone(),
                uid: "u1".into(),
            })
            .await
            .expect("encrypt")
            .into_inner();
        let mut flipped = enc.ciphertext.clone();
        flipped[90] ^= 1;
        let err = c
            .decrypt(DecryptRequest {
                ciphertext: flipped,
                uid: "u2".into(),
                key_id: enc.key_id.clone(),
                annotations: enc.annotations.clone(),
            })
            .await
            .expect_err("flipped");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        (st.key_id, enc)
    });

    let (code, body) = http_get(port, "/healthz");
    assert_eq!(code, 200, "{body}");
    let (code, body) = http_get(port, "/readyz");
    assert_eq!(code, 200, "{body}");
    let (code, metrics) = http_get(port, "/metrics");
    assert_eq!(code, 200, "{metrics}");
    for expected in [
        "kubekms_plugin_grpc_requests_total{method=\"Encrypt\",code=\"Ok\"} 1",
        "kubekms_plugin_grpc_errors_total{method=\"Decrypt\",code=\"InvalidArgument\"} 1",
        "kubekms_plugin_grpc_request_duration_seconds_bucket",
        "kubekms_plugin_key_version 1",
    ] {
        assert!(metrics.contains(expected), "missing {expected}:\n{metrics}");
    }

    // `rotate` on the same folder while serving: the running server follows.
    assert!(run(&["rotate", "--state-dir", p(&state)]).status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let out = run(&["status", "--socket", p(&socket)]);
        let t = text(&out);
        assert!(out.status.success(), "{t}");
        if !t.contains(&first_key_id) {
            break t;
        }
        assert!(Instant::now() < deadline, "key_id never changed: {t}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.contains("healthz: ok") && status.contains("/v2"),
        "{status}"
    );
    let (_, metrics) = http_get(port, "/metrics");
    assert!(
        metrics.contains("kubekms_plugin_key_version 2"),
        "{metrics}"
    );
    rt.block_on(async {
        let mut c = connect(&socket).await.expect("connect");
        let back = c
            .decrypt(DecryptRequest {
                ciphertext: enc.ciphertext.clone(),
                uid: "u3".into(),
                key_id: enc.key_id.clone(),
                annotations: enc.annotations.clone(),
            })
            .await
            .expect("v1 decrypts after rotation")
            .into_inner();
        assert_eq!(back.plaintext, seed);
    });

    server.signal(rustix::process::Signal::TERM);
    let log = server.log.clone();
    let status = server.wait();
    let log = std::fs::read_to_string(&log).expect("log");
    assert!(status.success(), "exit {status:?}; log:\n{log}");
    assert!(!socket.exists(), "socket left after SIGTERM");
    assert!(log.contains("SIGTERM"), "{log}");
    assert!(
        !log.contains("do-not-log-me"),
        "the plaintext reached the log:\n{log}"
    );
}

/// The static pod (deploy/static-pod/) sets NODE_NAME from the Downward API for --follow;
/// without --follow the plugin must still start.
#[test]
fn serve_without_follow_starts_when_node_name_is_set() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    assert!(run(&["init", "--state-dir", p(&state)]).status.success());
    let socket = tmp.path().join("kms.sock");
    let log = tmp.path().join("serve.log");
    let mut child = Command::new(BIN)
        .args(["serve", "--state-dir", p(&state), "--socket", p(&socket)])
        .env("NODE_NAME", "node-1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        if let Some(status) = child.try_wait().expect("wait") {
            panic!(
                "serve exited ({status}); log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "socket never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn serve_refuses_an_uninitialised_folder_and_a_regular_file_as_socket() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = run(&[
        "serve",
        "--state-dir",
        p(&tmp.path().join("absent")),
        "--socket",
        p(&tmp.path().join("s.sock")),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("not initialised"), "{}", text(&out));

    let state = tmp.path().join("state");
    assert!(run(&["init", "--state-dir", p(&state)]).status.success());
    let file = tmp.path().join("file");
    std::fs::write(&file, b"keep").expect("write");
    let out = run(&["serve", "--state-dir", p(&state), "--socket", p(&file)]);
    assert!(!out.status.success());
    assert!(text(&out).contains("not a socket"), "{}", text(&out));
    assert_eq!(std::fs::read(&file).expect("read"), b"keep");
}

/// Follow mode with no API server at all (the kubeconfig does not even exist yet): the
/// plugin serves the state folder, answers Status ok, retries in the background, and stops
/// promptly on SIGTERM. `export` prints the key for the operator, wrapped only.
#[test]
fn follow_mode_cold_starts_without_an_api_server_and_export_prints_wrapped_material() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    let init = run(&["init", "--state-dir", p(&state)]);
    assert!(init.status.success(), "{}", text(&init));
    let socket = tmp.path().join("kms.sock");
    let log = tmp.path().join("plugin.log");
    let missing = tmp.path().join("no-such-kubeconfig");
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--state-dir", p(&state), "--socket", p(&socket)])
        .args([
            "--follow",
            "kube-system/apiserver-key",
            "--kubeconfig",
            p(&missing),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"));
    let server = Server {
        child: cmd.spawn().expect("spawn serve"),
        log: log.clone(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "socket never appeared; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let st = rt.block_on(async {
        let mut c = connect(&socket).await.expect("connect");
        c.status(StatusRequest {})
            .await
            .expect("status")
            .into_inner()
    });
    assert_eq!(st.healthz, "ok");
    assert!(st.key_id.ends_with("/v1"), "{}", st.key_id);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("no Kubernetes client yet")
    {
        assert!(Instant::now() < deadline, "no retry logged");
        std::thread::sleep(Duration::from_millis(50));
    }
    server.signal(rustix::process::Signal::TERM);
    assert!(server.wait().success());

    let out = run(&[
        "export",
        "--state-dir",
        p(&state),
        "--namespace",
        "kube-system",
        "--name",
        "apiserver-key",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let yaml = String::from_utf8_lossy(&out.stdout);
    let key = st.key_id.trim_end_matches("/v1");
    for expected in [
        "kind: KmsKeyMaterial",
        "kind: KmsKey\n",
        &format!("keyId: {key}"),
        "wrapped: ",
        "namespace: kube-system",
    ] {
        assert!(yaml.contains(expected), "missing {expected:?} in\n{yaml}");
    }
    assert!(yaml.find("KmsKeyMaterial") < yaml.find("kind: KmsKey\n"));
}
