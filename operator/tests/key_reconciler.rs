//! The reconcilers against a fake API server, with the clock moved by hand: the KmsKey
//! tests assert the exact requests of every pass; the KmsAlias and KmsGrant tests at the end
//! check their conditions.

mod fake_api;

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use fake_api::{FakeApi, NAMESPACE};
use k8s_openapi::api::coordination::v1::Lease;
use kms_core::ArnScope;
use kms_core::keystore::{FileKeyStore, RootKeyStore};
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::Event;
use kubekms_k8s::heartbeat::Heartbeat;
use kubekms_k8s::names::{KeyStateName, RotationTypeName};
use kubekms_k8s::{KmsAlias, KmsGrant, KmsKey, KmsKeySpec};
use kubekms_operator::key::{self, FINALIZER, MAX_REQUEUE, requeue_at};
use kubekms_operator::{Context, Metrics, TestClock};
use serde_json::json;
use time::{Duration, OffsetDateTime};

struct Harness {
    fake: FakeApi,
    ctx: Arc<Context>,
    /// The plugins' heartbeat Leases the operator sees (listed, empty at first).
    leases: std::sync::Mutex<Writer<Lease>>,
    clock: Arc<TestClock>,
    root: Arc<FileKeyStore>,
    _dir: tempfile::TempDir,
}

fn start_time() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_767_225_600).expect("2026-01-01")
}

fn harness() -> Harness {
    harness_with(true)
}

fn harness_with(heartbeats_listed: bool) -> Harness {
    let (client, fake) = FakeApi::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = Arc::new(FileKeyStore::init(&dir.path().join("root.key")).expect("root key"));
    let clock = Arc::new(TestClock::new(start_time()));
    let ctx = Arc::new(Context::new(
        client,
        root.clone(),
        ArnScope::default(),
        clock.clone(),
        Arc::new(Metrics::new()),
        Some("test".to_owned()),
    ));
    let mut leases = ctx.take_lease_writer().expect("the lease writer");
    if heartbeats_listed {
        leases.apply_watcher_event(&Event::InitDone);
    }
    Harness {
        fake,
        ctx,
        leases: std::sync::Mutex::new(leases),
        clock,
        root,
        _dir: dir,
    }
}

fn new_key(name: &str, spec: serde_json::Value) -> KmsKey {
    let spec: KmsKeySpec = serde_json::from_value(spec).expect("spec");
    let mut key = KmsKey::new(name, spec);
    key.metadata.namespace = Some(NAMESPACE.to_owned());
    key.metadata.generation = Some(1);
    key.metadata.uid = Some(format!("uid-{name}"));
    key
}

impl Harness {
    async fn reconcile(&self, name: &str) -> Action {
        self.try_reconcile(name).await.expect("reconcile")
    }

    async fn try_reconcile(&self, name: &str) -> Result<Action, kubekms_operator::Error> {
        let key = self.fake.key(name).expect("key exists");
        key::reconcile(Arc::new(key), self.ctx.clone()).await
    }

    /// Creates the key and runs the two passes that add the finalizer and the record.
    async fn create(&self, name: &str, spec: serde_json::Value) -> KmsKey {
        self.fake.put_key(&new_key(name, spec));
        assert_eq!(self.reconcile(name).await, Action::await_change());
        assert_eq!(
            self.fake.take_log(),
            vec![format!("PATCH kmskeys/{name}")],
            "the first pass adds the finalizer"
        );
        self.reconcile(name).await;
        assert_eq!(
            self.fake.take_log(),
            vec![
                format!("GET kmskeymaterials/{name}"),
                "POST kmskeymaterials".to_owned(),
                format!("PATCH kmskeys/{name}/status"),
                "EVENT KeyCreated".to_owned(),
            ]
        );
        self.fake.key(name).expect("key")
    }

    fn edit_spec(&self, name: &str, edit: impl FnOnce(&mut KmsKeySpec)) {
        let mut key = self.fake.key(name).expect("key");
        edit(&mut key.spec);
        key.metadata.generation = key.metadata.generation.map(|g| g + 1);
        self.fake.put_key(&key);
    }

    fn state(&self, name: &str) -> Option<KeyStateName> {
        self.fake
            .key(name)
            .and_then(|k| k.status)
            .and_then(|s| s.key_state)
    }

    fn versions(&self, name: &str) -> Vec<(u32, Option<RotationTypeName>)> {
        self.fake
            .record(name)
            .expect("record")
            .spec
            .versions
            .iter()
            .map(|v| (v.version, v.rotation_type))
            .collect()
    }

    fn days(&self, days: i64) {
        self.clock.advance(Duration::days(days));
    }
}

#[tokio::test]
async fn an_annotated_namespace_gives_its_account_id_to_the_arns() {
    let h = harness();
    let mut namespaces = h.ctx.take_namespace_writer().expect("the namespace writer");
    let mut namespace = k8s_openapi::api::core::v1::Namespace::default();
    namespace.metadata.name = Some(NAMESPACE.to_owned());
    namespace.metadata.annotations = Some(std::collections::BTreeMap::from([(
        kubekms_k8s::account::ANNOTATION_ACCOUNT_ID.to_owned(),
        "000000000042".to_owned(),
    )]));
    namespaces.apply_watcher_event(&Event::Apply(namespace));
    let key = h
        .create("k1", json!({"keySpec": "SYMMETRIC_DEFAULT"}))
        .await;
    let status = key.status.expect("status");
    let key_id = status.key_id.clone().expect("key id");
    assert_eq!(
        status.arn,
        Some(format!("arn:aws:kms:local:000000000042:key/{key_id}"))
    );
    assert_eq!(status.account_id.as_deref(), Some("000000000042"));
    h.fake
        .put_alias(&alias("app", "alias/app", "k1", "2026-01-01T00:00:00Z"));
    let status = h.reconcile_alias("app").await;
    assert_eq!(
        status.alias_arn.as_deref(),
        Some("arn:aws:kms:local:000000000042:alias/app")
    );
    assert_eq!(
        status.target_key_arn,
        Some(format!("arn:aws:kms:local:000000000042:key/{key_id}"))
    );
}

/// The requests of a pass that writes the status and publishes one Event.
fn status_and_event(name: &str, event: &str) -> Vec<String> {
    vec![
        format!("GET kmskeymaterials/{name}"),
        format!("PATCH kmskeys/{name}/status"),
        format!("EVENT {event}"),
    ]
}

fn only_get(name: &str) -> Vec<String> {
    vec![format!("GET kmskeymaterials/{name}")]
}

#[tokio::test]
async fn create_makes_an_enabled_key_with_wrapped_material_only() {
    let h = harness();
    let key = h
        .create("k1", json!({"keySpec": "SYMMETRIC_DEFAULT"}))
        .await;
    assert_eq!(key.finalizers(), [FINALIZER.to_owned()]);
    let status = key.status.expect("status");
    let record = h.fake.record("k1").expect("record");
    assert_eq!(status.key_state, Some(KeyStateName::Enabled));
    assert_eq!(status.key_id.as_deref(), Some(record.spec.key_id.as_str()));
    assert_eq!(
        status.arn,
        Some(format!(
            "arn:aws:kms:local:{}:key/{}",
            kms_core::derive_account_id(NAMESPACE),
            record.spec.key_id
        ))
    );
    assert_eq!(
        status.account_id,
        Some(kms_core::derive_account_id(NAMESPACE))
    );
    assert_eq!(status.current_version, Some(1));
    assert_eq!(status.encryption_algorithms, vec!["SYMMETRIC_DEFAULT"]);
    let ready = &status.conditions[0];
    assert_eq!(
        (
            ready.type_.as_str(),
            ready.status.as_str(),
            ready.reason.as_str()
        ),
        ("Ready", "True", "Enabled")
    );
    assert_eq!(record.spec.root_key_id, h.root.root_key_id());

    // The record holds the material wrapped under the root key, bound to id and version.
    let wrapped = BASE64
        .decode(&record.spec.versions[0].wrapped)
        .expect("base64");
    let context = kubekms_k8s::convert::wrap_context(
        &record.spec,
        &record.namespace().expect("namespace"),
        &record.name_any(),
        1,
    )
    .expect("context");
    let material = h.root.unwrap(&context, &wrapped).expect("unwrap");
    let mut elsewhere = context.clone();
    elsewhere.owner = Some(kms_core::keystore::KeyOwner::new(
        "other-namespace",
        record.name_any(),
    ));
    assert!(
        h.root.unwrap(&elsewhere, &wrapped).is_err(),
        "the material is bound to its KmsKey's namespace and name"
    );
    assert_eq!(material.len(), 32);
    let plaintext_hex = hex::encode(material.expose());
    let status_text = serde_json::to_string(&status).expect("status json");
    for text in h.fake.event_notes().iter().chain([&status_text]) {
        assert!(!text.contains(&plaintext_hex), "material leaked: {text}");
        assert!(
            !text.contains(&record.spec.versions[0].wrapped),
            "wrapped material outside the record: {text}"
        );
    }

    // Nothing changed: one read, no writes, no Events.
    assert_eq!(h.reconcile("k1").await, Action::await_change());
    assert_eq!(h.fake.take_log(), only_get("k1"));
}

