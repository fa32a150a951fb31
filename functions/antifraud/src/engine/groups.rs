//! Window states grouped by key: the rules keyed by the same field (every rule by player, say)
//! share one map, whose entry for a key holds each such rule's state side by side. An event
//! finds its player's windows with one probe instead of one per rule — the probes were the
//! engine's costliest loads (a cache miss for the control bytes and one for the slot, per rule:
//! eight rules read a bet).
//!
//! An event works on its groups' entries in place ([`Windows::begin`], [`Opened`]): each looked
//! up once for the event, not also taken out of its map and put back.
//!
//! Everything outside the engine's hot path sees windows by `(rule, key)`, as before: units,
//! snapshots and the idle queue are unchanged.

use std::collections::hash_map::Entry;

use super::keymap::{self, KeyMap};
use super::{Key, KeyHashing};
use crate::rules::{CompiledRule, RuleSet};
use crate::window::KeyState;

/// One key's states across the rules of a group, by their slot in it.
pub(crate) type Group = Box<[Option<KeyState>]>;

type Part = std::collections::HashMap<Key, Group, KeyHashing>;

/// What keys a rule's windows: rules alike here share a group.
fn keyed_by(rule: &CompiledRule) -> (pitboss_model::live::GroupBy, Option<crate::field::Field>) {
    (rule.group_by, rule.key_field.clone())
}

fn empty(size: usize) -> Group {
    (0..size).map(|_| None).collect()
}

/// Groups there can be: one per way of keying a rule (`group_by`, which decides the key's
/// field).
const MAX_GROUPS: usize = 6;

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
}

