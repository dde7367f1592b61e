//! Re-encryption of every Secret after the key kube-apiserver encrypts with has rotated.
//!
//! kube-apiserver stores each Secret under the key_id its DEK seed was encrypted with, and
//! marks a stored Secret stale when that key_id is no longer the plugin's current one. A
//! no-op update of a stale Secret is then written again, under the current DEK: that is
//! the whole rewrite. It must not start before every kube-apiserver has a DEK seed under
//! the new key_id, or it would write the Secrets under the old key again; the plugins'
//! heartbeat Leases say when that is the case (their `seeded-key-id`).
//!
//! A pass goes through every Secret of the cluster one list page per reconciliation, at a
//! bounded rate, and records its continue token and count in `status.reencryption` after
//! each page, so an operator restart resumes where the last page ended. A page cut short
//! by a crash is rewritten again, which costs nothing: a Secret that is already current is
//! not written again by kube-apiserver.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use kubekms_k8s::{ReencryptionStatus, ServedBy};

use crate::Error;

/// Waiting until every live plugin serves the new key_id and kube-apiserver has seeded a
/// DEK under it.
pub const PHASE_WAITING: &str = "WaitingForPlugins";
/// Rewriting Secrets page by page.
pub const PHASE_REWRITING: &str = "Rewriting";
/// `spec.reencryptSecrets` is false.
pub const PHASE_PAUSED: &str = "Paused";
/// Every Secret was rewritten under the target version.
pub const PHASE_DONE: &str = "Done";

/// How many refused Secrets a status lists by name.
const MAX_FAILED_LISTED: usize = 10;

/// How fast a pass goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReencryptConfig {
    /// Secrets per list page (one page per reconciliation, then the progress is saved).
    pub page_size: u32,
    /// Upper bound of Secret updates per second, per key being re-encrypted.
    pub secrets_per_second: u32,
}

impl Default for ReencryptConfig {
    fn default() -> Self {
        Self {
            page_size: 100,
            secrets_per_second: 50,
        }
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
        let behind: Vec<String> = live
            .iter()
            .filter(|p| p.seeded_key_id.as_deref() != Some(target.as_str()))
            .map(|p| {
                format!(
                    "{} (serves {}, DEK seeded under {})",
                    p.plugin,
                    p.served_key_id.as_deref().unwrap_or("?"),
                    p.seeded_key_id.as_deref().unwrap_or("nothing yet")
                )
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

/// Rewrites one page of Secrets (every namespace) from `status.continue_token`, at most
/// `config.secrets_per_second` updates per second, and advances `status`: the count, the
/// next token, and `Done` with `finished = now` after the last page. A Secret changed or
/// deleted meanwhile counts as rewritten (whoever changed it wrote it under the current
/// key); one that kube-apiserver refuses to store (400, 403, 422) is counted and named in
/// `failedSecrets` and the pass goes on. An expired continue token restarts the listing
/// from the beginning.
///
/// # Errors
/// API errors; the page is then retried from the same token.
pub async fn rewrite_page(
    client: &Client,
    status: &mut ReencryptionStatus,
    config: ReencryptConfig,
    now: &str,
) -> Result<u64, Error> {
    let all: Api<Secret> = Api::all(client.clone());
    let mut params = ListParams::default().limit(config.page_size.max(1));
    if let Some(token) = &status.continue_token {
        params = params.continue_token(token);
    }
    let page = match all.list(&params).await {
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
    let spacing = Duration::from_secs_f64(1.0 / f64::from(config.secrets_per_second.max(1)));
    let mut rewritten = 0;
    let mut failed = 0;
    for secret in &page.items {
        let started = Instant::now();
        let namespace = secret.namespace().unwrap_or_default();
        let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
        match api
            .replace(&secret.name_any(), &PostParams::default(), secret)
            .await
        {
            Ok(_) => rewritten += 1,
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => rewritten += 1,
            // This Secret only (invalid, or refused by an admission policy or webhook):
            // note it and go on. Anything else (server errors, a lost connection) retries
            // the page. A missing RBAC grant fails the list first.
            Err(kube::Error::Api(e)) if matches!(e.code, 400 | 403 | 422) => {
                failed += 1;
                if status.failed_secrets.len() < MAX_FAILED_LISTED {
                    status.failed_secrets.push(format!(
                        "{namespace}/{}: {}",
                        secret.name_any(),
                        e.message.chars().take(200).collect::<String>()
                    ));
                }
            }
            Err(e) => return Err(e.into()),
        }
        if let Some(rest) = spacing.checked_sub(started.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
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

    const KEY: &str = "1234abcd-12ab-34cd-56ef-1234567890ab";

    fn plugin(name: &str, seeded: Option<&str>, live: bool) -> ServedBy {
        ServedBy {
            plugin: name.to_owned(),
            served_key_id: seeded.map(str::to_owned),
            seeded_key_id: seeded.map(str::to_owned),
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
    fn waits_until_every_live_plugin_has_seeded_the_new_version() {
        let v2 = format!("{KEY}/v2");
        let v1 = format!("{KEY}/v1");
        let served = [plugin("a", Some(&v2), true), plugin("b", Some(&v1), true)];
        let p = plan(None, &served, KEY, 2, true, "t0");
        let status = p.status.clone().unwrap_or_default();
        assert!(!p.rewrite);
        assert_eq!(status.phase, PHASE_WAITING);
        assert_eq!(status.target_version, 2);
        assert!(status.message.unwrap_or_default().contains("b (serves"));

        // A plugin whose heartbeat expired does not hold the pass back.
        let served = [plugin("a", Some(&v2), true), plugin("b", Some(&v1), false)];
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
