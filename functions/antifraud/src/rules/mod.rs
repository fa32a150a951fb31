//! Rule sets: a directory of `*.toml` files holding `[[rule]]` tables, plus (once in the set)
//! `[scoring]`, `[engine]` and `[money]`. Loading parses and checks everything and refuses the
//! whole set on any problem, listing each with file, line, column and reason; a set that loads
//! is ready to run. The language is documented in docs/rules.md.

mod compile;
mod spec;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use pitboss_model::live::{Category, Comparison, GroupBy, Severity};

use crate::duration::parse_duration_ms;
use crate::error::{AntifraudError, LoadError};
use crate::field::Field;
use crate::filter::{Filter, Types};
use crate::template::Template;

pub use compile::{Agg, MAX_BUCKETS, MAX_SLOTS, MIN_BUCKET_MS, dotted_name_ok};

/// One rule, ready to run.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    pub id: String,
    pub version: u32,
    pub category: Category,
    pub severity: Severity,
    /// Points a hit adds to the player's score.
    pub score: u32,
    pub description: String,
    pub group_by: GroupBy,
    /// The event field holding the group key; `None` when grouped by player.
    pub(crate) key_field: Option<Field>,
    /// The event types the rule reads.
    pub types: Types,
    pub duration_ms: Option<i64>,
    /// Most events one key's window holds.
    pub cap: usize,
    /// `window.bucket`: events older than this before the key's newest event are folded into
    /// per-bucket totals of this width (docs/rules.md, "Buckets").
    pub bucket_ms: Option<i64>,
    /// Measures kept as per-bucket totals (bit `i`: measure `i`); 0 without buckets.
    pub(crate) fold_mask: u32,
    /// Windowed measures that read their events one by one (bit `i`: measure `i`).
    pub(crate) exact_mask: u32,
    /// Measures a `since` reads the newest event of (bit `i`: measure `i`).
    pub(crate) anchor_mask: u32,
    /// `interval_mean` and `interval_cv` measures (bit `i`: measure `i`): their running total
    /// is the sum of squared gaps between their events ([`crate::window`]).
    pub(crate) interval_mask: u32,
    /// Measures over the window (bit `i`: measure `i` is [`Measure::windowed`]): the running
    /// totals an entry adds to.
    pub(crate) windowed_mask: u32,
    /// Some measure has `exclude_trigger`.
    pub(crate) excludes_trigger: bool,
    pub cooldown_ms: i64,
    pub(crate) trigger: Filter,
    /// The fields kept per event, for the measures that aggregate them.
    pub(crate) slots: Vec<Field>,
    /// The field `count_distinct` counts.
    pub(crate) distinct: Option<Field>,
    /// Whether window entries keep the player id (for `related_player_ids`).
    pub(crate) keep_labels: bool,
    pub(crate) measures: Vec<Measure>,
    pub(crate) conditions: Vec<Condition>,
    pub(crate) reason: Template,
    pub alert: bool,
    pub(crate) push: Option<PushAction>,
    /// What the window state depends on: state is kept across a reload only when this, the id
    /// and the version are unchanged.
    pub(crate) signature: String,
    pub file: String,
    pub line: usize,
}

impl CompiledRule {
    /// Whether the rule reads `field` anywhere: its trigger, a measure's filter or value, its
    /// key, or its distinct count.
    pub fn reads(&self, field: &Field) -> bool {
        let in_filter = |f: &Filter| f.preds.iter().any(|p| &p.field == field);
        in_filter(&self.trigger)
            || self
                .measures
                .iter()
                .any(|m| in_filter(&m.filter) || m.field.as_ref() == Some(field))
            || self.slots.contains(field)
            || self.key_field.as_ref() == Some(field)
            || self.distinct.as_ref() == Some(field)
    }

    /// Whether a filter of the rule (its trigger's, a measure's) tests the list `name`.
    pub fn reads_list(&self, name: &str) -> bool {
        let in_filter = |f: &Filter| {
            f.preds
                .iter()
                .any(|p| matches!(&p.operand, crate::filter::Operand::Set(l) if l.name == name))
        };
        in_filter(&self.trigger) || self.measures.iter().any(|m| in_filter(&m.filter))
    }

