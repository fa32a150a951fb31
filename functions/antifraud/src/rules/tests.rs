//! Loading: what a good rule compiles to, and every refusal with its file, line and reason.

use super::*;

/// A small valid rule (`fraud.test`: three bets a minute), for tests here and elsewhere.
pub(crate) const GOOD: &str = r#"
[[rule]]
id = "fraud.test"
version = 2
category = "fraud"
severity = "low"
score = 10
events = ["bet_placed"]
group_by = "player"
window = { duration = "1m" }
reason = "{bets} bets"

  [[rule.measure]]
  name = "bets"
  agg = "count"

  [[rule.when]]
  measure = "bets"
  op = "gte"
  value = 3
"#;

/// Loads `text` as the set's one file, at a fixed time (snoozes in force or ended by it).
fn load(text: &str) -> Result<RuleSet, Vec<LoadError>> {
    let now = pitboss_model::Timestamp::parse_rfc3339("2026-12-01T00:00:00Z").expect("a time");
    RuleSet::from_sources_at(&[("rules/x.toml".into(), text.into())], now).map_err(|e| match e {
        AntifraudError::Rules(v) => v,
        other => panic!("unexpected {other}"),
    })
}

/// Loads `text` with one line replaced and expects one error on `line` containing `needle`.
fn refused(text: &str, needle: &str) -> LoadError {
    let errors = load(text).expect_err("must be refused");
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = errors.into_iter().next().expect("one");
    assert!(e.reason.contains(needle), "{e}");
    assert_eq!(e.file, "rules/x.toml");
    e
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .expect("needle in text")
        + 1
}

#[test]
fn a_good_rule_compiles_with_defaults() {
    let set = load(GOOD).expect("loads");
    let r = &set.rules[0];
    assert_eq!((r.id.as_str(), r.version, r.line), ("fraud.test", 2, 2));
    assert_eq!(r.duration_ms, Some(60_000));
    assert_eq!(
        r.cap,
        Limits::default().max_events_per_key,
        "no max_events: the engine's cap"
    );
    assert!(r.alert);
    assert_eq!(set.scoring, ScoringConfig::default());
}

#[test]
fn unknown_keys_are_refused_with_their_line() {
    let text = GOOD.replace("score = 10", "score = 10\ncolour = \"red\"");
    let e = refused(&text, "unknown field `colour`");
    assert_eq!(e.line, line_of(&text, "colour"));
    let text = GOOD.replace("  agg = \"count\"", "  agg = \"count\"\n  windw = \"1m\"");
    let e = refused(&text, "unknown field `windw`");
    assert_eq!(e.line, line_of(&text, "windw"));
}

#[test]
fn syntax_errors_and_bad_values_name_their_line() {
    let text = GOOD.replace("version = 2", "version = ");
    let e = refused(&text, "");
    assert_eq!(e.line, line_of(&text, "version ="));
    let text = GOOD.replace("category = \"fraud\"", "category = \"frud\"");
    let e = refused(&text, "unknown variant `frud`");
    assert_eq!(e.line, line_of(&text, "frud"));
    let text = GOOD.replace("\"1m\"", "\"1 minute\"");
    let e = refused(&text, "not a duration");
    assert_eq!(e.line, line_of(&text, "1 minute"));
}

#[test]
fn unbounded_windows_are_refused() {
    let text = GOOD.replace("window = { duration = \"1m\" }", "window = { }");
    let e = refused(&text, "without either it would hold state without bound");
    assert_eq!(e.line, line_of(&text, "window ="));
    let text = GOOD.replace("{ duration = \"1m\" }", "{ max_events = 1_000_000 }");
    refused(&text, "max_events must be between 1 and");
    let text = GOOD.replace("{ duration = \"1m\" }", "{ max_events = 100 }");
    assert_eq!(
        load(&text).expect("a count window alone is bounded").rules[0].cap,
        100
    );
}

#[test]
fn duplicate_ids_are_refused_across_files() {
    let errors = RuleSet::from_sources(&[
        ("a.toml".into(), GOOD.into()),
        ("b.toml".into(), GOOD.into()),
    ]);
    let Err(AntifraudError::Rules(errors)) = errors else {
        panic!("must be refused")
    };
    assert_eq!(errors.len(), 1);
    assert_eq!(
        (errors[0].file.as_str(), errors[0].line),
        ("b.toml", line_of(GOOD, "id ="))
    );
    assert!(
        errors[0].reason.contains("already defined at a.toml:2"),
        "{}",
        errors[0]
    );
}

