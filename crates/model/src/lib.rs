//! The Pitboss event model: the canonical JSON form of player events, their validation with
//! machine-readable reasons, lossless conversion to the protobuf form used on the bus and over
//! gRPC, and the generated JSON Schema; and the same for the live-path messages (alerts, pushes,
//! deliveries, alert acks) in [`live`].
//!
//! Money is integer minor units plus an ISO 4217 code everywhere; there are no floats for money.

pub mod convert;
pub mod country;
pub mod currency;
pub mod decode;
pub mod event;
pub mod live;
pub mod schema;
pub mod time;
pub mod validate;

pub use convert::{decode_proto, encode_proto, encode_proto_owned};
pub use decode::{decode_event, decode_event_exact, decode_event_str};
pub use event::*;
pub use time::Timestamp;
pub use validate::{ValidationConfig, Verdict, Violation, ViolationCode, validate};

/// Generates a new UUIDv7 event id (time-ordered, so ids sort by creation time).
pub fn new_event_id() -> String {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Uuid::now_v7()
        .hyphenated()
        .encode_lower(&mut buf)
        .to_owned()
}
