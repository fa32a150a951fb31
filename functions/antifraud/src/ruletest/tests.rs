#![allow(clippy::unwrap_used)]

use super::*;
use crate::stream::RulesSource;

fn shipped() -> RuleSet {
    RulesSource::Shipped.load().unwrap()
}

fn run(text: &str) -> Vec<CaseResult> {
    let f = parse("t.toml", text).unwrap();
    let set = shipped();
    assert!(unknown_rules(&f, &set).is_empty());
    f.cases.iter().map(|c| run_case(&set, f.start, c)).collect()
}

const VELOCITY: &str = r#"
[[case]]
name = "fires"
events = [
  { type = "bet_placed", at = "0s", repeat = 40, every = "1500ms", payload = { bet_id = "b{n}", game_id = "g", stake = { amount_minor = 100, currency = "EUR" } } },
]
expect = [{ rule = "fraud.bet_velocity", at = "43s500ms", reason = "30 bets within one minute (threshold 30)." }]
only_rules = ["fraud.bet_velocity"]
"#;

#[test]
fn a_case_passes_when_exactly_the_expected_hits_come_out() {
    let r = run(VELOCITY);
    assert_eq!(r.len(), 1);
    assert!(r[0].passed(), "{:?}", r[0].failures);
    assert_eq!(r[0].events, 40);
    // Every hit is reported, also those `only_rules` leaves out of the comparison.
    let rules: Vec<&str> = r[0].hits.iter().map(|h| h.rule.as_str()).collect();
    assert_eq!(rules, ["fraud.bet_velocity", "fraud.bot_regular_betting"]);
    assert_eq!(r[0].hits[0].player.as_deref(), Some("p1"));
}

#[test]
fn a_wrong_time_is_missing_and_the_hit_that_came_instead_is_shown_and_unexpected() {
    let r = run(&VELOCITY.replace("43s500ms", "45s"));
    assert!(!r[0].passed());
    let f = &r[0].failures;
    assert_eq!(f.len(), 3, "{f:?}");
    assert!(
        f[0].starts_with("missing (line 7): { rule = \"fraud.bet_velocity\", at = \"45s\""),
        "{}",
        f[0]
    );
    assert!(
        f[1].contains("the rule fired instead: fraud.bet_velocity at 43s500ms for player p1"),
        "{}",
        f[1]
    );
    assert!(
        f[2].starts_with("unexpected: fraud.bet_velocity at 43s500ms"),
        "{}",
        f[2]
    );
}

#[test]
fn an_empty_expectation_fails_on_any_hit_and_only_rules_narrows_the_comparison() {
    let nothing = VELOCITY.replace(
        r#"expect = [{ rule = "fraud.bet_velocity", at = "43s500ms", reason = "30 bets within one minute (threshold 30)." }]"#,
        "expect = []",
    );
    let r = run(&nothing);
    assert_eq!(r[0].failures.len(), 1);
    assert!(r[0].failures[0].starts_with("unexpected: fraud.bet_velocity"));
    let narrowed = nothing.replace(
        "only_rules = [\"fraud.bet_velocity\"]",
        "only_rules = [\"fraud.stake_spike\"]",
    );
    assert!(run(&narrowed)[0].passed());
    // Every rule compared: the bot rule fires too (31 bets exactly 1.5 s apart).
    let all = VELOCITY.replace("only_rules = [\"fraud.bet_velocity\"]", "");
    let r = run(&all);
    assert_eq!(r[0].failures.len(), 1, "{:?}", r[0].failures);
    assert!(
        r[0].failures[0].starts_with(
            "unexpected: fraud.bot_regular_betting at 45s for player p1: alert \"The last 31 bets"
        ),
        "{}",
        r[0].failures[0]
    );
}

#[test]
fn count_stands_for_several_hits_and_says_how_many_came() {
    // 130 bets at 1.5 s: a hit at 29, the cooldown (10 min) holds the rest back.
    let t = VELOCITY.replace(r#"at = "43s500ms", "#, "").replace(
        "reason = \"30 bets within one minute (threshold 30).\" }",
        "count = 2 }",
    );
    let r = run(&t);
    assert_eq!(r[0].failures.len(), 1, "{:?}", r[0].failures);
    assert!(
        r[0].failures[0].starts_with("missing (line 7) (1 of 2)"),
        "{}",
        r[0].failures[0]
    );
}

