//! The rules engine on AWS Lambda, invoked by an event source mapping with batches of the
//! `events` stream (Kinesis) or topic (MSK, self-managed Kafka). **Stateless between
//! invocations**: the engine's state lives in an external store, one item per unit
//! ([`crate::Unit`]: one rule's window of one key, one placed bet, one player's hits).
//!
//! Per invocation:
//! 1. the batch is put in the canonical order the streaming engine uses (each partition's
//!    records in their order, partitions merged by bus time); records the engine cannot read go
//!    to the dead-letter topic;
//! 2. the units the batch's events read are loaded (DynamoDB: `BatchGetItem`, strongly
//!    consistent, 100 a call) into a fresh engine;
//! 3. the events are evaluated with the engine's clock at each record's bus time, as the
//!    streaming engine does, so a retry raises the same alerts and pushes with the same ids;
//! 4. the alerts and pushes are published (`alerts`, `pushes`);
//! 5. the units that changed are written back, each **conditional on the version loaded**. If
//!    another invocation wrote one in between (two shards' players on one device, say), the
//!    batch is evaluated again from freshly loaded units (up to [`ATTEMPTS`] times); events
//!    already in a window count once, so nothing is counted twice.
//!
//! Publishing before writing is what makes a crash safe: a function that dies after publishing
//! and before writing is retried with the old units and publishes the same ids again (the
//! processor and the gateway keep one per id); writing first would lose the alerts of a crash
//! in between. A failure (the store or the bus unavailable past the deadline) reports the first
//! record of each partition as failed (`batchItemFailures`), so Lambda retries from there.

pub mod dynamo;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pitboss_bus::{Partition, Position, Publisher, Record};
use pitboss_model::Timestamp;
use pitboss_model::live::LiveMessage;
use serde_json::{Value, json};

use crate::stream::{canonical_order, dead_letter, output_records, publish};
use crate::{Engine, Output, RuleSet, Unit};

/// Evaluations of one batch before it is reported failed when its units keep changing under it.
pub const ATTEMPTS: usize = 4;

/// A unit as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Incremented by every write; a write is conditional on the version it read.
    pub version: u64,
    pub bytes: Vec<u8>,
}

/// A write of one unit, conditional on `expected` (`None`: the unit must not exist).
#[derive(Debug, Clone)]
pub struct Write {
    pub name: String,
    pub expected: Option<u64>,
    /// `None` deletes the unit.
    pub value: Option<Vec<u8>>,
    /// When the store may forget the unit (seconds since the epoch; DynamoDB TTL).
    pub expires_at_s: i64,
}

/// The store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    /// Units changed since they were loaded (another invocation wrote them).
    #[error("{0} unit(s) changed since they were loaded")]
    Conflict(usize),
}

/// Where the units live between invocations.
#[async_trait]
pub trait UnitStore: Send + Sync {
    /// The units of these names that exist.
    async fn load(&self, names: &[String]) -> Result<HashMap<String, Stored>, StoreError>;
    /// Writes every unit whose version is still the expected one; reports the others as a
    /// [`StoreError::Conflict`] after trying them all.
    async fn save(&self, writes: Vec<Write>) -> Result<(), StoreError>;
}

/// The topics the function publishes to.
#[derive(Debug, Clone)]
pub struct Topics {
    pub alerts: String,
    pub pushes: String,
    pub dead_letter: String,
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            alerts: pitboss_model::live::Alert::TOPIC.into(),
            pushes: pitboss_model::live::Push::TOPIC.into(),
            dead_letter: "antifraud_dead_letter".into(),
        }
    }
}

/// What one batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchStats {
    pub events: usize,
    pub alerts: usize,
    pub pushes: usize,
    pub dead_lettered: usize,
    /// Units read from the store, and written back.
    pub loaded: usize,
    pub written: usize,
    pub attempts: usize,
}

/// Why a batch failed.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("publishing: {0}")]
    Bus(String),
    #[error("engine: {0}")]
    Engine(#[from] crate::AntifraudError),
    #[error("the batch's units kept changing under it ({ATTEMPTS} attempts)")]
    Contended,
}

/// The function: a rule set, a unit store and a publisher.
pub struct Function {
    pub set: RuleSet,
    pub store: Arc<dyn UnitStore>,
    pub publisher: Arc<dyn Publisher>,
    pub topics: Topics,
}