#[test]
fn semantic_errors_name_the_part() {
    for (from, to, needle) in [
        ("id = \"fraud.test\"", "id = \"Fraud\"", "dotted name"),
        ("version = 2", "version = 0", "at least 1"),
        (
            "events = [\"bet_placed\"]",
            "events = [\"bet\"]",
            "unknown event type \"bet\"",
        ),
        ("measure = \"bets\"", "measure = \"bet\"", "no such measure"),
        (
            "value = 3",
            "baseline = \"bets\"\n  value = 3",
            "either `value`",
        ),
        ("agg = \"count\"", "agg = \"sum\"", "needs a `field`"),
        (
            "agg = \"count\"",
            "agg = \"sum\"\n  field = \"payout\"",
            "none of its events has a field `payout`",
        ),
        (
            "reason = \"{bets} bets\"",
            "reason = \"{bts}\"",
            "neither a measure",
        ),
        ("group_by = \"player\"", "group_by = \"ip\"", "grouped by"),
        (
            "value = 3",
            "value = nan",
            "`value` must be a finite number",
        ),
        (
            "value = 3",
            "value = inf",
            "`value` must be a finite number",
        ),
        (
            "agg = \"count\"",
            "agg = \"sum\"\n  field = \"game_id\"",
            "`game_id` is not a number: sum needs one",
        ),
    ] {
        let text = GOOD.replace(from, to);
        assert_ne!(text, GOOD, "{from}");
        let e = refused(&text, needle);
        assert!(e.line > 0, "{e}");
    }
    let text = GOOD.replace(
        "  agg = \"count\"",
        "  agg = \"count\"\n  where = { stats = \"x\" }",
    );
    let e = refused(&text, "unknown field `stats`");
    assert_eq!(e.line, line_of(&text, "[[rule.measure]]"));
}

/// Money is added up in the trigger's currency; a trigger without money would add EUR and
/// JPY as one number.
#[test]
fn money_measures_need_a_trigger_with_a_currency() {
    let text = GOOD
        .replace(
            "events = [\"bet_placed\"]",
            "events = [\"deposit\", \"login\"]\ntrigger = { events = [\"login\"] }",
        )
        .replace(
            "agg = \"count\"",
            "agg = \"sum\"\n  field = \"amount\"\n  events = [\"deposit\"]",
        );
    let e = refused(&text, "adds money (`amount`)");
    assert!(
        e.reason.contains("a `login` trigger carries no currency"),
        "{e}"
    );
    // Triggered on the deposits themselves, the same sum loads; by default every event of
    // the rule triggers it, logins too.
    load(&text.replace(
        "trigger = { events = [\"login\"] }",
        "trigger = { events = [\"deposit\"] }",
    ))
    .expect("money trigger");
    refused(
        &text.replace("trigger = { events = [\"login\"] }\n", ""),
        "a `login` trigger",
    );
}

#[test]
fn a_rule_that_does_nothing_is_refused() {
    let text = GOOD.replace("score = 10", "score = 10\nalert = false");
    refused(&text, "does nothing");
}

#[test]
fn scoring_and_engine_are_set_once() {
    let scoring = "[scoring]\nwindow = \"1h\"\nreview = 10\nblock = 20\n";
    let set = RuleSet::from_sources(&[
        ("a.toml".into(), GOOD.into()),
        ("s.toml".into(), scoring.into()),
    ])
    .expect("loads");
    assert_eq!(
        set.scoring,
        ScoringConfig {
            window_ms: 3_600_000,
            review: 10,
            block: 20
        }
    );
    let twice = RuleSet::from_sources(&[
        ("s.toml".into(), scoring.into()),
        ("t.toml".into(), scoring.into()),
    ]);
    let Err(AntifraudError::Rules(errors)) = twice else {
        panic!("must be refused")
    };
    assert!(
        errors[0].reason.contains("already set in s.toml"),
        "{errors:?}"
    );
    assert_eq!(errors[0].file, "t.toml");
    let bad = "[scoring]\nwindow = \"1h\"\nreview = 30\nblock = 20\n";
    let Err(AntifraudError::Rules(errors)) =
        RuleSet::from_sources(&[("s.toml".into(), bad.into())])
    else {
        panic!("must be refused")
    };
    assert!(errors[0].reason.contains("review <= block"));
}

#[test]
fn every_problem_of_every_file_is_listed() {
    let bad1 = GOOD.replace("version = 2", "version = 0");
    let bad2 = GOOD
        .replace("fraud.test", "fraud.other")
        .replace("\"1m\"", "\"soon\"");
    let Err(AntifraudError::Rules(errors)) =
        RuleSet::from_sources(&[("a.toml".into(), bad1), ("b.toml".into(), bad2)])
    else {
        panic!("must be refused")
    };
    assert_eq!(
        errors.iter().map(|e| e.file.as_str()).collect::<Vec<_>>(),
        ["a.toml", "b.toml"]
    );
    let shown = AntifraudError::Rules(errors).to_string();
    assert!(
        shown.contains("a.toml:4:11: rule \"fraud.test\": version must be at least 1"),
        "{shown}"
    );
}

#[test]
fn the_shipped_packs_load() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../rules");
    let set = RuleSet::load_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(set.rules.len(), 17);
    let lists: Vec<_> = set
        .lists()
        .iter()
        .map(|l| (l.name.as_str(), l.len()))
        .collect();
    assert_eq!(
        lists,
        [
            ("blocked_devices", 0),
            ("blocked_ips", 0),
            ("blocked_payment_instruments", 0)
        ]
    );
    assert_eq!(
        set.scoring,
        ScoringConfig {
            window_ms: 86_400_000,
            review: 40,
            block: 100
        }
    );
}

