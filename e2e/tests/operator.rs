//! The operator against a real kube-apiserver and etcd: CRDs applied with kubectl, the
//! controllers running in this process (watching only the test's namespace, with a
//! test clock the test moves), and checks read back through the API and straight from etcd.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use kms_core::ArnScope;
use kms_core::keystore::{FileKeyStore, RootKeyStore};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use kubekms_e2e::{ControlPlane, in_namespace, repo_root};
use kubekms_k8s::names::{KeyStateName, RotationTypeName};
use kubekms_k8s::{KmsAlias, KmsGrant, KmsKey, KmsKeyMaterial};
use kubekms_operator::run::run_controllers;
use kubekms_operator::{Context, Metrics, TestClock};
use serde_json::json;
use time::OffsetDateTime;
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(60);

/// Polls `check` until it yields a value or `WAIT` has passed.
async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {WAIT:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn key_where(
    keys: &Api<KmsKey>,
    name: &str,
    what: &str,
    condition: impl Fn(&KmsKey) -> bool,
) -> Result<KmsKey> {
    wait_for(&format!("KmsKey {name}: {what}"), || async {
        Ok(keys.get_opt(name).await?.filter(|k| condition(k)))
    })
    .await
}

/// Waits until KmsKey `name` has material version 2, made by a rotation of `kind`.
async fn rotated_to_v2(keys: &Api<KmsKey>, name: &str, kind: RotationTypeName) -> Result<()> {
    let key = key_where(
        keys,
        name,
        &format!("{kind:?} rotation to version 2"),
        |k| k.status.as_ref().and_then(|s| s.current_version) == Some(2),
    )
    .await?;
    let versions = key.status.context("status")?.versions;
    ensure!(
        versions.last().and_then(|v| v.rotation_type) == Some(kind),
        "{name}: {versions:?}"
    );
    Ok(())
}

fn state(key: &KmsKey) -> Option<KeyStateName> {
    key.status.as_ref().and_then(|s| s.key_state)
}

fn key_manifest(name: &str, spec: serde_json::Value) -> Result<KmsKey> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "kubekms.io/v1alpha1",
        "kind": "KmsKey",
        "metadata": {"name": name},
        "spec": spec,
    }))?)
}

async fn patch_spec(keys: &Api<KmsKey>, name: &str, spec: serde_json::Value) -> Result<()> {
    keys.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": spec})),
    )
    .await
    .with_context(|| format!("patching KmsKey {name}"))?;
    Ok(())
}

