//! Hot-key rerouting (PostHog capture's overflow): a bus key (`tenant:player`) sending faster
//! than `hot_key_events_per_second` is moved to the overflow topic, so one bot or runaway
//! client cannot saturate the partition it shares with thousands of well-behaved players.
//! Its events are still accepted and durable; they land on a topic with its own consumers.
//!
//! A key that goes hot stays rerouted for `hot_key_sticky_secs` after its last excess, so its
//! events do not flip between the two topics event by event: per-key order holds within each
//! topic and is broken only at the two switch-overs (consumers of both topics order by
//! `occurred_at` and the event id where it matters).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

use governor::middleware::NoOpMiddleware;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Keys are player ids chosen by clients: a randomly seeded hasher (foldhash; SipHash was a
/// visible share of the per-event cost).
type Limiter = DefaultKeyedRateLimiter<
    String,
    NoOpMiddleware<governor::clock::QuantaInstant>,
    foldhash::fast::RandomState,
>;

/// Most keys held as hot at once (memory bound); past it, only the excess events reroute.
const MAX_STICKY: usize = 100_000;

/// Which keys are hot now.
#[derive(Debug)]
pub struct HotKeys {
    limiter: Limiter,
    /// Key -> rerouted until (ms since the epoch).
    sticky: Mutex<HashMap<String, i64>>,
    sticky_count: AtomicUsize,
    sticky_ms: i64,
    last_housekeeping: AtomicI64,
}

/// How often [`HotKeys::tick`] runs the housekeeping.
const HOUSEKEEPING_MS: i64 = 10_000;

impl HotKeys {
    /// Keys may send `per_second` events per second (bursts of as many) before rerouting.
    pub fn new(per_second: u32, sticky_secs: u64) -> Self {
        let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        HotKeys {
            limiter: RateLimiter::dashmap_with_hasher(
                Quota::per_second(rate),
                foldhash::fast::RandomState::default(),
            ),
            sticky: Mutex::new(HashMap::new()),
            sticky_count: AtomicUsize::new(0),
            sticky_ms: i64::try_from(sticky_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            last_housekeeping: AtomicI64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, i64>> {
        self.sticky
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether an event with bus key `key` goes to the overflow topic (counts it).
    pub fn reroute(&self, key: &String, now_ms: i64) -> bool {
        if self.sticky_count.load(Ordering::Relaxed) > 0 {
            let mut sticky = self.lock();
            if let Some(until) = sticky.get_mut(key) {
                if *until > now_ms {
                    if self.limiter.check_key(key).is_err() {
                        *until = now_ms.saturating_add(self.sticky_ms);
                    }
                    return true;
                }
                sticky.remove(key);
                self.sticky_count.store(sticky.len(), Ordering::Relaxed);
            }
        }
        if self.limiter.check_key(key).is_ok() {
            return false;
        }
        let mut sticky = self.lock();
        if sticky.len() < MAX_STICKY {
            sticky.insert(key.clone(), now_ms.saturating_add(self.sticky_ms));
            self.sticky_count.store(sticky.len(), Ordering::Relaxed);
        }
        true
    }

    /// Forgets quiet keys (run every few seconds): the limiter's state of keys back within
    /// their rate, and hot keys whose time is up.
    pub fn housekeeping(&self, now_ms: i64) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        let mut sticky = self.lock();
        sticky.retain(|_, until| *until > now_ms);
        self.sticky_count.store(sticky.len(), Ordering::Relaxed);
    }

    /// Runs [`HotKeys::housekeeping`] if it has not run for a while (one caller does it; no
    /// background task, so it works the same on Lambda).
    pub fn tick(&self, now_ms: i64) {
        let last = self.last_housekeeping.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) >= HOUSEKEEPING_MS
            && self
                .last_housekeeping
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.housekeeping(now_ms);
        }
    }

    /// Keys rerouted now.
    pub fn hot_count(&self) -> usize {
        self.sticky_count.load(Ordering::Relaxed)
    }

    /// Keys the limiter tracks now.
    pub fn tracked(&self) -> usize {
        self.limiter.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_795_870_800_000;

    #[test]
    fn a_key_past_its_rate_is_rerouted_and_stays_rerouted() {
        let hot = HotKeys::new(10, 60);
        let bot = "acme:bot".to_owned();
        let calm = "acme:calm".to_owned();
        let rerouted = (0..50).filter(|_| hot.reroute(&bot, T0)).count();
        assert_eq!(rerouted, 40, "the burst of 10 passes, the rest reroutes");
        assert!(!hot.reroute(&calm, T0), "other keys are unaffected");
        assert_eq!(hot.hot_count(), 1);
        // Later, within the sticky period, even a slow event of the hot key stays rerouted.
        assert!(hot.reroute(&bot, T0 + 30_000));
        // After it (and once the limiter, on the real clock, has a cell again), and after
        // housekeeping, the key is back on the main topic.
        std::thread::sleep(std::time::Duration::from_millis(150));
        hot.housekeeping(T0 + 200_000);
        assert_eq!(hot.hot_count(), 0);
        assert!(!hot.reroute(&bot, T0 + 200_000));
    }

    #[test]
    fn housekeeping_bounds_the_limiter_state() {
        let hot = HotKeys::new(1000, 60);
        for i in 0..10_000 {
            hot.reroute(&format!("t:p{i}"), T0);
        }
        assert_eq!(hot.tracked(), 10_000);
        // Once their budget has refilled, keys are forgotten.
        std::thread::sleep(std::time::Duration::from_millis(50));
        hot.housekeeping(T0);
        assert_eq!(hot.tracked(), 0);
    }
}
