//! A warm start: an engine's state file built from stored history (`pitboss rules warm`,
//! docs/rules.md "Starting warm"), so an engine that starts without state — a new deployment
//! on a store that already holds history, a state directory lost — starts with the windows,
//! the stake join and the scores it would hold had it run all along, instead of empty ones.
//!
//! Pure but for the save: the caller reads the stored events of the bus topics the engine reads
//! (embedded store, ClickHouse) in the order the live engine read them (received, then topic,
//! partition and position: [`crate::stream`]'s canonical order) and feeds each with where it
//! was on the bus to [`Warm::push`]; [`Warm::save`] writes the state as a snapshot that covers,
//! per partition, the last position warmed. The engine started on that file skips the records
//! up to those positions and evaluates the rest live, as after any restart. What the replay
//! raises is not published: those alerts and pushes belong to the past (the store holds them
//! already, or the engine that read them then was not running).

use std::collections::{BTreeMap, HashMap};

use pitboss_bus::{Partition, Position};
use pitboss_model::{Event, Timestamp};
use serde::Serialize;

use crate::state::{Positions, StateError, StateStore};
use crate::{Engine, Output, RuleSet};

/// The writer a warm start marks its save with: no engine's instance, so the engine that
/// starts on the file writes the whole state to its changelog topic with its first save
/// ([`crate::stream`]: a file whose mark is not the changelog's).
pub const WARM_WRITER: &str = "pitboss-rules-warm";

/// What a warm start read and wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WarmReport {
    /// Events received from here on were evaluated (by default the set's longest window, at
    /// most [`crate::backtest::MAX_WARMUP_MS`], before the earliest of the last events the
    /// state covers per partition: where the engine resumes).
    pub from: Timestamp,
    /// Every stored event read.
    pub events_read: u64,
    /// Of those, events received before `from` (read with their partition's others): not
    /// evaluated.
    pub events_before: u64,
    /// Of those, the events evaluated into the state.
    pub events_warmed: u64,
    /// Events stored after the positions the state covers (the store kept writing while it
    /// was read): left to the engine, which reads them on the bus.
    pub events_after: u64,
    /// Stored rows that could not be rebuilt into an event, and events the engine refused
    /// (no UUID `event_id`): not evaluated, as the live engine dead-letters them.
    pub events_unreadable: u64,
    /// The first of those problems, with their reason.
    pub problems: Vec<String>,
    /// Alerts and pushes the replay raised, not published.
    pub alerts_withheld: u64,
    pub pushes_withheld: u64,
    /// Per `topic:partition`, the last bus offset the state covers: the engine skips records
    /// up to it and evaluates the next ones.
    pub positions: BTreeMap<String, i64>,
    /// Per `topic:partition`, the next offset the engine's group had committed (where it
    /// resumes), as read from the bus before the store.
    pub committed: BTreeMap<String, i64>,
    /// Partitions whose group committed past the stored events (warmed anyway, as asked):
    /// the records in between are read by neither.
    pub gaps: Vec<String>,
    /// What the state holds: windows (a rule's window of one key), events in them, placed
    /// bets of the stake join, players with a score.
    pub windows: usize,
    pub entries: usize,
    pub joined_bets: usize,
    pub scored_players: usize,
    /// Units written to the state file.
    pub units: usize,
}

/// A warm start in progress: feed it stored events in the order the engine reads them, then
/// [`Warm::save`].
#[derive(Debug)]
pub struct Warm {
    engine: Engine,
    upto: Positions,
    /// `upto` by topic name, then partition: the offset each event is checked against (a
    /// lookup by `&str`, with no key made per event).
    last: HashMap<String, HashMap<Partition, i64>>,
    out: Output,
    report: WarmReport,
}

impl Warm {
    /// A warm start of `set` reading events received from `from` on, covering per partition
    /// the positions in `upto` (the newest stored offset of each when reading began): an event
    /// of a partition not in `upto`, or after its position, is left to the engine.
    pub fn new(set: RuleSet, from: Timestamp, upto: Positions) -> Warm {
        let mut last: HashMap<String, HashMap<Partition, i64>> = HashMap::new();
        for ((topic, partition), at) in &upto {
            if let Position::Offset(o) = at {
                last.entry(topic.to_string())
                    .or_default()
                    .insert(*partition, *o);
            }
        }
        Warm {
            engine: Engine::new(set),
            upto,
            last,
            out: Output::default(),
            report: WarmReport {
                from,
                events_read: 0,
                events_before: 0,
                events_warmed: 0,
                events_after: 0,
                events_unreadable: 0,
                problems: Vec::new(),
                alerts_withheld: 0,
                pushes_withheld: 0,
                positions: BTreeMap::new(),
                committed: BTreeMap::new(),
                gaps: Vec::new(),
                windows: 0,
                entries: 0,
                joined_bets: 0,
                scored_players: 0,
                units: 0,
            },
        }
    }

