//! The processor loop: a consumer-group member that turns records into rows, batches them per
//! partition, inserts each batch (retrying with backoff until it lands, consumption paused
//! meanwhile), and stores and commits the bus offsets only after the insert succeeded.
//!
//! Effectively once: each partition's high-water mark is read from the store when the
//! partition is assigned, and records at or below it are skipped — a batch that landed but
//! whose offsets were never committed (a crash, a lost answer) is not written again. An
//! undecodable record goes to the dead-letter topic with its reason and its partition keeps
//! flowing.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pitboss_bus::{
    Bus, Consumer, ConsumerConfig, Delivery, OutRecord, Partition, Publisher, Record,
};

use crate::ProcessorError;
use crate::batch::{Batch, BatchConfig, Batcher};
use crate::rows::{self, offset_of};
use crate::sink::Sink;

/// Settings of one processor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessorConfig {
    pub topic: String,
    pub group: String,
    /// Where undecodable records go, with the reason in the record key.
    pub dead_letter_topic: String,
    pub batch: BatchConfig,
    /// Records fetched per poll.
    pub poll_max: usize,
    /// First and largest wait between insert retries.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub consumer: ConsumerConfig,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        ProcessorConfig {
            topic: "events".into(),
            group: "pitboss-processor".into(),
            dead_letter_topic: "events_dead_letter".into(),
            batch: BatchConfig::default(),
            poll_max: 10_000,
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(10),
            consumer: ConsumerConfig::default(),
        }
    }
}

/// What a run did (for tests and logs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunStats {
    pub rows_inserted: u64,
    pub batches: u64,
    pub skipped_replays: u64,
    pub dead_lettered: u64,
    pub insert_retries: u64,
}

struct Processor {
    config: ProcessorConfig,
    sink: Arc<dyn Sink>,
    dead_letters: Arc<dyn Publisher>,
    consumer: Box<dyn Consumer>,
    batcher: Batcher,
    /// Per assigned partition: the store's high-water mark (None: nothing stored yet).
    high_water: HashMap<Partition, Option<u64>>,
    stats: RunStats,
}

