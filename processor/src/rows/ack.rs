//! A row of `alert_acks`: an operator's ack of an alert (docs/alerts.md) decoded and
//! validated, and the record's bus position kept with it.

use pitboss_bus::Record;
use pitboss_model::live::AlertAck;
use serde::{Deserialize, Serialize};

use super::{Poison, StoredRow, live_message, position, seconds, text};

/// One row of `alert_acks`, in column order (RowBinary). Times: `DateTime` seconds and epoch ms.
#[derive(Debug, Clone, Default, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct AckRow {
    pub tenant_id: String,
    pub ack_id: String,
    pub alert_id: String,
    pub operator_id: String,
    /// `acknowledged`, `false_positive`, `confirmed` or `escalated`.
    pub outcome: String,
    /// Empty when the operator wrote none.
    pub note: String,
    pub acked_at: u32,
    pub acked_at_ms: u64,
    pub bus_topic: String,
    pub bus_partition: u32,
    pub bus_offset: u64,
    /// Over Kinesis, the record's shard and sequence number, `<shard id>:<sequence number>`
    /// (empty on Kafka and the embedded log, whose offsets are in `bus_offset`): the
    /// high-water mark over Kinesis.
    pub bus_sequence: String,
}

impl AckRow {
    /// Spreads an ack over the columns.
    pub fn from_ack(a: AlertAck, topic: &str, partition: u32, offset: u64) -> Result<Self, Poison> {
        let (acked_at, acked_at_ms) = seconds(a.acked_at.as_millis())?;
        Ok(AckRow {
            outcome: text(&a.outcome),
            tenant_id: a.tenant_id,
            ack_id: a.ack_id,
            alert_id: a.alert_id,
            operator_id: a.operator_id,
            note: a.note.unwrap_or_default(),
            acked_at,
            acked_at_ms,
            bus_topic: topic.to_owned(),
            bus_partition: partition,
            bus_offset: offset,
            bus_sequence: String::new(),
        })
    }
}

impl StoredRow for AckRow {
    const TABLE: &'static str = "alert_acks";
    const STAMP_COLUMN: &'static str = "acked_at";
    const ID_SQL: &'static str = "ack_id";

    fn decode(topic: &str, record: &Record) -> Result<Self, Poison> {
        let ack: AlertAck = live_message(record, Self::TABLE)?;
        let (topic, partition, offset) = position(topic, record);
        Self::from_ack(ack, &topic, partition, offset)
    }

    fn stamped_at_ms(&self) -> u64 {
        self.acked_at_ms
    }

    fn bus_offset(&self) -> u64 {
        self.bus_offset
    }

    fn bus_sequence(&self) -> &str {
        &self.bus_sequence
    }

    fn set_bus_sequence(&mut self, value: String) {
        self.bus_sequence = value;
    }

    fn size(&self) -> usize {
        128 + self.bus_sequence.len()
            + self.tenant_id.len()
            + self.ack_id.len()
            + self.alert_id.len()
            + self.operator_id.len()
            + self.note.len()
    }

    fn id(&self) -> String {
        self.ack_id.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::tests::record;
    use pitboss_model::live::LiveMessage;

    #[test]
    fn an_ack_fills_its_columns() {
        let a: AlertAck = serde_json::from_str(include_str!(
            "../../../crates/model/fixtures/live/alert_ack_false_positive.json"
        ))
        .expect("fixture");
        let r = AckRow::decode("alert_acks", &record(a.encode_proto(), Some("alert_ack")))
            .expect("row");
        assert_eq!(
            (r.outcome.as_str(), r.alert_id.as_str()),
            ("false_positive", "5b9a90ec-2abd-5f0c-bd05-7a64a9980e46")
        );
        assert!(r.note.contains("Same household"));
        assert_eq!(r.stamped_at_ms(), a.acked_at.as_millis() as u64);
        assert_eq!(r.id(), a.ack_id);
    }
}
