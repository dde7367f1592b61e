//! Follow mode (`serve --follow NAMESPACE/NAME`): the plugin keeps serving from the local
//! state folder and, in the background, watches one KmsKey and its KmsKeyMaterial record.
//! Each record it reads is checked (same root key, every version unwraps under its key id,
//! version and spec, nothing the folder holds is dropped) and written into the folder as
//! `keys/<uuid>.json` with `"source": "kubernetes"`; an Enabled key becomes the active key.
//! A cold start then serves the last state learned, with no API server.
//!
//! Nothing here ever blocks Status, Encrypt or Decrypt: the watch runs in its own task,
//! reconnects forever with a back-off, and a problem only turns `healthz` into a reason.
//!
//! [`export`] is the other half of the hand-over: it prints the bootstrap key of a state
//! folder as a KmsKeyMaterial record and a KmsKey with the same key id, creation time and
//! wrapped versions, for `kubectl apply`, so the operator adopts the key with nothing to
//! re-encrypt.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine as _;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use kms_core::{KeySpec, KeyState, KeyUsage, Origin, RotationType};
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use kube::{Client, Config, Resource as _};
use kubekms_k8s::convert;
use kubekms_k8s::heartbeat::{self, Heartbeat};
use kubekms_k8s::material::WrappedVersion;
use kubekms_k8s::names::{KeySpecName, KeyUsageName, OriginName, RotationTypeName};
use kubekms_k8s::{KmsKey, KmsKeyMaterial, KmsKeyMaterialSpec, KmsKeySpec};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::error::PluginError;
use crate::service::{Plugin, format_key_id};
use crate::state::{Adopted, FORMAT, KeyRecord, SOURCE_KUBERNETES, StateDir, VersionRecord};

/// A KmsKey reference: `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowTarget {
    /// Namespace of the KmsKey.
    pub namespace: String,
    /// Name of the KmsKey (and of its KmsKeyMaterial).
    pub name: String,
}

fn dns_label_ok(text: &str, max: usize) -> bool {
    !text.is_empty()
        && text.len() <= max
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !text.starts_with(['-', '.'])
        && !text.ends_with(['-', '.'])
}

impl FromStr for FollowTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (namespace, name) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not NAMESPACE/NAME"))?;
        if !dns_label_ok(namespace, 63) || namespace.contains('.') {
            return Err(format!("{namespace:?} is not a namespace name"));
        }
        if !dns_label_ok(name, 253) {
            return Err(format!("{name:?} is not an object name"));
        }
        Ok(Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }
}

impl std::fmt::Display for FollowTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

fn invalid(target: &FollowTarget, reason: impl std::fmt::Display) -> PluginError {
    PluginError::State(format!("KmsKey {target}: {reason}"))
}

/// The state the KmsKey and its record imply (a KmsKey being deleted counts as
/// PendingDeletion: its finalizer holds it until the deletion window has passed).
#[must_use]
pub fn kubernetes_state(key: &KmsKey, material: &KmsKeyMaterialSpec) -> KeyState {
    if key.meta().deletion_timestamp.is_some() {
        KeyState::PendingDeletion
    } else {
        convert::desired_state(&key.spec, material)
    }
}

