//! Leader election on a coordination.k8s.io Lease, so two replicas are safe: only the
//! holder reconciles.
//!
//! Every time is judged on this process's own monotonic clock (as client-go does), never
//! by comparing the Lease's `renewTime` (another machine's wall clock) with ours:
//!
//! - A standby takes the Lease over only when it has seen no change of it for the Lease's
//!   duration; a Lease it sees for the first time counts as just renewed.
//! - The holder renews every `renew_every`. Each renewal (a get and a replace) must finish
//!   before `renew_deadline` has passed since the start of the last successful one; when it
//!   cannot, [`LeaderElector::hold`] returns at that deadline, even while a call hangs, and
//!   the caller stops reconciling. The deadline is shorter than the Lease's duration, and
//!   a standby's wait starts no earlier than the start of that last successful renewal (it
//!   cannot see a write before it was sent), so the holder has stopped before any standby
//!   may take over.
//!
//! Every write carries the resourceVersion it read, so two candidates never both win.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use tokio::time::Instant;

use crate::liveness::LeaseObserver;

/// Leader election settings.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (pod name, or host and pid).
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How long the holder keeps leading without a successful renewal (shorter than
    /// `lease_duration`).
    pub renew_deadline: Duration,
    /// How often the holder renews.
    pub renew_every: Duration,
}

impl LeaseConfig {
    /// The renew deadline client-go uses by default for a Lease duration: two thirds of it.
    #[must_use]
    pub fn default_renew_deadline(lease_duration: Duration) -> Duration {
        lease_duration.mul_f64(2.0 / 3.0)
    }

    /// Checks `renew_every < renew_deadline < lease_duration`, without which a holder could
    /// still lead when a standby takes over.
    ///
    /// # Errors
    /// A sentence saying which bound is violated.
    pub fn validate(&self) -> Result<(), String> {
        if self.renew_deadline >= self.lease_duration {
            return Err(format!(
                "the renew deadline ({:?}) must be shorter than the Lease duration ({:?})",
                self.renew_deadline, self.lease_duration
            ));
        }
        if self.renew_every.is_zero() || self.renew_every >= self.renew_deadline {
            return Err(format!(
                "the renewal period ({:?}) must be positive and shorter than the renew deadline ({:?})",
                self.renew_every, self.renew_deadline
            ));
        }
        Ok(())
    }
}

/// Why a Lease operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The API call failed.
    #[error("Lease {name}: {source}")]
    Api {
        /// The Lease.
        name: String,
        /// The failure.
        #[source]
        source: kube::Error,
    },
    /// The call did not answer in time.
    #[error("Lease {name}: no answer within {after:?}")]
    Timeout {
        /// The Lease.
        name: String,
        /// How long it waited.
        after: Duration,
    },
}

/// Why [`LeaderElector::hold`] returned: either way this replica must stop reconciling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeadershipEnd {
    /// Another replica holds the Lease (a renewal was refused).
    Lost,
    /// No renewal succeeded within the renew deadline.
    DeadlinePassed,
}

/// One leader-election participant.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// When this process last saw the Lease change (for a take-over).
    observed: LeaseObserver,
}

fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

/// How soon a failed renewal is tried again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

