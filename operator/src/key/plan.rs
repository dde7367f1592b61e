//! What one pass over a KmsKey does, decided without any I/O: from the spec, the record,
//! the previous status, the plugins serving the key and the time, a [`Plan`] says what to
//! write (the record, the spec's `enabled`, the status), which material versions to
//! generate, which Events to publish and when to look again. The executor in
//! [`super`] carries it out. Every date computed from the spec or the record is checked:
//! a date out of range makes the key Invalid instead of panicking the operator.
//!
//! A live key, in order: refuse another key's record, an unusable record or one wrapped
//! under another root key; refuse disabling or scheduling the deletion of a served key;
//! act on a scheduled or withdrawn deletion; keep the automatic rotation schedule; rotate
//! when due (a missed rotation happens once); rotate once per new on-demand token; derive
//! the status; plan the re-encryption step; requeue at the next due time.
//!
//! A key being deleted ([`plan_held`]): held while served, else the deletion is scheduled
//! (if it was not) and the material destroyed once the date has passed.

use kms_core::key::{DEFAULT_PENDING_WINDOW_DAYS, KeyMetadata};
use kms_core::{ArnScope, KeyId, KeySpec, KmsError, Origin, RotationType, rotation};
use kube::runtime::controller::Action;
use kubekms_k8s::convert::{self, format_time, parse_time};
use kubekms_k8s::names::{KeySpecName, KeyStateName, KeyUsageName, OriginName};
use kubekms_k8s::{Condition, KmsKeyMaterialSpec, KmsKeySpec, KmsKeyStatus, ServedBy};
use time::{Duration, OffsetDateTime};

use super::status::{self, Previous};
use super::{MAX_REQUEUE, PROTECTED_RECHECK};
use crate::events::Note;
use crate::{Error, protection, reencrypt};

/// A material version to generate, wrap under the root key and append to the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewVersion {
    /// Its number.
    pub version: u32,
    /// When it was made.
    pub created: OffsetDateTime,
    /// How (`None` for the original material).
    pub rotation_type: Option<RotationType>,
}

/// The root key as a plan needs to know it.
#[derive(Debug, Clone, Copy)]
pub struct RootKey<'a> {
    /// This operator's root key id (what new records and rotations record).
    pub id: &'a str,
    /// Whether this operator holds the root key the record's versions are wrapped under.
    pub holds_record_root: bool,
}

/// Everything one pass over a live KmsKey looks at.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The KmsKey's spec.
    pub spec: &'a KmsKeySpec,
    /// Its KmsKeyMaterial record.
    pub record: &'a KmsKeyMaterialSpec,
    /// Its previous status and generation.
    pub previous: Previous<'a>,
    /// The plugins serving it (see [`crate::protection::served_by`]).
    pub served: &'a [ServedBy],
    /// Now, by the operator's clock.
    pub now: OffsetDateTime,
    /// The root key.
    pub root: RootKey<'a>,
    /// Partition and region of the ARNs.
    pub scope: &'a ArnScope,
    /// The 12-digit account id of the KmsKey's namespace (what its ARN carries).
    pub account: &'a str,
}

/// What one pass over a live KmsKey does.
#[derive(Debug, Clone)]
pub enum Plan {
    /// Change nothing but the status (Ready False, with why) and publish `notes`: the
    /// record is another key's, unusable, or wrapped under another root key. Nothing is
    /// retried until something changes.
    Refuse {
        /// The status to show.
        status: Box<KmsKeyStatus>,
        /// Events to publish.
        notes: Vec<Note>,
    },
    /// The deletion window has passed: delete the KmsKey (the finalizer then destroys the
    /// material, see [`plan_held`]).
    DeleteKey {
        /// Events to publish.
        notes: Vec<Note>,
    },
    /// The normal pass.
    Apply(Box<Pass>),
}

