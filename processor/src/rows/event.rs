//! A row of `events`: the protobuf event decoded, its payload spread over the typed columns,
//! and the record's bus position kept with it.

use pitboss_bus::{Record, header};
use pitboss_model::{Event, Payload, decode_proto};
use serde::{Deserialize, Serialize};

use super::{CopyKey, Poison, StoredRow, check_type, offset_of, seconds, text};

/// One row of `events`, in column order (RowBinary). Times: `DateTime` seconds and epoch ms.
#[derive(Debug, Clone, Default, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct EventRow {
    pub tenant_id: String,
    pub event_id: String,
    pub player_id: String,
    pub session_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub occurred_at: u32,
    pub occurred_at_ms: u64,
    pub received_at: u32,
    pub received_at_ms: u64,
    pub schema_version: u32,
    pub late: u8,
    pub game_id: String,
    pub bet_id: String,
    pub round_id: String,
    pub transaction_id: String,
    pub result: String,
    pub status: String,
    pub method: String,
    pub channel: String,
    pub device_id: String,
    pub ip: String,
    pub country: String,
    pub success: u8,
    pub amount_minor: i64,
    pub payout_minor: i64,
    pub currency: String,
    /// The canonical JSON of the payload (everything, including fields without a column).
    pub payload: String,
    pub bus_topic: String,
    pub bus_partition: u32,
    pub bus_offset: u64,
    /// The player's offset from UTC in minutes, as sent (schema version 6).
    pub utc_offset_min: Option<i16>,
    /// Over Kinesis, the record's shard and sequence number, `<shard id>:<sequence number>`
    /// (empty on Kafka and the embedded log, whose offsets are in `bus_offset`): the
    /// high-water mark over Kinesis (schema version 7).
    pub bus_sequence: String,
    /// Whether the client chose `event_id` (the record's `pitboss-client-id` header): only such
    /// an id can come back in a retry, so only such rows are looked up before an insert. Not
    /// a column.
    #[serde(skip)]
    pub client_id: bool,
}

/// The payload's canonical JSON, without the type tag (serialized straight to text: going
/// through `serde_json::Value` was a visible share of the processor's CPU).
fn payload_json(payload: &Payload) -> String {
    let text = match payload {
        Payload::BetPlaced(p) => serde_json::to_string(p),
        Payload::BetSettled(p) => serde_json::to_string(p),
        Payload::Deposit(p) => serde_json::to_string(p),
        Payload::Withdrawal(p) => serde_json::to_string(p),
        Payload::Login(p) => serde_json::to_string(p),
        Payload::Logout(p) => serde_json::to_string(p),
        Payload::SessionStarted(p) => serde_json::to_string(p),
        Payload::SessionEnded(p) => serde_json::to_string(p),
        Payload::Bonus(p) => serde_json::to_string(p),
        Payload::Custom(p) => serde_json::to_string(p),
    };
    text.unwrap_or_else(|_| "{}".into())
}

impl StoredRow for EventRow {
    const TABLE: &'static str = "events";
    const STAMP_COLUMN: &'static str = "received_at";
    const ID_SQL: &'static str = "event_id";

    fn decode(topic: &str, record: &Record) -> Result<Self, Poison> {
        row(topic, record)
    }

    fn stamped_at_ms(&self) -> u64 {
        self.received_at_ms
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
            + self.event_id.len()
            + self.player_id.len()
            + self.session_id.len()
            + self.payload.len()
            + self.game_id.len()
            + self.bet_id.len()
    }

    fn id(&self) -> String {
        self.event_id.clone()
    }

    fn id_from_client(&self) -> bool {
        self.client_id
    }

    fn copy_key(&self) -> Option<CopyKey<'_>> {
        Some(CopyKey {
            tenant_id: &self.tenant_id,
            occurred_at: self.occurred_at,
            player_id: &self.player_id,
            event_id: &self.event_id,
        })
    }
}

