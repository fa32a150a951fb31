//! The engine: runs a rule set over events, one at a time, keeping per-rule, per-key windows
//! in memory. Pure: the caller passes each event and the current time (`detected_at`), and
//! gets alerts and pushes back; nothing here reads a clock, a file or the network.
//!
//! Memory is bounded: each window by its rule's duration and cap; all windows together by
//! `[engine] max_entries` (past it, the least recently active keys go); keys idle for longer
//! than their window plus `idle_after` are swept; the stake join and the scores have their own
//! bounds. [`Engine::stats`] reports what is held.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::BuildHasher;
use std::sync::Arc;

use pitboss_model::live::limits::{
    MAX_BODY_CHARS, MAX_EVIDENCE_EVENTS, MAX_GROUP_KEY, MAX_REASON_CHARS, MAX_RELATED_PLAYERS,
    MAX_TITLE_CHARS,
};
use pitboss_model::live::{
    Alert, GroupBy, LiveMessage, Measure, Push, PushSource, RuleSource, Target, alert_id, push_id,
};
use pitboss_model::validate::Violation;
use pitboss_model::{Event, Payload, Timestamp};

use crate::error::AntifraudError;
use crate::field::{Extra, Value, currency_of};
use crate::filter::SharedPreds;
use crate::join::StakeJoin;
use crate::money::Scale;
use crate::rules::{Agg, CompiledRule, RuleSet};
use crate::scoring::{Scores, recommend};
use crate::shard::{Forward, Shard};
use crate::template::Fill;
use crate::window::{
    Entry, Eval, KeyState, KeyStateV1, LastHit, Scratch, TRIGGER_BIT, Trigger, from_totals,
};

mod groups;
mod keymap;
pub(crate) mod units;
use groups::{RuleWindows, Windows};
pub use units::{Change, Changes, Pending, Unit};
use units::{Dirty, rule_tags};

/// A window key: a 128-bit hash of `(tenant, group value)` from two independently seeded
/// hashers. Keys are compared as numbers (no string to chase); two different keys share a
/// hash with probability about n² / 2¹²⁹, i.e. never in practice.
type Key = u128;

/// How the engine's tables hash a [`Key`]: seeded at random per table (foldhash). A key's own
/// seeds are fixed (saved state and shards name windows by it, across restarts and
/// processes), so whoever can choose group values — device ids, addresses, bet ids come from
/// clients — can compute their keys; with the table's hash keyed by a seed they cannot know,
/// they still cannot pile their keys into one probe sequence and make every lookup of the
/// table a scan (docs/rules.md "Keys chosen to collide").
pub(crate) type KeyHashing = foldhash::fast::RandomState;

/// What one or more events produced.
#[derive(Debug, Default)]
pub struct Output {
    pub alerts: Vec<Alert>,
    pub pushes: Vec<Push>,
    /// Messages a rule produced that break the live contract (a room template that renders to
    /// an invalid id, say): reported, never published.
    pub rejected: Vec<Rejected>,
    /// Hits for players another shard owns, to send on the forwards topic
    /// ([`crate::shard`]); always empty for an engine owning every key.
    pub forwards: Vec<Forward>,
    /// Triggers not evaluated because they arrived later than their window: older than the
    /// rule's duration before their key's newest event, whose arrival already dropped what
    /// the trigger's own window held (docs/rules.md, "Windows").
    pub late_triggers: u64,
    /// The first of those: its rule and event id (what the log names).
    pub late_first: Option<(String, String)>,
    /// Events with money in a currency the set's `[money]` table has no rate for: the rules'
    /// money values were compared with it as written (docs/rules.md, "Money in several
    /// currencies").
    pub unpriced: u64,
    /// The first such event's currency (what the log names).
    pub unpriced_first: Option<String>,
    /// Hits a `[[snooze]]` of the set silenced: no alert, no push, no points.
    pub snoozed: Vec<Snoozed>,
}

/// A hit a snooze silenced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snoozed {
    pub rule_id: String,
    pub rule_version: u32,
    pub trigger_event_id: String,
    /// The snooze: its index in the set's `snoozes`.
    pub snooze: usize,
}

impl Output {
    pub fn clear(&mut self) {
        self.alerts.clear();
        self.pushes.clear();
        self.rejected.clear();
        self.forwards.clear();
        self.late_triggers = 0;
        self.late_first = None;
        self.unpriced = 0;
        self.unpriced_first = None;
        self.snoozed.clear();
    }
}

/// A message the engine refused to publish, and why.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub rule_id: String,
    /// `alert` or `push`.
    pub message: &'static str,
    pub violations: Vec<Violation>,
}

/// What a reload kept and what it started afresh.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Rules whose id, version and window are unchanged: their windows, cooldowns carried over.
    pub kept: Vec<String>,
    /// New rules, and rules whose version or window changed: empty windows.
    pub fresh: Vec<String>,
    /// Rules no longer in the set: their state is gone.
    pub removed: Vec<String>,
    /// Of `fresh`, the rules that were there before (their version or window changed): their
    /// state is gone.
    pub reset: Vec<String>,
    /// Kept rules whose `window.bucket` changed or went, or that fold other measures (one
    /// made `exact`): events folded into the old buckets (older than the newest bucket
    /// width) are dropped, all of them or those of the measures no longer folded.
    pub refolded: Vec<String>,
}

/// What the engine holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Window keys across all rules.
    pub keys: usize,
    /// Window entries across all rules (events kept one by one).
    pub entries: usize,
    /// Entries the windows have room for (allocated; at least `entries`).
    pub entry_slots: usize,
    /// Buckets of bucketed windows across all rules (`window.bucket`).
    pub buckets: usize,
    /// Bets remembered for the settlement join.
    pub joined_bets: usize,
    /// Players with a score.
    pub scored_players: usize,
    /// Approximate bytes of all of it (windows, join, scores).
    pub bytes: usize,
    /// Of `bytes`, the settlement join's.
    pub join_bytes: usize,
    /// Of `bytes`, the scores'.
    pub score_bytes: usize,
}

/// The rules engine.
#[derive(Debug)]
pub struct Engine {
    set: RuleSet,
    /// The windows, by rule and key (in groups of rules keyed alike).
    states: Windows,
    /// Rule indexes by event type (position in `EventType::ALL`).
    by_type: [Vec<usize>; 10],
    /// The rules' filter predicates, each tested once per event.
    preds: SharedPreds,
    join: StakeJoin,
    scores: Scores,
    entries: usize,
    last_sweep: i64,
    /// Every window key once (rarely twice), by the engine time after which it is idle if
    /// nothing touches it (`last_active` + its rule's keep, as of when it was queued): the
    /// incremental sweep pops the due ones, a few per event.
    idle: BinaryHeap<Reverse<(i64, u32, Key)>>,
    /// Per rule (by index): how long a key is kept after its last event.
    keeps: Vec<i64>,
    key_hashers: (foldhash::fast::FixedState, foldhash::fast::FixedState),
    scratch: Scratch,
    hasher: foldhash::fast::FixedState,
    /// Per rule (by index): the tag naming its state in saved [`Unit`]s.
    tags: Vec<Arc<str>>,
    /// While tracking changes ([`Engine::track_changes`]): the windows touched.
    dirty: Option<Box<Dirty>>,
    /// The part of the key space this engine evaluates ([`crate::shard`]).
    shard: Shard,
    /// Whether the stake join is kept for every player's bets, not only the owned players':
    /// split, with a rule keyed by something else than the player that reads settlements.
    join_everywhere: bool,
    /// Where a hit to forward is drafted.
    draft: Output,
}