/// The local record for a KmsKey and its KmsKeyMaterial: the wrapped versions verbatim
/// (the operator and the plugin wrap with the same root key store and context), the
/// Kubernetes state alongside. Checks that the record is a symmetric encryption key with
/// material, agrees with its KmsKey, and has the key id the KmsKey's status shows.
///
/// # Errors
/// `State` with the reason.
pub fn record_from_objects(
    target: &FollowTarget,
    key: &KmsKey,
    material: &KmsKeyMaterial,
) -> Result<(KeyRecord, KeyState), PluginError> {
    let m = &material.spec;
    let metadata = convert::metadata(&key.spec, m).map_err(|e| invalid(target, e))?;
    if let Some(status_id) = key.status.as_ref().and_then(|s| s.key_id.as_deref())
        && status_id != m.key_id
    {
        return Err(invalid(
            target,
            format!(
                "its status names key {status_id} but its KmsKeyMaterial holds key {}",
                m.key_id
            ),
        ));
    }
    if metadata.spec != KeySpec::SymmetricDefault || metadata.usage != KeyUsage::EncryptDecrypt {
        return Err(invalid(
            target,
            format!(
                "key {} is {} / {}; kube-apiserver needs a SYMMETRIC_DEFAULT ENCRYPT_DECRYPT key",
                m.key_id, metadata.spec, metadata.usage
            ),
        ));
    }
    if m.versions.is_empty() {
        return Err(invalid(
            target,
            format!("key {} has no material yet (PendingImport)", m.key_id),
        ));
    }
    let state = kubernetes_state(key, m);
    let versions = m
        .versions
        .iter()
        .map(|v| VersionRecord {
            version: v.version,
            created: v.created.clone(),
            rotation_type: v
                .rotation_type
                .map(|r| RotationType::from(r).as_str().to_owned()),
            wrapped_material: Some(v.wrapped.clone()),
        })
        .collect();
    let record = KeyRecord {
        format: FORMAT,
        key_id: m.key_id.clone(),
        key_spec: metadata.spec.as_str().to_owned(),
        key_usage: metadata.usage.as_str().to_owned(),
        origin: metadata.origin.as_str().to_owned(),
        // The state the plugin serves the key in: kube-apiserver must keep reading and
        // writing Secrets; the Kubernetes state goes to health (docs/plugin.md).
        key_state: KeyState::Enabled.as_str().to_owned(),
        created: m.created_at.clone(),
        description: key.spec.description.clone().unwrap_or_default(),
        on_demand_rotations: m.on_demand_rotations,
        root_key_id: m.root_key_id.clone(),
        source: SOURCE_KUBERNETES.to_owned(),
        versions,
        kubernetes_object: Some(target.to_string()),
        kubernetes_state: Some(state.as_str().to_owned()),
    };
    Ok((record, state))
}

/// Writes what a KmsKey and its record say into the plugin's state folder and reloads the
/// keyring when something changed. The key becomes active when it is Enabled (or already
/// is the active key: then its record is updated and health reports its state).
///
/// # Errors
/// A record that cannot be adopted (another root key, a damaged version, a version the
/// folder holds and the record lacks); I/O errors.
pub fn apply_objects(
    plugin: &Plugin,
    target: &FollowTarget,
    key: &KmsKey,
    material: &KmsKeyMaterial,
) -> Result<(Adopted, KeyState), PluginError> {
    let (record, state) = record_from_objects(target, key, material)?;
    let dir = plugin.state_dir();
    let root = dir.open_root_key()?;
    let ours = kms_core::keystore::RootKeyStore::root_key_id(&root);
    if !kms_core::keystore::RootKeyStore::holds(&root, &record.root_key_id) {
        return Err(invalid(
            target,
            format!(
                "its KmsKeyMaterial is wrapped under root key {}, but this plugin's root key is {ours}; not adopted (give the plugin and the operator the same root key)",
                record.root_key_id
            ),
        ));
    }
    let already_active = dir
        .read_active_file()
        .is_ok_and(|a| a.key_id == record.key_id);
    let adopted = dir.adopt(&record, state == KeyState::Enabled || already_active)?;
    if adopted.record_written || adopted.active_written {
        plugin.refresh();
    }
    Ok((adopted, state))
}

/// What the follower knows of the two objects.
#[derive(Debug, Default)]
struct Seen {
    key: Option<KmsKey>,
    material: Option<KmsKeyMaterial>,
    init_key: Option<KmsKey>,
    init_material: Option<KmsKeyMaterial>,
    ever_key: bool,
    ever_material: bool,
    last_problem: Option<String>,
    last_adopted: Option<String>,
}

enum Update {
    Key(Box<Result<Event<KmsKey>, watcher::Error>>),
    Material(Box<Result<Event<KmsKeyMaterial>, watcher::Error>>),
}

/// Folds a watcher event into `current`; true when the object may have changed.
fn fold<K: Clone>(current: &mut Option<K>, init: &mut Option<K>, event: Event<K>) -> bool {
    match event {
        Event::Apply(k) => {
            *current = Some(k);
            true
        }
        Event::Delete(_) => {
            *current = None;
            true
        }
        Event::Init => {
            *init = None;
            false
        }
        Event::InitApply(k) => {
            *init = Some(k);
            false
        }
        Event::InitDone => {
            *current = init.take();
            true
        }
    }
}

