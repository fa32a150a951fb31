//! A Kafka consumer-group member: librdkafka polled on a dedicated thread, records handed over
//! in chunks through a bounded channel, start offsets chosen in the rebalance callback, and
//! the revoke handshake (hand `Revoking` to the application, wait until it stored its offsets,
//! commit, and only then let the partitions go).
//!
//! Without companions the member uses the cooperative-sticky assignor. With companions it
//! subscribes to the topic and every companion with the range assignor, which gives a member
//! the same partition indexes of every topic of equal partition count; range is eager, so a
//! rebalance revokes everything and assigns anew (the same handshake applies).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, RebalanceProtocol,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::{
    KafkaConfig, POLL_CHUNK, TopicPart, kafka_error, record_of, start_offsets_at_time, watermarks,
};
use crate::{BusError, Consumer, ConsumerConfig, Delivery, Partition, Position, Record, StartFrom};

#[derive(Debug, Default)]
struct Flags {
    /// The poll thread must stop.
    stop: AtomicBool,
    /// The consumer is being dropped without close: commit nothing on the way out.
    abandon: AtomicBool,
}

enum Event {
    Records(Vec<Record>),
    Assigned(Vec<Partition>),
    Revoking(Vec<Partition>, std::sync::mpsc::Sender<()>),
}

pub(super) struct Ctx {
    events: mpsc::Sender<Event>,
    /// Records polled but not yet handed over (see `poll_loop`).
    staged: std::sync::Mutex<Vec<Record>>,
    revoke_timeout: Duration,
    /// The topic first, then its companions.
    topics: Vec<Arc<str>>,
    /// The consumer group (a label of the lag gauge: a process may hold members of several).
    group: Arc<str>,
    start: StartFrom,
    request_timeout: Duration,
    flags: Arc<Flags>,
    /// The partitions whose lag this member reported (set to 0 once they are no longer its).
    lag_reported: std::sync::Mutex<std::collections::HashSet<(Arc<str>, i32)>>,
}

impl Ctx {
    /// Adds a polled record to the chunk; returns the chunk's length.
    fn stage(&self, m: &rdkafka::message::BorrowedMessage<'_>) -> usize {
        let topic = self.topic_of(rdkafka::Message::topic(m));
        let mut staged = self
            .staged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        staged.push(record_of(m, topic));
        staged.len()
    }

    /// The shared name of a subscribed topic (records carry it without a copy each).
    fn topic_of(&self, name: &str) -> Arc<str> {
        self.topics
            .iter()
            .find(|t| &***t == name)
            .cloned()
            .unwrap_or_else(|| Arc::from(name))
    }

