//! Event filters: a set of event types plus field predicates, all of which must hold.
//! In a rule file a predicate list is a TOML table, `{ status = "requested", stake = { gte =
//! 10000 }, result = ["win", "cashout"], device_id = { exists = true } }`: a scalar means `eq`,
//! an array `in`, a table names operators (`eq`, `ne`, `in`, `gt`, `gte`, `lt`, `lte`,
//! `exists`, `in_list`, `not_in_list`: membership of a `[[list]]`, [`crate::lists`]).

use std::sync::Arc;

use pitboss_model::{Event, EventType};

use crate::lists::{ListKind, Lists, NamedList};

use crate::field::{Extra, Field, Value};
use crate::money::Scale;
use pitboss_model::live::Comparison;

/// A set of event types, as a bit mask over [`EventType::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Types(pub u16);

impl Types {
    pub fn of(t: EventType) -> Types {
        Types(1 << index(t))
    }

    pub fn contains(self, t: EventType) -> bool {
        self.0 & (1 << index(t)) != 0
    }

    pub fn is_subset(self, of: Types) -> bool {
        self.0 & !of.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = EventType> {
        EventType::ALL
            .into_iter()
            .filter(move |t| self.contains(*t))
    }
}

/// The position of an event type in [`EventType::ALL`] (its declaration order, which `ALL`
/// follows: tested).
#[inline]
pub fn index(t: EventType) -> usize {
    t as usize
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Eq,
    Ne,
    In,
    Gt,
    Gte,
    Lt,
    Lte,
    Exists,
    /// The value is on a `[[list]]` (for the event's tenant).
    InList,
    NotInList,
}

/// A constant a field is compared with.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Num(f64),
    Text(String),
    Bool(bool),
    List(Vec<Operand>),
    /// A `[[list]]` of the rule set (compared by name).
    Set(Arc<NamedList>),
}

/// One predicate: `field op operand`. A missing field fails every predicate but
/// `exists = false`.
#[derive(Debug, Clone, PartialEq)]
pub struct Pred {
    pub field: Field,
    pub op: Op,
    pub operand: Operand,
}

/// Event types plus predicates.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filter {
    pub types: Types,
    pub preds: Vec<Pred>,
}

impl Filter {
    /// Whether the event passes.
    pub fn matches(&self, e: &Event, extra: &Extra) -> bool {
        self.types.contains(e.event_type()) && self.preds.iter().all(|p| p.holds(e, extra))
    }
}

/// Whether `v` is `o`; a number compared with money is in the set's `[money]` currency,
/// converted with `money` ([`crate::money`]).
fn same(v: Value<'_>, o: &Operand, money: Scale) -> bool {
    match (v, o) {
        (Value::Text(a), Operand::Text(b)) => a == b,
        (Value::Bool(a), Operand::Bool(b)) => a == *b,
        (v, Operand::Num(b)) => v.number() == Some(money.threshold(*b, Comparison::Eq)),
        _ => false,
    }
}

impl Pred {
    pub fn holds(&self, e: &Event, extra: &Extra) -> bool {
        let v = self.field.get(e, extra);
        if self.op == Op::Exists {
            return (v != Value::Missing) == (self.operand == Operand::Bool(true));
        }
        if v == Value::Missing {
            return false;
        }
        let money = match v {
            Value::Money(..) => extra.money,
            _ => Scale::Same,
        };
        match (self.op, &self.operand) {
            (Op::Eq, o) => same(v, o, money),
            (Op::Ne, o) => !same(v, o, money),
            (Op::In, Operand::List(list)) => list.iter().any(|o| same(v, o, money)),
            (Op::InList, Operand::Set(l)) => {
                matches!(v, Value::Text(t) if l.contains(&e.tenant_id, t, e.occurred_at.as_millis()))
            }
            (Op::NotInList, Operand::Set(l)) => {
                matches!(v, Value::Text(t) if !l.contains(&e.tenant_id, t, e.occurred_at.as_millis()))
            }
            (op, Operand::Num(b)) => v.number().is_some_and(|a| match op {
                Op::Gt => a > money.threshold(*b, Comparison::Gt),
                Op::Gte => a >= money.threshold(*b, Comparison::Gte),
                Op::Lt => a < money.threshold(*b, Comparison::Lt),
                Op::Lte => a <= money.threshold(*b, Comparison::Lte),
                _ => false,
            }),
            _ => false,
        }
    }
}

