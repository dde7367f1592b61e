//! Follow mode (`serve --follow NAMESPACE/NAME`): the plugin keeps serving from its keys in
//! memory and, in the background, follows one KmsKey and its KmsKeyMaterial record through
//! the keyring (`kubekms-keyring`, scope: that one object). Each snapshot's key (unwrapped
//! by the keyring under this plugin's root key) goes through the follower's rules
//! ([`objects`]) straight into the keys in memory, and is written into the state folder as
//! `keys/<uuid>.json` with `"source": "kubernetes"` so a cold start serves the last state
//! learned with no API server. An Enabled key becomes the active key.
//!
//! - [`objects`]: the follower's rules over a snapshot;
//! - [`heartbeat`]: the heartbeat Lease;
//! - [`export`]: the hand-over of the bootstrap key to the operator.
//!
//! Nothing here ever blocks Status, Encrypt or Decrypt: the watches run in their own tasks
//! and reconnect forever with a back-off, and a problem only turns `healthz` into a reason.

pub mod export;
pub mod heartbeat;
pub mod objects;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use kms_core::keystore::RootKeyStore;
use kubekms_keyring::client::{self, CALL_READ_TIMEOUT};
use kubekms_keyring::{Keyring, KeyringConfig, Scope};
use tokio::sync::watch;

pub use export::export;
pub use heartbeat::HeartbeatConfig;
pub use objects::Follower;

use crate::service::Plugin;

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

/// What to follow, and how.
#[derive(Debug, Clone)]
pub struct FollowConfig {
    /// The KmsKey.
    pub target: FollowTarget,
    /// This plugin's name in its heartbeat Lease.
    pub instance: String,
    /// The kubeconfig (default: in-cluster, else `$KUBECONFIG` / `~/.kube/config`).
    pub kubeconfig: Option<PathBuf>,
    /// Lift the key-switch rule (docs/plugin.md).
    pub allow_key_switch: bool,
    /// Heartbeat timing.
    pub heartbeat: HeartbeatConfig,
}

/// Waits `delay` or until `stop`; true when stopped.
async fn pause(delay: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => false,
        _ = stop.wait_for(|s| *s) => true,
    }
}

/// Follows the KmsKey until `stop` turns true: builds the clients (retrying with a
/// back-off while the kubeconfig is missing or invalid), starts the heartbeat and the
/// keyring, and takes each snapshot into the plugin.
pub async fn follow(plugin: Plugin, config: FollowConfig, mut stop: watch::Receiver<bool>) {
    let target = config.target.clone();
    let mut delay = Duration::from_millis(500);
    let metrics = plugin.metrics().keyring.clone();
    let keyring_config = KeyringConfig::new(Scope::Object {
        namespace: target.namespace.clone(),
        name: target.name.clone(),
    });
    let (watch_client, call_client, root) = loop {
        let made = async {
            let kube_config = client::load_config(config.kubeconfig.as_deref())
                .await
                .map_err(|e| e.to_string())?;
            let watch_client =
                client::watch_client(&kube_config, &keyring_config.timeouts, metrics.clone())
                    .map_err(|e| e.to_string())?;
            let call_client =
                client::call_client(&kube_config, CALL_READ_TIMEOUT).map_err(|e| e.to_string())?;
            let root = plugin
                .state_dir()
                .open_root_key()
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((watch_client, call_client, root))
        }
        .await;
        match made {
            Ok(made) => break made,
            Err(e) => {
                tracing::warn!(kmskey = %target, error = %e, retry_in = ?delay, "no Kubernetes client yet; serving the state folder");
            }
        }
        if pause(delay, &mut stop).await {
            return;
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    };
    tracing::info!(kmskey = %target, instance = %config.instance, "following the KmsKey and its KmsKeyMaterial");
    let beating = tokio::spawn(heartbeat::heartbeat(
        plugin.clone(),
        target.clone(),
        config.instance.clone(),
        call_client,
        config.heartbeat.clone(),
        stop.clone(),
    ));
    let _abort_heartbeat = AbortOnDrop(beating);
    let root: Arc<dyn RootKeyStore> = root;
    let (keyring, mut snapshots) =
        Keyring::start_with_metrics(watch_client, root, keyring_config, metrics);
    let mut follower = Some(Follower::new(target.clone(), config.allow_key_switch));
    loop {
        tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            _ = stop.wait_for(|s| *s) => break,
        }
        let set = snapshots.borrow_and_update().clone();
        let p = plugin.clone();
        let mut current = follower
            .take()
            .unwrap_or_else(|| Follower::new(target.clone(), config.allow_key_switch));
        // Writing the folder (fsync, under its lock) is blocking work.
        match tokio::task::spawn_blocking(move || {
            current.apply(&p, &set);
            current
        })
        .await
        {
            Ok(back) => follower = Some(back),
            Err(e) => tracing::error!(error = %e, "follow task failed"),
        }
    }
    keyring.shutdown().await;
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests;
