//! The processor loop over the embedded log and the in-memory sink with failure injection:
//! retries until the insert lands, a lost answer is not inserted twice, a restart after a
//! crash skips what the store already has, poison goes to the dead-letter topic — undecodable
//! records and rows the store refuses — and a member taking over in the middle of a split
//! meets the piece the crashed one had in flight; a schema error stops the processor.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use pitboss_bus::embedded::{EmbeddedBus, EmbeddedConfig};
use pitboss_bus::{Bus, ConsumerConfig, Delivery, OutRecord};
use pitboss_model::encode_proto;
use pitboss_processor::{
    Batch, BatchConfig, EventRow, MemorySink, ProcessorConfig, ProcessorError, Sink, run,
};

fn event(i: u64) -> OutRecord {
    let e = pitboss_testkit::deposit(i, 50);
    OutRecord::new(format!("acme:{}", e.player_id), encode_proto(&e))
}

fn config() -> ProcessorConfig {
    ProcessorConfig {
        batch: BatchConfig {
            max_rows: 100,
            max_age: Duration::from_millis(50),
            ..BatchConfig::default()
        },
        retry_initial: Duration::from_millis(5),
        retry_max: Duration::from_millis(20),
        ..ProcessorConfig::default()
    }
}

async fn bus() -> (Arc<EmbeddedBus>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path(), EmbeddedConfig::default()).unwrap();
    bus.create_topic("events", 3).await.unwrap();
    bus.create_topic("events_dead_letter", 1).await.unwrap();
    (Arc::new(bus), dir)
}

async fn publish(bus: &EmbeddedBus, range: std::ops::Range<u64>) {
    let records: Vec<_> = range.map(event).collect();
    bus.publisher().publish("events", records).await.unwrap();
}

/// Runs the processor until the sink holds `n` rows (or 10 s), then stops it cleanly.
async fn run_until(
    bus: Arc<EmbeddedBus>,
    sink: &MemorySink<EventRow>,
    n: usize,
) -> pitboss_processor::RunStats {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run(bus, Arc::new(sink.clone()), config(), async {
        let _ = stopped.await;
    }));
    let start = std::time::Instant::now();
    while sink.rows().len() < n && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(()).unwrap();
    task.await.unwrap().unwrap()
}

fn unique_ids(sink: &MemorySink<EventRow>) -> usize {
    sink.rows()
        .iter()
        .map(|r| r.event_id.clone())
        .collect::<std::collections::HashSet<_>>()
        .len()
}

#[tokio::test]
async fn failed_inserts_are_retried_and_a_lost_answer_is_not_inserted_twice() {
    let (bus, _dir) = bus().await;
    publish(&bus, 0..1000).await;
    let sink = MemorySink::<EventRow>::new();
    sink.fail_next(3);
    let stats = run_until(bus.clone(), &sink, 1000).await;
    assert!(stats.insert_retries >= 3, "{stats:?}");
    assert_eq!((sink.rows().len(), unique_ids(&sink)), (1000, 1000));

    let sink = MemorySink::<EventRow>::new();
    let (bus, _dir) = self::bus().await;
    publish(&bus, 0..1000).await;
    sink.lose_answer_next(1);
    run_until(bus, &sink, 1000).await;
    assert_eq!(
        sink.rows().len(),
        1000,
        "the landed batch was recognised, not re-inserted"
    );
    assert_eq!(unique_ids(&sink), 1000);
}

#[tokio::test]
async fn a_restart_after_a_crash_skips_what_the_store_has() {
    let (bus, _dir) = bus().await;
    publish(&bus, 0..1000).await;
    let sink = MemorySink::<EventRow>::new();
    // The first insert lands, and the process dies before it hears back: its offsets were never
    // stored or committed, so the next member is handed those records again.
    sink.hang_after_store_next(1);
    let task = tokio::spawn(run(
        bus.clone(),
        Arc::new(sink.clone()),
        config(),
        std::future::pending(),
    ));
    while sink.inserts() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let landed = sink.rows().len();
    assert!(landed > 0);
    task.abort();
    let _ = task.await;
    publish(&bus, 1000..1500).await;
    let stats = run_until(bus, &sink, 1500).await;
    assert!(stats.skipped_replays >= landed as u64, "{stats:?}");
    assert_eq!(
        (sink.rows().len(), unique_ids(&sink)),
        (1500, 1500),
        "{stats:?}"
    );
}

