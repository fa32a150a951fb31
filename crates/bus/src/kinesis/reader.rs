//! Reading shards: a cursor per shard (shard iterator, GetRecords, header envelopes opened),
//! shared by group members and by the ungrouped [`KinesisReader`], which uses shard iterators
//! and nothing else — no DynamoDB row, so nothing is left behind when it is dropped.
//!
//! Kinesis cannot say where a shard ends without reading it. A shard counts as caught up once
//! a GetRecords answer says nothing is left behind: `MillisBehindLatest == 0` **and** fewer
//! records than asked for. The second condition is for moto, which computes
//! `MillisBehindLatest` as the arrival-time difference between the newest record of the shard
//! and the last one returned, so an answer cut short by its limit reports 0 when the records
//! left arrived within the same millisecond; on AWS it costs at most one more call. A closed
//! shard read to its end (no next iterator) is caught up too.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::ShardIteratorType;
use tokio::time::Instant;

use super::{Shared, envelope, now_ms, sdk, unavailable};
use crate::{BusError, Partition, Position, ReadFrom, Reader, Record};

/// Most records one GetRecords call returns.
const MAX_GET_RECORDS: usize = 10_000;
/// How long a shard that answered with nothing is left alone (AWS allows 5 GetRecords calls
/// a second per shard).
const IDLE: Duration = Duration::from_millis(200);
/// How long a shard is left alone after GetRecords was throttled.
const THROTTLED: Duration = Duration::from_secs(1);

/// Where a cursor starts when it has delivered nothing yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Start {
    TrimHorizon,
    Latest,
    /// ms since the Unix epoch.
    Timestamp(i64),
    At(String),
    After(String),
}

/// Reads one shard from a start, in order.
#[derive(Debug)]
pub(super) struct ShardCursor {
    topic: Arc<str>,
    partition: Partition,
    shard_id: String,
    start: Start,
    /// Sequence number of the last record handed out.
    delivered: Option<String>,
    iterator: Option<String>,
    /// Do not call GetRecords before this instant (the shard was empty, or throttled).
    idle_until: Option<Instant>,
    /// When a `Latest` start took its first iterator (ms): if that iterator expires before any
    /// record came, reading resumes at this time rather than at the then newest record.
    latest_since: Option<i64>,
    /// The shard is closed and was read to its end.
    finished: bool,
    /// Set once an answer said nothing was left behind: the newest position seen then.
    end: Option<Option<String>>,
    /// The last GetRecords answer's `MillisBehindLatest`: how far behind the shard's newest
    /// record this cursor reads.
    behind_ms: Option<i64>,
}

impl ShardCursor {
    pub(super) fn new(
        topic: Arc<str>,
        partition: Partition,
        shard_id: String,
        start: Start,
    ) -> Self {
        ShardCursor {
            topic,
            partition,
            shard_id,
            start,
            delivered: None,
            iterator: None,
            idle_until: None,
            latest_since: None,
            finished: false,
            end: None,
            behind_ms: None,
        }
    }

    /// The stream it reads.
    pub(super) fn topic(&self) -> &Arc<str> {
        &self.topic
    }

    /// How far behind the shard's newest record its reads were at the last GetRecords (ms);
    /// 0 once the shard is closed and read to its end.
    pub(super) fn behind_ms(&self) -> Option<i64> {
        if self.finished {
            Some(0)
        } else {
            self.behind_ms
        }
    }

    /// Whether an answer has said nothing was left behind.
    pub(super) fn caught_up(&self) -> bool {
        self.end.is_some()
    }

    /// The newest position seen when the shard was first caught up (None: not caught up, or
    /// nothing seen).
    fn end_position(&self) -> Option<Position> {
        self.end.clone().flatten().map(Position::Sequence)
    }

    /// The newest record this cursor knows of: the last delivered, else the one an `After`
    /// start names.
    fn newest(&self) -> Option<&String> {
        self.delivered.as_ref().or(match &self.start {
            Start::After(seq) => Some(seq),
            _ => None,
        })
    }

    fn resting(&self, now: Instant) -> bool {
        self.finished || self.idle_until.is_some_and(|t| now < t)
    }

