//! The live path's four tables through the processor over the embedded log — alerts, pushes,
//! deliveries, alert acks, on the one effectively-once path events take — into the in-memory
//! sink and into the SQLite store: each message stored once through a crash between the insert
//! and the commit (the replay skipped), undecodable records and records of another kind
//! dead-lettered with their reason while the partition keeps flowing; in SQLite a copy of a
//! message (a second rules engine) keeps one row, the latest, and `alerts_per_minute` counts
//! each alert once.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pitboss_bus::embedded::{EmbeddedBus, EmbeddedConfig};
use pitboss_bus::{Bus, ConsumerConfig, Delivery, OutRecord, ReadFrom};
use pitboss_model::live::LiveMessage;
use pitboss_processor::sqlite::{self, SqliteSink};
use pitboss_processor::{
    AckRow, AlertRow, Batch, BatchConfig, DeliveryRow, MemorySink, ProcessorConfig, ProcessorError,
    PushRow, RunStats, Sink, StoredRow, run,
};
use pitboss_testkit::live;

use crate::common;

use common::live_record;

fn config(topic: &str) -> ProcessorConfig {
    ProcessorConfig {
        topic: topic.to_owned(),
        group: "pitboss-processor".into(),
        dead_letter_topic: format!("{topic}_dead_letter"),
        batch: BatchConfig {
            max_rows: 50,
            max_age: Duration::from_millis(30),
            ..BatchConfig::default()
        },
        retry_initial: Duration::from_millis(5),
        retry_max: Duration::from_millis(20),
        ..ProcessorConfig::default()
    }
}

/// An embedded log with `topic` (3 partitions) and its dead-letter topic.
async fn bus(dir: &std::path::Path, topic: &str) -> Arc<EmbeddedBus> {
    let bus = EmbeddedBus::open(dir.join("log"), EmbeddedConfig::default()).unwrap();
    bus.create_topic(topic, 3).await.unwrap();
    bus.create_topic(&format!("{topic}_dead_letter"), 1)
        .await
        .unwrap();
    Arc::new(bus)
}

/// `message(range)` on `M`'s topic; with `poison`, an undecodable record and a record of
/// another kind (`other`) among them.
async fn publish<M: LiveMessage>(
    bus: &EmbeddedBus,
    message: fn(u64) -> M,
    range: std::ops::Range<u64>,
    poison: Option<OutRecord>,
) {
    let mut records: Vec<OutRecord> = range.map(|i| live_record(&message(i))).collect();
    if let Some(other) = poison {
        let middle = records.len() / 2;
        records.insert(middle, OutRecord::new("acme-casino:p-1", vec![0xff, 0x01]));
        records.insert(middle + 1, other);
    }
    bus.publisher().publish(M::TOPIC, records).await.unwrap();
}

/// A record of another kind than `M` (an ack on the alerts topic, an alert elsewhere).
fn other_kind<M: LiveMessage>() -> (OutRecord, &'static str) {
    if M::TYPE == "alert" {
        (live_record(&live::ack(0)), "alert_ack")
    } else {
        (live_record(&live::alert(0)), "alert")
    }
}

/// Runs a processor of `M`'s topic until `stored()` reaches `n` (or 20 s), then stops it.
async fn run_until<R: StoredRow, M: LiveMessage>(
    bus: Arc<EmbeddedBus>,
    sink: Arc<dyn Sink<R>>,
    stored: impl Fn() -> usize,
    n: usize,
) -> RunStats {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run(bus, sink, config(M::TOPIC), async {
        let _ = stopped.await;
    }));
    let start = std::time::Instant::now();
    while stored() < n && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await; // anything extra would show up now
    stop.send(()).unwrap();
    task.await.unwrap().unwrap()
}

/// The reasons (the key past its position) of every dead letter of `topic`.
async fn dead_letter_reasons(bus: &EmbeddedBus, topic: &str) -> BTreeSet<String> {
    let mut reader = bus
        .reader_all(&format!("{topic}_dead_letter"), ReadFrom::Earliest)
        .await
        .unwrap();
    let mut reasons = BTreeSet::new();
    while !reader.caught_up() {
        for r in reader.poll(1000, Duration::from_millis(100)).await.unwrap() {
            let mut parts = r.key.splitn(4, ':');
            assert_eq!(parts.next(), Some(topic), "{}", r.key);
            let reason = parts.nth(2).unwrap().trim().to_owned();
            reasons.insert(reason);
        }
    }
    reasons
}

