//! The processor loop: a consumer-group member that turns records into rows of one table
//! (any [`StoredRow`]: events, alerts, pushes, deliveries, alert acks), batches them per
//! partition, inserts each batch (retrying with backoff until it lands, consumption paused
//! meanwhile), and stores and commits the bus offsets only after the insert succeeded.
//!
//! Effectively once: each partition's high-water mark is read from the store when the
//! partition is assigned, and records at or below it are skipped — a batch that landed but
//! whose offsets were never committed (a crash, a lost answer) is not written again. Before
//! each insert the batch's offset range is recorded ([`Sink::intend`]); a replay re-cuts the
//! last recorded batch past the mark exactly, so a store that drops duplicate blocks drops it
//! if the crashed member's insert lands after all. An
//! undecodable record goes to the dead-letter topic with its reason and its partition keeps
//! flowing.
//!
//! Errors are retried only where a retry can help ([`ProcessorError::is_retryable`]). A batch
//! whose rows the store refuses for their values is split ([`crate::split`]) until the refused
//! rows are found: they go to the dead-letter topic with the store's reason, the rest lands.
//! A schema error stops the processor.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use async_trait::async_trait;
use pitboss_bus::{Bus, ConsumerConfig, OutRecord, Partition, Position, Publisher, Record};
use pitboss_runtime::worker::{PartitionWork, join_retrying, run_partitioned};

use crate::ProcessorError;
use crate::batch::{Batch, BatchConfig, Batcher, Recut};
use crate::health::{Call, StoreHealth, Unstored};
use crate::rows::{StoredRow, offset_of};
use crate::sink::Sink;
use crate::split::Split;

/// How much earlier than a record's stamp ([`StoredRow::stamped_at_ms`]: `received_at` of an
/// event) a later record of the same partition may have been stamped: the publishers' clock
/// skew plus how long a publish may take (the Kafka producer gives up after
/// `delivery_timeout`, 30 s by default). The high-water query
/// only reads rows received after the first replayed record minus this margin; a day is far
/// beyond both.
pub const REPLAY_MARGIN_MS: i64 = 24 * 3600 * 1000;

/// How long an insert the store refuses as not fitting its schema is tried again before the
/// processor stops: a migration in flight answers so for a moment (a cluster's `Distributed`
/// table swapped in by `RENAME`, a replica applying an `ALTER`).
pub const SCHEMA_GRACE: Duration = Duration::from_secs(5);

/// Settings of one processor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessorConfig {
    pub topic: String,
    pub group: String,
    /// Where undecodable records and rows the store refuses go, with the reason in the
    /// record key.
    pub dead_letter_topic: String,
    pub batch: BatchConfig,
    /// Records fetched per poll.
    pub poll_max: usize,
    /// Closed batches queued for the inserter while the next ones are decoded.
    pub max_in_flight: usize,
    /// First and largest wait between insert retries.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub consumer: ConsumerConfig,
    /// Where the processor reports its store's failures (a process's `/readyz`).
    pub health: StoreHealth,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        ProcessorConfig {
            topic: "events".into(),
            group: "pitboss-processor".into(),
            dead_letter_topic: "events_dead_letter".into(),
            batch: BatchConfig::default(),
            poll_max: 10_000,
            max_in_flight: 2,
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(10),
            consumer: ConsumerConfig::default(),
            health: StoreHealth::default(),
        }
    }
}

/// Every metric the processor records: name, kind and the help text Prometheus shows
/// ([`describe_metrics`]; docs/processor.md, "Metrics", lists the same).
pub const METRICS: &[(&str, &str, &str)] = &[
    (
        "pitboss_processor_rows_inserted_total",
        "counter",
        "Rows of stored batches (every table), copies the store dropped included (see pitboss_processor_copies_dropped_total).",
    ),
    (
        "pitboss_processor_batches_total",
        "counter",
        "Batches stored.",
    ),
    (
        "pitboss_processor_batch_rows",
        "histogram",
        "Rows per stored batch.",
    ),
    (
        "pitboss_processor_batch_age_seconds",
        "histogram",
        "Seconds from a batch's first record to the batch closing.",
    ),
    (
        "pitboss_processor_insert_seconds",
        "histogram",
        "Seconds to store a batch, retries included.",
    ),
    (
        "pitboss_processor_insert_retries_total",
        "counter",
        "Failed inserts retried.",
    ),
    (
        "pitboss_processor_dead_letters_total",
        "counter",
        "Records sent to the dead-letter topic (undecodable, or refused by the store).",
    ),
    (
        "pitboss_processor_batches_split_total",
        "counter",
        "Batches split because the store refused some of their rows.",
    ),
    (
        "pitboss_processor_copies_dropped_total",
        "counter",
        "Rows not stored because the store held them already (a client's retry of an event id) or the batch held them twice, by table.",
    ),
    (
        "pitboss_processor_freshness_seconds",
        "histogram",
        "Seconds from the stamp of the OLDEST row of each stored batch (received_at of an event: when ingest accepted it) to the batch being stored: the longest any row of the batch waited.",
    ),
    (
        "pitboss_processor_freshness_last_seconds",
        "gauge",
        "pitboss_processor_freshness_seconds of the latest stored batch.",
    ),
    (
        "pitboss_processor_unstored_seconds",
        "gauge",
        "Seconds since the stamp of the oldest row the processor took from the bus and has not stored yet (open batches, and batches being inserted, retries included), 0 when it holds none; set every second whatever the store does, so it climbs while the store stalls.",
    ),
];