    /// A fresh iterator: right after the last delivered record, else at the start. None: the
    /// shard is closed and has nothing there.
    async fn new_iterator(&mut self, shared: &Shared) -> Result<Option<String>, BusError> {
        let req = shared
            .kinesis
            .get_shard_iterator()
            .stream_name(&*self.topic)
            .shard_id(&self.shard_id);
        let req = match (&self.delivered, &self.start) {
            (Some(seq), _) | (None, Start::After(seq)) => req
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(seq),
            (None, Start::At(seq)) => req
                .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
                .starting_sequence_number(seq),
            (None, Start::TrimHorizon) => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
            (None, Start::Timestamp(ms)) => req
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(DateTime::from_millis(*ms)),
            (None, Start::Latest) => match self.latest_since {
                Some(ms) => req
                    .shard_iterator_type(ShardIteratorType::AtTimestamp)
                    .timestamp(DateTime::from_millis(ms)),
                None => {
                    self.latest_since = Some(now_ms());
                    req.shard_iterator_type(ShardIteratorType::Latest)
                }
            },
        };
        match req.send().await {
            Ok(out) => Ok(out.shard_iterator().map(str::to_owned)),
            Err(e) => {
                let service = e.as_service_error();
                if service.is_some_and(|s| s.is_resource_not_found_exception()) {
                    Err(BusError::UnknownTopic(self.topic.to_string()))
                } else if service.is_some_and(|s| s.is_invalid_argument_exception()) {
                    Err(BusError::Config(format!(
                        "{} shard {}: {}",
                        self.topic,
                        self.partition,
                        sdk(e)
                    )))
                } else {
                    Err(unavailable(sdk(e)))
                }
            }
        }
    }

    /// Takes the iterator of a `Latest` start now, so that "latest" means when the reader
    /// opened or the lease was taken, not when the shard is first read. Other starts are
    /// anchored to a time or a position and take theirs when first read.
    pub(super) async fn prime(&mut self, shared: &Shared) -> Result<(), BusError> {
        if self.start == Start::Latest && self.iterator.is_none() && self.delivered.is_none() {
            match self.new_iterator(shared).await? {
                Some(it) => self.iterator = Some(it),
                None => self.finish(),
            }
        }
        Ok(())
    }

    /// One GetRecords call of at most `limit` records, unless the shard is resting.
    async fn fetch(&mut self, shared: &Shared, limit: usize) -> Result<Vec<Record>, BusError> {
        if self.resting(Instant::now()) {
            return Ok(Vec::new());
        }
        let iterator = match self.iterator.take() {
            Some(it) => it,
            None => match self.new_iterator(shared).await? {
                Some(it) => it,
                None => {
                    self.finish();
                    return Ok(Vec::new());
                }
            },
        };
        let limit = limit.clamp(1, MAX_GET_RECORDS);
        let got = match shared
            .kinesis
            .get_records()
            .shard_iterator(&iterator)
            .limit(limit as i32)
            .send()
            .await
        {
            Ok(got) => got,
            Err(e) => {
                let service = e.as_service_error();
                if service.is_some_and(|s| s.is_expired_iterator_exception()) {
                    return Ok(Vec::new()); // the next call takes a fresh one
                }
                // An iterator may be used again: keep it for the next call.
                self.iterator = Some(iterator);
                if service.is_some_and(|s| s.is_provisioned_throughput_exceeded_exception()) {
                    tracing::debug!(topic = %self.topic, shard = self.partition, "GetRecords throttled");
                    self.idle_until = Some(Instant::now() + THROTTLED);
                    return Ok(Vec::new());
                }
                return Err(unavailable(sdk(e)));
            }
        };
        let behind = got.millis_behind_latest;
        if behind.is_some() {
            self.behind_ms = behind;
        }
        self.iterator = got.next_shard_iterator;
        let mut out = Vec::with_capacity(got.records.len());
        for r in got.records {
            let (headers, value) = envelope::open(&self.topic, r.data.into_inner());
            out.push(Record {
                topic: self.topic.clone(),
                partition: self.partition,
                position: Position::Sequence(r.sequence_number.clone()),
                key: r.partition_key.unwrap_or_default(),
                value,
                timestamp_ms: r
                    .approximate_arrival_timestamp
                    .and_then(|t| t.to_millis().ok())
                    .unwrap_or(0),
                headers,
            });
            self.delivered = Some(r.sequence_number);
        }
        // An empty answer with records ahead (a gap in a sparse shard) is read on at once.
        self.idle_until =
            (out.is_empty() && behind.unwrap_or(0) == 0).then(|| Instant::now() + IDLE);
        if self.iterator.is_none() {
            self.finish();
        } else if behind == Some(0) && out.len() < limit && self.end.is_none() {
            self.end = Some(self.newest().cloned());
        }
        Ok(out)
    }

