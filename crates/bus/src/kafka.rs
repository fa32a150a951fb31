//! Kafka bus over rdkafka (librdkafka, bundled build).
//!
//! - Producer: idempotent, `acks=all`, LZ4, keyed by `tenant:player`; `publish` resolves when
//!   the broker acknowledged every record of the batch, or fails with the first error.
//! - Consumer: a group member with the cooperative-sticky assignor, automatic offset storing
//!   and committing off. librdkafka is polled on a dedicated thread; its revoke callback hands
//!   [`Delivery::Revoking`] to the application, waits until the application has stored the
//!   offsets of what it made durable (its next `poll`/`commit`), commits them, and only then
//!   lets the partitions go.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::sync::mpsc;

use crate::{
    Ack, Bus, BusError, Consumer, ConsumerConfig, Delivery, OutRecord, Partition, Position,
    Publisher, Record,
};

/// Connection and producer settings for Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// `host:port[,host:port…]`.
    pub bootstrap_servers: String,
    /// Replication factor of topics this bus creates (3 in production).
    pub replication_factor: i32,
    /// How long a record may wait for its acknowledgement before publish fails.
    pub delivery_timeout: Duration,
    /// Producer batching delay.
    pub linger: Duration,
    /// Producer compression codec.
    pub compression: String,
    /// Extra librdkafka properties (security.protocol, sasl.*, …), applied last.
    pub extra: BTreeMap<String, String>,
}

impl KafkaConfig {
    /// Defaults for the given bootstrap servers.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        KafkaConfig {
            bootstrap_servers: bootstrap_servers.into(),
            replication_factor: 1,
            delivery_timeout: Duration::from_secs(30),
            linger: Duration::from_millis(5),
            compression: "lz4".into(),
            extra: BTreeMap::new(),
        }
    }

    fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers);
        c.set("client.id", "pitboss");
        c
    }

    fn apply_extra(&self, c: &mut ClientConfig) {
        for (k, v) in &self.extra {
            c.set(k, v);
        }
    }
}

fn kafka_error(e: KafkaError) -> BusError {
    use RDKafkaErrorCode as C;
    match e.rdkafka_error_code() {
        Some(
            C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::InvalidMessage
            | C::InvalidRecord
            | C::MessageBatchTooLarge,
        ) => BusError::Rejected(e.to_string()),
        Some(C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition) => {
            BusError::UnknownTopic(e.to_string())
        }
        _ => BusError::Unavailable(e.to_string()),
    }
}

/// A Kafka bus: one shared idempotent producer, consumers created per group member.
#[derive(Clone)]
pub struct KafkaBus {
    config: KafkaConfig,
    publisher: Arc<KafkaPublisher>,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus")
            .field("bootstrap", &self.config.bootstrap_servers)
            .finish()
    }
}

/// The producer side of a [`KafkaBus`].
pub struct KafkaPublisher {
    producer: Arc<ThreadedProducer<BatchContext>>,
}

/// One `publish` call in flight: an ack slot per record, and who to wake when the last one
/// is settled. (rdkafka's FutureProducer allocates a channel and a future per record; one
/// shared state per batch took a few percent of the ingest CPU off.)
struct Batch {
    state: std::sync::Mutex<BatchState>,
}

struct BatchState {
    acks: Vec<Option<Ack>>,
    first_error: Option<BusError>,
    remaining: usize,
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Which batch and which record of it a delivery report belongs to.
struct Slot {
    batch: Arc<Batch>,
    index: usize,
}

struct BatchContext;

impl ClientContext for BatchContext {}

impl ProducerContext for BatchContext {
    type DeliveryOpaque = Box<Slot>;

    fn delivery(&self, result: &DeliveryResult<'_>, slot: Box<Slot>) {
        let mut state = slot
            .batch
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match result {
            Ok(m) => {
                state.acks[slot.index] = Some(Ack {
                    partition: m.partition() as Partition,
                    position: Position::Offset(m.offset()),
                });
            }
            Err((e, _)) => {
                state
                    .first_error
                    .get_or_insert_with(|| kafka_error(e.clone()));
            }
        }
        state.remaining -= 1;
        if state.remaining == 0
            && let Some(done) = state.done.take()
        {
            let _ = done.send(());
        }
    }
}

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KafkaPublisher")
    }
}

impl KafkaBus {
    /// Creates the producer (no connection is made until first use).
    pub fn new(config: KafkaConfig) -> Result<Self, BusError> {
        let mut c = config.client();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", &config.compression)
            .set("linger.ms", config.linger.as_millis().to_string())
            .set(
                "message.timeout.ms",
                config.delivery_timeout.as_millis().to_string(),
            )
            .set("partitioner", "consistent_random")
            .set("queue.buffering.max.messages", "1000000")
            .set("queue.buffering.max.kbytes", "1048576");
        config.apply_extra(&mut c);
        let producer: ThreadedProducer<BatchContext> = c
            .create_with_context(BatchContext)
            .map_err(|e| BusError::Config(e.to_string()))?;
        Ok(KafkaBus {
            config,
            publisher: Arc::new(KafkaPublisher {
                producer: Arc::new(producer),
            }),
        })
    }