#[tokio::test]
async fn every_key_spec_is_created() {
    let h = harness();
    for (i, spec) in [
        "SYMMETRIC_DEFAULT",
        "RSA_2048",
        "ECC_NIST_P256",
        "ECC_SECG_P256K1",
        "HMAC_256",
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("k{i}");
        let key = h.create(&name, json!({"keySpec": spec})).await;
        assert_eq!(
            key.status.and_then(|s| s.key_state),
            Some(KeyStateName::Enabled),
            "{spec}"
        );
    }
    let external = h
        .create(
            "ext",
            json!({"keySpec": "SYMMETRIC_DEFAULT", "origin": "EXTERNAL"}),
        )
        .await;
    assert_eq!(
        external.status.and_then(|s| s.key_state),
        Some(KeyStateName::PendingImport)
    );
    assert!(
        h.fake
            .record("ext")
            .expect("record")
            .spec
            .versions
            .is_empty()
    );
}

#[tokio::test]
async fn disable_and_enable_follow_the_spec() {
    let h = harness();
    h.create("k1", json!({})).await;
    h.edit_spec("k1", |s| s.enabled = false);
    h.reconcile("k1").await;
    assert_eq!(h.fake.take_log(), status_and_event("k1", "KeyDisabled"));
    assert_eq!(h.state("k1"), Some(KeyStateName::Disabled));
    h.edit_spec("k1", |s| s.enabled = true);
    h.reconcile("k1").await;
    assert_eq!(h.fake.take_log(), status_and_event("k1", "KeyEnabled"));
    assert_eq!(h.state("k1"), Some(KeyStateName::Enabled));
}

#[tokio::test]
async fn a_year_of_automatic_rotations_at_period_90() {
    let h = harness();
    h.create(
        "k1",
        json!({"rotation": {"automatic": true, "periodInDays": 90}}),
    )
    .await;
    let record = h.fake.record("k1").expect("record");
    assert_eq!(
        record.spec.next_rotation_time.as_deref(),
        Some("2026-04-01T00:00:00Z")
    );
    let mut rotation_days = Vec::new();
    for day in 1..=365 {
        h.days(1);
        let action = h.reconcile("k1").await;
        let log = h.fake.take_log();
        if log.len() > 1 {
            assert_eq!(
                log,
                vec![
                    "GET kmskeymaterials/k1",
                    "PUT kmskeymaterials/k1",
                    "PATCH kmskeys/k1/status",
                    "EVENT Rotated"
                ],
                "day {day}"
            );
            rotation_days.push(day);
        } else {
            assert_eq!(log, only_get("k1"), "day {day}");
        }
        // The next rotation is at least 1 day away; the requeue is capped, never polling.
        assert_eq!(action, Action::requeue(MAX_REQUEUE), "day {day}");
    }
    assert_eq!(rotation_days, vec![90, 180, 270, 360]);
    let versions = h.versions("k1");
    assert_eq!(versions.len(), 5);
    assert!(
        versions[1..]
            .iter()
            .all(|(_, t)| *t == Some(RotationTypeName::Automatic))
    );
    let status = h.fake.key("k1").and_then(|k| k.status).expect("status");
    assert_eq!(status.current_version, Some(5));
    assert_eq!(status.versions.len(), 5);
}

#[tokio::test]
async fn a_missed_rotation_after_downtime_happens_once() {
    let h = harness();
    h.create(
        "k1",
        json!({"rotation": {"automatic": true, "periodInDays": 90}}),
    )
    .await;
    // The operator was down for 400 days: four periods were missed.
    h.days(400);
    h.reconcile("k1").await;
    assert_eq!(h.versions("k1").len(), 2, "one rotation, not four");
    let record = h.fake.record("k1").expect("record");
    let expected_next = start_time() + Duration::days(490);
    assert_eq!(
        record.spec.next_rotation_time,
        Some(kubekms_k8s::convert::format_time(expected_next)),
        "the schedule restarts from now"
    );
    h.fake.take_log();
    h.reconcile("k1").await;
    assert_eq!(h.fake.take_log(), only_get("k1"));
    assert_eq!(h.versions("k1").len(), 2);
}

#[tokio::test]
async fn a_disabled_key_does_not_rotate_until_enabled() {
    let h = harness();
    h.create(
        "k1",
        json!({"enabled": false, "rotation": {"automatic": true, "periodInDays": 90}}),
    )
    .await;
    h.days(100);
    h.reconcile("k1").await;
    assert_eq!(h.versions("k1").len(), 1);
    h.edit_spec("k1", |s| s.enabled = true);
    h.reconcile("k1").await;
    assert_eq!(h.versions("k1").len(), 2, "due at once when enabled again");
}

#[tokio::test]
async fn an_on_demand_token_rotates_once_and_the_limit_is_a_condition() {
    let h = harness();
    h.create("k1", json!({"rotation": {"onDemandToken": "at-create"}}))
        .await;
    assert_eq!(
        h.versions("k1").len(),
        1,
        "a token at creation is no request"
    );
    h.edit_spec("k1", |s| {
        s.rotation.as_mut().expect("rotation").on_demand_token = Some("one".to_owned());
    });
    h.reconcile("k1").await;
    assert_eq!(
        h.fake.take_log(),
        vec![
            "GET kmskeymaterials/k1",
            "PUT kmskeymaterials/k1",
            "PATCH kmskeys/k1/status",
            "EVENT Rotated"
        ]
    );
    assert_eq!(
        h.versions("k1"),
        vec![(1, None), (2, Some(RotationTypeName::OnDemand))]
    );
    h.reconcile("k1").await;
    assert_eq!(h.fake.take_log(), only_get("k1"), "the same token again");
    assert_eq!(h.versions("k1").len(), 2);

    // At the limit of 25 the request is refused with a condition and one Event.
    {
        let mut state = h.fake.state.lock().expect("state");
        state.records.get_mut("k1").expect("record")["spec"]["onDemandRotations"] = json!(25);
    }
    h.edit_spec("k1", |s| {
        s.rotation.as_mut().expect("rotation").on_demand_token = Some("two".to_owned());
    });
    h.reconcile("k1").await;
    assert_eq!(h.fake.take_log(), status_and_event("k1", "RotationRefused"));
    let status = h.fake.key("k1").and_then(|k| k.status).expect("status");
    let rotation = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Rotation")
        .expect("Rotation condition");
    assert_eq!(
        (rotation.status.as_str(), rotation.reason.as_str()),
        ("False", "LimitExceeded")
    );
    assert_eq!(status.key_state, Some(KeyStateName::Enabled));
    h.reconcile("k1").await;
    assert_eq!(
        h.fake.take_log(),
        only_get("k1"),
        "no crash loop, no repeat"
    );
    assert_eq!(h.versions("k1").len(), 2);
}

