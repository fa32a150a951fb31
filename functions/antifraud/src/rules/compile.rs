//! From a parsed rule to a [`CompiledRule`]: every name resolved, every limit checked, and the
//! first problem reported with the byte range it is about.

use std::ops::Range;

use pitboss_model::EventType;
use pitboss_model::live::limits::{MAX_MEASURES, MAX_WINDOW_MS};
use pitboss_model::live::{Category, Comparison, GroupBy, Severity};
use toml::Spanned;

use crate::duration::parse_duration_ms;
use crate::field::Field;
use crate::filter::{self, Filter, Types};
use crate::rules::spec::*;
use crate::rules::{CompiledRule, Condition, Limits, Measure, PushAction};
use crate::template::{Names, Template};

/// Most value fields one rule may keep per event (sum/avg/... over different fields).
pub const MAX_SLOTS: usize = 4;
/// Most windowed measures one rule may have.
pub const MAX_WINDOW_MEASURES: usize = 24;
/// Most measures one rule may have (each is a bit of a window entry's filter mask, whose top
/// bit marks a trigger).
pub const MAX_MEASURES_PER_RULE: usize = 31;
/// Most buckets a window may be cut into (`duration / bucket`).
pub const MAX_BUCKETS: i64 = 1024;
/// The narrowest bucket.
pub const MIN_BUCKET_MS: i64 = 1000;

/// A problem and the byte range it is about.
pub type Located = (Range<usize>, String);

/// The window aggregate a measure computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Agg {
    Count,
    Sum,
    Avg,
    Min,
    Max,
    Last,
    Median,
    Stddev,
    CountDistinct,
    Ratio,
    IntervalMean,
    IntervalCv,
    Age,
    Current,
}

fn types_of(names: &[String]) -> Result<Types, String> {
    let mut t = Types::default();
    for n in names {
        let ty = EventType::parse(n).ok_or_else(|| {
            format!(
                "unknown event type {n:?}; expected one of: {}",
                EventType::ALL.map(EventType::as_str).join(", ")
            )
        })?;
        t.0 |= Types::of(ty).0;
    }
    if t.0 == 0 {
        return Err("lists no event types".into());
    }
    Ok(t)
}

