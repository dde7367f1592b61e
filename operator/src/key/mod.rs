//! The KmsKey reconciler.
//!
//! The KmsKeyMaterial record of the same name is the source of truth for a key's identity,
//! material versions and dates; the KmsKey spec says what should happen; the status is
//! recomputed from both on every pass (nothing in it is authoritative), except that the key
//! id it shows is what the operator recorded: a record holding another key's id is refused.
//!
//! A pass is a pure [`plan::plan`] (or [`plan::plan_held`] for a key being deleted) carried
//! out by the thin executor here: read the record (create it, with version 1, if there is
//! none), plan, then write in order the spec's `enabled` (a cancelled deletion), the record
//! with any new material versions (generated and wrapped on a blocking thread: an RSA-4096
//! key takes seconds), one page of Secrets to re-encrypt, the status by server-side apply
//! if it changed, and the Events; requeue at the next due time.
//!
//! `kubectl delete` is held by the finalizer: the deletion is scheduled (the spec's window,
//! else 30 days) and only when it has passed is the record, and with it the material,
//! deleted and the finalizer released.

pub mod material;
pub mod plan;
pub mod status;

use std::sync::Arc;

use kms_core::{KeyId, KeySpec, KeyState, Origin};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::{Resource, ResourceExt};
use kubekms_k8s::{KmsGrant, KmsKey, KmsKeyMaterial, KmsKeyMaterialSpec, KmsKeyStatus};

pub use self::plan::requeue_at;
use self::plan::{HeldPlan, Input, Plan, RootKey};
use self::status::Previous;
use crate::events::{Note, publish};
use crate::{Context, Error, protection, reencrypt};

/// The finalizer that holds a KmsKey until its material may be destroyed.
pub const FINALIZER: &str = "kubekms.io/material";

/// The longest a key waits before it is looked at again even when nothing is due, so a
/// clock that jumps (NTP, or the e2e test clock) is noticed within this time.
pub const MAX_REQUEUE: std::time::Duration = std::time::Duration::from_secs(6 * 60 * 60);

/// How often a protected key that is held or waiting is looked at without a change.
pub const PROTECTED_RECHECK: std::time::Duration = std::time::Duration::from_secs(15);
/// How long one write of a KmsKeyMaterial record may take.
pub const RECORD_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

const CONTROLLER: &str = "kmskey";

/// Reconciles one KmsKey.
///
/// # Errors
/// [`Error`] on API failures and damaged records; the controller retries with a back-off.
pub async fn reconcile(key: Arc<KmsKey>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics
        .measure(CONTROLLER, reconcile_key(key, &ctx))
        .await
}

/// What the controller does after a failed reconciliation.
pub fn error_policy(key: Arc<KmsKey>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(
        namespace = key.namespace().unwrap_or_default(),
        name = key.name_any(),
        %error,
        "KmsKey reconciliation failed; retrying"
    );
    Action::requeue(std::time::Duration::from_secs(5))
}

/// How long a reconciliation waits for the first list of the plugins' heartbeat Leases.
const HEARTBEATS_LISTED_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

