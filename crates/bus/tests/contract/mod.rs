//! The bus contract, as one suite every implementation must pass: order per key, no loss across
//! a consumer restart, redelivery after a crash before commit, members of a group split the
//! partitions, a rebalance moves partitions without loss, producer errors surface.
//!
//! Each implementation's test file instantiates the suite with `contract_suite!(make_bus)`.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use pitboss_bus::{
    Bus, BusError, Consumer, ConsumerConfig, Delivery, OutRecord, Partition, Position, Record,
};
use tokio::time::Instant;

/// Generous upper bound for anything a test waits on; tests finish as soon as they can.
pub const PATIENCE: Duration = Duration::from_secs(90);

/// `keys` players, `per_key` records each, interleaved; value = "key#n".
pub fn records(keys: usize, per_key: usize, tag: &str) -> Vec<OutRecord> {
    let mut out = Vec::with_capacity(keys * per_key);
    for n in 0..per_key {
        for k in 0..keys {
            let key = format!("tenant-{tag}:player-{k}");
            out.push(OutRecord::new(key.clone(), format!("{key}#{n}")));
        }
    }
    out
}

fn seq(r: &Record) -> (String, usize) {
    let text = String::from_utf8(r.value.clone()).unwrap();
    let (key, n) = text.rsplit_once('#').unwrap();
    (key.to_owned(), n.parse().unwrap())
}

fn id(r: &Record) -> (Partition, Position) {
    (r.partition, r.position.clone())
}

pub async fn publish_all(bus: &dyn Bus, topic: &str, recs: Vec<OutRecord>, batch: usize) {
    let publisher = bus.publisher();
    for chunk in recs.chunks(batch) {
        let acks = publisher
            .publish(topic, chunk.to_vec())
            .await
            .expect("publish");
        assert_eq!(acks.len(), chunk.len(), "one ack per record");
    }
}

/// A group member that processes like a real sink: records are buffered, then "flushed"
/// (made durable, offsets stored) every `flush_every` records, when idle, and on revoke.
pub struct Member {
    pub consumer: Box<dyn Consumer>,
    pub received: Vec<Record>,
    pending: Vec<Record>,
    pub durable: Vec<Record>,
    pub revoked: Vec<Partition>,
    pub flush_every: usize,
}

impl Member {
    pub async fn join(bus: &dyn Bus, group: &str, topic: &str) -> Member {
        let consumer = bus
            .consumer(group, topic, ConsumerConfig::default())
            .await
            .expect("consumer");
        Member {
            consumer,
            received: Vec::new(),
            pending: Vec::new(),
            durable: Vec::new(),
            revoked: Vec::new(),
            flush_every: 50,
        }
    }

    fn flush(&mut self, only: Option<&[Partition]>) {
        let (go, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|r| only.is_none_or(|ps| ps.contains(&r.partition)));
        for r in &go {
            self.consumer
                .store(r.partition, &r.position)
                .expect("store offset of an owned partition");
        }
        self.durable.extend(go);
        self.pending = keep;
    }

    /// One poll, processed. Returns the number of records received.
    pub async fn step(&mut self, wait: Duration) -> usize {
        match self.consumer.poll(500, wait).await.expect("poll") {
            Delivery::Records(rs) if rs.is_empty() => {
                self.flush(None);
                0
            }
            Delivery::Records(rs) => {
                let n = rs.len();
                self.received.extend(rs.iter().cloned());
                self.pending.extend(rs);
                if self.pending.len() >= self.flush_every {
                    self.flush(None);
                }
                n
            }
            Delivery::Revoking(parts) => {
                self.flush(Some(&parts));
                self.revoked.extend(parts);
                0
            }
            Delivery::Assigned(_) => 0,
        }
    }

    pub async fn flush_and_commit(&mut self) {
        self.flush(None);
        self.consumer.commit().await.expect("commit");
    }
}

fn distinct(records: &[Record]) -> BTreeSet<(Partition, Position)> {
    records.iter().map(id).collect()
}