/// A dotted name: segments of `[a-z0-9_]` joined by single dots, starting with a letter, at
/// most 64 bytes, with at least `min_segments` segments.
pub fn dotted_name_ok(s: &str, min_segments: usize) -> bool {
    s.len() <= 64
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.split('.').count() >= min_segments
        && s.split('.').all(|seg| {
            !seg.is_empty()
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
}

fn duration(s: &Spanned<String>) -> Result<i64, Located> {
    parse_duration_ms(s.get_ref()).map_err(|e| (s.span(), e))
}

/// Compiles one rule. `file` and `line` are recorded for messages.
pub fn compile(
    spec: Spanned<RuleSpec>,
    limits: &Limits,
    lists: &crate::lists::Lists,
    file: &str,
    line: usize,
) -> Result<CompiledRule, Located> {
    let whole = spec.span();
    let r = spec.into_inner();
    let id = r.id.get_ref().clone();
    if !dotted_name_ok(&id, 2) {
        return Err((
            r.id.span(),
            format!(
                "rule id {id:?} must be a dotted name with a namespace, like \"fraud.bet_velocity\" ([a-z0-9_] segments, at most 64 bytes)"
            ),
        ));
    }
    if *r.version.get_ref() == 0 {
        return Err((r.version.span(), "version must be at least 1".into()));
    }
    let types =
        types_of(r.events.get_ref()).map_err(|e| (r.events.span(), format!("events: {e}")))?;

    // The window: a duration, a count, or both; never neither.
    let wspan = r.window.span();
    let w = r.window.into_inner();
    let duration_ms = w.duration.as_ref().map(duration).transpose()?;
    if let Some(d) = duration_ms
        && d as u64 > MAX_WINDOW_MS
    {
        return Err((
            wspan,
            format!(
                "window.duration is longer than {} days",
                MAX_WINDOW_MS / 86_400_000
            ),
        ));
    }
    let cap = match (&w.max_events, duration_ms) {
        (None, None) => {
            return Err((wspan, "the window needs a `duration`, a `max_events` or both: without either it would hold state without bound".into()));
        }
        (Some(m), _) if *m.get_ref() == 0 || *m.get_ref() > limits.max_events_per_key => {
            return Err((
                m.span(),
                format!(
                    "window.max_events must be between 1 and the engine's max_events_per_key ({})",
                    limits.max_events_per_key
                ),
            ));
        }
        (Some(m), _) => *m.get_ref(),
        (None, Some(_)) => limits.max_events_per_key,
    };
    let bucket_ms = match (&w.bucket, duration_ms) {
        (None, _) => None,
        (Some(b), None) => {
            return Err((b.span(), "window.bucket needs a window.duration".into()));
        }
        (Some(b), Some(d)) => {
            let ms = duration(b)?;
            if ms < MIN_BUCKET_MS || ms >= d {
                return Err((
                    b.span(),
                    "window.bucket must be at least 1s and shorter than the window".into(),
                ));
            }
            if d / ms > MAX_BUCKETS {
                return Err((
                    b.span(),
                    format!(
                        "window.bucket is too narrow: the window would hold more than {MAX_BUCKETS} buckets"
                    ),
                ));
            }
            Some(ms)
        }
    };
    let cooldown_ms = r.cooldown.as_ref().map(duration).transpose()?.unwrap_or(0);

    let group_span = r.group_by.span();
    let group_by = match r.group_by.get_ref() {
        GroupBySpec::Player => GroupBy::Player,
        GroupBySpec::Device => GroupBy::Device,
        GroupBySpec::Ip => GroupBy::Ip,
        GroupBySpec::PaymentInstrument => GroupBy::PaymentInstrument,
        GroupBySpec::Game => GroupBy::Game,
        GroupBySpec::Session => GroupBy::Session,
    };
    let key_field = match group_by {
        GroupBy::Player => None,
        GroupBy::Device => Some(Field::DeviceId),
        GroupBy::Ip => Some(Field::Ip),
        GroupBy::PaymentInstrument => Some(Field::PaymentInstrument),
        GroupBy::Game => Some(Field::GameId),
        GroupBy::Session => Some(Field::SessionId),
    };
    if let Some(k) = &key_field
        && !types.iter().any(|t| k.possible_on(t))
    {
        let field = match group_by {
            GroupBy::Device => "device_id",
            GroupBy::Ip => "ip",
            GroupBy::PaymentInstrument => "payment_instrument",
            GroupBy::Game => "game_id",
            GroupBy::Session | GroupBy::Player => "session_id",
        };
        let events: Vec<&str> = types.iter().map(|t| t.as_str()).collect();
        return Err((
            group_span,
            format!(
                "grouped by `{field}`, which none of the rule's events ({}) carries",
                events.join(", ")
            ),
        ));
    }

    let trigger = match &r.trigger {
        None => Filter {
            types,
            preds: Vec::new(),
        },
        Some(t) => {
            let ttypes = match &t.get_ref().events {
                Some(e) => types_of(e).map_err(|e| (t.span(), format!("trigger.events: {e}")))?,
                None => types,
            };
            if !ttypes.is_subset(types) {
                return Err((
                    t.span(),
                    "trigger.events must be among the rule's events".into(),
                ));
            }
            let preds = match &t.get_ref().filter {
                Some(w) => filter::compile(w, ttypes, lists)
                    .map_err(|e| (t.span(), format!("trigger.where: {e}")))?,
                None => Vec::new(),
            };
            Filter {
                types: ttypes,
                preds,
            }
        }
    };

    // Measures, in order; later ones may refer to earlier ones.
    let mut measures: Vec<Measure> = Vec::new();
    let mut slots: Vec<Field> = Vec::new();
    let mut distinct: Option<Field> = None;
    let mut window_measures = 0usize;
    if r.measure.is_empty() {
        return Err((
            whole.clone(),
            "a rule needs at least one [[rule.measure]]".into(),
        ));
    }
    if r.measure.len() > MAX_MEASURES_PER_RULE {
        return Err((
            whole.clone(),
            format!("a rule may have at most {MAX_MEASURES_PER_RULE} measures"),
        ));
    }
    let measure_names: Vec<String> = r.measure.iter().map(|m| m.get_ref().name.clone()).collect();
    // Measures kept one by one in a bucketed window (`exact = true`), by index.
    let mut exact_asked = 0u32;
    for m in &r.measure {
        let span = m.span();
        let spec = m.get_ref();
        let at = |msg: String| (span.clone(), format!("measure `{}`: {msg}", spec.name));
        let ok_name = spec.name.starts_with(|c: char| c.is_ascii_lowercase())
            && spec.name.len() <= 64
            && spec
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !ok_name {
            return Err(at("names are [a-z][a-z0-9_]*, at most 64 bytes".into()));
        }
        if measures.iter().any(|x| x.name == spec.name) {
            return Err(at("defined twice".into()));
        }
        let agg = match spec.agg {
            AggSpec::Count => Agg::Count,
            AggSpec::Sum => Agg::Sum,
            AggSpec::Avg => Agg::Avg,
            AggSpec::Min => Agg::Min,
            AggSpec::Max => Agg::Max,
            AggSpec::Last => Agg::Last,
            AggSpec::Median => Agg::Median,
            AggSpec::Stddev => Agg::Stddev,
            AggSpec::CountDistinct => Agg::CountDistinct,
            AggSpec::Ratio => Agg::Ratio,
            AggSpec::IntervalMean => Agg::IntervalMean,
            AggSpec::IntervalCv => Agg::IntervalCv,
            AggSpec::Age => Agg::Age,
            AggSpec::Current => Agg::Current,
        };
        let mtypes = match &spec.events {
            Some(e) => types_of(e).map_err(|e| at(format!("events: {e}")))?,
            None => types,
        };
        if !mtypes.is_subset(types) {
            return Err(at("its events must be among the rule's events".into()));
        }
        let preds = match &spec.filter {
            Some(w) => filter::compile(w, mtypes, lists).map_err(|e| at(format!("where: {e}")))?,
            None => Vec::new(),
        };
        let needs_field = matches!(
            agg,
            Agg::Sum
                | Agg::Avg
                | Agg::Min
                | Agg::Max
                | Agg::Last
                | Agg::Median
                | Agg::Stddev
                | Agg::CountDistinct
                | Agg::Current
        );
        let field = match (&spec.field, needs_field) {
            (Some(f), true) => {
                let field = Field::parse(f).ok_or_else(|| at(format!("unknown field `{f}`")))?;
                if !mtypes.iter().any(|t| field.possible_on(t)) {
                    return Err(at(format!("none of its events has a field `{f}`")));
                }
                if agg != Agg::CountDistinct && !field.is_numeric() {
                    return Err(at(format!(
                        "`{f}` is not a number: {} needs one (count_distinct counts text)",
                        agg_name(agg)
                    )));
                }
                Some(field)
            }
            (None, true) => return Err(at("this aggregate needs a `field`".into())),
            (Some(_), false) => return Err(at("this aggregate takes no `field`".into())),
            (None, false) => None,
        };
        let money = field.as_ref().is_some_and(Field::is_money) && agg != Agg::CountDistinct;
        // Money adds up within the trigger's currency: a trigger without money has none.
        if money
            && agg != Agg::Current
            && let Some(t) = trigger.types.iter().find(|t| !carries_money(*t))
        {
            return Err(at(format!(
                "adds money (`{}`), which is added up within the trigger's currency, but a \
                 `{}` trigger carries no currency (several currencies would be added as one); \
                 trigger on events with an amount, or count them",
                spec.field.as_deref().unwrap_or_default(),
                t.as_str()
            )));
        }
        let of = match (agg, &spec.of) {
            (Agg::Ratio, Some(pair)) if pair.len() == 2 => {
                let find = |n: &String| measures.iter().position(|x| &x.name == n);
                match (find(&pair[0]), find(&pair[1])) {
                    (Some(a), Some(b)) => Some((a, b)),
                    _ => return Err(at("`of` must name two measures defined before it".into())),
                }
            }
            (Agg::Ratio, _) => {
                return Err(at(
                    "a ratio needs `of = [\"numerator\", \"denominator\"]`".into()
                ));
            }
            (_, Some(_)) => return Err(at("only a ratio takes `of`".into())),
            _ => None,
        };
        let windowed = !matches!(agg, Agg::Ratio | Agg::Current);
        if !windowed
            && (spec.events.is_some()
                || spec.filter.is_some()
                || spec.within.is_some()
                || spec.last.is_some()
                || spec.since.is_some()
                || spec.exclude_trigger
                || spec.exact)
        {
            return Err(at("a ratio or current value reads no window: events, where, within, last, since, exclude_trigger and exact do not apply".into()));
        }
        // Without a `bucket` every event is kept one by one already: no effect (so removing a
        // window's `bucket` needs no other edit).
        if spec.exact {
            exact_asked |= 1 << measures.len();
        }
        let within_ms = match &spec.within {
            Some(s) => {
                let ms = parse_duration_ms(s).map_err(&at)?;
                if duration_ms.is_some_and(|d| ms > d) {
                    return Err(at("`within` is longer than the window".into()));
                }
                Some(ms)
            }
            None => None,
        };
        if spec.last == Some(0) {
            return Err(at("`last` must be at least 1".into()));
        }
        let since = match &spec.since {
            Some(n) => match measures.iter().position(|x| &x.name == n) {
                Some(i) if measures[i].windowed => Some(i),
                _ => {
                    return Err(at(format!(
                        "`since` must name a windowed measure defined before it, not {n:?}"
                    )));
                }
            },
            None => None,
        };
        if spec.default.is_some_and(|d| !d.is_finite()) {
            return Err(at("`default` must be a finite number".into()));
        }
        let slot = match (&field, windowed, agg) {
            (Some(f), true, Agg::CountDistinct) => {
                if distinct.as_ref().is_some_and(|d| d != f) {
                    return Err(at(
                        "a rule may count distinct values of one field only".into()
                    ));
                }
                distinct = Some(f.clone());
                None
            }
            (Some(f), true, _) => match slots.iter().position(|s| s == f) {
                Some(i) => Some(i),
                None if slots.len() < MAX_SLOTS => {
                    slots.push(f.clone());
                    Some(slots.len() - 1)
                }
                None => {
                    return Err(at(format!(
                        "a rule may aggregate at most {MAX_SLOTS} different fields"
                    )));
                }
            },
            _ => None,
        };
        if windowed {
            window_measures += 1;
            if window_measures > MAX_WINDOW_MEASURES {
                return Err(at(format!(
                    "a rule may have at most {MAX_WINDOW_MEASURES} windowed measures"
                )));
            }
        }
        measures.push(Measure {
            name: spec.name.clone(),
            agg,
            field,
            slot,
            filter: Filter {
                types: mtypes,
                preds,
            },
            windowed,
            within_ms,
            last: spec.last,
            exclude_trigger: spec.exclude_trigger,
            since,
            of,
            default: spec.default,
            money,
        });
    }

    // Which measures a bucketed window keeps as per-bucket totals: counts, sums and averages
    // over the whole span (no `last`), unless a `since` reads their newest event's time.
    let anchor_mask: u32 = measures
        .iter()
        .filter_map(|m| m.since)
        .fold(0, |acc, a| acc | 1 << a);
    let fold_mask: u32 = match bucket_ms {
        None => 0,
        Some(_) => measures
            .iter()
            .enumerate()
            .filter(|(i, m)| {
                m.windowed
                    && matches!(m.agg, Agg::Count | Agg::Sum | Agg::Avg)
                    && m.last.is_none()
                    && anchor_mask & (1 << i) == 0
                    && exact_asked & (1 << i) == 0
            })
            .fold(0, |acc, (i, _)| acc | 1 << i),
    };
    if let (Some(b), 0) = (&w.bucket, fold_mask) {
        return Err((
            b.span(),
            "window.bucket: no measure of this rule can be kept in buckets (only count, sum and avg without `last`, not named by a `since` and not `exact`)".into(),
        ));
    }
    let exact_mask: u32 = measures
        .iter()
        .enumerate()
        .filter(|(i, m)| m.windowed && fold_mask & (1 << i) == 0)
        .fold(0, |acc, (i, _)| acc | 1 << i);

    let interval_mask: u32 = measures
        .iter()
        .enumerate()
        .filter(|(_, m)| matches!(m.agg, Agg::IntervalMean | Agg::IntervalCv))
        .fold(0, |acc, (i, _)| acc | 1 << i);

    if r.when.is_empty() {
        return Err((
            whole.clone(),
            "a rule needs at least one [[rule.when]] condition".into(),
        ));
    }
    if r.when.len() > MAX_MEASURES {
        return Err((whole.clone(), format!("at most {MAX_MEASURES} conditions")));
    }
    let mut conditions = Vec::new();
    for c in &r.when {
        let span = c.span();
        let spec = c.get_ref();
        let at = |msg: String| {
            (
                span.clone(),
                format!("condition on `{}`: {msg}", spec.measure),
            )
        };
        let find = |n: &str| measures.iter().position(|x| x.name == n);
        let measure = find(&spec.measure).ok_or_else(|| {
            at(format!(
                "no such measure; measures are {}",
                measure_names.join(", ")
            ))
        })?;
        let (value, baseline) = match (&spec.value, &spec.baseline) {
            (Some(v), None) if v.is_finite() => (Some(*v), None),
            (Some(_), None) => {
                return Err(at("`value` must be a finite number (not nan or inf)".into()));
            }
            (None, Some(b)) => (
                None,
                Some(find(b).ok_or_else(|| at(format!("no baseline measure `{b}`")))?),
            ),
            _ => return Err(at(
                "give either `value` (a threshold) or `baseline` (another measure, times `factor`)"
                    .into(),
            )),
        };
        if spec.factor.is_some() && baseline.is_none() {
            return Err(at("`factor` applies to a `baseline`".into()));
        }
        let factor = spec.factor.unwrap_or(1.0);
        if !factor.is_finite() || factor == 0.0 {
            return Err(at(
                "`factor` must be a finite number other than 0 (a baseline times 0 is the threshold 0: give `value = 0`)".into(),
            ));
        }
        if baseline == Some(measure) {
            return Err(at(
                "the baseline is the measure itself: compare it with a `value` or another measure"
                    .into(),
            ));
        }
        let cmp = match spec.op {
            CmpSpec::Gt => Comparison::Gt,
            CmpSpec::Gte => Comparison::Gte,
            CmpSpec::Lt => Comparison::Lt,
            CmpSpec::Lte => Comparison::Lte,
            CmpSpec::Eq => Comparison::Eq,
        };
        let totals = value.is_some()
            && measures.get(measure).is_some_and(|m| {
                matches!(m.agg, Agg::Count | Agg::Sum | Agg::Avg) && m.whole_window()
            });
        // A value compared with money is written in the set's `[money]` currency and converted
        // to the trigger's (a baseline is in the trigger's currency already).
        let money = value.is_some() && measures.get(measure).is_some_and(|m| m.money);
        // Whole minor units (a sum, a min, a max, a last or the current amount), compared
        // with a converted value rounded to a whole one; an avg, a median or a stddev with
        // the converted value as it is.
        let whole = measures.get(measure).is_some_and(|m| {
            matches!(
                m.agg,
                Agg::Sum | Agg::Min | Agg::Max | Agg::Last | Agg::Current
            )
        });
        conditions.push(Condition {
            measure,
            cmp,
            value,
            baseline,
            factor,
            totals,
            money,
            whole,
        });
    }

    let names: Vec<String> = measures.iter().map(|m| m.name.clone()).collect();
    let has_threshold: Vec<bool> = (0..measures.len())
        .map(|i| conditions.iter().any(|c| c.measure == i))
        .collect();
    let money: Vec<bool> = measures.iter().map(|m| m.money).collect();
    let tnames = Names {
        measures: &names,
        has_threshold: &has_threshold,
        money: &money,
        types: trigger.types,
    };
    // Text the contract requires to say something (a blank one would have every alert or
    // push of the rule withheld at run time).
    let blank = |text: &str, what: &str| -> Result<(), String> {
        if text.trim().is_empty() {
            Err(format!("{what} must not be blank"))
        } else {
            Ok(())
        }
    };
    blank(r.reason.get_ref(), "reason: the alert's explanation")
        .map_err(|e| (r.reason.span(), e))?;
    let reason = Template::compile(r.reason.get_ref(), &tnames)
        .map_err(|e| (r.reason.span(), format!("reason: {e}")))?;
    let push = match &r.push {
        None => None,
        Some(p) => {
            let span = p.span();
            let spec = p.get_ref();
            let at = |msg: String| (span.clone(), format!("push: {msg}"));
            if !dotted_name_ok(&spec.kind, 2) {
                return Err(at(format!(
                    "kind {:?} must be a dotted name with a namespace, like \"rg.loss_chasing\"",
                    spec.kind
                )));
            }
            let room = match (spec.to, &spec.room) {
                (PushTo::Room, Some(t)) => {
                    let room =
                        Template::compile(t, &tnames).map_err(|e| at(format!("room: {e}")))?;
                    // The fixed text of a room id must be id text itself, or every push of
                    // the rule is withheld at run time.
                    if let Some(bad) = room.literals().flat_map(str::chars).find(|c| {
                        !(c.is_ascii_alphanumeric()
                            || matches!(c, '.' | '_' | '~' | '@' | '+' | '-'))
                    }) {
                        return Err(at(format!(
                            "room: {bad:?} is not allowed in a room id ([A-Za-z0-9._~@+-]), so \
                             every push of the rule would be withheld"
                        )));
                    }
                    Some(room)
                }
                (PushTo::Room, None) => {
                    return Err(at(
                        "a push to a room needs `room` (a template like \"{game_id}\")".into(),
                    ));
                }
                (PushTo::Player, Some(_)) => {
                    return Err(at("`room` applies to `to = \"room\"`".into()));
                }
                (PushTo::Player, None) => None,
            };
            blank(&spec.title, "push: title").map_err(|e| (span.clone(), e))?;
            blank(&spec.body, "push: body").map_err(|e| (span.clone(), e))?;
            let expires_ms = spec
                .expires_after
                .as_deref()
                .map(parse_duration_ms)
                .transpose()
                .map_err(at)?;
            Some(PushAction {
                room,
                kind: spec.kind.clone(),
                title: Template::compile(&spec.title, &tnames)
                    .map_err(|e| at(format!("title: {e}")))?,
                body: Template::compile(&spec.body, &tnames)
                    .map_err(|e| at(format!("body: {e}")))?,
                expires_ms,
            })
        }
    };
    if !r.alert && push.is_none() {
        return Err((
            whole,
            "the rule does nothing: set `alert = true` or add a [rule.push]".into(),
        ));
    }
    let signature = format!(
        "{group_by:?}|{duration_ms:?}|{cap}|{slots:?}|{distinct:?}|{:?}",
        measures
            .iter()
            .filter(|m| m.windowed)
            .map(|m| &m.filter)
            .collect::<Vec<_>>()
    );
    Ok(CompiledRule {
        id,
        version: *r.version.get_ref(),
        category: match r.category {
            CategorySpec::Fraud => Category::Fraud,
            CategorySpec::ResponsibleGambling => Category::ResponsibleGambling,
        },
        severity: match r.severity {
            SeveritySpec::Info => Severity::Info,
            SeveritySpec::Low => Severity::Low,
            SeveritySpec::Medium => Severity::Medium,
            SeveritySpec::High => Severity::High,
            SeveritySpec::Critical => Severity::Critical,
        },
        score: r.score,
        description: r.description,
        group_by,
        key_field,
        types,
        duration_ms,
        cap,
        bucket_ms,
        fold_mask,
        exact_mask,
        anchor_mask,
        interval_mask,
        windowed_mask: measures
            .iter()
            .enumerate()
            .filter(|(_, m)| m.windowed)
            .fold(0, |acc, (i, _)| acc | 1 << i),
        excludes_trigger: measures.iter().any(|m| m.exclude_trigger),
        cooldown_ms,
        trigger,
        slots,
        keep_labels: distinct == Some(Field::PlayerId),
        distinct,
        measures,
        conditions,
        reason,
        alert: r.alert,
        push,
        signature,
        file: file.to_owned(),
        line,
    })
}

/// Whether events of this type carry money (and so a currency).
fn carries_money(t: EventType) -> bool {
    matches!(
        t,
        EventType::BetPlaced
            | EventType::BetSettled
            | EventType::Deposit
            | EventType::Withdrawal
            | EventType::Bonus
    )
}

/// An aggregate's name in a rule file.
fn agg_name(a: Agg) -> &'static str {
    match a {
        Agg::Count => "count",
        Agg::Sum => "sum",
        Agg::Avg => "avg",
        Agg::Min => "min",
        Agg::Max => "max",
        Agg::Last => "last",
        Agg::Median => "median",
        Agg::Stddev => "stddev",
        Agg::CountDistinct => "count_distinct",
        Agg::Ratio => "ratio",
        Agg::IntervalMean => "interval_mean",
        Agg::IntervalCv => "interval_cv",
        Agg::Age => "age",
        Agg::Current => "current",
    }
}
