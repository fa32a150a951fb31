//! Whether a processor's rows reach their store, seen from outside while they do not:
//!
//! - [`Unstored`]: the rows a processor has taken from the bus and not stored yet (in open
//!   batches, or batches being inserted, retries included). `run` sets
//!   `pitboss_processor_unstored_seconds{topic,table}` from it every second — the age of the oldest
//!   such row, 0 when there is none — from a task of its own, so the figure climbs while an
//!   insert hangs or is retried (the processor then stops polling, so neither the consumer
//!   lag nor the freshness of stored batches moves).
//! - [`StoreHealth`]: whether the store answers, for a process's `/readyz` (`pitboss process`):
//!   not reached yet at start, failing since when and why, or a call under way without an
//!   answer for [`NO_ANSWER`] (a store that hangs fails only at `--clickhouse-timeout-secs`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Stamps (ms) of the oldest row of what a processor holds unstored: its open batches as one
/// figure, and each batch sent to the inserter until it lands (they land in the order sent).
#[derive(Debug)]
pub(crate) struct Unstored {
    /// The oldest row of the open batches and of the records being taken (`u64::MAX`: none).
    open: AtomicU64,
    /// One entry per batch sent and not landed, in the order sent (`u64::MAX`: no rows).
    in_flight: Mutex<VecDeque<u64>>,
}

