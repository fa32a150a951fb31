//! Window states grouped by key: the rules keyed by the same field (every rule by player, say)
//! share one map, whose entry for a key holds each such rule's state side by side. An event
//! finds its player's windows with one probe instead of one per rule — the probes were the
//! engine's costliest loads (a cache miss for the control bytes and one for the slot, per rule:
//! eight rules read a bet).
//!
//! Everything outside the engine's hot path sees windows by `(rule, key)`, as before: units,
//! snapshots and the idle queue are unchanged.

use std::collections::hash_map::Entry;

use super::keymap::{self, KeyMap};
use super::{Key, KeyHasher};
use crate::rules::{CompiledRule, RuleSet};
use crate::window::KeyState;

/// One key's states across the rules of a group, by their slot in it.
pub(crate) type Group = Box<[Option<KeyState>]>;

type Part = std::collections::HashMap<Key, Group, std::hash::BuildHasherDefault<KeyHasher>>;

/// What keys a rule's windows: rules alike here share a group.
fn keyed_by(rule: &CompiledRule) -> (pitboss_model::live::GroupBy, Option<crate::field::Field>) {
    (rule.group_by, rule.key_field.clone())
}

fn empty(size: usize) -> Group {
    (0..size).map(|_| None).collect()
}

/// Puts a group's entry back into its map: written over what is there, inserted, or removed
/// when no rule holds state for the key any more.
fn put_back(map: &mut KeyMap<Group>, k: Key, g: Group) {
    let held = g.iter().any(Option::is_some);
    match map.entry(k) {
        Entry::Occupied(mut o) if held => *o.get_mut() = g,
        Entry::Occupied(o) => {
            o.remove();
        }
        Entry::Vacant(v) if held => {
            v.insert(g);
        }
        Entry::Vacant(_) => {}
    }
}

/// Every rule's windows, in groups.
#[derive(Debug)]
pub(crate) struct Windows {
    maps: Vec<KeyMap<Group>>,
    /// Per rule (by index): its group and its slot there.
    place: Vec<(usize, usize)>,
    /// Per group: how many rules it has.
    sizes: Vec<usize>,
    /// Per group, per slot: the rule (by index).
    rules_of: Vec<Vec<usize>>,
    /// Per group: the entry an event works on, taken out of its map until [`Windows::close`].
    open: Vec<Option<(Key, Group)>>,
}

impl Windows {
    /// Empty windows for `set`.
    pub fn new(set: &RuleSet) -> Windows {
        let mut kinds: Vec<(pitboss_model::live::GroupBy, Option<crate::field::Field>)> =
            Vec::new();
        let mut sizes: Vec<usize> = Vec::new();
        let mut place = Vec::with_capacity(set.rules.len());
        for r in &set.rules {
            let kind = keyed_by(r);
            let g = match kinds.iter().position(|k| *k == kind) {
                Some(g) => g,
                None => {
                    kinds.push(kind);
                    sizes.push(0);
                    sizes.len() - 1
                }
            };
            place.push((g, sizes[g]));
            sizes[g] += 1;
        }
        let mut rules_of: Vec<Vec<usize>> = sizes.iter().map(|n| vec![0; *n]).collect();
        for (ri, (g, s)) in place.iter().enumerate() {
            rules_of[*g][*s] = ri;
        }
        Windows {
            maps: sizes.iter().map(|_| KeyMap::default()).collect(),
            open: sizes.iter().map(|_| None).collect(),
            place,
            sizes,
            rules_of,
        }
    }

    fn slot(&self, ri: usize) -> Option<(usize, usize)> {
        self.place.get(ri).copied()
    }

    /// Rule `ri`'s window of `k`.
    pub fn get(&self, ri: usize, k: &Key) -> Option<&KeyState> {
        let (g, s) = self.slot(ri)?;
        self.maps[g].get(k)?.get(s)?.as_ref()
    }