#[test]
fn a_missing_directory_is_an_io_error_and_retryable() {
    let e = RuleSet::load_dir(std::path::Path::new("/nonexistent/rules")).expect_err("missing");
    assert!(e.retryable(), "{e}");
    let empty = tempfile::tempdir().expect("tempdir");
    let e = RuleSet::load_dir(empty.path()).expect_err("empty");
    assert!(!e.retryable() && e.to_string().contains("no *.toml"), "{e}");
}

/// Text the contract requires (an alert's reason, a push's title and body) may not be blank:
/// refused at load with its line, not withheld at run time on every hit.
#[test]
fn blank_reasons_titles_and_bodies_are_refused_at_load() {
    let text = GOOD.replace("reason = \"{bets} bets\"", "reason = \"   \"");
    let e = refused(&text, "reason: the alert's explanation must not be blank");
    assert_eq!(e.line, line_of(&text, "reason = "));
    for (field, what) in [("title", "push: title"), ("body", "push: body")] {
        let push = format!(
            "\n  [rule.push]\n  to = \"player\"\n  kind = \"rg.notice\"\n  title = \"{}\"\n  body = \"{}\"\n",
            if field == "title" { "" } else { "Hello" },
            if field == "body" { " " } else { "Hello" },
        );
        let e = refused(
            &format!("{GOOD}{push}"),
            &format!("{what} must not be blank"),
        );
        assert_eq!(e.file, "rules/x.toml");
    }
}

/// A value of the wrong type names the line it is on (so the field), and a file that is not
/// UTF-8 is listed with its file, line and column beside the other files' problems.
#[test]
fn type_errors_show_their_line_and_a_file_that_is_not_utf8_is_a_listed_problem() {
    let text = GOOD.replace("score = 10", "score = -1");
    let e = refused(&text, "(in `score = -1`)");
    assert_eq!(e.line, line_of(&text, "score = -1"));

    let dir = tempfile::tempdir().expect("temp dir");
    let mut bytes = b"# rules\n# caf".to_vec();
    bytes.push(0xe9); // Latin-1 é
    bytes.extend_from_slice(b"\n");
    std::fs::write(dir.path().join("a.toml"), bytes).expect("write");
    std::fs::write(
        dir.path().join("b.toml"),
        GOOD.replace("version = 2", "version = 0"),
    )
    .expect("write");
    let Err(AntifraudError::Rules(errors)) = RuleSet::load_dir(dir.path()) else {
        panic!("must be refused")
    };
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 2, "{shown:?}");
    assert!(
        shown[0].ends_with("a.toml:2:6: not UTF-8 text: a rule file must be UTF-8"),
        "{shown:?}"
    );
    assert!(shown[1].contains("version must be at least 1"), "{shown:?}");
}

#[test]
fn a_room_template_whose_fixed_text_no_room_id_can_hold_is_refused() {
    let push = "\n  [rule.push]\n  to = \"room\"\n  room = \"table:{game_id}\"\n  kind = \"ops.notice\"\n  title = \"t\"\n  body = \"b\"\n";
    let text = format!("{GOOD}{push}");
    let e = refused(&text, "room: ':' is not allowed in a room id");
    assert_eq!(e.line, line_of(&text, "[rule.push]"));
    load(&text.replace("table:{game_id}", "table-{game_id}")).expect("a valid room template");
}

/// What an outside rules author's audit found unsafe or hard to act on at load: an empty file
/// (a tool's rewrite caught midway) is refused rather than removing its rules; hidden files are
/// not rules; a file that is not UTF-8 is one problem, not also "no rule in the set"; limits
/// and scoring point at the value that is wrong; a grouping no event carries names the field
/// and the events; a condition against itself, or a baseline times 0 or less, is refused.
#[test]
fn load_time_mistakes_are_refused_where_they_are() {
    let e = load_err(&[("rules/x.toml", GOOD), ("rules/empty.toml", " \n\n")]);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!((e[0].file.as_str(), e[0].line), ("rules/empty.toml", 1));
    assert!(e[0].reason.contains("the file is empty"), "{e:?}");

    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("fraud.toml"), GOOD).expect("write");
    std::fs::write(dir.path().join(".fraud.toml"), GOOD).expect("write");
    let set = RuleSet::load_dir(dir.path()).expect("the hidden copy is not loaded");
    assert_eq!(set.rules.len(), 1);

    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("only.toml"), b"# r\n\xff\xfe\n").expect("write");
    let Err(AntifraudError::Rules(errors)) = RuleSet::load_dir(dir.path()) else {
        panic!("must be refused")
    };
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].to_string().contains("only.toml:2:1: not UTF-8"),
        "{errors:?}"
    );

    let scoring = "[scoring]\nwindow = \"24h\"\nreview = 50\nblock = 40\n";
    let e = load_err(&[("rules/x.toml", GOOD), ("rules/s.toml", scoring)]);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].line, 4, "{e:?}");
    assert!(e[0].reason.contains("block 40 is below review 50"), "{e:?}");
    let engine = "[engine]\nidle_after = \"1h\"\nmax_entries = 0\n";
    let e = load_err(&[("rules/x.toml", GOOD), ("rules/e.toml", engine)]);
    assert_eq!((e.len(), e[0].line), (1, 3), "{e:?}");
    let engine = "[engine]\n\ndefault_utc_offset_min = 900\n";
    let e = load_err(&[("rules/x.toml", GOOD), ("rules/e.toml", engine)]);
    assert_eq!((e.len(), e[0].line), (1, 3), "{e:?}");

    let text = GOOD
        .replace("group_by = \"player\"", "group_by = \"game\"")
        .replace(
            "events = [\"bet_placed\"]",
            "events = [\"deposit\", \"login\"]",
        );
    let e = refused(
        &text,
        "grouped by `game_id`, which none of the rule's events (deposit, login) carries",
    );
    assert_eq!(e.line, line_of(&text, "group_by"));

    let with_baseline = |cond: &str| GOOD.replace("value = 3", cond);
    let text = with_baseline("baseline = \"bets\"");
    refused(&text, "the baseline is the measure itself");
    let text = with_baseline("baseline = \"bets\"\n  factor = 0");
    refused(&text, "`factor` must be a finite number other than 0");
    // A negative factor is a threshold below a signed baseline (`net`, `loss`): loaded.
    let two = GOOD.replace(
        "  [[rule.when]]",
        "  [[rule.measure]]\n  name = \"other\"\n  agg = \"count\"\n\n  [[rule.when]]",
    );
    load(&two.replace("value = 3", "baseline = \"other\"\n  factor = -0.5"))
        .expect("a negative factor");
    let e = load_err(&[
        ("rules/x.toml", GOOD),
        ("rules/c.toml", "# only a comment\n"),
    ]);
    assert_eq!((e.len(), e[0].file.as_str()), (1, "rules/c.toml"), "{e:?}");
    assert!(e[0].reason.contains("holds no [[rule]]"), "{e:?}");
}

