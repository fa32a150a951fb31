//! The alert: a rule hit, for operators (topic `alerts`), with the rules it must keep.
//!
//! JSON shape (see docs/schema/alert.schema.json, generated from these types):
//! `{"alert_id", "tenant_id", "player_id"?, "rule_id", "rule_version", "category", "severity",
//!   "score", "total_score", "recommendation", "group_by", "group_key", "related_player_ids"?,
//!   "reason", "measures"?, "trigger_event_id", "evidence_event_ids"?, "event_time",
//!   "received_at", "detected_at"}`.

use prost::Message;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use pitboss_proto::v1 as pb;

use crate::live::check::{Check, Lines};
use crate::live::ids::alert_id;
use crate::live::limits::*;
use crate::live::message::{LiveMessage, bus_key};
use crate::time::Timestamp;
use crate::validate::{Violation, ViolationCode};

/// A rule hit, for operators. Its id is derived from the rule and the triggering event, so a
/// replayed event never raises a second alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "Pitboss alert",
    description = "A rule hit, for operators (topic `alerts`)"
)]
pub struct Alert {
    /// `alert_id(rule_id, rule_version, trigger_event_id)`: the UUIDv5 of
    /// `"{rule_id}@{rule_version}/{trigger_event_id}"` in the Pitboss alert namespace.
    pub alert_id: String,
    /// Operator (tenant); `[A-Za-z0-9._~@+-]`, at most 64 bytes.
    pub tenant_id: String,
    /// The player the alert is about. Absent only when the rule is grouped by something else than
    /// the player (a device, an IP address) and no single player applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub player_id: Option<String>,
    /// The rule that fired: a dotted name (`fraud.multi_accounting.shared_device`).
    pub rule_id: String,
    /// The rule's version (at least 1): a changed rule raises new alerts for old events.
    pub rule_version: u32,
    pub category: Category,
    pub severity: Severity,
    /// This hit's points.
    pub score: u32,
    /// The player's (or group's) score in the scoring window, this hit included.
    pub total_score: u32,
    /// What Pitboss recommends; Pitboss only recommends, the operator decides.
    pub recommendation: Recommendation,
    /// What the rule's window is grouped by.
    pub group_by: GroupBy,
    /// The group's value: a device id, an IP address, a session id, a payment-instrument
    /// fingerprint, a game id, or the player id (then equal to `player_id`). At most 256 bytes.
    pub group_key: String,
    /// Other players the window saw in the group: the linked accounts of a multi-accounting
    /// alert. At most 100.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub related_player_ids: Vec<String>,
    /// One human-readable sentence saying why the rule fired; at most 500 characters, one line.
    pub reason: String,
    /// The window's aggregates against their thresholds. At most 16.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub measures: Vec<Measure>,
    /// The event whose arrival fired the rule; it seeds `alert_id`.
    pub trigger_event_id: String,
    /// Other events of the window that contributed, oldest first. At most 100.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evidence_event_ids: Vec<String>,
    /// `occurred_at` of the triggering event.
    pub event_time: Timestamp,
    /// `received_at` of the triggering event: the start of time-to-notify.
    pub received_at: Timestamp,
    /// When the rules engine raised the alert.
    pub detected_at: Timestamp,
}

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Fraud,
    ResponsibleGambling,
}

/// How urgent an alert is, lowest first.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

/// What Pitboss recommends the operator do. Pitboss never acts on a player itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Recommendation {
    /// Nothing to do; for the record.
    None,
    /// Look at the player.
    Review,
    /// Block the player (or the device, the payment method) pending review.
    Block,
}

/// What a rule's window is grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    Player,
    Device,
    Ip,
    Session,
    /// A payment instrument's fingerprint (deposits, withdrawals).
    PaymentInstrument,
    /// A game (`game_id` of bets).
    Game,
}

/// How a measure's value is compared with its threshold: `value <comparison> threshold`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Comparison {
    /// `>`
    Gt,
    /// `>=`
    Gte,
    /// `<`
    Lt,
    /// `<=`
    Lte,
    /// `==`
    Eq,
}

impl Comparison {
    /// The operator as a console shows it (`>=`).
    pub fn symbol(self) -> &'static str {
        match self {
            Comparison::Gt => ">",
            Comparison::Gte => ">=",
            Comparison::Lt => "<",
            Comparison::Lte => "<=",
            Comparison::Eq => "==",
        }
    }

    /// Whether `value <self> threshold` holds.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Comparison::Gt => value > threshold,
            Comparison::Gte => value >= threshold,
            Comparison::Lt => value < threshold,
            Comparison::Lte => value <= threshold,
            Comparison::Eq => value == threshold,
        }
    }
}

/// One aggregate of the rule's window against its threshold, e.g. net loss in the last hour
/// `>=` 100000 minor units of EUR.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Measure {
    /// A dotted name (`net_loss`, `distinct_players`).
    pub name: String,
    /// The aggregate's value (finite). Money is in minor units of `currency`.
    pub value: f64,
    /// The rule's threshold (finite), in the same unit as `value`.
    pub threshold: f64,
    pub comparison: Comparison,
    /// Present when `value` and `threshold` are money: minor units of this currency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// The length of the window `value` was computed over (1 ms to 400 days); absent when the
    /// measure is not windowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
    /// When the threshold is relative: the measure it derives from (a dotted name), and…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    /// …the factor: `threshold` = `factor` × the baseline's value (`day >= 0.6 × week`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
}