/// Whether a rule's windows live on the shard of the event's player: rules keyed by the player,
/// and by the session (a session is one player's, docs/events.md). Others (device, IP, payment
/// instrument, game) live on the shard owning their key.
fn follows_player(rule: &CompiledRule) -> bool {
    matches!(rule.group_by, GroupBy::Player | GroupBy::Session)
}

/// Whether a split engine keeps the stake join for every bet: a rule keyed by something else
/// than the player may evaluate settlements of players other shards own.
fn join_everywhere(set: &RuleSet, shard: Shard) -> bool {
    shard.is_split()
        && set
            .rules
            .iter()
            .any(|r| !follows_player(r) && r.types.contains(pitboss_model::EventType::BetSettled))
}

/// Keys checked for idleness per event, at most (the incremental sweep).
const SWEEP_PER_EVENT: usize = 32;

fn keeps(set: &RuleSet) -> Vec<i64> {
    set.rules
        .iter()
        .map(|r| units::keep_ms(r, set.limits.idle_after_ms))
        .collect()
}

fn dispatch(set: &RuleSet) -> [Vec<usize>; 10] {
    let mut by_type: [Vec<usize>; 10] = Default::default();
    for (i, r) in set.rules.iter().enumerate() {
        for t in r.types.iter() {
            by_type[crate::filter::index(t)].push(i);
        }
    }
    by_type
}

/// Parses a canonical UUID into a number.
fn event_number(id: Option<&str>) -> Result<u128, AntifraudError> {
    let id = id.ok_or_else(|| AntifraudError::Event("the event has no event_id".into()))?;
    uuid::Uuid::try_parse(id).map(|u| u.as_u128()).map_err(|_| {
        AntifraudError::Event(format!(
            "event_id {:?} is not a UUID",
            id.chars().take(64).collect::<String>()
        ))
    })
}

fn cut(text: &str, max_chars: usize, one_line: bool) -> String {
    let mut s: String = text.chars().take(max_chars).collect();
    if one_line {
        s = s.replace(['\n', '\r', '\t'], " ");
    }
    s
}

impl Engine {
    /// An engine running `set`, with empty windows.
    pub fn new(set: RuleSet) -> Engine {
        Engine {
            states: Windows::new(&set),
            by_type: dispatch(&set),
            preds: SharedPreds::new(&set),
            join: StakeJoin::new(set.limits.join_max_bets, set.limits.join_horizon_ms),
            scores: Scores::default(),
            entries: 0,
            last_sweep: i64::MIN,
            idle: BinaryHeap::new(),
            keeps: keeps(&set),
            key_hashers: KEY_HASHERS,
            scratch: Scratch::default(),
            hasher: foldhash::fast::FixedState::with_seed(0x9e37_79b9),
            tags: rule_tags(&set),
            dirty: None,
            shard: Shard::ALL,
            join_everywhere: false,
            draft: Output::default(),
            set,
        }
    }

    /// An engine running `set` over the keys `shard` owns ([`crate::shard`]), with empty
    /// windows.
    pub fn with_shard(set: RuleSet, shard: Shard) -> Engine {
        let mut e = Engine::new(set);
        e.set_shard(shard);
        e
    }

    /// Sets the part of the key space this engine evaluates, before its first event (an
    /// engine restored from a shard's state is given that shard).
    pub fn set_shard(&mut self, shard: Shard) {
        self.join_everywhere = join_everywhere(&self.set, shard);
        self.shard = shard;
    }

    /// The part of the key space this engine evaluates.
    pub fn shard(&self) -> Shard {
        self.shard
    }

    /// Whether an event of type `t` from a player this (split) engine does not own can change
    /// anything here: a rule keyed by something else than the player reads such events (or,
    /// for bets, the stake join those rules read does). When it cannot, the bus adapter skips
    /// the record without decoding it.
    pub fn reads_unowned(&self, t: pitboss_model::EventType) -> bool {
        self.by_type[crate::filter::index(t)]
            .iter()
            .any(|&ri| !follows_player(&self.set.rules[ri]))
            || self.join_everywhere && t == pitboss_model::EventType::BetPlaced
    }

    /// The running rule set.
    pub fn rules(&self) -> &RuleSet {
        &self.set
    }