/// What kind of values a field holds, for checking predicates at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Number,
    Text,
    Flag,
    Any,
}

fn kind(f: &Field) -> Kind {
    match f {
        Field::LocalHour | Field::Odds | Field::DurationMs => Kind::Number,
        f if f.is_money() => Kind::Number,
        Field::Success | Field::Autoplay => Kind::Flag,
        Field::Property(_) => Kind::Any,
        _ => Kind::Text,
    }
}

/// The values an enum-like text field can take (a typo in a rule is refused at load).
fn allowed(f: &Field) -> Option<&'static [&'static str]> {
    Some(match f {
        Field::Type => &[
            "bet_placed",
            "bet_settled",
            "deposit",
            "withdrawal",
            "login",
            "logout",
            "session_started",
            "session_ended",
            "bonus",
            "custom",
        ],
        Field::Result => &["win", "loss", "void", "cashout"],
        Field::Status => &["requested", "approved", "cancelled"],
        Field::Action => &["granted", "wagered", "released", "forfeited"],
        Field::Method => &[
            "card",
            "bank_transfer",
            "ewallet",
            "crypto",
            "voucher",
            "other",
        ],
        Field::BetType => &["single", "accumulator", "system", "spin", "hand", "other"],
        Field::Channel => &[
            "web",
            "mobile_web",
            "ios",
            "android",
            "desktop",
            "retail",
            "api",
        ],
        Field::FailureReason => &[
            "bad_credentials",
            "unknown_account",
            "account_locked",
            "second_factor",
            "other",
        ],
        _ => return None,
    })
}

fn operand(v: &toml::Value, field: &Field, name: &str) -> Result<Operand, String> {
    let o = match v {
        toml::Value::String(s) => Operand::Text(s.clone()),
        toml::Value::Integer(i) => Operand::Num(*i as f64),
        toml::Value::Float(f) if f.is_finite() => Operand::Num(*f),
        toml::Value::Boolean(b) => Operand::Bool(*b),
        other => {
            return Err(format!(
                "`{name}`: {} is not a string, number or boolean",
                other.type_str()
            ));
        }
    };
    let ok = match (kind(field), &o) {
        (Kind::Any, _) | (Kind::Number, Operand::Num(_)) | (Kind::Flag, Operand::Bool(_)) => true,
        (Kind::Text, Operand::Text(t)) => match allowed(field) {
            Some(values) if !values.contains(&t.as_str()) => {
                return Err(format!(
                    "`{name}` is never {t:?}; it is one of: {}",
                    values.join(", ")
                ));
            }
            _ => true,
        },
        _ => false,
    };
    if !ok {
        let want = match kind(field) {
            Kind::Number => "a number",
            Kind::Flag => "true or false",
            _ => "a string",
        };
        return Err(format!("`{name}` is compared with {want}"));
    }
    Ok(o)
}

