//! Kafka group members, beyond the contract: a start option still stores and commits, a start
//! time past the end starts at the end, companions are checked when the member is created, and
//! the eager (range) rebalance that companions bring keeps the revoke handshake.

use std::collections::BTreeSet;
use std::time::Duration;

use pitboss_bus::{
    BusError, Consumer, ConsumerConfig, Delivery, Partition, Position, Record, StartFrom,
};
use tokio::time::Instant;

use super::contract::{self, Member, PATIENCE};
use super::{consume_until, make_bus, out_values, publish_sentinels, values, without};

fn start(start: StartFrom) -> ConsumerConfig {
    ConsumerConfig {
        start,
        ..ConsumerConfig::default()
    }
}

/// Polls until the member owns `partitions` partitions; returns any records it got meanwhile.
async fn until_assigned(consumer: &mut dyn Consumer, partitions: usize) -> Vec<Record> {
    let mut got = Vec::new();
    let start = Instant::now();
    while consumer.assignment().len() < partitions {
        assert!(start.elapsed() < PATIENCE, "never assigned");
        if let Delivery::Records(rs) = consumer
            .poll(1000, Duration::from_millis(200))
            .await
            .unwrap()
        {
            got.extend(rs);
        }
    }
    got
}

/// Stores every record of `records` and commits.
async fn store_all(consumer: &mut dyn Consumer, records: &[Record]) {
    for r in records {
        consumer.store(&r.topic, r.partition, &r.position).unwrap();
    }
    consumer.commit().await.unwrap();
}

/// `Earliest` reads a partition from its first record whatever the group committed, and still
/// stores and commits as usual: the next `Committed` member resumes after that commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn start_earliest_ignores_the_commit_and_commits() {
    let bus = make_bus().await;
    let topic = pitboss_testkit::unique_name("earliest");
    let group = pitboss_testkit::unique_name("g");
    bus.create_topic(&topic, 2).await.unwrap();
    let first = contract::records(8, 5, "e1");
    contract::publish_all(&*bus, &topic, first.clone(), 100).await;

    // A member reads everything and commits it (sentinels included).
    let mut a = bus
        .consumer(&group, &topic, ConsumerConfig::default())
        .await
        .unwrap();
    let s1 = publish_sentinels(&*bus, &topic, "e1").await;
    let all = consume_until(&mut *a, &s1).await;
    assert_eq!(values(&without(&all, &[&s1])), out_values(&first));
    store_all(&mut *a, &all).await;
    a.close().await.unwrap();

    // Earliest: everything again, despite the commit.
    let mut b = bus
        .consumer(&group, &topic, start(StartFrom::Earliest))
        .await
        .unwrap();
    let s2 = publish_sentinels(&*bus, &topic, "e2").await;
    let all = consume_until(&mut *b, &s2).await;
    assert_eq!(
        values(&without(&all, &[&s1, &s2])),
        out_values(&first),
        "earliest rereads all"
    );
    store_all(&mut *b, &all).await;
    b.close().await.unwrap();

    // b's commit holds: a Committed member sees only what comes next.
    let second = contract::records(8, 5, "e3");
    contract::publish_all(&*bus, &topic, second.clone(), 100).await;
    let mut c = bus
        .consumer(&group, &topic, ConsumerConfig::default())
        .await
        .unwrap();
    let s3 = publish_sentinels(&*bus, &topic, "e3").await;
    let got = without(&consume_until(&mut *c, &s3).await, &[&s3]);
    assert_eq!(
        values(&got),
        out_values(&second),
        "resumes after the commit"
    );
    c.close().await.unwrap();
}

/// A start time with no record at or after it starts each partition at its end when assigned:
/// nothing already stored is read, everything published after the assignment is.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn start_at_a_time_past_the_end_starts_at_the_end() {
    let bus = make_bus().await;
    let topic = pitboss_testkit::unique_name("tend");
    bus.create_topic(&topic, 2).await.unwrap();
    contract::publish_all(&*bus, &topic, contract::records(8, 5, "old"), 100).await;
    let in_an_hour = super::now_ms() + 3_600_000;
    let mut m = bus
        .consumer(
            &pitboss_testkit::unique_name("g"),
            &topic,
            start(StartFrom::Timestamp(in_an_hour)),
        )
        .await
        .unwrap();
    let before = until_assigned(&mut *m, 2).await;
    assert!(
        before.is_empty(),
        "nothing before the end: {}",
        before.len()
    );
    let later = contract::records(4, 2, "later");
    contract::publish_all(&*bus, &topic, later.clone(), 100).await;
    let sentinels = publish_sentinels(&*bus, &topic, "t").await;
    let got = without(&consume_until(&mut *m, &sentinels).await, &[&sentinels]);
    assert_eq!(values(&got), out_values(&later));
    m.close().await.unwrap();
}

