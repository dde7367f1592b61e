//! Snapshots built from objects without a cluster: what is unwrapped when, and what the
//! set answers.

use std::sync::Arc;

use base64::Engine as _;
use k8s_openapi::api::coordination::v1::Lease;
use kms_core::keystore::{FileKeyStore, RootKeyStore};
use kms_core::{AliasName, KeyId, KeySpec, KeyState};
use kubekms_k8s::names::{KeySpecName, KeyUsageName, OriginName};
use kubekms_k8s::test_util::add_version;
use kubekms_k8s::unwrap::UnwrapError;
use kubekms_k8s::{KmsAlias, KmsGrant, KmsKey, KmsKeyMaterial, KmsKeyMaterialSpec, KmsKeySpec};
use kubekms_keyring::{KeySetBuilder, KeyringMetrics, Objects};

struct Fixture {
    _tmp: tempfile::TempDir,
    root: Arc<FileKeyStore>,
    metrics: Arc<KeyringMetrics>,
    builder: KeySetBuilder,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = Arc::new(FileKeyStore::init(&tmp.path().join("root.key")).expect("root"));
    let metrics = Arc::new(KeyringMetrics::new());
    let builder = KeySetBuilder::new(root.clone(), metrics.clone());
    Fixture {
        _tmp: tmp,
        root,
        metrics,
        builder,
    }
}

fn unwraps(f: &Fixture) -> u64 {
    f.metrics.unwraps.get()
}

fn bump(meta: &mut kube::api::ObjectMeta) {
    let next = meta
        .resource_version
        .as_deref()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        + 1;
    meta.resource_version = Some(next.to_string());
}

fn objects(
    store: &dyn RootKeyStore,
    namespace: &str,
    name: &str,
    spec: KeySpec,
) -> (KmsKey, KmsKeyMaterial) {
    let mut record = KmsKeyMaterial::new(
        name,
        KmsKeyMaterialSpec {
            key_id: KeyId::generate().expect("id").to_string(),
            key_spec: KeySpecName::from(spec),
            key_usage: KeyUsageName::from(spec.default_usage()),
            origin: OriginName::AwsKms,
            created_at: "2026-01-01T00:00:00Z".to_owned(),
            root_key_id: store.root_key_id(),
            versions: Vec::new(),
            current_version: None,
            on_demand_rotations: 0,
            last_on_demand_token: None,
            next_rotation_time: None,
            rotation_period_in_days: None,
            deletion_date: None,
        },
    );
    record.metadata.namespace = Some(namespace.to_owned());
    record.metadata.uid = Some(format!("uid-record-{namespace}-{name}"));
    record.metadata.resource_version = Some("1".to_owned());
    add_version(store, &mut record);
    let key_spec: KmsKeySpec =
        serde_json::from_value(serde_json::json!({"keySpec": spec.as_str()})).expect("spec");
    let mut key = KmsKey::new(name, key_spec);
    key.metadata.namespace = Some(namespace.to_owned());
    key.metadata.uid = Some(format!("uid-key-{namespace}-{name}"));
    key.metadata.resource_version = Some("1".to_owned());
    (key, record)
}

fn set_of(keys: &[&KmsKey], records: &[&KmsKeyMaterial]) -> Objects {
    Objects {
        keys: keys.iter().map(|k| Arc::new((*k).clone())).collect(),
        records: records.iter().map(|r| Arc::new((*r).clone())).collect(),
        ready: true,
        ..Objects::default()
    }
}

