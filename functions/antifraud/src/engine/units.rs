//! The engine's state cut into **units** that can be saved and loaded one at a time: one rule's
//! window of one key, one placed bet of the stake join, one player's recent hits. Two adapters
//! need them:
//!
//! - the streaming engine saves only the units that changed since its last save (its state
//!   file stays proportional to activity, not to every player ever seen);
//! - the Lambda adapter keeps no state between invocations: before a batch it loads the units
//!   the batch's events read ([`Engine::units_for`]) from an external store, and after it
//!   writes back those that changed.
//!
//! A window unit is named by its rule's id, version and a hash of its window definition, so a
//! unit saved under another definition of the rule is never loaded into it (the rule starts
//! that key empty, as a reload does).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use pitboss_model::{Event, Payload};

use super::{Engine, Key, key_player};
use crate::error::AntifraudError;
use crate::field::{Extra, Value};
use crate::join::{Bet, Bounds};
use crate::rules::{CompiledRule, RuleSet};
use crate::window::{KeyState, KeyStateV1, KeyStateV1Ref};

/// The encoding of a unit's bytes (a leading byte); bytes of another format are refused.
const UNIT_FORMAT: u8 = 1;
/// A window unit with buckets (`window.bucket`): the format-1 window followed by its buckets.
/// Windows without buckets are still written in format 1, byte for byte as before buckets, so
/// a build from before them reads every unit but those.
const UNIT_FORMAT_BUCKETS: u8 = 2;
/// A window unit with buckets that holds the ids of events folded on arrival (so a redelivery
/// of one is recognised): the format-2 window followed by those ids. Written only when there
/// are some; otherwise format 2, byte for byte as before.
const UNIT_FORMAT_LATE: u8 = 3;

/// One unit of engine state.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unit {
    /// One rule's window of one key (`rule`: the rule's tag, id@version.definition-hash).
    Window { rule: Arc<str>, key: u128 },
    /// One placed bet (a hash of tenant and bet id): its stake, for the settlement join.
    Bet(u64),
    /// One player's recent hits, for scoring (`tenant` U+001F `player`).
    Score(Box<str>),
}

impl Unit {
    /// The unit's name as text (a store key): `w|<rule tag>|<key, 32 hex>`, `b|<16 hex>` or
    /// `s|<tenant>\u{1f}<player>`.
    pub fn name(&self) -> String {
        match self {
            Unit::Window { rule, key } => format!("w|{rule}|{key:032x}"),
            Unit::Bet(k) => format!("b|{k:016x}"),
            Unit::Score(p) => format!("s|{p}"),
        }
    }

    /// The unit a [`Unit::name`] names.
    pub fn parse(name: &str) -> Option<Unit> {
        let (kind, rest) = name.split_once('|')?;
        match kind {
            "w" => {
                let (rule, key) = rest.rsplit_once('|')?;
                Some(Unit::Window {
                    rule: rule.into(),
                    key: u128::from_str_radix(key, 16).ok()?,
                })
            }
            "b" => u64::from_str_radix(rest, 16).ok().map(Unit::Bet),
            "s" => Some(Unit::Score(rest.into())),
            _ => None,
        }
    }
}

/// A unit that changed: its new bytes, or `None` when it is gone.
#[derive(Debug, Clone)]
pub struct Change {
    pub unit: Unit,
    pub value: Option<Vec<u8>>,
    /// Engine time (ms) after which the unit holds nothing the engine would read: a store may
    /// expire it then (DynamoDB TTL).
    pub expires_at_ms: i64,
}

/// What changed since the last [`Engine::take_changes`].
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// The units are the whole state: a store should drop every unit not among them (after
    /// the first call, and after a rule reload that moved, dropped or refolded rules).
    pub full: bool,
    pub units: Vec<Change>,
    /// The engine-wide values (the last sweep, the join's newest bet), for
    /// [`Engine::set_meta`].
    pub meta: Vec<u8>,
}

