//! The settlement join: `bet_settled` carries no stake unless the client sends it, so the
//! engine remembers each `bet_placed` stake by `(tenant, bet_id)` for a bounded time and number
//! of bets, and lends it to the settlement.
//!
//! **Across restarts.** Each bet placed gets the next number of a sequence, and the join forgets
//! bets strictly in that order (the oldest placed first, over the count bound or past the
//! horizon), so what it holds is always the bets numbered above a *floor* (the last one
//! forgotten) and below the *next* number. Both are saved with the engine-wide values of a save
//! (its positions'). A restart from those positions loads exactly the bets numbered between
//! them — not those a save's earlier slices wrote after the positions (the replay places them
//! again, in the same order, with the same numbers) nor those forgotten before — and a bet
//! forgotten after a save began stays in the file until a save covering its forgetting is
//! complete (two saves on), so a settlement replayed after a crash finds the stake it found the
//! first time.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;

/// The seed a bet's id is hashed with: fixed, since saved state names a bet by it.
type Fixed = foldhash::fast::FixedState;
/// The tables' own hash of those ids, seeded at random per table: bet ids come from clients,
/// and ids chosen so that their fixed-seed hashes fall into one probe sequence would make
/// every lookup a scan (see `KeyHashing` in the engine).
type Tables = foldhash::fast::RandomState;

/// One remembered bet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bet {
    /// Stake, minor units.
    pub stake: i64,
    /// `occurred_at` of the `bet_placed`, ms.
    pub t: i64,
    /// Its number in the order bets were placed.
    pub seq: u64,
}

/// The join's sequence bounds as a save records them: bets numbered in `floor + 1 .. next`
/// are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Bounds {
    pub floor: u64,
    pub next: u64,
}

/// Remembered stakes, oldest first out.
#[derive(Debug)]
pub(crate) struct StakeJoin {
    stakes: HashMap<u64, Bet, Tables>,
    /// `(t, key)` in placing order (unless `loaded`).
    order: VecDeque<(i64, u64)>,
    hasher: Fixed,
    max: usize,
    horizon_ms: i64,
    newest: i64,
    /// The number the next bet placed gets.
    next: u64,
    /// Every bet numbered at or below it has been forgotten.
    floor: u64,
    /// When tracking (the engine's [`crate::engine::Unit`] changes): bets placed, or gone and
    /// safe to delete.
    pub changed: Option<HashSet<u64, Tables>>,
    /// Bets forgotten while tracking, with the save count ([`StakeJoin::begin_save`]) when they
    /// were: a save keeps them in the store until a later save's positions cover that.
    retired: VecDeque<(u64, u64)>,
    /// Those bets (the latest forgetting of each, with its save count).
    retired_bets: HashMap<u64, (Bet, u64), Tables>,
    /// Saves begun ([`StakeJoin::begin_save`]).
    saves: u64,
    /// Bets loaded whose numbers are not this engine's yet ([`StakeJoin::put`]): sorted and
    /// numbered before the next eviction.
    loaded: bool,
    /// Bets to write (or delete) at the next save whatever happened to them: loaded bets
    /// numbered anew, or left out of a restore.
    rewrite: Vec<u64>,
    /// Loaded with a unit: the version of a bet it held before it was forgotten and placed
    /// again ([`StakeJoin::get`]), for [`StakeJoin::restore`] to choose from.
    loaded_earlier: HashMap<u64, Bet, Tables>,
    /// Whether a forgotten bet is kept in the store until a later save covers its forgetting
    /// (the streaming engine); otherwise (the Lambda's batch, written all or nothing) it is
    /// deleted with the batch that forgot it.
    retain: bool,
}

/// Bets forgotten this many saves ago may be deleted from the store: the save after the one
/// in progress when they were forgotten covers their forgetting once complete.
const RETIRED_SAVES: u64 = 2;

