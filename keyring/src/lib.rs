//! kubekms-keyring: every key in scope unwrapped into memory from the Kubernetes objects.
//!
//! Reflectors (kube-runtime's `reflector` over `watcher`, with the watcher's default
//! back-off, reconnecting forever) hold KmsKeys and KmsKeyMaterial records, and optionally
//! KmsAliases, KmsGrants and the plugins' heartbeat Leases. After each change the keyring
//! builds an immutable [`KeySet`] and publishes it as `Arc<KeySet>` through a
//! `tokio::sync::watch` channel: request handlers take the current snapshot (one atomic
//! load, no lock held while they work) and never wait for the API server. Only records
//! whose resourceVersion changed are looked at again, and only versions whose wrapped
//! bytes changed are unwrapped ([`keyset`]).
//!
//! Users: the KMS v2 plugin's follow mode (scope: the one KmsKey it follows) and
//! kubekms-server (scope: every namespace, with aliases, grants and heartbeats).
//!
//! ```no_run
//! # async fn run(config: kube::Config, root: std::sync::Arc<dyn kms_core::keystore::RootKeyStore>) -> Result<(), Box<dyn std::error::Error>> {
//! use kubekms_keyring::{Keyring, KeyringConfig, Scope, client};
//! let settings = KeyringConfig::new(Scope::AllNamespaces).with_aliases().with_grants().with_heartbeats();
//! let metrics = std::sync::Arc::new(kubekms_keyring::KeyringMetrics::new());
//! let watch = client::watch_client(&config, &settings.timeouts, metrics.clone())?;
//! let (handle, mut keys) = Keyring::start_with_metrics(watch, root, settings, metrics);
//! keys.wait_for(|set| set.is_ready()).await?;
//! let set = keys.borrow().clone();
//! for entry in set.keys_in("team-a") { let _ = &entry.key; }
//! handle.shutdown().await;
//! # Ok(()) }
//! ```

pub mod client;
pub mod keyset;
pub mod metrics;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::BoxStream;
use k8s_openapi::api::coordination::v1::Lease;
use kms_core::keystore::RootKeyStore;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt as _, reflector::store::Writer};
use kube::{Api, Client};
use kubekms_k8s::heartbeat::LABEL_SERVED_KEY;
use kubekms_k8s::{KmsAlias, KmsGrant, KmsKey, KmsKeyMaterial};
use tokio::sync::watch;

pub use keyset::{KeyEntry, KeySet, KeySetBuilder, KeyringError, Objects};
pub use metrics::KeyringMetrics;

/// Which objects the keyring watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace (kubekms-server).
    AllNamespaces,
    /// One namespace.
    Namespace(String),
    /// One KmsKey and its record, by name (field selector `metadata.name=`), in one
    /// namespace (the KMS v2 plugin). Heartbeats are those labelled for this key.
    Object {
        /// The namespace.
        namespace: String,
        /// The KmsKey's name.
        name: String,
    },
}

impl Scope {
    fn namespace(&self) -> Option<&str> {
        match self {
            Self::AllNamespaces => None,
            Self::Namespace(namespace) | Self::Object { namespace, .. } => Some(namespace),
        }
    }

    fn api<K>(&self, client: Client) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match self.namespace() {
            Some(namespace) => Api::namespaced(client, namespace),
            None => Api::all(client),
        }
    }
}

/// Timeouts of the watches (see [`client`] for how they fit the client's read timeout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchTimeouts {
    /// `timeoutSeconds` of each watch request: the server ends it then and the watcher
    /// renews it from the last resourceVersion; a stream silent for this + 5 s is taken for
    /// dead. Default 60 s.
    pub server_timeout: Duration,
}

impl Default for WatchTimeouts {
    fn default() -> Self {
        Self {
            server_timeout: Duration::from_secs(60),
        }
    }
}

impl WatchTimeouts {
    /// The read timeout of the watch client: twice the server timeout.
    #[must_use]
    pub fn read_timeout(&self) -> Duration {
        self.server_timeout.saturating_mul(2)
    }

    fn seconds(&self) -> u32 {
        u32::try_from(self.server_timeout.as_secs().max(1)).unwrap_or(u32::MAX)
    }
}

/// What the keyring watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyringConfig {
    /// Which objects.
    pub scope: Scope,
    /// Watch KmsAliases too.
    pub aliases: bool,
    /// Watch KmsGrants too.
    pub grants: bool,
    /// Watch the plugins' heartbeat Leases (label `kubekms.io/plugin-for`) too, so that
    /// [`KeyEntry::served_by_plugin`] sees a plugin before the operator writes status.
    pub heartbeats: bool,
    /// Watch timeouts.
    pub timeouts: WatchTimeouts,
}