/// A save's units still to write ([`Engine::take_pending`]).
#[derive(Debug, Default)]
pub struct Pending {
    /// Players whose scores changed before the save began: all in its first slice.
    scores: Vec<Unit>,
    /// Units named and not yet written (taken from the end).
    units: Vec<Unit>,
    /// Windows that changed before the save began, not yet named: parts `part..`.
    windows: super::keymap::KeySet,
    part: usize,
    /// Each rule's tag when the save began (the windows' rule indexes are into these).
    tags: Vec<Arc<str>>,
}

impl Pending {
    /// Names windows a part at a time until `n` units are ready (or none are left).
    fn name_windows(&mut self, n: usize) {
        while self.units.len() < n && self.part < super::keymap::PARTS {
            let part = self.part;
            self.part += 1;
            for (ri, k) in self.windows.drain_part(part) {
                if let Some(tag) = self.tags.get(ri as usize) {
                    self.units.push(Unit::Window {
                        rule: tag.clone(),
                        key: k,
                    });
                }
            }
        }
    }

    /// Units still to write.
    pub fn len(&self) -> usize {
        self.scores.len() + self.units.len() + self.windows.len_from(self.part)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The names of the units named so far (all of them, for a full save).
    pub fn names(&self) -> impl Iterator<Item = String> + '_ {
        self.scores.iter().chain(&self.units).map(Unit::name)
    }
}

/// Windows touched while tracking.
#[derive(Debug, Default)]
pub(super) struct Dirty {
    pub windows: super::keymap::KeySet,
    pub full: bool,
}

/// Each rule's tag: id, version, and a hash of what its window state depends on.
pub(super) fn rule_tags(set: &RuleSet) -> Vec<Arc<str>> {
    set.rules
        .iter()
        .map(|r| {
            let h = twox_hash::XxHash3_128::oneshot(r.signature.as_bytes()) as u64;
            Arc::from(format!("{}@{}.{h:016x}", r.id, r.version))
        })
        .collect()
}

/// How long a key of `rule` is kept after its last event (the sweep's rule).
pub(super) fn keep_ms(rule: &CompiledRule, idle_after_ms: i64) -> i64 {
    rule.duration_ms
        .unwrap_or(0)
        .saturating_add(idle_after_ms)
        .max(rule.cooldown_ms)
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, AntifraudError> {
    postcard::to_extend(v, vec![UNIT_FORMAT])
        .map_err(|e| AntifraudError::Snapshot(format!("encoding a unit: {e}")))
}

/// A window's bytes: format 1 without buckets, 2 with.
pub(crate) fn encode_window(s: &KeyState) -> Result<Vec<u8>, AntifraudError> {
    let out = if !s.late_ids().is_empty() {
        postcard::to_extend(s, vec![UNIT_FORMAT_LATE])
            .and_then(|v| postcard::to_extend(s.late_ids(), v))
    } else if s.buckets.is_some() {
        postcard::to_extend(s, vec![UNIT_FORMAT_BUCKETS])
    } else {
        postcard::to_extend(&KeyStateV1Ref::of(s), vec![UNIT_FORMAT])
    };
    out.map_err(|e| AntifraudError::Snapshot(format!("encoding a unit: {e}")))
}

pub(crate) fn decode_window(bytes: &[u8]) -> Result<KeyState, AntifraudError> {
    let unreadable = |e: postcard::Error| AntifraudError::Snapshot(format!("unreadable unit: {e}"));
    match bytes.split_first() {
        Some((&UNIT_FORMAT_BUCKETS, rest)) => postcard::from_bytes(rest).map_err(unreadable),
        Some((&UNIT_FORMAT_LATE, rest)) => {
            let (mut s, tail) = postcard::take_from_bytes::<KeyState>(rest).map_err(unreadable)?;
            s.set_late_ids(postcard::from_bytes(tail).map_err(unreadable)?);
            Ok(s)
        }
        Some((&UNIT_FORMAT, _)) => decode::<KeyStateV1>(bytes).map(KeyState::from),
        Some((f, _)) => Err(AntifraudError::Snapshot(format!(
            "window unit format {f} (this build reads {UNIT_FORMAT} to {UNIT_FORMAT_LATE})"
        ))),
        None => Err(AntifraudError::Snapshot("empty unit".into())),
    }
}

/// `v` as [`encode`] writes it, then `more` after it: a build that reads `v` alone (the unit
/// and meta formats before `more`) ignores what follows.
fn encode_then<T: serde::Serialize, U: serde::Serialize>(
    v: &T,
    more: &U,
) -> Result<Vec<u8>, AntifraudError> {
    let out = encode(v)?;
    postcard::to_extend(more, out)
        .map_err(|e| AntifraudError::Snapshot(format!("encoding a unit: {e}")))
}

/// What [`encode_then`] wrote: `v`, and `more` when it follows (`None` in bytes written
/// before it).
fn decode_then<'a, T: serde::Deserialize<'a>, U: serde::Deserialize<'a>>(
    bytes: &'a [u8],
) -> Result<(T, Option<U>), AntifraudError> {
    let unreadable = |e: postcard::Error| AntifraudError::Snapshot(format!("unreadable unit: {e}"));
    match bytes.split_first() {
        Some((&UNIT_FORMAT, rest)) => {
            let (v, rest) = postcard::take_from_bytes(rest).map_err(unreadable)?;
            let more = if rest.is_empty() {
                None
            } else {
                Some(postcard::from_bytes(rest).map_err(unreadable)?)
            };
            Ok((v, more))
        }
        _ => Ok((decode(bytes)?, None)),
    }
}

