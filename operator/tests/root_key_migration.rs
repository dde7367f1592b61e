//! The operator's root key migration (`kubekms_operator::migrate::pass`) against the fake
//! API server: records moved from the previous root key to the primary one, one PUT
//! each with the resourceVersion read; a record written meanwhile is a 409 and is moved by
//! the next pass; a record that does not unwrap is never written; a pass with nothing to
//! move only lists.

mod fake_api;

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use fake_api::{FakeApi, NAMESPACE};
use kms_core::keystore::test_util::old_and_new_file_stores;
use kms_core::keystore::{MigratingKeyStore, RootKeyStore, wrapped_by};
use kms_core::{ArnScope, KeyId};
use kubekms_k8s::KmsKeyMaterial;
use kubekms_operator::migrate::{MigrationConfig, PassReport, needs_rewrap, pass};
use kubekms_operator::test_util::wrapped_record;
use kubekms_operator::{Context, Metrics, TestClock};
use time::OffsetDateTime;

struct Harness {
    fake: FakeApi,
    ctx: Context,
    stores: Arc<MigratingKeyStore>,
    old: Arc<dyn RootKeyStore>,
    new: Arc<dyn RootKeyStore>,
    _dir: tempfile::TempDir,
}

fn harness() -> Harness {
    let (client, fake) = FakeApi::start();
    let (dir, old, new) = old_and_new_file_stores();
    let stores = Arc::new(MigratingKeyStore::new(new.clone(), vec![old.clone()]).expect("stores"));
    let ctx = Context::new(
        client,
        stores.clone(),
        ArnScope::default(),
        Arc::new(TestClock::new(OffsetDateTime::UNIX_EPOCH)),
        Arc::new(Metrics::new()),
        Some("test".to_owned()),
    );
    Harness {
        fake,
        ctx,
        stores,
        old,
        new,
        _dir: dir,
    }
}

const FAST: MigrationConfig = MigrationConfig {
    records_per_second: 1000,
};

impl Harness {
    /// A record of `versions` versions wrapped under `root`, stored in the fake.
    async fn record(
        &self,
        name: &str,
        spec: serde_json::Value,
        versions: u32,
        root: &Arc<dyn RootKeyStore>,
    ) {
        let record = wrapped_record(
            root,
            spec,
            KeyId::generate().expect("id"),
            NAMESPACE,
            name,
            versions,
        )
        .await;
        let mut object = KmsKeyMaterial::new(name, record);
        object.metadata.namespace = Some(NAMESPACE.to_owned());
        object.metadata.uid = Some(format!("uid-{name}"));
        self.fake.put_record(&object);
    }

    async fn pass(&self) -> PassReport {
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        pass(&self.ctx, &self.stores, Some(NAMESPACE), FAST, &shutdown)
            .await
            .expect("pass")
    }

    fn moved(&self, name: &str) -> bool {
        let record = self.fake.record(name).expect("record");
        !needs_rewrap(&record.spec, &*self.new)
            && record
                .spec
                .versions
                .iter()
                .all(|v| wrapped_by(&*self.new, &BASE64.decode(&v.wrapped).expect("base64")))
    }
}

fn sym() -> serde_json::Value {
    serde_json::json!({"keySpec": "SYMMETRIC_DEFAULT"})
}

