//! The KmsAlias reconciler: resolves the target key into status and reports, as a Ready
//! condition, a missing target, a target pending deletion or deleted, a name already
//! taken by an older alias in the namespace, or a retarget AWS UpdateAlias would refuse.

use std::sync::Arc;

use kms_core::{AliasName, Arn, KeySpec, KeyUsage};
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use kubekms_k8s::convert::{effective_usage, format_time};
use kubekms_k8s::names::KeyStateName;
use kubekms_k8s::{Condition, KmsAlias, KmsAliasStatus, KmsKey};

use crate::events::{Note, publish};
use crate::{Context, Error};

const CONTROLLER: &str = "kmsalias";

/// AWS UpdateAlias: the old and new key must be of the same type (symmetric, asymmetric
/// or HMAC) and have the same key usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyFamily {
    Symmetric,
    Asymmetric,
    Hmac,
}

fn family(spec: KeySpec) -> KeyFamily {
    if spec.is_symmetric() {
        KeyFamily::Symmetric
    } else if spec.as_str().starts_with("HMAC_") {
        KeyFamily::Hmac
    } else {
        KeyFamily::Asymmetric
    }
}

fn kind_of(key: &KmsKey) -> (KeyFamily, KeyUsage) {
    (
        family(KeySpec::from(key.spec.key_spec)),
        effective_usage(&key.spec),
    )
}

/// Reconciles one KmsAlias.
///
/// # Errors
/// [`Error`] on API failures; retried with a back-off.
pub async fn reconcile(alias: Arc<KmsAlias>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics
        .measure(CONTROLLER, reconcile_alias(&alias, &ctx))
        .await
}

/// What the controller does after a failed reconciliation.
pub fn error_policy(alias: Arc<KmsAlias>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(name = alias.name_any(), %error, "KmsAlias reconciliation failed; retrying");
    Action::requeue(std::time::Duration::from_secs(5))
}

/// Whether `other` claimed the alias name before `alias`: older creation wins, the name
/// breaks ties.
fn claimed_before(other: &KmsAlias, alias: &KmsAlias) -> bool {
    let created = |a: &KmsAlias| a.meta().creation_timestamp.clone().map(|t| t.0);
    (created(other), other.name_any()) < (created(alias), alias.name_any())
}

async fn reconcile_alias(alias: &KmsAlias, ctx: &Context) -> Result<Action, Error> {
    if alias.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = alias
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let aliases: Api<KmsAlias> = Api::namespaced(ctx.client.clone(), &namespace);
    let keys: Api<KmsKey> = Api::namespaced(ctx.client.clone(), &namespace);
    let previous = alias.status.clone().unwrap_or_default();
    let mut status = KmsAliasStatus {
        target_key_id: previous.target_key_id.clone(),
        target_key_arn: previous.target_key_arn.clone(),
        alias_arn: AliasName::parse(&alias.spec.alias_name)
            .ok()
            .map(|name| Arn::for_alias(&ctx.scope, &ctx.account_id(&namespace), name).to_string()),
        conditions: previous.conditions.clone(),
        observed_generation: alias.meta().generation,
    };

    let conflict = aliases
        .list(&ListParams::default())
        .await?
        .into_iter()
        .filter(|other| other.name_any() != alias.name_any())
        .filter(|other| other.meta().deletion_timestamp.is_none())
        .find(|other| {
            other.spec.alias_name == alias.spec.alias_name && claimed_before(other, alias)
        });

    let (ready, reason, message) = if let Some(owner) = conflict {
        (
            false,
            "NameConflict",
            format!(
                "{} is already taken by KmsAlias {} in this namespace",
                alias.spec.alias_name,
                owner.name_any()
            ),
        )
    } else {
        match keys.get_opt(&alias.spec.target_key_ref.name).await? {
            None => {
                let reason = if previous.target_key_id.is_some() {
                    "TargetDeleted"
                } else {
                    "TargetNotFound"
                };
                (
                    false,
                    reason,
                    format!("KmsKey {} does not exist", alias.spec.target_key_ref.name),
                )
            }
            Some(target) => resolve(alias, &target, &previous, &keys, &mut status).await?,
        }
    };
    let changed = Condition::upsert_changed(
        &mut status.conditions,
        Condition::ready(
            ready,
            reason,
            message.clone(),
            &format_time(ctx.clock.now()),
            alias.meta().generation,
        ),
    );
    crate::apply_status(&aliases, alias, alias.status.as_ref(), &status).await?;
    if changed {
        let note = Note::ready_changed(ready, "Resolved", reason, "Resolve", message);
        publish(ctx, &alias.object_ref(&()), vec![note]).await;
    }
    Ok(Action::await_change())
}

/// The alias's target exists: resolve it unless it is a retarget AWS would refuse.
async fn resolve(
    alias: &KmsAlias,
    target: &KmsKey,
    previous: &KmsAliasStatus,
    keys: &Api<KmsKey>,
    status: &mut KmsAliasStatus,
) -> Result<(bool, &'static str, String), Error> {
    let Some(target_status) = target.status.as_ref().filter(|s| s.key_id.is_some()) else {
        return Ok((
            false,
            "TargetNotFound",
            format!("KmsKey {} has no key id yet", target.name_any()),
        ));
    };
    let target_id = target_status.key_id.clone();
    if previous.target_key_id.is_some() && previous.target_key_id != target_id {
        // A retarget: find the old key by its id and compare kinds. An old key that is
        // gone imposes nothing.
        let old = keys
            .list(&ListParams::default())
            .await?
            .into_iter()
            .find(|k| {
                k.status.as_ref().and_then(|s| s.key_id.as_ref()) == previous.target_key_id.as_ref()
            });
        if let Some(old) = old
            && kind_of(&old) != kind_of(target)
        {
            return Ok((
                false,
                "IncompatibleTarget",
                format!(
                    "KmsKey {} ({}, {}) is not of the same type and usage as the current target {} ({}, {}); the alias keeps pointing at the current target",
                    target.name_any(),
                    KeySpec::from(target.spec.key_spec),
                    effective_usage(&target.spec),
                    old.name_any(),
                    KeySpec::from(old.spec.key_spec),
                    effective_usage(&old.spec),
                ),
            ));
        }
    }
    status.target_key_id = target_id;
    status.target_key_arn = target_status.arn.clone();
    let pending = target.meta().deletion_timestamp.is_some()
        || target_status.key_state == Some(KeyStateName::PendingDeletion);
    if pending {
        Ok((
            false,
            "TargetPendingDeletion",
            format!("KmsKey {} is pending deletion", target.name_any()),
        ))
    } else {
        Ok((
            true,
            "Ready",
            format!(
                "{} points at key {}",
                alias.spec.alias_name,
                status.target_key_id.as_deref().unwrap_or_default()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_follow_aws_update_alias() {
        assert_eq!(family(KeySpec::SymmetricDefault), KeyFamily::Symmetric);
        assert_eq!(family(KeySpec::Hmac256), KeyFamily::Hmac);
        assert_eq!(family(KeySpec::Rsa2048), KeyFamily::Asymmetric);
        assert_eq!(family(KeySpec::EccNistP256), KeyFamily::Asymmetric);
    }
}
