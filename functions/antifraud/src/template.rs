//! Message templates: text with `{placeholders}` filled from a rule hit. A placeholder names a
//! measure (`{bets}`), a condition's threshold (`{bets.threshold}`), an event field (`{stake}`,
//! `{game_id}`), or `{group_key}`, `{player_id}`, `{rule_id}`; an optional format follows a
//! colon: `{net_loss:money}` (major units and currency: `612.50 EUR`), `{since_start:duration}`
//! (`3h 05m`), `{win_rate:pct}` (`85%`). `{{` and `}}` are literal braces. Names are checked
//! when the rule is loaded.

use pitboss_model::Event;

use crate::duration::human_ms;
use crate::field::{Extra, Field, Value};
use crate::filter::Types;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Plain,
    Money,
    Duration,
    Pct,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Measure(usize, Format),
    Threshold(usize, Format),
    Field(Field, Format),
    GroupKey,
    PlayerId,
    RuleId,
}

/// A compiled template.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Template {
    parts: Vec<Part>,
}

/// What the names in a template may refer to.
#[derive(Debug)]
pub struct Names<'a> {
    /// Measure names, by index.
    pub measures: &'a [String],
    /// Whether measure `i` has a condition (so a threshold), by index.
    pub has_threshold: &'a [bool],
    /// Whether measure `i` is money (`:money` applies), by index.
    pub money: &'a [bool],
    /// The events a template is filled from (the rule's triggers): an event field must be on
    /// one of them.
    pub types: Types,
}

/// What a hit supplies to fill a template.
#[derive(Debug)]
pub struct Fill<'a> {
    pub event: &'a Event,
    pub extra: &'a Extra,
    pub values: &'a [Option<f64>],
    pub thresholds: &'a [Option<f64>],
    /// The currency money measures are in (the trigger event's).
    pub currency: Option<&'a str>,
    pub group_key: &'a str,
    pub rule_id: &'a str,
}

impl Template {
    /// Parses and resolves a template.
    pub fn compile(text: &str, names: &Names<'_>) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '}' => return Err("unmatched `}` (write `}}` for a brace)".into()),
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err(format!("unclosed placeholder `{{{name}`")),
                        }
                    }
                    if !lit.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut lit)));
                    }
                    parts.push(resolve(&name, names)?);
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Text(lit));
        }
        Ok(Template { parts })
    }

    /// The template's fixed text, between its placeholders.
    pub fn literals(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Text(t) => Some(t.as_str()),
            _ => None,
        })
    }

    /// Fills the template.
    pub fn render(&self, fill: &Fill<'_>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Measure(i, f) => number_apart(
                    &mut out,
                    fill.values.get(*i).copied().flatten(),
                    fill.thresholds.get(*i).copied().flatten(),
                    *f,
                    fill.currency,
                ),
                Part::Threshold(i, f) => number(
                    &mut out,
                    fill.thresholds.get(*i).copied().flatten(),
                    *f,
                    fill.currency,
                ),
                Part::Field(field, f) => match field.get(fill.event, fill.extra) {
                    Value::Missing => out.push('?'),
                    Value::Num(n) => number(&mut out, Some(n), *f, fill.currency),
                    Value::Money(m, cur) => {
                        number(&mut out, Some(m as f64), Format::Money, Some(cur))
                    }
                    Value::Text(t) => out.push_str(t),
                    Value::Bool(b) => out.push_str(if b { "true" } else { "false" }),
                },
                Part::GroupKey => out.push_str(fill.group_key),
                Part::PlayerId => out.push_str(&fill.event.player_id),
                Part::RuleId => out.push_str(fill.rule_id),
            }
        }
        out
    }
}

