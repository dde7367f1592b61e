//! The KmsKey reconciler.
//!
//! The KmsKeyMaterial record of the same name is the source of truth for a key's identity,
//! material versions and dates; the KmsKey spec says what should happen; the status is
//! recomputed from both on every pass (nothing in it is authoritative).
//!
//! One pass, in order: create the record if there is none (generating and wrapping
//! material); act on a scheduled or withdrawn deletion; keep the automatic rotation
//! schedule; rotate when due (a missed rotation happens once); rotate once per new
//! on-demand token; write the record if it changed; write the status by server-side apply
//! if it changed; publish an Event per transition; requeue at the next due time.
//!
//! `kubectl delete` is held by the finalizer: the deletion is scheduled (the spec's window,
//! else 30 days) and only when it has passed is the record, and with it the material,
//! deleted and the finalizer released.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use kms_core::key::{DEFAULT_PENDING_WINDOW_DAYS, KeyMetadata};
use kms_core::keystore::{KeyOwner, WrapContext};
use kms_core::{KeyId, KeyMaterial, KeySpec, KeyState, KmsError, Origin, RotationType};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::{Resource, ResourceExt};
use kubekms_k8s::KmsKeyStatus;
use kubekms_k8s::convert::{self, format_time, parse_time};
use kubekms_k8s::material::WrappedVersion;
use kubekms_k8s::names::{KeySpecName, KeyStateName, KeyUsageName, OriginName};
use kubekms_k8s::{Condition, KmsGrant, KmsKey, KmsKeyMaterial, KmsKeyMaterialSpec, KmsKeySpec};
use time::{Duration, OffsetDateTime};

use crate::events::{Note, publish};
use crate::{Context, Error, protection, reencrypt};

/// The finalizer that holds a KmsKey until its material may be destroyed.
pub const FINALIZER: &str = "kubekms.io/material";