    /// Swaps in a new rule set. Rules with the same id, version and window definition keep
    /// their windows and cooldowns; others start empty; removed rules' state is dropped. The
    /// join and the scores carry over. Pure and infallible: a set that loaded is valid.
    pub fn replace_rules(&mut self, set: RuleSet) -> ReloadReport {
        let mut report = ReloadReport::default();
        // Old rules by id: their index then, and whether their windows carry over.
        let mut old: HashMap<String, (usize, Arc<CompiledRule>)> = self
            .set
            .rules
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, r)| (r.id.clone(), (i, r)))
            .collect();
        // Per old rule index: the new index its windows go to.
        let mut moved: Vec<Option<usize>> = vec![None; self.set.rules.len()];
        for (ni, r) in set.rules.iter().enumerate() {
            match old.remove(&r.id) {
                Some((oi, o)) if o.version == r.version && o.signature == r.signature => {
                    report.kept.push(r.id.clone());
                    if o.bucket_ms.is_some()
                        && (o.bucket_ms != r.bucket_ms || o.fold_mask != r.fold_mask)
                    {
                        report.refolded.push(r.id.clone());
                    }
                    moved[oi] = Some(ni);
                }
                Some(_) => {
                    report.fresh.push(r.id.clone());
                    report.reset.push(r.id.clone());
                }
                None => report.fresh.push(r.id.clone()),
            }
        }
        report.removed = old.into_keys().collect();
        report.removed.sort();
        let mut states = Windows::new(&set);
        for (oi, k, mut state) in self.states.drain() {
            if let Some(ni) = moved.get(oi).copied().flatten()
                && let Some(r) = set.rules.get(ni)
            {
                // A changed `window.bucket` (or measures) gives the state a new form.
                state.conform(r);
                states.insert(ni, k, state);
            }
        }
        self.states = states;
        self.entries = self.states.iter().map(|(_, _, s)| s.held()).sum();
        self.by_type = dispatch(&set);
        self.preds = SharedPreds::new(&set);
        self.tags = rule_tags(&set);
        self.keeps = keeps(&set);
        self.join_everywhere = join_everywhere(&set, self.shard);
        // Every rule where it was, its windows as they were (a snooze, a threshold, a reason
        // edited; a rule added after the others): the windows marked changed stay so, and the
        // next save is not the whole state.
        let same_layout =
            moved.iter().enumerate().all(|(oi, ni)| *ni == Some(oi)) && report.refolded.is_empty();
        if let Some(d) = &mut self.dirty
            && !same_layout
        {
            // Rule indexes changed, or windows were dropped or refolded: the next changes are
            // the whole state (units of rules gone are deleted with it).
            d.full = true;
            d.windows.clear();
        }
        self.set = set;
        self.requeue_all();
        report
    }

    /// Loads a rule set from `(file, text)` pairs and swaps it in; on any error the running set
    /// stays and the error lists every problem.
    pub fn reload_from_sources(
        &mut self,
        files: &[(String, String)],
    ) -> Result<ReloadReport, AntifraudError> {
        let set = RuleSet::from_sources(files)?;
        Ok(self.replace_rules(set))
    }

    /// Evaluates one event at engine time `now`, appending what it raises to `out`. An event
    /// without a UUID `event_id` is refused (it belongs on the dead-letter topic).
    pub fn process(
        &mut self,
        event: &Event,
        now: Timestamp,
        out: &mut Output,
    ) -> Result<(), AntifraudError> {
        let id = event_number(event.event_id.as_deref())?;
        let t = event.occurred_at.as_millis();
        let mut extra = Extra {
            joined_stake: None,
            default_offset_min: self.set.limits.default_utc_offset_min,
            money: Scale::Same,
        };
        let Engine {
            set,
            states,
            by_type,
            preds,
            join,
            join_everywhere,
            scores,
            entries,
            key_hashers,
            scratch,
            hasher,
            dirty,
            idle,
            keeps,
            shard,
            draft,
            ..
        } = self;
        // Split ([`crate::shard`]): the player's rules and score only on the player's shard.
        let player_owned = shard.owns(&event.tenant_id, &event.player_id);
        let here = &by_type[crate::filter::index(event.event_type())];
        let mut windows = states.begin();
        let mut player_key: Option<Key> = None;
        if player_owned && here.len() > 1 {
            // Every window of the player this event will work on, read ahead at once (before
            // the stake join's own lookup): their cache misses overlap rather than come one
            // after another, rule by rule.
            let k = key_with(key_hashers, &event.tenant_id, &event.player_id);
            player_key = Some(k);
            let mut players = here
                .iter()
                .copied()
                .filter(|&ri| set.rules[ri].key_field.is_none());
            if let Some(first) = players.next() {
                windows.find(first, k);
                windows.touch(first);
                players.for_each(|ri| windows.touch(ri));
            }
        }
        if player_owned || *join_everywhere {
            match &event.payload {
                Payload::BetPlaced(b) => {
                    join.placed(&event.tenant_id, &b.bet_id, b.stake.amount_minor, t)
                }
                Payload::BetSettled(b) if b.stake.is_none() => {
                    extra.joined_stake = join.stake(&event.tenant_id, &b.bet_id)
                }
                _ => {}
            }
        }
        let currency = currency_of(event);
        let cur = currency.map_or(0, |c| (hasher.hash_one(c) as u32) | 1);
        // Money values of the rules are in the set's `[money]` currency: converted into the
        // event's where they are compared (`crate::money`).
        let money = set.money.scale(currency);
        if money == Scale::Unpriced {
            out.unpriced += 1;
            if out.unpriced_first.is_none() {
                out.unpriced_first = currency.map(str::to_owned);
            }
        }
        extra.money = money;
        let now_ms = now.as_millis();
        let key_of = |group: &str| -> Key { key_with(key_hashers, &event.tenant_id, group) };
        preds.start(event);
        for &ri in here {
            let rule = &set.rules[ri];
            let group = match &rule.key_field {
                None if player_owned => event.player_id.as_str(),
                None => continue,
                Some(f) => match f.get(event, &extra) {
                    Value::Text(s)
                        if !s.is_empty()
                            && if rule.group_by == GroupBy::Session {
                                player_owned
                            } else {
                                shard.owns(&event.tenant_id, s)
                            } =>
                    {
                        s
                    }
                    _ => continue,
                },
            };
            // Trigger-only events are kept (so a redelivered one is recognised) unless the
            // rule has a cooldown, which already stops a redelivered trigger from firing twice.
            let (mut mask, triggers) = preds.rule(ri, event, &extra);
            if triggers {
                mask |= TRIGGER_BIT;
            }
            if mask == 0 {
                continue;
            }
            let k: Key = if rule.key_field.is_none() {
                *player_key.get_or_insert_with(|| key_of(group))
            } else {
                key_of(group)
            };
            let keep = keeps.get(ri).copied().unwrap_or(0);
            let Some(slot) = windows.slot(ri, k) else {
                continue;
            };
            if let Some(s) = slot.as_mut()
                && now_ms > s.last_active.saturating_add(keep)
            {
                // Idle past its keep: what the idle sweep drops. The sweep runs on the clock of
                // whatever events come (other players', other tenants'), so without this the
                // key's own history decided nothing: a player back after a long break kept or
                // lost a `max_events` window as unrelated traffic happened to pass (a backtest
                // of one tenant, or a quiet hour, disagreed with the live engine). Reset in
                // place: its idle-queue entry stays, and is requeued when it comes due.
                *entries = entries.saturating_sub(s.held());
                *s = KeyState::default();
            }
            let state = slot.get_or_insert_with(|| {
                idle.push(Reverse((now_ms.saturating_add(keep), ri as u32, k)));
                KeyState::default()
            });
            if let Some(d) = dirty {
                d.windows.insert(ri as u32, k);
            }
            let mut vals = [f64::NAN; crate::rules::MAX_SLOTS];
            for (slot, f) in rule.slots.iter().enumerate() {
                vals[slot] = f.get(event, &extra).number().unwrap_or(f64::NAN);
            }
            let (tag, label) = match &rule.distinct {
                Some(f) => {
                    let v = f.get(event, &extra);
                    let tag = match v {
                        Value::Text(s) => hasher.hash_one(s),
                        Value::Missing => 0,
                        other => hasher.hash_one(format!("{other:?}")),
                    };
                    let label = rule.keep_labels.then(|| event.player_id.as_str().into());
                    (tag, label)
                }
                None => (0, None),
            };
            // Never moved back: an event read late (a shared key across partitions) must not
            // make the key look idle since long ago.
            state.last_active = state.last_active.max(now_ms);
            let mut held = None;
            let mut folded = false;
            // The horizon the window was last expired to in this event: expiring to one at or
            // before it again does nothing (the usual trigger, the key's newest event, after
            // its own insertion), and is not done.
            let mut expired: Option<i64> = None;
            let mut unkept = None;
            if mask & !TRIGGER_BIT != 0 || rule.cooldown_ms == 0 {
                let before = state.held();
                let ins = state.insert(Entry::new(id, t, mask, cur, vals, tag, label), rule);
                if !ins.fresh {
                    continue;
                }
                *entries = (*entries + state.held()).saturating_sub(before);
                folded = ins.folded;
                expired = ins.expired;
                // Read only for a trigger a measure excludes: the window's oldest event is
                // one or two cache misses (the deque's front, a bucketed window's first head),
                // and not read for the key's newest event (the window, which it joined, holds
                // nothing later).
                held = (triggers
                    && rule.excludes_trigger
                    && (t >= state.newest || state.oldest().is_some_and(|o| o <= t)))
                .then_some((mask, vals));
            } else if state.holds(id, t) {
                // A trigger not kept, sent again after it fired (kept since, below).
                continue;
            } else {
                unkept = Some(Entry::new(id, t, mask, cur, vals, tag, label));
            }
            if !triggers {
                continue;
            }
            // An event read after later ones of its key (a device or an address shared by
            // players, read across partitions out of time order; a player's event a client
            // sent again late, with its first `occurred_at`) is evaluated against the window up
            // to the key's newest event, so a threshold it completes still fires — on it —
            // rather than on neither (as of its own time it would miss the later events, and
            // they, evaluated first, missed it). Its cooldown counts from that time too. A
            // player's late event is evaluated as of its own time first, and up to the newest
            // event only if that does not fire and the window counts the event itself (a bet
            // of a burst completes the burst); a trigger the window only judges (a withdrawal
            // after failed logins, deposits, bonuses) is judged on what came before it alone:
            // logins stamped after a withdrawal are not "failed logins, then a withdrawal".
            let newest = t.max(state.newest);
            let counted = mask & !TRIGGER_BIT != 0;
            let first = if follows_player(rule) { t } else { newest };
            let newest = if follows_player(rule) && !counted {
                t
            } else {
                newest
            };
            if let Some(d) = rule.duration_ms
                && state.newest > t
                && t <= state.newest.saturating_sub(d)
            {
                // Read so late that it lies before the window up to the key's newest
                // event (a player's withdrawal sent an hour after later events, say):
                // what its own window held is gone, so it is not evaluated — counted, so
                // it is seen (`Output::late_triggers`).
                out.late_triggers += 1;
                if out.late_first.is_none() {
                    out.late_first =
                        Some((rule.id.clone(), event.event_id.clone().unwrap_or_default()));
                }
                continue;
            }
            let times = [first, newest];
            let mut fired = None;
            for &at in &times[..if first < newest { 2 } else { 1 }] {
                if rule.cooldown_ms > 0
                    && state
                        .last_hit
                        .get()
                        .is_some_and(|h| (at - h).abs() < rule.cooldown_ms)
                {
                    continue;
                }
                if let Some(d) = rule.duration_ms
                    && expired.is_none_or(|e| e < at.saturating_sub(d))
                {
                    let before = state.held();
                    state.expire(at.saturating_sub(d), rule);
                    expired = Some(at.saturating_sub(d));
                    *entries = (*entries + state.held()).saturating_sub(before);
                }
                // The conditions the window's running totals decide, judged first: most
                // triggers fail one (a burst not reached, too few bets before), and are done
                // without evaluating the rule.
                let fails = rule.conditions.iter().any(|c| {
                    let (true, Some(m), Some(th)) =
                        (c.totals, rule.measures.get(c.measure), c.value)
                    else {
                        return false;
                    };
                    let th = c.threshold(th, money);
                    from_totals(c.measure, m, state, at, cur, held.as_ref())
                        .is_some_and(|v| !v.or(m.default).is_some_and(|v| c.cmp.holds(v, th)))
                });
                if fails {
                    continue;
                }
                let trig = Trigger {
                    id,
                    t: at,
                    own_t: t,
                    cur,
                    held,
                    folded,
                };
                let current = |i: usize| {
                    let m = &rule.measures[i];
                    m.field.as_ref().and_then(|f| f.get(event, &extra).number())
                };
                let eval = Eval {
                    rule,
                    state,
                    trig: &trig,
                    current,
                };
                eval.reset(scratch);
                scratch.thresholds.clear();
                scratch.thresholds.resize(rule.measures.len(), None);
                scratch.cond_thresholds.clear();
                let mut all = true;
                for c in &rule.conditions {
                    let threshold = match (c.value, c.baseline) {
                        (Some(v), _) => Some(c.threshold(v, money)),
                        (None, Some(b)) => eval.get(b, scratch).map(|v| v * c.factor),
                        (None, None) => None,
                    };
                    let holds = match (eval.get(c.measure, scratch), threshold) {
                        (Some(v), Some(th)) => c.cmp.holds(v, th),
                        _ => false,
                    };
                    scratch.thresholds[c.measure] = threshold;
                    scratch.cond_thresholds.push(threshold);
                    if !holds {
                        all = false;
                        break;
                    }
                }
                if all {
                    eval.all(scratch);
                    fired = Some(at);
                    break;
                }
            }
            let Some(at) = fired else {
                continue;
            };
            // Snoozed for this group value (docs/rules.md, "Snoozes"): as if it had not fired
            // (no cooldown starts, no points), counted. Looked up on hits alone.
            if !set.snoozes().is_empty()
                && let Some(snooze) = set.snoozed(&rule.id, &event.tenant_id, group, k, at)
            {
                out.snoozed.push(Snoozed {
                    rule_id: rule.id.clone(),
                    rule_version: rule.version,
                    trigger_event_id: event.event_id.clone().unwrap_or_default(),
                    snooze,
                });
                // Kept as a fired trigger is (below): sent again, it is recognised.
                if let Some(entry) = unkept.take() {
                    let before = state.held();
                    state.insert(entry, rule);
                    *entries = (*entries + state.held()).saturating_sub(before);
                }
                continue;
            }
            // Never moved back by a late trigger (its cooldown counted from `at`).
            state.last_hit = LastHit::at(state.last_hit.get().map_or(at, |h| h.max(at)));
            // A shared key's finding (a device, an address) adds its points to a player once
            // per scoring window: raised again every cooldown while a family shares a tablet,
            // it took the son to `block` with nothing new found.
            // (A player rule's tag is the hash as before the bit existed, so hits saved by an
            // older engine still match; one that happens to have the bit set dedups the same:
            // its tag recurs only for the same rule and event, so at the same time.)
            let tag = if follows_player(rule) {
                hasher.hash_one((&rule.id, id)) as u32
            } else {
                hasher.hash_one((&rule.id, group)) as u32 | crate::scoring::ONCE
            };
            // Split, a player another shard owns: that shard adds the points and sets the
            // total, so the hit is drafted with its own points alone and sent there.
            let total = if player_owned {
                scores.add(
                    key_player(&event.tenant_id, &event.player_id).as_str(),
                    t,
                    rule.score,
                    tag,
                    &set.scoring,
                    set.limits.max_scored_players,
                )
            } else {
                rule.score
            };
            let hit = Hit {
                rule,
                event,
                extra: &extra,
                state,
                group,
                total,
                now,
                scratch,
                at,
                cur,
            };
            if player_owned {
                hit.emit(set, out);
            } else {
                draft.clear();
                hit.emit(set, draft);
                out.rejected.append(&mut draft.rejected);
                out.forwards.push(Forward {
                    tenant_id: event.tenant_id.clone(),
                    player_id: event.player_id.clone(),
                    t,
                    score: rule.score,
                    tag,
                    alert: draft.alerts.pop(),
                    push: draft.pushes.pop(),
                });
            }
            // A trigger the window does not keep (a rule with a cooldown keeps only what its
            // measures read, the cooldown stopping a redelivery at the same time) is kept once
            // it fired, after its alert is built from the window as it was: sent again after a
            // later hit moved the cooldown on, it fired again.
            if let Some(entry) = unkept.take() {
                let before = state.held();
                state.insert(entry, rule);
                *entries = (*entries + state.held()).saturating_sub(before);
            }
        }
        self.sweep_idle(now_ms, SWEEP_PER_EVENT);
        if now_ms.saturating_sub(self.last_sweep) >= self.set.limits.sweep_every_ms {
            self.last_sweep = now_ms;
            self.scores.sweep(now_ms, &self.set.scoring);
        }
        if self.entries > self.set.limits.max_entries {
            self.evict_least_active();
        }
        Ok(())
    }

    /// Applies a hit another shard raised for a player this one owns ([`crate::shard`]): adds
    /// its points to the player's score (once, however often it comes), sets the alert's total
    /// and recommendation, and appends its alert and push to `out`. A forward for a player
    /// this engine does not own is ignored.
    pub fn apply_forward(&mut self, forward: Forward, out: &mut Output) {
        if !self.shard.owns(&forward.tenant_id, &forward.player_id) {
            return;
        }
        let total = self.scores.add(
            key_player(&forward.tenant_id, &forward.player_id).as_str(),
            forward.t,
            forward.score,
            forward.tag,
            &self.set.scoring,
            self.set.limits.max_scored_players,
        );
        if let Some(mut alert) = forward.alert {
            alert.total_score = total;
            alert.recommendation = recommend(total, &self.set.scoring);
            out.alerts.push(alert);
        }
        out.pushes.extend(forward.push);
    }

    /// The incremental sweep: checks up to `budget` keys whose idle time is due, dropping those
    /// idle (by engine time) for longer than their window plus `idle_after` and queueing the
    /// others again at their new due time. A key is checked when it may have become idle, not
    /// on every sweep, so an event costs at most `budget` lookups.
    fn sweep_idle(&mut self, now_ms: i64, budget: usize) {
        for _ in 0..budget {
            let Some(Reverse((due, ri, k))) = self.idle.peek().copied() else {
                return;
            };
            if due >= now_ms {
                return;
            }
            self.idle.pop();
            let Some(s) = self.states.get(ri as usize, &k) else {
                // Gone already (evicted, reloaded).
                continue;
            };
            let keep = self.keeps.get(ri as usize).copied().unwrap_or(0);
            let due = s.last_active.saturating_add(keep);
            if now_ms > due {
                if let Some(s) = self.states.remove(ri as usize, &k) {
                    self.entries = self.entries.saturating_sub(s.held());
                }
                if let Some(d) = &mut self.dirty {
                    d.windows.insert(ri, k);
                }
            } else {
                self.idle.push(Reverse((due, ri, k)));
            }
        }
    }

    /// Queues every key afresh (after a reload, a restore, a full sweep).
    fn requeue_all(&mut self) {
        let q: Vec<_> = self
            .states
            .iter()
            .map(|(ri, k, s)| {
                let keep = self.keeps.get(ri).copied().unwrap_or(0);
                Reverse((s.last_active.saturating_add(keep), ri as u32, *k))
            })
            .collect();
        self.idle = BinaryHeap::from(q);
    }

    /// Drops keys idle (by engine time) for longer than their window plus `idle_after`, scores
    /// out of their window, and, while over `max_entries`, the least recently active keys.
    pub fn sweep(&mut self, now: Timestamp) {
        let now_ms = now.as_millis();
        self.last_sweep = now_ms;
        let idle = self.set.limits.idle_after_ms;
        let keeps: Vec<i64> = self
            .set
            .rules
            .iter()
            .map(|r| units::keep_ms(r, idle))
            .collect();
        let dirty = &mut self.dirty;
        self.states.retain(|ri, k, s| {
            let keep = keeps.get(ri).copied().unwrap_or(0);
            let kept = now_ms.saturating_sub(s.last_active) <= keep;
            if !kept && let Some(d) = dirty {
                d.windows.insert(ri as u32, *k);
            }
            kept
        });
        self.scores.sweep(now_ms, &self.set.scoring);
        self.entries = self.states.iter().map(|(_, _, s)| s.held()).sum();
        self.evict_least_active();
        self.requeue_all();
    }

    /// While over `max_entries`, drops the least recently active keys, to 90 % of the bound.
    fn evict_least_active(&mut self) {
        let max = self.set.limits.max_entries;
        if self.entries > max {
            // Least recently active first, until 90 % of the bound.
            let mut all: Vec<(i64, usize, Key)> = self
                .states
                .iter()
                .map(|(ri, k, s)| (s.last_active, ri, *k))
                .collect();
            all.sort_unstable();
            let target = max / 10 * 9;
            for (_, ri, k) in all {
                if self.entries <= target {
                    break;
                }
                if let Some(s) = self.states.remove(ri, &k) {
                    self.entries = self.entries.saturating_sub(s.held());
                    if let Some(d) = &mut self.dirty {
                        d.windows.insert(ri as u32, k);
                    }
                }
            }
            // The queue no longer names some keys; a key made again must be queued once.
            self.requeue_all();
        }
    }

    /// What the engine holds now (walks every key: for diagnostics and benchmarks, not per event).
    pub fn stats(&self) -> EngineStats {
        let mut walk = StatsWalk::default();
        loop {
            if let Some(s) = self.stats_step(&mut walk, usize::MAX) {
                return s;
            }
        }
    }

    /// [`Engine::stats`] a few of the windows' map parts at a time (each a 256th of a rule's
    /// keys), so a caller on the engine's thread spreads the walk over many calls: none takes
    /// long however many keys the engine holds. Returns the totals on the call that completes
    /// the walk; the state may change between calls, so they are as of no single instant.
    pub fn stats_step(&self, walk: &mut StatsWalk, parts: usize) -> Option<EngineStats> {
        let total = self.states.parts();
        let end = walk.next.saturating_add(parts).min(total);
        let s = &mut walk.acc;
        for i in walk.next..end {
            let Some(part) = self.states.part(i) else {
                break;
            };
            for group in part.values() {
                // The map slot and the group's row of states.
                s.bytes += std::mem::size_of::<(Key, groups::Group)>()
                    + 1
                    + std::mem::size_of_val::<[Option<KeyState>]>(group);
                for k in group.iter().flatten() {
                    s.keys += 1;
                    s.bytes += k.heap_bytes();
                    s.entries += k.entries.len();
                    s.entry_slots += k.entries.capacity();
                    s.buckets += k.held() - k.entries.len();
                }
            }
        }
        walk.next = end;
        if end < total {
            return None;
        }
        let mut s = std::mem::take(walk).acc;
        s.bytes += self.idle.capacity() * std::mem::size_of::<Reverse<(i64, u32, Key)>>();
        s.joined_bets = self.join.len();
        s.scored_players = self.scores.len();
        s.join_bytes = self.join.bytes();
        s.score_bytes = self.scores.bytes();
        s.bytes += s.join_bytes + s.score_bytes;
        Some(s)
    }
}