    /// Hands the staged chunk to the consumer; false when the consumer is gone.
    fn send_staged(&self) -> bool {
        let chunk = std::mem::take(
            &mut *self
                .staged
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        chunk.is_empty() || self.events.blocking_send(Event::Records(chunk)).is_ok()
    }

    /// The partition indexes in `tpl`, once each whatever the number of topics.
    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<Partition> {
        tpl.elements()
            .iter()
            .filter(|e| self.topics.iter().any(|t| &**t == e.topic()))
            .map(|e| e.partition() as Partition)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// Sets where each newly assigned partition starts, as `self.start` says. Lookups that may
    /// pass later (broker unreachable) are retried until they succeed or the consumer stops:
    /// assigning from anywhere else would skip or replay records. One that cannot (the topic
    /// is gone) leaves the partitions at the group's commit.
    ///
    /// Returns the starts to commit once assigned: those the option chose (a time, the end)
    /// in partitions the group never committed. Else a member started at the commit later (a
    /// restart without `--start-at`) would read such a partition from its earliest record if
    /// no record came there in between (nothing processed, nothing committed).
    fn set_start(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &mut TopicPartitionList,
    ) -> BTreeMap<TopicPart, i64> {
        // A member joining a cooperative group is first assigned nothing.
        if tpl.count() == 0 {
            return BTreeMap::new();
        }
        let parts: Vec<TopicPart> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        let mut backoff = Duration::from_millis(100);
        loop {
            let offsets = match self.start {
                StartFrom::Committed => return BTreeMap::new(),
                StartFrom::Earliest => Ok(parts
                    .iter()
                    .map(|tp| (tp.clone(), Offset::Beginning))
                    .collect::<BTreeMap<_, _>>()),
                // The end now, not when fetching starts: records published once `Assigned` was
                // delivered are read.
                StartFrom::Latest => watermarks(consumer, &parts, self.request_timeout).map(|m| {
                    m.into_iter()
                        .map(|(tp, (_, high))| (tp, Offset::Offset(high)))
                        .collect()
                }),
                StartFrom::Timestamp(ms) => {
                    start_offsets_at_time(consumer, &parts, ms, self.request_timeout).map(|m| {
                        m.into_iter()
                            .map(|(tp, o)| (tp, Offset::Offset(o)))
                            .collect()
                    })
                }
                // The partitions the group never committed start at the time; the others stay
                // at the commit (left unset in the assignment).
                StartFrom::CommittedOrTimestamp(ms) => {
                    uncommitted(consumer, tpl, self.request_timeout).and_then(|fresh| {
                        if fresh.is_empty() {
                            return Ok(BTreeMap::new());
                        }
                        start_offsets_at_time(consumer, &fresh, ms, self.request_timeout).map(|m| {
                            m.into_iter()
                                .map(|(tp, o)| (tp, Offset::Offset(o)))
                                .collect()
                        })
                    })
                }
            };
            match offsets {
                Ok(offsets) => {
                    let mut keep = BTreeMap::new();
                    for ((topic, p), offset) in offsets {
                        if let Err(e) = tpl.set_partition_offset(&topic, p, offset) {
                            tracing::error!(error = %e, topic, partition = p, "cannot set the start offset");
                        } else if let Offset::Offset(o) = offset {
                            keep.insert((topic, p), o);
                        }
                    }
                    // A time or the end in a partition the group committed: the commit stays
                    // (Committed-or-a-time only looked up partitions without one).
                    if !keep.is_empty()
                        && matches!(self.start, StartFrom::Latest | StartFrom::Timestamp(_))
                    {
                        match uncommitted(consumer, tpl, self.request_timeout) {
                            Ok(fresh) => keep.retain(|tp, _| fresh.contains(tp)),
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot tell which partitions the group committed; their starts are not committed at once");
                                keep.clear();
                            }
                        }
                    }
                    return keep;
                }
                Err(e) if self.flags.stop.load(Ordering::SeqCst) => {
                    tracing::debug!(error = %e, "start offsets not looked up: consumer closing");
                    return BTreeMap::new();
                }
                // Committed-or-a-time: the fallback, a new group's earliest record, is what
                // the time is there to prevent (the retention evaluated again): keep trying.
                Err(e)
                    if !e.is_retryable()
                        && !matches!(self.start, StartFrom::CommittedOrTimestamp(_)) =>
                {
                    tracing::error!(error = %e, start = ?self.start, "cannot look up start offsets; starting at the group's commit");
                    return BTreeMap::new();
                }
                Err(e) => {
                    tracing::warn!(error = %e, start = ?self.start, "looking up start offsets failed; retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Before partitions go: hands `Revoking` to the application, waits until it has stored its
    /// offsets (up to the revoke timeout), and commits.
    fn hand_over(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let parts = self.partitions(tpl);
        if parts.is_empty() || self.flags.abandon.load(Ordering::SeqCst) {
            return;
        }
        if !self.flags.stop.load(Ordering::SeqCst) {
            let (ack_tx, ack_rx) = std::sync::mpsc::channel();
            if self.send_staged()
                && self
                    .events
                    .blocking_send(Event::Revoking(parts.clone(), ack_tx))
                    .is_ok()
                && ack_rx.recv_timeout(self.revoke_timeout).is_err()
            {
                tracing::warn!(?parts, "application did not finish the revoke in time");
            }
        }
        if self.flags.abandon.load(Ordering::SeqCst) {
            return;
        }
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                tracing::warn!(error = %e, ?parts, "commit before revoke failed; records will be redelivered")
            }
        }
    }
}

impl ClientContext for Ctx {
    /// librdkafka's statistics (every `statistics.interval.ms`): the lag of each partition this
    /// member owns, as records between the partition's end and the offset stored as processed.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut reported = self
            .lag_reported
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for name in &self.topics {
            let Some(topic) = statistics.topics.get(&**name) else {
                continue;
            };
            for (id, p) in &topic.partitions {
                // -1 is librdkafka's internal "unassigned" partition.
                if *id < 0 {
                    continue;
                }
                let gauge = || {
                    metrics::gauge!(
                        "pitboss_consumer_lag_records",
                        "group" => self.group.to_string(),
                        "topic" => name.to_string(),
                        "partition" => id.to_string(),
                    )
                };
                let key = (name.clone(), *id);
                if !p.desired {
                    // Taken away (another member owns it now, and reports it): its last value
                    // here would be counted for ever in the group's sum.
                    if reported.remove(&key) {
                        gauge().set(0.0);
                    }
                    continue;
                }
                // A negative lag is unknown (nothing fetched yet): the last value stands.
                if p.consumer_lag_stored >= 0 {
                    gauge().set(p.consumer_lag_stored as f64);
                    reported.insert(key);
                }
            }
        }
    }
}

impl ConsumerContext for Ctx {
    /// rdkafka's default rebalance, with start offsets set on the assignment and the revoke
    /// handshake before partitions are released. Runs on the poll thread, inside `poll`.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let keep = self.set_start(consumer, tpl);
                let assigned = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = assigned {
                    tracing::error!(error = %e, "kafka assign failed");
                    return;
                }
                self.keep_starts(consumer, &keep);
                let parts = self.partitions(tpl);
                if !parts.is_empty() {
                    // Fails only when the consumer is closing: nobody is left to tell.
                    let _ = self.send_staged()
                        && self.events.blocking_send(Event::Assigned(parts)).is_ok();
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.hand_over(consumer, tpl);
                self.release(consumer, tpl, cooperative);
            }
            other => {
                tracing::error!(error = ?RDKafkaErrorCode::from(other), "kafka rebalance error");
                self.release(consumer, tpl, cooperative);
            }
        }
    }
}

impl Ctx {
    /// Commits the starts [`Ctx::set_start`] chose in partitions the group never committed.
    /// A failure leaves them as before (the start is committed with the first record read).
    fn keep_starts(&self, consumer: &BaseConsumer<Self>, keep: &BTreeMap<TopicPart, i64>) {
        if keep.is_empty() || self.flags.abandon.load(Ordering::SeqCst) {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, p), o) in keep {
            if let Err(e) = tpl.add_partition_offset(topic, *p, Offset::Offset(*o)) {
                tracing::warn!(error = %e, topic, partition = p, "cannot commit the start offset");
            }
        }
        match consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => tracing::debug!(partitions = keep.len(), "start offsets committed"),
            Err(e) => {
                tracing::warn!(error = %e, "committing the start offsets failed; a member started at the group's commit reads a partition with no record since from its earliest record")
            }
        }
    }

    fn release(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList, cooperative: bool) {
        let released = if cooperative {
            consumer.incremental_unassign(tpl)
        } else {
            consumer.unassign()
        };
        if let Err(e) = released {
            tracing::error!(error = %e, "kafka unassign failed");
        }
    }
}

