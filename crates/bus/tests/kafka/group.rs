//! Kafka group members: where they start (committed, earliest, latest, a time) and companion
//! topics read together with the main topic by the member owning the partition (range
//! assignor), including the eager rebalance's revoke handshake.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use pitboss_bus::{
    Bus, BusError, Consumer, ConsumerConfig, Delivery, Partition, Position, Record, StartFrom,
};
use tokio::time::Instant;

use super::contract::{self, PATIENCE};
use super::{
    consume_until, make_bus, out_values, publish_sentinels, time_boundary, values, without,
};

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

/// `Latest` reads only what is published once the partitions are assigned.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn start_latest_reads_only_later_records() {
    let bus = make_bus().await;
    let topic = pitboss_testkit::unique_name("latest");
    bus.create_topic(&topic, 2).await.unwrap();
    contract::publish_all(&*bus, &topic, contract::records(8, 5, "old"), 100).await;

    let mut m = bus
        .consumer(
            &pitboss_testkit::unique_name("g"),
            &topic,
            start(StartFrom::Latest),
        )
        .await
        .unwrap();
    let before = until_assigned(&mut *m, 2).await;
    assert!(before.is_empty(), "nothing old: {}", before.len());
    let new = contract::records(8, 5, "new");
    contract::publish_all(&*bus, &topic, new.clone(), 100).await;
    let sentinels = publish_sentinels(&*bus, &topic, "l").await;
    let got = without(&consume_until(&mut *m, &sentinels).await, &[&sentinels]);
    assert_eq!(values(&got), out_values(&new));
    m.close().await.unwrap();
}

/// `Timestamp(t)` reads exactly the records stored at or after `t`, whatever was committed; a
/// time past the end reads what comes after the assignment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn start_timestamp_reads_from_that_time() {
    let bus = make_bus().await;
    let topic = pitboss_testkit::unique_name("time");
    let group = pitboss_testkit::unique_name("g");
    bus.create_topic(&topic, 2).await.unwrap();
    let old = contract::records(8, 5, "t-old");
    contract::publish_all(&*bus, &topic, old.clone(), 100).await;
    let t = time_boundary().await;
    let new = contract::records(8, 5, "t-new");
    contract::publish_all(&*bus, &topic, new.clone(), 100).await;

    // The group has committed everything first: Timestamp ignores that.
    let mut a = bus
        .consumer(&group, &topic, ConsumerConfig::default())
        .await
        .unwrap();
    let s1 = publish_sentinels(&*bus, &topic, "t1").await;
    let all = consume_until(&mut *a, &s1).await;
    assert_eq!(all.len(), old.len() + new.len() + s1.len());
    store_all(&mut *a, &all).await;
    a.close().await.unwrap();

    let mut b = bus
        .consumer(&group, &topic, start(StartFrom::Timestamp(t)))
        .await
        .unwrap();
    let s2 = publish_sentinels(&*bus, &topic, "t2").await;
    let got = without(&consume_until(&mut *b, &s2).await, &[&s1, &s2]);
    assert_eq!(values(&got), out_values(&new), "exactly the records from t");
    assert!(got.iter().all(|r| r.timestamp_ms >= t));
    b.close().await.unwrap();

    // An hour ahead: nothing stored yet, so the partitions start at their end.
    let mut c = bus
        .consumer(
            &pitboss_testkit::unique_name("g"),
            &topic,
            start(StartFrom::Timestamp(t + 3_600_000)),
        )
        .await
        .unwrap();
    let before = until_assigned(&mut *c, 2).await;
    assert!(
        before.is_empty(),
        "nothing before the end: {}",
        before.len()
    );
    let later = contract::records(4, 2, "t-later");
    contract::publish_all(&*bus, &topic, later.clone(), 100).await;
    let s3 = publish_sentinels(&*bus, &topic, "t3").await;
    let got = without(&consume_until(&mut *c, &s3).await, &[&s3]);
    assert_eq!(values(&got), out_values(&later));
    c.close().await.unwrap();
}

/// A group member that processes like a sink, with companions: buffers records, makes them
/// "durable" (stores their offsets, per topic) every `FLUSH` records, when idle, and on revoke.
struct Member {
    name: &'static str,
    consumer: Box<dyn Consumer>,
    received: Vec<Record>,
    pending: Vec<Record>,
    durable: Vec<Record>,
    revokes: usize,
}

const FLUSH: usize = 40;

impl Member {
    async fn new(
        bus: &dyn Bus,
        name: &'static str,
        group: &str,
        topic: &str,
        companion: &str,
    ) -> Member {
        let config = ConsumerConfig {
            companions: vec![companion.to_owned()],
            ..ConsumerConfig::default()
        };
        Member {
            name,
            consumer: bus.consumer(group, topic, config).await.unwrap(),
            received: Vec::new(),
            pending: Vec::new(),
            durable: Vec::new(),
            revokes: 0,
        }
    }

    fn flush(&mut self, only: Option<&[Partition]>) {
        let (go, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|r| only.is_none_or(|ps| ps.contains(&r.partition)));
        for r in &go {
            self.consumer
                .store(&r.topic, r.partition, &r.position)
                .unwrap_or_else(|e| panic!("{}: store {r:?}: {e}", self.name));
        }
        self.durable.extend(go);
        self.pending = keep;
    }

