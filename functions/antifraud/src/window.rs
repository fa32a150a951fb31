//! One key's window of one rule: its events in time order (each reduced to the few values the
//! rule's measures read), deduplicated by event id, bounded by the rule's duration and cap; and
//! the measures computed over it.

use std::collections::VecDeque;

use crate::rules::{Agg, CompiledRule, MAX_SLOTS, Measure};

/// Bit of [`Entry::mask`] marking an event that triggered the rule (kept so a redelivered
/// trigger is recognised).
pub(crate) const TRIGGER_BIT: u32 = 1 << 31;

/// One event as a window keeps it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Entry {
    /// The event id (a UUID) as a number: the dedup key and the evidence.
    pub id: u128,
    /// `occurred_at`, ms.
    pub t: i64,
    /// Bit `i`: the event passes the filter of the rule's measure `i`.
    pub mask: u32,
    /// The event's currency, packed (0: none).
    pub cur: u32,
    /// The rule's slot fields (NaN when the event has none).
    pub vals: [f64; MAX_SLOTS],
    /// Hash of the `count_distinct` field's value.
    pub tag: u64,
    /// The player id, for rules that report related players.
    pub label: Option<Box<str>>,
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
    /// Sum of those values.
    pub sum: f64,
}

/// A key's state within one rule.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct KeyState {
    pub entries: VecDeque<Entry>,
    /// Per measure (by index): totals over `entries`.
    pub acc: Vec<Acc>,
    /// The currency of the key's money events, packed (0: none yet).
    pub cur: u32,
    /// The key has seen money in more than one currency: money totals need a scan.
    pub mixed: bool,
    /// Event time of the last hit (for the cooldown).
    pub last_hit: Option<i64>,
    /// Engine clock when the key last saw an event (for idle eviction).
    pub last_active: i64,
    /// Latest event time seen.
    pub newest: i64,
}

/// What an insertion did.
pub(crate) struct Inserted {
    /// False: the event id was already in the window.
    pub fresh: bool,
    /// Entries that left the window (age or cap).
    pub evicted: usize,
}

impl KeyState {
    fn account(&mut self, e: &Entry, rule: &CompiledRule, sign: i32) {
        for (i, m) in rule.measures.iter().enumerate() {
            if e.mask & (1 << i) == 0 || !m.windowed {
                continue;
            }
            let a = &mut self.acc[i];
            a.n = a.n.wrapping_add_signed(sign);
            if let Some(slot) = m.slot {
                let v = e.vals[slot];
                if !v.is_nan() {
                    a.n_vals = a.n_vals.wrapping_add_signed(sign);
                    a.sum += f64::from(sign) * v;
                }
            }
        }
    }

    fn pop_front(&mut self, rule: &CompiledRule) {
        if let Some(e) = self.entries.pop_front() {
            self.account(&e, rule, -1);
        }
    }

    /// Drops entries at or before `horizon`; returns how many.
    pub fn expire(&mut self, horizon: i64, rule: &CompiledRule) -> usize {
        let mut n = 0;
        while self.entries.front().is_some_and(|x| x.t <= horizon) {
            self.pop_front(rule);
            n += 1;
        }
        n
    }

    /// Inserts in time order, unless the id is already in the window; then drops what fell
    /// out of the window (older than the rule's duration before the newest event, or over its
    /// cap).
    pub fn insert(&mut self, e: Entry, rule: &CompiledRule) -> Inserted {
        let pos = match self.entries.back() {
            Some(last) if last.t > e.t => self.entries.partition_point(|x| x.t <= e.t),
            _ => self.entries.len(),
        };
        // A duplicate has the same occurred_at, so it sits just before `pos`.
        let dup = self
            .entries
            .range(..pos)
            .rev()
            .take_while(|x| x.t == e.t)
            .any(|x| x.id == e.id);
        if dup {
            return Inserted {
                fresh: false,
                evicted: 0,
            };
        }
        if self.acc.len() != rule.measures.len() {
            self.acc = vec![Acc::default(); rule.measures.len()];
        }
        if e.cur != 0 {
            if self.cur == 0 {
                self.cur = e.cur;
            } else if self.cur != e.cur {
                self.mixed = true;
            }
        }
        self.newest = if self.entries.is_empty() {
            e.t
        } else {
            self.newest.max(e.t)
        };
        self.account(&e, rule, 1);
        self.entries.insert(pos, e);
        let mut evicted = 0;
        if let Some(d) = rule.duration_ms {
            evicted += self.expire(self.newest.saturating_sub(d), rule);
        }
        while self.entries.len() > rule.cap {
            self.pop_front(rule);
            evicted += 1;
        }
        Inserted {
            fresh: true,
            evicted,
        }
    }

