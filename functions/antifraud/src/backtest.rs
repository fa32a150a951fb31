//! A backtest: stored history replayed through a rule set with a fresh [`Engine`], and what it
//! would have raised, per rule — hits, players, example alerts, recommendations and the
//! distribution of the players' scores — so a threshold can be tuned before it is deployed
//! (`pitboss rules backtest`, docs/rules.md "Backtest").
//!
//! Pure: the caller reads the events (embedded store, ClickHouse) in the order they were
//! received and feeds them to [`Backtest::push`]; the engine's clock is each event's
//! `received_at` (its `occurred_at` when it has none), as on the bus. Events received before
//! `from` — from [`Backtest::start`] on, the longest window of the set before it (at most 7
//! days) — **warm the windows up**: they are evaluated, but their hits are not counted, so the
//! first counted events see full windows.

use std::collections::{HashMap, HashSet};

use pitboss_model::live::{Category, Measure, PushSource, Recommendation, Severity, Target};
use pitboss_model::{Event, Timestamp};
use serde::Serialize;

use crate::{Engine, Output, RuleSet};

/// The longest warm-up: windows longer than this start partly empty.
pub const MAX_WARMUP_MS: i64 = 7 * 24 * 60 * 60 * 1000;

/// How many refused or unreadable events are kept with their reason.
const MAX_PROBLEMS: usize = 20;

/// Counts an event not evaluated, keeping the first [`MAX_PROBLEMS`] reasons (the backtest's
/// and the warm start's reports).
pub(crate) fn note_problem(count: &mut u64, problems: &mut Vec<String>, reason: String) {
    *count += 1;
    if problems.len() < MAX_PROBLEMS {
        problems.push(reason);
    }
}

/// What a backtest found. Counts cover the events received in `[from, to)`; the warm-up's
/// hits are not in them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub from: Timestamp,
    pub to: Timestamp,
    /// Events received from here to `from` were evaluated to fill the windows, not counted.
    pub warmup_from: Timestamp,
    /// Every event read, warm-up included.
    pub events_read: u64,
    /// Of those, the warm-up's.
    pub events_warmup: u64,
    /// Events whose hits are counted (received within `[from, to)`).
    pub events_counted: u64,
    /// Events outside `[warmup_from, to)` (not evaluated).
    pub events_outside: u64,
    /// Stored rows that could not be rebuilt into an event, and events the engine refused
    /// (no UUID `event_id`): not evaluated.
    pub events_unreadable: u64,
    /// The first of those problems, with their reason.
    pub problems: Vec<String>,
    /// Evaluated events without `utc_offset_min` (sent without one, or stored before the store
    /// kept it): `local_hour` reads them at the set's default offset.
    pub events_without_utc_offset: u64,
    /// Messages the engine withheld because they broke the contract (`Output::rejected`).
    pub rejected: u64,
    pub alerts: u64,
    pub pushes: u64,
    /// Hits the set's `[[snooze]]`s silenced (no alert, no push).
    pub snoozed: u64,
    /// Every rule of the set, in the set's order, also those that never fired.
    pub rules: Vec<RuleReport>,
    /// Alerts per recommendation.
    pub recommendations: Recommendations,
    /// The alerts' `total_score` (the player's score after the hit), in buckets up to the
    /// review and block thresholds and above.
    pub score_distribution: Vec<ScoreBucket>,
    /// The scoring thresholds of the set.
    pub review: u32,
    pub block: u32,
    /// What may make this replay differ from the live engine (rules reading the local hour of
    /// events without an offset), and hints when nothing was read.
    pub warnings: Vec<String>,
}