/// Where a walk of [`Engine::stats_step`] got to, and its totals so far.
#[derive(Debug, Default)]
pub struct StatsWalk {
    next: usize,
    acc: EngineStats,
}

/// The snapshot format written; format 1 (before buckets: window states without them) is still
/// read. A snapshot of another format is refused (the caller starts cold).
/// The whole-engine snapshot's format: 3 since hits keep their tags and windows the ids of
/// events folded on arrival (2: buckets; 1: before them). Formats 1 and 2 are still read.
const SNAPSHOT_FORMAT: u32 = 3;

/// A rule's state in a snapshot, written from borrowed state.
#[derive(serde::Serialize)]
struct RuleStateOut<'a> {
    id: &'a str,
    version: u32,
    signature: &'a str,
    keys: RuleWindows<'a>,
}

#[derive(serde::Serialize)]
struct SnapshotOut<'a, S> {
    format: u32,
    rules: Vec<RuleStateOut<'a>>,
    join: (Vec<(u64, i64, i64)>, i64),
    scores: Vec<S>,
    last_sweep: i64,
}

#[derive(serde::Deserialize)]
struct RuleStateIn<K> {
    id: String,
    version: u32,
    signature: String,
    keys: HashMap<Key, K, KeyHashing>,
}

#[derive(serde::Deserialize)]
struct SnapshotIn<K, S = crate::scoring::TaggedHits> {
    format: u32,
    rules: Vec<RuleStateIn<K>>,
    join: (Vec<(u64, i64, i64)>, i64),
    scores: Vec<S>,
    last_sweep: i64,
}