impl KeyringConfig {
    /// KmsKeys and records in `scope`, nothing else.
    #[must_use]
    pub fn new(scope: Scope) -> Self {
        Self {
            scope,
            aliases: false,
            grants: false,
            heartbeats: false,
            timeouts: WatchTimeouts::default(),
        }
    }

    /// Also KmsAliases.
    #[must_use]
    pub fn with_aliases(mut self) -> Self {
        self.aliases = true;
        self
    }

    /// Also KmsGrants.
    #[must_use]
    pub fn with_grants(mut self) -> Self {
        self.grants = true;
        self
    }

    /// Also the plugins' heartbeat Leases.
    #[must_use]
    pub fn with_heartbeats(mut self) -> Self {
        self.heartbeats = true;
        self
    }
}

/// The running keyring. Dropping it stops the watches.
#[derive(Debug)]
pub struct KeyringHandle {
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    metrics: Arc<KeyringMetrics>,
}

impl KeyringHandle {
    /// The keyring's counters.
    #[must_use]
    pub fn metrics(&self) -> &Arc<KeyringMetrics> {
        &self.metrics
    }

    /// Stops the watches and waits for the task to end. Receivers keep the last snapshot.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for KeyringHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The keyring: see the crate documentation.
#[derive(Debug)]
pub struct Keyring;

impl Keyring {
    /// Starts watching with `client` (made by [`client::watch_client`]) and unwrapping
    /// with `root_store`. Returns the handle and the snapshots; the first snapshot is
    /// empty and not ready.
    #[must_use]
    pub fn start(
        client: Client,
        root_store: Arc<dyn RootKeyStore>,
        config: KeyringConfig,
    ) -> (KeyringHandle, watch::Receiver<Arc<KeySet>>) {
        Self::start_with_metrics(client, root_store, config, Arc::new(KeyringMetrics::new()))
    }