/// A companion must exist, differ from the topic, and have the topic's partition count; the
/// refusal names both counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn companions_are_checked_when_joining() {
    let bus = make_bus().await;
    let (topic, other) = (
        pitboss_testkit::unique_name("main"),
        pitboss_testkit::unique_name("other"),
    );
    bus.create_topic(&topic, 4).await.unwrap();
    bus.create_topic(&other, 3).await.unwrap();
    let with = |companions: Vec<String>| ConsumerConfig {
        companions,
        ..ConsumerConfig::default()
    };
    let group = pitboss_testkit::unique_name("g");

    let err = bus
        .consumer(&group, &topic, with(vec![other.clone()]))
        .await
        .unwrap_err();
    let BusError::Config(text) = &err else {
        panic!("{err:?}")
    };
    assert!(
        text.contains(&format!("{other} has 3 partitions"))
            && text.contains(&format!("{topic} has 4")),
        "{text}"
    );

    let missing = pitboss_testkit::unique_name("missing");
    let err = bus
        .consumer(&group, &topic, with(vec![missing]))
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::UnknownTopic(_)), "{err:?}");

    let err = bus
        .consumer(&group, &topic, with(vec![topic.clone()]))
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::Config(_)), "{err:?}");
}

fn id(r: &Record) -> (String, Partition, Position) {
    (r.topic.to_string(), r.partition, r.position.clone())
}

/// With companions the assignor (range) is eager: a second member joining revokes every
/// partition of the first. The Revoking → store → commit handshake still holds on both topics:
/// every record is made durable exactly once, and the second member only gets what the first
/// gave up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn companions_rebalance_without_loss() {
    let bus = make_bus().await;
    let (topic, overflow) = (
        pitboss_testkit::unique_name("main"),
        pitboss_testkit::unique_name("overflow"),
    );
    let group = pitboss_testkit::unique_name("g");
    bus.create_topic(&topic, 4).await.unwrap();
    bus.create_topic(&overflow, 4).await.unwrap();
    let config = ConsumerConfig {
        companions: vec![overflow.clone()],
        ..ConsumerConfig::default()
    };
    let first = contract::records(40, 10, "r1");
    contract::publish_all(&*bus, &topic, first.clone(), 100).await;
    contract::publish_all(&*bus, &overflow, first.clone(), 100).await;

    let mut a = Member::join_with(&*bus, &group, &topic, config.clone()).await;
    a.flush_every = 40;
    let start = Instant::now();
    while a.received.len() < 300 {
        assert!(start.elapsed() < PATIENCE);
        a.step(Duration::from_millis(100)).await;
    }
    let mut b = Member::join_with(&*bus, &group, &topic, config).await;
    let second = contract::records(40, 10, "r2");
    let total = 2 * (first.len() + second.len());
    let mut published_second = false;
    let start = Instant::now();
    loop {
        a.step(Duration::from_millis(50)).await;
        b.step(Duration::from_millis(50)).await;
        if !published_second && !a.revoked.is_empty() {
            contract::publish_all(&*bus, &topic, second.clone(), 100).await;
            contract::publish_all(&*bus, &overflow, second.clone(), 100).await;
            published_second = true;
        }
        let durable: BTreeSet<_> = a.durable.iter().chain(&b.durable).map(id).collect();
        if published_second && durable.len() == total {
            break;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "durable {} of {total}; a revoked {:?}",
            durable.len(),
            a.revoked
        );
    }
    // Eager: the first revoke took all four partitions, not just the ones that moved.
    let first_revoke: BTreeSet<Partition> = a.revoked.iter().take(4).copied().collect();
    assert_eq!(first_revoke, (0..4).collect(), "revoked: {:?}", a.revoked);
    assert!(
        !b.durable.is_empty(),
        "the second member took partitions over"
    );
    assert_eq!(
        a.durable.len() + b.durable.len(),
        total,
        "a record was made durable twice"
    );
    let a_kept: BTreeSet<Partition> = a.consumer.assignment().into_iter().collect();
    for r in &b.durable {
        assert!(!a_kept.contains(&r.partition), "b read a partition a owns");
    }
    for (name, m) in [("a", &a), ("b", &b)] {
        let topics: BTreeSet<&str> = m.durable.iter().map(|r| &*r.topic).collect();
        assert_eq!(topics.len(), 2, "{name} made both topics durable");
    }
    a.flush_and_commit().await;
    b.flush_and_commit().await;
    a.consumer.close().await.unwrap();
    b.consumer.close().await.unwrap();
}

