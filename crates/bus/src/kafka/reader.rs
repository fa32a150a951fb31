//! An ungrouped Kafka reader: chosen partitions of one topic from chosen offsets or times,
//! through `assign()`, polled on its own thread like the group member. It never subscribes,
//! stores or commits, so the broker keeps no group and no offsets for it.
//!
//! librdkafka refuses `assign()` without a `group.id` ("Requires a consumer with group.id
//! configured", `rd_kafka_assign0`), so each reader has a unique one under
//! [`KafkaConfig::reader_group_prefix`]; it only ever looks up the group's coordinator.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::revival::Revival;
use super::{
    KafkaConfig, POLL_CHUNK, TopicPart, kafka_error, offsets_at_time, partition_count_with,
    record_of, watermarks,
};
use crate::{BusError, Partition, Position, ReadFrom, Reader, Record};

/// Readers opened by this process (part of each reader's unique `group.id`).
static READERS: AtomicU64 = AtomicU64::new(0);

/// An ungrouped reader on a [`super::KafkaBus`] ([`crate::Bus::reader`]).
pub struct KafkaReader {
    topic: Arc<str>,
    group_id: String,
    events: mpsc::Receiver<Vec<Record>>,
    /// Records received from the poll thread but not yet handed out.
    stashed: Vec<Record>,
    /// Per partition: the offset of the next record to hand out.
    next: BTreeMap<Partition, i64>,
    /// Per partition: the high watermark when the reader opened.
    high: BTreeMap<Partition, i64>,
    /// Per partition: the newest record when the reader opened.
    ends: BTreeMap<Partition, Option<Position>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for KafkaReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaReader")
            .field("topic", &self.topic)
            .field("group_id", &self.group_id)
            .field("next", &self.next)
            .finish()
    }
}

/// A `group.id` no other client uses: prefix, process, time and a per-process counter.
fn unique_group_id(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = READERS.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{nanos}-{n}", std::process::id())
}

impl KafkaReader {
    /// Checks the partitions, resolves every start to an offset and starts reading (blocking:
    /// metadata and offset lookups).
    pub(super) fn open(
        config: &KafkaConfig,
        topic: &str,
        starts: Vec<(Partition, ReadFrom)>,
    ) -> Result<KafkaReader, BusError> {
        if starts.is_empty() {
            return Err(BusError::Config(format!(
                "a reader of {topic} needs at least one partition"
            )));
        }
        let distinct: BTreeSet<Partition> = starts.iter().map(|(p, _)| *p).collect();
        if distinct.len() != starts.len() {
            return Err(BusError::Config(format!(
                "a partition of {topic} is listed twice"
            )));
        }
        let group_id = unique_group_id(&config.reader_group_prefix);
        let consumer = client(config, &group_id)?;
        let timeout = config.request_timeout;

        let count = partition_count_with(&consumer, topic, timeout)?;
        if let Some(p) = distinct.iter().find(|p| **p >= count) {
            return Err(BusError::Config(format!(
                "{topic} has {count} partitions: there is no partition {p}"
            )));
        }
        let parts: Vec<TopicPart> = distinct
            .iter()
            .map(|p| (topic.to_owned(), *p as i32))
            .collect();
        // Watermarks before offsets for times: a time past the end starts at this end, so a
        // record stored between the two lookups is read, not skipped.
        let marks = watermarks(&consumer, &parts, timeout)?;
        let times: Vec<(TopicPart, i64)> = starts
            .iter()
            .filter_map(|(p, from)| match from {
                ReadFrom::Timestamp(ms) => Some(((topic.to_owned(), *p as i32), *ms)),
                _ => None,
            })
            .collect();
        let at_time = if times.is_empty() {
            BTreeMap::new()
        } else {
            offsets_at_time(&consumer, &times, timeout)?
        };

        let mut tpl = TopicPartitionList::with_capacity(starts.len());
        let mut next = BTreeMap::new();
        let mut high = BTreeMap::new();
        let mut starts_at = BTreeMap::new();
        let mut ends = BTreeMap::new();
        for (p, from) in starts {
            let tp = (topic.to_owned(), p as i32);
            let (low, hw) = marks[&tp];
            let start = match from {
                ReadFrom::Earliest => low,
                ReadFrom::Latest => hw,
                ReadFrom::Timestamp(_) => at_time.get(&tp).copied().flatten().unwrap_or(hw),
                ReadFrom::At(Position::Offset(o)) => o,
                ReadFrom::After(Position::Offset(o)) => o.saturating_add(1),
                ReadFrom::At(other) | ReadFrom::After(other) => {
                    return Err(BusError::Config(format!("not a Kafka offset: {other}")));
                }
            };
            // Outside what the partition holds (expired, or a position it never had): from the
            // oldest record, as Kafka's out-of-range reset does.
            let start = if (low..=hw).contains(&start) {
                start
            } else {
                low
            };
            tpl.add_partition_offset(topic, p as i32, Offset::Offset(start))
                .map_err(kafka_error)?;
            next.insert(p, start);
            starts_at.insert(p as i32, start);
            high.insert(p, hw);
            ends.insert(p, (hw > low).then(|| Position::Offset(hw - 1)));
        }
        consumer.assign(&tpl).map_err(kafka_error)?;

        let topic: Arc<str> = Arc::from(topic);
        // Chunks of up to POLL_CHUNK records, as for the group member.
        let (tx, rx) = mpsc::channel(64);
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let thread_topic = topic.clone();
        let revive = Revive {
            config: config.clone(),
            group_id: group_id.clone(),
            next: starts_at,
        };
        let thread = std::thread::Builder::new()
            .name("pitboss-kafka-read".into())
            .spawn(move || read_loop(consumer, revive, &thread_topic, &tx, &thread_stop))
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        Ok(KafkaReader {
            topic,
            group_id,
            events: rx,
            stashed: Vec::new(),
            next,
            high,
            ends,
            stop,
            thread: Some(thread),
        })
    }