impl<K, S> SnapshotIn<K, S> {
    /// The same snapshot with each window's state made by `f`.
    fn map_states<L>(self, f: impl Fn(K) -> L) -> SnapshotIn<L, S> {
        SnapshotIn {
            format: self.format,
            rules: self
                .rules
                .into_iter()
                .map(|r| RuleStateIn {
                    id: r.id,
                    version: r.version,
                    signature: r.signature,
                    keys: r.keys.into_iter().map(|(k, v)| (k, f(v))).collect(),
                })
                .collect(),
            join: self.join,
            scores: self.scores,
            last_sweep: self.last_sweep,
        }
    }
}

impl<K> SnapshotIn<K, crate::scoring::PlayerHits> {
    /// Formats 1 and 2: hits without tags.
    fn tagged(self) -> SnapshotIn<K> {
        SnapshotIn {
            format: self.format,
            rules: self.rules,
            join: self.join,
            scores: crate::scoring::Scores::tag_untagged(self.scores),
            last_sweep: self.last_sweep,
        }
    }
}

impl Engine {
    /// The engine's whole state (windows, cooldowns, the stake join, scores) as bytes, to be
    /// restored with [`Engine::restore`] after a restart: the same events then raise the same
    /// alerts and pushes (same ids) as if the engine had never stopped.
    pub fn snapshot(&self) -> Result<Vec<u8>, AntifraudError> {
        self.snapshot_as(SNAPSHOT_FORMAT, self.scores.export())
    }

