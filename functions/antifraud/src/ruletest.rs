//! Unit tests for rule sets, written as files (`pitboss rules test`, docs/rules.md "Checking
//! and testing rules"): each case plays a few events through a fresh engine and says exactly which hits
//! must come out — and, by omission, that nothing else may. Like `promtool test rules`: a rule
//! author checks that a pattern fires, that its near miss does not, and what the alert says,
//! before the rule meets live traffic.
//!
//! ```toml
//! rules = ".."                     # the rule directory, relative to this file (optional)
//! start = "2026-01-07T12:00:00Z"   # what `at` counts from (optional)
//! tenant = "acme"                  # default tenant_id (optional)
//! player = "p1"                    # default player_id (optional)
//!
//! [[case]]
//! name = "30 bets within a minute fire once"
//! events = [
//!   { type = "bet_placed", at = "0s", repeat = 40, every = "1500ms",
//!     payload = { bet_id = "b{n}", game_id = "roulette-1", stake = { amount_minor = 100, currency = "EUR" } } },
//! ]
//! expect = [{ rule = "fraud.bet_velocity", at = "43s500ms", reason = "30 bets within one minute (threshold 30)." }]
//! ```
//!
//! Events are the canonical JSON events of docs/events.md (checked exactly as ingest checks
//! them) with four conveniences: `at` (an offset from `start`) instead of `occurred_at`,
//! `tenant_id` / `player_id` / `event_id` filled in when absent, `repeat` + `every` for a run
//! of events, and `{n}` in any text replaced by the repetition's number (0, 1, …).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use pitboss_model::live::{PushSource, Recommendation, Severity, Target};
use pitboss_model::{Event, Timestamp};
use serde::Deserialize;
use toml::Spanned;

use crate::duration::parse_duration_ms;
use crate::{AntifraudError, Engine, LoadError, Output, RuleSet};

/// `start` when a file gives none: a Wednesday, noon UTC (no late-night rule fires).
pub const DEFAULT_START: &str = "2026-01-07T12:00:00Z";

/// Most events one case may expand to (`repeat` included)…
pub const MAX_EVENTS: usize = 1_000_000;
/// …and one file.
pub const MAX_FILE_EVENTS: usize = 2_000_000;

/// One test file, checked.
#[derive(Debug, Clone)]
pub struct TestFile {
    pub path: String,
    /// The rule directory the file names (resolved against the file's directory).
    pub rules: Option<PathBuf>,
    pub start: Timestamp,
    pub cases: Vec<Case>,
    /// The file's path and text when it holds `[[list]]` blocks: lists added to the rule
    /// set's for its cases ([`TestFile::rule_set`]).
    pub lists: Option<(String, String)>,
}

impl TestFile {
    /// The rule set of `sources` (the files of the set the test file runs against) with this
    /// file's `[[list]]` blocks added to its lists.
    pub fn rule_set(&self, sources: &[(String, String)]) -> Result<RuleSet, AntifraudError> {
        RuleSet::from_sources_with_lists(sources, self.lists.as_slice())
    }
}

/// One case: events in, the hits that must come out.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub line: usize,
    pub events: Vec<Event>,
    pub expect: Vec<Expect>,
    /// Only these rules' hits are compared (absent: every rule's).
    pub only_rules: Option<Vec<String>>,
}

/// What one expected hit must look like; fields left out match anything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Expect {
    pub line: usize,
    pub rule: String,
    pub player: Option<String>,
    /// The trigger event's time, as an offset from the file's `start`.
    pub at_ms: Option<i64>,
    pub kind: Option<Kind>,
    pub severity: Option<Severity>,
    pub recommendation: Option<Recommendation>,
    pub total_score: Option<u32>,
    pub reason: Option<String>,
    pub reason_contains: Option<String>,
    pub push_kind: Option<String>,
    pub push_title: Option<String>,
    pub room: Option<String>,
    /// How many hits this line stands for (default 1).
    pub count: usize,
}

