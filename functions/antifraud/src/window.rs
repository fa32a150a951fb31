//! One key's window of one rule: its events in time order (each reduced to the few values the
//! rule's measures read), deduplicated by event id, bounded by the rule's duration and cap; and
//! the measures computed over it.

use std::collections::VecDeque;

use crate::rules::{Agg, CompiledRule, MAX_SLOTS, Measure};

/// Bit of [`Entry::mask`] marking an event that triggered the rule (kept so a redelivered
/// trigger is recognised).
pub(crate) const TRIGGER_BIT: u32 = 1 << 31;

/// Slots an entry holds inline ([`Entry::vals`]); a rule's further slots (up to
/// [`MAX_SLOTS`]) live in [`Entry::more`].
pub(crate) const INLINE_SLOTS: usize = 2;

/// One event as a window keeps it: 64 bytes, one cache line's worth (it was 80 with four
/// slots inline; the shipped rules read at most two fields, and the 16 bytes were 7 % of the
/// engine's time, docs/benchmarks.md). Written as before: the id as a `u128`, four slot
/// values, the label as an optional string ([`EntryForm`]).
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// The event id (a UUID) as a number, in two halves ([`Entry::id`]): the dedup key and the
    /// evidence.
    pub id: [u64; 2],
    /// `occurred_at`, ms.
    pub t: i64,
    /// Bit `i`: the event passes the filter of the rule's measure `i`.
    pub mask: u32,
    /// The event's currency, packed (0: none).
    pub cur: u32,
    /// The rule's first [`INLINE_SLOTS`] slot fields (NaN when the event has none).
    vals: [f64; INLINE_SLOTS],
    /// Hash of the `count_distinct` field's value.
    pub tag: u64,
    /// What few entries carry: the values of a rule's third and fourth slot fields, the
    /// player id of a rule that reports related players. `None` when there is neither (every
    /// entry of the shipped rules but the multi-accounting ones).
    #[allow(clippy::box_collection)]
    more: Option<Box<More>>,
}

/// [`Entry::more`].
#[derive(Debug, Clone)]
struct More {
    vals: [f64; MAX_SLOTS - INLINE_SLOTS],
    label: Option<Box<str>>,
}

impl Entry {
    /// An entry of the slot values `vals` (NaN: none) and the player id `label`.
    pub fn new(
        id: u128,
        t: i64,
        mask: u32,
        cur: u32,
        vals: [f64; MAX_SLOTS],
        tag: u64,
        label: Option<Box<str>>,
    ) -> Entry {
        let (inline, rest) = vals.split_at(INLINE_SLOTS);
        let more = (label.is_some() || rest.iter().any(|v| !v.is_nan())).then(|| {
            let mut m = More {
                vals: [f64::NAN; MAX_SLOTS - INLINE_SLOTS],
                label,
            };
            m.vals.copy_from_slice(rest);
            Box::new(m)
        });
        let mut head = [f64::NAN; INLINE_SLOTS];
        head.copy_from_slice(inline);
        Entry {
            id: Entry::halves(id),
            t,
            mask,
            cur,
            vals: head,
            tag,
            more,
        }
    }

    /// The event id as one number.
    pub fn id(&self) -> u128 {
        (u128::from(self.id[0]) << 64) | u128::from(self.id[1])
    }

    /// `id` in the halves [`Entry::id`] keeps.
    pub fn halves(id: u128) -> [u64; 2] {
        [(id >> 64) as u64, id as u64]
    }

    /// The value of slot `slot` (NaN: none).
    #[inline]
    pub fn val(&self, slot: usize) -> f64 {
        match self.vals.get(slot) {
            Some(v) => *v,
            None => self
                .more
                .as_ref()
                .and_then(|m| m.vals.get(slot - INLINE_SLOTS).copied())
                .unwrap_or(f64::NAN),
        }
    }

    /// All [`MAX_SLOTS`] slot values.
    pub fn vals(&self) -> [f64; MAX_SLOTS] {
        let mut all = [f64::NAN; MAX_SLOTS];
        for (slot, v) in all.iter_mut().enumerate() {
            *v = self.val(slot);
        }
        all
    }

    /// The player id kept for a rule that reports related players.
    pub fn label(&self) -> Option<&str> {
        self.more.as_ref().and_then(|m| m.label.as_deref())
    }

    /// Heap bytes the entry holds outside itself.
    pub fn heap_bytes(&self) -> usize {
        self.more.as_ref().map_or(0, |m| {
            std::mem::size_of::<More>() + m.label.as_ref().map_or(0, |l| l.len())
        })
    }
}

/// An entry as snapshots, the changelog and the Lambda's units write it (unchanged since
/// their first format): the id as a `u128`, every slot, the label as an optional string.
#[derive(serde::Serialize)]
struct EntryForm<'a> {
    id: u128,
    t: i64,
    mask: u32,
    cur: u32,
    vals: [f64; MAX_SLOTS],
    tag: u64,
    label: Option<&'a str>,
}

/// [`EntryForm`], read.
#[derive(serde::Deserialize)]
struct EntryRead {
    id: u128,
    t: i64,
    mask: u32,
    cur: u32,
    vals: [f64; MAX_SLOTS],
    tag: u64,
    label: Option<Box<str>>,
}

impl serde::Serialize for Entry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        EntryForm {
            id: self.id(),
            t: self.t,
            mask: self.mask,
            cur: self.cur,
            vals: self.vals(),
            tag: self.tag,
            label: self.label(),
        }
        .serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Entry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Entry, D::Error> {
        let r = EntryRead::deserialize(d)?;
        Ok(Entry::new(r.id, r.t, r.mask, r.cur, r.vals, r.tag, r.label))
    }
}

/// Running totals of one measure over a key's whole window, kept as events enter and leave,
/// so plain counts, sums and averages cost nothing per evaluation and a measure with no
/// matching event is known to be empty without a scan.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Acc {
    /// Entries that pass the measure's filter.
    pub n: u32,
    /// Of those, entries with a value in the measure's slot.
    pub n_vals: u32,
    /// Sum of those values. For an `interval_mean` / `interval_cv` measure (no values): the
    /// sum of the squared gaps, ms², between its consecutive entries ([`GAPS_UNKNOWN`] when
    /// past what an `f64` holds exactly; evaluation then scans). Derived from the entries:
    /// counted again whenever a state is loaded ([`KeyState::conform`]).
    pub sum: f64,
}

/// A window whose cap is at most this many events grows in two steps: room for
/// [`SMALL_FIRST`], then for its whole cap (at most 64 slots: below what [`KeyState::insert`]
/// gives back when a window empties out).
const SMALL_CAP: usize = 63;
const SMALL_FIRST: usize = 8;

/// An interval measure's sum of squared gaps that is not kept: evaluation scans the entries.
pub(crate) const GAPS_UNKNOWN: f64 = -1.0;

/// Sums of squared gaps are kept below this (2⁵², so every sum and difference of them is an
/// exact integer in an `f64`).
const GAPS_EXACT: i128 = 1 << 52;

/// Adds `delta` (ms², exact) to an interval measure's sum of squared gaps, or marks it unknown
/// when the result would not be exact.
fn gaps_add(a: &mut Acc, delta: i128) {
    if a.sum < 0.0 {
        return;
    }
    let s = a.sum as i128 + delta;
    a.sum = if (0..GAPS_EXACT).contains(&s) {
        s as f64
    } else {
        GAPS_UNKNOWN
    };
}

fn sq(a: i64, b: i64) -> i128 {
    let g = i128::from(b) - i128::from(a);
    g * g
}

/// Event time of a key's last hit (for the cooldown), in 8 bytes (`i64::MIN`: none; an
/// `Option<i64>` takes 16). Written as an `Option<i64>`, as before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LastHit(i64);

impl Default for LastHit {
    fn default() -> Self {
        LastHit(i64::MIN)
    }
}

impl LastHit {
    pub fn at(t: i64) -> LastHit {
        LastHit(t)
    }

    pub fn get(self) -> Option<i64> {
        (self.0 != i64::MIN).then_some(self.0)
    }
}

impl serde::Serialize for LastHit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.get().serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for LastHit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<LastHit, D::Error> {
        Ok(LastHit(Option::<i64>::deserialize(d)?.unwrap_or(i64::MIN)))
    }
}

/// Entries a fold reads from the front before it searches instead.
const SCAN_MAX: usize = 64;

/// A key's state within one rule.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct KeyState {
    /// Events kept one by one, in time order: all of them, or for a bucketed window
    /// (`window.bucket`) those within one bucket width of the newest event and those a measure
    /// reads one by one.
    pub entries: VecDeque<Entry>,
    /// Per measure (by index): totals over `entries` and `buckets`.
    pub acc: Box<[Acc]>,
    /// At or before the time of the oldest entry in `entries` (`i64::MAX` when empty): lets
    /// expiry and folding skip reading the front entry (a cache miss per rule and event) when
    /// nothing is due. Never saved; `i64::MIN` (read the entry) after a load.
    #[serde(skip)]
    front: FrontHint,
    /// The currency of the key's money events, packed (0: none yet).
    pub cur: u32,
    /// The key has seen money in more than one currency: money totals need a scan.
    pub mixed: bool,
    /// Event time of the last hit (for the cooldown).
    pub last_hit: LastHit,
    /// Engine clock when the key last saw an event (for idle eviction).
    pub last_active: i64,
    /// Latest event time seen.
    pub newest: i64,
    /// A bucketed window's older events, as per-bucket totals (`None` until one is folded).
    pub buckets: Option<Box<Buckets>>,
}

/// A lower bound of a window's oldest entry time ([`KeyState::front`]).
#[derive(Debug, Clone, Copy)]
struct FrontHint(i64);

impl Default for FrontHint {
    fn default() -> Self {
        FrontHint(i64::MIN)
    }
}

/// [`KeyState`] as units and snapshots wrote it before buckets (unit format 1, snapshot
/// format 1): the same fields without `buckets`.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct KeyStateV1 {
    entries: VecDeque<Entry>,
    acc: Vec<Acc>,
    cur: u32,
    mixed: bool,
    last_hit: LastHit,
    last_active: i64,
    newest: i64,
}

impl From<KeyStateV1> for KeyState {
    fn from(v: KeyStateV1) -> KeyState {
        KeyState {
            entries: v.entries,
            acc: v.acc.into_boxed_slice(),
            front: FrontHint::default(),
            cur: v.cur,
            mixed: v.mixed,
            last_hit: v.last_hit,
            last_active: v.last_active,
            newest: v.newest,
            buckets: None,
        }
    }
}

/// Writes a [`KeyState`] without buckets in the layout of [`KeyStateV1`] (byte for byte what
/// builds before buckets wrote, and read).
#[derive(serde::Serialize)]
pub(crate) struct KeyStateV1Ref<'a> {
    entries: &'a VecDeque<Entry>,
    acc: &'a [Acc],
    cur: u32,
    mixed: bool,
    last_hit: LastHit,
    last_active: i64,
    newest: i64,
}

impl<'a> KeyStateV1Ref<'a> {
    pub fn of(k: &'a KeyState) -> KeyStateV1Ref<'a> {
        KeyStateV1Ref {
            entries: &k.entries,
            acc: &k.acc,
            cur: k.cur,
            mixed: k.mixed,
            last_hit: k.last_hit,
            last_active: k.last_active,
            newest: k.newest,
        }
    }
}

/// One bucket: where its events lie and how many there are.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Head {
    /// Start of its slot, ms: a multiple of the width (slots are aligned to the Unix epoch, so
    /// which bucket an event lands in does not depend on the order events arrive in).
    pub start: i64,
    /// Its events are at or after this: the slot's start, or the newest `since` anchor of the
    /// slot at or before them when they were folded.
    pub from: i64,
    /// Their currency, packed (0: none): money measures add only the trigger's currency.
    pub cur: u32,
    /// Events folded into it.
    pub n: u32,
}