#[test]
fn records_are_unwrapped_once_and_a_status_write_unwraps_nothing() {
    let mut f = fixture();
    let (mut key, mut record) = objects(f.root.as_ref(), "team-a", "k", KeySpec::SymmetricDefault);
    let first = f.builder.build(&set_of(&[&key], &[&record]));
    assert!(first.is_ready());
    assert_eq!(first.generation(), 1);
    assert_eq!(unwraps(&f), 1);
    let entry = first.get("team-a", "k").expect("entry").clone();
    let unwrapped = entry.key.as_ref().expect("usable").clone();
    assert_eq!(entry.state, KeyState::Enabled);
    let key_id = KeyId::parse(&record.spec.key_id).expect("id");
    assert!(Arc::ptr_eq(
        first.by_key_id(&key_id).expect("by id"),
        &entry
    ));
    assert_eq!(first.keys_in("team-a").count(), 1);
    assert_eq!(first.keys_in("team-b").count(), 0);

    // The same objects again (a re-list): the same entry, nothing unwrapped.
    let again = f.builder.build(&set_of(&[&key], &[&record]));
    assert_eq!(again.generation(), 2);
    assert!(Arc::ptr_eq(
        again.get("team-a", "k").expect("entry"),
        &entry
    ));
    assert_eq!(unwraps(&f), 1);

    // A status write and a disable on the KmsKey: a new entry, the same material.
    key.status = Some(kubekms_k8s::KmsKeyStatus {
        key_id: Some(record.spec.key_id.clone()),
        ..Default::default()
    });
    key.spec.enabled = false;
    bump(&mut key.metadata);
    let disabled = f.builder.build(&set_of(&[&key], &[&record]));
    let entry = disabled.get("team-a", "k").expect("entry");
    let rebuilt = entry.key.as_ref().expect("usable");
    assert_eq!(rebuilt.metadata.state, KeyState::Disabled);
    assert_eq!(entry.state, KeyState::Disabled);
    assert!(Arc::ptr_eq(
        &rebuilt.shared_materials()[&1],
        &unwrapped.shared_materials()[&1]
    ));
    assert_eq!(unwraps(&f), 1, "a KmsKey change unwraps nothing");

    // A record change that leaves the wrapped bytes alone (a scheduled deletion).
    record.spec.deletion_date = Some("2026-02-01T00:00:00Z".to_owned());
    bump(&mut record.metadata);
    let pending = f.builder.build(&set_of(&[&key], &[&record]));
    assert_eq!(
        pending.get("team-a", "k").expect("entry").state,
        KeyState::PendingDeletion
    );
    assert_eq!(unwraps(&f), 1, "unchanged versions are not unwrapped again");

    // A rotation: only the new version is unwrapped.
    record.spec.deletion_date = None;
    add_version(f.root.as_ref(), &mut record);
    bump(&mut record.metadata);
    let rotated = f.builder.build(&set_of(&[&key], &[&record]));
    let key2 = rotated
        .get("team-a", "k")
        .expect("entry")
        .key
        .as_ref()
        .expect("usable")
        .clone();
    assert_eq!(key2.material_versions().collect::<Vec<_>>(), [1, 2]);
    assert_eq!(unwraps(&f), 2);

    // The record deleted: the key leaves the set, the KmsKey stays visible.
    let gone = f.builder.build(&set_of(&[&key], &[]));
    assert!(gone.get("team-a", "k").is_none());
    assert!(gone.by_key_id(&key_id).is_none());
    assert!(gone.record("team-a", "k").is_none());
    assert!(gone.kms_key("team-a", "k").is_some());
}

#[test]
fn every_key_spec_is_in_the_set() {
    let mut f = fixture();
    let pairs: Vec<_> = KeySpec::ALL
        .iter()
        .map(|spec| {
            objects(
                f.root.as_ref(),
                "team-a",
                &spec.as_str().to_ascii_lowercase().replace('_', "-"),
                *spec,
            )
        })
        .collect();
    let keys: Vec<&KmsKey> = pairs.iter().map(|(k, _)| k).collect();
    let records: Vec<&KmsKeyMaterial> = pairs.iter().map(|(_, r)| r).collect();
    let set = f.builder.build(&set_of(&keys, &records));
    assert_eq!(set.keys_in("team-a").count(), KeySpec::ALL.len());
    for entry in set.keys() {
        let key = entry
            .key
            .as_ref()
            .unwrap_or_else(|e| panic!("{}: {e}", entry.name));
        assert_eq!(key.metadata.state, KeyState::Enabled);
    }
    assert_eq!(f.metrics.usable_keys.get(), KeySpec::ALL.len() as i64);
}

#[test]
fn unusable_records_are_in_the_set_with_the_reason() {
    let mut f = fixture();
    let other = FileKeyStore::init(&f._tmp.path().join("other.key")).expect("other root");
    let (foreign_key, foreign) = objects(&other, "team-a", "foreign", KeySpec::SymmetricDefault);
    let (moved_key, mut moved) = objects(f.root.as_ref(), "team-a", "moved", KeySpec::Hmac256);
    // The record of "moved" replaced by a copy of another key's record: bound elsewhere.
    let (_, original) = objects(f.root.as_ref(), "team-a", "original", KeySpec::Hmac256);
    moved.spec = original.spec.clone();
    let (tampered_key, mut tampered) = objects(
        f.root.as_ref(),
        "team-a",
        "tampered",
        KeySpec::SymmetricDefault,
    );
    let mut bytes = base64::engine::general_purpose::STANDARD
        .decode(&tampered.spec.versions[0].wrapped)
        .expect("b64");
    bytes[20] ^= 0x40;
    tampered.spec.versions[0].wrapped = base64::engine::general_purpose::STANDARD.encode(bytes);
    let set = f.builder.build(&set_of(
        &[&foreign_key, &moved_key, &tampered_key],
        &[&foreign, &moved, &tampered],
    ));
    let reason = |name: &str| {
        set.get("team-a", name)
            .expect("entry")
            .key
            .as_ref()
            .expect_err("unusable")
            .clone()
    };
    assert!(matches!(
        reason("foreign"),
        UnwrapError::ForeignRootKey { .. }
    ));
    assert!(matches!(reason("moved"), UnwrapError::Unwrap { .. }));
    assert!(matches!(reason("tampered"), UnwrapError::Unwrap { .. }));
    assert_eq!(
        set.get("team-a", "moved").expect("entry").state,
        KeyState::Enabled
    );
    assert_eq!(f.metrics.unwrap_failures.get(), 3);
    assert_eq!(f.metrics.usable_keys.get(), 0);
    // Built again: the failures are not counted twice.
    f.builder.build(&set_of(
        &[&foreign_key, &moved_key, &tampered_key],
        &[&foreign, &moved, &tampered],
    ));
    assert_eq!(f.metrics.unwrap_failures.get(), 3);
}

