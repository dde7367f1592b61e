//! Re-encryption of every Secret after the key kube-apiserver encrypts with has rotated.
//!
//! kube-apiserver stores each Secret under the key_id its DEK seed was encrypted with, and
//! marks a stored Secret stale when that key_id is no longer the plugin's current one. A
//! no-op update of a stale Secret is then written again, under the current DEK: that is
//! the whole rewrite. It must not start before every kube-apiserver has a DEK seed under
//! the new key_id, or it would write the Secrets under the old key again; the plugins'
//! heartbeat Leases say when that is the case (their `seeded-key-id`).
//!
//! A pass goes through every Secret of the cluster one list page per reconciliation and
//! records its continue token and count in `status.reencryption` after each page, so an
//! operator restart resumes where the last page ended. A page cut short by a crash is
//! rewritten again, which costs nothing: a Secret that is already current is not written
//! again by kube-apiserver.
//!
//! Within a page the rewrites run concurrently, as many at a time as [`AdaptiveLimit`]
//! allows: it grows while kube-apiserver answers about as fast as it does when idle, and
//! shrinks when its answers slow down (it is then busy, and every other client waits
//! too) or when API Priority and Fairness refuses a request (429 with Retry-After: all
//! rewrites pause for that long and the refused Secret is tried again). The page lists
//! names only (metadata), and each rewrite is an empty merge patch: kube-apiserver reads
//! the stored Secret, finds nothing to change, and writes it anyway because its stored
//! form is stale (under a key_id that is no longer current), which is what
//! `kubectl get secrets -A -o json | kubectl replace -f -` relies on too, without
//! sending or reading back any Secret's data and with no conflict to retry.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use http_body_util::BodyExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::client::Body;
use kube::{Client, ResourceExt};
use kubekms_k8s::{ReencryptionStatus, ServedBy};
use tokio::time::Instant;

use crate::Error;

/// Waiting until every plugin with a heartbeat Lease (live or not) serves the new key_id and
/// kube-apiserver has seeded a DEK under it.
pub const PHASE_WAITING: &str = "WaitingForPlugins";
/// Rewriting Secrets page by page.
pub const PHASE_REWRITING: &str = "Rewriting";
/// `spec.reencryptSecrets` is false.
pub const PHASE_PAUSED: &str = "Paused";
/// Every Secret was rewritten under the target version.
pub const PHASE_DONE: &str = "Done";

/// How many refused Secrets a status lists by name.
const MAX_FAILED_LISTED: usize = 10;

/// How fast a pass may go: ceilings; within them [`AdaptiveLimit`] follows kube-apiserver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReencryptConfig {
    /// Secrets per list page (one page per reconciliation, then the progress is saved).
    pub page_size: u32,
    /// Upper bound of Secret updates per second, per key being re-encrypted.
    pub secrets_per_second: u32,
    /// Upper bound of rewrites in flight at once.
    pub max_in_flight: u32,
}

impl Default for ReencryptConfig {
    fn default() -> Self {
        Self {
            page_size: 500,
            secrets_per_second: 1000,
            max_in_flight: 32,
        }
    }
}

/// A rewrite slower than this many times the fastest recent one means kube-apiserver is
/// queueing work: fewer rewrites go in flight.
pub const LATENCY_TOLERANCE: f64 = 2.0;
/// Added to the tolerated latency, so that sub-millisecond jitter of an idle server does
/// not read as load.
pub const LATENCY_SLACK: Duration = Duration::from_millis(2);
/// How long a refusal without (or with an unreadable) Retry-After pauses the rewrites.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// The longest pause a Retry-After can ask for.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// How often one Secret may be refused as overload (429/503/504) in one page before the
/// page fails (and is retried by the controller with its back-off).
pub const MAX_OVERLOAD_RETRIES: u32 = 20;
/// Rewrites in flight when a pass starts.
const INITIAL_LIMIT: f64 = 2.0;
/// A limit with no answer for this long forgets its baseline: the next pass measures the
/// server afresh (within a pass the baseline only falls, so load that lasts never
/// becomes the norm that more load is measured against).
pub const BASELINE_IDLE_RESET: Duration = Duration::from_secs(30);
/// The factor a slow answer multiplies the limit by (at most once per window of answers).
const DECREASE: f64 = 0.75;