/// The plaintext of every material version of a record, unwrapped with the root key.
fn unwrap_all(root: &FileKeyStore, record: &KmsKeyMaterial) -> Result<Vec<Vec<u8>>> {
    let namespace = record.namespace().unwrap_or_default();
    record
        .spec
        .versions
        .iter()
        .map(|v| {
            let wrapped = BASE64.decode(&v.wrapped)?;
            let context = kubekms_k8s::convert::wrap_context(
                &record.spec,
                &namespace,
                &record.name_any(),
                v.version,
            )?;
            let material = root.unwrap(&context, &wrapped)?;
            Ok(material.expose().to_vec())
        })
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

struct Operator {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    clock: Arc<TestClock>,
    root: Arc<FileKeyStore>,
    dir: std::path::PathBuf,
}

impl Operator {
    fn start(client: Client, namespace: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(kubekms_e2e::unique_name("kubekms-operator-e2e"));
        std::fs::create_dir_all(&dir)?;
        let root = Arc::new(FileKeyStore::init(&dir.join("root.key"))?);
        let clock = Arc::new(TestClock::new(OffsetDateTime::now_utc()));
        let ctx = Arc::new(Context::new(
            client,
            root.clone(),
            ArnScope::default(),
            clock.clone(),
            Arc::new(Metrics::new()),
            Some("e2e".to_owned()),
        ));
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(run_controllers(ctx, Some(namespace.to_owned()), shutdown));
        Ok(Self {
            stop,
            task,
            clock,
            root,
            dir,
        })
    }

    async fn stop(self) -> Result<()> {
        self.stop.send(true)?;
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .context("the controllers did not stop within 30 s")??;
        std::fs::remove_dir_all(&self.dir)?;
        Ok(())
    }
}

#[tokio::test]
async fn operator_manages_the_key_lifecycle() -> Result<()> {
    let cp = ControlPlane::shared()?;
    cp.apply_crds()?;
    let cp = cp.clone();
    in_namespace(&cp.clone(), "operator", move |client, ns| async move {
        let started = Instant::now();
        let operator = Operator::start(client.clone(), &ns)?;
        let keys: Api<KmsKey> = Api::namespaced(client.clone(), &ns);
        let records: Api<KmsKeyMaterial> = Api::namespaced(client.clone(), &ns);

        // Keys of every key spec (and the non-default usages), plus an imported one.
        let specs = [
            ("sym", json!({"keySpec": "SYMMETRIC_DEFAULT"})),
            ("rsa2048", json!({"keySpec": "RSA_2048"})),
            (
                "rsa3072-sign",
                json!({"keySpec": "RSA_3072", "keyUsage": "SIGN_VERIFY"}),
            ),
            ("rsa4096", json!({"keySpec": "RSA_4096"})),
            ("p256", json!({"keySpec": "ECC_NIST_P256"})),
            (
                "p384-agree",
                json!({"keySpec": "ECC_NIST_P384", "keyUsage": "KEY_AGREEMENT"}),
            ),
            ("p521", json!({"keySpec": "ECC_NIST_P521"})),
            ("secp256k1", json!({"keySpec": "ECC_SECG_P256K1"})),
            ("hmac224", json!({"keySpec": "HMAC_224"})),
            ("hmac256", json!({"keySpec": "HMAC_256"})),
            ("hmac384", json!({"keySpec": "HMAC_384"})),
            ("hmac512", json!({"keySpec": "HMAC_512"})),
            (
                "rotating",
                json!({"rotation": {"automatic": true, "periodInDays": 90}}),
            ),
        ];
        for (name, spec) in &specs {
            keys.create(&PostParams::default(), &key_manifest(name, spec.clone())?)
                .await
                .with_context(|| format!("creating KmsKey {name}"))?;
        }
        keys.create(
            &PostParams::default(),
            &key_manifest("imported", json!({"origin": "EXTERNAL"}))?,
        )
        .await?;
        for (name, spec) in &specs {
            let key = key_where(&keys, name, "Enabled", |k| {
                state(k) == Some(KeyStateName::Enabled)
            })
            .await?;
            let status = key.status.context("status")?;
            let key_id = status.key_id.context("keyId")?;
            ensure!(
                status.arn.as_deref() == Some(&format!("arn:kubekms:kms:local:{ns}:key/{key_id}")),
                "{name}: arn {:?}",
                status.arn
            );
            let algorithms = status.encryption_algorithms.len()
                + status.signing_algorithms.len()
                + status.mac_algorithms.len()
                + status.key_agreement_algorithms.len();
            ensure!(algorithms > 0, "{name} ({spec}): no algorithms in status");
            ensure!(status.current_version == Some(1), "{name}: version");
            ensure!(
                key.metadata
                    .finalizers
                    .unwrap_or_default()
                    .contains(&kubekms_operator::key::FINALIZER.to_owned()),
                "{name}: no finalizer"
            );
        }
        key_where(&keys, "imported", "PendingImport", |k| {
            state(k) == Some(KeyStateName::PendingImport)
        })
        .await?;
        let created_in = started.elapsed();

        // Disable and enable.
        patch_spec(&keys, "sym", json!({"enabled": false})).await?;
        key_where(&keys, "sym", "Disabled", |k| {
            state(k) == Some(KeyStateName::Disabled)
        })
        .await?;
        patch_spec(&keys, "sym", json!({"enabled": true})).await?;
        key_where(&keys, "sym", "Enabled again", |k| {
            state(k) == Some(KeyStateName::Enabled)
        })
        .await?;

        // On-demand rotation adds a version, once per token.
        patch_spec(
            &keys,
            "sym",
            json!({"rotation": {"onDemandToken": "first"}}),
        )
        .await?;
        rotated_to_v2(&keys, "sym", RotationTypeName::OnDemand).await?;

        // Automatic rotation, reached by moving the operator's clock 91 days (a moved clock
        // makes the operator look at every key again).
        operator.clock.advance(time::Duration::days(91));
        rotated_to_v2(&keys, "rotating", RotationTypeName::Automatic).await?;

        // Schedule and cancel a deletion: the key returns Disabled, as in AWS.
        patch_spec(
            &keys,
            "hmac256",
            json!({"deletion": {"pendingWindowInDays": 7}}),
        )
        .await?;
        let key = key_where(&keys, "hmac256", "PendingDeletion", |k| {
            state(k) == Some(KeyStateName::PendingDeletion)
        })
        .await?;
        ensure!(
            key.status.and_then(|s| s.deletion_date).is_some(),
            "no deletionDate"
        );
        patch_spec(&keys, "hmac256", json!({"deletion": null})).await?;
        let key = key_where(&keys, "hmac256", "Disabled after cancel", |k| {
            state(k) == Some(KeyStateName::Disabled)
        })
        .await?;
        ensure!(!key.spec.enabled, "cancel sets spec.enabled false");

        // Aliases and grants.
        let aliases: Api<KmsAlias> = Api::namespaced(client.clone(), &ns);
        let alias: KmsAlias = serde_json::from_value(json!({
            "apiVersion": "kubekms.io/v1alpha1", "kind": "KmsAlias",
            "metadata": {"name": "app"},
            "spec": {"aliasName": "alias/app", "targetKeyRef": {"name": "sym"}}
        }))?;
        aliases.create(&PostParams::default(), &alias).await?;
        let sym_id = keys
            .get("sym")
            .await?
            .status
            .and_then(|s| s.key_id)
            .context("sym keyId")?;
        wait_for("alias/app resolved", || async {
            let alias = aliases.get("app").await?;
            Ok(alias
                .status
                .filter(|s| s.target_key_id.as_deref() == Some(sym_id.as_str()))
                .filter(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                }))
        })
        .await?;
        let mut duplicate = alias.clone();
        duplicate.metadata.name = Some("app-again".to_owned());
        aliases.create(&PostParams::default(), &duplicate).await?;
        wait_for("the younger alias reports NameConflict", || async {
            let alias = aliases.get("app-again").await?;
            Ok(alias
                .status
                .filter(|s| s.conditions.iter().any(|c| c.reason == "NameConflict")))
        })
        .await?;
        // Retargeting to an HMAC key is refused (AWS UpdateAlias); the target stays.
        aliases
            .patch(
                "app",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"targetKeyRef": {"name": "hmac512"}}})),
            )
            .await?;
        wait_for("IncompatibleTarget", || async {
            let alias = aliases.get("app").await?;
            Ok(alias
                .status
                .filter(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.reason == "IncompatibleTarget")
                })
                .filter(|s| s.target_key_id.as_deref() == Some(sym_id.as_str())))
        })
        .await?;

        let grants: Api<KmsGrant> = Api::namespaced(client.clone(), &ns);
        let grant = |name: &str, key: &str, operations: serde_json::Value| -> Result<KmsGrant> {
            Ok(serde_json::from_value(json!({
                "apiVersion": "kubekms.io/v1alpha1", "kind": "KmsGrant",
                "metadata": {"name": name},
                "spec": {"keyRef": {"name": key}, "grantee": {"serviceAccount": {"name": "app"}},
                         "operations": operations,
                         "constraints": {"encryptionContextSubset": {"app": "billing"}}}
            }))?)
        };
        grants
            .create(
                &PostParams::default(),
                &grant("enc", "p256-gone", json!(["Sign"]))?,
            )
            .await?;
        grants
            .create(
                &PostParams::default(),
                &grant("ok", "sym", json!(["Encrypt", "Decrypt"]))?,
            )
            .await?;
        grants
            .create(
                &PostParams::default(),
                &grant("bad", "sym", json!(["Sign"]))?,
            )
            .await?;
        let granted = wait_for("grant ok Granted", || async {
            Ok(grants.get("ok").await?.status.filter(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.reason == "Granted" && c.status == "True")
            }))
        })
        .await?;
        let grant_id = granted.grant_id.context("grantId")?;
        ensure!(
            grant_id.len() == 64 && grant_id.chars().all(|c| c.is_ascii_hexdigit()),
            "grantId {grant_id}"
        );
        ensure!(granted.grant_token.is_some(), "grantToken");
        for (name, reason) in [("bad", "InvalidOperations"), ("enc", "KeyNotFound")] {
            wait_for(&format!("grant {name}: {reason}"), || async {
                Ok(grants
                    .get(name)
                    .await?
                    .status
                    .filter(|s| s.conditions.iter().any(|c| c.reason == reason)))
            })
            .await?;
        }

        // No plaintext material anywhere in etcd: not in the records, not in the keys.
        let mut checked = 0;
        for record in records.list(&Default::default()).await? {
            let name = record.name_any();
            let materials = unwrap_all(&operator.root, &record)?;
            for prefix in ["kmskeymaterials", "kmskeys"] {
                let etcd_key = format!("/registry/kubekms.io/{prefix}/{ns}/{name}");
                let stored = cp
                    .etcd_get(&etcd_key)?
                    .with_context(|| format!("{etcd_key} not in etcd"))?;
                for material in &materials {
                    for form in [
                        material.clone(),
                        BASE64.encode(material).into_bytes(),
                        kms_hex(material).into_bytes(),
                    ] {
                        ensure!(
                            !contains(&stored, &form),
                            "{etcd_key} holds plaintext material"
                        );
                    }
                }
                if prefix == "kmskeys" {
                    for version in &record.spec.versions {
                        ensure!(
                            !contains(&stored, version.wrapped.as_bytes()),
                            "{etcd_key} holds wrapped material"
                        );
                    }
                }
                checked += 1;
            }
        }
        ensure!(
            checked >= 2 * specs.len(),
            "checked only {checked} etcd values"
        );

        // kubectl delete: held by the finalizer, PendingDeletion for the default 30 days.
        cp.kubectl(["delete", "kmskey", "sym", "-n", &ns, "--wait=false"])?;
        let key = key_where(&keys, "sym", "held PendingDeletion", |k| {
            state(k) == Some(KeyStateName::PendingDeletion)
        })
        .await?;
        ensure!(key.metadata.deletion_timestamp.is_some(), "not deleting");
        ensure!(records.get_opt("sym").await?.is_some(), "record gone early");
        wait_for("alias reports TargetPendingDeletion", || async {
            aliases
                .patch(
                    "app",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"targetKeyRef": {"name": "sym"}}})),
                )
                .await?;
            Ok(aliases.get("app").await?.status.filter(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.reason == "TargetPendingDeletion")
            }))
        })
        .await?;
        // A day before the window ends it is still held.
        operator.clock.advance(time::Duration::days(29));
        tokio::time::sleep(Duration::from_secs(2)).await;
        ensure!(
            keys.get_opt("sym").await?.is_some(),
            "released before the window"
        );
        ensure!(
            records.get_opt("sym").await?.is_some(),
            "material destroyed early"
        );
        // Past the window: material destroyed, finalizer released, grants removed.
        operator.clock.advance(time::Duration::days(2));
        wait_for("KmsKey sym gone", || async {
            Ok(keys.get_opt("sym").await?.is_none().then_some(()))
        })
        .await?;
        ensure!(records.get_opt("sym").await?.is_none(), "record survived");
        wait_for("grants on sym removed", || async {
            Ok(
                (grants.get_opt("ok").await?.is_none() && grants.get_opt("bad").await?.is_none())
                    .then_some(()),
            )
        })
        .await?;
        wait_for("alias reports TargetDeleted", || async {
            Ok(aliases
                .get("app")
                .await?
                .status
                .filter(|s| s.conditions.iter().any(|c| c.reason == "TargetDeleted")))
        })
        .await?;
        let _ = keys.delete("imported", &DeleteParams::default()).await;

        operator.stop().await?;
        eprintln!(
            "operator e2e: {} keys Enabled in {created_in:?}; whole test {:?}",
            specs.len(),
            started.elapsed()
        );
        Ok(())
    })
    .await
}

