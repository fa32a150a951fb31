//! A row of `alerts`: an alert (docs/alerts.md) decoded and validated, its fields as columns —
//! enums as their snake_case names, lists of ids as arrays, the measures as JSON text — and
//! the record's bus position kept with it.

use pitboss_bus::Record;
use pitboss_model::live::Alert;
use serde::{Deserialize, Serialize};

use super::{Poison, StoredRow, json, live_message, position, seconds, text};

/// One row of `alerts`, in column order (RowBinary). Times: `DateTime` seconds and epoch ms.
#[derive(Debug, Clone, Default, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct AlertRow {
    pub tenant_id: String,
    pub alert_id: String,
    /// Empty when the alert has no player.
    pub player_id: String,
    pub rule_id: String,
    pub rule_version: u32,
    pub category: String,
    pub severity: String,
    pub score: u32,
    pub total_score: u32,
    pub recommendation: String,
    pub group_by: String,
    pub group_key: String,
    pub related_player_ids: Vec<String>,
    pub reason: String,
    /// The measures as a JSON array (`[]` when none), as in the alert's JSON.
    pub measures: String,
    pub trigger_event_id: String,
    pub evidence_event_ids: Vec<String>,
    pub event_time: u32,
    pub event_time_ms: u64,
    pub received_at: u32,
    pub received_at_ms: u64,
    pub detected_at: u32,
    pub detected_at_ms: u64,
    pub bus_topic: String,
    pub bus_partition: u32,
    pub bus_offset: u64,
    /// Over Kinesis, the record's shard and sequence number, `<shard id>:<sequence number>`
    /// (empty on Kafka and the embedded log, whose offsets are in `bus_offset`): the
    /// high-water mark over Kinesis.
    pub bus_sequence: String,
}

impl AlertRow {
    /// Spreads an alert over the columns.
    pub fn from_alert(a: Alert, topic: &str, partition: u32, offset: u64) -> Result<Self, Poison> {
        let (event_time, event_time_ms) = seconds(a.event_time.as_millis())?;
        let (received_at, received_at_ms) = seconds(a.received_at.as_millis())?;
        let (detected_at, detected_at_ms) = seconds(a.detected_at.as_millis())?;
        Ok(AlertRow {
            category: text(&a.category),
            severity: text(&a.severity),
            recommendation: text(&a.recommendation),
            group_by: text(&a.group_by),
            measures: json(&a.measures),
            tenant_id: a.tenant_id,
            alert_id: a.alert_id,
            player_id: a.player_id.unwrap_or_default(),
            rule_id: a.rule_id,
            rule_version: a.rule_version,
            score: a.score,
            total_score: a.total_score,
            group_key: a.group_key,
            related_player_ids: a.related_player_ids,
            reason: a.reason,
            trigger_event_id: a.trigger_event_id,
            evidence_event_ids: a.evidence_event_ids,
            event_time,
            event_time_ms,
            received_at,
            received_at_ms,
            detected_at,
            detected_at_ms,
            bus_topic: topic.to_owned(),
            bus_partition: partition,
            bus_offset: offset,
            bus_sequence: String::new(),
        })
    }
}

impl StoredRow for AlertRow {
    const TABLE: &'static str = "alerts";
    const STAMP_COLUMN: &'static str = "detected_at";
    const ID_SQL: &'static str = "alert_id";

    fn decode(topic: &str, record: &Record) -> Result<Self, Poison> {
        let alert: Alert = live_message(record, Self::TABLE)?;
        let (topic, partition, offset) = position(topic, record);
        Self::from_alert(alert, &topic, partition, offset)
    }

    fn stamped_at_ms(&self) -> u64 {
        self.detected_at_ms
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
        160 + self.bus_sequence.len()
            + self.tenant_id.len()
            + self.player_id.len()
            + self.rule_id.len()
            + self.group_key.len()
            + self.reason.len()
            + self.measures.len()
            + self
                .related_player_ids
                .iter()
                .map(|p| p.len() + 8)
                .sum::<usize>()
            + self.evidence_event_ids.len() * 44
    }

    fn id(&self) -> String {
        self.alert_id.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::tests::record;
    use pitboss_model::live::LiveMessage;

    fn fixture() -> Alert {
        serde_json::from_str(include_str!(
            "../../../crates/model/fixtures/live/alert_multi_accounting.json"
        ))
        .expect("fixture")
    }

    #[test]
    fn an_alert_fills_its_columns_and_keeps_its_position() {
        let a = fixture();
        let r = AlertRow::decode("alerts", &record(a.encode_proto(), Some("alert"))).expect("row");
        assert_eq!(r.alert_id, a.alert_id);
        assert_eq!(r.player_id, "p-88412");
        assert_eq!(
            (
                r.category.as_str(),
                r.severity.as_str(),
                r.group_by.as_str()
            ),
            ("fraud", "high", "device")
        );
        assert_eq!(r.related_player_ids, ["p-10293", "p-55120"]);
        assert_eq!(r.evidence_event_ids.len(), 2);
        let measures: serde_json::Value = serde_json::from_str(&r.measures).expect("json");
        assert_eq!(measures[1]["name"], "welcome_bonus_grants");
        assert_eq!(measures[1]["comparison"], "gte");
        assert_eq!(r.detected_at_ms, a.detected_at.as_millis() as u64);
        assert_eq!(r.detected_at, (a.detected_at.as_millis() / 1000) as u32);
        assert_eq!(r.stamped_at_ms(), r.detected_at_ms);
        assert_eq!(
            (r.bus_topic.as_str(), r.bus_partition, r.bus_offset),
            ("alerts", 3, 42)
        );
    }

    #[test]
    fn an_alert_breaking_the_contract_is_poison_with_every_violation() {
        let mut a = fixture();
        a.rule_version = 9; // the id no longer derives from the rule
        a.total_score = 1; // below the score
        let e = AlertRow::decode("alerts", &record(a.encode_proto(), None)).expect_err("invalid");
        let text = e.to_string();
        assert!(text.starts_with("invalid alert: "), "{text}");
        assert!(
            text.contains("alert_id") && text.contains("total_score"),
            "{text}"
        );
        let e = AlertRow::decode("alerts", &record(vec![0xff, 0xff], None)).expect_err("bytes");
        assert!(
            matches!(e, Poison::Undecodable { what: "alert", .. }),
            "{e}"
        );
    }
}

/// What a stored alert fired on: its tenant, rule and group value, which a snooze names
/// (`pitboss rules snooze --alert`).
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Serialize, Deserialize)]
pub struct AlertOrigin {
    pub tenant_id: String,
    pub rule_id: String,
    pub rule_version: u32,
    /// `player`, `device`, `ip`… as the alert's `group_by`.
    pub group_by: String,
    pub group_key: String,
    /// Empty when the alert has no player.
    pub player_id: String,
}
