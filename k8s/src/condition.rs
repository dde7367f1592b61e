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
}
