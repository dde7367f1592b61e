//! Liveness of a Lease judged on this process's own monotonic clock, as client-go does.
//!
//! A Lease's `renewTime` is written by another machine with that machine's wall clock; set
//! against this machine's wall clock it says nothing when either clock is off (a node 60 s
//! behind makes a live plugin look dead). What this process can know is when it last saw
//! the Lease *change*: a holder that renews writes a new `renewTime` (and so a new
//! resourceVersion) each time. A Lease counts as live for its `leaseDurationSeconds` from
//! the moment this process last saw it change; a Lease seen for the first time counts as
//! just changed, so it gets its full duration (after a restart nothing looks dead early).
//!
//! Erring towards "live" only delays things (a re-encryption waits, a standby waits); erring
//! towards "dead" would let a re-encryption start before an API server has re-seeded, or a
//! standby lead beside a live leader.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use tokio::time::Instant;

/// What identifies one written state of a Lease: any change of it is a renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Written {
    resource_version: Option<String>,
    holder: Option<String>,
    renew_time: Option<k8s_openapi::jiff::Timestamp>,
}

impl Written {
    fn of(lease: &Lease) -> Self {
        let spec = lease.spec.as_ref();
        Self {
            resource_version: lease.metadata.resource_version.clone(),
            holder: spec.and_then(|s| s.holder_identity.clone()),
            renew_time: spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0),
        }
    }
}

type LeaseKey = (Option<String>, Option<String>);

fn key_of(lease: &Lease) -> LeaseKey {
    (
        lease.metadata.namespace.clone(),
        lease.metadata.name.clone(),
    )
}

/// How long a Lease stays live without a change: its `leaseDurationSeconds`, else
/// `default`.
#[must_use]
pub fn lease_duration(lease: &Lease, default: Duration) -> Duration {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.lease_duration_seconds)
        .map_or(default, |s| {
            Duration::from_secs(u64::try_from(s).unwrap_or(0))
        })
}

/// When this process last saw each Lease change.
#[derive(Debug, Default)]
pub struct LeaseObserver {
    seen: Mutex<HashMap<LeaseKey, (Written, Instant)>>,
}

impl LeaseObserver {
    /// An observer that has seen nothing.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<LeaseKey, (Written, Instant)>> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Notes `lease` as seen now and returns the instant (this process's monotonic clock)
    /// at which it was first seen in its current state.
    pub fn observe(&self, lease: &Lease) -> Instant {
        let written = Written::of(lease);
        let now = Instant::now();
        let mut seen = self.seen();
        match seen.get_mut(&key_of(lease)) {
            Some((last, since)) if *last == written => *since,
            Some(entry) => {
                *entry = (written, now);
                now
            }
            None => {
                seen.insert(key_of(lease), (written, now));
                now
            }
        }
    }

    /// Forgets a deleted Lease.
    pub fn forget(&self, lease: &Lease) {
        self.seen().remove(&key_of(lease));
    }

    /// Whether `lease` changed within its duration (`default` when it names none), as seen
    /// by this process. Notes it as seen.
    pub fn is_live(&self, lease: &Lease, default: Duration) -> bool {
        self.observe(lease).elapsed() <= lease_duration(lease, default)
    }

    /// Feeds a watcher event: an applied Lease is observed, a deleted one forgotten.
    pub fn watcher_event(&self, event: &kube::runtime::watcher::Event<Lease>) {
        use kube::runtime::watcher::Event;
        match event {
            Event::Apply(lease) | Event::InitApply(lease) => {
                self.observe(lease);
            }
            Event::Delete(lease) => self.forget(lease),
            Event::Init | Event::InitDone => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    use super::*;

    fn lease(renewed_unix: i64, rv: &str) -> Lease {
        let mut lease = Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some("a".to_owned()),
                lease_duration_seconds: Some(10),
                renew_time: Some(MicroTime(
                    k8s_openapi::jiff::Timestamp::from_second(renewed_unix).expect("time"),
                )),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        };
        lease.metadata.name = Some("l".to_owned());
        lease.metadata.namespace = Some("ns".to_owned());
        lease.metadata.resource_version = Some(rv.to_owned());
        lease
    }

    #[tokio::test(start_paused = true)]
    async fn live_while_it_changes_whatever_its_renew_time_says() {
        let observer = LeaseObserver::new();
        // Renewed 60 s "in the past" by another machine's clock, then renewing.
        let ancient = 1_000_000;
        assert!(
            observer.is_live(&lease(ancient, "1"), Duration::ZERO),
            "first seen: live for its duration"
        );
        for step in 1..=5 {
            tokio::time::advance(Duration::from_secs(8)).await;
            let renewed = lease(ancient + step * 8, &format!("{}", step + 1));
            assert!(observer.is_live(&renewed, Duration::ZERO), "step {step}");
        }
        // It stops renewing: dead once its duration has passed since the last change.
        let last = lease(ancient + 40, "6");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(observer.is_live(&last, Duration::ZERO));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!observer.is_live(&last, Duration::ZERO));
        // Forgotten on delete: seen again, it starts over.
        observer.forget(&last);
        assert!(observer.is_live(&last, Duration::ZERO));
    }
}