    /// Takes rule `ri`'s window of `k` out.
    pub fn remove(&mut self, ri: usize, k: &Key) -> Option<KeyState> {
        let (g, s) = self.slot(ri)?;
        let map = &mut self.maps[g];
        let Entry::Occupied(mut o) = map.entry(*k) else {
            return None;
        };
        let out = o.get_mut().get_mut(s)?.take();
        if o.get().iter().all(Option::is_none) {
            o.remove();
        }
        out
    }

    /// Sets rule `ri`'s window of `k`, returning the one it replaces.
    pub fn insert(&mut self, ri: usize, k: Key, state: KeyState) -> Option<KeyState> {
        let (g, s) = self.slot(ri)?;
        let size = self.sizes[g];
        let group = self.maps[g].entry(k).or_insert_with(|| empty(size));
        group.get_mut(s)?.replace(state)
    }

    /// Rule `ri`'s windows.
    pub fn rule(&self, ri: usize) -> impl Iterator<Item = (&Key, &KeyState)> + '_ {
        let at = self.slot(ri);
        at.into_iter().flat_map(move |(g, s)| {
            self.maps[g]
                .iter()
                .filter_map(move |(k, group)| Some((k, group.get(s)?.as_ref()?)))
        })
    }

    /// How many keys rule `ri` holds windows of.
    #[cfg(test)]
    pub fn rule_len(&self, ri: usize) -> usize {
        self.rule(ri).count()
    }

    /// Every window: `(rule, key, state)`, a group's map walked once (not once per rule).
    pub fn iter(&self) -> impl Iterator<Item = (usize, &Key, &KeyState)> + '_ {
        self.maps
            .iter()
            .zip(&self.rules_of)
            .flat_map(|(map, rules)| {
                map.iter().flat_map(move |(k, group)| {
                    group
                        .iter()
                        .zip(rules)
                        .filter_map(move |(st, ri)| Some((*ri, k, st.as_ref()?)))
                })
            })
    }

    /// Keeps the windows `f` says to keep; drops keys left without any.
    pub fn retain(&mut self, mut f: impl FnMut(usize, &Key, &mut KeyState) -> bool) {
        let rules_of = &self.rules_of;
        for (g, map) in self.maps.iter_mut().enumerate() {
            map.retain(|k, group| {
                let mut any = false;
                for (s, st) in group.iter_mut().enumerate() {
                    if let Some(state) = st {
                        if f(rules_of[g][s], k, state) {
                            any = true;
                        } else {
                            *st = None;
                        }
                    }
                }
                any
            });
        }
    }

    /// Every window, taken out, by rule: `(rule, key, state)`.
    pub fn drain(&mut self) -> Vec<(usize, Key, KeyState)> {
        self.close();
        let mut out = Vec::new();
        let rules_of = &self.rules_of;
        for (g, map) in std::mem::take(&mut self.maps).into_iter().enumerate() {
            for (k, group) in map.into_iter_all() {
                for (s, st) in group.into_vec().into_iter().enumerate() {
                    if let Some(st) = st {
                        out.push((rules_of[g][s], k, st));
                    }
                }
            }
        }
        self.maps = self.sizes.iter().map(|_| KeyMap::default()).collect();
        out
    }

    /// Reads, without using them, the first bytes of every window of `k` that the rules in
    /// `rules` keep ([`KeyState::touch`]): issued together before the event works on them, their
    /// cache misses overlap instead of coming one after another, rule by rule.
    pub fn touch(&self, rules: impl Iterator<Item = usize>, k: &Key) {
        let mut group: Option<(usize, &Group)> = None;
        for ri in rules {
            let Some((g, s)) = self.slot(ri) else {
                continue;
            };
            if group.is_none_or(|(og, _)| og != g) {
                group = self.maps[g].get(k).map(|x| (g, x));
            }
            if let Some((_, grp)) = group
                && let Some(Some(state)) = grp.get(s)
            {
                state.touch();
            }
        }
    }

    /// The hot path: rule `ri`'s slot for `k`, its group's entry taken out of the map on the
    /// first call of an event for that group (one probe for all the group's rules) and kept
    /// open until [`Windows::close`], which the engine calls before anything else reads the
    /// windows.
    pub fn open(&mut self, ri: usize, k: Key) -> &mut Option<KeyState> {
        let (g, s) = self.place[ri];
        if self.open[g].as_ref().is_some_and(|(ok, _)| *ok != k)
            && let Some((ok, group)) = self.open[g].take()
        {
            put_back(&mut self.maps[g], ok, group);
        }
        let (maps, size) = (&mut self.maps, self.sizes[g]);
        let (_, group) = self.open[g].get_or_insert_with(|| {
            let group = match maps[g].get_mut(&k) {
                Some(x) => std::mem::take(x),
                None => empty(size),
            };
            (k, group)
        });
        &mut group[s]
    }

    /// Puts every entry [`Windows::open`] took back.
    pub fn close(&mut self) {
        for (g, open) in self.open.iter_mut().enumerate() {
            if let Some((k, group)) = open.take() {
                put_back(&mut self.maps[g], k, group);
            }
        }
    }

    /// How many map parts a walk of every group covers ([`Windows::part`]).
    pub fn parts(&self) -> usize {
        self.maps.len() * keymap::PARTS
    }

    /// Part `i` of a walk: a 256th of one group's keys.
    pub fn part(&self, i: usize) -> Option<&Part> {
        let map = self.maps.get(i / keymap::PARTS)?;
        Some(map.part(i % keymap::PARTS))
    }
}