/// The partitions of `tpl` the consumer's group has no committed offset for.
fn uncommitted(
    consumer: &BaseConsumer<Ctx>,
    tpl: &TopicPartitionList,
    timeout: Duration,
) -> Result<Vec<TopicPart>, BusError> {
    let committed = consumer
        .committed_offsets(tpl.clone(), timeout)
        .map_err(super::kafka_error)?;
    let mut fresh = Vec::new();
    for e in committed.elements() {
        // A partition whose commit could not be read is not taken for one never committed.
        e.error().map_err(super::kafka_error)?;
        if !matches!(e.offset(), Offset::Offset(o) if o >= 0) {
            fresh.push((e.topic().to_owned(), e.partition()));
        }
    }
    Ok(fresh)
}

fn poll_loop(consumer: &BaseConsumer<Ctx>, flags: &Flags) {
    let ctx = consumer.context();
    while !flags.stop.load(Ordering::SeqCst) {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(m)) => {
                // Take what is already fetched, without waiting, up to a chunk. A rebalance
                // callback runs inside poll: it sends the chunk so far before its own event.
                let mut n = ctx.stage(&m);
                drop(m);
                while n < POLL_CHUNK && !flags.stop.load(Ordering::SeqCst) {
                    match consumer.poll(Duration::ZERO) {
                        Some(Ok(m)) => n = ctx.stage(&m),
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "kafka consumer error");
                            break;
                        }
                        None => break,
                    }
                }
                if !ctx.send_staged() {
                    return;
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "kafka consumer error"),
        }
    }
}