/// A bucketed window's older events: per bucket, the totals of each folded measure.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Buckets {
    /// The width the buckets were made with, ms.
    pub width: i64,
    /// The measures folded (the rule's `fold_mask` when they were made).
    pub mask: u32,
    /// Entries at or before this time have been folded (the newest event's time minus the
    /// width, at the last fold).
    pub horizon: i64,
    /// Events held in buckets.
    pub events: u32,
    /// In (start, from, cur) order. A ring: the oldest bucket leaves from the front without
    /// moving the others (a 72 h window of 5 min buckets holds 864 of them).
    pub heads: VecDeque<Head>,
    /// Per bucket, one cell per folded measure (in measure order): its totals.
    pub cells: VecDeque<Acc>,
    /// At or before the time of the oldest entry after `horizon` (`i64::MAX`: none;
    /// `i64::MIN`: unknown, found by a search): whether a fold is due. The front entry cannot
    /// tell once entries a measure keeps one by one (deposits kept `exact`, `since` anchors)
    /// stay before the horizon for the whole window: every insertion then started a fold, a
    /// binary search over the window and a scan (8 % of the engine's time in the bench).
    /// Never saved.
    #[serde(skip)]
    unfolded: FrontHint,
    /// The events that went straight into their buckets (older than `horizon` when they
    /// came): their ids, kept while their buckets are, so that one sent again is recognised
    /// ([`KeyState::insert`]). Few: events arriving later than a bucket width after newer
    /// ones of their key. In time order. Written after the window (unit format 3,
    /// [`KeyState::late_ids`]).
    #[serde(skip)]
    late: Vec<Late>,
}

/// An event folded on arrival ([`Buckets::late`]): its time and id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Late {
    t: i64,
    id: [u64; 2],
}

impl Buckets {
    fn cols(&self) -> usize {
        self.mask.count_ones() as usize
    }

    /// The cell column of measure `i` (folded).
    fn col(&self, i: usize) -> usize {
        (self.mask & ((1u32 << i) - 1)).count_ones() as usize
    }
}

/// What an insertion did.
pub(crate) struct Inserted {
    /// False: the event id was already in the window.
    pub fresh: bool,
    /// Entries and buckets that left the window (age or cap).
    #[cfg(test)]
    pub evicted: usize,
    /// The event went straight into a bucket (it is older than the window's exact part).
    pub folded: bool,
    /// The horizon the window was expired to after the insertion (the key's newest event less
    /// the rule's duration), if it has a duration: entries at or before it, and buckets whose
    /// slot ends at or before it, are gone ([`KeyState::expire`]).
    pub expired: Option<i64>,
}

impl Inserted {
    /// An insertion that changed nothing: the event was `fresh` but lies outside the window,
    /// or it was a duplicate.
    fn nothing(fresh: bool) -> Inserted {
        Inserted {
            fresh,
            #[cfg(test)]
            evicted: 0,
            folded: false,
            expired: None,
        }
    }
}

impl KeyState {
    fn account(&mut self, e: &Entry, rule: &CompiledRule, sign: i32) {
        // The windowed measures whose filter the entry passed, bit by bit.
        let mut bits = e.mask & rule.windowed_mask;
        while bits != 0 {
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let (Some(m), Some(a)) = (rule.measures.get(i), self.acc.get_mut(i)) else {
                continue;
            };
            a.n = a.n.wrapping_add_signed(sign);
            if let Some(slot) = m.slot {
                let v = e.val(slot);
                if !v.is_nan() {
                    a.n_vals = a.n_vals.wrapping_add_signed(sign);
                    a.sum += f64::from(sign) * v;
                }
            }
        }
    }

    /// Reads the first bytes of what an event's work on this window reads first (its totals,
    /// its oldest entry, its buckets), for nothing but to have them on their way to the cache
    /// ([`crate::engine`]'s `Opened::touch`). Not the newest entry: an insertion after it (the
    /// usual one) does not read it, and the next entry is written past its line (entries are
    /// 64 bytes), so reading it cost a line an event of most windows for nothing (counted:
    /// 2.4 of 59 first-level misses an event, docs/benchmarks.md).
    pub fn touch(&self) {
        std::hint::black_box(self.acc.first().map(|a| a.n));
        std::hint::black_box(self.entries.front().map(|e| e.t));
        if let Some(b) = &self.buckets {
            std::hint::black_box(b.heads.front().map(|h| h.start));
        }
    }

    /// Whether the event `id` of time `t` is held one by one.
    pub fn holds(&self, id: u128, t: i64) -> bool {
        !self.entries.is_empty() && t <= self.newest && self.held_at(Entry::halves(id), t)
    }

    /// [`KeyState::holds`] for an id in halves: a duplicate has the same `occurred_at`, so it
    /// sits just before the first entry later than `t` (found without a search when the
    /// newest entry is not later).
    fn held_at(&self, id: [u64; 2], t: i64) -> bool {
        let pos = match self.entries.back() {
            Some(last) if last.t > t => self.entries.partition_point(|x| x.t <= t),
            _ => self.entries.len(),
        };
        self.entries
            .range(..pos)
            .rev()
            .take_while(|x| x.t == t)
            .any(|x| x.id == id)
    }

    /// The ids of the events folded on arrival ([`Buckets::late`]): saved after the window.
    pub fn late_ids(&self) -> &[Late] {
        self.buckets.as_ref().map_or(&[], |b| &b.late)
    }

    /// Sets what [`KeyState::late_ids`] gave when the window was saved (none without buckets).
    pub fn set_late_ids(&mut self, late: Vec<Late>) {
        if let Some(b) = self.buckets.as_mut() {
            b.late = late;
        }
    }

    /// Entries and buckets held (what `[engine] max_entries` bounds).
    pub fn held(&self) -> usize {
        self.entries.len() + self.buckets.as_ref().map_or(0, |b| b.heads.len())
    }

    /// Events held, one by one or in buckets (what the rule's cap bounds).
    fn events(&self) -> usize {
        self.entries.len() + self.buckets.as_ref().map_or(0, |b| b.events as usize)
    }