#[tokio::test]
async fn a_record_under_another_root_key_is_never_rotated() {
    let h = harness();
    h.create("k1", json!({})).await;
    let mut record = h.fake.record("k1").expect("record");
    record.spec.root_key_id = "00000000deadbeef".to_owned();
    h.fake.put_record(&record);
    h.edit_spec("k1", |s| {
        s.rotation =
            Some(serde_json::from_value(json!({"onDemandToken": "now"})).expect("rotation"));
    });
    h.reconcile("k1").await;
    let log = h.fake.take_log();
    assert!(
        !log.iter().any(|r| r.starts_with("PATCH kmskeymaterials") || r.starts_with("PUT kmskeymaterials")),
        "the record must not be written: {log:?}"
    );
    assert_eq!(
        h.versions("k1"),
        vec![(1, None)],
        "no version wrapped under the wrong root key"
    );
    let status = h.fake.key("k1").and_then(|k| k.status).expect("status");
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "Invalid")
    );
    assert!(
        ready.message.contains("00000000deadbeef"),
        "{}",
        ready.message
    );
}

#[tokio::test]
async fn schedule_and_cancel_deletion() {
    let h = harness();
    h.create("k1", json!({})).await;
    h.edit_spec("k1", |s| {
        s.deletion = Some(serde_json::from_value(json!({"pendingWindowInDays": 7})).expect("d"));
    });
    let action = h.reconcile("k1").await;
    assert_eq!(
        h.fake.take_log(),
        vec![
            "GET kmskeymaterials/k1",
            "PUT kmskeymaterials/k1",
            "PATCH kmskeys/k1/status",
            "EVENT DeletionScheduled"
        ]
    );
    assert_eq!(action, Action::requeue(MAX_REQUEUE));
    let status = h.fake.key("k1").and_then(|k| k.status).expect("status");
    assert_eq!(status.key_state, Some(KeyStateName::PendingDeletion));
    assert_eq!(
        status.deletion_date.as_deref(),
        Some("2026-01-08T00:00:00Z")
    );

    h.days(3);
    h.edit_spec("k1", |s| s.deletion = None);
    h.reconcile("k1").await;
    assert_eq!(
        h.fake.take_log(),
        vec![
            "GET kmskeymaterials/k1",
            "PATCH kmskeys/k1",
            "PUT kmskeymaterials/k1",
            "PATCH kmskeys/k1/status",
            "EVENT DeletionCancelled"
        ]
    );
    let key = h.fake.key("k1").expect("key");
    assert!(!key.spec.enabled, "cancel leaves the key Disabled, as AWS");
    assert_eq!(h.state("k1"), Some(KeyStateName::Disabled));
    assert!(
        h.fake
            .record("k1")
            .expect("record")
            .spec
            .deletion_date
            .is_none()
    );
    h.edit_spec("k1", |s| s.enabled = true);
    h.reconcile("k1").await;
    assert_eq!(h.state("k1"), Some(KeyStateName::Enabled));
}

fn grant_on(key: &str) -> KmsGrant {
    let mut grant: KmsGrant = serde_json::from_value(json!({
        "apiVersion": "kubekms.io/v1alpha1",
        "kind": "KmsGrant",
        "metadata": {"name": format!("grant-{key}"), "namespace": NAMESPACE},
        "spec": {"keyRef": {"name": key}, "grantee": {"user": "alice"}, "operations": ["Encrypt"]}
    }))
    .expect("grant");
    grant.metadata.namespace = Some(NAMESPACE.to_owned());
    grant.metadata.uid = Some(format!("uid-grant-{key}"));
    grant
}

fn mark_deleted(h: &Harness, name: &str) {
    let mut state = h.fake.state.lock().expect("state");
    state.keys.get_mut(name).expect("key")["metadata"]["deletionTimestamp"] =
        json!("2026-01-01T00:00:00Z");
}

#[tokio::test]
async fn kubectl_delete_is_held_until_the_window_has_passed() {
    let h = harness();
    h.create("k1", json!({})).await;
    h.fake.put_grant(&grant_on("k1"));
    mark_deleted(&h, "k1");
    let action = h.reconcile("k1").await;
    assert_eq!(
        h.fake.take_log(),
        vec![
            "GET kmskeymaterials/k1",
            "PUT kmskeymaterials/k1",
            "PATCH kmskeys/k1/status",
            "EVENT DeletionScheduled"
        ]
    );
    assert_eq!(action, Action::requeue(MAX_REQUEUE));
    assert_eq!(h.state("k1"), Some(KeyStateName::PendingDeletion));
    assert_eq!(
        h.fake
            .record("k1")
            .expect("record")
            .spec
            .deletion_date
            .as_deref(),
        Some("2026-01-31T00:00:00Z"),
        "the default window of 30 days"
    );

    // 29 days later the object is still held and the material still there.
    h.days(29);
    let action = h.reconcile("k1").await;
    assert_eq!(h.fake.take_log(), only_get("k1"));
    assert_eq!(
        action,
        requeue_at(start_time() + Duration::days(30), h.clock_now())
    );
    assert!(h.fake.record("k1").is_some());

    // Past the window: the record goes, the grant goes, the finalizer is released.
    h.days(2);
    assert_eq!(h.reconcile("k1").await, Action::await_change());
    assert_eq!(
        h.fake.take_log(),
        vec![
            "GET kmskeymaterials/k1",
            "GET kmskeymaterials/k1",
            "DELETE kmskeymaterials/k1",
            "GET kmsgrants",
            "DELETE kmsgrants/grant-k1",
            "EVENT MaterialDestroyed",
            "PATCH kmskeys/k1"
        ]
    );
    assert!(h.fake.record("k1").is_none());
    assert!(
        h.fake.key("k1").is_none(),
        "finalizer released, object gone"
    );
    assert!(h.fake.grant_names().is_empty());
}

#[tokio::test]
async fn a_scheduled_deletion_that_runs_out_deletes_the_key_through_the_finalizer() {
    let h = harness();
    h.create("k1", json!({})).await;
    h.edit_spec("k1", |s| {
        s.deletion = Some(serde_json::from_value(json!({"pendingWindowInDays": 7})).expect("d"));
    });
    h.reconcile("k1").await;
    assert_eq!(h.state("k1"), Some(KeyStateName::PendingDeletion));
    h.fake.take_log();
    h.days(8);
    h.reconcile("k1").await;
    assert_eq!(
        h.fake.take_log(),
        vec![
            "GET kmskeymaterials/k1",
            "DELETE kmskeys/k1",
            "EVENT DeletionDue"
        ]
    );
    h.reconcile("k1").await;
    assert!(h.fake.record("k1").is_none());
    assert!(h.fake.key("k1").is_none());
}

#[test]
fn requeue_is_at_the_due_time_within_bounds() {
    let now = start_time();
    assert_eq!(
        requeue_at(now + Duration::minutes(10), now),
        Action::requeue(std::time::Duration::from_secs(600))
    );
    assert_eq!(
        requeue_at(now - Duration::minutes(10), now),
        Action::requeue(std::time::Duration::from_secs(1))
    );
    assert_eq!(
        requeue_at(now + Duration::days(100), now),
        Action::requeue(MAX_REQUEUE)
    );
}

impl Harness {
    fn clock_now(&self) -> OffsetDateTime {
        use kubekms_operator::Clock as _;
        self.clock.now()
    }
}

fn alias(name: &str, alias_name: &str, target: &str, created: &str) -> KmsAlias {
    serde_json::from_value(json!({
        "apiVersion": "kubekms.io/v1alpha1",
        "kind": "KmsAlias",
        "metadata": {"name": name, "namespace": NAMESPACE, "generation": 1,
                     "creationTimestamp": created},
        "spec": {"aliasName": alias_name, "targetKeyRef": {"name": target}}
    }))
    .expect("alias")
}