    async fn step(&mut self) {
        match self
            .consumer
            .poll(500, Duration::from_millis(50))
            .await
            .unwrap()
        {
            Delivery::Records(rs) if rs.is_empty() => self.flush(None),
            Delivery::Records(rs) => {
                self.received.extend(rs.iter().cloned());
                self.pending.extend(rs);
                if self.pending.len() >= FLUSH {
                    self.flush(None);
                }
            }
            Delivery::Revoking(parts) => {
                self.flush(Some(&parts));
                self.revokes += 1;
            }
            Delivery::Assigned(_) => {}
        }
    }

    fn owned(&self) -> BTreeSet<Partition> {
        self.consumer.assignment().into_iter().collect()
    }
}

fn id(r: &Record) -> (String, Partition, Position) {
    (r.topic.to_string(), r.partition, r.position.clone())
}

/// Steps both members until they own disjoint, non-empty sets covering all partitions.
async fn settle(a: &mut Member, b: &mut Member, partitions: u32) {
    let start = Instant::now();
    loop {
        a.step().await;
        b.step().await;
        let (pa, pb) = (a.owned(), b.owned());
        if !pa.is_empty()
            && !pb.is_empty()
            && pa.is_disjoint(&pb)
            && pa.len() + pb.len() == partitions as usize
        {
            return;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "group did not settle: {pa:?} {pb:?}"
        );
    }
}

/// Two members of a group following a companion topic: each member reads the same partition
/// indexes of both topics, so all records of one key, on either topic, go to one member.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn companions_are_read_by_the_owner_of_the_partition() {
    let bus = make_bus().await;
    let (topic, overflow) = (
        pitboss_testkit::unique_name("main"),
        pitboss_testkit::unique_name("overflow"),
    );
    let group = pitboss_testkit::unique_name("g");
    bus.create_topic(&topic, 4).await.unwrap();
    bus.create_topic(&overflow, 4).await.unwrap();
    let mut a = Member::new(&*bus, "a", &group, &topic, &overflow).await;
    let mut b = Member::new(&*bus, "b", &group, &topic, &overflow).await;
    settle(&mut a, &mut b, 4).await;

    let recs = contract::records(40, 5, "co");
    contract::publish_all(&*bus, &topic, recs.clone(), 100).await;
    contract::publish_all(&*bus, &overflow, recs.clone(), 100).await;
    let start = Instant::now();
    while a.received.len() + b.received.len() < 2 * recs.len() {
        assert!(
            start.elapsed() < PATIENCE,
            "{} + {} of {}",
            a.received.len(),
            b.received.len(),
            2 * recs.len()
        );
        a.step().await;
        b.step().await;
    }
    assert_eq!(a.revokes + b.revokes, 0, "the group stayed settled");
    let mut reader_of: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for m in [&a, &b] {
        let mut by_topic: BTreeMap<&str, BTreeSet<Partition>> = BTreeMap::new();
        for r in &m.received {
            reader_of.entry(r.key.clone()).or_default().insert(m.name);
            by_topic.entry(&r.topic).or_default().insert(r.partition);
        }
        assert_eq!(
            by_topic.get(topic.as_str()),
            by_topic.get(overflow.as_str()),
            "{}: the same partitions of both topics",
            m.name
        );
        assert_eq!(by_topic.get(topic.as_str()), Some(&m.owned()), "{}", m.name);
    }
    assert_eq!(reader_of.len(), 40);
    for (key, members) in &reader_of {
        assert_eq!(members.len(), 1, "key {key} read by {members:?}");
    }
    let ids: BTreeSet<_> = a.received.iter().chain(&b.received).map(id).collect();
    assert_eq!(ids.len(), 2 * recs.len(), "no record read twice");
    a.consumer.close().await.unwrap();
    b.consumer.close().await.unwrap();
}

/// A companion must exist, differ from the topic, and have the topic's partition count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn companions_must_be_co_partitioned() {
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
        text.contains(&other) && text.contains('3') && text.contains('4'),
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

/// With companions the assignor is eager: a second member joining revokes everything from the
/// first. The Revoking → store → commit handshake still holds on both topics: every record is
/// made durable exactly once, and records keep the topic they were stored for.
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
    let first = contract::records(40, 10, "r1");
    contract::publish_all(&*bus, &topic, first.clone(), 100).await;
    contract::publish_all(&*bus, &overflow, first.clone(), 100).await;

    let mut a = Member::new(&*bus, "a", &group, &topic, &overflow).await;
    let start = Instant::now();
    while a.received.len() < 300 {
        assert!(start.elapsed() < PATIENCE);
        a.step().await;
    }
    let mut b = Member::new(&*bus, "b", &group, &topic, &overflow).await;
    let second = contract::records(40, 10, "r2");
    let total = 2 * (first.len() + second.len());
    let mut published_second = false;
    let start = Instant::now();
    loop {
        a.step().await;
        b.step().await;
        if !published_second && a.revokes > 0 {
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
            "durable {} of {total}; a revoked {} times",
            durable.len(),
            a.revokes
        );
    }
    assert!(a.revokes > 0, "the first member gave its partitions up");
    assert!(
        !b.durable.is_empty(),
        "the second member took partitions over"
    );
    assert_eq!(
        a.durable.len() + b.durable.len(),
        total,
        "a record was made durable twice"
    );
    for m in [&a, &b] {
        let topics: BTreeSet<&str> = m.durable.iter().map(|r| &*r.topic).collect();
        assert_eq!(topics.len(), 2, "{} made both topics durable", m.name);
    }
    a.flush(None);
    b.flush(None);
    a.consumer.commit().await.unwrap();
    b.consumer.commit().await.unwrap();
    a.consumer.close().await.unwrap();
    b.consumer.close().await.unwrap();
}