impl StakeJoin {
    pub fn new(max: usize, horizon_ms: i64) -> Self {
        StakeJoin {
            stakes: HashMap::default(),
            order: VecDeque::new(),
            hasher: Fixed::with_seed(0x5eed_ba75),
            max,
            horizon_ms,
            newest: i64::MIN,
            next: 1,
            floor: 0,
            changed: None,
            retired: VecDeque::new(),
            retired_bets: HashMap::default(),
            saves: 0,
            loaded: false,
            rewrite: Vec::new(),
            loaded_earlier: HashMap::default(),
            retain: true,
        }
    }

    /// Forgotten bets are deleted from the store with the save that forgets them (a Lambda
    /// batch: its state is written all or nothing, and a retried batch starts from the state
    /// before it).
    pub fn forget_at_once(&mut self) {
        self.retain = false;
    }

    fn key(&self, tenant: &str, bet_id: &str) -> u64 {
        self.hasher.hash_one((tenant, bet_id))
    }

    /// Remembers a placed bet's stake (minor units) at event time `t`.
    pub fn placed(&mut self, tenant: &str, bet_id: &str, stake: i64, t: i64) {
        let k = self.key(tenant, bet_id);
        self.settle_loaded();
        match self.stakes.get_mut(&k) {
            // Placed again (a redelivery): the newer stake, the same time and place in line.
            Some(b) => b.stake = stake,
            None => {
                let seq = self.next;
                self.next += 1;
                self.stakes.insert(k, Bet { stake, t, seq });
                self.order.push_back((t, k));
            }
        }
        if let Some(c) = &mut self.changed {
            c.insert(k);
        }
        self.newest = self.newest.max(t);
        let horizon = self.newest.saturating_sub(self.horizon_ms);
        while let Some(&(ot, k)) = self.order.front() {
            if self.order.len() <= self.max && ot >= horizon {
                break;
            }
            self.order.pop_front();
            let Some(b) = self.stakes.remove(&k) else {
                continue;
            };
            self.floor = self.floor.max(b.seq);
            match &mut self.changed {
                Some(_) if self.retain => {
                    self.retired.push_back((self.saves, k));
                    self.retired_bets.insert(k, (b, self.saves));
                }
                Some(c) => {
                    c.insert(k);
                }
                None => {}
            }
        }
    }

    /// Loaded bets in their place: by number after a restore that set the bounds, otherwise
    /// (numbers of another run, or none) by time, numbered anew.
    fn settle_loaded(&mut self) {
        if !std::mem::take(&mut self.loaded) {
            return;
        }
        self.order.make_contiguous().sort_unstable();
        self.floor = 0;
        self.next = 1;
        for (_, k) in &self.order {
            if let Some(b) = self.stakes.get_mut(k) {
                b.seq = self.next;
                self.next += 1;
            }
        }
    }

    /// The key of a bet (a hash of tenant and bet id).
    pub fn key_of(&self, tenant: &str, bet_id: &str) -> u64 {
        self.key(tenant, bet_id)
    }

    /// One bet as the store keeps it: held, or forgotten but still kept; and, for a bet placed
    /// again after it was forgotten, the version forgotten (a restart from a save before the
    /// forgetting needs that one: the store keeps one row per bet).
    pub fn get(&self, k: u64) -> Option<(Bet, Option<Bet>)> {
        let retired = self.retired_bets.get(&k).map(|(b, _)| *b);
        match self.stakes.get(&k) {
            Some(b) => Some((*b, retired)),
            None => retired.map(|b| (b, None)),
        }
    }

    /// Loads one bet (as saved from [`StakeJoin::get`]; `seq` unknown in units written before
    /// numbers).
    pub fn put(&mut self, k: u64, stake: i64, t: i64, seq: Option<u64>, earlier: Option<Bet>) {
        let seq = seq.unwrap_or(0);
        if self.stakes.insert(k, Bet { stake, t, seq }).is_none() {
            self.order.push_back((t, k));
        }
        if let Some(e) = earlier {
            self.loaded_earlier.insert(k, e);
        }
        self.loaded = true;
        self.newest = self.newest.max(t);
    }

