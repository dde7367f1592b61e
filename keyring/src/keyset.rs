//! The snapshot ([`KeySet`]) and how one is built from the objects the reflectors hold
//! ([`KeySetBuilder`]). Pure: no API calls, no clock; the root key store is passed in.
//!
//! A builder keeps what it unwrapped, per record: a record whose resourceVersion did not
//! change is not looked at again, and in a record that changed, a version whose wrapped
//! bytes (and key identity) are those already unwrapped keeps its material. So a status
//! write on a KmsKey, a new `nextRotationTime` or `deletionDate` in a record, or a watch
//! re-list unwraps nothing; a rotation unwraps the new version only. RSA material is
//! parsed once per version for the life of the process.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::coordination::v1::Lease;
use kms_core::keystore::RootKeyStore;
use kms_core::{AliasName, KeyId, KeyMaterial, KeySpec, KeyState, KeyUsage, Origin};
use kube::{Resource as _, ResourceExt as _};
use kubekms_k8s::heartbeat::LABEL_SERVED_KEY;
use kubekms_k8s::unwrap::{self, Materials, UnwrapError};
use kubekms_k8s::{KmsAlias, KmsGrant, KmsKey, KmsKeyMaterial};

use crate::metrics::KeyringMetrics;

/// Why a key of the set is not usable. Never holds material.
pub type KeyringError = UnwrapError;

/// One KmsKey with its record, unwrapped.
#[derive(Debug)]
pub struct KeyEntry {
    /// The KmsKey's namespace (the AWS account).
    pub namespace: String,
    /// The KmsKey's name (also its record's).
    pub name: String,
    /// The KmsKey as last seen.
    pub object: Arc<KmsKey>,
    /// Its KmsKeyMaterial record as last seen.
    pub record: Arc<KmsKeyMaterial>,
    /// The key, every retained version unwrapped, in the state the objects imply; or why
    /// it is not usable (damaged, tampered, moved, under another root key).
    pub key: Result<Arc<kms_core::KmsKey>, KeyringError>,
    /// The state the objects imply (a KmsKey being deleted is PendingDeletion), also when
    /// the key does not unwrap.
    pub state: KeyState,
    /// Whether a KMS v2 plugin serves this key to kube-apiserver: a heartbeat Lease names
    /// it (live or not: a stale Lease still means Secrets under the key), or its
    /// `status.servedBy` lists a plugin. kubekms-server must refuse such a key entirely.
    pub served_by_plugin: bool,
}

impl KeyEntry {
    /// The record's key id, when it parses.
    #[must_use]
    pub fn key_id(&self) -> Option<KeyId> {
        KeyId::parse(&self.record.spec.key_id).ok()
    }
}

type Named<T> = BTreeMap<String, BTreeMap<String, T>>;

/// An immutable snapshot of every key in scope, unwrapped, with the aliases, grants and
/// plugin heartbeats the keyring watches. Cheap to share (`Arc<KeySet>`); readers never
/// lock.
#[derive(Debug, Default)]
pub struct KeySet {
    generation: u64,
    ready: bool,
    entries: Named<Arc<KeyEntry>>,
    by_key_id: HashMap<KeyId, Arc<KeyEntry>>,
    duplicate_key_ids: BTreeSet<KeyId>,
    objects: Named<Arc<KmsKey>>,
    records: Named<Arc<KmsKeyMaterial>>,
    aliases: BTreeMap<String, BTreeMap<AliasName, Arc<KmsAlias>>>,
    grants: Named<Vec<Arc<KmsGrant>>>,
    served: BTreeSet<(String, String)>,
}

impl KeySet {
    /// The KmsKey `namespace/name` with its record, when both exist.
    #[must_use]
    pub fn get(&self, namespace: &str, name: &str) -> Option<&Arc<KeyEntry>> {
        self.entries.get(namespace)?.get(name)
    }

    /// The key with this key id. A key id that two records claim (a copied record) names
    /// neither: see [`KeySet::duplicate_key_ids`].
    #[must_use]
    pub fn by_key_id(&self, key_id: &KeyId) -> Option<&Arc<KeyEntry>> {
        self.by_key_id.get(key_id)
    }

    /// Key ids that more than one record claims; none of them resolves by key id.
    pub fn duplicate_key_ids(&self) -> impl Iterator<Item = &KeyId> {
        self.duplicate_key_ids.iter()
    }

