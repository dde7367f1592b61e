//! Partitions between control-plane hosts (issue 11, part 2), on hosts made of network
//! namespaces by `hack/multi-host.sh` (see `kubekms_e2e::multi_host`): three etcd members,
//! kube-apiservers on hosts 1 and 2, each with its own plugin following the KmsKey through
//! its own host's API server, the operator on host 1 and a standby on host 2.
//!
//! `#[ignore]`d, so not in `cargo test --workspace`: hack/test.sh runs them afterwards, as
//! root (network namespaces, veths, a bridge, iptables), with
//! `cargo test -p kubekms-e2e --test multi_host -- --include-ignored --test-threads 1`.
//! About 7-8 minutes for the three, one at a time: the plugin's heartbeat Lease lasts 60 s and kube-apiserver asks its plugin for a
//! new key_id once a minute.

mod envelope;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, ensure};
use envelope::parse_stored;
use k8s_openapi::api::core::v1::Secret;
use kms_plugin::client::connect;
use kms_plugin::pb::StatusRequest;
use kube::Api;
use kube::api::ListParams;
use kubekms_e2e::multi_host::{APISERVER_HOSTS, APISERVER_KEY, Hosts, SYSTEM_NAMESPACE};
use kubekms_e2e::unique_name;

/// Secrets the reader checks on both API servers.
const SECRETS: usize = 150;

fn phase(t0: Instant, what: &str) {
    eprintln!(
        "[e2e multi-host] {:>6.1}s {what}",
        t0.elapsed().as_secs_f64()
    );
}

/// The hosts are network namespaces, veths, a bridge and iptables rules: root only. Asked
/// for (`--include-ignored`) without root, the test fails rather than passing unrun.
fn require_root() -> Result<()> {
    ensure!(
        rustix::process::geteuid().is_root(),
        "the multi-host tests need root (network namespaces, veths, a bridge, iptables)"
    );
    Ok(())
}

/// One plugin's entry of `status.servedBy`.
fn served_by<'a>(key: &'a serde_json::Value, plugin: &str) -> Option<&'a serde_json::Value> {
    key.pointer("/status/servedBy")?
        .as_array()?
        .iter()
        .find(|p| p["plugin"] == plugin)
}

/// Whether a plugin's `status.servedBy` entry reports holding `version`.
fn holds(plugin: &serde_json::Value, version: u64) -> bool {
    plugin["heldVersions"]
        .as_array()
        .is_some_and(|v| v.iter().any(|x| x.as_u64() == Some(version)))
}

/// The KmsKey's `status.currentVersion`.
fn current_version(key: &serde_json::Value) -> Option<u64> {
    key.pointer("/status/currentVersion")
        .and_then(serde_json::Value::as_u64)
}

/// The message of the VersionPromoted condition, while a staged version waits.
fn promotion_waiting(key: &serde_json::Value) -> Option<String> {
    key.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == "VersionPromoted")
        .and_then(|c| c["message"].as_str())
        .map(str::to_owned)
}

fn reencryption(key: &serde_json::Value) -> serde_json::Value {
    key.pointer("/status/reencryption")
        .cloned()
        .unwrap_or_default()
}

/// The key_id a plugin's Status returns (what its kube-apiserver sees).
async fn plugin_key_id(hosts: &Hosts, host: usize) -> Result<String> {
    let mut c = connect(&hosts.socket(host)).await?;
    Ok(c.status(StatusRequest {}).await?.into_inner().key_id)
}

/// What the readers saw.
#[derive(Default)]
struct ReadLog {
    rounds: [AtomicU64; 2],
    /// Lists that took over [`SLOW_LIST`]: counted and shown, not failures (the machine
    /// is shared; a slow answer is not an unreadable Secret).
    slow: AtomicU64,
    failures: std::sync::Mutex<Vec<String>>,
}

/// A list that takes longer is counted as slow and asked again.
const SLOW_LIST: Duration = Duration::from_secs(20);