/// An expectation's `kind`: the hit raised an alert, or a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Alert,
    Push,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    #[serde(default)]
    rules: Option<String>,
    #[serde(default)]
    start: Option<Spanned<String>>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    player: Option<String>,
    #[serde(default)]
    case: Vec<Spanned<CaseSpec>>,
    /// Read by the rule loader ([`TestFile::rule_set`]).
    #[serde(default)]
    list: Vec<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseSpec {
    name: String,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    player: Option<String>,
    events: Vec<Spanned<toml::Table>>,
    expect: Vec<Spanned<ExpectSpec>>,
    #[serde(default)]
    only_rules: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectSpec {
    rule: String,
    #[serde(default)]
    player: Option<String>,
    #[serde(default)]
    at: Option<String>,
    #[serde(default)]
    kind: Option<Kind>,
    #[serde(default)]
    severity: Option<Severity>,
    #[serde(default)]
    recommendation: Option<Recommendation>,
    #[serde(default)]
    total_score: Option<u32>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    reason_contains: Option<String>,
    #[serde(default)]
    push_kind: Option<String>,
    #[serde(default)]
    push_title: Option<String>,
    #[serde(default)]
    room: Option<String>,
    #[serde(default)]
    count: Option<usize>,
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset.min(text.len()))
        .unwrap_or(text)
        .matches('\n')
        .count()
        + 1
}

/// An offset from `start`: `0`, or a duration (`90s`, `1h30m`, `43s500ms`).
fn offset_ms(text: &str) -> Result<i64, String> {
    let t = text.trim();
    // `0`, `0s`, `0m`…: the start itself (a duration in a rule may not be zero; an offset may).
    if t == "0" {
        return Ok(0);
    }
    if let Some(unit) = t.strip_prefix('0')
        && !unit.is_empty()
        && unit.chars().all(|c| c.is_ascii_alphabetic())
        && parse_duration_ms(&format!("1{unit}")).is_ok()
    {
        return Ok(0);
    }
    let ms = parse_duration_ms(t)?;
    if ms > MAX_OFFSET_MS {
        return Err(format!("{t:?} is more than 100 years"));
    }
    Ok(ms)
}

/// The furthest an event of a test may lie from `start`.
const MAX_OFFSET_MS: i64 = 100 * 365 * 86_400_000;

/// Writes an offset the way `at` reads it back (`1h2m3s500ms`, `0s`).
pub fn fmt_offset(ms: i64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    let (sign, mut ms) = if ms < 0 {
        ("-", ms.unsigned_abs())
    } else {
        ("", ms.unsigned_abs())
    };
    let mut out = String::from(sign);
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    if ms > 0 {
        out.push_str(&format!("{ms}ms"));
    }
    out
}

/// A TOML value as JSON (datetimes as their RFC 3339 text), with `{n}` replaced in text.
fn to_json(v: &toml::Value, n: usize) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        toml::Value::String(s) => J::String(s.replace("{n}", &n.to_string())),
        toml::Value::Integer(i) => J::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        toml::Value::Boolean(b) => J::Bool(*b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(a) => J::Array(a.iter().map(|x| to_json(x, n)).collect()),
        toml::Value::Table(t) => {
            J::Object(t.iter().map(|(k, x)| (k.clone(), to_json(x, n))).collect())
        }
    }
}

/// The id an event gets when its entry has none: the same on every run.
fn event_id(case: &str, entry: usize, n: usize) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("pitboss-rules-test/{case}/{entry}/{n}").as_bytes(),
    )
    .to_string()
}