    /// Every key of a namespace (with its record), by name.
    pub fn keys_in(&self, namespace: &str) -> impl Iterator<Item = &Arc<KeyEntry>> {
        self.entries
            .get(namespace)
            .into_iter()
            .flat_map(|m| m.values())
    }

    /// Every key in the set.
    pub fn keys(&self) -> impl Iterator<Item = &Arc<KeyEntry>> {
        self.entries.values().flat_map(|m| m.values())
    }

    /// The KmsKey object `namespace/name`, whether or not its record exists.
    #[must_use]
    pub fn kms_key(&self, namespace: &str, name: &str) -> Option<&Arc<KmsKey>> {
        self.objects.get(namespace)?.get(name)
    }

    /// The KmsKeyMaterial record `namespace/name`, whether or not its KmsKey exists.
    #[must_use]
    pub fn record(&self, namespace: &str, name: &str) -> Option<&Arc<KmsKeyMaterial>> {
        self.records.get(namespace)?.get(name)
    }

    /// The alias of that name in a namespace: of several KmsAlias objects with one
    /// `aliasName`, the one created first (the object name breaks ties), as the operator
    /// decides; aliases being deleted are left out. Empty unless aliases are watched.
    #[must_use]
    pub fn alias(&self, namespace: &str, alias: &AliasName) -> Option<&Arc<KmsAlias>> {
        self.aliases.get(namespace)?.get(alias)
    }

    /// Every alias of a namespace, by alias name.
    pub fn aliases_in(
        &self,
        namespace: &str,
    ) -> impl Iterator<Item = (&AliasName, &Arc<KmsAlias>)> {
        self.aliases
            .get(namespace)
            .into_iter()
            .flat_map(|m| m.iter())
    }

    /// The KmsGrants on a key (grants being deleted, i.e. revoked, are left out). Empty
    /// unless grants are watched.
    pub fn grants_for(
        &self,
        namespace: &str,
        key_name: &str,
    ) -> impl Iterator<Item = &Arc<KmsGrant>> {
        self.grants
            .get(namespace)
            .and_then(|m| m.get(key_name))
            .into_iter()
            .flatten()
    }

    /// Whether every configured watch has listed its objects at least once. Before that a
    /// key missing from the set may simply not be listed yet.
    #[must_use]
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Counts the snapshots published by one keyring, from 1.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// The objects a snapshot is built from (what the reflectors hold).
#[derive(Debug, Default, Clone)]
pub struct Objects {
    /// KmsKeys.
    pub keys: Vec<Arc<KmsKey>>,
    /// KmsKeyMaterial records.
    pub records: Vec<Arc<KmsKeyMaterial>>,
    /// KmsAliases (empty when not watched).
    pub aliases: Vec<Arc<KmsAlias>>,
    /// KmsGrants (empty when not watched).
    pub grants: Vec<Arc<KmsGrant>>,
    /// Plugin heartbeat Leases (empty when not watched).
    pub leases: Vec<Arc<Lease>>,
    /// Whether every configured watch has listed once.
    pub ready: bool,
}

/// The identity a version is bound to besides its object: reused material must have been
/// unwrapped for the same identity.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    key_id: String,
    spec: KeySpec,
    usage: KeyUsage,
    origin: Origin,
}

impl Identity {
    fn of(record: &KmsKeyMaterial) -> Self {
        Self {
            key_id: record.spec.key_id.clone(),
            spec: record.spec.key_spec.into(),
            usage: record.spec.key_usage.into(),
            origin: record.spec.origin.into(),
        }
    }
}

#[derive(Debug, Clone)]
struct Unwrapped {
    identity: Identity,
    /// version → (wrapped text, material).
    versions: BTreeMap<u32, (String, Arc<KeyMaterial>)>,
}

impl Unwrapped {
    fn materials(&self) -> Materials {
        self.versions
            .iter()
            .map(|(version, (_, material))| (*version, material.clone()))
            .collect()
    }
}

#[derive(Debug)]
struct CachedRecord {
    uid: Option<String>,
    resource_version: Option<String>,
    unwrapped: Result<Unwrapped, UnwrapError>,
}

/// Builds snapshots, keeping what it unwrapped between them.
pub struct KeySetBuilder {
    store: Arc<dyn RootKeyStore>,
    metrics: Arc<KeyringMetrics>,
    cache: HashMap<(String, String), CachedRecord>,
    previous: Arc<KeySet>,
}

