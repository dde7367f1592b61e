//! Runs the three controllers until shutdown, over four watches:
//!
//! - **KmsKey**, once, into one shared reflector store: the KmsKey controller reconciles
//!   from it, and the KmsAlias and KmsGrant controllers are requeued from it when their key
//!   changes. A subscriber of a shared store only sees applied objects, so deleted keys are
//!   forwarded to the alias and grant controllers separately (an alias reports
//!   `TargetDeleted` when its key is gone).
//! - **KmsKeyMaterial**, metadata only (the wrapped material is not kept in this process's
//!   memory): a record changed or deleted by hand requeues its KmsKey at once, which then
//!   reports `MaterialMissing` or `RecordMismatch`.
//! - **Leases** of the plugins' heartbeats: kept in the context's store (protection and
//!   the re-encryption gate read it), each change noted on this process's monotonic clock
//!   for liveness, and the KmsKey a Lease names requeued.
//! - **KmsAlias** and **KmsGrant**, each by its own controller.
//! - **Namespaces** (all of them, or the one watched): kept in the context's store for the
//!   account ids that ARNs carry ([`kubekms_k8s::account`]); a Namespace that appears or
//!   changes requeues its KmsKeys, whose new status requeues their aliases. Controllers
//!   start once the Namespaces are listed (at most [`NAMESPACE_LIST_WAIT`]), so a restart
//!   does not write derived ARNs for annotated namespaces in between.
//!
//! Every watch uses the context's watch client (see [`crate::clients`]).

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, ResourceExt};
use kubekms_k8s::heartbeat;
use kubekms_k8s::{KmsAlias, KmsGrant, KmsKey, KmsKeyMaterial};
use tokio::sync::{mpsc, watch};

use crate::{Context, alias, grant, key};

fn api<K>(client: Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(namespace) => Api::namespaced(client, namespace),
        None => Api::all(client),
    }
}

/// A future that completes when `shutdown` turns true (or its sender is gone).
pub async fn until_shutdown(mut shutdown: watch::Receiver<bool>) {
    // An error means the sender is gone: shut down as well.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// How long the controllers wait for the first listing of Namespaces before they start
/// anyway (with derived account ids for namespaces not seen yet, corrected when they are).
pub const NAMESPACE_LIST_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// How many KmsKey events the shared store buffers for a slow subscriber before the watch
/// waits for it.
const SHARED_BUFFER: usize = 1024;

/// The KmsAliases (or KmsGrants) of `store` in `key`'s namespace that `names_key` says
/// refer to it.
fn referring<K>(store: &Store<K>, key: &KmsKey, names_key: impl Fn(&K) -> &str) -> Vec<ObjectRef<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    let namespace = key.namespace();
    let name = key.name_any();
    store
        .state()
        .into_iter()
        .filter(|object| object.namespace() == namespace && names_key(object) == name)
        .map(|object| ObjectRef::from_obj(&*object))
        .collect()
}

