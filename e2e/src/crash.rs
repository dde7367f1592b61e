//! Crash drills (issue 11): SIGKILL one process of a running control plane and start it
//! again with the command line it had, the way a supervisor (systemd, the kubelet) would.
//! The launcher's processes (`etcd`, `kms-plugin`, `kube-apiserver`) run in their own
//! session, so the signal goes to the process group, as `control-plane.sh down` does.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, ensure};

use crate::ControlPlane;
use crate::process::{is_zombie, proc_starttime};

/// How long a SIGKILLed process may take to disappear (the kernel reaps it; a zombie
/// counts as gone).
const KILL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long etcd may take to answer `endpoint health` after a restart.
const ETCD_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A small seeded generator (SplitMix64): a drill's choices replay from its seed alone,
/// with no dependency on a crate's algorithm staying the same across versions.
#[derive(Debug, Clone)]
pub struct DrillRng(u64);

impl DrillRng {
    /// A generator that replays `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`0` when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// A duration in `0..=max`, in whole milliseconds.
    pub fn millis(&mut self, max: Duration) -> Duration {
        let max = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(self.below(max.saturating_add(1)))
    }
}

/// A seed nobody chose: the clock's nanoseconds mixed with this process's id.
#[must_use]
pub fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    #[allow(clippy::cast_possible_truncation)]
    let low = nanos as u64;
    DrillRng::new(low ^ u64::from(std::process::id()).rotate_left(32)).next_u64()
}

impl ControlPlane {
    /// Whether `process` (a launcher pid file) still runs: the same start time, not a
    /// zombie.
    #[must_use]
    pub fn is_running(&self, process: &str) -> bool {
        let Ok(text) = std::fs::read_to_string(self.pid_file(process)) else {
            return false;
        };
        let mut fields = text.split_whitespace();
        let (Some(pid), Some(start)) = (
            fields.next().and_then(|p| p.parse::<i32>().ok()),
            fields.next(),
        ) else {
            return false;
        };
        proc_starttime(pid).as_deref() == Some(start) && !is_zombie(pid)
    }

    /// SIGKILL to `process`'s group, then waits until it is gone; its pid file is
    /// removed, so a restart writes a new one.
    ///
    /// # Errors
    /// When there is no such process or it outlives [`KILL_TIMEOUT`].
    pub fn kill_process(&self, process: &str) -> Result<()> {
        let pid = self.pid_of(process)?;
        let start = proc_starttime(pid);
        let group = rustix::process::Pid::from_raw(pid).ok_or_else(|| anyhow!("pid {pid}"))?;
        rustix::process::kill_process_group(group, rustix::process::Signal::KILL)
            .with_context(|| format!("SIGKILL to {process} (pid {pid})"))?;
        let deadline = Instant::now() + KILL_TIMEOUT;
        while start.is_some() && proc_starttime(pid) == start && !is_zombie(pid) {
            ensure!(
                Instant::now() < deadline,
                "{process} (pid {pid}) still runs {}s after SIGKILL",
                KILL_TIMEOUT.as_secs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::remove_file(self.pid_file(process)).ok();
        Ok(())
    }

    /// Waits until etcd answers `endpoint health`.
    ///
    /// # Errors
    /// After [`ETCD_READY_TIMEOUT`], with etcdctl's last answer and where to look.
    pub fn wait_etcd_healthy(&self) -> Result<()> {
        let deadline = Instant::now() + ETCD_READY_TIMEOUT;
        loop {
            let last = match self.etcdctl(["endpoint", "health"]) {
                Ok(_) => return Ok(()),
                Err(e) => format!("{e:#}"),
            };
            ensure!(
                Instant::now() < deadline,
                "etcd not healthy {}s after its start: {last}; {}",
                ETCD_READY_TIMEOUT.as_secs(),
                self.where_to_look()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_the_same_choices() {
        let mut a = DrillRng::new(42);
        let mut b = DrillRng::new(42);
        let first: Vec<u64> = (0..8).map(|_| a.below(1000)).collect();
        let again: Vec<u64> = (0..8).map(|_| b.below(1000)).collect();
        assert_eq!(first, again);
        let mut c = DrillRng::new(43);
        let other: Vec<u64> = (0..8).map(|_| c.below(1000)).collect();
        assert_ne!(first, other, "another seed gives other choices");
        assert!(a.millis(Duration::from_millis(5)) <= Duration::from_millis(5));
        assert_eq!(a.below(0), 0);
    }
}
