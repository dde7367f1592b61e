//! The account ids of namespaces, from a reflector over Namespaces (all of them, or the one
//! of single-namespace mode), published as `Arc<Accounts>` after each change. Invalid
//! annotations and account ids claimed by several namespaces are logged once per change
//! and counted.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::reflector;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use kubekms_k8s::account::{AccountProblem, Accounts};
use tokio::sync::watch;

use crate::kubernetes::metrics::KubernetesMetrics;

/// The published accounts and whether the Namespaces have been listed once.
#[derive(Debug, Clone, Default)]
pub struct AccountsState {
    /// The accounts.
    pub accounts: Arc<Accounts>,
    /// Whether the first listing completed.
    pub listed: bool,
}

/// Watches Namespaces (`only`: that one) with `client` and publishes their accounts until
/// `stop` turns true.
pub fn spawn(
    client: Client,
    only: Option<String>,
    timeout_seconds: u32,
    metrics: Arc<KubernetesMetrics>,
    mut stop: watch::Receiver<bool>,
) -> (
    watch::Receiver<Arc<Accounts>>,
    watch::Receiver<bool>,
    tokio::task::JoinHandle<()>,
) {
    let (accounts_tx, accounts_rx) = watch::channel(Arc::new(Accounts::default()));
    let (listed_tx, listed_rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut config = watcher::Config::default().timeout(timeout_seconds);
        if let Some(name) = &only {
            config = config.fields(&format!("metadata.name={name}"));
        }
        let (store, writer) = reflector::store::<Namespace>();
        let mut events = watcher::watcher(Api::<Namespace>::all(client), config)
            .default_backoff()
            .reflect(writer)
            .boxed();
        let mut reported: BTreeSet<AccountProblem> = BTreeSet::new();
        let mut last_error: Option<String> = None;
        loop {
            let event = tokio::select! {
                event = events.next() => event,
                _ = stop.wait_for(|s| *s) => break,
            };
            let Some(event) = event else { break };
            let changed = match event {
                Ok(Event::Apply(_) | Event::Delete(_)) => true,
                Ok(Event::InitDone) => {
                    listed_tx.send_replace(true);
                    true
                }
                Ok(Event::Init | Event::InitApply(_)) => false,
                Err(error) => {
                    metrics.namespace_watch_errors.inc();
                    let text = error.to_string();
                    if last_error.as_deref() != Some(&text) {
                        tracing::warn!(error = %text, "Namespace watch failed; retrying with back-off");
                        last_error = Some(text);
                    }
                    false
                }
            };
            if !changed || !*listed_tx.borrow() {
                continue;
            }
            last_error = None;
            let namespaces = store.state();
            let accounts = Accounts::from_namespaces(namespaces.iter().map(AsRef::as_ref));
            let problems: BTreeSet<AccountProblem> = accounts.problems().cloned().collect();
            for problem in problems.difference(&reported) {
                tracing::warn!(%problem, "account ids");
            }
            metrics
                .account_problems
                .set(i64::try_from(problems.len()).unwrap_or(i64::MAX));
            reported = problems;
            accounts_tx.send_replace(Arc::new(accounts));
        }
    });
    (accounts_rx, listed_rx, task)
}
