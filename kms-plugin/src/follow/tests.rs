//! The follower over keyring snapshots built from objects (no cluster): hand-over,
//! rotations, states, refusals, the key-switch rule, cold starts.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use kms_core::keystore::{FileKeyStore, KeyOwner, RootKeyStore, WrapContext};
use kms_core::{KeyId, KeyMaterial, KeySpec, KeyState, KeyUsage, Origin};
use kubekms_k8s::convert;
use kubekms_k8s::material::WrappedVersion;
use kubekms_k8s::names::RotationTypeName;
use kubekms_k8s::{KmsKey, KmsKeyMaterial};
use kubekms_keyring::{KeySet, KeySetBuilder, KeyringMetrics, Objects};
use time::OffsetDateTime;

use super::objects::adopt_entry;
use super::*;
use crate::error::PluginError;
use crate::metrics::Metrics;
use crate::service::{ANNOTATION_FORMAT, ANNOTATION_FORMAT_VALUE};
use crate::state::{Adopted, SOURCE_KUBERNETES, StateDir};

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("valid time")
}

fn target() -> FollowTarget {
    "kube-system/apiserver-key".parse().expect("target")
}

/// A bootstrap folder, a plugin on it, and the exported objects read back from YAML.
fn setup(tmp: &Path) -> (StateDir, Plugin, KmsKey, KmsKeyMaterial) {
    let dir = StateDir::new(tmp.join("state"));
    dir.init(now()).expect("init");
    let plugin = Plugin::open(dir.clone(), Arc::new(Metrics::new())).expect("open");
    let (key, material) = exported(&dir);
    (dir, plugin, key, material)
}

fn exported(dir: &StateDir) -> (KmsKey, KmsKeyMaterial) {
    let yaml = export(dir, &target()).expect("export");
    let mut docs = yaml.split("\n---\n").skip(1);
    let material: KmsKeyMaterial =
        serde_yaml::from_str(docs.next().expect("material doc")).expect("material");
    let key: KmsKey = serde_yaml::from_str(docs.next().expect("key doc")).expect("key");
    (key, material)
}

/// The keyring's snapshot of these objects, unwrapped under the plugin's root key.
fn snapshot(
    plugin: &Plugin,
    key: Option<&KmsKey>,
    material: Option<&KmsKeyMaterial>,
) -> Arc<KeySet> {
    let store: Arc<dyn RootKeyStore> = plugin.state_dir().open_root_key().expect("root key");
    KeySetBuilder::new(store, Arc::new(KeyringMetrics::new())).build(&Objects {
        keys: key.map(|k| Arc::new(k.clone())).into_iter().collect(),
        records: material.map(|m| Arc::new(m.clone())).into_iter().collect(),
        ready: true,
        ..Objects::default()
    })
}

/// What the follower does with one snapshot of these objects.
fn apply(
    plugin: &Plugin,
    key: &KmsKey,
    material: &KmsKeyMaterial,
) -> Result<(Adopted, KeyState), PluginError> {
    apply_with(plugin, key, material, false)
}

fn apply_with(
    plugin: &Plugin,
    key: &KmsKey,
    material: &KmsKeyMaterial,
    allow_switch: bool,
) -> Result<(Adopted, KeyState), PluginError> {
    let set = snapshot(plugin, Some(key), Some(material));
    let t = target();
    let entry = set.get(&t.namespace, &t.name).expect("entry");
    adopt_entry(plugin, &t, entry, allow_switch)
}

/// What the operator does on a rotation: new material wrapped under the root key.
fn operator_rotate(dir: &StateDir, material: &mut KmsKeyMaterial) {
    let store = FileKeyStore::open(&dir.path().join("root.key")).expect("root key");
    let key_id = KeyId::parse(&material.spec.key_id).expect("key id");
    let version = u32::try_from(material.spec.versions.len()).expect("len") + 1;
    let fresh = KeyMaterial::generate(KeySpec::SymmetricDefault).expect("material");
    let wrapped = store
        .wrap(
            &WrapContext {
                key_id,
                version,
                spec: KeySpec::SymmetricDefault,
                usage: KeyUsage::EncryptDecrypt,
                origin: Origin::AwsKms,
                owner: Some(KeyOwner::new(
                    material.metadata.namespace.clone().unwrap_or_default(),
                    material.metadata.name.clone().unwrap_or_default(),
                )),
            },
            fresh.serialized(),
        )
        .expect("wrap");
    material.spec.versions.push(WrappedVersion {
        version,
        created: convert::format_time(now()),
        rotation_type: Some(RotationTypeName::OnDemand),
        wrapped: base64::engine::general_purpose::STANDARD.encode(wrapped),
    });
    material.spec.on_demand_rotations += 1;
}

