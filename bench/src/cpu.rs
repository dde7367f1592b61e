//! CPU time from /proc: of this process (the load client), of the server under test, and
//! of the whole machine, so a run can tell how much of the 2 cores the client took, how
//! much the server, and how much other work on the machine (builds, tests) took meanwhile.

use std::time::{Duration, Instant};

/// Why a reading failed.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// A /proc file could not be read (the process exited).
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A /proc file did not have the expected shape.
    #[error("unexpected content in {0}")]
    Parse(String),
}

/// CPU time used by one process so far (user + system, all its threads).
///
/// # Errors
/// When `/proc/<pid>/stat` cannot be read or parsed.
pub fn process_cpu(pid: u32) -> Result<Duration, CpuError> {
    let path = format!("/proc/{pid}/stat");
    let stat = read(&path)?;
    // Fields after the command name (which may hold spaces and parentheses): state is
    // field 3, utime 14 and stime 15 (1-based, proc(5)).
    let after = stat
        .rsplit_once(") ")
        .map(|(_, a)| a)
        .ok_or_else(|| CpuError::Parse(path.clone()))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64, CpuError> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| CpuError::Parse(path.clone()))
    };
    Ok(ticks_to_duration(ticks(11)? + ticks(12)?))
}

/// Busy and total CPU time of the whole machine so far (all cores, from /proc/stat).
#[derive(Debug, Clone, Copy)]
pub struct MachineCpu {
    /// Time not idle (user, nice, system, irq, softirq, steal).
    pub busy: Duration,
    /// Busy plus idle and iowait.
    pub total: Duration,
}

/// The machine's CPU counters.
///
/// # Errors
/// When /proc/stat cannot be read or parsed.
pub fn machine_cpu() -> Result<MachineCpu, CpuError> {
    let stat = read("/proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| CpuError::Parse("/proc/stat".to_owned()))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| {
            f.parse()
                .map_err(|_| CpuError::Parse("/proc/stat".to_owned()))
        })
        .collect::<Result<_, _>>()?;
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal (guest is counted in user already)
    let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
    let total = busy + at(3) + at(4);
    Ok(MachineCpu {
        busy: ticks_to_duration(busy),
        total: ticks_to_duration(total),
    })
}

/// The machine's load average line (`/proc/loadavg`, first three fields).
#[must_use]
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn read(path: &str) -> Result<String, CpuError> {
    std::fs::read_to_string(path).map_err(|source| CpuError::Read {
        path: path.to_owned(),
        source,
    })
}

fn ticks_to_duration(ticks: u64) -> Duration {
    let per_second = rustix::param::clock_ticks_per_second().max(1);
    Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / per_second)
}

/// One reading of every counter, at one instant.
#[derive(Debug, Clone, Copy)]
pub struct CpuSnapshot {
    at: Instant,
    client: Duration,
    server: Option<Duration>,
    machine: MachineCpu,
}

impl CpuSnapshot {
    /// Reads the counters of this process, of `server_pid` when given, and of the machine.
    ///
    /// # Errors
    /// When a counter cannot be read (the server exited).
    pub fn take(server_pid: Option<u32>) -> Result<Self, CpuError> {
        Ok(Self {
            at: Instant::now(),
            client: process_cpu(std::process::id())?,
            server: server_pid.map(process_cpu).transpose()?,
            machine: machine_cpu()?,
        })
    }

    /// What was used between `self` and the later `end`, in cores (CPU seconds per second).
    #[must_use]
    pub fn usage_until(&self, end: &Self) -> CpuUsage {
        let wall = end.at.saturating_duration_since(self.at).as_secs_f64();
        let cores = |d: Duration| {
            if wall > 0.0 {
                d.as_secs_f64() / wall
            } else {
                0.0
            }
        };
        let client = cores(end.client.saturating_sub(self.client));
        let server = match (self.server, end.server) {
            (Some(a), Some(b)) => Some(cores(b.saturating_sub(a))),
            _ => None,
        };
        let busy = end.machine.busy.saturating_sub(self.machine.busy);
        let total = end.machine.total.saturating_sub(self.machine.total);
        let machine_busy = cores(busy);
        let machine_cores = cores(total);
        CpuUsage {
            client,
            server,
            other: (machine_busy - client - server.unwrap_or(0.0)).max(0.0),
            machine_cores,
        }
    }
}

/// CPU used during a phase, in cores (1.0 = one core busy all the time).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuUsage {
    /// This process: the load client.
    pub client: f64,
    /// The server under test, when its pid is known.
    pub server: Option<f64>,
    /// The rest of the machine (busy time of all cores, less the client and the server).
    pub other: f64,
    /// How many cores the machine counted over the phase (busy + idle): 2 here.
    pub machine_cores: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_loop_shows_in_the_client_share() {
        let me = std::process::id();
        let start = CpuSnapshot::take(Some(me)).expect("snapshot");
        let before = process_cpu(me).expect("cpu");
        // Spin until the kernel has counted 50 ms of CPU to this process (however loaded
        // the machine is), with a bound.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut x = 0u64;
        while process_cpu(me).expect("cpu") < before + Duration::from_millis(50) {
            assert!(Instant::now() < deadline, "no CPU time counted in 60 s");
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        let end = CpuSnapshot::take(Some(me)).expect("snapshot");
        let usage = start.usage_until(&end);
        assert!(usage.client > 0.0, "{usage:?}");
        assert_eq!(usage.server, Some(usage.client));
        assert!(usage.machine_cores >= 1.0, "{usage:?}");
    }

    #[test]
    fn an_exited_process_is_an_error() {
        assert!(matches!(process_cpu(u32::MAX), Err(CpuError::Read { .. })));
    }
}
