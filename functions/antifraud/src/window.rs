//! One key's window of one rule: its events in time order (each reduced to the few values the
//! rule's measures read), deduplicated by event id, bounded by the rule's duration and cap; and
//! the measures computed over it.

use std::collections::VecDeque;

use crate::rules::{Agg, CompiledRule, MAX_SLOTS, Measure};

/// Bit of [`Entry::mask`] marking an event that triggered the rule (kept so a redelivered
/// trigger is recognised).
pub(crate) const TRIGGER_BIT: u32 = 1 << 31;

/// One event as a window keeps it.
#[derive(Debug, Clone)]
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

/// A key's state within one rule.
#[derive(Debug, Default)]
pub(crate) struct KeyState {
    pub entries: VecDeque<Entry>,
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
    /// Inserts in time order, unless the id is already in the window; then drops what fell
    /// out of the window.
    pub fn insert(&mut self, e: Entry, duration_ms: Option<i64>, cap: usize) -> Inserted {
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
        self.newest = if self.entries.is_empty() {
            e.t
        } else {
            self.newest.max(e.t)
        };
        self.entries.insert(pos, e);
        let mut evicted = 0;
        if let Some(d) = duration_ms {
            let horizon = self.newest.saturating_sub(d);
            while self.entries.front().is_some_and(|x| x.t <= horizon) {
                self.entries.pop_front();
                evicted += 1;
            }
        }
        while self.entries.len() > cap {
            self.entries.pop_front();
            evicted += 1;
        }
        Inserted {
            fresh: true,
            evicted,
        }
    }

    /// Approximate bytes held for this key (entries, labels, the key itself and the map slot).
    pub fn bytes(&self, key_len: usize) -> usize {
        let labels: usize = self
            .entries
            .iter()
            .filter_map(|e| e.label.as_ref())
            .map(|l| l.len())
            .sum();
        std::mem::size_of::<(Box<str>, KeyState)>()
            + 1
            + key_len
            + self.entries.capacity() * std::mem::size_of::<Entry>()
            + labels
    }
}

/// Reusable buffers for evaluation (no allocation per event).
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    pub values: Vec<Option<f64>>,
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
}

/// Computes every measure of `rule` into `scratch.values`; `current(i)` gives the trigger
/// event's value for `current` measures.
pub(crate) fn measure_all(
    rule: &CompiledRule,
    state: &KeyState,
    trig: &Trigger,
    current: impl Fn(usize) -> Option<f64>,
    scratch: &mut Scratch,
) {
    scratch.values.clear();
    for (i, m) in rule.measures.iter().enumerate() {
        let v = match m.agg {
            Agg::Current => current(i),
            Agg::Ratio => match m.of {
                Some((a, b)) => match (scratch.values[a], scratch.values[b]) {
                    (Some(x), Some(y)) if y != 0.0 => Some(x / y),
                    _ => None,
                },
                None => None,
            },
            _ => windowed(i, m, rule.duration_ms, state, trig, scratch),
        };
        scratch.values.push(v.or(m.default));
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
    // The window ends at the trigger: what is older than the rule's duration (or the
    // measure's `within`) before it does not count, even if no later event evicted it yet.
    let lo = m
        .within_ms
        .or(duration_ms)
        .map_or(i64::MIN, |w| trig.t.saturating_sub(w));
    // `since`: only events at or after the latest event of the anchor measure.
    let from = match m.since {
        Some(a) => {
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
            // Times newest first: the gaps between neighbours.
            let gaps: Vec<f64> = s.nums.windows(2).map(|w| w[0] - w[1]).collect();
            let min_gaps = if m.agg == Agg::IntervalCv { 2 } else { 1 };
            if gaps.len() < min_gaps {
                return None;
            }
            let (mean, sd) = stddev(&gaps);
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
        let mut k = KeyState::default();
        assert!(k.insert(entry(1, 100), Some(1000), 3).fresh);
        assert!(k.insert(entry(2, 300), Some(1000), 3).fresh);
        assert!(
            k.insert(entry(3, 200), Some(1000), 3).fresh,
            "out of order goes in its place"
        );
        assert_eq!(
            k.entries.iter().map(|e| e.t).collect::<Vec<_>>(),
            [100, 200, 300]
        );
        assert!(
            !k.insert(entry(3, 200), Some(1000), 3).fresh,
            "same id and time: a duplicate"
        );
        assert!(!k.insert(entry(1, 100), Some(1000), 3).fresh);
        let r = k.insert(entry(4, 400), Some(1000), 3);
        assert_eq!((r.fresh, r.evicted), (true, 1), "the cap drops the oldest");
        let r = k.insert(entry(5, 1300), Some(1000), 3);
        assert_eq!(
            r.evicted, 2,
            "200 and 300 are 1000 ms or more older than 1300"
        );
        assert_eq!(k.entries.iter().map(|e| e.id).collect::<Vec<_>>(), [4, 5]);
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
