//! `--init-root-key` with the root keys in a PKCS#11 token (SoftHSM2), against the fake API
//! server: the keys are generated in the token only when the cluster holds no
//! KmsKeyMaterial; a token that already holds them is opened even when records exist (they
//! are its records); records and an empty token are refused, and nothing is generated.
//!
//! SoftHSM2 reads `SOFTHSM2_CONF` once per process and a test may not change its own
//! environment, so each test runs its body in a child process of this test binary with a
//! configuration and token folder of its own.

mod fake_api;

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::Command;

use fake_api::{FakeApi, NAMESPACE};
use keystore_pkcs11::Pkcs11Config;
use keystore_pkcs11::args::RootKeyLocation;
use kubekms_k8s::KmsKeyMaterial;
use kubekms_operator::root_key::{RootKeyError, open_or_init_at};
use serde_json::json;

const CHILD_ENV: &str = "KUBEKMS_TEST_SOFTHSM_DIR";
const LABEL: &str = "operator-test";

fn location(dir: &std::path::Path) -> RootKeyLocation {
    RootKeyLocation::Pkcs11(Pkcs11Config {
        module: "/usr/lib/softhsm/libsofthsm2.so".into(),
        token_label: LABEL.into(),
        pin_file: dir.join("pin"),
    })
}

fn in_own_softhsm(name: &str, body: impl FnOnce(PathBuf)) {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        body(dir.into());
        return;
    }
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
            LABEL,
            "--pin",
            "1111",
            "--so-pin",
            "2222",
        ])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .expect("softhsm2-util");
    assert!(init.status.success(), "{init:?}");
    let pin = dir.path().join("pin");
    std::fs::write(&pin, "1111\n").expect("pin");
    std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let output = Command::new(std::env::current_exe().expect("current exe"))
        .args([name, "--exact", "--nocapture", "--test-threads", "1"])
        .env("SOFTHSM2_CONF", &conf)
        .env(CHILD_ENV, dir.path())
        .output()
        .expect("child test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "child {name}:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn record(name: &str, root_key_id: &str) -> KmsKeyMaterial {
    serde_json::from_value(json!({
        "apiVersion": "kubekms.io/v1alpha1", "kind": "KmsKeyMaterial",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "keyId": "0d41a7c2-5b1e-4c3a-9f10-2b3c4d5e6f70", "keySpec": "SYMMETRIC_DEFAULT",
            "keyUsage": "ENCRYPT_DECRYPT", "origin": "AWS_KMS",
            "createdAt": "2026-12-01T00:00:00Z", "rootKeyId": root_key_id, "versions": [],
        },
    }))
    .expect("record")
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(future)
}

#[test]
fn init_root_key_generates_the_keys_in_the_token_on_an_empty_cluster() {
    in_own_softhsm(
        "init_root_key_generates_the_keys_in_the_token_on_an_empty_cluster",
        |dir| {
            block_on(async {
                let (client, fake) = FakeApi::start();
                let location = location(&dir);
                let err = open_or_init_at(&location, false, &client, Some(NAMESPACE))
                    .await
                    .err()
                    .expect("no keys and no --init-root-key");
                assert!(err.to_string().contains("kubekms-root-wrap"), "{err}");
                let store = open_or_init_at(&location, true, &client, Some(NAMESPACE))
                    .await
                    .expect("a new installation");
                assert!(location.exists().expect("token"));
                // Records under the token's keys do not stop a restart with --init-root-key.
                fake.put_record(&record("a", &store.root_key_id()));
                let again = open_or_init_at(&location, true, &client, Some(NAMESPACE))
                    .await
                    .expect("open the token's keys");
                assert_eq!(again.root_key_id(), store.root_key_id());
            });
        },
    );
}

#[test]
fn records_and_an_empty_token_are_refused_and_nothing_is_generated() {
    in_own_softhsm(
        "records_and_an_empty_token_are_refused_and_nothing_is_generated",
        |dir| {
            block_on(async {
                let (client, fake) = FakeApi::start();
                fake.put_record(&record("a", "5f3a9c0e12d4b7a8"));
                let location = location(&dir);
                let err = open_or_init_at(&location, true, &client, Some(NAMESPACE))
                    .await
                    .err()
                    .expect("records need their root key");
                assert!(
                    matches!(
                        err,
                        RootKeyError::RecordsNeedAnotherRootKey { records: 1, .. }
                    ),
                    "{err}"
                );
                assert!(err.to_string().contains(LABEL), "{err}");
                assert!(!location.exists().expect("token"), "no key was generated");
            });
        },
    );
}
