//! Server processes that the benchmark starts: output to a log file, a readiness line
//! waited for with a timeout, SIGTERM then SIGKILL when dropped, and a watchdog that stops
//! the server if the benchmark itself is killed (so no server outlives a `kill -9`).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to exit after SIGTERM before it gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How often the log is read while waiting for the readiness line.
const POLL: Duration = Duration::from_millis(20);

/// Stops the child (`$2`, started at `$3` ticks after boot) once the parent (`$1`) is gone;
/// the start time tells the child from a later process that got its pid.
const WATCHDOG: &str = r#"parent="$1" child="$2" started="$3"
while kill -0 "${parent}" 2>/dev/null; do sleep 1; done
starttime() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20; }
if [ "$(starttime "${child}")" = "${started}" ]; then
  kill -TERM "${child}" 2>/dev/null
  sleep 2
  if [ "$(starttime "${child}")" = "${started}" ]; then kill -KILL "${child}" 2>/dev/null; fi
fi"#;

/// Why a server could not be started or did not become ready.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The program could not be started.
    #[error("starting {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The log file could not be made or read.
    #[error("log {path}: {source}")]
    Log {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The process exited before it was ready.
    #[error("{name} exited ({status}) before it was ready; its log ends with:\n{tail}")]
    Exited {
        /// The server.
        name: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The last lines of its log.
        tail: String,
    },
    /// The readiness line did not come in time.
    #[error("{name} was not ready after {waited:?}; its log ends with:\n{tail}")]
    NotReady {
        /// The server.
        name: String,
        /// How long was waited.
        waited: Duration,
        /// The last lines of its log.
        tail: String,
    },
}

/// A running server process, stopped when dropped.
pub struct ServerProcess {
    name: String,
    child: Child,
    watchdog: Option<Child>,
    log: PathBuf,
}

impl ServerProcess {
    /// Starts `command` as the server `name`, its stdout and stderr into `log`.
    ///
    /// # Errors
    /// When the log cannot be created or the program cannot be started.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> Result<Self, ProcessError> {
        let log_error = |source| ProcessError::Log {
            path: log.to_owned(),
            source,
        };
        let out = File::create(log).map_err(log_error)?;
        let err = out.try_clone().map_err(log_error)?;
        let program = command.get_program().to_string_lossy().into_owned();
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| ProcessError::Spawn { program, source })?;
        let mut server = Self {
            name: name.to_owned(),
            child,
            watchdog: None,
            log: log.to_owned(),
        };
        server.watchdog = spawn_watchdog(std::process::id(), server.pid());
        Ok(server)
    }

    /// The server's pid.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's log file.
    #[must_use]
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Waits until a line of the log gives `Some` through `ready`, and returns that.
    ///
    /// # Errors
    /// When the server exits first, or `within` passes.
    pub fn wait_for_line<T>(
        &mut self,
        within: Duration,
        ready: impl Fn(&str) -> Option<T>,
    ) -> Result<T, ProcessError> {
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(&self.log).map_err(|source| ProcessError::Log {
                path: self.log.clone(),
                source,
            })?;
            if let Some(found) = text.lines().find_map(&ready) {
                return Ok(found);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(ProcessError::Exited {
                    name: self.name.clone(),
                    status,
                    tail: tail(&text),
                });
            }
            if started.elapsed() >= within {
                return Err(ProcessError::NotReady {
                    name: self.name.clone(),
                    waited: within,
                    tail: tail(&text),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Whether the server still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Some(pid) = i32::try_from(self.child.id())
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            let deadline = Instant::now() + STOP_GRACE;
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(POLL);
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

/// Starts the watchdog that stops `child` once `parent` is gone. None when the child's
/// start time is unknown (it could not be told from a later process with its pid) or `sh`
/// cannot start: the server is then still stopped on drop, just not after a `kill -9`.
fn spawn_watchdog(parent: u32, child: u32) -> Option<Child> {
    let started = proc_starttime(child)?;
    Command::new("sh")
        .arg("-c")
        .arg(WATCHDOG)
        .arg("watchdog")
        .arg(parent.to_string())
        .arg(child.to_string())
        .arg(started)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

/// Field 22 of /proc/PID/stat: when the process started, in ticks after boot.
fn proc_starttime(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(") ")?.1;
    after.split_whitespace().nth(19).map(str::to_owned)
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_line_is_found_and_drop_stops_the_server() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut command = Command::new("sh");
        command.args(["-c", "echo 'listening on 127.0.0.1:4242'; exec sleep 600"]);
        let mut server =
            ServerProcess::spawn("sleeper", command, &dir.path().join("log")).expect("spawn");
        let port = server
            .wait_for_line(Duration::from_secs(30), |l| {
                l.strip_prefix("listening on 127.0.0.1:")?
                    .parse::<u16>()
                    .ok()
            })
            .expect("ready");
        assert_eq!(port, 4242);
        let pid = server.pid();
        let started = proc_starttime(pid);
        assert!(started.is_some());
        assert!(server.is_running());
        drop(server);
        // Stopped and reaped by drop: the pid names no process, or another one.
        assert_ne!(proc_starttime(pid), started);
    }

    #[test]
    fn a_server_that_exits_early_reports_its_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut command = Command::new("sh");
        command.args(["-c", "echo 'bind: address already in use' >&2; exit 3"]);
        let mut server =
            ServerProcess::spawn("failing", command, &dir.path().join("log")).expect("spawn");
        let err = server
            .wait_for_line(Duration::from_secs(30), |l| {
                l.strip_prefix("ready").map(|_| ())
            })
            .expect_err("exits");
        let msg = err.to_string();
        assert!(msg.contains("address already in use"), "{msg}");
        assert!(msg.contains("exited"), "{msg}");
    }

    /// Whether `pid` has a `sleep 1` child (the watchdog's loop).
    fn sleeps_in_loop(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .any(|c| {
                std::fs::read(format!("/proc/{c}/cmdline"))
                    .is_ok_and(|cmd| cmd == b"sleep\x001\x00")
            })
    }

    #[test]
    fn the_watchdog_stops_the_server_when_the_parent_dies() {
        let mut parent = KillOnDrop(sleeper());
        let mut child = KillOnDrop(sleeper());
        let mut watchdog =
            KillOnDrop(spawn_watchdog(parent.0.id(), child.0.id()).expect("watchdog"));
        // Evidence that the watchdog checked the living parent: it sleeps in its loop.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !sleeps_in_loop(watchdog.0.id()) {
            assert!(
                Instant::now() < deadline,
                "the watchdog never reached its loop"
            );
            std::thread::sleep(POLL);
        }
        assert!(
            matches!(child.0.try_wait(), Ok(None)),
            "stopped while the parent lived"
        );
        parent.0.kill().expect("kill parent");
        parent.0.wait().expect("reap parent");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.0.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "child still runs 30 s after its parent died"
            );
            std::thread::sleep(POLL);
        };
        assert!(!status.success(), "{status:?}");
        watchdog.0.wait().expect("watchdog exits");
    }

    /// A process of the test, killed however the test ends (its output is not the test's,
    /// so a leftover cannot hold the test runner's pipe open).
    struct KillOnDrop(Child);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn sleeper() -> Child {
        Command::new("sleep")
            .arg("600")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sleep")
    }
}