/// Reads and checks a test file: every problem with its line, nothing run.
pub fn parse(path: &str, text: &str) -> Result<TestFile, Vec<LoadError>> {
    let err = |offset: usize, reason: String| LoadError {
        file: path.to_owned(),
        line: line_of(text, offset),
        column: 0,
        reason,
    };
    let spec: FileSpec = toml::from_str(text).map_err(|e| {
        let at = e.span().map_or(0, |s| s.start);
        // A rule file given where a test file was expected (`rules test rules/`).
        let rule_file = toml::from_str::<toml::Table>(text)
            .is_ok_and(|t| t.contains_key("rule") && !t.contains_key("case"));
        if rule_file {
            vec![err(
                at,
                "this is a rule file ([[rule]]), not a test file: `pitboss rules test` takes test \
                 files ([[case]], e.g. rules/tests/); rules go in the directory a test file's \
                 `rules` (or --rules) names"
                    .into(),
            )]
        } else {
            vec![err(at, e.message().trim().to_owned())]
        }
    })?;
    let mut errors = Vec::new();
    let start = match &spec.start {
        None => Timestamp::parse_rfc3339(DEFAULT_START).unwrap_or(Timestamp::from_millis(0)),
        Some(s) => match Timestamp::parse_rfc3339(s.get_ref()) {
            Ok(t) => t,
            Err(e) => {
                errors.push(err(
                    s.span().start,
                    format!(
                        "start {:?} is not an RFC 3339 time (e.g. {DEFAULT_START}): {e}",
                        s.get_ref()
                    ),
                ));
                Timestamp::from_millis(0)
            }
        },
    };
    let rules = spec
        .rules
        .as_ref()
        .map(|r| Path::new(path).parent().unwrap_or(Path::new(".")).join(r));
    if spec.case.is_empty() {
        errors.push(LoadError {
            file: path.to_owned(),
            line: 0,
            column: 0,
            reason: "no [[case]]: a test file holds at least one".into(),
        });
    }
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut file_events = 0usize;
    let mut cases = Vec::new();
    for c in &spec.case {
        let line = line_of(text, c.span().start);
        let spec_case = c.get_ref();
        if let Some(first) = names.insert(spec_case.name.clone(), line) {
            errors.push(err(
                c.span().start,
                format!(
                    "case {:?} is already defined on line {first}: names must be unique",
                    spec_case.name
                ),
            ));
        }
        let tenant = spec_case
            .tenant
            .as_deref()
            .or(spec.tenant.as_deref())
            .unwrap_or("test");
        let player = spec_case
            .player
            .as_deref()
            .or(spec.player.as_deref())
            .unwrap_or("p1");
        let mut events: Vec<Event> = Vec::new();
        // An id names one event: the same id again must be the same event (a redelivery,
        // received later), or hits could not be told apart.
        let mut ids: HashMap<String, Event> = HashMap::new();
        // An event refused above: the case's count of events is not known.
        let mut refused_event = false;
        for (i, entry) in spec_case.events.iter().enumerate() {
            let at = entry.span().start;
            let where_ = format!("case {:?}, event {}", spec_case.name, i + 1);
            // Counted before anything is built.
            let repeat = match entry.get_ref().get("repeat") {
                Some(toml::Value::Integer(n)) => usize::try_from(*n).unwrap_or(0),
                _ => 1,
            };
            if events.len() + repeat > MAX_EVENTS || file_events + repeat > MAX_FILE_EVENTS {
                errors.push(err(
                    at,
                    format!(
                        "{where_}: more than {MAX_EVENTS} events in a case or {MAX_FILE_EVENTS} in a file"
                    ),
                ));
                break;
            }
            match expand(entry.get_ref(), tenant, player, start, &spec_case.name, i) {
                Ok(evs) => {
                    for e in &evs {
                        let id = e.event_id.clone().unwrap_or_default();
                        let mut same = e.clone();
                        same.received_at = None;
                        match ids.get(&id) {
                            Some(first) if *first != same => {
                                errors.push(err(
                                    at,
                                    format!(
                                        "{where_}: event_id {id} names another event already \
                                         (the same id again must be the same event: a \
                                         redelivery, with a later received_after)"
                                    ),
                                ));
                                break;
                            }
                            Some(_) => {}
                            None => {
                                ids.insert(id, same);
                            }
                        }
                    }
                    file_events += evs.len();
                    events.extend(evs);
                }
                Err(why) => {
                    refused_event = true;
                    errors.push(err(at, format!("{where_}: {why}")));
                }
            }
        }
        // Delivered as the bus would: by the time they were received, the file's order among
        // equals.
        events.sort_by_key(|e: &Event| e.received_at.unwrap_or(e.occurred_at));
        let mut expect = Vec::new();
        for e in &spec_case.expect {
            let s = e.get_ref();
            let at_ms = match s.at.as_deref().map(offset_ms).transpose() {
                Ok(v) => v,
                Err(why) => {
                    errors.push(err(e.span().start, format!("expect: at: {why}")));
                    None
                }
            };
            if s.count == Some(0) {
                errors.push(err(
                    e.span().start,
                    "expect: count = 0: leave the hit out instead (anything not expected \
                     fails the case)"
                        .into(),
                ));
            }
            expect.push(Expect {
                line: line_of(text, e.span().start),
                rule: s.rule.clone(),
                player: s.player.clone(),
                at_ms,
                kind: s.kind,
                severity: s.severity,
                recommendation: s.recommendation,
                total_score: s.total_score,
                reason: s.reason.clone(),
                reason_contains: s.reason_contains.clone(),
                push_kind: s.push_kind.clone(),
                push_title: s.push_title.clone(),
                room: s.room.clone(),
                count: s.count.unwrap_or(1).max(1),
            });
        }
        // A hit is one rule firing on one event: more of them than events cannot come.
        // (Not when an event was refused: the case would have more events than were built,
        // and its own error says why.)
        for e in &expect {
            if !refused_event && e.count > events.len() {
                errors.push(LoadError {
                    file: path.to_owned(),
                    line: e.line,
                    column: 0,
                    reason: format!(
                        "case {:?}: expects {} hit{} of {:?}, but the case has {} event{}: a hit is one rule firing on one event",
                        spec_case.name,
                        e.count,
                        if e.count == 1 { "" } else { "s" },
                        e.rule,
                        events.len(),
                        if events.len() == 1 { "" } else { "s" }
                    ),
                });
            }
        }
        if spec_case.only_rules.as_ref().is_some_and(Vec::is_empty) {
            errors.push(LoadError {
                file: path.to_owned(),
                line,
                column: 0,
                reason: format!(
                    "case {:?}: only_rules = [] compares nothing (every hit would pass unseen); leave it out to compare every rule's hits",
                    spec_case.name
                ),
            });
        }
        // An expectation of a rule `only_rules` leaves out could never be met.
        if let Some(only) = &spec_case.only_rules {
            for e in expect.iter().filter(|e| !only.contains(&e.rule)) {
                errors.push(LoadError {
                    file: path.to_owned(),
                    line: e.line,
                    column: 0,
                    reason: format!(
                        "case {:?}: expects {:?}, which only_rules leaves out",
                        spec_case.name, e.rule
                    ),
                });
            }
        }
        cases.push(Case {
            name: spec_case.name.clone(),
            line,
            events,
            expect,
            only_rules: spec_case.only_rules.clone(),
        });
    }
    if errors.is_empty() {
        Ok(TestFile {
            path: path.to_owned(),
            rules,
            start,
            cases,
            lists: (!spec.list.is_empty()).then(|| (path.to_owned(), text.to_owned())),
        })
    } else {
        Err(errors)
    }
}

