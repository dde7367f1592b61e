//! The heartbeat Lease (see [`kubekms_k8s::heartbeat`]): which KmsKey this plugin serves,
//! its key_id, the material versions it holds (staged ones included: the operator promotes
//! a staged version once every plugin holds it, so a new one is reported as soon as it is
//! loaded, not at the next tick), and the key_id of kube-apiserver's latest DEK seed. Every Lease write is
//! bounded by [`HeartbeatConfig::call_timeout`]: an API server that accepts the request and
//! never answers costs one attempt, not the heartbeat.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kubekms_k8s::heartbeat::{self, Heartbeat};
use kubekms_keyring::client::bounded;
use time::OffsetDateTime;
use tokio::sync::watch;

use super::FollowTarget;
use crate::service::Plugin;

/// How often the heartbeat Lease is renewed when nothing changed.
pub const HEARTBEAT_RENEW: Duration = Duration::from_secs(15);
/// How long one Lease write may take.
pub const HEARTBEAT_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Timing of the heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatConfig {
    /// Renewal period when nothing changed.
    pub renew_every: Duration,
    /// Bound of one Lease write.
    pub call_timeout: Duration,
    /// How often a change (served key_id, DEK seed) is looked for.
    pub tick: Duration,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        Self {
            renew_every: HEARTBEAT_RENEW,
            call_timeout: HEARTBEAT_CALL_TIMEOUT,
            tick: Duration::from_secs(1),
        }
    }
}

