//! The live path: the messages the rules engine, the processor and the edge gateway exchange on
//! the bus topics `alerts`, `pushes`, `deliveries` and `alert_acks` (docs/alerts.md), in their
//! canonical JSON form (what WebSocket clients and the operator console see and send), with
//! validation, deterministic ids, bus keys, and lossless conversion to protobuf
//! (`proto/pitboss/v1/live.proto`).
//!
//! Every message implements [`LiveMessage`], which is what the components use generically.

pub mod ack;
pub mod alert;
pub mod channel;
mod check;
pub mod convert;
pub mod delivery;
pub mod ids;
pub mod limits;
pub mod message;
pub mod push;
pub mod schema;
mod tagged;

pub use ack::{AckOutcome, AlertAck};
pub use alert::{Alert, Category, Comparison, GroupBy, Measure, Recommendation, Severity};
pub use channel::ChannelName;
pub use delivery::{Delivery, MessageType};
pub use ids::{alert_id, new_message_id, push_id};
pub use message::LiveMessage;
pub use push::{OperatorSource, Push, PushSource, RuleSource, Target};
