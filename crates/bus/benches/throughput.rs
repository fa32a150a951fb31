//! Publish and consume throughput of each bus implementation, each next to a baseline measured
//! in the same run: the raw client doing the same writes without the bus layer.
//!
//! ```sh
//! scripts/stack.sh start && source .stack/env
//! cargo bench -p pitboss-bus --bench throughput
//! ```
//!
//! Without `PITBOSS_TEST_KAFKA` / `PITBOSS_TEST_KINESIS` only the embedded log is measured
//! (and the run says so). Records are 300-byte values keyed over 1,000 players; publishers run
//! 8 concurrent tasks sending batches of 100.

#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use pitboss_bus::embedded::{EmbeddedBus, EmbeddedConfig};
use pitboss_bus::{Bus, ConsumerConfig, Delivery, OutRecord, Publisher};

const BATCH: usize = 100;
const TASKS: usize = 8;

fn records(n: usize, salt: usize) -> Vec<OutRecord> {
    (0..n)
        .map(|i| {
            let mut value = vec![0u8; 300];
            for (j, b) in value.iter_mut().enumerate() {
                *b = ((i * 31 + j * 7 + salt) % 251) as u8;
            }
            OutRecord::new(format!("tenant-1:player-{}", (i + salt) % 1000), value)
        })
        .collect()
}

/// Publishes `n` records from `TASKS` concurrent tasks in batches of `BATCH`; returns the time.
async fn publish_n(publisher: Arc<dyn Publisher>, topic: &str, n: usize) -> Duration {
    let per_task = n / TASKS;
    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let publisher = publisher.clone();
            let topic = topic.to_owned();
            let recs = records(per_task, t * per_task);
            tokio::spawn(async move {
                for chunk in recs.chunks(BATCH) {
                    publisher.publish(&topic, chunk.to_vec()).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

/// Consumes `n` records with a fresh group member; times from the moment its partitions are
/// assigned (the first fetch included, the group join not) to the last record.
async fn consume_n(bus: &dyn Bus, topic: &str, n: usize) -> Duration {
    let group = format!("bench-{}", rand::random::<u64>());
    let mut c = bus
        .consumer(&group, topic, ConsumerConfig::default())
        .await
        .unwrap();
    let mut got = 0;
    let mut start: Option<Instant> = None;
    while got < n {
        match c.poll(5_000, Duration::from_millis(500)).await.unwrap() {
            Delivery::Assigned(_) => {
                start.get_or_insert_with(Instant::now);
            }
            Delivery::Records(rs) => {
                if let Some(last) = rs.last() {
                    c.store(&last.topic, last.partition, &last.position).ok();
                }
                got += rs.len();
            }
            Delivery::Revoking(_) => {}
        }
    }
    let elapsed = start.map_or(Duration::ZERO, |s| s.elapsed());
    c.close().await.unwrap();
    elapsed
}

/// Registers `publish` (and, when `consume`, `consume` over the same topic) for one bus.
fn publish_and_consume(
    g: &mut BenchmarkGroup<'_, WallTime>,
    rt: &tokio::runtime::Runtime,
    bus: Arc<dyn Bus>,
    topic: &str,
    n: usize,
    consume: bool,
) {
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("publish", |b| {
        b.to_async(rt).iter_custom(|iters| {
            let (bus, topic) = (bus.clone(), topic.to_owned());
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += publish_n(bus.publisher(), &topic, n).await;
                }
                total
            }
        })
    });
    if !consume {
        return;
    }
    rt.block_on(publish_n(bus.publisher(), topic, n)); // data for consume, whatever ran before
    g.bench_function("consume", |b| {
        b.to_async(rt).iter_custom(|iters| {
            let (bus, topic) = (bus.clone(), topic.to_owned());
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += consume_n(&*bus, &topic, n).await;
                }
                total
            }
        })
    });
}

fn bench_embedded(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    const N: usize = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path(), EmbeddedConfig::default()).unwrap();
    rt.block_on(bus.create_topic("bench", 8)).unwrap();
    let mut g = c.benchmark_group("embedded");
    g.sample_size(10);
    publish_and_consume(&mut g, rt, Arc::new(bus), "bench", N, true);
    // Baseline: the same rows straight into SQLite (same pragmas, one transaction per batch
    // of 100, one writer), i.e. the storage engine without the bus around it.
    g.bench_function("baseline_sqlite_insert", |b| {
        let base = tempfile::tempdir().unwrap();
        let conn = rusqlite::Connection::open(base.path().join("raw.sqlite")).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "synchronous", "FULL").unwrap();
        conn.execute_batch(
            "CREATE TABLE r (p INTEGER, o INTEGER, ts INTEGER, k TEXT, v BLOB, PRIMARY KEY (p, o)) WITHOUT ROWID",
        )
        .unwrap();
        let recs = records(N, 0);
        let mut offset = 0i64;
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                for chunk in recs.chunks(BATCH) {
                    let tx = conn.unchecked_transaction().unwrap();
                    {
                        let mut st = tx.prepare_cached("INSERT INTO r VALUES (?1, ?2, ?3, ?4, ?5)").unwrap();
                        for r in chunk {
                            offset += 1;
                            st.execute(rusqlite::params![offset % 8, offset, 0, r.key, r.value]).unwrap();
                        }
                    }
                    tx.commit().unwrap();
                }
            }
            start.elapsed()
        })
    });
    g.finish();
}

