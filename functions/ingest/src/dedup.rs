//! The edge dedup window: event ids accepted in the last few minutes, per tenant, bounded in
//! memory. A client retry inside the window is answered "duplicate"; the durable dedup happens
//! downstream (ClickHouse insert tokens, id keys).
//!
//! Only ids the client chose are held (see [`SeenIds`]): ids the server assigned cannot come
//! back in a retry.
//!
//! Layout: the 128-bit XXH3 fingerprint of (tenant, event id) ([`fingerprint`]) — 16 bytes
//! per id, no allocation per lookup — kept in two generations per shard. Time (the request's clock, in ms since the
//! epoch) is cut into slices of `window`; an id
//! is kept through the slice it arrived in and the next one, so it is remembered for at least
//! `window` and at most `2 × window`. When a shard's current generation holds its share of
//! `capacity / 2` ids it turns over early, so memory stays bounded and under that pressure the
//! oldest ids go first. A generation that turns over keeps its table's memory for the next
//! one (cleared, not freed), so a steady stream allocates nothing.
//! (This replaced a moka cache: allocating two key strings per lookup and per insert took a
//! tenth of the ingest CPU.)

use std::collections::HashSet;
use std::hash::BuildHasher as _;
use std::sync::Mutex;
use std::time::Duration;

#[cfg(test)]
use crate::core::fingerprint;
use crate::core::{IdFingerprint, SeenIds};

const SHARDS: usize = 64;

/// The tables hash a fingerprint again, with a seed of their own drawn at random (foldhash).
/// The fingerprint is XXH3 without a secret and event ids are the client's choice, so its low
/// bits used as they are (as before) let a client pick ids that all land in one probe
/// sequence, and every lookup of that shard — every tenant's — become a scan.
type Set = HashSet<u128, foldhash::fast::RandomState>;

#[derive(Debug)]
struct Shard {
    current: Set,
    previous: Set,
    /// The time slice `current` belongs to.
    slice: u64,
}

impl Shard {
    /// `current` becomes `previous`; the old `previous` table, cleared, becomes `current`.
    fn turn_over(&mut self) {
        std::mem::swap(&mut self.current, &mut self.previous);
        self.current.clear();
    }
}

/// Recently accepted (tenant, event id) pairs.
#[derive(Debug)]
pub struct DedupWindow {
    shards: Box<[Mutex<Shard>]>,
    window_ms: u64,
    per_generation: usize,
    /// Picks an id's shard: a seed of its own too, or ids picked to share one shard would
    /// all wait on its lock and turn its generations over early (the other tenants' ids in it
    /// forgotten sooner).
    seed: foldhash::fast::RandomState,
}

impl DedupWindow {
    /// Keeps ids for `window` (up to twice that), at most `capacity` of them.
    pub fn new(window: Duration, capacity: u64) -> Self {
        let per_generation = usize::try_from(capacity / 2 / SHARDS as u64)
            .unwrap_or(usize::MAX)
            .max(1);
        DedupWindow {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        current: Set::default(),
                        previous: Set::default(),
                        slice: 0,
                    })
                })
                .collect(),
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1),
            per_generation,
            seed: foldhash::fast::RandomState::default(),
        }
    }

    fn shard_of(&self, fp: u128) -> usize {
        self.seed.hash_one(fp) as usize % SHARDS
    }

    /// The shard of `fp`, its generations turned over to `now_ms`'s time slice. (The caller's
    /// clock: one reading per request rather than one per id. A clock that steps back leaves
    /// the generations as they are.)
    fn shard(&self, fp: u128, now_ms: i64) -> std::sync::MutexGuard<'_, Shard> {
        let shard = &self.shards[self.shard_of(fp)];
        // A panic while holding the lock cannot leave the sets inconsistent: keep using them.
        let mut s = shard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let slice = u64::try_from(now_ms).unwrap_or(0) / self.window_ms;
        if slice > s.slice {
            if slice == s.slice + 1 {
                s.turn_over();
            } else {
                // Both generations are from slices before the previous one.
                s.previous.clear();
                s.current.clear();
            }
            s.slice = slice;
        }
        s
    }

    /// Records client ids the bus has acknowledged.
    pub fn remember(&self, ids: impl IntoIterator<Item = IdFingerprint>, now_ms: i64) {
        for IdFingerprint(fp) in ids {
            let mut s = self.shard(fp, now_ms);
            if s.current.len() >= self.per_generation {
                s.turn_over();
            }
            s.current.insert(fp);
        }
    }

    /// Ids held now (both generations of every shard).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                s.current.len() + s.previous.len()
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl SeenIds for DedupWindow {
    fn seen(&self, IdFingerprint(fp): IdFingerprint, now_ms: i64) -> bool {
        let s = self.shard(fp, now_ms);
        s.current.contains(&fp) || s.previous.contains(&fp)
    }
}