    /// The `group.id` librdkafka needs for `assign()`; the broker never learns of this group.
    pub fn group_id(&self) -> &str {
        &self.group_id
    }

    /// Stops reading and waits until the librdkafka client is gone. Dropping the reader does
    /// the same without waiting.
    pub async fn close(mut self) -> Result<(), BusError> {
        let thread = self.stop_thread();
        super::blocking(move || {
            if let Some(t) = thread {
                t.join()
                    .map_err(|_| BusError::Unavailable("kafka reader thread panicked".into()))?;
            }
            Ok(())
        })
        .await
    }

    fn stop_thread(&mut self) -> Option<std::thread::JoinHandle<()>> {
        self.stop.store(true, Ordering::SeqCst);
        // The thread may be blocked handing over a chunk: closing the channel fails that send.
        self.events.close();
        self.thread.take()
    }
}

/// A reader's client settings: what makes it leave nothing behind, whatever the extra
/// options say.
fn client(config: &KafkaConfig, group_id: &str) -> Result<BaseConsumer, BusError> {
    let mut c = config.client();
    config.apply_extra(&mut c);
    c.set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("allow.auto.create.topics", "false")
        // A position the partition no longer has (retention) starts at the oldest record.
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    c.create().map_err(super::create_error)
}

/// What the poll thread needs to replace its client: the settings, and per partition the
/// offset of the next record to read.
struct Revive {
    config: KafkaConfig,
    group_id: String,
    next: BTreeMap<i32, i64>,
}

/// How long a reader may go without a record after an error before its client is replaced
/// ([`super::revival`]): a gateway's feed that stopped after a broker stall delivered nothing
/// for ten minutes, with nothing to say so.
const REPLACE_AFTER: Duration = Duration::from_secs(30);

/// Polls until told to stop, handing records over in chunks; the client is destroyed on this
/// thread, off the async runtime. A client that reported an error and then read nothing for
/// [`REPLACE_AFTER`] is replaced by a new one assigned where the old one got to (once per
/// span: a quiet topic after a passing error costs one new client).
fn read_loop(
    mut consumer: BaseConsumer,
    mut revive: Revive,
    topic: &Arc<str>,
    tx: &mpsc::Sender<Vec<Record>>,
    stop: &AtomicBool,
) {
    let mut revival = Revival::new(REPLACE_AFTER);
    while !stop.load(Ordering::SeqCst) {
        let now = std::time::Instant::now();
        if revival.due(now) {
            revival.replaced(now);
            match replace(&revive, topic) {
                Ok(fresh) => {
                    let old = std::mem::replace(&mut consumer, fresh);
                    // Its destruction waits for its broker threads: not on this loop.
                    let _ = std::thread::Builder::new()
                        .name("pitboss-kafka-drop".into())
                        .spawn(move || drop(old));
                    metrics::counter!("pitboss_bus_clients_replaced_total", "client" => "reader")
                        .increment(1);
                    tracing::warn!(%topic, "a Kafka reader read nothing for {REPLACE_AFTER:?} after an error: its client was replaced by a new one, from where it got to");
                }
                Err(e) => {
                    tracing::warn!(%topic, error = %e, "a new Kafka reader client could not be made")
                }
            }
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(m)) => {
                revival.ok();
                let mut chunk = Vec::with_capacity(POLL_CHUNK);
                revive.next.insert(m.partition(), m.offset() + 1);
                chunk.push(record_of(&m, topic.clone()));
                drop(m);
                while chunk.len() < POLL_CHUNK {
                    match consumer.poll(Duration::ZERO) {
                        Some(Ok(m)) => {
                            revive.next.insert(m.partition(), m.offset() + 1);
                            chunk.push(record_of(&m, topic.clone()));
                        }
                        Some(Err(e)) => {
                            revival.failed(std::time::Instant::now());
                            metrics::counter!("pitboss_bus_reader_errors_total").increment(1);
                            tracing::warn!(error = %e, %topic, "kafka reader error");
                            break;
                        }
                        None => break,
                    }
                }
                if tx.blocking_send(chunk).is_err() {
                    break;
                }
            }
            Some(Err(e)) => {
                revival.failed(std::time::Instant::now());
                metrics::counter!("pitboss_bus_reader_errors_total").increment(1);
                tracing::warn!(error = %e, %topic, "kafka reader error");
            }
        }
    }
    drop(consumer);
}