/// A compacted state topic: created with one partition and `cleanup.policy=compact`, accepted
/// again as it is; an existing topic that would expire its keys, or has several partitions, is
/// refused naming the problem; a tombstone reads back as an empty value and the record is kept
/// (compaction removes it later).
#[tokio::test]
async fn a_compacted_state_topic_is_made_once_and_a_topic_that_is_not_one_is_refused() {
    let bus = make_bus().await;
    let name = pitboss_testkit::unique_name("state");
    assert!(bus.create_compacted_topic(&name).await.unwrap(), "made");
    assert!(!bus.create_compacted_topic(&name).await.unwrap(), "there");
    assert_eq!(bus.partition_count(&name).await.unwrap(), 1);
    let publisher = bus.publisher();
    publisher
        .publish(
            &name,
            vec![
                pitboss_bus::OutRecord::new("k", b"v".to_vec()),
                pitboss_bus::OutRecord::new("k", Vec::new())
                    .with_header(pitboss_bus::header::TOMBSTONE, "1"),
            ],
        )
        .await
        .unwrap();
    let mut reader = bus
        .reader_all(&name, pitboss_bus::ReadFrom::Earliest)
        .await
        .unwrap();
    let mut got = Vec::new();
    while !reader.caught_up() {
        got.extend(reader.poll(10, Duration::from_millis(500)).await.unwrap());
    }
    let values: Vec<&[u8]> = got.iter().map(|r| r.value.as_slice()).collect();
    assert_eq!(values, [b"v".as_slice(), b"".as_slice()]);

    let plain = pitboss_testkit::unique_name("plain");
    bus.create_topic(&plain, 1).await.unwrap();
    let e = bus.create_compacted_topic(&plain).await.unwrap_err();
    assert!(
        matches!(&e, BusError::Config(m) if m.contains("cleanup.policy") && m.contains(&plain)),
        "{e}"
    );
    let wide = pitboss_testkit::unique_name("wide");
    bus.create_topic(&wide, 3).await.unwrap();
    let e = bus.create_compacted_topic(&wide).await.unwrap_err();
    assert!(
        matches!(&e, BusError::Config(m) if m.contains("3 partitions") && m.contains(&wide)),
        "{e}"
    );
}

/// The records lag a member reports for `partition` of `topic` in `group`.
fn lag_of(text: &str, group: &str, topic: &str, partition: Partition) -> Option<f64> {
    crate::contract::gauge_of(
        text,
        "pitboss_consumer_lag_records",
        group,
        topic,
        partition,
    )
}

use crate::contract::recorder;

/// A partition a rebalance takes away reads 0 in its old member's lag gauge (librdkafka keeps
/// reporting it, no longer `desired`): its last value stayed for ever and the group's summed
/// lag never came back to 0 (docs/processor.md, metrics). The new owner is a plain librdkafka
/// member here, so the only reports of these series are the old member's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_a_rebalance_takes_away_reads_zero_lag_on_its_old_member() {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};

    let handle = recorder();
    let mut config = super::kafka_config();
    config
        .extra
        .insert("statistics.interval.ms".into(), "300".into());
    let bus = pitboss_bus::kafka::KafkaBus::new(config).unwrap();
    let bus: &dyn pitboss_bus::Bus = &bus;
    let topic = pitboss_testkit::unique_name("lagmoved");
    let group = pitboss_testkit::unique_name("g");
    bus.create_topic(&topic, 2).await.unwrap();
    contract::publish_all(bus, &topic, contract::records(20, 2, "l"), 100).await;

    // The first member reads both partitions and processes one record of each: the rest of
    // each is its lag, reported.
    let mut a = bus
        .consumer(&group, &topic, ConsumerConfig::default())
        .await
        .unwrap();
    let mut stored = BTreeSet::new();
    let start = Instant::now();
    let before = loop {
        assert!(start.elapsed() < PATIENCE, "lag never reported on both");
        if let Delivery::Records(rs) = a.poll(1000, Duration::from_millis(100)).await.unwrap() {
            for r in rs {
                if stored.insert(r.partition) {
                    a.store(&r.topic, r.partition, &r.position).unwrap();
                }
            }
        }
        let text = handle.render();
        let lags: Vec<_> = (0..2).map(|p| lag_of(&text, &group, &topic, p)).collect();
        if lags.iter().all(|l| l.is_some_and(|v| v > 0.0)) {
            break lags;
        }
    };

    // A second member joins (cooperative-sticky, as the first): one partition moves.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let other = {
        let (stop, group, topic) = (stop.clone(), group.clone(), topic.clone());
        std::thread::spawn(move || {
            let b: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", pitboss_testkit::kafka())
                .set("group.id", &group)
                .set("enable.auto.commit", "false")
                .set("partition.assignment.strategy", "cooperative-sticky")
                .create()
                .unwrap();
            b.subscribe(&[&topic]).unwrap();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = b.poll(Duration::from_millis(100));
            }
        })
    };
    let start = Instant::now();
    let gone = loop {
        assert!(start.elapsed() < PATIENCE, "no partition moved");
        if let Delivery::Revoking(parts) = a.poll(1000, Duration::from_millis(100)).await.unwrap() {
            assert_eq!(parts.len(), 1, "{parts:?}");
            break parts[0];
        }
    };
    let kept = 1 - gone;
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < PATIENCE,
            "the moved partition's lag still reads {:?} on its old member",
            lag_of(&handle.render(), &group, &topic, gone)
        );
        // Polling hands the partition over; the statistics after it report the change.
        let _ = a.poll(1000, Duration::from_millis(100)).await.unwrap();
        let text = handle.render();
        if lag_of(&text, &group, &topic, gone) == Some(0.0) {
            // The partition it kept: as before (nothing more was processed).
            assert_eq!(
                lag_of(&text, &group, &topic, kept),
                before[kept as usize],
                "{text}"
            );
            assert_eq!(a.assignment(), vec![kept]);
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    other.join().unwrap();
    a.close().await.unwrap();
}
