//! The keyring (`kubekms-keyring`) against a real kube-apiserver and etcd, fed by the real
//! `kubekms-operator` binary: keys the operator makes appear unwrapped in a snapshot, a
//! rotation shows the new version, a change that touches no wrapped bytes unwraps
//! nothing, quiet watches are renewed at the server's timeout without an error, and a
//! deleted record leaves the set.
//!
//! The operator binary: `KUBEKMS_OPERATOR_BIN`, or `kubekms-operator` next to the test
//! binary's folder (`cargo build -p kubekms-operator`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, ensure};
use kms_core::keystore::{FileKeyStore, RootKeyStore};
use kms_core::{EncryptionAlgorithm, EncryptionContext, KeyState};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kubekms_e2e::process::sibling_bin;
use kubekms_e2e::{ControlPlane, in_namespace, unique_name};
use kubekms_k8s::{KmsKey, KmsKeyMaterial};
use kubekms_keyring::{
    KeySet, Keyring, KeyringConfig, KeyringMetrics, Scope, WatchTimeouts, client,
};
use serde_json::json;
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(120);

/// The operator binary over one namespace, killed when dropped.
struct Operator {
    child: Option<Child>,
    dir: PathBuf,
}

impl Operator {
    fn start(cp: &ControlPlane, namespace: &str, root_key: &std::path::Path) -> Result<Self> {
        let bin = sibling_bin("KUBEKMS_OPERATOR_BIN", "kubekms-operator")?;
        let dir = root_key
            .parent()
            .map(std::path::Path::to_path_buf)
            .ok_or_else(|| anyhow!("no folder"))?;
        let log = std::fs::File::create(dir.join("operator.log"))?;
        let child = Command::new(bin)
            .env("KUBECONFIG", &cp.kubeconfig)
            .arg("--root-key")
            .arg(root_key)
            .args([
                "--namespace",
                namespace,
                "--lease-namespace",
                namespace,
                "--identity",
                "e2e-keyring",
                "--metrics-addr",
                "127.0.0.1:0",
                "--lease-duration-seconds",
                "4",
                "--lease-renew-seconds",
                "1",
                "--log-format",
                "text",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting kubekms-operator")?;
        Ok(Self {
            child: Some(child),
            dir,
        })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("operator.log")).unwrap_or_default()
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until the published snapshot satisfies `pred`.
async fn wait_snapshot(
    rx: &mut watch::Receiver<Arc<KeySet>>,
    what: &str,
    pred: impl Fn(&KeySet) -> bool,
) -> Result<Arc<KeySet>> {
    let found = tokio::time::timeout(WAIT, rx.wait_for(|set| pred(set)))
        .await
        .map_err(|_| anyhow!("{what}: not in a snapshot after {WAIT:?}"))?
        .map_err(|_| anyhow!("{what}: the keyring stopped"))?;
    Ok(found.clone())
}

fn key_manifest(name: &str, spec: serde_json::Value) -> Result<KmsKey> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "kubekms.io/v1alpha1",
        "kind": "KmsKey",
        "metadata": {"name": name},
        "spec": spec,
    }))?)
}