    /// Approximate bytes held for this key (entries, labels, totals and the map slot).
    pub fn bytes(&self) -> usize {
        let labels: usize = self
            .entries
            .iter()
            .filter_map(|e| e.label.as_ref())
            .map(|l| l.len())
            .sum();
        std::mem::size_of::<(u128, KeyState)>()
            + 1
            + self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.acc.capacity() * std::mem::size_of::<Acc>()
            + labels
    }
}

/// Reusable buffers for evaluation (no allocation per event).
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    pub values: Vec<Option<f64>>,
    /// Whether `values[i]` is computed.
    pub known: Vec<bool>,
    pub thresholds: Vec<Option<f64>>,
    /// The threshold of each condition, by condition.
    pub cond_thresholds: Vec<Option<f64>>,
    nums: Vec<f64>,
    tags: Vec<u64>,
}

/// The trigger event as evaluation sees it.
pub(crate) struct Trigger {
    pub id: u128,
    pub t: i64,
    pub cur: u32,
    /// The trigger's filter bits and values when the window holds it (for `exclude_trigger`
    /// on running totals).
    pub held: Option<(u32, [f64; MAX_SLOTS])>,
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
        s.values.clear();
        s.values.resize(self.rule.measures.len(), None);
        s.known.clear();
        s.known.resize(self.rule.measures.len(), false);
    }

    /// Measure `i` (its `default` when undefined).
    pub fn get(&self, i: usize, s: &mut Scratch) -> Option<f64> {
        if s.known[i] {
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
        s.known[i] = true;
        v
    }

    /// Every measure (for the messages of a hit).
    pub fn all(&self, s: &mut Scratch) {
        for i in 0..self.rule.measures.len() {
            self.get(i, s);
        }
    }
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
    let plain = matches!(m.agg, Agg::Count | Agg::Sum | Agg::Avg)
        && m.within_ms.is_none()
        && m.last.is_none()
        && m.since.is_none()
        && state.newest <= trig.t
        && !(m.money && (state.mixed || state.cur != trig.cur));
    if plain {
        // Running totals: the engine expired what lies before the trigger's window.
        let (mut n, mut nv, mut sum) = (f64::from(acc.n), f64::from(acc.n_vals), acc.sum);
        if m.exclude_trigger
            && let Some((mask, vals)) = &trig.held
            && mask & bit != 0
        {
            n -= 1.0;
            if let Some(v) = m.slot.map(|s| vals[s]).filter(|v| !v.is_nan()) {
                nv -= 1.0;
                sum -= v;
            }
        }
        return match m.agg {
            Agg::Count => Some(n),
            Agg::Sum => Some(sum),
            _ => (nv > 0.0).then(|| sum / nv),
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
        if e.mask & bit == 0 || (m.exclude_trigger && e.id == trig.id) {
            continue;
        }
        if money_cur != 0 && e.cur != money_cur {
            continue;
        }
        count += 1;
        newest_t.get_or_insert(e.t);
        match m.agg {
            Agg::CountDistinct => s.tags.push(e.tag),
            Agg::IntervalMean | Agg::IntervalCv => s.nums.push(e.t as f64),
            _ => {
                if let Some(slot) = m.slot {
                    let v = e.vals[slot];
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
        Agg::Count => Some(count as f64),
        Agg::Sum => Some(s.nums.iter().sum()),
        Agg::Avg => (n > 0.0).then(|| s.nums.iter().sum::<f64>() / n),
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
    use super::*;

    fn rule(duration: i64, cap: usize) -> CompiledRule {
        let text = format!(
            "[[rule]]\nid = \"t.t\"\nversion = 1\ncategory = \"fraud\"\nseverity = \"low\"\nscore = 1\nevents = [\"bet_placed\"]\ngroup_by = \"player\"\nwindow = {{ duration = \"{duration}ms\", max_events = {cap} }}\nreason = \"x\"\n[[rule.measure]]\nname = \"n\"\nagg = \"count\"\n[[rule.when]]\nmeasure = \"n\"\nop = \"gte\"\nvalue = 1\n"
        );
        let set = crate::rules::RuleSet::from_sources(&[("t.toml".into(), text)]).expect("rule");
        (*set.rules[0]).clone()
    }

    fn entry(id: u128, t: i64) -> Entry {
        Entry {
            id,
            t,
            mask: 1,
            cur: 0,
            vals: [f64::NAN; MAX_SLOTS],
            tag: 0,
            label: None,
        }
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
        assert_eq!(k.entries.iter().map(|e| e.id).collect::<Vec<_>>(), [4, 5]);
        assert_eq!(k.acc[0].n, 2, "the running count follows the window");
        assert_eq!(k.expire(1300, &r), 2);
        assert_eq!((k.entries.len(), k.acc[0].n), (0, 0));
    }

    #[test]
    fn an_entry_is_96_bytes_as_docs_rules_md_says() {
        assert_eq!(std::mem::size_of::<Entry>(), 96);
    }

    #[test]
    fn stddev_and_mean() {
        let (m, s) = stddev(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!((m, s), (5.0, 2.0));
    }
}