#[cfg(test)]
impl DedupWindow {
    fn remember_ids<'a>(&self, tenant: &str, ids: impl IntoIterator<Item = &'a str>, now_ms: i64) {
        self.remember(ids.into_iter().map(|id| fingerprint(tenant, id)), now_ms);
    }

    fn seen_id(&self, tenant: &str, id: &str, now_ms: i64) -> bool {
        self.seen(fingerprint(tenant, id), now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_795_870_800_000;

    #[test]
    fn remembers_per_tenant_for_one_to_two_windows() {
        let w = DedupWindow::new(Duration::from_millis(200), 1000);
        let start = T0 - T0 % 200 + 150; // late in a slice: the id moves on after 50 ms
        w.remember_ids("acme", ["id-1"], start);
        assert!(w.seen_id("acme", "id-1", start));
        assert!(!w.seen_id("other", "id-1", start), "tenants are isolated");
        assert!(!w.seen_id("acme", "id-2", start));
        // Kept for at least one window, whatever its position in the slice...
        assert!(w.seen_id("acme", "id-1", start + 200));
        // ...and gone once two windows have passed.
        assert!(!w.seen_id("acme", "id-1", start + 400));
    }

    #[test]
    fn long_idle_periods_forget_everything() {
        let w = DedupWindow::new(Duration::from_millis(200), 1000);
        w.remember_ids("acme", ["id-1"], T0);
        assert!(!w.seen_id("acme", "id-1", T0 + 10_000));
    }

    #[test]
    fn a_clock_stepping_back_keeps_ids() {
        let w = DedupWindow::new(Duration::from_millis(200), 1000);
        w.remember_ids("acme", ["id-1"], T0);
        assert!(w.seen_id("acme", "id-1", T0 - 5_000));
    }

    #[test]
    fn separator_keeps_tenant_and_id_apart() {
        let w = DedupWindow::new(Duration::from_secs(60), 1000);
        w.remember_ids("ab", ["c"], T0);
        assert!(!w.seen_id("a", "bc", T0));
    }

    #[test]
    fn bounded_in_memory_and_recent_ids_survive() {
        let capacity = 12_800;
        let w = DedupWindow::new(Duration::from_secs(60), capacity);
        for i in 0..200_000 {
            w.remember_ids("t", [format!("id-{i}").as_str()], T0);
        }
        assert!(w.len() <= capacity as usize, "{} ids held", w.len());
        // The most recent ids are still there: well within one generation of every shard.
        let recent = (199_000..200_000)
            .filter(|i| w.seen_id("t", &format!("id-{i}"), T0))
            .count();
        assert_eq!(
            recent, 1000,
            "every one of the last 1,000 ids is remembered"
        );
        assert!(!w.seen_id("t", "id-0", T0), "the oldest were let go");
    }

    /// Event ids are the client's, and the fingerprint has no secret: anyone can pick ids (here
    /// by brute force) whose fingerprints share the bits that chose their shard and the low bits
    /// a table used as its hash, so every such id went into one shard's lock and one probe
    /// sequence. Hashed again with random seeds, they spread over the shards and the slots.
    #[test]
    fn ids_chosen_to_collide_still_spread_over_the_shards_and_the_table() {
        use std::hash::BuildHasher as _;
        let w = DedupWindow::new(Duration::from_secs(60), 1 << 20);
        let chosen: Vec<String> = (0u64..)
            .map(|i| format!("x-{i}"))
            .filter(|id| {
                let fp = fingerprint("t", id).0;
                ((fp >> 64) as usize).is_multiple_of(SHARDS) && fp & 0x3f == 0
            })
            .take(500)
            .collect();
        w.remember_ids("t", chosen.iter().map(String::as_str), T0);
        assert!(chosen.iter().all(|id| w.seen_id("t", id, T0)));
        let shards: std::collections::HashSet<usize> = chosen
            .iter()
            .map(|id| w.shard_of(fingerprint("t", id).0))
            .collect();
        assert!(
            shards.len() >= 40,
            "500 ids over {} of 64 shards",
            shards.len()
        );
        let slots: std::collections::HashSet<u64> = chosen
            .iter()
            .map(|id| {
                let fp = fingerprint("t", id).0;
                let shard = w.shards[w.shard_of(fp)].lock().expect("not poisoned");
                shard.current.hasher().hash_one(fp) & 0x3f
            })
            .collect();
        assert!(
            slots.len() >= 48,
            "500 ids over {} of 64 slots",
            slots.len()
        );
    }
}