impl LeaderElector {
    /// A participant for `config`.
    #[must_use]
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: LeaseObserver::new(),
        }
    }

    fn lease_name(&self) -> String {
        format!("{}/{}", self.config.namespace, self.config.name)
    }

    fn error(&self, source: kube::Error) -> LeaseError {
        LeaseError::Api {
            name: self.lease_name(),
            source,
        }
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }

    /// Tries once to acquire or renew the Lease. `Ok(true)`: this replica holds it. Not
    /// bounded in time by itself: see [`Self::attempt`].
    ///
    /// # Errors
    /// [`LeaseError`] on API failures other than a lost race (a conflict is `Ok(false)`).
    pub async fn try_acquire_or_renew(&self) -> Result<bool, LeaseError> {
        // Only written into the Lease for people and other tools; never compared.
        let now = Timestamp::now();
        let Some(mut lease) = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(|e| self.error(e))?
        else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(self.duration_seconds()),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(self.error(e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let mine = holder == self.config.identity;
        // Expired: unchanged, as this process saw it, for the Lease's whole duration.
        let expired = !self.observed.is_live(&lease, self.config.lease_duration);
        if !mine && !holder.is_empty() && !expired {
            return Ok(false);
        }
        let mut new_spec = spec.clone();
        new_spec.holder_identity = Some(self.config.identity.clone());
        new_spec.lease_duration_seconds = Some(self.duration_seconds());
        new_spec.renew_time = Some(MicroTime(now));
        if !mine {
            new_spec.acquire_time = Some(MicroTime(now));
            new_spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        lease.spec = Some(new_spec);
        match self
            .api
            .replace(&lease.name_any(), &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(self.error(e)),
        }
    }

    /// [`Self::try_acquire_or_renew`], given up at `deadline` (a hanging call never
    /// holds this replica past it).
    ///
    /// # Errors
    /// [`LeaseError::Timeout`] at the deadline, or the attempt's own error.
    pub async fn attempt(&self, deadline: Instant) -> Result<bool, LeaseError> {
        let started = Instant::now();
        tokio::time::timeout_at(deadline, self.try_acquire_or_renew())
            .await
            .unwrap_or_else(|_| {
                Err(LeaseError::Timeout {
                    name: self.lease_name(),
                    after: deadline.saturating_duration_since(started),
                })
            })
    }

    /// Waits until this replica holds the Lease; returns when the winning attempt started
    /// (this process's monotonic clock), which is what [`Self::hold`] counts from.
    pub async fn acquire(&self) -> Instant {
        loop {
            let started = Instant::now();
            match self.attempt(started + self.config.renew_deadline).await {
                Ok(true) => {
                    tracing::info!(
                        lease = self.config.name,
                        identity = self.config.identity,
                        "acquired the leader Lease"
                    );
                    return started;
                }
                Ok(false) => {
                    tracing::debug!(lease = self.config.name, "another replica leads");
                }
                Err(error) => tracing::warn!(%error, "leader election"),
            }
            tokio::time::sleep(self.config.renew_every).await;
        }
    }

    /// Renews the Lease, acquired by an attempt that started at `acquired`, until it is
    /// lost: a renewal is refused, or none succeeds within the renew deadline. Returns at
    /// the deadline even while a call hangs. The caller must stop reconciling at once.
    pub async fn hold(&self, acquired: Instant) -> LeadershipEnd {
        // The start of the last successful renewal: the Lease is ours until at least
        // `last_renewal + lease_duration` on any standby's clock.
        let mut last_renewal = acquired;
        let mut next_attempt = acquired + self.config.renew_every;
        loop {
            let deadline = last_renewal + self.config.renew_deadline;
            tokio::time::sleep_until(next_attempt.min(deadline)).await;
            if Instant::now() >= deadline {
                return self.deadline_passed(last_renewal);
            }
            let started = Instant::now();
            match self.attempt(deadline).await {
                Ok(true) => {
                    last_renewal = started;
                    next_attempt = started + self.config.renew_every;
                }
                Ok(false) => {
                    tracing::error!(lease = self.config.name, "lost the leader Lease");
                    return LeadershipEnd::Lost;
                }
                Err(LeaseError::Timeout { .. }) => return self.deadline_passed(last_renewal),
                Err(error) => {
                    tracing::warn!(%error, "could not renew the leader Lease");
                    next_attempt =
                        Instant::now() + RETRY_AFTER_FAILURE.min(self.config.renew_every);
                }
            }
        }
    }

    fn deadline_passed(&self, last_renewal: Instant) -> LeadershipEnd {
        tracing::error!(
            lease = self.config.name,
            identity = self.config.identity,
            since_last_renewal = ?last_renewal.elapsed(),
            renew_deadline = ?self.config.renew_deadline,
            "leader Lease deadline passed: no renewal succeeded in time; stopping before another replica may take over"
        );
        LeadershipEnd::DeadlinePassed
    }

    /// Gives the Lease up (on shutdown) so another replica takes over at once. Bounded by
    /// the renew deadline.
    pub async fn release(&self) {
        let deadline = Instant::now() + self.config.renew_deadline;
        if tokio::time::timeout_at(deadline, self.try_release())
            .await
            .is_err()
        {
            tracing::warn!(
                lease = self.config.name,
                "could not release the leader Lease in time; a standby takes over once it expires"
            );
        }
    }

    async fn try_release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        if let Err(error) = self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(%error, "could not release the leader Lease");
        } else {
            tracing::info!(lease = self.config.name, "released the leader Lease");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(lease: u64, deadline: u64, every: u64) -> LeaseConfig {
        LeaseConfig {
            namespace: "ns".to_owned(),
            name: "l".to_owned(),
            identity: "a".to_owned(),
            lease_duration: Duration::from_secs(lease),
            renew_deadline: Duration::from_secs(deadline),
            renew_every: Duration::from_secs(every),
        }
    }

    #[test]
    fn the_deadline_must_fall_before_the_lease_expires() {
        assert!(config(15, 10, 5).validate().is_ok());
        assert!(config(15, 15, 5).validate().is_err());
        assert!(config(15, 10, 10).validate().is_err());
        assert!(config(15, 10, 0).validate().is_err());
        let deadline = LeaseConfig::default_renew_deadline(Duration::from_secs(4));
        assert!(deadline < Duration::from_secs(4) && deadline > Duration::from_secs(1));
    }
}
