//! Status conditions in the shape of `metav1.Condition`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One aspect of an object's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The aspect, in CamelCase (for example `Ready`).
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase word for why (for example `Enabled`, `PendingDeletion`).
    pub reason: String,
    /// A sentence for people.
    #[serde(default)]
    pub message: String,
    /// When the status last changed (RFC 3339).
    pub last_transition_time: String,
    /// The metadata.generation this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl Condition {
    /// A `Ready` condition.
    #[must_use]
    pub fn ready(
        ready: bool,
        reason: &str,
        message: impl Into<String>,
        now: &str,
        generation: Option<i64>,
    ) -> Self {
        Self {
            type_: "Ready".to_owned(),
            status: if ready { "True" } else { "False" }.to_owned(),
            reason: reason.to_owned(),
            message: message.into(),
            last_transition_time: now.to_owned(),
            observed_generation: generation,
        }
    }

    /// Replaces the condition of the same type in `conditions`, keeping the old transition
    /// time when the status did not change (as `meta.SetStatusCondition` does).
    pub fn upsert(conditions: &mut Vec<Condition>, new: Condition) {
        match conditions.iter_mut().find(|c| c.type_ == new.type_) {
            Some(existing) => {
                let keep_time = existing.status == new.status;
                let time = existing.last_transition_time.clone();
                *existing = new;
                if keep_time {
                    existing.last_transition_time = time;
                }
            }
            None => conditions.push(new),
        }
    }

    /// `upsert`, telling whether the condition's status or reason changed: a change
    /// worth an Event, where a new message or generation alone is not.
    pub fn upsert_changed(conditions: &mut Vec<Condition>, new: Condition) -> bool {
        let changed = !conditions
            .iter()
            .any(|c| c.type_ == new.type_ && c.status == new.status && c.reason == new.reason);
        Self::upsert(conditions, new);
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::Condition;

    #[test]
    fn a_change_of_status_or_reason_is_reported_and_a_new_message_alone_is_not() {
        let mut conditions = Vec::new();
        let first = Condition::ready(false, "TargetNotFound", "a", "t1", Some(1));
        assert!(Condition::upsert_changed(&mut conditions, first));
        let same = Condition::ready(false, "TargetNotFound", "other words", "t2", Some(2));
        assert!(!Condition::upsert_changed(&mut conditions, same));
        assert_eq!(conditions[0].last_transition_time, "t1");
        assert_eq!(conditions[0].message, "other words");
        let reason = Condition::ready(false, "TargetDeleted", "b", "t3", Some(2));
        assert!(Condition::upsert_changed(&mut conditions, reason));
        let ready = Condition::ready(true, "Ready", "c", "t4", Some(2));
        assert!(Condition::upsert_changed(&mut conditions, ready));
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].last_transition_time, "t4");
    }
}