    fn finish(&mut self) {
        self.finished = true;
        if self.end.is_none() {
            self.end = Some(self.newest().cloned());
        }
    }
}

/// One round over `cursors`, starting with the `rotation`-th (so no shard starves), until
/// `max` records are in hand.
pub(super) async fn fetch_round(
    shared: &Shared,
    mut cursors: Vec<&mut ShardCursor>,
    rotation: usize,
    max: usize,
) -> Result<Vec<Record>, BusError> {
    if cursors.is_empty() {
        return Ok(Vec::new());
    }
    let len = cursors.len();
    cursors.rotate_left(rotation % len);
    let mut out = Vec::new();
    for cursor in cursors {
        if out.len() >= max {
            break;
        }
        out.extend(cursor.fetch(shared, max - out.len()).await?);
    }
    Ok(out)
}

/// When the earliest of these cursors may be read again (None: one may be read now).
pub(super) fn next_ready<'a>(
    cursors: impl IntoIterator<Item = &'a ShardCursor>,
) -> Option<Instant> {
    let now = Instant::now();
    let mut earliest: Option<Instant> = None;
    for c in cursors {
        if c.finished {
            continue;
        }
        match c.idle_until {
            Some(t) if t > now => earliest = Some(earliest.map_or(t, |e| e.min(t))),
            _ => return None,
        }
    }
    earliest
}

/// An ungrouped reader of chosen shards of one stream.
#[derive(Debug)]
pub struct KinesisReader {
    shared: Arc<Shared>,
    cursors: Vec<ShardCursor>,
    rotation: usize,
}

impl KinesisReader {
    /// Checks the stream and partitions (no call is made to read yet).
    pub(super) async fn open(
        shared: Arc<Shared>,
        topic: &str,
        starts: Vec<(Partition, ReadFrom)>,
    ) -> Result<Self, BusError> {
        if starts.is_empty() {
            return Err(BusError::Config(format!(
                "a reader of {topic} needs at least one partition"
            )));
        }
        let shards = shared.shard_ids(topic).await?;
        let name: Arc<str> = Arc::from(topic);
        let mut seen = BTreeSet::new();
        let mut cursors = Vec::with_capacity(starts.len());
        for (p, from) in starts {
            let Some(shard_id) = shards.get(p as usize) else {
                return Err(BusError::Config(format!(
                    "{topic} has {} shards: no partition {p}",
                    shards.len()
                )));
            };
            if !seen.insert(p) {
                return Err(BusError::Config(format!(
                    "partition {p} of {topic} is given twice"
                )));
            }
            let sequence = |position: Position| match position {
                Position::Sequence(s) => Ok(s),
                other @ Position::Offset(_) => Err(BusError::Config(format!(
                    "not a Kinesis sequence number: {other}"
                ))),
            };
            let start = match from {
                ReadFrom::Earliest => Start::TrimHorizon,
                ReadFrom::Latest => Start::Latest,
                ReadFrom::Timestamp(ms) => Start::Timestamp(ms),
                ReadFrom::At(pos) => Start::At(sequence(pos)?),
                ReadFrom::After(pos) => Start::After(sequence(pos)?),
            };
            cursors.push(ShardCursor::new(name.clone(), p, shard_id.clone(), start));
        }
        for cursor in &mut cursors {
            cursor.prime(&shared).await?;
        }
        Ok(KinesisReader {
            shared,
            cursors,
            rotation: 0,
        })
    }
}

#[async_trait]
impl Reader for KinesisReader {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, BusError> {
        let deadline = Instant::now() + wait;
        loop {
            let records = fetch_round(
                &self.shared,
                self.cursors.iter_mut().collect(),
                self.rotation,
                max.max(1),
            )
            .await?;
            self.rotation = self.rotation.wrapping_add(1);
            let now = Instant::now();
            if !records.is_empty() || now >= deadline {
                return Ok(records);
            }
            let wake = next_ready(&self.cursors)
                .unwrap_or(now)
                .max(now + Duration::from_millis(5))
                .min(deadline);
            tokio::time::sleep_until(wake).await;
        }
    }

    fn partitions(&self) -> Vec<Partition> {
        self.cursors.iter().map(|c| c.partition).collect()
    }

    fn end_positions(&self) -> BTreeMap<Partition, Option<Position>> {
        self.cursors
            .iter()
            .map(|c| (c.partition, c.end_position()))
            .collect()
    }

    fn caught_up(&self) -> bool {
        self.cursors.iter().all(ShardCursor::caught_up)
    }
}
