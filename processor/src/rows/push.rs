//! A row of `pushes`: a push (docs/alerts.md) decoded and validated, its one-ofs spread over
//! columns (`target_type` + `target_id`; `source_type` + the rule's or the operator's fields),
//! its `data` as JSON text, and the record's bus position kept with it. Its deliveries are rows
//! of `deliveries` (by `message_id`).

use pitboss_bus::Record;
use pitboss_model::live::{Push, PushSource, Target};
use serde::{Deserialize, Serialize};

use super::{Poison, StoredRow, json, live_message, millis, position, seconds};

/// One row of `pushes`, in column order (RowBinary). Times: `DateTime` seconds and epoch ms;
/// `expires_at_ms` only in ms (0: never), since it may lie past what `DateTime` holds.
#[derive(Debug, Clone, Default, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct PushRow {
    pub tenant_id: String,
    pub push_id: String,
    /// `player` or `room`.
    pub target_type: String,
    pub target_id: String,
    pub kind: String,
    pub title: String,
    pub body: String,
    /// The `data` object as compact JSON (`{}` when empty).
    pub data: String,
    /// `rule` or `operator`.
    pub source_type: String,
    /// A rule push's rule, version, alert (empty if the hit raised none) and trigger event;
    /// empty and 0 for an operator push.
    pub rule_id: String,
    pub rule_version: u32,
    pub alert_id: String,
    pub trigger_event_id: String,
    /// An operator push's operator; empty for a rule push.
    pub operator_id: String,
    pub event_time: u32,
    pub event_time_ms: u64,
    pub received_at: u32,
    pub received_at_ms: u64,
    pub created_at: u32,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub bus_topic: String,
    pub bus_partition: u32,
    pub bus_offset: u64,
    /// Over Kinesis, the record's shard and sequence number, `<shard id>:<sequence number>`
    /// (empty on Kafka and the embedded log, whose offsets are in `bus_offset`): the
    /// high-water mark over Kinesis.
    pub bus_sequence: String,
}

impl PushRow {
    /// Spreads a push over the columns.
    pub fn from_push(p: Push, topic: &str, partition: u32, offset: u64) -> Result<Self, Poison> {
        let (event_time, event_time_ms) = seconds(p.event_time.as_millis())?;
        let (received_at, received_at_ms) = seconds(p.received_at.as_millis())?;
        let (created_at, created_at_ms) = seconds(p.created_at.as_millis())?;
        let expires_at_ms = millis(p.expires_at.map(|t| t.as_millis()))?;
        let (target_type, target_id) = match p.target {
            Target::Player(id) => ("player", id),
            Target::Room(id) => ("room", id),
        };
        let mut row = PushRow {
            data: json(&p.data),
            tenant_id: p.tenant_id,
            push_id: p.push_id,
            target_type: target_type.into(),
            target_id,
            kind: p.kind,
            title: p.title,
            body: p.body,
            event_time,
            event_time_ms,
            received_at,
            received_at_ms,
            created_at,
            created_at_ms,
            expires_at_ms,
            bus_topic: topic.to_owned(),
            bus_partition: partition,
            bus_offset: offset,
            ..PushRow::default()
        };
        match p.source {
            PushSource::Rule(r) => {
                row.source_type = "rule".into();
                row.rule_id = r.rule_id;
                row.rule_version = r.rule_version;
                row.alert_id = r.alert_id.unwrap_or_default();
                row.trigger_event_id = r.trigger_event_id;
            }
            PushSource::Operator(o) => {
                row.source_type = "operator".into();
                row.operator_id = o.operator_id;
            }
        }
        Ok(row)
    }
}

impl StoredRow for PushRow {
    const TABLE: &'static str = "pushes";
    const STAMP_COLUMN: &'static str = "created_at";
    const ID_SQL: &'static str = "push_id";

    fn decode(topic: &str, record: &Record) -> Result<Self, Poison> {
        let push: Push = live_message(record, Self::TABLE)?;
        let (topic, partition, offset) = position(topic, record);
        Self::from_push(push, &topic, partition, offset)
    }

    fn stamped_at_ms(&self) -> u64 {
        self.created_at_ms
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
        200 + self.bus_sequence.len()
            + self.tenant_id.len()
            + self.target_id.len()
            + self.kind.len()
            + self.title.len()
            + self.body.len()
            + self.data.len()
            + self.rule_id.len()
            + self.operator_id.len()
    }

    fn id(&self) -> String {
        self.push_id.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::tests::record;
    use pitboss_model::live::LiveMessage;

    fn fixture(text: &str) -> Push {
        serde_json::from_str(text).expect("fixture")
    }

    #[test]
    fn rule_and_operator_pushes_fill_their_columns() {
        let p = fixture(include_str!(
            "../../../crates/model/fixtures/live/push_loss_chasing.json"
        ));
        let r = PushRow::decode("pushes", &record(p.encode_proto(), Some("push"))).expect("row");
        assert_eq!(
            (r.target_type.as_str(), r.target_id.as_str()),
            ("player", "p-20417")
        );
        assert_eq!(
            (r.source_type.as_str(), r.rule_id.as_str(), r.rule_version),
            ("rule", "rg.loss_chasing", 4)
        );
        assert_eq!(r.alert_id, "b412a962-64af-5377-8305-c6a1a2fde03c");
        assert!(r.operator_id.is_empty());
        let data: serde_json::Value = serde_json::from_str(&r.data).expect("json");
        assert_eq!(data["suggested_deposit_limit"]["amount_minor"], 20000);
        assert_eq!(r.created_at_ms, p.created_at.as_millis() as u64);
        assert_eq!(r.expires_at_ms, r.created_at_ms + 3_600_000);
        assert_eq!(r.stamped_at_ms(), r.created_at_ms);

        let p = fixture(include_str!(
            "../../../crates/model/fixtures/live/push_operator_room.json"
        ));
        let r = PushRow::decode("pushes", &record(p.encode_proto(), None)).expect("row");
        assert_eq!(
            (r.target_type.as_str(), r.target_id.as_str()),
            ("room", "roulette-live-1")
        );
        assert_eq!(
            (
                r.source_type.as_str(),
                r.operator_id.as_str(),
                r.rule_version
            ),
            ("operator", "op-marina.k", 0)
        );
        assert!(r.title.starts_with("Турнир"));
    }

    #[test]
    fn a_push_without_data_or_expiry_stores_empty_values() {
        let mut p = fixture(include_str!(
            "../../../crates/model/fixtures/live/push_operator_room.json"
        ));
        p.data.clear();
        p.expires_at = None;
        let r = PushRow::decode("pushes", &record(p.encode_proto(), None)).expect("row");
        assert_eq!((r.data.as_str(), r.expires_at_ms), ("{}", 0));
    }
}