/// A consumer-group member on a [`super::KafkaBus`].
pub struct KafkaConsumer {
    consumer: Option<Arc<BaseConsumer<Ctx>>>,
    /// The topic first, then its companions.
    topics: Vec<Arc<str>>,
    events: mpsc::Receiver<Event>,
    stashed: Option<Event>,
    pending_ack: Option<std::sync::mpsc::Sender<()>>,
    assigned: BTreeSet<Partition>,
    revoking: BTreeSet<Partition>,
    flags: Arc<Flags>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for KafkaConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConsumer")
            .field("topics", &self.topics)
            .field("assigned", &self.assigned)
            .finish()
    }
}

impl KafkaConsumer {
    /// Joins `group` reading `topic` and `config.companions` (already checked to be
    /// co-partitioned) and starts the poll thread.
    pub(super) fn join(
        kafka: &KafkaConfig,
        group: &str,
        topic: &str,
        config: ConsumerConfig,
    ) -> Result<Self, BusError> {
        let mut c = kafka.client();
        let session = config.session_timeout.as_millis();
        let assignor = if config.companions.is_empty() {
            "cooperative-sticky"
        } else {
            // The same partition indexes of every subscribed topic go to the same member.
            "range"
        };
        c.set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", assignor)
            .set("session.timeout.ms", session.to_string())
            .set("heartbeat.interval.ms", (session / 3).max(100).to_string())
            .set("enable.partition.eof", "false")
            // Per-partition lag for the metrics (see `Ctx::stats`).
            .set("statistics.interval.ms", "5000");
        kafka.apply_extra(&mut c);
        if let Some(id) = &config.client_id {
            // After the extra options: other members must be able to tell this one apart.
            c.set("client.id", id);
        }
        let topics: Vec<Arc<str>> = std::iter::once(topic)
            .chain(config.companions.iter().map(String::as_str))
            .map(Arc::from)
            .collect();
        // Chunks of up to POLL_CHUNK records: at most ~64k records wait here.
        let (tx, rx) = mpsc::channel(64);
        let flags = Arc::new(Flags::default());
        let ctx = Ctx {
            events: tx,
            staged: std::sync::Mutex::new(Vec::with_capacity(POLL_CHUNK)),
            revoke_timeout: config.revoke_timeout,
            topics: topics.clone(),
            group: Arc::from(group),
            start: config.start,
            request_timeout: kafka.request_timeout,
            flags: flags.clone(),
            lag_reported: std::sync::Mutex::default(),
        };
        let consumer: BaseConsumer<Ctx> =
            c.create_with_context(ctx).map_err(super::create_error)?;
        let names: Vec<&str> = topics.iter().map(|t| &**t).collect();
        consumer.subscribe(&names).map_err(kafka_error)?;
        let consumer = Arc::new(consumer);
        let poller = consumer.clone();
        let thread_flags = flags.clone();
        let thread = std::thread::Builder::new()
            .name("pitboss-kafka-poll".into())
            .spawn(move || poll_loop(&poller, &thread_flags))
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        Ok(KafkaConsumer {
            consumer: Some(consumer),
            topics,
            events: rx,
            stashed: None,
            pending_ack: None,
            assigned: BTreeSet::new(),
            revoking: BTreeSet::new(),
            flags,
            thread: Some(thread),
        })
    }