fn ready_reason(conditions: &[kubekms_k8s::Condition]) -> Option<(String, String)> {
    conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone()))
}

impl Harness {
    async fn reconcile_alias(&self, name: &str) -> kubekms_k8s::KmsAliasStatus {
        let alias = self.fake.alias(name).expect("alias");
        kubekms_operator::alias::reconcile(Arc::new(alias), self.ctx.clone())
            .await
            .expect("reconcile alias");
        self.fake
            .alias(name)
            .and_then(|a| a.status)
            .expect("alias status")
    }

    async fn reconcile_grant(&self, name: &str) -> Option<kubekms_k8s::KmsGrantStatus> {
        let grant = self.fake.grant(name).expect("grant");
        kubekms_operator::grant::reconcile(Arc::new(grant), self.ctx.clone())
            .await
            .expect("reconcile grant");
        self.fake.grant(name).and_then(|g| g.status)
    }
}

#[tokio::test]
async fn aliases_resolve_and_report_conflicts_and_incompatible_retargets() {
    let h = harness();
    let sym = h.create("sym", json!({})).await;
    h.create("other-sym", json!({})).await;
    h.create("mac", json!({"keySpec": "HMAC_256"})).await;
    let sym_id = sym.status.and_then(|s| s.key_id).expect("id");

    h.fake
        .put_alias(&alias("app", "alias/app", "sym", "2026-01-01T00:00:00Z"));
    let status = h.reconcile_alias("app").await;
    assert_eq!(status.target_key_id.as_deref(), Some(sym_id.as_str()));
    assert_eq!(
        status.alias_arn.as_deref(),
        Some("arn:aws:kms:local:194955301523:alias/app")
    );
    assert_eq!(
        ready_reason(&status.conditions),
        Some(("True".to_owned(), "Ready".to_owned()))
    );

    // A younger alias with the same name loses.
    h.fake
        .put_alias(&alias("app-2", "alias/app", "sym", "2026-01-02T00:00:00Z"));
    let status = h.reconcile_alias("app-2").await;
    assert_eq!(
        ready_reason(&status.conditions),
        Some(("False".to_owned(), "NameConflict".to_owned()))
    );
    assert_eq!(
        ready_reason(&h.reconcile_alias("app").await.conditions),
        Some(("True".to_owned(), "Ready".to_owned())),
        "the older alias keeps the name"
    );

    // Retarget to an HMAC key: refused, the alias keeps its target.
    h.retarget("app", "mac");
    let status = h.reconcile_alias("app").await;
    assert_eq!(
        ready_reason(&status.conditions),
        Some(("False".to_owned(), "IncompatibleTarget".to_owned()))
    );
    assert_eq!(status.target_key_id.as_deref(), Some(sym_id.as_str()));

    // Retarget to another symmetric key: allowed.
    h.retarget("app", "other-sym");
    let status = h.reconcile_alias("app").await;
    assert_eq!(
        ready_reason(&status.conditions),
        Some(("True".to_owned(), "Ready".to_owned()))
    );
    assert_ne!(status.target_key_id.as_deref(), Some(sym_id.as_str()));

    h.fake.put_alias(&alias(
        "lost",
        "alias/lost",
        "missing",
        "2026-01-01T00:00:00Z",
    ));
    assert_eq!(
        ready_reason(&h.reconcile_alias("lost").await.conditions),
        Some(("False".to_owned(), "TargetNotFound".to_owned()))
    );
}

impl Harness {
    /// Points an alias at another key, keeping the status the reconciler wrote.
    fn retarget(&self, name: &str, target: &str) {
        let mut stored = self.fake.alias(name).expect("alias");
        stored.spec.target_key_ref.name = target.to_owned();
        self.fake.put_alias(&stored);
    }
}

#[tokio::test]
async fn grants_are_validated_against_their_key_and_keep_their_id() {
    let h = harness();
    h.create("sym", json!({})).await;
    h.fake.put_grant(&grant_on("sym"));
    let status = h.reconcile_grant("grant-sym").await.expect("status");
    assert_eq!(
        ready_reason(&status.conditions),
        Some(("True".to_owned(), "Granted".to_owned()))
    );
    let grant_id = status.grant_id.clone().expect("grant id");
    assert_eq!(grant_id.len(), 64);
    assert!(grant_id.chars().all(|c| c.is_ascii_hexdigit()));
    h.fake.take_log();
    let again = h.reconcile_grant("grant-sym").await.expect("status");
    assert_eq!(
        again.grant_id,
        Some(grant_id.clone()),
        "the grant id is stable"
    );
    assert_eq!(
        h.fake.take_log(),
        vec!["GET kmskeys/sym"],
        "nothing to write the second time"
    );
    // A lost status is rebuilt with the same id and token.
    let token = again.grant_token.clone().expect("grant token");
    assert_ne!(token, grant_id);
    // Item 7 of issue 13: whoever reads the KmsGrant (or its Events) knows the uid, but the
    // uid alone no longer gives the token: it is an HMAC under a key derived from the root
    // key, not a plain hash.
    let uid = "uid-grant-sym";
    let hashed = |label: &str| {
        hex::encode(kms_core::primitives::hash(
            kms_core::spec::HashAlgorithm::Sha256,
            format!("kubekms.io/{label}\0{uid}").as_bytes(),
        ))
    };
    assert_ne!(token, hashed("grant-token"), "the old formula");
    assert_ne!(grant_id, hashed("grant-id"), "the old formula");
    let derived = h
        .root
        .derive_key(kms_core::keystore::DerivedKeyPurpose::GrantToken)
        .expect("derived key");
    let mac = kms_core::primitives::HmacKey::sha256_prf(derived.expose());
    assert_eq!(
        token,
        hex::encode(mac.sign(format!("kubekms.io/grant-token\0{uid}").as_bytes()))
    );
    let mut wiped = h.fake.grant("grant-sym").expect("grant");
    wiped.status = None;
    h.fake.put_grant(&wiped);
    let rebuilt = h.reconcile_grant("grant-sym").await.expect("status");
    assert_eq!(
        (rebuilt.grant_id, rebuilt.grant_token),
        (Some(grant_id), Some(token)),
        "rebuilt from the object's uid"
    );
    // Another object (another uid) under the same name gets another id.
    let mut other = grant_on("sym");
    other.metadata.uid = Some("another-uid".to_owned());
    h.fake.put_grant(&other);
    let fresh = h.reconcile_grant("grant-sym").await.expect("status");
    assert_ne!(fresh.grant_id, again.grant_id);

    // Sign is not an operation of a symmetric key.
    let mut bad = grant_on("sym");
    bad.metadata.name = Some("bad".to_owned());
    bad.spec.operations = vec![kubekms_k8s::names::GrantOperationName::Sign];
    h.fake.put_grant(&bad);
    let status = h.reconcile_grant("bad").await.expect("status");
    assert_eq!(
        ready_reason(&status.conditions),
        Some(("False".to_owned(), "InvalidOperations".to_owned()))
    );
    assert!(status.grant_id.is_none());

    // A key being deleted whose material is gone takes its grants with it.
    mark_deleted(&h, "sym");
    h.fake.state.lock().expect("state").records.remove("sym");
    assert!(h.reconcile_grant("grant-sym").await.is_none());
    assert!(!h.fake.grant_names().contains(&"grant-sym".to_owned()));
}

