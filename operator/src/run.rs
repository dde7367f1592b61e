//! Runs the three controllers until shutdown.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, ResourceExt};
use kubekms_k8s::heartbeat;
use kubekms_k8s::{KmsAlias, KmsGrant, KmsKey};
use tokio::sync::watch;

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

/// Runs the KmsKey, KmsAlias and KmsGrant controllers over `namespace` (every namespace
/// when `None`) until `shutdown` turns true; reconciliations in flight finish first.
pub async fn run_controllers(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: watch::Receiver<bool>,
) {
    let client = ctx.client.clone();
    let ns = namespace.as_deref();
    let config = watcher::Config::default().any_semantic();

    // The plugins' heartbeat Leases: kept in the context's store (protection and the
    // re-encryption gate read it) and a change requeues the KmsKey a Lease names.
    let heartbeats = watcher::watcher(
        api::<Lease>(client.clone(), ns),
        watcher::Config::default()
            .labels(heartbeat::LABEL_SERVED_KEY)
            .any_semantic(),
    )
    .default_backoff();
    let heartbeats = match ctx.take_lease_writer() {
        Some(writer) => reflector::reflector(writer, heartbeats).boxed(),
        None => heartbeats.boxed(),
    };
    let mut keys = Controller::new(api::<KmsKey>(client.clone(), ns), config.clone());
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
    let aliases = aliases
        .watches(
            api::<KmsKey>(client.clone(), ns),
            config.clone(),
            move |key| {
                let namespace = key.namespace();
                let name = key.name_any();
                alias_store
                    .state()
                    .into_iter()
                    .filter(|a| a.namespace() == namespace && a.spec.target_key_ref.name == name)
                    .map(|a| ObjectRef::from_obj(&*a))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(until_shutdown(shutdown.clone()))
        .run(alias::reconcile, alias::error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "KmsAlias controller");
            }
        });

    let grants = Controller::new(api::<KmsGrant>(client.clone(), ns), config.clone());
    let grant_store = grants.store();
    let grants = grants
        .watches(api::<KmsKey>(client, ns), config, move |key| {
            let namespace = key.namespace();
            let name = key.name_any();
            grant_store
                .state()
                .into_iter()
                .filter(|g| g.namespace() == namespace && g.spec.key_ref.name == name)
                .map(|g| ObjectRef::from_obj(&*g))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(until_shutdown(shutdown))
        .run(grant::reconcile, grant::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "KmsGrant controller");
            }
        });

    tokio::join!(keys, aliases, grants);
}