/// How many Secret rewrites may be in flight, adapted to kube-apiserver's answers:
/// additive increase (one more per window of answers as fast as the baseline allows),
/// multiplicative decrease (a quarter less, once per window, when answers are slower
/// than [`LATENCY_TOLERANCE`] × baseline + [`LATENCY_SLACK`]; half, and a pause, on a
/// 429 from API Priority and Fairness). Shared by every pass of the operator, since they
/// load the same API server. Pure: times are passed in.
#[derive(Debug, Clone)]
pub struct AdaptiveLimit {
    limit: f64,
    max: f64,
    baseline: Option<Duration>,
    last_answer: Option<Instant>,
    since_decrease: u32,
    paused_until: Option<Instant>,
    flow: Option<(String, String)>,
}

impl AdaptiveLimit {
    /// A limit that starts low and never passes `max_in_flight`.
    #[must_use]
    pub fn new(max_in_flight: u32) -> Self {
        let max = f64::from(max_in_flight.max(1));
        Self {
            limit: INITIAL_LIMIT.min(max),
            max,
            baseline: None,
            last_answer: None,
            since_decrease: 0,
            paused_until: None,
            flow: None,
        }
    }

    /// How many rewrites may be in flight now.
    #[must_use]
    pub fn allowed(&self) -> usize {
        // The limit lies in 1..=max (max <= u32::MAX), so the cast neither wraps nor
        // truncates more than the fraction.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let allowed = self.limit.floor() as usize;
        allowed.max(1)
    }

    /// Until when no rewrite may start (a Retry-After), if that is later than `now`.
    #[must_use]
    pub fn paused_until(&self, now: Instant) -> Option<Instant> {
        self.paused_until.filter(|until| *until > now)
    }

    /// The fastest answer of this pass.
    #[must_use]
    pub fn baseline(&self) -> Option<Duration> {
        self.baseline
    }

    /// A rewrite answered (written, or refused for itself) at `now`, after `latency`.
    pub fn on_answer(&mut self, latency: Duration, now: Instant) {
        let fresh = self
            .last_answer
            .is_none_or(|last| now.saturating_duration_since(last) >= BASELINE_IDLE_RESET);
        self.last_answer = Some(now);
        let baseline = match self.baseline {
            Some(b) if !fresh => b.min(latency),
            _ => latency,
        };
        self.baseline = Some(baseline);
        self.since_decrease = self.since_decrease.saturating_add(1);
        if latency <= baseline.mul_f64(LATENCY_TOLERANCE) + LATENCY_SLACK {
            self.limit = (self.limit + 1.0 / self.limit).min(self.max);
        } else if f64::from(self.since_decrease) >= self.limit {
            self.limit = (self.limit * DECREASE).max(1.0);
            self.since_decrease = 0;
        }
    }

    /// kube-apiserver refused a rewrite as overloaded (429 from API Priority and Fairness,
    /// or 503/504), asking to wait `retry_after`.
    pub fn on_overload(&mut self, retry_after: Option<Duration>, now: Instant) {
        self.limit = (self.limit / 2.0).max(1.0);
        self.since_decrease = 0;
        let pause = retry_after
            .unwrap_or(DEFAULT_RETRY_AFTER)
            .min(MAX_RETRY_AFTER);
        let until = now + pause;
        self.paused_until = Some(self.paused_until.map_or(until, |p| p.max(until)));
    }

    /// Records the API Priority and Fairness classification of an answer (its
    /// `X-Kubernetes-PF-FlowSchema-UID` and `-PriorityLevel-UID`); true when it is new.
    pub fn note_flow(&mut self, flow_schema: &str, priority_level: &str) -> bool {
        let flow = (flow_schema.to_owned(), priority_level.to_owned());
        if self.flow.as_ref() == Some(&flow) {
            return false;
        }
        self.flow = Some(flow);
        true
    }
}