#[cfg(feature = "kafka")]
fn bench_kafka(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    use pitboss_bus::kafka::{KafkaBus, KafkaConfig};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    const N: usize = 100_000;
    let Ok(bootstrap) = std::env::var("PITBOSS_TEST_KAFKA") else {
        eprintln!("PITBOSS_TEST_KAFKA not set: Kafka not measured (start scripts/stack.sh)");
        return;
    };
    let bus = KafkaBus::new(KafkaConfig::new(&bootstrap)).unwrap();
    let topic = format!("bench-{}", rand::random::<u32>());
    rt.block_on(bus.create_topic(&topic, 8)).unwrap();
    let mut g = c.benchmark_group("kafka");
    g.sample_size(10);
    publish_and_consume(&mut g, rt, Arc::new(bus), &topic, N, true);
    // Baseline: rdkafka's FutureProducer with the same settings, every record sent at once and
    // all deliveries awaited (the fastest way to use it), no bus layer.
    let raw: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    let recs = records(N, 0);
    g.bench_function("baseline_rdkafka_produce", |b| {
        b.to_async(rt).iter_custom(|iters| {
            let (raw, topic, recs) = (raw.clone(), topic.clone(), recs.clone());
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    let futures: Vec<_> = recs
                        .iter()
                        .map(|r| {
                            raw.send_result(
                                FutureRecord::to(&topic)
                                    .key(r.key.as_bytes())
                                    .payload(&r.value),
                            )
                            .unwrap()
                        })
                        .collect();
                    for f in futures {
                        f.await.unwrap().unwrap();
                    }
                }
                start.elapsed()
            }
        })
    });
    g.finish();
}

#[cfg(feature = "kinesis")]
fn bench_kinesis(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    use pitboss_bus::kinesis::{KinesisBus, KinesisConfig};
    const N: usize = 2_000;
    let Ok(endpoint) = std::env::var("PITBOSS_TEST_KINESIS") else {
        eprintln!("PITBOSS_TEST_KINESIS not set: Kinesis not measured (start scripts/stack.sh)");
        return;
    };
    let mut config = KinesisConfig::new("us-east-1");
    config.endpoint_url = Some(endpoint.clone());
    config.static_credentials = Some(("test".into(), "test".into()));
    config.lease_table = "pitboss-leases-bench".into();
    let bus = rt.block_on(KinesisBus::new(config)).unwrap();
    let topic = format!("bench-{}", rand::random::<u32>());
    rt.block_on(bus.create_topic(&topic, 4)).unwrap();
    let mut g = c.benchmark_group("kinesis_moto");
    g.sample_size(10);
    // No consume figure on moto: 2,000 records come back in one or two GetRecords calls, so the
    // timed part is a few milliseconds of moto's single response (see docs/benchmarks.md).
    publish_and_consume(&mut g, rt, Arc::new(bus), &topic, N, false);
    // Baseline: raw PutRecords calls of 100 records from the same 8 tasks, no bus layer.
    let sdk = rt.block_on(
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(&endpoint)
            .credentials_provider(aws_credential_types::Credentials::new(
                "test", "test", None, None, "bench",
            ))
            .load(),
    );
    let raw = aws_sdk_kinesis::Client::new(&sdk);
    g.bench_function("baseline_put_records", |b| {
        b.to_async(rt).iter_custom(|iters| {
            let (raw, topic) = (raw.clone(), topic.clone());
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    let tasks: Vec<_> = (0..TASKS)
                        .map(|t| {
                            let (raw, topic) = (raw.clone(), topic.clone());
                            tokio::spawn(async move {
                                for chunk in records(N / TASKS, t).chunks(BATCH) {
                                    let entries = chunk
                                        .iter()
                                        .map(|r| {
                                            aws_sdk_kinesis::types::PutRecordsRequestEntry::builder(
                                            )
                                            .partition_key(&r.key)
                                            .data(aws_sdk_kinesis::primitives::Blob::new(
                                                r.value.clone(),
                                            ))
                                            .build()
                                            .unwrap()
                                        })
                                        .collect();
                                    raw.put_records()
                                        .stream_name(&topic)
                                        .set_records(Some(entries))
                                        .send()
                                        .await
                                        .unwrap();
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.unwrap();
                    }
                }
                start.elapsed()
            }
        })
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    bench_embedded(c, &rt);
    #[cfg(feature = "kafka")]
    bench_kafka(c, &rt);
    #[cfg(feature = "kinesis")]
    bench_kinesis(c, &rt);
}

criterion_group! {
    name = throughput;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    targets = benches
}
criterion_main!(throughput);
