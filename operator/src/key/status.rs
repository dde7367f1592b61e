//! The status of a KmsKey, derived from its spec and record (pure): the fields, the Ready
//! and Protected conditions, and the statuses of the passes that change nothing (an
//! invalid record, a missing one, another key's).

use kms_core::ArnScope;
use kube::ResourceExt as _;
use kubekms_k8s::convert::{self, format_time};
use kubekms_k8s::names::KeyStateName;
use kubekms_k8s::{Condition, KmsKeyMaterialSpec, KmsKeySpec, KmsKeyStatus, ServedBy};
use time::OffsetDateTime;

use crate::events::Note;
use crate::protection;

/// What a status is derived for: the key's previous status and generation.
#[derive(Debug, Clone, Copy)]
pub struct Previous<'a> {
    /// The status the object carries now.
    pub status: Option<&'a KmsKeyStatus>,
    /// `metadata.generation`.
    pub generation: Option<i64>,
}

impl<'a> Previous<'a> {
    /// The previous status and generation of `key`.
    #[must_use]
    pub fn of(key: &'a kubekms_k8s::KmsKey) -> Self {
        Self {
            status: key.status.as_ref(),
            generation: key.metadata.generation,
        }
    }

    /// The key id the previous status recorded.
    #[must_use]
    pub fn key_id(&self) -> Option<&'a str> {
        self.status.and_then(|s| s.key_id.as_deref())
    }

    fn ready_reason(&self) -> Option<&'a str> {
        self.status
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.reason.as_str())
    }
}

/// The status a spec and a record imply, with the Ready condition, keeping the transition
/// times of conditions whose status did not change and the re-encryption progress (which
/// is not derived from the spec and record: it carries over until a pass is planned again).
#[must_use]
pub fn derive(
    previous: Previous<'_>,
    spec: &KmsKeySpec,
    record: &KmsKeyMaterialSpec,
    scope: &ArnScope,
    account: &str,
    now: OffsetDateTime,
) -> KmsKeyStatus {
    let generation = previous.generation;
    let mut status = match convert::metadata(spec, record) {
        Ok(metadata) => convert::status(&metadata, scope, account, generation),
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
    keep_transition_times(previous.status, &mut status);
    status.reencryption = previous.status.and_then(|s| s.reencryption.clone());
    status
}

/// Sets the Ready condition.
pub fn set_ready(
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
pub fn keep_transition_times(previous: Option<&KmsKeyStatus>, status: &mut KmsKeyStatus) {
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

/// The previous status with Ready False for `reason`: a pass that changes nothing else.
fn unchanged_but_not_ready(
    previous: Previous<'_>,
    reason: &str,
    message: String,
    now: OffsetDateTime,
) -> KmsKeyStatus {
    let mut status = previous.status.cloned().unwrap_or_default();
    set_ready(
        &mut status,
        false,
        reason,
        message,
        now,
        previous.generation,
    );
    status.observed_generation = previous.generation;
    status
}

/// A key whose spec or record cannot be used: Ready False, reason Invalid, a Warning Event.
#[must_use]
pub fn invalid(
    previous: Previous<'_>,
    message: &str,
    now: OffsetDateTime,
) -> (KmsKeyStatus, Vec<Note>) {
    (
        unchanged_but_not_ready(previous, "Invalid", message.to_owned(), now),
        vec![Note::warning("Invalid", "Reconcile", message.to_owned())],
    )
}

/// The key existed (its status has an id) and its record is gone: making a new key under
/// the same name would silently change the key id. Reported instead.
#[must_use]
pub fn material_missing(
    previous: Previous<'_>,
    lost_id: &str,
    now: OffsetDateTime,
) -> (KmsKeyStatus, Vec<Note>) {
    let status = unchanged_but_not_ready(
        previous,
        "MaterialMissing",
        format!("the KmsKeyMaterial record of key {lost_id} is missing; restore it from a backup"),
        now,
    );
    let notes = if previous.ready_reason() == Some("MaterialMissing") {
        Vec::new()
    } else {
        vec![Note::warning(
            "MaterialMissing",
            "Reconcile",
            format!("the KmsKeyMaterial record of key {lost_id} is missing"),
        )]
    };
    (status, notes)
}

/// The record names another key than the one this KmsKey has (its status keyId): someone
/// replaced it (deleted and re-created it, or restored another key's record under this
/// name). Nothing is rebuilt from it and nothing is written into it; reported once.
#[must_use]
pub fn record_mismatch(
    previous: Previous<'_>,
    recorded_id: &str,
    found_id: &str,
    now: OffsetDateTime,
) -> (KmsKeyStatus, Vec<Note>) {
    let message = format!(
        "the KmsKeyMaterial record holds key {found_id}, but this KmsKey is key {recorded_id}: \
         the record was replaced. Nothing is changed until the record of key {recorded_id} is \
         restored (or the foreign record removed)"
    );
    let status = unchanged_but_not_ready(previous, "RecordMismatch", message.clone(), now);
    let notes = if previous.ready_reason() == Some("RecordMismatch") {
        Vec::new()
    } else {
        vec![Note::warning("RecordMismatch", "Reconcile", message)]
    };
    (status, notes)
}

/// Shows which plugins serve the key and the Protected condition (with the refusal, if
/// any) in `status`; returns the Warning Event of a refusal not reported yet.
#[must_use]
pub fn protect(
    previous: Previous<'_>,
    status: &mut KmsKeyStatus,
    served: &[ServedBy],
    refused: Option<(&str, String)>,
    operation: &'static str,
    now: OffsetDateTime,
) -> Vec<Note> {
    status.served_by = served.to_vec();
    let mut notes = Vec::new();
    if let Some((reason, message)) = &refused {
        let already_reported = previous.status.is_some_and(|s| {
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
        protection::condition(served, refused, &format_time(now), previous.generation)
    {
        Condition::upsert(&mut status.conditions, condition);
    }
    keep_transition_times(previous.status, status);
    notes
}

/// `namespace/name` of a key, as the metrics name it.
#[must_use]
pub fn metric_name(key: &kubekms_k8s::KmsKey) -> String {
    format!("{}/{}", key.namespace().unwrap_or_default(), key.name_any())
}