    /// The snapshot in `format`, with the scores as given (this build writes format 3, tagged).
    fn snapshot_as<S: serde::Serialize>(
        &self,
        format: u32,
        scores: Vec<S>,
    ) -> Result<Vec<u8>, AntifraudError> {
        let out = SnapshotOut {
            format,
            rules: self
                .set
                .rules
                .iter()
                .enumerate()
                .map(|(ri, r)| RuleStateOut {
                    id: &r.id,
                    version: r.version,
                    signature: &r.signature,
                    keys: RuleWindows {
                        windows: &self.states,
                        rule: ri,
                        late: format >= 3,
                    },
                })
                .collect(),
            join: self.join.export(),
            scores,
            last_sweep: self.last_sweep,
        };
        postcard::to_stdvec(&out).map_err(|e| AntifraudError::Snapshot(format!("encoding: {e}")))
    }

    /// An engine running `set` with the state of `snapshot`. Like [`Engine::replace_rules`],
    /// rules with the same id, version and window definition get their windows back; others
    /// start empty. Refused (the caller starts cold) when the bytes are not a snapshot of this
    /// format.
    pub fn restore(
        set: RuleSet,
        snapshot: &[u8],
    ) -> Result<(Engine, ReloadReport), AntifraudError> {
        let unreadable = |e: postcard::Error| AntifraudError::Snapshot(format!("unreadable: {e}"));
        let (format, _) = postcard::take_from_bytes::<u32>(snapshot).map_err(unreadable)?;
        let snap: SnapshotIn<KeyState> = match format {
            SNAPSHOT_FORMAT => {
                postcard::from_bytes::<SnapshotIn<(KeyState, Vec<crate::window::Late>)>>(snapshot)
                    .map_err(unreadable)?
                    .map_states(|(mut s, late)| {
                        s.set_late_ids(late);
                        s
                    })
            }
            2 => postcard::from_bytes::<SnapshotIn<KeyState, crate::scoring::PlayerHits>>(snapshot)
                .map_err(unreadable)?
                .tagged(),
            1 => {
                postcard::from_bytes::<SnapshotIn<KeyStateV1, crate::scoring::PlayerHits>>(snapshot)
                    .map_err(unreadable)?
                    .map_states(KeyState::from)
                    .tagged()
            }
            f => {
                return Err(AntifraudError::Snapshot(format!(
                    "format {f} (this build reads 1 to {SNAPSHOT_FORMAT})"
                )));
            }
        };
        let mut engine = Engine::new(set);
        let mut old: HashMap<String, RuleStateIn<KeyState>> =
            snap.rules.into_iter().map(|r| (r.id.clone(), r)).collect();
        let mut report = ReloadReport::default();
        for (ri, r) in engine.set.rules.iter().enumerate() {
            match old.remove(&r.id) {
                Some(o) if o.version == r.version && o.signature == r.signature => {
                    report.kept.push(r.id.clone());
                    for (k, mut state) in o.keys {
                        state.conform(r);
                        engine.states.insert(ri, k, state);
                    }
                }
                _ => report.fresh.push(r.id.clone()),
            }
        }
        report.removed = old.into_keys().collect();
        report.removed.sort();
        engine.entries = engine.states.iter().map(|(_, _, s)| s.held()).sum();
        engine.join.import(snap.join.0, snap.join.1);
        engine.scores.import(snap.scores);
        engine.last_sweep = snap.last_sweep;
        engine.requeue_all();
        Ok((engine, report))
    }
}