/// The writes of a normal pass, in the order the executor makes them.
#[derive(Debug, Clone)]
pub struct Pass {
    /// Write `spec.enabled: false` (AWS CancelKeyDeletion leaves the key Disabled).
    pub disable_in_spec: bool,
    /// The record to write when it changed, without the material of `new_versions`.
    pub record: Option<KmsKeyMaterialSpec>,
    /// Versions to generate, wrap and append to `record`, in order.
    pub new_versions: Vec<NewVersion>,
    /// Whether to rewrite the next page of Secrets (re-encryption after a rotation).
    pub rewrite_secrets: bool,
    /// The status to show (with the re-encryption progress as planned).
    pub status: KmsKeyStatus,
    /// Events to publish.
    pub notes: Vec<Note>,
    /// When to look again (unless a page of Secrets remains to be rewritten).
    pub requeue: Action,
}

fn refuse((status, notes): (KmsKeyStatus, Vec<Note>)) -> Plan {
    Plan::Refuse {
        status: Box::new(status),
        notes,
    }
}

fn days(n: u32) -> Duration {
    Duration::days(i64::from(n))
}

/// `from + n days`, or why it is out of range.
fn add_days(field: &str, from: OffsetDateTime, n: u32) -> Result<OffsetDateTime, String> {
    from.checked_add(days(n)).ok_or_else(|| {
        format!(
            "{field} {} plus {n} days is out of the range of dates",
            format_time(from)
        )
    })
}

/// A new record for a KmsKey with id `key_id`: version 1 to generate (none for EXTERNAL),
/// the rotation schedule the spec asks for. An on-demand token already present at creation
/// is taken as acted on: it asks for no rotation of a key that was just made.
///
/// # Errors
/// `ValidationException` when the spec, usage and origin do not go together or the
/// rotation period is out of range (CreateKey's checks), or a date is out of range.
pub fn new_record(
    spec: &KmsKeySpec,
    key_id: KeyId,
    root_key_id: &str,
    now: OffsetDateTime,
) -> Result<(KmsKeyMaterialSpec, Vec<NewVersion>), KmsError> {
    let key_spec = KeySpec::from(spec.key_spec);
    let usage = convert::effective_usage(spec);
    let origin = Origin::from(spec.origin);
    let metadata = KeyMetadata::new(key_id, key_spec, usage, origin, now)?;
    let new_versions = match origin {
        Origin::AwsKms => vec![NewVersion {
            version: 1,
            created: now,
            rotation_type: None,
        }],
        Origin::External => Vec::new(),
    };
    let rotation = spec.rotation.as_ref();
    let automatic = rotation.filter(|r| r.automatic);
    let next_rotation_time = match automatic {
        Some(r) => {
            kms_core::key::validate_rotation_period(r.period_in_days)?;
            Some(format_time(
                add_days("now", now, r.period_in_days).map_err(KmsError::Validation)?,
            ))
        }
        None => None,
    };
    let record = KmsKeyMaterialSpec {
        key_id: key_id.to_string(),
        key_spec: KeySpecName::from(key_spec),
        key_usage: KeyUsageName::from(usage),
        origin: OriginName::from(origin),
        created_at: format_time(metadata.created),
        root_key_id: root_key_id.to_owned(),
        versions: Vec::new(),
        current_version: None,
        on_demand_rotations: 0,
        last_on_demand_token: rotation.and_then(|r| r.on_demand_token.clone()),
        next_rotation_time,
        rotation_period_in_days: automatic.map(|r| r.period_in_days),
        deletion_date: None,
    };
    Ok((record, new_versions))
}

/// The record with placeholders for the versions still to be generated, so the status
/// shows them (they are written together).
fn with_planned_versions(record: &KmsKeyMaterialSpec, new: &[NewVersion]) -> KmsKeyMaterialSpec {
    let mut record = record.clone();
    record
        .versions
        .extend(new.iter().map(|v| kubekms_k8s::material::WrappedVersion {
            version: v.version,
            created: format_time(v.created),
            rotation_type: v.rotation_type.map(Into::into),
            wrapped: String::new(),
        }));
    record
}