async fn reconcile_key(key: Arc<KmsKey>, ctx: &Context) -> Result<Action, Error> {
    // Protection reads the heartbeats: acting before they are listed (just after a start)
    // could disable or delete a served key that merely looks unserved.
    if !matches!(
        tokio::time::timeout(HEARTBEATS_LISTED_WAIT, ctx.plugin_leases.wait_until_ready()).await,
        Ok(Ok(()))
    ) {
        tracing::info!(
            name = key.name_any(),
            "the plugins' heartbeat Leases are not listed yet; looking again shortly"
        );
        return Ok(Action::requeue(std::time::Duration::from_secs(2)));
    }
    let namespace = key
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let keys: Api<KmsKey> = Api::namespaced(ctx.client.clone(), &namespace);
    let records: Api<KmsKeyMaterial> = Api::namespaced(ctx.client.clone(), &namespace);
    let held =
        key.meta().deletion_timestamp.is_some() && key.finalizers().iter().any(|f| f == FINALIZER);
    if held {
        return hold_or_destroy(key, ctx, &keys, &records, &namespace).await;
    }
    finalizer(&keys, FINALIZER, key, |event| async {
        match event {
            FinalizerEvent::Apply(key) => apply(&key, ctx, &keys, &records, &namespace).await,
            // Reached only through hold_or_destroy once the window has passed.
            FinalizerEvent::Cleanup(key) => destroy(&key, ctx, &records, &namespace).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// A KmsKey being deleted: schedule the deletion if it is not, hold while the window
/// runs or a plugin serves the key, destroy the material and release the finalizer once
/// the window has passed.
async fn hold_or_destroy(
    key: Arc<KmsKey>,
    ctx: &Context,
    keys: &Api<KmsKey>,
    records: &Api<KmsKeyMaterial>,
    namespace: &str,
) -> Result<Action, Error> {
    let name = key.name_any();
    let now = ctx.clock.now();
    let served = protection::served_by(&ctx.plugin_leases, &ctx.lease_observer, namespace, &name);
    let record = records.get_opt(&name).await?;
    let account = ctx.account_id(namespace);
    let planned = plan::plan_held(
        &key.spec,
        record.as_ref().map(|r| &r.spec),
        Previous::of(&key),
        &served,
        now,
        &ctx.scope,
        &account,
    )?;
    match planned {
        HeldPlan::Refuse { status, notes } => {
            write_status(keys, &key, status).await?;
            publish(ctx, &key.object_ref(&()), notes).await;
            Ok(Action::await_change())
        }
        HeldPlan::Hold {
            record: scheduled,
            status,
            notes,
            requeue,
        } => {
            if let (Some(spec), Some(mut record)) = (scheduled, record) {
                record.spec = *spec;
                records
                    .replace(&name, &PostParams::default(), &record)
                    .await?;
            }
            write_status(keys, &key, status).await?;
            publish(ctx, &key.object_ref(&()), notes).await;
            Ok(requeue)
        }
        HeldPlan::Destroy => finalizer(keys, FINALIZER, key, |event| async {
            match event {
                FinalizerEvent::Cleanup(key) => destroy(&key, ctx, records, namespace).await,
                // The object is being deleted, so the helper only ever asks for cleanup here.
                FinalizerEvent::Apply(_) => Ok(Action::await_change()),
            }
        })
        .await
        .map_err(|e| Error::Finalizer(Box::new(e))),
    }
}

/// The window has passed: delete the record (destroying the wrapped material) and the
/// grants on the key. The finalizer helper then releases the KmsKey.
async fn destroy(
    key: &KmsKey,
    ctx: &Context,
    records: &Api<KmsKeyMaterial>,
    namespace: &str,
) -> Result<Action, Error> {
    let name = key.name_any();
    let mut notes = Vec::new();
    if let Some(record) = records.get_opt(&name).await? {
        let recorded = key.status.as_ref().and_then(|s| s.key_id.as_deref());
        if let Some(recorded) = recorded
            && recorded != record.spec.key_id
        {
            // Another key's record under this name (replaced since the pass was planned):
            // not ours to destroy, and the finalizer stays until the next pass reports it.
            return Err(Error::RecordMismatch {
                recorded: recorded.to_owned(),
                found: record.spec.key_id,
            });
        }
        records.delete(&name, &DeleteParams::default()).await?;
        notes.push(Note::normal(
            "MaterialDestroyed",
            "Delete",
            format!(
                "the deletion window has passed: the material of key {} is destroyed",
                recorded.unwrap_or("(unknown id)")
            ),
        ));
    }
    let grants: Api<KmsGrant> = Api::namespaced(ctx.client.clone(), namespace);
    for grant in grants.list(&ListParams::default()).await? {
        if grant.spec.key_ref.name == name {
            grants
                .delete(&grant.name_any(), &DeleteParams::default())
                .await?;
        }
    }
    publish(ctx, &key.object_ref(&()), notes).await;
    ctx.metrics.key_state(&status::metric_name(key), None);
    tracing::info!(
        namespace,
        name,
        "key material destroyed; finalizer released"
    );
    Ok(Action::await_change())
}

/// The record of a KmsKey that has none yet, or why there is none.
enum NewRecord {
    /// Created, with version 1 (none for EXTERNAL).
    Created(Box<KmsKeyMaterial>, Note),
    /// The key existed and its record is gone, or the spec is unusable: the status to
    /// show and the Events to publish instead.
    Refused(Box<KmsKeyStatus>, Vec<Note>),
}

/// Creates the record of a key that has none: a fresh key id, version 1 generated and
/// wrapped (on a blocking thread), the rotation schedule the spec asks for.
async fn create_record(
    key: &KmsKey,
    ctx: &Context,
    records: &Api<KmsKeyMaterial>,
    namespace: &str,
) -> Result<NewRecord, Error> {
    let previous = Previous::of(key);
    let now = ctx.clock.now();
    if let Some(lost_id) = previous.key_id() {
        let (status, notes) = status::material_missing(previous, lost_id, now);
        return Ok(NewRecord::Refused(Box::new(status), notes));
    }
    let name = key.name_any();
    let root_key_id = ctx.root_keys.root_key_id();
    let (mut spec, new_versions) =
        match plan::new_record(&key.spec, KeyId::generate()?, &root_key_id, now) {
            Ok(planned) => planned,
            Err(error) => {
                let (status, notes) = status::invalid(previous, &error.to_string(), now);
                return Ok(NewRecord::Refused(Box::new(status), notes));
            }
        };
    let wrapped =
        material::wrap_new_versions(ctx.root_keys.clone(), &spec, namespace, &name, new_versions)
            .await?;
    spec.versions.extend(wrapped);
    let mut record = KmsKeyMaterial::new(&name, spec);
    record.metadata.namespace = Some(namespace.to_owned());
    let record = records.create(&PostParams::default(), &record).await?;
    let note = Note::normal(
        "KeyCreated",
        "Create",
        format!(
            "created key {} ({}, {}, origin {}){}",
            record.spec.key_id,
            KeySpec::from(record.spec.key_spec),
            kms_core::KeyUsage::from(record.spec.key_usage),
            Origin::from(record.spec.origin),
            if record.spec.versions.is_empty() {
                "; waiting for imported material".to_owned()
            } else {
                format!(
                    "; material version 1 wrapped under root key {}",
                    record.spec.root_key_id
                )
            }
        ),
    );
    Ok(NewRecord::Created(Box::new(record), note))
}

/// The normal pass over a live KmsKey.
async fn apply(
    key: &KmsKey,
    ctx: &Context,
    keys: &Api<KmsKey>,
    records: &Api<KmsKeyMaterial>,
    namespace: &str,
) -> Result<Action, Error> {
    let name = key.name_any();
    let mut notes = Vec::new();
    let record = match records.get_opt(&name).await? {
        Some(record) => record,
        None => match create_record(key, ctx, records, namespace).await? {
            NewRecord::Created(record, note) => {
                notes.push(note);
                *record
            }
            NewRecord::Refused(status, notes) => {
                write_status(keys, key, *status).await?;
                publish(ctx, &key.object_ref(&()), notes).await;
                return Ok(Action::await_change());
            }
        },
    };
    let root_key_id = ctx.root_keys.root_key_id();
    let served = protection::served_by(&ctx.plugin_leases, &ctx.lease_observer, namespace, &name);
    let account = ctx.account_id(namespace);
    let input = Input {
        spec: &key.spec,
        record: &record.spec,
        previous: Previous::of(key),
        served: &served,
        now: ctx.clock.now(),
        root: RootKey {
            id: &root_key_id,
            holds_record_root: ctx.root_keys.holds(&record.spec.root_key_id),
        },
        scope: &ctx.scope,
        account: &account,
    };
    let pass = match plan::plan(&input) {
        Plan::Refuse {
            status,
            notes: more,
        } => {
            notes.extend(more);
            write_status(keys, key, *status).await?;
            publish(ctx, &key.object_ref(&()), notes).await;
            return Ok(Action::await_change());
        }
        Plan::DeleteKey { notes: more } => {
            // The finalizer then destroys the material (see hold_or_destroy).
            keys.delete(&name, &DeleteParams::default()).await?;
            notes.extend(more);
            publish(ctx, &key.object_ref(&()), notes).await;
            return Ok(Action::await_change());
        }
        Plan::Apply(pass) => *pass,
    };
    execute(key, ctx, keys, records, record, pass, notes).await
}

/// Carries out a normal pass.
async fn execute(
    key: &KmsKey,
    ctx: &Context,
    keys: &Api<KmsKey>,
    records: &Api<KmsKeyMaterial>,
    mut record: KmsKeyMaterial,
    pass: plan::Pass,
    mut notes: Vec<Note>,
) -> Result<Action, Error> {
    let name = key.name_any();
    let namespace = key.namespace().unwrap_or_default();
    if pass.disable_in_spec {
        let patch = serde_json::json!({"spec": {"enabled": false}});
        keys.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    if let Some(mut next) = pass.record {
        let wrapped = material::wrap_new_versions(
            ctx.root_keys.clone(),
            &next,
            &namespace,
            &name,
            pass.new_versions,
        )
        .await?;
        next.versions.extend(wrapped);
        let promoted = effective_current(&next) > effective_current(&record.spec);
        record.spec = next;
        // Carries the resourceVersion read: a record changed meanwhile is a conflict
        // (409) and the pass is retried from a fresh read, so nothing is lost or doubled.
        // Bounded even without the call client's read timeout: a rotation, or the
        // promotion of a staged version, must not wait on an API server that never
        // answers; the pass is retried.
        tokio::time::timeout(
            RECORD_WRITE_TIMEOUT,
            records.replace(&name, &PostParams::default(), &record),
        )
        .await
        .map_err(|_| Error::Timeout("writing the KmsKeyMaterial record", RECORD_WRITE_TIMEOUT))??;
        if promoted {
            ctx.metrics.version_promoted();
        }
    }
    notes.extend(pass.notes);
    let mut status = pass.status;
    let mut action = pass.requeue;
    if pass.rewrite_secrets
        && let Some(progress) = status.reencryption.as_mut()
    {
        let rewritten = reencrypt::rewrite_page(
            &ctx.rewrite_client,
            &ctx.reencrypt_limit,
            progress,
            ctx.reencryption,
            &kubekms_k8s::convert::format_time(ctx.clock.now()),
        )
        .await?;
        ctx.metrics.secrets_reencrypted(rewritten);
        if progress.phase == reencrypt::PHASE_DONE {
            // `finished` is when the last page ended, not when it began.
            progress.finished = Some(kubekms_k8s::convert::format_time(ctx.clock.now()));
            notes.push(reencryption_done(progress, &record.spec));
        } else {
            // The next page at once: the pace is the adaptive limit's.
            action = Action::requeue(std::time::Duration::ZERO);
        }
    }
    let state = status.key_state;
    ctx.metrics.promotion_waiting(
        &status::metric_name(key),
        status
            .conditions
            .iter()
            .any(|c| c.type_ == plan::PROMOTION_CONDITION),
    );
    write_status(keys, key, status).await?;
    publish(ctx, &key.object_ref(&()), notes).await;
    if let Some(state) = state {
        ctx.metrics.key_state(
            &status::metric_name(key),
            Some(KeyState::from(state).as_str()),
        );
    }
    Ok(action)
}

/// The version a record encrypts under: its currentVersion, else its newest.
fn effective_current(record: &KmsKeyMaterialSpec) -> u32 {
    record
        .current_version
        .or_else(|| record.versions.last().map(|v| v.version))
        .unwrap_or(0)
}

fn reencryption_done(
    progress: &kubekms_k8s::ReencryptionStatus,
    record: &KmsKeyMaterialSpec,
) -> Note {
    if progress.secrets_failed == 0 {
        Note::normal(
            "ReencryptionDone",
            "Reencrypt",
            format!(
                "{} Secrets rewritten: none is stored under a version of key {} older than {}",
                progress.secrets_rewritten, record.key_id, progress.target_version
            ),
        )
    } else {
        Note::warning(
            "ReencryptionIncomplete",
            "Reencrypt",
            format!(
                "{} Secrets rewritten under version {} of key {}; kube-apiserver refused to store {} again (they still read under their older version): {}",
                progress.secrets_rewritten,
                progress.target_version,
                record.key_id,
                progress.secrets_failed,
                progress.failed_secrets.join("; ")
            ),
        )
    }
}

/// Writes the status by server-side apply, only when it changed.
async fn write_status(keys: &Api<KmsKey>, key: &KmsKey, status: KmsKeyStatus) -> Result<(), Error> {
    crate::apply_status(keys, key, key.status.as_ref(), &status).await
}