/// Records with the same key arrive in the order they were published.
pub async fn order_per_key(bus: Arc<dyn Bus>) {
    let topic = pitboss_testkit::unique_name("order");
    bus.create_topic(&topic, 4).await.expect("create topic");
    let recs = records(40, 50, "o");
    publish_all(&*bus, &topic, recs.clone(), 100).await;

    let mut m = Member::join(&*bus, &pitboss_testkit::unique_name("g"), &topic).await;
    let start = Instant::now();
    while m.received.len() < recs.len() {
        assert!(
            start.elapsed() < PATIENCE,
            "got {} of {}",
            m.received.len(),
            recs.len()
        );
        m.step(Duration::from_millis(200)).await;
    }
    let mut last: HashMap<String, usize> = HashMap::new();
    let mut partition_of: HashMap<String, Partition> = HashMap::new();
    for r in &m.received {
        let (key, n) = seq(r);
        assert_eq!(r.key, key);
        let expected = last.get(&key).map_or(0, |l| l + 1);
        assert_eq!(n, expected, "key {key}: out of order or duplicated");
        last.insert(key.clone(), n);
        let p = *partition_of.entry(key).or_insert(r.partition);
        assert_eq!(p, r.partition, "one key, one partition");
    }
    assert_eq!(m.received.len(), recs.len());
    m.consumer.close().await.expect("close");
}

/// A member that commits and leaves; the next member resumes right after the commit.
pub async fn no_loss_across_consumer_restart(bus: Arc<dyn Bus>) {
    let topic = pitboss_testkit::unique_name("restart");
    let group = pitboss_testkit::unique_name("g");
    bus.create_topic(&topic, 3).await.expect("create topic");
    let recs = records(10, 50, "r");
    publish_all(&*bus, &topic, recs.clone(), 50).await;

    let mut a = Member::join(&*bus, &group, &topic).await;
    let start = Instant::now();
    while a.received.len() < 200 {
        assert!(start.elapsed() < PATIENCE);
        a.step(Duration::from_millis(200)).await;
    }
    a.flush_and_commit().await;
    let a_done = distinct(&a.durable);
    a.consumer.close().await.expect("close");

    let mut b = Member::join(&*bus, &group, &topic).await;
    let start = Instant::now();
    while a_done.len() + b.received.len() < recs.len() {
        assert!(
            start.elapsed() < PATIENCE,
            "a {} + b {} of {}",
            a_done.len(),
            b.received.len(),
            recs.len()
        );
        b.step(Duration::from_millis(200)).await;
    }
    // Nothing more arrives.
    b.step(Duration::from_millis(1500)).await;
    let b_got = distinct(&b.received);
    assert!(
        a_done.is_disjoint(&b_got),
        "committed records were delivered again"
    );
    assert_eq!(
        a_done.union(&b_got).count(),
        recs.len(),
        "records lost across the restart"
    );
    b.consumer.close().await.expect("close");
}

/// A member that stored offsets but died before committing: everything it had is redelivered.
pub async fn redelivery_after_crash_before_commit(bus: Arc<dyn Bus>) {
    let topic = pitboss_testkit::unique_name("crash");
    let group = pitboss_testkit::unique_name("g");
    bus.create_topic(&topic, 2).await.expect("create topic");
    let recs = records(6, 50, "c");
    publish_all(&*bus, &topic, recs.clone(), 100).await;

    let mut a = Member::join(&*bus, &group, &topic).await;
    let start = Instant::now();
    while a.received.len() < recs.len() {
        assert!(start.elapsed() < PATIENCE);
        a.step(Duration::from_millis(200)).await;
    }
    a.flush(None); // offsets stored...
    drop(a); // ...but never committed: a crash.

    let mut b = Member::join(&*bus, &group, &topic).await;
    let start = Instant::now();
    while b.received.len() < recs.len() {
        assert!(
            start.elapsed() < PATIENCE,
            "redelivered {} of {}",
            b.received.len(),
            recs.len()
        );
        b.step(Duration::from_millis(200)).await;
    }
    assert_eq!(distinct(&b.received).len(), recs.len());
    b.flush_and_commit().await;
    b.consumer.close().await.expect("close");

    // After a clean commit, a new member sees only new records.
    let mut c = Member::join(&*bus, &group, &topic).await;
    let fresh = records(2, 5, "fresh");
    publish_all(&*bus, &topic, fresh.clone(), 10).await;
    let start = Instant::now();
    while c.received.len() < fresh.len() {
        assert!(start.elapsed() < PATIENCE);
        c.step(Duration::from_millis(200)).await;
    }
    c.step(Duration::from_millis(1000)).await;
    let values: BTreeSet<_> = c.received.iter().map(|r| r.value.clone()).collect();
    let expected: BTreeSet<_> = fresh.iter().map(|r| r.value.clone()).collect();
    assert_eq!(values, expected, "after commit, only new records");
    c.consumer.close().await.expect("close");
}

