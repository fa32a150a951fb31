//! A rule's window states by key, in parts that grow one at a time.
//!
//! A hash map that is full doubles: it allocates twice its table and moves every entry, on the
//! insert that found it full. One rule's map of 100,000 keys (112 bytes a slot) moving to a
//! table of 29 MB took 20–50 ms on one event in the live benchmark — the rules engine's
//! slowest events, all new keys (a login, a first deposit) in a growing population. Split
//! into [`PARTS`] maps by the key's top bits, each growth moves a 256th of the entries, and
//! the parts, filled at random, reach their thresholds on different events.

use super::{Key, KeyHashing};
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

/// How many maps a [`KeyMap`] is split into.
pub(crate) const PARTS: usize = 256;

type Part<V> = HashMap<Key, V, KeyHashing>;

#[derive(Debug, Clone)]
pub(crate) struct KeyMap<V> {
    parts: Box<[Part<V>]>,
}

impl<V> Default for KeyMap<V> {
    fn default() -> Self {
        KeyMap {
            parts: (0..PARTS).map(|_| Part::default()).collect(),
        }
    }
}

/// The part of `k`: its top 8 bits (the table within a part hashes all 128, with its own
/// random seed).
fn part(k: &Key) -> usize {
    (*k >> 120) as usize
}

impl<V> KeyMap<V> {
    pub fn len(&self) -> usize {
        self.parts.iter().map(HashMap::len).sum()
    }

    /// Part `i` (of [`PARTS`]).
    pub fn part(&self, i: usize) -> &HashMap<Key, V, KeyHashing> {
        &self.parts[i]
    }

    pub fn get(&self, k: &Key) -> Option<&V> {
        self.parts[part(k)].get(k)
    }

    pub fn get_mut(&mut self, k: &Key) -> Option<&mut V> {
        self.parts[part(k)].get_mut(k)
    }

    pub fn entry(&mut self, k: Key) -> Entry<'_, Key, V> {
        self.parts[part(&k)].entry(k)
    }

    pub fn insert(&mut self, k: Key, v: V) -> Option<V> {
        self.parts[part(&k)].insert(k, v)
    }

    #[cfg(test)]
    pub fn remove(&mut self, k: &Key) -> Option<V> {
        self.parts[part(k)].remove(k)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Key, &V)> {
        self.parts.iter().flat_map(HashMap::iter)
    }

    #[cfg(test)]
    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.parts.iter().flat_map(HashMap::keys)
    }

    #[cfg(test)]
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.parts.iter().flat_map(HashMap::values)
    }

    /// Every entry, taken out.
    pub fn into_iter_all(self) -> impl Iterator<Item = (Key, V)> {
        self.parts
            .into_vec()
            .into_iter()
            .flat_map(HashMap::into_iter)
    }

    pub fn retain(&mut self, mut f: impl FnMut(&Key, &mut V) -> bool) {
        for p in self.parts.iter_mut() {
            p.retain(&mut f);
        }
    }
}

impl<V> FromIterator<(Key, V)> for KeyMap<V> {
    fn from_iter<I: IntoIterator<Item = (Key, V)>>(iter: I) -> Self {
        let mut m = KeyMap::default();
        for (k, v) in iter {
            m.insert(k, v);
        }
        m
    }
}