fn resolve(spec: &str, names: &Names<'_>) -> Result<Part, String> {
    let (name, format) = match spec.split_once(':') {
        Some((n, "money")) => (n, Format::Money),
        Some((n, "duration")) => (n, Format::Duration),
        Some((n, "pct")) => (n, Format::Pct),
        Some((_, other)) => {
            return Err(format!(
                "placeholder `{{{spec}}}`: unknown format `{other}`; use money, duration or pct"
            ));
        }
        None => (spec, Format::Plain),
    };
    let measure = |n: &str| names.measures.iter().position(|m| m == n);
    let not_money = |what: &str| {
        Err(format!(
            "placeholder `{{{spec}}}`: {what} is not money, so `:money` does not apply"
        ))
    };
    if let Some(base) = name.strip_suffix(".threshold") {
        return match measure(base) {
            Some(i) if names.has_threshold.get(i).copied().unwrap_or(false) => {
                if format == Format::Money && !names.money.get(i).copied().unwrap_or(false) {
                    return not_money(&format!("measure `{base}`"));
                }
                Ok(Part::Threshold(i, format))
            }
            Some(_) => Err(format!(
                "placeholder `{{{spec}}}`: measure `{base}` has no condition, so no threshold"
            )),
            None => Err(format!("placeholder `{{{spec}}}`: no measure `{base}`")),
        };
    }
    if let Some(i) = measure(name) {
        if format == Format::Money && !names.money.get(i).copied().unwrap_or(false) {
            return not_money(&format!("measure `{name}`"));
        }
        return Ok(Part::Measure(i, format));
    }
    match name {
        "group_key" => return Ok(Part::GroupKey),
        "player_id" => return Ok(Part::PlayerId),
        "rule_id" => return Ok(Part::RuleId),
        _ => {}
    }
    match Field::parse(name) {
        Some(f) if !names.types.iter().any(|t| f.possible_on(t)) => {
            let list: Vec<_> = names.types.iter().map(|t| t.as_str()).collect();
            Err(format!(
                "placeholder `{{{spec}}}`: no event that triggers the rule ([{}]) has a field \
                 `{name}` (it would always read \"?\")",
                list.join(", ")
            ))
        }
        Some(f) if format == Format::Money && !f.is_money() => not_money(&format!("`{name}`")),
        Some(f) => Ok(Part::Field(f, format)),
        None => Err(format!(
            "placeholder `{{{spec}}}` is neither a measure ({}) nor an event field",
            names.measures.join(", ")
        )),
    }
}

fn number(out: &mut String, v: Option<f64>, format: Format, currency: Option<&str>) {
    use std::fmt::Write;
    let Some(v) = v else {
        out.push('?');
        return;
    };
    let _ = match (format, currency) {
        (Format::Money, Some(cur)) => {
            let e = pitboss_model::currency::minor_unit_digits(cur);
            write!(out, "{:.*} {cur}", e as usize, v / 10f64.powi(e as i32))
        }
        (Format::Duration, _) => write!(out, "{}", human_ms(v)),
        (Format::Pct, _) => write!(out, "{}%", pct(v * 100.0)),
        _ if v.fract() == 0.0 && v.abs() < 1e15 => write!(out, "{}", v as i64),
        _ => write!(out, "{v:.2}"),
    };
}

/// A measure's value as [`number`] writes it, with more digits when that would read the same as
/// its threshold while it is not (a wagering progress of 99.95 % under a threshold of 100 %
/// read "100%", contradicting the condition that fired).
fn number_apart(
    out: &mut String,
    v: Option<f64>,
    threshold: Option<f64>,
    format: Format,
    currency: Option<&str>,
) {
    let (Some(value), Some(th)) = (v, threshold) else {
        return number(out, v, format, currency);
    };
    let (mut mine, mut theirs) = (String::new(), String::new());
    number(&mut mine, Some(value), format, currency);
    number(&mut theirs, Some(th), format, currency);
    // What a reader takes each text for: "30.00" and "30" are the same number.
    let read = |t: &str| t.trim_end_matches('%').parse::<f64>().ok();
    let (scaled, th_scaled, suffix, from) = match format {
        Format::Pct => (value * 100.0, th * 100.0, "%", 1),
        Format::Plain => (value, th, "", 2),
        // Money is whole minor units, durations read to the second: equal text, equal value
        // as far as the reader is concerned.
        Format::Money | Format::Duration => {
            out.push_str(&mine);
            return;
        }
    };
    if value == th || !value.is_finite() || read(&mine) != read(&theirs) {
        out.push_str(&mine);
        return;
    }
    // The first precision at which the two read differently (both rounded alike).
    for digits in from..=8 {
        let text = format!("{scaled:.digits$}");
        let other = format!("{th_scaled:.digits$}");
        if read(&text) == read(&other) {
            continue;
        }
        // Trailing zeros dropped from a percentage unless that makes it read as the
        // threshold does ("100.0000%" under a threshold of 100.004 % stays).
        let trimmed = text.trim_end_matches('0').trim_end_matches('.');
        let text = if format == Format::Pct && read(trimmed) != read(&theirs) {
            trimmed
        } else {
            text.as_str()
        };
        out.push_str(text);
        out.push_str(suffix);
        return;
    }
    out.push_str(&mine);
}

