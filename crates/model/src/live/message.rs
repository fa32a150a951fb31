//! What every live-path message provides, so the rules engine, the processor and the gateway
//! handle the four of them with one generic code path: the `pitboss-type` header value, the
//! default topic, the bus key, the header times, validation, and both wire forms.

use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::decode::path_violation;
use crate::time::Timestamp;
use crate::validate::{Violation, ViolationCode};

/// A message of the live path (alert, push, delivery, alert ack).
///
/// Publishers put four headers on each record (names in `pitboss_bus::header`):
/// `pitboss-type` = [`LiveMessage::TYPE`], `pitboss-tenant` = [`LiveMessage::tenant_id`],
/// `pitboss-event-time` = [`LiveMessage::event_time`] and, when there is one,
/// `pitboss-received-at` = [`LiveMessage::received_at`] (decimal milliseconds).
pub trait LiveMessage: Sized + Serialize + DeserializeOwned + JsonSchema {
    /// The `pitboss-type` header value, also the JSON Schema's file name
    /// (`docs/schema/<TYPE>.schema.json`).
    const TYPE: &'static str;
    /// The topic it travels on by default.
    const TOPIC: &'static str;

    /// The tenant it belongs to (the `pitboss-tenant` header).
    fn tenant_id(&self) -> &str;

    /// The bus key, which decides the partition and so what stays in order.
    fn bus_key(&self) -> String;

    /// The `pitboss-event-time` header: when what it reports happened.
    fn event_time(&self) -> Timestamp;

    /// The `pitboss-received-at` header: when Pitboss received the event that started it all
    /// (the start of time-to-notify); `None` for an alert ack.
    fn received_at(&self) -> Option<Timestamp>;

    /// Checks every rule of the contract; all violations at once.
    fn validate(&self) -> Result<(), Vec<Violation>>;

    /// The protobuf form (the bus record value).
    fn encode_proto(&self) -> Vec<u8>;

    /// Reads the protobuf form. Never panics: bad bytes, a missing oneof or an unknown enum value
    /// is a violation with a field path. Does not validate.
    fn decode_proto(bytes: &[u8]) -> Result<Self, Violation>;

    /// Reads the canonical JSON form (one object, nothing after it). On failure, says where
    /// (`path`) and what (`code`), like event decoding. Does not validate.
    fn decode_json(json: &[u8]) -> Result<Self, Violation> {
        let mut de = serde_json::Deserializer::from_slice(json);
        let message: Self =
            serde_path_to_error::deserialize(&mut de).map_err(|e| path_violation(e, None))?;
        de.end()
            .map_err(|e| Violation::new("", ViolationCode::Malformed, e.to_string()))?;
        Ok(message)
    }
}

/// The bus key `tenant:subject`.
pub(crate) fn bus_key(tenant_id: &str, subject: &str) -> String {
    let mut key = String::with_capacity(tenant_id.len() + 1 + subject.len());
    key.push_str(tenant_id);
    key.push(':');
    key.push_str(subject);
    key
}