/// Plans one pass over a live KmsKey.
#[must_use]
pub fn plan(input: &Input<'_>) -> Plan {
    let Input {
        record,
        previous,
        served,
        now,
        ..
    } = *input;
    if let Some(recorded) = previous.key_id()
        && recorded != record.key_id
    {
        return refuse(status::record_mismatch(
            previous,
            recorded,
            &record.key_id,
            now,
        ));
    }
    let mut spec = input.spec.clone();
    let mut next = record.clone();
    let mut notes = Vec::new();
    if let Err(error) = convert::metadata(&spec, &next) {
        return refuse(status::invalid(previous, &error.to_string(), now));
    }
    // A version wrapped under another root key could never be unwrapped by the plugin that
    // shares the record's root key: touch nothing until the root keys agree.
    if !next.versions.is_empty() && !input.root.holds_record_root {
        let message = format!(
            "the material is wrapped under root key {}, this operator holds root key {}; \
             nothing is changed until it runs with the same root key",
            next.root_key_id, input.root.id
        );
        return refuse(status::invalid(previous, &message, now));
    }

    // A key kube-apiserver encrypts with is neither disabled nor scheduled for deletion.
    let (refused, refused_operation) = protect_served(&mut spec, &next, previous, served);

    // Scheduled deletion, requested or withdrawn in the spec.
    let mut disable_in_spec = false;
    match (&spec.deletion, next.deletion_date.as_deref()) {
        (Some(deletion), None) => {
            let Ok(mut metadata) = convert::metadata(&spec, &next) else {
                return refuse(status::invalid(previous, "the record does not parse", now));
            };
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
                disable_in_spec = true;
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
        (Some(_), Some(date)) => match parse_time("deletionDate", date) {
            Ok(date) if date <= now => {
                return Plan::DeleteKey {
                    notes: vec![Note::normal(
                        "DeletionDue",
                        "Delete",
                        format!("the deletion window of key {} has passed", next.key_id),
                    )],
                };
            }
            Ok(_) => {}
            Err(error) => return refuse(status::invalid(previous, &error.to_string(), now)),
        },
        (None, None) => {}
    }

    if let Err(message) = keep_rotation_schedule(&spec, &mut next, now, &mut notes) {
        return refuse(status::invalid(previous, &message, now));
    }

    // An automatic rotation that is due. record_rotation restarts the schedule from now,
    // so after downtime a missed rotation happens once.
    let Ok(mut metadata) = convert::metadata(&spec, &next) else {
        return refuse(status::invalid(previous, "the record does not parse", now));
    };
    let mut new_versions = Vec::new();
    if metadata.automatic_rotation_due(now) {
        match rotate(
            &mut metadata,
            &mut next,
            input.root.id,
            now,
            RotationType::Automatic,
            !served.is_empty(),
            &mut notes,
        ) {
            Ok(version) => new_versions.push(version),
            Err(error) => return refuse(status::invalid(previous, &error.to_string(), now)),
        }
    }

    // One on-demand rotation per new token. A refused rotation (limit of 25, a key that
    // does not rotate, a disabled key) leaves the token pending and says why in a
    // condition and an Event, without failing the reconciliation.
    let mut rotation_problem: Option<(String, String)> = None;
    if let Some(token) = spec
        .rotation
        .as_ref()
        .and_then(|r| r.on_demand_token.clone())
        && next.last_on_demand_token.as_deref() != Some(token.as_str())
    {
        match rotate(
            &mut metadata,
            &mut next,
            input.root.id,
            now,
            RotationType::OnDemand,
            !served.is_empty(),
            &mut notes,
        ) {
            Ok(version) => {
                new_versions.push(version);
                next.last_on_demand_token = Some(token);
            }
            Err(error) => {
                let reason = rotation_refusal_reason(&error);
                let already_reported = previous.status.is_some_and(|s| {
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
        }
    }

    let waiting = promote_staged(&mut metadata, &mut next, served, previous, &mut notes);

    let planned = with_planned_versions(&next, &new_versions);
    let mut status = status::derive(previous, &spec, &planned, input.scope, input.account, now);
    if let Some(message) = waiting {
        status.conditions.push(Condition {
            type_: PROMOTION_CONDITION.to_owned(),
            status: "False".to_owned(),
            reason: "WaitingForPlugins".to_owned(),
            message,
            last_transition_time: format_time(now),
            observed_generation: previous.generation,
        });
        status::keep_transition_times(previous.status, &mut status);
    }
    if let Some((reason, message)) = rotation_problem {
        status.conditions.push(Condition {
            type_: "Rotation".to_owned(),
            status: "False".to_owned(),
            reason,
            message,
            last_transition_time: format_time(now),
            observed_generation: previous.generation,
        });
        status::keep_transition_times(previous.status, &mut status);
    }
    let previous_state = previous.status.and_then(|s| s.key_state);
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
    notes.extend(status::protect(
        previous,
        &mut status,
        served,
        refused,
        refused_operation,
        now,
    ));

    let mut requeue = next_action(&planned, state, now);
    let reencryption = plan_reencryption(input, &planned, &mut status, &mut notes);
    let promotion_waits = status
        .conditions
        .iter()
        .any(|c| c.type_ == PROMOTION_CONDITION);
    if promotion_waits
        || !reencryption.rewrite
            && status
                .reencryption
                .as_ref()
                .is_some_and(|r| r.phase == reencrypt::PHASE_WAITING)
    {
        requeue = Action::requeue(PROTECTED_RECHECK);
    }
    let record_changed = next != *record || !new_versions.is_empty();
    Plan::Apply(Box::new(Pass {
        disable_in_spec,
        record: record_changed.then_some(next),
        new_versions,
        rewrite_secrets: reencryption.rewrite,
        status,
        notes,
        requeue,
    }))
}

/// Refuses disabling or scheduling the deletion of a key a plugin serves, by undoing the
/// request in `spec` (the status says why).
fn protect_served(
    spec: &mut KmsKeySpec,
    record: &KmsKeyMaterialSpec,
    previous: Previous<'_>,
    served: &[ServedBy],
) -> (Option<(&'static str, String)>, &'static str) {
    let mut refused = None;
    let mut operation = "";
    if served.is_empty() {
        return (refused, operation);
    }
    let was_enabled = previous
        .status
        .and_then(|s| s.key_state)
        .is_none_or(|state| state == KeyStateName::Enabled);
    if !spec.enabled && was_enabled {
        spec.enabled = true;
        operation = "Disable";
        refused = Some((
            "DisableRefused",
            protection::refusal(
                served,
                "disabling the key",
                "every Secret read and write would fail",
            ),
        ));
    }
    if spec.deletion.is_some() && record.deletion_date.is_none() {
        spec.deletion = None;
        operation = "ScheduleDeletion";
        refused = Some((
            "DeletionRefused",
            protection::refusal(
                served,
                "scheduling the deletion",
                "the material those Secrets need would be destroyed",
            ),
        ));
    }
    (refused, operation)
}

/// Keeps the record's automatic rotation schedule in line with the spec.
///
/// # Errors
/// A period out of range, or a date that would leave the range of dates.
fn keep_rotation_schedule(
    spec: &KmsKeySpec,
    next: &mut KmsKeyMaterialSpec,
    now: OffsetDateTime,
    notes: &mut Vec<Note>,
) -> Result<(), String> {
    let automatic = spec.rotation.as_ref().filter(|r| r.automatic);
    match automatic {
        Some(rotation) if next.deletion_date.is_none() => {
            let period = rotation.period_in_days;
            kms_core::key::validate_rotation_period(period).map_err(|e| e.to_string())?;
            match (&next.next_rotation_time, next.rotation_period_in_days) {
                (Some(_), Some(current)) if current == period => {}
                (Some(_), _) => {
                    // A changed period counts from the last rotation, as AWS does.
                    let last_change = next
                        .versions
                        .last()
                        .map_or(next.created_at.as_str(), |v| v.created.as_str());
                    let from =
                        parse_time("versions.created", last_change).map_err(|e| e.to_string())?;
                    let due = add_days("the last rotation", from, period)?;
                    next.next_rotation_time = Some(format_time(due));
                    next.rotation_period_in_days = Some(period);
                    notes.push(Note::normal(
                        "RotationPeriodChanged",
                        "EnableRotation",
                        format!("automatic rotation every {period} days"),
                    ));
                }
                (None, _) => {
                    next.next_rotation_time = Some(format_time(add_days("now", now, period)?));
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
    Ok(())
}

fn rotation_refusal_reason(error: &KmsError) -> &'static str {
    match error {
        KmsError::LimitExceeded(_) => "LimitExceeded",
        KmsError::UnsupportedOperation(_) => "UnsupportedOperation",
        KmsError::Disabled(_) | KmsError::InvalidState(_) => "InvalidState",
        _ => "Failed",
    }
}

/// Records a rotation in `metadata` and `record` and returns the version to generate.
fn rotate(
    metadata: &mut KeyMetadata,
    record: &mut KmsKeyMaterialSpec,
    root_key_id: &str,
    now: OffsetDateTime,
    rotation_type: RotationType,
    served: bool,
    notes: &mut Vec<Note>,
) -> Result<NewVersion, KmsError> {
    if rotation_type == RotationType::Automatic
        && let Some(schedule) = metadata.rotation
    {
        // kms-core restarts the schedule at now + period: check it stays in range first.
        add_days("now", now, schedule.period_days).map_err(KmsError::Validation)?;
    }
    // Staged: the plugins load it and decrypt under it, and encrypt under it only once the
    // operator promotes it (see promote_staged).
    let version = metadata.stage_rotation(now, rotation_type)?;
    // A record written before wrap format 2 names the root key by its older identifier.
    root_key_id.clone_into(&mut record.root_key_id);
    record.on_demand_rotations = metadata.on_demand_rotations;
    record.current_version = metadata.current;
    if rotation_type == RotationType::Automatic {
        record.next_rotation_time = metadata.rotation.map(|r| format_time(r.next_rotation));
    }
    let what = if served {
        "is staged; it becomes current once every plugin serving the key holds it"
    } else {
        // promote_staged makes it current in this same pass.
        "is current (no plugin serves the key)"
    };
    notes.push(Note::normal(
        "Rotated",
        "Rotate",
        format!(
            "key {} rotated ({rotation_type}): material version {version} {what}",
            metadata.key_id
        ),
    ));
    Ok(NewVersion {
        version,
        created: now,
        rotation_type: Some(rotation_type),
    })
}

/// The condition type that says a staged version waits for plugins to hold it.
pub const PROMOTION_CONDITION: &str = "VersionPromoted";

/// The second step of a rotation: makes the newest staged version that every plugin with
/// a heartbeat Lease for this key holds current, in `metadata` and `record` (a key no
/// plugin serves at once), with an Event. Returns why a staged version still waits (for
/// the condition), with an Event when the plugins waited for changed.
fn promote_staged(
    metadata: &mut KeyMetadata,
    record: &mut KmsKeyMaterialSpec,
    served: &[ServedBy],
    previous: Previous<'_>,
    notes: &mut Vec<Note>,
) -> Option<String> {
    let no_versions: &[u32] = &[];
    let holders: Vec<rotation::Holder<'_>> = served
        .iter()
        .map(|p| rotation::Holder {
            plugin: &p.plugin,
            live: p.live,
            // Versions of another key (a plugin not following this one yet) are none of
            // this key's.
            holds: if p.held_key_id.as_deref() == Some(record.key_id.as_str()) {
                &p.held_versions
            } else {
                no_versions
            },
        })
        .collect();
    let decided = rotation::decide(metadata, &holders);
    if let Some(version) = decided.promote_to
        && metadata.promote(version).is_ok()
    {
        record.current_version = Some(version);
        // A key no plugin serves: the Rotated Event of this pass already says it is current.
        if !served.is_empty() {
            notes.push(Note::normal(
                "VersionPromoted",
                "Rotate",
                format!(
                    "material version {version} of key {} is current: every plugin serving the key holds it ({})",
                    record.key_id,
                    served
                        .iter()
                        .map(|p| p.plugin.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    let (version, awaited) = decided.waiting?;
    let plugins: Vec<String> = awaited
        .iter()
        .map(|p| {
            let held = p
                .newest_held
                .map_or_else(|| "no version of this key".to_owned(), |v| format!("versions up to {v}"));
            if p.live {
                format!("{} (holds {held}; has not loaded version {version} yet)", p.plugin)
            } else {
                format!(
                    "{} (heartbeat not renewed within its Lease duration: cut off from the API servers, or stopped; \
                     holds {held}, so its kube-apiserver could not read Secrets written under version {version}; \
                     delete its Lease kubekms-plugin-{} if that host is gone for good)",
                    p.plugin, p.plugin
                )
            }
        })
        .collect();
    let message = format!(
        "material version {version} of key {} is staged: plugins decrypt under it, and encrypt under version {} until every plugin serving the key holds it; waiting for {}",
        record.key_id,
        metadata.current_version().unwrap_or(0),
        plugins.join(", ")
    );
    let reported = previous.status.is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == PROMOTION_CONDITION && c.message == message)
    });
    if !reported {
        notes.push(Note::normal("PromotionWaiting", "Rotate", message.clone()));
    }
    Some(message)
}

/// The version a record encrypts under: its currentVersion, else its newest.
fn record_current(record: &KmsKeyMaterialSpec) -> u32 {
    record
        .current_version
        .or_else(|| record.versions.last().map(|v| v.version))
        .unwrap_or(0)
}

/// Plans the re-encryption of Secrets after a rotation of a served key into `status`.
fn plan_reencryption(
    input: &Input<'_>,
    record: &KmsKeyMaterialSpec,
    status: &mut KmsKeyStatus,
    notes: &mut Vec<Note>,
) -> reencrypt::Plan {
    let previous = input.previous.status.and_then(|s| s.reencryption.as_ref());
    // Only a promoted version is one the plugins encrypt under: a staged one is not a
    // target yet.
    let current_version = record_current(record);
    let plan = reencrypt::plan(
        previous,
        input.served,
        &record.key_id,
        current_version,
        input.spec.reencrypt_secrets,
        &format_time(input.now),
    );
    status.reencryption.clone_from(&plan.status);
    if plan.rewrite
        && let Some(progress) = &plan.status
        && previous.is_none_or(|p| {
            p.phase != reencrypt::PHASE_REWRITING || p.target_version != progress.target_version
        })
    {
        notes.push(Note::normal(
            "ReencryptionStarted",
            "Reencrypt",
            format!(
                "every kube-apiserver has a DEK seeded under {}/v{}: rewriting every Secret so none stays under an older version",
                record.key_id, progress.target_version
            ),
        ));
    }
    plan
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

/// What one pass over a KmsKey being deleted (`kubectl delete`, held by the finalizer)
/// does.
#[derive(Debug, Clone)]
pub enum HeldPlan {
    /// Change nothing but the status; look again when something changes (the record is
    /// another key's).
    Refuse {
        /// The status to show.
        status: KmsKeyStatus,
        /// Events to publish.
        notes: Vec<Note>,
    },
    /// Keep holding: a plugin serves the key, or its window runs. `record` is written
    /// first when the deletion was just scheduled.
    Hold {
        /// The record with its new deletion date, to write.
        record: Option<Box<KmsKeyMaterialSpec>>,
        /// The status to show.
        status: KmsKeyStatus,
        /// Events to publish.
        notes: Vec<Note>,
        /// When to look again.
        requeue: Action,
    },
    /// The window has passed, or there is no record: destroy the material and release the
    /// finalizer.
    Destroy,
}

/// Plans one pass over a KmsKey being deleted, whose record is `record`.
///
/// # Errors
/// A record whose deletion date does not parse, or a window out of range.
pub fn plan_held(
    spec: &KmsKeySpec,
    record: Option<&KmsKeyMaterialSpec>,
    previous: Previous<'_>,
    served: &[ServedBy],
    now: OffsetDateTime,
    scope: &ArnScope,
    account: &str,
) -> Result<HeldPlan, Error> {
    // No record (never created, or destroyed just before a crash): nothing to hold.
    let Some(record) = record else {
        return Ok(HeldPlan::Destroy);
    };
    if let Some(recorded) = previous.key_id()
        && recorded != record.key_id
    {
        let (status, notes) = status::record_mismatch(previous, recorded, &record.key_id, now);
        return Ok(HeldPlan::Refuse { status, notes });
    }
    if !served.is_empty() {
        // Held as long as a plugin serves the key: no window starts, nothing is destroyed.
        let message = protection::refusal(
            served,
            "deleting the KmsKey",
            "its material would be destroyed while those Secrets need it; the object stays held",
        );
        let mut status = status::derive(previous, spec, record, scope, account, now);
        let notes = status::protect(
            previous,
            &mut status,
            served,
            Some(("DeleteRefused", message)),
            "Delete",
            now,
        );
        return Ok(HeldPlan::Hold {
            record: None,
            status,
            notes,
            requeue: Action::requeue(PROTECTED_RECHECK),
        });
    }
    let mut notes = Vec::new();
    let mut scheduled = None;
    let date = match record.deletion_date.as_deref() {
        Some(date) => parse_time("deletionDate", date)?,
        None => {
            let window = spec
                .deletion
                .as_ref()
                .map_or(DEFAULT_PENDING_WINDOW_DAYS, |d| d.pending_window_in_days);
            kms_core::key::validate_pending_window(window)?;
            let date = add_days("now", now, window).map_err(KmsError::Validation)?;
            let mut next = record.clone();
            next.deletion_date = Some(format_time(date));
            scheduled = Some(next);
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
    if date <= now {
        return Ok(HeldPlan::Destroy);
    }
    let status = status::derive(
        previous,
        spec,
        scheduled.as_ref().unwrap_or(record),
        scope,
        account,
        now,
    );
    Ok(HeldPlan::Hold {
        record: scheduled.map(Box::new),
        status,
        notes,
        requeue: requeue_at(date, now),
    })
}

#[cfg(test)]
mod tests {
    use kubekms_k8s::names::RotationTypeName;

    use super::*;

    const ACCOUNT: &str = "194955301523";

    fn t0() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_767_225_600).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    fn spec(json: serde_json::Value) -> KmsKeySpec {
        serde_json::from_value(json).expect("spec")
    }

    /// A record as the operator makes it at `t0`, version 1 with placeholder material.
    fn record(spec: &KmsKeySpec) -> KmsKeyMaterialSpec {
        let id = KeyId::single_from_random([7; 16]);
        let (mut record, new) = new_record(spec, id, "root", t0()).expect("record");
        record.versions = with_planned_versions(&record, &new).versions;
        record
    }

    fn input<'a>(
        spec: &'a KmsKeySpec,
        record: &'a KmsKeyMaterialSpec,
        previous: Option<&'a KmsKeyStatus>,
        served: &'a [ServedBy],
        now: OffsetDateTime,
    ) -> Input<'a> {
        static SCOPE: std::sync::LazyLock<ArnScope> = std::sync::LazyLock::new(ArnScope::default);
        Input {
            spec,
            record,
            previous: Previous {
                status: previous,
                generation: Some(1),
            },
            served,
            now,
            root: RootKey {
                id: "root",
                holds_record_root: true,
            },
            scope: &SCOPE,
            account: ACCOUNT,
        }
    }

    fn pass(plan: Plan) -> Pass {
        match plan {
            Plan::Apply(pass) => *pass,
            other => panic!("expected a normal pass, got {other:?}"),
        }
    }

    fn reasons(notes: &[Note]) -> Vec<&str> {
        notes.iter().map(|n| n.reason).collect()
    }

    #[test]
    fn a_due_automatic_rotation_plans_one_version_and_restarts_the_schedule() {
        let spec = spec(serde_json::json!({"rotation": {"automatic": true, "periodInDays": 90}}));
        let record = record(&spec);
        let now = t0() + Duration::days(400);
        let pass = pass(plan(&input(&spec, &record, None, &[], now)));
        assert_eq!(
            pass.new_versions,
            vec![NewVersion {
                version: 2,
                created: now,
                rotation_type: Some(RotationType::Automatic)
            }]
        );
        let written = pass.record.expect("the record changes");
        assert_eq!(
            written.versions.len(),
            1,
            "the material is the executor's to add"
        );
        assert_eq!(
            written.next_rotation_time,
            Some(format_time(now + Duration::days(90)))
        );
        assert_eq!(pass.status.current_version, Some(2));
        assert_eq!(
            pass.status.versions.last().and_then(|v| v.rotation_type),
            Some(RotationTypeName::Automatic)
        );
        assert_eq!(reasons(&pass.notes), ["Rotated"]);
        assert!(!pass.disable_in_spec && !pass.rewrite_secrets);
    }

    #[test]
    fn a_served_key_is_not_disabled_and_its_record_not_written() {
        let spec = spec(serde_json::json!({"enabled": false}));
        let record = record(&spec);
        let served = [ServedBy {
            plugin: "cp-1".to_owned(),
            served_key_id: None,
            seeded_key_id: None,
            held_key_id: None,
            held_versions: Vec::new(),
            live: true,
        }];
        let pass = pass(plan(&input(&spec, &record, None, &served, t0())));
        assert_eq!(pass.status.key_state, Some(KeyStateName::Enabled));
        assert!(pass.record.is_none());
        assert_eq!(reasons(&pass.notes), ["ProtectionRefused"]);
        let protected = pass
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == protection::CONDITION)
            .map(|c| c.reason.as_str());
        assert_eq!(protected, Some("DisableRefused"));
    }

    #[test]
    fn another_keys_record_is_refused_and_a_passed_window_deletes_the_key() {
        let spec = spec(serde_json::json!({"deletion": {"pendingWindowInDays": 7}}));
        let mut record = record(&spec);
        let previous = KmsKeyStatus {
            key_id: Some("another-key".to_owned()),
            ..KmsKeyStatus::default()
        };
        match plan(&input(&spec, &record, Some(&previous), &[], t0())) {
            Plan::Refuse { status, notes } => {
                assert_eq!(status.key_id.as_deref(), Some("another-key"));
                assert_eq!(reasons(&notes), ["RecordMismatch"]);
            }
            other => panic!("{other:?}"),
        }
        record.deletion_date = Some(format_time(t0() + Duration::days(7)));
        assert!(matches!(
            plan(&input(&spec, &record, None, &[], t0() + Duration::days(7))),
            Plan::DeleteKey { .. }
        ));
    }

    #[test]
    fn a_deleted_key_is_held_while_served_then_scheduled_then_destroyed() {
        let spec = spec(serde_json::json!({}));
        let record = record(&spec);
        let served = [ServedBy {
            plugin: "cp-1".to_owned(),
            served_key_id: None,
            seeded_key_id: None,
            held_key_id: None,
            held_versions: Vec::new(),
            live: false,
        }];
        let previous = Previous {
            status: None,
            generation: Some(1),
        };
        let scope = ArnScope::default();
        let held = |record: Option<&KmsKeyMaterialSpec>, served: &[ServedBy], now| {
            plan_held(&spec, record, previous, served, now, &scope, ACCOUNT).expect("plan")
        };
        match held(Some(&record), &served, t0()) {
            HeldPlan::Hold {
                record, requeue, ..
            } => {
                assert!(record.is_none(), "no window starts while served");
                assert_eq!(requeue, Action::requeue(PROTECTED_RECHECK));
            }
            other => panic!("{other:?}"),
        }
        let scheduled = match held(Some(&record), &[], t0()) {
            HeldPlan::Hold {
                record: Some(scheduled),
                notes,
                ..
            } => {
                assert_eq!(reasons(&notes), ["DeletionScheduled"]);
                *scheduled
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(
            scheduled.deletion_date,
            Some(format_time(t0() + Duration::days(30)))
        );
        assert!(matches!(
            held(Some(&scheduled), &[], t0() + Duration::days(29)),
            HeldPlan::Hold { record: None, .. }
        ));
        assert!(matches!(
            held(Some(&scheduled), &[], t0() + Duration::days(30)),
            HeldPlan::Destroy
        ));
        assert!(matches!(held(None, &[], t0()), HeldPlan::Destroy));
    }
}
