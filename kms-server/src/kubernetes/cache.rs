//! The authorization decision cache: answers (allowed and denied) kept for a short time,
//! at most `capacity` entries, and concurrent misses for one question coalesced into one
//! call. Failures are not cached: the next request asks again. Time is tokio's monotonic
//! clock (tests pause and advance it).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};
use tokio::time::Instant;

/// An answer of the API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allowed or not.
    pub allowed: bool,
    /// The authorizer's reason (for the audit record and the log; never sent to callers).
    pub reason: Arc<str>,
}

/// How an answer was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// From the cache.
    Hit,
    /// This request asked.
    Miss,
    /// Another request was asking; this one waited for its answer.
    Coalesced,
}

type Asking = Shared<BoxFuture<'static, Result<Decision, String>>>;

enum Entry {
    /// `order` breaks ties of `expires` (answers of one instant): the older goes first.
    Ready {
        decision: Decision,
        expires: Instant,
        order: u64,
    },
    Pending(Asking),
}

/// See the module documentation.
pub struct DecisionCache<K> {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<K, Entry>>,
    answers: std::sync::atomic::AtomicU64,
}

impl<K: Hash + Eq + Clone> std::fmt::Debug for DecisionCache<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionCache")
            .field("ttl", &self.ttl)
            .field("capacity", &self.capacity)
            .field("entries", &self.len())
            .finish()
    }
}