impl Seen {
    /// What to do with the objects as they are now: adopt them, or the problem to report
    /// (None: nothing wrong, e.g. the objects do not exist yet on a brand-new cluster).
    fn evaluate(&mut self, plugin: &Plugin, target: &FollowTarget) {
        self.ever_key |= self.key.is_some();
        self.ever_material |= self.material.is_some();
        let problem = match (&self.key, &self.material) {
            (Some(key), Some(material)) => match apply_objects(plugin, target, key, material) {
                Ok((adopted, state)) => {
                    let summary = format!(
                        "{} {state}",
                        format_key_id(adopted.key_id, adopted.current_version)
                    );
                    if self.last_adopted.as_deref() != Some(&summary) {
                        tracing::info!(
                            kmskey = %target,
                            key_id = %format_key_id(adopted.key_id, adopted.current_version),
                            state = %state,
                            record_written = adopted.record_written,
                            active = adopted.active_written,
                            "followed KmsKey written to the state folder"
                        );
                        self.last_adopted = Some(summary);
                    }
                    None
                }
                Err(e) => Some(format!(
                    "not following KmsKey {target}: {e}; serving the keys of the state folder"
                )),
            },
            (None, _) if self.ever_key => Some(format!(
                "KmsKey {target} was deleted; serving the last copy in the state folder"
            )),
            (_, None) if self.ever_material => Some(format!(
                "the KmsKeyMaterial {target} was deleted; serving the last copy in the state folder"
            )),
            _ => None,
        };
        if problem != self.last_problem {
            match &problem {
                Some(p) => tracing::error!(kmskey = %target, problem = %p, "follow problem"),
                None if self.last_problem.is_some() => {
                    tracing::info!(kmskey = %target, "follow problem cleared");
                }
                None => {}
            }
            self.last_problem.clone_from(&problem);
        }
        plugin.set_follow_problem(problem);
    }
}

async fn make_client(kubeconfig: Option<&Path>) -> Result<Client, String> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| format!("reading kubeconfig {}: {e}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
        }
        None => Config::infer()
            .await
            .map_err(|e| format!("no in-cluster config or KUBECONFIG: {e}"))?,
    };
    Client::try_from(config).map_err(|e| format!("building the client: {e}"))
}