/// A bet unit: `(stake, t)` as before numbers, then its number in the join, then — for a bet
/// placed again after it was forgotten — the version forgotten, `(stake, t, number)`. Each
/// part after the first is left out when absent (and ignored by builds that do not read it).
fn encode_bet(b: &Bet, earlier: Option<&Bet>) -> Result<Vec<u8>, AntifraudError> {
    let out = encode_then(&(b.stake, b.t), &b.seq)?;
    match earlier {
        None => Ok(out),
        Some(e) => postcard::to_extend(&(e.stake, e.t, e.seq), out)
            .map_err(|e| AntifraudError::Snapshot(format!("encoding a unit: {e}"))),
    }
}

/// What [`encode_bet`] wrote: `(stake, t)`, its number (none in units written before numbers),
/// and the version forgotten.
#[allow(clippy::type_complexity)]
fn decode_bet(bytes: &[u8]) -> Result<((i64, i64), Option<u64>, Option<Bet>), AntifraudError> {
    let unreadable = |e: postcard::Error| AntifraudError::Snapshot(format!("unreadable unit: {e}"));
    match bytes.split_first() {
        Some((&UNIT_FORMAT, rest)) => {
            let (v, rest): ((i64, i64), _) = postcard::take_from_bytes(rest).map_err(unreadable)?;
            if rest.is_empty() {
                return Ok((v, None, None));
            }
            let (seq, rest): (u64, _) = postcard::take_from_bytes(rest).map_err(unreadable)?;
            if rest.is_empty() {
                return Ok((v, Some(seq), None));
            }
            let (stake, t, s): (i64, i64, u64) = postcard::from_bytes(rest).map_err(unreadable)?;
            Ok((v, Some(seq), Some(Bet { stake, t, seq: s })))
        }
        _ => Ok((decode(bytes)?, None, None)),
    }
}

