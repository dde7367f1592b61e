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
use kube::runtime::controller::Action;
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
    ctx: Arc<Context>,
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
        let task = tokio::spawn(run_controllers(
            ctx.clone(),
            Some(namespace.to_owned()),
            shutdown,
        ));
        Ok(Self {
            stop,
            task,
            clock,
            root,
            ctx,
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
                status.arn.as_deref()
                    == Some(&format!(
                        "arn:aws:kms:local:{}:key/{key_id}",
                        kms_core::derive_account_id(&ns)
                    )),
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
        // A day before the window ends it is still held. Evidence that the operator looked
        // at it with the moved clock: a reconciliation with the operator's own context, which
        // holds it and asks to look again later (a released key would await no change).
        operator.clock.advance(time::Duration::days(29));
        let held = keys.get("sym").await?;
        let action = kubekms_operator::key::reconcile(Arc::new(held), operator.ctx.clone())
            .await
            .context("reconciling sym a day before its window ends")?;
        ensure!(
            action == Action::requeue(kubekms_operator::key::MAX_REQUEUE),
            "a day before the window: {action:?}"
        );
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
            renew_deadline: Duration::from_secs(10),
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
        (operator, &["patch", "secrets", "-A"][..], true),
        (operator, &["update", "secrets", "-A"][..], false),
        (operator, &["get", "secrets", "-A"][..], false),
        (
            operator,
            &["create", "kmskeymaterials", "-n", "default"][..],
            true,
        ),
        (
            operator,
            &["watch", "kmskeymaterials", "-n", "default"][..],
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
        // Evidence that the watches ran and the Lease was renewed with this RBAC: the plugin
        // logged that it follows (its watches start then), and the Lease was written again
        // after that (the renewal comes every 15 s).
        wait_for("the plugin following its KmsKey", || async {
            Ok(std::fs::read_to_string(&log_path)?
                .contains("following the KmsKey")
                .then_some(()))
        })
        .await?;
        let first = leases
            .get(&name)
            .await?
            .metadata
            .resource_version
            .unwrap_or_default();
        wait_for("a renewal of the plugin's heartbeat Lease", || async {
            let now = leases.get(&name).await?.metadata.resource_version;
            Ok(now.filter(|rv| *rv != first).map(|_| ()))
        })
        .await?;
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

/// A TCP proxy between one client and kube-apiserver that passes bytes (TLS included)
/// through until told to stall: from then on nothing more is forwarded in either direction
/// and no connection is closed, so every request in flight, and every new one, hangs (a
/// hung API server or a partition that drops packets, as that client sees it).
mod stalling_proxy {
    use std::net::SocketAddr;

    use anyhow::{Context as _, Result};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::watch;

    pub struct StallingProxy {
        pub addr: SocketAddr,
        stall: watch::Sender<bool>,
        task: tokio::task::JoinHandle<()>,
    }

    async fn hold_forever<T>(held: T) {
        std::future::pending::<()>().await;
        drop(held);
    }

    /// Copies `from` to `to` until `stalled`; then holds both ends open for good.
    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        mut stalled: watch::Receiver<bool>,
    ) {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let read = tokio::select! {
                biased;
                _ = stalled.wait_for(|s| *s) => break,
                read = from.read(&mut buffer) => read,
            };
            let n = match read {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(n) => n,
            };
            // Bytes read just as the stall began are not forwarded either.
            if *stalled.borrow() || to.write_all(&buffer[..n]).await.is_err() {
                break;
            }
        }
        hold_forever((from, to)).await;
    }

    impl StallingProxy {
        /// Listens on a free loopback port and forwards to `upstream`.
        pub async fn start(upstream: SocketAddr) -> Result<Self> {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let (stall, stalled) = watch::channel(false);
            let task = tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let stalled = stalled.clone();
                    tokio::spawn(async move {
                        if *stalled.borrow() {
                            hold_forever(client).await;
                            return;
                        }
                        let Ok(server) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        let (client_read, client_write) = client.into_split();
                        let (server_read, server_write) = server.into_split();
                        tokio::join!(
                            pump(client_read, server_write, stalled.clone()),
                            pump(server_read, client_write, stalled),
                        );
                    });
                }
            });
            Ok(Self { addr, stall, task })
        }

        /// From now on nothing passes.
        pub fn stall(&self) -> Result<()> {
            self.stall.send(true).context("the proxy has stopped")
        }
    }

    impl Drop for StallingProxy {
        fn drop(&mut self) {
            self.task.abort();
        }
    }
}

