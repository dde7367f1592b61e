//! The plugin with its root key in a PKCS#11 token (SoftHSM2): `kubekms-plugin init` with
//! the --pkcs11-* flags, then `serve` (which finds the token through the state folder) and
//! a KMS v2 Encrypt/Decrypt round trip over the Unix socket, across a restart.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use keystore_pkcs11::softhsm::{SOFTHSM_MODULE as MODULE, SoftHsmToken, USER_PIN as PIN};
use kms_plugin::client::{Client, connect};
use kms_plugin::pb::{DecryptRequest, EncryptRequest, StatusRequest};

const BIN: &str = env!("CARGO_BIN_EXE_kubekms-plugin");
const LABEL: &str = "kubekms-plugin-test";

/// A SoftHSM2 configuration of its own, with one initialized token.
struct SoftHsm {
    dir: tempfile::TempDir,
    token: SoftHsmToken,
}

impl SoftHsm {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = SoftHsmToken::create(dir.path(), LABEL).expect("token");
        Self { dir, token }
    }

    fn pin_file(&self) -> PathBuf {
        self.token.pin_file.clone()
    }

    fn command(&self, program: &str) -> Command {
        self.token.command(program)
    }

    fn plugin(&self, args: &[&str]) -> Output {
        self.command(BIN).args(args).output().expect("run plugin")
    }

    fn serve(&self, state: &Path, socket: &Path) -> Child {
        self.command(BIN)
            .args(["serve", "--state-dir", p(state), "--socket", p(socket)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("serve")
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

async fn client(socket: &Path, server: &mut Child) -> Client {
    for _ in 0..500 {
        if let Some(status) = server.try_wait().expect("try_wait") {
            panic!("serve exited: {status}");
        }
        if socket.exists()
            && let Ok(c) = connect(socket).await
        {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("serve never listened on {}", socket.display());
}

#[tokio::test]
async fn init_and_serve_with_the_root_key_in_softhsm() {
    let hsm = SoftHsm::new();
    let state = hsm.dir.path().join("state");
    let socket = hsm.dir.path().join("kms.sock");
    let pin_file = hsm.pin_file();
    let init = [
        "init",
        "--state-dir",
        p(&state),
        "--pkcs11-module",
        MODULE,
        "--pkcs11-token-label",
        LABEL,
        "--pkcs11-pin-file",
        p(&pin_file),
    ];
    let out = hsm.plugin(&init);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!state.join("root.key").exists(), "no root key file");
    let recorded = std::fs::read_to_string(state.join("root-key-pkcs11.json")).expect("record");
    assert!(
        recorded.contains(LABEL) && !recorded.contains(PIN),
        "{recorded}"
    );
    let again = hsm.plugin(&init);
    assert!(!again.status.success(), "second init refused");

    // The flags go together, and not with --root-key.
    let out = hsm.plugin(&["init", "--state-dir", p(&state), "--pkcs11-module", MODULE]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("--pkcs11-token-label"),
        "{}",
        text(&out)
    );

    let mut server = hsm.serve(&state, &socket);
    let mut c = client(&socket, &mut server).await;
    let status = c
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.healthz, "ok");
    let seed = b"a DEK seed of thirty-two bytes!!".to_vec();
    let enc = c
        .encrypt(EncryptRequest {
            plaintext: seed.clone(),
            uid: "hsm".into(),
        })
        .await
        .expect("encrypt")
        .into_inner();
    let decrypt = |c: &mut Client| {
        let request = DecryptRequest {
            ciphertext: enc.ciphertext.clone(),
            uid: "hsm".into(),
            key_id: enc.key_id.clone(),
            annotations: enc.annotations.clone(),
        };
        let mut c = c.clone();
        async move { c.decrypt(request).await.map(|r| r.into_inner().plaintext) }
    };
    assert_eq!(decrypt(&mut c).await.expect("decrypt"), seed);
    server.kill().expect("kill");
    server.wait().expect("wait");

    // A restarted plugin unwraps its keys in the token again.
    let mut server = hsm.serve(&state, &socket);
    let mut c = client(&socket, &mut server).await;
    assert_eq!(decrypt(&mut c).await.expect("decrypt after restart"), seed);
    server.kill().expect("kill");
    server.wait().expect("wait");

    // Rotation wraps the new version in the token too.
    let out = hsm.plugin(&["rotate", "--state-dir", p(&state)]);
    assert!(out.status.success(), "{}", text(&out));

    // Without the token (another SoftHSM2 configuration), serve refuses to start and says
    // why, naming the token.
    let other = SoftHsm::new();
    let out = other.plugin(&["versions", "--state-dir", p(&state)]);
    assert!(
        out.status.success(),
        "versions reads no key: {}",
        text(&out)
    );
    let out = other
        .command(BIN)
        .args(["serve", "--state-dir", p(&state), "--socket", p(&socket)])
        .env("SOFTHSM2_CONF", hsm.dir.path().join("missing.conf"))
        .output()
        .expect("serve without the token");
    assert!(!out.status.success());
    assert!(text(&out).contains(LABEL), "{}", text(&out));
}
