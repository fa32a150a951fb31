//! From a bus record to a row of a table: what every stored row provides ([`StoredRow`]), so
//! the batcher, the sinks, the split and the run loop store events, alerts, pushes, deliveries
//! and alert acks along one effectively-once path; and why a record cannot become a row
//! ([`Poison`]).

pub mod ack;
pub mod alert;
pub mod delivery;
pub mod event;
pub mod push;

pub use ack::AckRow;
pub use alert::{AlertOrigin, AlertRow};
pub use delivery::DeliveryRow;
pub use event::{EventRow, StoredEnd, StoredEvent, from_event, row};
pub use push::PushRow;

use pitboss_bus::{Position, Record, header};
use pitboss_model::live::LiveMessage;
use serde::Serialize;

use crate::sqlite::SqliteRow;

/// A row of one table, decoded from one bus record.
///
/// ClickHouse gets it as RowBinary (`clickhouse::Row` + `Serialize`, fields in column order,
/// which are the columns of the table's latest migration: `schema::columns`); the embedded
/// store writes it through [`SqliteRow`].
pub trait StoredRow:
    clickhouse::RowOwned
    + clickhouse::RowWrite
    + SqliteRow
    + Clone
    + PartialEq
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// The table, in both stores.
    const TABLE: &'static str;

    /// The `DateTime` column [`StoredRow::stamped_at_ms`] fills: the table's partition key
    /// (`toYYYYMM(...)`), and what the high-water query bounds.
    const STAMP_COLUMN: &'static str;

    /// The row of `record`, read from `topic`; or why it cannot be one (the record then goes
    /// to the dead-letter topic with that reason).
    fn decode(topic: &str, record: &Record) -> Result<Self, Poison>;

    /// When the publisher stamped the record, in epoch ms, just before publishing it — events:
    /// `received_at` (ingest), alerts: `detected_at`, pushes: `created_at`, deliveries:
    /// `delivered_at`, acks: `acked_at`. A record with a higher offset of the same partition
    /// was stamped later, give or take clock skew and the publish timeout, which is what lets
    /// the high-water query read only a day of rows (`run::REPLAY_MARGIN_MS`). Also the month a
    /// batch belongs to (one batch, one table partition) and the freshness metric.
    fn stamped_at_ms(&self) -> u64;

    /// The `bus_offset` column.
    fn bus_offset(&self) -> u64;

    /// The `bus_sequence` column: over Kinesis `<shard id>:<sequence number>`, set by the
    /// processor (which knows the shard); empty elsewhere.
    fn bus_sequence(&self) -> &str;

    /// Sets the `bus_sequence` column.
    fn set_bus_sequence(&mut self, value: String);

    /// Approximate bytes of the row (for the batch byte limit).
    fn size(&self) -> usize;

    /// What the table keeps one row per, within the tenant (`event_id`; `alert_id`;
    /// `message_id/connection_id` for a delivery…): for tests and test stores.
    fn id(&self) -> String;

    /// [`StoredRow::id`] as SQL over the table's columns.
    const ID_SQL: &'static str;

    /// For a table whose store does not keep one row per id by itself (`events`, a plain
    /// MergeTree with rollups fed by its inserts): the row's sort key, by which the
    /// ClickHouse sink finds a copy already stored and drops it before the insert (see
    /// [`CopyKey`]). The tables of the live path keep one row per id on their own
    /// (ReplacingMergeTree, rollups of distinct ids) and return None.
    fn copy_key(&self) -> Option<CopyKey<'_>> {
        None
    }

    /// Whether the row's id was chosen by a client, so that a copy may be stored already (a
    /// retry): the ClickHouse sink looks only such rows up. An id the server generated is new
    /// by construction (a replayed bus record is the high-water skip's business, not this).
    fn id_from_client(&self) -> bool {
        false
    }
}

/// Where a copy of an event would be in `events`: its sort key `(tenant_id, occurred_at,
/// player_id, event_id)`. A retry of the same event has the same key; looking the batch up by
/// the whole sort key reads only the index marks around each key, not the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CopyKey<'a> {
    pub tenant_id: &'a str,
    pub occurred_at: u32,
    pub player_id: &'a str,
    pub event_id: &'a str,
}

/// Counts rows a store dropped as copies of rows it had (`pitboss_processor_copies_dropped_total`).
pub(crate) fn count_copies<R: StoredRow>(copies: u64) {
    if copies > 0 {
        metrics::counter!("pitboss_processor_copies_dropped_total", "table" => R::TABLE)
            .increment(copies);
    }
}