/// Item 1 of issue 13: two operator binaries on one Lease; the leader (replica-a) reaches
/// kube-apiserver through a proxy that then stalls, so its Lease renewal hangs. replica-a
/// must stop (exit non-zero, log "leader Lease deadline passed") before replica-b acquires
/// the Lease, judged by the order the test process sees them in; and no Event of replica-a
/// is dated after replica-b's acquisition (never two writers at once).
#[tokio::test]
async fn a_hung_lease_renewal_stops_the_leader_before_the_standby_takes_over() -> Result<()> {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::events::v1::Event;
    let cp = ControlPlane::shared()?;
    cp.apply_crds()?;
    in_namespace(cp, "hungleader", move |client, ns| async move {
        let dir = std::env::temp_dir().join(kubekms_e2e::unique_name("kubekms-hungleader"));
        std::fs::create_dir_all(&dir)?;
        let root = dir.join("root.key");
        FileKeyStore::init(&root)?;
        let upstream: std::net::SocketAddr = cp
            .apiserver_url
            .trim_start_matches("https://")
            .parse()
            .with_context(|| format!("kube-apiserver address in {}", cp.apiserver_url))?;
        let proxy = stalling_proxy::StallingProxy::start(upstream).await?;
        let admin = std::fs::read_to_string(&cp.kubeconfig)?;
        ensure!(
            admin.contains(&cp.apiserver_url),
            "the admin kubeconfig does not name {}",
            cp.apiserver_url
        );
        let proxied = dir.join("kubeconfig-through-proxy");
        std::fs::write(
            &proxied,
            admin.replace(&cp.apiserver_url, &format!("https://{}", proxy.addr)),
        )?;
        let bin = kubekms_e2e::process::sibling_bin("KUBEKMS_OPERATOR_BIN", "kubekms-operator")?;
        let start = |identity: &str, kubeconfig: &std::path::Path| -> Result<std::process::Child> {
            let log = std::fs::File::create(dir.join(format!("{identity}.log")))?;
            Ok(std::process::Command::new(&bin)
                .env("KUBECONFIG", kubeconfig)
                .arg("--root-key")
                .arg(&root)
                .args(["--namespace", &ns, "--lease-namespace", &ns])
                .args(["--identity", identity, "--metrics-addr", "127.0.0.1:0"])
                .args(["--lease-duration-seconds", "8", "--lease-renew-seconds", "1"])
                .args(["--lease-renew-deadline-seconds", "4", "--log-format", "text"])
                .stdin(std::process::Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?)
        };
        let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
        let lease = || async {
            Ok::<_, anyhow::Error>(
                leases
                    .get_opt("kubekms-operator")
                    .await?
                    .and_then(|l| l.spec)
                    .unwrap_or_default(),
            )
        };
        let keys: Api<KmsKey> = Api::namespaced(client.clone(), &ns);
        let events: Api<Event> = Api::namespaced(client.clone(), &ns);
        let mut a = start("replica-a", &proxied)?;
        let mut b: Option<std::process::Child> = None;
        let result = async {
            wait_for("replica-a holds the Lease", || async {
                Ok((lease().await?.holder_identity.as_deref() == Some("replica-a")).then_some(()))
            })
            .await?;
            b = Some(start("replica-b", &cp.kubeconfig)?);
            keys.create(&PostParams::default(), &key_manifest("k1", json!({}))?)
                .await?;
            key_where(&keys, "k1", "Enabled", |k| {
                state(k) == Some(KeyStateName::Enabled)
            })
            .await?;

            proxy.stall()?;
            let stalled = Instant::now();
            // While nobody leads, a new key waits for the next leader.
            keys.create(&PostParams::default(), &key_manifest("k2", json!({}))?)
                .await?;
            let mut a_exited: Option<(Duration, std::process::ExitStatus)> = None;
            let (b_acquired, taken_over) = loop {
                ensure!(
                    stalled.elapsed() < WAIT,
                    "no take-over within {WAIT:?} of the stall"
                );
                if a_exited.is_none()
                    && let Some(status) = a.try_wait()?
                {
                    a_exited = Some((stalled.elapsed(), status));
                }
                let spec = lease().await?;
                if spec.holder_identity.as_deref() == Some("replica-b") {
                    let seen = stalled.elapsed();
                    // Checked after the Lease was read: still running now means it was
                    // running when replica-b already held the Lease.
                    ensure!(
                        a_exited.is_some() || a.try_wait()?.is_some(),
                        "replica-b acquired the Lease while replica-a still ran (two leaders)"
                    );
                    break (seen, spec);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let (a_stopped, a_status) = a_exited.context(
                "replica-a exited only between the Lease read and the check after it",
            )?;
            ensure!(
                a_stopped < b_acquired,
                "replica-a stopped {a_stopped:?} after the stall, replica-b held the Lease at {b_acquired:?}"
            );
            ensure!(!a_status.success(), "replica-a exited with {a_status}");
            let a_log = std::fs::read_to_string(dir.join("replica-a.log"))?;
            ensure!(
                a_log.contains("leader Lease deadline passed"),
                "replica-a did not say why it stopped:\n{a_log}"
            );
            ensure!(
                taken_over.lease_transitions == Some(1),
                "Lease history: {taken_over:?}"
            );
            eprintln!(
                "hung renewal: replica-a exited {a_stopped:?} after the stall, replica-b seen holding the Lease at {b_acquired:?}"
            );

            // The new leader creates k2; replica-a wrote nothing after replica-b took over.
            key_where(&keys, "k2", "Enabled (by replica-b)", |k| {
                state(k) == Some(KeyStateName::Enabled)
            })
            .await?;
            let acquired_at = taken_over
                .acquire_time
                .context("the Lease has no acquireTime")?
                .0;
            // The Event follows the status write that made k2 Enabled: wait for it rather
            // than list once (a CI run read the list before it was published).
            let k2_by = wait_for("the KeyCreated Event of k2", || async {
                Ok(events
                    .list(&Default::default())
                    .await?
                    .into_iter()
                    .find(|event| {
                        event.reason.as_deref() == Some("KeyCreated")
                            && event.regarding.as_ref().and_then(|r| r.name.as_deref())
                                == Some("k2")
                    })
                    .map(|event| event.reporting_instance))
            })
            .await?;
            let mut by_a = 0;
            for event in events.list(&Default::default()).await? {
                let instance = event.reporting_instance.as_deref();
                let at = event.event_time.as_ref().map(|t| t.0);
                if instance == Some("replica-a") {
                    by_a += 1;
                    ensure!(
                        at.is_some_and(|at| at < acquired_at),
                        "replica-a published {:?} at {at:?}, after replica-b acquired the Lease at {acquired_at}",
                        event.reason
                    );
                }
            }
            ensure!(by_a > 0, "replica-a published nothing before the stall");
            ensure!(
                k2_by.as_deref() == Some("replica-b"),
                "k2 was created by {k2_by:?}"
            );
            Ok(())
        }
        .await;
        for child in [Some(&mut a), b.as_mut()].into_iter().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if result.is_ok() {
            let _ = std::fs::remove_dir_all(&dir);
        } else {
            eprintln!("operator logs in {}", dir.display());
        }
        result
    })
    .await
}

/// Runs the built kubectl as `who` (impersonated by the admin); returns the output, also
/// on failure.
fn kubectl_as(cp: &ControlPlane, who: &str, args: &[&str]) -> Result<std::process::Output> {
    Ok(std::process::Command::new(cp.tool("kubectl"))
        .env("KUBECONFIG", &cp.kubeconfig)
        .args(["--as", who])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()?)
}

const MATERIAL_POLICY: &str = "kubekms-material-writers";
const INTRUDER: &str = "e2e-intruder";

/// Item 3 of issue 13, and the KmsKeyMaterial watch: someone with RBAC on kmskeymaterials
/// in a namespace (but not the operator) tries to replace a key's record by another key's.
/// The ValidatingAdmissionPolicy of deploy/admission refuses the delete and the create
/// (the operator's ServiceAccount and system:masters are admitted). Without the policy,
/// the operator reports the deleted record at once (MaterialMissing: it watches records)
/// and refuses the foreign one (RecordMismatch): the status keeps the key's own id and no
/// rotation is written into the foreign record.
#[tokio::test]
async fn a_record_replaced_by_hand_is_refused_by_admission_and_by_the_operator() -> Result<()> {
    use k8s_openapi::api::events::v1::Event;
    let cp = ControlPlane::shared()?;
    cp.apply_crds()?;
    let rbac = repo_root().join("deploy/rbac");
    cp.kubectl(["apply".as_ref(), "-f".as_ref(), rbac.as_os_str()])?;
    in_namespace(cp, "records", move |client, ns| async move {
        let dir = std::env::temp_dir().join(kubekms_e2e::unique_name("kubekms-records"));
        std::fs::create_dir_all(&dir)?;
        let kubeconfig = dir.join("kubeconfig");
        cp.write_service_account_kubeconfig("kubekms-system", "kubekms-operator", &kubeconfig)?;
        let bin = kubekms_e2e::process::sibling_bin("KUBEKMS_OPERATOR_BIN", "kubekms-operator")?;
        let log_path = dir.join("operator.log");
        let log = std::fs::File::create(&log_path)?;
        let mut operator = std::process::Command::new(&bin)
            .env("KUBECONFIG", &kubeconfig)
            .arg("--root-key")
            .arg(dir.join("root.key"))
            .arg("--init-root-key")
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
            for name in ["victim", "other"] {
                keys.create(&PostParams::default(), &key_manifest(name, json!({}))?)
                    .await?;
            }
            let victim = key_where(&keys, "victim", "Enabled", |k| {
                state(k) == Some(KeyStateName::Enabled)
            })
            .await?;
            let victim_id = victim.status.and_then(|s| s.key_id).context("victim id")?;
            key_where(&keys, "other", "Enabled", |k| {
                state(k) == Some(KeyStateName::Enabled)
            })
            .await?;
            let other = records.get("other").await?;

            // The intruder may do anything with records in this namespace, as far as RBAC
            // goes.
            let grant = dir.join("intruder-rbac.json");
            std::fs::write(
                &grant,
                serde_json::to_vec(&json!({
                    "apiVersion": "v1", "kind": "List", "items": [
                        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                         "metadata": {"name": "records-admin", "namespace": ns},
                         "rules": [{"apiGroups": ["kubekms.io"], "resources": ["kmskeymaterials"],
                                    "verbs": ["*"]}]},
                        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                         "metadata": {"name": "records-admin", "namespace": ns},
                         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                     "name": "records-admin"},
                         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                                       "name": INTRUDER}]}
                    ]
                }))?,
            )?;
            cp.kubectl(["apply".as_ref(), "-f".as_ref(), grant.as_os_str()])?;
            // Another key's record under a given name.
            let forged = |name: &str| -> Result<String> {
                let path = dir.join(format!("forged-{name}.json"));
                std::fs::write(
                    &path,
                    serde_json::to_vec(&json!({
                        "apiVersion": "kubekms.io/v1alpha1", "kind": "KmsKeyMaterial",
                        "metadata": {"name": name, "namespace": ns},
                        "spec": other.spec,
                    }))?,
                )?;
                Ok(path.to_string_lossy().into_owned())
            };
            let probe = forged("probe")?;
            let replacement = forged("victim")?;
            let dry_run_create =
                |who: &str| kubectl_as(cp, who, &["create", "-f", &probe, "--dry-run=server"]);

            let policy = repo_root().join("deploy/admission/kmskeymaterial-writers.yaml");
            cp.kubectl(["apply".as_ref(), "-f".as_ref(), policy.as_os_str()])?;
            // A new policy takes effect within seconds; a server-side dry run goes through
            // admission without storing anything.
            let refusal = wait_for("the policy refusing the intruder", || async {
                let out = dry_run_create(INTRUDER)?;
                let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
                Ok((!out.status.success() && stderr.contains(MATERIAL_POLICY)).then_some(stderr))
            })
            .await?;
            ensure!(
                refusal.contains("only the kubekms operator") && refusal.contains(INTRUDER),
                "the refusal does not say why: {refusal}"
            );
            let out = kubectl_as(
                cp,
                INTRUDER,
                &[
                    "delete",
                    "kmskeymaterial",
                    "victim",
                    "-n",
                    &ns,
                    "--wait=false",
                ],
            )?;
            ensure!(
                !out.status.success()
                    && String::from_utf8_lossy(&out.stderr).contains(MATERIAL_POLICY),
                "the intruder's delete was not refused: {out:?}"
            );
            let out = kubectl_as(cp, INTRUDER, &["create", "-f", &forged("victim-2")?])?;
            ensure!(
                !out.status.success()
                    && String::from_utf8_lossy(&out.stderr).contains(MATERIAL_POLICY),
                "the intruder's create was not refused: {out:?}"
            );
            ensure!(records.get_opt("victim").await?.is_some(), "record gone");
            // Admitted: the operator's ServiceAccount, and system:masters (the admin
            // kubeconfig hack/local-up.sh runs the operator with).
            let out = dry_run_create("system:serviceaccount:kubekms-system:kubekms-operator")?;
            ensure!(
                out.status.success(),
                "the operator's ServiceAccount was refused: {out:?}"
            );
            cp.kubectl(["create", "-f", &probe, "--dry-run=server"])?;

            // Without the policy, the operator refuses.
            cp.kubectl([
                "delete",
                "validatingadmissionpolicybinding",
                MATERIAL_POLICY,
            ])?;
            wait_for("the policy admitting the intruder once unbound", || async {
                Ok(dry_run_create(INTRUDER)?.status.success().then_some(()))
            })
            .await?;
            let out = kubectl_as(
                cp,
                INTRUDER,
                &[
                    "delete",
                    "kmskeymaterial",
                    "victim",
                    "-n",
                    &ns,
                    "--wait=false",
                ],
            )?;
            ensure!(out.status.success(), "delete: {out:?}");
            let ready_reason = |k: &KmsKey| {
                k.status
                    .as_ref()
                    .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                    .map(|c| c.reason.clone())
            };
            key_where(&keys, "victim", "MaterialMissing, reported at once", |k| {
                ready_reason(k).as_deref() == Some("MaterialMissing")
            })
            .await?;
            let out = kubectl_as(cp, INTRUDER, &["create", "-f", &replacement])?;
            ensure!(out.status.success(), "create: {out:?}");
            let refused = key_where(&keys, "victim", "RecordMismatch", |k| {
                ready_reason(k).as_deref() == Some("RecordMismatch")
            })
            .await?;
            ensure!(
                refused.status.as_ref().and_then(|s| s.key_id.as_deref())
                    == Some(victim_id.as_str()),
                "the status was rebuilt from the foreign record: {:?}",
                refused.status
            );
            let events: Api<Event> = Api::namespaced(client.clone(), &ns);
            wait_for("a RecordMismatch Warning Event", || async {
                Ok(events
                    .list(&Default::default())
                    .await?
                    .items
                    .into_iter()
                    .find(|e| {
                        e.reason.as_deref() == Some("RecordMismatch")
                            && e.type_.as_deref() == Some("Warning")
                            && e.regarding.as_ref().and_then(|r| r.name.as_deref())
                                == Some("victim")
                    }))
            })
            .await?;
            // A rotation asked for now is not written into the foreign record. Evidence that
            // the operator looked at the new generation: its observedGeneration.
            patch_spec(
                &keys,
                "victim",
                json!({"rotation": {"onDemandToken": "now"}}),
            )
            .await?;
            let generation = keys.get("victim").await?.metadata.generation;
            key_where(&keys, "victim", "the new generation observed", |k| {
                k.status.as_ref().and_then(|s| s.observed_generation) == generation
            })
            .await?;
            let record = records.get("victim").await?;
            ensure!(
                record.spec == other.spec,
                "the operator wrote into the foreign record: {:?}",
                record.spec
            );
            Ok(())
        }
        .await;
        let _ = operator.kill();
        let _ = operator.wait();
        let _ = cp.kubectl([
            "delete",
            "validatingadmissionpolicybinding",
            MATERIAL_POLICY,
            "--ignore-not-found",
        ]);
        let _ = cp.kubectl([
            "delete",
            "validatingadmissionpolicy",
            MATERIAL_POLICY,
            "--ignore-not-found",
        ]);
        let logged = std::fs::read_to_string(&log_path).unwrap_or_default();
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
            eprintln!("operator files in {}", dir.display());
        }
        result
    })
    .await
}