#[cfg(test)]
impl Engine {
    /// Every scored hit's tag, for tests.
    pub(crate) fn hit_tags(&self) -> Vec<u32> {
        self.scores
            .export()
            .iter()
            .flat_map(|(_, h)| h.iter().map(|x| x.2))
            .collect()
    }

    /// The whole state as a build before hit tags wrote it (snapshot format 2), for tests.
    pub(crate) fn snapshot_format2(&self) -> Vec<u8> {
        self.snapshot_as(2, self.scores.export_untagged())
            .expect("encoding")
    }

    /// The whole state as a build before buckets wrote it (snapshot format 1), for tests; the
    /// windows must have no buckets.
    pub(crate) fn snapshot_format1(&self) -> Vec<u8> {
        use crate::window::KeyStateV1Ref;
        #[derive(serde::Serialize)]
        struct Rule<'a> {
            id: &'a str,
            version: u32,
            signature: &'a str,
            keys: Vec<(Key, KeyStateV1Ref<'a>)>,
        }
        #[derive(serde::Serialize)]
        struct Snap<'a> {
            format: u32,
            rules: Vec<Rule<'a>>,
            join: (Vec<(u64, i64, i64)>, i64),
            scores: Vec<(&'a str, std::collections::VecDeque<(i64, u32)>)>,
            last_sweep: i64,
        }
        let snap = Snap {
            format: 1,
            rules: self
                .set
                .rules
                .iter()
                .enumerate()
                .map(|(ri, r)| Rule {
                    id: &r.id,
                    version: r.version,
                    signature: &r.signature,
                    keys: self
                        .states
                        .rule(ri)
                        .map(|(k, s)| {
                            assert!(s.buckets.is_none());
                            (*k, KeyStateV1Ref::of(s))
                        })
                        .collect(),
                })
                .collect(),
            join: self.join.export(),
            scores: self.scores.export_untagged(),
            last_sweep: self.last_sweep,
        };
        postcard::to_stdvec(&snap).expect("encoding")
    }
}

/// The two hashers of a window key: fixed seeds, since saved state and shards name a window by
/// its key.
const KEY_HASHERS: (foldhash::fast::FixedState, foldhash::fast::FixedState) = (
    foldhash::fast::FixedState::with_seed(0x243f_6a88_85a3_08d3),
    foldhash::fast::FixedState::with_seed(0x1319_8a2e_0370_7344),
);

/// The key the windows of group value `value` (a player, device, address…) of `tenant` are
/// kept under: the same in every process and version, as saved state names windows by it.
/// Anyone can compute it; the engine's tables hash it again with seeds of their own
/// ([`KeyHashing`]). For tools and benchmarks.
pub fn window_key(tenant: &str, value: &str) -> u128 {
    key_with(&KEY_HASHERS, tenant, value)
}

/// The window key of `tenant:group`: 128 bits from two hashers.
fn key_with(
    hashers: &(foldhash::fast::FixedState, foldhash::fast::FixedState),
    tenant: &str,
    group: &str,
) -> Key {
    (u128::from(hashers.0.hash_one((tenant, group))) << 64)
        | u128::from(hashers.1.hash_one((tenant, group)))
}

fn key_player(tenant: &str, player: &str) -> String {
    let mut k = String::with_capacity(tenant.len() + 1 + player.len());
    k.push_str(tenant);
    k.push('\u{1f}');
    k.push_str(player);
    k
}

fn uuid_text(id: u128) -> String {
    uuid::Uuid::from_u128(id).hyphenated().to_string()
}

/// One rule hit, turned into its alert and push.
struct Hit<'a> {
    rule: &'a CompiledRule,
    event: &'a Event,
    extra: &'a Extra,
    state: &'a KeyState,
    group: &'a str,
    total: u32,
    now: Timestamp,
    scratch: &'a Scratch,
    /// The time the window was evaluated at and the trigger's currency (packed), which bound
    /// what the measures counted.
    at: i64,
    cur: u32,
}

/// What one condition measure counts ([`Hit::evidence`]).
struct Counted {
    bit: u32,
    /// Events at or before this are older than the measure's span (`within`, else the window).
    lo: i64,
    /// Events before this precede the measure's `since` anchor.
    from: i64,
    /// A money measure counts only events in the trigger's currency (0: any).
    cur: u32,
    /// What is left of the measure's `last`.
    left: usize,
    exclude_trigger: bool,
}

