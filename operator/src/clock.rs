//! The operator's notion of "now", injected so tests can move time.
//!
//! Production uses [`SystemClock`]. Unit tests use [`TestClock`], set by hand. End-to-end
//! tests use [`OffsetFileClock`]: the system time plus a number of seconds read from a file,
//! which `main` only accepts when `KUBEKMS_ALLOW_TEST_CLOCK=1` is also set, so a production
//! deployment cannot move its clock (and destroy material early) by one stray flag.

use std::path::PathBuf;
use std::sync::Mutex;

use futures::stream::BoxStream;
use time::{Duration, OffsetDateTime};
use tokio::sync::watch;

/// The environment variable that must be `1` for [`OffsetFileClock`] to be accepted.
pub const ALLOW_TEST_CLOCK_ENV: &str = "KUBEKMS_ALLOW_TEST_CLOCK";

/// A source of the current time.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> OffsetDateTime;

    /// A stream that yields whenever the clock jumps (a test moved it), so every object
    /// is looked at again at once; `None` for a clock that only runs forward.
    fn jumps(&self) -> Option<BoxStream<'static, ()>> {
        None
    }
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that only moves when told to (unit tests).
#[derive(Debug)]
pub struct TestClock {
    now: Mutex<OffsetDateTime>,
    moved: watch::Sender<()>,
}

impl TestClock {
    /// A clock showing `now`.
    #[must_use]
    pub fn new(now: OffsetDateTime) -> Self {
        Self {
            now: Mutex::new(now),
            moved: watch::Sender::new(()),
        }
    }

    /// Sets the time.
    pub fn set(&self, now: OffsetDateTime) {
        *self
            .now
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = now;
        self.moved.send_replace(());
    }

    /// Moves the time forward.
    pub fn advance(&self, by: Duration) {
        let mut now = self
            .now
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *now = now.checked_add(by).unwrap_or(*now);
        drop(now);
        self.moved.send_replace(());
    }
}

impl Clock for TestClock {
    fn now(&self) -> OffsetDateTime {
        *self
            .now
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn jumps(&self) -> Option<BoxStream<'static, ()>> {
        let moved = self.moved.subscribe();
        Some(Box::pin(futures::stream::unfold(
            moved,
            |mut moved| async move {
                moved.changed().await.ok()?;
                Some(((), moved))
            },
        )))
    }
}

/// The system time plus an offset in whole seconds read from a file at every call (e2e
/// tests write the file to jump ahead). A missing or unreadable file means no offset.
#[derive(Debug, Clone)]
pub struct OffsetFileClock {
    path: PathBuf,
}

impl OffsetFileClock {
    /// A clock reading its offset from `path`.
    #[must_use]
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// The offset the file holds now.
    #[must_use]
    pub fn offset(&self) -> Duration {
        std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|text| text.trim().parse::<i64>().ok())
            .map_or(Duration::ZERO, Duration::seconds)
    }
}

impl Clock for OffsetFileClock {
    /// An offset that would leave the range of dates is ignored (and said so).
    fn now(&self) -> OffsetDateTime {
        let now = OffsetDateTime::now_utc();
        now.checked_add(self.offset()).unwrap_or_else(|| {
            tracing::warn!("TEST CLOCK offset out of the range of dates: ignored");
            now
        })
    }

    /// Polls the file twice a second.
    fn jumps(&self) -> Option<BoxStream<'static, ()>> {
        let clock = self.clone();
        let offset = clock.offset();
        Some(Box::pin(futures::stream::unfold(
            (clock, offset),
            |(clock, last)| async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    let offset = clock.offset();
                    if offset != last {
                        tracing::warn!(
                            offset_seconds = offset.whole_seconds(),
                            "TEST CLOCK moved: looking at every object again"
                        );
                        return Some(((), (clock, offset)));
                    }
                }
            },
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_clock_moves_only_when_told() {
        let start = OffsetDateTime::UNIX_EPOCH;
        let clock = TestClock::new(start);
        assert_eq!(clock.now(), start);
        clock.advance(Duration::days(3));
        assert_eq!(clock.now(), start + Duration::days(3));
        clock.set(start);
        assert_eq!(clock.now(), start);
    }

    #[test]
    fn offset_file_clock_reads_the_file_each_time() {
        let dir = std::env::temp_dir().join(format!("kubekms-clock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("offset");
        let clock = OffsetFileClock::new(path.clone());
        assert_eq!(clock.offset(), Duration::ZERO, "missing file: no offset");
        std::fs::write(&path, "86400\n").expect("write");
        assert_eq!(clock.offset(), Duration::days(1));
        assert!(clock.now() > OffsetDateTime::now_utc() + Duration::hours(23));
        std::fs::write(&path, "garbage").expect("write");
        assert_eq!(clock.offset(), Duration::ZERO);
        std::fs::write(&path, i64::MAX.to_string()).expect("write");
        assert!(
            clock.now() < OffsetDateTime::now_utc() + Duration::days(1),
            "an offset out of range is ignored, not a panic"
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
