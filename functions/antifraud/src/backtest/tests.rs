use std::collections::{BTreeMap, BTreeSet};

use pitboss_model::{Event, Timestamp};

use super::*;
use crate::stream::shipped_sources;

/// 2026-11-28T12:00:00Z.
const T0: i64 = 1_795_867_200_000;

fn shipped() -> RuleSet {
    RuleSet::from_sources(&shipped_sources()).unwrap()
}

/// The scripted days, each event received 250 ms after it happened, in the order received.
fn events() -> Vec<Event> {
    let parts = crate::scenario::script("acme", T0, 20, 1);
    let mut events: Vec<Event> = parts
        .iter()
        .flat_map(|p| &p.events)
        .map(|e| {
            let mut e = pitboss_model::decode_event(e.to_string().as_bytes()).unwrap();
            e.received_at = Some(Timestamp::from_millis(e.occurred_at.as_millis() + 250));
            e
        })
        .collect();
    events.sort_by_key(|e| (Backtest::clock(e), e.event_id.clone()));
    events
}

/// What one engine raises over `events` (clock: received_at): per rule, the triggers of its
/// hits with their clock.
fn engine_hits(set: RuleSet, events: &[Event]) -> BTreeMap<String, BTreeSet<(i64, String)>> {
    let mut engine = Engine::new(set);
    let mut out = Output::default();
    let mut hits: BTreeMap<String, BTreeSet<(i64, String)>> = BTreeMap::new();
    for e in events {
        out.clear();
        engine.process(e, Backtest::clock(e), &mut out).unwrap();
        let t = Backtest::clock(e).as_millis();
        for a in &out.alerts {
            hits.entry(a.rule_id.clone())
                .or_default()
                .insert((t, a.trigger_event_id.clone()));
        }
        for p in &out.pushes {
            if let PushSource::Rule(r) = &p.source {
                hits.entry(r.rule_id.clone())
                    .or_default()
                    .insert((t, r.trigger_event_id.clone()));
            }
        }
    }
    hits
}

fn report_hits(r: &Report) -> BTreeMap<String, u64> {
    r.rules
        .iter()
        .filter(|r| r.hits > 0)
        .map(|r| (r.id.clone(), r.hits))
        .collect()
}

#[test]
fn hits_per_rule_are_what_one_engine_raises() {
    let events = events();
    let from = Backtest::clock(&events[0]);
    let to = Timestamp::from_millis(T0 + 1);
    let report = run(shipped(), &events, from, to, 3);
    let want: BTreeMap<String, u64> = engine_hits(shipped(), &events)
        .into_iter()
        .map(|(k, v)| (k, v.len() as u64))
        .collect();
    assert!(want.len() >= 7, "{want:?}");
    assert_eq!(report_hits(&report), want);
    assert_eq!(report.events_read, events.len() as u64);
    assert_eq!(report.events_counted, events.len() as u64);
    assert_eq!(report.events_unreadable, 0);
    // Alerts and pushes add up, every alert is in one bucket and one recommendation.
    let alerts: u64 = report.rules.iter().map(|r| r.alerts).sum();
    assert_eq!(alerts, report.alerts);
    let buckets: u64 = report.score_distribution.iter().map(|b| b.alerts).sum();
    assert_eq!(buckets, report.alerts);
    let rec = &report.recommendations;
    assert_eq!(rec.none + rec.review + rec.block, report.alerts);
    assert!(report.pushes > 0);
    // Every rule is listed; examples are capped and explain themselves.
    assert_eq!(report.rules.len(), shipped().rules.len());
    let velocity = report
        .rules
        .iter()
        .find(|r| r.id == "fraud.bet_velocity")
        .unwrap();
    assert_eq!((velocity.hits, velocity.players), (1, 1));
    let ex = &velocity.examples[0];
    assert_eq!(ex.player_id, "velocity-0");
    assert!(ex.reason.contains("bets within one minute"), "{ex:?}");
    assert_eq!(ex.measures[0].threshold, 30.0);
    assert!(report.rules.iter().all(|r| r.examples.len() <= 3));
    // The JSON form is one object.
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["rules"][0]["id"], "fraud.bet_velocity");
    // rg.late_night reads local_hour, and most of these events come without an offset (the
    // late-night players' carry one): said, with how many, not hidden.
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    let evaluated: Vec<&Event> = events
        .iter()
        .filter(|e| Backtest::clock(e) >= report.warmup_from && Backtest::clock(e) < report.to)
        .collect();
    let without = evaluated
        .iter()
        .filter(|e| e.utc_offset_min.is_none())
        .count() as u64;
    assert!(without > 0 && without < evaluated.len() as u64, "{without}");
    assert_eq!(report.events_without_utc_offset, without);
    assert!(
        report.warnings[0].starts_with(&format!(
            "rg.late_night reads local_hour: {} of the events replayed have no utc_offset_min",
            report.events_without_utc_offset
        )),
        "{:?}",
        report.warnings
    );
    // An empty range says what to check.
    let none = run(shipped(), &[], from, to, 3);
    assert!(
        none.warnings
            .iter()
            .any(|w| w.starts_with("no stored event was received in the range")),
        "{:?}",
        none.warnings
    );
}

