//! Reading the dedup window back from the bus when an ingest instance starts, so a client that
//! retries after a restart — or sends its retry to another instance — is answered `duplicate`
//! for the ids the bus holds from the last `dedup_window_secs` (docs/api.md, "Duplicates").
//!
//! Every record ingest publishes for a client-chosen id carries the `pitboss-client-id` header
//! with its tenant and received time in headers; only the `event_id` needs the protobuf: field
//! 1 of the event, found without decoding the rest.

use std::time::{Duration, Instant};

use pitboss_bus::{Bus, BusError, ReadFrom, header};

use crate::core::fingerprint;
use crate::dedup::DedupWindow;

/// What [`recall`] read back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recalled {
    /// Records read from the window's start to the end of each partition.
    pub records: u64,
    /// Client-chosen ids remembered.
    pub ids: u64,
}

/// Reads `topics` from `window` ago to where each partition ended when reading began, and
/// remembers every client-chosen id in `dedup` at the time the record was received. A topic
/// that does not exist yet holds nothing to recall.
pub async fn recall(
    bus: &dyn Bus,
    topics: &[String],
    dedup: &DedupWindow,
    window: Duration,
) -> Result<Recalled, BusError> {
    let started = Instant::now();
    let now_ms = pitboss_model::Timestamp::now().as_millis();
    let since = now_ms - i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
    let mut recalled = Recalled::default();
    for topic in topics {
        let mut reader = match bus.reader_all(topic, ReadFrom::Timestamp(since)).await {
            Ok(r) => r,
            Err(BusError::UnknownTopic(_)) => continue,
            Err(e) => return Err(e),
        };
        while !reader.caught_up() {
            for record in reader.poll(10_000, Duration::from_millis(200)).await? {
                recalled.records += 1;
                if record.headers.get(header::CLIENT_ID).is_none() {
                    continue;
                }
                let (Some(tenant), Some(at)) = (
                    record.headers.get_str(header::TENANT),
                    record.headers.get_i64(header::RECEIVED_AT),
                ) else {
                    continue;
                };
                if let Some(id) = event_id(&record.value) {
                    dedup.remember([fingerprint(tenant, id)], at);
                    recalled.ids += 1;
                }
            }
        }
    }
    tracing::info!(
        records = recalled.records,
        ids = recalled.ids,
        ms = started.elapsed().as_millis() as u64,
        "dedup window read back from the bus"
    );
    Ok(recalled)
}

/// `event_id` (field 1, a string) of a protobuf `pitboss.v1.Event`, if it is there.
fn event_id(value: &[u8]) -> Option<&str> {
    use prost::encoding::{WireType, decode_key, decode_varint};
    let mut buf = value;
    while !buf.is_empty() {
        let (tag, wire) = decode_key(&mut buf).ok()?;
        let len = match wire {
            WireType::LengthDelimited => usize::try_from(decode_varint(&mut buf).ok()?).ok()?,
            WireType::Varint => {
                decode_varint(&mut buf).ok()?;
                continue;
            }
            WireType::SixtyFourBit => 8,
            WireType::ThirtyTwoBit => 4,
            _ => return None,
        };
        let (field, rest) = (buf.get(..len)?, buf.get(len..)?);
        if tag == 1 && wire == WireType::LengthDelimited {
            return std::str::from_utf8(field).ok();
        }
        buf = rest;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_id_is_read_from_an_encoded_event_and_garbage_has_none() {
        let e: pitboss_model::Event = serde_json::from_value(serde_json::json!({
            "event_id": "0193735a-0000-7000-8000-000000000001", "tenant_id": "acme",
            "player_id": "p1", "type": "login", "occurred_at": "2026-12-03T10:00:00Z",
            "payload": {"success": true, "ip": "10.0.0.1"}
        }))
        .expect("an event");
        let value = pitboss_model::encode_proto(&e);
        assert_eq!(
            event_id(&value),
            Some("0193735a-0000-7000-8000-000000000001")
        );
        assert_eq!(event_id(b"\xff\xff\xff"), None);
        assert_eq!(event_id(b""), None);
    }
}