/// A new client for the reader, assigned at the next offset of each partition.
fn replace(revive: &Revive, topic: &str) -> Result<BaseConsumer, BusError> {
    let consumer = client(&revive.config, &revive.group_id)?;
    let mut tpl = TopicPartitionList::with_capacity(revive.next.len());
    for (p, o) in &revive.next {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*o))
            .map_err(kafka_error)?;
    }
    consumer.assign(&tpl).map_err(kafka_error)?;
    Ok(consumer)
}

#[async_trait]
impl Reader for KafkaReader {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, BusError> {
        let max = max.max(1);
        if self.stashed.is_empty() {
            match tokio::time::timeout(wait, self.events.recv()).await {
                Ok(Some(chunk)) => self.stashed = chunk,
                Ok(None) => return Err(BusError::Unavailable("kafka reader stopped".into())),
                Err(_) => return Ok(Vec::new()),
            }
        }
        while self.stashed.len() < max {
            match self.events.try_recv() {
                Ok(mut chunk) => self.stashed.append(&mut chunk),
                Err(_) => break,
            }
        }
        let out = if self.stashed.len() > max {
            let rest = self.stashed.split_off(max);
            std::mem::replace(&mut self.stashed, rest)
        } else {
            std::mem::take(&mut self.stashed)
        };
        for r in &out {
            if let (Position::Offset(o), Some(next)) =
                (&r.position, self.next.get_mut(&r.partition))
            {
                *next = (*next).max(o + 1);
            }
        }
        Ok(out)
    }

    fn partitions(&self) -> Vec<Partition> {
        self.high.keys().copied().collect()
    }

    fn end_positions(&self) -> BTreeMap<Partition, Option<Position>> {
        self.ends.clone()
    }

    /// Every partition's next offset reached its high watermark at open. (The topics Pitboss
    /// writes are not transactional: the offset before the watermark is a record, never a
    /// transaction marker the reader would not see.)
    fn caught_up(&self) -> bool {
        self.high
            .iter()
            .all(|(p, hw)| self.next.get(p).is_some_and(|n| n >= hw))
    }
}

impl Drop for KafkaReader {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{Bus as _, OutRecord};

    /// The client that replaces a stuck one (see [`read_loop`]) reads on from exactly where the
    /// old one got to in each partition: nothing skipped, nothing read twice. On the test
    /// broker.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replacement_client_reads_on_from_where_the_old_one_got_to() {
        let config = KafkaConfig::new(pitboss_testkit::kafka());
        let bus = super::super::KafkaBus::new(config.clone()).unwrap();
        let topic = pitboss_testkit::unique_name("revive");
        bus.create_topic(&topic, 2).await.unwrap();
        for p in 0..2 {
            let records = (0..5)
                .map(|i| OutRecord::new(format!("k{p}"), format!("{p}-{i}")))
                .collect();
            bus.publisher().publish(&topic, records).await.unwrap();
        }
        // Where the records went (their keys decide): read everything once.
        let revive = |next: BTreeMap<i32, i64>| Revive {
            config: config.clone(),
            group_id: unique_group_id("pitboss-test-revive"),
            next,
        };
        let read_all = |consumer: BaseConsumer, want: usize| {
            let mut got: Vec<(i32, i64)> = Vec::new();
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while got.len() < want && std::time::Instant::now() < deadline {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                    got.push((m.partition(), m.offset()));
                }
            }
            // Nothing more comes.
            let extra = consumer
                .poll(Duration::from_millis(500))
                .and_then(Result::ok)
                .is_some();
            (got, extra)
        };
        let all = tokio::task::spawn_blocking({
            let fresh = replace(&revive(BTreeMap::from([(0, 0), (1, 0)])), &topic).unwrap();
            move || read_all(fresh, 10)
        })
        .await
        .unwrap();
        assert_eq!(all.0.len(), 10, "{all:?}");
        let ends: BTreeMap<i32, i64> = all.0.iter().fold(BTreeMap::new(), |mut m, (p, o)| {
            let e = m.entry(*p).or_insert(0);
            *e = (*e).max(o + 1);
            m
        });
        // A client that had read the first two records of each partition is replaced.
        let from: BTreeMap<i32, i64> = ends.keys().map(|p| (*p, 2)).collect();
        let (got, extra) = tokio::task::spawn_blocking({
            let fresh = replace(&revive(from.clone()), &topic).unwrap();
            let want = ends.values().map(|e| (*e - 2) as usize).sum();
            move || read_all(fresh, want)
        })
        .await
        .unwrap();
        let mut want: Vec<(i32, i64)> = ends
            .iter()
            .flat_map(|(p, e)| (2..*e).map(move |o| (*p, o)))
            .collect();
        let mut got = got;
        want.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, want);
        assert!(!extra, "read past the end");
    }
}