/// Runs until `shutdown` resolves; then flushes what is open, commits and leaves the group.
pub async fn run(
    bus: Arc<dyn Bus>,
    sink: Arc<dyn Sink>,
    config: ProcessorConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<RunStats, ProcessorError> {
    let consumer = bus
        .consumer(&config.group, &config.topic, config.consumer.clone())
        .await?;
    let mut p = Processor {
        batcher: Batcher::new(&config.topic, config.batch.clone()),
        dead_letters: bus.publisher(),
        config,
        sink,
        consumer,
        high_water: HashMap::new(),
        stats: RunStats::default(),
    };
    tokio::pin!(shutdown);
    loop {
        let wait = p
            .batcher
            .next_due()
            .map_or(Duration::from_millis(500), |d| {
                d.saturating_duration_since(Instant::now())
            })
            .clamp(Duration::from_millis(1), Duration::from_millis(500));
        let delivery = tokio::select! {
            () = &mut shutdown => break,
            d = p.consumer.poll(p.config.poll_max, wait) => d?,
        };
        match delivery {
            Delivery::Records(records) => p.take_records(records).await?,
            Delivery::Assigned(parts) => {
                for part in parts {
                    p.high_water.remove(&part);
                }
            }
            Delivery::Revoking(parts) => {
                // Flush what is open for them; the next poll commits and lets them go.
                for part in parts {
                    if let Some(batch) = p.batcher.take(part) {
                        p.flush(batch).await?;
                    }
                    p.high_water.remove(&part);
                }
            }
        }
        let due = p.batcher.due(Instant::now());
        p.flush_all(due).await?;
    }
    let open = p.batcher.take_all();
    p.flush_all(open).await?;
    p.consumer.close().await?;
    Ok(p.stats)
}

impl Processor {
    fn backoff(&self) -> (Duration, Duration) {
        (self.config.retry_initial, self.config.retry_max)
    }

    async fn high_water(&mut self, partition: Partition) -> Result<Option<u64>, ProcessorError> {
        if let Some(hw) = self.high_water.get(&partition) {
            return Ok(*hw);
        }
        let hw = with_retry(
            self.sink.clone(),
            self.config.topic.clone(),
            self.backoff(),
            |sink, topic| async move { sink.high_water(&topic, partition).await },
        )
        .await?;
        self.high_water.insert(partition, hw);
        Ok(hw)
    }

    async fn take_records(&mut self, records: Vec<Record>) -> Result<(), ProcessorError> {
        let now = Instant::now();
        let mut poison = Vec::new();
        let mut full = Vec::new();
        for record in records {
            let offset = offset_of(&record.position);
            let hw = self.high_water(record.partition).await?;
            if let (Some(o), Some(hw)) = (offset, hw)
                && o <= hw
            {
                self.stats.skipped_replays += 1;
                self.batcher.skip(record.partition, record.position, now);
                continue;
            }
            match rows::row(&self.config.topic, &record) {
                Ok(row) => full.extend(self.batcher.push(
                    record.partition,
                    record.position,
                    offset,
                    row,
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
            let topic = self.config.dead_letter_topic.clone();
            let publisher = self.dead_letters.clone();
            let mut delay = self.config.retry_initial;
            loop {
                match publisher.publish(&topic, poison.clone()).await {
                    Ok(_) => break,
                    Err(e) if e.is_retryable() => {
                        tracing::warn!(error = %e, "dead-letter publish failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(self.config.retry_max);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            self.stats.dead_lettered += n;
            metrics::counter!("pitboss_processor_dead_letters_total").increment(n);
        }
        self.flush_all(full).await
    }

    async fn flush_all(&mut self, batches: Vec<Batch>) -> Result<(), ProcessorError> {
        let mut stored = false;
        for batch in batches {
            self.insert(&batch).await?;
            self.consumer.store(batch.partition, &batch.last)?;
            stored = true;
        }
        if stored {
            self.consumer.commit().await?;
        }
        Ok(())
    }

    async fn flush(&mut self, batch: Batch) -> Result<(), ProcessorError> {
        self.flush_all(vec![batch]).await
    }

    /// Inserts until it lands. After a failure the store is asked whether the batch landed
    /// anyway (a lost answer): then it is not inserted again.
    async fn insert(&mut self, batch: &Batch) -> Result<(), ProcessorError> {
        if batch.rows.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let mut delay = self.config.retry_initial;
        loop {
            match self.sink.insert(batch).await {
                Ok(()) => break,
                Err(e) if !e.is_retryable() => return Err(e),
                Err(e) => {
                    self.stats.insert_retries += 1;
                    metrics::counter!("pitboss_processor_insert_retries_total").increment(1);
                    tracing::warn!(partition = batch.partition, rows = batch.rows.len(), error = %e, retry_in_ms = delay.as_millis() as u64, "insert failed");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.config.retry_max);
                    let last = batch.offsets.map(|(_, last)| last);
                    let partition = batch.partition;
                    let landed = with_retry(
                        self.sink.clone(),
                        self.config.topic.clone(),
                        self.backoff(),
                        |sink, topic| async move { sink.high_water(&topic, partition).await },
                    )
                    .await?;
                    if let (Some(last), Some(hw)) = (last, landed)
                        && hw >= last
                    {
                        tracing::info!(partition = batch.partition, "the failed insert had landed");
                        break;
                    }
                }
            }
        }
        let rows = batch.rows.len() as u64;
        self.stats.rows_inserted += rows;
        self.stats.batches += 1;
        if let Some((_, last)) = batch.offsets {
            self.high_water.insert(batch.partition, Some(last));
        }
        metrics::counter!("pitboss_processor_rows_inserted_total").increment(rows);
        metrics::histogram!("pitboss_processor_batch_rows").record(rows as f64);
        metrics::histogram!("pitboss_processor_insert_seconds")
            .record(started.elapsed().as_secs_f64());
        if let Some(newest) = batch.rows.iter().map(|r| r.received_at_ms).max() {
            let now_ms = pitboss_model::Timestamp::now().as_millis();
            metrics::histogram!("pitboss_processor_freshness_seconds")
                .record((now_ms - newest as i64).max(0) as f64 / 1000.0);
        }
        Ok(())
    }
}

/// Calls the store until it answers (it may be down for a while).
async fn with_retry<T, F, Fut>(
    sink: Arc<dyn Sink>,
    topic: String,
    (initial, max): (Duration, Duration),
    f: F,
) -> Result<T, ProcessorError>
where
    F: Fn(Arc<dyn Sink>, String) -> Fut,
    Fut: Future<Output = Result<T, ProcessorError>>,
{
    let mut delay = initial;
    loop {
        match f(sink.clone(), topic.clone()).await {
            Ok(v) => return Ok(v),
            Err(e) => {
                tracing::warn!(error = %e, "store unavailable; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(max);
            }
        }
    }
}
