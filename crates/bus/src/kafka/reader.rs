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
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

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
        let mut c = config.client();
        config.apply_extra(&mut c);
        // What makes the reader leave nothing behind, whatever the extra options say.
        c.set("group.id", &group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("allow.auto.create.topics", "false")
            // A position the partition no longer has (retention) starts at the oldest record.
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false");
        let consumer: BaseConsumer = c.create().map_err(super::create_error)?;
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
        let thread = std::thread::Builder::new()
            .name("pitboss-kafka-read".into())
            .spawn(move || read_loop(consumer, &thread_topic, &tx, &thread_stop))
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

/// Polls until told to stop, handing records over in chunks; the client is destroyed on this
/// thread, off the async runtime.
fn read_loop(
    consumer: BaseConsumer,
    topic: &Arc<str>,
    tx: &mpsc::Sender<Vec<Record>>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::SeqCst) {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(m)) => {
                let mut chunk = Vec::with_capacity(POLL_CHUNK);
                chunk.push(record_of(&m, topic.clone()));
                drop(m);
                while chunk.len() < POLL_CHUNK {
                    match consumer.poll(Duration::ZERO) {
                        Some(Ok(m)) => chunk.push(record_of(&m, topic.clone())),
                        Some(Err(e)) => {
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
            Some(Err(e)) => tracing::warn!(error = %e, %topic, "kafka reader error"),
        }
    }
    drop(consumer);
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