    /// Waits until the producer has delivered everything queued (used at shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), BusError> {
        self.publisher
            .producer
            .flush(Timeout::After(timeout))
            .map_err(kafka_error)
    }
}

#[async_trait]
impl Publisher for KafkaPublisher {
    async fn publish(&self, topic: &str, records: Vec<OutRecord>) -> Result<Vec<Ack>, BusError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let (done, settled) = tokio::sync::oneshot::channel();
        let batch = Arc::new(Batch {
            state: std::sync::Mutex::new(BatchState {
                acks: vec![None; records.len()],
                first_error: None,
                remaining: records.len(),
                done: Some(done),
            }),
        });
        for (index, r) in records.iter().enumerate() {
            let mut attempt = BaseRecord::with_opaque_to(
                topic,
                Box::new(Slot {
                    batch: batch.clone(),
                    index,
                }),
            )
            .key(r.key.as_bytes())
            .payload(r.value.as_slice());
            loop {
                match self.producer.send(attempt) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // The local queue is full: let deliveries drain, then try again.
                        attempt = back;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err((e, _)) => {
                        // Records already queued still report (and are acknowledged or not);
                        // the caller sees this batch as failed either way.
                        let unsent = records.len() - index;
                        let mut state = batch
                            .state
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        state.remaining -= unsent;
                        drop(state);
                        return Err(kafka_error(e));
                    }
                }
            }
        }
        settled
            .await
            .map_err(|_| BusError::Unavailable("producer dropped the delivery".into()))?;
        let mut state = batch
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(e) = state.first_error.take() {
            return Err(e);
        }
        std::mem::take(&mut state.acks)
            .into_iter()
            .map(|a| {
                a.ok_or_else(|| BusError::Unavailable("a record got no delivery report".into()))
            })
            .collect()
    }

    async fn check(&self) -> Result<(), BusError> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Duration::from_secs(2))
                .map(|_| ())
                .map_err(kafka_error)
        })
        .await
        .map_err(|e| BusError::Unavailable(e.to_string()))?
    }
}

#[async_trait]
impl Bus for KafkaBus {
    async fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), BusError> {
        let mut c = self.config.client();
        self.config.apply_extra(&mut c);
        let admin: AdminClient<DefaultClientContext> =
            c.create().map_err(|e| BusError::Config(e.to_string()))?;
        let new = NewTopic::new(
            topic,
            partitions as i32,
            TopicReplication::Fixed(self.config.replication_factor),
        )
        .set(
            "min.insync.replicas",
            if self.config.replication_factor >= 3 {
                "2"
            } else {
                "1"
            },
        );
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = admin
            .create_topics([&new], &opts)
            .await
            .map_err(kafka_error)?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => {
                    return Err(BusError::Unavailable(format!("create topic {t}: {code}")));
                }
            }
        }
        // Wait until every partition has a leader, so the first publish does not race metadata.
        let producer = self.publisher.producer.clone();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            for _ in 0..100 {
                if let Ok(md) = producer
                    .client()
                    .fetch_metadata(Some(&topic), Duration::from_secs(5))
                {
                    let ready = md.topics().iter().any(|t| {
                        t.name() == topic
                            && t.error().is_none()
                            && t.partitions().len() == partitions as usize
                            && t.partitions().iter().all(|p| p.leader() >= 0)
                    });
                    if ready {
                        return Ok(());
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(BusError::Unavailable(format!(
                "topic {topic} has no leaders after creation"
            )))
        })
        .await
        .map_err(|e| BusError::Unavailable(e.to_string()))?
    }

    fn publisher(&self) -> Arc<dyn Publisher> {
        self.publisher.clone()
    }

    async fn consumer(
        &self,
        group: &str,
        topic: &str,
        config: ConsumerConfig,
    ) -> Result<Box<dyn Consumer>, BusError> {
        let mut c = self.config.client();
        let session = config.session_timeout.as_millis();
        c.set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", session.to_string())
            .set("heartbeat.interval.ms", (session / 3).max(100).to_string())
            .set("enable.partition.eof", "false")
            // Per-partition lag for the metrics (see `Ctx::stats`).
            .set("statistics.interval.ms", "5000");
        self.config.apply_extra(&mut c);
        // Chunks of up to POLL_CHUNK records: at most ~64k records wait here.
        let (tx, rx) = mpsc::channel(64);
        let flags = Arc::new(Flags::default());
        let ctx = Ctx {
            events: tx,
            staged: std::sync::Mutex::new(Vec::with_capacity(POLL_CHUNK)),
            revoke_timeout: config.revoke_timeout,
            topic: topic.to_owned(),
            flags: flags.clone(),
        };
        let consumer: BaseConsumer<Ctx> = c
            .create_with_context(ctx)
            .map_err(|e| BusError::Config(e.to_string()))?;
        consumer.subscribe(&[topic]).map_err(kafka_error)?;
        let consumer = Arc::new(consumer);
        let poller = consumer.clone();
        let thread_flags = flags.clone();
        let thread = std::thread::Builder::new()
            .name("pitboss-kafka-poll".into())
            .spawn(move || poll_loop(&poller, &thread_flags))
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        Ok(Box::new(KafkaConsumer {
            consumer: Some(consumer),
            topic: topic.to_owned(),
            events: rx,
            stashed: None,
            pending_ack: None,
            assigned: BTreeSet::new(),
            revoking: BTreeSet::new(),
            flags,
            thread: Some(thread),
        }))
    }
}

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