/// One rule's windows, written as the map of key to state a rule's windows always were
/// (snapshots keep their format).
pub(crate) struct RuleWindows<'a> {
    pub windows: &'a Windows,
    pub rule: usize,
}

impl serde::Serialize for RuleWindows<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        // The map's length goes first: the rule's windows gathered in one walk of its group.
        let windows: Vec<(&Key, &KeyState)> = self.windows.rule(self.rule).collect();
        let mut m = s.serialize_map(Some(windows.len()))?;
        for (k, v) in windows {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn shipped() -> RuleSet {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../rules");
        RuleSet::load_dir(&dir).unwrap()
    }

    fn index(set: &RuleSet, id: &str) -> usize {
        set.rules.iter().position(|r| r.id == id).unwrap()
    }

    fn state(last_active: i64) -> KeyState {
        let mut s = KeyState::default();
        s.last_active = last_active;
        s
    }

    #[test]
    fn rules_keyed_alike_share_a_group_and_each_keeps_its_own_slot() {
        let set = shipped();
        let w = Windows::new(&set);
        // Player, session, device, ip.
        assert_eq!(w.parts(), 4 * keymap::PARTS);
        let velocity = w.place[index(&set, "fraud.bet_velocity")];
        let spike = w.place[index(&set, "fraud.stake_spike")];
        let device = w.place[index(&set, "fraud.multi_accounting.device")];
        let ip = w.place[index(&set, "fraud.multi_accounting.ip")];
        assert_eq!(velocity.0, spike.0);
        assert_ne!(velocity.1, spike.1);
        assert_ne!(velocity.0, device.0);
        assert_ne!(device.0, ip.0);
        let slots: usize = w.sizes.iter().sum();
        assert_eq!(slots, set.rules.len());
    }

    #[test]
    fn an_opened_group_goes_back_on_close_and_a_key_left_without_state_goes() {
        let set = shipped();
        let (a, b) = (
            index(&set, "fraud.bet_velocity"),
            index(&set, "rg.late_night"),
        );
        let d = index(&set, "fraud.multi_accounting.device");
        let mut w = Windows::new(&set);
        let k: Key = 42 << 64 | 7;
        *w.open(a, k) = Some(state(1));
        w.open(b, k).get_or_insert_with(|| state(2)).last_active += 10;
        // Another group, another key, in the same event.
        *w.open(d, 99) = Some(state(3));
        // Nothing is in the maps while open; everything after close.
        assert!(w.get(a, &k).is_none());
        w.close();
        assert_eq!(w.get(a, &k).map(|s| s.last_active), Some(1));
        assert_eq!(w.get(b, &k).map(|s| s.last_active), Some(12));
        assert_eq!(w.get(d, &99).map(|s| s.last_active), Some(3));
        assert!(w.get(d, &k).is_none() && w.get(a, &99).is_none());
        assert_eq!((w.rule_len(a), w.rule_len(b), w.rule_len(d)), (1, 1, 1));

        // Reopened for a second key of the same group: the first goes back first.
        let k2: Key = 43 << 64;
        w.open(a, k).take();
        *w.open(a, k2) = Some(state(5));
        w.close();
        assert!(w.get(a, &k).is_none());
        assert_eq!(w.get(b, &k).map(|s| s.last_active), Some(12));
        // The last state of a key taken: the key goes.
        w.open(b, k).take();
        w.close();
        assert_eq!(w.maps[w.place[a].0].len(), 1, "only k2 is left");
        assert_eq!(w.iter().count(), 2);
    }

    #[test]
    fn windows_by_rule_and_key_insert_remove_retain_and_drain() {
        let set = shipped();
        let (a, b) = (
            index(&set, "fraud.stake_spike"),
            index(&set, "rg.loss_chasing"),
        );
        let mut w = Windows::new(&set);
        for i in 0..100u128 {
            assert!(w.insert(a, i, state(i as i64)).is_none());
            if i % 2 == 0 {
                w.insert(b, i, state(1000 + i as i64));
            }
        }
        assert_eq!(w.insert(a, 5, state(-5)).map(|s| s.last_active), Some(5));
        assert_eq!((w.rule_len(a), w.rule_len(b)), (100, 50));
        assert_eq!(w.remove(a, &1).map(|s| s.last_active), Some(1));
        assert!(w.remove(a, &1).is_none());
        assert_eq!(w.remove(b, &2).map(|s| s.last_active), Some(1002));
        // Key 1 had only rule a's state: gone; key 2 keeps rule a's.
        assert_eq!(w.maps[w.place[a].0].len(), 99);
        w.retain(|ri, k, _| ri == b || k % 3 != 0);
        assert!(w.get(a, &3).is_none() && w.get(a, &4).is_some());
        assert_eq!(w.get(b, &6).map(|s| s.last_active), Some(1006));
        let n = w.iter().count();
        let mut all = w.drain();
        assert_eq!(all.len(), n);
        assert_eq!(w.iter().count(), 0);
        all.sort_by_key(|(ri, k, _)| (*ri, *k));
        assert!(all.iter().all(|(ri, k, s)| s.last_active
            == if *ri == b { 1000 } else { 0 } + *k as i64
            || (*ri == a && *k == 5 && s.last_active == -5)));
    }

    /// A rule's windows are written as the one map of key to state they always were: a
    /// snapshot reads the same in a build before groups and after.
    #[test]
    fn a_rule_s_windows_are_written_as_one_map() {
        let set = shipped();
        let (a, b) = (
            index(&set, "fraud.bet_velocity"),
            index(&set, "fraud.bot_regular_betting"),
        );
        let mut w = Windows::new(&set);
        for i in 0..300u128 {
            w.insert(a, i << 100 | i, state(i as i64));
            if i % 3 == 0 {
                w.insert(b, i << 100 | i, state(-1));
            }
        }
        let bytes = postcard::to_stdvec(&RuleWindows {
            windows: &w,
            rule: a,
        })
        .unwrap();
        let one: std::collections::HashMap<Key, KeyState> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(one.len(), 300);
        assert!(
            one.iter()
                .all(|(k, s)| w.get(a, k).map(|x| x.last_active) == Some(s.last_active))
        );
        let before: KeyMap<KeyState> = one.into_iter().collect();
        assert_eq!(postcard::to_stdvec(&before).unwrap().len(), bytes.len());
    }
}