#[tokio::test]
async fn poison_goes_to_the_dead_letter_topic_and_the_partition_keeps_flowing() {
    let (bus, _dir) = bus().await;
    publish(&bus, 0..100).await;
    bus.publisher()
        .publish(
            "events",
            vec![OutRecord::new("acme:p1", vec![0xff, 0x01, 0x02])],
        )
        .await
        .unwrap();
    publish(&bus, 100..200).await;
    let sink = MemorySink::<EventRow>::new();
    let stats = run_until(bus.clone(), &sink, 200).await;
    assert_eq!(sink.rows().len(), 200);
    assert_eq!(stats.dead_lettered, 1);
    let mut c = bus
        .consumer("check", "events_dead_letter", ConsumerConfig::default())
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..20 {
        if let Delivery::Records(rs) = c.poll(10, Duration::from_millis(100)).await.unwrap() {
            got.extend(rs);
        }
        if !got.is_empty() {
            break;
        }
    }
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].value, vec![0xff, 0x01, 0x02], "the record as it was");
    assert!(got[0].key.contains("undecodable"), "{}", got[0].key);
}

#[tokio::test]
async fn the_high_water_mark_is_asked_only_about_rows_received_since_the_first_record() {
    let (bus, _dir) = bus().await;
    let sink = MemorySink::<EventRow>::new();
    // Probes the processor's assumption rules out: on every partition, a far higher offset
    // received 3 days before the records now on the bus. Asked with the bound taken from
    // the first record, the store ignores them and nothing real is skipped.
    let old_ms = pitboss_model::Timestamp::now().as_millis() - 3 * 86_400_000;
    for partition in 0..3 {
        let probe = EventRow {
            event_id: format!("probe{partition}"),
            received_at: (old_ms / 1000) as u32,
            received_at_ms: old_ms as u64,
            bus_topic: "events".into(),
            bus_partition: partition,
            bus_offset: 1_000_000,
            ..Default::default()
        };
        let batch = pitboss_processor::Batch {
            topic: "events".into(),
            partition,
            rows: vec![probe],
            offsets: Some((1_000_000, 1_000_000)),
            last: pitboss_bus::Position::Offset(1_000_000),
            bytes: 0,
            opened: std::time::Instant::now(),
            values: Vec::new(),
            recut: None,
            uncertain: false,
        };
        pitboss_processor::Sink::insert(&sink, &Arc::new(batch))
            .await
            .unwrap();
    }
    publish(&bus, 0..300).await;
    let stats = run_until(bus, &sink, 303).await;
    assert_eq!(sink.rows().len(), 303, "{stats:?}");
    assert_eq!(stats.skipped_replays, 0);
}

/// A topic made anew under the same name (here: another log, as after its directory was
/// wiped) starts its offsets at 0 again, below the marks of the rows the store holds from the
/// old one: the processor stops saying so, and stores nothing of it, rather than skipping its
/// records as stored.
#[tokio::test]
async fn a_topic_made_anew_under_the_same_name_stops_the_processor_rather_than_being_skipped() {
    let (old, _old_dir) = bus().await;
    publish(&old, 0..300).await;
    let sink = MemorySink::<EventRow>::new();
    run_until(old, &sink, 300).await;
    assert_eq!(sink.rows().len(), 300);

    let (new, _new_dir) = bus().await;
    publish(&new, 300..330).await;
    let stopped = tokio::time::timeout(
        Duration::from_secs(20),
        run(
            new,
            Arc::new(sink.clone()),
            config(),
            std::future::pending(),
        ),
    )
    .await
    .expect("the processor stops on its own");
    let Err(ProcessorError::Config(why)) = stopped else {
        panic!("{stopped:?}");
    };
    assert!(
        why.contains("topic events partition ")
            && why.contains("the newest record on the bus is at offset")
            && why.contains("made anew under the same name"),
        "{why}"
    );
    assert_eq!(sink.rows().len(), 300, "nothing of the new topic stored");
}