/// A heartbeat Lease of plugin `plugin` serving KmsKey `key`, renewed now.
fn serve_key(h: &Harness, plugin: &str, key: &str) {
    let key_id = h.fake.record(key).expect("record").spec.key_id;
    let beat = Heartbeat {
        plugin: plugin.to_owned(),
        key_name: key.to_owned(),
        served_key_id: Some(format!("{key_id}/v1")),
        seeded: Some((format!("{key_id}/v1"), h.clock_now())),
        held: Some((key_id.clone(), vec![1])),
        renewed: None,
        duration_seconds: 60,
    };
    h.leases
        .lock()
        .expect("leases")
        .apply_watcher_event(&Event::Apply(beat.to_lease(NAMESPACE, h.clock_now())));
}

fn protected_reason(h: &Harness, name: &str) -> Option<String> {
    h.fake
        .key(name)
        .and_then(|k| k.status)
        .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Protected"))
        .map(|c| c.reason)
}

#[tokio::test]
async fn a_served_key_is_not_disabled_scheduled_for_deletion_or_destroyed() {
    let h = harness();
    h.create("k1", json!({"reencryptSecrets": false})).await;
    serve_key(&h, "cp-1", "k1");
    h.reconcile("k1").await;
    assert_eq!(
        h.fake.take_log(),
        vec!["GET kmskeymaterials/k1", "PATCH kmskeys/k1/status"]
    );
    let status = h.fake.key("k1").and_then(|k| k.status).expect("status");
    assert_eq!(status.served_by.len(), 1);
    assert_eq!(status.served_by[0].plugin, "cp-1");
    assert!(status.served_by[0].live);
    assert_eq!(
        protected_reason(&h, "k1").as_deref(),
        Some("ServedByPlugin")
    );
    assert_eq!(
        status.reencryption.map(|r| r.phase).as_deref(),
        Some("Paused"),
        "reencryptSecrets: false starts no rewrite"
    );

    // Disabling is refused: the key stays Enabled, once-only Warning Event.
    h.edit_spec("k1", |s| s.enabled = false);
    h.reconcile("k1").await;
    assert_eq!(
        h.fake.take_log(),
        status_and_event("k1", "ProtectionRefused")
    );
    assert_eq!(h.state("k1"), Some(KeyStateName::Enabled));
    assert_eq!(
        protected_reason(&h, "k1").as_deref(),
        Some("DisableRefused")
    );
    h.reconcile("k1").await;
    assert_eq!(h.fake.take_log(), only_get("k1"), "reported once");

    // Scheduling the deletion is refused: no deletion date in the record.
    h.edit_spec("k1", |s| {
        s.enabled = true;
        s.deletion = Some(serde_json::from_value(json!({})).expect("deletion"));
    });
    h.reconcile("k1").await;
    assert_eq!(
        h.fake.take_log(),
        status_and_event("k1", "ProtectionRefused")
    );
    assert_eq!(
        h.fake.record("k1").expect("record").spec.deletion_date,
        None
    );
    assert_eq!(
        protected_reason(&h, "k1").as_deref(),
        Some("DeletionRefused")
    );
    h.edit_spec("k1", |s| s.deletion = None);

    // kubectl delete: held, no window starts, even a year later.
    mark_deleted(&h, "k1");
    h.reconcile("k1").await;
    assert_eq!(
        h.fake.take_log(),
        status_and_event("k1", "ProtectionRefused")
    );
    h.days(365);
    h.reconcile("k1").await;
    assert_eq!(
        h.fake.record("k1").expect("record").spec.deletion_date,
        None
    );
    assert!(h.fake.key("k1").is_some());
    assert_eq!(
        h.fake
            .key("k1")
            .and_then(|k| k.status)
            .and_then(|s| s.reencryption)
            .map(|r| r.phase)
            .as_deref(),
        Some("Paused"),
        "a held key keeps its re-encryption progress"
    );

    // Once the plugin's Lease is gone, the deletion proceeds as usual.
    let key_id = h.fake.record("k1").expect("record").spec.key_id;
    let lease = Heartbeat {
        plugin: "cp-1".to_owned(),
        key_name: "k1".to_owned(),
        served_key_id: Some(format!("{key_id}/v1")),
        seeded: None,
        held: None,
        renewed: None,
        duration_seconds: 60,
    }
    .to_lease(NAMESPACE, h.clock_now());
    h.leases
        .lock()
        .expect("leases")
        .apply_watcher_event(&Event::Delete(lease));
    h.fake.take_log();
    h.reconcile("k1").await;
    assert_eq!(
        h.fake.take_log(),
        vec![
            "GET kmskeymaterials/k1",
            "PUT kmskeymaterials/k1",
            "PATCH kmskeys/k1/status",
            "EVENT DeletionScheduled"
        ]
    );
    assert_eq!(h.state("k1"), Some(KeyStateName::PendingDeletion));
}

#[tokio::test]
async fn nothing_is_done_before_the_heartbeats_are_listed() {
    let h = harness_with(false);
    h.fake.put_key(&new_key("k1", json!({"enabled": false})));
    assert_eq!(
        h.reconcile("k1").await,
        Action::requeue(std::time::Duration::from_secs(2))
    );
    assert!(h.fake.take_log().is_empty(), "no request before the list");
    h.leases
        .lock()
        .expect("leases")
        .apply_watcher_event(&Event::InitDone);
    assert_eq!(h.reconcile("k1").await, Action::await_change());
    assert_eq!(h.fake.take_log(), vec!["PATCH kmskeys/k1"]);
}

fn ready_of(h: &Harness, name: &str) -> Option<(String, String)> {
    h.fake
        .key(name)
        .and_then(|k| k.status)
        .and_then(|s| ready_reason(&s.conditions))
}

/// Item 14 of issue 13: a record replaced concurrently (another writer between this pass's
/// read and its write) makes the write conflict (409); the retry starts from a fresh read,
/// so the other writer's change is kept and a rotation it already made is not made again.
#[tokio::test]
async fn a_record_replaced_concurrently_conflicts_and_the_retry_loses_nothing() {
    let h = harness();
    h.create("k1", json!({})).await;

    // Another writer labels the record just before this pass writes its rotation.
    h.edit_spec("k1", |s| {
        s.rotation = Some(serde_json::from_value(json!({"onDemandToken": "one"})).expect("r"));
    });
    h.fake.before_next_put("kmskeymaterials", "k1", |record| {
        record["metadata"]["labels"] = json!({"backup": "2026-01-01"});
    });
    let error = h
        .try_reconcile("k1")
        .await
        .expect_err("a stale write conflicts");
    assert!(format!("{error:?}").contains("409"), "{error:?}");
    assert_eq!(
        h.fake.take_log(),
        vec!["GET kmskeymaterials/k1", "PUT kmskeymaterials/k1 409"],
        "nothing else is written by a pass whose record write failed"
    );
    assert_eq!(h.versions("k1"), vec![(1, None)]);
    h.reconcile("k1").await;
    assert_eq!(
        h.fake.take_log(),
        vec![
            "GET kmskeymaterials/k1",
            "PUT kmskeymaterials/k1",
            "PATCH kmskeys/k1/status",
            "EVENT Rotated"
        ]
    );
    let record = h.fake.record("k1").expect("record");
    assert_eq!(
        record.labels().get("backup").map(String::as_str),
        Some("2026-01-01"),
        "the other writer's change is kept"
    );
    assert_eq!(
        h.versions("k1"),
        vec![(1, None), (2, Some(RotationTypeName::OnDemand))]
    );

    // Another writer makes the very same rotation first: the retry does not make it again.
    h.edit_spec("k1", |s| {
        s.rotation.as_mut().expect("rotation").on_demand_token = Some("two".to_owned());
    });
    h.fake.before_next_put("kmskeymaterials", "k1", |record| {
        let mut third = record["spec"]["versions"][1].clone();
        third["version"] = json!(3);
        record["spec"]["versions"]
            .as_array_mut()
            .expect("versions")
            .push(third);
        record["spec"]["lastOnDemandToken"] = json!("two");
        record["spec"]["onDemandRotations"] = json!(2);
        // No plugin serves the key: that operator made version 3 current at once too.
        record["spec"]["currentVersion"] = json!(3);
    });
    assert!(h.try_reconcile("k1").await.is_err(), "conflict");
    assert_eq!(
        h.fake.take_log(),
        vec!["GET kmskeymaterials/k1", "PUT kmskeymaterials/k1 409"]
    );
    h.reconcile("k1").await;
    assert_eq!(
        h.fake.take_log(),
        vec!["GET kmskeymaterials/k1", "PATCH kmskeys/k1/status"],
        "the token is acted on already: no second rotation, no record write"
    );
    assert_eq!(h.versions("k1").len(), 3, "one version per token, not two");
    let status = h.fake.key("k1").and_then(|k| k.status).expect("status");
    assert_eq!(status.current_version, Some(3));
}