    /// The push a hit sends: its `kind` and whether it goes to a room (else the player).
    pub fn push_kind(&self) -> Option<(&str, bool)> {
        self.push
            .as_ref()
            .map(|p| (p.kind.as_str(), p.room.is_some()))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Measure {
    pub name: String,
    pub agg: Agg,
    pub field: Option<Field>,
    pub slot: Option<usize>,
    pub filter: Filter,
    /// Reads the window (everything but `ratio` and `current`).
    pub windowed: bool,
    pub within_ms: Option<i64>,
    pub last: Option<usize>,
    pub exclude_trigger: bool,
    pub since: Option<usize>,
    pub of: Option<(usize, usize)>,
    pub default: Option<f64>,
    pub money: bool,
}

impl Measure {
    /// Reads the whole window: no `within`, `last` or `since` narrows it (what running totals
    /// over the window can give).
    pub fn whole_window(&self) -> bool {
        self.within_ms.is_none() && self.last.is_none() && self.since.is_none()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Condition {
    pub measure: usize,
    pub cmp: Comparison,
    pub value: Option<f64>,
    pub baseline: Option<usize>,
    pub factor: f64,
    /// Its measure is a `count`, `sum` or `avg` over the whole window and its threshold a
    /// value: the engine can judge it from the window's running totals before it evaluates
    /// the rule ([`crate::window::from_totals`]).
    pub totals: bool,
    /// Its threshold is a `value` compared with money: written in the set's `[money]` currency
    /// ([`crate::money`]), converted into the trigger's.
    pub money: bool,
    /// Its measure is a whole number of minor units (`sum`, `min`, `max`, `last`, `current`):
    /// a converted value is rounded to a whole one ([`crate::money::Scale::threshold`]).
    pub whole: bool,
}

impl Condition {
    /// Its `value` as compared with an event whose money is at `money` ([`crate::money`]).
    #[inline]
    pub fn threshold(&self, value: f64, money: crate::money::Scale) -> f64 {
        match (self.money, self.whole) {
            (false, _) => value,
            (true, true) => money.threshold(value, self.cmp),
            (true, false) => money.converted(value),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PushAction {
    pub room: Option<Template>,
    pub kind: String,
    pub title: Template,
    pub body: Template,
    pub expires_ms: Option<i64>,
}

/// How hits add up per player: within `window_ms`, a total of at least `review` recommends a
/// review, at least `block` a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScoringConfig {
    pub window_ms: i64,
    pub review: u32,
    pub block: u32,
}

impl Default for ScoringConfig {
    fn default() -> Self {
        ScoringConfig {
            window_ms: 24 * 3_600_000,
            review: 50,
            block: 100,
        }
    }
}

/// The engine's memory bounds and defaults (`[engine]` in a rule set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most window entries across all rules and keys; past it the least recently active keys
    /// are dropped.
    pub max_entries: usize,
    /// Most events one key's window may hold (and the cap of a rule that sets none).
    pub max_events_per_key: usize,
    /// A key with no event for this long (beyond its window) is dropped.
    pub idle_after_ms: i64,
    /// How often (by the engine clock) idle keys are swept.
    pub sweep_every_ms: i64,
    /// Most `bet_placed` stakes remembered for the settlement join.
    pub join_max_bets: usize,
    /// How long a `bet_placed` stake is remembered.
    pub join_horizon_ms: i64,
    /// Most players whose scores are tracked.
    pub max_scored_players: usize,
    /// The offset `local_hour` uses for events without `utc_offset_min`.
    pub default_utc_offset_min: i32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: 20_000_000,
            max_events_per_key: 10_000,
            idle_after_ms: 3_600_000,
            sweep_every_ms: 60_000,
            join_max_bets: 2_000_000,
            join_horizon_ms: 7 * 86_400_000,
            max_scored_players: 2_000_000,
            default_utc_offset_min: 0,
        }
    }
}

/// A loaded, checked rule set.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub rules: Vec<Arc<CompiledRule>>,
    pub scoring: ScoringConfig,
    pub limits: Limits,
    /// `[[snooze]]`: rules silenced for one group value until a time (docs/rules.md,
    /// "Snoozes"), in the order the files give them ([`RuleSet::snoozes`]).
    snoozes: Vec<Snooze>,
    /// Indexes of `snoozes` by the window key of their tenant and group value.
    snoozed: HashMap<u128, Vec<usize>>,
    /// `[[list]]`: values filters test membership of (docs/rules.md, "Lists").
    lists: crate::lists::Lists,
    /// `[money]`: the currency money values are written in (docs/rules.md, "Money in several
    /// currencies").
    pub money: crate::money::Money,
}

/// The most entries the lists of a set may hold together.
pub const MAX_LIST_ENTRIES: usize = 1_000_000;

/// The most refused values a list block reports one by one.
const MAX_VALUE_ERRORS: usize = 10;

/// One rule silenced for one group value (a player, a device, an address…) of one tenant,
/// until a time: its hits there raise no alert, no push and no points, and are counted as
/// snoozed. Its window keeps counting; the hit after `until` fires as usual.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snooze {
    pub rule_id: String,
    pub tenant_id: String,
    /// The group value, as alerts give it in `group_key`.
    pub key: String,
    /// Hits at or after this time (the engine's clock: the trigger's time) fire again.
    pub until: pitboss_model::Timestamp,
    pub reason: String,
    pub by: Option<String>,
    /// The alert that led to it.
    pub alert: Option<String>,
    pub file: String,
    pub line: usize,
}

/// The longest a group value may be: what an alert's `group_key` may hold.
const MAX_SNOOZE_KEY: usize = pitboss_model::validate::MAX_TEXT;

/// The file of a rules directory `pitboss rules snooze` writes: it may hold no snooze at all
/// (comments alone, or nothing), as it does once its last block is deleted.
pub const SNOOZES_FILE: &str = "snoozes.toml";

fn is_snoozes_file(name: &str) -> bool {
    Path::new(name)
        .file_name()
        .is_some_and(|n| n == SNOOZES_FILE)
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn located(file: &str, text: &str, span: std::ops::Range<usize>, reason: String) -> LoadError {
    let (line, column) = line_col(text, span.start);
    LoadError {
        file: file.to_owned(),
        line,
        column,
        reason,
    }
}

impl RuleSet {
    /// Loads every `*.toml` file of a directory (sorted by name, not recursive; hidden files
    /// left out).
    pub fn load_dir(dir: &Path) -> Result<RuleSet, AntifraudError> {
        RuleSet::from_sources(&RuleSet::read_dir(dir)?)
    }

    /// The `(file name, text)` of every file [`RuleSet::load_dir`] loads; refused when one is
    /// not UTF-8 (with the others' problems) or there is none.
    pub fn read_dir(dir: &Path) -> Result<Vec<(String, String)>, AntifraudError> {
        let io = |source| AntifraudError::Io {
            path: dir.to_owned(),
            source,
        };
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            // Hidden files (an editor's or a tool's copy, `.fraud.toml`) are not rules: loaded,
            // a backup beside its original refused the whole set for duplicate ids.
            .filter(|p| {
                p.extension().is_some_and(|x| x == "toml")
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                    && p.is_file()
            })
            .collect();
        paths.sort();
        let mut files = Vec::new();
        // A file that is not UTF-8 text is a problem of that file, listed with the others'.
        let mut unreadable = Vec::new();
        for p in paths {
            let bytes = std::fs::read(&p).map_err(|source| AntifraudError::Io {
                path: p.clone(),
                source,
            })?;
            match String::from_utf8(bytes) {
                Ok(text) => files.push((p.display().to_string(), text)),
                Err(e) => {
                    let at = e.utf8_error().valid_up_to();
                    let valid = String::from_utf8_lossy(&e.as_bytes()[..at]).into_owned();
                    let err = located(
                        &p.display().to_string(),
                        &valid,
                        at..at,
                        "not UTF-8 text: a rule file must be UTF-8".into(),
                    );
                    unreadable.push(err);
                }
            }
        }
        if !unreadable.is_empty() {
            // The readable files' own problems too; not that the set has no rule (the
            // unreadable file may hold them).
            return Err(AntifraudError::Rules(match RuleSet::from_sources(&files) {
                Err(AntifraudError::Rules(more)) if !files.is_empty() => unreadable
                    .into_iter()
                    .chain(more.into_iter().filter(|e| e.line > 0))
                    .collect(),
                _ => unreadable,
            }));
        }
        if files.is_empty() {
            return Err(AntifraudError::Rules(vec![LoadError {
                file: dir.display().to_string(),
                line: 0,
                column: 0,
                reason: "no *.toml rule files".into(),
            }]));
        }
        Ok(files)
    }

    /// Builds a set from `(file name, text)` pairs: the pure part of loading (but for the
    /// clock, which tells snoozes in force from ended ones: [`RuleSet::from_sources_at`]).
    /// Every problem of every file is reported; nothing of a refused set is used.
    pub fn from_sources(files: &[(String, String)]) -> Result<RuleSet, AntifraudError> {
        RuleSet::from_sources_at(files, pitboss_model::Timestamp::now())
    }

    /// [`RuleSet::from_sources`] at time `now`: a snooze whose `until` is past by then may name
    /// a rule the set no longer has, and another snooze of its rule, tenant and key may follow
    /// it.
    pub fn from_sources_at(
        files: &[(String, String)],
        now: pitboss_model::Timestamp,
    ) -> Result<RuleSet, AntifraudError> {
        RuleSet::from_sources_with_lists_at(files, &[], now)
    }

    /// [`RuleSet::from_sources`] with the `[[list]]` blocks of other files added to the set's
    /// lists (their other tables are not read): a test file's lists (docs/rules.md, "Checking
    /// and testing rules").
    pub fn from_sources_with_lists(
        files: &[(String, String)],
        lists_from: &[(String, String)],
    ) -> Result<RuleSet, AntifraudError> {
        RuleSet::from_sources_with_lists_at(files, lists_from, pitboss_model::Timestamp::now())
    }

    fn from_sources_with_lists_at(
        files: &[(String, String)],
        lists_from: &[(String, String)],
        now: pitboss_model::Timestamp,
    ) -> Result<RuleSet, AntifraudError> {
        let mut errors = Vec::new();
        let mut parsed = Vec::new();
        for (name, text) in files {
            if is_snoozes_file(name)
                && text.lines().all(|l| {
                    let l = l.trim();
                    l.is_empty() || l.starts_with('#')
                })
            {
                // Its last snooze deleted: no snooze, not a file caught mid-write (losing a
                // snooze that way is safe: the rule fires again).
                continue;
            }
            if text.trim().is_empty() {
                // Most often a file caught while a tool rewrites it (truncated, then written):
                // loaded, a reload would drop every rule it held and their windows.
                errors.push(LoadError {
                    file: name.clone(),
                    line: 1,
                    column: 1,
                    reason: "the file is empty: a rule file holds [[rule]], [[snooze]], [[list]], \
                             [scoring], [engine] or [money] (delete the file to remove its rules)"
                        .into(),
                });
                continue;
            }
            match toml::from_str::<spec::FileSpec>(text) {
                Ok(f)
                    if f.rule.is_empty()
                        && f.snooze.is_empty()
                        && f.list.is_empty()
                        && f.scoring.is_none()
                        && f.engine.is_none()
                        && f.money.is_none() =>
                {
                    // Comments alone: as an empty file (a rewrite cut after its header).
                    errors.push(LoadError {
                        file: name.clone(),
                        line: 1,
                        column: 1,
                        reason: "the file holds no [[rule]], [[snooze]], [[list]], [scoring], \
                                 [engine] or [money] (delete the file to remove its rules)"
                            .into(),
                    });
                }
                Ok(f)
                    if is_snoozes_file(name)
                        && (!f.rule.is_empty()
                            || !f.list.is_empty()
                            || f.scoring.is_some()
                            || f.engine.is_some()
                            || f.money.is_some()) =>
                {
                    // Emptied or cut short, it may lose snoozes only (the rules fire again),
                    // never rules, scoring or limits: it is read as such when it holds none.
                    errors.push(LoadError {
                        file: name.clone(),
                        line: 1,
                        column: 1,
                        reason: format!(
                            "{SNOOZES_FILE} holds snoozes alone ([[snooze]]): move its [[rule]], \
                             [[list]], [scoring], [engine] or [money] to another file"
                        ),
                    });
                }
                Ok(f) => parsed.push((name, text, f)),
                Err(e) => {
                    // Parsing stops at a file's first problem. The message names what was
                    // wrong ("expected u32"), the line it is on names the field.
                    let span = e.span().unwrap_or(0..0);
                    let mut reason = e.message().trim().to_owned();
                    let start = span.start.min(text.len());
                    let before = text.get(..start).unwrap_or_default();
                    let after = text.get(start..).unwrap_or_default();
                    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
                    let line_end = after.find('\n').map_or(text.len(), |i| start + i);
                    let shown = text.get(line_start..line_end).unwrap_or_default().trim();
                    if !shown.is_empty() && shown.chars().count() <= 120 {
                        reason.push_str(&format!(" (in `{shown}`)"));
                    }
                    errors.push(located(name, text, span, reason));
                }
            }
        }
        // Lists of other files (a test file's) after the set's own: a conflict is theirs.
        let own = parsed.len();
        for (name, text) in lists_from {
            match toml::from_str::<spec::ListsOnly>(text) {
                Ok(l) => parsed.push((
                    name,
                    text,
                    spec::FileSpec {
                        rule: Vec::new(),
                        scoring: None,
                        engine: None,
                        money: None,
                        snooze: Vec::new(),
                        list: l.list,
                    },
                )),
                Err(e) => errors.push(located(
                    name,
                    text,
                    e.span().unwrap_or(0..0),
                    e.message().trim().to_owned(),
                )),
            }
        }
        // [engine] and [scoring] first: rules are checked against the limits.
        let mut set = RuleSet::default();
        let mut seen_engine: Option<String> = None;
        let mut seen_scoring: Option<String> = None;
        let mut seen_money: Option<String> = None;
        for (name, text, f) in &mut parsed {
            if let Some(m) = f.money.take() {
                let span = m.span();
                if let Some(first) = &seen_money {
                    errors.push(located(
                        name,
                        text,
                        span,
                        format!("[money] is already set in {first}"),
                    ));
                } else {
                    seen_money = Some(name.to_string());
                    let m = m.into_inner();
                    let rates = m
                        .rates
                        .as_ref()
                        .map(|r| r.get_ref().clone())
                        .unwrap_or_default();
                    match crate::money::Money::new(m.currency.get_ref(), &rates) {
                        Ok(money) => set.money = money,
                        Err((in_rates, reason)) => {
                            let at = match (in_rates, &m.rates) {
                                (true, Some(r)) => r.span(),
                                _ => m.currency.span(),
                            };
                            errors.push(located(name, text, at, reason))
                        }
                    }
                }
            }
            if let Some(e) = f.engine.take() {
                let span = e.span();
                if let Some(first) = &seen_engine {
                    errors.push(located(
                        name,
                        text,
                        span,
                        format!("[engine] is already set in {first}"),
                    ));
                    continue;
                }
                seen_engine = Some(name.to_string());
                match limits(e.into_inner()) {
                    Ok(l) => set.limits = l,
                    Err((s, m)) => errors.push(located(name, text, s.unwrap_or(span), m)),
                }
            }
            if let Some(s) = f.scoring.take() {
                let span = s.span();
                if let Some(first) = &seen_scoring {
                    errors.push(located(
                        name,
                        text,
                        span,
                        format!("[scoring] is already set in {first}"),
                    ));
                    continue;
                }
                seen_scoring = Some(name.to_string());
                let s = s.into_inner();
                let (review, block) = (*s.review.get_ref(), *s.block.get_ref());
                match parse_duration_ms(s.window.get_ref()) {
                    Err(m) => errors.push(located(name, text, s.window.span(), m)),
                    Ok(_) if review == 0 => errors.push(located(
                        name,
                        text,
                        s.review.span(),
                        "scoring needs 0 < review <= block: review is 0".into(),
                    )),
                    Ok(_) if review > block => errors.push(located(
                        name,
                        text,
                        s.block.span(),
                        format!("scoring needs 0 < review <= block: block {block} is below review {review}"),
                    )),
                    Ok(w) => {
                        set.scoring = ScoringConfig {
                            window_ms: w,
                            review,
                            block,
                        }
                    }
                }
            }
        }
        // Lists before rules: filters name them.
        set.lists = lists(&mut parsed, own, &mut errors);
        let mut ids: HashMap<String, (String, usize)> = HashMap::new();
        let mut snoozes = Vec::new();
        // Every rule id written, also of rules refused: a snooze of one is not a second error.
        let mut declared = std::collections::HashSet::new();
        for (name, text, f) in parsed {
            snoozes.push((name, text, f.snooze));
            for r in f.rule {
                let (line, _) = line_col(text, r.span().start);
                let id_span = r.get_ref().id.span();
                let id = r.get_ref().id.get_ref().clone();
                declared.insert(id.clone());
                match compile::compile(r, &set.limits, &set.lists, name, line) {
                    Err((span, m)) => {
                        errors.push(located(name, text, span, format!("rule {id:?}: {m}")))
                    }
                    Ok(rule) => {
                        if let Some((f0, l0)) = ids.get(&rule.id) {
                            errors.push(located(
                                name,
                                text,
                                id_span,
                                format!("rule id {id:?} is already defined at {f0}:{l0}"),
                            ));
                        } else {
                            ids.insert(rule.id.clone(), (name.to_string(), line));
                            set.rules.push(Arc::new(rule));
                        }
                    }
                }
            }
        }
        // Snoozes name rules of the set: checked once every rule is known. One that has ended
        // may name a rule since removed (it silences nothing), and may be followed by another of
        // its rule, tenant and key; two in force at once may not.
        let mut seen: HashMap<(String, String, String), (String, usize)> = HashMap::new();
        for (name, text, specs) in snoozes {
            for sp in specs {
                let (line, _) = line_col(text, sp.span().start);
                match snooze(sp.into_inner(), &declared, now, name, line) {
                    Ok(z) if z.until <= now => set.add_snooze(z),
                    Err((span, m)) => errors.push(located(
                        name,
                        text,
                        span.unwrap_or_else(|| line_span(text, line)),
                        format!("snooze: {m}"),
                    )),
                    Ok(z) => {
                        let id = (z.rule_id.clone(), z.tenant_id.clone(), z.key.clone());
                        if let Some((f0, l0)) = seen.get(&id) {
                            errors.push(located(
                                name,
                                text,
                                line_span(text, line),
                                format!(
                                    "snooze: rule {:?} for tenant {:?} and key {:?} is already \
                                     snoozed at {f0}:{l0}",
                                    z.rule_id, z.tenant_id, z.key
                                ),
                            ));
                        } else {
                            seen.insert(id, (name.to_string(), line));
                            set.add_snooze(z);
                        }
                    }
                }
            }
        }
        if errors.is_empty() && set.rules.is_empty() {
            // A set of scoring and limits alone evaluates nothing: a directory left with
            // only `scoring.toml` would start an engine that never raises anything.
            let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
            errors.push(LoadError {
                file: names.join(", "),
                line: 0,
                column: 0,
                reason: "no [[rule]] in the set: an engine without rules raises nothing \
                         (`pitboss up --no-rules` runs without the engine)"
                    .into(),
            });
        }
        if errors.is_empty() {
            Ok(set)
        } else {
            Err(AntifraudError::Rules(errors))
        }
    }

    /// The rule with this id.
    pub fn rule(&self, id: &str) -> Option<&Arc<CompiledRule>> {
        self.rules.iter().find(|r| r.id == id)
    }

    /// The lists of the set, by name.
    pub fn lists(&self) -> Vec<&Arc<crate::lists::NamedList>> {
        let mut v: Vec<_> = self.lists.values().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The snoozes of the set, in the order its files give them, ended ones included.
    pub fn snoozes(&self) -> &[Snooze] {
        &self.snoozes
    }

    /// Adds a snooze (the loader's checks are the caller's).
    pub fn add_snooze(&mut self, z: Snooze) {
        let k = crate::engine::window_key(&z.tenant_id, &z.key);
        self.snoozed.entry(k).or_default().push(self.snoozes.len());
        self.snoozes.push(z);
    }

    /// The snooze (its index in `snoozes`) silencing rule `rule_id` for group value `group` of
    /// `tenant`, whose window key is `key`, at time `at_ms`: one whose `until` is later.
    pub(crate) fn snoozed(
        &self,
        rule_id: &str,
        tenant: &str,
        group: &str,
        key: u128,
        at_ms: i64,
    ) -> Option<usize> {
        self.snoozed.get(&key)?.iter().copied().find(|&i| {
            let z = &self.snoozes[i];
            z.rule_id == rule_id
                && z.tenant_id == tenant
                && z.key == group
                && at_ms < z.until.as_millis()
        })
    }
}

/// The span of line `line` (1-based) of `text`.
fn line_span(text: &str, line: usize) -> std::ops::Range<usize> {
    let start = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum::<usize>();
    start..start
}

/// A `[[list]]` value: a string, or `{ value = "…", until = … }` with its end (ms since the
/// epoch).
fn list_value(v: &toml::Value) -> Result<(&str, Option<i64>), String> {
    const FORMS: &str =
        "a list value is a string or { value = \"…\", until = 2027-01-31T00:00:00Z }";
    match v {
        toml::Value::String(s) => Ok((s, None)),
        toml::Value::Table(t) => {
            if let Some(k) = t.keys().find(|k| *k != "value" && *k != "until") {
                return Err(format!("{k:?} is not a key of a list value ({FORMS})"));
            }
            let Some(toml::Value::String(value)) = t.get("value") else {
                return Err(format!("value missing or not a string ({FORMS})"));
            };
            let until = match t.get("until") {
                Some(u) => until_ms(u).map_err(|m| format!("{value:?}: {m}"))?,
                None => return Err(format!("{value:?}: until missing ({FORMS})")),
            };
            Ok((value, Some(until)))
        }
        other => Err(format!("{FORMS}, not a {}", other.type_str())),
    }
}

/// An `until`: a TOML date-time or an RFC 3339 string, with an offset; ms since the epoch.
fn until_ms(v: &toml::Value) -> Result<i64, String> {
    let text = match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Datetime(d) => d.to_string(),
        other => {
            return Err(format!(
                "until must be a date-time (RFC 3339), not a {}",
                other.type_str()
            ));
        }
    };
    pitboss_model::Timestamp::parse_rfc3339(&text)
        .map(|t| t.as_millis())
        .map_err(|e| {
            format!(
                "until {text:?} is not an RFC 3339 date-time with an offset \
                 (2027-01-31T00:00:00Z): {e}"
            )
        })
}

/// Every `[[list]]` block of the parsed files, merged by name; problems go to `errors`. A
/// block without `kind` takes the kind another block of its list gives (wherever it stands in
/// the set's own files, the first `own` of `parsed`), else `text`; the files after them (a test
/// file's lists) take kinds, and give none.
fn lists(
    parsed: &mut [(&String, &String, spec::FileSpec)],
    own: usize,
    errors: &mut Vec<LoadError>,
) -> crate::lists::Lists {
    use crate::lists::{ListKind, NamedList};
    let kind_of = |k: &str| match k {
        "text" => Some(ListKind::Text),
        "ip" => Some(ListKind::Ip),
        _ => None,
    };
    // The kind the set's own blocks give each list: the first one given.
    let mut declared: HashMap<String, ListKind> = HashMap::new();
    for (_, _, f) in parsed.iter().take(own) {
        for block in &f.list {
            let l = block.get_ref();
            if let Some(kind) = l.kind.as_ref().and_then(|k| kind_of(k.get_ref())) {
                declared.entry(l.name.get_ref().clone()).or_insert(kind);
            }
        }
    }
    let mut lists: HashMap<String, NamedList> = HashMap::new();
    let mut total = 0usize;
    // The error of the block that went past the bound, which the total is added to.
    let mut over: Option<usize> = None;
    for (name, text, f) in parsed.iter_mut() {
        let (name, text) = (name.as_str(), text.as_str());
        for block in std::mem::take(&mut f.list) {
            let (line, _) = line_col(text, block.span().start);
            let l = block.into_inner();
            let lname = l.name.get_ref().clone();
            if !dotted_name_ok(&lname, 1) {
                errors.push(located(
                    name,
                    text,
                    l.name.span(),
                    format!(
                        "list name {lname:?} must be [a-z0-9_] segments joined by dots, starting \
                         with a letter, at most 64 bytes (like \"blocked_ips\")"
                    ),
                ));
                continue;
            }
            let kind = match l.kind.as_ref() {
                None => declared.get(&lname).copied().unwrap_or(ListKind::Text),
                Some(k) => match kind_of(k.get_ref()) {
                    Some(kind) => kind,
                    None => {
                        errors.push(located(
                            name,
                            text,
                            k.span(),
                            format!(
                                "list {lname:?}: kind {:?} is not \"text\" or \"ip\"",
                                k.get_ref()
                            ),
                        ));
                        continue;
                    }
                },
            };
            let tenant = l.tenant.as_ref().map(|t| t.get_ref().as_str());
            if let (Some(t), Some(span)) = (tenant, l.tenant.as_ref().map(|t| t.span()))
                && let Some(v) = pitboss_model::validate::id_violation(
                    "tenant",
                    t,
                    pitboss_model::validate::MAX_TENANT_ID,
                )
            {
                errors.push(located(
                    name,
                    text,
                    span,
                    format!("list {lname:?}: tenant {}", v.message),
                ));
                continue;
            }
            let list = lists
                .entry(lname.clone())
                .or_insert_with(|| NamedList::new(&lname, kind, name, line));
            if list.kind != kind {
                // Two kinds given (or a test file's against the set's): the list's first
                // block names it.
                let span = l.kind.as_ref().map_or(l.name.span(), |k| k.span());
                errors.push(located(
                    name,
                    text,
                    span,
                    format!(
                        "list {lname:?} is of kind {:?} at {}:{}: every block of a list has its kind",
                        list.kind.as_str(),
                        list.file,
                        list.line
                    ),
                ));
                continue;
            }
            if list.description.is_empty() {
                list.description = l.description.clone();
            }
            list.touch(tenant);
            let values = l.values.into_inner();
            total += values.len();
            if total > MAX_LIST_ENTRIES {
                // Counted on, not put in lists: past the bound, a set's values are parsed but
                // no list is built of them (a running engine holds its set meanwhile).
                if over.is_none() {
                    over = Some(errors.len());
                    errors.push(LoadError {
                        file: name.to_owned(),
                        line,
                        column: 1,
                        reason: format!(
                            "list {lname:?}: with this block the set's lists hold more than \
                             {MAX_LIST_ENTRIES} values, the most they may (every engine holds \
                             them in memory; duplicates count"
                        ),
                    });
                }
                continue;
            }
            let mut refused = 0usize;
            for v in &values {
                let added = list_value(v.get_ref())
                    .and_then(|(value, until)| list.add_until(tenant, value, until));
                if let Err(m) = added {
                    refused += 1;
                    if refused <= MAX_VALUE_ERRORS {
                        errors.push(located(
                            name,
                            text,
                            v.span(),
                            format!("list {lname:?}: {m}"),
                        ));
                    }
                }
            }
            if refused > MAX_VALUE_ERRORS {
                errors.push(LoadError {
                    file: name.to_owned(),
                    line,
                    column: 1,
                    reason: format!(
                        "list {lname:?}: {} more values of this block refused",
                        refused - MAX_VALUE_ERRORS
                    ),
                });
            }
        }
    }
    if let Some(e) = over.and_then(|i| errors.get_mut(i)) {
        e.reason.push_str(&format!("; {total} in all)"));
    }
    lists.into_iter().map(|(k, v)| (k, Arc::new(v))).collect()
}

/// Checks one `[[snooze]]` against the set's rule ids.
fn snooze(
    sp: spec::SnoozeSpec,
    ids: &std::collections::HashSet<String>,
    now: pitboss_model::Timestamp,
    file: &str,
    line: usize,
) -> Result<Snooze, SpanErr> {
    let rule_id = sp.rule.get_ref();
    if let Some(v) = pitboss_model::validate::id_violation(
        "tenant",
        sp.tenant.get_ref(),
        pitboss_model::validate::MAX_TENANT_ID,
    ) {
        return Err((Some(sp.tenant.span()), format!("tenant {}", v.message)));
    }
    let key = sp.key.get_ref();
    if key.is_empty() {
        return Err((
            Some(sp.key.span()),
            "key must not be empty: it is the alert's group_key (a player, device, address…)"
                .into(),
        ));
    }
    if key.len() > MAX_SNOOZE_KEY {
        return Err((
            Some(sp.key.span()),
            format!("key is longer than {MAX_SNOOZE_KEY} bytes"),
        ));
    }
    let until_text = match sp.until.get_ref() {
        toml::Value::String(s) => s.clone(),
        toml::Value::Datetime(d) => d.to_string(),
        other => {
            return Err((
                Some(sp.until.span()),
                format!(
                    "until must be a date-time (RFC 3339), not a {}",
                    other.type_str()
                ),
            ));
        }
    };
    let until = pitboss_model::Timestamp::parse_rfc3339(&until_text).map_err(|e| {
        (
            Some(sp.until.span()),
            format!(
                "until {until_text:?} is not an RFC 3339 date-time with an offset \
                 (2027-01-31T00:00:00Z): {e}"
            ),
        )
    })?;
    // An ended snooze of a rule since removed silences nothing: kept, for `rules check` to list.
    if until > now && !ids.contains(rule_id) {
        return Err((
            Some(sp.rule.span()),
            format!(
                "no rule {rule_id:?} in the set (a snooze names a rule by its id; when a rule \
                 leaves the set, delete its snoozes still in force)"
            ),
        ));
    }
    if sp.reason.get_ref().trim().is_empty() {
        return Err((
            Some(sp.reason.span()),
            "reason must say why the rule is silenced (whoever reads the set next needs it)".into(),
        ));
    }
    Ok(Snooze {
        rule_id: rule_id.clone(),
        tenant_id: sp.tenant.into_inner(),
        key: sp.key.into_inner(),
        until,
        reason: sp.reason.into_inner(),
        by: sp.by,
        alert: sp.alert,
        file: file.to_owned(),
        line,
    })
}

type SpanErr = (Option<std::ops::Range<usize>>, String);

fn limits(spec: spec::LimitsSpec) -> Result<Limits, SpanErr> {
    let d = Limits::default();
    let dur = |s: &Option<toml::Spanned<String>>, default: i64| -> Result<i64, SpanErr> {
        match s {
            Some(s) => parse_duration_ms(s.get_ref()).map_err(|e| (Some(s.span()), e)),
            None => Ok(default),
        }
    };
    let positive =
        |v: Option<toml::Spanned<usize>>, default: usize, what: &str| -> Result<usize, SpanErr> {
            match v {
                Some(v) if *v.get_ref() == 0 => Err((
                    Some(v.span()),
                    format!("[engine] {what} must be at least 1"),
                )),
                Some(v) => Ok(v.into_inner()),
                None => Ok(default),
            }
        };
    let offset = spec
        .default_utc_offset_min
        .as_ref()
        .map_or(0, |o| *o.get_ref());
    if !(pitboss_model::validate::MIN_UTC_OFFSET_MIN..=pitboss_model::validate::MAX_UTC_OFFSET_MIN)
        .contains(&offset)
    {
        return Err((
            spec.default_utc_offset_min
                .as_ref()
                .map(toml::Spanned::span),
            "[engine] default_utc_offset_min must be between -720 and 840".into(),
        ));
    }
    Ok(Limits {
        max_entries: positive(spec.max_entries, d.max_entries, "max_entries")?,
        max_events_per_key: positive(
            spec.max_events_per_key,
            d.max_events_per_key,
            "max_events_per_key",
        )?,
        idle_after_ms: dur(&spec.idle_after, d.idle_after_ms)?,
        sweep_every_ms: dur(&spec.sweep_every, d.sweep_every_ms)?,
        join_max_bets: positive(spec.join_max_bets, d.join_max_bets, "join_max_bets")?,
        join_horizon_ms: dur(&spec.join_horizon, d.join_horizon_ms)?,
        max_scored_players: positive(
            spec.max_scored_players,
            d.max_scored_players,
            "max_scored_players",
        )?,
        default_utc_offset_min: offset,
    })
}

#[cfg(test)]
pub(crate) mod tests;