/// Compiles a predicate table, checking each field exists on at least one of `types`.
pub fn compile(table: &toml::Table, types: Types, lists: &Lists) -> Result<Vec<Pred>, String> {
    let mut out = Vec::new();
    for (name, v) in table {
        let field = Field::parse(name).ok_or_else(|| {
            format!(
                "unknown field `{name}`; fields are {} and properties.<key>",
                crate::field::NAMES.join(", ")
            )
        })?;
        if !types.iter().any(|t| field.possible_on(t)) {
            let list: Vec<_> = types.iter().map(EventType::as_str).collect();
            return Err(format!(
                "no event of [{}] has a field `{name}`",
                list.join(", ")
            ));
        }
        match v {
            toml::Value::Table(ops) => {
                if ops.is_empty() {
                    return Err(format!("`{name}`: an empty table compares nothing"));
                }
                for (op, arg) in ops {
                    out.push(pred(field.clone(), op, arg, name, lists)?);
                }
            }
            toml::Value::Array(_) => out.push(pred(field, "in", v, name, lists)?),
            scalar => out.push(Pred {
                operand: operand(scalar, &field, name)?,
                field,
                op: Op::Eq,
            }),
        }
    }
    for p in &out {
        never(p, types)?;
    }
    // Every predicate must hold on one event: some event type has to carry every field a
    // predicate needs (`exists = false` is met by a field's absence).
    let needs = |p: &Pred| !(p.op == Op::Exists && p.operand == Operand::Bool(false));
    if !types.iter().any(|t| {
        out.iter()
            .filter(|p| needs(p))
            .all(|p| p.field.possible_on(t))
    }) {
        let list: Vec<_> = types.iter().map(EventType::as_str).collect();
        let fields: Vec<_> = table.keys().map(|k| format!("`{k}`")).collect();
        return Err(format!(
            "no event of [{}] has all of {}: every predicate must hold on one event, so \
             nothing would pass",
            list.join(", "),
            fields.join(", ")
        ));
    }
    // Bounds of one field that no value meets (`stake = { gte = 500, lt = 100 }`).
    for (name, v) in table {
        let toml::Value::Table(ops) = v else { continue };
        let num = |k: &str| match ops.get(k) {
            Some(toml::Value::Integer(i)) => Some(*i as f64),
            Some(toml::Value::Float(f)) => Some(*f),
            _ => None,
        };
        let low = [(num("gt"), true), (num("gte"), false)]
            .into_iter()
            .filter_map(|(v, strict)| v.map(|v| (v, strict)))
            .max_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let high = [(num("lt"), true), (num("lte"), false)]
            .into_iter()
            .filter_map(|(v, strict)| v.map(|v| (v, strict)))
            .min_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)));
        if let (Some((lo, ls)), Some((hi, hs))) = (low, high)
            && (lo > hi || (lo == hi && (ls || hs)))
        {
            return Err(format!(
                "`{name}`: no value is both {} {lo} and {} {hi}",
                if ls { ">" } else { ">=" },
                if hs { "<" } else { "<=" }
            ));
        }
    }
    Ok(out)
}