fn kms_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn only_one_replica_holds_the_leader_lease() -> Result<()> {
    use kubekms_operator::leader::{LeaderElector, LeaseConfig};
    let cp = ControlPlane::shared()?;
    in_namespace(cp, "leader", move |client, ns| async move {
        let config = |identity: &str| LeaseConfig {
            namespace: ns.clone(),
            name: "kubekms-operator".to_owned(),
            identity: identity.to_owned(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(1),
        };
        let first = LeaderElector::new(client.clone(), config("replica-a"));
        let second = LeaderElector::new(client.clone(), config("replica-b"));
        ensure!(
            first.try_acquire_or_renew().await?,
            "a acquires a new Lease"
        );
        ensure!(
            !second.try_acquire_or_renew().await?,
            "b must not take a held Lease"
        );
        ensure!(first.try_acquire_or_renew().await?, "a renews");
        first.release().await;
        ensure!(
            second.try_acquire_or_renew().await?,
            "b takes a released Lease"
        );
        ensure!(!first.try_acquire_or_renew().await?, "a is now the standby");
        let lease: k8s_openapi::api::coordination::v1::Lease =
            Api::namespaced(client, &ns).get("kubekms-operator").await?;
        let spec = lease.spec.context("lease spec")?;
        ensure!(
            spec.holder_identity.as_deref() == Some("replica-b"),
            "{spec:?}"
        );
        ensure!(spec.lease_transitions == Some(1), "{spec:?}");
        Ok(())
    })
    .await
}

/// The RBAC of deploy/rbac: the plugin's identity reads keys and records and renews its
/// Lease in its namespace and nothing else; nobody else reads the material.
fn check_rbac(cp: &ControlPlane) -> Result<()> {
    let can = |who: &str, args: &[&str]| -> Result<bool> {
        let out = std::process::Command::new(cp.tool("kubectl"))
            .env("KUBECONFIG", &cp.kubeconfig)
            .args(["auth", "can-i", "--as", who])
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim() == "yes")
    };
    let plugin = "system:serviceaccount:kubekms-system:kubekms-plugin";
    let operator = "system:serviceaccount:kubekms-system:kubekms-operator";
    let other = "system:serviceaccount:kubekms-system:default";
    for (who, args, expected) in [
        (
            plugin,
            &["watch", "kmskeymaterials", "-n", "kubekms-system"][..],
            true,
        ),
        (
            plugin,
            &["patch", "leases", "-n", "kubekms-system"][..],
            true,
        ),
        (
            plugin,
            &["update", "kmskeymaterials", "-n", "kubekms-system"][..],
            false,
        ),
        (
            plugin,
            &["get", "kmskeymaterials", "-n", "default"][..],
            false,
        ),
        (
            plugin,
            &["list", "secrets", "-n", "kubekms-system"][..],
            false,
        ),
        (operator, &["update", "secrets", "-A"][..], true),
        (operator, &["get", "secrets", "-A"][..], false),
        (
            operator,
            &["create", "kmskeymaterials", "-n", "default"][..],
            true,
        ),
        (operator, &["update", "leases", "-n", "default"][..], false),
        (
            other,
            &["get", "kmskeymaterials", "-n", "kubekms-system"][..],
            false,
        ),
    ] {
        ensure!(
            can(who, args)? == expected,
            "kubectl auth can-i --as {who} {args:?} should be {expected}"
        );
    }
    Ok(())
}