fn load_err(files: &[(&str, &str)]) -> Vec<LoadError> {
    let files: Vec<(String, String)> = files
        .iter()
        .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
        .collect();
    match RuleSet::from_sources(&files) {
        Err(AntifraudError::Rules(v)) => v,
        other => panic!("must be refused: {other:?}"),
    }
}

/// A snooze of `fraud.test` for one player (`until` and the rest as given).
fn snooze(fields: &str) -> String {
    format!("{GOOD}\n[[snooze]]\n{fields}\n")
}

const SNOOZE: &str = r#"rule = "fraud.test"
tenant = "acme"
key = "p-7"
until = "2027-01-31T00:00:00Z"
reason = "a tester's account (ticket 4411)"
by = "ops.anna""#;

#[test]
fn a_snooze_loads_with_its_place_and_a_toml_date_time_is_read_as_a_string_is() {
    let set = load(&snooze(SNOOZE)).expect("loads");
    let z = &set.snoozes[0];
    assert_eq!(
        (z.rule_id.as_str(), z.tenant_id.as_str(), z.key.as_str()),
        ("fraud.test", "acme", "p-7")
    );
    assert_eq!(
        z.until.to_rfc3339().expect("formats"),
        "2027-01-31T00:00:00.000Z"
    );
    assert_eq!(z.by.as_deref(), Some("ops.anna"));
    assert_eq!(
        (z.file.as_str(), z.line),
        ("rules/x.toml", line_of(&snooze(SNOOZE), "[[snooze]]"))
    );
    let bare = snooze(&SNOOZE.replace(r#""2027-01-31T00:00:00Z""#, "2027-01-31T01:00:00+01:00"));
    assert_eq!(load(&bare).expect("loads").snoozes[0].until, z.until);
    let k = crate::engine::window_key("acme", "p-7");
    let until = z.until.as_millis();
    assert_eq!(
        set.snoozed("fraud.test", "acme", "p-7", k, until - 1),
        Some(0)
    );
    assert_eq!(
        set.snoozed("fraud.test", "acme", "p-7", k, until),
        None,
        "until is when it ends"
    );
    assert_eq!(set.snoozed("fraud.other", "acme", "p-7", k, 0), None);
    // The key's hash alone does not decide: another value under the same hash is not it.
    assert_eq!(set.snoozed("fraud.test", "acme", "p-8", k, 0), None);

    // A file of snoozes alone is a file of the set.
    let set = RuleSet::from_sources(&[
        ("rules/a.toml".into(), GOOD.into()),
        (
            "rules/snoozes.toml".into(),
            format!("[[snooze]]\n{SNOOZE}\n"),
        ),
    ])
    .expect("loads");
    assert_eq!((set.snoozes.len(), set.snoozes[0].line), (1, 1));
}

#[test]
fn a_snooze_is_refused_with_its_line_when_it_names_no_rule_or_lacks_what_it_needs() {
    for (from, to, needle) in [
        (
            r#""fraud.test""#,
            r#""fraud.tset""#,
            "no rule \"fraud.tset\" in the set",
        ),
        (r#""acme""#, r#""ac me""#, "tenant character ' '"),
        (r#""p-7""#, r#""""#, "key must not be empty"),
        (
            r#""2027-01-31T00:00:00Z""#,
            r#""next week""#,
            "until \"next week\" is not an RFC 3339",
        ),
        (
            r#""2027-01-31T00:00:00Z""#,
            "2027-01-31",
            "is not an RFC 3339",
        ),
        (
            r#""2027-01-31T00:00:00Z""#,
            "30",
            "until must be a date-time (RFC 3339), not a integer",
        ),
        (
            r#""a tester's account (ticket 4411)""#,
            r#"" ""#,
            "reason must say why",
        ),
    ] {
        let text = snooze(&SNOOZE.replace(from, to));
        let e = refused(&text, needle);
        let field = to.trim_matches('"');
        let at = if field.is_empty() || field == " " {
            text.lines()
                .position(|l| l.contains(to))
                .expect("in the text")
                + 1
        } else {
            line_of(&text, field)
        };
        assert_eq!(e.line, at, "{e}");
        assert!(e.reason.starts_with("snooze: "), "{e}");
    }
    let text = snooze(&SNOOZE.replace("reason = \"a tester's account (ticket 4411)\"\n", ""));
    refused(&text, "missing field `reason`");
    // The same rule, tenant and key twice: which one holds would be a guess.
    let text = format!(
        "{}\n[[snooze]]\n{}\n",
        snooze(SNOOZE),
        SNOOZE.replace("2027", "2028")
    );
    let e = refused(&text, "is already snoozed at rules/x.toml:");
    assert_eq!(
        e.line,
        text.lines()
            .collect::<Vec<_>>()
            .iter()
            .rposition(|l| *l == "[[snooze]]")
            .expect("a second snooze")
            + 1
    );
    // A snooze of a rule refused for its own reasons is not a second problem.
    let errors =
        load(&snooze(SNOOZE).replace("value = 3", "value = \"three\"")).expect_err("refused");
    assert_eq!(errors.len(), 1, "{errors:?}");
}

#[test]
fn an_ended_snooze_may_name_a_rule_since_removed_and_be_followed_by_another() {
    let now = pitboss_model::Timestamp::parse_rfc3339("2027-03-01T00:00:00Z").expect("a time");
    let at = |text: &str| RuleSet::from_sources_at(&[("rules/x.toml".into(), text.into())], now);
    // Ended (January) and naming a rule the set no longer has: kept, silencing nothing.
    let gone = snooze(&SNOOZE.replace("fraud.test\"", "fraud.gone\""));
    let set = at(&gone).expect("an ended snooze of a removed rule loads");
    assert_eq!(set.snoozes()[0].rule_id, "fraud.gone");
    // In force, it is refused.
    let later = gone.replace("2027-01-31", "2027-04-30");
    let Err(AntifraudError::Rules(e)) = at(&later) else {
        panic!("refused")
    };
    assert!(e[0].reason.contains("no rule \"fraud.gone\""), "{e:?}");
    // An ended snooze, then a new one of the same rule, tenant and key: both kept.
    let again = format!(
        "{}\n[[snooze]]\n{}\n",
        snooze(SNOOZE),
        SNOOZE.replace("2027-01-31", "2027-06-30")
    );
    let set = at(&again).expect("loads");
    assert_eq!(set.snoozes().len(), 2);
    let k = crate::engine::window_key("acme", "p-7");
    let june = pitboss_model::Timestamp::parse_rfc3339("2027-06-01T00:00:00Z").expect("a time");
    assert_eq!(
        set.snoozed("fraud.test", "acme", "p-7", k, june.as_millis()),
        Some(1)
    );
}

/// A snoozes file holds snoozes alone: cut short by a tool, it can then lose nothing but
/// snoozes (the rules fire again), never rules, scoring or limits.
#[test]
fn a_snoozes_file_holds_snoozes_alone() {
    for table in [
        "[scoring]\nwindow = \"1d\"\nreview = 1\nblock = 2\n",
        "[engine]\nmax_entries = 10\n",
        GOOD,
    ] {
        let Err(AntifraudError::Rules(e)) = RuleSet::from_sources(&[
            (
                "rules/a.toml".into(),
                GOOD.replace("fraud.test", "fraud.other"),
            ),
            ("rules/snoozes.toml".into(), table.into()),
        ]) else {
            panic!("refused: {table}")
        };
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].reason.contains("holds snoozes alone"), "{e:?}");
        assert_eq!(e[0].file, "rules/snoozes.toml");
    }
}

#[test]
fn a_snoozes_file_of_comments_alone_holds_no_snooze_where_another_file_is_refused() {
    let header = "# Snoozes: written by `pitboss rules snooze`.\n\n";
    for (name, ok) in [("rules/snoozes.toml", true), ("rules/other.toml", false)] {
        for text in [header, ""] {
            let got = RuleSet::from_sources(&[
                ("rules/a.toml".into(), GOOD.into()),
                (name.into(), text.into()),
            ]);
            assert_eq!(got.is_ok(), ok, "{name} holding {text:?}: {got:?}");
        }
    }
}

/// [`GOOD`] reading only bets from devices on list `devices`.
fn good_with_list(op: &str) -> String {
    GOOD.replace(
        r#"events = ["bet_placed"]"#,
        &format!(
            "events = [\"bet_placed\"]\ntrigger = {{ where = {{ device_id = {{ {op} = \"devices\" }} }} }}"
        ),
    )
}

#[test]
fn lists_merge_their_blocks_by_name_and_a_rule_reads_them() {
    let text = format!(
        r#"{}
[[list]]
name = "devices"
description = "Devices the operator has closed accounts on"
values = ["d1", "d2"]

[[list]]
name = "devices"
tenant = "acme"
values = ["d3"]

[[list]]
name = "blocked.ips"
kind = "ip"
tenant = "zeta"
values = []
"#,
        good_with_list("in_list")
    );
    let set = load(&text).expect("loads");
    let lists = set.lists();
    let names: Vec<&str> = lists.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["blocked.ips", "devices"]);
    let d = lists[1];
    assert_eq!(
        (d.len(), d.len_global(), d.line),
        (3, 2, line_of(&text, "[[list]]"))
    );
    assert_eq!(d.description, "Devices the operator has closed accounts on");
    assert_eq!(d.tenants(), vec![("acme", 1)]);
    assert!(
        d.contains("acme", "d3", 0)
            && !d.contains("other", "d3", 0)
            && d.contains("other", "d1", 0)
    );
    assert_eq!(lists[0].tenants(), vec![("zeta", 0)]);
    assert!(
        set.rules[0]
            .trigger
            .preds
            .iter()
            .any(|p| p.op == crate::filter::Op::InList)
    );
}

/// A value may end: `{ value = …, until = … }` (a TOML date-time or an RFC 3339 string) holds
/// for events before that time, beside plain values in the same array.
#[test]
fn a_list_value_with_an_end_holds_for_events_before_it() {
    let text = format!(
        r#"{}
[[list]]
name = "devices"
values = [
  "d1",
  {{ value = "d2", until = 2027-01-31T00:00:00Z }},
  {{ value = "d3", until = "2027-01-31T01:00:00+01:00" }},
]
"#,
        good_with_list("in_list")
    );
    let set = load(&text).expect("loads");
    let d = set.lists()[0];
    let end = pitboss_model::Timestamp::parse_rfc3339("2027-01-31T00:00:00Z")
        .expect("a time")
        .as_millis();
    assert!(d.contains("t", "d2", end - 1) && !d.contains("t", "d2", end));
    assert!(d.contains("t", "d3", end - 1) && !d.contains("t", "d3", end));
    assert!(d.contains("t", "d1", i64::MAX - 1));
    assert_eq!((d.len(), d.ending(end)), (3, (2, 2)));
}

#[test]
fn a_list_is_refused_with_its_line_when_it_cannot_hold_what_it_is_given() {
    let list = |body: &str| format!("{GOOD}\n[[list]]\n{body}\n");
    for (body, needle, at) in [
        (
            "name = \"Bad Name\"\nvalues = []",
            "must be [a-z0-9_] segments",
            "Bad Name",
        ),
        (
            "name = \"l\"\nkind = \"cidr\"\nvalues = []",
            "kind \"cidr\" is not \"text\" or \"ip\"",
            "kind =",
        ),
        (
            "name = \"l\"\ntenant = \"a b\"\nvalues = []",
            "list \"l\": tenant",
            "tenant =",
        ),
        (
            "name = \"l\"\nkind = \"ip\"\nvalues = [\n\"10.0.0.1\",\n\"10.0.0.1/8\",\n]",
            "the network is 10.0.0.0/8",
            "10.0.0.1/8",
        ),
        (
            "name = \"l\"\nvalues = [\"ok\",\n\" padded\"]",
            "spaces at its start or end",
            "padded",
        ),
        (
            "name = \"l\"\nvalues = [\"\"]",
            "an empty value matches nothing",
            "values =",
        ),
        ("name = \"l\"\nvalues = \"d1\"", "invalid type", "values ="),
        (
            "name = \"l\"\nvalues = [\n\"ok\",\n{ value = \"d1\" },\n]",
            "\"d1\": until missing",
            "{ value = \"d1\" }",
        ),
        (
            "name = \"l\"\nvalues = [\n\"ok\",\n{ value = \"d1\", until = \"tomorrow\" },\n]",
            "until \"tomorrow\" is not an RFC 3339 date-time",
            "tomorrow",
        ),
        (
            "name = \"l\"\nvalues = [\n\"ok\",\n{ value = \"d1\", until = 2027-01-31T00:00:00Z, why = \"x\" },\n]",
            "\"why\" is not a key of a list value",
            "why =",
        ),
        (
            "name = \"l\"\nvalues = [\n\"ok\",\nfalse,\n]",
            "a list value is a string or { value = \"…\", until = 2027-01-31T00:00:00Z }, not a boolean",
            "false,",
        ),
        (
            "name = \"l\"\nkind = \"ip\"\nvalues = [\n{ value = \"10.0.0.1/8\", until = 2027-01-31T00:00:00Z },\n]",
            "the network is 10.0.0.0/8",
            "10.0.0.1/8",
        ),
        (
            "name = \"l\"\nvalue = [\"d1\"]",
            "unknown field `value`",
            "value = [",
        ),
    ] {
        let text = list(body);
        let e = refused(&text, needle);
        assert_eq!(e.line, line_of(&text, at), "{body}: {e}");
    }
    // Two blocks of one name giving different kinds: the second is refused, naming the first.
    let text = list(
        "name = \"l\"\nkind = \"text\"\nvalues = []\n\n[[list]]\nname = \"l\"\nkind = \"ip\"\nvalues = []",
    );
    let e = refused(&text, "list \"l\" is of kind \"text\" at rules/x.toml:");
    assert_eq!(e.line, line_of(&text, "kind = \"ip\""));
    // A rule naming a list the set lacks, or of the wrong kind for its field.
    let e = refused(
        &good_with_list("in_list"),
        "no [[list]] named \"devices\": the set has no list",
    );
    assert!(
        e.reason.starts_with("rule \"fraud.test\": trigger.where:"),
        "{e}"
    );
    let text = format!(
        "{}\n[[list]]\nname = \"devices\"\nkind = \"ip\"\nvalues = []\n",
        good_with_list("not_in_list")
    );
    refused(&text, "holds IP addresses and networks");
}

#[test]
fn a_block_without_kind_takes_its_lists_kind_wherever_that_is_given() {
    // As docs/rules.md shows it: a tenant's block of an `ip` list, before or after the block
    // that says `kind = "ip"`, in another file.
    let tenant =
        "[[list]]\nname = \"blocked_ips\"\ntenant = \"acme\"\nvalues = [\"192.0.2.0/24\"]\n";
    let declared =
        format!("{GOOD}\n[[list]]\nname = \"blocked_ips\"\nkind = \"ip\"\nvalues = []\n");
    for files in [
        [
            ("rules/a.toml", tenant),
            ("rules/b.toml", declared.as_str()),
        ],
        [
            ("rules/a.toml", declared.as_str()),
            ("rules/b.toml", tenant),
        ],
    ] {
        let files: Vec<(String, String)> = files
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect();
        let set = RuleSet::from_sources(&files).unwrap_or_else(|e| panic!("{e}"));
        let l = set.lists()[0];
        assert_eq!(l.kind, crate::lists::ListKind::Ip);
        assert!(l.contains("acme", "192.0.2.9", 0));
    }
}

#[test]
fn a_lists_refused_values_are_reported_ten_at_most_and_the_sets_total_is_bounded() {
    let values: Vec<String> = (0..25).map(|i| format!("\"10.0.{i}.1/16\"")).collect();
    let text = format!(
        "{GOOD}\n[[list]]\nname = \"l\"\nkind = \"ip\"\nvalues = [\n{}\n]\n",
        values.join(",\n")
    );
    let errors = load(&text).expect_err("refused");
    assert_eq!(errors.len(), 11, "{errors:?}");
    assert!(
        errors[10]
            .reason
            .contains("15 more values of this block refused"),
        "{}",
        errors[10]
    );
    // Over the bound: one error at the block that crossed it, with the total (values are
    // counted as given).
    let many = vec!["\"x\""; MAX_LIST_ENTRIES].join(",");
    let text = format!(
        "{GOOD}\n[[list]]\nname = \"l\"\nvalues = [{many}]\n\n[[list]]\nname = \"m\"\nvalues = [\"y\", \"z\"]\n"
    );
    let e = refused(
        &text,
        &format!(
            "list \"m\": with this block the set's lists hold more than {MAX_LIST_ENTRIES} values, \
             the most they may (every engine holds them in memory; duplicates count; {} in all)",
            MAX_LIST_ENTRIES + 2
        ),
    );
    assert_eq!(e.line, line_of(&text, "name = \"m\"") - 1);
}

#[test]
fn a_file_of_lists_alone_loads_and_a_snoozes_file_may_not_hold_one() {
    let files = |name: &str| {
        RuleSet::from_sources(&[
            ("rules/a.toml".into(), good_with_list("in_list")),
            (
                name.into(),
                "[[list]]\nname = \"devices\"\nvalues = [\"d1\"]\n".into(),
            ),
        ])
    };
    assert!(files("rules/lists.toml").is_ok());
    let Err(AntifraudError::Rules(e)) = files("rules/snoozes.toml") else {
        panic!("a list in snoozes.toml is refused")
    };
    assert!(
        e.iter().any(|e| e.reason.contains("holds snoozes alone")),
        "{e:?}"
    );
}

#[test]
fn a_test_files_lists_take_the_sets_kinds_and_give_none() {
    let set = |kind: &str| format!("{GOOD}\n[[list]]\nname = \"l\"\n{kind}values = []\n");
    let with = |set: &str, test: &str| {
        RuleSet::from_sources_with_lists(
            &[("rules/a.toml".into(), set.into())],
            &[("rules/tests/t.toml".into(), test.into())],
        )
    };
    // The set's list is text (no kind given): a test file's `kind = "ip"` does not make it an
    // address list; it is refused, naming the set's block.
    let Err(AntifraudError::Rules(e)) = with(
        &set(""),
        "[[case]]\nname = \"x\"\n\n[[list]]\nname = \"l\"\nkind = \"ip\"\nvalues = [\"10.0.0.0/8\"]\n",
    ) else {
        panic!("refused")
    };
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].reason.contains("is of kind \"text\" at rules/a.toml:"),
        "{}",
        e[0]
    );
    assert_eq!(e[0].file, "rules/tests/t.toml");
    // The set's list is `ip`: a test file's block without kind is one of its blocks.
    let ok = with(
        &set("kind = \"ip\"\n"),
        "[[list]]\nname = \"l\"\nvalues = [\"10.0.0.0/8\"]\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(ok.lists()[0].contains("t", "10.1.2.3", 0));
}

