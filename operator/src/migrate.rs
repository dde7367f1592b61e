//! Moving every KmsKeyMaterial record from a previous root key (a root key file) to the
//! primary one (a PKCS#11 token), while the cluster keeps running (docs/hsm.md,
//! "Migrating from a root key file").
//!
//! The leader runs passes until none is left: each pass lists the records and moves the
//! ones that still hold a version not wrapped by the primary store, one record at a time.
//! Moving a record unwraps each version with the store that wrapped it, wraps it under the
//! primary, unwraps it again under the primary and compares (constant time) before
//! anything is written ([`kms_core::keystore::rewrap`]); then the record is replaced in
//! one write carrying the resourceVersion that was read. A record changed meanwhile (a
//! rotation) is a conflict and is taken again in the next pass; a kill at any point leaves
//! every record either as it was or fully moved, and the next leader carries on.
//!
//! Progress: the `kubekms_operator_root_key_migration_records{state}` gauges, a log line
//! per pass, an Event on each record moved (`RootKeyMigrated`) or that cannot be
//! (`RootKeyMigrationFailed`).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use kms_core::keystore::{MigratingKeyStore, RootKeyStore, rewrap, wrapped_by};
use kube::api::{ListParams, PostParams};
use kube::{Api, Resource as _, ResourceExt as _};
use kubekms_k8s::{KmsKeyMaterial, KmsKeyMaterialSpec};
use tokio::sync::watch;

use crate::Context;
use crate::events::{Note, publish};
use crate::run::until_shutdown;

/// How long one list or replace call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between passes while records are left (conflicts, failures, an API error).
const RETRY_EVERY: Duration = Duration::from_secs(5);
/// Pause between passes once every record is moved: a record restored from an old backup
/// or applied by hand under the previous root key is moved too.
const CHECK_EVERY: Duration = Duration::from_secs(60);

/// How fast records are moved.
#[derive(Debug, Clone, Copy)]
pub struct MigrationConfig {
    /// At most this many records moved per second (each is one unwrap and two token
    /// operations per version, and one write).
    pub records_per_second: u32,
}

/// Whether `record` needs moving to `primary`: a version not wrapped by it, or the
/// record's `rootKeyId` not naming it.
#[must_use]
pub fn needs_rewrap(record: &KmsKeyMaterialSpec, primary: &dyn RootKeyStore) -> bool {
    record.root_key_id != primary.root_key_id()
        || record.versions.iter().any(|version| {
            BASE64
                .decode(&version.wrapped)
                .map_or(true, |wrapped| !wrapped_by(primary, &wrapped))
        })
}

/// Why a record could not be moved. Names the key and version, never material.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The record does not parse (its key id), or lacks its namespace.
    #[error("{0}")]
    Record(String),
    /// A version is not base64.
    #[error("key {key_id} version {version}: the wrapped material is not base64")]
    NotBase64 {
        /// The key id.
        key_id: String,
        /// The version.
        version: u32,
    },
    /// A store refused (unwrap under the old root key, wrap or check under the new one).
    #[error("key {key_id} version {version}: {source}")]
    Store {
        /// The key id.
        key_id: String,
        /// The version.
        version: u32,
        /// The store's error.
        source: kms_core::KmsError,
    },
    /// The blocking task did not finish.
    #[error("rewrapping: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The records could not be listed (nothing was written).
    #[error("listing the KmsKeyMaterial records: {0}")]
    List(String),
}

