//! The alert ack: an operator's conclusion about an alert (topic `alert_acks`), with the rules it
//! must keep.
//!
//! JSON shape (see docs/schema/alert_ack.schema.json, generated from these types):
//! `{"ack_id", "alert_id", "tenant_id", "operator_id", "outcome", "note"?, "acked_at"}`.

use prost::Message;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use pitboss_proto::v1 as pb;

use crate::live::check::{Check, Lines};
use crate::live::limits::*;
use crate::live::message::{LiveMessage, bus_key};
use crate::time::Timestamp;
use crate::validate::{Violation, ViolationCode};

/// An operator acknowledges an alert. An alert may get several acks (acknowledged, then
/// escalated, then confirmed); the latest by `acked_at` is its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "Pitboss alert ack",
    description = "An operator acknowledges an alert (topic `alert_acks`)"
)]
pub struct AlertAck {
    /// UUID (v7) chosen by the console, so a retried ack is recognised as the same one.
    pub ack_id: String,
    /// The alert acknowledged.
    pub alert_id: String,
    /// Operator (tenant); `[A-Za-z0-9._~@+-]`, at most 64 bytes.
    pub tenant_id: String,
    /// The operator's user id, from their token; `[A-Za-z0-9._~@+-]`, at most 128 bytes.
    pub operator_id: String,
    pub outcome: AckOutcome,
    /// The operator's note, at most 2000 characters; line breaks allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// When the gateway received the ack.
    pub acked_at: Timestamp,
}

/// What the operator concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AckOutcome {
    /// Seen; no conclusion yet.
    Acknowledged,
    /// The rule was wrong about this player.
    FalsePositive,
    /// The finding is right: fraud confirmed, or a real responsible-gambling concern.
    Confirmed,
    /// Handed to someone else (a fraud team, a safer-gambling team).
    Escalated,
}

impl LiveMessage for AlertAck {
    const TYPE: &'static str = "alert_ack";
    const TOPIC: &'static str = "alert_acks";

    fn tenant_id(&self) -> &str {
        &self.tenant_id
    }

    /// `tenant:alert_id`, so the acks of one alert stay in order (the console carries no player
    /// with an ack, so it cannot be keyed by player).
    fn bus_key(&self) -> String {
        bus_key(&self.tenant_id, &self.alert_id)
    }

    fn event_time(&self) -> Timestamp {
        self.acked_at
    }

    fn received_at(&self) -> Option<Timestamp> {
        None
    }

    fn validate(&self) -> Result<(), Vec<Violation>> {
        let mut c = Check::new();
        c.uuid("ack_id", &self.ack_id);
        c.uuid("alert_id", &self.alert_id);
        c.id("tenant_id", &self.tenant_id, MAX_TENANT_ID);
        c.id("operator_id", &self.operator_id, MAX_ID);
        if let Some(note) = &self.note {
            c.text("note", note, MAX_NOTE_CHARS, Lines::Many, true);
        }
        c.time("acked_at", self.acked_at);
        c.finish()
    }

    fn encode_proto(&self) -> Vec<u8> {
        pb::AlertAck::from(self.clone()).encode_to_vec()
    }

    fn decode_proto(bytes: &[u8]) -> Result<Self, Violation> {
        let msg = pb::AlertAck::decode(bytes)
            .map_err(|e| Violation::new("", ViolationCode::Malformed, format!("protobuf: {e}")))?;
        AlertAck::try_from(msg)
    }
}