    fn consumer(&self) -> Result<&Arc<BaseConsumer<Ctx>>, BusError> {
        self.consumer
            .as_ref()
            .ok_or_else(|| BusError::Unavailable("consumer closed".into()))
    }

    /// Lets the revoke callback continue: it commits what is stored and releases the partitions.
    fn finish_revoke(&mut self) {
        if let Some(ack) = self.pending_ack.take() {
            // The callback may already have timed out waiting; then there is nobody to wake.
            let _ = ack.send(());
            for p in std::mem::take(&mut self.revoking) {
                self.assigned.remove(&p);
            }
        }
    }

    async fn commit_stored(&self) -> Result<(), BusError> {
        let consumer = self.consumer()?.clone();
        super::blocking(move || commit_outcome(consumer.commit_consumer_state(CommitMode::Sync)))
            .await
    }

    fn stop_thread(&mut self) -> Option<std::thread::JoinHandle<()>> {
        self.flags.stop.store(true, Ordering::SeqCst);
        self.finish_revoke();
        // The poll thread may be blocked handing over a record while the channel is full:
        // closing the receiving side fails that send, so the thread sees the stop flag.
        self.events.close();
        self.thread.take()
    }
}

/// What a commit's answer means here. Nothing to commit is fine. A commit refused because
/// the group is rebalancing (another member joined or left: its generation moved on) commits
/// nothing and is not an error either: the positions stay stored and go with the next commit
/// if the partitions stay, and a member that takes them over reads again from the last
/// committed position — what every reader of the bus already tolerates (at-least-once; the
/// processor keeps one row per id, the rules engine its own positions). Failing on it stopped
/// a whole `pitboss process` whose six processors joined one group at different moments.
fn commit_outcome(r: rdkafka::error::KafkaResult<()>) -> Result<(), BusError> {
    match r {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
        Err(KafkaError::ConsumerCommit(
            code @ (RDKafkaErrorCode::IllegalGeneration
            | RDKafkaErrorCode::RebalanceInProgress
            | RDKafkaErrorCode::UnknownMemberId
            // The member was out of touch past its session (a broker that stopped answering):
            // the group went on without it, and it rejoins on a later poll.
            | RDKafkaErrorCode::AssignmentLost),
        )) => {
            metrics::counter!("pitboss_bus_commits_skipped_total").increment(1);
            tracing::warn!(error = %code, "commit refused while the group rebalances; the positions go with a later commit");
            Ok(())
        }
        Err(e) => Err(kafka_error(e)),
    }
}