/// Registers the help text of [`METRICS`] with the metrics recorder (idempotent).
pub fn describe_metrics() {
    for &(name, kind, help) in METRICS {
        match kind {
            "counter" => metrics::describe_counter!(name, help),
            "gauge" => metrics::describe_gauge!(name, help),
            _ => metrics::describe_histogram!(name, help),
        }
    }
}

/// One processor's metrics, labelled with the topic it reads and the table it writes
/// (`{topic="alerts", table="alerts"}`): a process runs one processor per topic. Its counters
/// are registered at zero when it starts, so a scrape shows them (and an alert on their rate
/// has a series) before their first event.
#[derive(Clone)]
struct Meters {
    rows_inserted: metrics::Counter,
    batches: metrics::Counter,
    batch_rows: metrics::Histogram,
    batch_age: metrics::Histogram,
    insert_seconds: metrics::Histogram,
    insert_retries: metrics::Counter,
    dead_letters: metrics::Counter,
    batches_split: metrics::Counter,
    freshness: metrics::Histogram,
    freshness_last: metrics::Gauge,
    unstored: metrics::Gauge,
}

impl Meters {
    fn new(topic: &str, table: &'static str) -> Meters {
        let counter = |name: &'static str| {
            let c = metrics::counter!(name, "topic" => topic.to_owned(), "table" => table);
            c.increment(0);
            c
        };
        let histogram = |name: &'static str| metrics::histogram!(name, "topic" => topic.to_owned(), "table" => table);
        let gauge = |name: &'static str| metrics::gauge!(name, "topic" => topic.to_owned(), "table" => table);
        Meters {
            rows_inserted: counter("pitboss_processor_rows_inserted_total"),
            batches: counter("pitboss_processor_batches_total"),
            batch_rows: histogram("pitboss_processor_batch_rows"),
            batch_age: histogram("pitboss_processor_batch_age_seconds"),
            insert_seconds: histogram("pitboss_processor_insert_seconds"),
            insert_retries: counter("pitboss_processor_insert_retries_total"),
            dead_letters: counter("pitboss_processor_dead_letters_total"),
            batches_split: counter("pitboss_processor_batches_split_total"),
            freshness: histogram("pitboss_processor_freshness_seconds"),
            freshness_last: gauge("pitboss_processor_freshness_last_seconds"),
            unstored: gauge("pitboss_processor_unstored_seconds"),
        }
    }
}

/// How long the check of a partition's mark waits for the record at the mark
/// ([`Processor::check_mark_on_bus`]).
const MARK_READ_PATIENCE: Duration = Duration::from_secs(10);

/// What a run did (for tests and logs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunStats {
    pub rows_inserted: u64,
    pub batches: u64,
    pub skipped_replays: u64,
    pub dead_lettered: u64,
    pub insert_retries: u64,
}

struct Processor<R: StoredRow> {
    config: ProcessorConfig,
    /// For a look at a partition's newest record ([`Processor::check_mark_on_bus`]).
    bus: Arc<dyn Bus>,
    /// Assigned partitions whose mark was checked against the bus (at their first skip).
    mark_checked: std::collections::HashSet<Partition>,
    sink: Arc<dyn Sink<R>>,
    dead_letters: Arc<dyn Publisher>,
    batcher: Batcher<R>,
    /// Positions whose batches landed, not yet stored with the consumer.
    durable: Vec<(Arc<str>, Partition, Position)>,
    topic: Arc<str>,
    /// Per assigned partition: the store's high-water mark (None: nothing stored yet).
    high_water: HashMap<Partition, Option<u64>>,
    /// The same for partitions whose positions are Kinesis sequence numbers.
    high_water_sequence: HashMap<Partition, Option<Position>>,
    /// The shard id of each partition read with sequence numbers ([`Bus::partition_id`]).
    shards: HashMap<Partition, String>,
    stats: RunStats,
    /// Closed batches on their way to the inserter (bounded: a slow store pauses consumption).
    to_insert: Option<mpsc::Sender<Batch<R>>>,
    /// Batches the inserter finished, in the order they were sent.
    inserted: mpsc::UnboundedReceiver<Result<Inserted, ProcessorError>>,
    in_flight: usize,
    /// What it holds unstored (read every second for `pitboss_processor_unstored_seconds`).
    unstored: Arc<Unstored>,
    meters: Meters,
}