/// A group's entry as an event works on it ([`Opened`]).
#[derive(Debug)]
enum Row<'a> {
    /// Not looked up yet: the group's map.
    Closed(&'a mut KeyMap<Group>),
    /// The event's key's entry, in its map.
    Open(Key, &'a mut Group),
    /// No group (past the set's groups), or the place of one while its entry is looked up.
    None,
}

/// The windows one event works on ([`Windows::begin`]): each group's entry for the event's key
/// is found once (one probe for every rule of the group) and worked on where it lies in its map.
#[derive(Debug)]
pub(crate) struct Opened<'a> {
    rows: [Row<'a>; MAX_GROUPS],
    place: &'a [(usize, usize)],
    sizes: &'a [usize],
}

impl<'a> Opened<'a> {
    /// Finds the entry of `k` in the group of rule `ri`, if there is one, ahead of the rules'
    /// [`Opened::slot`] calls (which then find it open), so [`Opened::touch`] can read it ahead.
    pub fn find(&mut self, ri: usize, k: Key) {
        let Some(&(g, _)) = self.place.get(ri) else {
            return;
        };
        let Some(row) = self.rows.get_mut(g) else {
            return;
        };
        if let Row::Closed(map) = row
            && map.get(&k).is_some()
        {
            let Row::Closed(map) = std::mem::replace(row, Row::None) else {
                return;
            };
            if let Some(group) = map.get_mut(&k) {
                *row = Row::Open(k, group);
            }
        }
    }

    /// Reads, without using them, the first bytes of rule `ri`'s window if its group's entry is
    /// open ([`KeyState::touch`]): issued together for the rules an event will work on, before
    /// it does, their cache misses overlap instead of coming one after another, rule by rule.
    pub fn touch(&self, ri: usize) {
        if let Some(&(g, s)) = self.place.get(ri)
            && let Some(Row::Open(_, group)) = self.rows.get(g)
            && let Some(Some(state)) = group.get(s)
        {
            state.touch();
        }
    }

    /// The hot path: rule `ri`'s window of `k` — its group's entry found (or made) on the first
    /// call of the event for the group, then reused by the group's other rules. An entry made
    /// here is for the caller to put a state in (one left without any is dropped by the next
    /// [`Windows::retain`]). `None` for a key other than the one the group is open for: an
    /// event has one key per group (its rules read the same field), so that does not happen.
    pub fn slot(&mut self, ri: usize, k: Key) -> Option<&mut Option<KeyState>> {
        let &(g, s) = self.place.get(ri)?;
        let size = self.sizes.get(g).copied().unwrap_or(0);
        let row = self.rows.get_mut(g)?;
        if let Row::Closed(_) = row {
            let Row::Closed(map) = std::mem::replace(row, Row::None) else {
                return None;
            };
            *row = Row::Open(k, map.entry(k).or_insert_with(|| empty(size)));
        }
        match row {
            Row::Open(open, group) if *open == k => group.get_mut(s),
            _ => None,
        }
    }
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
        // Rules are grouped by `group_by` (the key's field follows from it): a group past
        // MAX_GROUPS would mean a `GroupBy` added without raising it, and its rules never run.
        assert!(
            sizes.len() <= MAX_GROUPS,
            "{} groups of rules: raise MAX_GROUPS",
            sizes.len()
        );
        Windows {
            maps: sizes.iter().map(|_| KeyMap::default()).collect(),
            place,
            sizes,
            rules_of,
        }
    }

    /// The windows of one event, their groups' entries found as its rules ask for them
    /// ([`Opened`]).
    pub fn begin(&mut self) -> Opened<'_> {
        let mut maps = self.maps.iter_mut();
        Opened {
            rows: std::array::from_fn(|_| maps.next().map_or(Row::None, Row::Closed)),
            place: &self.place,
            sizes: &self.sizes,
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
    /// Each state with the ids of its events folded on arrival (snapshot format 3).
    pub late: bool,
}

impl serde::Serialize for RuleWindows<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        // The map's length goes first: the rule's windows gathered in one walk of its group.
        let windows: Vec<(&Key, &KeyState)> = self.windows.rule(self.rule).collect();
        let mut m = s.serialize_map(Some(windows.len()))?;
        for (k, v) in windows {
            if self.late {
                m.serialize_entry(k, &(v, v.late_ids()))?;
            } else {
                m.serialize_entry(k, v)?;
            }
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
        // Player, session, device, ip, payment instrument.
        assert_eq!(w.parts(), 5 * keymap::PARTS);
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
    fn an_event_s_rules_work_on_their_group_s_entry_in_place() {
        let set = shipped();
        let (a, b) = (
            index(&set, "fraud.bet_velocity"),
            index(&set, "rg.late_night"),
        );
        let d = index(&set, "fraud.multi_accounting.device");
        let mut w = Windows::new(&set);
        let k: Key = 42 << 64 | 7;
        {
            let mut ev = w.begin();
            *ev.slot(a, k).unwrap() = Some(state(1));
            ev.slot(b, k)
                .unwrap()
                .get_or_insert_with(|| state(2))
                .last_active += 10;
            // Another group, another key, in the same event.
            *ev.slot(d, 99).unwrap() = Some(state(3));
            // The group is open for `k`: another key of it is not worked on (an event has one
            // key per group).
            assert!(ev.slot(a, 43).is_none());
        }
        assert_eq!(w.get(a, &k).map(|s| s.last_active), Some(1));
        assert_eq!(w.get(b, &k).map(|s| s.last_active), Some(12));
        assert_eq!(w.get(d, &99).map(|s| s.last_active), Some(3));
        assert!(w.get(d, &k).is_none() && w.get(a, &99).is_none());
        assert_eq!((w.rule_len(a), w.rule_len(b), w.rule_len(d)), (1, 1, 1));

        // Found ahead (and read ahead): the rules' slots are that entry's.
        {
            let mut ev = w.begin();
            ev.find(a, k);
            ev.touch(a);
            ev.touch(b);
            assert_eq!(
                ev.slot(b, k).unwrap().as_ref().map(|s| s.last_active),
                Some(12)
            );
            ev.slot(a, k).unwrap().take();
        }
        assert!(w.get(a, &k).is_none());
        assert_eq!(w.get(b, &k).map(|s| s.last_active), Some(12));
        // A key without windows is not made by looking ahead; made by a slot and left without
        // any state, it holds nothing and goes at the next retain.
        let (new, empty): (Key, Key) = (5, 6);
        {
            let mut ev = w.begin();
            ev.find(a, new);
            ev.touch(a);
            assert!(ev.slot(a, empty).unwrap().is_none());
        }
        let keys = |w: &Windows| w.maps[w.place[a].0].len();
        assert_eq!(
            keys(&w),
            2,
            "k and the empty entry; nothing for the key looked ahead"
        );
        assert!(w.get(a, &empty).is_none() && w.get(b, &empty).is_none());
        w.retain(|_, _, _| true);
        assert_eq!(keys(&w), 1, "only k is left");
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
            late: false,
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
