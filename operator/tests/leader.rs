//! Leader election against the fake API server, on tokio's paused clock (time moves only
//! when the test or an idle runtime moves it, so deadlines are exact): a renewal that never
//! answers stops the leader at its renew deadline, before its Lease could expire; a
//! standby judges the holder by when it saw the Lease change, never by the holder's
//! renewTime (another machine's clock).

mod fake_api;

use std::time::Duration;

use fake_api::{FakeApi, NAMESPACE};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kubekms_operator::leader::{LeaderElector, LeadershipEnd, LeaseConfig};
use tokio::time::Instant;

const LEASE: Duration = Duration::from_secs(15);
const DEADLINE: Duration = Duration::from_secs(10);
const EVERY: Duration = Duration::from_secs(2);

fn config(identity: &str) -> LeaseConfig {
    LeaseConfig {
        namespace: NAMESPACE.to_owned(),
        name: "kubekms-operator".to_owned(),
        identity: identity.to_owned(),
        lease_duration: LEASE,
        renew_deadline: DEADLINE,
        renew_every: EVERY,
    }
}

/// The Lease as a holder `holder` writes it, with `renewTime` by its own (skewed) clock.
fn held_by(holder: &str, renewed: Timestamp) -> Lease {
    let mut lease = Lease {
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.to_owned()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(renewed)),
            acquire_time: Some(MicroTime(renewed)),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        }),
        ..Lease::default()
    };
    lease.metadata.name = Some("kubekms-operator".to_owned());
    lease.metadata.namespace = Some(NAMESPACE.to_owned());
    lease
}

fn holder(fake: &FakeApi) -> Option<String> {
    fake.lease("kubekms-operator")
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

fn skewed(by_seconds: i64) -> Timestamp {
    Timestamp::now()
        .checked_add(SignedDuration::from_secs(by_seconds))
        .expect("time")
}

/// Item 1 of issue 13: the API server stops answering in the middle of a renewal. The
/// leader gives up at its renew deadline, counted from the start of its last successful
/// renewal, which is before any standby may take its Lease over.
#[tokio::test(start_paused = true)]
async fn a_renewal_that_never_answers_stops_the_leader_before_its_lease_expires() {
    let (client, fake) = FakeApi::start();
    let leader = LeaderElector::new(client, config("a"));
    let acquired = leader.acquire().await;
    assert_eq!(holder(&fake).as_deref(), Some("a"));
    // Two renewals go through (at 2 s and 4 s), then every call hangs.
    let stall_after_two_renewals = async {
        tokio::time::sleep(EVERY * 2 + Duration::from_millis(500)).await;
        fake.stall();
    };
    let (end, ()) = tokio::time::timeout(
        LEASE * 2,
        futures::future::join(leader.hold(acquired), stall_after_two_renewals),
    )
    .await
    .expect("hold must return while the renewal still hangs");
    let stopped = Instant::now();
    assert_eq!(end, LeadershipEnd::DeadlinePassed);
    let last_renewal_started = acquired + EVERY * 2;
    assert!(
        stopped < last_renewal_started + LEASE,
        "stopped {:?} after the last renewal started; a standby may take over after {LEASE:?}",
        stopped - last_renewal_started
    );
    let log = fake.take_log();
    assert_eq!(
        log.iter().filter(|r| r.starts_with("PUT leases")).count(),
        2,
        "{log:?}"
    );
}

/// Item 2 of issue 13: the holder's node clock is 60 s behind but it keeps renewing; a
/// standby must not take over, however old its renewTime looks. Once it stops renewing,
/// the standby takes over a Lease duration after it last saw a change.
#[tokio::test(start_paused = true)]
async fn a_standby_waits_for_a_renewing_holder_whose_clock_is_behind() {
    let (client, fake) = FakeApi::start();
    let standby = LeaderElector::new(client, config("b"));
    fake.put_lease(&held_by("a", skewed(-60)));
    let mut last_change = Instant::now();
    for second in 1..=60 {
        assert!(
            !standby.try_acquire_or_renew().await.expect("attempt"),
            "took over from a holder that renews, at second {second}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        if second % 4 == 0 {
            fake.put_lease(&held_by("a", skewed(-60)));
            last_change = Instant::now();
        }
    }
    assert_eq!(holder(&fake).as_deref(), Some("a"));
    // The holder stops: not before a Lease duration without change, then at once.
    let stopped = last_change;
    let acquired = standby.acquire().await;
    assert!(
        acquired > stopped + LEASE,
        "took over {:?} after the last change",
        acquired - stopped
    );
    assert!(
        acquired <= stopped + LEASE + EVERY,
        "waited {:?}",
        acquired - stopped
    );
    assert_eq!(holder(&fake).as_deref(), Some("b"));
}

/// The holder's clock is 60 s ahead and it has stopped: the standby takes over a Lease
/// duration after it first saw the Lease, not 60 s later.
#[tokio::test(start_paused = true)]
async fn a_standby_takes_over_from_a_silent_holder_whose_clock_is_ahead() {
    let (client, fake) = FakeApi::start();
    fake.put_lease(&held_by("a", skewed(60)));
    let standby = LeaderElector::new(client, config("b"));
    let first_seen = Instant::now();
    let acquired = tokio::time::timeout(LEASE * 2, standby.acquire())
        .await
        .expect("the standby must take over within two Lease durations");
    assert!(
        acquired > first_seen + LEASE,
        "took over after {:?}",
        acquired - first_seen
    );
    assert_eq!(holder(&fake).as_deref(), Some("b"));
    let transitions = fake
        .lease("kubekms-operator")
        .and_then(|l| l.spec)
        .and_then(|s| s.lease_transitions);
    assert_eq!(transitions, Some(1));
}