/// A batch that landed: its partition may now be stored up to `last`.
#[derive(Debug)]
struct Inserted {
    partition: Partition,
    last: Position,
}

/// Runs until `shutdown` resolves; then flushes what is open, commits and leaves the group.
/// Records of `config.topic` become rows of `R::TABLE` in `sink`.
///
/// Decoding and inserting overlap: closed batches go to one inserter task through a queue of
/// `config.max_in_flight` batches, inserted one at a time in the order they were closed (so
/// a partition's rows never overtake each other), while the next records are decoded. Offsets
/// are stored and committed as the inserter reports batches landed. A revoke or shutdown
/// waits for every batch in flight first.
pub async fn run<R: StoredRow>(
    bus: Arc<dyn Bus>,
    sink: Arc<dyn Sink<R>>,
    config: ProcessorConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<RunStats, ProcessorError> {
    describe_metrics();
    // One topic per processor: a companion's records would be stored, and their positions
    // compared, as the topic's (`pitboss process` runs one processor per topic).
    if !config.consumer.companions.is_empty() {
        return Err(ProcessorError::Config(format!(
            "a processor reads one topic ({}), not companions: {:?}",
            config.topic, config.consumer.companions
        )));
    }
    metrics::counter!("pitboss_processor_copies_dropped_total", "table" => R::TABLE).increment(0);
    tokio::pin!(shutdown);
    let Some(mut consumer) = join_retrying(
        &*bus,
        &config.group,
        &config.topic,
        &config.consumer,
        shutdown.as_mut(),
    )
    .await?
    else {
        return Ok(RunStats::default());
    };
    let (to_insert, queue) = mpsc::channel(config.max_in_flight.max(1));
    let (report, inserted) = mpsc::unbounded_channel();
    let meters = Meters::new(&config.topic, R::TABLE);
    let unstored = Arc::new(Unstored::default());
    let _gauge = AbortOnDrop(tokio::spawn(report_unstored(
        meters.unstored.clone(),
        unstored.clone(),
    )));
    let inserter = Inserter {
        meters: meters.clone(),
        health: config.health.clone(),
        sink: sink.clone(),
        topic: config.topic.clone(),
        backoff: (config.retry_initial, config.retry_max),
        dead_letters: bus.publisher(),
        dead_letter_topic: config.dead_letter_topic.clone(),
        stats: InsertStats::default(),
    };
    let inserter = tokio::spawn(inserter.run(queue, report));
    let mut p = Processor {
        batcher: Batcher::new(&config.topic, config.batch.clone()),
        dead_letters: bus.publisher(),
        durable: Vec::new(),
        topic: Arc::from(config.topic.as_str()),
        config,
        bus: bus.clone(),
        mark_checked: std::collections::HashSet::new(),
        sink,
        high_water: HashMap::new(),
        high_water_sequence: HashMap::new(),
        shards: HashMap::new(),
        stats: RunStats::default(),
        to_insert: Some(to_insert),
        inserted,
        in_flight: 0,
        unstored,
        meters,
    };
    let poll_max = p.config.poll_max;
    if let Err(e) = run_partitioned(&mut *consumer, &mut p, poll_max, shutdown.as_mut()).await {
        // Nothing more is stored or committed: what is in flight is replayed by the next owner.
        inserter.abort();
        return Err(e);
    }
    // Everything landed (run_loop waited for it): stop the inserter and merge its figures.
    p.to_insert = None;
    let inserter_stats = inserter
        .await
        .map_err(|e| ProcessorError::Store(format!("inserter task: {e}")))?;
    p.stats.rows_inserted = inserter_stats.rows_inserted;
    p.stats.batches = inserter_stats.batches;
    p.stats.insert_retries = inserter_stats.insert_retries;
    p.stats.dead_lettered += inserter_stats.dead_lettered;
    consumer.close().await?;
    Ok(p.stats)
}

#[async_trait]
impl<R: StoredRow> PartitionWork for Processor<R> {
    type Error = ProcessorError;

    async fn assigned(&mut self, parts: &[Partition]) -> Result<(), ProcessorError> {
        // New to this member (a partition taken away was revoked and drained first): nothing
        // of theirs is in flight; their marks are asked afresh.
        for part in parts {
            self.high_water.remove(part);
            self.high_water_sequence.remove(part);
            self.mark_checked.remove(part);
        }
        Ok(())
    }

    async fn records(&mut self, records: Vec<Record>) -> Result<(), ProcessorError> {
        self.take_records(records).await
    }

    async fn revoking(&mut self, parts: &[Partition]) -> Result<(), ProcessorError> {
        // Flush what is open for them and wait until it landed.
        for part in parts {
            if let Some(batch) = self.batcher.take(*part) {
                self.send(batch).await?;
            }
        }
        self.held();
        self.collect(true).await?;
        for part in parts {
            self.high_water.remove(part);
            self.high_water_sequence.remove(part);
            self.mark_checked.remove(part);
        }
        Ok(())
    }

    async fn tick(&mut self) -> Result<(), ProcessorError> {
        let due = self.batcher.due(Instant::now());
        for batch in due {
            self.send(batch).await?;
        }
        self.held();
        self.collect(false).await
    }

    fn poll_wait(&self) -> Duration {
        let wait = self
            .batcher
            .next_due()
            .map_or(Duration::from_millis(500), |d| {
                d.saturating_duration_since(Instant::now())
            })
            .clamp(Duration::from_millis(1), Duration::from_millis(500));
        if self.in_flight > 0 {
            // Come back soon to store what lands.
            wait.min(Duration::from_millis(20))
        } else {
            wait
        }
    }

    fn take_durable(&mut self) -> Vec<(Arc<str>, Partition, Position)> {
        std::mem::take(&mut self.durable)
    }

    async fn finish(&mut self) -> Result<(), ProcessorError> {
        for batch in self.batcher.take_all() {
            self.send(batch).await?;
        }
        self.held();
        self.collect(true).await
    }
}

impl<R: StoredRow> Processor<R> {
    /// Tells [`Unstored`] what the open batches hold now.
    fn held(&self) {
        self.unstored.set_open(self.batcher.oldest_ms());
    }

    /// Hands a closed batch to the inserter (waiting while its queue is full).
    async fn send(&mut self, batch: Batch<R>) -> Result<(), ProcessorError> {
        self.meters
            .batch_age
            .record(batch.opened.elapsed().as_secs_f64());
        let oldest = batch.rows.iter().map(StoredRow::stamped_at_ms).min();
        // Counted while it waits for room in the queue, too.
        if let Some(ms) = oldest {
            self.unstored.taking(ms);
        }
        let Some(queue) = self.to_insert.clone() else {
            return Err(ProcessorError::Store("inserter stopped".into()));
        };
        let mut batch = batch;
        loop {
            match queue.try_send(batch) {
                Ok(()) => break,
                Err(mpsc::error::TrySendError::Full(back)) => {
                    // Full: consumption pauses; store what lands meanwhile.
                    batch = back;
                    match self.inserted.recv().await {
                        Some(done) => self.landed(done)?,
                        None => return Err(ProcessorError::Store("inserter stopped".into())),
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    return Err(self.inserter_error().await);
                }
            }
        }
        self.unstored.sent(oldest);
        self.in_flight += 1;
        Ok(())
    }

    /// Takes the reports of the batches that landed (their positions become durable); with
    /// `all`, waits until nothing is in flight.
    async fn collect(&mut self, all: bool) -> Result<(), ProcessorError> {
        loop {
            let done = if all && self.in_flight > 0 {
                self.inserted.recv().await
            } else {
                match self.inserted.try_recv() {
                    Ok(done) => Some(done),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                }
            };
            let Some(done) = done else {
                return Err(ProcessorError::Store("inserter stopped".into()));
            };
            self.landed(done)?;
            if all && self.in_flight == 0 {
                break;
            }
        }
        Ok(())
    }

    /// Why the inserter stopped (its last report), once its queue has closed.
    async fn inserter_error(&mut self) -> ProcessorError {
        while let Some(done) = self.inserted.recv().await {
            if let Err(e) = done {
                return e;
            }
        }
        ProcessorError::Store("inserter stopped".into())
    }

    fn landed(&mut self, done: Result<Inserted, ProcessorError>) -> Result<(), ProcessorError> {
        let done = done?;
        self.unstored.landed();
        self.in_flight -= 1;
        self.durable
            .push((self.topic.clone(), done.partition, done.last));
        Ok(())
    }

    /// The partition's high-water mark, asked of the store once per assignment, at its first
    /// record: `since_ms` comes from that record (see [`REPLAY_MARGIN_MS`]).
    async fn high_water(
        &mut self,
        partition: Partition,
        since_ms: Option<i64>,
    ) -> Result<Option<u64>, ProcessorError> {
        if let Some(hw) = self.high_water.get(&partition) {
            return Ok(*hw);
        }
        let backoff = (self.config.retry_initial, self.config.retry_max);
        let health = &self.config.health;
        let hw = with_retry(
            health,
            self.sink.clone(),
            self.config.topic.clone(),
            backoff,
            |sink, topic| async move { sink.high_water(&topic, partition, since_ms).await },
        )
        .await?;
        // A batch begun past the mark may still land (its member died mid-insert): cut the
        // same one, so that whichever insert comes second is a duplicate block.
        let intended = if self.sink.records_intents() {
            with_retry(
                health,
                self.sink.clone(),
                self.config.topic.clone(),
                backoff,
                |sink, topic| async move { sink.intended(&topic, partition).await },
            )
            .await?
        } else {
            None
        };
        if let Some((first, last)) = intended
            && hw.is_none_or(|hw| last > hw)
        {
            tracing::info!(partition, first, last, "replaying an intended batch");
            let floor = hw;
            self.batcher.replay(partition, Recut { first, last, floor });
        }
        self.high_water.insert(partition, hw);
        Ok(hw)
    }

    /// [`Self::high_water`] for a partition whose positions are Kinesis sequence numbers (no
    /// batch intents: they are recorded as offset ranges).
    async fn high_water_sequence(
        &mut self,
        partition: Partition,
        since_ms: Option<i64>,
    ) -> Result<Option<Position>, ProcessorError> {
        if let Some(hw) = self.high_water_sequence.get(&partition) {
            return Ok(hw.clone());
        }
        let shard = self.shard(partition).await?;
        let hw = with_retry(
            &self.config.health,
            self.sink.clone(),
            self.config.topic.clone(),
            (self.config.retry_initial, self.config.retry_max),
            |sink, topic| {
                let shard = shard.clone();
                async move { sink.high_water_sequence(&topic, &shard, since_ms).await }
            },
        )
        .await?
        .map(Position::Sequence);
        self.high_water_sequence.insert(partition, hw.clone());
        Ok(hw)
    }

    /// The shard id of a partition read with sequence numbers (the number is its index among
    /// the stream's shards, which a reshard moves; rows keep the id).
    async fn shard(&mut self, partition: Partition) -> Result<String, ProcessorError> {
        if let Some(id) = self.shards.get(&partition) {
            return Ok(id.clone());
        }
        // A bus whose positions are sequence numbers names its partitions (Kinesis): by the
        // number alone, a reshard's renumbering would compare another shard's mark.
        let id = self
            .bus
            .partition_id(&self.config.topic, partition)
            .await?
            .ok_or_else(|| {
                ProcessorError::Config(format!(
                    "topic {}: the bus gives sequence numbers but no name for partition {partition}",
                    self.config.topic
                ))
            })?;
        self.shards.insert(partition, id.clone());
        Ok(id)
    }

    /// Whether `record` is at or below its partition's high-water mark: stored already.
    async fn stored_already(
        &mut self,
        record: &Record,
        since_ms: Option<i64>,
    ) -> Result<bool, ProcessorError> {
        Ok(match &record.position {
            Position::Sequence(_) => self
                .high_water_sequence(record.partition, since_ms)
                .await?
                .is_some_and(|hw| record.position <= hw),
            Position::Offset(_) => {
                let hw = self.high_water(record.partition, since_ms).await?;
                let skip =
                    matches!((offset_of(&record.position), hw), (Some(o), Some(hw)) if o <= hw);
                if let Some(mark) = hw.filter(|_| skip)
                    && self.mark_checked.insert(record.partition)
                {
                    self.check_mark_on_bus(record.partition, mark, since_ms)
                        .await?;
                }
                skip
            }
        })
    }

    /// Before the first record of a partition is skipped as stored: whether the bus holds the
    /// store's mark at all, and the same record there. A partition whose newest record comes
    /// before the mark, or whose record at the mark is another one than the row stored from it
    /// (another id), cannot have been where those rows came from — the topic was made anew
    /// under the same name (its offsets start again at 0), or the broker lost records — and
    /// every new record up to the mark would be skipped as stored, silently. The processor
    /// stops instead, saying so (docs/processor.md, "Operations"). What cannot tell (a reader
    /// that does not open, an emptied partition, the record at the mark gone or undecodable,
    /// a store that cannot look a row up by offset) lets the skip go on, as before.
    async fn check_mark_on_bus(
        &self,
        partition: Partition,
        mark: u64,
        since_ms: Option<i64>,
    ) -> Result<(), ProcessorError> {
        let topic = &self.config.topic;
        let made_anew = |what: String| {
            ProcessorError::Config(format!(
                "topic {topic} partition {partition}: the store ({table}) holds rows of it up to \
                 offset {mark}, but {what}: the topic was made anew under the same name (or the \
                 broker lost records), and its records up to offset {mark} would be skipped as \
                 stored. Give the new topic another name, or delete the topic's old rows from the \
                 store first (docs/processor.md, \"Operations\")",
                table = R::TABLE,
            ))
        };
        let at_mark = Position::Offset(i64::try_from(mark).unwrap_or(i64::MAX));
        let mut reader = match self
            .bus
            .reader(
                topic,
                vec![(partition, pitboss_bus::ReadFrom::At(at_mark.clone()))],
            )
            .await
        {
            Ok(reader) => reader,
            Err(e) => {
                tracing::warn!(partition, error = %e, "the store's mark not checked against the bus");
                return Ok(());
            }
        };
        match reader.end_positions().get(&partition).cloned().flatten() {
            Some(Position::Offset(n)) if n < 0 || (n as u64) < mark => {
                return Err(made_anew(format!(
                    "the newest record on the bus is at offset {n}"
                )));
            }
            None => return Ok(()),
            Some(_) => {}
        }
        // The same record at the mark? (Asked only of a store that can look it up.)
        let stored = with_retry(
            &self.config.health,
            self.sink.clone(),
            topic.clone(),
            (self.config.retry_initial, self.config.retry_max),
            |sink, topic| async move { sink.id_at(&topic, partition, mark, since_ms).await },
        )
        .await?;
        let Some(stored) = stored else {
            return Ok(());
        };
        let deadline = Instant::now() + MARK_READ_PATIENCE;
        while Instant::now() < deadline {
            let records = match reader.poll(1, Duration::from_millis(200)).await {
                Ok(records) => records,
                Err(e) => {
                    tracing::warn!(partition, error = %e, "the record at the store's mark not read");
                    return Ok(());
                }
            };
            let Some(record) = records.into_iter().next() else {
                continue;
            };
            if record.position != at_mark {
                return Ok(()); // gone (retention, compaction): cannot tell
            }
            return match R::decode(topic, &record) {
                Ok(row) if row.id() != stored => Err(made_anew(format!(
                    "the record at that offset on the bus is another one ({} {}, where the \
                     store has {stored})",
                    R::TABLE,
                    row.id()
                ))),
                _ => Ok(()),
            };
        }
        tracing::warn!(
            partition,
            "the record at the store's mark not read in time; not checked"
        );
        Ok(())
    }

    async fn take_records(&mut self, records: Vec<Record>) -> Result<(), ProcessorError> {
        let now = Instant::now();
        let mut poison = Vec::new();
        let mut full = Vec::new();
        let decoded: Vec<_> = records
            .iter()
            .map(|r| R::decode(&self.config.topic, r))
            .collect();
        // Held from now on, while the store's high-water mark is asked too.
        if let Some(ms) = decoded
            .iter()
            .filter_map(|r| r.as_ref().ok().map(StoredRow::stamped_at_ms))
            .min()
        {
            self.unstored.taking(ms);
        }
        for (record, mut decoded) in records.into_iter().zip(decoded) {
            if let (Position::Sequence(seq), Ok(row)) = (&record.position, decoded.as_mut()) {
                let shard = self.shard(record.partition).await?;
                row.set_bus_sequence(crate::rows::tag_sequence(&shard, seq));
            }
            let since = decoded
                .as_ref()
                .ok()
                .map(|r| r.stamped_at_ms() as i64 - REPLAY_MARGIN_MS);
            if self.stored_already(&record, since).await? {
                self.stats.skipped_replays += 1;
                self.batcher.skip(record.partition, record.position, now);
                continue;
            }
            match decoded {
                Ok(row) => full.extend(self.batcher.push(
                    record.partition,
                    record.position,
                    row,
                    record.value,
                    now,
                )),
                Err(reason) => {
                    tracing::warn!(partition = record.partition, position = %record.position, %reason, "record dead-lettered");
                    poison.push(OutRecord::new(
                        format!(
                            "{}:{}:{}: {reason}",
                            self.config.topic, record.partition, record.position
                        ),
                        record.value,
                    ));
                    self.batcher.skip(record.partition, record.position, now);
                }
            }
        }
        if !poison.is_empty() {
            // Durable before any offset past them is stored.
            let n = poison.len() as u64;
            dead_letter(
                &self.meters.dead_letters,
                &self.dead_letters,
                &self.config.dead_letter_topic,
                poison,
                (self.config.retry_initial, self.config.retry_max),
            )
            .await?;
            self.stats.dead_lettered += n;
        }
        for batch in full {
            self.send(batch).await?;
        }
        self.held();
        Ok(())
    }
}

/// Aborts the task when dropped (the gauge's reporter ends with its processor).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sets `pitboss_processor_unstored_seconds{topic,table}` every second from what the processor
/// holds: from a task of its own, so it moves while the processor waits on its store.
async fn report_unstored(gauge: metrics::Gauge, unstored: Arc<Unstored>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        gauge.set(unstored.age_seconds(pitboss_model::Timestamp::now().as_millis()));
    }
}

/// Publishes dead letters, retrying while the bus may take them later.
async fn dead_letter(
    counted: &metrics::Counter,
    publisher: &Arc<dyn Publisher>,
    topic: &str,
    records: Vec<OutRecord>,
    (initial, max): (Duration, Duration),
) -> Result<(), ProcessorError> {
    let n = records.len() as u64;
    let mut delay = initial;
    loop {
        match publisher.publish(topic, records.clone()).await {
            Ok(_) => break,
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, "dead-letter publish failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(max);
            }
            Err(e) => return Err(e.into()),
        }
    }
    counted.increment(n);
    Ok(())
}

