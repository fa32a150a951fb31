//! Processor figures on real Kafka and ClickHouse (services from scripts/stack.sh):
//!
//! 1. Rows/s from the bus into ClickHouse (`pitboss_processor::run`, default batching) next to
//!    the raw insert rate of the `clickhouse` crate writing the same rows in one insert,
//!    measured in the same run; from a cold start (group join included) and once running.
//!    Two diagnostics beside it: decoding alone (records in memory to rows) and the pipeline
//!    into a sink that drops the rows (the ceiling set by consuming and decoding).
//! 2. Freshness at 10,000 events/s: events are published with `received_at` = now for 20 s;
//!    every 100 ms the newest stored `received_at` is read back, and freshness is now minus it
//!    (the issue's definition). p50 and p95 of those samples.
//!
//! ```sh
//! scripts/stack.sh start && source .stack/env
//! cargo bench -p pitboss-processor --bench pipeline
//! ```

#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pitboss_bus::kafka::{KafkaBus, KafkaConfig};
use pitboss_bus::{Bus, OutRecord, Position, Record};
use pitboss_model::{Event, Money, Payload, Timestamp, encode_proto};
use pitboss_processor::rows::from_event;
use pitboss_processor::{
    Batch, ClickHouseSink, EventRow, ProcessorConfig, ProcessorError, Sink, run, schema, sink,
};

// The allocator of the `pitboss` binary that runs the processor.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROWS: u64 = 1_000_000;

fn event(i: u64) -> Event {
    let now = Timestamp::now();
    Event {
        event_id: Some(format!("0193735a-0000-7000-8000-{i:012x}")),
        tenant_id: "acme".into(),
        player_id: format!("p{}", i % 10_000),
        session_id: Some(format!("s{}", i % 10_000)),
        occurred_at: now,
        received_at: Some(now),
        schema_version: 1,
        late: false,
        utc_offset_min: None,
        payload: Payload::BetPlaced(pitboss_model::BetPlaced {
            bet_id: format!("b{i}"),
            game_id: format!("slot-{}", i % 40),
            round_id: Some(format!("r{i}")),
            stake: Money::new(100 + (i % 5000) as i64, "EUR"),
            odds: None,
            bet_type: None,
            channel: None,
            device_id: None,
            autoplay: false,
        }),
    }
}

/// With `PITBOSS_BENCH_CLIENT_IDS=1` every record is marked as ingest marks an event whose id
/// the client chose, so every batch is looked up for copies before its insert.
fn record(i: u64) -> OutRecord {
    let e = event(i);
    let r = OutRecord::new(format!("acme:{}", e.player_id), encode_proto(&e));
    if std::env::var_os("PITBOSS_BENCH_CLIENT_IDS").is_some() {
        r.with_header(pitboss_bus::header::CLIENT_ID, "1")
    } else {
        r
    }
}

async fn database(url: &str, name: &str) -> clickhouse::Client {
    let db = pitboss_testkit::unique_name(name);
    sink::client(url, "default")
        .query(&format!("CREATE DATABASE {db}"))
        .execute()
        .await
        .unwrap();
    let client = sink::client(url, &db);
    schema::migrate(&client, &schema::Layout::Single)
        .await
        .unwrap();
    client
}

async fn count(client: &clickhouse::Client) -> u64 {
    client
        .query("SELECT count() FROM events")
        .fetch_one::<u64>()
        .await
        .unwrap_or(0)
}