struct Ctx {
    events: mpsc::Sender<Event>,
    /// Records polled but not yet handed over (see `poll_loop`).
    staged: std::sync::Mutex<Vec<Record>>,
    revoke_timeout: Duration,
    topic: String,
    flags: Arc<Flags>,
}

impl Ctx {
    /// Adds a polled record to the chunk; returns the chunk's length.
    fn stage(&self, record: Record) -> usize {
        let mut staged = self
            .staged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        staged.push(record);
        staged.len()
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

    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<Partition> {
        tpl.elements()
            .iter()
            .filter(|e| e.topic() == self.topic)
            .map(|e| e.partition() as Partition)
            .collect()
    }
}

impl ClientContext for Ctx {
    /// librdkafka's statistics (every `statistics.interval.ms`): the lag of each partition this
    /// member owns, as records between the partition's end and the offset stored as processed.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        for (id, p) in &topic.partitions {
            // -1 is librdkafka's internal "unassigned" partition; a negative lag means unknown
            // (not owned, or nothing fetched yet).
            if *id < 0 || p.consumer_lag_stored < 0 {
                continue;
            }
            metrics::gauge!(
                "pitboss_consumer_lag_records",
                "topic" => self.topic.clone(),
                "partition" => id.to_string(),
            )
            .set(p.consumer_lag_stored as f64);
        }
    }
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let parts = match rebalance {
            Rebalance::Revoke(tpl) => self.partitions(tpl),
            _ => return,
        };
        if parts.is_empty() || self.flags.abandon.load(Ordering::SeqCst) {
            return;
        }
        if !self.flags.stop.load(Ordering::SeqCst) {
            // Hand the revoke to the application and wait until it has stored its offsets.
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

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let parts = self.partitions(tpl);
            if !parts.is_empty() {
                // Fails only when the consumer is closing: nobody is left to tell.
                let _ =
                    self.send_staged() && self.events.blocking_send(Event::Assigned(parts)).is_ok();
            }
        }
    }
}

/// Records handed from the poll thread to the consumer in one channel send: per-record sends
/// (and the wake-up of the receiving task each one costs) capped consumption near 130k
/// records/s on 2 cores.
const POLL_CHUNK: usize = 1024;

fn record_of(m: &rdkafka::message::BorrowedMessage<'_>) -> Record {
    Record {
        partition: m.partition() as Partition,
        position: Position::Offset(m.offset()),
        key: m
            .key()
            .map(|k| match std::str::from_utf8(k) {
                Ok(k) => k.to_owned(),
                Err(_) => String::from_utf8_lossy(k).into_owned(),
            })
            .unwrap_or_default(),
        value: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        timestamp_ms: m.timestamp().to_millis().unwrap_or(0),
    }
}

fn poll_loop(consumer: &BaseConsumer<Ctx>, flags: &Flags) {
    let ctx = consumer.context();
    while !flags.stop.load(Ordering::SeqCst) {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(m)) => {
                // Take what is already fetched, without waiting, up to a chunk. A rebalance
                // callback runs inside poll: it sends the chunk so far before its own event.
                let mut n = ctx.stage(record_of(&m));
                drop(m);
                while n < POLL_CHUNK && !flags.stop.load(Ordering::SeqCst) {
                    match consumer.poll(Duration::ZERO) {
                        Some(Ok(m)) => n = ctx.stage(record_of(&m)),
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

/// A consumer-group member on a [`KafkaBus`].
pub struct KafkaConsumer {
    consumer: Option<Arc<BaseConsumer<Ctx>>>,
    topic: String,
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
            .field("topic", &self.topic)
            .field("assigned", &self.assigned)
            .finish()
    }
}

impl KafkaConsumer {
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
        tokio::task::spawn_blocking(move || {
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
                Err(e) => Err(kafka_error(e)),
            }
        })
        .await
        .map_err(|e| BusError::Unavailable(e.to_string()))?
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

    fn store(&mut self, partition: Partition, position: &Position) -> Result<(), BusError> {
        let Position::Offset(o) = position else {
            return Err(BusError::Config(format!("not a Kafka offset: {position}")));
        };
        if !self.assigned.contains(&partition) {
            return Err(BusError::NotAssigned(partition));
        }
        // librdkafka stores `offset + 1` itself (the next offset to consume), as
        // `store_offset_from_message` relies on: pass the record's own offset.
        self.consumer()?
            .store_offset(&self.topic, partition as i32, *o)
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
        tokio::task::spawn_blocking(move || {
            if let Some(t) = thread {
                let _ = t.join();
            }
            // Dropping the last handle leaves the group (librdkafka consumer close).
            drop(consumer);
        })
        .await
        .map_err(|e| BusError::Unavailable(e.to_string()))?;
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
