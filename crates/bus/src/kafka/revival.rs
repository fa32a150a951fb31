//! When to replace a librdkafka client that stopped reconnecting. After a broker stalled for a
//! minute or more (SIGSTOP, a partition of the network), a client could be left with no broker
//! connection and make no further attempt while the broker served everyone else: a producer
//! whose every publish then failed (ingest answered 503 for 15 minutes), a reader that
//! received nothing more (a gateway stopped delivering pushes). Nothing of the client says so;
//! what the owner sees is failures, or an error followed by silence. A client that has failed
//! and not succeeded since for [`Revival::after`] is replaced by a new one (from where the old
//! one got to); a broker that is really down just makes the new one fail too, and it is
//! replaced again no sooner than `after` later.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub(super) struct Revival {
    after: Duration,
    /// The first failure since the last success (or replacement), of failures each within
    /// `after` of the one before.
    failing_since: Option<Instant>,
    last_failed: Option<Instant>,
    last_replaced: Option<Instant>,
}

impl Revival {
    pub(super) fn new(after: Duration) -> Revival {
        Revival {
            after,
            failing_since: None,
            last_failed: None,
            last_replaced: None,
        }
    }

    /// The client did its work (a delivery, a record).
    pub(super) fn ok(&mut self) {
        self.failing_since = None;
    }

    /// The client failed (a publish, a poll error). A failure long after the one before (a
    /// quiet client, a caller that went away once) starts the count again: only failures
    /// that keep coming make a client due.
    pub(super) fn failed(&mut self, now: Instant) {
        if self
            .last_failed
            .is_some_and(|t| now.saturating_duration_since(t) > self.after)
        {
            self.failing_since = None;
        }
        self.failing_since.get_or_insert(now);
        self.last_failed = Some(now);
    }

    /// Whether to replace the client now: failing for `after`, and not replaced within it.
    pub(super) fn due(&self, now: Instant) -> bool {
        self.failing_since
            .is_some_and(|t| now.saturating_duration_since(t) >= self.after)
            && self
                .last_replaced
                .is_none_or(|t| now.saturating_duration_since(t) >= self.after)
    }

    /// The client was replaced: the new one starts with a clean record.
    pub(super) fn replaced(&mut self, now: Instant) {
        self.failing_since = None;
        self.last_replaced = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_failing_for_the_whole_span_is_replaced_and_not_again_within_it() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut r = Revival::new(Duration::from_secs(30));
        assert!(!r.due(s(100)), "never failed");
        r.failed(s(0));
        r.failed(s(10));
        assert!(!r.due(s(29)));
        assert!(r.due(s(30)), "failing since the first failure, 30 s ago");
        // A success in between clears it.
        r.ok();
        assert!(!r.due(s(45)));
        r.failed(s(50));
        assert!(r.due(s(80)));
        r.replaced(s(80));
        assert!(!r.due(s(81)));
        // The new client fails at once (the broker is really down): replaced again only a
        // whole span after the last replacement.
        r.failed(s(81));
        r.failed(s(100));
        assert!(!r.due(s(109)));
        assert!(r.due(s(111)));
        // A failure, then nothing for longer than the span, then another: not a client that
        // keeps failing (a caller that went away once on a quiet instance).
        let mut r = Revival::new(Duration::from_secs(30));
        r.failed(s(0));
        r.failed(s(300));
        assert!(!r.due(s(300)));
        assert!(!r.due(s(329)));
        r.failed(s(320));
        assert!(r.due(s(330)));
    }
}