impl std::fmt::Debug for KeySetBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySetBuilder")
            .field("root_key_id", &self.store.root_key_id())
            .field("records", &self.cache.len())
            .field("generation", &self.previous.generation)
            .finish_non_exhaustive()
    }
}

fn name_of<K: kube::Resource>(object: &K) -> Option<(String, String)> {
    let namespace = object.meta().namespace.clone().filter(|n| !n.is_empty())?;
    let name = object.meta().name.clone().filter(|n| !n.is_empty())?;
    Some((namespace, name))
}

fn insert<T>(map: &mut Named<T>, (namespace, name): (String, String), value: T) {
    map.entry(namespace).or_default().insert(name, value);
}

impl KeySetBuilder {
    /// A builder that unwraps with `store` and counts into `metrics`.
    #[must_use]
    pub fn new(store: Arc<dyn RootKeyStore>, metrics: Arc<KeyringMetrics>) -> Self {
        Self {
            store,
            metrics,
            cache: HashMap::new(),
            previous: Arc::new(KeySet::default()),
        }
    }

    /// The last snapshot built.
    #[must_use]
    pub fn previous(&self) -> &Arc<KeySet> {
        &self.previous
    }

    /// Unwraps what changed in `record` since the cached copy.
    fn refresh_record(&mut self, id: &(String, String), record: &KmsKeyMaterial) {
        let uid = record.meta().uid.clone();
        let resource_version = record.meta().resource_version.clone();
        if let Some(cached) = self.cache.get(id)
            && cached.uid == uid
            && resource_version.is_some()
            && cached.resource_version == resource_version
        {
            return;
        }
        let previous = self.cache.remove(id);
        let reusable = previous
            .as_ref()
            .and_then(|c| c.unwrapped.as_ref().ok())
            .filter(|u| u.identity == Identity::of(record));
        let unwrapped = self.unwrap_reusing(record, reusable);
        if let Err(e) = &unwrapped
            && previous.is_none_or(|old| old.unwrapped.as_ref().err() != Some(e))
        {
            self.metrics.unwrap_failures.inc();
            tracing::warn!(record = %format!("{}/{}", id.0, id.1), error = %e, "KmsKeyMaterial not usable");
        }
        self.cache.insert(
            id.clone(),
            CachedRecord {
                uid,
                resource_version,
                unwrapped,
            },
        );
    }

    fn unwrap_reusing(
        &self,
        record: &KmsKeyMaterial,
        reusable: Option<&Unwrapped>,
    ) -> Result<Unwrapped, UnwrapError> {
        unwrap::check_record(record, self.store.as_ref())?;
        let mut versions = BTreeMap::new();
        for version in &record.spec.versions {
            let kept = reusable
                .and_then(|u| u.versions.get(&version.version))
                .filter(|(wrapped, _)| *wrapped == version.wrapped)
                .map(|(_, material)| material.clone());
            let material = match kept {
                Some(material) => material,
                None => {
                    self.metrics.unwraps.inc();
                    unwrap::unwrap_version(record, version, self.store.as_ref())?
                }
            };
            versions.insert(version.version, (version.wrapped.clone(), material));
        }
        Ok(Unwrapped {
            identity: Identity::of(record),
            versions,
        })
    }