/// Decodes a record into a row (a record whose `pitboss-type` names a live-path message is
/// refused).
pub fn row(topic: &str, record: &Record) -> Result<EventRow, Poison> {
    check_type(record, None, EventRow::TABLE)?;
    let event = decode_proto(&record.value).map_err(|v| Poison::Undecodable {
        what: "event",
        reason: v.to_string(),
    })?;
    let mut row = from_event(
        event,
        topic,
        record.partition,
        offset_of(&record.position).unwrap_or(0),
    )?;
    row.client_id = record.headers.get(header::CLIENT_ID).is_some();
    Ok(row)
}

/// Spreads an event over the columns.
pub fn from_event(
    event: Event,
    topic: &str,
    partition: u32,
    offset: u64,
) -> Result<EventRow, Poison> {
    let (Some(event_id), Some(received_at)) = (event.event_id.clone(), event.received_at) else {
        return Err(Poison::Unstamped);
    };
    let (occurred_s, occurred_ms) = seconds(event.occurred_at.as_millis())?;
    let (received_s, received_ms) = seconds(received_at.as_millis())?;
    let payload_json = payload_json(&event.payload);
    let mut row = EventRow {
        tenant_id: event.tenant_id,
        event_id,
        player_id: event.player_id,
        session_id: event.session_id.unwrap_or_default(),
        kind: event.payload.event_type().as_str().to_owned(),
        occurred_at: occurred_s,
        occurred_at_ms: occurred_ms,
        received_at: received_s,
        received_at_ms: received_ms,
        schema_version: event.schema_version,
        late: u8::from(event.late),
        game_id: String::new(),
        bet_id: String::new(),
        round_id: String::new(),
        transaction_id: String::new(),
        result: String::new(),
        status: String::new(),
        method: String::new(),
        channel: String::new(),
        device_id: String::new(),
        ip: String::new(),
        country: String::new(),
        success: 0,
        amount_minor: 0,
        payout_minor: 0,
        currency: String::new(),
        payload: payload_json,
        bus_topic: topic.to_owned(),
        bus_partition: partition,
        bus_offset: offset,
        // Validated at ingest (−720 … 840 min); anything else is not kept rather than wrapped.
        utc_offset_min: event.utc_offset_min.and_then(|m| i16::try_from(m).ok()),
        bus_sequence: String::new(),
        client_id: false,
    };
    match event.payload {
        Payload::BetPlaced(b) => {
            row.bet_id = b.bet_id;
            row.game_id = b.game_id;
            row.round_id = b.round_id.unwrap_or_default();
            row.amount_minor = b.stake.amount_minor;
            row.currency = b.stake.currency;
            row.channel = b.channel.as_ref().map(text).unwrap_or_default();
            row.device_id = b.device_id.unwrap_or_default();
        }
        Payload::BetSettled(b) => {
            row.bet_id = b.bet_id;
            row.game_id = b.game_id;
            row.round_id = b.round_id.unwrap_or_default();
            row.result = text(&b.result);
            row.payout_minor = b.payout.amount_minor;
            row.currency = b.payout.currency;
        }
        Payload::Deposit(d) => {
            row.transaction_id = d.transaction_id;
            row.amount_minor = d.amount.amount_minor;
            row.currency = d.amount.currency;
            row.method = d.method.as_ref().map(text).unwrap_or_default();
        }
        Payload::Withdrawal(w) => {
            row.transaction_id = w.transaction_id;
            row.amount_minor = w.amount.amount_minor;
            row.currency = w.amount.currency;
            row.status = text(&w.status);
            row.method = w.method.as_ref().map(text).unwrap_or_default();
        }
        Payload::Login(l) => {
            row.ip = l.ip;
            row.device_id = l.device_id.unwrap_or_default();
            row.country = l.country.unwrap_or_default();
            row.success = u8::from(l.success);
        }
        Payload::SessionStarted(s) => {
            row.channel = s.channel.as_ref().map(text).unwrap_or_default();
            row.device_id = s.device_id.unwrap_or_default();
        }
        Payload::Bonus(b) => {
            row.bet_id = b.bonus_id;
            row.status = text(&b.action);
            row.amount_minor = b.amount.amount_minor;
            row.currency = b.amount.currency;
        }
        Payload::Logout(_) | Payload::SessionEnded(_) | Payload::Custom(_) => {}
    }
    Ok(row)
}

