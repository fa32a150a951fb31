//! The settlement join: `bet_settled` carries no stake unless the client sends it, so the
//! engine remembers each `bet_placed` stake by `(tenant, bet_id)` for a bounded time and number
//! of bets, and lends it to the settlement.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;

/// Remembered stakes, oldest first out.
#[derive(Debug)]
pub(crate) struct StakeJoin {
    stakes: HashMap<u64, (i64, i64), foldhash::fast::FixedState>,
    order: VecDeque<(i64, u64)>,
    hasher: foldhash::fast::FixedState,
    max: usize,
    horizon_ms: i64,
    newest: i64,
    /// When tracking (the engine's [`crate::engine::Unit`] changes): bets placed or dropped.
    pub changed: Option<std::collections::HashSet<u64, foldhash::fast::FixedState>>,
    /// False after [`StakeJoin::put`] loaded bets out of time order: `order` is sorted before
    /// the next eviction.
    sorted: bool,
}

impl StakeJoin {
    pub fn new(max: usize, horizon_ms: i64) -> Self {
        StakeJoin {
            stakes: HashMap::default(),
            order: VecDeque::new(),
            hasher: foldhash::fast::FixedState::with_seed(0x5eed_ba75),
            max,
            horizon_ms,
            newest: i64::MIN,
            changed: None,
            sorted: true,
        }
    }

    fn key(&self, tenant: &str, bet_id: &str) -> u64 {
        self.hasher.hash_one((tenant, bet_id))
    }

    /// Remembers a placed bet's stake (minor units) at event time `t`.
    pub fn placed(&mut self, tenant: &str, bet_id: &str, stake: i64, t: i64) {
        let k = self.key(tenant, bet_id);
        if !self.sorted {
            self.order.make_contiguous().sort_unstable();
            self.sorted = true;
        }
        if self.stakes.insert(k, (stake, t)).is_none() {
            self.order.push_back((t, k));
        }
        if let Some(c) = &mut self.changed {
            c.insert(k);
        }
        self.newest = self.newest.max(t);
        let horizon = self.newest.saturating_sub(self.horizon_ms);
        while let Some(&(ot, ok)) = self.order.front() {
            if self.order.len() <= self.max && ot >= horizon {
                break;
            }
            self.order.pop_front();
            // A key re-inserted later keeps its newer time; remove only the entry of this time.
            if self.stakes.get(&ok).is_some_and(|(_, st)| *st == ot) {
                self.stakes.remove(&ok);
                if let Some(c) = &mut self.changed {
                    c.insert(ok);
                }
            }
        }
    }

    /// The key of a bet (a hash of tenant and bet id).
    pub fn key_of(&self, tenant: &str, bet_id: &str) -> u64 {
        self.key(tenant, bet_id)
    }

    /// One bet's `(stake, placed at)`.
    pub fn get(&self, k: u64) -> Option<(i64, i64)> {
        self.stakes.get(&k).copied()
    }

    /// Loads one bet (as saved from [`StakeJoin::get`]).
    pub fn put(&mut self, k: u64, stake: i64, t: i64) {
        if self.stakes.insert(k, (stake, t)).is_none() {
            self.order.push_back((t, k));
            self.sorted = false;
        }
        self.newest = self.newest.max(t);
    }

    /// The newest bet's time.
    pub fn newest(&self) -> i64 {
        self.newest
    }

    /// Restores the newest bet's time.
    pub fn put_newest(&mut self, t: i64) {
        self.newest = self.newest.max(t);
    }

    /// Every bet's key.
    pub fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.stakes.keys().copied()
    }

    /// The horizon after which a bet is forgotten.
    pub fn horizon_ms(&self) -> i64 {
        self.horizon_ms
    }

    /// The stake of a bet, if remembered.
    pub fn stake(&self, tenant: &str, bet_id: &str) -> Option<i64> {
        self.stakes.get(&self.key(tenant, bet_id)).map(|(s, _)| *s)
    }

    /// What it holds, for a snapshot: (key, stake, time) oldest first, and the newest time.
    pub fn export(&self) -> (Vec<(u64, i64, i64)>, i64) {
        let rows = self
            .order
            .iter()
            .filter_map(|(t, k)| {
                self.stakes
                    .get(k)
                    .filter(|(_, st)| st == t)
                    .map(|(s, st)| (*k, *s, *st))
            })
            .collect();
        (rows, self.newest)
    }

    /// Refills an empty join from [`StakeJoin::export`]'s output.
    pub fn import(&mut self, rows: Vec<(u64, i64, i64)>, newest: i64) {
        for (k, s, t) in rows {
            if self.stakes.insert(k, (s, t)).is_none() {
                self.order.push_back((t, k));
            }
        }
        self.newest = newest;
    }

    pub fn len(&self) -> usize {
        self.stakes.len()
    }

    pub fn bytes(&self) -> usize {
        self.stakes.capacity() * (std::mem::size_of::<(u64, (i64, i64))>() + 1)
            + self.order.capacity() * std::mem::size_of::<(i64, u64)>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_within_bounds() {
        let mut j = StakeJoin::new(2, 1000);
        j.placed("t", "b1", 100, 0);
        j.placed("t", "b2", 200, 10);
        assert_eq!(j.stake("t", "b1"), Some(100));
        assert_eq!(j.stake("u", "b1"), None, "tenants are apart");
        j.placed("t", "b3", 300, 20);
        assert_eq!(
            j.stake("t", "b1"),
            None,
            "over the count bound the oldest goes"
        );
        assert_eq!(j.len(), 2);
        j.placed("t", "b4", 400, 1021);
        assert_eq!(j.stake("t", "b2"), None, "older than the horizon");
        assert_eq!(j.stake("t", "b3"), None);
        assert_eq!(j.stake("t", "b4"), Some(400));
    }
}