/// The operator's two clients (operator/src/clients.rs): a quiet watch must not break on
/// the call client's read timeout. Two watches of nothing (a label no object has), one
/// through each client, the call timeout cut to 1 s: the call client's watch fails (the
/// evidence that the quiet period outlasted the read timeout), the watch client's does not.
#[tokio::test]
async fn a_quiet_watch_outlasts_the_call_read_timeout() -> Result<()> {
    use futures::StreamExt as _;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::config::{KubeConfigOptions, Kubeconfig};
    use kube::runtime::watcher;
    let cp = ControlPlane::shared()?;
    in_namespace(cp, "quietwatch", move |_client, ns| async move {
        let config = kube::Config::from_custom_kubeconfig(
            Kubeconfig::read_from(&cp.kubeconfig)?,
            &KubeConfigOptions::default(),
        )
        .await?;
        let clients = kubekms_operator::clients::clients(config, Duration::from_secs(1))?;
        let quiet = watcher::Config::default().labels("e2e.kubekms.io/quiet=yes");
        let failures = |client: Client| {
            watcher::watcher(Api::<ConfigMap>::namespaced(client, &ns), quiet.clone())
                .filter_map(|event| async move { event.err().map(|e| e.to_string()) })
                .boxed()
        };
        let mut through_calls = failures(clients.calls.clone());
        let mut through_watches = failures(clients.watches.clone());
        let started = Instant::now();
        let call_failure = tokio::select! {
            failure = through_calls.next() => failure.context("the watch ended")?,
            failure = through_watches.next() => {
                bail!("the watch client's quiet watch failed after {:?}: {failure:?}", started.elapsed())
            }
            () = tokio::time::sleep(WAIT) => bail!("the call client's watch never failed within {WAIT:?}"),
        };
        let quiet_for = started.elapsed();
        // The watch client's watch has been as quiet for as long: it must not have failed.
        let pending = futures::poll!(through_watches.next());
        ensure!(
            pending.is_pending(),
            "the watch client's quiet watch failed too: {pending:?}"
        );
        eprintln!(
            "quiet watch: the call client's watch failed after {quiet_for:?} ({call_failure}); the watch client's kept going"
        );
        Ok(())
    })
    .await
}