/// A key the operator generated itself for the followed KmsKey (another key id, the
/// same root key), as a replaced record.
fn operator_made_key(dir: &StateDir, material: &KmsKeyMaterial) -> (KmsKeyMaterial, KeyId) {
    let mut other = material.clone();
    let new_id = KeyId::generate().expect("id");
    other.spec.key_id = new_id.to_string();
    other.spec.versions.clear();
    operator_rotate(dir, &mut other);
    other.spec.versions[0].rotation_type = None;
    other.spec.on_demand_rotations = 0;
    (other, new_id)
}

fn annotations() -> HashMap<String, Vec<u8>> {
    HashMap::from([(
        ANNOTATION_FORMAT.to_owned(),
        ANNOTATION_FORMAT_VALUE.to_vec(),
    )])
}

#[test]
fn targets_parse() {
    assert_eq!(
        "ns/key".parse::<FollowTarget>().expect("ok").to_string(),
        "ns/key"
    );
    for bad in [
        "", "ns", "/key", "ns/", "NS/key", "ns/Key", "a.b/key", "ns/-x",
    ] {
        assert!(bad.parse::<FollowTarget>().is_err(), "{bad:?}");
    }
}

#[test]
fn export_is_adopted_with_the_same_key_id_and_material() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (dir, plugin, key, material) = setup(tmp.path());
    let before = plugin.ring().key_id().to_owned();
    let (blob, _) = plugin.ring().encrypt(b"seed").expect("encrypt");
    let local = dir.active_record().expect("record");
    assert_eq!(material.spec.key_id, local.key_id);
    assert_eq!(material.spec.created_at, local.created);
    // Wrapped again, bound to the KmsKey it becomes: other bytes, the same material.
    assert_ne!(
        Some(&material.spec.versions[0].wrapped),
        local.versions[0].wrapped_material.as_ref()
    );
    let store = dir.open_root_key().expect("root key");
    let exported = store
        .unwrap(
            &convert::wrap_context(&material.spec, "kube-system", "apiserver-key", 1)
                .expect("context"),
            &base64::engine::general_purpose::STANDARD
                .decode(&material.spec.versions[0].wrapped)
                .expect("base64"),
        )
        .expect("the exported version unwraps as the KmsKey's");
    let local_key = crate::state::record_to_key(&*store, &local).expect("local");
    assert_eq!(
        &exported,
        local_key.material(1).expect("v1").serialized(),
        "same material"
    );

    let (adopted, state) = apply(&plugin, &key, &material).expect("adopt");
    assert_eq!(state, KeyState::Enabled);
    assert!(adopted.record_written && adopted.active_written);
    assert_eq!(plugin.ring().key_id(), before);
    let record = dir.active_record().expect("record");
    assert_eq!(record.source, SOURCE_KUBERNETES);
    assert_eq!(
        record.kubernetes_object.as_deref(),
        Some("kube-system/apiserver-key")
    );
    assert_eq!(plugin.health(), Ok(()));
    assert!(
        plugin
            .ring()
            .decrypt(&blob, &before, &annotations())
            .is_ok()
    );

    // The same objects again: nothing written.
    let (again, _) = apply(&plugin, &key, &material).expect("again");
    assert!(!again.record_written && !again.active_written);
    // Local rotation is refused once the operator owns the key.
    let err = dir.rotate(now()).expect_err("rotate must refuse");
    assert!(err.to_string().contains("operator"), "{err}");
}

