//! Message templates: text with `{placeholders}` filled from a rule hit. A placeholder names a
//! measure (`{bets}`), a condition's threshold (`{bets.threshold}`), an event field (`{stake}`,
//! `{game_id}`), or `{group_key}`, `{player_id}`, `{rule_id}`; an optional format follows a
//! colon: `{net_loss:money}` (major units and currency: `612.50 EUR`), `{since_start:duration}`
//! (`3h 05m`), `{win_rate:pct}` (`85%`). `{{` and `}}` are literal braces. Names are checked
//! when the rule is loaded.

use pitboss_model::Event;

use crate::duration::human_ms;
use crate::field::{Extra, Field, Value};

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

    /// Fills the template.
    pub fn render(&self, fill: &Fill<'_>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Measure(i, f) => number(
                    &mut out,
                    fill.values.get(*i).copied().flatten(),
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
    if let Some(base) = name.strip_suffix(".threshold") {
        return match measure(base) {
            Some(i) if names.has_threshold.get(i).copied().unwrap_or(false) => {
                Ok(Part::Threshold(i, format))
            }
            Some(_) => Err(format!(
                "placeholder `{{{spec}}}`: measure `{base}` has no condition, so no threshold"
            )),
            None => Err(format!("placeholder `{{{spec}}}`: no measure `{base}`")),
        };
    }
    if let Some(i) = measure(name) {
        return Ok(Part::Measure(i, format));
    }
    match name {
        "group_key" => return Ok(Part::GroupKey),
        "player_id" => return Ok(Part::PlayerId),
        "rule_id" => return Ok(Part::RuleId),
        _ => {}
    }
    match Field::parse(name) {
        Some(f) => Ok(Part::Field(f, format)),
        None => Err(format!(
            "placeholder `{{{spec}}}` is neither a measure ({}) nor an event field",
            names.measures.join(", ")
        )),
    }
}

/// Digits after the decimal point of a currency's minor unit (ISO 4217 exponent).
fn exponent(currency: &str) -> i32 {
    match currency {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        _ => 2,
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
            let e = exponent(cur);
            write!(out, "{:.*} {cur}", e as usize, v / 10f64.powi(e))
        }
        (Format::Duration, _) => write!(out, "{}", human_ms(v)),
        (Format::Pct, _) => write!(out, "{:.0}%", v * 100.0),
        _ if v.fract() == 0.0 && v.abs() < 1e15 => write!(out, "{}", v as i64),
        _ => write!(out, "{v:.2}"),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> (Vec<String>, Vec<bool>) {
        (vec!["bets".into(), "net_loss".into()], vec![true, false])
    }

    #[test]
    fn renders_measures_thresholds_fields_and_formats() {
        let (measures, has) = names();
        let n = Names {
            measures: &measures,
            has_threshold: &has,
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
        };
        for (src, needle) in [
            ("{bts}", "neither a measure"),
            ("{net_loss.threshold}", "has no condition"),
            ("{bets:euros}", "unknown format"),
            ("{bets", "unclosed"),
            ("}", "unmatched"),
        ] {
            let err = Template::compile(src, &n).expect_err(src);
            assert!(err.contains(needle), "{src}: {err}");
        }
    }
}