impl std::fmt::Debug for Function {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Function")
            .field("rules", &self.set.rules.len())
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl Function {
    /// Evaluates one batch (any order; it is put in canonical order here).
    pub async fn handle(&self, records: Vec<Record>) -> Result<BatchStats, BatchError> {
        let records = canonical_order(records);
        let mut stats = BatchStats::default();
        let mut events = Vec::with_capacity(records.len());
        let mut dead = Vec::new();
        for r in &records {
            let reason = match pitboss_model::decode_proto(&r.value) {
                Ok(e) => match uuid::Uuid::try_parse(e.event_id.as_deref().unwrap_or("")) {
                    Ok(_) => {
                        events.push((e, Timestamp::from_millis(r.timestamp_ms)));
                        None
                    }
                    Err(_) => Some("the event has no UUID event_id".to_owned()),
                },
                Err(v) => Some(format!("undecodable event: {v}")),
            };
            if let Some(reason) = reason {
                dead.push(dead_letter(r, &reason));
            }
        }
        stats.events = events.len();
        stats.dead_lettered = dead.len();
        let backoff = (Duration::from_millis(50), Duration::from_secs(2));
        publish(&self.publisher, &self.topics.dead_letter, dead, backoff)
            .await
            .map_err(|e| BatchError::Bus(e.to_string()))?;
        // The first attempt's engine also says which units the batch reads.
        let mut engine = Engine::new(self.set.clone());
        let mut units = Vec::new();
        for (e, _) in &events {
            engine.units_for(e, &mut units);
        }
        units.sort();
        units.dedup();
        let names: Vec<String> = units.iter().map(Unit::name).collect();
        let mut out = Output::default();
        for attempt in 1..=ATTEMPTS {
            stats.attempts = attempt;
            let loaded = self.store.load(&names).await?;
            stats.loaded = loaded.len();
            if attempt > 1 {
                engine = Engine::new(self.set.clone());
            }
            for (unit, name) in units.iter().zip(&names) {
                // Empty: expired or incomplete in the store; the key starts empty.
                if let Some(s) = loaded.get(name).filter(|s| !s.bytes.is_empty())
                    && let Err(e) = engine.load_unit(unit, &s.bytes)
                {
                    // Unreadable (another build's format): the key starts empty and the write
                    // below replaces it.
                    tracing::warn!(unit = %name, error = %e, "unit not loaded");
                }
            }
            engine.track_changes_from_here();
            // The batch's units are written all or nothing: a bet it forgets goes with it.
            engine.forget_bets_at_once();
            out.clear();
            for (e, now) in &events {
                engine.process(e, *now, &mut out)?;
            }
            let (alerts, pushes) = output_records(&mut out, Timestamp::now());
            stats.alerts = alerts.len();
            stats.pushes = pushes.len();
            tokio::try_join!(
                publish(&self.publisher, &self.topics.alerts, alerts, backoff),
                publish(&self.publisher, &self.topics.pushes, pushes, backoff),
            )
            .map_err(|e| BatchError::Bus(e.to_string()))?;
            let changes = engine.take_changes()?;
            let writes: Vec<Write> = changes
                .units
                .into_iter()
                .filter_map(|c| {
                    let name = c.unit.name();
                    let expected = loaded.get(&name).map(|s| s.version);
                    // A unit that was never stored and is gone again needs no write.
                    if c.value.is_none() && expected.is_none() {
                        return None;
                    }
                    Some(Write {
                        name,
                        expected,
                        value: c.value,
                        // Engine time is bus time; a day's margin for late redeliveries.
                        expires_at_s: c.expires_at_ms / 1000 + 86_400,
                    })
                })
                .collect();
            stats.written = writes.len();
            match self.store.save(writes).await {
                Ok(()) => {
                    metrics::counter!("pitboss_antifraud_events_total")
                        .increment(stats.events as u64);
                    metrics::counter!("pitboss_antifraud_alerts_total")
                        .increment(stats.alerts as u64);
                    metrics::counter!("pitboss_antifraud_pushes_total")
                        .increment(stats.pushes as u64);
                    return Ok(stats);
                }
                Err(StoreError::Conflict(n)) => {
                    tracing::info!(
                        conflicts = n,
                        attempt,
                        "units changed by another invocation; evaluating the batch again"
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(BatchError::Contended)
    }
}

/// One record of an invocation, and how the event source names it in `batchItemFailures`.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub records: Vec<Record>,
    /// Per record (same order): its item identifier.
    pub ids: Vec<Value>,
}

/// The event could not be read as a Kinesis or Kafka batch.
#[derive(Debug, thiserror::Error)]
#[error("not a Kinesis or Kafka event: {0}")]
pub struct EventShapeError(pub String);

fn shard_number(shard: &str) -> Partition {
    shard
        .rsplit('-')
        .next()
        .and_then(|n| n.parse::<u64>().ok())
        .map_or(0, |n| n as Partition)
}

/// Each Kinesis record's `approximateArrivalTimestamp` (seconds since the epoch, a JSON number
/// or a string) in milliseconds: rounded to the microsecond (what an `f64` of today's epoch
/// seconds resolves), then truncated to the millisecond; the field is then written
/// back as whole seconds for the event types' own parser. That parser reads the digits after
/// the point as milliseconds whatever their count: `1700321084.47` (AWS's JSON drops trailing
/// zeros: .470) read as 47 ms, and six digits (microseconds, as an emulator's Python
/// `datetime.timestamp()` can write) failed the whole batch.
fn arrival_millis(event: &mut Value) -> Result<Vec<i64>, EventShapeError> {
    let Some(records) = event.get_mut("Records").and_then(Value::as_array_mut) else {
        return Ok(Vec::new());
    };
    records
        .iter_mut()
        .enumerate()
        .map(|(i, r)| {
            let Some(at) = r.pointer_mut("/kinesis/approximateArrivalTimestamp") else {
                // Left to the event types' parser, which names the missing field.
                return Ok(0);
            };
            let seconds = match &*at {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.trim().parse::<f64>().ok(),
                _ => None,
            }
            .filter(|x| x.is_finite() && (0.0..1e12).contains(x))
            .ok_or_else(|| {
                EventShapeError(format!(
                    "Records[{i}].kinesis.approximateArrivalTimestamp: {at} is not a time in seconds since the epoch"
                ))
            })?;
            // Microseconds first, rounded (1700321084.47 is 1700321084.4699999… as a
            // binary fraction), then truncated to milliseconds.
            let micros = (seconds * 1e6).round() as i64;
            *at = Value::from(micros.div_euclid(1_000_000));
            Ok(micros.div_euclid(1000))
        })
        .collect()
}

/// Reads a Kinesis (`Records`, `aws:kinesis`) or Kafka (`records` by topic-partition,
/// `aws:kafka` / `SelfManagedKafka`) event into bus records.
pub fn parse_event(event: Value) -> Result<Invocation, EventShapeError> {
    use base64::Engine as _;
    let kinesis = event
        .get("Records")
        .and_then(Value::as_array)
        .is_some_and(|r| {
            r.first()
                .and_then(|x| x.get("eventSource"))
                .and_then(Value::as_str)
                == Some("aws:kinesis")
        });
    let mut records = Vec::new();
    let mut ids = Vec::new();
    if kinesis {
        let mut event = event;
        let arrivals = arrival_millis(&mut event)?;
        let ev: aws_lambda_events::event::kinesis::KinesisEvent =
            serde_json::from_value(event).map_err(|e| EventShapeError(e.to_string()))?;
        for (r, arrived_ms) in ev.records.into_iter().zip(arrivals) {
            let stream = r
                .event_source_arn
                .as_deref()
                .and_then(|a| a.rsplit('/').next())
                .unwrap_or("events")
                .to_owned();
            // eventID: "shardId-000000000003:4959…" — the shard, then the sequence number.
            let shard = r
                .event_id
                .as_deref()
                .and_then(|id| id.split(':').next())
                .map_or(0, shard_number);
            let topic: Arc<str> = Arc::from(stream.as_str());
            let (headers, value) = pitboss_bus::kinesis::envelope::open(&stream, r.kinesis.data.0);
            ids.push(json!(r.kinesis.sequence_number));
            records.push(Record {
                topic,
                partition: shard,
                position: Position::Sequence(r.kinesis.sequence_number),
                key: r.kinesis.partition_key,
                value,
                timestamp_ms: arrived_ms,
                headers,
            });
        }
        return Ok(Invocation { records, ids });
    }
    let source = event.get("eventSource").and_then(Value::as_str);
    if !matches!(source, Some("aws:kafka" | "SelfManagedKafka")) {
        return Err(EventShapeError(format!(
            "eventSource {:?}",
            source.unwrap_or("(none)")
        )));
    }
    let ev: aws_lambda_events::event::kafka::KafkaEvent =
        serde_json::from_value(event).map_err(|e| EventShapeError(e.to_string()))?;
    let mut batches: Vec<_> = ev.records.into_iter().collect();
    batches.sort_by(|a, b| a.0.cmp(&b.0));
    for (topic_partition, rs) in batches {
        for r in rs {
            let topic = r.topic.clone().unwrap_or_else(|| {
                topic_partition
                    .rsplit_once('-')
                    .map_or(topic_partition.clone(), |(t, _)| t.to_owned())
            });
            // A value that is not base64 stays as its text: it then fails to decode as an
            // event and goes to the dead-letter topic with the decoder's reason.
            let value = r.value.as_deref().map_or_else(Vec::new, |v| {
                base64::engine::general_purpose::STANDARD
                    .decode(v)
                    .unwrap_or_else(|_| v.as_bytes().to_vec())
            });
            let key = r
                .key
                .as_deref()
                .and_then(|k| base64::engine::general_purpose::STANDARD.decode(k).ok())
                .map(|k| String::from_utf8_lossy(&k).into_owned())
                .unwrap_or_default();
            ids.push(json!({"partition": topic_partition, "offset": r.offset}));
            records.push(Record {
                topic: Arc::from(topic.as_str()),
                partition: Partition::try_from(r.partition).unwrap_or(0),
                position: Position::Offset(r.offset),
                key,
                value,
                timestamp_ms: r.timestamp.0.timestamp_millis(),
                headers: Default::default(),
            });
        }
    }
    Ok(Invocation { records, ids })
}

/// The function's answer: no failures, or the first record of each partition (Lambda retries
/// each partition from there).
pub fn response(inv: &Invocation, failed: bool) -> Value {
    if !failed {
        return json!({"batchItemFailures": []});
    }
    let mut first: Vec<(&Arc<str>, Partition, &Value)> = Vec::new();
    for (r, id) in inv.records.iter().zip(&inv.ids) {
        if !first
            .iter()
            .any(|(t, p, _)| **t == r.topic && *p == r.partition)
        {
            first.push((&r.topic, r.partition, id));
        }
    }
    let failures: Vec<Value> = first
        .into_iter()
        .map(|(_, _, id)| json!({"itemIdentifier": id}))
        .collect();
    json!({"batchItemFailures": failures})
}

#[cfg(test)]
mod tests;

/// Lambda events built from bus records, in the shapes AWS delivers (the fixtures in
/// `functions/antifraud/fixtures/`), for tests and benchmarks.
pub mod events {
    use base64::Engine as _;
    use serde_json::{Value, json};

    fn fixture(name: &str) -> Value {
        let text = match name {
            "kinesis" => include_str!("../../fixtures/kinesis-event.json"),
            _ => include_str!("../../fixtures/msk-event.json"),
        };
        serde_json::from_str(text).unwrap_or(Value::Null)
    }

    /// A Kinesis event of stream `stream`, shard `shard`: per record its data (the bus's
    /// envelope is added when there are headers), sequence number and arrival time (ms).
    pub fn kinesis(stream: &str, shard: u32, records: &[(Vec<u8>, String, i64)]) -> Value {
        let template = fixture("kinesis")["Records"][0].clone();
        let out: Vec<Value> = records
            .iter()
            .map(|(data, seq, at)| {
                let mut r = template.clone();
                r["kinesis"]["data"] = base64::engine::general_purpose::STANDARD
                    .encode(pitboss_bus::kinesis::envelope::encode(
                        &pitboss_bus::Headers::new(),
                        data.clone(),
                    ))
                    .into();
                r["kinesis"]["sequenceNumber"] = seq.clone().into();
                r["kinesis"]["approximateArrivalTimestamp"] = json!(*at as f64 / 1000.0);
                r["eventID"] = format!("shardId-{shard:012}:{seq}").into();
                r["eventSourceARN"] =
                    format!("arn:aws:kinesis:eu-west-1:123456789012:stream/{stream}").into();
                r
            })
            .collect();
        json!({ "Records": out })
    }

    /// An MSK event: per record its topic, partition, offset, value and timestamp (ms).
    pub fn kafka(records: &[(String, u32, i64, Vec<u8>, i64)]) -> Value {
        let mut event = fixture("kafka");
        let template = event["records"]["events-0"][0].clone();
        let mut by_tp = serde_json::Map::new();
        for (topic, partition, offset, value, at) in records {
            let mut r = template.clone();
            r["topic"] = topic.clone().into();
            r["partition"] = (*partition).into();
            r["offset"] = (*offset).into();
            r["timestamp"] = (*at).into();
            r["value"] = base64::engine::general_purpose::STANDARD
                .encode(value)
                .into();
            let list = by_tp
                .entry(format!("{topic}-{partition}"))
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(a) = list {
                a.push(r);
            }
        }
        event["records"] = Value::Object(by_tp);
        event
    }
}