#[test]
fn an_adopted_key_is_in_memory_at_once_and_a_reload_unwraps_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (dir, plugin, key, mut material) = setup(tmp.path());
    apply(&plugin, &key, &material).expect("adopt");
    operator_rotate(&dir, &mut material);
    let reloads = plugin.metrics().reloads.get();
    apply(&plugin, &key, &material).expect("v2");
    assert_eq!(
        plugin.ring().key_id(),
        format!("{}/v2", material.spec.key_id),
        "the new key_id without any reload of the folder"
    );
    assert_eq!(plugin.metrics().reloads.get(), reloads);
    // The folder holds what was written: the periodic reload finds nothing new.
    assert!(
        !plugin.refresh(),
        "a reload after an adoption changes nothing"
    );
    assert_eq!(plugin.metrics().reloads.get(), reloads);
}

#[test]
fn an_operator_rotation_becomes_the_key_id_and_old_versions_decrypt() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (dir, plugin, key, mut material) = setup(tmp.path());
    let (blob, k1) = plugin.ring().encrypt(b"seed-v1").expect("encrypt");
    apply(&plugin, &key, &material).expect("adopt");
    operator_rotate(&dir, &mut material);
    apply(&plugin, &key, &material).expect("v2");
    assert_eq!(
        plugin.ring().key_id(),
        format!("{}/v2", material.spec.key_id)
    );
    let back = plugin
        .ring()
        .decrypt(&blob, &k1, &annotations())
        .expect("v1");
    assert_eq!(back.expose(), b"seed-v1");
    // A cold start reads v2 from the folder alone.
    let cold = Plugin::open(dir.clone(), Arc::new(Metrics::new())).expect("cold");
    assert_eq!(cold.ring().key_id(), plugin.ring().key_id());
    assert_eq!(cold.health(), Ok(()));

    // A record that lacks a version the plugin holds is refused, nothing changes.
    let mut shorter = material.clone();
    shorter.spec.versions.pop();
    let err = apply(&plugin, &key, &shorter).expect_err("drop");
    assert!(err.to_string().contains("refusing to drop"), "{err}");
    assert!(plugin.ring().key_id().ends_with("/v2"));
    // A fresh plugin on a copy of the folder refuses it too (the file check, under the
    // lock, not only the keys in memory).
    let err = apply(&cold, &key, &shorter).expect_err("drop, cold");
    assert!(err.to_string().contains("refusing to drop"), "{err}");
    // A version whose wrapped bytes were swapped does not unwrap.
    let mut swapped = material.clone();
    swapped.spec.versions[1].wrapped = swapped.spec.versions[0].wrapped.clone();
    assert!(apply(&plugin, &key, &swapped).is_err());
}

/// Two-step rotation: a staged version (listed after the record's currentVersion) is
/// loaded and decrypts, Encrypt and Status stay on the current version, the heartbeat's
/// held versions include it, and a cold start from the folder keeps it staged; once the
/// operator promotes it, it is the key_id.
#[test]
fn a_staged_version_decrypts_but_encrypt_stays_on_the_current_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (dir, plugin, key, mut material) = setup(tmp.path());
    apply(&plugin, &key, &material).expect("adopt");
    let k1 = format!("{}/v1", material.spec.key_id);
    let k2 = format!("{}/v2", material.spec.key_id);
    operator_rotate(&dir, &mut material);
    material.spec.current_version = Some(1);
    apply(&plugin, &key, &material).expect("staged v2");
    assert_eq!(
        plugin.ring().key_id(),
        k1,
        "Status stays on the current version"
    );
    assert_eq!(plugin.ring().held_versions(), vec![1, 2]);
    let (staged_blob, used) = plugin.ring().encrypt(b"seed-staged").expect("encrypt");
    assert_eq!(used, k1, "Encrypt stays on the current version");
    let cold = Plugin::open(dir.clone(), Arc::new(Metrics::new())).expect("cold");
    assert_eq!(cold.ring().key_id(), k1, "a cold start keeps v2 staged");
    assert_eq!(cold.ring().held_versions(), vec![1, 2]);

    // Another plugin (another host) on which v2 is already current writes under v2: this
    // one, still staged, reads it.
    let mut promoted = material.clone();
    promoted.spec.current_version = Some(2);
    apply(&cold, &key, &promoted).expect("promoted on the other plugin");
    let (blob_v2, used) = cold.ring().encrypt(b"seed-v2").expect("encrypt");
    assert_eq!(used, k2);
    assert_eq!(plugin.ring().key_id(), k1);
    let back = plugin
        .ring()
        .decrypt(&blob_v2, &k2, &annotations())
        .expect("a staged version decrypts");
    assert_eq!(back.expose(), b"seed-v2");

    // Promoted here too: v2 is the key_id, v1 still decrypts.
    apply(&plugin, &key, &promoted).expect("promoted");
    assert_eq!(plugin.ring().key_id(), k2);
    let back = plugin
        .ring()
        .decrypt(&staged_blob, &k1, &annotations())
        .expect("v1");
    assert_eq!(back.expose(), b"seed-staged");
}

