//! Player scores: each hit's points add up per player within the scoring window; thresholds
//! map the total to a recommendation. Bounded: a player keeps at most [`MAX_HITS`] hits, and at
//! most the configured number of players is tracked (the least recently hit go first).

use std::collections::{HashMap, VecDeque};

use pitboss_model::live::Recommendation;

use crate::rules::ScoringConfig;

/// Most hits remembered per player.
pub(crate) const MAX_HITS: usize = 64;

/// A player's key and hits (time, points), as a snapshot holds them.
pub(crate) type PlayerHits = (Box<str>, VecDeque<(i64, u32)>);

/// A player's key and hits with their tags, as snapshot format 3 holds them.
pub(crate) type TaggedHits = (Box<str>, VecDeque<Hit>);

/// One hit: event time, points, and a hash of (rule id, trigger event id) so the same hit
/// applied twice (an evaluation repeated over partly saved state) counts once; or, with
/// [`ONCE`] set, of (rule id, group key): a finding about a shared key (a device, an address)
/// that counts once per scoring window however often it is raised again.
pub(crate) type Hit = (i64, u32, u32);

/// The tag bit of a hit that counts once per scoring window ([`Hit`]).
pub(crate) const ONCE: u32 = 1 << 31;

#[derive(Debug, Default)]
pub(crate) struct Scores {
    players: HashMap<Box<str>, VecDeque<Hit>, foldhash::fast::RandomState>,
    /// When tracking (the engine's [`crate::engine::Unit`] changes): players whose hits
    /// changed or went.
    pub changed: Option<std::collections::HashSet<Box<str>, foldhash::fast::RandomState>>,
}

impl Scores {
    /// Adds a hit of `score` points at event time `t` to `key`'s score (unless the hit with this
    /// `tag` at `t` is already there; for a tag with [`ONCE`], a hit with it anywhere in the
    /// window) and returns the total within the window (this hit included).
    pub fn add(
        &mut self,
        key: &str,
        t: i64,
        score: u32,
        tag: u32,
        cfg: &ScoringConfig,
        max_players: usize,
    ) -> u32 {
        if !self.players.contains_key(key) && self.players.len() >= max_players {
            self.evict_oldest(max_players / 10 + 1);
        }
        if let Some(c) = &mut self.changed
            && !c.contains(key)
        {
            c.insert(key.into());
        }
        let hits = match self.players.get_mut(key) {
            Some(h) => h,
            None => self.players.entry(key.into()).or_default(),
        };
        let from = t.saturating_sub(cfg.window_ms);
        hits.retain(|(ht, _, _)| *ht > from);
        let counted = if tag & ONCE != 0 {
            // The same finding about a shared key, raised again (its cooldown passed while the
            // same accounts still share the device): its points are in already.
            hits.iter().any(|(_, _, hg)| *hg == tag)
        } else {
            hits.iter().any(|(ht, _, hg)| *ht == t && *hg == tag)
        };
        if !counted {
            hits.push_back((t, score, tag));
        }
        while hits.len() > MAX_HITS {
            hits.pop_front();
        }
        hits.iter()
            .filter(|(ht, _, _)| *ht <= t)
            .map(|(_, s, _)| *s)
            .fold(0u32, u32::saturating_add)
    }

    fn evict_oldest(&mut self, n: usize) {
        let mut last: Vec<(i64, Box<str>)> = self
            .players
            .iter()
            .map(|(k, h)| (h.back().map_or(i64::MIN, |x| x.0), k.clone()))
            .collect();
        last.sort_unstable();
        for (_, k) in last.into_iter().take(n) {
            self.players.remove(&k);
            if let Some(c) = &mut self.changed {
                c.insert(k);
            }
        }
    }

    /// Drops players whose last hit is older than the window at time `t`.
    pub fn sweep(&mut self, t: i64, cfg: &ScoringConfig) {
        let from = t.saturating_sub(cfg.window_ms);
        let changed = &mut self.changed;
        self.players.retain(|k, h| {
            let keep = h.back().is_some_and(|x| x.0 > from);
            if !keep && let Some(c) = changed {
                c.insert(k.clone());
            }
            keep
        });
    }