    /// The time of the oldest event held (a bucket's: its slot's start).
    pub fn oldest(&self) -> Option<i64> {
        let e = self.entries.front().map(|e| e.t);
        let b = self
            .buckets
            .as_ref()
            .and_then(|b| b.heads.front())
            .map(|h| h.start);
        match (e, b) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        }
    }

    fn pop_front(&mut self, rule: &CompiledRule) {
        if let Some(e) = self.entries.pop_front() {
            self.account(&e, rule, -1);
            let mut bits = e.mask & rule.interval_mask;
            while bits != 0 {
                let i = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                // The gap from it to the next entry of the measure goes with it.
                if let Some(next) = self.entries.iter().find(|x| x.mask & (1 << i) != 0)
                    && let Some(a) = self.acc.get_mut(i)
                {
                    gaps_add(a, -sq(e.t, next.t));
                } else if let Some(a) = self.acc.get_mut(i) {
                    // The measure's last entry: no gaps left (a total past exact is kept again).
                    a.sum = 0.0;
                }
            }
        }
        self.front = FrontHint(self.entries.front().map_or(i64::MAX, |f| f.t));
    }

    /// Drops the oldest bucket and its totals.
    fn pop_bucket(&mut self) {
        let Some(b) = self.buckets.as_mut() else {
            return;
        };
        let Some(head) = b.heads.pop_front() else {
            return;
        };
        let cols = b.cols().min(b.cells.len());
        b.events = b.events.saturating_sub(head.n);
        // The oldest bucket's cells are the first `cols`: subtracted where they lie, then
        // dropped (no copy of them).
        let mut c = 0;
        let mut mask = b.mask;
        while mask != 0 {
            let i = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            if let (Some(a), Some(x)) = (self.acc.get_mut(i), b.cells.get(c)) {
                a.n = a.n.wrapping_sub(x.n);
                a.n_vals = a.n_vals.wrapping_sub(x.n_vals);
                a.sum -= x.sum;
            }
            c += 1;
        }
        b.cells.drain(..cols);
        if let Some(first) = b.heads.front().map(|h| h.start) {
            // The ids of events in the bucket gone go with it (they are in time order).
            let gone = b.late.partition_point(|l| l.t < first);
            b.late.drain(..gone);
        }
        if b.heads.is_empty() {
            // Nothing folded is held: the state is written as before buckets again.
            self.buckets = None;
        }
    }

    /// Drops entries at or before `horizon`, and buckets whose slot ends at or before it;
    /// returns how many.
    pub fn expire(&mut self, horizon: i64, rule: &CompiledRule) -> usize {
        let mut n = 0;
        while self.front.0 <= horizon && self.entries.front().is_some_and(|x| x.t <= horizon) {
            self.pop_front(rule);
            n += 1;
        }
        while let Some(b) = &self.buckets
            && b.heads
                .front()
                .is_some_and(|h| h.start.saturating_add(b.width) <= horizon.saturating_add(1))
        {
            self.pop_bucket();
            n += 1;
        }
        n
    }

    /// Whether an entry is folded into buckets once it is older than the exact part: no
    /// measure that reads events one by one wants it, and it is not a trigger a rule with a
    /// cooldown keeps because it fired (nothing else reads it, and folded it would be dropped:
    /// sent again once a later hit moved the cooldown on, it would fire again).
    fn foldable(mask: u32, rule: &CompiledRule) -> bool {
        rule.bucket_ms.is_some()
            && mask & rule.exact_mask == 0
            && !(rule.cooldown_ms > 0 && mask & !TRIGGER_BIT == 0)
    }

    /// Adds `e` (folded, already counted in `acc`) to its bucket, looking up the newest
    /// `since` anchor before it among the entries held.
    fn add_to_bucket(&mut self, e: &Entry, rule: &CompiledRule) {
        let Some(w) = rule.bucket_ms.filter(|w| *w > 0) else {
            return;
        };
        if e.mask & rule.fold_mask == 0 {
            // Kept only as a trigger (to recognise a redelivery): nothing to add up.
            return;
        }
        let start = e.t.div_euclid(w).saturating_mul(w);
        // The newest `since` anchor of the slot at or before the event: a `since` measure
        // counts the bucket only when it lies wholly after its anchor.
        let from = if rule.anchor_mask != 0 {
            let lo = self.entries.partition_point(|x| x.t < start);
            let hi = self.entries.partition_point(|x| x.t <= e.t);
            self.entries
                .range(lo..hi)
                .rev()
                .find(|x| x.mask & rule.anchor_mask != 0)
                .map_or(start, |x| x.t)
        } else {
            start
        };
        fold_into(&mut self.buckets, e, rule, w, start, from);
    }

    /// Folds in batches: once the oldest entry held one by one is two bucket widths older than
    /// the newest event, every foldable entry one width older than it is folded. So the exact
    /// part spans one to two widths, and a bucket is touched about once a width of the key's
    /// time rather than on every event.
    fn fold_due(&mut self, rule: &CompiledRule) {
        if let Some(w) = rule.bucket_ms {
            let h = self.newest.saturating_sub(w);
            let due = match &self.buckets {
                // Nothing folded yet: the front entry is the oldest unfolded one.
                None => {
                    self.front.0 <= h.saturating_sub(w)
                        && self
                            .entries
                            .front()
                            .is_some_and(|f| f.t <= h.saturating_sub(w))
                }
                Some(b) => {
                    let mut at = b.unfolded.0;
                    if at == i64::MIN {
                        at = self.first_unfolded();
                        if let Some(b) = self.buckets.as_mut() {
                            b.unfolded = FrontHint(at);
                        }
                    }
                    at <= h.saturating_sub(w)
                }
            };
            if due {
                self.fold_upto(h, rule);
            }
        }
    }

    /// The time of the oldest entry after the last fold's horizon (`i64::MAX`: none).
    fn first_unfolded(&self) -> i64 {
        let done = self.buckets.as_ref().map_or(i64::MIN, |b| b.horizon);
        let at = if self.entries.front().is_none_or(|f| f.t > done) {
            0
        } else {
            self.entries.partition_point(|x| x.t <= done)
        };
        self.entries.get(at).map_or(i64::MAX, |e| e.t)
    }

    /// Folds the foldable entries at or before `horizon` into buckets.
    fn fold_upto(&mut self, horizon: i64, rule: &CompiledRule) {
        let done = self.buckets.as_ref().map_or(i64::MIN, |b| b.horizon);
        if horizon <= done {
            let at = self.first_unfolded();
            if let Some(b) = self.buckets.as_mut() {
                b.unfolded = FrontHint(at);
            }
            return;
        }
        // Entries left at or before the last fold's horizon (kept one by one) are few or none,
        // and those due are about a bucket width's: both are found by reading from the front,
        // which the fold reads anyway, rather than by binary searches over the whole exact
        // part (a cache miss a probe); past 64 entries, by the search.
        let lo = if self.entries.front().is_none_or(|f| f.t > done) {
            0
        } else {
            self.entries.partition_point(|x| x.t <= done)
        };
        let run = self
            .entries
            .range(lo..)
            .take(SCAN_MAX)
            .take_while(|x| x.t <= horizon)
            .count();
        let hi = if run == SCAN_MAX {
            self.entries.partition_point(|x| x.t <= horizon)
        } else {
            lo + run
        };
        // Oldest first, each run of entries of one bucket added up and then to its bucket at
        // once (the bucket found or made once a run, not once an entry; runs come in time
        // order, so a new bucket mostly goes at the end). A decimal field's bucket sum may
        // round differently in its last bits than when entries were added one by one newest
        // first (whole numbers, money in minor units and counts, add up exactly either way),
        // as the window's running totals, kept by adding and subtracting, already do.
        // An entry's bucket starts at its `since`
        // anchor when the slot has one at or before it: the anchors (never folded) are read
        // as the entries are, a cursor running ahead through those of the same time; the
        // newest older than the range is found once.
        let KeyState {
            entries, buckets, ..
        } = self;
        let mut anchor = if rule.anchor_mask != 0 {
            entries
                .range(..lo)
                .rev()
                .find(|x| x.mask & rule.anchor_mask != 0)
                .map(|x| x.t)
        } else {
            None
        };
        let mut cursor = lo;
        let mut kept = 0;
        if let Some(w) = rule.bucket_ms.filter(|w| *w > 0) {
            let mut run = Run::default();
            for e in entries.range(lo..hi) {
                if !Self::foldable(e.mask, rule) {
                    kept += 1;
                    continue;
                }
                if e.mask & rule.fold_mask == 0 {
                    // Kept only as a trigger: nothing to add up.
                    continue;
                }
                if rule.anchor_mask != 0 {
                    while let Some(x) = entries.get(cursor).filter(|x| x.t <= e.t) {
                        if x.mask & rule.anchor_mask != 0 {
                            anchor = Some(x.t);
                        }
                        cursor += 1;
                    }
                }
                let start = e.t.div_euclid(w).saturating_mul(w);
                let from = anchor.filter(|a| *a >= start).unwrap_or(start);
                let key = (start, from, e.cur);
                if run.key != Some(key) {
                    run.flush(buckets, rule, w);
                    run.key = Some(key);
                }
                run.add(e, rule);
            }
            run.flush(buckets, rule, w);
        } else {
            kept = entries
                .range(lo..hi)
                .filter(|e| !Self::foldable(e.mask, rule))
                .count();
        }
        if kept == 0 {
            // The common case: every entry due is folded, taken out in one move.
            entries.drain(lo..hi);
        } else {
            // Those a measure reads one by one stay, in order; the others go in one move.
            let stay: Vec<Entry> = entries
                .drain(lo..hi)
                .filter(|e| !Self::foldable(e.mask, rule))
                .collect();
            for (j, e) in stay.into_iter().enumerate() {
                entries.insert(lo + j, e);
            }
        }
        self.folded_upto(horizon, lo + kept);
    }

    /// After a fold up to `horizon`: the buckets' horizon, and the time of the oldest entry
    /// after it (at `next`, the first entry past those that were due).
    fn folded_upto(&mut self, horizon: i64, next: usize) {
        let at = self.entries.get(next).map_or(i64::MAX, |e| e.t);
        if let Some(b) = self.buckets.as_mut() {
            b.horizon = horizon;
            b.unfolded = FrontHint(at);
        }
    }

    /// Recomputes the running totals from the entries (buckets dropped).
    fn recount(&mut self, rule: &CompiledRule) {
        self.buckets = None;
        self.count_entries(rule);
        self.count_gaps(rule);
    }

    /// Totals counted again from the entries alone.
    fn count_entries(&mut self, rule: &CompiledRule) {
        self.acc = vec![Acc::default(); rule.measures.len()].into_boxed_slice();
        let entries = std::mem::take(&mut self.entries);
        for e in &entries {
            self.account(e, rule, 1);
        }
        self.entries = entries;
    }

    /// Sets each interval measure's sum of squared gaps from the entries.
    fn count_gaps(&mut self, rule: &CompiledRule) {
        let mut bits = rule.interval_mask;
        while bits != 0 {
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let Some(a) = self.acc.get_mut(i) else {
                continue;
            };
            a.sum = 0.0;
            let mut prev: Option<i64> = None;
            for e in self.entries.iter().filter(|x| x.mask & (1 << i) != 0) {
                if let Some(p) = prev {
                    gaps_add(a, sq(p, e.t));
                }
                prev = Some(e.t);
            }
        }
    }

    /// The entry at `pos` (of the interval measures in `bits`) split the gap between its
    /// neighbours of each measure in two.
    fn gaps_inserted(&mut self, pos: usize, bits: u32) {
        let Some(t) = self.entries.get(pos).map(|e| e.t) else {
            return;
        };
        let mut bits = bits;
        while bits != 0 {
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let bit = 1u32 << i;
            let prev = self
                .entries
                .range(..pos)
                .rev()
                .find(|x| x.mask & bit != 0)
                .map(|x| x.t);
            let next = self
                .entries
                .range(pos + 1..)
                .find(|x| x.mask & bit != 0)
                .map(|x| x.t);
            let delta = match (prev, next) {
                (Some(p), Some(n)) => sq(p, t) + sq(t, n) - sq(p, n),
                (Some(p), None) => sq(p, t),
                (None, Some(n)) => sq(t, n),
                (None, None) => 0,
            };
            if let Some(a) = self.acc.get_mut(i) {
                gaps_add(a, delta);
            }
        }
    }

    /// Brings a state made under another definition of the rule's buckets (a unit saved before
    /// buckets, a reload that added, changed or removed `window.bucket`) to the rule's: entries
    /// are folded as the rule would have folded them; buckets of another width or another set
    /// of folded measures cannot be split again and are dropped (with their events).
    pub fn conform(&mut self, rule: &CompiledRule) {
        self.narrow_buckets(rule);
        let same = match &self.buckets {
            None => true,
            Some(b) => Some(b.width) == rule.bucket_ms && b.mask == rule.fold_mask,
        };
        if !same || (!self.acc.is_empty() && self.acc.len() != rule.measures.len()) {
            self.recount(rule);
        } else if self.acc.len() == rule.measures.len() {
            // Derived, never trusted from what was saved (a build before them wrote 0).
            self.count_gaps(rule);
        }
        self.fold_due(rule);
    }

    /// Buckets of the rule's width that fold more measures than the rule now does (a measure
    /// made `exact`) keep the columns of the measures still folded: the others' folded events
    /// are dropped, not every bucket (72 h of bets). The totals are counted again from what
    /// is kept.
    fn narrow_buckets(&mut self, rule: &CompiledRule) {
        let Some(b) = self.buckets.as_mut() else {
            return;
        };
        let (old, new) = (b.mask, rule.fold_mask);
        if Some(b.width) != rule.bucket_ms
            || old == new
            || old & new != new
            || self.acc.len() != rule.measures.len()
        {
            return;
        }
        let old_cols = b.cols();
        if b.cells.len() != b.heads.len() * old_cols {
            return;
        }
        let keep: Vec<usize> = (0..rule.measures.len())
            .filter(|i| new & (1 << i) != 0)
            .map(|i| b.col(i))
            .collect();
        let cells: std::collections::VecDeque<Acc> = (0..b.heads.len())
            .flat_map(|k| keep.iter().map(move |c| k * old_cols + c))
            .filter_map(|at| b.cells.get(at).copied())
            .collect();
        b.cells = cells;
        b.mask = new;
        // Totals: the entries', then the kept buckets' cells.
        self.count_entries(rule);
        if let Some(b) = &self.buckets {
            let cols = b.cols();
            for (k, _) in b.heads.iter().enumerate() {
                let mut mask = b.mask;
                let mut c = 0;
                while mask != 0 {
                    let i = mask.trailing_zeros() as usize;
                    mask &= mask - 1;
                    if let (Some(a), Some(x)) = (self.acc.get_mut(i), b.cells.get(k * cols + c)) {
                        a.n = a.n.wrapping_add(x.n);
                        a.n_vals = a.n_vals.wrapping_add(x.n_vals);
                        a.sum += x.sum;
                    }
                    c += 1;
                }
            }
        }
    }

    /// Inserts in time order, unless the id is already in the window; then drops what fell
    /// out of the window (older than the rule's duration before the newest event, or over its
    /// cap). In a bucketed window, entries more than one bucket width older than the newest
    /// event are folded into their buckets (in batches, [`KeyState::fold_due`]), and an event
    /// older than what was folded goes straight into its bucket (its id kept beside the
    /// buckets while its bucket is, so that it counts once if sent again, [`Buckets::late`]).
    pub fn insert(&mut self, e: Entry, rule: &CompiledRule) -> Inserted {
        if self.acc.len() != rule.measures.len() {
            if self.held() == 0 {
                self.acc = vec![Acc::default(); rule.measures.len()].into_boxed_slice();
            } else {
                // Totals of another shape (not brought to this rule by `conform`): counted
                // again from the entries; buckets, whose cells have that shape too, go.
                self.recount(rule);
            }
        }
        let late =
            Self::foldable(e.mask, rule) && self.buckets.as_ref().is_some_and(|b| e.t <= b.horizon);
        if e.t < self.newest
            && let Some(d) = rule.duration_ms
            && self.held() > 0
        {
            // Older than the window up to the key's newest event (a late event, sent again
            // long after): the expiry after its insertion would take it out at once, as if it
            // had never come. Not put in at all: in and out, it made an interval measure's
            // sum of squared gaps pass what is kept exactly (its gap to the window's oldest
            // entry), so every later evaluation scanned, and marked the key's money as mixed
            // when in another currency. An event that would go straight into a bucket is in
            // the window while its bucket's slot ends in it (the old edge counts generously),
            // so only one whose whole slot is gone is left out.
            let horizon = self.newest.saturating_sub(d);
            let gone = match rule.bucket_ms.filter(|w| *w > 0) {
                Some(w) if late => {
                    e.t.div_euclid(w).saturating_mul(w).saturating_add(w)
                        <= horizon.saturating_add(1)
                }
                _ => e.t <= horizon,
            };
            if gone {
                return Inserted::nothing(true);
            }
        }
        if late
            && self.buckets.as_ref().is_some_and(|b| {
                let at = b.late.partition_point(|l| l.t < e.t);
                b.late
                    .iter()
                    .skip(at)
                    .take_while(|l| l.t == e.t)
                    .any(|l| l.id == e.id)
            })
        {
            // Sent again after it went straight into its bucket.
            return Inserted::nothing(false);
        }
        // Later than every event the key has seen (`newest` bounds the entries): it goes at the
        // end and cannot be a duplicate (a duplicate has the same occurred_at), so the tail
        // entry, most likely out of cache, is not read.
        let after_all = self.entries.is_empty() || e.t > self.newest;
        if !late && !after_all && self.held_at(e.id, e.t) {
            return Inserted::nothing(false);
        }
        if e.cur != 0 {
            if self.cur == 0 {
                self.cur = e.cur;
            } else if self.cur != e.cur {
                self.mixed = true;
            }
        }
        self.newest = if self.held() == 0 {
            e.t
        } else {
            self.newest.max(e.t)
        };
        self.account(&e, rule, 1);
        if late {
            if e.mask & rule.fold_mask != 0
                && let Some(b) = self.buckets.as_mut()
            {
                let at = b.late.partition_point(|l| l.t <= e.t);
                b.late.insert(at, Late { t: e.t, id: e.id });
            }
            self.add_to_bucket(&e, rule);
        } else {
            let pos = match self.entries.back() {
                Some(last) if !after_all && last.t > e.t => {
                    self.entries.partition_point(|x| x.t <= e.t)
                }
                _ => self.entries.len(),
            };
            self.front = FrontHint(if self.entries.is_empty() {
                e.t
            } else {
                self.front.0.min(e.t)
            });
            if let Some(b) = self.buckets.as_mut()
                && b.unfolded.0 != i64::MIN
                && e.t > b.horizon
            {
                b.unfolded = FrontHint(b.unfolded.0.min(e.t));
            }
            // Room for a quarter more, not twice as much: a window's length wanders below a
            // high-water mark its allocation keeps, and doubling left a third of all slots
            // empty (970,332 slots for 641,048 entries after 2.5 h of the bench's play).
            let n = self.entries.len();
            if n == self.entries.capacity() {
                // A small window (a cap below 64 events) takes room for 8, then its whole
                // room at once: growing it a quarter at a time moved it ten times on the way
                // to a cap of 51 (4, 8, 12, …, 47, 52), which an active player reaches within
                // a session.
                let more = if rule.cap <= SMALL_CAP {
                    if n < SMALL_FIRST {
                        SMALL_FIRST - n
                    } else {
                        (rule.cap + 1).saturating_sub(n).max(4)
                    }
                } else {
                    (n / 4).max(4)
                };
                self.entries.reserve_exact(if n <= rule.cap {
                    more.min(rule.cap.saturating_add(1) - n)
                } else {
                    more
                });
            }
            let bits = e.mask & rule.interval_mask;
            if pos == self.entries.len() {
                self.entries.push_back(e);
            } else {
                self.entries.insert(pos, e);
            }
            if bits != 0 {
                self.gaps_inserted(pos, bits);
            }
            self.fold_due(rule);
        }
        let mut evicted = 0;
        let expired = rule.duration_ms.map(|d| self.newest.saturating_sub(d));
        if let Some(h) = expired {
            evicted += self.expire(h, rule);
        }
        // A window that emptied out (a session over, a burst gone) gives back what it held.
        let (n, room) = (self.entries.len(), self.entries.capacity());
        if room > 64 && n * 4 < room {
            self.entries.shrink_to(n * 2);
        }
        while self.events() > rule.cap {
            // The oldest leave first; a bucket leaves whole.
            let bucket_first = match (
                self.entries.front(),
                self.buckets.as_ref().and_then(|b| b.heads.front()),
            ) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(e), Some(h)) => h.start <= e.t,
            };
            if bucket_first {
                self.pop_bucket();
            } else {
                self.pop_front(rule);
            }
            evicted += 1;
        }
        #[cfg(not(test))]
        let _ = evicted;
        Inserted {
            fresh: true,
            #[cfg(test)]
            evicted,
            folded: late,
            expired,
        }
    }

    /// Approximate bytes this key's state holds outside itself (entries, labels, totals,
    /// buckets).
    pub fn heap_bytes(&self) -> usize {
        let labels: usize = self.entries.iter().map(Entry::heap_bytes).sum();
        let buckets = self.buckets.as_ref().map_or(0, |b| {
            std::mem::size_of::<Buckets>()
                + b.heads.capacity() * std::mem::size_of::<Head>()
                + b.cells.capacity() * std::mem::size_of::<Acc>()
                + b.late.capacity() * std::mem::size_of::<Late>()
        });
        self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.acc.len() * std::mem::size_of::<Acc>()
            + labels
            + buckets
    }
}