    /// Restores the values a save recorded ([`StakeJoin::bounds`], [`StakeJoin::newest`])
    /// after every bet was loaded: keeps the bets numbered between the bounds — in their order
    /// — and the newest time the save saw. Without bounds (state saved before numbers) the bets
    /// are numbered anew by time and written again at the next save.
    pub fn restore(&mut self, newest: i64, bounds: Option<Bounds>) {
        let earlier = std::mem::take(&mut self.loaded_earlier);
        let Some(b) = bounds else {
            self.newest = self.newest.max(newest);
            if self.loaded {
                self.settle_loaded();
                self.rewrite.extend(self.order.iter().map(|(_, k)| *k));
            }
            return;
        };
        self.loaded = false;
        let held = |bet: &Bet| bet.seq > b.floor && bet.seq < b.next;
        let mut kept: Vec<(u64, i64, u64)> = Vec::with_capacity(self.stakes.len());
        let mut dropped = Vec::new();
        let mut chosen = Vec::new();
        for (k, bet) in &self.stakes {
            if held(bet) {
                kept.push((bet.seq, bet.t, *k));
            } else if let Some(e) = earlier.get(k).filter(|e| held(e)) {
                // Placed again after the save: held as it was then.
                kept.push((e.seq, e.t, *k));
                chosen.push((*k, *e));
            } else {
                dropped.push(*k);
            }
        }
        for (k, e) in chosen {
            self.stakes.insert(k, e);
            self.rewrite.push(k);
        }
        for k in &dropped {
            self.stakes.remove(k);
        }
        // Left out: forgotten before the save, or placed after it (the replay places them
        // again); written again or deleted at the next save.
        self.rewrite.extend(dropped);
        kept.sort_unstable();
        self.order = kept.into_iter().map(|(_, t, k)| (t, k)).collect();
        self.floor = b.floor;
        self.next = b.next;
        self.newest = newest;
    }

    /// Numbers the bets placed from now after `b`'s (an empty join beside a saved state it did
    /// not load).
    pub fn number_after(&mut self, b: Bounds) {
        if self.stakes.is_empty() && b.next > self.next {
            self.next = b.next;
            self.floor = b.next - 1;
        }
    }

    /// The sequence bounds, for a save.
    pub fn bounds(&self) -> Bounds {
        Bounds {
            floor: self.floor,
            next: self.next,
        }
    }

    /// Starts tracking changes (or stops): `Some` set, keeping the bets to write anew.
    pub fn track(&mut self, on: bool) {
        if on {
            let mut c: HashSet<u64, Tables> = HashSet::default();
            c.extend(self.rewrite.drain(..));
            self.changed = Some(c);
        } else {
            self.changed = None;
            self.retired.clear();
            self.retired_bets.clear();
        }
    }

    /// A save begins: the bets it writes (every held and retired one when `full`, otherwise
    /// those changed), including those forgotten long enough ago to be deleted.
    pub fn begin_save(&mut self, full: bool) -> Vec<u64> {
        self.saves += 1;
        while let Some(&(at, k)) = self.retired.front() {
            if at + RETIRED_SAVES > self.saves {
                break;
            }
            self.retired.pop_front();
            // Placed again and forgotten again since: that later forgetting keeps it.
            if self
                .retired_bets
                .get(&k)
                .is_some_and(|(_, when)| *when == at)
            {
                self.retired_bets.remove(&k);
                if let Some(c) = &mut self.changed {
                    c.insert(k);
                }
            }
        }
        let Some(c) = &mut self.changed else {
            return Vec::new();
        };
        if full {
            c.clear();
            let mut keys: Vec<u64> = self.stakes.keys().copied().collect();
            keys.extend(
                self.retired_bets
                    .keys()
                    .filter(|k| !self.stakes.contains_key(k)),
            );
            keys
        } else {
            c.drain().collect()
        }
    }