/// Keeps this plugin's heartbeat Lease renewed in the KmsKey's namespace: every
/// `renew_every`, and within a `tick` of a change of the served key_id or of
/// kube-apiserver's DEK seed, until `stop`. The Lease is left in place on shutdown: the key
/// stays protected while this API server may still need it; deleting the Lease by hand is
/// the deliberate way to release the key. A failed or timed-out write is counted, logged
/// once per distinct error, and retried at the next tick; serving never depends on it.
pub async fn heartbeat(
    plugin: Plugin,
    target: FollowTarget,
    instance: String,
    client: Client,
    config: HeartbeatConfig,
    mut stop: watch::Receiver<bool>,
) {
    let leases: Api<Lease> = Api::namespaced(client, &target.namespace);
    let params = PatchParams::apply(heartbeat::FIELD_MANAGER).force();
    let mut sent: Option<(String, Option<String>, Vec<u32>)> = None;
    let mut renewed: Option<Instant> = None;
    let mut last_error: Option<String> = None;
    loop {
        // Registered before the keys are read, so a change in between is not missed.
        let keys_changed = plugin.keys_changed();
        tokio::pin!(keys_changed);
        keys_changed.as_mut().enable();
        let ring = plugin.ring();
        let served = ring.key_id().to_owned();
        let held = ring.held_versions();
        let seeded = plugin.seeded();
        let report = (
            served.clone(),
            seeded.as_ref().map(|(id, _)| id.clone()),
            held.clone(),
        );
        let due = sent.as_ref() != Some(&report)
            || renewed.is_none_or(|at| at.elapsed() >= config.renew_every);
        if due {
            let beat = Heartbeat {
                plugin: instance.clone(),
                key_name: target.name.clone(),
                served_key_id: Some(served),
                seeded,
                held: Some((ring.active().to_string(), held)),
                renewed: None,
                duration_seconds: heartbeat::LEASE_DURATION_SECONDS,
            };
            let lease = beat.to_lease(&target.namespace, OffsetDateTime::now_utc());
            let outcome = bounded(
                config.call_timeout,
                leases.patch(&beat.lease_name(), &params, &Patch::Apply(&lease)),
            )
            .await;
            match outcome {
                Ok(Ok(_)) => {
                    plugin.metrics().heartbeat_renewals.inc();
                    if sent.as_ref() != Some(&report) || last_error.is_some() {
                        tracing::info!(kmskey = %target, lease = %beat.lease_name(), served_key_id = %report.0, seeded_key_id = ?report.1, "heartbeat");
                    }
                    sent = Some(report);
                    renewed = Some(Instant::now());
                    last_error = None;
                }
                failed => {
                    plugin.metrics().heartbeat_failures.inc();
                    let text = match failed {
                        Err(timed_out) => format!("Lease write: {timed_out}"),
                        Ok(Err(e)) => e.to_string(),
                        Ok(Ok(_)) => String::new(),
                    };
                    if last_error.as_deref() != Some(&text) {
                        tracing::warn!(kmskey = %target, error = %text, "heartbeat Lease not written; the operator cannot see this plugin");
                        last_error = Some(text);
                    }
                }
            }
        }
        // After a failed write, wait for the tick rather than retrying at every change.
        let wake_on_change = last_error.is_none();
        tokio::select! {
            () = tokio::time::sleep(config.tick) => {}
            () = keys_changed, if wake_on_change => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http::{Request, Response};
    use kube::client::Body;

    use super::*;
    use crate::metrics::Metrics;
    use crate::state::StateDir;

    /// The API server accepts the first Lease write and never answers it: the next
    /// renewal must still be sent (and succeed).
    #[tokio::test]
    async fn a_lease_write_that_never_answers_does_not_stop_the_heartbeat() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = StateDir::new(tmp.path().join("state"));
        dir.init(OffsetDateTime::now_utc()).expect("init");
        let plugin = Plugin::open(dir, Arc::new(Metrics::new())).expect("open");
        let (service, mut api) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let (stop_tx, stop_rx) = watch::channel(false);
        let config = HeartbeatConfig {
            renew_every: Duration::from_millis(50),
            call_timeout: Duration::from_millis(200),
            tick: Duration::from_millis(20),
        };
        let task = tokio::spawn(heartbeat(
            plugin.clone(),
            "kube-system/apiserver-key".parse().expect("target"),
            "cp-1".to_owned(),
            client,
            config,
            stop_rx,
        ));
        // Far longer than a timely retry needs; without the bound the test fails here.
        let wait = Duration::from_secs(20);
        let (first, _hung) = tokio::time::timeout(wait, api.next_request())
            .await
            .expect("a first Lease write")
            .expect("request");
        assert_eq!(first.method(), http::Method::PATCH);
        assert!(
            first.uri().path().ends_with("/leases/kubekms-plugin-cp-1"),
            "{}",
            first.uri()
        );
        let (second, respond) = tokio::time::timeout(wait, api.next_request())
            .await
            .expect("the heartbeat went on after a write that never answered")
            .expect("request");
        assert_eq!(second.uri().path(), first.uri().path());
        let lease = serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "kubekms-plugin-cp-1", "namespace": "kube-system"},
        });
        respond.send_response(
            Response::builder()
                .status(200)
                .body(Body::from(serde_json::to_vec(&lease).expect("json")))
                .expect("response"),
        );
        let deadline = Instant::now() + wait;
        while plugin.metrics().heartbeat_renewals.get() == 0 {
            assert!(
                Instant::now() < deadline,
                "the answered write was not counted"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(plugin.metrics().heartbeat_failures.get() >= 1);
        let _ = stop_tx.send(true);
        task.await.expect("heartbeat task");
    }

    fn lease_answer() -> Response<Body> {
        let lease = serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "kubekms-plugin-cp-1", "namespace": "kube-system"},
        });
        Response::builder()
            .status(200)
            .body(Body::from(serde_json::to_vec(&lease).expect("json")))
            .expect("response")
    }

    async fn held_versions_of(request: Request<Body>) -> String {
        let body = request.into_body().collect_bytes().await.expect("body");
        let lease: serde_json::Value = serde_json::from_slice(&body).expect("lease json");
        lease["metadata"]["annotations"][heartbeat::ANNOTATION_HELD_VERSIONS]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// A newly loaded version is reported at once, not at the next renewal or tick (here
    /// an hour away): the operator promotes a staged version on these reports.
    #[tokio::test]
    async fn a_new_version_is_reported_as_soon_as_it_is_loaded() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = StateDir::new(tmp.path().join("state"));
        dir.init(OffsetDateTime::now_utc()).expect("init");
        let plugin = Plugin::open(dir.clone(), Arc::new(Metrics::new())).expect("open");
        let (service, mut api) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let (stop_tx, stop_rx) = watch::channel(false);
        let hour = Duration::from_secs(3600);
        let config = HeartbeatConfig {
            renew_every: hour,
            call_timeout: Duration::from_secs(10),
            tick: hour,
        };
        let task = tokio::spawn(heartbeat(
            plugin.clone(),
            "kube-system/apiserver-key".parse().expect("target"),
            "cp-1".to_owned(),
            client,
            config,
            stop_rx,
        ));
        let wait = Duration::from_secs(20);
        let (first, respond) = tokio::time::timeout(wait, api.next_request())
            .await
            .expect("a first Lease write")
            .expect("request");
        respond.send_response(lease_answer());
        let key_id = plugin.ring().active().to_string();
        assert_eq!(held_versions_of(first).await, format!("{key_id}:1"));

        dir.rotate(OffsetDateTime::now_utc()).expect("rotate");
        let loader = plugin.clone();
        tokio::task::spawn_blocking(move || loader.refresh())
            .await
            .expect("refresh");
        let (second, respond) = tokio::time::timeout(wait, api.next_request())
            .await
            .expect("the new version was reported without waiting for the tick")
            .expect("request");
        respond.send_response(lease_answer());
        assert_eq!(held_versions_of(second).await, format!("{key_id}:1,2"));
        let _ = stop_tx.send(true);
        task.await.expect("heartbeat task");
    }
}