#[tokio::test]
async fn every_record_is_moved_once_and_a_second_pass_only_lists() {
    let h = harness();
    let old = h.old.clone();
    h.record("a", sym(), 3, &old).await;
    h.record(
        "b",
        serde_json::json!({"keySpec": "ECC_NIST_P256", "keyUsage": "SIGN_VERIFY"}),
        1,
        &old,
    )
    .await;
    let before_a = h.fake.record("a").expect("a");
    let report = h.pass().await;
    assert_eq!(
        report,
        PassReport {
            records: 2,
            already: 0,
            moved: 2,
            conflicts: 0,
            failed: 0
        }
    );
    assert_eq!(
        h.fake.take_log(),
        vec![
            "GET kmskeymaterials",
            "PUT kmskeymaterials/a",
            "EVENT RootKeyMigrated",
            "PUT kmskeymaterials/b",
            "EVENT RootKeyMigrated",
        ]
    );
    assert!(h.moved("a") && h.moved("b"));
    // The same material: every version unwraps under the new root key alone to what it
    // was under the old one.
    let after_a = h.fake.record("a").expect("a");
    for (before, after) in before_a.spec.versions.iter().zip(&after_a.spec.versions) {
        let context =
            kubekms_k8s::convert::wrap_context(&after_a.spec, NAMESPACE, "a", after.version)
                .expect("context");
        let old_material = h
            .old
            .unwrap(&context, &BASE64.decode(&before.wrapped).expect("b64"))
            .expect("old");
        let new_material = h
            .new
            .unwrap(&context, &BASE64.decode(&after.wrapped).expect("b64"))
            .expect("new");
        assert_eq!(old_material.expose(), new_material.expose());
    }
    assert!(
        h.fake
            .event_notes()
            .iter()
            .all(|n| n.contains("rewrapped from root key"))
    );

    let again = h.pass().await;
    assert_eq!(
        again,
        PassReport {
            records: 2,
            already: 2,
            moved: 0,
            conflicts: 0,
            failed: 0
        }
    );
    assert_eq!(h.fake.take_log(), vec!["GET kmskeymaterials"]);
}

/// A rotation between the read and the write: the PUT conflicts, the rotated record is
/// left as the rotation wrote it, and the next pass moves it (from a fresh read).
#[tokio::test]
async fn a_record_written_meanwhile_conflicts_and_is_moved_next_pass() {
    let h = harness();
    let old = h.old.clone();
    h.record("a", sym(), 1, &old).await;
    h.fake.before_next_put("kmskeymaterials", "a", |object| {
        object["spec"]["onDemandRotations"] = serde_json::json!(7);
    });
    let report = h.pass().await;
    assert_eq!(report.conflicts, 1);
    assert_eq!(report.pending(), 1);
    assert_eq!(
        h.fake.take_log(),
        vec!["GET kmskeymaterials", "PUT kmskeymaterials/a 409"]
    );
    assert!(!h.moved("a"));
    let report = h.pass().await;
    assert_eq!(report.moved, 1);
    assert!(h.moved("a"));
    let record = h.fake.record("a").expect("a");
    assert_eq!(
        record.spec.on_demand_rotations, 7,
        "the concurrent write is kept"
    );
}

/// A version that does not unwrap (tampered) is never written: a Warning Event, the
/// record unchanged, the others moved.
#[tokio::test]
async fn a_record_that_does_not_unwrap_is_left_as_it_was() {
    let h = harness();
    let old = h.old.clone();
    h.record("bad", sym(), 2, &old).await;
    h.record("good", sym(), 1, &old).await;
    let mut bad = h.fake.record("bad").expect("bad");
    let mut bytes = BASE64.decode(&bad.spec.versions[1].wrapped).expect("b64");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    bad.spec.versions[1].wrapped = BASE64.encode(bytes);
    h.fake.put_record(&bad);
    let before = h.fake.record("bad").expect("bad");
    let report = h.pass().await;
    assert_eq!((report.moved, report.failed, report.pending()), (1, 1, 1));
    assert_eq!(
        h.fake.take_log(),
        vec![
            "GET kmskeymaterials",
            "EVENT RootKeyMigrationFailed",
            "PUT kmskeymaterials/good",
            "EVENT RootKeyMigrated",
        ]
    );
    assert_eq!(h.fake.record("bad").expect("bad").spec, before.spec);
    assert!(h.moved("good"));
}

/// A hung API server: the pass gives up after its timeout, having written nothing.
#[tokio::test(start_paused = true)]
async fn a_hung_api_server_fails_the_pass_without_writing() {
    let h = harness();
    let old = h.old.clone();
    h.record("a", sym(), 1, &old).await;
    let before = h.fake.record("a").expect("a");
    h.fake.stall();
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let err = pass(&h.ctx, &h.stores, Some(NAMESPACE), FAST, &shutdown)
        .await
        .expect_err("no answer");
    assert!(
        matches!(err, kubekms_operator::migrate::MigrateError::List(_)),
        "{err}"
    );
    assert_eq!(
        h.fake.state.lock().expect("state").records["a"]["spec"],
        serde_json::to_value(&before.spec).expect("spec")
    );
}