/// One rule's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleReport {
    pub id: String,
    pub version: u32,
    pub category: Category,
    pub severity: Severity,
    pub score: u32,
    /// Events on which the rule fired (one hit raises an alert, a push, or both).
    pub hits: u64,
    pub alerts: u64,
    pub pushes: u64,
    /// Hits a `[[snooze]]` silenced (not in `hits`).
    pub snoozed: u64,
    /// Distinct players whose events fired the rule (a player of each tenant apart: ids are
    /// unique within a tenant).
    pub players: u64,
    /// Distinct group keys (players, devices, addresses…) the rule fired for, of each tenant
    /// apart.
    pub keys: u64,
    /// The first alerts (or, for a push-only rule, pushes) of the rule, oldest first.
    pub examples: Vec<Example>,
}

/// One hit, as an analyst reads it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Example {
    pub tenant_id: String,
    pub player_id: String,
    pub group_key: String,
    pub trigger_event_id: String,
    pub event_time: Timestamp,
    pub received_at: Timestamp,
    /// The alert's reason, or the push's title and body for a push-only rule.
    pub reason: String,
    /// Absent for a push-only rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_score: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recommendation: Option<Recommendation>,
    /// The conditions' measures: value, threshold, comparison.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub measures: Vec<Measure>,
}

/// Alerts per recommendation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Recommendations {
    pub none: u64,
    pub review: u64,
    pub block: u64,
}

/// Alerts whose `total_score` is in `[from, to)` (`to` absent: and above).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScoreBucket {
    pub from: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<u32>,
    pub alerts: u64,
}

/// How far before `from` the windows are warmed up: the longest window of the set (and the
/// scoring window), at most [`MAX_WARMUP_MS`]; a window bounded only by a count gets the most.
pub fn warmup_ms(set: &RuleSet) -> i64 {
    set.rules
        .iter()
        .map(|r| r.duration_ms.unwrap_or(MAX_WARMUP_MS))
        .chain([set.scoring.window_ms])
        .max()
        .unwrap_or(0)
        .clamp(0, MAX_WARMUP_MS)
}

/// The bucket edges of the score distribution: halfway to review, review, halfway to block,
/// block, twice block (the last bucket is open).
fn edges(review: u32, block: u32) -> Vec<u32> {
    let mut e = vec![
        0,
        review / 2,
        review,
        review + block.saturating_sub(review) / 2,
        block,
        block.saturating_mul(2),
    ];
    e.sort_unstable();
    e.dedup();
    e
}

#[derive(Debug, Default)]
struct Seen {
    /// `(tenant, player)`.
    players: HashSet<(String, String)>,
    /// `(tenant, group key)`.
    keys: HashSet<(String, String)>,
}

/// A backtest in progress: feed it events in the order they were received, then
/// [`Backtest::finish`].
#[derive(Debug)]
pub struct Backtest {
    engine: Engine,
    report: Report,
    index: HashMap<(String, u32), usize>,
    seen: Vec<Seen>,
    edges: Vec<u32>,
    examples: usize,
    out: Output,
    /// The rules reading `local_hour` (warned about when events come without an offset).
    local_hour_rules: Vec<String>,
}