#[test]
fn a_version_with_other_material_under_the_same_number_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (dir, plugin, key, mut material) = setup(tmp.path());
    apply(&plugin, &key, &material).expect("adopt");
    operator_rotate(&dir, &mut material);
    apply(&plugin, &key, &material).expect("v2");
    // Version 2 replaced by other material (validly wrapped for this key and version).
    let mut replaced = material.clone();
    replaced.spec.versions.pop();
    replaced.spec.on_demand_rotations -= 1;
    operator_rotate(&dir, &mut replaced);
    let err = apply(&plugin, &key, &replaced).expect_err("replaced");
    assert!(err.to_string().contains("refusing to replace"), "{err}");
    let cold = Plugin::open(dir.clone(), Arc::new(Metrics::new())).expect("cold");
    let err = apply(&cold, &key, &replaced).expect_err("replaced, cold");
    assert!(err.to_string().contains("refusing to replace"), "{err}");
}

#[test]
fn a_disabled_or_deleted_key_keeps_serving_and_health_says_why() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (dir, plugin, mut key, mut material) = setup(tmp.path());
    apply(&plugin, &key, &material).expect("adopt");
    key.spec.enabled = false;
    let (_, state) = apply(&plugin, &key, &material).expect("disabled");
    assert_eq!(state, KeyState::Disabled);
    let reason = plugin.health().expect_err("unhealthy");
    assert!(
        reason.contains("Disabled") && reason.contains("kube-system/apiserver-key"),
        "{reason}"
    );
    let (blob, key_id) = plugin.ring().encrypt(b"still").expect("encrypt continues");
    assert!(
        plugin
            .ring()
            .decrypt(&blob, &key_id, &annotations())
            .is_ok()
    );
    // The reason survives a cold start.
    let cold = Plugin::open(dir.clone(), Arc::new(Metrics::new())).expect("cold");
    assert!(cold.health().expect_err("cold").contains("Disabled"));

    key.spec.enabled = true;
    material.spec.deletion_date = Some(convert::format_time(now()));
    let (_, state) = apply(&plugin, &key, &material).expect("pending");
    assert_eq!(state, KeyState::PendingDeletion);
    assert!(
        plugin
            .health()
            .expect_err("unhealthy")
            .contains("PendingDeletion")
    );
    material.spec.deletion_date = None;
    apply(&plugin, &key, &material).expect("enabled");
    assert_eq!(plugin.health(), Ok(()));
    // A KmsKey being deleted (held by its finalizer) counts as PendingDeletion.
    key.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
    ));
    let (_, state) = apply(&plugin, &key, &material).expect("deleting");
    assert_eq!(state, KeyState::PendingDeletion);
}

