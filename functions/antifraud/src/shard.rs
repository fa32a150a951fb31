//! Several engines splitting the key space (`pitboss antifraud --shard i/N`).
//!
//! Every shard reads the whole event stream, each in its own consumer group, and evaluates only
//! the windows it owns: a window key (`tenant`, group value — a player, a device, an IP…) belongs
//! to shard `xxh3(tenant ␀ value) mod N`, except a session's, which lives with its player (a
//! session is one player's, docs/events.md). A player's score belongs to the shard that owns
//! the player. A rule keyed by something other than the player that fires on a shard not owning the
//! triggering event's player does not publish its alert or push: it sends them, with the hit's
//! points, as a [`Forward`] on the forwards topic (keyed by the player, read by every shard with
//! the events), and the player's shard adds the points to the player's score, sets the alert's
//! total and recommendation, and publishes both. So N shards raise exactly the messages one
//! engine raises, with the same ids, and each window is evaluated once.
//!
//! The assignment depends only on the key's bytes and N (xxHash3, a published algorithm), never
//! on a process or a build, so a restarted shard owns the same keys.

use pitboss_model::live::{Alert, Push};
use serde::{Deserialize, Serialize};

/// Which part of the key space an engine evaluates: shard `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shard {
    index: u32,
    count: u32,
}

/// The most shards a key space is split into.
pub const MAX_SHARDS: u32 = 1024;

impl Shard {
    /// One engine owning everything.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Shard `index` of `count` (`index < count ≤` [`MAX_SHARDS`]).
    pub fn new(index: u32, count: u32) -> Result<Shard, String> {
        if count == 0 || count > MAX_SHARDS {
            return Err(format!(
                "shard count {count} is out of range: 1 to {MAX_SHARDS}"
            ));
        }
        if index >= count {
            return Err(format!(
                "shard {index} of {count} does not exist: shards are numbered 0 to {}",
                count - 1
            ));
        }
        Ok(Shard { index, count })
    }

    /// Parses `i/N` (for example `0/3`).
    pub fn parse(text: &str) -> Result<Shard, String> {
        let (i, n) = text
            .split_once('/')
            .ok_or_else(|| format!("shard {text:?} is not of the form i/N, e.g. 0/3"))?;
        let num = |s: &str, what: &str| {
            s.trim()
                .parse::<u32>()
                .map_err(|_| format!("shard {text:?}: {what} {s:?} is not a whole number"))
        };
        Shard::new(num(i, "index")?, num(n, "count")?)
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    /// Whether there is more than one shard.
    pub fn is_split(&self) -> bool {
        self.count > 1
    }

    /// The shard owning `tenant`'s key `value`, of `count`.
    pub fn of(count: u32, tenant: &str, value: &str) -> u32 {
        if count <= 1 {
            return 0;
        }
        let mut buf = Vec::with_capacity(tenant.len() + 1 + value.len());
        buf.extend_from_slice(tenant.as_bytes());
        buf.push(0);
        buf.extend_from_slice(value.as_bytes());
        let h = twox_hash::XxHash3_128::oneshot(&buf) as u64;
        (h % u64::from(count)) as u32
    }

    /// Whether this shard owns `tenant`'s key `value`.
    pub fn owns(&self, tenant: &str, value: &str) -> bool {
        self.count <= 1 || Shard::of(self.count, tenant, value) == self.index
    }

    /// How names of per-shard things end: empty for one shard, `-shard-i-of-N` otherwise.
    pub fn suffix(&self, sep: char) -> String {
        if self.is_split() {
            format!("{sep}shard{sep}{}{sep}of{sep}{}", self.index, self.count)
        } else {
            String::new()
        }
    }
}

impl Default for Shard {
    fn default() -> Self {
        Shard::ALL
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// A hit raised on a shard that does not own the triggering event's player, on its way to the
/// one that does: what the rule raised (the alert's total and recommendation still to be set)
/// and the points to add to the player's score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forward {
    pub tenant_id: String,
    pub player_id: String,
    /// Event time of the triggering event (milliseconds), when the points count from.
    pub t: i64,
    /// The rule's points.
    pub score: u32,
    /// The hit's identity in the player's score (so a forward applied twice counts once).
    pub tag: u32,
    pub alert: Option<Alert>,
    pub push: Option<Push>,
}

impl Forward {
    /// The `pitboss-type` header of a forward's record.
    pub const TYPE: &'static str = "antifraud_forward";

    /// The bus key: `tenant:player`, as the player's events.
    pub fn bus_key(&self) -> String {
        format!("{}:{}", self.tenant_id, self.player_id)
    }

    /// The record's value (JSON). Cannot fail: every map in an alert or a push has string
    /// keys, and every value serializes.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a record's value.
    pub fn decode(bytes: &[u8]) -> Result<Forward, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("undecodable forward: {e}"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn shards_parse_and_refuse_precisely() {
        assert_eq!(Shard::parse("1/3"), Ok(Shard { index: 1, count: 3 }));
        assert_eq!(Shard::parse(" 0 / 1 "), Ok(Shard::ALL));
        assert_eq!(
            Shard::parse("3/3").unwrap_err(),
            "shard 3 of 3 does not exist: shards are numbered 0 to 2"
        );
        assert_eq!(
            Shard::parse("0/0").unwrap_err(),
            "shard count 0 is out of range: 1 to 1024"
        );
        assert_eq!(
            Shard::parse("2").unwrap_err(),
            "shard \"2\" is not of the form i/N, e.g. 0/3"
        );
        assert_eq!(
            Shard::parse("a/2").unwrap_err(),
            "shard \"a/2\": index \"a\" is not a whole number"
        );
        assert_eq!(Shard::ALL.suffix('-'), "");
        assert_eq!(Shard::parse("1/3").unwrap().suffix('_'), "_shard_1_of_3");
    }

    #[test]
    fn every_key_has_exactly_one_owner_and_the_split_is_even() {
        let shards: Vec<Shard> = (0..4).map(|i| Shard::new(i, 4).unwrap()).collect();
        let mut per = [0u32; 4];
        for k in 0..20_000 {
            let key = format!("player-{k}");
            let owners: Vec<u32> = shards
                .iter()
                .filter(|s| s.owns("demo", &key))
                .map(|s| s.index())
                .collect();
            assert_eq!(owners.len(), 1, "{key}: {owners:?}");
            per[owners[0] as usize] += 1;
            assert!(Shard::ALL.owns("demo", &key));
        }
        for n in per {
            assert!((4_500..5_500).contains(&n), "{per:?}");
        }
        // The tenant is part of the key, and the separator keeps ("ab","c") from ("a","bc").
        let a = (0..64)
            .filter(|k| {
                Shard::of(8, "ab", &format!("c{k}")) != Shard::of(8, "a", &format!("bc{k}"))
            })
            .count();
        assert!(a > 0);
    }

    #[test]
    fn the_assignment_is_a_published_function_of_the_key() {
        // Pinned, and checked against another implementation of XXH3-128 (Python's `xxhash`:
        // `xxh3_128_intdigest(b"demo\0" + key) % 2**64 % 5`): a build that assigned keys
        // differently would start every shard's windows empty after an upgrade.
        let got: Vec<u32> = ["p1", "p2", "p3", "device-7", "10.0.0.1"]
            .iter()
            .map(|k| Shard::of(5, "demo", k))
            .collect();
        assert_eq!(got, [2, 0, 0, 3, 4]);
    }
}