/// The buckets of a window `width` wide, made on the first fold.
fn buckets_of<'a>(
    buckets: &'a mut Option<Box<Buckets>>,
    rule: &CompiledRule,
    width: i64,
) -> &'a mut Buckets {
    buckets.get_or_insert_with(|| {
        Box::new(Buckets {
            width,
            mask: rule.fold_mask,
            horizon: i64::MIN,
            ..Buckets::default()
        })
    })
}

/// The index of bucket `key` (start, from, currency), made where it belongs if there is none.
fn bucket_at(b: &mut Buckets, key: (i64, i64, u32)) -> usize {
    let cols = b.cols();
    let newest = b.heads.back().map(|h| (h.start, h.from, h.cur));
    match newest {
        // The common cases: the newest bucket, or a bucket newer than every other.
        Some(k) if k == key => b.heads.len() - 1,
        None => push_bucket(b, key, cols),
        Some(k) if k < key => push_bucket(b, key, cols),
        Some(_) => {
            let mut pos = b.heads.len();
            while pos > 0
                && (
                    b.heads[pos - 1].start,
                    b.heads[pos - 1].from,
                    b.heads[pos - 1].cur,
                ) > key
            {
                pos -= 1;
            }
            let found = pos > 0
                && (
                    b.heads[pos - 1].start,
                    b.heads[pos - 1].from,
                    b.heads[pos - 1].cur,
                ) == key;
            if found {
                pos - 1
            } else {
                let (start, from, cur) = key;
                b.heads.insert(
                    pos,
                    Head {
                        start,
                        from,
                        cur,
                        n: 0,
                    },
                );
                let c = (pos * cols).min(b.cells.len());
                for _ in 0..cols {
                    b.cells.insert(c, Acc::default());
                }
                pos
            }
        }
    }
}

/// Adds `n` events to bucket `at`, with `cells(i)` the totals they add to measure `i`.
fn add_to(b: &mut Buckets, at: usize, n: u32, cells: impl Fn(usize) -> Option<Acc>) {
    if let Some(h) = b.heads.get_mut(at) {
        h.n = h.n.saturating_add(n);
    }
    b.events = b.events.saturating_add(n);
    // The folded measures' cells in measure order: column `col` is the `col`-th bit of the
    // buckets' mask.
    let cols = b.cols();
    let base = at * cols;
    let mut bits = b.mask;
    let mut col = 0;
    while bits != 0 {
        let i = bits.trailing_zeros() as usize;
        bits &= bits - 1;
        if let Some(add) = cells(i)
            && let Some(cell) = b.cells.get_mut(base + col)
        {
            cell.n += add.n;
            cell.n_vals += add.n_vals;
            cell.sum += add.sum;
        }
        col += 1;
    }
}

/// What entry `e` adds to measure `i`'s totals, if it passes the measure's filter.
fn entry_acc(e: &Entry, rule: &CompiledRule, i: usize) -> Option<Acc> {
    if e.mask & (1 << i) == 0 {
        return None;
    }
    let m = rule.measures.get(i)?;
    let v = m.slot.map_or(f64::NAN, |slot| e.val(slot));
    Some(if v.is_nan() {
        Acc {
            n: 1,
            n_vals: 0,
            sum: 0.0,
        }
    } else {
        Acc {
            n: 1,
            n_vals: 1,
            sum: v,
        }
    })
}

/// Adds folded entry `e` to bucket `start` (`from`: the newest `since` anchor of the slot at or
/// before it, else `start`) of a window with buckets `width` wide.
fn fold_into(
    buckets: &mut Option<Box<Buckets>>,
    e: &Entry,
    rule: &CompiledRule,
    width: i64,
    start: i64,
    from: i64,
) {
    let b = buckets_of(buckets, rule, width);
    let at = bucket_at(b, (start, from, e.cur));
    add_to(b, at, 1, |i| entry_acc(e, rule, i));
}

/// Entries of one bucket folded in a row, added up before they go to their bucket at once.
#[derive(Default)]
struct Run {
    /// Their bucket: (start, from, currency).
    key: Option<(i64, i64, u32)>,
    n: u32,
    /// By measure: their totals (the rule's folded measures').
    cells: [Acc; 32],
}

impl Run {
    fn add(&mut self, e: &Entry, rule: &CompiledRule) {
        self.n += 1;
        let mut bits = rule.fold_mask & e.mask;
        while bits != 0 {
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            if let (Some(add), Some(cell)) = (entry_acc(e, rule, i), self.cells.get_mut(i)) {
                cell.n += add.n;
                cell.n_vals += add.n_vals;
                cell.sum += add.sum;
            }
        }
    }

    /// Adds the run to its bucket and starts the next one empty.
    fn flush(&mut self, buckets: &mut Option<Box<Buckets>>, rule: &CompiledRule, width: i64) {
        if let Some(key) = self.key.take() {
            let b = buckets_of(buckets, rule, width);
            let at = bucket_at(b, key);
            let cells = &self.cells;
            add_to(b, at, self.n, |i| cells.get(i).copied());
        }
        self.n = 0;
        let mut bits = rule.fold_mask;
        while bits != 0 {
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            if let Some(c) = self.cells.get_mut(i) {
                *c = Acc::default();
            }
        }
    }
}

/// Appends an empty bucket `(start, from, cur)` newer than every other; returns its index.
fn push_bucket(b: &mut Buckets, (start, from, cur): (i64, i64, u32), cols: usize) -> usize {
    b.heads.push_back(Head {
        start,
        from,
        cur,
        n: 0,
    });
    for _ in 0..cols {
        b.cells.push_back(Acc::default());
    }
    b.heads.len() - 1
}

/// Reusable buffers for evaluation (no allocation per event).
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    /// Measure values by index; `values[i]` is this evaluation's when `known[i] == stamp`
    /// (longer than the rule's measures when an earlier rule had more).
    pub values: Vec<Option<f64>>,
    /// The evaluation that computed `values[i]`: a new evaluation forgets them all by moving
    /// `stamp` on, without clearing anything.
    known: Vec<u32>,
    stamp: u32,
    pub thresholds: Vec<Option<f64>>,
    /// The threshold of each condition, by condition.
    pub cond_thresholds: Vec<Option<f64>>,
    nums: Vec<f64>,
    tags: Vec<u64>,
}

/// The trigger event as evaluation sees it.
pub(crate) struct Trigger {
    pub id: u128,
    /// The time the window is evaluated at: the trigger's, or (a rule keyed across partitions,
    /// the trigger read late) its key's newest event's.
    pub t: i64,
    /// The trigger's own event time.
    pub own_t: i64,
    pub cur: u32,
    /// The trigger's filter bits and values when the window holds it (for `exclude_trigger`
    /// on running totals).
    pub held: Option<(u32, [f64; MAX_SLOTS])>,
    /// The trigger went straight into a bucket (older than the window's exact part).
    pub folded: bool,
}

/// Computes every measure of `rule` into `scratch.values`; `current(i)` gives the trigger
/// event's value for `current` measures.
/// Measures of one evaluation, computed on demand (a condition that fails spares the
/// measures after it) and remembered in the scratch buffers.
pub(crate) struct Eval<'a, F: Fn(usize) -> Option<f64>> {
    pub rule: &'a CompiledRule,
    pub state: &'a KeyState,
    pub trig: &'a Trigger,
    /// The trigger event's value for `current` measures.
    pub current: F,
}

impl<F: Fn(usize) -> Option<f64>> Eval<'_, F> {
    /// Forgets the previous evaluation.
    pub fn reset(&self, s: &mut Scratch) {
        let n = self.rule.measures.len();
        if s.values.len() < n {
            s.values.resize(n, None);
            s.known.resize(n, 0);
        }
        s.stamp = s.stamp.wrapping_add(1);
        if s.stamp == 0 {
            // Wrapped: stamps of 4 billion evaluations ago would read as this one's.
            s.known.fill(0);
            s.stamp = 1;
        }
    }

    /// Measure `i` (its `default` when undefined).
    pub fn get(&self, i: usize, s: &mut Scratch) -> Option<f64> {
        if s.known[i] == s.stamp {
            return s.values[i];
        }
        let m = &self.rule.measures[i];
        let v = match m.agg {
            Agg::Current => (self.current)(i),
            Agg::Ratio => match m.of {
                Some((a, b)) => match (self.get(a, s), self.get(b, s)) {
                    (Some(x), Some(y)) if y != 0.0 => Some(x / y),
                    _ => None,
                },
                None => None,
            },
            _ => windowed(i, m, self.rule.duration_ms, self.state, self.trig, s),
        }
        .or(m.default);
        s.values[i] = v;
        s.known[i] = s.stamp;
        v
    }

    /// Every measure (for the messages of a hit).
    pub fn all(&self, s: &mut Scratch) {
        for i in 0..self.rule.measures.len() {
            self.get(i, s);
        }
    }
}

/// Measure `i` (`m`) of a trigger at `t` in currency `cur` (`held`: its filter bits and values
/// when the window holds it), from the window's running totals when they give it: a `count`,
/// `sum` or `avg` no event of the window passes, or over the whole window (no `within`, `last`
/// or `since`), the window not newer than `t` (the engine expired what lies before the
/// trigger's window), its money in one currency, the trigger's. What [`Eval::get`] computes
/// for it before its `default`; `None` when the totals do not give it.
pub(crate) fn from_totals(
    i: usize,
    m: &Measure,
    state: &KeyState,
    t: i64,
    cur: u32,
    held: Option<&(u32, [f64; MAX_SLOTS])>,
) -> Option<Option<f64>> {
    if !matches!(m.agg, Agg::Count | Agg::Sum | Agg::Avg) {
        return None;
    }
    let acc = state.acc.get(i).copied().unwrap_or_default();
    if acc.n == 0 {
        // Nothing in the whole window passes the filter: the aggregate of nothing.
        return Some((m.agg != Agg::Avg).then_some(0.0));
    }
    let plain =
        m.whole_window() && state.newest <= t && !(m.money && (state.mixed || state.cur != cur));
    if !plain {
        return None;
    }
    let (mut n, mut nv, mut sum) = (f64::from(acc.n), f64::from(acc.n_vals), acc.sum);
    if m.exclude_trigger
        && let Some((mask, vals)) = held
        && mask & (1u32 << i) != 0
    {
        n -= 1.0;
        if let Some(v) = m.slot.map(|s| vals[s]).filter(|v| !v.is_nan()) {
            nv -= 1.0;
            sum -= v;
        }
    }
    Some(match m.agg {
        Agg::Count => Some(n),
        Agg::Sum => Some(sum),
        _ => (nv > 0.0).then(|| sum / nv),
    })
}