/// Publishes ROWS records to a new topic and runs a processor into `sink` until `stored`
/// reports them all. Rows/s from the processor's start (group join included), and once
/// running (from the first rows seen stored to the last).
async fn through_processor<F, Fut>(
    bus: &Arc<KafkaBus>,
    sink: Arc<dyn Sink<EventRow>>,
    stored: F,
) -> (f64, f64)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = u64>,
{
    let topic = pitboss_testkit::unique_name("bench_events");
    bus.create_topic(&topic, 4).await.unwrap();
    let publisher = bus.publisher();
    for chunk in (0..ROWS).collect::<Vec<_>>().chunks(10_000) {
        publisher
            .publish(&topic, chunk.iter().map(|i| record(*i)).collect())
            .await
            .unwrap();
    }
    let config = ProcessorConfig {
        topic: topic.clone(),
        group: format!("{topic}_g"),
        dead_letter_topic: format!("{topic}_dead_letter"),
        ..ProcessorConfig::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let t = Instant::now();
    let task = tokio::spawn(run::<EventRow>(bus.clone(), sink, config, async {
        let _ = stopped.await;
    }));
    let mut first = None;
    loop {
        let n = stored().await;
        if n > 0 && first.is_none() {
            first = Some((t.elapsed(), n));
        }
        if n >= ROWS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total = t.elapsed();
    let rate = ROWS as f64 / total.as_secs_f64();
    // Once running: from the first rows seen stored to the last (start-up excluded).
    let steady = first.map_or(f64::NAN, |(at, n): (Duration, u64)| {
        (ROWS - n) as f64 / (total - at).as_secs_f64()
    });
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    (rate, steady)
}

/// Counts rows and drops them.
#[derive(Debug, Default)]
struct Discard {
    rows: AtomicU64,
}

#[async_trait::async_trait]
impl Sink<EventRow> for Discard {
    async fn high_water(
        &self,
        _: &str,
        _: u32,
        _: Option<i64>,
    ) -> Result<Option<u64>, ProcessorError> {
        Ok(None)
    }

    async fn insert(&self, batch: &Arc<Batch<EventRow>>) -> Result<(), ProcessorError> {
        self.rows
            .fetch_add(batch.rows.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let url = pitboss_testkit::clickhouse();
    let kafka = pitboss_testkit::kafka();
    let bus = Arc::new(KafkaBus::new(KafkaConfig::new(kafka)).unwrap());

    // Raw: the clickhouse crate inserting the same rows, one insert.
    let raw_db = database(&url, "bench_raw").await;
    let rows: Vec<_> = (0..ROWS)
        .map(|i| from_event(event(i), "events", 0, i).unwrap())
        .collect();
    let t = Instant::now();
    let mut insert = raw_db
        .insert::<pitboss_processor::rows::EventRow>("events")
        .await
        .unwrap();
    for r in &rows {
        insert.write(r).await.unwrap();
    }
    insert.end().await.unwrap();
    let raw = ROWS as f64 / t.elapsed().as_secs_f64();
    drop(rows);

    // Decode alone: records already in memory turned into rows.
    let records: Vec<Record> = (0..ROWS)
        .map(|i| {
            let r = record(i);
            Record {
                partition: 0,
                position: Position::Offset(i as i64),
                key: r.key,
                value: r.value,
                timestamp_ms: 0,
                topic: "events".into(),
                headers: Default::default(),
            }
        })
        .collect();
    let t = Instant::now();
    let decoded = records
        .iter()
        .filter(|r| pitboss_processor::rows::row("events", r).is_ok())
        .count();
    let decode = decoded as f64 / t.elapsed().as_secs_f64();
    drop(records);

    // Pipeline: the records already on the bus, the processor from a cold start to the last row.
    let db = database(&url, "bench_pipeline").await;
    let (pipeline, pipeline_steady) =
        through_processor(&bus, Arc::new(ClickHouseSink::new(db.clone())), || {
            let db = db.clone();
            async move { count(&db).await }
        })
        .await;

    // Diagnostic: the same without ClickHouse (rows counted and dropped): the ceiling set by
    // consuming and decoding.
    let counted = Arc::new(Discard::default());
    let (decode_only, _) = through_processor(&bus, counted.clone(), || {
        let counted = counted.clone();
        async move { counted.rows.load(Ordering::Relaxed) }
    })
    .await;

    // Freshness at 10,000 events/s for 20 s.
    let db = database(&url, "bench_fresh").await;
    let topic = pitboss_testkit::unique_name("bench_fresh");
    bus.create_topic(&topic, 4).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run::<EventRow>(
        bus.clone(),
        Arc::new(ClickHouseSink::new(db.clone())),
        ProcessorConfig {
            topic: topic.clone(),
            group: format!("{topic}_g"),
            dead_letter_topic: format!("{topic}_dead_letter"),
            ..ProcessorConfig::default()
        },
        async {
            let _ = stopped.await;
        },
    ));
    let publisher = bus.publisher();
    let pub_topic = topic.clone();
    let publishing = tokio::spawn(async move {
        // 100 events every 10 ms.
        let start = Instant::now();
        for k in 0..2000u64 {
            let batch = (k * 100..(k + 1) * 100).map(record).collect();
            publisher.publish(&pub_topic, batch).await.unwrap();
            tokio::time::sleep_until((start + Duration::from_millis(10 * (k + 1))).into()).await;
        }
    });
    let mut samples = Vec::new();
    let sampling_start = Instant::now();
    while !publishing.is_finished() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let newest = db
            .query("SELECT max(received_at_ms) FROM events")
            .fetch_one::<u64>()
            .await
            .unwrap_or(0);
        // Skip the first 2 s (group join) and empty reads.
        if newest > 0 && sampling_start.elapsed() > Duration::from_secs(2) {
            let now = Timestamp::now().as_millis() as f64;
            samples.push((now - newest as f64) / 1000.0);
        }
    }
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    samples.sort_by(f64::total_cmp);

    println!("processor pipeline, {ROWS} rows, 4 partitions, default batching (100k rows / 1 s):");
    println!("  raw clickhouse insert (one insert):   {raw:>12.0} rows/s");
    println!(
        "  bus -> processor -> clickhouse:       {pipeline:>12.0} rows/s  (ratio {:.2}; from a cold start, group join included)",
        pipeline / raw
    );
    println!(
        "    once running:                        {pipeline_steady:>12.0} rows/s  (ratio {:.2})",
        pipeline_steady / raw
    );
    println!("  decode alone (records in memory -> rows): {decode:>8.0} rows/s");
    println!(
        "  bus -> processor -> (discarded):       {decode_only:>12.0} rows/s  (the consume + decode ceiling)"
    );
    println!(
        "freshness at 10,000 events/s ({} samples): p50 {:.3} s, p95 {:.3} s, max {:.3} s",
        samples.len(),
        percentile(&samples, 0.5),
        percentile(&samples, 0.95),
        samples.last().copied().unwrap_or(f64::NAN)
    );
}
