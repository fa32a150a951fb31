//! Real Kafka into real ClickHouse (services from scripts/stack.sh): the schema migrates on
//! 18.16 (twice, concurrently, without harm), 100,000 events land exactly once, a crash after
//! the insert and before the commit does not duplicate, and the per-minute rollups fill.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use clickhouse::Client;
use pitboss_bus::kafka::{KafkaBus, KafkaConfig};
use pitboss_bus::{Bus, OutRecord};
use pitboss_model::{Event, Money, Payload, Timestamp, encode_proto};
use pitboss_processor::{BatchConfig, ClickHouseSink, ProcessorConfig, run, schema, sink};

mod common;

fn event(i: u64) -> OutRecord {
    let now = Timestamp::now();
    let player = format!("p{}", i % 1000);
    let payload = if i.is_multiple_of(2) {
        Payload::BetPlaced(pitboss_model::BetPlaced {
            bet_id: format!("b{i}"),
            game_id: format!("slot-{}", i % 7),
            round_id: None,
            stake: Money::new(100, "EUR"),
            odds: None,
            bet_type: None,
            channel: None,
            device_id: None,
        })
    } else {
        Payload::BetSettled(pitboss_model::BetSettled {
            bet_id: format!("b{}", i - 1),
            game_id: format!("slot-{}", (i - 1) % 7),
            round_id: None,
            result: pitboss_model::SettlementResult::Win,
            payout: Money::new(40, "EUR"),
        })
    };
    let e = Event {
        event_id: Some(format!("0193735a-0000-7000-8000-{i:012x}")),
        tenant_id: "acme".into(),
        player_id: player.clone(),
        session_id: None,
        occurred_at: now,
        received_at: Some(now),
        schema_version: 1,
        late: false,
        payload,
    };
    OutRecord::new(format!("acme:{player}"), encode_proto(&e))
}

async fn database() -> Client {
    let url = pitboss_testkit::clickhouse();
    let db = pitboss_testkit::unique_name("pitboss");
    Client::default()
        .with_url(&url)
        .query(&format!("CREATE DATABASE {db}"))
        .execute()
        .await
        .unwrap();
    sink::client(&url, &db)
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct Counts {
    rows: u64,
    ids: u64,
}

async fn counts(client: &Client) -> Counts {
    client
        .query("SELECT count() AS rows, uniqExact(event_id) AS ids FROM events")
        .fetch_one()
        .await
        .unwrap()
}

async fn wait_for_rows(client: &Client, n: u64) {
    let start = std::time::Instant::now();
    while counts(client).await.rows < n && start.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn migrations_are_idempotent_and_safe_to_run_concurrently() {
    let client = database().await;
    let (a, b) = tokio::join!(
        schema::migrate(&client, &schema::Layout::Single),
        schema::migrate(&client, &schema::Layout::Single)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(!a.is_empty() || !b.is_empty());
    assert!(
        schema::migrate(&client, &schema::Layout::Single)
            .await
            .unwrap()
            .is_empty(),
        "nothing left to apply"
    );
    let applied = schema::applied(&client, &schema::Layout::Single)
        .await
        .unwrap();
    let all: Vec<u32> = schema::MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(applied, all);
}

#[tokio::test]
async fn events_land_exactly_once_through_a_crash_and_fill_the_rollups() {
    const N: u64 = 100_000;
    let client = database().await;
    schema::migrate(&client, &schema::Layout::Single)
        .await
        .unwrap();
    let bus = Arc::new(KafkaBus::new(KafkaConfig::new(pitboss_testkit::kafka())).unwrap());
    let topic = common::published_topic(&bus, N, event).await;
    let config = common::config(&topic, 20_000);
    let sink = Arc::new(ClickHouseSink::new(client.clone()));

    // First member: aborted (a crash) once about half the rows are in; its last batches are
    // inserted but their offsets not committed.
    let crashing = tokio::spawn(run(
        bus.clone(),
        sink.clone(),
        config.clone(),
        std::future::pending(),
    ));
    wait_for_rows(&client, N / 2).await;
    crashing.abort();
    let _ = crashing.await;

    // Second member: takes over from the committed offsets, skips what ClickHouse has.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let second = tokio::spawn(run(bus.clone(), sink.clone(), config, async {
        let _ = stopped.await;
    }));
    wait_for_rows(&client, N).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // anything extra would show up now
    stop.send(()).unwrap();
    let stats = second.await.unwrap().unwrap();

    let c = counts(&client).await;
    assert_eq!(
        (c.rows, c.ids),
        (N, N),
        "exactly once, without FINAL: {stats:?}"
    );

    #[derive(Debug, clickhouse::Row, serde::Deserialize)]
    struct Rollup {
        bets: u64,
        settlements: u64,
        stakes: i64,
        ggr: i64,
    }
    let r: Rollup = client
        .query("SELECT sum(bets) AS bets, sum(settlements) AS settlements, sum(stakes_minor) AS stakes, sum(ggr_minor) AS ggr FROM bets_per_minute WHERE tenant_id = 'acme'")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!((r.bets, r.settlements), (N / 2, N / 2));
    assert_eq!(r.stakes, (N / 2) as i64 * 100);
    assert_eq!(r.ggr, (N / 2) as i64 * (100 - 40));
    let players: u64 = client
        .query("SELECT uniqMerge(players) FROM players_per_minute WHERE tenant_id = 'acme'")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(players, 1000);
}