/// Follows `target` until `stop` turns true: builds a client (retrying with a back-off
/// while the kubeconfig is missing or invalid), then watches the KmsKey and its
/// KmsKeyMaterial (the kube watcher reconnects forever with its back-off) and writes what
/// it reads into the plugin's state folder.
pub async fn follow(
    plugin: Plugin,
    target: FollowTarget,
    instance: String,
    kubeconfig: Option<PathBuf>,
    mut stop: watch::Receiver<bool>,
) {
    let mut delay = Duration::from_millis(500);
    let client = loop {
        match make_client(kubeconfig.as_deref()).await {
            Ok(client) => break client,
            Err(e) => {
                tracing::warn!(kmskey = %target, error = %e, retry_in = ?delay, "no Kubernetes client yet; serving the state folder");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    };
    tracing::info!(kmskey = %target, %instance, "following the KmsKey and its KmsKeyMaterial");
    let beating = tokio::spawn(heartbeat(
        plugin.clone(),
        target.clone(),
        instance,
        client.clone(),
        stop.clone(),
    ));
    let _abort_heartbeat = AbortOnDrop(beating);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", target.name));
    let keys = watcher::watcher(
        Api::<KmsKey>::namespaced(client.clone(), &target.namespace),
        config.clone(),
    )
    .default_backoff()
    .map(|e| Update::Key(Box::new(e)));
    let materials = watcher::watcher(
        Api::<KmsKeyMaterial>::namespaced(client, &target.namespace),
        config,
    )
    .default_backoff()
    .map(|e| Update::Material(Box::new(e)));
    let mut updates = std::pin::pin!(futures::stream::select(keys, materials));
    let mut seen = Seen::default();
    let mut last_error: Option<String> = None;
    loop {
        let update = tokio::select! {
            update = updates.next() => update,
            _ = stop.wait_for(|s| *s) => return,
        };
        let Some(update) = update else { return };
        let result = match update {
            Update::Key(event) => match *event {
                Ok(event) => Ok(fold(&mut seen.key, &mut seen.init_key, event)),
                Err(e) => Err(e),
            },
            Update::Material(event) => match *event {
                Ok(event) => Ok(fold(&mut seen.material, &mut seen.init_material, event)),
                Err(e) => Err(e),
            },
        };
        let changed = match result {
            Ok(changed) => {
                last_error = None;
                changed
            }
            Err(e) => {
                let text = e.to_string();
                if last_error.as_deref() != Some(&text) {
                    tracing::warn!(kmskey = %target, error = %text, "watch failed; retrying with back-off, serving the state folder");
                    last_error = Some(text);
                }
                false
            }
        };
        if changed {
            let p = plugin.clone();
            let t = target.clone();
            let mut s = std::mem::take(&mut seen);
            seen = match tokio::task::spawn_blocking(move || {
                s.evaluate(&p, &t);
                s
            })
            .await
            {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "follow task failed");
                    Seen::default()
                }
            };
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How often the heartbeat Lease is renewed when nothing changed.
pub const HEARTBEAT_RENEW: Duration = Duration::from_secs(15);

/// Keeps this plugin's heartbeat Lease (see [`kubekms_k8s::heartbeat`]) renewed in the
/// KmsKey's namespace: every [`HEARTBEAT_RENEW`], and within a second of a change of the
/// served key_id or of kube-apiserver's DEK seed. The Lease is left in place on shutdown:
/// the key stays protected while this API server may still need it; deleting the Lease by
/// hand is the deliberate way to release the key.
async fn heartbeat(
    plugin: Plugin,
    target: FollowTarget,
    instance: String,
    client: Client,
    mut stop: watch::Receiver<bool>,
) {
    let leases: Api<Lease> = Api::namespaced(client, &target.namespace);
    let params = PatchParams::apply(heartbeat::FIELD_MANAGER).force();
    let mut sent: Option<(String, Option<String>)> = None;
    let mut renewed: Option<std::time::Instant> = None;
    let mut last_error: Option<String> = None;
    loop {
        let served = plugin.ring().key_id().to_owned();
        let seeded = plugin.seeded();
        let report = (served.clone(), seeded.as_ref().map(|(id, _)| id.clone()));
        let due = sent.as_ref() != Some(&report)
            || renewed.is_none_or(|at| at.elapsed() >= HEARTBEAT_RENEW);
        if due {
            let beat = Heartbeat {
                plugin: instance.clone(),
                key_name: target.name.clone(),
                served_key_id: Some(served),
                seeded,
                renewed: None,
                duration_seconds: heartbeat::LEASE_DURATION_SECONDS,
            };
            let lease = beat.to_lease(&target.namespace, OffsetDateTime::now_utc());
            match leases
                .patch(&beat.lease_name(), &params, &Patch::Apply(&lease))
                .await
            {
                Ok(_) => {
                    if sent.as_ref() != Some(&report) || last_error.is_some() {
                        tracing::info!(kmskey = %target, lease = %beat.lease_name(), served_key_id = %report.0, seeded_key_id = ?report.1, "heartbeat");
                    }
                    sent = Some(report);
                    renewed = Some(std::time::Instant::now());
                    last_error = None;
                }
                Err(e) => {
                    let text = e.to_string();
                    if last_error.as_deref() != Some(&text) {
                        tracing::warn!(kmskey = %target, error = %text, "heartbeat Lease not written; the operator cannot see this plugin");
                        last_error = Some(text);
                    }
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// The active key of a state folder as YAML for `kubectl apply`: its KmsKeyMaterial
/// record first (so an operator that is already running finds it and adopts the key
/// instead of creating a new one), then its KmsKey, with the same key id, creation time
/// and wrapped versions. Nothing needs re-encrypting.
///
/// # Errors
/// A folder without a usable active key, a destroyed version, a key the operator could
/// not manage.
pub fn export(dir: &StateDir, target: &FollowTarget) -> Result<String, PluginError> {
    let record = dir.active_record()?;
    let store = dir.open_root_key()?;
    let key = crate::state::record_to_key(&store, &record)?;
    let parse = |what: &str, text: &str| PluginError::State(format!("{what} {text:?}"));
    let spec: KeySpec = record
        .key_spec
        .parse()
        .map_err(|_| parse("key spec", &record.key_spec))?;
    let usage: KeyUsage = record
        .key_usage
        .parse()
        .map_err(|_| parse("key usage", &record.key_usage))?;
    let origin: Origin = record
        .origin
        .parse()
        .map_err(|_| parse("origin", &record.origin))?;
    // The material is wrapped again, bound to the KmsKey it becomes: same material, same
    // key id and versions, so nothing kube-apiserver stored needs re-encrypting.
    let owner = kms_core::keystore::KeyOwner::new(&target.namespace, &target.name);
    let mut versions = Vec::with_capacity(record.versions.len());
    for v in &record.versions {
        let material = key.material(v.version).ok_or_else(|| {
            PluginError::State(format!(
                "version {} of key {} is destroyed; the operator's record cannot hold it",
                v.version, record.key_id
            ))
        })?;
        let wrapped = kms_core::keystore::RootKeyStore::wrap(
            &store,
            &crate::state::wrap_context(&key.metadata, Some(&owner), v.version),
            material.serialized(),
        )
        .map_err(PluginError::Core)?;
        let rotation_type = match v.rotation_type.as_deref() {
            None => None,
            Some(text) => Some(RotationTypeName::from(
                text.parse::<RotationType>()
                    .map_err(|_| parse("rotation type", text))?,
            )),
        };
        versions.push(WrappedVersion {
            version: v.version,
            created: v.created.clone(),
            rotation_type,
            wrapped: base64::engine::general_purpose::STANDARD.encode(wrapped),
        });
    }
    let mut material = KmsKeyMaterial::new(
        &target.name,
        KmsKeyMaterialSpec {
            key_id: record.key_id.clone(),
            key_spec: KeySpecName::from(spec),
            key_usage: KeyUsageName::from(usage),
            origin: OriginName::from(origin),
            created_at: record.created.clone(),
            root_key_id: kms_core::keystore::RootKeyStore::root_key_id(&store),
            versions,
            on_demand_rotations: record.on_demand_rotations,
            last_on_demand_token: None,
            next_rotation_time: None,
            rotation_period_in_days: None,
            deletion_date: None,
        },
    );
    material.metadata.namespace = Some(target.namespace.clone());
    let key_spec: KmsKeySpec = serde_json::from_value(serde_json::json!({
        "description": record.description,
        "keySpec": spec.as_str(),
        "keyUsage": usage.as_str(),
        "origin": origin.as_str(),
        "enabled": true,
    }))
    .map_err(|e| PluginError::State(format!("building the KmsKey: {e}")))?;
    let mut key = KmsKey::new(&target.name, key_spec);
    key.metadata.namespace = Some(target.namespace.clone());
    Ok(format!(
        "# KubeKMS key {} exported from {} for the operator (apply the record first)\n---\n{}---\n{}",
        record.key_id,
        dir.path().display(),
        to_yaml(&material)?,
        to_yaml(&key)?
    ))
}

fn to_yaml<T: serde::Serialize>(value: &T) -> Result<String, PluginError> {
    serde_yaml::to_string(value).map_err(|e| PluginError::State(format!("encoding YAML: {e}")))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use base64::Engine as _;
    use kms_core::keystore::{FileKeyStore, RootKeyStore, WrapContext};
    use kms_core::{KeyId, KeyMaterial};
    use time::OffsetDateTime;

    use super::*;
    use crate::metrics::Metrics;
    use crate::service::{ANNOTATION_FORMAT, ANNOTATION_FORMAT_VALUE};

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
        let yaml = export(&dir, &target()).expect("export");
        let mut docs = yaml.split("\n---\n").skip(1);
        let material: KmsKeyMaterial =
            serde_yaml::from_str(docs.next().expect("material doc")).expect("material");
        let key: KmsKey = serde_yaml::from_str(docs.next().expect("key doc")).expect("key");
        (dir, plugin, key, material)
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
                    owner: Some(kms_core::keystore::KeyOwner::new(
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
        let local_key = crate::state::record_to_key(&store, &local).expect("local");
        assert_eq!(
            &exported,
            local_key.material(1).expect("v1").serialized(),
            "same material"
        );

        let (adopted, state) = apply_objects(&plugin, &target(), &key, &material).expect("adopt");
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
        let (again, _) = apply_objects(&plugin, &target(), &key, &material).expect("again");
        assert!(!again.record_written && !again.active_written);
        // Local rotation is refused once the operator owns the key.
        let err = dir.rotate(now()).expect_err("rotate must refuse");
        assert!(err.to_string().contains("operator"), "{err}");
    }

    #[test]
    fn an_operator_rotation_becomes_the_key_id_and_old_versions_decrypt() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (dir, plugin, key, mut material) = setup(tmp.path());
        let (blob, k1) = plugin.ring().encrypt(b"seed-v1").expect("encrypt");
        apply_objects(&plugin, &target(), &key, &material).expect("adopt");
        operator_rotate(&dir, &mut material);
        apply_objects(&plugin, &target(), &key, &material).expect("v2");
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

        // A record that lacks a version the folder holds is refused, nothing changes.
        let mut shorter = material.clone();
        shorter.spec.versions.pop();
        let err = apply_objects(&plugin, &target(), &key, &shorter).expect_err("drop");
        assert!(err.to_string().contains("refusing to drop"), "{err}");
        assert!(plugin.ring().key_id().ends_with("/v2"));
        // A version whose wrapped bytes were swapped does not unwrap.
        let mut swapped = material.clone();
        swapped.spec.versions[1].wrapped = swapped.spec.versions[0].wrapped.clone();
        assert!(apply_objects(&plugin, &target(), &key, &swapped).is_err());
    }

    #[test]
    fn a_disabled_or_deleted_key_keeps_serving_and_health_says_why() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (dir, plugin, mut key, mut material) = setup(tmp.path());
        apply_objects(&plugin, &target(), &key, &material).expect("adopt");
        key.spec.enabled = false;
        let (_, state) = apply_objects(&plugin, &target(), &key, &material).expect("disabled");
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
        let (_, state) = apply_objects(&plugin, &target(), &key, &material).expect("pending");
        assert_eq!(state, KeyState::PendingDeletion);
        assert!(
            plugin
                .health()
                .expect_err("unhealthy")
                .contains("PendingDeletion")
        );
        material.spec.deletion_date = None;
        apply_objects(&plugin, &target(), &key, &material).expect("enabled");
        assert_eq!(plugin.health(), Ok(()));
    }

    #[test]
    fn a_record_under_another_root_key_is_refused_and_reported() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (_, plugin, key, _) = setup(tmp.path());
        let other = StateDir::new(tmp.path().join("other"));
        other.init(now()).expect("init other");
        let yaml = export(&other, &target()).expect("export other");
        let foreign: KmsKeyMaterial =
            serde_yaml::from_str(yaml.split("\n---\n").nth(1).expect("doc")).expect("material");
        let before = plugin.ring().key_id().to_owned();
        let mut seen = Seen {
            key: Some(key),
            material: Some(foreign),
            ..Seen::default()
        };
        seen.evaluate(&plugin, &target());
        let reason = plugin.health().expect_err("reported");
        assert!(reason.contains("root key"), "{reason}");
        assert_eq!(plugin.ring().key_id(), before);
        assert!(plugin.ring().encrypt(b"x").is_ok());
        // Objects deleted after being seen: reported, the folder keeps serving.
        seen.key = None;
        seen.material = None;
        seen.evaluate(&plugin, &target());
        assert!(plugin.health().expect_err("deleted").contains("deleted"));
    }

    #[test]
    fn an_operator_made_key_takes_over_and_the_bootstrap_key_still_decrypts() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (dir, plugin, key, mut material) = setup(tmp.path());
        let (blob, k1) = plugin.ring().encrypt(b"bootstrap").expect("encrypt");
        // A key the operator generated itself (another key id, same root key).
        let new_id = KeyId::generate().expect("id");
        material.spec.key_id = new_id.to_string();
        material.spec.versions.clear();
        operator_rotate(&dir, &mut material);
        material.spec.versions[0].rotation_type = None;
        material.spec.on_demand_rotations = 0;
        let (adopted, _) = apply_objects(&plugin, &target(), &key, &material).expect("adopt");
        assert!(adopted.active_written);
        assert_eq!(plugin.ring().key_id(), format!("{new_id}/v1"));
        assert!(plugin.ring().decrypt(&blob, &k1, &annotations()).is_ok());
        assert_eq!(plugin.health(), Ok(()));
    }
}