impl Default for Unstored {
    fn default() -> Self {
        Unstored {
            open: AtomicU64::new(u64::MAX),
            in_flight: Mutex::new(VecDeque::new()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Unstored {
    /// The oldest row of the open batches (and of records being taken) is now `oldest`.
    pub(crate) fn set_open(&self, oldest: Option<u64>) {
        self.open
            .store(oldest.unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Rows as old as `oldest` are being taken (before they reach a batch).
    pub(crate) fn taking(&self, oldest: u64) {
        self.open.fetch_min(oldest, Ordering::Relaxed);
    }

    /// A batch whose oldest row is `oldest` went to the inserter.
    pub(crate) fn sent(&self, oldest: Option<u64>) {
        lock(&self.in_flight).push_back(oldest.unwrap_or(u64::MAX));
    }

    /// The oldest batch sent landed.
    pub(crate) fn landed(&self) {
        lock(&self.in_flight).pop_front();
    }

    /// The stamp of the oldest row held, if any.
    pub(crate) fn oldest(&self) -> Option<u64> {
        let open = self.open.load(Ordering::Relaxed);
        let sent = lock(&self.in_flight)
            .iter()
            .copied()
            .min()
            .unwrap_or(u64::MAX);
        Some(open.min(sent)).filter(|&ms| ms != u64::MAX)
    }

    /// Seconds from the oldest row's stamp to `now_ms` (0 when nothing is held).
    pub(crate) fn age_seconds(&self, now_ms: i64) -> f64 {
        self.oldest()
            .map_or(0.0, |ms| (now_ms - ms as i64).max(0) as f64 / 1000.0)
    }
}

/// What a process's processors know of their store: shared by every processor of the process
/// (`ProcessorConfig::health`) and read by its `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct StoreHealth(Arc<Mutex<State>>);

/// Two handles are equal when they are the same handle (configs compare equal only if they
/// report to the same place).
impl PartialEq for StoreHealth {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for StoreHealth {}

#[derive(Debug, Default)]
struct State {
    /// Set while the process has not reached its store yet: why.
    unreached: Option<String>,
    /// Per processor (by the topic it reads): its store calls failing.
    failing: HashMap<String, Failing>,
    /// Calls to the store under way, by when each began.
    calls: BTreeMap<u64, Instant>,
    next_call: u64,
}

/// A processor's store calls failing: since when the first failed call began, the latest
/// error, and whether an insert failed (then only an insert that lands ends it: reads that
/// work while inserts fail do not).
#[derive(Debug)]
struct Failing {
    since: Instant,
    why: String,
    insert: bool,
}

/// What a call to the store does, for [`StoreHealth::watch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Call {
    Insert,
    /// A read, or recording a batch's range.
    Other,
}

/// How long a call to the store may go without an answer before `/readyz` says so (a store
/// that hangs would otherwise read ready until the call times out).
pub const NO_ANSWER: Duration = Duration::from_secs(10);

impl StoreHealth {
    /// A store the process is still trying to reach at start; `why` is the latest attempt's
    /// error (or what it waits for).
    pub fn unreached(&self, why: impl Into<String>) {
        lock(&self.0).unreached = Some(why.into());
    }

    /// The store answered at start.
    pub fn reached(&self) {
        lock(&self.0).unreached = None;
    }

    /// A call of `topic`'s processor, begun at `began`, failed.
    fn failed(&self, topic: &str, call: Call, began: Instant, error: &dyn std::fmt::Display) {
        let mut state = lock(&self.0);
        let f = state
            .failing
            .entry(topic.to_owned())
            .or_insert_with(|| Failing {
                since: began,
                why: String::new(),
                insert: false,
            });
        f.since = f.since.min(began);
        f.why = error.to_string();
        f.insert |= call == Call::Insert;
    }

    /// A call of `topic`'s processor succeeded: it ends the failing unless an insert failed
    /// and this was not an insert.
    fn succeeded(&self, topic: &str, call: Call) {
        let mut state = lock(&self.0);
        if state
            .failing
            .get(topic)
            .is_some_and(|f| call == Call::Insert || !f.insert)
        {
            state.failing.remove(topic);
        }
    }

    /// Runs a call to the store, counted as under way meanwhile: it succeeded (or the store
    /// answered by refusing rows), or it failed since it began.
    pub(crate) async fn watch<T>(
        &self,
        topic: &str,
        kind: Call,
        call: impl Future<Output = Result<T, crate::ProcessorError>>,
    ) -> Result<T, crate::ProcessorError> {
        /// Unregisters the call however it ends (a cancelled future included).
        struct Done<'a>(&'a StoreHealth, u64);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                lock(&(self.0).0).calls.remove(&self.1);
            }
        }
        let began = Instant::now();
        let id = {
            let mut state = lock(&self.0);
            state.next_call += 1;
            let id = state.next_call;
            state.calls.insert(id, began);
            id
        };
        let done = Done(self, id);
        let result = call.await;
        drop(done);
        match &result {
            Ok(_) | Err(crate::ProcessorError::Refused(_)) => self.succeeded(topic, kind),
            Err(e) => self.failed(topic, kind, began, e),
        }
        result
    }

    /// Why the processors do not store now, if they do not: `store: not reached yet: …`,
    /// `store: failing for 12 s: …` (the latest error), or `store: no answer for 12 s` (a call
    /// under way for [`NO_ANSWER`] or longer).
    pub fn not_ready(&self) -> Option<String> {
        self.not_ready_after(NO_ANSWER)
    }

    fn not_ready_after(&self, no_answer: Duration) -> Option<String> {
        let state = lock(&self.0);
        if let Some(why) = &state.unreached {
            return Some(format!("store: not reached yet: {why}"));
        }
        if let Some((topic, f)) = state.failing.iter().min_by_key(|(_, f)| f.since) {
            return Some(format!(
                "store: failing for {} s (topic {topic}): {}",
                f.since.elapsed().as_secs(),
                f.why
            ));
        }
        let oldest = state.calls.values().min()?;
        (oldest.elapsed() >= no_answer).then(|| {
            format!(
                "store: no answer for {} s (a call under way)",
                oldest.elapsed().as_secs()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_oldest_row_held_is_the_oldest_of_open_and_sent_batches() {
        let u = Unstored::default();
        assert_eq!(u.oldest(), None);
        assert_eq!(u.age_seconds(10_000), 0.0);
        u.set_open(Some(5_000));
        assert_eq!(u.oldest(), Some(5_000));
        // The open batch closes and goes to the inserter; a newer one opens.
        u.sent(Some(5_000));
        u.set_open(Some(7_000));
        u.sent(None);
        assert_eq!(u.oldest(), Some(5_000));
        assert_eq!(u.age_seconds(9_500), 4.5);
        // Records older than anything held are being taken.
        u.taking(1_000);
        assert_eq!(u.oldest(), Some(1_000));
        u.set_open(Some(7_000));
        u.landed();
        assert_eq!(u.oldest(), Some(7_000));
        u.landed();
        u.set_open(None);
        assert_eq!(u.oldest(), None);
        // A clock behind a stamp reads 0, not a negative age.
        u.set_open(Some(20_000));
        assert_eq!(u.age_seconds(10_000), 0.0);
    }

    #[test]
    fn the_store_is_ready_once_reached_and_while_its_calls_succeed() {
        let h = StoreHealth::default();
        assert_eq!(h.not_ready(), None);
        h.unreached("connection refused");
        assert_eq!(
            h.not_ready().as_deref(),
            Some("store: not reached yet: connection refused")
        );
        h.reached();
        assert_eq!(h.not_ready(), None);
        let now = Instant::now();
        h.failed("events", Call::Other, now, &"timed out");
        h.failed("events", Call::Other, now, &"connection reset");
        let why = h.not_ready().unwrap();
        assert!(
            why.starts_with("store: failing for 0 s (topic events): connection reset"),
            "{why}"
        );
        h.succeeded("events", Call::Other);
        assert_eq!(h.not_ready(), None);
    }

    /// Reads that work while inserts fail (a table refusing inserts: too many parts, a
    /// read-only replica) do not end the failing, nor does another processor's success (a
    /// review found /readyz flipping to 200 every retry cycle).
    #[test]
    fn only_an_insert_that_lands_ends_an_insert_failing_and_only_for_its_topic() {
        let h = StoreHealth::default();
        let began = Instant::now() - Duration::from_secs(30);
        h.failed("alerts", Call::Insert, began, &"too many parts");
        h.succeeded("alerts", Call::Other);
        h.succeeded("events", Call::Insert);
        let why = h.not_ready().unwrap();
        assert!(
            why.starts_with("store: failing for 30 s (topic alerts): too many parts"),
            "{why}"
        );
        // A later failure keeps the start of the first.
        h.failed("alerts", Call::Other, Instant::now(), &"read timed out");
        assert!(
            h.not_ready()
                .unwrap()
                .starts_with("store: failing for 30 s")
        );
        h.succeeded("alerts", Call::Insert);
        assert_eq!(h.not_ready(), None);
    }

    #[tokio::test]
    async fn a_call_without_an_answer_is_not_ready_and_a_failure_counts_from_its_start() {
        let h = StoreHealth::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<(), crate::ProcessorError>>();
        let call = tokio::spawn({
            let h = h.clone();
            async move {
                h.watch("events", Call::Insert, async { rx.await.unwrap() })
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(h.not_ready(), None, "under way, not for long");
        let why = h.not_ready_after(Duration::from_millis(10)).unwrap();
        assert!(why.starts_with("store: no answer for 0 s"), "{why}");
        tx.send(Err(crate::ProcessorError::Store("timed out".into())))
            .unwrap();
        assert!(call.await.unwrap().is_err());
        let why = h.not_ready().unwrap();
        assert!(
            why.starts_with("store: failing for 0 s (topic events): store: timed out"),
            "{why}"
        );
        // The next call that succeeds ends it; a finished call is no longer under way.
        h.watch("events", Call::Insert, async { Ok(()) })
            .await
            .unwrap();
        assert_eq!(h.not_ready_after(Duration::ZERO), None);
        // A call dropped before it answered is not counted as under way.
        let pending = h.watch(
            "events",
            Call::Other,
            std::future::pending::<Result<(), crate::ProcessorError>>(),
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(20), pending)
                .await
                .is_err()
        );
        assert_eq!(h.not_ready_after(Duration::ZERO), None);
    }
}