fn windowed(
    i: usize,
    m: &Measure,
    duration_ms: Option<i64>,
    state: &KeyState,
    trig: &Trigger,
    s: &mut Scratch,
) -> Option<f64> {
    let bit = 1u32 << i;
    let acc = state.acc.get(i).copied().unwrap_or_default();
    if acc.n == 0 {
        // Nothing in the whole window passes the filter: the aggregate of nothing.
        return match m.agg {
            Agg::Count | Agg::Sum | Agg::CountDistinct => Some(0.0),
            _ => None,
        };
    }
    if let Some(v) = from_totals(i, m, state, trig.t, trig.cur, trig.held.as_ref()) {
        return v;
    }
    if matches!(m.agg, Agg::IntervalMean | Agg::IntervalCv)
        && m.whole_window()
        && !m.exclude_trigger
        && state.newest <= trig.t
        && acc.sum >= 0.0
    {
        // Kept totals, as for `plain`: the gaps add up to the span from the first entry of
        // the measure to its last, and their squares are kept as entries come and go.
        let gaps = i128::from(acc.n) - 1;
        let min_gaps = if m.agg == Agg::IntervalCv { 2 } else { 1 };
        if gaps < min_gaps {
            return None;
        }
        let first = state.entries.iter().find(|e| e.mask & bit != 0)?.t;
        let last = state.entries.iter().rev().find(|e| e.mask & bit != 0)?.t;
        let span = i128::from(last) - i128::from(first);
        let mean = span as f64 / gaps as f64;
        return match m.agg {
            Agg::IntervalMean => Some(mean),
            _ => {
                // Variance × gaps², exact: gaps · Σg² − (Σg)².
                let scaled = (gaps * acc.sum as i128 - span * span).max(0);
                let sd = (scaled as f64).sqrt() / gaps as f64;
                (mean > 0.0).then(|| sd / mean)
            }
        };
    }
    // The window ends at the trigger: what is older than the rule's duration (or the
    // measure's `within`) before it does not count, even if no later event evicted it yet.
    let lo = m
        .within_ms
        .or(duration_ms)
        .map_or(i64::MIN, |w| trig.t.saturating_sub(w));
    // `since`: only events at or after the latest event of the anchor measure.
    let from = match m.since {
        Some(a) => {
            if state.acc.get(a).is_none_or(|x| x.n == 0) {
                return None;
            }
            let abit = 1u32 << a;
            state
                .entries
                .iter()
                .rev()
                .find(|e| e.mask & abit != 0 && e.t <= trig.t && e.t > lo)?
                .t
        }
        None => i64::MIN,
    };
    let limit = m.last.unwrap_or(usize::MAX);
    let money_cur = if m.money { trig.cur } else { 0 };
    // A bucketed window's older events of this measure: the buckets that overlap the span
    // (a bucket counts whole), start at or before the trigger, and lie after the `since`
    // anchor.
    let (mut bn, mut bnv, mut bsum) = (0.0f64, 0.0f64, 0.0f64);
    if let Some(b) = &state.buckets
        && b.mask & bit != 0
    {
        let cols = b.cols();
        let col = b.col(i);
        let trig_slot =
            (b.width > 0).then(|| trig.own_t.div_euclid(b.width).saturating_mul(b.width));
        let mut trig_counted = false;
        for (k, h) in b.heads.iter().enumerate().rev() {
            if h.start.saturating_add(b.width) <= lo.saturating_add(1) {
                break;
            }
            if h.start > trig.t || h.from < from || (money_cur != 0 && h.cur != money_cur) {
                continue;
            }
            if let Some(c) = b.cells.get(k * cols + col) {
                bn += f64::from(c.n);
                bnv += f64::from(c.n_vals);
                bsum += c.sum;
            }
            trig_counted |= Some(h.start) == trig_slot && h.cur == trig.cur;
        }
        if m.exclude_trigger
            && trig.folded
            && trig_counted
            && let Some((mask, vals)) = &trig.held
            && mask & bit != 0
        {
            bn -= 1.0;
            if let Some(v) = m.slot.map(|s| vals[s]).filter(|v| !v.is_nan()) {
                bnv -= 1.0;
                bsum -= v;
            }
        }
    }
    s.nums.clear();
    s.tags.clear();
    let mut count = 0usize;
    let mut newest_t: Option<i64> = None;
    for e in state.entries.iter().rev() {
        if e.t > trig.t {
            continue;
        }
        if e.t <= lo || e.t < from {
            break;
        }
        if e.mask & bit == 0 || (m.exclude_trigger && e.id() == trig.id) {
            continue;
        }
        if money_cur != 0 && e.cur != money_cur {
            continue;
        }
        count += 1;
        newest_t.get_or_insert(e.t);
        match m.agg {
            // A missing field is no value: it fails every predicate, and counts as no
            // distinct value either (tag 0; a present value hashes to 0 with chance 2⁻⁶⁴).
            Agg::CountDistinct if e.tag == 0 => {}
            Agg::CountDistinct => s.tags.push(e.tag),
            Agg::IntervalMean | Agg::IntervalCv => s.nums.push(e.t as f64),
            _ => {
                if let Some(slot) = m.slot {
                    let v = e.val(slot);
                    if !v.is_nan() {
                        s.nums.push(v);
                    }
                }
            }
        }
        if count >= limit {
            break;
        }
    }
    let n = s.nums.len() as f64;
    match m.agg {
        Agg::Count => Some(count as f64 + bn),
        Agg::Sum => Some(s.nums.iter().sum::<f64>() + bsum),
        Agg::Avg => (n + bnv > 0.0).then(|| (s.nums.iter().sum::<f64>() + bsum) / (n + bnv)),
        Agg::Min => s.nums.iter().copied().reduce(f64::min),
        Agg::Max => s.nums.iter().copied().reduce(f64::max),
        Agg::Last => s.nums.first().copied(),
        Agg::Median => {
            if s.nums.is_empty() {
                return None;
            }
            let mid = s.nums.len() / 2;
            let (_, m1, _) = s.nums.select_nth_unstable_by(mid, f64::total_cmp);
            let upper = *m1;
            if s.nums.len() % 2 == 1 {
                Some(upper)
            } else {
                let lower = s.nums[..mid].iter().copied().fold(f64::MIN, f64::max);
                Some((lower + upper) / 2.0)
            }
        }
        Agg::Stddev => (n > 0.0).then(|| stddev(&s.nums).1),
        Agg::CountDistinct => {
            s.tags.sort_unstable();
            s.tags.dedup();
            Some(s.tags.len() as f64)
        }
        Agg::IntervalMean | Agg::IntervalCv => {
            // Times newest first: the gaps between neighbours, in place.
            for k in 1..s.nums.len() {
                s.nums[k - 1] -= s.nums[k];
            }
            s.nums.pop();
            let min_gaps = if m.agg == Agg::IntervalCv { 2 } else { 1 };
            if s.nums.len() < min_gaps {
                return None;
            }
            let (mean, sd) = stddev(&s.nums);
            match m.agg {
                Agg::IntervalMean => Some(mean),
                _ => (mean > 0.0).then(|| sd / mean),
            }
        }
        Agg::Age => newest_t.map(|t| (trig.t - t) as f64),
        Agg::Ratio | Agg::Current => None,
    }
}