#[test]
fn a_record_under_another_root_key_is_refused_and_reported() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_, plugin, key, _) = setup(tmp.path());
    let other = StateDir::new(tmp.path().join("other"));
    other.init(now()).expect("init other");
    let (_, foreign) = exported(&other);
    let before = plugin.ring().key_id().to_owned();
    let mut follower = Follower::new(target(), false);
    follower.apply(&plugin, &snapshot(&plugin, Some(&key), Some(&foreign)));
    let reason = plugin.health().expect_err("reported");
    assert!(reason.contains("root key"), "{reason}");
    assert_eq!(plugin.ring().key_id(), before);
    assert!(plugin.ring().encrypt(b"x").is_ok());
    // Objects deleted after being seen: reported, the folder keeps serving.
    follower.apply(&plugin, &snapshot(&plugin, Some(&key), None));
    assert!(
        plugin
            .health()
            .expect_err("deleted")
            .contains("KmsKeyMaterial")
    );
    follower.apply(&plugin, &snapshot(&plugin, None, None));
    assert!(
        plugin
            .health()
            .expect_err("deleted")
            .contains("was deleted")
    );
    // A snapshot that is not ready says nothing.
    let mut fresh = Follower::new(target(), false);
    plugin.set_follow_problem(None);
    fresh.apply(&plugin, &Arc::new(KeySet::default()));
    assert_eq!(plugin.health(), Ok(()));
}

#[test]
fn an_operator_made_key_takes_over_from_the_bootstrap_key_which_still_decrypts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (dir, plugin, key, material) = setup(tmp.path());
    let (blob, k1) = plugin.ring().encrypt(b"bootstrap").expect("encrypt");
    let (other, new_id) = operator_made_key(&dir, &material);
    let (adopted, _) = apply(&plugin, &key, &other).expect("adopt: away from the local key");
    assert!(adopted.active_written);
    assert_eq!(plugin.ring().key_id(), format!("{new_id}/v1"));
    assert!(plugin.ring().decrypt(&blob, &k1, &annotations()).is_ok());
    assert_eq!(plugin.health(), Ok(()));
}

#[test]
fn once_adopted_the_key_id_is_pinned_unless_a_switch_is_allowed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (dir, plugin, key, material) = setup(tmp.path());
    apply(&plugin, &key, &material).expect("hand-over");
    let pinned = plugin.ring().key_id().to_owned();
    // The record deleted and re-created with another key under the same root key.
    let (other, new_id) = operator_made_key(&dir, &material);
    let mut follower = Follower::new(target(), false);
    follower.apply(&plugin, &snapshot(&plugin, Some(&key), Some(&other)));
    let reason = plugin.health().expect_err("refused and reported");
    assert!(
        reason.contains("refusing to switch") && reason.contains("--allow-key-switch"),
        "{reason}"
    );
    assert_eq!(plugin.ring().key_id(), pinned, "not adopted");
    assert!(
        !dir.key_path(&new_id).exists(),
        "nothing of the other key written"
    );
    // Also after a restart: the pin is the active key of the folder.
    let cold = Plugin::open(dir.clone(), Arc::new(Metrics::new())).expect("cold");
    assert!(matches!(
        apply(&cold, &key, &other),
        Err(PluginError::KeySwitch { .. })
    ));
    // With --allow-key-switch the switch is made.
    let (adopted, _) = apply_with(&plugin, &key, &other, true).expect("allowed");
    assert!(adopted.active_written);
    assert_eq!(plugin.ring().key_id(), format!("{new_id}/v1"));
}

#[test]
fn a_record_with_fewer_versions_is_refused_even_on_a_folder_that_never_followed() {
    // The bootstrap key was rotated locally to v2 before the hand-over; an export of an
    // older copy (v1 only) must not be adopted: v2 ciphertexts would stop decrypting.
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = StateDir::new(tmp.path().join("state"));
    dir.init(now()).expect("init");
    let (key, v1_only) = exported(&dir);
    dir.rotate(now()).expect("rotate");
    let plugin = Plugin::open(dir.clone(), Arc::new(Metrics::new())).expect("open");
    let err = apply(&plugin, &key, &v1_only).expect_err("lacks v2");
    assert!(err.to_string().contains("refusing to drop"), "{err}");
    assert!(plugin.ring().key_id().ends_with("/v2"));
}

#[test]
fn records_of_other_specs_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_, plugin, mut key, material) = setup(tmp.path());
    key.spec.key_spec = kubekms_k8s::names::KeySpecName::Hmac256;
    let err = apply(&plugin, &key, &material).expect_err("mismatch");
    assert!(matches!(err, PluginError::FollowedKey { .. }), "{err}");
}