    /// Every player's hits with their tags, for a snapshot.
    pub fn export(&self) -> Vec<(&str, &VecDeque<Hit>)> {
        self.players.iter().map(|(k, h)| (&**k, h)).collect()
    }

    /// Every player's hits without their tags, as snapshot formats 1 and 2 held them.
    #[cfg(test)]
    pub fn export_untagged(&self) -> Vec<(&str, VecDeque<(i64, u32)>)> {
        self.players
            .iter()
            .map(|(k, h)| (&**k, h.iter().map(|(t, s, _)| (*t, *s)).collect()))
            .collect()
    }

    /// Refills from [`Scores::export`]'s output.
    pub fn import(&mut self, players: Vec<TaggedHits>) {
        self.players.extend(players);
    }

    /// Hits without their tags (snapshot formats 1 and 2), each tagged 0: a hit applied again
    /// after such a restore counts again, as those formats could not tell.
    pub fn tag_untagged(players: Vec<PlayerHits>) -> Vec<TaggedHits> {
        players
            .into_iter()
            .map(|(k, h)| (k, h.into_iter().map(|(t, s)| (t, s, 0)).collect()))
            .collect()
    }

    /// One player's hits.
    pub fn get(&self, key: &str) -> Option<&VecDeque<Hit>> {
        self.players.get(key)
    }

    /// Sets one player's hits.
    pub fn put(&mut self, key: Box<str>, hits: VecDeque<Hit>) {
        self.players.insert(key, hits);
    }

    /// Every player's key.
    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.players.keys().map(|k| &**k)
    }

    pub fn len(&self) -> usize {
        self.players.len()
    }

    pub fn bytes(&self) -> usize {
        self.players
            .iter()
            .map(|(k, h)| {
                std::mem::size_of::<(Box<str>, VecDeque<Hit>)>() + 1 + k.len() + h.capacity() * 16
            })
            .sum()
    }
}

/// The recommendation for a total score.
pub(crate) fn recommend(total: u32, cfg: &ScoringConfig) -> Recommendation {
    if total >= cfg.block {
        Recommendation::Block
    } else if total >= cfg.review {
        Recommendation::Review
    } else {
        Recommendation::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_add_up_within_the_window_and_map_to_recommendations() {
        let cfg = ScoringConfig {
            window_ms: 1000,
            review: 30,
            block: 60,
        };
        let mut s = Scores::default();
        assert_eq!(s.add("t\u{1f}p", 0, 20, 1, &cfg, 10), 20);
        assert_eq!(recommend(20, &cfg), Recommendation::None);
        assert_eq!(s.add("t\u{1f}p", 500, 20, 1, &cfg, 10), 40);
        assert_eq!(recommend(40, &cfg), Recommendation::Review);
        assert_eq!(s.add("t\u{1f}p", 900, 20, 1, &cfg, 10), 60);
        assert_eq!(recommend(60, &cfg), Recommendation::Block);
        assert_eq!(
            s.add("t\u{1f}q", 900, 5, 1, &cfg, 10),
            5,
            "players are apart"
        );
        assert_eq!(
            s.add("t\u{1f}p", 1600, 1, 1, &cfg, 10),
            21,
            "hits at 0 and 500 left the window"
        );
        assert_eq!(
            s.add("t\u{1f}p", 1600, 1, 1, &cfg, 10),
            21,
            "the same hit (time and tag) applied again counts once"
        );
        assert_eq!(
            s.add("t\u{1f}p", 1600, 1, 2, &cfg, 10),
            22,
            "another rule's hit"
        );
    }

    #[test]
    fn player_count_is_bounded() {
        let cfg = ScoringConfig::default();
        let mut s = Scores::default();
        for i in 0..100 {
            s.add(&format!("p{i}"), i, 1, 1, &cfg, 10);
        }
        assert!(s.len() <= 10);
    }
}