/// The operator binary, running as the ServiceAccount of deploy/rbac/operator.yaml, with
/// its file-offset test clock (refused without KUBEKMS_ALLOW_TEST_CLOCK=1, see
/// operator/tests/cli.rs): moving the offset by 91 days makes it rotate a key with a
/// 90-day period, and moving it past a 7-day deletion window destroys the material and
/// releases the KmsKey, with nothing else touching the objects.
#[tokio::test]
async fn the_operator_binary_follows_its_test_clock() -> Result<()> {
    let cp = ControlPlane::shared()?;
    cp.apply_crds()?;
    let rbac = repo_root().join("deploy/rbac");
    cp.kubectl(["apply".as_ref(), "-f".as_ref(), rbac.as_os_str()])?;
    check_rbac(cp)?;
    in_namespace(cp, "binclock", move |client, ns| async move {
        let dir = std::env::temp_dir().join(kubekms_e2e::unique_name("kubekms-binclock"));
        std::fs::create_dir_all(&dir)?;
        let offset = dir.join("offset");
        std::fs::write(&offset, "0")?;
        let kubeconfig = dir.join("kubeconfig");
        cp.write_service_account_kubeconfig("kubekms-system", "kubekms-operator", &kubeconfig)?;
        let bin = kubekms_e2e::process::sibling_bin("KUBEKMS_OPERATOR_BIN", "kubekms-operator")?;
        let log = std::fs::File::create(dir.join("operator.log"))?;
        let mut operator = std::process::Command::new(&bin)
            .env("KUBECONFIG", &kubeconfig)
            .env("KUBEKMS_ALLOW_TEST_CLOCK", "1")
            .arg("--root-key")
            .arg(dir.join("root.key"))
            .arg("--init-root-key")
            .arg("--test-clock-offset-file")
            .arg(&offset)
            .args(["--namespace", &ns, "--lease-namespace", "kubekms-system"])
            .args(["--lease-name", &format!("kubekms-operator-{ns}")])
            .args(["--metrics-addr", "127.0.0.1:0", "--log-format", "text"])
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let result = async {
            let keys: Api<KmsKey> = Api::namespaced(client.clone(), &ns);
            let records: Api<KmsKeyMaterial> = Api::namespaced(client.clone(), &ns);
            keys.create(
                &PostParams::default(),
                &key_manifest(
                    "clocked",
                    json!({"rotation": {"automatic": true, "periodInDays": 90}}),
                )?,
            )
            .await?;
            key_where(&keys, "clocked", "Enabled", |k| {
                state(k) == Some(KeyStateName::Enabled)
            })
            .await?;
            std::fs::write(&offset, (91 * 86_400).to_string())?;
            rotated_to_v2(&keys, "clocked", RotationTypeName::Automatic).await?;
            patch_spec(
                &keys,
                "clocked",
                json!({"deletion": {"pendingWindowInDays": 7}}),
            )
            .await?;
            key_where(&keys, "clocked", "PendingDeletion", |k| {
                state(k) == Some(KeyStateName::PendingDeletion)
            })
            .await?;
            ensure!(
                records.get_opt("clocked").await?.is_some(),
                "material destroyed before the window"
            );
            std::fs::write(&offset, ((91 + 8) * 86_400).to_string())?;
            wait_for("KmsKey clocked gone after its window", || async {
                Ok(keys.get_opt("clocked").await?.is_none().then_some(()))
            })
            .await?;
            ensure!(
                records.get_opt("clocked").await?.is_none(),
                "record survived"
            );
            Ok(())
        }
        .await;
        let _ = operator.kill();
        let _ = operator.wait();
        let logged = std::fs::read_to_string(dir.join("operator.log")).unwrap_or_default();
        let result = result.and_then(|()| {
            ensure!(
                !logged.to_ascii_lowercase().contains("forbidden"),
                "the operator's ServiceAccount was refused something:\n{logged}"
            );
            Ok(())
        });
        if result.is_ok() {
            let _ = std::fs::remove_dir_all(&dir);
        } else {
            eprintln!("operator log: {}", dir.join("operator.log").display());
        }
        result
    })
    .await
}