/// Where the stored events of one bus partition end (`pitboss rules warm`).
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Serialize, Deserialize)]
pub struct StoredEnd {
    pub topic: String,
    pub partition: u32,
    /// The newest offset stored (0 on a store fed from Kinesis, whose positions are sequence
    /// numbers, kept in `bus_sequence`).
    pub newest: u64,
    /// Distinct events stored (copies not merged away yet counted once).
    pub events: u64,
}

/// The columns an event is rebuilt from ([`StoredEvent::to_event`]), as the backtest reads
/// them back (`SELECT` in this order).
#[derive(Debug, Clone, Default, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct StoredEvent {
    pub tenant_id: String,
    pub event_id: String,
    pub player_id: String,
    pub session_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub occurred_at_ms: u64,
    pub received_at_ms: u64,
    pub schema_version: u32,
    pub late: u8,
    pub payload: String,
    pub utc_offset_min: Option<i16>,
    /// Where the event was on the bus: the backtest replays events received in the same
    /// millisecond (one request's) in their bus order, as the live engine read them.
    pub bus_topic: String,
    pub bus_partition: u32,
    /// 0 on Kinesis (its sequence number, `bus_sequence` in ClickHouse, is not read here):
    /// such ties fall back to the event id.
    pub bus_offset: u64,
}

impl StoredEvent {
    /// The columns, in the order of the struct (for a `SELECT`).
    pub const COLUMNS: &'static str = "tenant_id, event_id, player_id, session_id, type, \
        occurred_at_ms, received_at_ms, schema_version, late, payload, utc_offset_min, \
        bus_topic, bus_partition, bus_offset";

    /// The order events are replayed in: received, then as on the bus (one request's events
    /// share their `received_at`; a player's are on one partition, in the order sent), then
    /// by id.
    pub const REPLAY_ORDER: &'static str =
        "received_at_ms, bus_topic, bus_partition, bus_offset, event_id, tenant_id";

    /// [`Self::COLUMNS`] for a store whose `events` has no `utc_offset_min` yet (one not
    /// migrated to version 6, read by an older process's side): `null` in its place.
    pub fn columns_without_offset(null: &str) -> String {
        Self::COLUMNS.replace("utc_offset_min", &format!("{null} AS utc_offset_min"))
    }