/// Events stored with their offset (store schema version 6) are replayed at it: no warning, and
/// the late-night rule fires on the hours the live engine saw, which move with the offset.
#[test]
fn events_with_their_offset_replay_at_it_without_a_warning() {
    let base = events();
    let (from, to) = (Backtest::clock(&base[0]), Timestamp::from_millis(T0 + 1));
    let at = |offset: i32| {
        let events: Vec<Event> = base
            .iter()
            .cloned()
            .map(|mut e| {
                e.utc_offset_min = Some(offset);
                e
            })
            .collect();
        (
            run(shipped(), &events, from, to, 3),
            engine_hits(shipped(), &events),
        )
    };
    let (utc, live_utc) = at(0);
    assert_eq!(utc.events_without_utc_offset, 0);
    assert!(utc.warnings.is_empty(), "{:?}", utc.warnings);
    let (east, live_east) = at(600);
    let late = |r: &Report| {
        r.rules
            .iter()
            .find(|r| r.id == "rg.late_night")
            .map(|r| r.hits)
    };
    assert_eq!(
        late(&utc),
        Some(live_utc.get("rg.late_night").map_or(0, |h| h.len() as u64))
    );
    assert_eq!(
        late(&east),
        Some(live_east.get("rg.late_night").map_or(0, |h| h.len() as u64))
    );
    assert_ne!(late(&utc), late(&east), "the offset moves the local hour");
}