/// What the next step of a key's re-encryption is.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The status to show.
    pub status: Option<ReencryptionStatus>,
    /// Whether to rewrite the next page now.
    pub rewrite: bool,
}

/// Decides the next step for a key with id `key_id` whose current material version is
/// `current_version`, served by `served` (empty: not served, nothing to do), given the
/// previous progress. `enabled` is `spec.reencryptSecrets`; `now` is an RFC 3339 time.
#[must_use]
pub fn plan(
    previous: Option<&ReencryptionStatus>,
    served: &[ServedBy],
    key_id: &str,
    current_version: u32,
    enabled: bool,
    now: &str,
) -> Plan {
    if served.is_empty() || current_version == 0 {
        return Plan {
            status: previous.cloned(),
            rewrite: false,
        };
    }
    let mut status = match previous {
        Some(previous) if previous.target_version == current_version => previous.clone(),
        _ => ReencryptionStatus {
            target_version: current_version,
            phase: PHASE_WAITING.to_owned(),
            ..ReencryptionStatus::default()
        },
    };
    if status.phase == PHASE_DONE {
        return Plan {
            status: Some(status),
            rewrite: false,
        };
    }
    if !enabled {
        status.phase = PHASE_PAUSED.to_owned();
        status.message =
            Some("spec.reencryptSecrets is false: no Secret is rewritten until it is true".into());
        return Plan {
            status: Some(status),
            rewrite: false,
        };
    }
    let target = format!("{key_id}/v{current_version}");
    // Once every plugin had a DEK seed under the target, a regression (a plugin restarted
    // and lost its record) does not undo that: the rewrite carries on.
    if status.phase != PHASE_REWRITING {
        let live: Vec<&ServedBy> = served.iter().filter(|p| p.live).collect();
        // Every plugin with a heartbeat Lease holds the pass back, also one whose heartbeat
        // stopped: a plugin cut off from the API server still serves its kube-apiserver
        // with the versions it knows, and that kube-apiserver could not read a Secret
        // rewritten under one it never learned. A host gone for good is let go by
        // deleting its Lease (as for the protection of the key).
        let behind: Vec<String> = served
            .iter()
            .filter(|p| p.seeded_key_id.as_deref() != Some(target.as_str()))
            .map(|p| {
                let serves = p.served_key_id.as_deref().unwrap_or("?");
                let seeded = p.seeded_key_id.as_deref().unwrap_or("nothing yet");
                if p.live {
                    format!("{} (serves {serves}, DEK seeded under {seeded})", p.plugin)
                } else {
                    format!(
                        "{} (heartbeat not renewed within its Lease duration: cut off from the API server, or stopped; \
                         last served {serves}, DEK seeded under {seeded}; delete its Lease kubekms-plugin-{} \
                         if that host is gone for good)",
                        p.plugin, p.plugin
                    )
                }
            })
            .collect();
        if live.is_empty() || !behind.is_empty() {
            status.phase = PHASE_WAITING.to_owned();
            status.message = Some(if live.is_empty() {
                "no plugin heartbeat is live: waiting for the plugins to report".to_owned()
            } else {
                format!(
                    "waiting until kube-apiserver has a DEK seeded under {target} through every plugin: {}",
                    behind.join(", ")
                )
            });
            return Plan {
                status: Some(status),
                rewrite: false,
            };
        }
        status.phase = PHASE_REWRITING.to_owned();
        status.started = Some(now.to_owned());
        status.secrets_rewritten = 0;
        status.secrets_failed = 0;
        status.failed_secrets.clear();
        status.continue_token = None;
    }
    status.message = None;
    Plan {
        status: Some(status),
        rewrite: true,
    }
}

/// One Secret of a page, and how often kube-apiserver refused it as overloaded.
#[derive(Debug)]
struct Pending {
    namespace: String,
    name: String,
    overloads: u32,
}

/// What kube-apiserver answered to a rewrite.
enum Answer {
    /// Written again (or found current: kube-apiserver skips the write).
    Written,
    /// Deleted meanwhile: whoever deleted it left nothing stale.
    Gone,
    /// Refused for this Secret alone (invalid, or an admission policy or webhook).
    Refused(String),
    /// Refused as overloaded: pause for the Retry-After, then try the Secret again.
    Overloaded(Option<Duration>),
}