    /// The newest bet's time.
    pub fn newest(&self) -> i64 {
        self.newest
    }

    /// The horizon after which a bet is forgotten.
    pub fn horizon_ms(&self) -> i64 {
        self.horizon_ms
    }

    /// The stake of a bet, if remembered.
    pub fn stake(&self, tenant: &str, bet_id: &str) -> Option<i64> {
        self.stakes.get(&self.key(tenant, bet_id)).map(|b| b.stake)
    }

    /// What it holds, for a snapshot: (key, stake, time) oldest first, and the newest time.
    pub fn export(&self) -> (Vec<(u64, i64, i64)>, i64) {
        let mut rows: Vec<(u64, u64, i64, i64)> = self
            .stakes
            .iter()
            .map(|(k, b)| (b.seq, *k, b.stake, b.t))
            .collect();
        if self.loaded {
            rows.sort_unstable_by_key(|r| (r.3, r.1));
        } else {
            rows.sort_unstable_by_key(|r| r.0);
        }
        (
            rows.into_iter().map(|(_, k, s, t)| (k, s, t)).collect(),
            self.newest,
        )
    }

    /// Refills an empty join from [`StakeJoin::export`]'s output (numbered in its order).
    pub fn import(&mut self, rows: Vec<(u64, i64, i64)>, newest: i64) {
        for (k, stake, t) in rows {
            if !self.stakes.contains_key(&k) {
                let seq = self.next;
                self.next += 1;
                self.stakes.insert(k, Bet { stake, t, seq });
                self.order.push_back((t, k));
            }
        }
        self.newest = newest;
    }

    pub fn len(&self) -> usize {
        self.stakes.len()
    }