    /// A snapshot of `objects`, unwrapping only records that changed since the last one.
    pub fn build(&mut self, objects: &Objects) -> Arc<KeySet> {
        let mut set = KeySet {
            generation: self.previous.generation + 1,
            ready: objects.ready,
            ..KeySet::default()
        };
        for lease in &objects.leases {
            if let (Some(namespace), Some(key)) = (
                lease.metadata.namespace.clone(),
                lease.labels().get(LABEL_SERVED_KEY).cloned(),
            ) && lease
                .name_any()
                .starts_with(kubekms_k8s::heartbeat::LEASE_PREFIX)
            {
                set.served.insert((namespace, key));
            }
        }
        for key in &objects.keys {
            if let Some(id) = name_of(key.as_ref()) {
                insert(&mut set.objects, id, key.clone());
            }
        }
        let mut seen_records = BTreeSet::new();
        for record in &objects.records {
            let Some(id) = name_of(record.as_ref()) else {
                continue;
            };
            self.refresh_record(&id, record);
            seen_records.insert(id.clone());
            insert(&mut set.records, id, record.clone());
        }
        self.cache.retain(|id, _| seen_records.contains(id));

        let mut claims: HashMap<KeyId, Vec<Arc<KeyEntry>>> = HashMap::new();
        for (namespace, keys) in &set.objects {
            for (name, object) in keys {
                let id = (namespace.clone(), name.clone());
                let Some(record) = set.records.get(namespace).and_then(|m| m.get(name)) else {
                    continue;
                };
                let entry = self.entry(&id, object, record, set.served.contains(&id));
                if entry.key.is_ok()
                    && let Some(key_id) = entry.key_id()
                {
                    claims.entry(key_id).or_default().push(entry.clone());
                }
                insert(&mut set.entries, id, entry);
            }
        }
        for (key_id, mut entries) in claims {
            if entries.len() == 1 {
                if let Some(entry) = entries.pop() {
                    set.by_key_id.insert(key_id, entry);
                }
            } else {
                tracing::warn!(%key_id, objects = ?entries.iter().map(|e| format!("{}/{}", e.namespace, e.name)).collect::<Vec<_>>(), "one key id claimed by several records; resolvable by name only");
                set.duplicate_key_ids.insert(key_id);
            }
        }
        set.aliases = resolve_aliases(&objects.aliases);
        for grant in &objects.grants {
            if grant.metadata.deletion_timestamp.is_some() {
                continue;
            }
            if let Some(namespace) = grant.namespace() {
                set.grants
                    .entry(namespace)
                    .or_default()
                    .entry(grant.spec.key_ref.name.clone())
                    .or_default()
                    .push(grant.clone());
            }
        }
        self.metrics
            .usable_keys
            .set(i64::try_from(set.by_key_id.len()).unwrap_or(i64::MAX));
        self.metrics.ready.set(i64::from(set.ready));
        self.metrics.snapshots.inc();
        let set = Arc::new(set);
        self.previous = set.clone();
        set
    }

    fn entry(
        &self,
        id: &(String, String),
        object: &Arc<KmsKey>,
        record: &Arc<KmsKeyMaterial>,
        heartbeat: bool,
    ) -> Arc<KeyEntry> {
        let served_by_plugin = heartbeat
            || object
                .status
                .as_ref()
                .is_some_and(|s| !s.served_by.is_empty());
        let cached = self.cache.get(id);
        // The record's resourceVersion is what the cache is keyed by: same record, same
        // material.
        if let Some(previous) = self.previous.get(&id.0, &id.1)
            && same_version(&previous.object, object)
            && same_version(&previous.record, record)
            && previous.served_by_plugin == served_by_plugin
        {
            return previous.clone();
        }
        let key = match cached.map(|c| &c.unwrapped) {
            Some(Ok(unwrapped)) => {
                unwrap::assemble(object, record, &unwrapped.materials()).map(Arc::new)
            }
            Some(Err(e)) => Err(e.clone()),
            None => unwrap::key_from_objects(object, record, self.store.as_ref()).map(Arc::new),
        };
        Arc::new(KeyEntry {
            namespace: id.0.clone(),
            name: id.1.clone(),
            object: object.clone(),
            record: record.clone(),
            state: unwrap::kubernetes_state(object, &record.spec),
            key,
            served_by_plugin,
        })
    }
}

/// Whether two copies of an object are the same version of it.
fn same_version<K: kube::Resource>(a: &Arc<K>, b: &Arc<K>) -> bool {
    Arc::ptr_eq(a, b)
        || (a.meta().uid == b.meta().uid
            && a.meta().resource_version.is_some()
            && a.meta().resource_version == b.meta().resource_version)
}

/// Aliases by namespace and name: per name, the one created first (the object name breaks
/// ties), as the operator decides; aliases being deleted and invalid names are left out.
fn resolve_aliases(
    aliases: &[Arc<KmsAlias>],
) -> BTreeMap<String, BTreeMap<AliasName, Arc<KmsAlias>>> {
    let mut out: BTreeMap<String, BTreeMap<AliasName, Arc<KmsAlias>>> = BTreeMap::new();
    let created = |a: &KmsAlias| a.metadata.creation_timestamp.clone().map(|t| t.0);
    for alias in aliases {
        if alias.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let (Some(namespace), Ok(name)) =
            (alias.namespace(), AliasName::parse(&alias.spec.alias_name))
        else {
            continue;
        };
        let slot = out.entry(namespace).or_default();
        match slot.get(&name) {
            Some(holder)
                if (created(holder), holder.name_any()) <= (created(alias), alias.name_any()) => {}
            _ => {
                slot.insert(name, alias.clone());
            }
        }
    }
    out
}