fn lock(limit: &Mutex<AdaptiveLimit>) -> std::sync::MutexGuard<'_, AdaptiveLimit> {
    // The limit is plain numbers: one left by a panicking holder is still usable.
    limit
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn header<'a>(response: &'a http::Response<Body>, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Sends the empty merge patch that makes kube-apiserver write `secret` again.
async fn rewrite_one(
    client: Client,
    limit: &Mutex<AdaptiveLimit>,
    secret: &Pending,
) -> Result<(Answer, Duration), Error> {
    let request =
        kube::core::Request::new(format!("/api/v1/namespaces/{}/secrets", secret.namespace))
            .patch(
                &secret.name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({})),
            )
            .map_err(kube::Error::BuildRequest)?;
    let started = Instant::now();
    let response = client.send(request.map(Body::from)).await?;
    let latency = started.elapsed();
    if let (Some(flow), Some(level)) = (
        header(&response, "x-kubernetes-pf-flowschema-uid"),
        header(&response, "x-kubernetes-pf-prioritylevel-uid"),
    ) && lock(limit).note_flow(flow, level)
    {
        tracing::info!(
            flow_schema_uid = flow,
            priority_level_uid = level,
            "API Priority and Fairness classifies the re-encryption's requests so"
        );
    }
    let code = response.status().as_u16();
    let answer = match code {
        200..=299 => Answer::Written,
        404 => Answer::Gone,
        429 | 503 | 504 => Answer::Overloaded(
            header(&response, "retry-after")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs),
        ),
        400 | 403 | 422 => {
            let body = response.into_body().collect().await?.to_bytes();
            let message = serde_json::from_slice::<kube::core::Status>(&body)
                .map(|s| s.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            Answer::Refused(message.chars().take(200).collect())
        }
        _ => {
            let body = response.into_body().collect().await?.to_bytes();
            return Err(Error::SecretRewrite {
                code,
                message: String::from_utf8_lossy(&body).chars().take(200).collect(),
            });
        }
    };
    Ok((answer, latency))
}