    pub fn bytes(&self) -> usize {
        (self.stakes.capacity() + self.retired_bets.capacity())
            * (std::mem::size_of::<(u64, (Bet, u64))>() + 1)
            + (self.order.capacity() + self.retired.capacity()) * std::mem::size_of::<(i64, u64)>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bet ids are the client's, and a bet's key is a hash with a fixed seed (it names saved
    /// state), as the tables' hash of it was: ids picked (here by brute force) so that their
    /// keys share the low bits of that hash all went into one probe sequence. With each table's
    /// hash seeded at random they spread over its slots.
    #[test]
    fn bet_ids_chosen_to_collide_still_spread_over_the_table() {
        let mut j = StakeJoin::new(10_000, i64::MAX);
        let fixed = Fixed::default();
        let chosen: Vec<String> = (0u64..)
            .map(|i| format!("bet-{i}"))
            .filter(|id| fixed.hash_one(j.key("t", id)) & 0xff == 0)
            .take(500)
            .collect();
        for (i, id) in chosen.iter().enumerate() {
            j.placed("t", id, i as i64, 0);
        }
        assert!(
            chosen
                .iter()
                .enumerate()
                .all(|(i, id)| j.stake("t", id) == Some(i as i64))
        );
        let slots: HashSet<u64> = chosen
            .iter()
            .map(|id| j.stakes.hasher().hash_one(j.key("t", id)) & 0xff)
            .collect();
        assert!(
            slots.len() >= 180,
            "500 bets over {} of 256 slots",
            slots.len()
        );
    }

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
        assert_eq!(j.bounds(), Bounds { floor: 3, next: 5 });
    }

    #[test]
    fn a_bet_placed_again_keeps_its_place_and_is_forgotten_in_turn() {
        let mut j = StakeJoin::new(2, 1_000_000);
        j.placed("t", "b1", 100, 0);
        j.placed("t", "b2", 200, 10);
        j.placed("t", "b1", 150, 20);
        assert_eq!(j.stake("t", "b1"), Some(150), "the later stake");
        assert_eq!(
            j.get(j.key_of("t", "b1")).map(|b| b.0.t),
            Some(0),
            "the first time"
        );
        j.placed("t", "b3", 300, 30);
        assert_eq!(j.stake("t", "b1"), None, "first placed, first forgotten");
        assert_eq!(j.len(), 2, "nothing held twice, nothing held for ever");
    }

    /// What a save wrote, as a store holds it: key → bet (and the version forgotten).
    type Store = HashMap<u64, (Bet, Option<Bet>)>;

    fn write(j: &StakeJoin, store: &mut Store, keys: Vec<u64>) {
        for k in keys {
            match j.get(k) {
                Some(b) => store.insert(k, b),
                None => store.remove(&k),
            };
        }
    }

    fn load(store: &Store, newest: i64, bounds: Bounds) -> StakeJoin {
        let mut j = StakeJoin::new(3, 1_000_000);
        for (k, (b, earlier)) in store {
            j.put(*k, b.stake, b.t, Some(b.seq), *earlier);
        }
        j.restore(newest, Some(bounds));
        j.track(true);
        j
    }

    #[test]
    fn a_restore_holds_what_the_join_held_at_the_save_and_a_forgotten_bet_stays_stored_until_a_later_save_covers_it()
     {
        let mut j = StakeJoin::new(3, 1_000_000);
        j.track(true);
        let mut store = Store::new();
        j.placed("t", "b1", 100, 0);
        // A complete save: its units, then its bounds with its positions.
        let keys = j.begin_save(true);
        write(&j, &mut store, keys);
        let (newest, bounds) = (j.newest(), j.bounds());
        // After it: b1 settled (found), then three bets push b1 out.
        assert_eq!(j.stake("t", "b1"), Some(100));
        for (n, b) in ["b2", "b3", "b4"].iter().enumerate() {
            j.placed("t", b, 200, 10 + n as i64);
        }
        assert_eq!(j.stake("t", "b1"), None);
        // The next save begins and writes every slice, then the process dies before its
        // positions: b1 must still be in the store, b2..b4 must not be loaded.
        let keys = j.begin_save(false);
        write(&j, &mut store, keys);
        assert!(
            store.contains_key(&j.key_of("t", "b1")),
            "forgotten after the save began"
        );
        let mut r = load(&store, newest, bounds);
        assert_eq!(
            r.stake("t", "b1"),
            Some(100),
            "the replayed settlement finds it"
        );
        assert_eq!(r.stake("t", "b2"), None, "placed after the save: replayed");
        for (n, b) in ["b2", "b3", "b4"].iter().enumerate() {
            r.placed("t", b, 200, 10 + n as i64);
        }
        assert_eq!(
            r.export(),
            j.export(),
            "the replay ends where the first run did"
        );
        assert_eq!(r.bounds(), j.bounds());

        // Had that save completed, its positions would cover b1's forgetting: the save after
        // it deletes b1.
        let (newest2, bounds2) = (j.newest(), j.bounds());
        let keys = j.begin_save(false);
        write(&j, &mut store, keys);
        assert!(
            !store.contains_key(&j.key_of("t", "b1")),
            "two saves on: gone"
        );
        let r = load(&store, newest2, bounds2);
        assert_eq!(r.export(), j.export());

        // A bet placed again after it was forgotten, and forgotten again a save later: the
        // first forgetting's release does not delete what the second keeps.
        j.placed("t", "b1", 100, 45);
        for (n, b) in ["c1", "c2", "c3"].iter().enumerate() {
            j.placed("t", b, 100, 46 + n as i64);
        }
        let keys = j.begin_save(false);
        write(&j, &mut store, keys);
        j.placed("t", "b1", 100, 50);
        for (n, b) in ["d1", "d2", "d3"].iter().enumerate() {
            j.placed("t", b, 100, 51 + n as i64);
        }
        let keys = j.begin_save(false);
        write(&j, &mut store, keys);
        assert!(
            store.contains_key(&j.key_of("t", "b1")),
            "forgotten again in the last save's time: kept"
        );

        // A full save writes the bets forgotten since the save before it began as well.
        j.placed("t", "e1", 500, 60);
        assert_eq!(j.stake("t", "d1"), None);
        let full = j.begin_save(true);
        assert!(
            full.contains(&j.key_of("t", "d1")),
            "retired, still written"
        );
    }

    #[test]
    fn bets_loaded_without_numbers_are_numbered_by_time_and_written_again() {
        let mut j = StakeJoin::new(10, 1_000_000);
        j.put(7, 100, 30, None, None);
        j.put(5, 200, 10, None, None);
        j.put(9, 300, 20, None, None);
        j.restore(30, None);
        j.track(true);
        let keys = j.begin_save(false);
        assert_eq!(keys.len(), 3, "every loaded bet is written with its number");
        assert_eq!(j.get(5).map(|b| b.0.seq), Some(1));
        assert_eq!(j.get(9).map(|b| b.0.seq), Some(2));
        assert_eq!(j.get(7).map(|b| b.0.seq), Some(3));
        assert_eq!(j.bounds(), Bounds { floor: 0, next: 4 });
    }
}

#[cfg(test)]
mod placed_again {
    use super::*;