/// The dead-letter reasons expected for `M`'s poison.
fn expected_reasons<M: LiveMessage, R: StoredRow>() -> BTreeSet<String> {
    let (_, other) = other_kind::<M>();
    let garbage = R::decode(
        M::TOPIC,
        &pitboss_bus::Record {
            topic: M::TOPIC.into(),
            partition: 0,
            position: pitboss_bus::Position::Offset(0),
            key: String::new(),
            value: vec![0xff, 0x01],
            timestamp_ms: 0,
            headers: Default::default(),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        garbage.starts_with(&format!("undecodable protobuf {}: ", M::TYPE)),
        "{garbage}"
    );
    [
        garbage,
        format!("a {other} record on a topic stored as {}", R::TABLE),
    ]
    .into()
}

/// 300 messages and two poison records; a member whose first insert lands and never answers
/// (it dies before committing); 100 more; the next member stores the rest, skipping what
/// landed: every message once, the poison dead-lettered with its reasons.
async fn once_in_memory<R: StoredRow, M: LiveMessage>(message: fn(u64) -> M) {
    let dir = tempfile::tempdir().unwrap();
    let bus = bus(dir.path(), M::TOPIC).await;
    publish(&bus, message, 0..300, Some(other_kind::<M>().0)).await;
    let sink = MemorySink::<R>::new();
    sink.hang_after_store_next(1);
    let crashing = tokio::spawn(run::<R>(
        bus.clone(),
        Arc::new(sink.clone()),
        config(M::TOPIC),
        std::future::pending(),
    ));
    let start = std::time::Instant::now();
    while sink.inserts() == 0 {
        assert!(start.elapsed() < Duration::from_secs(20), "no insert");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let landed = sink.rows().len();
    crashing.abort();
    let _ = crashing.await;
    publish(&bus, message, 300..400, None).await;

    let stored = || sink.rows().len();
    let stats = run_until::<R, M>(bus.clone(), Arc::new(sink.clone()), stored, 400).await;
    let ids: BTreeSet<String> = sink.rows().iter().map(StoredRow::id).collect();
    let expected: BTreeSet<String> = (0..400)
        .map(|i| {
            let r = R::decode(M::TOPIC, &as_record(&message(i))).unwrap();
            r.id()
        })
        .collect();
    assert_eq!(
        (sink.rows().len(), ids.len()),
        (400, 400),
        "{}: {stats:?}",
        R::TABLE
    );
    assert!(ids == expected, "{}: other ids than published", R::TABLE);
    assert!(stats.skipped_replays >= landed as u64, "{stats:?}");
    assert_eq!(
        dead_letter_reasons(&bus, M::TOPIC).await,
        expected_reasons::<M, R>()
    );
}

/// `m` as a record read from the bus (for decoding in the test).
fn as_record<M: LiveMessage>(m: &M) -> pitboss_bus::Record {
    let r = live_record(m);
    pitboss_bus::Record {
        topic: M::TOPIC.into(),
        partition: 0,
        position: pitboss_bus::Position::Offset(0),
        key: r.key,
        value: r.value,
        timestamp_ms: 0,
        headers: r.headers,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_lands_once_in_memory_through_a_crash_and_poison_is_dead_lettered() {
    once_in_memory::<AlertRow, _>(live::alert).await;
    once_in_memory::<PushRow, _>(live::push).await;
    once_in_memory::<DeliveryRow, _>(live::delivery).await;
    once_in_memory::<AckRow, _>(live::ack).await;
}

/// Stores through the SQLite sink, and after `inserts_left` inserts never answers again.
#[derive(Debug)]
struct HangAfter {
    inner: SqliteSink,
    inserts_left: AtomicUsize,
}

#[async_trait::async_trait]
impl<R: StoredRow> Sink<R> for HangAfter {
    async fn high_water(
        &self,
        topic: &str,
        partition: u32,
        since_ms: Option<i64>,
    ) -> Result<Option<u64>, ProcessorError> {
        Sink::<R>::high_water(&self.inner, topic, partition, since_ms).await
    }

    async fn insert(&self, batch: &Arc<Batch<R>>) -> Result<(), ProcessorError> {
        if self.inserts_left.load(Ordering::SeqCst) == 0 {
            return std::future::pending().await;
        }
        self.inner.insert(batch).await?;
        if self.inserts_left.fetch_sub(1, Ordering::SeqCst) == 1 {
            return std::future::pending().await;
        }
        Ok(())
    }
}

fn count(db: &std::path::Path, sql: &str) -> usize {
    let answer = sqlite::query(db, sql, 10).unwrap();
    answer.rows[0][0].as_u64().unwrap() as usize
}

/// The SQL of a table's id (what it keeps one row per, within the tenant).
fn id_sql(table: &str) -> &'static str {
    match table {
        "alerts" => "alert_id",
        "pushes" => "push_id",
        "deliveries" => "message_id || '/' || connection_id",
        "alert_acks" => "ack_id",
        other => panic!("no table {other}"),
    }
}

/// As [`once_in_memory`], into SQLite, with a copy of message 5 (same id, stamped later)
/// published after the rest: the table keeps one row per id, the copy's.
async fn once_in_sqlite<R: StoredRow, M: LiveMessage>(message: fn(u64) -> M) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pitboss.db");
    let bus = bus(dir.path(), M::TOPIC).await;
    publish(&bus, message, 0..300, Some(other_kind::<M>().0)).await;
    {
        let sink = Arc::new(HangAfter {
            inner: SqliteSink::open(&db).unwrap(),
            inserts_left: AtomicUsize::new(2),
        });
        let crashing = tokio::spawn(run::<R>(
            bus.clone(),
            sink.clone(),
            config(M::TOPIC),
            std::future::pending(),
        ));
        let start = std::time::Instant::now();
        while sink.inserts_left.load(Ordering::SeqCst) > 0 {
            assert!(start.elapsed() < Duration::from_secs(20), "2 inserts");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        crashing.abort();
        let _ = crashing.await;
    }
    let table = R::TABLE;
    let landed = count(&db, &format!("SELECT count(*) FROM {table}"));
    assert!(landed > 0);
    tokio::time::sleep(Duration::from_millis(5)).await; // the copy is stamped later
    let copy = message(5);
    publish(&bus, message, 300..400, None).await;
    bus.publisher()
        .publish(M::TOPIC, vec![live_record(&copy)])
        .await
        .unwrap();

    let sink = Arc::new(SqliteSink::open(&db).unwrap());
    let total = format!("SELECT count(*) FROM {table}");
    let stats = run_until::<R, M>(bus.clone(), sink, || count(&db, &total), 400).await;
    let id = id_sql(table);
    assert_eq!(
        (
            count(&db, &total),
            count(&db, &format!("SELECT count(DISTINCT {id}) FROM {table}"))
        ),
        (400, 400),
        "{table}: {stats:?}"
    );
    assert!(stats.skipped_replays >= landed as u64, "{stats:?}");
    let copy = R::decode(M::TOPIC, &as_record(&copy)).unwrap();
    let kept = sqlite::query(
        &db,
        &format!(
            "SELECT {}_ms FROM {table} WHERE {id} = '{}'",
            R::STAMP_COLUMN,
            copy.id()
        ),
        10,
    )
    .unwrap();
    assert_eq!(
        kept.rows,
        [[serde_json::json!(copy.stamped_at_ms())]],
        "the later copy is the row kept"
    );
    assert_eq!(
        dead_letter_reasons(&bus, M::TOPIC).await,
        expected_reasons::<M, R>()
    );
    if table == "alerts" {
        assert_eq!(count(&db, "SELECT sum(alerts) FROM alerts_per_minute"), 400);
        let r = sqlite::query(
            &db,
            "SELECT related_player_ids, json_extract(measures, '$[0].name') FROM alerts LIMIT 1",
            1,
        )
        .unwrap();
        assert_eq!(r.rows[0][1], "net_loss", "measures are JSON text");
        let related: Vec<String> = serde_json::from_str(r.rows[0][0].as_str().unwrap()).unwrap();
        assert!(related.is_empty() || related.iter().all(|p| p.starts_with("p-")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_lands_once_in_sqlite_through_a_crash_and_a_copy_keeps_one_row() {
    once_in_sqlite::<AlertRow, _>(live::alert).await;
    once_in_sqlite::<PushRow, _>(live::push).await;
    once_in_sqlite::<DeliveryRow, _>(live::delivery).await;
    once_in_sqlite::<AckRow, _>(live::ack).await;
}

/// The events consumer of the same log never sees these topics: a record of a live kind on
/// the events topic (a publisher on the wrong topic) is dead-lettered, not stored as an event.
#[tokio::test]
async fn a_live_message_on_the_events_topic_is_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let bus = bus(dir.path(), "events").await;
    bus.publisher()
        .publish("events", vec![live_record(&live::push(1))])
        .await
        .unwrap();
    let sink = MemorySink::<pitboss_processor::EventRow>::new();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run(
        bus.clone(),
        Arc::new(sink.clone()),
        config("events"),
        async {
            let _ = stopped.await;
        },
    ));
    let mut c = bus
        .consumer("check", "events_dead_letter", ConsumerConfig::default())
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..50 {
        if let Delivery::Records(rs) = c.poll(10, Duration::from_millis(100)).await.unwrap() {
            got.extend(rs);
        }
        if !got.is_empty() {
            break;
        }
    }
    stop.send(()).unwrap();
    let stats = task.await.unwrap().unwrap();
    assert_eq!((stats.dead_lettered, sink.rows().len()), (1, 0));
    let key = &got[0].key;
    assert!(
        key.starts_with("events:")
            && key.ends_with(":0: a push record on a topic stored as events"),
        "{key}"
    );
}
