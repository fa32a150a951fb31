//! The delivery: the edge gateway's record that an alert or a push reached a socket (topic
//! `deliveries`), from which time-to-notify is computed, with the rules it must keep.
//!
//! JSON shape (see docs/schema/delivery.schema.json, generated from these types):
//! `{"message_type", "message_id", "tenant_id", "channel", "subscriber", "gateway_id",
//!   "connection_id", "delivered_at", "received_at", "replayed"?}`.

use prost::Message;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use pitboss_proto::v1 as pb;

use crate::live::channel::ChannelName;
use crate::live::check::Check;
use crate::live::limits::*;
use crate::live::message::{LiveMessage, bus_key};
use crate::time::Timestamp;
use crate::validate::{Violation, ViolationCode};

fn is_false(b: &bool) -> bool {
    !*b
}

/// One message delivered to one connection. `(message_id, connection_id)` identifies it: a
/// consumer that sees the same pair twice (the gateway publishes at least once) keeps one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "Pitboss delivery",
    description = "The edge gateway's record that a message reached a socket (topic `deliveries`)"
)]
pub struct Delivery {
    pub message_type: MessageType,
    /// The `alert_id` or `push_id`.
    pub message_id: String,
    /// Operator (tenant); `[A-Za-z0-9._~@+-]`, at most 64 bytes.
    pub tenant_id: String,
    /// The channel it went out on: `player:<tenant>:<player>`, `operator:<tenant>` (alerts) or
    /// `room:<tenant>:<room>`, of this tenant.
    pub channel: String,
    /// The player or operator whose connection received it (on a player channel, that player).
    pub subscriber: String,
    /// The gateway instance that delivered it.
    pub gateway_id: String,
    /// The connection it was written to, unique within the gateway instance.
    pub connection_id: String,
    /// When the gateway wrote it to the socket.
    pub delivered_at: Timestamp,
    /// `received_at` of the message's triggering event, copied from the message, so that
    /// time-to-notify is `delivered_at - received_at` from this record alone.
    pub received_at: Timestamp,
    /// Delivered from the backlog when the connection resumed after a reconnect, not live:
    /// its time-to-notify includes the time the subscriber was away.
    #[serde(default, skip_serializing_if = "is_false")]
    pub replayed: bool,
}

/// What kind of message was delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageType {
    Alert,
    Push,
}

impl Delivery {
    /// Time to notify in milliseconds: `delivered_at - received_at` (negative only when the
    /// gateway's clock is behind the ingest's).
    pub fn time_to_notify_ms(&self) -> i64 {
        self.delivered_at
            .as_millis()
            .saturating_sub(self.received_at.as_millis())
    }
}

impl LiveMessage for Delivery {
    const TYPE: &'static str = "delivery";
    const TOPIC: &'static str = "deliveries";

    fn tenant_id(&self) -> &str {
        &self.tenant_id
    }

    /// `tenant:subscriber`, so one subscriber's deliveries stay in order; a player's land on the
    /// partition number of the player's events and pushes.
    fn bus_key(&self) -> String {
        bus_key(&self.tenant_id, &self.subscriber)
    }

    fn event_time(&self) -> Timestamp {
        self.delivered_at
    }

    fn received_at(&self) -> Option<Timestamp> {
        Some(self.received_at)
    }

    fn validate(&self) -> Result<(), Vec<Violation>> {
        let mut c = Check::new();
        c.uuid("message_id", &self.message_id);
        c.id("tenant_id", &self.tenant_id, MAX_TENANT_ID);
        c.id("subscriber", &self.subscriber, MAX_ID);
        c.id("gateway_id", &self.gateway_id, MAX_ID);
        c.id("connection_id", &self.connection_id, MAX_ID);
        match ChannelName::parse(&self.channel, "channel") {
            Err(v) => c.push(&v.path, v.code, v.message),
            Ok(channel) => {
                if channel.tenant_id() != self.tenant_id {
                    c.push(
                        "channel",
                        ViolationCode::InvalidValue,
                        "belongs to another tenant than tenant_id",
                    );
                }
                let fits = matches!(
                    (&channel, self.message_type),
                    (ChannelName::Operator { .. }, MessageType::Alert)
                        | (
                            ChannelName::Player { .. } | ChannelName::Room { .. },
                            MessageType::Push
                        )
                );
                if !fits {
                    c.push(
                        "channel",
                        ViolationCode::InvalidValue,
                        "alerts go out on operator channels, pushes on player and room channels",
                    );
                }
                if let ChannelName::Player { player_id, .. } = &channel
                    && *player_id != self.subscriber
                {
                    c.push(
                        "subscriber",
                        ViolationCode::InvalidValue,
                        "on a player channel the subscriber is that player",
                    );
                }
            }
        }
        c.time("delivered_at", self.delivered_at);
        c.time("received_at", self.received_at);
        c.finish()
    }

    fn encode_proto(&self) -> Vec<u8> {
        pb::Delivery::from(self.clone()).encode_to_vec()
    }

    fn decode_proto(bytes: &[u8]) -> Result<Self, Violation> {
        let msg = pb::Delivery::decode(bytes)
            .map_err(|e| Violation::new("", ViolationCode::Malformed, format!("protobuf: {e}")))?;
        Delivery::try_from(msg)
    }
}