#[async_trait]
impl Consumer for KafkaConsumer {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Delivery, BusError> {
        self.finish_revoke();
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = Vec::new();
        loop {
            let event = match self.stashed.take() {
                Some(e) => Some(e),
                None if out.is_empty() => {
                    match tokio::time::timeout_at(deadline, self.events.recv()).await {
                        Ok(Some(e)) => Some(e),
                        Ok(None) => {
                            return Err(BusError::Unavailable("kafka poll thread stopped".into()));
                        }
                        Err(_) => None,
                    }
                }
                None => self.events.try_recv().ok(),
            };
            let Some(event) = event else { break };
            match event {
                Event::Records(mut chunk) => {
                    let room = max.saturating_sub(out.len()).max(1);
                    if chunk.len() > room {
                        // Keep the rest, in order, for the next poll.
                        self.stashed = Some(Event::Records(chunk.split_off(room)));
                        out.append(&mut chunk);
                        break;
                    }
                    if out.is_empty() {
                        out = chunk;
                    } else {
                        out.append(&mut chunk);
                    }
                    if out.len() >= max {
                        break;
                    }
                }
                other if !out.is_empty() => {
                    // Hand out the records first; the change comes on the next poll.
                    self.stashed = Some(other);
                    break;
                }
                Event::Assigned(parts) => {
                    self.assigned.extend(parts.iter().copied());
                    return Ok(Delivery::Assigned(parts));
                }
                Event::Revoking(parts, ack) => {
                    self.revoking.extend(parts.iter().copied());
                    self.pending_ack = Some(ack);
                    return Ok(Delivery::Revoking(parts));
                }
            }
        }
        Ok(Delivery::Records(out))
    }

    fn store(
        &mut self,
        topic: &str,
        partition: Partition,
        position: &Position,
    ) -> Result<(), BusError> {
        let Position::Offset(o) = position else {
            return Err(BusError::Config(format!("not a Kafka offset: {position}")));
        };
        if !self.topics.iter().any(|t| &**t == topic) {
            return Err(BusError::Config(format!(
                "{topic} is not read by this consumer ({:?})",
                self.topics
            )));
        }
        if !self.assigned.contains(&partition) {
            return Err(BusError::NotAssigned(partition));
        }
        // librdkafka stores `offset + 1` itself (the next offset to consume), as
        // `store_offset_from_message` relies on: pass the record's own offset.
        self.consumer()?
            .store_offset(topic, partition as i32, *o)
            .map_err(|e| match e.rdkafka_error_code() {
                Some(RDKafkaErrorCode::State) => BusError::NotAssigned(partition),
                _ => kafka_error(e),
            })
    }

    async fn commit(&mut self) -> Result<(), BusError> {
        self.commit_stored().await?;
        self.finish_revoke();
        Ok(())
    }

    fn assignment(&self) -> Vec<Partition> {
        self.assigned.difference(&self.revoking).copied().collect()
    }

    async fn close(mut self: Box<Self>) -> Result<(), BusError> {
        let committed = self.commit_stored().await;
        let thread = self.stop_thread();
        let consumer = self.consumer.take();
        super::blocking(move || {
            if let Some(t) = thread {
                let _ = t.join();
            }
            // Dropping the last handle leaves the group (librdkafka consumer close).
            drop(consumer);
            Ok(())
        })
        .await?;
        committed
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        if self.consumer.is_some() {
            // Dropped without close: behave like a crash and commit nothing more.
            self.flags.abandon.store(true, Ordering::SeqCst);
            self.stop_thread();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_refused_by_a_rebalance_is_skipped_and_other_failures_are_errors() {
        assert!(commit_outcome(Ok(())).is_ok());
        for code in [
            RDKafkaErrorCode::NoOffset,
            RDKafkaErrorCode::IllegalGeneration,
            RDKafkaErrorCode::RebalanceInProgress,
            RDKafkaErrorCode::UnknownMemberId,
            RDKafkaErrorCode::AssignmentLost,
        ] {
            assert!(
                commit_outcome(Err(KafkaError::ConsumerCommit(code))).is_ok(),
                "{code:?}"
            );
        }
        for code in [
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::GroupAuthorizationFailed,
        ] {
            assert!(
                commit_outcome(Err(KafkaError::ConsumerCommit(code))).is_err(),
                "{code:?}"
            );
        }
    }
}
