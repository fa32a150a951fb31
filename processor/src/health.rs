//! Whether a processor's rows reach their store, seen from outside while they do not:
//!
//! - [`Unstored`]: the rows a processor has taken from the bus and not stored yet (in open
//!   batches, or batches being inserted, retries included). `run` sets
//!   `pitboss_processor_unstored_seconds{topic}` from it every second — the age of the oldest
//!   such row, 0 when there is none — from a task of its own, so the figure climbs while an
//!   insert hangs or is retried (the processor then stops polling, so neither the consumer
//!   lag nor the freshness of stored batches moves).
//! - [`StoreHealth`]: whether the store answers, for a process's `/readyz` (`pitboss process`):
//!   not reached yet at start, or failing since when and why.

use std::collections::VecDeque;
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
    /// Since when the store's calls have failed without one succeeding, and the latest error.
    failing: Option<(Instant, String)>,
}

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

    /// A call to the store failed (and is retried).
    pub fn failed(&self, error: &dyn std::fmt::Display) {
        let mut state = lock(&self.0);
        let since = state
            .failing
            .as_ref()
            .map_or_else(Instant::now, |(s, _)| *s);
        state.failing = Some((since, error.to_string()));
    }

    /// A call to the store succeeded.
    pub fn succeeded(&self) {
        let mut state = lock(&self.0);
        if state.failing.is_some() {
            state.failing = None;
        }
    }

    /// Why the processors do not store now, if they do not: `store: not reached yet: …` or
    /// `store: failing for 12 s: …` (the latest error).
    pub fn not_ready(&self) -> Option<String> {
        let state = lock(&self.0);
        if let Some(why) = &state.unreached {
            return Some(format!("store: not reached yet: {why}"));
        }
        state.failing.as_ref().map(|(since, why)| {
            format!(
                "store: failing for {} s: {why}",
                Duration::as_secs(&since.elapsed())
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
        h.failed(&"timed out");
        h.failed(&"connection reset");
        let why = h.not_ready().unwrap();
        assert!(
            why.starts_with("store: failing for 0 s: connection reset"),
            "{why}"
        );
        h.succeeded();
        assert_eq!(h.not_ready(), None);
    }
}
