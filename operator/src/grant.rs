//! The KmsGrant reconciler: validates the grant against its key as AWS CreateGrant does,
//! gives it a stable grant id and token, and reports a Ready condition. Deleting the object
//! revokes the grant (the object is the grant), so no finalizer is needed. Grants on a key
//! whose material was destroyed are deleted (by the key's cleanup, and here for a key that
//! is being deleted without a record).

use std::sync::Arc;

use kms_core::grants::Grant;
use kube::api::{Api, DeleteParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use kubekms_k8s::convert::format_time;
use kubekms_k8s::names::KeyStateName;
use kubekms_k8s::{Condition, KmsGrant, KmsGrantStatus, KmsKey, KmsKeyMaterial};

use crate::events::{Note, publish};
use crate::{Context, Error};

const CONTROLLER: &str = "kmsgrant";

/// Reconciles one KmsGrant.
///
/// # Errors
/// [`Error`] on API failures; retried with a back-off.
pub async fn reconcile(grant: Arc<KmsGrant>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics
        .measure(CONTROLLER, reconcile_grant(&grant, &ctx))
        .await
}

/// What the controller does after a failed reconciliation.
pub fn error_policy(grant: Arc<KmsGrant>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(name = grant.name_any(), %error, "KmsGrant reconciliation failed; retrying");
    Action::requeue(std::time::Duration::from_secs(5))
}

pub use kubekms_k8s::grant::grant_id_and_token;

/// The grant as CreateGrant would build it for `key`.
fn validate(grant: &KmsGrant, key: &KmsKey) -> Result<Grant, kms_core::KmsError> {
    kubekms_k8s::grant::to_grant(&grant.spec, &key.spec)
}

async fn reconcile_grant(grant: &KmsGrant, ctx: &Context) -> Result<Action, Error> {
    if grant.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = grant
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let grants: Api<KmsGrant> = Api::namespaced(ctx.client.clone(), &namespace);
    let keys: Api<KmsKey> = Api::namespaced(ctx.client.clone(), &namespace);
    let records: Api<KmsKeyMaterial> = Api::namespaced(ctx.client.clone(), &namespace);
    let key_name = &grant.spec.key_ref.name;
    let previous = grant.status.clone().unwrap_or_default();
    let mut status = KmsGrantStatus {
        grant_id: previous.grant_id.clone(),
        grant_token: previous.grant_token.clone(),
        key_id: previous.key_id.clone(),
        conditions: previous.conditions.clone(),
        observed_generation: grant.meta().generation,
    };

    let key = keys.get_opt(key_name).await?;
    if let Some(key) = &key
        && key.meta().deletion_timestamp.is_some()
        && records.get_opt(key_name).await?.is_none()
    {
        // The key's material is destroyed: the grant goes with it.
        grants
            .delete(&grant.name_any(), &DeleteParams::default())
            .await?;
        return Ok(Action::await_change());
    }
    let (ready, reason, message) = match &key {
        None => (
            false,
            "KeyNotFound",
            format!("KmsKey {key_name} does not exist"),
        ),
        Some(key) => {
            let built = validate(grant, key);
            let key_id = key.status.as_ref().and_then(|s| s.key_id.clone());
            match built {
                Err(error) => (false, "InvalidOperations", error.to_string()),
                Ok(_) if key_id.is_none() => (
                    false,
                    "KeyNotFound",
                    format!("KmsKey {key_name} has no key id yet"),
                ),
                Ok(_) => {
                    status.key_id = key_id;
                    let uid = grant
                        .metadata
                        .uid
                        .as_deref()
                        .ok_or(Error::MissingField("metadata.uid"))?;
                    let (grant_id, grant_token) = grant_id_and_token(ctx.root_keys.as_ref(), uid)?;
                    status.grant_id = Some(grant_id);
                    status.grant_token = Some(grant_token);
                    let pending = key.meta().deletion_timestamp.is_some()
                        || key.status.as_ref().and_then(|s| s.key_state)
                            == Some(KeyStateName::PendingDeletion);
                    if pending {
                        (
                            false,
                            "KeyPendingDeletion",
                            format!("KmsKey {key_name} is pending deletion"),
                        )
                    } else {
                        (
                            true,
                            "Granted",
                            format!(
                                "{} operations granted on key {}",
                                grant.spec.operations.len(),
                                status.key_id.as_deref().unwrap_or_default()
                            ),
                        )
                    }
                }
            }
        }
    };
    let changed = Condition::upsert_changed(
        &mut status.conditions,
        Condition::ready(
            ready,
            reason,
            message.clone(),
            &format_time(ctx.clock.now()),
            grant.meta().generation,
        ),
    );
    crate::apply_status(&grants, grant, grant.status.as_ref(), &status).await?;
    if changed {
        let note = Note::ready_changed(ready, "Granted", reason, "CreateGrant", message);
        publish(ctx, &grant.object_ref(&()), vec![note]).await;
    }
    Ok(Action::await_change())
}