/// Rewrites one page of Secrets (every namespace) from `status.continue_token`, as many at
/// a time as `limit` allows and at most `config.secrets_per_second`, and advances
/// `status`: the count, the next token, and `Done` with `finished = now` after the last
/// page. A Secret deleted meanwhile counts as rewritten (nothing of it stays stale); one
/// that kube-apiserver refuses to store (400, 403, 422) is counted and named in
/// `failedSecrets` and the pass goes on; one refused as overloaded (429, 503, 504) is
/// tried again after the Retry-After. An expired continue token restarts the listing from
/// the beginning. `client` must not retry on its own (its 429s are this function's
/// signal): see [`crate::clients::Clients::rewrites`].
///
/// # Errors
/// API errors; the page is then retried from the same token.
pub async fn rewrite_page(
    client: &Client,
    limit: &Mutex<AdaptiveLimit>,
    status: &mut ReencryptionStatus,
    config: ReencryptConfig,
    now: &str,
) -> Result<u64, Error> {
    let all: Api<Secret> = Api::all(client.clone());
    let mut params = ListParams::default().limit(config.page_size.max(1));
    if let Some(token) = &status.continue_token {
        params = params.continue_token(token);
    }
    let page = match all.list_metadata(&params).await {
        Ok(page) => page,
        Err(kube::Error::Api(e)) if e.code == 410 => {
            status.continue_token = None;
            status.message = Some(
                "the saved list position expired (etcd compaction): listing again from the start; \
                 Secrets already rewritten are not written again"
                    .to_owned(),
            );
            return Ok(0);
        }
        Err(e) => return Err(e.into()),
    };
    let mut queue: VecDeque<Pending> = page
        .items
        .iter()
        .map(|s| Pending {
            namespace: s.namespace().unwrap_or_default(),
            name: s.name_any(),
            overloads: 0,
        })
        .collect();
    let spacing = Duration::from_secs_f64(1.0 / f64::from(config.secrets_per_second.max(1)));
    let page_started = Instant::now();
    let mut latencies: Vec<Duration> = Vec::with_capacity(queue.len());
    let mut overloads = 0u32;
    let mut next_start = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let mut rewritten = 0;
    let mut failed = 0;
    loop {
        let now_instant = Instant::now();
        let (allowed, paused) = {
            let l = lock(limit);
            (l.allowed(), l.paused_until(now_instant))
        };
        let mut wake = paused;
        if paused.is_none() {
            while in_flight.len() < allowed {
                let Some(secret) = queue.pop_front() else {
                    break;
                };
                let now_instant = Instant::now();
                if next_start > now_instant {
                    queue.push_front(secret);
                    wake = Some(next_start);
                    break;
                }
                next_start = next_start.max(now_instant) + spacing;
                let client = client.clone();
                in_flight.push(async move {
                    let answer = rewrite_one(client, limit, &secret).await;
                    (secret, answer)
                });
            }
        }
        if in_flight.is_empty() {
            if queue.is_empty() {
                break;
            }
            tokio::time::sleep_until(wake.unwrap_or(now_instant + spacing)).await;
            continue;
        }
        let next = match wake {
            Some(at) => tokio::select! {
                next = in_flight.next() => next,
                () = tokio::time::sleep_until(at) => None,
            },
            None => in_flight.next().await,
        };
        let Some((mut secret, answer)) = next else {
            continue;
        };
        let (answer, latency) = answer?;
        latencies.push(latency);
        match answer {
            Answer::Written | Answer::Gone => {
                lock(limit).on_answer(latency, Instant::now());
                rewritten += 1;
            }
            Answer::Refused(message) => {
                lock(limit).on_answer(latency, Instant::now());
                failed += 1;
                if status.failed_secrets.len() < MAX_FAILED_LISTED {
                    status
                        .failed_secrets
                        .push(format!("{}/{}: {message}", secret.namespace, secret.name));
                }
            }
            Answer::Overloaded(retry_after) => {
                overloads += 1;
                lock(limit).on_overload(retry_after, Instant::now());
                secret.overloads += 1;
                if secret.overloads > MAX_OVERLOAD_RETRIES {
                    return Err(Error::SecretRewrite {
                        code: 429,
                        message: format!(
                            "{}/{} refused as overloaded {} times in a row",
                            secret.namespace, secret.name, secret.overloads
                        ),
                    });
                }
                queue.push_back(secret);
            }
        }
    }
    latencies.sort();
    let quantile = |q: f64| {
        latencies
            .get(((latencies.len().saturating_sub(1)) as f64 * q) as usize)
            .copied()
            .unwrap_or_default()
    };
    let (in_flight_limit, baseline) = {
        let l = lock(limit);
        (l.allowed(), l.baseline().unwrap_or_default())
    };
    tracing::info!(
        secrets = page.items.len(),
        seconds = page_started.elapsed().as_secs_f64(),
        latency_p50_ms = quantile(0.5).as_secs_f64() * 1000.0,
        latency_p99_ms = quantile(0.99).as_secs_f64() * 1000.0,
        baseline_ms = baseline.as_secs_f64() * 1000.0,
        in_flight_limit,
        overloads,
        "re-encryption page rewritten"
    );
    status.secrets_rewritten += rewritten;
    status.secrets_failed += failed;
    status.continue_token = page.metadata.continue_.filter(|t| !t.is_empty());
    if status.continue_token.is_none() {
        status.phase = PHASE_DONE.to_owned();
        status.finished = Some(now.to_owned());
        status.message = None;
    }
    Ok(rewritten)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Answers of `latency`, one per millisecond from `start`.
    fn answers(limit: &mut AdaptiveLimit, start: Instant, count: u32, latency: Duration) {
        for i in 0..count {
            limit.on_answer(latency, start + MS * i);
        }
    }

    #[test]
    fn the_limit_grows_while_answers_stay_fast_and_stops_at_the_ceiling() {
        let t0 = Instant::now();
        let mut limit = AdaptiveLimit::new(16);
        assert_eq!(limit.allowed(), 2);
        answers(&mut limit, t0, 20, 4 * MS);
        let after_20 = limit.allowed();
        assert!(
            (5..=7).contains(&after_20),
            "about +1 per window: {after_20}"
        );
        answers(&mut limit, t0 + MS * 20, 1000, 5 * MS);
        assert_eq!(limit.allowed(), 16);
        assert_eq!(limit.baseline(), Some(4 * MS));
    }

    #[test]
    fn slow_answers_shrink_the_limit_once_per_window_never_below_one() {
        let t0 = Instant::now();
        let mut limit = AdaptiveLimit::new(64);
        answers(&mut limit, t0, 5000, 4 * MS);
        assert_eq!(limit.allowed(), 64);
        let t1 = t0 + Duration::from_secs(5);
        // Tolerated: 2 x 4 ms + 2 ms.
        limit.on_answer(10 * MS, t1);
        assert_eq!(limit.allowed(), 64);
        limit.on_answer(11 * MS, t1);
        assert_eq!(limit.allowed(), 48, "a quarter less");
        answers(&mut limit, t1, 47, 40 * MS);
        assert_eq!(limit.allowed(), 48, "once per window of answers");
        limit.on_answer(40 * MS, t1 + MS * 47);
        assert_eq!(limit.allowed(), 36);
        // Load that lasts stays load: the baseline does not rise within a pass.
        answers(&mut limit, t1 + MS * 48, 20_000, 400 * MS);
        assert_eq!(limit.allowed(), 1);
        assert_eq!(limit.baseline(), Some(4 * MS));
    }

    #[test]
    fn a_new_pass_measures_the_server_afresh() {
        let t0 = Instant::now();
        let mut limit = AdaptiveLimit::new(32);
        limit.on_answer(MS, t0);
        limit.on_answer(20 * MS, t0 + BASELINE_IDLE_RESET - MS);
        assert_eq!(limit.baseline(), Some(MS));
        let next_pass = t0 + BASELINE_IDLE_RESET * 3;
        limit.on_answer(20 * MS, next_pass);
        assert_eq!(limit.baseline(), Some(20 * MS));
    }

    #[test]
    fn overload_halves_and_pauses_for_the_retry_after_within_bounds() {
        let now = Instant::now();
        let mut limit = AdaptiveLimit::new(32);
        answers(&mut limit, now, 2000, 3 * MS);
        assert_eq!(limit.allowed(), 32);
        limit.on_overload(Some(Duration::from_secs(5)), now);
        assert_eq!(limit.allowed(), 16);
        assert_eq!(limit.paused_until(now), Some(now + Duration::from_secs(5)));
        assert_eq!(limit.paused_until(now + Duration::from_secs(5)), None);
        // A shorter Retry-After does not cut the pause short; none means 1 s; a huge one
        // is capped.
        limit.on_overload(None, now);
        assert_eq!(limit.allowed(), 8);
        assert_eq!(limit.paused_until(now), Some(now + Duration::from_secs(5)));
        let later = now + Duration::from_secs(10);
        limit.on_overload(Some(Duration::from_secs(3600)), later);
        assert_eq!(limit.paused_until(later), Some(later + MAX_RETRY_AFTER));
        for _ in 0..10 {
            limit.on_overload(None, later);
        }
        assert_eq!(limit.allowed(), 1);
    }

    #[test]
    fn the_flow_classification_is_noted_when_it_changes() {
        let mut limit = AdaptiveLimit::new(4);
        assert!(limit.note_flow("f", "p"));
        assert!(!limit.note_flow("f", "p"));
        assert!(limit.note_flow("f", "exempt"));
    }

    const KEY: &str = "1234abcd-12ab-34cd-56ef-1234567890ab";

    fn plugin(name: &str, seeded: Option<&str>, live: bool) -> ServedBy {
        ServedBy {
            plugin: name.to_owned(),
            served_key_id: seeded.map(str::to_owned),
            seeded_key_id: seeded.map(str::to_owned),
            held_key_id: None,
            held_versions: Vec::new(),
            live,
        }
    }

    #[test]
    fn an_unserved_key_starts_nothing() {
        let p = plan(None, &[], KEY, 2, true, "t0");
        assert_eq!(
            p,
            Plan {
                status: None,
                rewrite: false
            }
        );
    }

    #[test]
    fn waits_until_every_plugin_has_seeded_the_new_version_also_one_whose_heartbeat_expired() {
        let v2 = format!("{KEY}/v2");
        let v1 = format!("{KEY}/v1");
        let served = [plugin("a", Some(&v2), true), plugin("b", Some(&v1), true)];
        let p = plan(None, &served, KEY, 2, true, "t0");
        let status = p.status.clone().unwrap_or_default();
        assert!(!p.rewrite);
        assert_eq!(status.phase, PHASE_WAITING);
        assert_eq!(status.target_version, 2);
        assert!(status.message.unwrap_or_default().contains("b (serves"));

        // A plugin whose heartbeat expired (cut off from the API server, say) still holds
        // the pass back: its kube-apiserver may still read with only the versions it knew.
        let served = [plugin("a", Some(&v2), true), plugin("b", Some(&v1), false)];
        let p = plan(p.status.as_ref(), &served, KEY, 2, true, "t1");
        let status = p.status.clone().unwrap_or_default();
        assert!(!p.rewrite);
        assert_eq!(status.phase, PHASE_WAITING);
        let message = status.message.unwrap_or_default();
        assert!(
            message.contains("b (heartbeat not renewed") && message.contains("kubekms-plugin-b"),
            "{message}"
        );

        // Once it has seeded the new version (after the partition healed), the pass starts,
        // whether or not its heartbeat is live at that moment.
        let served = [plugin("a", Some(&v2), true), plugin("b", Some(&v2), false)];
        let p = plan(p.status.as_ref(), &served, KEY, 2, true, "t1");
        let status = p.status.clone().unwrap_or_default();
        assert!(p.rewrite);
        assert_eq!(status.phase, PHASE_REWRITING);
        assert_eq!(status.started.as_deref(), Some("t1"));

        // No live plugin at all: wait.
        let served = [plugin("a", Some(&v2), false)];
        assert!(!plan(None, &served, KEY, 2, true, "t1").rewrite);
    }

    #[test]
    fn a_pass_resumes_from_its_token_and_a_new_rotation_restarts_it() {
        let v2 = format!("{KEY}/v2");
        let served = [plugin("a", Some(&v2), true)];
        let running = ReencryptionStatus {
            target_version: 2,
            phase: PHASE_REWRITING.to_owned(),
            secrets_rewritten: 300,
            continue_token: Some("tok".to_owned()),
            started: Some("t0".to_owned()),
            ..ReencryptionStatus::default()
        };
        // Even with the plugin gone quiet, a running pass continues from its token.
        let quiet = [plugin("a", None, false)];
        let p = plan(Some(&running), &quiet, KEY, 2, true, "t5");
        assert!(p.rewrite);
        assert_eq!(p.status.as_ref(), Some(&running));

        let p = plan(Some(&running), &served, KEY, 3, true, "t6");
        let status = p.status.unwrap_or_default();
        assert!(!p.rewrite, "v3 is not seeded yet");
        assert_eq!(
            (
                status.target_version,
                status.secrets_rewritten,
                status.continue_token
            ),
            (3, 0, None)
        );
    }

    #[test]
    fn switched_off_pauses_and_done_stays_done() {
        let v2 = format!("{KEY}/v2");
        let served = [plugin("a", Some(&v2), true)];
        let p = plan(None, &served, KEY, 2, false, "t0");
        assert!(!p.rewrite);
        assert_eq!(p.status.map(|s| s.phase).as_deref(), Some(PHASE_PAUSED));
        let done = ReencryptionStatus {
            target_version: 2,
            phase: PHASE_DONE.to_owned(),
            secrets_rewritten: 12,
            ..ReencryptionStatus::default()
        };
        let p = plan(Some(&done), &served, KEY, 2, true, "t9");
        assert_eq!(
            p,
            Plan {
                status: Some(done),
                rewrite: false
            }
        );
    }
}