    /// Records where the engine's group had committed, and the gaps warmed over.
    pub fn commits(&mut self, committed: BTreeMap<String, i64>, gaps: Vec<String>) {
        self.report.committed = committed;
        self.report.gaps = gaps;
    }

    /// Records a stored row that could not be rebuilt into an event.
    pub fn unreadable(&mut self, reason: impl Into<String>) {
        self.report.events_read += 1;
        self.problem(reason.into());
    }

    fn problem(&mut self, reason: String) {
        crate::backtest::note_problem(
            &mut self.report.events_unreadable,
            &mut self.report.problems,
            reason,
        );
    }

    /// Evaluates the event stored at `offset` of `topic`'s `partition` (the next in the
    /// engine's order), at engine time its `received_at`, as the engine read it on the bus.
    pub fn push(&mut self, topic: &str, partition: Partition, offset: i64, event: &Event) {
        self.report.events_read += 1;
        let covered = self
            .last
            .get(topic)
            .and_then(|parts| parts.get(&partition))
            .is_some_and(|last| *last >= offset);
        if !covered {
            self.report.events_after += 1;
            return;
        }
        let now = crate::backtest::Backtest::clock(event);
        if now < self.report.from {
            self.report.events_before += 1;
            return;
        }
        self.out.clear();
        if let Err(e) = self.engine.process(event, now, &mut self.out) {
            let id = event.event_id.as_deref().unwrap_or("(no id)");
            self.problem(format!("event {id}: {e}"));
            return;
        }
        self.report.events_warmed += 1;
        self.report.alerts_withheld += self.out.alerts.len() as u64;
        self.report.pushes_withheld += self.out.pushes.len() as u64;
    }

