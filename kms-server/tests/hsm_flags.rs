//! kubekms-server named to a PKCS#11 token: the flags reach the PKCS#11 store, which is
//! opened before anything else (so these runs need no API server), and its errors say what
//! is wrong. The store itself is tested in keystore-pkcs11; the plugin's e2e round trip in
//! kms-plugin/tests/hsm.rs.

use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_kubekms-server");
const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn the_server_opens_its_root_key_in_the_token_named_by_the_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).expect("tokens");
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\n",
            tokens.display()
        ),
    )
    .expect("conf");
    let init = Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            "srv",
            "--pin",
            "2468",
            "--so-pin",
            "1357",
        ])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .expect("softhsm2-util");
    assert!(init.status.success(), "{}", text(&init));
    let pin = dir.path().join("pin");
    std::fs::write(&pin, "9753").expect("pin");
    std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let pin = pin.to_str().expect("utf-8");
    let server = |extra: &[&str], label: &str| {
        Command::new(BIN)
            .args([
                "--insecure-http",
                "--listen",
                "127.0.0.1:0",
                "--health-addr",
                "127.0.0.1:0",
            ])
            .args([
                "--pkcs11-module",
                MODULE,
                "--pkcs11-token-label",
                label,
                "--pkcs11-pin-file",
                pin,
            ])
            .args(extra)
            .env("SOFTHSM2_CONF", &conf)
            .env_remove("KUBEKMS_ROOT_KEY")
            .output()
            .expect("kubekms-server")
    };

    let out = server(&[], "srv");
    assert!(!out.status.success());
    assert!(text(&out).contains("CKR_PIN_INCORRECT"), "{}", text(&out));
    assert!(
        !text(&out).contains("9753"),
        "the PIN is never printed: {}",
        text(&out)
    );

    std::fs::write(dir.path().join("pin"), "2468").expect("right pin");
    let out = server(&[], "srv");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("no key object labelled \"kubekms-root-wrap\""),
        "{}",
        text(&out)
    );

    let out = server(&[], "elsewhere");
    assert!(!out.status.success());
    assert!(text(&out).contains("[\"srv\"]"), "{}", text(&out));

    let out = server(&["--root-key", "/tmp/root.key"], "srv");
    assert!(!out.status.success());
    assert!(text(&out).contains("cannot be used with"), "{}", text(&out));
}
