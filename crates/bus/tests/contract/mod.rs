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
    Bus, BusError, Consumer, ConsumerConfig, Delivery, Headers, OutRecord, Partition, Position,
    ReadFrom, Reader, Record, StartFrom, header,
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
    pub assigned: Vec<Partition>,
    pub flush_every: usize,
}

impl Member {
    pub async fn join(bus: &dyn Bus, group: &str, topic: &str) -> Member {
        Member::join_with(bus, group, topic, ConsumerConfig::default()).await
    }

    pub async fn join_with(
        bus: &dyn Bus,
        group: &str,
        topic: &str,
        config: ConsumerConfig,
    ) -> Member {
        let consumer = bus.consumer(group, topic, config).await.expect("consumer");
        Member {
            consumer,
            received: Vec::new(),
            pending: Vec::new(),
            durable: Vec::new(),
            revoked: Vec::new(),
            assigned: Vec::new(),
            flush_every: 50,
        }
    }

    fn flush(&mut self, only: Option<&[Partition]>) {
        let (go, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|r| only.is_none_or(|ps| ps.contains(&r.partition)));
        for r in &go {
            self.consumer
                .store(&r.topic, r.partition, &r.position)
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
            Delivery::Assigned(parts) => {
                self.assigned.extend(parts);
                0
            }
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

/// What a group committed is read back without joining it (`Bus::committed_offsets`): per
/// partition, the offset after the last record it stored; a group that never committed has
/// none. A bus that cannot tell (Kinesis: `tells` false) says so with `None`, and only it.
pub async fn committed_offsets_are_what_the_group_committed(bus: Arc<dyn Bus>, tells: bool) {
    let topic = pitboss_testkit::unique_name("committed");
    let group = pitboss_testkit::unique_name("g");
    bus.create_topic(&topic, 3).await.expect("create topic");
    let recs = records(10, 20, "c");
    publish_all(&*bus, &topic, recs.clone(), 50).await;
    let answer = bus
        .committed_offsets(&group, &topic)
        .await
        .expect("committed offsets");
    assert_eq!(answer.is_some(), tells, "{answer:?}");
    let Some(none) = answer else {
        return;
    };
    assert!(none.is_empty(), "{none:?}");

    let mut a = Member::join(&*bus, &group, &topic).await;
    let start = Instant::now();
    while a.received.len() < recs.len() {
        assert!(start.elapsed() < PATIENCE);
        a.step(Duration::from_millis(200)).await;
    }
    a.flush_and_commit().await;
    a.consumer.close().await.expect("close");
    let mut want = BTreeMap::new();
    for r in &a.durable {
        let Position::Offset(o) = r.position else {
            panic!("{:?}", r.position)
        };
        let next = want.entry(r.partition).or_insert(0);
        *next = (*next).max(o + 1);
    }
    assert_eq!(want.len(), 3, "{want:?}");
    let got = bus
        .committed_offsets(&group, &topic)
        .await
        .expect("committed offsets")
        .expect("told once");
    assert_eq!(got, want);
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
/// Reads with `member` until it has `n` records.
async fn receive(m: &mut Member, n: usize) {
    let start = Instant::now();
    while m.received.len() < n {
        assert!(
            start.elapsed() < PATIENCE,
            "got {} of {n}",
            m.received.len()
        );
        m.step(Duration::from_millis(200)).await;
    }
}

/// Polls until the member has been assigned partitions.
async fn until_assigned(m: &mut Member) {
    let start = Instant::now();
    while m.assigned.is_empty() {
        assert!(start.elapsed() < PATIENCE, "never assigned");
        m.step(Duration::from_millis(200)).await;
    }
}

/// Reads with `reader` until it caught up and holds at least `n` records; then a little
/// longer, so a record too many would show.
async fn read_until(reader: &mut dyn Reader, n: usize) -> Vec<Record> {
    let start = Instant::now();
    let mut out = Vec::new();
    while out.len() < n || !reader.caught_up() {
        assert!(
            start.elapsed() < PATIENCE,
            "reader got {} of {n}, caught up: {}",
            out.len(),
            reader.caught_up()
        );
        out.extend(
            reader
                .poll(500, Duration::from_millis(200))
                .await
                .expect("read"),
        );
    }
    out.extend(
        reader
            .poll(500, Duration::from_millis(300))
            .await
            .expect("read"),
    );
    out
}

fn values(records: &[Record]) -> BTreeSet<Vec<u8>> {
    records.iter().map(|r| r.value.clone()).collect()
}

fn out_values(records: &[OutRecord]) -> BTreeSet<Vec<u8>> {
    records.iter().map(|r| r.value.clone()).collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A gap between two batches wide enough for every bus's timestamp resolution.
const GAP: Duration = Duration::from_millis(1100);

/// Publishes `before`, waits, takes a time, waits, publishes `after`; returns the time.
async fn publish_around_a_time(
    bus: &dyn Bus,
    topic: &str,
    before: Vec<OutRecord>,
    after: Vec<OutRecord>,
) -> i64 {
    publish_all(bus, topic, before, 100).await;
    tokio::time::sleep(GAP).await;
    let t = now_ms();
    tokio::time::sleep(GAP).await;
    publish_all(bus, topic, after, 100).await;
    t
}

/// Headers published with a record come back with it, in order, with the record's topic;
/// a record published without headers has none.
pub async fn headers_round_trip(bus: Arc<dyn Bus>) {
    let topic = pitboss_testkit::unique_name("headers");
    bus.create_topic(&topic, 2).await.expect("create topic");
    let mut recs = records(6, 2, "h");
    for (i, r) in recs.iter_mut().enumerate().filter(|(i, _)| i % 3 != 0) {
        r.headers = Headers::new()
            .with(header::TYPE, "bet_placed")
            .with(header::TENANT, format!("tenant-{i}"))
            .with(header::EVENT_TIME, "1764322872345")
            .with("binary", vec![0u8, 1, 255])
            .with("empty", "");
    }
    publish_all(&*bus, &topic, recs.clone(), 100).await;
    let mut m = Member::join(&*bus, &pitboss_testkit::unique_name("g"), &topic).await;
    receive(&mut m, recs.len()).await;
    let by_value: HashMap<&[u8], &Headers> = recs
        .iter()
        .map(|r| (r.value.as_slice(), &r.headers))
        .collect();
    for r in &m.received {
        assert_eq!(&*r.topic, topic.as_str());
        assert_eq!(
            &r.headers,
            by_value[r.value.as_slice()],
            "headers of {:?}",
            r.value
        );
    }
    let with = m
        .received
        .iter()
        .find(|r| !r.headers.is_empty())
        .expect("some with headers");
    assert_eq!(with.headers.get_str(header::TYPE), Some("bet_placed"));
    assert_eq!(
        with.headers.get_i64(header::EVENT_TIME),
        Some(1_764_322_872_345)
    );
    m.consumer.close().await.expect("close");

    // The same through a reader.
    let mut reader = bus
        .reader_all(&topic, ReadFrom::Earliest)
        .await
        .expect("reader");
    let got = read_until(&mut *reader, recs.len()).await;
    assert_eq!(got.len(), recs.len());
    for r in &got {
        assert_eq!(&r.headers, by_value[r.value.as_slice()]);
    }
}

/// `StartFrom`: earliest ignores what the group committed, latest reads only what comes
/// after the assignment, a time reads exactly the records stored at or after it, and
/// committed-or-a-time reads from the time in a new group and from the commit after.
pub async fn group_start_options(bus: Arc<dyn Bus>) {
    let topic = pitboss_testkit::unique_name("start");
    bus.create_topic(&topic, 2).await.expect("create topic");
    let old = records(8, 3, "old");
    let new = records(8, 3, "new");
    let t = publish_around_a_time(&*bus, &topic, old.clone(), new.clone()).await;
    let all: BTreeSet<Vec<u8>> = out_values(&old).union(&out_values(&new)).cloned().collect();

    // A group that has read and committed everything.
    let group = pitboss_testkit::unique_name("g");
    let mut m = Member::join(&*bus, &group, &topic).await;
    receive(&mut m, all.len()).await;
    m.flush_and_commit().await;
    m.consumer.close().await.expect("close");

    let config = |start| ConsumerConfig {
        start,
        ..ConsumerConfig::default()
    };
    // Earliest: everything again, although the group committed it all.
    let mut m = Member::join_with(&*bus, &group, &topic, config(StartFrom::Earliest)).await;
    receive(&mut m, all.len()).await;
    assert_eq!(values(&m.received), all);
    m.consumer.close().await.expect("close");

    // Timestamp: exactly the records at or after t, whatever was committed.
    let mut m = Member::join_with(&*bus, &group, &topic, config(StartFrom::Timestamp(t))).await;
    receive(&mut m, new.len()).await;
    m.step(Duration::from_millis(500)).await;
    assert_eq!(
        values(&m.received),
        out_values(&new),
        "records at or after the time, only"
    );
    m.consumer.close().await.expect("close");

    // Latest: nothing already there; what comes after the assignment.
    let mut m = Member::join_with(
        &*bus,
        &pitboss_testkit::unique_name("g"),
        &topic,
        config(StartFrom::Latest),
    )
    .await;
    until_assigned(&mut m).await;
    let later = records(8, 1, "later");
    publish_all(&*bus, &topic, later.clone(), 100).await;
    receive(&mut m, later.len()).await;
    m.step(Duration::from_millis(500)).await;
    assert_eq!(values(&m.received), out_values(&later));
    m.consumer.close().await.expect("close");

    // Committed, or a time: a new group starts at the time (not at the earliest record)…
    let fresh = pitboss_testkit::unique_name("g");
    let mut m = Member::join_with(
        &*bus,
        &fresh,
        &topic,
        config(StartFrom::CommittedOrTimestamp(t)),
    )
    .await;
    let since_t: BTreeSet<Vec<u8>> = out_values(&new)
        .union(&out_values(&later))
        .cloned()
        .collect();
    receive(&mut m, since_t.len()).await;
    m.step(Duration::from_millis(500)).await;
    assert_eq!(
        values(&m.received),
        since_t,
        "a new group: the records at or after the time"
    );
    m.flush_and_commit().await;
    m.consumer.close().await.expect("close");
    // …and, once it has committed, resumes at its commit, not at the time again.
    let last = records(8, 1, "last");
    publish_all(&*bus, &topic, last.clone(), 100).await;
    let mut m = Member::join_with(
        &*bus,
        &fresh,
        &topic,
        config(StartFrom::CommittedOrTimestamp(t)),
    )
    .await;
    receive(&mut m, last.len()).await;
    m.step(Duration::from_millis(500)).await;
    assert_eq!(
        values(&m.received),
        out_values(&last),
        "a group that committed: after its commit"
    );
    m.consumer.close().await.expect("close");
}

/// A member started anywhere but at its group's commit leaves its start as the group's
/// position in every partition it was given, whether a record came there or not: a later
/// member started at the commit (a restart without `--start-at`) reads nothing from before
/// the start, not even in a partition that got no record in between (it read those from the
/// earliest record on Kafka and from TRIM_HORIZON on Kinesis).
pub async fn a_start_is_kept_where_no_record_came(bus: Arc<dyn Bus>) {
    let topic = pitboss_testkit::unique_name("kept");
    bus.create_topic(&topic, 4).await.expect("create topic");
    let old = records(16, 2, "old");
    // One key: one partition gets records after the time, the others none.
    let new = records(1, 3, "new");
    let t = publish_around_a_time(&*bus, &topic, old.clone(), new.clone()).await;
    let starts = [
        StartFrom::CommittedOrTimestamp(t),
        StartFrom::Timestamp(t),
        StartFrom::Latest,
    ];
    let mut groups = Vec::new();
    for start in starts {
        let group = pitboss_testkit::unique_name("g");
        let latest = start == StartFrom::Latest;
        let config = ConsumerConfig {
            start,
            ..ConsumerConfig::default()
        };
        let mut m = Member::join_with(&*bus, &group, &topic, config).await;
        if latest {
            until_assigned(&mut m).await;
        } else {
            receive(&mut m, new.len()).await;
        }
        m.step(Duration::from_millis(500)).await;
        m.flush_and_commit().await;
        m.consumer.close().await.expect("close");
        groups.push((start, group));
    }
    let last = records(16, 1, "last");
    publish_all(&*bus, &topic, last.clone(), 100).await;
    for (start, group) in &groups {
        let mut m = Member::join(&*bus, group, &topic).await;
        receive(&mut m, last.len()).await;
        m.step(Duration::from_millis(1000)).await;
        let text = |v: BTreeSet<Vec<u8>>| -> Vec<String> {
            v.into_iter()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .collect()
        };
        assert_eq!(
            text(values(&m.received)),
            text(out_values(&last)),
            "a member at the commit of a group started with {start:?}: what came after, only"
        );
        m.consumer.close().await.expect("close");
    }
}

/// Members started at a time, across a rebalance (a second member joins midway): every record
/// at or after the time is read by some member (redelivery allowed), none before it.
pub async fn start_at_a_time_across_a_rebalance(bus: Arc<dyn Bus>) {
    let topic = pitboss_testkit::unique_name("trebal");
    let group = pitboss_testkit::unique_name("g");
    bus.create_topic(&topic, 4).await.expect("create topic");
    let old = records(20, 2, "old");
    let new = records(20, 20, "new");
    let t = publish_around_a_time(&*bus, &topic, old.clone(), new.clone()).await;
    let config = ConsumerConfig {
        start: StartFrom::Timestamp(t),
        ..ConsumerConfig::default()
    };
    let mut a = Member::join_with(&*bus, &group, &topic, config.clone()).await;
    a.flush_every = 20;
    receive(&mut a, 50).await;
    let mut b = Member::join_with(&*bus, &group, &topic, config).await;
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < PATIENCE, "records never all read");
        a.step(Duration::from_millis(100)).await;
        b.step(Duration::from_millis(100)).await;
        let seen: BTreeSet<Vec<u8>> = values(&a.received)
            .union(&values(&b.received))
            .cloned()
            .collect();
        if seen.len() >= new.len() && !b.assigned.is_empty() {
            assert_eq!(
                seen,
                out_values(&new),
                "exactly the records at or after the time"
            );
            break;
        }
    }
    a.consumer.close().await.expect("close");
    b.consumer.close().await.expect("close");
}

/// A reader started at a time gets exactly the records stored at or after it, reports
/// itself caught up, knows where each partition ended, and goes on with new records.
pub async fn reader_from_a_time(bus: Arc<dyn Bus>) {
    let topic = pitboss_testkit::unique_name("rtime");
    bus.create_topic(&topic, 3).await.expect("create topic");
    let old = records(9, 3, "old");
    let new = records(9, 3, "new");
    let t = publish_around_a_time(&*bus, &topic, old, new.clone()).await;
    let mut reader = bus
        .reader_all(&topic, ReadFrom::Timestamp(t))
        .await
        .expect("reader");
    assert_eq!(reader.partitions(), vec![0, 1, 2]);
    let got = read_until(&mut *reader, new.len()).await;
    assert_eq!(
        got.len(),
        new.len(),
        "no record twice, none before the time"
    );
    assert_eq!(values(&got), out_values(&new));
    // Where each partition ended: the newest record read from it.
    let mut newest: BTreeMap<Partition, Position> = BTreeMap::new();
    for r in &got {
        newest.insert(r.partition, r.position.clone());
    }
    for (p, end) in reader.end_positions() {
        assert_eq!(end, newest.get(&p).cloned(), "end of partition {p}");
    }
    let more = records(9, 1, "more");
    publish_all(&*bus, &topic, more.clone(), 100).await;
    let got = read_until(&mut *reader, more.len()).await;
    assert_eq!(
        values(&got),
        out_values(&more),
        "a reader follows new records"
    );
}

/// A reader from a position: `After` resumes right after it, `At` includes it; only the
/// chosen partitions are read; a partition the topic lacks is refused.
pub async fn reader_from_a_position(bus: Arc<dyn Bus>) {
    let topic = pitboss_testkit::unique_name("rpos");
    bus.create_topic(&topic, 2).await.expect("create topic");
    let recs = records(6, 5, "p");
    let acks = bus
        .publisher()
        .publish(&topic, recs.clone())
        .await
        .expect("publish");
    let mut in_p0: Vec<(Position, Vec<u8>)> = acks
        .iter()
        .zip(&recs)
        .filter(|(a, _)| a.partition == 0)
        .map(|(a, r)| (a.position.clone(), r.value.clone()))
        .collect();
    assert!(
        in_p0.len() >= 4,
        "partition 0 holds enough records: {}",
        in_p0.len()
    );
    in_p0.sort();
    let k = in_p0.len() / 2;
    let expect_after: BTreeSet<Vec<u8>> = in_p0[k + 1..].iter().map(|(_, v)| v.clone()).collect();
    let mut reader = bus
        .reader(&topic, vec![(0, ReadFrom::After(in_p0[k].0.clone()))])
        .await
        .expect("reader");
    assert_eq!(reader.partitions(), vec![0]);
    let got = read_until(&mut *reader, expect_after.len()).await;
    assert!(got.iter().all(|r| r.partition == 0));
    assert_eq!(got.len(), expect_after.len());
    assert_eq!(values(&got), expect_after);

    let mut reader = bus
        .reader(&topic, vec![(0, ReadFrom::At(in_p0[k].0.clone()))])
        .await
        .expect("reader");
    let got = read_until(&mut *reader, expect_after.len() + 1).await;
    assert_eq!(got.len(), expect_after.len() + 1);
    assert_eq!(
        got[0].value, in_p0[k].1,
        "At includes the record at the position"
    );

    // Latest: only what comes next.
    let mut reader = bus
        .reader_all(&topic, ReadFrom::Latest)
        .await
        .expect("reader");
    let got = read_until(&mut *reader, 0).await;
    assert!(
        got.is_empty(),
        "nothing before the reader opened: {}",
        got.len()
    );
    let more = records(6, 1, "more");
    publish_all(&*bus, &topic, more.clone(), 100).await;
    let got = read_until(&mut *reader, more.len()).await;
    assert_eq!(values(&got), out_values(&more));

    let err = bus
        .reader(&topic, vec![(7, ReadFrom::Earliest)])
        .await
        .expect_err("no partition 7");
    assert!(matches!(err, BusError::Config(_)), "{err:?}");
}

/// Many short-lived readers (a gateway's restarts and clients): each reads what it should.
/// Each implementation's test then checks that nothing was left behind.
pub async fn many_short_lived_readers(bus: Arc<dyn Bus>, topic: &str, readers: usize) {
    bus.create_topic(topic, 2).await.expect("create topic");
    let recs = records(4, 1, "s");
    publish_all(&*bus, topic, recs.clone(), 100).await;
    for _ in 0..readers {
        let mut reader = bus
            .reader_all(topic, ReadFrom::Earliest)
            .await
            .expect("reader");
        let start = Instant::now();
        let mut got = Vec::new();
        while got.len() < recs.len() {
            assert!(
                start.elapsed() < PATIENCE,
                "reader got {} of {}",
                got.len(),
                recs.len()
            );
            got.extend(
                reader
                    .poll(100, Duration::from_millis(200))
                    .await
                    .expect("read"),
            );
        }
        assert_eq!(values(&got), out_values(&recs));
    }
}

/// Companion topics: the member assigned partition p of the topic also reads partition p of
/// its companion, so one key's records on both topics reach one member; offsets of both are
/// committed in the group; a companion with another partition count is refused.
pub async fn companions_follow_the_same_partitions(bus: Arc<dyn Bus>) {
    let topic = pitboss_testkit::unique_name("main");
    let overflow = format!("{topic}_overflow");
    let group = pitboss_testkit::unique_name("g");
    bus.create_topic(&topic, 4).await.expect("create topic");
    bus.create_topic(&overflow, 4).await.expect("create topic");
    let main_recs = records(16, 4, "k");
    // The same keys, other values.
    let over_recs: Vec<OutRecord> = main_recs
        .iter()
        .map(|r| OutRecord::new(r.key.clone(), [r.value.as_slice(), b"+o"].concat()))
        .collect();
    let total = main_recs.len() + over_recs.len();
    let config = ConsumerConfig {
        companions: vec![overflow.clone()],
        ..ConsumerConfig::default()
    };
    let mut a = Member::join_with(&*bus, &group, &topic, config.clone()).await;
    let mut b = Member::join_with(&*bus, &group, &topic, config.clone()).await;
    // Let the group settle (both members own partitions, together all), then publish.
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < PATIENCE, "group never settled");
        a.step(Duration::from_millis(100)).await;
        b.step(Duration::from_millis(100)).await;
        let (pa, pb): (BTreeSet<Partition>, BTreeSet<Partition>) = (
            a.consumer.assignment().into_iter().collect(),
            b.consumer.assignment().into_iter().collect(),
        );
        if !pa.is_empty() && !pb.is_empty() && pa.is_disjoint(&pb) && pa.len() + pb.len() == 4 {
            break;
        }
    }
    publish_all(&*bus, &topic, main_recs.clone(), 100).await;
    publish_all(&*bus, &overflow, over_recs.clone(), 100).await;
    let start = Instant::now();
    while a.received.len() + b.received.len() < total {
        assert!(
            start.elapsed() < PATIENCE,
            "not all read: {} + {}",
            a.received.len(),
            b.received.len()
        );
        a.step(Duration::from_millis(100)).await;
        b.step(Duration::from_millis(100)).await;
    }
    // Each key's records, on both topics, reached one member, from the same partition index.
    let mut readers_of: HashMap<&str, BTreeSet<usize>> = HashMap::new();
    let mut partitions_of: HashMap<&str, BTreeSet<Partition>> = HashMap::new();
    for (i, m) in [&a, &b].into_iter().enumerate() {
        for r in &m.received {
            assert!(
                &*r.topic == topic.as_str() || &*r.topic == overflow.as_str(),
                "record of {}",
                r.topic
            );
            readers_of.entry(r.key.as_str()).or_default().insert(i);
            partitions_of
                .entry(r.key.as_str())
                .or_default()
                .insert(r.partition);
        }
    }
    let received: BTreeSet<Vec<u8>> = values(&a.received)
        .union(&values(&b.received))
        .cloned()
        .collect();
    let sent: BTreeSet<Vec<u8>> = out_values(&main_recs)
        .union(&out_values(&over_recs))
        .cloned()
        .collect();
    assert_eq!(received, sent);
    for r in &main_recs {
        assert_eq!(
            readers_of[r.key.as_str()].len(),
            1,
            "key {} read by both members",
            r.key
        );
        assert_eq!(
            partitions_of[r.key.as_str()].len(),
            1,
            "key {} on two partition indexes",
            r.key
        );
    }
    // Offsets of both topics are committed: a new member after both leave reads nothing again.
    a.flush_and_commit().await;
    b.flush_and_commit().await;
    a.consumer.close().await.expect("close");
    b.consumer.close().await.expect("close");
    let mut c = Member::join_with(&*bus, &group, &topic, config).await;
    until_assigned(&mut c).await;
    for _ in 0..3 {
        c.step(Duration::from_millis(300)).await;
    }
    assert!(
        c.received.is_empty(),
        "{} records read again",
        c.received.len()
    );
    c.consumer.close().await.expect("close");

    // Another partition count is refused.
    let odd = pitboss_testkit::unique_name("odd");
    bus.create_topic(&odd, 3).await.expect("create topic");
    let err = bus
        .consumer(
            &pitboss_testkit::unique_name("g"),
            &topic,
            ConsumerConfig {
                companions: vec![odd],
                ..ConsumerConfig::default()
            },
        )
        .await
        .expect_err("3 partitions next to 4");
    assert!(matches!(err, BusError::Config(_)), "{err:?}");
}

#[macro_export]
macro_rules! contract_suite {
    ($make:path) => {
        contract_suite!($make, tells_commits = true);
    };
    ($make:path, tells_commits = $tells:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn contract_order_per_key() {
            contract::order_per_key($make().await).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn contract_no_loss_across_consumer_restart() {
            contract::no_loss_across_consumer_restart($make().await).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn contract_committed_offsets_are_what_the_group_committed() {
            contract::committed_offsets_are_what_the_group_committed($make().await, $tells).await;
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
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn contract_headers_round_trip() {
            contract::headers_round_trip($make().await).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn contract_group_start_options() {
            contract::group_start_options($make().await).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn contract_a_start_is_kept_where_no_record_came() {
            contract::a_start_is_kept_where_no_record_came($make().await).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn contract_start_at_a_time_across_a_rebalance() {
            contract::start_at_a_time_across_a_rebalance($make().await).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn contract_reader_from_a_time() {
            contract::reader_from_a_time($make().await).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn contract_reader_from_a_position() {
            contract::reader_from_a_position($make().await).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn contract_companions_follow_the_same_partitions() {
            contract::companions_follow_the_same_partitions($make().await).await;
        }
    };
}

/// The process-wide recorder of a test binary (librdkafka reports statistics on the member's
/// own poll thread, and a Kinesis member runs on the runtime's threads: a thread-local
/// recorder reaches neither).
pub fn recorder() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).expect("no other global recorder in this binary");
        handle
    })
}

/// The value of gauge `name{group, topic, partition}` in a Prometheus text.
pub fn gauge_of(
    text: &str,
    name: &str,
    group: &str,
    topic: &str,
    partition: Partition,
) -> Option<f64> {
    let series =
        format!("{name}{{group=\"{group}\",topic=\"{topic}\",partition=\"{partition}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
}