/// The finalizer helper's JSON patch tests the finalizers it read: another controller's
/// finalizer added meanwhile makes it fail (422) and the retry keeps both.
#[tokio::test]
async fn a_finalizer_added_concurrently_fails_the_patch_test_and_is_kept() {
    let h = harness();
    h.fake.put_key(&new_key("k1", json!({})));
    let stale = h.fake.key("k1").expect("key");
    {
        let mut state = h.fake.state.lock().expect("state");
        state.keys.get_mut("k1").expect("key")["metadata"]["finalizers"] =
            json!(["example.com/backup"]);
    }
    let result = key::reconcile(Arc::new(stale), h.ctx.clone()).await;
    assert!(result.is_err(), "the patch test fails on the stale object");
    assert_eq!(h.fake.take_log(), vec!["PATCH kmskeys/k1 422"]);
    assert_eq!(h.reconcile("k1").await, Action::await_change());
    assert_eq!(h.fake.take_log(), vec!["PATCH kmskeys/k1"]);
    assert_eq!(
        h.fake.key("k1").expect("key").finalizers(),
        ["example.com/backup".to_owned(), FINALIZER.to_owned()]
    );
}

/// Item 3 of issue 13: a record deleted and re-created with another key's id (and its
/// wrapped versions) is refused: no status rebuilt from it, no rotation or deletion date
/// written into it, nothing destroyed; Ready False RecordMismatch and one Warning Event.
#[tokio::test]
async fn a_record_replaced_by_another_keys_record_is_refused() {
    let h = harness();
    let own = h.create("k1", json!({})).await;
    h.create("k2", json!({})).await;
    let own_id = own.status.clone().and_then(|s| s.key_id).expect("k1 id");
    let foreign = h.fake.record("k2").expect("k2 record");
    h.fake.state.lock().expect("state").records.remove("k1");
    let mut replaced = foreign.clone();
    replaced.metadata.name = Some("k1".to_owned());
    h.fake.put_record(&replaced);

    h.reconcile("k1").await;
    assert_eq!(h.fake.take_log(), status_and_event("k1", "RecordMismatch"));
    let status = h.fake.key("k1").and_then(|k| k.status).expect("status");
    assert_eq!(
        status.key_id.as_deref(),
        Some(own_id.as_str()),
        "not rebuilt"
    );
    assert_eq!(status.arn, own.status.as_ref().and_then(|s| s.arn.clone()));
    assert_eq!(
        ready_of(&h, "k1"),
        Some(("False".to_owned(), "RecordMismatch".to_owned()))
    );
    let ready_message = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        ready_message.contains(&foreign.spec.key_id) && ready_message.contains(&own_id),
        "{ready_message}"
    );

    // An on-demand rotation is not written into the foreign record; reported once.
    h.edit_spec("k1", |s| {
        s.rotation = Some(serde_json::from_value(json!({"onDemandToken": "x"})).expect("r"));
    });
    h.reconcile("k1").await;
    assert_eq!(
        h.fake.take_log(),
        vec!["GET kmskeymaterials/k1", "PATCH kmskeys/k1/status"],
        "observedGeneration moves, nothing else"
    );
    assert_eq!(h.fake.record("k1").expect("record").spec, foreign.spec);

    // kubectl delete: no deletion date written into it, never destroyed.
    mark_deleted(&h, "k1");
    h.reconcile("k1").await;
    h.days(60);
    h.reconcile("k1").await;
    let log = h.fake.take_log();
    assert!(
        log.iter()
            .all(|r| r == "GET kmskeymaterials/k1" || r == "PATCH kmskeys/k1/status"),
        "{log:?}"
    );
    assert_eq!(h.fake.record("k1").expect("record").spec, foreign.spec);
    assert!(h.fake.key("k1").is_some(), "still held");
    assert_eq!(
        h.fake.record("k2").expect("k2 record").spec,
        foreign.spec,
        "the other key is untouched"
    );
}

/// Item 9 of issue 13: a record with a date at the end of the range of dates does not
/// panic the operator (date arithmetic is checked): the key reports Invalid.
#[tokio::test]
async fn a_record_with_an_extreme_date_makes_the_key_invalid_not_a_panic() {
    let h = harness();
    h.create(
        "k1",
        json!({"rotation": {"automatic": true, "periodInDays": 90}}),
    )
    .await;
    {
        let mut state = h.fake.state.lock().expect("state");
        let record = state.records.get_mut("k1").expect("record");
        record["spec"]["versions"][0]["created"] = json!("9999-12-31T23:59:59Z");
    }
    // A changed period counts from the last rotation: 9999-12-31 plus 100 days.
    h.edit_spec("k1", |s| {
        s.rotation.as_mut().expect("rotation").period_in_days = 100;
    });
    let action = h.reconcile("k1").await;
    assert_eq!(action, Action::await_change());
    assert_eq!(h.fake.take_log(), status_and_event("k1", "Invalid"));
    let status = h.fake.key("k1").and_then(|k| k.status).expect("status");
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "Invalid")
    );
    assert!(
        ready.message.contains("out of the range"),
        "{}",
        ready.message
    );
    assert_eq!(h.versions("k1").len(), 1, "nothing written");

    // A rotation period out of range (bypassing the CRD's validation) is refused too.
    h.edit_spec("k1", |s| {
        s.rotation.as_mut().expect("rotation").period_in_days = u32::MAX;
    });
    h.reconcile("k1").await;
    assert_eq!(
        ready_of(&h, "k1"),
        Some(("False".to_owned(), "Invalid".to_owned()))
    );
}

/// A heartbeat Lease of plugin `plugin` for `key`, seeded under `seeded`, whose renewTime
/// (the plugin's clock) is `renewed`, holding versions 1 and 2 of the key (the rotation
/// these tests make is loaded everywhere, so it is promoted; what they look at is the
/// re-encryption that follows).
fn heartbeat(plugin: &str, key: &str, seeded: &str, renewed: OffsetDateTime) -> Lease {
    heartbeat_holding(plugin, key, seeded, renewed, &[1, 2])
}

/// As [`heartbeat`], holding versions `held` of the key.
fn heartbeat_holding(
    plugin: &str,
    key: &str,
    seeded: &str,
    renewed: OffsetDateTime,
    held: &[u32],
) -> Lease {
    let key_id = seeded.split('/').next().unwrap_or_default();
    Heartbeat {
        plugin: plugin.to_owned(),
        key_name: key.to_owned(),
        served_key_id: Some(seeded.to_owned()),
        seeded: Some((seeded.to_owned(), renewed)),
        held: Some((key_id.to_owned(), held.to_vec())),
        renewed: None,
        duration_seconds: 60,
    }
    .to_lease(NAMESPACE, renewed)
}

impl Harness {
    fn beat(&self, lease: Lease) {
        self.leases
            .lock()
            .expect("leases")
            .apply_watcher_event(&Event::Apply(lease));
    }

    fn reencryption_phase(&self, name: &str) -> Option<String> {
        self.fake
            .key(name)
            .and_then(|k| k.status)
            .and_then(|s| s.reencryption)
            .map(|r| r.phase)
    }
}