/// One `events` entry, as the events it stands for.
fn expand(
    entry: &toml::Table,
    tenant: &str,
    player: &str,
    start: Timestamp,
    case: &str,
    index: usize,
) -> Result<Vec<Event>, String> {
    let mut body = entry.clone();
    let text = |body: &mut toml::Table, key: &str| -> Result<Option<String>, String> {
        match body.remove(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(format!("{key}: expected text, found {}", other.type_str())),
        }
    };
    let at = text(&mut body, "at")?;
    let every = text(&mut body, "every")?;
    let received_after = text(&mut body, "received_after")?;
    let repeat = match body.remove("repeat") {
        None => 1,
        Some(toml::Value::Integer(n)) if (1..=MAX_EVENTS as i64).contains(&n) => n as usize,
        Some(other) => {
            return Err(format!(
                "repeat: expected a whole number from 1 to {MAX_EVENTS}, found {other}"
            ));
        }
    };
    let at_ms = match (&at, body.contains_key("occurred_at")) {
        (Some(_), true) => return Err("give `at` or `occurred_at`, not both".into()),
        (None, false) => {
            return Err("`at` (an offset from `start`, e.g. \"90s\") is missing".into());
        }
        (Some(a), false) => Some(offset_ms(a).map_err(|e| format!("at: {e}"))?),
        (None, true) => None,
    };
    let every_ms = match (&every, repeat) {
        (Some(_), 1) => {
            return Err(
                "`every` without `repeat` plays one event: give `repeat = N` (or leave `every` out)"
                    .into(),
            );
        }
        (Some(e), _) => parse_duration_ms(e).map_err(|e| format!("every: {e}"))?,
        (None, 1) => 0,
        (None, _) => return Err("repeat needs `every` (the time between the events)".into()),
    };
    if at_ms.is_none() && repeat > 1 {
        return Err("repeat needs `at`, not `occurred_at`".into());
    }
    let received_ms = match &received_after {
        Some(r) => offset_ms(r).map_err(|e| format!("received_after: {e}"))?,
        None => 0,
    };
    let mut out = Vec::with_capacity(repeat);
    for n in 0..repeat {
        let serde_json::Value::Object(mut json) = to_json(&toml::Value::Table(body.clone()), n)
        else {
            return Err("an event must be a table".into());
        };
        json.entry("tenant_id").or_insert_with(|| tenant.into());
        json.entry("player_id").or_insert_with(|| player.into());
        json.entry("event_id")
            .or_insert_with(|| event_id(case, index, n).into());
        if let Some(a) = at_ms {
            let offset = every_ms
                .checked_mul(n as i64)
                .and_then(|x| x.checked_add(a))
                .filter(|x| *x <= MAX_OFFSET_MS)
                .ok_or_else(|| {
                    format!(
                        "repetition {n} lies more than 100 years after start (at {} + {n} × every {})",
                        fmt_offset(a),
                        fmt_offset(every_ms)
                    )
                })?;
            let text = start
                .as_millis()
                .checked_add(offset)
                .and_then(|t| Timestamp::from_millis(t).to_rfc3339())
                .ok_or_else(|| format!("at {}: out of range", fmt_offset(offset)))?;
            json.insert("occurred_at".into(), text.into());
        }
        let text = serde_json::Value::Object(json).to_string();
        let mut ev = pitboss_model::decode_event_str(&text).map_err(|v| {
            let which = if repeat > 1 {
                format!("(repetition {n}) ")
            } else {
                String::new()
            };
            // The JSON's own line and column mean nothing in a TOML file: the entry's line
            // is given instead.
            let text = v.to_string();
            let text = match text.rfind(" at line ") {
                Some(i) if text[i..].contains(" column ") => text[..i].to_owned(),
                _ => text,
            };
            format!("{which}{text}")
        })?;
        let cfg = pitboss_model::ValidationConfig::default();
        if let Err(v) = pitboss_model::validate(&ev, &cfg, ev.occurred_at.as_millis()) {
            let why: Vec<String> = v.iter().map(ToString::to_string).collect();
            return Err(why.join("; "));
        }
        if ev.received_at.is_none() {
            let at = ev
                .occurred_at
                .as_millis()
                .checked_add(received_ms)
                .ok_or_else(|| {
                    format!("received_after {}: out of range", fmt_offset(received_ms))
                })?;
            ev.received_at = Some(Timestamp::from_millis(at));
        } else if received_after.is_some() {
            return Err("give `received_after` or `received_at`, not both".into());
        }
        out.push(ev);
    }
    Ok(out)
}