/// Two operator binaries on one Lease: only the holder reconciles (the Events of a key name
/// the replica that made it), and SIGTERM of the holder releases the Lease so the standby
/// takes over at once and reconciles the next key.
#[tokio::test]
async fn two_operator_binaries_one_leader_then_a_takeover() -> Result<()> {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::events::v1::Event;
    let cp = ControlPlane::shared()?;
    cp.apply_crds()?;
    in_namespace(cp, "replicas", move |client, ns| async move {
        let dir = std::env::temp_dir().join(kubekms_e2e::unique_name("kubekms-replicas"));
        std::fs::create_dir_all(&dir)?;
        let root = dir.join("root.key");
        FileKeyStore::init(&root)?;
        let bin = kubekms_e2e::process::sibling_bin("KUBEKMS_OPERATOR_BIN", "kubekms-operator")?;
        let start = |identity: &str| -> Result<std::process::Child> {
            let log = std::fs::File::create(dir.join(format!("{identity}.log")))?;
            Ok(std::process::Command::new(&bin)
                .env("KUBECONFIG", &cp.kubeconfig)
                .arg("--root-key")
                .arg(&root)
                .args(["--namespace", &ns, "--lease-namespace", &ns])
                .args(["--identity", identity, "--metrics-addr", "127.0.0.1:0"])
                .args(["--log-format", "text"])
                .stdin(std::process::Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?)
        };
        let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
        let holder = || async {
            Ok::<_, anyhow::Error>(
                leases
                    .get_opt("kubekms-operator")
                    .await?
                    .and_then(|l| l.spec)
                    .and_then(|s| s.holder_identity),
            )
        };
        let keys: Api<KmsKey> = Api::namespaced(client.clone(), &ns);
        let events: Api<Event> = Api::namespaced(client.clone(), &ns);
        let created_by = |key: &'static str| {
            let events = events.clone();
            async move {
                wait_for(&format!("the KeyCreated Event of {key}"), || async {
                    Ok(events
                        .list(&Default::default())
                        .await?
                        .items
                        .into_iter()
                        .find(|e| {
                            e.reason.as_deref() == Some("KeyCreated")
                                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(key)
                        })
                        .and_then(|e| e.reporting_instance))
                })
                .await
            }
        };
        let mut a = start("replica-a")?;
        let result = async {
            wait_for("replica-a holds the Lease", || async {
                Ok((holder().await?.as_deref() == Some("replica-a")).then_some(()))
            })
            .await?;
            let mut b = start("replica-b")?;
            let inner = async {
                keys.create(&PostParams::default(), &key_manifest("k1", json!({}))?)
                    .await?;
                key_where(&keys, "k1", "Enabled", |k| {
                    state(k) == Some(KeyStateName::Enabled)
                })
                .await?;
                ensure!(created_by("k1").await? == "replica-a");
                ensure!(holder().await?.as_deref() == Some("replica-a"));

                // SIGTERM: a finishes, releases the Lease (no holder: a standby need not
                // wait for it to expire) and exits 0; b takes it.
                rustix::process::kill_process(
                    rustix::process::Pid::from_child(&a),
                    rustix::process::Signal::TERM,
                )?;
                let status = a.wait()?;
                ensure!(status.success(), "replica-a exited with {status}");
                let after_exit = holder().await?;
                ensure!(
                    after_exit.as_deref() != Some("replica-a"),
                    "replica-a exited still holding the Lease"
                );
                wait_for("replica-b holds the Lease", || async {
                    Ok((holder().await?.as_deref() == Some("replica-b")).then_some(()))
                })
                .await?;
                keys.create(&PostParams::default(), &key_manifest("k2", json!({}))?)
                    .await?;
                key_where(&keys, "k2", "Enabled", |k| {
                    state(k) == Some(KeyStateName::Enabled)
                })
                .await?;
                ensure!(created_by("k2").await? == "replica-b");
                Ok(())
            }
            .await;
            let _ = b.kill();
            let _ = b.wait();
            inner
        }
        .await;
        let _ = a.kill();
        let _ = a.wait();
        if result.is_ok() {
            let _ = std::fs::remove_dir_all(&dir);
        } else {
            eprintln!("operator logs in {}", dir.display());
        }
        result
    })
    .await
}

