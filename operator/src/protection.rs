//! Protection of the keys kube-apiserver encrypts with. A KmsKey is served when a plugin's
//! heartbeat Lease in its namespace names it; a served key cannot be disabled, scheduled
//! for deletion or deleted. The ValidatingAdmissionPolicy in deploy/admission refuses
//! such requests up front; the operator refuses them as well, for clusters without it.

use k8s_openapi::api::coordination::v1::Lease;
use kube::ResourceExt as _;
use kube::runtime::reflector::Store;
use kubekms_k8s::heartbeat::Heartbeat;
use kubekms_k8s::{Condition, ServedBy};

use crate::liveness::LeaseObserver;

/// The condition type that reports protection.
pub const CONDITION: &str = "Protected";

/// The plugins serving KmsKey `namespace/name`, by plugin name. A plugin is live while
/// this process has seen its Lease change within the Lease's duration ([`LeaseObserver`],
/// this process's monotonic clock); the plugin's own `renewTime` is never compared with
/// this machine's clock.
#[must_use]
pub fn served_by(
    leases: &Store<Lease>,
    observer: &LeaseObserver,
    namespace: &str,
    name: &str,
) -> Vec<ServedBy> {
    let mut served: Vec<ServedBy> = leases
        .state()
        .iter()
        .filter(|lease| lease.namespace().as_deref() == Some(namespace))
        .filter_map(|lease| Some((Heartbeat::from_lease(lease)?, lease)))
        .filter(|(beat, _)| beat.key_name == name)
        .map(|(beat, lease)| ServedBy {
            live: beat.is_live(observer.observe(lease).elapsed()),
            plugin: beat.plugin,
            served_key_id: beat.served_key_id,
            seeded_key_id: beat.seeded.map(|(id, _)| id),
            held_key_id: beat.held.as_ref().map(|(id, _)| id.clone()),
            held_versions: beat.held.map(|(_, versions)| versions).unwrap_or_default(),
        })
        .collect();
    served.sort_by(|a, b| a.plugin.cmp(&b.plugin));
    served
}

/// Why a request on a served key is refused, for Events and the condition.
#[must_use]
pub fn refusal(served: &[ServedBy], what: &str, consequence: &str) -> String {
    format!(
        "{what} refused: kube-apiserver encrypts Secrets with this key through the kubekms plugin(s) {}; {consequence}. \
         Point every plugin at another key and let the Secrets be re-encrypted first (or delete a plugin's \
         kubekms-plugin-<name> Lease once that plugin is gone for good)",
        names(served)
    )
}

fn names(served: &[ServedBy]) -> String {
    served
        .iter()
        .map(|p| p.plugin.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The Protected condition for a served key (reason `ServedByPlugin` unless a refusal is
/// given); `None` for a key no plugin serves.
#[must_use]
pub fn condition(
    served: &[ServedBy],
    refused: Option<(&str, String)>,
    now: &str,
    generation: Option<i64>,
) -> Option<Condition> {
    if served.is_empty() {
        return None;
    }
    let (reason, message) = refused.unwrap_or_else(|| {
        (
            "ServedByPlugin",
            format!(
                "kube-apiserver encrypts Secrets with this key through the kubekms plugin(s) {}: it cannot be disabled, scheduled for deletion or deleted",
                names(served)
            ),
        )
    });
    Some(Condition {
        type_: CONDITION.to_owned(),
        status: "True".to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time: now.to_owned(),
        observed_generation: generation,
    })
}

#[cfg(test)]
mod tests {
    use kube::runtime::reflector::store::Writer;
    use kube::runtime::watcher::Event;
    use kubekms_k8s::heartbeat::LEASE_DURATION_SECONDS;

    use super::*;

    fn at(seconds: i64) -> time::OffsetDateTime {
        time::OffsetDateTime::from_unix_timestamp(1_800_000_000 + seconds)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
    }

    fn lease(namespace: &str, plugin: &str, key: &str, renewed: i64) -> Lease {
        Heartbeat {
            plugin: plugin.to_owned(),
            key_name: key.to_owned(),
            served_key_id: Some("k/v1".to_owned()),
            seeded: Some(("k/v1".to_owned(), at(0))),
            held: None,
            renewed: None,
            duration_seconds: LEASE_DURATION_SECONDS,
        }
        .to_lease(namespace, at(renewed))
    }

    #[tokio::test(start_paused = true)]
    async fn only_heartbeats_naming_the_key_in_its_namespace_count() {
        let mut writer = Writer::<Lease>::default();
        let observer = LeaseObserver::new();
        for l in [
            lease("ns", "b", "key", 0),
            lease("ns", "a", "key", 100),
            lease("ns", "c", "other", 100),
            lease("elsewhere", "d", "key", 100),
        ] {
            writer.apply_watcher_event(&Event::Apply(l));
        }
        let reader = writer.as_reader();
        // b was last renewed 100 s before a by the plugins' clocks: both first seen now,
        // so both are live, whatever those clocks say.
        let served = served_by(&reader, &observer, "ns", "key");
        let summary: Vec<(&str, bool)> =
            served.iter().map(|p| (p.plugin.as_str(), p.live)).collect();
        assert_eq!(summary, [("a", true), ("b", true)]);
        // a renews, b does not: after b's duration only a is live.
        tokio::time::advance(std::time::Duration::from_secs(40)).await;
        writer.apply_watcher_event(&Event::Apply(lease("ns", "a", "key", 140)));
        tokio::time::advance(std::time::Duration::from_secs(21)).await;
        let served = served_by(&reader, &observer, "ns", "key");
        let summary: Vec<(&str, bool)> =
            served.iter().map(|p| (p.plugin.as_str(), p.live)).collect();
        assert_eq!(summary, [("a", true), ("b", false)]);
        assert_eq!(served[0].seeded_key_id.as_deref(), Some("k/v1"));
        let text = refusal(&served, "disabling", "reads would fail");
        assert!(text.contains("plugin(s) a, b; reads would fail"), "{text}");
        assert!(condition(&[], None, "t", None).is_none());
        assert_eq!(
            condition(&served, None, "t", Some(2)).map(|c| c.reason),
            Some("ServedByPlugin".to_owned())
        );
    }
}