impl Backtest {
    /// A backtest of `set` over the events received in `[from, to)`, keeping up to `examples`
    /// examples per rule.
    pub fn new(set: RuleSet, from: Timestamp, to: Timestamp, examples: usize) -> Backtest {
        let warmup_from = Timestamp::from_millis(from.as_millis().saturating_sub(warmup_ms(&set)));
        let rules: Vec<RuleReport> = set
            .rules
            .iter()
            .map(|r| RuleReport {
                id: r.id.clone(),
                version: r.version,
                category: r.category,
                severity: r.severity,
                score: r.score,
                hits: 0,
                alerts: 0,
                pushes: 0,
                snoozed: 0,
                players: 0,
                keys: 0,
                examples: Vec::new(),
            })
            .collect();
        let index = rules
            .iter()
            .enumerate()
            .map(|(i, r)| ((r.id.clone(), r.version), i))
            .collect();
        let edges = edges(set.scoring.review, set.scoring.block);
        let score_distribution = edges
            .iter()
            .enumerate()
            .map(|(i, &from)| ScoreBucket {
                from,
                to: edges.get(i + 1).copied(),
                alerts: 0,
            })
            .collect();
        let report = Report {
            from,
            to,
            warmup_from,
            events_read: 0,
            events_warmup: 0,
            events_counted: 0,
            events_outside: 0,
            events_unreadable: 0,
            problems: Vec::new(),
            events_without_utc_offset: 0,
            rejected: 0,
            alerts: 0,
            pushes: 0,
            snoozed: 0,
            rules,
            recommendations: Recommendations::default(),
            score_distribution,
            review: set.scoring.review,
            block: set.scoring.block,
            warnings: Vec::new(),
        };
        let local_hour_rules = set
            .rules
            .iter()
            .filter(|r| r.reads(&crate::field::Field::LocalHour))
            .map(|r| r.id.clone())
            .collect();
        let seen = (0..report.rules.len()).map(|_| Seen::default()).collect();
        Backtest {
            local_hour_rules,
            engine: Engine::new(set),
            report,
            index,
            seen,
            edges,
            examples,
            out: Output::default(),
        }
    }

    /// Where reading should start: `from` minus the warm-up.
    pub fn start(&self) -> Timestamp {
        self.report.warmup_from
    }

    /// The engine's clock for `event`: when it was received, else when it happened.
    pub fn clock(event: &Event) -> Timestamp {
        event.received_at.unwrap_or(event.occurred_at)
    }

    /// Records a stored row that could not be rebuilt into an event.
    pub fn unreadable(&mut self, reason: impl Into<String>) {
        self.report.events_read += 1;
        self.problem(reason.into());
    }

    fn problem(&mut self, reason: String) {
        note_problem(
            &mut self.report.events_unreadable,
            &mut self.report.problems,
            reason,
        );
    }

    /// Evaluates one event (the next received); counts its hits when it was received within
    /// `[from, to)`.
    pub fn push(&mut self, event: &Event) {
        self.report.events_read += 1;
        let now = Self::clock(event);
        if now < self.report.warmup_from || now >= self.report.to {
            self.report.events_outside += 1;
            return;
        }
        if event.utc_offset_min.is_none() {
            self.report.events_without_utc_offset += 1;
        }
        self.out.clear();
        if let Err(e) = self.engine.process(event, now, &mut self.out) {
            let id = event.event_id.as_deref().unwrap_or("(no id)");
            self.problem(format!("event {id}: {e}"));
            return;
        }
        if now < self.report.from {
            self.report.events_warmup += 1;
            return;
        }
        self.report.events_counted += 1;
        self.count(event);
    }