/// A percentage with the precision its size calls for: `85`, `4.5`, `0.5`, `0.04` (two
/// significant digits below 10, so a turnover of 0.5 % does not read "0%").
fn pct(p: f64) -> String {
    if p == 0.0 || !p.is_finite() || p.abs() >= 10.0 {
        return format!("{p:.0}");
    }
    let digits = (1.0 - p.abs().log10().floor()).clamp(0.0, 6.0) as usize;
    let text = format!("{p:.digits$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_that_is_not_its_threshold_never_reads_as_it() {
        let fmt = |v: f64, th: Option<f64>, f: Format| {
            let mut out = String::new();
            number_apart(&mut out, Some(v), th, f, Some("EUR"));
            out
        };
        // The wagering progress and turnover an analyst saw read "100%" under "< 100%".
        assert_eq!(fmt(0.9995, Some(1.0), Format::Pct), "99.95%");
        assert_eq!(fmt(0.996, Some(1.0), Format::Pct), "99.6%");
        assert_eq!(fmt(0.8004, Some(0.8), Format::Pct), "80.04%");
        assert_eq!(fmt(0.0999, Some(0.1), Format::Plain), "0.0999");
        assert_eq!(fmt(29.999, Some(30.0), Format::Plain), "29.999");
        assert_eq!(fmt(1.0, Some(1.000_04), Format::Pct), "100.000%");
        // Apart already, equal, or no threshold: as before.
        assert_eq!(fmt(0.25, Some(1.0), Format::Pct), "25%");
        assert_eq!(fmt(1.0, Some(1.0), Format::Pct), "100%");
        assert_eq!(fmt(0.9995, None, Format::Pct), "100%");
        assert_eq!(fmt(99950.0, Some(100_000.0), Format::Money), "999.50 EUR");
    }

    #[test]
    fn percentages_and_money_keep_what_their_size_needs() {
        for (v, want) in [
            (0.85, "85%"),
            (1.0, "100%"),
            (0.045, "4.5%"),
            (0.05, "5%"),
            (0.005, "0.5%"),
            (0.000_4, "0.04%"),
            (0.0, "0%"),
            (-0.25, "-25%"),
        ] {
            let mut out = String::new();
            number(&mut out, Some(v), Format::Pct, None);
            assert_eq!(out, want, "{v}");
        }
        for (minor, cur, want) in [
            (123_456.0, "UYW", "12.3456 UYW"),
            (1_234.0, "CLF", "0.1234 CLF"),
            (3.0, "XAU", "3 XAU"),
            (12_345.0, "BHD", "12.345 BHD"),
            (500.0, "JPY", "500 JPY"),
            (61_250.0, "EUR", "612.50 EUR"),
        ] {
            let mut out = String::new();
            number(&mut out, Some(minor), Format::Money, Some(cur));
            assert_eq!(out, want);
        }
    }

    fn names() -> (Vec<String>, Vec<bool>) {
        (vec!["bets".into(), "net_loss".into()], vec![true, false])
    }

    #[test]
    fn renders_measures_thresholds_fields_and_formats() {
        let (measures, has) = names();
        let n = Names {
            measures: &measures,
            has_threshold: &has,
            money: &[false, true],
            types: Types::of(pitboss_model::EventType::BetPlaced),
        };
        let t = Template::compile(
            "{bets} bets (>= {bets.threshold}) lost {net_loss:money} on {game_id} as {player_id} {{ok}}",
            &n,
        )
        .expect("compiles");
        let event = pitboss_model::decode_event(
            br#"{"event_id":"0193735a-2222-7333-8444-555566667777","tenant_id":"t","player_id":"p-1","type":"bet_placed","occurred_at":"2026-11-28T12:30:00Z","payload":{"bet_id":"b","game_id":"roulette","stake":{"amount_minor":100,"currency":"EUR"}}}"#,
        )
        .expect("event");
        let text = t.render(&Fill {
            event: &event,
            extra: &Extra::default(),
            values: &[Some(31.0), Some(61250.0)],
            thresholds: &[Some(30.0), None],
            currency: Some("EUR"),
            group_key: "p-1",
            rule_id: "x.y",
        });
        assert_eq!(
            text,
            "31 bets (>= 30) lost 612.50 EUR on roulette as p-1 {ok}"
        );
    }

    #[test]
    fn unknown_names_and_bad_syntax_are_refused() {
        let (measures, has) = names();
        let n = Names {
            measures: &measures,
            has_threshold: &has,
            money: &[false, true],
            types: Types::of(pitboss_model::EventType::BetPlaced),
        };
        for (src, needle) in [
            ("{bts}", "neither a measure"),
            ("{net_loss.threshold}", "has no condition"),
            ("{bets:euros}", "unknown format"),
            ("{bets", "unclosed"),
            ("}", "unmatched"),
            (
                "{amount}",
                "no event that triggers the rule ([bet_placed]) has a field `amount`",
            ),
            ("{bets:money}", "measure `bets` is not money"),
            ("{bets.threshold:money}", "measure `bets` is not money"),
            ("{odds:money}", "`odds` is not money"),
        ] {
            let err = Template::compile(src, &n).expect_err(src);
            assert!(err.contains(needle), "{src}: {err}");
        }
    }
}