/// Written as one map, as a single `HashMap` was (snapshots keep their format).
impl<V: serde::Serialize> serde::Serialize for KeyMap<V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut m = s.serialize_map(Some(self.len()))?;
        for (k, v) in self.iter() {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// A set of (rule, key) pairs in parts by the key's top bits, like [`KeyMap`]: the windows a
/// save is to write, which grows with the keys touched between two saves.
#[derive(Debug)]
pub(crate) struct KeySet {
    parts: Box<[HashSet<(u32, Key), KeyHashing>]>,
}

impl Default for KeySet {
    fn default() -> Self {
        KeySet {
            parts: (0..PARTS).map(|_| HashSet::default()).collect(),
        }
    }
}

impl KeySet {
    pub fn insert(&mut self, rule: u32, k: Key) -> bool {
        self.parts[part(&k)].insert((rule, k))
    }

    pub fn clear(&mut self) {
        for p in self.parts.iter_mut() {
            p.clear();
        }
    }

    /// The pairs of part `i` (of [`PARTS`]), leaving it empty.
    pub fn drain_part(&mut self, i: usize) -> impl Iterator<Item = (u32, Key)> + '_ {
        self.parts.get_mut(i).into_iter().flat_map(HashSet::drain)
    }

    /// How many pairs parts `from..` hold.
    pub fn len_from(&self, from: usize) -> usize {
        self.parts.iter().skip(from).map(HashSet::len).sum()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key(i: u64) -> Key {
        let h = |seed: u64| {
            let mut x = i ^ seed;
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^ (x >> 31)
        };
        (u128::from(h(1)) << 64) | u128::from(h(2))
    }

    #[test]
    fn it_is_a_map() {
        let mut m: KeyMap<u64> = KeyMap::default();
        for i in 0..10_000 {
            assert!(m.insert(key(i), i).is_none());
        }
        assert_eq!(m.len(), 10_000);
        assert_eq!(m.get(&key(77)), Some(&77));
        *m.entry(key(77)).or_insert(0) += 1;
        assert_eq!(m.remove(&key(77)), Some(78));
        m.retain(|_, v| *v % 2 == 0);
        assert_eq!(m.len(), 5_000);
        let mut seen: Vec<u64> = m.values().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..10_000).filter(|i| i % 2 == 0).collect::<Vec<_>>());
        let again: KeyMap<u64> = m.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(again.len(), 5_000);
        assert!(m.keys().all(|k| again.get(k).is_some()));
    }

    /// Serialized as one `HashMap` was: a snapshot written by a build before parts reads back
    /// into parts, and the other way round.
    #[test]
    fn it_is_written_as_one_map() {
        let m: KeyMap<u32> = (0..500).map(|i| (key(i), i as u32)).collect();
        let bytes = postcard::to_stdvec(&m).unwrap();
        let one: HashMap<Key, u32> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(one.len(), 500);
        assert!(one.iter().all(|(k, v)| m.get(k) == Some(v)));
        let back: KeyMap<u32> = one.into_iter().collect();
        assert_eq!(postcard::to_stdvec(&back).unwrap().len(), bytes.len());
    }

    #[test]
    fn the_set_holds_each_pair_once_and_drains_empty() {
        let mut s = KeySet::default();
        for i in 0..1_000 {
            assert!(s.insert((i % 3) as u32, key(i)));
        }
        assert!(!s.insert(0, key(0)));
        assert!(s.insert(1, key(0)), "another rule's window of the same key");
        assert_eq!(s.len_from(0), 1_001);
        let mut all: Vec<(u32, Key)> = (0..PARTS)
            .flat_map(|i| s.drain_part(i).collect::<Vec<_>>())
            .collect();
        assert_eq!(all.len(), 1_001);
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 1_001);
        assert_eq!(s.len_from(0), 0);
        s.insert(2, key(5));
        s.clear();
        assert_eq!(s.len_from(0), 0);
    }

    /// Keys spread over every part, so no part grows for all of them.
    #[test]
    fn keys_spread_over_the_parts() {
        let m: KeyMap<()> = (0..(PARTS as u64 * 64)).map(|i| (key(i), ())).collect();
        let biggest = m.parts.iter().map(HashMap::len).max().unwrap();
        let smallest = m.parts.iter().map(HashMap::len).min().unwrap();
        assert!(smallest > 20 && biggest < 120, "{smallest}..{biggest}");
    }

    /// Keys are hashes with fixed seeds (they name saved state), so a sender who picks group
    /// values can pick keys. Keys whose halves are equal all folded to one table hash (0) when
    /// the tables hashed a key by folding its halves; in one part, every lookup of those keys
    /// scanned them all. With each table's hash seeded at random they spread over its slots.
    #[test]
    fn keys_chosen_to_collide_still_spread_over_the_table() {
        use std::hash::BuildHasher as _;
        let chosen: Vec<Key> = (0..10_000u64)
            .map(|i| {
                let half = (0xab << 56) | i;
                (u128::from(half) << 64) | u128::from(half)
            })
            .collect();
        let m: KeyMap<u64> = chosen.iter().zip(0..).map(|(k, i)| (*k, i)).collect();
        assert!(chosen.iter().zip(0..).all(|(k, i)| m.get(k) == Some(&i)));
        let table = m.part(part(&chosen[0]));
        assert_eq!(table.len(), 10_000, "all in one part");
        let slots: HashSet<u64> = chosen
            .iter()
            .map(|k| table.hasher().hash_one(k) & 0x3ff)
            .collect();
        assert!(
            slots.len() >= 900,
            "10,000 keys over {} of 1,024 slots",
            slots.len()
        );
        // Another table draws another seed.
        let other: KeyMap<u64> = chosen.iter().map(|k| (*k, 0)).collect();
        let theirs = other.part(part(&chosen[0])).hasher();
        assert!(
            chosen
                .iter()
                .any(|k| theirs.hash_one(k) != table.hasher().hash_one(k))
        );
    }
}