/// The plugin in follow mode, running as the ServiceAccount of deploy/rbac/plugin.yaml:
/// it watches its KmsKey and record and writes its heartbeat Lease with nothing refused.
#[tokio::test]
async fn the_plugin_follows_with_its_own_rbac() -> Result<()> {
    use k8s_openapi::api::coordination::v1::Lease;
    let cp = ControlPlane::shared()?;
    cp.apply_crds()?;
    let rbac = repo_root().join("deploy/rbac");
    cp.kubectl(["apply".as_ref(), "-f".as_ref(), rbac.as_os_str()])?;
    let dir = std::env::temp_dir().join(kubekms_e2e::unique_name("kubekms-plugin-rbac"));
    std::fs::create_dir_all(&dir)?;
    let kubeconfig = dir.join("kubeconfig");
    cp.write_service_account_kubeconfig("kubekms-system", "kubekms-plugin", &kubeconfig)?;
    let bin = kubekms_e2e::process::sibling_bin("KUBEKMS_PLUGIN_BIN", "kubekms-plugin")?;
    let state = dir.join("state");
    let init = std::process::Command::new(&bin)
        .arg("init")
        .arg("--state-dir")
        .arg(&state)
        .output()?;
    ensure!(init.status.success(), "init: {:?}", init);
    let instance = kubekms_e2e::unique_name("rbac");
    let log_path = dir.join("plugin.log");
    let log = std::fs::File::create(&log_path)?;
    let mut plugin = std::process::Command::new(&bin)
        .arg("serve")
        .arg("--state-dir")
        .arg(&state)
        .arg("--socket")
        .arg(dir.join("kms.sock"))
        .args([
            "--follow",
            "kubekms-system/apiserver-key",
            "--instance",
            &instance,
        ])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let result = async {
        let leases: Api<Lease> = Api::namespaced(cp.client().await?, "kubekms-system");
        let name = format!("kubekms-plugin-{instance}");
        let lease = wait_for("the plugin's heartbeat Lease", || async {
            Ok(leases.get_opt(&name).await?)
        })
        .await?;
        ensure!(
            lease
                .labels()
                .get("kubekms.io/plugin-for")
                .map(String::as_str)
                == Some("apiserver-key"),
            "{lease:?}"
        );
        // One more renewal and the watches running for a while, then read the log.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let logged = std::fs::read_to_string(&log_path)?;
        ensure!(
            !logged.to_ascii_lowercase().contains("forbidden"),
            "the plugin's ServiceAccount was refused something:\n{logged}"
        );
        leases.delete(&name, &DeleteParams::default()).await?;
        Ok(())
    }
    .await;
    let _ = plugin.kill();
    let _ = plugin.wait();
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("plugin files in {}", dir.display());
    }
    result
}