/// One hit: a rule fired on an event (an alert, a push, or both).
#[derive(Debug, Clone)]
pub struct Hit {
    pub rule: String,
    /// The alert's player, or the trigger event's for a push to a room.
    pub player: Option<String>,
    pub room: Option<String>,
    pub trigger_event_id: String,
    /// The trigger's time, from the file's `start`.
    pub at_ms: i64,
    pub alert: Option<pitboss_model::live::Alert>,
    pub push: Option<pitboss_model::live::Push>,
}

impl Hit {
    fn matches(&self, e: &Expect) -> bool {
        let alert = self.alert.as_ref();
        let push = self.push.as_ref();
        let opt = |want: &Option<String>, have: Option<&String>| {
            want.as_ref().is_none_or(|w| have == Some(w))
        };
        self.rule == e.rule
            && opt(&e.player, self.player.as_ref())
            && e.at_ms.is_none_or(|a| a == self.at_ms)
            && e.kind.is_none_or(|k| match k {
                Kind::Alert => alert.is_some(),
                Kind::Push => push.is_some(),
            })
            && e.severity
                .is_none_or(|s| alert.is_some_and(|a| a.severity == s))
            && e.recommendation
                .is_none_or(|r| alert.is_some_and(|a| a.recommendation == r))
            && e.total_score
                .is_none_or(|s| alert.is_some_and(|a| a.total_score == s))
            && opt(&e.reason, alert.map(|a| &a.reason))
            && e.reason_contains
                .as_ref()
                .is_none_or(|c| alert.is_some_and(|a| a.reason.contains(c.as_str())))
            && opt(&e.push_kind, push.map(|p| &p.kind))
            && opt(&e.push_title, push.map(|p| &p.title))
            && opt(&e.room, self.room.as_ref())
    }