/// What the inserter did.
#[derive(Debug, Default)]
struct InsertStats {
    rows_inserted: u64,
    batches: u64,
    insert_retries: u64,
    dead_lettered: u64,
}

/// The inserter task: inserts batches one at a time, in order, each until it lands (split if
/// the store refuses some of its rows), and reports each. Stops at the first error that
/// neither a retry nor a split can fix, or when the queue closes.
struct Inserter<R: StoredRow> {
    meters: Meters,
    health: StoreHealth,
    sink: Arc<dyn Sink<R>>,
    topic: String,
    backoff: (Duration, Duration),
    dead_letters: Arc<dyn Publisher>,
    dead_letter_topic: String,
    stats: InsertStats,
}

impl<R: StoredRow> Inserter<R> {
    async fn run(
        mut self,
        mut queue: mpsc::Receiver<Batch<R>>,
        report: mpsc::UnboundedSender<Result<Inserted, ProcessorError>>,
    ) -> InsertStats {
        while let Some(batch) = queue.recv().await {
            let batch = Arc::new(batch);
            let result = self.insert(&batch).await;
            let failed = result.is_err();
            let sent = report.send(result.map(|()| Inserted {
                partition: batch.partition,
                last: batch.last.clone(),
            }));
            if failed || sent.is_err() {
                break;
            }
        }
        self.stats
    }