#[test]
fn a_key_id_claimed_twice_resolves_by_name_only() {
    let mut f = fixture();
    let (key_a, record_a) = objects(f.root.as_ref(), "team-a", "k", KeySpec::SymmetricDefault);
    // A format-1 style copy is not possible here (owners are bound), so the copy is a
    // record wrapped for team-b under the same key id: both unwrap.
    let (key_b, mut record_b) = objects(f.root.as_ref(), "team-b", "k", KeySpec::SymmetricDefault);
    record_b.spec.key_id = record_a.spec.key_id.clone();
    record_b.spec.versions.clear();
    add_version(f.root.as_ref(), &mut record_b);
    let set = f
        .builder
        .build(&set_of(&[&key_a, &key_b], &[&record_a, &record_b]));
    let key_id = KeyId::parse(&record_a.spec.key_id).expect("id");
    assert!(set.get("team-a", "k").expect("a").key.is_ok());
    assert!(set.get("team-b", "k").expect("b").key.is_ok());
    assert!(set.by_key_id(&key_id).is_none());
    assert_eq!(set.duplicate_key_ids().collect::<Vec<_>>(), [&key_id]);
}

#[test]
fn served_keys_aliases_and_grants() {
    let mut f = fixture();
    let (key, record) = objects(f.root.as_ref(), "team-a", "k", KeySpec::SymmetricDefault);
    let (mut other, other_record) = objects(
        f.root.as_ref(),
        "team-a",
        "other",
        KeySpec::SymmetricDefault,
    );
    other.status = Some(kubekms_k8s::KmsKeyStatus {
        served_by: vec![kubekms_k8s::ServedBy {
            plugin: "cp-1".to_owned(),
            live: false,
            ..Default::default()
        }],
        ..Default::default()
    });
    let beat = kubekms_k8s::heartbeat::Heartbeat {
        plugin: "cp-2".to_owned(),
        key_name: "k".to_owned(),
        served_key_id: None,
        seeded: None,
        held: None,
        renewed: None,
        duration_seconds: 60,
    };
    let lease: Lease = beat.to_lease("team-a", time::OffsetDateTime::UNIX_EPOCH);
    let alias = |name: &str, alias: &str, target: &str, created: i64| -> KmsAlias {
        let mut a: KmsAlias = serde_json::from_value(serde_json::json!({
            "apiVersion": "kubekms.io/v1alpha1", "kind": "KmsAlias",
            "metadata": {"name": name, "namespace": "team-a"},
            "spec": {"aliasName": alias, "targetKeyRef": {"name": target}},
        }))
        .expect("alias");
        a.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(created).expect("time"),
        ));
        a
    };
    let grant = |name: &str, deleting: bool| -> KmsGrant {
        let mut g: KmsGrant = serde_json::from_value(serde_json::json!({
            "apiVersion": "kubekms.io/v1alpha1", "kind": "KmsGrant",
            "metadata": {"name": name, "namespace": "team-a"},
            "spec": {"keyRef": {"name": "k"}, "grantee": {"user": "alice"}, "operations": ["Encrypt"]},
        }))
        .expect("grant");
        if deleting {
            g.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                ));
        }
        g
    };
    let mut objects = set_of(&[&key, &other], &[&record, &other_record]);
    objects.leases = vec![Arc::new(lease)];
    objects.aliases = vec![
        Arc::new(alias("late", "alias/app", "other", 200)),
        Arc::new(alias("early", "alias/app", "k", 100)),
    ];
    objects.grants = vec![
        Arc::new(grant("live", false)),
        Arc::new(grant("revoked", true)),
    ];
    let set = f.builder.build(&objects);
    assert!(
        set.get("team-a", "k").expect("k").served_by_plugin,
        "a Lease names it"
    );
    assert!(
        set.get("team-a", "other").expect("other").served_by_plugin,
        "status.servedBy lists a plugin"
    );
    let name = AliasName::parse("alias/app").expect("alias name");
    assert_eq!(
        set.alias("team-a", &name)
            .expect("alias")
            .spec
            .target_key_ref
            .name,
        "k",
        "the alias created first wins"
    );
    assert!(set.alias("team-b", &name).is_none());
    assert_eq!(set.aliases_in("team-a").count(), 1);
    let grants: Vec<_> = set
        .grants_for("team-a", "k")
        .map(|g| g.metadata.name.clone().unwrap_or_default())
        .collect();
    assert_eq!(grants, ["live"]);
    assert_eq!(set.grants_for("team-a", "other").count(), 0);
}
