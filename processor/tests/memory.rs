//! The processor loop over the embedded log and the in-memory sink with failure injection:
//! retries until the insert lands, a lost answer is not inserted twice, a restart after a
//! crash skips what the store already has, poison goes to the dead-letter topic.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use pitboss_bus::embedded::{EmbeddedBus, EmbeddedConfig};
use pitboss_bus::{Bus, ConsumerConfig, Delivery, OutRecord};
use pitboss_model::encode_proto;
use pitboss_processor::{BatchConfig, MemorySink, ProcessorConfig, run};

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
    sink: &MemorySink,
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

fn unique_ids(sink: &MemorySink) -> usize {
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
    let sink = MemorySink::new();
    sink.fail_next(3);
    let stats = run_until(bus.clone(), &sink, 1000).await;
    assert!(stats.insert_retries >= 3, "{stats:?}");
    assert_eq!((sink.rows().len(), unique_ids(&sink)), (1000, 1000));

    let sink = MemorySink::new();
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
    let sink = MemorySink::new();
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
    let sink = MemorySink::new();
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
    let sink = MemorySink::new();
    // Probes the processor's assumption rules out: on every partition, a far higher offset
    // received 3 days before the records now on the bus. Asked with the bound taken from
    // the first record, the store ignores them and nothing real is skipped.
    let old_ms = pitboss_model::Timestamp::now().as_millis() - 3 * 86_400_000;
    for partition in 0..3 {
        let probe = pitboss_processor::rows::EventRow {
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