    /// Records the batch's range, then inserts it — whole, or piece by piece in offset order
    /// when the store refuses some of its rows ([`Split`]): each refused row goes to the
    /// dead-letter topic with the store's reason before any piece after it is inserted, so
    /// the high-water mark never passes a row that is neither stored nor dead-lettered.
    async fn insert(&mut self, batch: &Arc<Batch<R>>) -> Result<(), ProcessorError> {
        if batch.rows.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let intent = batch.clone();
        if self.sink.records_intents() {
            with_retry(
                &self.health,
                self.sink.clone(),
                self.topic.clone(),
                self.backoff,
                |sink, _| {
                    let intent = intent.clone();
                    async move { sink.intend(&intent).await }
                },
            )
            .await?;
        }
        let offsets = batch.rows.iter().map(StoredRow::bus_offset).collect();
        let recut = batch.recut;
        let mut split = Split::new(
            offsets,
            recut.map(|r| (r.first, r.last)),
            recut.and_then(|r| r.floor),
        );
        let (mut rows, mut split_up) = (0, false);
        while let Some(range) = split.next_piece() {
            let piece = if range.len() == batch.rows.len() {
                batch.clone()
            } else {
                Arc::new(batch.piece(range.clone()))
            };
            match self.land(&piece).await {
                Ok(()) => rows += range.len() as u64,
                Err(ProcessorError::Refused(reason)) => {
                    if !split_up {
                        split_up = true;
                        self.meters.batches_split.increment(1);
                    }
                    if split.refused() {
                        tracing::warn!(partition = batch.partition, rows = range.len(), %reason, "store refused the rows; splitting");
                    } else {
                        self.refused(batch, range.start, &reason).await?;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        self.stats.rows_inserted += rows;
        self.stats.batches += 1;
        self.meters.rows_inserted.increment(rows);
        self.meters.batches.increment(1);
        self.meters.batch_rows.record(rows as f64);
        self.meters
            .insert_seconds
            .record(started.elapsed().as_secs_f64());
        // The oldest row of the batch: what the client that sent it waited longest for.
        if let Some(oldest) = batch.rows.iter().map(StoredRow::stamped_at_ms).min() {
            let now_ms = pitboss_model::Timestamp::now().as_millis();
            let freshness = (now_ms - oldest as i64).max(0) as f64 / 1000.0;
            self.meters.freshness.record(freshness);
            self.meters.freshness_last.set(freshness);
        }
        Ok(())
    }

    /// Sends row `index` of `batch`, which the store refused on its own, to the dead-letter
    /// topic: its record as it came, keyed by where it came from and the store's reason.
    async fn refused(
        &mut self,
        batch: &Batch<R>,
        index: usize,
        reason: &str,
    ) -> Result<(), ProcessorError> {
        let row = &batch.rows[index];
        // Without offsets (Kinesis) the row's position is its sequence number.
        let position = match (
            batch.offsets,
            crate::rows::split_sequence(row.bus_sequence()),
        ) {
            (Some(_), _) => row.bus_offset().to_string(),
            (None, Some((_, sequence))) => sequence.to_owned(),
            (None, None) => "?".to_owned(),
        };
        tracing::warn!(partition = batch.partition, %position, %reason, "row refused by the store; dead-lettered");
        let key = format!(
            "{}:{}:{position}: {}",
            batch.topic,
            batch.partition,
            ProcessorError::Refused(reason.to_owned())
        );
        let value = batch.values.get(index).cloned().unwrap_or_default();
        dead_letter(
            &self.meters.dead_letters,
            &self.dead_letters,
            &self.dead_letter_topic,
            vec![OutRecord::new(key, value)],
            self.backoff,
        )
        .await?;
        self.stats.dead_lettered += 1;
        Ok(())
    }

    /// Inserts one piece until it lands, or until the store refuses its rows or cannot take
    /// it at all. After a failure the store is asked whether the piece landed anyway (a lost
    /// answer; or, on ClickHouse, a materialized view that refused rows the table had taken):
    /// then it is not inserted again.
    async fn land(&mut self, piece: &Arc<Batch<R>>) -> Result<(), ProcessorError> {
        let (initial, max) = self.backoff;
        let mut delay = initial;
        let mut piece = piece.clone();
        let mut schema_since: Option<Instant> = None;
        loop {
            let result = self
                .health
                .watch(&self.topic, Call::Insert, self.sink.insert(&piece))
                .await;
            let error = match result {
                Ok(()) => return Ok(()),
                Err(e @ ProcessorError::Refused(_)) => e,
                Err(ProcessorError::Schema(reason))
                    if schema_since.get_or_insert_with(Instant::now).elapsed() < SCHEMA_GRACE =>
                {
                    // Nothing was written: the same piece again, the landed check not needed.
                    tracing::warn!(partition = piece.partition, %reason, retry_in_ms = delay.as_millis() as u64, "insert refused by the schema; trying again (a migration in flight?)");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(max);
                    continue;
                }
                Err(e) if !e.is_retryable() => return Err(e),
                Err(e) => {
                    self.stats.insert_retries += 1;
                    self.meters.insert_retries.increment(1);
                    tracing::warn!(partition = piece.partition, rows = piece.rows.len(), error = %e, retry_in_ms = delay.as_millis() as u64, "insert failed");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(max);
                    e
                }
            };
            let last = piece.offsets.map(|(_, last)| last);
            let partition = piece.partition;
            let since = piece
                .rows
                .iter()
                .map(|r| r.stamped_at_ms() as i64)
                .min()
                .map(|ms| ms - REPLAY_MARGIN_MS);
            let landed = match (last, piece.rows.last().map(|r| r.bus_sequence().to_owned())) {
                (Some(last), _) => with_retry(
                    &self.health,
                    self.sink.clone(),
                    self.topic.clone(),
                    self.backoff,
                    |sink, topic| async move { sink.high_water(&topic, partition, since).await },
                )
                .await?
                .is_some_and(|hw| hw >= last),
                // Over Kinesis: the piece's last row's sequence number against its shard's mark.
                (None, Some(tagged)) => match crate::rows::split_sequence(&tagged) {
                    Some((shard, sequence)) => {
                        let shard = shard.to_owned();
                        let mark = with_retry(
                            &self.health,
                            self.sink.clone(),
                            self.topic.clone(),
                            self.backoff,
                            |sink, topic| {
                                let shard = shard.clone();
                                async move { sink.high_water_sequence(&topic, &shard, since).await }
                            },
                        )
                        .await?;
                        mark.is_some_and(|m| {
                            Position::Sequence(m) >= Position::Sequence(sequence.to_owned())
                        })
                    }
                    None => false,
                },
                (None, None) => false,
            };
            if landed {
                if let ProcessorError::Refused(reason) = &error {
                    tracing::warn!(partition, %reason, "the store refused rows it had stored (a materialized view?); kept as stored");
                } else {
                    tracing::info!(partition, "the failed insert had landed");
                }
                return Ok(());
            }
            if matches!(error, ProcessorError::Refused(_)) {
                return Err(error);
            }
            // The failed insert may still land (an unanswered one), or have landed with copies
            // dropped from its tail, which the mark above cannot tell: the retry looks every
            // row up.
            if !piece.uncertain {
                piece = Arc::new(Batch {
                    uncertain: true,
                    ..(*piece).clone()
                });
            }
        }
    }
}

/// Calls the store until it answers (it may be down for a while); an error that a retry
/// cannot fix is returned at once.
async fn with_retry<S: ?Sized, T, F, Fut>(
    health: &StoreHealth,
    sink: Arc<S>,
    topic: String,
    (initial, max): (Duration, Duration),
    f: F,
) -> Result<T, ProcessorError>
where
    F: Fn(Arc<S>, String) -> Fut,
    Fut: Future<Output = Result<T, ProcessorError>>,
{
    let mut delay = initial;
    loop {
        match health
            .watch(&topic, Call::Other, f(sink.clone(), topic.clone()))
            .await
        {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, "store unavailable; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(max);
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod metrics_docs {
    use super::METRICS;

    #[test]
    fn every_metric_is_in_the_docs_with_its_kind() {
        let docs = include_str!("../../docs/processor.md");
        for (name, kind, _) in METRICS {
            let row = docs
                .lines()
                .find(|l| l.starts_with(&format!("| `{name}")))
                .unwrap_or_else(|| panic!("{name} is not in docs/processor.md's metrics table"));
            let documented = if *kind == "histogram" {
                row.contains("| histogram |") || row.contains("| summary |")
            } else {
                row.contains(&format!("| {kind} |"))
            };
            assert!(documented, "{name} is a {kind}, docs say: {row}");
        }
    }
}