    /// Rebuilds the event: its canonical JSON (the stored payload under its `type`) decoded by
    /// the contract's decoder, then `received_at`, `late` and `utc_offset_min` from the row
    /// (none for a row stored before the store kept it). A row that is not a valid event says
    /// why.
    pub fn to_event(&self) -> Result<Event, String> {
        #[derive(Serialize)]
        struct Canonical<'a> {
            event_id: &'a str,
            tenant_id: &'a str,
            player_id: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            session_id: Option<&'a str>,
            #[serde(rename = "type")]
            kind: &'a str,
            occurred_at: String,
            schema_version: u32,
            payload: &'a serde_json::value::RawValue,
        }
        let why =
            |reason: String| format!("event {} of {}: {reason}", self.event_id, self.tenant_id);
        let payload: &serde_json::value::RawValue = serde_json::from_str(&self.payload)
            .map_err(|e| why(format!("payload is not JSON: {e}")))?;
        let ms = |v: u64, what: &str| {
            i64::try_from(v)
                .ok()
                .map(pitboss_model::Timestamp::from_millis)
                .filter(|t| t.to_rfc3339().is_some())
                .ok_or_else(|| why(format!("{what} {v} ms is out of range")))
        };
        let occurred_at = ms(self.occurred_at_ms, "occurred_at")?;
        let received_at = ms(self.received_at_ms, "received_at")?;
        let json = serde_json::to_vec(&Canonical {
            event_id: &self.event_id,
            tenant_id: &self.tenant_id,
            player_id: &self.player_id,
            session_id: Some(self.session_id.as_str()).filter(|s| !s.is_empty()),
            kind: &self.kind,
            occurred_at: occurred_at.to_rfc3339().unwrap_or_default(),
            schema_version: self.schema_version,
            payload,
        })
        .map_err(|e| why(e.to_string()))?;
        let mut event = pitboss_model::decode_event(&json).map_err(|v| why(v.to_string()))?;
        event.received_at = Some(received_at);
        event.late = self.late != 0;
        event.utc_offset_min = self.utc_offset_min.map(i32::from);
        Ok(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pitboss_bus::Position;
    use pitboss_model::{Money, Timestamp, encode_proto};

    fn bet() -> Event {
        Event {
            event_id: Some("0193735a-6b2e-7c41-9d3f-2a1b4c5d6e7f".into()),
            tenant_id: "acme".into(),
            player_id: "p1".into(),
            session_id: None,
            occurred_at: Timestamp::from_millis(1_795_870_800_123),
            received_at: Some(Timestamp::from_millis(1_795_870_801_000)),
            schema_version: 1,
            late: false,
            utc_offset_min: None,
            payload: Payload::BetPlaced(pitboss_model::BetPlaced {
                bet_id: "b1".into(),
                game_id: "slot-7".into(),
                round_id: None,
                stake: Money::new(250, "EUR"),
                odds: None,
                bet_type: None,
                channel: None,
                device_id: None,
                autoplay: false,
            }),
        }
    }

    #[test]
    fn a_bet_fills_its_columns_and_keeps_its_position() {
        let record = Record {
            partition: 3,
            position: Position::Offset(42),
            key: "acme:p1".into(),
            value: encode_proto(&bet()),
            timestamp_ms: 0,
            topic: "events".into(),
            headers: Default::default(),
        };
        let r = row("events", &record).expect("row");
        assert_eq!(
            (r.kind.as_str(), r.game_id.as_str()),
            ("bet_placed", "slot-7")
        );
        assert_eq!((r.amount_minor, r.currency.as_str()), (250, "EUR"));
        assert_eq!(
            (r.occurred_at, r.occurred_at_ms),
            (1_795_870_800, 1_795_870_800_123)
        );
        assert_eq!((r.bus_partition, r.bus_offset), (3, 42));
        assert!(r.payload.contains("\"bet_id\":\"b1\""), "{}", r.payload);
    }

    #[test]
    fn garbage_and_unstamped_events_are_poison() {
        let mut record = Record {
            partition: 0,
            position: Position::Offset(1),
            key: String::new(),
            value: vec![0xff, 0xff, 0xff],
            timestamp_ms: 0,
            topic: "events".into(),
            headers: Default::default(),
        };
        assert!(matches!(
            row("events", &record),
            Err(Poison::Undecodable { what: "event", .. })
        ));
        let mut e = bet();
        e.received_at = None;
        record.value = encode_proto(&e);
        assert_eq!(row("events", &record), Err(Poison::Unstamped));
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn a_stored_row_is_rebuilt_into_the_event() {
        let mut event = bet();
        event.session_id = Some("s-1".into());
        event.late = true;
        event.utc_offset_min = Some(-210);
        let row = from_event(event.clone(), "events", 0, 0).unwrap();
        let stored = StoredEvent {
            tenant_id: row.tenant_id,
            event_id: row.event_id,
            player_id: row.player_id,
            session_id: row.session_id,
            kind: row.kind,
            occurred_at_ms: row.occurred_at_ms,
            received_at_ms: row.received_at_ms,
            schema_version: row.schema_version,
            late: row.late,
            payload: row.payload,
            utc_offset_min: row.utc_offset_min,
            bus_topic: row.bus_topic,
            bus_partition: row.bus_partition,
            bus_offset: row.bus_offset,
        };
        assert_eq!(stored.to_event().unwrap(), event);
        let broken = StoredEvent {
            payload: "{\"bet_id\": 1".into(),
            ..stored.clone()
        };
        assert!(
            broken
                .to_event()
                .unwrap_err()
                .contains("payload is not JSON")
        );
        let wrong = StoredEvent {
            payload: "{}".into(),
            ..stored
        };
        let err = wrong.to_event().unwrap_err();
        assert!(
            err.starts_with("event 0193735a-6b2e-7c41-9d3f-2a1b4c5d6e7f of acme: "),
            "{err}"
        );
    }
}