/// Mean and population standard deviation.
fn stddev(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rule(duration: i64, cap: usize) -> CompiledRule {
        let text = format!(
            "[[rule]]\nid = \"t.t\"\nversion = 1\ncategory = \"fraud\"\nseverity = \"low\"\nscore = 1\nevents = [\"bet_placed\"]\ngroup_by = \"player\"\nwindow = {{ duration = \"{duration}ms\", max_events = {cap} }}\nreason = \"x\"\n[[rule.measure]]\nname = \"n\"\nagg = \"count\"\n[[rule.when]]\nmeasure = \"n\"\nop = \"gte\"\nvalue = 1\n"
        );
        let set = crate::rules::RuleSet::from_sources(&[("t.toml".into(), text)]).expect("rule");
        (*set.rules[0]).clone()
    }

    fn entry(id: u128, t: i64) -> Entry {
        Entry::new(id, t, 1, 0, [f64::NAN; MAX_SLOTS], 0, None)
    }

    #[test]
    fn keeps_time_order_drops_duplicates_and_bounds_by_duration_and_cap() {
        let r = rule(1000, 3);
        let mut k = KeyState::default();
        assert!(k.insert(entry(1, 100), &r).fresh);
        assert!(k.insert(entry(2, 300), &r).fresh);
        assert!(
            k.insert(entry(3, 200), &r).fresh,
            "out of order goes in its place"
        );
        assert_eq!(
            k.entries.iter().map(|e| e.t).collect::<Vec<_>>(),
            [100, 200, 300]
        );
        assert!(
            !k.insert(entry(3, 200), &r).fresh,
            "same id and time: a duplicate"
        );
        assert!(!k.insert(entry(1, 100), &r).fresh);
        let ins = k.insert(entry(4, 400), &r);
        assert_eq!(
            (ins.fresh, ins.evicted),
            (true, 1),
            "the cap drops the oldest"
        );
        let ins = k.insert(entry(5, 1300), &r);
        assert_eq!(
            ins.evicted, 2,
            "200 and 300 are 1000 ms or more older than 1300"
        );
        assert_eq!(k.entries.iter().map(|e| e.id()).collect::<Vec<_>>(), [4, 5]);
        assert_eq!(k.acc[0].n, 2, "the running count follows the window");
        assert_eq!(k.expire(1300, &r), 2);
        assert_eq!((k.entries.len(), k.acc[0].n), (0, 0));
    }

    const MIN: i64 = 60_000;

    /// A 1 h window in 5 min buckets: `n` counts bets, `s` sums stakes, `c` is the last
    /// cancelled withdrawal, `since` sums stakes since it.
    fn bucketed(cap: usize) -> CompiledRule {
        let text = format!(
            r#"[[rule]]
id = "t.b"
version = 1
category = "fraud"
severity = "low"
score = 1
events = ["bet_placed", "withdrawal"]
group_by = "player"
window = {{ duration = "1h", max_events = {cap}, bucket = "5m" }}
reason = "x"
[[rule.measure]]
name = "n"
agg = "count"
events = ["bet_placed"]
[[rule.measure]]
name = "s"
agg = "sum"
field = "stake"
events = ["bet_placed"]
[[rule.measure]]
name = "c"
agg = "last"
field = "amount"
events = ["withdrawal"]
[[rule.measure]]
name = "since"
agg = "sum"
field = "stake"
events = ["bet_placed"]
since = "c"
[[rule.when]]
measure = "n"
op = "gte"
value = 1
"#
        );
        let set = crate::rules::RuleSet::from_sources(&[("t.toml".into(), text)]).expect("rule");
        (*set.rules[0]).clone()
    }

    /// A bet (slot 0: stake) or, with `withdrawal`, a cancelled withdrawal (slot 1: amount).
    fn ev(id: u128, t: i64, v: f64, withdrawal: bool) -> Entry {
        let mut vals = [f64::NAN; MAX_SLOTS];
        let mask = if withdrawal {
            vals[1] = v;
            0b0100
        } else {
            vals[0] = v;
            0b1011
        };
        Entry::new(id, t, mask, 7, vals, 0, None)
    }

    fn measure(k: &KeyState, r: &CompiledRule, i: usize, t: i64) -> Option<f64> {
        let trig = Trigger {
            id: 0,
            t,
            own_t: t,
            cur: 7,
            held: None,
            folded: false,
        };
        let mut s = Scratch::default();
        let eval = Eval {
            rule: r,
            state: k,
            trig: &trig,
            current: |_| None,
        };
        eval.reset(&mut s);
        eval.get(i, &mut s)
    }

    /// The measures as an exact window would give them: `(count, sum)` of bets in
    /// `(t - 1h, t]`.
    fn exact(events: &[(i64, f64)], t: i64) -> (f64, f64) {
        let inside = events.iter().filter(|(x, _)| *x > t - 60 * MIN && *x <= t);
        inside.fold((0.0, 0.0), |(n, s), (_, v)| (n + 1.0, s + v))
    }

    /// A fold of more entries than it reads from the front (a burst: hundreds of bets within a
    /// bucket width) finds them by searching, and folds every one: the totals and the buckets
    /// hold them all, each under its slot.
    #[test]
    fn a_burst_longer_than_the_fold_s_scan_is_folded_whole() {
        let r = bucketed(5000);
        let mut k = KeyState::default();
        let mut events = Vec::new();
        // 300 bets within the first two minutes, then 40 more over the next minute.
        for i in 0..340u128 {
            let t = if i < 300 {
                i as i64 * 400
            } else {
                120_000 + (i as i64 - 300) * 1500
            };
            let v = 100.0 + i as f64;
            assert!(k.insert(ev(i + 1, t, v, false), &r).fresh);
            events.push((t, v));
        }
        // Twelve minutes later: everything before it is due.
        let t = 12 * 60_000;
        k.insert(ev(1000, t, 1.0, false), &r);
        events.push((t, 1.0));
        let b = k.buckets.as_ref().expect("folded");
        assert_eq!(b.events, 340, "every entry of the burst is folded");
        assert_eq!(
            b.heads.iter().map(|h| (h.start, h.n)).collect::<Vec<_>>(),
            [(0, 340)],
            "all in the slot of [0, 5 min)"
        );
        assert_eq!(k.entries.len(), 1);
        let (n, sum) = exact(&events, t);
        assert_eq!(measure(&k, &r, 0, t), Some(n));
        assert_eq!(measure(&k, &r, 1, t), Some(sum));
    }

    #[test]
    fn a_bucketed_window_keeps_the_newest_bucket_exact_and_folds_the_rest() {
        let r = bucketed(1000);
        assert_eq!(
            (r.bucket_ms, r.fold_mask, r.exact_mask),
            (Some(5 * MIN), 0b1011, 0b0100)
        );
        let mut k = KeyState::default();
        let t0 = 1_000 * 60 * MIN; // a multiple of 5 min
        let mut sent = Vec::new();
        for i in 0..120 {
            let t = t0 + i * 30_000; // a bet every 30 s for an hour
            let v = 100.0 + i as f64;
            assert!(k.insert(ev(i as u128, t, v, false), &r).fresh);
            sent.push((t, v));
        }
        let newest = t0 + 119 * 30_000;
        // Exact: the bets within 5 min of the newest (10 of them); the rest in 5 min buckets.
        assert_eq!(k.entries.len(), 10);
        let b = k.buckets.as_ref().unwrap();
        assert_eq!((b.heads.len(), b.events), (11, 110));
        assert!(
            b.heads
                .iter()
                .all(|h| h.start % (5 * MIN) == 0 && h.from == h.start)
        );
        // While nothing has left the hour, the totals are exact.
        assert_eq!(measure(&k, &r, 0, newest), Some(120.0));
        assert_eq!(measure(&k, &r, 1, newest), Some(exact(&sent, newest).1));
        // A duplicate within the exact part is recognised.
        assert!(!k.insert(ev(119, newest, 0.0, false), &r).fresh);
        assert!(!k.insert(ev(115, newest - 120_000, 0.0, false), &r).fresh);

        // 40 min later: the window (t - 1h, t] starts at t0 + 39:30; the bucket [35:00, 40:00)
        // overlaps it and counts whole, those before it are gone.
        let t = newest + 40 * MIN;
        k.insert(ev(1000, t, 1.0, false), &r);
        sent.push((t, 1.0));
        let (n, sum) = exact(&sent, t);
        let counted_early: Vec<_> = sent
            .iter()
            .filter(|(x, _)| *x >= t0 + 35 * MIN && *x <= t - 60 * MIN)
            .collect();
        assert_eq!(counted_early.len(), 10, "35:00 .. 39:30 every 30 s");
        let early: f64 = counted_early.iter().map(|(_, v)| v).sum();
        assert_eq!(measure(&k, &r, 0, t), Some(n + 10.0));
        assert_eq!(measure(&k, &r, 1, t), Some(sum + early));
        assert_eq!(
            k.acc[0].n as usize,
            n as usize + 10,
            "the running totals agree"
        );
        // When the window's edge falls on a bucket's, the buckets count exactly.
        let t2 = t0 + 100 * MIN - 1;
        k.insert(ev(1001, t2, 1.0, false), &r);
        sent.push((t2, 1.0));
        assert_eq!(measure(&k, &r, 0, t2), Some(exact(&sent, t2).0));
        assert_eq!(measure(&k, &r, 1, t2), Some(exact(&sent, t2).1));

        // An event older than the exact part goes straight into its bucket (counted, though its
        // id cannot be checked there).
        let ins = k.insert(ev(1002, t2 - 30 * MIN, 5.0, false), &r);
        assert!(ins.fresh && ins.folded);
        assert_eq!(measure(&k, &r, 0, t2), Some(exact(&sent, t2).0 + 1.0));
    }

    #[test]
    fn since_counts_buckets_after_the_anchor_exactly_and_the_cap_drops_whole_buckets() {
        let r = bucketed(1000);
        let mut k = KeyState::default();
        let t0 = 1_000 * 60 * MIN;
        // Bets every minute; a cancelled withdrawal at 12:30, inside the 10:00 slot.
        for i in 0..30 {
            k.insert(ev(i, t0 + i as i64 * MIN, 10.0, false), &r);
            if i == 12 {
                k.insert(ev(500, t0 + 12 * MIN + 30_000, 300.0, true), &r);
            }
        }
        let now = t0 + 29 * MIN;
        assert_eq!(
            k.entries.iter().filter(|e| e.mask == 0b0100).count(),
            1,
            "the anchor stays exact"
        );
        let b = k.buckets.as_ref().unwrap();
        assert!(
            b.heads
                .iter()
                .any(|h| h.start == t0 + 10 * MIN && h.from == t0 + 12 * MIN + 30_000)
        );
        assert_eq!(measure(&k, &r, 2, now), Some(300.0));
        assert_eq!(
            measure(&k, &r, 3, now),
            Some(170.0),
            "bets at 13..29 min, not those before 12:30"
        );
        assert_eq!(measure(&k, &r, 1, now), Some(300.0));

        // The cap counts folded events; over it the oldest bucket leaves whole.
        let r = bucketed(20);
        let mut k = KeyState::default();
        for i in 0..20 {
            k.insert(ev(i, t0 + i as i64 * MIN, 1.0, false), &r);
        }
        assert_eq!(k.events(), 20);
        let ins = k.insert(ev(20, t0 + 20 * MIN, 1.0, false), &r);
        assert_eq!((ins.evicted, k.events()), (1, 16), "the 0..4 min bucket");
        assert_eq!(k.acc[0].n, 16);
    }

    /// Every folded bet lands in the bucket of its slot and of the newest `since` anchor at or
    /// before it within that slot (the slot's start when there is none), however the folds'
    /// batches fall: anchors before a batch, inside one, in the slot of a later batch.
    #[test]
    fn folded_bets_land_under_the_newest_anchor_of_their_slot_whatever_the_batches() {
        let r = bucketed(10_000);
        let width = 5 * MIN;
        for seed in 1..=20u64 {
            let mut x = seed;
            let mut next = |n: u64| {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (x >> 33) % n
            };
            let t0 = 1_000 * 60 * MIN;
            let (mut t, mut id) = (t0, 0u128);
            let mut k = KeyState::default();
            let (mut bets, mut anchors) = (Vec::new(), Vec::new());
            // 50 minutes of play: nothing leaves the 1 h window.
            while t < t0 + 50 * MIN {
                t += 1_000 + next(40_000) as i64;
                id += 1;
                let anchor = next(20) == 0;
                k.insert(ev(id, t, 1.0, anchor), &r);
                if anchor {
                    anchors.push(t);
                } else {
                    bets.push((id, t));
                }
            }
            let exact: std::collections::HashSet<u128> = k.entries.iter().map(Entry::id).collect();
            let mut want: std::collections::BTreeMap<(i64, i64), u32> = Default::default();
            for (_, t) in bets.iter().filter(|(id, _)| !exact.contains(id)) {
                let start = t.div_euclid(width) * width;
                let from = anchors
                    .iter()
                    .copied()
                    .filter(|a| *a >= start && a <= t)
                    .max()
                    .unwrap_or(start);
                *want.entry((start, from)).or_default() += 1;
            }
            let got: std::collections::BTreeMap<(i64, i64), u32> = k
                .buckets
                .as_ref()
                .map(|b| b.heads.iter().map(|h| ((h.start, h.from), h.n)).collect())
                .unwrap_or_default();
            assert!(!want.is_empty(), "seed {seed}: nothing folded");
            assert_eq!(got, want, "seed {seed}");
        }
    }

    /// What the engine judges a condition by before it evaluates a rule is what the rule's
    /// evaluation computes, for every measure the running totals give; the others (`since`, a
    /// `last`, a window newer than the trigger) are left to the evaluation.
    #[test]
    fn the_totals_give_what_evaluation_gives_or_nothing() {
        let r = bucketed(10_000);
        let t0 = 1_000 * 60 * MIN;
        let mut k = KeyState::default();
        let check = |k: &KeyState, t: i64| {
            for i in 0..r.measures.len() {
                let got = from_totals(i, &r.measures[i], k, t, 7, None);
                if let Some(v) = got {
                    assert_eq!(v, measure(k, &r, i, t), "measure {i} at {t}");
                }
                match i {
                    0 | 1 => assert!(got.is_some(), "measure {i} at {t}"),
                    // `last`; `since`, once it has an anchor.
                    2 => assert!(got.is_none()),
                    _ => assert!(got.is_none() || k.acc.get(i).is_none_or(|a| a.n == 0)),
                }
            }
        };
        check(&k, t0);
        for n in 0..40u128 {
            let t = t0 + n as i64 * 20_000;
            k.insert(ev(n + 1, t, 10.0 + n as f64, n % 13 == 5), &r);
            check(&k, t);
        }
        // A trigger older than the window's newest event: the totals hold later events.
        assert_eq!(from_totals(0, &r.measures[0], &k, t0, 7, None), None);
        // A trigger in another currency: sums are the evaluation's (a scan); counts are not
        // money.
        assert!(from_totals(0, &r.measures[0], &k, t0 + 40 * 20_000, 9, None).is_some());
        assert_eq!(
            from_totals(1, &r.measures[1], &k, t0 + 40 * 20_000, 9, None).map(|_| ()),
            if r.measures[1].money { None } else { Some(()) }
        );
        // The trigger held by the window and excluded: one event and its value less.
        let mut ex = r.clone();
        ex.measures[1].exclude_trigger = true;
        let t = t0 + 39 * 20_000;
        let held = (0b1011, {
            let mut v = [f64::NAN; MAX_SLOTS];
            v[0] = 49.0;
            v
        });
        let all = from_totals(1, &r.measures[1], &k, t, 7, None)
            .flatten()
            .unwrap();
        let less = from_totals(1, &ex.measures[1], &k, t, 7, Some(&held))
            .flatten()
            .unwrap();
        assert_eq!(all - less, 49.0);
    }

    /// An event that goes straight into its bucket (it came later than a bucket width after
    /// newer events of its key) counts once when sent again: its id is kept while its bucket
    /// is, and saved with the window (unit format 3; format 2, as before, while there is none).
    #[test]
    fn an_event_folded_on_arrival_counts_once_when_sent_again_and_across_a_save() {
        use crate::engine::units::{decode_window, encode_window};
        let r = bucketed(5_000);
        let t0 = 1_000 * 60 * MIN;
        let mut k = KeyState::default();
        for n in 0..60u128 {
            k.insert(ev(n + 1, t0 + n as i64 * 20_000, 10.0, false), &r);
        }
        assert!(k.buckets.is_some());
        assert_eq!(encode_window(&k).unwrap()[0], 2, "no id to keep: format 2");
        let sum = |k: &KeyState| measure(k, &r, 1, k.newest);
        let before = sum(&k);
        let late = ev(100, t0 + 60_000, 7.0, false);
        assert!(
            k.insert(late.clone(), &r).folded,
            "straight into its bucket"
        );
        assert_eq!(sum(&k), before.map(|v| v + 7.0));
        assert!(!k.insert(late.clone(), &r).fresh, "sent again");
        assert_eq!(sum(&k), before.map(|v| v + 7.0));
        let bytes = encode_window(&k).unwrap();
        assert_eq!(bytes[0], 3);
        let mut loaded = decode_window(&bytes).unwrap();
        loaded.conform(&r);
        assert_eq!(loaded.late_ids(), k.late_ids());
        assert!(
            !loaded.insert(late.clone(), &r).fresh,
            "sent again after a restart"
        );
        assert_eq!(sum(&loaded), before.map(|v| v + 7.0));
        // Another folded on arrival (20 min of bets were folded up to t0 + 10 min), in the
        // next bucket's slot ([t0 + 5 min, t0 + 10 min)).
        let other = ev(101, t0 + 7 * MIN, 3.0, false);
        assert!(loaded.insert(other.clone(), &r).folded);
        assert_eq!(loaded.late_ids().len(), 2);
        // The first one's bucket gone (the window's old edge past t0 + 5 min), its id goes
        // too; the other's bucket stays, and its id with it.
        loaded.insert(ev(200, t0 + 66 * MIN, 1.0, false), &r);
        assert!(loaded.buckets.is_some());
        assert_eq!(loaded.late_ids().len(), 1);
        assert!(!loaded.insert(other, &r).fresh);
        // No bucket left (the key two hours on): no id, and no buckets to write.
        loaded.insert(ev(201, t0 + 3 * 60 * MIN, 1.0, false), &r);
        assert!(loaded.late_ids().is_empty());
        assert_eq!(
            encode_window(&loaded).unwrap()[0],
            1,
            "no buckets left: format 1"
        );
    }

    /// What the running totals should be, counted from what the window holds: each windowed
    /// measure over the entries (as [`KeyState::account`] adds them) and, for a folded one, its
    /// column of every bucket; an interval measure's gaps counted again on a copy.
    fn totals_from_scratch(k: &KeyState, r: &CompiledRule) -> Vec<Acc> {
        let mut acc = vec![Acc::default(); r.measures.len()];
        for e in &k.entries {
            let mut bits = e.mask & r.windowed_mask;
            while bits != 0 {
                let i = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                acc[i].n += 1;
                if let Some(slot) = r.measures[i].slot {
                    let v = e.val(slot);
                    if !v.is_nan() {
                        acc[i].n_vals += 1;
                        acc[i].sum += v;
                    }
                }
            }
        }
        if let Some(b) = &k.buckets {
            let cols = b.cols();
            assert_eq!(
                b.cells.len(),
                b.heads.len() * cols,
                "a cell per bucket and column"
            );
            let mut mask = b.mask;
            while mask != 0 {
                let i = mask.trailing_zeros() as usize;
                mask &= mask - 1;
                let c = b.col(i);
                for x in b.cells.iter().skip(c).step_by(cols) {
                    acc[i].n += x.n;
                    acc[i].n_vals += x.n_vals;
                    acc[i].sum += x.sum;
                }
            }
        }
        if r.interval_mask != 0 {
            let mut copy = KeyState {
                entries: k.entries.clone(),
                acc: acc.clone().into_boxed_slice(),
                ..KeyState::default()
            };
            copy.count_gaps(r);
            let mut bits = r.interval_mask;
            while bits != 0 {
                let i = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                acc[i].sum = copy.acc[i].sum;
            }
        }
        acc
    }

    /// A small seeded generator (xorshift64*), so a failure replays.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// The running totals are kept as events enter, fold into buckets, expire and leave over
    /// the cap, each step adding or taking away what it moved: after every insertion of long
    /// random sequences (bursts, pauses past the window, same-millisecond ties, late events,
    /// events sent again, cancelled withdrawals as `since` anchors), they equal the totals
    /// counted from scratch from what the window holds, the window is in time order within its
    /// duration and cap, and a condition the totals decide reads what evaluation reads.
    #[test]
    fn running_totals_equal_a_count_from_scratch_over_random_sequences() {
        let interval = {
            let text = "[[rule]]\nid = \"t.i\"\nversion = 1\ncategory = \"fraud\"\nseverity = \"low\"\nscore = 1\nevents = [\"bet_placed\", \"withdrawal\"]\ngroup_by = \"player\"\nwindow = { duration = \"10m\", max_events = 31 }\nreason = \"x\"\n[[rule.measure]]\nname = \"n\"\nagg = \"count\"\nevents = [\"bet_placed\"]\n[[rule.measure]]\nname = \"s\"\nagg = \"sum\"\nfield = \"stake\"\nevents = [\"bet_placed\"]\n[[rule.measure]]\nname = \"gap\"\nagg = \"interval_mean\"\nevents = [\"bet_placed\"]\n[[rule.measure]]\nname = \"w\"\nagg = \"count\"\nevents = [\"withdrawal\"]\n[[rule.when]]\nmeasure = \"n\"\nop = \"gte\"\nvalue = 1\n";
            let set = crate::rules::RuleSet::from_sources(&[("t.toml".into(), text.into())])
                .expect("rule");
            (*set.rules[0]).clone()
        };
        let rules = [bucketed(5_000), bucketed(40), interval];
        for (ri, r) in rules.iter().enumerate() {
            for seed in 1..=8u64 {
                let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (ri as u64 + 1));
                let mut k = KeyState::default();
                let mut sent: Vec<Entry> = Vec::new();
                let mut t = 1_000 * 60 * MIN;
                for step in 0..1_500u128 {
                    let e = match rng.below(100) {
                        // Sent again: the same id and time.
                        0..=4 if !sent.is_empty() => {
                            sent[rng.below(sent.len() as u64) as usize].clone()
                        }
                        // Late: up to 20 minutes before the newest.
                        5..=9 => ev(
                            step + 1,
                            t - rng.below(20 * MIN as u64) as i64,
                            rng.below(500) as f64,
                            rng.below(15) == 0,
                        ),
                        n => {
                            t += match n {
                                10..=12 => rng.below(3 * 60 * MIN as u64) as i64,
                                13..=40 => 0,
                                _ => rng.below(40_000) as i64,
                            };
                            ev(step + 1, t, rng.below(500) as f64, rng.below(15) == 0)
                        }
                    };
                    sent.push(e.clone());
                    k.insert(e, r);
                    let want = totals_from_scratch(&k, r);
                    let case = format!("rule {ri}, seed {seed}, step {step}");
                    for (i, (got, want)) in k.acc.iter().zip(&want).enumerate() {
                        if r.windowed_mask & (1 << i) == 0 && r.interval_mask & (1 << i) == 0 {
                            continue;
                        }
                        assert_eq!(
                            (got.n, got.n_vals),
                            (want.n, want.n_vals),
                            "{case}: measure {i}"
                        );
                        assert!(
                            (got.sum - want.sum).abs() <= 1e-6 * want.sum.abs().max(1.0),
                            "{case}: measure {i}: sum {} against {}",
                            got.sum,
                            want.sum
                        );
                    }
                    assert!(
                        k.entries
                            .iter()
                            .zip(k.entries.iter().skip(1))
                            .all(|(a, b)| a.t <= b.t),
                        "{case}: entries in time order"
                    );
                    assert!(k.events() <= r.cap, "{case}: within the cap");
                    if let Some(d) = r.duration_ms {
                        assert!(
                            k.entries.iter().all(|x| x.t > k.newest - d),
                            "{case}: within the duration"
                        );
                    }
                    if let Some(b) = &k.buckets {
                        assert_eq!(
                            b.events,
                            b.heads.iter().map(|h| h.n).sum::<u32>(),
                            "{case}: bucket events"
                        );
                        assert!(
                            b.heads.iter().zip(b.heads.iter().skip(1)).all(|(x, y)| (
                                x.start, x.from, x.cur
                            ) < (
                                y.start, y.from, y.cur
                            )),
                            "{case}: buckets in (start, from, currency) order, each once"
                        );
                    }
                    for (i, m) in r.measures.iter().enumerate() {
                        if let Some(v) = from_totals(i, m, &k, k.newest, 7, None) {
                            let full = measure(&k, r, i, k.newest);
                            assert!(
                                v == full
                                    || v.zip(full).is_some_and(
                                        |(a, b)| (a - b).abs() <= 1e-6 * b.abs().max(1.0)
                                    ),
                                "{case}: measure {i} from the totals {v:?}, evaluated {full:?}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// A fold whose due entries include ones it keeps (a `since` anchor): the anchor stays, in
    /// order, and starts the bucket of the bets at or after it — one stamped the same
    /// millisecond too, though it came before the anchor.
    #[test]
    fn a_fold_keeps_the_anchors_in_order_and_cuts_buckets_at_them_ties_included() {
        let r = bucketed(10_000);
        let t0 = 1_000 * 60 * MIN;
        let mut k = KeyState::default();
        k.insert(ev(1, t0 + MIN, 10.0, false), &r);
        k.insert(ev(2, t0 + 2 * MIN, 20.0, false), &r);
        k.insert(ev(3, t0 + 2 * MIN, 500.0, true), &r);
        k.insert(ev(4, t0 + 3 * MIN, 40.0, false), &r);
        assert!(k.buckets.is_none());
        // Ten minutes after the first bet: the first slot's five minutes are folded.
        k.insert(ev(5, t0 + 11 * MIN, 50.0, false), &r);
        let ids: Vec<u128> = k.entries.iter().map(Entry::id).collect();
        assert_eq!(ids, [3, 5], "the anchor stays, before the newer bet");
        let heads: Vec<(i64, i64, u32)> = k
            .buckets
            .as_ref()
            .unwrap()
            .heads
            .iter()
            .map(|h| (h.start, h.from, h.n))
            .collect();
        assert_eq!(heads, [(t0, t0, 1), (t0, t0 + 2 * MIN, 2)]);
        let at = t0 + 11 * MIN;
        assert_eq!(measure(&k, &r, 0, at), Some(4.0));
        assert_eq!(measure(&k, &r, 1, at), Some(120.0));
        assert_eq!(
            measure(&k, &r, 3, at),
            Some(110.0),
            "20 + 40 + 50, from the anchor on"
        );
    }

    #[test]
    fn an_exact_state_takes_the_bucketed_form_of_its_rule_and_foreign_buckets_are_dropped() {
        let exact_rule = {
            let mut r = bucketed(1000);
            r.bucket_ms = None;
            r.fold_mask = 0;
            r.exact_mask = 0b1111;
            r
        };
        let r = bucketed(1000);
        let t0 = 1_000 * 60 * MIN;
        let (mut a, mut b) = (KeyState::default(), KeyState::default());
        for i in 0..40 {
            let e = ev(i, t0 + i as i64 * MIN, i as f64, i % 7 == 3);
            a.insert(e.clone(), &exact_rule);
            b.insert(e, &r);
        }
        assert!(a.buckets.is_none() && a.entries.len() == 40);
        a.conform(&r);
        // Folded as they came, the entries are folded in batches (the exact part spans one to
        // two widths); `conform` folds all that is due at once: one more fold brings both to
        // the same horizon.
        assert!(b.entries.len() > a.entries.len());
        b.fold_upto(b.newest - 5 * MIN, &r);
        let enc = |k: &KeyState| postcard::to_stdvec(k).unwrap();
        assert_eq!(
            enc(&a),
            enc(&b),
            "folding later gives what folding as they came gave"
        );
        for i in 0..4 {
            assert_eq!(
                measure(&a, &r, i, t0 + 39 * MIN),
                measure(&b, &r, i, t0 + 39 * MIN)
            );
        }
        // Buckets of another width cannot be split: dropped, the exact part stays.
        let mut other = r.clone();
        other.bucket_ms = Some(10 * MIN);
        b.conform(&other);
        assert!(b.buckets.as_ref().is_none_or(|x| x.width == 10 * MIN));
        assert_eq!(
            b.acc[0].n as usize,
            b.entries.iter().filter(|e| e.mask & 1 != 0).count()
                + b.buckets.as_ref().map_or(0, |x| x.events as usize)
        );
        // Without buckets again: what is left is exact.
        b.conform(&exact_rule);
        assert!(b.buckets.is_none());
        assert_eq!(
            b.acc[0].n as usize,
            b.entries.iter().filter(|e| e.mask & 1 != 0).count()
        );
    }

    /// A measure made `exact` (no longer folded) leaves the buckets and the other measures'
    /// folded totals as they were: only its own folded events go (they were 72 h of bets of
    /// the shipped deposit rule, all dropped with the buckets).
    #[test]
    fn buckets_folding_fewer_measures_keep_the_others_totals() {
        let r = bucketed(1000);
        assert_eq!(r.fold_mask, 0b1011);
        let mut narrow = r.clone();
        narrow.fold_mask = 0b0011;
        narrow.exact_mask |= 0b1000;
        let t0 = 1_000 * 60 * MIN;
        let mut k = KeyState::default();
        for i in 0..40 {
            k.insert(ev(i, t0 + i as i64 * MIN, i as f64, false), &r);
        }
        let heads = k.buckets.as_ref().map(|b| b.heads.len()).unwrap_or(0);
        assert!(heads > 3, "{heads}");
        let before: Vec<_> = (0..2).map(|i| measure(&k, &r, i, t0 + 39 * MIN)).collect();
        k.conform(&narrow);
        let b = k.buckets.as_ref().expect("buckets kept");
        assert_eq!(
            (b.heads.len(), b.mask, b.cells.len()),
            (heads, 0b0011, 2 * heads)
        );
        let after: Vec<_> = (0..2)
            .map(|i| measure(&k, &narrow, i, t0 + 39 * MIN))
            .collect();
        assert_eq!(after, before);
        // The measure no longer folded counts what is still held one by one.
        let exact: f64 = k.entries.iter().map(|e| e.val(0)).sum();
        assert_eq!(k.acc[3].sum, exact);
        assert_eq!(k.acc[0].n as usize, 40);
    }

    #[test]
    fn entries_kept_one_by_one_at_the_front_do_not_make_every_insertion_fold() {
        // A withdrawal (`last`: kept one by one) stays at the front for the whole hour; bets a
        // minute apart are folded in batches all the same: the exact part grows to two widths
        // (10 bets) before a fold takes it back to one. Before, the front entry said a fold was
        // due on every insertion (a binary search and a scan each time).
        let r = bucketed(1000);
        let t0 = 1_000 * 60 * MIN;
        let mut k = KeyState::default();
        k.insert(ev(0, t0, 5.0, true), &r);
        let mut bets_held = Vec::new();
        for i in 1..40u128 {
            k.insert(ev(i, t0 + i as i64 * MIN, 1.0, false), &r);
            bets_held.push(k.entries.iter().filter(|e| e.mask == 0b1011).count());
        }
        assert_eq!(bets_held.iter().max(), Some(&10), "{bets_held:?}");
        assert!(
            bets_held[20..].iter().all(|n| (5..=10).contains(n)),
            "{bets_held:?}"
        );
        assert_eq!(k.entries.front().map(|e| e.mask), Some(0b0100));
        assert_eq!(k.acc[0].n, 39, "every bet counted, folded or not");
    }

    #[test]
    fn an_entry_is_64_bytes_as_docs_rules_md_says() {
        assert_eq!(std::mem::size_of::<Entry>(), 64);
        // A key's map slot (key and state) is no bigger than before buckets.
        assert_eq!(std::mem::size_of::<(u128, KeyState)>(), 112);
    }

    #[test]
    fn a_window_grows_by_a_quarter_within_its_cap_and_gives_room_back() {
        let r = rule(3_600_000, 200);
        let mut k = KeyState::default();
        let mut room = 0;
        for i in 0..200u128 {
            k.insert(entry(i, i as i64 * 10), &r);
            let now = k.entries.capacity();
            if now != room {
                // A quarter more (at least 4), not twice as much.
                assert!(now <= room + (room / 4).max(4), "{room} -> {now}");
                room = now;
            }
        }
        assert_eq!(k.entries.len(), 200);
        assert!(room <= 201, "room {room} beyond the cap");
        // Past the cap the oldest leave: no more room is taken.
        for i in 200..300u128 {
            k.insert(entry(i, i as i64 * 10), &r);
        }
        assert_eq!(k.entries.len(), 200);
        assert!(k.entries.capacity() <= 201);
        // An hour later the window holds one event: three quarters empty, half given back.
        k.insert(entry(1_000, 3_000 + 3_600_001), &r);
        assert_eq!(k.entries.len(), 1);
        assert!(k.entries.capacity() <= 64, "{}", k.entries.capacity());
    }

    #[test]
    fn a_small_window_grows_once_to_its_whole_room_and_never_moves_again() {
        let r = rule(3_600_000, 51);
        let mut k = KeyState::default();
        k.insert(entry(0, 0), &r);
        assert_eq!(k.entries.capacity(), 8);
        for i in 1..9u128 {
            k.insert(entry(i, i as i64 * 10), &r);
        }
        assert_eq!((k.entries.len(), k.entries.capacity()), (9, 52));
        k.entries.make_contiguous();
        let at = k.entries.as_slices().0.as_ptr();
        for i in 9..500u128 {
            k.insert(entry(i, i as i64 * 10), &r);
        }
        assert_eq!((k.entries.len(), k.entries.capacity()), (51, 52));
        // The same buffer (made contiguous above, so its first entry is at its start): the
        // ring's two parts still lie within it.
        let room = at as usize..at as usize + 52 * std::mem::size_of::<Entry>();
        let (a, b) = k.entries.as_slices();
        for part in [a, b].into_iter().filter(|p| !p.is_empty()) {
            assert!(room.contains(&(part.as_ptr() as usize)), "moved");
        }
    }

    /// The entry as it was written before its id was kept in halves and its label behind a
    /// thin pointer: what snapshots, the changelog and the Lambda's units hold.
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct EntryBefore {
        id: u128,
        t: i64,
        mask: u32,
        cur: u32,
        vals: [f64; MAX_SLOTS],
        tag: u64,
        label: Option<Box<str>>,
    }

    #[test]
    fn an_entry_is_written_and_read_as_before() {
        let id = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210_u128;
        let before = EntryBefore {
            id,
            t: 1_700_000_000_000,
            mask: 0b101,
            cur: 7,
            vals: [12.5, 0.0, -3.0, 1e9],
            tag: 42,
            label: Some("player-9".into()),
        };
        let now = Entry::new(
            id,
            before.t,
            before.mask,
            before.cur,
            before.vals,
            before.tag,
            Some("player-9".into()),
        );
        assert_eq!(now.id(), id);
        let old_bytes = postcard::to_stdvec(&before).unwrap();
        assert_eq!(postcard::to_stdvec(&now).unwrap(), old_bytes);
        let read: Entry = postcard::from_bytes(&old_bytes).unwrap();
        assert_eq!(read.id(), id);
        assert_eq!(read.label(), Some("player-9"));
        assert_eq!(read.vals(), before.vals);
        let json = serde_json::to_string(&now).unwrap();
        assert_eq!(json, serde_json::to_string(&before).unwrap());
        let back: EntryBefore = serde_json::from_str(&json).unwrap();
        assert_eq!(back, before);
        // The common entry: two values, no third or fourth, no label (nothing behind `more`).
        let plain = EntryBefore {
            vals: [12.5, -3.0, f64::NAN, f64::NAN],
            label: None,
            ..before
        };
        let now = Entry::new(
            id, plain.t, plain.mask, plain.cur, plain.vals, plain.tag, None,
        );
        assert_eq!(now.heap_bytes(), 0);
        let old_bytes = postcard::to_stdvec(&plain).unwrap();
        assert_eq!(postcard::to_stdvec(&now).unwrap(), old_bytes);
        let read: Entry = postcard::from_bytes(&old_bytes).unwrap();
        assert_eq!(postcard::to_stdvec(&read).unwrap(), old_bytes);
        assert_eq!((read.val(0), read.val(1)), (12.5, -3.0));
        assert!(read.val(2).is_nan() && read.val(3).is_nan() && read.label().is_none());
        assert_eq!(
            serde_json::to_string(&now).unwrap(),
            serde_json::to_string(&plain).unwrap()
        );
    }

    /// A rule with two interval measures over a part of its events (bit 1: bets, bit 2:
    /// bets of at least 100), beside a count of everything (bit 0).
    fn intervals(duration_ms: i64, cap: usize) -> CompiledRule {
        let text = format!(
            r#"[[rule]]
id = "t.gaps"
version = 1
category = "fraud"
severity = "low"
score = 1
events = ["bet_placed", "deposit"]
group_by = "player"
window = {{ duration = "{duration_ms}ms", max_events = {cap} }}
reason = "x"
[[rule.measure]]
name = "n"
agg = "count"
[[rule.measure]]
name = "gap"
agg = "interval_mean"
events = ["bet_placed"]
[[rule.measure]]
name = "cv"
agg = "interval_cv"
events = ["bet_placed"]
where = {{ stake = {{ gte = 100 }} }}
[[rule.when]]
measure = "cv"
op = "lt"
value = 0.05
"#
        );
        let set = crate::rules::RuleSet::from_sources(&[("t.toml".into(), text)]).expect("rule");
        (*set.rules[0]).clone()
    }

    /// Mean gap and coefficient of variation of the gaps between the entries of `bit`, read
    /// one by one (what the scan computes).
    fn gaps_by_hand(k: &KeyState, bit: u32) -> (Option<f64>, Option<f64>) {
        let ts: Vec<f64> = k
            .entries
            .iter()
            .filter(|e| e.mask & bit != 0)
            .map(|e| e.t as f64)
            .collect();
        let gaps: Vec<f64> = ts.windows(2).map(|w| w[1] - w[0]).collect();
        let mean = (!gaps.is_empty()).then(|| stddev(&gaps).0);
        let cv = (gaps.len() >= 2)
            .then(|| stddev(&gaps))
            .and_then(|(m, sd)| (m > 0.0).then(|| sd / m));
        (mean, cv)
    }

    fn close(a: Option<f64>, b: Option<f64>) -> bool {
        match (a, b) {
            (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1e-9),
            (None, None) => true,
            _ => false,
        }
    }

    #[test]
    fn interval_measures_keep_their_squared_gaps_through_every_change_and_match_a_scan() {
        let r = intervals(60_000, 40);
        assert_eq!(r.interval_mask, 0b110);
        let mut k = KeyState::default();
        let mut x: u64 = 7;
        let mut t = 1_000_000i64;
        let mut ids = 0u128;
        let mut last = (0u128, 0i64, 0u32);
        for step in 0..20_000 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let r16 = (x >> 40) & 0xffff;
            // Mostly later events at near-regular gaps; some out of order, some
            // redelivered, the odd long pause (the window expires).
            let at = match r16 % 20 {
                0 => t - (r16 as i64 % 5_000),
                1 => t + 90_000,
                _ => t + 1_000 + (r16 as i64 % 50),
            };
            t = t.max(at);
            let mask = match r16 % 4 {
                0 => 0b001,
                1 => 0b011,
                _ => 0b111,
            };
            // Every 13th a redelivery of the one before (refused as a duplicate).
            let (id, at, mask) = if r16.is_multiple_of(13) && ids > 0 {
                last
            } else {
                ids += 1;
                (ids, at, mask)
            };
            last = (id, at, mask);
            let mut e = entry(id, at);
            e.mask = mask;
            k.insert(e, &r);
            k.expire(t - 60_000, &r);
            let mut again = KeyState {
                entries: k.entries.clone(),
                acc: k.acc.clone(),
                ..KeyState::default()
            };
            again.count_gaps(&r);
            for i in [1usize, 2] {
                assert_eq!(
                    k.acc[i].sum, again.acc[i].sum,
                    "step {step}: measure {i}'s squared gaps as kept and as counted again"
                );
                assert!(k.acc[i].sum >= 0.0, "small gaps stay exact");
            }
            let (mean, _) = gaps_by_hand(&k, 0b010);
            let (_, cv) = gaps_by_hand(&k, 0b100);
            let got_mean = measure(&k, &r, 1, t);
            let got_cv = measure(&k, &r, 2, t);
            assert!(close(got_mean, mean), "step {step}: {got_mean:?} {mean:?}");
            assert!(close(got_cv, cv), "step {step}: {got_cv:?} {cv:?}");
        }
        // Evaluation reads the kept totals (not a scan that would hide a wrong total).
        for (n, gap) in [1_000, 1_100, 900, 1_000].into_iter().enumerate() {
            t += gap;
            let mut e = entry(ids + 1 + n as u128, t);
            e.mask = 0b111;
            k.insert(e, &r);
        }
        let cv = measure(&k, &r, 2, t);
        assert!(cv.is_some_and(|v| v > 0.0));
        k.acc[2].sum *= 4.0;
        assert_ne!(measure(&k, &r, 2, t), cv);
        // A state as a build before these totals wrote it (0), or with a wrong one: loading
        // counts them again.
        k.acc[1].sum = 0.0;
        k.conform(&r);
        assert_eq!(measure(&k, &r, 2, t), cv);
        assert_eq!(gaps_by_hand(&k, 0b010).0, measure(&k, &r, 1, t));
        // A gap too large to square exactly: the totals give way to the scan.
        let mut k = KeyState::default();
        let r = intervals(2_592_000_000, 40);
        let mut e = entry(1, 0);
        e.mask = 0b111;
        k.insert(e, &r);
        let mut e = entry(2, 1 << 27);
        e.mask = 0b111;
        k.insert(e, &r);
        assert_eq!(k.acc[1].sum, GAPS_UNKNOWN);
        assert_eq!(measure(&k, &r, 1, 1 << 27), Some((1u64 << 27) as f64));
        // Once the measure's entries are gone, its totals are kept again.
        k.expire(1 << 27, &r);
        assert_eq!((k.entries.len(), k.acc[1].sum), (0, 0.0));
        for (id, t) in [(3, (1 << 27) + 1_000), (4, (1 << 27) + 3_000)] {
            let mut e = entry(id, t);
            e.mask = 0b111;
            k.insert(e, &r);
        }
        assert_eq!(k.acc[1].sum, 4_000_000.0);
    }

    #[test]
    fn stddev_and_mean() {
        let (m, s) = stddev(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!((m, s), (5.0, 2.0));
    }
}