/// Item 2 of issue 13: a plugin whose node clock is 2 minutes behind, but which renews its
/// heartbeat, is live: the re-encryption waits for its API server to seed the new key_id.
/// Judged by when the operator saw the Lease change (its own monotonic clock), it turns
/// dead only 60 s after its last renewal, and then no longer holds the pass back.
#[tokio::test(start_paused = true)]
async fn a_renewing_plugin_with_a_clock_behind_holds_the_reencryption() {
    let h = harness();
    h.create("k1", json!({})).await;
    let id = h.fake.record("k1").expect("record").spec.key_id;
    let (v1, v2) = (format!("{id}/v1"), format!("{id}/v2"));
    let behind = h.clock_now() - Duration::minutes(2);
    h.beat(heartbeat("cp-1", "k1", &v1, h.clock_now()));
    h.beat(heartbeat("cp-2", "k1", &v1, behind));
    h.reconcile("k1").await;
    h.edit_spec("k1", |s| {
        s.rotation = Some(serde_json::from_value(json!({"onDemandToken": "r"})).expect("r"));
    });
    h.reconcile("k1").await;
    h.beat(heartbeat("cp-1", "k1", &v2, h.clock_now()));
    h.fake.take_log();

    let mut renewed = behind;
    for round in 0..4 {
        h.reconcile("k1").await;
        assert!(
            !h.fake.take_log().contains(&"GET secrets".to_owned()),
            "round {round}: rewriting while cp-2 (renewing) has not seeded v2"
        );
        assert_eq!(
            h.reencryption_phase("k1").as_deref(),
            Some("WaitingForPlugins"),
            "round {round}"
        );
        tokio::time::advance(std::time::Duration::from_secs(45)).await;
        renewed += Duration::seconds(45);
        h.beat(heartbeat("cp-2", "k1", &v1, renewed));
        h.beat(heartbeat("cp-1", "k1", &v2, renewed + Duration::minutes(2)));
    }
    let status = h.fake.key("k1").and_then(|k| k.status).expect("status");
    assert!(
        status.served_by.iter().all(|p| p.live),
        "{:?}",
        status.served_by
    );

    // cp-2 stops renewing: live for 60 s more, then not live (judged on the operator's
    // clock, not on cp-2's renewTime two minutes behind), and it still holds the pass.
    let cp2_live = |h: &Harness| {
        h.fake
            .key("k1")
            .and_then(|k| k.status)
            .and_then(|s| s.served_by.into_iter().find(|p| p.plugin == "cp-2"))
            .map(|p| p.live)
    };
    h.reconcile("k1").await;
    tokio::time::advance(std::time::Duration::from_secs(59)).await;
    h.beat(heartbeat(
        "cp-1",
        "k1",
        &v2,
        h.clock_now() + Duration::seconds(59),
    ));
    h.reconcile("k1").await;
    assert_eq!(cp2_live(&h), Some(true));
    tokio::time::advance(std::time::Duration::from_secs(2)).await;
    h.fake.take_log();
    h.reconcile("k1").await;
    assert_eq!(cp2_live(&h), Some(false));
    assert!(!h.fake.take_log().contains(&"GET secrets".to_owned()));
    assert_eq!(
        h.reencryption_phase("k1").as_deref(),
        Some("WaitingForPlugins")
    );
}

/// The other way round: a plugin whose clock is 10 minutes ahead and which has stopped
/// renewing is judged not live 60 s after the operator last saw its Lease change, not 11
/// minutes. Not live, it still holds the pass (it may be cut off from the API server while
/// its kube-apiserver reads with the versions it knows), and the status says so and how
/// to let it go; deleting its Lease does.
#[tokio::test(start_paused = true)]
async fn a_silent_plugin_with_a_clock_ahead_is_not_live_and_holds_the_reencryption_until_its_lease_goes()
 {
    let h = harness();
    h.create("k1", json!({})).await;
    let id = h.fake.record("k1").expect("record").spec.key_id;
    let (v1, v2) = (format!("{id}/v1"), format!("{id}/v2"));
    h.beat(heartbeat("cp-1", "k1", &v1, h.clock_now()));
    let silent = heartbeat("cp-2", "k1", &v1, h.clock_now() + Duration::minutes(10));
    h.beat(silent.clone());
    h.edit_spec("k1", |s| {
        s.rotation = Some(serde_json::from_value(json!({"onDemandToken": "r"})).expect("r"));
    });
    h.reconcile("k1").await;
    h.beat(heartbeat("cp-1", "k1", &v2, h.clock_now()));
    h.reconcile("k1").await;
    let waiting_message = |h: &Harness| {
        h.fake
            .key("k1")
            .and_then(|k| k.status)
            .and_then(|s| s.reencryption)
            .and_then(|r| r.message)
            .unwrap_or_default()
    };
    assert_eq!(
        h.reencryption_phase("k1").as_deref(),
        Some("WaitingForPlugins")
    );
    assert!(
        waiting_message(&h).contains("cp-2 (serves"),
        "cp-2 renewed a moment ago: live, {}",
        waiting_message(&h)
    );
    for _ in 0..4 {
        // cp-1 keeps renewing; cp-2 is silent. The operator's wall clock does not move.
        tokio::time::advance(std::time::Duration::from_secs(20)).await;
        h.beat(heartbeat(
            "cp-1",
            "k1",
            &v2,
            h.clock_now() + Duration::seconds(1),
        ));
    }
    h.fake.take_log();
    h.reconcile("k1").await;
    assert!(
        !h.fake.take_log().contains(&"GET secrets".to_owned()),
        "cp-2 has been silent for 80 s: not live, but it still holds the pass"
    );
    assert_eq!(
        h.reencryption_phase("k1").as_deref(),
        Some("WaitingForPlugins")
    );
    let message = waiting_message(&h);
    assert!(
        message.contains("cp-2 (heartbeat not renewed") && message.contains("kubekms-plugin-cp-2"),
        "{message}"
    );

    h.leases
        .lock()
        .expect("leases")
        .apply_watcher_event(&Event::Delete(silent));
    h.fake.take_log();
    h.reconcile("k1").await;
    assert!(
        h.fake.take_log().contains(&"GET secrets".to_owned()),
        "cp-2's Lease is deleted: it no longer holds the pass"
    );
    assert_eq!(h.reencryption_phase("k1").as_deref(), Some("Done"));
}

impl Harness {
    fn rotate_on_demand(&self, name: &str, token: &str) {
        self.edit_spec(name, |s| {
            s.rotation = Some(serde_json::from_value(json!({"onDemandToken": token})).expect("r"));
        });
    }

    fn record_current(&self, name: &str) -> Option<u32> {
        self.fake.record(name).expect("record").spec.current_version
    }

    fn status_current(&self, name: &str) -> Option<u32> {
        self.fake
            .key(name)
            .and_then(|k| k.status)
            .and_then(|s| s.current_version)
    }

    /// The VersionPromoted condition's (reason, message), while a version waits.
    fn promotion_waiting(&self, name: &str) -> Option<(String, String)> {
        self.fake
            .key(name)
            .and_then(|k| k.status)
            .and_then(|s| {
                s.conditions
                    .into_iter()
                    .find(|c| c.type_ == "VersionPromoted")
            })
            .map(|c| (c.reason, c.message))
    }

    fn events(&self) -> Vec<String> {
        self.fake
            .take_log()
            .into_iter()
            .filter(|l| l.starts_with("EVENT "))
            .collect()
    }
}