#[tokio::test]
async fn poison_reaches_the_dead_letter_topic_and_its_partition_keeps_flowing() {
    const N: u64 = 2_000;
    let client = database().await;
    schema::migrate(&client, &schema::Layout::Single)
        .await
        .unwrap();
    let bus = Arc::new(KafkaBus::new(KafkaConfig::new(pitboss_testkit::kafka())).unwrap());
    let topic = pitboss_testkit::unique_name("events");
    let dead = format!("{topic}_dead_letter");
    // One partition: every poison record sits between good ones of the same partition.
    bus.create_topic(&topic, 1).await.unwrap();
    bus.create_topic(&dead, 1).await.unwrap();
    let mut records = Vec::new();
    let mut poison = Vec::new();
    for i in 0..N {
        records.push(event(i));
        if i % 400 == 7 {
            let value = format!("not protobuf {i}").into_bytes();
            poison.push(value.clone());
            records.push(OutRecord::new(format!("bad{i}"), value));
        }
    }
    bus.publisher().publish(&topic, records).await.unwrap();

    let config = ProcessorConfig {
        topic: topic.clone(),
        group: format!("{topic}_processor"),
        dead_letter_topic: dead.clone(),
        batch: BatchConfig {
            max_rows: 500,
            max_age: Duration::from_millis(200),
            ..BatchConfig::default()
        },
        ..ProcessorConfig::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run(
        bus.clone(),
        Arc::new(ClickHouseSink::new(client.clone())),
        config,
        async {
            let _ = stopped.await;
        },
    ));
    wait_for_rows(&client, N).await;
    stop.send(()).unwrap();
    let stats = task.await.unwrap().unwrap();
    assert_eq!(stats.dead_lettered, poison.len() as u64, "{stats:?}");
    let c = counts(&client).await;
    assert_eq!(
        (c.rows, c.ids),
        (N, N),
        "every good record behind the poison landed"
    );

    // The dead-letter topic holds each poison record, unchanged, keyed by where it came
    // from and why.
    let mut consumer = bus
        .consumer(
            &format!("{topic}_check"),
            &dead,
            pitboss_bus::ConsumerConfig::default(),
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    let start = std::time::Instant::now();
    while got.len() < poison.len() && start.elapsed() < Duration::from_secs(30) {
        if let pitboss_bus::Delivery::Records(rs) = consumer
            .poll(100, Duration::from_millis(200))
            .await
            .unwrap()
        {
            got.extend(rs);
        }
    }
    assert_eq!(
        got.iter().map(|r| r.value.clone()).collect::<Vec<_>>(),
        poison
    );
    for r in &got {
        assert!(
            r.key.starts_with(&format!("{topic}:0:")) && r.key.contains("undecodable protobuf"),
            "{}",
            r.key
        );
    }
}

#[tokio::test]
async fn the_high_water_query_reads_only_rows_received_since_the_bound() {
    use pitboss_processor::Sink;
    use pitboss_processor::rows::EventRow;
    let client = database().await;
    schema::migrate(&client, &schema::Layout::Single)
        .await
        .unwrap();
    let now_ms = Timestamp::now().as_millis();
    let row = |offset: u64, received_ms: i64| EventRow {
        event_id: format!("e{offset}"),
        received_at: (received_ms / 1000) as u32,
        received_at_ms: received_ms as u64,
        occurred_at: (received_ms / 1000) as u32,
        occurred_at_ms: received_ms as u64,
        bus_topic: "t".into(),
        bus_partition: 0,
        bus_offset: offset,
        ..EventRow::default()
    };
    let mut insert = client.insert::<EventRow>("events").await.unwrap();
    // A probe the processor's assumption rules out (a higher offset received 3 days before a
    // lower one), so the answer shows which rows the query read.
    insert
        .write(&row(1_000, now_ms - 3 * 86_400_000))
        .await
        .unwrap();
    for offset in 0..10 {
        insert.write(&row(offset, now_ms)).await.unwrap();
    }
    insert.end().await.unwrap();
    let sink = ClickHouseSink::new(client.clone());
    assert_eq!(sink.high_water("t", 0, None).await.unwrap(), Some(1_000));
    let since = now_ms - pitboss_processor::run::REPLAY_MARGIN_MS;
    assert_eq!(sink.high_water("t", 0, Some(since)).await.unwrap(), Some(9));
    assert_eq!(sink.high_water("t", 1, Some(since)).await.unwrap(), None);
}