#[test]
fn warm_up_hits_are_not_counted_and_windows_start_full() {
    let events = events();
    let clock = |e: &Event| Backtest::clock(e);
    // From the withdrawal of the deposit-and-cash-out pattern: its deposit (3 minutes before)
    // and the bet velocity burst (before it) are warm-up.
    let withdrawal = events
        .iter()
        .find(|e| e.player_id == "cashout-0" && e.event_type().as_str() == "withdrawal")
        .unwrap();
    let from = clock(withdrawal);
    let to = Timestamp::from_millis(T0 + 1);
    let report = run(shipped(), &events, from, to, 3);
    let all = engine_hits(shipped(), &events);
    let want: BTreeMap<String, u64> = all
        .iter()
        .map(|(k, v)| {
            let n = v.iter().filter(|(t, _)| *t >= from.as_millis()).count() as u64;
            (k.clone(), n)
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(report_hits(&report), want);
    let hits = |id: &str| report_hits(&report).get(id).copied().unwrap_or(0);
    // The engine raised bet velocity before `from`: not counted.
    assert_eq!(all["fraud.bet_velocity"].len(), 1);
    assert_eq!(hits("fraud.bet_velocity"), 0);
    // The withdrawal fires because the warm-up put the deposit in the window.
    assert_eq!(hits("fraud.deposit_withdrawal_no_play"), 1);
    assert!(report.events_warmup > 0);
    assert_eq!(
        report.events_warmup + report.events_counted,
        events.len() as u64
    );
    assert_eq!(
        report.warmup_from.as_millis(),
        from.as_millis() - MAX_WARMUP_MS
    );
    // Without the warm-up (the same events, none before `from`) the deposit is missed.
    let late: Vec<&Event> = events.iter().filter(|e| clock(e) >= from).collect();
    let cold = run(shipped(), late, from, to, 3);
    assert_eq!(
        report_hits(&cold)
            .get("fraud.deposit_withdrawal_no_play")
            .copied()
            .unwrap_or(0),
        0
    );
}

#[test]
fn events_outside_the_range_are_not_evaluated_and_bad_ones_are_reported() {
    let events = events();
    let from = Backtest::clock(&events[0]);
    // `to` before the bet velocity burst ends: its hit is not in the report.
    let burst_end = events
        .iter()
        .filter(|e| e.player_id == "velocity-0")
        .map(Backtest::clock)
        .min()
        .unwrap();
    let mut b = Backtest::new(shipped(), from, burst_end, 1);
    for e in &events {
        b.push(e);
    }
    let mut bad = events[0].clone();
    bad.event_id = Some("not-a-uuid".into());
    b.push(&Event {
        received_at: Some(from),
        ..bad
    });
    b.unreadable("row 7: payload is not JSON");
    let report = b.finish();
    assert!(!report_hits(&report).contains_key("fraud.bet_velocity"));
    assert!(report.events_outside > 0);
    assert_eq!(report.events_unreadable, 2);
    assert!(report.problems[0].contains("not-a-uuid"), "{report:?}");
    assert_eq!(report.problems[1], "row 7: payload is not JSON");
}

#[test]
fn a_lower_threshold_shows_more_hits() {
    let events = events();
    let from = Backtest::clock(&events[0]);
    let to = Timestamp::from_millis(T0 + 1);
    let lowered: Vec<(String, String)> = shipped_sources()
        .into_iter()
        .map(|(name, text)| {
            let text = if name.ends_with("fraud.toml") {
                // fraud.bet_velocity is the first rule: 30 bets a minute → 3.
                text.replacen("value = 30", "value = 3", 1)
            } else {
                text
            };
            (name, text)
        })
        .collect();
    let lowered = RuleSet::from_sources(&lowered).unwrap();
    let before = run(shipped(), &events, from, to, 3);
    let after = run(lowered, &events, from, to, 3);
    let velocity = |r: &Report| {
        r.rules
            .iter()
            .find(|r| r.id == "fraud.bet_velocity")
            .map(|r| (r.hits, r.players))
            .unwrap()
    };
    let (b, a) = (velocity(&before), velocity(&after));
    assert!(a.0 > b.0 && a.1 > b.1, "before {b:?}, after {a:?}");
    assert!(after.alerts > before.alerts);
    assert_eq!(
        after.rules[0].examples[0].measures[0].threshold, 3.0,
        "{:?}",
        after.rules[0].examples[0]
    );
}

#[test]
fn warm_up_is_the_longest_window_at_most_seven_days() {
    let set = shipped();
    // fraud.stake_spike keeps 30 days.
    assert_eq!(warmup_ms(&set), MAX_WARMUP_MS);
    let short = RuleSet::from_sources(&[(
        "x.toml".into(),
        r#"
[[rule]]
id = "x.velocity"
version = 1
category = "fraud"
description = "d"
severity = "low"
score = 1
events = ["bet_placed"]
group_by = "player"
window = { duration = "2h" }
reason = "r"
  [[rule.measure]]
  name = "bets"
  agg = "count"
  [[rule.when]]
  measure = "bets"
  op = "gte"
  value = 3
[scoring]
window = "1h"
review = 40
block = 100
"#
        .into(),
    )])
    .unwrap();
    assert_eq!(warmup_ms(&short), 2 * 60 * 60 * 1000);
    assert_eq!(edges(40, 100), vec![0, 20, 40, 70, 100, 200]);
}

/// A message the engine withholds because it breaks the contract (a room template rendering
/// to an id that is not one: a bet without the device the room is named after) is counted and
/// listed with its rule and reason.
#[test]
fn withheld_messages_are_listed_with_their_rule_and_reason() {
    let text = r#"
[[rule]]
id = "t.room"
version = 1
category = "fraud"
severity = "low"
score = 1
events = ["bet_placed"]
group_by = "player"
window = { duration = "1m" }
reason = "a bet"
  [[rule.measure]]
  name = "bets"
  agg = "count"
  [[rule.when]]
  measure = "bets"
  op = "gte"
  value = 1
  [rule.push]
  to = "room"
  room = "{device_id}"
  kind = "ops.notice"
  title = "A bet"
  body = "A bet"
"#;
    let set = RuleSet::from_sources(&[("t.toml".into(), text.into())]).unwrap();
    let events = events();
    let from = Backtest::clock(&events[0]);
    let to = Timestamp::from_millis(T0 + 1);
    let report = run(set, &events, from, to, 3);
    assert!(report.rejected > 0, "{report:?}");
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.starts_with("rule t.room: push withheld (breaks the contract): ")),
        "{:?}",
        report.problems
    );
}

