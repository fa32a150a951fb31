//! Every `where` filter of the shipped packs (`rules/*.toml`) in two forms: the engine's
//! compiled predicates ([`pitboss_antifraud::filter::Filter`]) and the CEL expression a rule
//! author would write for it. [`Filters::agree`] checks that both give the same answer on every
//! event, so the benchmark compares equal work.

use std::collections::HashMap;
use std::sync::Arc;

use pitboss_antifraud::field::{Extra, Field, Value as FieldValue};
use pitboss_antifraud::filter::{Filter, Types, compile};
use pitboss_model::{Event, EventType};

/// `(event types, where table in TOML, the same in CEL)`.
pub const FILTERS: &[(&[EventType], &str, &str)] = &[
    (
        &[EventType::Withdrawal],
        r#"status = "requested""#,
        r#"event.type == "withdrawal" && has(event.status) && event.status == "requested""#,
    ),
    (
        &[EventType::Withdrawal],
        r#"status = "cancelled""#,
        r#"event.type == "withdrawal" && has(event.status) && event.status == "cancelled""#,
    ),
    (
        &[EventType::Bonus],
        r#"action = "granted"
wagering_requirement = { gt = 0 }"#,
        r#"event.type == "bonus" && has(event.action) && event.action == "granted" && has(event.wagering_requirement) && event.wagering_requirement > 0"#,
    ),
    (
        &[EventType::Bonus],
        "wagering_requirement = { exists = true }",
        r#"event.type == "bonus" && has(event.wagering_requirement)"#,
    ),
    (
        &[EventType::Bonus],
        "wagered = { exists = true }",
        r#"event.type == "bonus" && has(event.wagered)"#,
    ),
    (
        &[EventType::Bonus],
        r#"action = ["released", "forfeited"]"#,
        r#"event.type == "bonus" && has(event.action) && event.action in ["released", "forfeited"]"#,
    ),
    (
        &[EventType::BetPlaced, EventType::BetSettled],
        "stake = { gte = 10000 }",
        r#"(event.type == "bet_placed" || event.type == "bet_settled") && has(event.stake) && event.stake >= 10000"#,
    ),
    (
        &[EventType::BetSettled],
        r#"stake = { gte = 10000 }
result = ["win", "loss"]"#,
        r#"event.type == "bet_settled" && has(event.stake) && event.stake >= 10000 && has(event.result) && event.result in ["win", "loss"]"#,
    ),
    (
        &[EventType::BetSettled],
        r#"stake = { gte = 10000 }
result = "win""#,
        r#"event.type == "bet_settled" && has(event.stake) && event.stake >= 10000 && has(event.result) && event.result == "win""#,
    ),
    (
        &[EventType::Login],
        "success = false",
        r#"event.type == "login" && has(event.success) && event.success == false"#,
    ),
    (
        &[EventType::BetPlaced, EventType::BetSettled],
        "local_hour = { lt = 5 }",
        r#"(event.type == "bet_placed" || event.type == "bet_settled") && event.local_hour < 5"#,
    ),
];

/// The fields the filters read, as the CEL context holds them.
const FIELDS: &[&str] = &[
    "status",
    "action",
    "wagering_requirement",
    "wagered",
    "stake",
    "result",
    "success",
    "local_hour",
];

pub struct Filters {
    pub native: Vec<Filter>,
    pub cel: Vec<cel::Program>,
    fields: Vec<(Arc<String>, Field)>,
    type_names: HashMap<EventType, Arc<String>>,
}

impl Filters {
    pub fn new() -> Filters {
        let native = FILTERS
            .iter()
            .map(|(types, table, _)| {
                let types = Types(types.iter().fold(0, |acc, t| acc | Types::of(*t).0));
                let table: toml::Table = toml::from_str(table).expect("a where table");
                Filter {
                    types,
                    preds: compile(&table, types).expect("a valid filter"),
                }
            })
            .collect();
        let cel = FILTERS
            .iter()
            .map(|(_, _, src)| cel::Program::compile(src).expect("a valid CEL expression"))
            .collect();
        let fields = FIELDS
            .iter()
            .map(|n| (Arc::new((*n).to_owned()), Field::parse(n).expect("a field")))
            .collect();
        let type_names = EventType::ALL
            .iter()
            .map(|t| (*t, Arc::new(t.as_str().to_owned())))
            .collect();
        Filters {
            native,
            cel,
            fields,
            type_names,
        }
    }

    /// The engine's predicates: how many filters pass.
    pub fn native(&self, e: &Event, extra: &Extra) -> usize {
        self.native.iter().filter(|f| f.matches(e, extra)).count()
    }

    /// The event as a CEL map of the fields the filters read (absent fields left out), the
    /// least an engine evaluating CEL would build per event.
    pub fn context(&self, e: &Event, extra: &Extra) -> cel::Value {
        let mut m: HashMap<cel::objects::Key, cel::Value> = HashMap::with_capacity(9);
        m.insert(
            cel::objects::Key::String(Arc::new("type".to_owned())),
            cel::Value::String(self.type_names[&e.event_type()].clone()),
        );
        for (name, field) in &self.fields {
            let v = match field.get(e, extra) {
                FieldValue::Missing => continue,
                FieldValue::Text(t) => cel::Value::String(Arc::new(t.to_owned())),
                FieldValue::Bool(b) => cel::Value::Bool(b),
                FieldValue::Money(minor, _) => cel::Value::Int(minor),
                FieldValue::Num(n) if n.fract() == 0.0 && n.abs() < 9.0e15 => {
                    cel::Value::Int(n as i64)
                }
                FieldValue::Num(n) => cel::Value::Float(n),
            };
            m.insert(cel::objects::Key::String(name.clone()), v);
        }
        m.into()
    }

    /// CEL: the context built, then every program run; how many pass.
    pub fn cel(&self, ctx: &mut cel::Context<'_, '_>, e: &Event, extra: &Extra) -> usize {
        ctx.add_variable_from_value("event", self.context(e, extra));
        self.cel
            .iter()
            .filter(|p| matches!(p.execute(ctx), Ok(cel::Value::Bool(true))))
            .count()
    }

    /// Whether both forms answer alike for every filter on `e` (`Err` names the first that
    /// does not).
    pub fn agree(
        &self,
        ctx: &mut cel::Context<'_, '_>,
        e: &Event,
        extra: &Extra,
    ) -> Result<(), String> {
        ctx.add_variable_from_value("event", self.context(e, extra));
        for (i, (f, p)) in self.native.iter().zip(&self.cel).enumerate() {
            let native = f.matches(e, extra);
            let cel = match p.execute(ctx) {
                Ok(cel::Value::Bool(b)) => b,
                other => return Err(format!("filter {i}: CEL gave {other:?}")),
            };
            if native != cel {
                return Err(format!(
                    "filter {i} ({}): native {native}, CEL {cel} on {:?}",
                    FILTERS[i].2,
                    e.event_type()
                ));
            }
        }
        Ok(())
    }
}

impl Default for Filters {
    fn default() -> Self {
        Filters::new()
    }
}