/// A bus whose `events` topic has one partition, holding `event(0..n)` (offset = i), and
/// the values published.
async fn one_partition(n: u64) -> (Arc<EmbeddedBus>, tempfile::TempDir, Vec<Vec<u8>>) {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path(), EmbeddedConfig::default()).unwrap();
    bus.create_topic("events", 1).await.unwrap();
    bus.create_topic("events_dead_letter", 1).await.unwrap();
    let records: Vec<_> = (0..n).map(event).collect();
    let values = records.iter().map(|r| r.value.clone()).collect();
    bus.publisher().publish("events", records).await.unwrap();
    (Arc::new(bus), dir, values)
}

fn event_id(i: u64) -> String {
    pitboss_testkit::deposit(i, 50).event_id.unwrap()
}

/// Every record of the dead-letter topic, read until `n` are in (or 5 s).
async fn dead_letters(bus: &EmbeddedBus, n: usize) -> Vec<pitboss_bus::Record> {
    let mut c = bus
        .consumer(
            &pitboss_testkit::unique_name("check"),
            "events_dead_letter",
            ConsumerConfig::default(),
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..50 {
        if let Delivery::Records(rs) = c.poll(100, Duration::from_millis(100)).await.unwrap() {
            got.extend(rs);
        }
        if got.len() >= n {
            break;
        }
    }
    got
}

#[tokio::test]
async fn rows_the_store_refuses_are_dead_lettered_with_its_reason_and_the_rest_lands() {
    let (bus, _dir, values) = one_partition(300).await;
    let sink = MemorySink::<EventRow>::new();
    let bad = [0, 41, 42, 299];
    sink.refuse(bad.iter().map(|i| event_id(*i)));
    let stats = run_until(bus.clone(), &sink, 296).await;
    assert_eq!(stats.dead_lettered, 4, "{stats:?}");
    let mut stored: Vec<u64> = sink.rows().iter().map(|r| r.bus_offset).collect();
    stored.sort_unstable();
    let good: Vec<u64> = (0..300).filter(|i| !bad.contains(i)).collect();
    assert_eq!(stored, good, "every other row, once");
    // Found by halving, not row by row.
    assert!(sink.attempts().len() < 100, "{}", sink.attempts().len());

    let got = dead_letters(&bus, 4).await;
    let expected: Vec<Vec<u8>> = bad.iter().map(|i| values[*i as usize].clone()).collect();
    assert_eq!(
        got.iter().map(|r| r.value.clone()).collect::<Vec<_>>(),
        expected,
        "the records as they were, in order"
    );
    for (r, i) in got.iter().zip(bad) {
        assert_eq!(
            r.key,
            format!("events:0:{i}: clickhouse refused the rows: injected refusal")
        );
    }

    // The offsets were committed past them: a restart redoes nothing and the partition flows.
    publish(&bus, 300..310).await;
    let stats = run_until(bus, &sink, 306).await;
    assert_eq!(
        (stats.dead_lettered, stats.rows_inserted),
        (0, 10),
        "{stats:?}"
    );
    assert_eq!((sink.rows().len(), unique_ids(&sink)), (306, 306));
}

#[tokio::test]
async fn a_schema_error_stops_the_processor_with_its_reason() {
    let (bus, _dir, _) = one_partition(10).await;
    let sink = MemorySink::<EventRow>::new();
    sink.break_schema("Code: 60, e.displayText() = DB::Exception: Table pitboss.events doesn't exist., e.what() = DB::Exception");
    // Without the classification this would retry forever: the guard only keeps a broken
    // build from hanging the suite.
    let result = tokio::time::timeout(
        Duration::from_secs(60),
        run(
            bus,
            Arc::new(sink.clone()),
            config(),
            std::future::pending(),
        ),
    )
    .await
    .expect("the processor stopped");
    let error = result.expect_err("a schema error");
    assert!(matches!(error, ProcessorError::Schema(_)), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("Table pitboss.events doesn't exist"),
        "{error}"
    );
    assert!(sink.rows().is_empty());
}

/// Shared by the two members of the mid-split test: the piece the first one had in flight.
#[derive(Debug, Default)]
struct Held(std::sync::Mutex<Option<Arc<Batch<EventRow>>>>);

/// The first member (`holds`) never returns from the insert of the piece starting at offset
/// 13 — it dies mid-split — and keeps it; the second lands it right after reading the
/// high-water mark, too late for the mark to show it.
#[derive(Debug)]
struct DiesMidSplit {
    inner: MemorySink<EventRow>,
    held: Arc<Held>,
    holds: bool,
}

#[async_trait::async_trait]
impl Sink<EventRow> for DiesMidSplit {
    async fn high_water(
        &self,
        topic: &str,
        partition: u32,
        since_ms: Option<i64>,
    ) -> Result<Option<u64>, ProcessorError> {
        let mark = self.inner.high_water(topic, partition, since_ms).await?;
        let late = if self.holds {
            None
        } else {
            self.held.0.lock().unwrap().take()
        };
        if let Some(piece) = late {
            self.inner.insert(&piece).await?;
        }
        Ok(mark)
    }
    async fn insert(&self, batch: &Arc<Batch<EventRow>>) -> Result<(), ProcessorError> {
        if self.holds && batch.rows[0].bus_offset == 13 {
            *self.held.0.lock().unwrap() = Some(batch.clone());
            std::future::pending::<()>().await;
        }
        self.inner.insert(batch).await
    }
    async fn intend(&self, batch: &Batch<EventRow>) -> Result<(), ProcessorError> {
        self.inner.intend(batch).await
    }
    async fn intended(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Option<(u64, u64)>, ProcessorError> {
        self.inner.intended(topic, partition).await
    }
}

/// Batch [0, 99] with rows 10 and 70 refused. The first member splits it — [0, 6] lands,
/// 10 is dead-lettered, [11] and [12] land — and dies inserting [13, 24]. That insert lands
/// after the second member read the mark (12). The second re-cuts [13, 99] and splits it
/// within the recorded [0, 99], so it inserts [13, 24] again: a block the store has seen
/// and drops (as a replicated ClickHouse table does). Split over its own rows, it would land
/// [13, 56] in one piece, and rows 13-24 twice.
#[tokio::test]
async fn a_member_taking_over_in_the_middle_of_a_split_inserts_the_piece_in_flight_again() {
    let (bus, _dir, _) = one_partition(100).await;
    let sink = MemorySink::<EventRow>::new();
    sink.refuse([event_id(10), event_id(70)]);
    sink.drop_seen_blocks();
    let held = Arc::new(Held::default());
    // Only max rows cuts: the batch is [0, 99] however the records arrive.
    let config = ProcessorConfig {
        batch: BatchConfig {
            max_rows: 100,
            max_age: Duration::from_secs(600),
            ..BatchConfig::default()
        },
        ..config()
    };
    let first = tokio::spawn(run(
        bus.clone(),
        Arc::new(DiesMidSplit {
            inner: sink.clone(),
            held: held.clone(),
            holds: true,
        }),
        config.clone(),
        std::future::pending(),
    ));
    let start = std::time::Instant::now();
    while held.0.lock().unwrap().is_none() {
        assert!(start.elapsed() < Duration::from_secs(30), "no piece at 13");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.abort();
    let _ = first.await;
    let in_flight: Vec<u64> = (13..=24).collect();
    let held_offsets: Vec<u64> = held
        .0
        .lock()
        .unwrap()
        .as_ref()
        .unwrap()
        .rows
        .iter()
        .map(|r| r.bus_offset)
        .collect();
    assert_eq!(held_offsets, in_flight);
    assert_eq!(sink.rows().len(), 12, "0-12 but 10");
    let attempts_of_first = sink.attempts().len();

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let second = tokio::spawn(run(
        bus.clone(),
        Arc::new(DiesMidSplit {
            inner: sink.clone(),
            held: held.clone(),
            holds: false,
        }),
        config,
        async {
            let _ = stopped.await;
        },
    ));
    let start = std::time::Instant::now();
    while sink.rows().len() < 98 && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await; // anything extra would show up now
    stop.send(()).unwrap();
    let stats = second.await.unwrap().unwrap();
    assert!(held.0.lock().unwrap().is_none(), "the late insert ran");
    assert!(
        sink.attempts()[attempts_of_first..].contains(&in_flight),
        "{:?}",
        sink.attempts()
    );
    assert_eq!(
        (sink.rows().len(), unique_ids(&sink)),
        (98, 98),
        "{stats:?}"
    );
    // Row 70 is refused again; 10 was at or below the mark (dead-lettered by the first).
    assert_eq!(stats.dead_lettered, 1, "{stats:?}");
}