/// `[money]` (docs/rules.md, "Money in several currencies"): once in a set, its currency and
/// rates checked, a bad one named with its line; which conditions it converts.
#[test]
fn a_money_table_is_read_once_and_its_mistakes_are_named_on_their_line() {
    let money = "[money]\ncurrency = \"EUR\"\nrates = { USD = 0.92, JPY = 0.0061 }\n";
    let set = load(&format!("{GOOD}\n{money}")).expect("loads");
    assert_eq!(set.money.currency(), Some("EUR"));
    assert_eq!(
        set.money.rates().iter().collect::<Vec<_>>(),
        [(&"JPY".to_string(), &0.0061), (&"USD".to_string(), &0.92)]
    );
    assert_eq!(
        set.money.scale(Some("USD")),
        crate::money::Scale::By(0.92),
        "cents to cents"
    );
    // Without the table every currency is its own.
    assert!(!load(GOOD).expect("loads").money.is_set());

    for (table, needle, on) in [
        (
            "[money]\ncurrency = \"eur\"\n",
            "currency codes are in upper case",
            "currency =",
        ),
        (
            "[money]\ncurrency = \"EUR\"\nrates = { USD = 0 }\n",
            "USD = 0: a rate is what one USD is worth in EUR, a number above 0",
            "rates =",
        ),
        (
            "[money]\ncurrency = \"EUR\"\nrates = { EUR = 2 }\n",
            "worth 1 of itself",
            "rates =",
        ),
        (
            "[money]\ncurrency = \"EUR\"\nrates = { \"U S\" = 1.1 }\n",
            "not a currency code",
            "rates =",
        ),
        (
            "[money]\nrates = { USD = 1.1 }\n",
            "missing field `currency`",
            "[money]",
        ),
        (
            "[money]\ncurrency = \"EUR\"\nrate = { USD = 1.1 }\n",
            "unknown field `rate`",
            "rate =",
        ),
    ] {
        let text = format!("{GOOD}\n{table}");
        let e = refused(&text, needle);
        assert_eq!(e.line, line_of(&text, on), "{e}");
    }

    // Once in the set, and never in the snoozes file.
    let twice = RuleSet::from_sources(&[
        ("s.toml".into(), format!("{GOOD}\n{money}")),
        ("t.toml".into(), money.into()),
    ]);
    let Err(AntifraudError::Rules(errors)) = twice else {
        panic!("must be refused")
    };
    assert!(
        errors[0]
            .reason
            .contains("[money] is already set in s.toml"),
        "{errors:?}"
    );
    assert_eq!(errors[0].file, "t.toml");
    let in_snoozes = RuleSet::from_sources(&[
        ("s.toml".into(), GOOD.into()),
        (SNOOZES_FILE.into(), money.into()),
    ]);
    let Err(AntifraudError::Rules(errors)) = in_snoozes else {
        panic!("must be refused")
    };
    assert!(
        errors[0].reason.contains("[money] to another file"),
        "{errors:?}"
    );
    // A file of the table alone is a file of the set.
    assert!(
        RuleSet::from_sources(&[
            ("s.toml".into(), GOOD.into()),
            ("m.toml".into(), money.into())
        ])
        .is_ok()
    );
}