impl LiveMessage for Alert {
    const TYPE: &'static str = "alert";
    const TOPIC: &'static str = "alerts";

    fn tenant_id(&self) -> &str {
        &self.tenant_id
    }

    /// `tenant:player`, so one player's alerts stay in order (a later alert's `total_score` is
    /// the newer one) and on the partition number of the player's events; an alert without a
    /// player uses its group key in the player's place, keeping one device's (or IP's) alerts in
    /// order.
    fn bus_key(&self) -> String {
        bus_key(
            &self.tenant_id,
            self.player_id.as_deref().unwrap_or(&self.group_key),
        )
    }

    fn event_time(&self) -> Timestamp {
        self.event_time
    }

    fn received_at(&self) -> Option<Timestamp> {
        Some(self.received_at)
    }

    fn validate(&self) -> Result<(), Vec<Violation>> {
        let mut c = Check::new();
        c.uuid("alert_id", &self.alert_id);
        c.id("tenant_id", &self.tenant_id, MAX_TENANT_ID);
        if let Some(p) = &self.player_id {
            c.id("player_id", p, MAX_ID);
        }
        c.dotted_name("rule_id", &self.rule_id, 1);
        if self.rule_version == 0 {
            c.push(
                "rule_version",
                ViolationCode::InvalidValue,
                "must be at least 1",
            );
        }
        if self.total_score < self.score {
            c.push(
                "total_score",
                ViolationCode::InvalidValue,
                format!(
                    "{} is below this hit's score {}",
                    self.total_score, self.score
                ),
            );
        }
        c.key_text("group_key", &self.group_key, MAX_GROUP_KEY);
        if self.group_by == GroupBy::Player && self.player_id.as_deref() != Some(&self.group_key) {
            c.push(
                "group_key",
                ViolationCode::InvalidValue,
                "an alert grouped by player has its player_id as group_key",
            );
        }
        if c.list_len(
            "related_player_ids",
            self.related_player_ids.len(),
            MAX_RELATED_PLAYERS,
        ) {
            for (i, p) in self.related_player_ids.iter().enumerate() {
                c.id(&format!("related_player_ids[{i}]"), p, MAX_ID);
            }
        }
        c.text("reason", &self.reason, MAX_REASON_CHARS, Lines::One, true);
        if c.list_len("measures", self.measures.len(), MAX_MEASURES) {
            for (i, m) in self.measures.iter().enumerate() {
                m.check(&mut c, &format!("measures[{i}]"));
            }
        }
        c.uuid("trigger_event_id", &self.trigger_event_id);
        if c.list_len(
            "evidence_event_ids",
            self.evidence_event_ids.len(),
            MAX_EVIDENCE_EVENTS,
        ) {
            for (i, e) in self.evidence_event_ids.iter().enumerate() {
                c.uuid(&format!("evidence_event_ids[{i}]"), e);
            }
        }
        c.time("event_time", self.event_time);
        c.time("received_at", self.received_at);
        c.time("detected_at", self.detected_at);
        let expected = alert_id(&self.rule_id, self.rule_version, &self.trigger_event_id);
        if self.alert_id != expected {
            c.push(
                "alert_id",
                ViolationCode::InvalidValue,
                format!(
                    "expected {expected}, derived from rule_id, rule_version and trigger_event_id"
                ),
            );
        }
        c.finish()
    }

    fn encode_proto(&self) -> Vec<u8> {
        pb::Alert::from(self.clone()).encode_to_vec()
    }

    fn decode_proto(bytes: &[u8]) -> Result<Self, Violation> {
        let msg = pb::Alert::decode(bytes)
            .map_err(|e| Violation::new("", ViolationCode::Malformed, format!("protobuf: {e}")))?;
        Alert::try_from(msg)
    }
}

impl Measure {
    fn check(&self, c: &mut Check, path: &str) {
        c.dotted_name(&format!("{path}.name"), &self.name, 1);
        for (field, v) in [("value", self.value), ("threshold", self.threshold)] {
            if !v.is_finite() {
                c.push(
                    &format!("{path}.{field}"),
                    ViolationCode::InvalidValue,
                    "must be a finite number",
                );
            }
        }
        if let Some(cur) = &self.currency {
            let shape_ok = (3..=10).contains(&cur.len())
                && cur
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
            if !shape_ok {
                c.push(
                    &format!("{path}.currency"),
                    ViolationCode::InvalidCurrency,
                    "expected an upper-case currency code like EUR or USDT",
                );
            }
        }
        if let Some(b) = &self.baseline {
            c.dotted_name(&format!("{path}.baseline"), b, 1);
        }
        if let Some(f) = self.factor
            && !f.is_finite()
        {
            c.push(
                &format!("{path}.factor"),
                ViolationCode::InvalidValue,
                "must be a finite number",
            );
        }
        if self.factor.is_some() != self.baseline.is_some() {
            c.push(
                &format!("{path}.factor"),
                ViolationCode::InvalidValue,
                "a factor goes with a baseline, and a baseline with a factor",
            );
        }
        if let Some(w) = self.window_ms
            && !(1..=MAX_WINDOW_MS).contains(&w)
        {
            c.push(
                &format!("{path}.window_ms"),
                ViolationCode::InvalidValue,
                format!("must be between 1 and {MAX_WINDOW_MS}"),
            );
        }
    }
}