async fn settle(members: &mut [&mut Member], partitions: u32) {
    let start = Instant::now();
    loop {
        for m in members.iter_mut() {
            m.step(Duration::from_millis(100)).await;
        }
        let sets: Vec<BTreeSet<Partition>> = members
            .iter()
            .map(|m| m.consumer.assignment().into_iter().collect())
            .collect();
        let all: BTreeSet<Partition> = sets.iter().flatten().copied().collect();
        let total: usize = sets.iter().map(BTreeSet::len).sum();
        if sets.iter().all(|s| !s.is_empty())
            && total == partitions as usize
            && all.len() == partitions as usize
        {
            return;
        }
        assert!(start.elapsed() < PATIENCE, "group did not settle: {sets:?}");
    }
}

/// Two members of a group split the partitions and each record goes to exactly one of them.
pub async fn two_members_split_partitions(bus: Arc<dyn Bus>) {
    let topic = pitboss_testkit::unique_name("split");
    let group = pitboss_testkit::unique_name("g");
    bus.create_topic(&topic, 4).await.expect("create topic");
    let mut a = Member::join(&*bus, &group, &topic).await;
    let mut b = Member::join(&*bus, &group, &topic).await;
    settle(&mut [&mut a, &mut b], 4).await;

    let recs = records(40, 10, "s");
    publish_all(&*bus, &topic, recs.clone(), 100).await;
    let start = Instant::now();
    while a.received.len() + b.received.len() < recs.len() {
        assert!(start.elapsed() < PATIENCE);
        a.step(Duration::from_millis(100)).await;
        b.step(Duration::from_millis(100)).await;
    }
    let (pa, pb): (BTreeSet<_>, BTreeSet<_>) = (
        a.received.iter().map(|r| r.partition).collect(),
        b.received.iter().map(|r| r.partition).collect(),
    );
    assert!(
        pa.is_disjoint(&pb),
        "a partition was read by both members: {pa:?} {pb:?}"
    );
    assert!(
        !a.received.is_empty() && !b.received.is_empty(),
        "both members work"
    );
    let got = distinct(&a.received).union(&distinct(&b.received)).count();
    assert_eq!(got, recs.len());
    assert_eq!(
        a.received.len() + b.received.len(),
        recs.len(),
        "no record read twice"
    );
    a.consumer.close().await.expect("close");
    b.consumer.close().await.expect("close");
}

/// A second member joins while the first is busy: partitions move, records keep flowing,
/// nothing is lost and nothing made durable is processed twice.
pub async fn rebalance_moves_partitions_without_loss(bus: Arc<dyn Bus>) {
    let topic = pitboss_testkit::unique_name("rebalance");
    let group = pitboss_testkit::unique_name("g");
    bus.create_topic(&topic, 6).await.expect("create topic");
    let first = records(60, 25, "r1");
    publish_all(&*bus, &topic, first.clone(), 100).await;

    let mut a = Member::join(&*bus, &group, &topic).await;
    let start = Instant::now();
    while a.received.len() < 500 {
        assert!(start.elapsed() < PATIENCE);
        a.step(Duration::from_millis(200)).await;
    }
    let mut b = Member::join(&*bus, &group, &topic).await;
    let second = records(60, 25, "r2");
    let total = first.len() + second.len();
    let mut published_second = false;
    let start = Instant::now();
    loop {
        a.step(Duration::from_millis(50)).await;
        b.step(Duration::from_millis(50)).await;
        if !published_second && !a.revoked.is_empty() {
            publish_all(&*bus, &topic, second.clone(), 100).await;
            published_second = true;
        }
        let durable = distinct(&a.durable).union(&distinct(&b.durable)).count();
        if published_second && durable == total {
            break;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "durable {durable} of {total}; a revoked {:?}",
            a.revoked
        );
    }
    assert!(!a.revoked.is_empty(), "the first member gave partitions up");
    assert!(
        !b.durable.is_empty(),
        "the second member took over partitions"
    );
    assert_eq!(
        a.durable.len() + b.durable.len(),
        total,
        "a record was made durable twice"
    );
    let by_partition: BTreeMap<Partition, usize> =
        b.durable.iter().fold(BTreeMap::new(), |mut m, r| {
            *m.entry(r.partition).or_default() += 1;
            m
        });
    assert!(
        by_partition.keys().all(|p| a.revoked.contains(p)),
        "b only got partitions a gave up"
    );
    a.flush_and_commit().await;
    b.flush_and_commit().await;
    a.consumer.close().await.expect("close");
    b.consumer.close().await.expect("close");
}

