//! The WebSocket protocol, version 1 (docs/gateway.md): JSON text frames with a `type`.
//!
//! Client to gateway: `subscribe`, `unsubscribe`, `ack`, `refresh`, `presence`, `ping`.
//! Gateway to client: `welcome`, `message`, `subscribed`, `unsubscribed`, `cursor`, `acked`,
//! `refreshed`, `presence`, `pong`, `error`, `reconnect`.
//!
//! A request may carry an `id` (a number or short string the client picks); replies to it echo
//! it, so a client can match answers to requests.

use pitboss_model::live::AckOutcome;
use serde::{Deserialize, Serialize};

/// The protocol version in `welcome` (and the `?v=` a client may send).
pub const PROTOCOL_VERSION: u32 = 1;

/// A request from a client.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// Subscribe to a channel; with `since` (a cursor from an earlier `message`, `subscribed`
    /// or `cursor` frame), first get what was published after it.
    Subscribe {
        #[serde(default)]
        id: Option<RequestId>,
        channel: String,
        #[serde(default)]
        since: Option<String>,
    },
    Unsubscribe {
        #[serde(default)]
        id: Option<RequestId>,
        channel: String,
    },
    /// An operator acknowledges an alert (goes onto `alert_acks`).
    Ack {
        #[serde(default)]
        id: Option<RequestId>,
        alert_id: String,
        #[serde(default = "acknowledged")]
        outcome: AckOutcome,
        #[serde(default)]
        note: Option<String>,
        /// A UUID the client picks so a retried ack is the same ack; one is made otherwise.
        #[serde(default)]
        ack_id: Option<String>,
    },
    /// A fresh token for this connection (same tenant, subject and role).
    Refresh {
        #[serde(default)]
        id: Option<RequestId>,
        token: String,
    },
    /// Who is in a room (subscribed to it) on this gateway instance.
    Presence {
        #[serde(default)]
        id: Option<RequestId>,
        channel: String,
    },
    /// An application-level ping (browsers cannot send WebSocket pings): answered with `pong`.
    Ping {
        #[serde(default)]
        id: Option<RequestId>,
    },
}

fn acknowledged() -> AckOutcome {
    AckOutcome::Acknowledged
}

/// A request id: a number or a string of at most 64 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RequestId {
    Number(u64),
    Text(String),
}

impl ClientMessage {
    pub fn id(&self) -> Option<&RequestId> {
        match self {
            ClientMessage::Subscribe { id, .. }
            | ClientMessage::Unsubscribe { id, .. }
            | ClientMessage::Ack { id, .. }
            | ClientMessage::Refresh { id, .. }
            | ClientMessage::Presence { id, .. }
            | ClientMessage::Ping { id } => id.as_ref(),
        }
    }
}

/// Reads a client frame; a precise error otherwise.
pub fn parse_client(text: &str) -> Result<ClientMessage, ProtocolError> {
    if text.len() > MAX_CLIENT_FRAME {
        return Err(ProtocolError::new(
            "frame_too_large",
            format!("a request is at most {MAX_CLIENT_FRAME} bytes"),
        ));
    }
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| ProtocolError::new("malformed", format!("not JSON: {e}")))?;
    let id = value.get("id").cloned();
    let known = [
        "subscribe",
        "unsubscribe",
        "ack",
        "refresh",
        "presence",
        "ping",
    ];
    match value.get("type").and_then(|t| t.as_str()) {
        None => {
            return Err(ProtocolError::new("malformed", "a request needs a \"type\"").with_id(id));
        }
        Some(t) if !known.contains(&t) => {
            return Err(ProtocolError::new(
                "unknown_type",
                format!("unknown type {t:?}; expected one of {}", known.join(", ")),
            )
            .with_id(id));
        }
        Some(_) => {}
    }
    let msg: ClientMessage = serde_json::from_value(value)
        .map_err(|e| ProtocolError::new("malformed", e.to_string()).with_id(id.clone()))?;
    if let Some(RequestId::Text(s)) = msg.id()
        && s.len() > 64
    {
        return Err(ProtocolError::new("malformed", "id: at most 64 bytes").with_id(None));
    }
    Ok(msg)
}

/// Largest request a client may send (bytes); a longer frame closes the connection (1009).
pub const MAX_CLIENT_FRAME: usize = 16 * 1024;

/// An error answer: `{"type":"error","id"?,"code","message"}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProtocolError {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<serde_json::Value>,
    pub code: &'static str,
    pub message: String,
}

impl ProtocolError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        ProtocolError {
            id: None,
            code,
            message: message.into(),
        }
    }

    pub fn with_id(mut self, id: Option<serde_json::Value>) -> Self {
        self.id = id;
        self
    }

    pub fn for_request(self, id: Option<&RequestId>) -> Self {
        self.with_id(id.and_then(|i| serde_json::to_value(i).ok()))
    }
}