/// Two-step rotation (issue 11 part 2): a rotation of a served key is staged; the version
/// becomes current only once every plugin with a heartbeat Lease holds it, live or not
/// (a plugin cut off from the API servers cannot learn it, and its kube-apiserver could
/// not read a Secret written under it); the status names the plugins it waits for, and
/// deleting a plugin's Lease lets the promotion go on.
#[tokio::test(start_paused = true)]
async fn a_staged_version_is_promoted_only_once_every_plugin_holds_it() {
    let h = harness();
    h.create("k1", json!({})).await;
    let id = h.fake.record("k1").expect("record").spec.key_id;
    let v1 = format!("{id}/v1");
    h.beat(heartbeat_holding("cp-1", "k1", &v1, h.clock_now(), &[1]));
    let cp2_holding_v1 = heartbeat_holding("cp-2", "k1", &v1, h.clock_now(), &[1]);
    h.beat(cp2_holding_v1.clone());
    h.reconcile("k1").await;
    h.fake.take_log();

    h.rotate_on_demand("k1", "r1");
    h.reconcile("k1").await;
    assert_eq!(h.events(), ["EVENT Rotated", "EVENT PromotionWaiting"]);
    assert_eq!(h.versions("k1").len(), 2, "version 2 is in the record");
    assert_eq!(h.record_current("k1"), Some(1), "staged, not current");
    assert_eq!(h.status_current("k1"), Some(1));
    let staged = h.fake.key("k1").and_then(|k| k.status).expect("status");
    assert_eq!(
        staged
            .versions
            .iter()
            .map(|v| (v.version, v.staged))
            .collect::<Vec<_>>(),
        [(1, false), (2, true)]
    );
    let (reason, message) = h.promotion_waiting("k1").expect("waiting");
    assert_eq!(reason, "WaitingForPlugins");
    assert!(
        message.contains("cp-1 (holds versions up to 1; has not loaded version 2 yet)")
            && message.contains("cp-2 (holds versions up to 1"),
        "{message}"
    );

    // cp-1 loads it; cp-2 does not (cut off): still staged, and only cp-2 is named.
    h.beat(heartbeat_holding("cp-1", "k1", &v1, h.clock_now(), &[1, 2]));
    h.reconcile("k1").await;
    assert_eq!(
        h.events(),
        ["EVENT PromotionWaiting"],
        "the waiting set changed"
    );
    assert_eq!(h.record_current("k1"), Some(1));
    let (_, message) = h.promotion_waiting("k1").expect("waiting");
    assert!(
        !message.contains("cp-1") && message.contains("cp-2"),
        "{message}"
    );
    h.reconcile("k1").await;
    assert_eq!(h.events(), Vec::<String>::new(), "reported once");

    // cp-2's heartbeat expires (cp-1 keeps renewing): not live, it still holds the version
    // back, and the condition says how to let it go.
    for _ in 0..4 {
        tokio::time::advance(std::time::Duration::from_secs(20)).await;
        h.beat(heartbeat_holding(
            "cp-1",
            "k1",
            &v1,
            h.clock_now() + Duration::seconds(1),
            &[1, 2],
        ));
    }
    h.reconcile("k1").await;
    let served = h.fake.key("k1").and_then(|k| k.status).expect("status");
    assert_eq!(
        served
            .served_by
            .iter()
            .map(|p| (p.plugin.as_str(), p.live))
            .collect::<Vec<_>>(),
        [("cp-1", true), ("cp-2", false)]
    );
    assert_eq!(
        h.record_current("k1"),
        Some(1),
        "a stale plugin still counts"
    );
    let (_, message) = h.promotion_waiting("k1").expect("waiting");
    assert!(
        message.contains("cp-2 (heartbeat not renewed")
            && message.contains("delete its Lease kubekms-plugin-cp-2"),
        "{message}"
    );
    assert_eq!(
        served.reencryption.map(|r| r.target_version),
        Some(1),
        "no re-encryption to a staged version"
    );
    let metrics = h.ctx.metrics.encode().expect("metrics");
    assert!(
        metrics.contains("kubekms_operator_promotions_waiting 1")
            && metrics.contains("kubekms_operator_versions_promoted_total 0"),
        "{metrics}"
    );

    // cp-2 comes back holding version 2: promoted, and the re-encryption pass to it begins
    // (waiting for the kube-apiservers to seed under it).
    h.beat(heartbeat_holding("cp-2", "k1", &v1, h.clock_now(), &[1, 2]));
    h.reconcile("k1").await;
    assert_eq!(h.record_current("k1"), Some(2));
    assert_eq!(h.status_current("k1"), Some(2));
    assert_eq!(h.promotion_waiting("k1"), None);
    let promoted = h.fake.key("k1").and_then(|k| k.status).expect("status");
    assert_eq!(
        promoted
            .reencryption
            .map(|r| (r.target_version, r.phase))
            .expect("pass"),
        (2, "WaitingForPlugins".to_owned())
    );
    assert!(promoted.versions.iter().all(|v| !v.staged));
    let metrics = h.ctx.metrics.encode().expect("metrics");
    assert!(
        metrics.contains("kubekms_operator_promotions_waiting 0")
            && metrics.contains("kubekms_operator_versions_promoted_total 1"),
        "{metrics}"
    );

    // Another rotation while cp-2 is gone for good: deleting its Lease releases it.
    h.rotate_on_demand("k1", "r2");
    h.beat(heartbeat_holding(
        "cp-1",
        "k1",
        &v1,
        h.clock_now(),
        &[1, 2, 3],
    ));
    h.reconcile("k1").await;
    assert_eq!(h.record_current("k1"), Some(2));
    assert!(h.promotion_waiting("k1").is_some());
    h.leases
        .lock()
        .expect("leases")
        .apply_watcher_event(&Event::Delete(cp2_holding_v1));
    h.fake.take_log();
    h.reconcile("k1").await;
    assert_eq!(h.events(), ["EVENT VersionPromoted"]);
    assert_eq!(h.record_current("k1"), Some(3), "cp-2's Lease is gone");
    assert_eq!(h.promotion_waiting("k1"), None);
}

/// A key no plugin serves has nobody to wait for: its rotation is current at once, in the
/// same record write.
#[tokio::test]
async fn a_rotation_of_a_key_no_plugin_serves_is_current_at_once() {
    let h = harness();
    h.create("k1", json!({})).await;
    assert_eq!(h.record_current("k1"), None, "a new record pins nothing");
    h.rotate_on_demand("k1", "r1");
    h.reconcile("k1").await;
    assert_eq!(
        h.fake.take_log(),
        vec![
            "GET kmskeymaterials/k1",
            "PUT kmskeymaterials/k1",
            "PATCH kmskeys/k1/status",
            "EVENT Rotated"
        ]
    );
    assert_eq!(h.record_current("k1"), Some(2));
    assert_eq!(h.status_current("k1"), Some(2));
    assert_eq!(h.promotion_waiting("k1"), None);
}

/// The write that promotes a staged version goes to an API server that never answers: the
/// pass fails within its bound (and is retried by the controller), instead of hanging.
#[tokio::test(start_paused = true)]
async fn a_promotion_write_that_never_answers_times_out() {
    let h = harness();
    h.create("k1", json!({})).await;
    let id = h.fake.record("k1").expect("record").spec.key_id;
    let v1 = format!("{id}/v1");
    h.beat(heartbeat_holding("cp-1", "k1", &v1, h.clock_now(), &[1]));
    h.rotate_on_demand("k1", "r1");
    h.reconcile("k1").await;
    assert_eq!(h.record_current("k1"), Some(1));
    h.beat(heartbeat_holding("cp-1", "k1", &v1, h.clock_now(), &[1, 2]));
    h.fake.take_log();
    h.fake.stall_from_next_put();
    let outcome = tokio::time::timeout(key::RECORD_WRITE_TIMEOUT * 4, h.try_reconcile("k1"))
        .await
        .expect("the pass must not hang on a write that never answers");
    let error = outcome.expect_err("the write timed out");
    assert!(
        format!("{error:?}").contains("Timeout(\"writing the KmsKeyMaterial record\""),
        "{error:?}"
    );
    assert_eq!(
        h.fake.take_log(),
        vec!["GET kmskeymaterials/k1"],
        "the PUT was sent and never answered"
    );
    assert_eq!(h.record_current("k1"), Some(1));
}