    /// As [`Keyring::start`], counting into `metrics` (the same the watch client counts
    /// its watch requests into).
    #[must_use]
    pub fn start_with_metrics(
        client: Client,
        root_store: Arc<dyn RootKeyStore>,
        config: KeyringConfig,
        metrics: Arc<KeyringMetrics>,
    ) -> (KeyringHandle, watch::Receiver<Arc<KeySet>>) {
        let (tx, rx) = watch::channel(Arc::new(KeySet::default()));
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(
            client,
            config,
            root_store,
            tx,
            stop_rx,
            metrics.clone(),
        ));
        (
            KeyringHandle {
                stop: stop_tx,
                task: Some(task),
                metrics,
            },
            rx,
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Key,
    Record,
    Alias,
    Grant,
    Lease,
}

/// What one of the merged streams yielded: a change of the objects (or the end of a
/// listing), or an error.
struct Update {
    kind: Kind,
    result: Result<Change, String>,
}

#[derive(PartialEq, Eq)]
enum Change {
    /// The store changed (an object applied or deleted).
    Changed,
    /// A listing completed: the store was replaced.
    Listed,
    /// Nothing visible yet (a listing in progress).
    Nothing,
}

fn reflect<K>(
    kind: Kind,
    api: Api<K>,
    config: watcher::Config,
    writer: Writer<K>,
) -> BoxStream<'static, Update>
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    watcher::watcher(api, config)
        .default_backoff()
        .reflect(writer)
        .map(move |event| Update {
            kind,
            result: match event {
                Ok(Event::Apply(_) | Event::Delete(_)) => Ok(Change::Changed),
                Ok(Event::InitDone) => Ok(Change::Listed),
                Ok(Event::Init | Event::InitApply(_)) => Ok(Change::Nothing),
                Err(e) => Err(e.to_string()),
            },
        })
        .boxed()
}

struct Stores {
    keys: Store<KmsKey>,
    records: Store<KmsKeyMaterial>,
    aliases: Option<Store<KmsAlias>>,
    grants: Option<Store<KmsGrant>>,
    leases: Option<Store<Lease>>,
}

impl Stores {
    fn objects(&self, ready: bool) -> Objects {
        Objects {
            keys: self.keys.state(),
            records: self.records.state(),
            aliases: self.aliases.as_ref().map(Store::state).unwrap_or_default(),
            grants: self.grants.as_ref().map(Store::state).unwrap_or_default(),
            leases: self.leases.as_ref().map(Store::state).unwrap_or_default(),
            ready,
        }
    }
}

fn streams(client: &Client, config: &KeyringConfig) -> (Stores, Vec<BoxStream<'static, Update>>) {
    let timeout = config.timeouts.seconds();
    let base = watcher::Config::default().timeout(timeout);
    let by_name = match &config.scope {
        Scope::Object { name, .. } => base.clone().fields(&format!("metadata.name={name}")),
        _ => base.clone(),
    };
    let mut streams = Vec::new();
    let (keys, writer) = reflector::store::<KmsKey>();
    streams.push(reflect(
        Kind::Key,
        config.scope.api(client.clone()),
        by_name.clone(),
        writer,
    ));
    let (records, writer) = reflector::store::<KmsKeyMaterial>();
    streams.push(reflect(
        Kind::Record,
        config.scope.api(client.clone()),
        by_name,
        writer,
    ));
    let aliases = config.aliases.then(|| {
        let (store, writer) = reflector::store::<KmsAlias>();
        streams.push(reflect(
            Kind::Alias,
            config.scope.api(client.clone()),
            base.clone(),
            writer,
        ));
        store
    });
    let grants = config.grants.then(|| {
        let (store, writer) = reflector::store::<KmsGrant>();
        streams.push(reflect(
            Kind::Grant,
            config.scope.api(client.clone()),
            base.clone(),
            writer,
        ));
        store
    });
    let leases = config.heartbeats.then(|| {
        let (store, writer) = reflector::store::<Lease>();
        let selector = match &config.scope {
            Scope::Object { name, .. } => format!("{LABEL_SERVED_KEY}={name}"),
            _ => LABEL_SERVED_KEY.to_owned(),
        };
        streams.push(reflect(
            Kind::Lease,
            config.scope.api(client.clone()),
            base.clone().labels(&selector),
            writer,
        ));
        store
    });
    (
        Stores {
            keys,
            records,
            aliases,
            grants,
            leases,
        },
        streams,
    )
}

/// Events handled before a snapshot is built, at most: a burst (a re-list of thousands of
/// objects) becomes one snapshot, not one per object.
const MAX_BATCH: usize = 1024;

async fn run(
    client: Client,
    config: KeyringConfig,
    root_store: Arc<dyn RootKeyStore>,
    tx: watch::Sender<Arc<KeySet>>,
    mut stop: watch::Receiver<bool>,
    metrics: Arc<KeyringMetrics>,
) {
    let (stores, streams) = streams(&client, &config);
    let kinds = streams.len();
    let mut updates = futures::stream::select_all(streams);
    let mut listed: Vec<Kind> = Vec::new();
    let mut last_error: Option<String> = None;
    let mut builder = Some(KeySetBuilder::new(root_store.clone(), metrics.clone()));
    tracing::info!(scope = ?config.scope, "keyring watching");
    loop {
        let first = tokio::select! {
            update = updates.next() => update,
            _ = stop.wait_for(|s| *s) => break,
        };
        let Some(first) = first else { break };
        let mut dirty = false;
        let mut next = Some(first);
        let mut handled = 0;
        while let Some(update) = next.take() {
            handled += 1;
            match update.result {
                Ok(change) => {
                    if change == Change::Listed && !listed.contains(&update.kind) {
                        listed.push(update.kind);
                    }
                    dirty |= change != Change::Nothing;
                    if last_error.take().is_some() {
                        tracing::info!("keyring watches recovered");
                    }
                }
                Err(e) => {
                    metrics.watch_errors.inc();
                    if last_error.as_deref() != Some(&e) {
                        tracing::warn!(kind = ?update.kind, error = %e, "keyring watch failed; retrying with back-off");
                        last_error = Some(e);
                    }
                }
            }
            if handled < MAX_BATCH {
                next = futures::FutureExt::now_or_never(updates.next()).flatten();
            }
        }
        if !dirty {
            continue;
        }
        let objects = stores.objects(listed.len() == kinds);
        let mut current = builder
            .take()
            .unwrap_or_else(|| KeySetBuilder::new(root_store.clone(), metrics.clone()));
        // Unwrapping (RSA parsing above all) is CPU work: off the async threads.
        let built = tokio::task::spawn_blocking(move || {
            let set = current.build(&objects);
            (current, set)
        })
        .await;
        match built {
            Ok((back, set)) => {
                builder = Some(back);
                tx.send_replace(set);
            }
            Err(e) => {
                // A bug, not input: start over with an empty cache at the next change.
                tracing::error!(error = %e, "keyring snapshot build failed");
            }
        }
    }
    tracing::info!("keyring stopped");
}