/// The record's spec with every version wrapped by `to` and `rootKeyId` naming it;
/// versions already wrapped by `to` are kept as they are. Blocking (token calls).
///
/// # Errors
/// [`MigrateError`]; nothing is returned unless every version was checked.
pub fn rewrap_record(
    from: &dyn RootKeyStore,
    to: &dyn RootKeyStore,
    namespace: &str,
    name: &str,
    record: &KmsKeyMaterialSpec,
) -> Result<KmsKeyMaterialSpec, MigrateError> {
    let mut next = record.clone();
    for version in &mut next.versions {
        let context = kubekms_k8s::convert::wrap_context(record, namespace, name, version.version)
            .map_err(|e| MigrateError::Record(format!("KmsKeyMaterial {namespace}/{name}: {e}")))?;
        let wrapped = BASE64
            .decode(&version.wrapped)
            .map_err(|_| MigrateError::NotBase64 {
                key_id: record.key_id.clone(),
                version: version.version,
            })?;
        let moved = rewrap(from, to, &context, &wrapped).map_err(|source| MigrateError::Store {
            key_id: record.key_id.clone(),
            version: version.version,
            source,
        })?;
        version.wrapped = BASE64.encode(moved);
    }
    next.root_key_id = to.root_key_id();
    Ok(next)
}

/// What one pass found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Records listed.
    pub records: usize,
    /// Records already under the primary root key before this pass.
    pub already: usize,
    /// Records moved by this pass.
    pub moved: usize,
    /// Records changed meanwhile (409): taken again next pass.
    pub conflicts: usize,
    /// Records that cannot be moved (see their Events).
    pub failed: usize,
}

impl PassReport {
    /// Records still under a previous root key.
    #[must_use]
    pub fn pending(&self) -> usize {
        self.records - self.already - self.moved
    }
}

