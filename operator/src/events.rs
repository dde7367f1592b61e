//! Publishing Events about KubeKMS objects. A failure to publish is logged and otherwise
//! ignored: Events are for people, and a reconciliation must not fail on them.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType};

use crate::Context;

/// One Event to publish about the object being reconciled. Notes name keys by id and
/// version only; they never carry material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Normal or Warning.
    pub warning: bool,
    /// CamelCase reason (KeyCreated, Rotated, ...).
    pub reason: &'static str,
    /// The action taken (Create, Rotate, ...).
    pub action: &'static str,
    /// A sentence for people.
    pub text: String,
}

impl Note {
    /// A Normal event.
    #[must_use]
    pub fn normal(reason: &'static str, action: &'static str, text: impl Into<String>) -> Self {
        Self {
            warning: false,
            reason,
            action,
            text: text.into(),
        }
    }

    /// A Warning event.
    #[must_use]
    pub fn warning(reason: &'static str, action: &'static str, text: impl Into<String>) -> Self {
        Self {
            warning: true,
            reason,
            action,
            text: text.into(),
        }
    }

    /// The Event of a Ready condition that changed: Normal with `became_ready` when the
    /// object became ready, a Warning with the condition's reason when it did not.
    #[must_use]
    pub fn ready_changed(
        ready: bool,
        became_ready: &'static str,
        reason: &'static str,
        action: &'static str,
        text: impl Into<String>,
    ) -> Self {
        if ready {
            Self::normal(became_ready, action, text)
        } else {
            Self::warning(reason, action, text)
        }
    }
}

/// Publishes `notes` about `reference`, in order.
pub async fn publish(ctx: &Context, reference: &ObjectReference, notes: Vec<Note>) {
    for note in notes {
        let event = Event {
            type_: if note.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: note.reason.to_owned(),
            note: Some(note.text),
            action: note.action.to_owned(),
            secondary: None,
        };
        if let Err(error) = ctx.recorder.publish(&event, reference).await {
            tracing::warn!(
                reason = note.reason,
                object = reference.name.as_deref().unwrap_or_default(),
                %error,
                "could not publish an Event"
            );
        }
    }
}