/// Publishing errors are returned, never swallowed.
pub async fn producer_errors_surface(bus: Arc<dyn Bus>) {
    let topic = pitboss_testkit::unique_name("errors");
    bus.create_topic(&topic, 1).await.expect("create topic");
    let publisher = bus.publisher();

    let huge = OutRecord::new("t:p", vec![b'x'; 2 * 1024 * 1024]);
    let err = publisher
        .publish(&topic, vec![huge])
        .await
        .expect_err("a 2 MiB record must be refused");
    assert!(matches!(err, BusError::Rejected(_)), "{err:?}");
    assert!(!err.is_retryable());

    let ok = publisher
        .publish(&topic, vec![OutRecord::new("t:p", "fine")])
        .await
        .expect("normal record");
    assert_eq!(ok.len(), 1);
    assert!(
        publisher
            .publish(&topic, Vec::new())
            .await
            .expect("empty batch")
            .is_empty()
    );

    let missing = pitboss_testkit::unique_name("missing");
    let err = publisher
        .publish(&missing, vec![OutRecord::new("t:p", "x")])
        .await
        .expect_err("unknown topic");
    assert!(
        matches!(err, BusError::UnknownTopic(_) | BusError::Unavailable(_)),
        "{err:?}"
    );
}

/// Acks say where each record went, and consumers find it there.
pub async fn acks_point_at_the_records(bus: Arc<dyn Bus>) {
    let topic = pitboss_testkit::unique_name("acks");
    bus.create_topic(&topic, 3).await.expect("create topic");
    let recs = records(9, 3, "a");
    let acks = bus
        .publisher()
        .publish(&topic, recs.clone())
        .await
        .expect("publish");
    let expected: BTreeMap<(Partition, Position), Vec<u8>> = acks
        .iter()
        .zip(&recs)
        .map(|(a, r)| ((a.partition, a.position.clone()), r.value.clone()))
        .collect();
    assert_eq!(expected.len(), recs.len(), "distinct positions");

    let mut m = Member::join(&*bus, &pitboss_testkit::unique_name("g"), &topic).await;
    let start = Instant::now();
    while m.received.len() < recs.len() {
        assert!(start.elapsed() < PATIENCE);
        m.step(Duration::from_millis(200)).await;
    }
    let got: BTreeMap<(Partition, Position), Vec<u8>> = m
        .received
        .iter()
        .map(|r| (id(r), r.value.clone()))
        .collect();
    assert_eq!(got, expected);
    m.consumer.close().await.expect("close");
}

/// A consumer that stops reading with many records still buffered can still close promptly,
/// and its commit holds: the next member resumes right after what it stored.
pub async fn close_with_unread_records(bus: Arc<dyn Bus>) {
    let topic = pitboss_testkit::unique_name("close");
    let group = pitboss_testkit::unique_name("g");
    bus.create_topic(&topic, 2).await.expect("create topic");
    let recs = records(100, 150, "u"); // 15,000: more than any client-side buffer
    publish_all(&*bus, &topic, recs.clone(), 500).await;
    let mut a = Member::join(&*bus, &group, &topic).await;
    let start = Instant::now();
    while a.received.len() < 10 {
        assert!(start.elapsed() < PATIENCE);
        a.step(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await; // let the client buffer fill up
    a.flush_and_commit().await;
    let done = distinct(&a.durable);
    tokio::time::timeout(Duration::from_secs(30), a.consumer.close())
        .await
        .expect("close must not hang on unread records")
        .expect("close");

    let mut b = Member::join(&*bus, &group, &topic).await;
    let start = Instant::now();
    while done.len() + b.received.len() < recs.len() {
        assert!(
            start.elapsed() < PATIENCE,
            "{} + {} of {}",
            done.len(),
            b.received.len(),
            recs.len()
        );
        b.step(Duration::from_millis(200)).await;
    }
    assert!(
        distinct(&b.received).is_disjoint(&done),
        "committed records redelivered"
    );
    b.consumer.close().await.expect("close");
}

/// Instantiates the suite for one implementation. `$make` is an async fn returning
/// `Arc<dyn Bus>` (a fresh or shared instance).
#[macro_export]
macro_rules! contract_suite {
    ($make:path) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn contract_order_per_key() {
            contract::order_per_key($make().await).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn contract_no_loss_across_consumer_restart() {
            contract::no_loss_across_consumer_restart($make().await).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn contract_redelivery_after_crash_before_commit() {
            contract::redelivery_after_crash_before_commit($make().await).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn contract_two_members_split_partitions() {
            contract::two_members_split_partitions($make().await).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn contract_rebalance_moves_partitions_without_loss() {
            contract::rebalance_moves_partitions_without_loss($make().await).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn contract_producer_errors_surface() {
            contract::producer_errors_surface($make().await).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn contract_close_with_unread_records() {
            contract::close_with_unread_records($make().await).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn contract_acks_point_at_the_records() {
            contract::acks_point_at_the_records($make().await).await;
        }
    };
}