fn decode<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, AntifraudError> {
    match bytes.split_first() {
        Some((&UNIT_FORMAT, rest)) => postcard::from_bytes(rest)
            .map_err(|e| AntifraudError::Snapshot(format!("unreadable unit: {e}"))),
        Some((f, _)) => Err(AntifraudError::Snapshot(format!(
            "unit format {f} (this build reads {UNIT_FORMAT})"
        ))),
        None => Err(AntifraudError::Snapshot("empty unit".into())),
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    last_sweep: i64,
    join_newest: i64,
}

impl Engine {
    /// Starts (or stops) recording which units change; the first [`Engine::take_changes`]
    /// after starting returns the whole state.
    pub fn track_changes(&mut self, on: bool) {
        if on {
            self.dirty = Some(Box::new(Dirty {
                full: true,
                ..Dirty::default()
            }));
            self.join.track(true);
            self.scores.changed = Some(HashSet::default());
        } else {
            self.dirty = None;
            self.join.track(false);
            self.scores.changed = None;
        }
    }

    /// An engine starting empty beside a saved state it could not load: the join numbers its
    /// bets after the numbers that state's values recorded (unreadable values: as it would),
    /// so a restart from that state, should this engine's first save not complete, holds none
    /// of this engine's bets for that state's.
    pub fn number_bets_after(&mut self, meta: &[u8]) {
        if let Ok((_, Some(b))) = decode_then::<Meta, Bounds>(meta) {
            self.join.number_after(b);
        }
    }

    /// Bets the stake join forgets are deleted from the store by the save that forgets them,
    /// rather than kept until a later save covers their forgetting: for a store written all
    /// or nothing per batch (the Lambda's), where a retried batch starts from the state before
    /// it.
    pub fn forget_bets_at_once(&mut self) {
        self.join.forget_at_once();
    }

    /// Like [`Engine::track_changes`], but the state as it is counts as saved: only what
    /// changes from now on is returned (after loading units from a store).
    pub fn track_changes_from_here(&mut self) {
        self.track_changes(true);
        if let Some(d) = &mut self.dirty {
            d.full = false;
        }
    }

    /// The units `process` may read or write for `event`, appended to `out` (a superset: a
    /// unit that does not exist yet is simply not found).
    pub fn units_for(&self, event: &Event, out: &mut Vec<Unit>) {
        let extra = Extra {
            joined_stake: None,
            default_offset_min: self.set.limits.default_utc_offset_min,
            money: Default::default(),
        };
        for &ri in &self.by_type[crate::filter::index(event.event_type())] {
            let rule = &self.set.rules[ri];
            let group = match &rule.key_field {
                None => event.player_id.as_str(),
                Some(f) => match f.get(event, &extra) {
                    Value::Text(s) if !s.is_empty() => s,
                    _ => continue,
                },
            };
            out.push(Unit::Window {
                rule: self.tags[ri].clone(),
                key: self.key_of(&event.tenant_id, group),
            });
        }
        match &event.payload {
            Payload::BetPlaced(b) => {
                out.push(Unit::Bet(self.join.key_of(&event.tenant_id, &b.bet_id)))
            }
            Payload::BetSettled(b) if b.stake.is_none() => {
                out.push(Unit::Bet(self.join.key_of(&event.tenant_id, &b.bet_id)));
            }
            _ => {}
        }
        out.push(Unit::Score(
            key_player(&event.tenant_id, &event.player_id).into(),
        ));
    }

    pub(super) fn key_of(&self, tenant: &str, group: &str) -> Key {
        super::key_with(&self.key_hashers, tenant, group)
    }

    /// Loads one unit saved by [`Engine::take_changes`]. A window of a rule that is not
    /// running (another version or definition) is ignored: `Ok(false)`.
    pub fn load_unit(&mut self, unit: &Unit, bytes: &[u8]) -> Result<bool, AntifraudError> {
        match unit {
            Unit::Window { rule, key } => {
                let Some(ri) = self.tags.iter().position(|t| t == rule) else {
                    return Ok(false);
                };
                let mut state = decode_window(bytes)?;
                if let Some(r) = self.set.rules.get(ri) {
                    state.conform(r);
                }
                self.entries += state.held();
                let due = state
                    .last_active
                    .saturating_add(self.keeps.get(ri).copied().unwrap_or(0));
                match self.states.insert(ri, *key, state) {
                    Some(old) => self.entries = self.entries.saturating_sub(old.held()),
                    None => self.idle.push(std::cmp::Reverse((due, ri as u32, *key))),
                }
            }
            Unit::Bet(k) => {
                let ((stake, t), seq, earlier) = decode_bet(bytes)?;
                self.join.put(*k, stake, t, seq, earlier);
            }
            Unit::Score(p) => {
                let hits: VecDeque<crate::scoring::Hit> = decode(bytes)?;
                self.scores.put(p.clone(), hits);
            }
        }
        Ok(true)
    }

    /// Restores the engine-wide values saved in [`Changes::meta`].
    /// Call it after the units are loaded: the join keeps the bets it held at the save.
    pub fn set_meta(&mut self, meta: &[u8]) -> Result<(), AntifraudError> {
        let (m, bounds): (Meta, Option<Bounds>) = decode_then(meta)?;
        self.last_sweep = m.last_sweep;
        self.join.restore(m.join_newest, bounds);
        Ok(())
    }

    /// The units changed since the last call (or, the first time, all of them), encoded.
    /// Empty when not tracking.
    pub fn take_changes(&mut self) -> Result<Changes, AntifraudError> {
        let (full, units) = self.take_dirty();
        Ok(Changes {
            full,
            units: self.changes_of(units)?,
            meta: self.meta()?,
        })
    }

    /// Which units changed since the last call (all of them the first time, and after a
    /// reload: `full`), without encoding them; [`Engine::changes_of`] encodes them later,
    /// as they are then. Empty when not tracking.
    pub fn take_dirty(&mut self) -> (bool, Vec<Unit>) {
        let (full, mut p) = self.take_pending();
        let mut units = std::mem::take(&mut p.units);
        p.name_windows(usize::MAX);
        units.append(&mut p.units);
        units.append(&mut p.scores);
        (full, units)
    }

    /// [`Engine::take_dirty`] for a save written in slices ([`Engine::next_slice`]): the
    /// windows that changed are taken as the set they are in (nothing is copied or named, so
    /// taking them costs nothing however many changed) and named a part at a time as the
    /// slices need them. A full save names every unit now.
    pub fn take_pending(&mut self) -> (bool, Pending) {
        let Some(dirty) = self.dirty.as_mut() else {
            return (false, Pending::default());
        };
        let full = std::mem::take(&mut dirty.full);
        // Windows are named with the rules as they are now, even if a reload renumbers them
        // before the slices name the rest.
        let mut p = Pending {
            tags: self.tags.clone(),
            ..Pending::default()
        };
        if full {
            dirty.windows.clear();
            for (ri, k, _) in self.states.iter() {
                if let Some(tag) = self.tags.get(ri) {
                    p.units.push(Unit::Window {
                        rule: tag.clone(),
                        key: *k,
                    });
                }
            }
            p.part = super::keymap::PARTS;
        } else {
            p.windows = std::mem::take(&mut dirty.windows);
        }
        p.units
            .extend(self.join.begin_save(full).into_iter().map(Unit::Bet));
        match (&mut self.scores.changed, full) {
            (Some(c), true) => {
                c.clear();
                p.scores
                    .extend(self.scores.keys().map(|k| Unit::Score(Box::from(k))));
            }
            (Some(c), false) => p.scores.extend(c.drain().map(Unit::Score)),
            (None, _) => {}
        }
        (full, p)
    }

    /// The next slice of a save in progress: up to `n` of its pending units — with, on the
    /// first slice, the scores that changed before the save began — and the scores of every
    /// player that scored since the last slice.
    ///
    /// A window written with a hit must not reach the file before the hit's points: a restart
    /// replays the hit's event onto that window, which knows the event and does not fire
    /// again, so the points would be lost. Writing, with each slice, the scores as they are
    /// then keeps every player's score in the file at least as new as any window written
    /// before it.
    ///
    /// Scores come first in the slice, so a store that keeps a prefix of it (a changelog
    /// publish cut short) keeps no window without its hits' points either.
    pub fn next_slice(&mut self, pending: &mut Pending, n: usize) -> Vec<Unit> {
        let mut slice = std::mem::take(&mut pending.scores);
        if let Some(c) = &mut self.scores.changed {
            slice.extend(c.drain().map(Unit::Score));
        }
        pending.name_windows(n);
        let from = pending.units.len().saturating_sub(n);
        slice.extend(pending.units.drain(from..));
        slice
    }

    /// Names every window of `p` now (tests reorder the units of a save).
    #[cfg(test)]
    pub(crate) fn name_all<'p>(&self, p: &'p mut Pending) -> &'p mut Vec<Unit> {
        p.name_windows(usize::MAX);
        &mut p.units
    }

    /// The engine-wide values, for [`Engine::set_meta`].
    pub fn meta(&self) -> Result<Vec<u8>, AntifraudError> {
        encode_then(
            &Meta {
                last_sweep: self.last_sweep,
                join_newest: self.join.newest(),
            },
            &self.join.bounds(),
        )
    }

    /// These units as they are now: bytes, or `None` for a unit that is gone (a window of a
    /// rule no longer running included).
    pub fn changes_of(&self, units: Vec<Unit>) -> Result<Vec<Change>, AntifraudError> {
        let idle = self.set.limits.idle_after_ms;
        let horizon = self.join.horizon_ms();
        let window = self.set.scoring.window_ms;
        let gone = |unit| Change {
            unit,
            value: None,
            expires_at_ms: 0,
        };
        let mut out = Vec::with_capacity(units.len());
        for unit in units {
            out.push(match &unit {
                Unit::Window { rule, key } => {
                    let found =
                        self.tags.iter().position(|t| t == rule).and_then(|ri| {
                            Some((self.set.rules.get(ri)?, self.states.get(ri, key)?))
                        });
                    match found {
                        Some((r, s)) => Change {
                            value: Some(encode_window(s)?),
                            expires_at_ms: s.last_active.saturating_add(keep_ms(r, idle)),
                            unit,
                        },
                        None => gone(unit),
                    }
                }
                Unit::Bet(k) => match self.join.get(*k) {
                    Some((b, earlier)) => Change {
                        value: Some(encode_bet(&b, earlier.as_ref())?),
                        expires_at_ms: b.t.saturating_add(horizon),
                        unit,
                    },
                    None => gone(unit),
                },
                Unit::Score(p) => match self.scores.get(p).filter(|h| !h.is_empty()) {
                    Some(h) => Change {
                        value: Some(encode(h)?),
                        expires_at_ms: h
                            .iter()
                            .map(|x| x.0)
                            .max()
                            .unwrap_or(0)
                            .saturating_add(window),
                        unit,
                    },
                    None => gone(unit),
                },
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A bet unit and the engine-wide values carry the join's numbers after what builds
    /// before them wrote, so each reads the other's: an older build ignores the numbers, this
    /// one reads an older unit as one without.
    #[test]
    fn bet_units_and_meta_read_both_ways_across_the_join_s_numbers() {
        let new = encode_then(&(500i64, 1_000i64), &7u64).unwrap();
        assert_eq!(
            decode::<(i64, i64)>(&new).unwrap(),
            (500, 1_000),
            "as before"
        );
        assert_eq!(decode_bet(&new).unwrap(), ((500, 1_000), Some(7), None));
        let earlier = Bet {
            stake: 400,
            t: 900,
            seq: 3,
        };
        let both = encode_bet(
            &Bet {
                stake: 500,
                t: 1_000,
                seq: 7,
            },
            Some(&earlier),
        )
        .unwrap();
        assert_eq!(
            decode::<(i64, i64)>(&both).unwrap(),
            (500, 1_000),
            "as before"
        );
        assert_eq!(
            decode_bet(&both).unwrap(),
            ((500, 1_000), Some(7), Some(earlier))
        );
        let old = encode(&(500i64, 1_000i64)).unwrap();
        assert_eq!(decode_bet(&old).unwrap(), ((500, 1_000), None, None));

        let meta = Meta {
            last_sweep: 3,
            join_newest: 4,
        };
        let bounds = Bounds { floor: 5, next: 9 };
        let new = encode_then(&meta, &bounds).unwrap();
        let m: Meta = decode(&new).unwrap();
        assert_eq!((m.last_sweep, m.join_newest), (3, 4));
        let (m, b): (Meta, Option<Bounds>) = decode_then(&new).unwrap();
        assert_eq!((m.last_sweep, m.join_newest, b), (3, 4, Some(bounds)));
        let (_, b): (Meta, Option<Bounds>) = decode_then(&encode(&meta).unwrap()).unwrap();
        assert_eq!(b, None);
        assert!(
            decode_bet(&[UNIT_FORMAT, 1, 2, 0xff]).is_err(),
            "bytes after the bet that are not a number are refused"
        );
    }
}