/// A condition's `value` is converted when its measure is money, and only then: a count's, a
/// ratio's and a baseline's are not.
#[test]
fn only_values_compared_with_money_are_converted() {
    let text = r#"
[[rule]]
id = "fraud.money"
version = 1
category = "fraud"
severity = "low"
score = 10
events = ["bet_placed"]
group_by = "player"
window = { duration = "1h" }
reason = "{stake:money}"

  [[rule.measure]]
  name = "bets"
  agg = "count"

  [[rule.measure]]
  name = "stake"
  agg = "current"
  field = "stake"

  [[rule.measure]]
  name = "total"
  agg = "sum"
  field = "stake"

  [[rule.when]]
  measure = "bets"
  op = "gte"
  value = 3

  [[rule.when]]
  measure = "stake"
  op = "gte"
  value = 10000

  [[rule.measure]]
  name = "avg_stake"
  agg = "avg"
  field = "stake"

  [[rule.when]]
  measure = "total"
  op = "gte"
  baseline = "stake"
  factor = 2

  [[rule.when]]
  measure = "avg_stake"
  op = "gte"
  value = 5000
"#;
    let set = load(text).expect("loads");
    let c = &set.rules[0].conditions;
    let converted: Vec<bool> = c.iter().map(|c| c.money).collect();
    assert_eq!(converted, [false, true, false, true]);
    // At 0.61 (a yen in euro cents): the current stake's value rounded to a whole yen, the
    // average's not.
    let jpy = crate::money::Scale::By(0.61);
    assert_eq!(c[1].threshold(10_000.0, jpy), 16_394.0);
    assert_eq!(c[3].threshold(5_000.0, jpy), 5_000.0 / 0.61);
    assert_eq!(c[0].threshold(3.0, jpy), 3.0);
}
