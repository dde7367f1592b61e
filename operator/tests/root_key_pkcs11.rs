//! `--init-root-key` with the root keys in a PKCS#11 token (SoftHSM2), against the fake API
//! server: the keys are generated in the token only when the cluster holds no
//! KmsKeyMaterial; a token that already holds them is opened even when records exist (they
//! are its records); records and an empty token are refused, and nothing is generated.
//!
//! SoftHSM2 reads `SOFTHSM2_CONF` once per process and a test may not change its own
//! environment, so each test runs its body in a child process of this test binary with a
//! configuration and token folder of its own.

mod fake_api;

use fake_api::{FakeApi, NAMESPACE, record_under};
use keystore_pkcs11::args::RootKeyLocation;
use keystore_pkcs11::softhsm::{SoftHsmToken, in_own_token};
use kubekms_operator::root_key::{RootKeyError, open_or_init_at};

const LABEL: &str = "operator-test";

fn location(token: &SoftHsmToken) -> RootKeyLocation {
    RootKeyLocation::Pkcs11(token.config())
}

fn in_own_softhsm(name: &str, body: impl FnOnce(&SoftHsmToken)) {
    in_own_token(name, &[LABEL], body);
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
        |token| {
            block_on(async {
                let (client, fake) = FakeApi::start();
                let location = location(token);
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
                fake.put_record(&record_under("a", &store.root_key_id()));
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
        |token| {
            block_on(async {
                let (client, fake) = FakeApi::start();
                fake.put_record(&record_under("a", "5f3a9c0e12d4b7a8"));
                let location = location(token);
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
