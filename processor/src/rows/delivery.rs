//! A row of `deliveries`: a delivery (docs/alerts.md) decoded and validated, one row per
//! message per connection, with both times so that time-to-notify
//! (`delivered_at_ms - received_at_ms`) comes from the row alone; and the record's bus
//! position kept with it.

use pitboss_bus::Record;
use pitboss_model::live::Delivery;
use serde::{Deserialize, Serialize};

use super::{Poison, StoredRow, live_message, position, seconds, text};

/// One row of `deliveries`, in column order (RowBinary). Times: `DateTime` seconds and epoch ms.
#[derive(Debug, Clone, Default, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct DeliveryRow {
    pub tenant_id: String,
    /// `alert` or `push`.
    pub message_type: String,
    /// The `alert_id` or `push_id`.
    pub message_id: String,
    pub channel: String,
    pub subscriber: String,
    pub gateway_id: String,
    pub connection_id: String,
    pub delivered_at: u32,
    pub delivered_at_ms: u64,
    pub received_at: u32,
    pub received_at_ms: u64,
    /// 1 when delivered from the backlog on resume, not live.
    pub replayed: u8,
    pub bus_topic: String,
    pub bus_partition: u32,
    pub bus_offset: u64,
    /// Over Kinesis, the record's shard and sequence number, `<shard id>:<sequence number>`
    /// (empty on Kafka and the embedded log, whose offsets are in `bus_offset`): the
    /// high-water mark over Kinesis.
    pub bus_sequence: String,
}

impl DeliveryRow {
    /// Spreads a delivery over the columns.
    pub fn from_delivery(
        d: Delivery,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> Result<Self, Poison> {
        let (delivered_at, delivered_at_ms) = seconds(d.delivered_at.as_millis())?;
        let (received_at, received_at_ms) = seconds(d.received_at.as_millis())?;
        Ok(DeliveryRow {
            message_type: text(&d.message_type),
            tenant_id: d.tenant_id,
            message_id: d.message_id,
            channel: d.channel,
            subscriber: d.subscriber,
            gateway_id: d.gateway_id,
            connection_id: d.connection_id,
            delivered_at,
            delivered_at_ms,
            received_at,
            received_at_ms,
            replayed: u8::from(d.replayed),
            bus_topic: topic.to_owned(),
            bus_partition: partition,
            bus_offset: offset,
            bus_sequence: String::new(),
        })
    }
}

impl StoredRow for DeliveryRow {
    const TABLE: &'static str = "deliveries";
    const STAMP_COLUMN: &'static str = "delivered_at";
    const ID_SQL: &'static str = "concat(message_id, '/', connection_id)";

    fn decode(topic: &str, record: &Record) -> Result<Self, Poison> {
        let delivery: Delivery = live_message(record, Self::TABLE)?;
        let (topic, partition, offset) = position(topic, record);
        Self::from_delivery(delivery, &topic, partition, offset)
    }

    fn stamped_at_ms(&self) -> u64 {
        self.delivered_at_ms
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
            + self.message_id.len()
            + self.channel.len()
            + self.subscriber.len()
            + self.gateway_id.len()
            + self.connection_id.len()
    }

    fn id(&self) -> String {
        format!("{}/{}", self.message_id, self.connection_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::tests::record;
    use pitboss_model::live::LiveMessage;

    #[test]
    fn a_delivery_keeps_both_times_and_whether_it_was_replayed() {
        let d: Delivery = serde_json::from_str(include_str!(
            "../../../crates/model/fixtures/live/delivery_alert_replayed.json"
        ))
        .expect("fixture");
        let r = DeliveryRow::decode("deliveries", &record(d.encode_proto(), Some("delivery")))
            .expect("row");
        assert_eq!(r.message_type, "alert");
        assert_eq!(r.replayed, 1);
        assert_eq!(
            r.delivered_at_ms as i64 - r.received_at_ms as i64,
            d.time_to_notify_ms()
        );
        assert_eq!(r.stamped_at_ms(), r.delivered_at_ms);
        assert_eq!(r.id(), format!("{}/{}", d.message_id, d.connection_id));
        let e = DeliveryRow::decode("deliveries", &record(d.encode_proto(), Some("alert")))
            .expect_err("an alert header");
        assert!(matches!(e, Poison::WrongType { .. }), "{e}");
    }
}