/// Why a record cannot become a row (it goes to the dead-letter topic with this reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Poison {
    /// Not the protobuf of the table's message (`what`: event, alert, …).
    #[error("undecodable protobuf {what}: {reason}")]
    Undecodable { what: &'static str, reason: String },
    /// Decoded, but breaks the contract (docs/alerts.md): every violation.
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    /// The record's `pitboss-type` header says it is another kind of message than the
    /// topic's table stores: a topic mapped to the wrong table, or a publisher on the wrong
    /// topic.
    #[error("a {found} record on a topic stored as {table}")]
    WrongType { found: String, table: &'static str },
    #[error("event without event_id or received_at (not stamped by ingest)")]
    Unstamped,
    /// A time a `DateTime` column cannot hold (before 1970, after 2106).
    #[error("timestamp out of range: {0}")]
    Time(i64),
}

/// `DateTime` seconds and epoch ms of an instant in ms.
pub(crate) fn seconds(ms: i64) -> Result<(u32, u64), Poison> {
    let s = u32::try_from(ms.div_euclid(1000)).map_err(|_| Poison::Time(ms))?;
    Ok((s, ms as u64))
}

/// Epoch ms of a time stored only as `UInt64` (no `DateTime`), 0 when absent.
pub(crate) fn millis(ms: Option<i64>) -> Result<u64, Poison> {
    ms.map_or(Ok(0), |ms| u64::try_from(ms).map_err(|_| Poison::Time(ms)))
}

/// The snake_case name of a unit enum (its serde form), e.g. `responsible_gambling`.
pub(crate) fn text<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// Compact JSON of a value that always serializes (lists of strings, measures, objects).
pub(crate) fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// The bus position as the `bus_offset` column (Kinesis sequence numbers do not fit: 0).
pub fn offset_of(position: &Position) -> Option<u64> {
    match position {
        Position::Offset(o) => u64::try_from(*o).ok(),
        Position::Sequence(_) => None,
    }
}

/// The `bus_sequence` of a record read from Kinesis shard `shard` at `sequence`.
pub fn tag_sequence(shard: &str, sequence: &str) -> String {
    format!("{shard}:{sequence}")
}

/// A `bus_sequence`'s shard id and sequence number ([`tag_sequence`]); `None` when empty.
pub fn split_sequence(tagged: &str) -> Option<(&str, &str)> {
    tagged.split_once(':')
}

/// The `pitboss-type` of every live-path message, which an event record never carries.
const LIVE_TYPES: [&str; 4] = ["alert", "push", "delivery", "alert_ack"];

/// Refuses a record whose `pitboss-type` header names a live-path message other than
/// `expected` (`None`: an event is expected, whose header is its event type). A record without
/// the header is decoded as the table's message.
pub(crate) fn check_type(
    record: &Record,
    expected: Option<&str>,
    table: &'static str,
) -> Result<(), Poison> {
    let Some(found) = record.headers.get_str(header::TYPE) else {
        return Ok(());
    };
    let wrong = match expected {
        Some(expected) => found != expected,
        None => LIVE_TYPES.contains(&found),
    };
    if wrong {
        return Err(Poison::WrongType {
            found: found.to_owned(),
            table,
        });
    }
    Ok(())
}

/// Reads a live-path message from `record` for `table`: its type header checked, its protobuf
/// decoded and its contract validated.
pub(crate) fn live_message<M: LiveMessage>(
    record: &Record,
    table: &'static str,
) -> Result<M, Poison> {
    check_type(record, Some(M::TYPE), table)?;
    let message = M::decode_proto(&record.value).map_err(|v| Poison::Undecodable {
        what: M::TYPE,
        reason: v.to_string(),
    })?;
    message.validate().map_err(|violations| Poison::Invalid {
        what: M::TYPE,
        reason: violations
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "),
    })?;
    Ok(message)
}

/// The bus position of `record` as the row's columns: (topic, partition, offset).
pub(crate) fn position(topic: &str, record: &Record) -> (String, u32, u64) {
    (
        topic.to_owned(),
        record.partition,
        offset_of(&record.position).unwrap_or(0),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A record of `topic` partition 3 at offset 42 holding `value`, with `pitboss-type`
    /// `kind` if given.
    pub(crate) fn record(value: Vec<u8>, kind: Option<&str>) -> Record {
        let mut headers = pitboss_bus::Headers::new();
        if let Some(kind) = kind {
            headers.insert(header::TYPE, kind);
        }
        Record {
            partition: 3,
            position: Position::Offset(42),
            key: "acme:p1".into(),
            value,
            timestamp_ms: 0,
            topic: "t".into(),
            headers,
        }
    }

    #[test]
    fn the_type_header_must_name_the_tables_message_when_present() {
        let r = record(Vec::new(), Some("push"));
        assert_eq!(check_type(&r, Some("push"), "pushes"), Ok(()));
        assert_eq!(
            check_type(&r, Some("alert"), "alerts")
                .expect_err("wrong")
                .to_string(),
            "a push record on a topic stored as alerts"
        );
        assert!(check_type(&r, None, "events").is_err(), "not an event");
        let bet = record(Vec::new(), Some("bet_placed"));
        assert_eq!(check_type(&bet, None, "events"), Ok(()));
        assert!(check_type(&bet, Some("alert"), "alerts").is_err());
        assert_eq!(
            check_type(&record(Vec::new(), None), Some("alert"), "alerts"),
            Ok(())
        );
    }

    #[test]
    fn times_a_datetime_cannot_hold_are_poison() {
        assert_eq!(seconds(1_500), Ok((1, 1_500)));
        assert_eq!(seconds(-1), Err(Poison::Time(-1)));
        assert_eq!(
            seconds(5_000_000_000_000),
            Err(Poison::Time(5_000_000_000_000))
        );
        assert_eq!(millis(None), Ok(0));
        assert_eq!(millis(Some(253_402_300_799_999)), Ok(253_402_300_799_999));
    }
}