/// The longest a key waits before it is looked at again even when nothing is due, so a
/// clock that jumps (NTP, or the e2e test clock) is noticed within this time.
pub const MAX_REQUEUE: std::time::Duration = std::time::Duration::from_secs(6 * 60 * 60);

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
/// runs, destroy the material and release the finalizer once it has passed.
async fn hold_or_destroy(
    key: Arc<KmsKey>,
    ctx: &Context,
    keys: &Api<KmsKey>,
    records: &Api<KmsKeyMaterial>,
    namespace: &str,
) -> Result<Action, Error> {
    let name = key.name_any();
    let now = ctx.clock.now();
    let mut notes = Vec::new();
    let served = protection::served_by(&ctx.plugin_leases, namespace, &name, now);
    if !served.is_empty()
        && let Some(record) = records.get_opt(&name).await?
    {
        // Held as long as a plugin serves the key: no window starts, nothing is destroyed.
        let message = protection::refusal(
            &served,
            "deleting the KmsKey",
            "its material would be destroyed while those Secrets need it; the object stays held",
        );
        let mut status = key_status(key.as_ref(), &key.spec, &record.spec, ctx, namespace);
        let notes = protect(
            key.as_ref(),
            &mut status,
            &served,
            Some(("DeleteRefused", message)),
            "Delete",
            now,
        );
        write_status(keys, &key, status).await?;
        publish(ctx, &key.object_ref(&()), notes).await;
        return Ok(Action::requeue(PROTECTED_RECHECK));
    }
    // No record (never created, or destroyed just before a crash): nothing to hold.
    if let Some(mut record) = records.get_opt(&name).await? {
        let date = match record.spec.deletion_date.as_deref() {
            Some(date) => parse_time("deletionDate", date)?,
            None => {
                let window = key
                    .spec
                    .deletion
                    .as_ref()
                    .map_or(DEFAULT_PENDING_WINDOW_DAYS, |d| d.pending_window_in_days);
                kms_core::key::validate_pending_window(window)?;
                let date = now + Duration::days(i64::from(window));
                record.spec.deletion_date = Some(format_time(date));
                record = records
                    .replace(&name, &PostParams::default(), &record)
                    .await?;
                notes.push(Note::normal(
                        "DeletionScheduled",
                        "ScheduleDeletion",
                        format!(
                            "the KmsKey was deleted: its material is destroyed at {} ({window} days); until then the object is held",
                            format_time(date)
                        ),
                    ));
                date
            }
        };
        if date > now {
            let status = key_status(&key, &key.spec, &record.spec, ctx, namespace);
            write_status(keys, &key, status).await?;
            publish(ctx, &key.object_ref(&()), notes).await;
            return Ok(requeue_at(date, now));
        }
    }
    finalizer(keys, FINALIZER, key, |event| async {
        match event {
            FinalizerEvent::Cleanup(key) => destroy(&key, ctx, records, namespace).await,
            // The object is being deleted, so the helper only ever asks for cleanup here.
            FinalizerEvent::Apply(_) => Ok(Action::await_change()),
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
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
    if records.get_opt(&name).await?.is_some() {
        records.delete(&name, &DeleteParams::default()).await?;
        notes.push(Note::normal(
            "MaterialDestroyed",
            "Delete",
            format!(
                "the deletion window has passed: the material of key {} is destroyed",
                key.status
                    .as_ref()
                    .and_then(|s| s.key_id.as_deref())
                    .unwrap_or("(unknown id)")
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
    ctx.metrics.key_state(&format!("{namespace}/{name}"), None);
    tracing::info!(
        namespace,
        name,
        "key material destroyed; finalizer released"
    );
    Ok(Action::await_change())
}

/// Generates material for the version `context` names and wraps it under the root key,
/// bound to that context. The plaintext lives only inside this function (zeroized on drop
/// by kms-core).
fn new_wrapped_version(
    ctx: &Context,
    context: &WrapContext,
    created: OffsetDateTime,
    rotation_type: Option<RotationType>,
) -> Result<WrappedVersion, Error> {
    let material = KeyMaterial::generate(context.spec)?;
    let wrapped = ctx.root_keys.wrap(context, material.serialized())?;
    Ok(WrappedVersion {
        version: context.version,
        created: format_time(created),
        rotation_type: rotation_type.map(Into::into),
        wrapped: BASE64.encode(wrapped),
    })
}

fn wrap_context(metadata: &KeyMetadata, owner: &KeyOwner, version: u32) -> WrapContext {
    WrapContext {
        key_id: metadata.key_id,
        version,
        spec: metadata.spec,
        usage: metadata.usage,
        origin: metadata.origin,
        owner: Some(owner.clone()),
    }
}

/// A new record for a KmsKey: a fresh key id, version 1 (none for EXTERNAL), the rotation
/// schedule and deletion date the spec asks for. An on-demand token already present at
/// creation is taken as acted on: it asks for no rotation of a key that was just made.
fn new_record(
    spec: &KmsKeySpec,
    ctx: &Context,
    owner: &KeyOwner,
    now: OffsetDateTime,
) -> Result<KmsKeyMaterialSpec, Error> {
    let key_spec = KeySpec::from(spec.key_spec);
    let usage = convert::effective_usage(spec);
    let origin = Origin::from(spec.origin);
    let key_id = KeyId::generate()?;
    // Validates the spec/usage/origin combination as CreateKey does.
    let metadata = KeyMetadata::new(key_id, key_spec, usage, origin, now)?;
    let versions = match origin {
        Origin::AwsKms => vec![new_wrapped_version(
            ctx,
            &wrap_context(&metadata, owner, 1),
            now,
            None,
        )?],
        Origin::External => Vec::new(),
    };
    let rotation = spec.rotation.as_ref();
    let automatic = rotation.filter(|r| r.automatic);
    Ok(KmsKeyMaterialSpec {
        key_id: key_id.to_string(),
        key_spec: KeySpecName::from(key_spec),
        key_usage: KeyUsageName::from(usage),
        origin: OriginName::from(origin),
        created_at: format_time(metadata.created),
        root_key_id: ctx.root_keys.root_key_id(),
        versions,
        on_demand_rotations: 0,
        last_on_demand_token: rotation.and_then(|r| r.on_demand_token.clone()),
        next_rotation_time: automatic
            .map(|r| format_time(now + Duration::days(i64::from(r.period_in_days)))),
        rotation_period_in_days: automatic.map(|r| r.period_in_days),
        deletion_date: None,
    })
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
    let owner = KeyOwner::new(namespace, &name);
    let now = ctx.clock.now();
    let mut notes = Vec::new();
    let mut spec = key.spec.clone();
    let record = match records.get_opt(&name).await? {
        Some(record) => record,
        None => {
            if let Some(lost_id) = key.status.as_ref().and_then(|s| s.key_id.clone()) {
                // The key existed and its record is gone (deleted by hand): making a new key
                // under the same name would silently change the key id. Report it instead.
                let mut status = key.status.clone().unwrap_or_default();
                set_ready(
                    &mut status,
                    false,
                    "MaterialMissing",
                    format!(
                        "the KmsKeyMaterial record of key {lost_id} is missing; restore it from a backup"
                    ),
                    now,
                    key.meta().generation,
                );
                write_status(keys, key, status).await?;
                publish(
                    ctx,
                    &key.object_ref(&()),
                    vec![Note::warning(
                        "MaterialMissing",
                        "Reconcile",
                        format!("the KmsKeyMaterial record of key {lost_id} is missing"),
                    )],
                )
                .await;
                return Ok(Action::await_change());
            }
            let record_spec = match new_record(&spec, ctx, &owner, now) {
                Ok(record_spec) => record_spec,
                Err(Error::Kms(error)) => return invalid(key, keys, ctx, &error.to_string()).await,
                Err(other) => return Err(other),
            };
            let mut record = KmsKeyMaterial::new(&name, record_spec);
            record.metadata.namespace = Some(namespace.to_owned());
            let record = records.create(&PostParams::default(), &record).await?;
            notes.push(Note::normal(
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
            ));
            record
        }
    };
    let mut next = record.spec.clone();
    let mut rotation_problem: Option<(String, String)> = None;
    if let Err(error) = convert::metadata(&spec, &next) {
        return invalid(key, keys, ctx, &error.to_string()).await;
    }
    // A version wrapped under another root key could never be unwrapped by the plugin that
    // shares the record's root key: touch nothing until the root keys agree.
    let own_root = ctx.root_keys.root_key_id();
    if !next.versions.is_empty() && !ctx.root_keys.holds(&next.root_key_id) {
        let message = format!(
            "the material is wrapped under root key {}, this operator holds root key {own_root}; \
             nothing is changed until it runs with the same root key",
            next.root_key_id
        );
        return invalid(key, keys, ctx, &message).await;
    }

    // A key kube-apiserver encrypts with is neither disabled nor scheduled for deletion.
    let served = protection::served_by(&ctx.plugin_leases, namespace, &name, now);
    let mut refused: Option<(&str, String)> = None;
    let mut refused_operation: &'static str = "";
    if !served.is_empty() {
        let was_enabled = key
            .status
            .as_ref()
            .and_then(|s| s.key_state)
            .is_none_or(|state| state == KeyStateName::Enabled);
        if !spec.enabled && was_enabled {
            spec.enabled = true;
            refused_operation = "Disable";
            refused = Some((
                "DisableRefused",
                protection::refusal(
                    &served,
                    "disabling the key",
                    "every Secret read and write would fail",
                ),
            ));
        }
        if spec.deletion.is_some() && next.deletion_date.is_none() {
            spec.deletion = None;
            refused_operation = "ScheduleDeletion";
            refused = Some((
                "DeletionRefused",
                protection::refusal(
                    &served,
                    "scheduling the deletion",
                    "the material those Secrets need would be destroyed",
                ),
            ));
        }
    }

    // Scheduled deletion, requested or withdrawn in the spec.
    match (&spec.deletion, next.deletion_date.as_deref()) {
        (Some(deletion), None) => {
            let mut metadata = convert::metadata(&spec, &next)?;
            match metadata.schedule_deletion(now, Some(deletion.pending_window_in_days)) {
                Ok(date) => {
                    next.deletion_date = Some(format_time(date));
                    notes.push(Note::normal(
                        "DeletionScheduled",
                        "ScheduleDeletion",
                        format!(
                            "key {} is PendingDeletion; its material is destroyed at {}",
                            next.key_id,
                            format_time(date)
                        ),
                    ));
                }
                Err(error) => {
                    notes.push(Note::warning(
                        "DeletionRefused",
                        "ScheduleDeletion",
                        error.to_string(),
                    ));
                }
            }
        }
        (None, Some(_)) => {
            // AWS CancelKeyDeletion leaves the key Disabled. The spec says so too, so the
            // status stays reconstructible and the user enables the key by setting
            // spec.enabled to true again.
            if spec.enabled {
                let patch = serde_json::json!({"spec": {"enabled": false}});
                keys.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                spec.enabled = false;
            }
            next.deletion_date = None;
            notes.push(Note::normal(
                "DeletionCancelled",
                "CancelDeletion",
                format!(
                    "the deletion of key {} is cancelled; the key is Disabled until spec.enabled is set to true",
                    next.key_id
                ),
            ));
        }
        (Some(_), Some(date)) => {
            if parse_time("deletionDate", date)? <= now {
                // The window has passed: delete the KmsKey object; the finalizer then
                // destroys the material (see hold_or_destroy).
                keys.delete(&name, &DeleteParams::default()).await?;
                publish(
                    ctx,
                    &key.object_ref(&()),
                    vec![Note::normal(
                        "DeletionDue",
                        "Delete",
                        format!("the deletion window of key {} has passed", next.key_id),
                    )],
                )
                .await;
                return Ok(Action::await_change());
            }
        }
        (None, None) => {}
    }

    // The automatic rotation schedule.
    let automatic = spec.rotation.as_ref().filter(|r| r.automatic);
    match automatic {
        Some(rotation) if next.deletion_date.is_none() => {
            let period = rotation.period_in_days;
            let last_change = next
                .versions
                .last()
                .map_or(next.created_at.as_str(), |v| v.created.as_str());
            match (&next.next_rotation_time, next.rotation_period_in_days) {
                (Some(_), Some(current)) if current == period => {}
                (Some(_), _) => {
                    // A changed period counts from the last rotation, as AWS does.
                    let from = parse_time("versions.created", last_change)?;
                    next.next_rotation_time =
                        Some(format_time(from + Duration::days(i64::from(period))));
                    next.rotation_period_in_days = Some(period);
                    notes.push(Note::normal(
                        "RotationPeriodChanged",
                        "EnableRotation",
                        format!("automatic rotation every {period} days"),
                    ));
                }
                (None, _) => {
                    next.next_rotation_time =
                        Some(format_time(now + Duration::days(i64::from(period))));
                    next.rotation_period_in_days = Some(period);
                    notes.push(Note::normal(
                        "RotationEnabled",
                        "EnableRotation",
                        format!("automatic rotation every {period} days"),
                    ));
                }
            }
        }
        Some(_) => {}
        None => {
            if next.next_rotation_time.is_some() {
                next.next_rotation_time = None;
                next.rotation_period_in_days = None;
                notes.push(Note::normal(
                    "RotationDisabled",
                    "DisableRotation",
                    "automatic rotation is off",
                ));
            }
        }
    }

    // An automatic rotation that is due. record_rotation restarts the schedule from now,
    // so after downtime a missed rotation happens once.
    let mut metadata = convert::metadata(&spec, &next)?;
    if metadata.automatic_rotation_due(now) {
        rotate(
            ctx,
            &owner,
            &mut metadata,
            &mut next,
            now,
            RotationType::Automatic,
            &mut notes,
        )?;
    }

    // One on-demand rotation per new token. A refused rotation (limit of 25, a key that
    // does not rotate, a disabled key) leaves the token pending and says why in a
    // condition and an Event, without failing the reconciliation.
    if let Some(token) = spec
        .rotation
        .as_ref()
        .and_then(|r| r.on_demand_token.clone())
        && next.last_on_demand_token.as_deref() != Some(token.as_str())
    {
        match rotate(
            ctx,
            &owner,
            &mut metadata,
            &mut next,
            now,
            RotationType::OnDemand,
            &mut notes,
        ) {
            Ok(()) => next.last_on_demand_token = Some(token),
            Err(Error::Kms(error)) => {
                let reason = rotation_refusal_reason(&error);
                let already_reported = key.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Rotation" && c.reason == reason)
                });
                if !already_reported {
                    notes.push(Note::warning(
                        "RotationRefused",
                        "RotateOnDemand",
                        format!("on-demand rotation refused: {error}"),
                    ));
                }
                rotation_problem = Some((reason.to_owned(), error.to_string()));
            }
            Err(other) => return Err(other),
        }
    }

    if next != record.spec {
        let mut updated = record.clone();
        updated.spec = next.clone();
        records
            .replace(&name, &PostParams::default(), &updated)
            .await?;
    }

    let mut status = key_status(key, &spec, &next, ctx, namespace);
    if let Some((reason, message)) = rotation_problem {
        status.conditions.push(Condition {
            type_: "Rotation".to_owned(),
            status: "False".to_owned(),
            reason,
            message,
            last_transition_time: format_time(now),
            observed_generation: key.meta().generation,
        });
        keep_transition_times(key.status.as_ref(), &mut status);
    }
    let previous_state = key.status.as_ref().and_then(|s| s.key_state);
    let state = status.key_state;
    let cancelled = notes.iter().any(|n| n.reason == "DeletionCancelled");
    if previous_state.is_some() && previous_state != state && !cancelled {
        match state {
            Some(KeyStateName::Enabled) => notes.push(Note::normal(
                "KeyEnabled",
                "Enable",
                format!("key {} is Enabled", next.key_id),
            )),
            Some(KeyStateName::Disabled) => notes.push(Note::normal(
                "KeyDisabled",
                "Disable",
                format!("key {} is Disabled", next.key_id),
            )),
            _ => {}
        }
    }
    notes.extend(protect(
        key,
        &mut status,
        &served,
        refused,
        refused_operation,
        now,
    ));
    let mut action = next_action(&next, state, now);
    if let Some(after) =
        reencrypt_step(key, ctx, &spec, &next, &served, &mut status, &mut notes).await?
    {
        action = Action::requeue(after);
    }
    write_status(keys, key, status).await?;
    publish(ctx, &key.object_ref(&()), notes).await;
    if let Some(state) = state {
        ctx.metrics.key_state(
            &format!("{namespace}/{name}"),
            Some(KeyState::from(state).as_str()),
        );
    }
    Ok(action)
}

/// How often a protected key that is held or waiting is looked at without a change.
pub const PROTECTED_RECHECK: std::time::Duration = std::time::Duration::from_secs(15);

/// Shows which plugins serve the key and the Protected condition (with the refusal, if
/// any) in `status`; returns the Warning Event of a refusal not reported yet.
fn protect(
    key: &KmsKey,
    status: &mut KmsKeyStatus,
    served: &[kubekms_k8s::ServedBy],
    refused: Option<(&str, String)>,
    operation: &'static str,
    now: OffsetDateTime,
) -> Vec<Note> {
    status.served_by = served.to_vec();
    let mut notes = Vec::new();
    if let Some((reason, message)) = &refused {
        let already_reported = key.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == protection::CONDITION && c.reason == *reason)
        });
        if !already_reported {
            notes.push(Note::warning(
                "ProtectionRefused",
                operation,
                message.clone(),
            ));
        }
    }
    if let Some(condition) =
        protection::condition(served, refused, &format_time(now), key.meta().generation)
    {
        Condition::upsert(&mut status.conditions, condition);
    }
    keep_transition_times(key.status.as_ref(), status);
    notes
}

/// The re-encryption of Secrets after a rotation of a served key: plans the next step,
/// rewrites one page when it is time, and says when to look again (`None`: no sooner than
/// the key's own schedule).
async fn reencrypt_step(
    key: &KmsKey,
    ctx: &Context,
    spec: &KmsKeySpec,
    record: &KmsKeyMaterialSpec,
    served: &[kubekms_k8s::ServedBy],
    status: &mut KmsKeyStatus,
    notes: &mut Vec<Note>,
) -> Result<Option<std::time::Duration>, Error> {
    let previous = key.status.as_ref().and_then(|s| s.reencryption.as_ref());
    let current_version = record.versions.last().map_or(0, |v| v.version);
    let plan = reencrypt::plan(
        previous,
        served,
        &record.key_id,
        current_version,
        spec.reencrypt_secrets,
        &format_time(ctx.clock.now()),
    );
    status.reencryption = plan.status;
    let Some(progress) = status.reencryption.as_mut() else {
        return Ok(None);
    };
    if !plan.rewrite {
        return Ok((progress.phase == reencrypt::PHASE_WAITING).then_some(PROTECTED_RECHECK));
    }
    if previous.is_none_or(|p| {
        p.phase != reencrypt::PHASE_REWRITING || p.target_version != progress.target_version
    }) {
        notes.push(Note::normal(
            "ReencryptionStarted",
            "Reencrypt",
            format!(
                "every kube-apiserver has a DEK seeded under {}/v{}: rewriting every Secret so none stays under an older version",
                record.key_id, progress.target_version
            ),
        ));
    }
    let rewritten = reencrypt::rewrite_page(
        &ctx.client,
        progress,
        ctx.reencryption,
        &format_time(ctx.clock.now()),
    )
    .await?;
    ctx.metrics.secrets_reencrypted(rewritten);
    if progress.phase == reencrypt::PHASE_DONE {
        notes.push(if progress.secrets_failed == 0 {
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
        });
        return Ok(None);
    }
    Ok(Some(std::time::Duration::from_millis(200)))
}

fn rotation_refusal_reason(error: &KmsError) -> &'static str {
    match error {
        KmsError::LimitExceeded(_) => "LimitExceeded",
        KmsError::UnsupportedOperation(_) => "UnsupportedOperation",
        KmsError::Disabled(_) | KmsError::InvalidState(_) => "InvalidState",
        _ => "Failed",
    }
}

/// Records a rotation in `metadata` and appends the new wrapped version to `record`.
fn rotate(
    ctx: &Context,
    owner: &KeyOwner,
    metadata: &mut KeyMetadata,
    record: &mut KmsKeyMaterialSpec,
    now: OffsetDateTime,
    rotation_type: RotationType,
    notes: &mut Vec<Note>,
) -> Result<(), Error> {
    let version = metadata.record_rotation(now, rotation_type)?;
    let wrapped = new_wrapped_version(
        ctx,
        &wrap_context(metadata, owner, version),
        now,
        Some(rotation_type),
    )?;
    record.versions.push(wrapped);
    // A record written before wrap format 2 names the root key by its older identifier.
    record.root_key_id = ctx.root_keys.root_key_id();
    record.on_demand_rotations = metadata.on_demand_rotations;
    if rotation_type == RotationType::Automatic {
        record.next_rotation_time = metadata.rotation.map(|r| format_time(r.next_rotation));
    }
    notes.push(Note::normal(
        "Rotated",
        "Rotate",
        format!(
            "key {} rotated ({rotation_type}): material version {version} is current",
            metadata.key_id
        ),
    ));
    Ok(())
}

/// The status a spec and a record imply, with the Ready condition, keeping the transition
/// times of conditions whose status did not change.
fn key_status(
    key: &KmsKey,
    spec: &KmsKeySpec,
    record: &KmsKeyMaterialSpec,
    ctx: &Context,
    namespace: &str,
) -> KmsKeyStatus {
    let now = ctx.clock.now();
    let generation = key.meta().generation;
    let mut status = match convert::metadata(spec, record) {
        Ok(metadata) => convert::status(&metadata, &ctx.scope, namespace, generation),
        Err(error) => {
            let mut status = KmsKeyStatus::default();
            set_ready(
                &mut status,
                false,
                "Invalid",
                error.to_string(),
                now,
                generation,
            );
            return status;
        }
    };
    let (ready, reason, message) = match status.key_state {
        Some(KeyStateName::Enabled) => (true, "Enabled", "the key is usable".to_owned()),
        Some(KeyStateName::Disabled) => (
            false,
            "Disabled",
            "the key is disabled (spec.enabled is false)".to_owned(),
        ),
        Some(KeyStateName::PendingDeletion) => (
            false,
            "PendingDeletion",
            format!(
                "the material is destroyed at {}",
                status.deletion_date.as_deref().unwrap_or("(unknown)")
            ),
        ),
        Some(KeyStateName::PendingImport) => (
            false,
            "PendingImport",
            "the key waits for imported material".to_owned(),
        ),
        _ => (false, "Unknown", String::new()),
    };
    set_ready(&mut status, ready, reason, message, now, generation);
    keep_transition_times(key.status.as_ref(), &mut status);
    // Re-encryption progress is not derived from the spec and record: it carries over
    // until a pass is planned again.
    status.reencryption = key.status.as_ref().and_then(|s| s.reencryption.clone());
    status
}

fn set_ready(
    status: &mut KmsKeyStatus,
    ready: bool,
    reason: &str,
    message: String,
    now: OffsetDateTime,
    generation: Option<i64>,
) {
    Condition::upsert(
        &mut status.conditions,
        Condition::ready(ready, reason, message, &format_time(now), generation),
    );
}

/// Conditions whose status is unchanged keep their previous lastTransitionTime.
fn keep_transition_times(previous: Option<&KmsKeyStatus>, status: &mut KmsKeyStatus) {
    let Some(previous) = previous else { return };
    for condition in &mut status.conditions {
        if let Some(old) = previous
            .conditions
            .iter()
            .find(|c| c.type_ == condition.type_ && c.status == condition.status)
        {
            condition.last_transition_time = old.last_transition_time.clone();
        }
    }
}

/// Writes the status by server-side apply, only when it changed.
async fn write_status(keys: &Api<KmsKey>, key: &KmsKey, status: KmsKeyStatus) -> Result<(), Error> {
    crate::apply_status(keys, key, key.status.as_ref(), &status).await
}

/// A key whose spec or record cannot be used: Ready False, reason Invalid, a Warning
/// Event, and no retry until something changes.
async fn invalid(
    key: &KmsKey,
    keys: &Api<KmsKey>,
    ctx: &Context,
    message: &str,
) -> Result<Action, Error> {
    let mut status = key.status.clone().unwrap_or_default();
    set_ready(
        &mut status,
        false,
        "Invalid",
        message.to_owned(),
        ctx.clock.now(),
        key.meta().generation,
    );
    status.observed_generation = key.meta().generation;
    write_status(keys, key, status).await?;
    publish(
        ctx,
        &key.object_ref(&()),
        vec![Note::warning("Invalid", "Reconcile", message.to_owned())],
    )
    .await;
    Ok(Action::await_change())
}

/// Requeue at the next due time (rotation of an enabled key, or the deletion date).
fn next_action(
    record: &KmsKeyMaterialSpec,
    state: Option<KeyStateName>,
    now: OffsetDateTime,
) -> Action {
    let rotation = record
        .next_rotation_time
        .as_deref()
        .filter(|_| state == Some(KeyStateName::Enabled) && record.deletion_date.is_none())
        .and_then(|t| parse_time("nextRotationTime", t).ok());
    let deletion = record
        .deletion_date
        .as_deref()
        .and_then(|t| parse_time("deletionDate", t).ok());
    match rotation.into_iter().chain(deletion).min() {
        Some(due) => requeue_at(due, now),
        None => Action::await_change(),
    }
}

/// An action that requeues at `due` (at least one second from now, at most
/// [`MAX_REQUEUE`]).
#[must_use]
pub fn requeue_at(due: OffsetDateTime, now: OffsetDateTime) -> Action {
    let wait = (due - now)
        .try_into()
        .unwrap_or(std::time::Duration::ZERO)
        .clamp(std::time::Duration::from_secs(1), MAX_REQUEUE);
    Action::requeue(wait)
}