fn api(client: &kube::Client, namespace: Option<&str>) -> Api<KmsKeyMaterial> {
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// One pass over the records of `namespace` (every namespace when `None`).
///
/// # Errors
/// [`MigrateError::List`]: the list call failed or timed out (nothing was written then).
pub async fn pass(
    ctx: &Context,
    stores: &Arc<MigratingKeyStore>,
    namespace: Option<&str>,
    config: MigrationConfig,
    shutdown: &watch::Receiver<bool>,
) -> Result<PassReport, MigrateError> {
    let primary = stores.primary().clone();
    let list = tokio::time::timeout(
        CALL_TIMEOUT,
        api(&ctx.client, namespace).list(&ListParams::default()),
    )
    .await
    .map_err(|_| MigrateError::List(format!("no answer in {}s", CALL_TIMEOUT.as_secs())))?
    .map_err(|e| MigrateError::List(e.to_string()))?;
    let mut report = PassReport {
        records: list.items.len(),
        ..PassReport::default()
    };
    let pace = Duration::from_secs_f64(1.0 / f64::from(config.records_per_second.max(1)));
    for record in list.items {
        if *shutdown.borrow() {
            break;
        }
        if !needs_rewrap(&record.spec, &*primary) {
            report.already += 1;
            continue;
        }
        let (Some(ns), name) = (record.namespace(), record.name_any()) else {
            report.failed += 1;
            continue;
        };
        let started = tokio::time::Instant::now();
        let from: Arc<dyn RootKeyStore> = stores.clone();
        let to = primary.clone();
        let spec = record.spec.clone();
        let (task_ns, task_name) = (ns.clone(), name.clone());
        let moved = tokio::task::spawn_blocking(move || {
            rewrap_record(&*from, &*to, &task_ns, &task_name, &spec)
        })
        .await
        .map_err(MigrateError::from)
        .and_then(|r| r);
        let reference = record.object_ref(&());
        match moved {
            Err(error) => {
                report.failed += 1;
                tracing::warn!(record = %format!("{ns}/{name}"), %error, "root key migration: cannot move this record");
                publish(
                    ctx,
                    &reference,
                    vec![Note::warning(
                        "RootKeyMigrationFailed",
                        "MigrateRootKey",
                        format!(
                            "not moved to root key {}: {error}; the record is left as it was",
                            primary.root_key_id()
                        ),
                    )],
                )
                .await;
            }
            Ok(spec) => {
                let from_id = record.spec.root_key_id.clone();
                let versions = spec.versions.len();
                let key_id = spec.key_id.clone();
                let mut next = record.clone();
                next.spec = spec;
                // Carries the resourceVersion read: a record rotated meanwhile is a 409
                // and is taken again, from a fresh read, in the next pass.
                let written = tokio::time::timeout(
                    CALL_TIMEOUT,
                    Api::<KmsKeyMaterial>::namespaced(ctx.client.clone(), &ns).replace(
                        &name,
                        &PostParams::default(),
                        &next,
                    ),
                )
                .await;
                match written {
                    Ok(Ok(_)) => {
                        report.moved += 1;
                        ctx.metrics.root_key_migration_versions(versions as u64);
                        publish(
                            ctx,
                            &reference,
                            vec![Note::normal(
                                "RootKeyMigrated",
                                "MigrateRootKey",
                                format!(
                                    "{versions} versions of key {key_id} rewrapped from root key {from_id} to root key {} (each checked by unwrapping it)",
                                    primary.root_key_id()
                                ),
                            )],
                        )
                        .await;
                    }
                    Ok(Err(kube::Error::Api(status)))
                        if status.code == 409 || status.code == 404 =>
                    {
                        report.conflicts += 1;
                    }
                    Ok(Err(error)) => {
                        report.conflicts += 1;
                        tracing::warn!(record = %format!("{ns}/{name}"), %error, "root key migration: write failed; retried next pass");
                    }
                    Err(_) => {
                        report.conflicts += 1;
                        tracing::warn!(record = %format!("{ns}/{name}"), "root key migration: write timed out; retried next pass");
                    }
                }
            }
        }
        // The pace: at most `records_per_second` records moved.
        tokio::time::sleep_until(started + pace).await;
    }
    ctx.metrics
        .root_key_migration_records(report.already + report.moved, report.pending());
    Ok(report)
}

/// Runs passes until shutdown: every [`RETRY_EVERY`] while records are left, every
/// [`CHECK_EVERY`] once none is.
pub async fn run(
    ctx: Arc<Context>,
    stores: Arc<MigratingKeyStore>,
    namespace: Option<String>,
    config: MigrationConfig,
    shutdown: watch::Receiver<bool>,
) {
    let from = stores.previous_root_key_ids().join(", ");
    let to = stores.primary().root_key_id();
    tracing::info!(
        from,
        to,
        "root key migration: moving every KmsKeyMaterial record to the primary root key"
    );
    let mut announced_done = false;
    loop {
        let wait = match pass(&ctx, &stores, namespace.as_deref(), config, &shutdown).await {
            Ok(report) => {
                let done = report.pending() == 0;
                tracing::info!(
                    records = report.records,
                    under_new_root_key = report.already + report.moved,
                    moved = report.moved,
                    pending = report.pending(),
                    conflicts = report.conflicts,
                    failed = report.failed,
                    done,
                    "root key migration pass"
                );
                if done && !announced_done {
                    tracing::info!(
                        to,
                        "root key migration done: every KmsKeyMaterial record is under the primary root key; see docs/hsm.md before removing the previous root key"
                    );
                }
                announced_done = done;
                if done { CHECK_EVERY } else { RETRY_EVERY }
            }
            Err(error) => {
                tracing::warn!(%error, "root key migration: listing the records failed; retrying");
                RETRY_EVERY
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = until_shutdown(shutdown.clone()) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use kms_core::KeyId;
    use kms_core::keystore::FileKeyStore;
    use kms_core::keystore::test_util::old_and_new_file_stores;
    use time::OffsetDateTime;

    use super::*;
    use crate::key::plan::NewVersion;
    use crate::test_util::wrapped_record;

    async fn record(root: &Arc<dyn RootKeyStore>, versions: u32) -> KmsKeyMaterialSpec {
        let spec = serde_json::json!({"keySpec": "ECC_NIST_P256", "keyUsage": "SIGN_VERIFY"});
        let key_id = KeyId::single_from_random([4; 16]);
        wrapped_record(root, spec, key_id, "ns", "k", versions).await
    }

    #[tokio::test]
    async fn a_record_is_moved_whole_and_then_needs_nothing() {
        let (_dir, old, new) = old_and_new_file_stores();
        let both = MigratingKeyStore::new(new.clone(), vec![old.clone()]).expect("both");
        let before = record(&old, 3).await;
        assert!(needs_rewrap(&before, &*new));
        assert!(!needs_rewrap(&before, &*old));
        let after = rewrap_record(&both, &*new, "ns", "k", &before).expect("moved");
        assert!(!needs_rewrap(&after, &*new));
        assert_eq!(after.root_key_id, new.root_key_id());
        assert_eq!(after.versions.len(), 3);
        for (a, b) in before.versions.iter().zip(&after.versions) {
            assert_eq!((a.version, &a.created), (b.version, &b.created));
            assert_ne!(a.wrapped, b.wrapped);
            let context =
                kubekms_k8s::convert::wrap_context(&after, "ns", "k", b.version).expect("context");
            let old_material = old
                .unwrap(&context, &BASE64.decode(&a.wrapped).expect("b64"))
                .expect("old");
            let new_material = new
                .unwrap(&context, &BASE64.decode(&b.wrapped).expect("b64"))
                .expect("new");
            assert_eq!(old_material.expose(), new_material.expose());
        }
        // Moving again changes nothing.
        assert_eq!(
            rewrap_record(&both, &*new, "ns", "k", &after).expect("again"),
            after
        );
    }

    /// A rotation during the migration names the new root key but leaves older versions
    /// under the old one: the record still needs moving, and is moved.
    #[tokio::test]
    async fn a_record_rotated_mid_migration_still_counts_as_pending() {
        let (_dir, old, new) = old_and_new_file_stores();
        let both: Arc<dyn RootKeyStore> =
            Arc::new(MigratingKeyStore::new(new.clone(), vec![old.clone()]).expect("both"));
        let mut mixed = record(&old, 2).await;
        let rotated = crate::key::material::wrap_new_versions(
            both.clone(),
            &mixed,
            "ns",
            "k",
            vec![NewVersion {
                version: 3,
                created: OffsetDateTime::UNIX_EPOCH,
                rotation_type: None,
            }],
        )
        .await
        .expect("rotated");
        mixed.versions.extend(rotated);
        mixed.root_key_id = new.root_key_id();
        assert!(needs_rewrap(&mixed, &*new));
        let after = rewrap_record(&*both, &*new, "ns", "k", &mixed).expect("moved");
        assert!(!needs_rewrap(&after, &*new));
        assert_eq!(
            after.versions[2], mixed.versions[2],
            "version 3 kept as it was"
        );
    }

    #[tokio::test]
    async fn a_record_under_an_unknown_root_key_is_not_moved() {
        let (dir, old, new) = old_and_new_file_stores();
        let stranger: Arc<dyn RootKeyStore> =
            Arc::new(FileKeyStore::init(&dir.path().join("other.key")).expect("other"));
        let both = MigratingKeyStore::new(new.clone(), vec![old]).expect("both");
        let foreign = record(&stranger, 1).await;
        let error = rewrap_record(&both, &*new, "ns", "k", &foreign).expect_err("refused");
        assert!(
            matches!(error, MigrateError::Store { version: 1, .. }),
            "{error}"
        );
        // Bound to its object: the same record under another name is refused too.
        let (_d2, old2, new2) = old_and_new_file_stores();
        let both2 = MigratingKeyStore::new(new2.clone(), vec![old2.clone()]).expect("both");
        let moved_elsewhere = record(&old2, 1).await;
        assert!(rewrap_record(&both2, &*new2, "ns", "other", &moved_elsewhere).is_err());
    }
}