    /// Writes the state into `store` (its group's snapshot) as a full save covering the
    /// positions given to [`Warm::new`], dropping whatever the group held there and its logged
    /// batches, marked by [`WARM_WRITER`] (so the engine's first save mirrors all of it to a
    /// changelog topic). The caller decides beforehand whether the store may be replaced.
    pub fn save(mut self, store: &mut StateStore) -> Result<WarmReport, StateError> {
        self.engine.track_changes(true);
        let changes = self
            .engine
            .take_changes()
            .map_err(|e| StateError(format!("encoding the warmed state: {e}")))?;
        store.mark_next_save(0, WARM_WRITER);
        store.save(
            Timestamp::now().as_millis(),
            &self.upto,
            &changes,
            Some(u64::MAX),
        )?;
        let stats = self.engine.stats();
        self.report.windows = stats.keys;
        self.report.entries = stats.entries;
        self.report.joined_bets = stats.joined_bets;
        self.report.scored_players = stats.scored_players;
        self.report.units = changes.units.len();
        self.report.positions = self
            .upto
            .iter()
            .filter_map(|((t, p), pos)| match pos {
                Position::Offset(o) => Some((format!("{t}:{p}"), *o)),
                Position::Sequence(_) => None,
            })
            .collect();
        Ok(self.report)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The script's end (2025-12-01T00:00:00Z); its day of play comes before.
    const T0: i64 = 1_764_547_200_000;
    /// Before the script's first event (its baselines start 30 days before its end).
    const FROM: i64 = T0 - 40 * 24 * 3_600_000;

    fn set() -> RuleSet {
        RuleSet::load_dir(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../rules"))
            .unwrap()
    }

    /// The scripted day of 40 normal players and two of each pattern, received as it happens.
    fn day() -> Vec<Event> {
        let mut events: Vec<Event> = crate::scenario::script("acme", T0, 40, 2)
            .into_iter()
            .flat_map(|p| p.events)
            .map(|e| pitboss_model::decode_event(e.to_string().as_bytes()).unwrap())
            .map(|mut e| {
                e.received_at = Some(e.occurred_at);
                e
            })
            .collect();
        events.sort_by_key(|e| e.received_at);
        events
    }

    /// Trigger ids per rule of what `engine` raises on `events`.
    fn raised(engine: &mut Engine, events: &[Event]) -> Vec<(String, String)> {
        let mut out = Output::default();
        for e in events {
            engine.process(e, e.received_at.unwrap(), &mut out).unwrap();
        }
        let mut hits: Vec<(String, String)> = out
            .alerts
            .iter()
            .map(|a| (a.rule_id.clone(), a.trigger_event_id.clone()))
            .chain(out.pushes.iter().filter_map(|p| match &p.source {
                pitboss_model::live::PushSource::Rule(r) => {
                    Some((r.rule_id.clone(), r.trigger_event_id.clone()))
                }
                _ => None,
            }))
            .collect();
        hits.sort();
        hits.dedup();
        hits
    }

    fn upto(last: usize) -> Positions {
        let mut p = Positions::new();
        p.insert(
            (std::sync::Arc::from("events"), 0),
            Position::Offset(last as i64),
        );
        p
    }

    /// An engine started from a warmed state file raises on the rest of the stream exactly
    /// what an engine that read the whole stream raises there; one started cold misses the
    /// hits whose windows reach back into the history.
    #[test]
    fn an_engine_restored_from_a_warm_start_raises_what_one_that_read_everything_does() {
        let events = day();
        // Late in the day: the loss-chasing players' losses before the cut are what their
        // next stakes are judged against.
        let cut = events.len() * 95 / 100;
        let (history, rest) = events.split_at(cut);

        let mut whole = Engine::new(set());
        raised(&mut whole, history);
        let want = raised(&mut whole, rest);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("antifraud.db");
        let mut warm = Warm::new(set(), Timestamp::from_millis(FROM), upto(cut - 1));
        for (i, e) in events.iter().enumerate() {
            warm.push("events", 0, i as i64, e);
        }
        let mut store = StateStore::open(&path, "g").unwrap();
        let report = warm.save(&mut store).unwrap();
        assert_eq!(report.events_read, events.len() as u64);
        assert_eq!(report.events_warmed, cut as u64);
        assert_eq!(report.events_after, rest.len() as u64);
        assert!(report.alerts_withheld > 0, "{report:?}");
        assert_eq!(
            report.positions,
            BTreeMap::from([("events:0".to_owned(), cut as i64 - 1)])
        );
        assert!(report.units > 100 && report.windows > 100, "{report:?}");

        // What the streaming engine restores at its start.
        let snapshot = store.snapshot().unwrap().unwrap();
        assert_eq!(snapshot.positions, upto(cut - 1));
        let mut restored = crate::stream::restore(set(), &store).unwrap().engine;
        assert_eq!(held(restored.stats()), held(whole_after(history)));
        let got = raised(&mut restored, rest);
        assert_eq!(got, want);

        let cold = raised(&mut Engine::new(set()), rest);
        let missed: Vec<&str> = want
            .iter()
            .filter(|h| !cold.contains(h))
            .map(|h| h.0.as_str())
            .collect();
        assert_eq!(missed, ["rg.loss_chasing", "rg.loss_chasing"], "{want:?}");
    }

    /// What a state holds (not the room its tables keep).
    fn held(s: crate::EngineStats) -> (usize, usize, usize, usize, usize) {
        (
            s.keys,
            s.entries,
            s.buckets,
            s.joined_bets,
            s.scored_players,
        )
    }

    fn whole_after(history: &[Event]) -> crate::EngineStats {
        let mut e = Engine::new(set());
        raised(&mut e, history);
        e.stats()
    }

    /// Events of a partition the positions do not name, or past its position, are left to
    /// the engine; rows that are not events are counted with their reason.
    #[test]
    fn events_past_the_positions_are_left_to_the_engine_and_bad_rows_are_named() {
        let events = day();
        let mut warm = Warm::new(set(), Timestamp::from_millis(FROM), upto(9));
        for (i, e) in events.iter().take(20).enumerate() {
            warm.push("events", 0, i as i64, e);
        }
        warm.push("events_overflow", 0, 0, &events[20]);
        warm.push("events", 1, 0, &events[21]);
        warm.unreadable("row 23: payload is not JSON");
        let mut no_id = events[22].clone();
        no_id.event_id = None;
        let mut warm2 = Warm::new(set(), Timestamp::from_millis(FROM), upto(9));
        warm2.push("events", 0, 0, &no_id);
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::open(&dir.path().join("s.db"), "g").unwrap();
        // A state an engine saved and marked for its changelog: the warm state replaces it,
        // marked as no engine's (the changelog has not seen it).
        let mut before = Engine::new(set());
        before.track_changes(true);
        let changes = before.take_changes().unwrap();
        store.mark_next_save(7, "engine-1");
        store.save(1, &upto(3), &changes, None).unwrap();
        assert!(store.mark().unwrap().is_some());
        let r = warm.save(&mut store).unwrap();
        assert_eq!(store.mark().unwrap(), Some((0, WARM_WRITER.to_owned())));
        assert_eq!(store.snapshot().unwrap().unwrap().positions, upto(9));
        assert_eq!(
            (
                r.events_read,
                r.events_warmed,
                r.events_after,
                r.events_unreadable
            ),
            (23, 10, 12, 1)
        );
        assert_eq!(r.problems, ["row 23: payload is not JSON"]);
        let r2 = warm2.save(&mut store).unwrap();
        assert_eq!((r2.events_warmed, r2.events_unreadable), (0, 1));
        assert!(r2.problems[0].contains("(no id)"), "{:?}", r2.problems);

        // Events received before `from` are read, counted, and not evaluated.
        let from = events[5].received_at.unwrap();
        let before = events[..10]
            .iter()
            .filter(|e| e.received_at.unwrap() < from)
            .count() as u64;
        let mut warm3 = Warm::new(set(), from, upto(9));
        for (i, e) in events.iter().take(10).enumerate() {
            warm3.push("events", 0, i as i64, e);
        }
        let r3 = warm3.save(&mut store).unwrap();
        assert_eq!(
            (r3.events_read, r3.events_before, r3.events_warmed),
            (10, before, 10 - before)
        );
        assert!(before > 0);
    }
}