    /// An empty join beside a state it did not load numbers after that state's numbers: that
    /// state's bounds hold none of its bets.
    #[test]
    fn an_empty_join_numbers_after_a_state_it_did_not_load() {
        let old = Bounds { floor: 3, next: 9 };
        let mut j = StakeJoin::new(10, 1_000_000);
        j.number_after(old);
        j.placed("t", "b1", 100, 0);
        let b = j.get(j.key_of("t", "b1")).map(|b| b.0.seq);
        assert_eq!(b, Some(9));
        let mut r = StakeJoin::new(10, 1_000_000);
        r.put(j.key_of("t", "b1"), 100, 0, b, None);
        r.restore(0, Some(old));
        assert_eq!(r.len(), 0, "not one of the old state's bets");
    }

    /// A bet held at a save, forgotten after it, then placed again (a late duplicate) before
    /// the next save writes it: the store's one row for it keeps the version the save held, so
    /// a restart from that save holds it as it was — and from a later save, as placed again.
    #[test]
    fn a_bet_placed_again_after_it_was_forgotten_restores_as_each_save_held_it() {
        let mut j = StakeJoin::new(2, 1_000_000);
        j.track(true);
        let mut store: HashMap<u64, (Bet, Option<Bet>)> = HashMap::new();
        let write = |j: &StakeJoin, store: &mut HashMap<u64, (Bet, Option<Bet>)>, keys| {
            for k in keys {
                match j.get(k) {
                    Some(b) => store.insert(k, b),
                    None => store.remove(&k),
                };
            }
        };
        let load = |store: &HashMap<u64, (Bet, Option<Bet>)>, newest, bounds| {
            let mut r = StakeJoin::new(2, 1_000_000);
            for (k, (b, e)) in store {
                r.put(*k, b.stake, b.t, Some(b.seq), *e);
            }
            r.restore(newest, Some(bounds));
            r
        };
        j.placed("t", "b1", 100, 0);
        let keys = j.begin_save(true);
        write(&j, &mut store, keys);
        let at_first = (j.newest(), j.bounds());
        // b2, b3 push b1 out; b1 is placed again (a duplicate), then the next save writes.
        j.placed("t", "b2", 200, 10);
        j.placed("t", "b3", 300, 20);
        assert_eq!(j.stake("t", "b1"), None);
        j.placed("t", "b1", 150, 30);
        let at_second = (j.newest(), j.bounds());
        let keys = j.begin_save(false);
        write(&j, &mut store, keys);
        // A crash before that save completes: restored from the first.
        let r = load(&store, at_first.0, at_first.1);
        assert_eq!(r.stake("t", "b1"), Some(100), "as the first save held it");
        assert_eq!(r.len(), 1);
        // Had it completed: restored from the second, b1 as placed again.
        let r = load(&store, at_second.0, at_second.1);
        assert_eq!(r.stake("t", "b1"), Some(150));
        assert_eq!(r.export(), j.export());
    }
}
