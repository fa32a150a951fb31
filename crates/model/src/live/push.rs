//! The push: a notification for a player or a room (topic `pushes`), made by a rule or sent by
//! an operator, with the rules it must keep.
//!
//! JSON shape (see docs/schema/push.schema.json, generated from these types):
//! `{"push_id", "tenant_id", "target": {"player": "p-1"} | {"room": "roulette-1"}, "kind",
//!   "title", "body", "data"?, "source": {"rule": {...}} | {"operator": {...}}, "event_time",
//!   "received_at", "created_at", "expires_at"?}`.

use prost::Message;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use pitboss_proto::v1 as pb;

use crate::live::check::{Check, Lines};
use crate::live::ids::{alert_id, push_id};
use crate::live::limits::*;
use crate::live::message::{LiveMessage, bus_key};
use crate::live::tagged::one_member_enum;
use crate::time::Timestamp;
use crate::validate::{Violation, ViolationCode};

/// A notification for a player or a room, shown by the game client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "Pitboss push",
    description = "A notification for a player or a room (topic `pushes`)"
)]
pub struct Push {
    /// Rule pushes: `push_id(rule_id, rule_version, trigger_event_id, target)`, a UUIDv5, so a
    /// replayed event never pushes twice. Operator pushes: a UUIDv7, chosen by the console so a
    /// retried request is recognised.
    pub push_id: String,
    /// Operator (tenant); `[A-Za-z0-9._~@+-]`, at most 64 bytes.
    pub tenant_id: String,
    /// Who receives it: one player, or everyone in a room.
    pub target: Target,
    /// What it is, a dotted name with a namespace (`rg.loss_chasing`, `operator.message`); game
    /// clients switch on it.
    pub kind: String,
    /// One line, at most 100 characters.
    pub title: String,
    /// At most 1000 characters; line breaks allowed.
    pub body: String,
    /// A JSON object for the game client (a deep link, a limit to offer); at most 4096 bytes as
    /// compact JSON. Absent when empty.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub data: serde_json::Map<String, serde_json::Value>,
    /// Who made it: a rule, or an operator.
    pub source: PushSource,
    /// Rule pushes: `occurred_at` of the triggering event. Operator pushes: when Pitboss accepted
    /// the operator's request.
    pub event_time: Timestamp,
    /// Rule pushes: `received_at` of the triggering event. Operator pushes: when Pitboss accepted
    /// the operator's request. The start of time-to-notify.
    pub received_at: Timestamp,
    /// When the rules engine or the operator API made the push.
    pub created_at: Timestamp,
    /// After this instant the gateway no longer delivers it, also not when a connection resumes;
    /// later than `created_at`. Absent: it never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
}

/// Who receives a push. JSON: `{"player": "p-1"}` or `{"room": "roulette-1"}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// One player (channel `player:<tenant>:<player>`).
    Player(String),
    /// Everyone in a room, e.g. a live table (channel `room:<tenant>:<room>`).
    Room(String),
}

/// Who made a push. JSON: `{"rule": {...}}` or `{"operator": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PushSource {
    Rule(RuleSource),
    Operator(OperatorSource),
}

/// The rule hit a push comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleSource {
    pub rule_id: String,
    /// At least 1.
    pub rule_version: u32,
    /// The alert the same hit raised, when it raised one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_id: Option<String>,
    /// The event whose arrival fired the rule; it seeds `push_id`.
    pub trigger_event_id: String,
}

/// The operator who sent a push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OperatorSource {
    /// The operator's user id, from their token; `[A-Za-z0-9._~@+-]`, at most 128 bytes.
    pub operator_id: String,
}

one_member_enum!(Target, "a push target (player or room)", { player => Player, room => Room });
one_member_enum!(PushSource, "a push source (rule or operator)", {
    rule => Rule, operator => Operator,
});

impl Target {
    /// The player or room id.
    pub fn id(&self) -> &str {
        match self {
            Target::Player(id) | Target::Room(id) => id,
        }
    }
}

impl LiveMessage for Push {
    const TYPE: &'static str = "push";
    const TOPIC: &'static str = "pushes";

    fn tenant_id(&self) -> &str {
        &self.tenant_id
    }

    /// `tenant:player` for a player's push, so one player's pushes stay in order and on the
    /// partition number of the player's events; `tenant:room` for a room's push, so one room's
    /// pushes stay in order. (A room and a player with the same id share a partition; nothing
    /// else follows from it.)
    fn bus_key(&self) -> String {
        bus_key(&self.tenant_id, self.target.id())
    }

    fn event_time(&self) -> Timestamp {
        self.event_time
    }

    fn received_at(&self) -> Option<Timestamp> {
        Some(self.received_at)
    }

    fn validate(&self) -> Result<(), Vec<Violation>> {
        let mut c = Check::new();
        c.uuid("push_id", &self.push_id);
        c.id("tenant_id", &self.tenant_id, MAX_TENANT_ID);
        match &self.target {
            Target::Player(id) => c.id("target.player", id, MAX_ID),
            Target::Room(id) => c.id("target.room", id, MAX_ID),
        }
        c.dotted_name("kind", &self.kind, 2);
        c.text("title", &self.title, MAX_TITLE_CHARS, Lines::One, true);
        c.text("body", &self.body, MAX_BODY_CHARS, Lines::Many, true);
        let data_len = serde_json::to_string(&self.data).map_or(usize::MAX, |s| s.len());
        if data_len > MAX_DATA_BYTES {
            c.push(
                "data",
                ViolationCode::TooLong,
                format!("longer than {MAX_DATA_BYTES} bytes as compact JSON"),
            );
        }
        match &self.source {
            PushSource::Rule(r) => {
                c.dotted_name("source.rule.rule_id", &r.rule_id, 1);
                if r.rule_version == 0 {
                    c.push(
                        "source.rule.rule_version",
                        ViolationCode::InvalidValue,
                        "must be at least 1",
                    );
                }
                c.uuid("source.rule.trigger_event_id", &r.trigger_event_id);
                if let Some(a) = &r.alert_id {
                    let expected = alert_id(&r.rule_id, r.rule_version, &r.trigger_event_id);
                    if *a != expected {
                        c.push(
                            "source.rule.alert_id",
                            ViolationCode::InvalidValue,
                            format!("expected {expected}, the alert of the same rule hit"),
                        );
                    }
                }
                let expected = push_id(
                    &r.rule_id,
                    r.rule_version,
                    &r.trigger_event_id,
                    &self.target,
                );
                if self.push_id != expected {
                    c.push(
                        "push_id",
                        ViolationCode::InvalidValue,
                        format!("expected {expected}, derived from the rule, the trigger event and the target"),
                    );
                }
            }
            PushSource::Operator(o) => c.id("source.operator.operator_id", &o.operator_id, MAX_ID),
        }
        c.time("event_time", self.event_time);
        c.time("received_at", self.received_at);
        c.time("created_at", self.created_at);
        if let Some(e) = self.expires_at {
            c.time("expires_at", e);
            if e <= self.created_at {
                c.push(
                    "expires_at",
                    ViolationCode::InvalidValue,
                    "must be later than created_at",
                );
            }
        }
        c.finish()
    }

    fn encode_proto(&self) -> Vec<u8> {
        pb::Push::from(self.clone()).encode_to_vec()
    }

    fn decode_proto(bytes: &[u8]) -> Result<Self, Violation> {
        let msg = pb::Push::decode(bytes)
            .map_err(|e| Violation::new("", ViolationCode::Malformed, format!("protobuf: {e}")))?;
        Push::try_from(msg)
    }
}