impl<K: Hash + Eq + Clone> DecisionCache<K> {
    /// A cache keeping answers for `ttl` (zero: none kept, concurrent misses still
    /// coalesced), at most `capacity` of them.
    #[must_use]
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity: capacity.max(1),
            entries: Mutex::new(HashMap::new()),
            answers: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Entry>> {
        match self.entries.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Entries held (answers and questions in flight).
    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops expired answers; if the cache is still full, the answer closest to expiry.
    fn make_room(&self, entries: &mut HashMap<K, Entry>, now: Instant) {
        if entries.len() < self.capacity {
            return;
        }
        entries.retain(|_, entry| match entry {
            Entry::Ready { expires, .. } => *expires > now,
            Entry::Pending(_) => true,
        });
        while entries.len() >= self.capacity {
            let oldest = entries
                .iter()
                .filter_map(|(key, entry)| match entry {
                    Entry::Ready { expires, order, .. } => Some(((*expires, *order), key)),
                    Entry::Pending(_) => None,
                })
                .min_by_key(|(age, _)| *age)
                .map(|(_, key)| key.clone());
            match oldest {
                Some(key) => {
                    entries.remove(&key);
                }
                // Only questions in flight: bounded by the requests in flight.
                None => break,
            }
        }
    }

    /// The cached answer to `key`, or the answer of `ask` (shared with every concurrent
    /// request for the same key).
    ///
    /// # Errors
    /// The error of `ask` (not cached).
    pub async fn get_or_ask(
        &self,
        key: K,
        ask: impl FnOnce() -> BoxFuture<'static, Result<Decision, String>>,
    ) -> (Result<Decision, String>, Lookup) {
        let question = key.clone();
        self.get_or_ask_with(&question, move || key, move |_| ask())
            .await
    }

    /// As [`DecisionCache::get_or_ask`] for a question given in a borrowed form: a hit
    /// builds nothing; `key` makes the owned key on a miss, and `ask` asks it.
    ///
    /// # Errors
    /// The error of `ask` (not cached).
    pub async fn get_or_ask_with<Q>(
        &self,
        question: &Q,
        key: impl FnOnce() -> K,
        ask: impl FnOnce(&K) -> BoxFuture<'static, Result<Decision, String>>,
    ) -> (Result<Decision, String>, Lookup)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let now = Instant::now();
        let (asking, lookup) = {
            let mut entries = self.lock();
            match entries.get(question) {
                Some(Entry::Ready {
                    decision, expires, ..
                }) if *expires > now => {
                    return (Ok(decision.clone()), Lookup::Hit);
                }
                Some(Entry::Pending(asking)) => (asking.clone(), Lookup::Coalesced),
                _ => {
                    entries.remove(question);
                    self.make_room(&mut entries, now);
                    let key = key();
                    let asking = ask(&key).shared();
                    entries.insert(key, Entry::Pending(asking.clone()));
                    (asking, Lookup::Miss)
                }
            }
        };
        let result = asking.clone().await;
        let mut entries = self.lock();
        // Whoever gets the answer first settles the entry, if it is still this question's.
        let ours = matches!(entries.get(question), Some(Entry::Pending(current)) if current.ptr_eq(&asking));
        if ours {
            match &result {
                Ok(decision) if !self.ttl.is_zero() => {
                    if let Some(entry) = entries.get_mut(question) {
                        *entry = Entry::Ready {
                            decision: decision.clone(),
                            expires: Instant::now() + self.ttl,
                            order: self
                                .answers
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                        };
                    }
                }
                _ => {
                    entries.remove(question);
                }
            }
        }
        (result, lookup)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn answer(
        calls: &Arc<AtomicUsize>,
        allowed: bool,
    ) -> impl FnOnce() -> BoxFuture<'static, Result<Decision, String>> {
        let calls = calls.clone();
        move || {
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok(Decision {
                    allowed,
                    reason: Arc::from("test"),
                })
            }
            .boxed()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn hits_until_expiry_then_asks_again() {
        let cache = DecisionCache::new(Duration::from_secs(5), 100);
        let calls = Arc::new(AtomicUsize::new(0));
        let (first, lookup) = cache.get_or_ask("q", answer(&calls, true)).await;
        assert_eq!((first.map(|d| d.allowed), lookup), (Ok(true), Lookup::Miss));
        tokio::time::advance(Duration::from_secs(4)).await;
        let (_, lookup) = cache.get_or_ask("q", answer(&calls, false)).await;
        assert_eq!(lookup, Lookup::Hit);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        let (again, lookup) = cache.get_or_ask("q", answer(&calls, false)).await;
        assert_eq!(lookup, Lookup::Miss, "expired after 5 s");
        assert_eq!(again.map(|d| d.allowed), Ok(false), "the new answer counts");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn denials_are_cached_and_failures_are_not() {
        let cache = DecisionCache::new(Duration::from_secs(5), 100);
        let calls = Arc::new(AtomicUsize::new(0));
        let _ = cache.get_or_ask("q", answer(&calls, false)).await;
        let (denied, lookup) = cache.get_or_ask("q", answer(&calls, true)).await;
        assert_eq!(
            (denied.map(|d| d.allowed), lookup),
            (Ok(false), Lookup::Hit)
        );
        let failing = || async { Err::<Decision, _>("down".to_owned()) }.boxed();
        let (failed, _) = cache.get_or_ask("f", failing).await;
        assert!(failed.is_err());
        let (_, lookup) = cache.get_or_ask("f", answer(&calls, true)).await;
        assert_eq!(lookup, Lookup::Miss, "a failure is asked again");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_misses_ask_once() {
        let cache = Arc::new(DecisionCache::new(Duration::from_secs(5), 100));
        let calls = Arc::new(AtomicUsize::new(0));
        let asks: Vec<_> = (0..8)
            .map(|_| {
                let cache = cache.clone();
                let calls = calls.clone();
                tokio::spawn(async move { cache.get_or_ask("q", answer(&calls, true)).await.1 })
            })
            .collect();
        let mut lookups = Vec::new();
        for ask in asks {
            lookups.push(ask.await.expect("task"));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{lookups:?}");
        assert_eq!(lookups.iter().filter(|l| **l == Lookup::Miss).count(), 1);
        assert_eq!(
            lookups.iter().filter(|l| **l == Lookup::Coalesced).count(),
            7
        );
    }

    #[tokio::test(start_paused = true)]
    async fn bounded() {
        let cache = DecisionCache::new(Duration::from_secs(5), 10);
        let calls = Arc::new(AtomicUsize::new(0));
        for i in 0..25 {
            let _ = cache.get_or_ask(i, answer(&calls, true)).await;
            assert!(cache.len() <= 10, "{} entries", cache.len());
        }
        assert_eq!(cache.len(), 10);
        // The most recent answers are kept, the oldest evicted.
        let (_, lookup) = cache.get_or_ask(24, answer(&calls, true)).await;
        assert_eq!(lookup, Lookup::Hit);
        let (_, lookup) = cache.get_or_ask(0, answer(&calls, true)).await;
        assert_eq!(lookup, Lookup::Miss);
    }
}