    /// One line, with what an expectation can name.
    pub fn describe(&self) -> String {
        let mut s = format!("{} at {}", self.rule, fmt_offset(self.at_ms));
        if let Some(p) = &self.player {
            s.push_str(&format!(" for player {p}"));
        }
        if let Some(r) = &self.room {
            s.push_str(&format!(" in room {r}"));
        }
        if let Some(a) = &self.alert {
            s.push_str(&format!(
                ": alert {:?}, {}, total score {} ({})",
                a.reason,
                serde_plain(&a.severity),
                a.total_score,
                serde_plain(&a.recommendation)
            ));
        }
        if let Some(p) = &self.push {
            s.push_str(&format!(
                "{} push {} {:?}",
                if self.alert.is_some() { ";" } else { ":" },
                p.kind,
                p.title
            ));
        }
        s
    }
}

/// A unit enum as its JSON name (`review`).
fn serde_plain<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|j| j.as_str().map(str::to_owned))
        .unwrap_or_default()
}

impl Expect {
    /// The expectation as it was written (the fields given).
    pub fn describe(&self) -> String {
        let mut parts = vec![format!("rule = {:?}", self.rule)];
        let mut add = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                parts.push(format!("{k} = {v}"));
            }
        };
        add("player", self.player.as_ref().map(|p| format!("{p:?}")));
        add("at", self.at_ms.map(|a| format!("{:?}", fmt_offset(a))));
        add(
            "kind",
            self.kind
                .map(|k| format!("{:?}", format!("{k:?}").to_lowercase())),
        );
        add(
            "severity",
            self.severity.map(|s| format!("{:?}", serde_plain(&s))),
        );
        add(
            "recommendation",
            self.recommendation
                .map(|r| format!("{:?}", serde_plain(&r))),
        );
        add("total_score", self.total_score.map(|s| s.to_string()));
        add("reason", self.reason.as_ref().map(|r| format!("{r:?}")));
        add(
            "reason_contains",
            self.reason_contains.as_ref().map(|r| format!("{r:?}")),
        );
        add(
            "push_kind",
            self.push_kind.as_ref().map(|r| format!("{r:?}")),
        );
        add(
            "push_title",
            self.push_title.as_ref().map(|r| format!("{r:?}")),
        );
        add("room", self.room.as_ref().map(|r| format!("{r:?}")));
        if self.count > 1 {
            parts.push(format!("count = {}", self.count));
        }
        format!("{{ {} }}", parts.join(", "))
    }
}