#[test]
fn events_are_delivered_by_received_time_and_a_redelivery_counts_once() {
    let t = r#"
[[case]]
name = "dup"
events = [
  { type = "bet_placed", at = "0s", repeat = 10, every = "1s", event_id = "00000000-0000-4000-8000-00000000000{n}", payload = { bet_id = "b{n}", game_id = "g", stake = { amount_minor = 100, currency = "EUR" } } },
  { type = "bet_placed", at = "0s", repeat = 10, every = "1s", event_id = "00000000-0000-4000-8000-00000000000{n}", received_after = "20s", payload = { bet_id = "b{n}", game_id = "g", stake = { amount_minor = 100, currency = "EUR" } } },
  { type = "bet_placed", at = "10s", repeat = 19, every = "1s", payload = { bet_id = "c{n}", game_id = "g", stake = { amount_minor = 100, currency = "EUR" } } },
]
expect = []
"#;
    let f = parse("t.toml", t).unwrap();
    let got: Vec<i64> = f.cases[0]
        .events
        .iter()
        .map(|e| e.received_at.unwrap().as_millis() - f.start.as_millis())
        .collect();
    assert!(got.windows(2).all(|w| w[0] <= w[1]), "{got:?}");
    assert!(run(t)[0].passed());
    // Without the duplicates' ids the same 39 bets fire.
    let distinct = t.replace(
        "event_id = \"00000000-0000-4000-8000-00000000000{n}\", ",
        "",
    );
    let r = run(&distinct);
    assert_eq!(r[0].hits.len(), 1, "{:?}", r[0].failures);
}

#[test]
fn mistakes_in_a_file_are_refused_with_their_line_and_a_reason() {
    let cases = [
        // A typo in an expectation's field.
        (
            "[[case]]\nname = \"x\"\nevents = []\nexpect = [{ rule = \"r\", reson = \"y\" }]\n",
            4,
            "unknown field `reson`",
        ),
        (
            "[[case]]\nname = \"x\"\nevents = [\n  { type = \"login\", payload = {} },\n]\nexpect = []\n",
            4,
            "case \"x\", event 1: `at` (an offset from `start`, e.g. \"90s\") is missing",
        ),
        (
            "[[case]]\nname = \"x\"\nevents = [{ type = \"login\", at = \"0s\", repeat = 3, payload = {} }]\nexpect = []\n",
            3,
            "repeat needs `every`",
        ),
        (
            "[[case]]\nname = \"x\"\nevents = [{ type = \"deposit\", at = \"1s\", payload = { transaction_id = \"t\", amount = { amount_minor = 1, currency = \"XYZ\" }, method = \"card\" } }]\nexpect = []\n",
            3,
            "payload.amount.currency",
        ),
        (
            "[[case]]\nname = \"x\"\nevents = [{ type = \"login\", at = \"soon\", payload = {} }]\nexpect = []\n",
            3,
            "at: \"soon\" is not a duration",
        ),
        (
            "start = \"yesterday\"\n[[case]]\nname = \"x\"\nevents = []\nexpect = []\n",
            1,
            "start \"yesterday\" is not an RFC 3339 time",
        ),
        (
            "[[case]]\nname = \"x\"\nevents = []\nexpect = []\n[[case]]\nname = \"x\"\nevents = []\nexpect = []\n",
            5,
            "case \"x\" is already defined on line 1",
        ),
        (
            "[[case]]\nname = \"x\"\nevents = []\n",
            1,
            "missing field `expect`",
        ),
        ("tenant = \"acme\"\n", 0, "no [[case]]"),
    ];
    for (text, line, reason) in cases {
        let errs = parse("t.toml", text).unwrap_err();
        assert!(
            errs.iter()
                .any(|e| e.line == line && e.reason.contains(reason)),
            "{text}: {errs:?}"
        );
    }
}

#[test]
fn a_rule_id_the_set_does_not_hold_is_refused_so_a_typo_cannot_pass() {
    let f = parse(
        "t.toml",
        "[[case]]\nname = \"x\"\nevents = [{ type = \"login\", at = \"0s\", payload = { ip = \"10.0.0.1\" } }]\nexpect = [{ rule = \"fraud.bet_velocty\" }]\nonly_rules = [\"fraud.bet_velocty\", \"rg.nope\"]\n",
    )
    .unwrap();
    let errs = unknown_rules(&f, &shipped());
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert_eq!(errs[0].line, 4);
    assert!(
        errs[0]
            .reason
            .contains("rule \"fraud.bet_velocty\" is not in the rule set")
    );
    assert!(errs[2].reason.contains("\"rg.nope\""));
}

#[test]
fn offsets_are_written_the_way_at_reads_them() {
    for ms in [0, 1, 999, 1_000, 43_500, 60_000, 3_723_450, 90_061_001] {
        let text = fmt_offset(ms);
        assert_eq!(offset_ms(&text).unwrap(), ms, "{text}");
    }
    assert_eq!(fmt_offset(43_500), "43s500ms");
}

/// The shipped packs' own tests (`rules/tests/`) pass against the files in `rules/`.
#[test]
fn the_shipped_rule_tests_pass() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../rules/tests");
    let files = test_files(&dir).unwrap();
    assert!(files.len() >= 2, "{files:?}");
    let mut cases = 0;
    for p in files {
        let text = std::fs::read_to_string(&p).unwrap();
        let f = parse(&p.display().to_string(), &text).unwrap();
        let set = f
            .rule_set(&RuleSet::read_dir(f.rules.as_ref().unwrap()).unwrap())
            .unwrap();
        assert!(unknown_rules(&f, &set).is_empty());
        for c in &f.cases {
            let r = run_case(&set, f.start, c);
            assert!(r.passed(), "{}: {}: {:?}", p.display(), c.name, r.failures);
            cases += 1;
        }
    }
    assert!(cases >= 8);
}