fn versions(set: &KeySet, ns: &str, name: &str) -> Vec<u32> {
    set.get(ns, name)
        .and_then(|e| e.key.as_ref().ok())
        .map(|k| k.material_versions().collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_made_keys_are_unwrapped_and_only_what_changed_is_unwrapped_again() -> Result<()> {
    let cp = ControlPlane::shared()?;
    cp.apply_crds()?;
    in_namespace(cp, "keyring", move |client, ns| async move {
        let dir = std::env::temp_dir().join(unique_name("kubekms-e2e-keyring"));
        std::fs::create_dir_all(&dir)?;
        let root_key = dir.join("root.key");
        let root: Arc<dyn RootKeyStore> = Arc::new(FileKeyStore::init(&root_key)?);
        let mut operator = Operator::start(cp, &ns, &root_key)?;

        // The keyring over this namespace, with short watch timeouts so the test sees
        // several renewals of quiet watches.
        let mut config = KeyringConfig::new(Scope::Namespace(ns.clone())).with_heartbeats();
        config.timeouts = WatchTimeouts {
            server_timeout: Duration::from_secs(3),
        };
        let kube_config = client::load_config(Some(&cp.kubeconfig)).await?;
        let metrics = Arc::new(KeyringMetrics::new());
        let watch_client = client::watch_client(&kube_config, &config.timeouts, metrics.clone())?;
        let (keyring, mut rx) =
            Keyring::start_with_metrics(watch_client, root.clone(), config, metrics.clone());

        let keys: Api<KmsKey> = Api::namespaced(client.clone(), &ns);
        let specs = [
            ("sym", json!({"keySpec": "SYMMETRIC_DEFAULT"})),
            (
                "rsa",
                json!({"keySpec": "RSA_2048", "keyUsage": "ENCRYPT_DECRYPT"}),
            ),
            ("hmac", json!({"keySpec": "HMAC_256"})),
            ("ecc", json!({"keySpec": "ECC_NIST_P256"})),
        ];
        for (name, spec) in &specs {
            keys.create(&PostParams::default(), &key_manifest(name, spec.clone())?)
                .await
                .with_context(|| format!("creating KmsKey {name}"))?;
        }
        let started = Instant::now();
        let set = wait_snapshot(&mut rx, "the four keys, unwrapped", |set| {
            set.is_ready()
                && specs.iter().all(|(name, _)| {
                    set.get(&ns, name)
                        .is_some_and(|e| e.key.is_ok() && e.state == KeyState::Enabled)
                })
        })
        .await
        .with_context(|| operator.log())?;
        eprintln!(
            "[e2e keyring] four operator-made keys unwrapped in a snapshot {:?} after creation",
            started.elapsed()
        );
        ensure!(
            metrics.unwraps.get() == 4,
            "unwraps: {}",
            metrics.unwraps.get()
        );
        for (name, _) in &specs {
            let entry = set.get(&ns, name).ok_or_else(|| anyhow!("{name}"))?;
            let key_id = entry.key_id().ok_or_else(|| anyhow!("{name}: key id"))?;
            ensure!(
                set.by_key_id(&key_id).is_some_and(|e| e.name == *name),
                "{name} does not resolve by its key id"
            );
            ensure!(!entry.served_by_plugin, "{name} is served by no plugin");
        }
        // The symmetric key works: a round trip with the unwrapped material.
        let sym = set
            .get(&ns, "sym")
            .and_then(|e| e.key.as_ref().ok())
            .ok_or_else(|| anyhow!("sym"))?
            .clone();
        let context = EncryptionContext::default();
        let blob = kms_core::ops::encrypt(
            &sym,
            b"keyring",
            &context,
            EncryptionAlgorithm::SymmetricDefault,
        )?;
        let (back, _) =
            kms_core::ops::decrypt(&sym, &blob, &context, EncryptionAlgorithm::SymmetricDefault)?;
        ensure!(back.expose() == b"keyring");

        // An on-demand rotation: version 2 in a snapshot, one more unwrap.
        keys.patch(
            "sym",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rotation": {"onDemandToken": "e2e-1"}}})),
        )
        .await?;
        let set = wait_snapshot(&mut rx, "sym at version 2", |set| {
            versions(set, &ns, "sym") == [1, 2]
        })
        .await
        .with_context(|| operator.log())?;
        ensure!(
            metrics.unwraps.get() == 5,
            "a rotation unwraps the new version only: {}",
            metrics.unwraps.get()
        );
        let old = set
            .get(&ns, "sym")
            .and_then(|e| e.key.as_ref().ok())
            .ok_or_else(|| anyhow!("sym"))?
            .clone();
        let (back, _) =
            kms_core::ops::decrypt(&old, &blob, &context, EncryptionAlgorithm::SymmetricDefault)?;
        ensure!(back.expose() == b"keyring", "version 1 still decrypts");

        // A status-only change of the KmsKey: the snapshot shows it, nothing is unwrapped.
        let patched = keys
            .patch_status(
                "hmac",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"conditions": [{
                    "type": "E2eProbe", "status": "True", "reason": "Probe",
                    "message": "a status write", "lastTransitionTime": "2026-01-01T00:00:00Z"
                }]}})),
            )
            .await?;
        let rv: u64 = patched
            .metadata
            .resource_version
            .as_deref()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("no resourceVersion"))?;
        wait_snapshot(&mut rx, "the status write", |set| {
            set.get(&ns, "hmac").is_some_and(|e| {
                e.object
                    .metadata
                    .resource_version
                    .as_deref()
                    .and_then(|v| v.parse::<u64>().ok())
                    .is_some_and(|seen| seen >= rv)
            })
        })
        .await?;
        ensure!(
            metrics.unwraps.get() == 5,
            "a status write unwrapped material: {}",
            metrics.unwraps.get()
        );

        // Quiet: no operator, nothing changes. The watches end at the server's timeout
        // (3 s) and are renewed; none of that is an error (the read timeout of the watch
        // client is longer than a watch request lasts).
        operator.stop();
        let errors = metrics.watch_errors.get();
        let requests = metrics.watch_requests.get();
        let deadline = Instant::now() + WAIT;
        while metrics.watch_requests.get() < requests + 6 {
            ensure!(
                Instant::now() < deadline,
                "watches not renewed: {} requests",
                metrics.watch_requests.get()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        ensure!(
            metrics.watch_errors.get() == errors,
            "quiet watches failed {} times",
            metrics.watch_errors.get() - errors
        );

        // The record deleted: the key leaves the set, the others stay.
        let sym_id = set
            .get(&ns, "sym")
            .and_then(|e| e.key_id())
            .ok_or_else(|| anyhow!("sym key id"))?;
        Api::<KmsKeyMaterial>::namespaced(client.clone(), &ns)
            .delete("sym", &DeleteParams::default())
            .await?;
        let set = wait_snapshot(&mut rx, "sym's record gone", |set| {
            set.record(&ns, "sym").is_none()
        })
        .await?;
        ensure!(set.get(&ns, "sym").is_none() && set.by_key_id(&sym_id).is_none());
        ensure!(
            set.kms_key(&ns, "sym").is_some(),
            "the KmsKey is still seen"
        );
        ensure!(set.keys_in(&ns).count() == 3, "the other keys stay");
        keyring.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    })
    .await
}