/// Lists the test's Secrets on every API server, again and again until `stop`: each round
/// must return all of them with their values (a Secret that does not decrypt fails the
/// whole list). Failures are collected with the moment they happened.
fn start_readers(
    hosts: &Hosts,
    read_on: &[usize],
    ns: &str,
    expected: Arc<BTreeMap<String, String>>,
    stop: Arc<AtomicBool>,
    t0: Instant,
) -> Result<(Arc<ReadLog>, Vec<tokio::task::JoinHandle<()>>)> {
    let log = Arc::new(ReadLog::default());
    let mut tasks = Vec::new();
    for (slot, h) in read_on.iter().copied().enumerate() {
        let cp = hosts.host(h).clone();
        let (ns, expected, stop, log) = (
            ns.to_owned(),
            Arc::clone(&expected),
            Arc::clone(&stop),
            Arc::clone(&log),
        );
        tasks.push(tokio::spawn(async move {
            let client = match cp.client().await {
                Ok(c) => c,
                Err(e) => {
                    if let Ok(mut f) = log.failures.lock() {
                        f.push(format!("h{h}: no client: {e:#}"));
                    }
                    return;
                }
            };
            let secrets: Api<Secret> = Api::namespaced(client, &ns);
            while !stop.load(Ordering::Relaxed) {
                let outcome =
                    tokio::time::timeout(SLOW_LIST, secrets.list(&ListParams::default())).await;
                let problem = match outcome {
                    Err(_) => {
                        log.slow.fetch_add(1, Ordering::Relaxed);
                        eprintln!(
                            "[e2e multi-host] {:.1}s h{h}: a list took over {SLOW_LIST:?}; asked again",
                            t0.elapsed().as_secs_f64()
                        );
                        continue;
                    }
                    // The status message says it all; the Debug of the Status repeats it.
                    Ok(Err(e)) => Some(format!("{e}").chars().take(400).collect()),
                    Ok(Ok(list)) => check_round(&list.items, &expected),
                };
                match problem {
                    None => {
                        if let Some(r) = log.rounds.get(slot) {
                            r.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Some(p) => {
                        let line = format!("{:.1}s h{h}: {p}", t0.elapsed().as_secs_f64());
                        eprintln!("[e2e multi-host] READ FAILURE {line}");
                        if let Ok(mut f) = log.failures.lock() {
                            f.push(line);
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
    }
    Ok((log, tasks))
}

fn check_round(items: &[Secret], expected: &BTreeMap<String, String>) -> Option<String> {
    let mut seen = 0;
    for s in items {
        let Some(name) = s.metadata.name.as_deref() else {
            continue;
        };
        let Some(want) = expected.get(name) else {
            continue;
        };
        let got = s
            .data
            .as_ref()
            .and_then(|d| d.get("value"))
            .map(|v| String::from_utf8_lossy(&v.0).into_owned());
        if got.as_deref() != Some(want.as_str()) {
            return Some(format!("{name} reads {got:?}, expected {want:?}"));
        }
        seen += 1;
    }
    (seen != expected.len()).then(|| format!("{seen} of {} Secrets listed", expected.len()))
}

/// `count` Secrets in `ns`, made in one `kubectl apply` through host 1.
fn make_secrets(hosts: &Hosts, ns: &str, count: usize) -> Result<BTreeMap<String, String>> {
    let expected: BTreeMap<String, String> = (0..count)
        .map(|i| {
            (
                format!("s-{i:04}"),
                format!("value-{i}-{}", unique_name("v")),
            )
        })
        .collect();
    let items: Vec<serde_json::Value> = expected
        .iter()
        .map(|(name, value)| {
            serde_json::json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": name, "namespace": ns},
                "stringData": {"value": value},
            })
        })
        .collect();
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    hosts
        .host(1)
        .kubectl_stdin(&["apply", "-f", "-"], &serde_json::to_vec(&list)?)?;
    Ok(expected)
}

/// The etcd key → key_id of every Secret of the cluster.
fn stored_key_ids(hosts: &Hosts) -> Result<BTreeMap<String, String>> {
    hosts
        .stored_secrets()?
        .into_iter()
        .map(|(k, v)| {
            let id = parse_stored(&v, &[])
                .with_context(|| format!("etcd key {k}"))?
                .key_id;
            Ok((k, id))
        })
        .collect()
}

/// Waits until host `host`'s operator has run `more` reconciliations from now: evidence
/// that it looked at the key again.
async fn wait_reconciles(hosts: &Hosts, host: usize, more: u64, what: &str) -> Result<()> {
    let metric = "kubekms_operator_reconciles_total";
    let start = hosts.operator_counter(host, metric)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let now = hosts.operator_counter(host, metric)?;
        if now >= start + more {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{what}: h{host}'s operator ran {} of {more} reconciliations in 120 s",
            now - start
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Operator flags of the partition test: a short leader Lease, so a standby takes over
/// within seconds.
const OPERATOR_ARGS: &str = "--lease-duration-seconds 6 --lease-renew-seconds 1";

/// The hosts, up, with both plugins live and seeded and the first pass done.
struct Start {
    hosts: Hosts,
    /// The key_id both plugins serve.
    v1: String,
    /// Its material version.
    version: u64,
    /// The key_id of the next version.
    v2: String,
}

fn start(t0: Instant, operator_args: &str) -> Result<Start> {
    let hosts = Hosts::up(operator_args)?;
    phase(t0, &format!("hosts up in {}", hosts.state_dir.display()));

    // Both plugins report; the first pass (every key served gets one) is done.
    let key = hosts.wait_kmskey(
        Duration::from_secs(180),
        "both plugins live and seeded, first pass Done",
        |k| {
            APISERVER_HOSTS.iter().all(|h| {
                served_by(k, &format!("h{h}"))
                    .is_some_and(|p| p["live"] == true && p["seededKeyId"].is_string())
            }) && reencryption(k)["phase"] == "Done"
        },
    )?;
    let v1 = served_by(&key, "h1")
        .and_then(|p| p["servedKeyId"].as_str())
        .ok_or_else(|| anyhow!("no servedKeyId: {key}"))?
        .to_owned();
    let version = reencryption(&key)["targetVersion"].as_u64().unwrap_or(0);
    let key_id = key
        .pointer("/status/keyId")
        .and_then(|s| s.as_str())
        .ok_or_else(|| anyhow!("no status.keyId: {key}"))?
        .to_owned();
    let v2 = format!("{key_id}/v{}", version + 1);
    phase(t0, &format!("both plugins serve {v1}; next version {v2}"));

    Ok(Start {
        hosts,
        v1,
        version,
        v2,
    })
}

/// A rotation on demand of the API server's KmsKey, through host `via`.
fn rotate(hosts: &Hosts, via: usize, token: &str) -> Result<()> {
    hosts.host(via).kubectl([
        "patch",
        "kmskey",
        APISERVER_KEY,
        "-n",
        SYSTEM_NAMESPACE,
        "--type=merge",
        "-p",
        &format!(r#"{{"spec":{{"rotation":{{"onDemandToken":"{token}"}}}}}}"#),
    ])?;
    Ok(())
}

/// Rotation while host 2's plugin is cut off from every API server (its own included),
/// while its kube-apiserver still reaches etcd and the plugin's socket:
/// - the new version is staged, not current: host 1's plugin loads it, host 2's cannot,
///   and the operator does not promote it, also once host 2's heartbeat has expired; the
///   KmsKey's status names host 2 and how to let it go;
/// - so a Secret written through host 1 during the cut reads through host 2;
/// - Secrets read on both API servers throughout, none ever unreadable;
/// - after the heal, the plugin learns the new version, the operator promotes it, both
///   kube-apiservers re-seed, the re-encryption pass runs and finishes;
/// - both plugins serve the same key_id, and every Secret in etcd is under it.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root and makes network namespaces (2-4 min each): cargo test -p kubekms-e2e --test multi_host -- --include-ignored --test-threads 1"]
async fn rotation_while_a_plugin_is_cut_off_from_the_api_servers() -> Result<()> {
    require_root()?;
    let t0 = Instant::now();
    let Start {
        hosts,
        v1,
        version,
        v2,
    } = start(t0, OPERATOR_ARGS)?;
    let ns = unique_name("e2e-mh");
    hosts.host(1).kubectl(["create", "namespace", &ns])?;
    let expected = Arc::new(make_secrets(&hosts, &ns, SECRETS)?);
    phase(t0, &format!("{SECRETS} Secrets in {ns}"));

    let stop = Arc::new(AtomicBool::new(false));
    let (reads, readers) = start_readers(
        &hosts,
        &APISERVER_HOSTS,
        &ns,
        Arc::clone(&expected),
        Arc::clone(&stop),
        t0,
    )?;
    let outcome = async {
        hosts.cut_from_apiservers(2)?;
        phase(t0, "h2 cut off from every kube-apiserver");
        rotate(&hosts, 1, "mh-cut-1")?;
        phase(t0, "rotation asked");

        // Two-step rotation: the new version is staged. h1's plugin loads it (and reports
        // so in its heartbeat); h2's cannot, so the operator does not promote it and names
        // h2 in the key's status. Nobody encrypts under it.
        let staged = version + 1;
        let key = hosts.wait_kmskey(
            Duration::from_secs(180),
            "the new version staged, held by h1, waiting for h2",
            move |k| {
                served_by(k, "h1").is_some_and(|p| holds(p, staged))
                    && promotion_waiting(k).is_some_and(|m| m.contains("h2"))
            },
        )?;
        ensure!(
            current_version(&key) == Some(version),
            "the current version moved to {:?} while h2 is cut off: {key}",
            current_version(&key)
        );
        phase(
            t0,
            &format!(
                "v{staged} staged; current stays v{version}; {}",
                promotion_waiting(&key).unwrap_or_default()
            ),
        );
        for h in APISERVER_HOSTS {
            let served = plugin_key_id(&hosts, h).await?;
            ensure!(
                served == v1,
                "h{h}'s plugin serves {served} while v{staged} is only staged"
            );
        }
        // The point of staging: a Secret written now through host 1 is under the current
        // version, which host 2's plugin holds, so it reads through host 2 while host 2 is
        // still cut off. In a namespace of its own: one Secret that does not decrypt fails
        // the list of its whole namespace, which the readers would count.
        let probe = unique_name("probe");
        hosts.host(1).kubectl(["create", "namespace", &probe])?;
        hosts
            .host(1)
            .create_secret(&probe, &probe, "written-during-the-cut")?;
        let on_h2 = hosts
            .host(2)
            .read_secret(&probe, &probe)
            .context("a Secret written through h1 during the cut must read through h2")?;
        ensure!(on_h2 == "written-during-the-cut", "read {on_h2:?} on h2");
        let probe_key_id = stored_key_ids(&hosts)?
            .into_iter()
            .find(|(k, _)| k.ends_with(&format!("/secrets/{probe}/{probe}")))
            .map(|(_, id)| id);
        ensure!(
            probe_key_id.as_deref() == Some(v1.as_str()),
            "the probe is stored under {probe_key_id:?}, not the current {v1}"
        );
        phase(
            t0,
            "a Secret written through h1 during the cut reads through h2 (stored under the current version)",
        );

        // The cut-off plugin's heartbeat expires; the operator looks again, several times.
        hosts.wait_kmskey(
            Duration::from_secs(180),
            "h2's heartbeat expired in the operator's eyes",
            |k| served_by(k, "h2").is_some_and(|p| p["live"] == false),
        )?;
        phase(t0, "h2's heartbeat is no longer live");
        wait_reconciles(&hosts, 1, 5, "after h2's heartbeat expired").await?;
        let key = hosts.kmskey()?;
        ensure!(
            current_version(&key) == Some(version),
            "promoted while h2 (not live, still serving its kube-apiserver) lacks v{staged}: {key}"
        );
        let waiting = promotion_waiting(&key).unwrap_or_default();
        ensure!(
            waiting.contains("h2 (heartbeat not renewed") && waiting.contains("kubekms-plugin-h2"),
            "the staged version does not say it waits for the cut-off h2: {key}"
        );
        let pass = reencryption(&key);
        ensure!(
            pass["targetVersion"] == version,
            "a re-encryption pass to a staged version: {pass}"
        );
        phase(t0, &format!("the promotion waits: {waiting}"));
        ensure!(
            plugin_key_id(&hosts, 2).await? == v1,
            "h2's plugin still serves {v1} while cut off"
        );

        hosts.heal()?;
        phase(t0, "healed");
        hosts.wait_kmskey(
            Duration::from_secs(240),
            "the staged version promoted after the heal",
            move |k| current_version(k) == Some(staged) && promotion_waiting(k).is_none(),
        )?;
        phase(t0, &format!("v{staged} promoted"));
        // The record's current version never moves back (a CEL rule of the CRD): the
        // plugins would otherwise encrypt again under a version the Secrets are being
        // re-encrypted away from.
        let back = hosts.host(1).kubectl([
            "patch",
            "kmskeymaterial",
            APISERVER_KEY,
            "-n",
            SYSTEM_NAMESPACE,
            "--type=merge",
            "-p",
            &format!(r#"{{"spec":{{"currentVersion":{version}}}}}"#),
        ]);
        ensure!(
            back.as_ref()
                .is_err_and(|e| format!("{e:#}").contains("currentVersion never moves back")),
            "moving the current version back was not refused: {back:?}"
        );
        let v2_done = version + 1;
        hosts.wait_kmskey(
            Duration::from_secs(420),
            "re-encryption to the new version Done after the heal",
            move |k| {
                let r = reencryption(k);
                r["targetVersion"] == v2_done && r["phase"] == "Done"
            },
        )?;
        phase(t0, "re-encryption Done");
        anyhow::Ok(())
    }
    .await;
    let readers_ok = finish_readers(&reads, readers, &stop, &APISERVER_HOSTS, t0).await;
    outcome.with_context(|| format!("logs under {}/hosts/h*/logs", hosts.state_dir.display()))?;
    readers_ok?;
    check_everything(&hosts, &ns, &expected, &v2, t0).await
}

/// Operator flags of the drills that act in the middle of a pass: pages of 20 Secrets at
/// most 20 per second, so that a pass over a few hundred Secrets lasts long enough.
const SLOW_PASS_ARGS: &str = "--lease-duration-seconds 6 --lease-renew-seconds 1 \
                              --reencrypt-page-size 20 --reencrypt-secrets-per-second 20";
/// Secrets of the drills that act in the middle of a pass.
const PASS_SECRETS: usize = 400;

/// The host whose operator holds the leader Lease (asked through host `via`).
fn leader(hosts: &Hosts, via: usize) -> Result<usize> {
    let out = hosts.host(via).kubectl([
        "get",
        "lease",
        "kubekms-operator",
        "-n",
        SYSTEM_NAMESPACE,
        "-o",
        "jsonpath={.spec.holderIdentity}",
        "--request-timeout=10s",
    ])?;
    let holder = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    holder
        .strip_prefix('h')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow!("the operator Lease is held by {holder:?}"))
}

/// Waits until the pass to `target` version is Rewriting and has rewritten some Secrets.
fn wait_mid_pass(hosts: &Hosts, target: u64) -> Result<serde_json::Value> {
    hosts.wait_kmskey(
        Duration::from_secs(240),
        "the pass is Rewriting and has rewritten some Secrets",
        move |k| {
            let r = reencryption(k);
            r["targetVersion"] == target
                && r["phase"] == "Rewriting"
                && r["secretsRewritten"].as_u64().unwrap_or(0) > 0
        },
    )
}

/// Waits until the pass to `target` version is Done with no failed Secret.
fn wait_pass_done(hosts: &Hosts, target: u64) -> Result<serde_json::Value> {
    let done = hosts.wait_kmskey(Duration::from_secs(420), "the pass is Done", move |k| {
        let r = reencryption(k);
        r["targetVersion"] == target && r["phase"] == "Done"
    })?;
    let pass = reencryption(&done);
    ensure!(
        pass["secretsFailed"].as_u64().unwrap_or(0) == 0,
        "Secrets failed: {pass}"
    );
    Ok(done)
}

/// After everything is back: every Secret of `expected` reads with its value on both API
/// servers (each given a minute to come back), both plugins serve `v2`, and every Secret
/// in etcd is under it.
async fn check_everything(
    hosts: &Hosts,
    ns: &str,
    expected: &BTreeMap<String, String>,
    v2: &str,
    t0: Instant,
) -> Result<()> {
    for h in APISERVER_HOSTS {
        let cp = hosts.host(h);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let outcome = async {
                let secrets: Api<Secret> = Api::namespaced(cp.client().await?, ns);
                let list = secrets.list(&ListParams::default()).await?;
                match check_round(&list.items, expected) {
                    None => anyhow::Ok(()),
                    Some(p) => Err(anyhow!(p)),
                }
            }
            .await;
            match outcome {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("[e2e multi-host] h{h} not reading yet: {e:#}");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                Err(e) => return Err(e.context(format!("reading every Secret through h{h}"))),
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut served = Vec::new();
        for h in APISERVER_HOSTS {
            served.push(plugin_key_id(hosts, h).await?);
        }
        if served.iter().all(|id| id == v2) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the plugins' key_ids disagree or are not {v2}: {served:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let stored = stored_key_ids(hosts)?;
    let behind: Vec<_> = stored.iter().filter(|(_, id)| *id != v2).collect();
    ensure!(
        behind.is_empty(),
        "{} of {} Secrets in etcd are not under {v2}: {:?}",
        behind.len(),
        stored.len(),
        behind.iter().take(5).collect::<Vec<_>>()
    );
    ensure!(
        stored.len() >= expected.len(),
        "etcd holds {} Secrets",
        stored.len()
    );
    phase(
        t0,
        &format!(
            "all {} Secrets read on h1 and h2; both plugins serve {v2}; all {} Secrets in etcd under it",
            expected.len(),
            stored.len()
        ),
    );
    Ok(())
}

/// Stops the readers; fails on any read failure or on a reader that never completed a
/// round.
async fn finish_readers(
    reads: &ReadLog,
    readers: Vec<tokio::task::JoinHandle<()>>,
    stop: &AtomicBool,
    read_on: &[usize],
    t0: Instant,
) -> Result<()> {
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        let _ = r.await;
    }
    let failures = reads.failures.lock().map(|f| f.clone()).unwrap_or_default();
    let rounds: Vec<u64> = reads
        .rounds
        .iter()
        .take(read_on.len())
        .map(|r| r.load(Ordering::Relaxed))
        .collect();
    phase(
        t0,
        &format!(
            "reader rounds on {read_on:?}: {rounds:?}; slow lists: {}; failures: {}",
            reads.slow.load(Ordering::Relaxed),
            failures.len()
        ),
    );
    ensure!(
        failures.is_empty(),
        "Secrets were unreadable {} times; first: {:?}",
        failures.len(),
        failures.iter().take(5).collect::<Vec<_>>()
    );
    ensure!(
        rounds.iter().all(|r| *r > 0),
        "a reader never completed a round: {rounds:?}"
    );
    Ok(())
}

/// The leader operator's host is cut off from the network in the middle of a pass: the
/// standby on the other host takes the Lease and finishes the pass from the saved
/// progress; the other API server reads every Secret throughout; after the heal (and a
/// restart of the old leader, which exits when it cannot renew its Lease) everything reads
/// on both and is under the new version.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root and makes network namespaces (2-4 min each): cargo test -p kubekms-e2e --test multi_host -- --include-ignored --test-threads 1"]
async fn operator_leader_cut_off_in_the_middle_of_a_pass() -> Result<()> {
    require_root()?;
    let t0 = Instant::now();
    let Start {
        hosts, version, v2, ..
    } = start(t0, SLOW_PASS_ARGS)?;
    let leader = leader(&hosts, 1)?;
    let other = if leader == 1 { 2 } else { 1 };
    phase(t0, &format!("the operator on h{leader} leads"));
    let ns = unique_name("e2e-mh-leader");
    hosts.host(other).kubectl(["create", "namespace", &ns])?;
    let expected = Arc::new(make_secrets(&hosts, &ns, PASS_SECRETS)?);
    let stop = Arc::new(AtomicBool::new(false));
    let read_on = [other];
    let (reads, readers) = start_readers(
        &hosts,
        &read_on,
        &ns,
        Arc::clone(&expected),
        Arc::clone(&stop),
        t0,
    )?;
    let outcome = async {
        rotate(&hosts, other, "mh-leader-1")?;
        let mid = wait_mid_pass(&hosts, version + 1)?;
        phase(
            t0,
            &format!(
                "mid-pass: {} Secrets rewritten",
                reencryption(&mid)["secretsRewritten"]
            ),
        );
        hosts.cut_off(leader)?;
        phase(t0, &format!("h{leader} (the leader's host) cut off"));
        let deadline = Instant::now() + Duration::from_secs(120);
        while leader_or_none(&hosts, other) != Some(other) {
            ensure!(
                Instant::now() < deadline,
                "the standby on h{other} did not take the Lease in 120 s"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        phase(t0, &format!("the standby on h{other} holds the Lease"));
        let done = wait_pass_done(&hosts, version + 1)?;
        phase(
            t0,
            &format!(
                "pass Done while h{leader} is cut off: {}",
                reencryption(&done)
            ),
        );
        hosts.heal()?;
        phase(t0, "healed");
        anyhow::Ok(())
    }
    .await;
    let readers_ok = finish_readers(&reads, readers, &stop, &read_on, t0).await;
    outcome.with_context(|| format!("logs under {}/hosts/h*/logs", hosts.state_dir.display()))?;
    readers_ok?;
    // The operators run under a restart loop (the kubelet's part): count its restarts.
    for h in APISERVER_HOSTS {
        let log =
            std::fs::read_to_string(hosts.logs(h).join("kubekms-operator.log")).unwrap_or_default();
        phase(
            t0,
            &format!(
                "h{h}'s operator exited and was restarted {} time(s)",
                log.matches("---- kubekms-operator exited").count()
            ),
        );
    }
    check_everything(&hosts, &ns, &expected, &v2, t0).await
}

fn leader_or_none(hosts: &Hosts, via: usize) -> Option<usize> {
    leader(hosts, via).ok()
}

/// One etcd member (host 3) and one API server host (host 2: its kube-apiserver, plugin
/// and operator) are SIGKILLed in the middle of a pass: the pass finishes through host 1
/// (its operator taking over if host 2's led), host 1 reads every Secret throughout;
/// after the processes are started again, everything reads on both and is under the new
/// version.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root and makes network namespaces (2-4 min each): cargo test -p kubekms-e2e --test multi_host -- --include-ignored --test-threads 1"]
async fn an_etcd_member_and_an_api_server_host_lost_in_the_middle_of_a_pass() -> Result<()> {
    require_root()?;
    let t0 = Instant::now();
    let Start {
        hosts, version, v2, ..
    } = start(t0, SLOW_PASS_ARGS)?;
    let led_by = leader(&hosts, 1)?;
    let ns = unique_name("e2e-mh-lose");
    hosts.host(1).kubectl(["create", "namespace", &ns])?;
    let expected = Arc::new(make_secrets(&hosts, &ns, PASS_SECRETS)?);
    let stop = Arc::new(AtomicBool::new(false));
    let read_on = [1];
    let (reads, readers) = start_readers(
        &hosts,
        &read_on,
        &ns,
        Arc::clone(&expected),
        Arc::clone(&stop),
        t0,
    )?;
    let lost = ["kubekms-operator", "kms-plugin", "kube-apiserver"];
    let outcome = async {
        rotate(&hosts, 1, "mh-lose-1")?;
        let mid = wait_mid_pass(&hosts, version + 1)?;
        phase(
            t0,
            &format!(
                "mid-pass: {} Secrets rewritten; the operator on h{led_by} leads",
                reencryption(&mid)["secretsRewritten"]
            ),
        );
        hosts.host(3).kill_process("etcd")?;
        for p in lost {
            hosts.host(2).kill_process(p)?;
        }
        phase(
            t0,
            "SIGKILL: h3's etcd; h2's operator, plugin, kube-apiserver",
        );
        let done = wait_pass_done(&hosts, version + 1)?;
        phase(
            t0,
            &format!(
                "pass Done with h3's etcd and h2 down: {}",
                reencryption(&done)
            ),
        );
        anyhow::Ok(())
    }
    .await;
    let readers_ok = finish_readers(&reads, readers, &stop, &read_on, t0).await;
    outcome.with_context(|| format!("logs under {}/hosts/h*/logs", hosts.state_dir.display()))?;
    readers_ok?;
    hosts.start(3, "etcd")?;
    hosts.start(2, "kms-plugin")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !kubekms_e2e::multi_host::is_socket(&hosts.socket(2)) {
        ensure!(
            Instant::now() < deadline,
            "h2's plugin socket did not come back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    hosts.start(2, "kube-apiserver")?;
    hosts.host(2).wait_apiserver_ready()?;
    hosts.start(2, "kubekms-operator")?;
    phase(t0, "h3's etcd and h2's processes started again");
    check_everything(&hosts, &ns, &expected, &v2, t0).await
}
