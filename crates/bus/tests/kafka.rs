//! The Kafka bus against a real Apache Kafka broker (started by scripts/stack.sh): the shared
//! contract suite, failures only a networked bus has, and what the contract leaves to each
//! implementation about start options and companions ([`group`]) and readers ([`reader`]).

#![allow(clippy::unwrap_used)]

mod contract;
#[path = "kafka/group.rs"]
mod group;
#[path = "kafka/reader.rs"]
mod reader;
#[path = "kafka/tls.rs"]
mod tls;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pitboss_bus::kafka::{KafkaBus, KafkaConfig};
use pitboss_bus::{Bus, BusError, Consumer, Delivery, OutRecord, Partition, Reader, Record};

fn kafka_config() -> KafkaConfig {
    let mut config = KafkaConfig::new(pitboss_testkit::kafka());
    // An unknown topic fails fast instead of waiting for metadata for 30 s.
    config
        .extra
        .insert("topic.metadata.propagation.max.ms".into(), "2000".into());
    config.delivery_timeout = Duration::from_secs(10);
    config
}

async fn make_bus() -> Arc<dyn Bus> {
    Arc::new(KafkaBus::new(kafka_config()).unwrap())
}

contract_suite!(make_bus);

/// Milliseconds since the Unix epoch, the clock librdkafka stamps produced records with.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Publishes one record to every partition of `topic` (16 keys spread over up to 4 partitions:
/// checked) and returns their values. Once a reader has seen all of them, it has seen
/// everything published to the topic before them.
async fn publish_sentinels(bus: &dyn Bus, topic: &str, tag: &str) -> BTreeSet<Vec<u8>> {
    let recs: Vec<OutRecord> = (0..16)
        .map(|k| OutRecord::new(format!("sentinel:{k}"), format!("sentinel-{tag}-{k}")))
        .collect();
    let acks = bus.publisher().publish(topic, recs.clone()).await.unwrap();
    let partitions = bus.partition_count(topic).await.unwrap();
    let covered: BTreeSet<Partition> = acks.iter().map(|a| a.partition).collect();
    assert_eq!(
        covered,
        (0..partitions).collect(),
        "sentinels must reach every partition"
    );
    recs.into_iter().map(|r| r.value).collect()
}

/// Values of `records`, sorted (duplicates kept, so "exactly these" can be asserted).
fn values(records: &[Record]) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = records.iter().map(|r| r.value.clone()).collect();
    v.sort();
    v
}

fn out_values(records: &[OutRecord]) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = records.iter().map(|r| r.value.clone()).collect();
    v.sort();
    v
}

/// Polls a group member until every sentinel arrived; returns every record polled, sentinels
/// included. Stores nothing.
async fn consume_until(consumer: &mut dyn Consumer, sentinels: &BTreeSet<Vec<u8>>) -> Vec<Record> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let start = Instant::now();
    while !sentinels.is_subset(&seen) {
        assert!(
            start.elapsed() < contract::PATIENCE,
            "sentinels: {} of {}",
            seen.len(),
            sentinels.len()
        );
        if let Delivery::Records(rs) = consumer
            .poll(1000, Duration::from_millis(200))
            .await
            .unwrap()
        {
            seen.extend(rs.iter().map(|r| r.value.clone()));
            out.extend(rs);
        }
    }
    out
}

/// Polls a reader until every sentinel arrived; returns every record polled, sentinels
/// included.
async fn read_until(reader: &mut dyn Reader, sentinels: &BTreeSet<Vec<u8>>) -> Vec<Record> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let start = Instant::now();
    while !sentinels.is_subset(&seen) {
        assert!(
            start.elapsed() < contract::PATIENCE,
            "sentinels: {} of {}",
            seen.len(),
            sentinels.len()
        );
        let rs = reader.poll(1000, Duration::from_millis(200)).await.unwrap();
        seen.extend(rs.iter().map(|r| r.value.clone()));
        out.extend(rs);
    }
    out
}

/// `records` without the sentinels of `sets`.
fn without(records: &[Record], sets: &[&BTreeSet<Vec<u8>>]) -> Vec<Record> {
    records
        .iter()
        .filter(|r| !sets.iter().any(|s| s.contains(&r.value)))
        .cloned()
        .collect()
}

/// Polls a reader until it has caught up with where the partitions ended when it opened.
async fn read_to_end(reader: &mut dyn Reader) -> Vec<Record> {
    let mut out = Vec::new();
    let start = Instant::now();
    while !reader.caught_up() {
        assert!(
            start.elapsed() < contract::PATIENCE,
            "read {} records, not caught up",
            out.len()
        );
        out.extend(reader.poll(1000, Duration::from_millis(200)).await.unwrap());
    }
    out
}

/// With no broker reachable, publish fails within the delivery timeout; nothing is reported
/// as delivered.
#[tokio::test]
async fn publish_to_an_unreachable_broker_fails() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Nothing listens on `port` any more.
    let mut config = KafkaConfig::new(format!("127.0.0.1:{port}"));
    config.delivery_timeout = Duration::from_secs(2);
    let bus = KafkaBus::new(config).unwrap();
    let start = Instant::now();
    let err = bus
        .publisher()
        .publish("events", vec![OutRecord::new("t:p", "x")])
        .await
        .expect_err("no broker: must fail");
    assert!(matches!(err, BusError::Unavailable(_)), "{err:?}");
    assert!(err.is_retryable());
    assert!(start.elapsed() < Duration::from_secs(30));
}

/// The partition count comes from the broker's metadata; a missing topic is `UnknownTopic`
/// (and is not created by asking).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_count_from_metadata() {
    let bus = make_bus().await;
    let topic = pitboss_testkit::unique_name("count");
    bus.create_topic(&topic, 3).await.unwrap();
    assert_eq!(bus.partition_count(&topic).await.unwrap(), 3);

    let missing = pitboss_testkit::unique_name("missing");
    for _ in 0..2 {
        let err = bus.partition_count(&missing).await.unwrap_err();
        assert!(matches!(err, BusError::UnknownTopic(_)), "{err:?}");
        assert!(!err.is_retryable());
    }
}

/// Header bytes count against the record size limit (librdkafka's `message.max.bytes`, 1 MB by
/// default): a record that fits is refused once its headers make it too large.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_count_against_the_size_limit() {
    let bus = make_bus().await;
    let topic = pitboss_testkit::unique_name("hsize");
    bus.create_topic(&topic, 1).await.unwrap();
    let record = OutRecord::new("t:p", vec![b'x'; 990_000]);
    bus.publisher()
        .publish(&topic, vec![record.clone()])
        .await
        .expect("fits without headers");
    let heavy = record.with_header("x-padding", vec![b'h'; 20_000]);
    assert!(heavy.byte_len() > 1_000_000);
    let err = bus
        .publisher()
        .publish(&topic, vec![heavy])
        .await
        .expect_err("headers make it too large");
    assert!(matches!(err, BusError::Rejected(_)), "{err:?}");
}