/// Refuses a predicate no event of `types` can meet: a `type` the filter's events do not
/// include, an hour outside 0–23, a country that is not ISO 3166-1, an address that is not
/// one, a currency code in lower case.
fn never(p: &Pred, types: Types) -> Result<(), String> {
    let texts: Vec<&str> = match (&p.op, &p.operand) {
        (Op::Eq | Op::In, Operand::Text(t)) => vec![t.as_str()],
        (Op::Eq | Op::In, Operand::List(l)) => l
            .iter()
            .filter_map(|o| match o {
                Operand::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    for t in texts {
        let why = match &p.field {
            Field::Type if !types.iter().any(|x| x.as_str() == t) => {
                let list: Vec<_> = types.iter().map(EventType::as_str).collect();
                Some(format!(
                    "`type` is never {t:?} here: the filter's events are [{}]",
                    list.join(", ")
                ))
            }
            Field::Country if !pitboss_model::country::is_iso3166(t) => Some(format!(
                "`country` {t:?} is not an ISO 3166-1 alpha-2 code (ingest refuses it)"
            )),
            Field::Ip if t.parse::<std::net::IpAddr>().is_err() => {
                Some(format!("`ip` {t:?} is not an IPv4 or IPv6 address"))
            }
            Field::Currency
                if !t
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()) =>
            {
                Some(format!(
                    "`currency` {t:?} never matches: currency codes are in upper case"
                ))
            }
            _ => None,
        };
        if let Some(why) = why {
            return Err(why);
        }
    }
    if p.field == Field::LocalHour {
        let nums: Vec<f64> = match &p.operand {
            Operand::Num(n) => vec![*n],
            Operand::List(l) => l
                .iter()
                .filter_map(|o| match o {
                    Operand::Num(n) => Some(*n),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let impossible = nums.iter().any(|&h| match p.op {
            Op::Eq | Op::In => !(0.0..=23.0).contains(&h) || h.fract() != 0.0,
            Op::Gt => h >= 23.0,
            Op::Gte => h > 23.0,
            Op::Lt => h <= 0.0,
            Op::Lte => h < 0.0,
            Op::Ne | Op::Exists | Op::InList | Op::NotInList => false,
        });
        if impossible {
            return Err(format!(
                "`local_hour` is a whole hour from 0 to 23: `{} = {}` never holds",
                op_name(p.op),
                nums.iter()
                    .map(f64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    Ok(())
}

fn pred(
    field: Field,
    op: &str,
    arg: &toml::Value,
    name: &str,
    lists: &Lists,
) -> Result<Pred, String> {
    let op = match op {
        "eq" => Op::Eq,
        "ne" => Op::Ne,
        "in" => Op::In,
        "gt" => Op::Gt,
        "gte" => Op::Gte,
        "lt" => Op::Lt,
        "lte" => Op::Lte,
        "exists" => Op::Exists,
        "in_list" => Op::InList,
        "not_in_list" => Op::NotInList,
        other => {
            return Err(format!(
                "`{name}`: unknown operator `{other}`; use eq, ne, in, gt, gte, lt, lte, exists, \
                 in_list or not_in_list"
            ));
        }
    };
    let operand = match op {
        Op::In => match arg {
            toml::Value::Array(items) if !items.is_empty() => Operand::List(
                items
                    .iter()
                    .map(|i| operand(i, &field, name))
                    .collect::<Result<_, _>>()?,
            ),
            _ => return Err(format!("`{name}`: `in` takes a non-empty array")),
        },
        Op::Exists => match arg {
            toml::Value::Boolean(b) => Operand::Bool(*b),
            _ => return Err(format!("`{name}`: `exists` takes true or false")),
        },
        Op::Gt | Op::Gte | Op::Lt | Op::Lte => match operand(arg, &field, name)? {
            n @ Operand::Num(_) => n,
            _ => return Err(format!("`{name}`: `{}` compares numbers", op_name(op))),
        },
        Op::Eq | Op::Ne => operand(arg, &field, name)?,
        Op::InList | Op::NotInList => Operand::Set(list_operand(&field, op, arg, name, lists)?),
    };
    Ok(Pred { field, op, operand })
}

/// The list `in_list` / `not_in_list` names, if the set has it and it can hold the field's
/// values: an `ip` list for `ip`, a `text` list for other text fields.
fn list_operand(
    field: &Field,
    op: Op,
    arg: &toml::Value,
    name: &str,
    lists: &Lists,
) -> Result<Arc<NamedList>, String> {
    let toml::Value::String(list) = arg else {
        return Err(format!(
            "`{name}`: `{}` takes the name of a [[list]]",
            op_name(op)
        ));
    };
    let Some(l) = lists.get(list) else {
        let mut names: Vec<&str> = lists.keys().map(String::as_str).collect();
        names.sort_unstable();
        return Err(if names.is_empty() {
            format!("`{name}`: no [[list]] named {list:?}: the set has no list")
        } else {
            format!(
                "`{name}`: no [[list]] named {list:?}; lists are: {}",
                names.join(", ")
            )
        });
    };
    if matches!(kind(field), Kind::Number | Kind::Flag) {
        return Err(format!(
            "`{name}`: lists hold text; `{}` compares text fields",
            op_name(op)
        ));
    }
    match (l.kind, *field == Field::Ip) {
        (ListKind::Ip, true) | (ListKind::Text, false) => Ok(l.clone()),
        (ListKind::Ip, false) => Err(format!(
            "`{name}`: list {list:?} holds IP addresses and networks ({}:{}): only `ip` is \
             tested against it",
            l.file, l.line
        )),
        (ListKind::Text, true) => Err(format!(
            "`{name}`: list {list:?} is of kind \"text\" ({}:{}): `ip` is tested against a list \
             of kind = \"ip\" (addresses and networks, read as addresses, not compared as text)",
            l.file, l.line
        )),
    }
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Eq => "eq",
        Op::Ne => "ne",
        Op::In => "in",
        Op::Gt => "gt",
        Op::Gte => "gte",
        Op::Lt => "lt",
        Op::Lte => "lte",
        Op::Exists => "exists",
        Op::InList => "in_list",
        Op::NotInList => "not_in_list",
    }
}

/// Every distinct predicate of a rule set once, and for each rule what its trigger and its
/// windowed measures test, so that an event tests each predicate once however many filters
/// share it (the shipped packs: `autoplay = false` in four filters of one rule, `stake >=
/// 10000` in four of another, `status = "requested"` in three rules' triggers), and a measure
/// whose filter is its event types alone costs nothing but a bit per type.
#[derive(Debug, Default)]
pub(crate) struct SharedPreds {
    preds: Vec<Pred>,
    /// Per rule (by index).
    rules: Vec<RulePreds>,
    /// Per predicate: `stamp | 1` tested true and `stamp` tested false for the event being
    /// evaluated; anything else not tested yet. A new event moves `stamp` on instead of
    /// clearing (the clear's `memset` was a tenth of a one-rule engine's time).
    memo: Vec<u32>,
    /// The event's stamp: even, never 0.
    stamp: u32,
    /// The event's type: its place in [`EventType::ALL`] and its [`Types`] bit.
    ty: (usize, u16),
}

/// A windowed measure whose filter has predicates.
#[derive(Debug)]
struct Guarded {
    /// The measure's bit.
    bit: u32,
    /// Its filter's event types.
    types: u16,
    /// Its filter's predicates.
    ids: Box<[u32]>,
}

/// [`SharedPreds`] of one rule.
#[derive(Debug, Default)]
struct RulePreds {
    /// Per event type: the windowed measures (bit `i`: measure `i`) whose filter takes that
    /// type and has no predicate.
    plain: [u32; 10],
    /// The windowed measures with predicates.
    guarded: Box<[Guarded]>,
    trigger_types: u16,
    trigger: Box<[u32]>,
}

impl SharedPreds {
    pub fn new(set: &crate::rules::RuleSet) -> SharedPreds {
        let mut preds: Vec<Pred> = Vec::new();
        let mut ids = |f: &Filter| -> Box<[u32]> {
            f.preds
                .iter()
                .map(|p| {
                    let i = preds.iter().position(|q| q == p).unwrap_or_else(|| {
                        preds.push(p.clone());
                        preds.len() - 1
                    });
                    u32::try_from(i).unwrap_or(u32::MAX)
                })
                .collect()
        };
        let rules = set
            .rules
            .iter()
            .map(|r| {
                let mut plain = [0u32; 10];
                let mut guarded = Vec::new();
                for (i, m) in r.measures.iter().enumerate().filter(|(_, m)| m.windowed) {
                    if m.filter.preds.is_empty() {
                        for t in m.filter.types.iter() {
                            plain[index(t)] |= 1 << i;
                        }
                    } else {
                        guarded.push(Guarded {
                            bit: 1u32 << i,
                            types: m.filter.types.0,
                            ids: ids(&m.filter),
                        });
                    }
                }
                RulePreds {
                    plain,
                    guarded: guarded.into_boxed_slice(),
                    trigger_types: r.trigger.types.0,
                    trigger: ids(&r.trigger),
                }
            })
            .collect();
        let memo = vec![0; preds.len()];
        SharedPreds {
            preds,
            rules,
            memo,
            stamp: 2,
            ty: (0, 0),
        }
    }

    /// Starts on a new event: nothing tested yet.
    #[inline]
    pub fn start(&mut self, e: &Event) {
        self.stamp = self.stamp.wrapping_add(2);
        if self.stamp == 0 {
            // Wrapped: a memo of 2³¹ events ago would read as this event's.
            self.memo.fill(0);
            self.stamp = 2;
        }
        let t = index(e.event_type());
        self.ty = (t, 1 << t);
    }

    /// The windowed measures of rule `ri` whose filter the event passes (bit `i`: measure `i`),
    /// and whether it passes the rule's trigger.
    #[inline]
    pub fn rule(&mut self, ri: usize, e: &Event, extra: &Extra) -> (u32, bool) {
        let Some(r) = self.rules.get(ri) else {
            return (0, false);
        };
        let mut mask = r.plain.get(self.ty.0).copied().unwrap_or(0);
        for m in r.guarded.iter() {
            if m.types & self.ty.1 != 0
                && test_all(&m.ids, &self.preds, &mut self.memo, self.stamp, e, extra)
            {
                mask |= m.bit;
            }
        }
        let triggers = r.trigger_types & self.ty.1 != 0
            && test_all(
                &r.trigger,
                &self.preds,
                &mut self.memo,
                self.stamp,
                e,
                extra,
            );
        (mask, triggers)
    }
}

/// Whether the event passes every predicate of `ids`, each tested once per event.
#[inline]
fn test_all(
    ids: &[u32],
    preds: &[Pred],
    memo: &mut [u32],
    stamp: u32,
    e: &Event,
    extra: &Extra,
) -> bool {
    ids.iter().all(|&id| {
        let id = id as usize;
        match (memo.get_mut(id), preds.get(id)) {
            (Some(m), Some(p)) => {
                if *m & !1 != stamp {
                    *m = stamp | u32::from(p.holds(e, extra));
                }
                *m & 1 == 1
            }
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared predicates answer for every rule of the shipped packs exactly what each
    /// measure's and trigger's own filter does, on every event of the scripted day (its
    /// patterns and normal play), with and without a joined stake.
    #[test]
    fn shared_predicates_answer_as_each_filter_does() {
        let set = crate::rules::RuleSet::from_sources(&crate::stream::shipped_sources())
            .expect("the shipped packs");
        let mut shared = SharedPreds::new(&set);
        // The memo's stamp wraps after the 10th start (answers of before must not be read as
        // this event's).
        shared.stamp = u32::MAX - 21;
        let events: Vec<Event> = crate::scenario::script("acme", 1_767_787_200_000, 50, 1)
            .into_iter()
            .flat_map(|p| p.events)
            .map(|v| pitboss_model::decode_event_str(&v.to_string()).expect("an event"))
            .collect();
        let mut checked = 0;
        for e in &events {
            for joined_stake in [None, Some(20_000)] {
                let extra = Extra {
                    joined_stake,
                    ..Extra::default()
                };
                shared.start(e);
                for (ri, r) in set.rules.iter().enumerate() {
                    let mut mask = 0u32;
                    for (i, m) in r.measures.iter().enumerate() {
                        if m.windowed && m.filter.matches(e, &extra) {
                            mask |= 1 << i;
                        }
                    }
                    let want = (mask, r.trigger.matches(e, &extra));
                    assert_eq!(shared.rule(ri, e, &extra), want, "{} on {e:?}", r.id);
                    checked += usize::from(want.0 != 0 || want.1);
                }
            }
        }
        assert!(checked > 1000, "{checked}");
    }

    #[test]
    fn in_list_and_not_in_list_test_the_events_tenants_entries() {
        let types = Types::of(EventType::Withdrawal);
        let mut ips = NamedList::new("blocked_ips", ListKind::Ip, "lists.toml", 3);
        ips.add(Some("t"), "10.0.0.0/24").expect("net");
        let mut devices = NamedList::new("devices", ListKind::Text, "lists.toml", 9);
        devices.add(None, "d1").expect("text");
        let lists: Lists = [
            ("blocked_ips".to_owned(), Arc::new(ips)),
            ("devices".to_owned(), Arc::new(devices)),
        ]
        .into_iter()
        .collect();
        let x = Extra::default();
        let f = |src: &str| Filter {
            types,
            preds: compile(&table(src), types, &lists).expect(src),
        };
        let on = f(r#"ip = { in_list = "blocked_ips" }"#);
        let off = f(r#"ip = { not_in_list = "blocked_ips" }"#);
        let w = withdrawal("requested", 1);
        assert!(on.matches(&w, &x) && !off.matches(&w, &x));
        // Another tenant's event: the entries are tenant t's alone.
        let mut other = w.clone();
        other.tenant_id = "u".into();
        assert!(!on.matches(&other, &x) && off.matches(&other, &x));
        // A missing field fails both, as it fails `ne`.
        let no_device = f(r#"device_id = { not_in_list = "devices" }"#);
        assert!(!no_device.matches(&w, &x));
        for (src, needle) in [
            (
                r#"ip = { in_list = "nope" }"#,
                "no [[list]] named \"nope\"; lists are: blocked_ips, devices",
            ),
            (
                r#"transaction_id = { in_list = "blocked_ips" }"#,
                "holds IP addresses and networks (lists.toml:3)",
            ),
            (
                r#"ip = { in_list = "devices" }"#,
                "is of kind \"text\" (lists.toml:9)",
            ),
            (r#"amount = { in_list = "devices" }"#, "lists hold text"),
            (
                r#"ip = { in_list = ["blocked_ips"] }"#,
                "takes the name of a [[list]]",
            ),
        ] {
            let err = compile(&table(src), types, &lists).expect_err(src);
            assert!(err.contains(needle), "{src}: {err}");
        }
        let err =
            compile(&table(r#"ip = { in_list = "x" }"#), types, &Lists::new()).expect_err("none");
        assert!(err.contains("the set has no list"), "{err}");
    }

    #[test]
    fn an_event_types_index_is_its_place_in_all() {
        for (i, t) in EventType::ALL.into_iter().enumerate() {
            assert_eq!(index(t), i, "{t:?}");
        }
    }

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).expect("toml")
    }

    fn withdrawal(status: &str, amount: i64) -> Event {
        let json = format!(
            r#"{{"event_id":"0193735a-2222-7333-8444-555566667777","tenant_id":"t","player_id":"p","type":"withdrawal","occurred_at":"2026-11-28T12:30:00Z","payload":{{"transaction_id":"w1","amount":{{"amount_minor":{amount},"currency":"EUR"}},"status":"{status}","ip":"10.0.0.1"}}}}"#
        );
        pitboss_model::decode_event(json.as_bytes()).expect("event")
    }

    #[test]
    fn scalar_array_and_operator_forms() {
        let types = Types::of(EventType::Withdrawal);
        let preds = compile(
            &table(
                r#"status = "requested"
amount = { gte = 100, lt = 1000 }
ip = { exists = true }
method = { exists = false }"#,
            ),
            types,
            &Lists::new(),
        )
        .expect("compiles");
        let f = Filter { types, preds };
        let x = Extra::default();
        assert!(f.matches(&withdrawal("requested", 500), &x));
        assert!(!f.matches(&withdrawal("approved", 500), &x));
        assert!(!f.matches(&withdrawal("requested", 1000), &x));
        assert!(!f.matches(&withdrawal("requested", 99), &x));
        let any = Filter {
            types,
            preds: compile(
                &table(r#"status = ["approved", "cancelled"]"#),
                types,
                &Lists::new(),
            )
            .expect("in"),
        };
        assert!(any.matches(&withdrawal("cancelled", 1), &x));
        assert!(!any.matches(&withdrawal("requested", 1), &x));
        let ne = Filter {
            types,
            preds: compile(
                &table(r#"status = { ne = "requested" }"#),
                types,
                &Lists::new(),
            )
            .expect("ne"),
        };
        assert!(ne.matches(&withdrawal("approved", 1), &x));
    }

    #[test]
    fn typos_and_type_mismatches_are_refused() {
        let types = Types::of(EventType::Withdrawal);
        for (src, needle) in [
            (r#"staus = "requested""#, "unknown field `staus`"),
            (r#"status = "requsted""#, "never \"requsted\""),
            (r#"amount = "100""#, "compared with a number"),
            (r#"amount = { above = 1 }"#, "unknown operator `above`"),
            (
                r#"result = "win""#,
                "no event of [withdrawal] has a field `result`",
            ),
            (r#"amount = { in = [] }"#, "non-empty array"),
            (r#"type = "deposit""#, "`type` is never \"deposit\" here"),
            (r#"ip = "10.0.0.999""#, "`ip` \"10.0.0.999\" is not an IPv4"),
            (r#"currency = "eur""#, "currency codes are in upper case"),
            (r#"local_hour = { gte = 25 }"#, "`gte = 25` never holds"),
            (r#"local_hour = [1, 24]"#, "`in = 1, 24` never holds"),
            (
                r#"amount = { gte = 500, lt = 100 }"#,
                "no value is both >= 500 and < 100",
            ),
            (
                r#"amount = { gt = 100, lte = 100 }"#,
                "no value is both > 100 and <= 100",
            ),
        ] {
            let err = compile(&table(src), types, &Lists::new()).expect_err(src);
            assert!(err.contains(needle), "{src}: {err}");
        }
        // Fields of two event types, both required: no one event passes.
        let two = Types(Types::of(EventType::Login).0 | Types::of(EventType::Withdrawal).0);
        let err = compile(
            &table(
                r#"success = false
status = "requested""#,
            ),
            two,
            &Lists::new(),
        )
        .expect_err("fields of two types");
        assert!(
            err.contains("no event of [withdrawal, login] has all of `status`, `success`")
                || err.contains("no event of [login, withdrawal] has all of"),
            "{err}"
        );
        let login = Types::of(EventType::Login);
        let err = compile(&table(r#"country = "UK""#), login, &Lists::new()).expect_err("UK");
        assert!(
            err.contains("`country` \"UK\" is not an ISO 3166-1"),
            "{err}"
        );
        compile(&table(r#"country = ["XK", "GB"]"#), login, &Lists::new()).expect("ISO countries");
        // What can hold still compiles: one field of each type when the other may be absent,
        // a range that meets, hours in range, an ISO country, an address.
        for src in [
            r#"success = false
status = { exists = false }"#,
            "amount = { gte = 100, lte = 100 }",
            "local_hour = { lt = 5 }",
            r#"ip = ["10.0.0.1", "2001:db8::1"]"#,
            r#"type = "login""#,
        ] {
            compile(&table(src), two, &Lists::new()).expect(src);
        }
    }
}