    fn count(&mut self, event: &Event) {
        let out = std::mem::take(&mut self.out);
        self.report.rejected += out.rejected.len() as u64;
        for r in &out.rejected {
            if self.report.problems.len() < MAX_PROBLEMS {
                let why: Vec<String> = r
                    .violations
                    .iter()
                    .map(|v| format!("{}: {}", v.path, v.message))
                    .collect();
                self.report.problems.push(format!(
                    "rule {}: {} withheld (breaks the contract): {}",
                    r.rule_id,
                    r.message,
                    why.join("; ")
                ));
            }
        }
        for z in &out.snoozed {
            if let Some(&i) = self.index.get(&(z.rule_id.clone(), z.rule_version)) {
                self.report.snoozed += 1;
                self.report.rules[i].snoozed += 1;
            }
        }
        // One hit per rule and event: its alert and its push share the trigger.
        let mut hit: Vec<usize> = Vec::new();
        for a in &out.alerts {
            let Some(&i) = self.index.get(&(a.rule_id.clone(), a.rule_version)) else {
                continue;
            };
            self.report.alerts += 1;
            match a.recommendation {
                Recommendation::None => self.report.recommendations.none += 1,
                Recommendation::Review => self.report.recommendations.review += 1,
                Recommendation::Block => self.report.recommendations.block += 1,
            }
            let b = self
                .edges
                .iter()
                .rposition(|&e| a.total_score >= e)
                .unwrap_or(0);
            if let Some(bucket) = self.report.score_distribution.get_mut(b) {
                bucket.alerts += 1;
            }
            let r = &mut self.report.rules[i];
            r.alerts += 1;
            if !hit.contains(&i) {
                hit.push(i);
            }
            self.seen[i]
                .keys
                .insert((a.tenant_id.clone(), a.group_key.clone()));
            if r.examples.len() < self.examples {
                r.examples.push(Example {
                    tenant_id: a.tenant_id.clone(),
                    player_id: a.player_id.clone().unwrap_or_default(),
                    group_key: a.group_key.clone(),
                    trigger_event_id: a.trigger_event_id.clone(),
                    event_time: a.event_time,
                    received_at: a.received_at,
                    reason: a.reason.clone(),
                    total_score: Some(a.total_score),
                    recommendation: Some(a.recommendation),
                    measures: a.measures.clone(),
                });
            }
        }
        for p in &out.pushes {
            let PushSource::Rule(src) = &p.source else {
                continue;
            };
            let Some(&i) = self.index.get(&(src.rule_id.clone(), src.rule_version)) else {
                continue;
            };
            self.report.pushes += 1;
            let r = &mut self.report.rules[i];
            r.pushes += 1;
            if hit.contains(&i) {
                continue;
            }
            // A push-only hit.
            hit.push(i);
            let key = match &p.target {
                Target::Player(k) | Target::Room(k) => k.clone(),
            };
            self.seen[i]
                .keys
                .insert((event.tenant_id.clone(), key.clone()));
            if r.examples.len() < self.examples {
                r.examples.push(Example {
                    tenant_id: event.tenant_id.clone(),
                    player_id: event.player_id.clone(),
                    group_key: key,
                    trigger_event_id: src.trigger_event_id.clone(),
                    event_time: p.event_time,
                    received_at: p.received_at,
                    reason: format!("{}: {}", p.title, p.body),
                    total_score: None,
                    recommendation: None,
                    measures: Vec::new(),
                });
            }
        }
        for i in hit {
            self.report.rules[i].hits += 1;
            self.seen[i]
                .players
                .insert((event.tenant_id.clone(), event.player_id.clone()));
        }
        self.out = out;
    }

    /// The report.
    pub fn finish(mut self) -> Report {
        for (r, s) in self.report.rules.iter_mut().zip(&self.seen) {
            r.players = s.players.len() as u64;
            r.keys = s.keys.len() as u64;
        }
        if !self.local_hour_rules.is_empty() && self.report.events_without_utc_offset > 0 {
            let ids = &self.local_hour_rules;
            self.report.warnings.push(format!(
                "{} read{} local_hour: {} of the events replayed have no utc_offset_min (sent \
                 without one, as the live engine read them too, or stored before the store kept \
                 it: store schema version 6), read at [engine] default_utc_offset_min ({} min)",
                ids.join(", "),
                if ids.len() == 1 { "s" } else { "" },
                self.report.events_without_utc_offset,
                self.engine.rules().limits.default_utc_offset_min
            ));
        }
        if self.report.events_read == 0 {
            self.report.warnings.push(
                "no stored event was received in the range or its warm-up: check --from, --to \
                 (times the events were received) and --tenant"
                    .into(),
            );
        } else if self.report.events_counted == 0 {
            self.report.warnings.push(
                "no stored event was received within [from, to): only warm-up events were read"
                    .into(),
            );
        }
        self.report
    }
}

/// Runs a whole backtest over `events` (in the order they were received).
pub fn run<'a>(
    set: RuleSet,
    events: impl IntoIterator<Item = &'a Event>,
    from: Timestamp,
    to: Timestamp,
    examples: usize,
) -> Report {
    let mut b = Backtest::new(set, from, to, examples);
    for e in events {
        b.push(e);
    }
    b.finish()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
