//! The live-path contract's limits, in one place. Ids are counted in bytes (they are ASCII);
//! human-readable text in characters (Unicode scalar values), so a Russian title gets as many
//! letters as an English one.

pub use crate::validate::{MAX_ID, MAX_NAME, MAX_TENANT_ID};

/// Longest push title, in characters (one line, no control characters).
pub const MAX_TITLE_CHARS: usize = 100;
/// Longest push body, in characters (line breaks and tabs allowed).
pub const MAX_BODY_CHARS: usize = 1000;
/// Longest alert reason, in characters (one sentence: one line, no control characters).
pub const MAX_REASON_CHARS: usize = 500;
/// Longest operator note on an ack, in characters (line breaks and tabs allowed).
pub const MAX_NOTE_CHARS: usize = 2000;
/// Largest push `data` object, in bytes of its compact JSON text (the protobuf `data_json`).
pub const MAX_DATA_BYTES: usize = 4096;
/// Longest alert group key (a device id, an IP address, a session or player id), in bytes.
pub const MAX_GROUP_KEY: usize = 256;
/// Most measures on one alert.
pub const MAX_MEASURES: usize = 16;
/// Most evidence event ids on one alert.
pub const MAX_EVIDENCE_EVENTS: usize = 100;
/// Most related player ids on one alert.
pub const MAX_RELATED_PLAYERS: usize = 100;
/// Longest measure window: 400 days (a yearly responsible-gambling window fits).
pub const MAX_WINDOW_MS: u64 = 400 * 24 * 3600 * 1000;
/// Latest accepted time: 9999-12-31T23:59:59.999Z, the last instant RFC 3339 can write.
pub const MAX_TIMESTAMP_MS: i64 = 253_402_300_799_999;
