//! Leader election on a coordination.k8s.io Lease, so two replicas are safe: only the
//! holder reconciles. The holder renews every `renew_every`; another replica takes the
//! Lease over only when it has not been renewed for `lease_duration`. Every write carries
//! the resourceVersion it read, so two candidates never both win. Lease times use the
//! system clock, never the (possibly test-moved) reconciliation clock.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};

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
    /// How often the holder renews.
    pub renew_every: Duration,
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
}

/// One leader-election participant.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
}

fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

impl LeaderElector {
    /// A participant for `config`.
    #[must_use]
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
        }
    }

    fn error(&self, source: kube::Error) -> LeaseError {
        LeaseError::Api {
            name: format!("{}/{}", self.config.namespace, self.config.name),
            source,
        }
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }

    /// Tries once to acquire or renew the Lease. `Ok(true)`: this replica holds it.
    ///
    /// # Errors
    /// [`LeaseError`] on API failures other than a lost race (a conflict is `Ok(false)`).
    pub async fn try_acquire_or_renew(&self) -> Result<bool, LeaseError> {
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
        let duration = spec
            .lease_duration_seconds
            .map_or(self.config.lease_duration, |s| {
                Duration::from_secs(u64::try_from(s).unwrap_or(0))
            });
        let expired = match spec.renew_time.as_ref() {
            Some(renewed) => {
                let age = now.duration_since(renewed.0);
                age.as_secs_f64() > duration.as_secs_f64()
            }
            None => true,
        };
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

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    tracing::info!(
                        lease = self.config.name,
                        identity = self.config.identity,
                        "acquired the leader Lease"
                    );
                    return;
                }
                Ok(false) => {
                    tracing::debug!(lease = self.config.name, "another replica leads");
                }
                Err(error) => tracing::warn!(%error, "leader election"),
            }
            tokio::time::sleep(self.config.renew_every).await;
        }
    }

    /// Renews the Lease until it is lost; returns when it is (renewal refused, or failing
    /// for longer than the lease duration, after which another replica may lead).
    pub async fn hold(&self) {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.config.renew_every).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewal = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::error!(lease = self.config.name, "lost the leader Lease");
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "could not renew the leader Lease");
                    // Stop before another replica may take over, so two never reconcile.
                    if last_renewal.elapsed() + self.config.renew_every
                        >= self.config.lease_duration
                    {
                        tracing::error!(lease = self.config.name, "leader Lease expired");
                        return;
                    }
                }
            }
        }
    }

    /// Gives the Lease up (on shutdown) so another replica takes over at once.
    pub async fn release(&self) {
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