/// A control frame from the gateway (messages are written by the hub, pre-serialized).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Welcome {
        protocol: u32,
        gateway: String,
        connection: String,
        tenant: String,
        subject: String,
        role: &'static str,
        /// Token expiry, seconds since the Unix epoch: refresh before it.
        expires_at: u64,
    },
    Subscribed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        channel: String,
        /// Where the subscription stands now: keep the newest cursor seen for the channel.
        cursor: String,
        /// `none` (no `since`), `complete` (everything after `since` was sent before this
        /// frame) or `too_old` (the gateway no longer holds what came after `since`: reload).
        recovery: Recovery,
        /// Messages sent before this frame for the subscription (missed or unacknowledged).
        replayed: usize,
    },
    Unsubscribed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        channel: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    Acked {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        alert_id: String,
        ack_id: String,
    },
    Refreshed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        expires_at: u64,
    },
    /// An alert of the channel was acknowledged (by this operator or another, on any
    /// instance): read from `alert_acks`, sent to every subscriber of the tenant's operator
    /// channel, so consoles open at once agree. Not replayed (an acknowledged alert is not).
    AlertAcked {
        channel: String,
        alert_id: String,
        ack_id: String,
        outcome: pitboss_model::live::AckOutcome,
        operator_id: String,
        acked_at: pitboss_model::Timestamp,
    },
    Presence {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        channel: String,
        /// Connections subscribed, on every gateway instance.
        connections: usize,
        /// Distinct subjects among them (at most 1000 listed).
        subjects: Vec<String>,
        /// Gateway instances with at least one of them.
        gateways: usize,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
    },
    Error(ProtocolError),
    /// The gateway is going away: reconnect (to another instance) with your cursors.
    Reconnect {
        reason: String,
    },
}

/// How a subscription with or without `since` was recovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Recovery {
    None,
    Complete,
    TooOld,
}

impl ServerFrame {
    pub fn to_text(&self) -> String {
        // Serializing these types cannot fail (string keys, no maps with non-string keys).
        serde_json::to_string(self).unwrap_or_else(|_| {
            String::from(r#"{"type":"error","code":"internal","message":"serialization"}"#)
        })
    }
}

/// WebSocket close codes the gateway uses (RFC 6455 and the 4000–4999 application range).
pub mod close {
    /// Idle: no frame (not even a pong) within the idle timeout.
    pub const IDLE: u16 = 1001;
    /// Too many bad requests, or requests faster than the limit.
    pub const POLICY: u16 = 1008;
    /// A frame the WebSocket protocol does not allow (a control frame over 125 bytes, reserved
    /// bits, an unknown opcode…).
    pub const PROTOCOL: u16 = 1002;
    /// A text frame that is not UTF-8 (RFC 6455 §8.1).
    pub const NOT_UTF8: u16 = 1007;
    /// A frame larger than the limit.
    pub const TOO_BIG: u16 = 1009;
    /// The gateway is restarting: reconnect (elsewhere) with your cursors.
    pub const RESTART: u16 = 1012;
    /// The token expired on a live connection (refresh it before `expires_at`).
    pub const TOKEN_EXPIRED: u16 = 4001;
    /// The client did not read fast enough: its queue filled.
    pub const SLOW_CONSUMER: u16 = 4008;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn requests_parse_and_bad_ones_say_why() {
        let m = parse_client(r#"{"type":"subscribe","id":1,"channel":"player:a:p","since":"0=4"}"#)
            .unwrap();
        assert_eq!(
            m,
            ClientMessage::Subscribe {
                id: Some(RequestId::Number(1)),
                channel: "player:a:p".into(),
                since: Some("0=4".into())
            }
        );
        let e = parse_client(r#"{"type":"dance","id":"x"}"#).unwrap_err();
        assert_eq!(e.code, "unknown_type");
        assert_eq!(e.id, Some(serde_json::json!("x")));
        assert_eq!(parse_client("{").unwrap_err().code, "malformed");
        assert_eq!(
            parse_client(r#"{"channel":"x"}"#).unwrap_err().code,
            "malformed"
        );
        let e = parse_client(r#"{"type":"subscribe","id":2}"#).unwrap_err();
        assert_eq!(e.code, "malformed");
        assert!(e.message.contains("channel"), "{}", e.message);
        let e = parse_client(r#"{"type":"ping","extra":1}"#).unwrap_err();
        assert_eq!(e.code, "malformed");
        let big = format!(
            r#"{{"type":"ping","id":"{}"}}"#,
            "x".repeat(MAX_CLIENT_FRAME)
        );
        assert_eq!(parse_client(&big).unwrap_err().code, "frame_too_large");
        let m = parse_client(r#"{"type":"ack","alert_id":"a1"}"#).unwrap();
        assert!(matches!(
            m,
            ClientMessage::Ack {
                outcome: AckOutcome::Acknowledged,
                ..
            }
        ));
    }

    #[test]
    fn frames_serialize_with_their_type() {
        let t = ServerFrame::Pong { id: None }.to_text();
        assert_eq!(t, r#"{"type":"pong"}"#);
        let t = ServerFrame::Error(
            ProtocolError::new("forbidden", "no").for_request(Some(&RequestId::Number(3))),
        )
        .to_text();
        assert_eq!(
            t,
            r#"{"type":"error","id":3,"code":"forbidden","message":"no"}"#
        );
    }
}
