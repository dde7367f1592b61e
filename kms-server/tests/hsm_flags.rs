//! kubekms-server named to a PKCS#11 token: the flags reach the PKCS#11 store, which is
//! opened before anything else (so these runs need no API server), and its errors say what
//! is wrong. The store itself is tested in keystore-pkcs11; the plugin's e2e round trip in
//! kms-plugin/tests/hsm.rs.

use std::process::{Command, Output};

use keystore_pkcs11::softhsm::{SOFTHSM_MODULE as MODULE, SoftHsmToken, USER_PIN};

const BIN: &str = env!("CARGO_BIN_EXE_kubekms-server");

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
    let token = SoftHsmToken::create(dir.path(), "srv").expect("token");
    std::fs::write(&token.pin_file, "9753").expect("wrong pin");
    let pin = token.pin_file.to_str().expect("utf-8");
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
            .env("SOFTHSM2_CONF", &token.conf)
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

    std::fs::write(&token.pin_file, USER_PIN).expect("right pin");
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