/// Player ids are unique within a tenant, not across tenants: the same scripted day played by
/// two tenants counts each rule's players and keys twice, and the examples name their tenant
/// (an outside audit saw 73 hits over 73 players reported as 69 players and 69 keys).
#[test]
fn players_and_keys_of_two_tenants_are_counted_apart() {
    let one = events();
    let mut both: Vec<Event> = one.clone();
    both.extend(one.iter().map(|e| {
        let mut e = e.clone();
        e.tenant_id = "other".into();
        e.event_id = e.event_id.map(|id| format!("{}f", &id[..id.len() - 1]));
        e
    }));
    both.sort_by_key(|e| (Backtest::clock(e), e.event_id.clone()));
    let from = Backtest::clock(&both[0]);
    let to = Timestamp::from_millis(T0 + 1);
    let single = run(shipped(), &one, from, to, 3);
    let double = run(shipped(), &both, from, to, 3);
    let mut checked = 0;
    for (a, b) in single.rules.iter().zip(&double.rules) {
        assert_eq!(a.id, b.id);
        assert_eq!(2 * a.hits, b.hits, "{}", a.id);
        assert_eq!(2 * a.players, b.players, "{}", a.id);
        assert_eq!(2 * a.keys, b.keys, "{}", a.id);
        checked += usize::from(a.hits > 0);
    }
    assert!(checked >= 7, "{checked} rules fired");
    let tenants: BTreeSet<&str> = double
        .rules
        .iter()
        .flat_map(|r| &r.examples)
        .map(|e| e.tenant_id.as_str())
        .collect();
    assert!(tenants.contains("acme"), "{tenants:?}");
}

/// A block list tried on history: the set's lists are what a backtest judges events with, so
/// an analyst sees what listing a device would have raised before listing it.
#[test]
fn a_block_list_tried_on_history_reports_what_it_would_have_raised() {
    let events = events();
    // The devices the scripted logins, sessions and payments came from, most used first.
    let mut used: BTreeMap<String, usize> = BTreeMap::new();
    for e in &events {
        let v = serde_json::to_value(e).unwrap();
        if let Some(d) = v["payload"]["device_id"].as_str()
            && e.event_type() != pitboss_model::EventType::BetPlaced
        {
            *used.entry(d.to_owned()).or_default() += 1;
        }
    }
    let device = used
        .iter()
        .max_by_key(|(d, n)| (**n, std::cmp::Reverse((*d).clone())))
        .map(|(d, _)| d.clone())
        .expect("the script's events carry devices");
    let with_list = |tenant: &str| {
        let mut sources = shipped_sources();
        sources.push((
            "rules/lists.toml".into(),
            format!(
                "[[list]]\nname = \"blocked_devices\"\ntenant = \"{tenant}\"\nvalues = [\"{device}\"]\n"
            ),
        ));
        RuleSet::from_sources(&sources).unwrap()
    };
    let from = Backtest::clock(&events[0]);
    let to = Timestamp::from_millis(T0 + 1);
    let blocked = |r: &Report| {
        r.rules
            .iter()
            .find(|r| r.id == "fraud.blocklist.device")
            .map(|r| (r.hits, r.alerts))
            .unwrap()
    };
    let report = run(with_list("acme"), &events, from, to, 3);
    let want = engine_hits(with_list("acme"), &events)
        .get("fraud.blocklist.device")
        .map_or(0, |h| h.len() as u64);
    assert!(want > 0, "{device} raised nothing");
    assert_eq!(blocked(&report), (want, want));
    let ex = &report
        .rules
        .iter()
        .find(|r| r.id == "fraud.blocklist.device")
        .unwrap()
        .examples[0];
    assert!(
        ex.reason
            .starts_with(&format!("Device {device} is on the block list")),
        "{ex:?}"
    );
    // Listed for another tenant, or not at all: nothing.
    assert_eq!(
        blocked(&run(with_list("zeta"), &events, from, to, 3)),
        (0, 0)
    );
    assert_eq!(blocked(&run(shipped(), &events, from, to, 3)), (0, 0));
}