impl Hit<'_> {
    /// The window's events the measures in `mask` counted, newest first as they count them,
    /// the trigger left out: each within its measure's span, after its `since` anchor, in the
    /// trigger's currency for a money measure and among its `last`. The walk stops once every
    /// measure has counted all it can.
    fn counted(&self, mask: u32, trig: u128) -> Vec<&Entry> {
        let rule = self.rule;
        let entries = &self.state.entries;
        let mut counted: Vec<Counted> = Vec::new();
        for (i, m) in rule.measures.iter().enumerate() {
            let bit = 1u32 << i;
            if mask & bit == 0 {
                continue;
            }
            let lo = m
                .within_ms
                .or(rule.duration_ms)
                .map_or(i64::MIN, |w| self.at.saturating_sub(w));
            let from = match m.since {
                Some(a) => {
                    let abit = 1u32 << a;
                    match entries
                        .iter()
                        .rev()
                        .find(|e| e.mask & abit != 0 && e.t <= self.at && e.t > lo)
                    {
                        Some(e) => e.t,
                        // No anchor: the measure counts nothing.
                        None => continue,
                    }
                }
                None => i64::MIN,
            };
            counted.push(Counted {
                bit,
                lo,
                from,
                cur: if m.money { self.cur } else { 0 },
                left: m.last.unwrap_or(usize::MAX),
                exclude_trigger: m.exclude_trigger,
            });
        }
        let mut out = Vec::new();
        for e in entries.iter().rev() {
            if e.t > self.at {
                continue;
            }
            if counted
                .iter()
                .all(|c| c.left == 0 || e.t <= c.lo || e.t < c.from)
            {
                break;
            }
            let is_trigger = e.id() == trig;
            let mut any = false;
            for c in &mut counted {
                if e.mask & c.bit != 0
                    && e.t > c.lo
                    && e.t >= c.from
                    && (c.cur == 0 || e.cur == c.cur)
                    && c.left > 0
                    && !(is_trigger && c.exclude_trigger)
                {
                    c.left -= 1;
                    any = true;
                }
            }
            if any && !is_trigger {
                out.push(e);
            }
        }
        out
    }

    fn emit(&self, set: &RuleSet, out: &mut Output) {
        let rule = self.rule;
        let event = self.event;
        let trigger_id = event.event_id.clone().unwrap_or_default();
        let currency = currency_of(event);
        let fill = Fill {
            event,
            extra: self.extra,
            values: &self.scratch.values,
            thresholds: &self.scratch.thresholds,
            currency,
            group_key: self.group,
            rule_id: &rule.id,
        };
        let id = alert_id(&rule.id, rule.version, &trigger_id);
        let received_at = event.received_at.unwrap_or(self.now);
        if rule.alert {
            let measures = rule
                .conditions
                .iter()
                .zip(&self.scratch.cond_thresholds)
                .filter_map(|(c, threshold)| {
                    let m = &rule.measures[c.measure];
                    let value = self.scratch.values[c.measure]?;
                    let threshold = (*threshold)?;
                    Some(Measure {
                        name: m.name.clone(),
                        value,
                        threshold,
                        comparison: c.cmp,
                        currency: (m.money
                            || m.agg == Agg::Current
                                && m.field.as_ref().is_some_and(|f| f.is_money()))
                        .then(|| currency.map(str::to_owned))
                        .flatten(),
                        window_ms: m
                            .windowed
                            .then(|| m.within_ms.or(rule.duration_ms))
                            .flatten()
                            .map(|w| w as u64),
                        // A threshold relative to another measure says which, and how.
                        baseline: (c.value.is_none())
                            .then(|| c.baseline.map(|b| rule.measures[b].name.clone()))
                            .flatten(),
                        factor: (c.value.is_none() && c.baseline.is_some()).then_some(c.factor),
                    })
                })
                .collect();
            let cond_mask: u32 = rule
                .conditions
                .iter()
                .flat_map(|c| [Some(c.measure), c.baseline])
                .flatten()
                .flat_map(|i| {
                    let m = &rule.measures[i];
                    match m.of {
                        Some((a, b)) => vec![a, b],
                        None => vec![i],
                    }
                })
                .filter(|i| rule.measures[*i].windowed)
                .fold(0, |acc, i| acc | 1 << i);
            let trig = uuid::Uuid::try_parse(&trigger_id).map_or(0, |u| u.as_u128());
            let mut evidence: Vec<String> = self
                .counted(cond_mask, trig)
                .into_iter()
                .take(MAX_EVIDENCE_EVENTS)
                .map(|e| uuid_text(e.id()))
                .collect();
            evidence.reverse();
            let mut related: Vec<String> = Vec::new();
            if rule.group_by != GroupBy::Player {
                // The players the distinct count counted (its events and `where`, span, `since`
                // and `last`), not every player some other measure keeps in the window.
                let distinct_mask = (0..rule.measures.len())
                    .filter(|i| rule.measures[*i].agg == crate::rules::Agg::CountDistinct)
                    .fold(0u32, |acc, i| acc | 1 << i);
                let mask = if distinct_mask != 0 {
                    distinct_mask
                } else {
                    cond_mask
                };
                // As the measures counted them (span, `since`, `last`), oldest first.
                for e in self.counted(mask, trig).into_iter().rev() {
                    if let Some(l) = e.label()
                        && e.mask & mask != 0
                        && l != event.player_id
                        && !related.iter().any(|r| *r == l)
                        && related.len() < MAX_RELATED_PLAYERS
                    {
                        related.push(l.to_string());
                    }
                }
            }
            let group_key = if rule.group_by == GroupBy::Player {
                event.player_id.clone()
            } else {
                truncate_bytes(self.group, MAX_GROUP_KEY)
            };
            let alert = Alert {
                alert_id: id.clone(),
                tenant_id: event.tenant_id.clone(),
                player_id: Some(event.player_id.clone()),
                rule_id: rule.id.clone(),
                rule_version: rule.version,
                category: rule.category,
                severity: rule.severity,
                score: rule.score,
                total_score: self.total,
                recommendation: recommend(self.total, &set.scoring),
                group_by: rule.group_by,
                group_key,
                related_player_ids: related,
                reason: cut(&rule.reason.render(&fill), MAX_REASON_CHARS, true),
                measures,
                trigger_event_id: trigger_id.clone(),
                evidence_event_ids: evidence,
                event_time: event.occurred_at,
                received_at,
                detected_at: self.now,
            };
            match alert.validate() {
                Ok(()) => out.alerts.push(alert),
                Err(violations) => out.rejected.push(Rejected {
                    rule_id: rule.id.clone(),
                    message: "alert",
                    violations,
                }),
            }
        }
        // No push for an event flagged late by ingest (older than its lateness horizon, 7 days
        // by default): a backlog replayed after an outage must not nudge players about last
        // week's play as if it were now ("you have lost … in the last hour"). The alert is
        // raised as for any event; operators see its event time.
        if let Some(p) = rule.push.as_ref().filter(|_| !event.late) {
            let target = match &p.room {
                Some(room) => Target::Room(room.render(&fill)),
                None => Target::Player(event.player_id.clone()),
            };
            let mut data = serde_json::Map::new();
            for (i, m) in rule.measures.iter().enumerate() {
                // Whole numbers (counts, money in minor units) as integers: 50000, not 50000.0.
                let n = match self.scratch.values[i] {
                    Some(v) if v.fract() == 0.0 && v.abs() < 9.0e15 => {
                        Some(serde_json::Number::from(v as i64))
                    }
                    Some(v) => serde_json::Number::from_f64(v),
                    None => None,
                };
                if let Some(n) = n {
                    data.insert(m.name.clone(), serde_json::Value::Number(n));
                }
            }
            // Money measures are minor units of the trigger's currency: named, so a game
            // client can format them (unless a measure has that name).
            if rule.measures.iter().any(|m| m.money)
                && let Some(c) = currency
            {
                data.entry("currency")
                    .or_insert_with(|| serde_json::Value::String(c.to_owned()));
            }
            let push = Push {
                push_id: push_id(&rule.id, rule.version, &trigger_id, &target),
                tenant_id: event.tenant_id.clone(),
                target,
                kind: p.kind.clone(),
                title: cut(&p.title.render(&fill), MAX_TITLE_CHARS, true),
                body: cut(&p.body.render(&fill), MAX_BODY_CHARS, false),
                data,
                source: PushSource::Rule(RuleSource {
                    rule_id: rule.id.clone(),
                    rule_version: rule.version,
                    alert_id: rule.alert.then_some(id),
                    trigger_event_id: trigger_id,
                }),
                event_time: event.occurred_at,
                received_at,
                created_at: self.now,
                expires_at: p
                    .expires_ms
                    .map(|e| Timestamp::from_millis(self.now.as_millis().saturating_add(e))),
            };
            match push.validate() {
                Ok(()) => out.pushes.push(push),
                Err(violations) => out.rejected.push(Rejected {
                    rule_id: rule.id.clone(),
                    message: "push",
                    violations,
                }),
            }
        }
    }
}

fn truncate_bytes(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}