/// How one case went.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub name: String,
    pub line: usize,
    pub events: usize,
    /// Every hit, by the time of its trigger (those `only_rules` leaves out included).
    pub hits: Vec<Hit>,
    /// Empty when the case passed.
    pub failures: Vec<String>,
    /// Triggers read later than their window, not evaluated ([`Output::late_triggers`]).
    pub late_triggers: u64,
    /// Hits a `[[snooze]]` of the set silenced ([`Output::snoozed`]): not in `hits`.
    pub snoozed: u64,
}

impl CaseResult {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// The rule ids a file's cases name that the set does not hold (typos would otherwise pass
/// every "must not fire" case).
pub fn unknown_rules(file: &TestFile, set: &RuleSet) -> Vec<LoadError> {
    let mut out = Vec::new();
    for c in &file.cases {
        let named = c
            .expect
            .iter()
            .map(|e| (e.rule.as_str(), e.line))
            .chain(c.only_rules.iter().flatten().map(|r| (r.as_str(), c.line)));
        for (rule, line) in named {
            if set.rule(rule).is_none() {
                out.push(LoadError {
                    file: file.path.clone(),
                    line,
                    column: 0,
                    reason: format!(
                        "case {:?}: rule {rule:?} is not in the rule set under test",
                        c.name
                    ),
                });
            }
        }
    }
    out
}

/// Plays a case through a fresh engine with `set` and compares its hits with the case's.
pub fn run_case(set: &RuleSet, start: Timestamp, case: &Case) -> CaseResult {
    let mut engine = Engine::new(set.clone());
    let mut out = Output::default();
    let mut failures = Vec::new();
    for (i, ev) in case.events.iter().enumerate() {
        let now = ev.received_at.unwrap_or(ev.occurred_at);
        if let Err(e) = engine.process(ev, now, &mut out) {
            failures.push(format!("event {} refused by the engine: {e}", i + 1));
        }
    }
    for r in &out.rejected {
        let why: Vec<String> = r.violations.iter().map(ToString::to_string).collect();
        failures.push(format!(
            "{} produced {} {} that breaks the contract (never published): {}",
            r.rule_id,
            if r.message == "alert" { "an" } else { "a" },
            r.message,
            why.join("; ")
        ));
    }
    let mut hits = hits(&out, start);
    // A push to a room names no player: the trigger event's is the hit's.
    if hits.iter().any(|h| h.player.is_none()) {
        let players: HashMap<&str, &str> = case
            .events
            .iter()
            .filter_map(|e| Some((e.event_id.as_deref()?, e.player_id.as_str())))
            .collect();
        for h in hits.iter_mut().filter(|h| h.player.is_none()) {
            h.player = players
                .get(h.trigger_event_id.as_str())
                .map(|p| (*p).to_owned());
        }
    }
    let considered: Vec<&Hit> = hits
        .iter()
        .filter(|h| {
            case.only_rules
                .as_ref()
                .is_none_or(|only| only.contains(&h.rule))
        })
        .collect();
    // Expectations and hits paired as a maximum matching (each `count` a slot per hit), so a
    // pairing is found whenever one exists, whatever order the expectations are written in.
    let slots: Vec<usize> = (0..case.expect.len())
        .flat_map(|i| std::iter::repeat_n(i, case.expect[i].count))
        .collect();
    let fits: Vec<Vec<usize>> = slots
        .iter()
        .map(|&i| {
            (0..considered.len())
                .filter(|&j| considered[j].matches(&case.expect[i]))
                .collect()
        })
        .collect();
    let mut hit_slot: Vec<Option<usize>> = vec![None; considered.len()];
    for s in 0..slots.len() {
        let mut seen = vec![false; considered.len()];
        augment(s, &fits, &mut hit_slot, &mut seen);
    }
    let used: Vec<bool> = hit_slot.iter().map(Option::is_some).collect();
    let mut found = vec![0usize; case.expect.len()];
    for s in hit_slot.iter().flatten() {
        found[slots[*s]] += 1;
    }
    let mut missing: Vec<(usize, usize)> = (0..case.expect.len())
        .filter(|&i| found[i] < case.expect[i].count)
        .map(|i| (i, found[i]))
        .collect();
    missing.sort_unstable();
    for (i, found) in missing {
        let e = &case.expect[i];
        let short = if e.count > 1 {
            format!(" ({found} of {})", e.count)
        } else {
            String::new()
        };
        failures.push(format!(
            "missing (line {}){short}: {}",
            e.line,
            e.describe()
        ));
        for (j, h) in considered.iter().enumerate() {
            if !used[j] && h.rule == e.rule {
                failures.push(format!("    the rule fired instead: {}", h.describe()));
            }
        }
    }
    for (j, h) in considered.iter().enumerate() {
        if !used[j] {
            failures.push(format!("unexpected: {}", h.describe()));
        }
    }
    CaseResult {
        name: case.name.clone(),
        line: case.line,
        events: case.events.len(),
        hits,
        failures,
        late_triggers: out.late_triggers,
        snoozed: out.snoozed.len() as u64,
    }
}

/// Kuhn's augmenting path from slot `s`: whether it got a hit (moving others' where needed).
fn augment(
    s: usize,
    fits: &[Vec<usize>],
    hit_slot: &mut [Option<usize>],
    seen: &mut [bool],
) -> bool {
    for &j in &fits[s] {
        if seen[j] {
            continue;
        }
        seen[j] = true;
        if hit_slot[j].is_none_or(|other| augment(other, fits, hit_slot, seen)) {
            hit_slot[j] = Some(s);
            return true;
        }
    }
    false
}

/// The alerts and pushes of `out` as hits (one per rule and trigger event), in order.
fn hits(out: &Output, start: Timestamp) -> Vec<Hit> {
    let mut hits: Vec<Hit> = Vec::new();
    let mut index: HashMap<(String, String), usize> = HashMap::new();
    let at = |t: Timestamp| t.as_millis() - start.as_millis();
    for a in &out.alerts {
        let k = (a.rule_id.clone(), a.trigger_event_id.clone());
        index.insert(k, hits.len());
        hits.push(Hit {
            rule: a.rule_id.clone(),
            player: a.player_id.clone(),
            room: None,
            trigger_event_id: a.trigger_event_id.clone(),
            at_ms: at(a.event_time),
            alert: Some(a.clone()),
            push: None,
        });
    }
    for p in &out.pushes {
        let PushSource::Rule(src) = &p.source else {
            continue;
        };
        let (player, room) = match &p.target {
            Target::Player(x) => (Some(x.clone()), None),
            Target::Room(x) => (None, Some(x.clone())),
        };
        let k = (src.rule_id.clone(), src.trigger_event_id.clone());
        match index.get(&k) {
            Some(&i) => {
                let h = &mut hits[i];
                h.push = Some(p.clone());
                if h.room.is_none() {
                    h.room = room;
                }
            }
            None => {
                index.insert(k, hits.len());
                hits.push(Hit {
                    rule: src.rule_id.clone(),
                    player,
                    room,
                    trigger_event_id: src.trigger_event_id.clone(),
                    at_ms: at(p.event_time),
                    alert: None,
                    push: Some(p.clone()),
                });
            }
        }
    }
    hits.sort_by_key(|h| h.at_ms);
    hits
}

/// Every `*.toml` file of `path` (sorted; not recursive), or `path` itself when it is a file.
pub fn test_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut out: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests;