/// Expectations are paired with hits as a maximum matching: a loose expectation written first
/// does not take the hit a later, narrower one needs.
#[test]
fn expectations_find_a_pairing_whatever_their_order() {
    let t = r#"
[[case]]
name = "two bettors"
events = [
  { type = "bet_placed", player_id = "p2", at = "0s", repeat = 40, every = "1500ms", payload = { bet_id = "x{n}", game_id = "g", stake = { amount_minor = 100, currency = "EUR" } } },
  { type = "bet_placed", player_id = "p1", at = "0s", repeat = 40, every = "1500ms", payload = { bet_id = "y{n}", game_id = "g", stake = { amount_minor = 100, currency = "EUR" } } },
]
expect = [
  { rule = "fraud.bet_velocity", at = "43s500ms" },
  { rule = "fraud.bet_velocity", player = "p2" },
]
only_rules = ["fraud.bet_velocity"]
"#;
    let r = run(t);
    assert!(r[0].passed(), "{:?}", r[0].failures);
}

#[test]
fn ids_offsets_and_only_rules_are_checked_before_anything_runs() {
    let cases = [
        (
            r#"[[case]]
name = "x"
events = [{ type = "login", at = "0s", repeat = 2, every = "1s", event_id = "00000000-0000-4000-8000-000000000001", payload = { ip = "10.0.0.1" } }]
expect = []
"#,
            "names another event already",
        ),
        (
            r#"[[case]]
name = "x"
events = [{ type = "login", at = "0s", repeat = 12, every = "10000000d", payload = { ip = "10.0.0.1" } }]
expect = []
"#,
            "more than 100 years",
        ),
        (
            r#"[[case]]
name = "x"
events = [{ type = "login", at = "0s", received_after = "40000d", payload = { ip = "10.0.0.1" } }]
expect = []
"#,
            "more than 100 years",
        ),
        (
            r#"[[case]]
name = "x"
events = []
expect = [{ rule = "fraud.bet_velocity" }]
only_rules = ["fraud.stake_spike"]
"#,
            "expects \"fraud.bet_velocity\", which only_rules leaves out",
        ),
    ];
    for (text, needle) in cases {
        let errs = parse("t.toml", text).unwrap_err();
        assert!(
            errs.iter().any(|e| e.reason.contains(needle)),
            "{text}: {errs:?}"
        );
    }
    // The same event delivered twice (a later received_after) is a redelivery, not a clash;
    // `0m` is the start.
    parse(
        "t.toml",
        r#"[[case]]
name = "x"
events = [
  { type = "login", at = "0m", event_id = "00000000-0000-4000-8000-000000000001", payload = { ip = "10.0.0.1" } },
  { type = "login", at = "0s", event_id = "00000000-0000-4000-8000-000000000001", received_after = "5s", payload = { ip = "10.0.0.1" } },
]
expect = []
"#,
    )
    .unwrap();
    assert!(fmt_offset(i64::MIN).starts_with("-106751991167d"));
}

#[test]
fn cases_that_could_only_pass_unseen_are_refused() {
    for (text, needle) in [
        (
            r#"[[case]]
name = "x"
events = [{ type = "login", at = "0s", payload = { ip = "10.0.0.1" } }]
expect = []
only_rules = []
"#,
            "only_rules = [] compares nothing",
        ),
        (
            r#"[[case]]
name = "x"
events = [{ type = "login", at = "0s", every = "1s", payload = { ip = "10.0.0.1" } }]
expect = []
"#,
            "`every` without `repeat` plays one event",
        ),
        (
            r#"[[case]]
name = "x"
events = [{ type = "login", at = "0s", payload = { ip = "10.0.0.1" } }]
expect = [{ rule = "fraud.account_takeover", count = 9223372036854775807 }]
"#,
            "but the case has 1 event",
        ),
        (
            "[[rule]]\nid = \"a.b\"\n",
            "this is a rule file ([[rule]]), not a test file",
        ),
    ] {
        let errs = parse("t.toml", text).unwrap_err();
        assert!(
            errs.iter().any(|e| e.reason.contains(needle)),
            "{text}: {errs:?}"
        );
    }
    // A refused event is the case's one error: not also a count of hits against the events
    // that were built (an outside audit saw "the case has 0 events" for three repeated ones).
    let errs = parse(
        "t.toml",
        r#"[[case]]
name = "x"
events = [{ type = "bet_placed", at = "0s", repeat = 3, every = "1s", payload = { stake = { amount_minor = 100, currency = "eur" } } }]
expect = [{ rule = "fraud.bet_velocity", count = 3 }]
"#,
    )
    .unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].reason.contains("event 1"), "{errs:?}");
}