/// Runs the KmsKey, KmsAlias and KmsGrant controllers over `namespace` (every namespace
/// when `None`) until `shutdown` turns true; reconciliations in flight finish first.
pub async fn run_controllers(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: watch::Receiver<bool>,
) {
    let client = ctx.watch_client.clone();
    let ns = namespace.as_deref();
    let config = watcher::Config::default().any_semantic();

    // The plugins' heartbeat Leases: kept in the context's store, each change observed for
    // liveness, and a change requeues the KmsKey a Lease names.
    let observer = ctx.lease_observer.clone();
    let heartbeats = watcher::watcher(
        api::<Lease>(client.clone(), ns),
        watcher::Config::default()
            .labels(heartbeat::LABEL_SERVED_KEY)
            .any_semantic(),
    )
    .default_backoff()
    .inspect(move |event| {
        if let Ok(event) = event {
            observer.watcher_event(event);
        }
    });
    let heartbeats = match ctx.take_lease_writer() {
        Some(writer) => reflector::reflector(writer, heartbeats).boxed(),
        None => heartbeats.boxed(),
    };

    // The Namespaces, for account ids: one namespace's only, in single-namespace mode.
    let namespace_config = match ns {
        Some(ns) => watcher::Config::default()
            .fields(&format!("metadata.name={ns}"))
            .any_semantic(),
        None => watcher::Config::default().any_semantic(),
    };
    let namespaces =
        watcher::watcher(Api::<Namespace>::all(client.clone()), namespace_config).default_backoff();
    let namespaces = match ctx.take_namespace_writer() {
        Some(writer) => reflector::reflector(writer, namespaces).boxed(),
        None => namespaces.boxed(),
    };
    let (changed_namespaces, namespaces_changed) = mpsc::channel::<Namespace>(64);
    let namespace_watch = namespaces.touched_objects().for_each(move |namespace| {
        let changed = changed_namespaces.clone();
        async move {
            match namespace {
                // A closed channel means the KmsKey controller has stopped.
                Ok(namespace) => {
                    let _ = changed.send(namespace).await;
                }
                Err(error) => tracing::warn!(%error, "Namespace watch"),
            }
        }
    });

    let namespace_store = ctx.namespaces.clone();

    // The one KmsKey watch, into a shared store.
    let (key_store, key_writer) = reflector::store_shared::<KmsKey>(SHARED_BUFFER);
    let (Some(for_keys), Some(for_aliases), Some(for_grants)) = (
        key_writer.subscribe(),
        key_writer.subscribe(),
        key_writer.subscribe(),
    ) else {
        tracing::error!("a shared reflector store could not be subscribed to");
        return;
    };
    let (deleted_for_aliases, deleted_keys_aliases) = mpsc::channel::<Arc<KmsKey>>(64);
    let (deleted_for_grants, deleted_keys_grants) = mpsc::channel::<Arc<KmsKey>>(64);
    let key_watch = watcher::watcher(api::<KmsKey>(client.clone(), ns), config.clone())
        .default_backoff()
        .reflect_shared(key_writer)
        .for_each(move |event| {
            let senders = (deleted_for_aliases.clone(), deleted_for_grants.clone());
            async move {
                match event {
                    Ok(watcher::Event::Delete(key)) => {
                        let key = Arc::new(key);
                        // A closed channel means that controller has stopped.
                        let _ = senders.0.send(key.clone()).await;
                        let _ = senders.1.send(key).await;
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "KmsKey watch"),
                }
            }
        });

    // The records, metadata only: a record changed or deleted requeues its KmsKey.
    let records = watcher::watcher(
        api::<PartialObjectMeta<KmsKeyMaterial>>(client.clone(), ns),
        config.clone(),
    )
    .default_backoff()
    .touched_objects();

    let keys_of_namespace = key_store.clone();
    let mut keys = Controller::for_shared_stream(for_keys, key_store);
    if let Some(jumps) = ctx.clock.jumps() {
        keys = keys.reconcile_all_on(jumps);
    }
    let keys = keys
        .watches_stream(heartbeats.touched_objects(), |lease: Lease| {
            let key = lease.labels().get(heartbeat::LABEL_SERVED_KEY).cloned();
            let namespace = lease.namespace();
            key.zip(namespace)
                .map(|(key, namespace)| ObjectRef::<KmsKey>::new(&key).within(&namespace))
        })
        .watches_stream(
            received(namespaces_changed).map(Ok::<_, watcher::Error>),
            move |namespace: Namespace| {
                let name = namespace.name_any();
                keys_of_namespace
                    .state()
                    .into_iter()
                    .filter(|key| key.namespace().as_deref() == Some(name.as_str()))
                    .map(|key| ObjectRef::from_obj(&*key))
                    .collect::<Vec<_>>()
            },
        )
        .watches_stream(records, |record| {
            record
                .namespace()
                .map(|namespace| ObjectRef::<KmsKey>::new(&record.name_any()).within(&namespace))
        })
        .graceful_shutdown_on(until_shutdown(shutdown.clone()))
        .run(key::reconcile, key::error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "KmsKey controller");
            }
        });

    // Aliases and grants follow their key: a change of the key requeues them.
    let aliases = Controller::new(api::<KmsAlias>(client.clone(), ns), config.clone());
    let alias_store = aliases.store();
    let deleted_alias_store = alias_store.clone();
    let aliases = aliases
        .watches_shared_stream(for_aliases, move |key| {
            referring(&alias_store, &key, |a: &KmsAlias| {
                &a.spec.target_key_ref.name
            })
        })
        .watches_shared_stream(received(deleted_keys_aliases), move |key| {
            referring(&deleted_alias_store, &key, |a: &KmsAlias| {
                &a.spec.target_key_ref.name
            })
        })
        .graceful_shutdown_on(until_shutdown(shutdown.clone()))
        .run(alias::reconcile, alias::error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "KmsAlias controller");
            }
        });

    let grants = Controller::new(api::<KmsGrant>(client, ns), config);
    let grant_store = grants.store();
    let deleted_grant_store = grant_store.clone();
    let grants = grants
        .watches_shared_stream(for_grants, move |key| {
            referring(&grant_store, &key, |g: &KmsGrant| &g.spec.key_ref.name)
        })
        .watches_shared_stream(received(deleted_keys_grants), move |key| {
            referring(&deleted_grant_store, &key, |g: &KmsGrant| {
                &g.spec.key_ref.name
            })
        })
        .graceful_shutdown_on(until_shutdown(shutdown))
        .run(grant::reconcile, grant::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "KmsGrant controller");
            }
        });

    // The shared KmsKey watch has no controller of its own to stop it: it ends with them.
    let controllers = async {
        if tokio::time::timeout(NAMESPACE_LIST_WAIT, namespace_store.wait_until_ready())
            .await
            .is_err()
        {
            tracing::warn!(
                "Namespaces not listed within {NAMESPACE_LIST_WAIT:?}: account ids are derived from names until they are"
            );
        }
        tokio::join!(keys, aliases, grants);
    };
    tokio::select! {
        () = controllers => {}
        () = key_watch => tracing::error!("the KmsKey watch ended"),
        () = namespace_watch => tracing::error!("the Namespace watch ended"),
    }
}

/// The items sent on `receiver`, as a stream.
fn received<T: Send + 'static>(
    receiver: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    })
}
