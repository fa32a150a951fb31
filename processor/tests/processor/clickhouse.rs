//! Real Kafka into real ClickHouse (services from scripts/stack.sh): the schema migrates on
//! 18.16 (twice, concurrently, without harm), 100,000 events land exactly once, a crash after
//! the insert and before the commit does not duplicate, and the per-minute rollups fill. Rows
//! the server refuses go to the dead-letter topic with its reason while the rest lands; a
//! table dropped or a column altered under the processor stops it with the reason.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use clickhouse::Client;
use pitboss_bus::kafka::{KafkaBus, KafkaConfig};
use pitboss_bus::{Bus, OutRecord};
use pitboss_model::{Event, Money, Payload, Timestamp, encode_proto};
use pitboss_processor::{
    BatchConfig, ClickHouseSink, EventRow, ProcessorConfig, run, schema, sink,
};

use crate::common;

fn event(i: u64) -> OutRecord {
    event_in(i, "EUR")
}

/// Event `i`, its money in `currency` (not checked on the way to ClickHouse).
fn event_in(i: u64, currency: &str) -> OutRecord {
    let now = Timestamp::now();
    let player = format!("p{}", i % 1000);
    let payload = if i.is_multiple_of(2) {
        Payload::BetPlaced(pitboss_model::BetPlaced {
            bet_id: format!("b{i}"),
            game_id: format!("slot-{}", i % 7),
            round_id: None,
            stake: Money::new(100, currency),
            odds: None,
            bet_type: None,
            channel: None,
            device_id: None,
            autoplay: false,
        })
    } else {
        Payload::BetSettled(pitboss_model::BetSettled {
            bet_id: format!("b{}", i - 1),
            game_id: format!("slot-{}", (i - 1) % 7),
            round_id: None,
            result: pitboss_model::SettlementResult::Win,
            payout: Money::new(40, currency),
            stake: None,
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
        utc_offset_min: None,
        payload,
    };
    // As ingest publishes an event whose id the client chose.
    OutRecord::new(format!("acme:{player}"), encode_proto(&e))
        .with_header(pitboss_bus::header::CLIENT_ID, "1")
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
    let crashing = tokio::spawn(run::<EventRow>(
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
    let second = tokio::spawn(run::<EventRow>(bus.clone(), sink.clone(), config, async {
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
    let task = tokio::spawn(run::<EventRow>(
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
    let mark = |partition, since| Sink::<EventRow>::high_water(&sink, "t", partition, since);
    assert_eq!(mark(0, None).await.unwrap(), Some(1_000));
    let since = now_ms - pitboss_processor::run::REPLAY_MARGIN_MS;
    assert_eq!(mark(0, Some(since)).await.unwrap(), Some(9));
    assert_eq!(mark(1, Some(since)).await.unwrap(), None);
}

/// Over Kinesis the mark is the greatest sequence number stored for the shard, compared as a
/// number (longer is greater; "10" above "9"), within the same time bound, in every table (an
/// alert's here). The shard is named by its id, not its number: a reshard renumbers shards
/// (a child stored as number 2 becomes number 0 once the closed parents leave the list), and
/// two shards' sequence numbers do not compare. Rows of other shards, or with offsets (no
/// sequence), do not count.
#[tokio::test]
async fn the_kinesis_high_water_is_the_greatest_sequence_number_stored_for_the_shard() {
    use pitboss_processor::Sink;
    let client = database().await;
    schema::migrate(&client, &schema::Layout::Single)
        .await
        .unwrap();
    let now_ms = Timestamp::now().as_millis();
    let row = |partition: u32, shard: &str, sequence: &str, received_ms: i64| EventRow {
        event_id: format!("e{partition}-{shard}-{sequence}"),
        received_at: (received_ms / 1000) as u32,
        received_at_ms: received_ms as u64,
        occurred_at: (received_ms / 1000) as u32,
        occurred_at_ms: received_ms as u64,
        bus_topic: "t".into(),
        bus_partition: partition,
        bus_sequence: if shard.is_empty() {
            String::new()
        } else {
            format!("{shard}:{sequence}")
        },
        ..EventRow::default()
    };
    let (s0, s2, s3) = (
        "shardId-000000000000",
        "shardId-000000000002",
        "shardId-000000000003",
    );
    let aws = "49590338271490256608559692538361571095921575989136588898";
    let mut insert = client.insert::<EventRow>("events").await.unwrap();
    for r in [
        row(0, s0, "9", now_ms),
        row(0, s0, "10", now_ms),
        row(0, "", "", now_ms), // a row stored with an offset
        // Shard 2 stored as number 2, then (renumbered) as number 0: one shard.
        row(
            2,
            s2,
            "49590338271490256608559692538361571095921575989136588897",
            now_ms,
        ),
        row(0, s2, aws, now_ms),
        row(
            2,
            s2,
            "999999999999999999999999999999999999999999999999999999",
            now_ms,
        ),
        // Above every other, but received 3 days before them: outside the bound.
        row(3, s3, "77", now_ms - 3 * 86_400_000),
        row(3, s3, "8", now_ms),
    ] {
        insert.write(&r).await.unwrap();
    }
    insert.end().await.unwrap();
    let sink = ClickHouseSink::new(client.clone());
    let since = Some(now_ms - pitboss_processor::run::REPLAY_MARGIN_MS);
    let mark = |shard, since| Sink::<EventRow>::high_water_sequence(&sink, "t", shard, since);
    assert_eq!(mark(s0, since).await.unwrap().as_deref(), Some("10"));
    assert_eq!(mark(s2, since).await.unwrap().as_deref(), Some(aws));
    assert_eq!(mark(s3, since).await.unwrap().as_deref(), Some("8"));
    assert_eq!(mark(s3, None).await.unwrap().as_deref(), Some("77"));
    assert_eq!(mark("shardId-000000000001", since).await.unwrap(), None);
    // The offsets' mark is not the sequences' (every row above has `bus_offset` 0).
    assert_eq!(
        Sink::<EventRow>::high_water(&sink, "t", 0, since)
            .await
            .unwrap(),
        Some(0)
    );

    // The live tables keep theirs too.
    let alert = pitboss_processor::rows::AlertRow {
        tenant_id: "acme".into(),
        alert_id: "a1".into(),
        detected_at: (now_ms / 1000) as u32,
        detected_at_ms: now_ms as u64,
        bus_topic: "t".into(),
        bus_partition: 0,
        bus_sequence: format!("{s0}:12"),
        ..Default::default()
    };
    let mut insert = client
        .insert::<pitboss_processor::rows::AlertRow>("alerts")
        .await
        .unwrap();
    insert.write(&alert).await.unwrap();
    insert.end().await.unwrap();
    assert_eq!(
        Sink::<pitboss_processor::rows::AlertRow>::high_water_sequence(&sink, "t", s0, since)
            .await
            .unwrap()
            .as_deref(),
        Some("12")
    );
}

/// A store holding one row of a new Kafka topic of 5 records (`event(0..5)`), stored from
/// `offset` with another event's id, as a topic made anew under the same name finds the rows
/// of the old one; then a processor of the topic run `runs` times, each to the error it
/// stops with (60 s at most), and the topic's name.
async fn stopped_beside_an_old_row(offset: u64, runs: usize) -> (String, Vec<String>, Client) {
    let client = database().await;
    schema::migrate(&client, &schema::Layout::Single)
        .await
        .unwrap();
    let bus = Arc::new(KafkaBus::new(KafkaConfig::new(pitboss_testkit::kafka())).unwrap());
    let topic = one_partition(&bus, (0..5).map(event).collect()).await;
    let now_ms = Timestamp::now().as_millis();
    let old = EventRow {
        event_id: "0193735a-0000-7000-8000-0000000000ff".into(),
        received_at: (now_ms / 1000) as u32,
        received_at_ms: now_ms as u64,
        occurred_at: (now_ms / 1000) as u32,
        occurred_at_ms: now_ms as u64,
        bus_topic: topic.clone(),
        bus_partition: 0,
        bus_offset: offset,
        ..EventRow::default()
    };
    let mut insert = client.insert::<EventRow>("events").await.unwrap();
    insert.write(&old).await.unwrap();
    insert.end().await.unwrap();
    let mut errors = Vec::new();
    for _ in 0..runs {
        let stopped = tokio::time::timeout(
            Duration::from_secs(60),
            run::<EventRow>(
                bus.clone(),
                Arc::new(ClickHouseSink::new(client.clone())),
                common::config(&topic, 500),
                std::future::pending(),
            ),
        )
        .await
        .expect("the processor stops on its own");
        let Err(pitboss_processor::ProcessorError::Config(why)) = stopped else {
            panic!("{stopped:?}");
        };
        errors.push(why);
    }
    (topic, errors, client)
}

/// The store holds rows of a topic up to offset 1,000 and the topic on Kafka holds 5 records:
/// the processor stops, naming the partition, the mark and the newest offset, and stores none
/// of them, where it would have skipped all five as stored.
#[tokio::test]
async fn a_kafka_topic_below_the_stores_mark_stops_the_processor_rather_than_being_skipped() {
    let (topic, errors, client) = stopped_beside_an_old_row(1_000, 1).await;
    assert!(
        errors[0].contains(&format!(
            "topic {topic} partition 0: the store (events) holds rows of it up to offset 1000, \
             but the newest record on the bus is at offset 4"
        )),
        "{}",
        errors[0]
    );
    assert_eq!(counts(&client).await.rows, 1, "nothing of the topic stored");
}

/// The same, with the topic grown past the store's mark (its row from offset 2): the record at
/// offset 2 is another event than the row stored from it, so the processor stops rather than
/// skip offsets 0-2 — and again when started again.
#[tokio::test]
async fn a_kafka_topic_grown_past_the_stores_mark_with_other_records_stops_the_processor() {
    let (topic, errors, client) = stopped_beside_an_old_row(2, 2).await;
    for why in &errors {
        assert!(
            why.contains(&format!(
                "topic {topic} partition 0: the store (events) holds rows of it up to offset 2, \
                 but the record at that offset on the bus is another one (events "
            )) && why.contains("where the store has 0193735a-0000-7000-8000-0000000000ff"),
            "{why}"
        );
    }
    assert_eq!(counts(&client).await.rows, 1, "nothing of the topic stored");
}

/// Every record of `topic` (one partition) on Kafka, read until `n` are in (or 30 s).
async fn read_all(bus: &KafkaBus, topic: &str, n: usize) -> Vec<pitboss_bus::Record> {
    let mut consumer = bus
        .consumer(
            &pitboss_testkit::unique_name("check"),
            topic,
            pitboss_bus::ConsumerConfig::default(),
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    let start = std::time::Instant::now();
    while got.len() < n && start.elapsed() < Duration::from_secs(30) {
        if let pitboss_bus::Delivery::Records(rs) = consumer
            .poll(100, Duration::from_millis(200))
            .await
            .unwrap()
        {
            got.extend(rs);
        }
    }
    got
}

/// A topic of one partition (and its dead-letter topic) holding `records`.
async fn one_partition(bus: &KafkaBus, records: Vec<OutRecord>) -> String {
    let topic = pitboss_testkit::unique_name("events");
    bus.create_topic(&topic, 1).await.unwrap();
    bus.create_topic(&format!("{topic}_dead_letter"), 1)
        .await
        .unwrap();
    bus.publisher().publish(&topic, records).await.unwrap();
    topic
}

/// Runs a processor of `topic` until `events` holds `n` rows, then stops it.
async fn process_until(
    bus: &Arc<KafkaBus>,
    client: &Client,
    config: &ProcessorConfig,
    n: u64,
) -> pitboss_processor::RunStats {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run::<EventRow>(
        bus.clone(),
        Arc::new(ClickHouseSink::new(client.clone())),
        config.clone(),
        async {
            let _ = stopped.await;
        },
    ));
    wait_for_rows(client, n).await;
    tokio::time::sleep(Duration::from_secs(1)).await; // anything extra would show up now
    stop.send(()).unwrap();
    task.await.unwrap().unwrap()
}

/// A client's retry of an event id the ingest edge did not recognise (after a restart of any
/// part, or through another ingest instance) reaches the bus again, at offsets past the
/// high-water mark: the store drops those copies — after the processor restarted, and twice
/// within one batch — and the rollups count each event once.
#[tokio::test]
async fn an_event_id_retried_after_a_restart_is_stored_and_rolled_up_once() {
    const N: u64 = 3_000;
    let client = database().await;
    schema::migrate(&client, &schema::Layout::Single)
        .await
        .unwrap();
    let bus = Arc::new(KafkaBus::new(KafkaConfig::new(pitboss_testkit::kafka())).unwrap());
    let events: Vec<OutRecord> = (0..N).map(event).collect();
    let topic = one_partition(&bus, events.clone()).await;
    let config = common::config(&topic, 500);
    process_until(&bus, &client, &config, N).await;

    // The retries, to a new processor: every event again, the second half twice in a row
    // (copies inside one batch), then one new event, stored once all before it was read.
    let mut retries = events.clone();
    for e in &events[N as usize / 2..] {
        retries.extend([e.clone(), e.clone()]);
    }
    retries.push(event(N));
    bus.publisher().publish(&topic, retries).await.unwrap();
    let stats = process_until(&bus, &client, &config, N + 1).await;

    let c = counts(&client).await;
    assert_eq!((c.rows, c.ids), (N + 1, N + 1), "{stats:?}");
    #[derive(Debug, clickhouse::Row, serde::Deserialize)]
    struct Rollup {
        bets: u64,
        settlements: u64,
        stakes: i64,
        payouts: i64,
    }
    let r: Rollup = client
        .query("SELECT sum(bets) AS bets, sum(settlements) AS settlements, sum(stakes_minor) AS stakes, sum(payouts_minor) AS payouts FROM bets_per_minute")
        .fetch_one()
        .await
        .unwrap();
    // Even i are bets (0..=N: N / 2 + 1), odd i settlements.
    assert_eq!((r.bets, r.settlements), (N / 2 + 1, N / 2));
    assert_eq!(
        (r.stakes, r.payouts),
        ((N / 2 + 1) as i64 * 100, (N / 2) as i64 * 40)
    );
}

/// No event from the bus can be refused by the migrated `events` (strings, integers and
/// DateTime take any RowBinary value), but a column an operator adds can refuse one: here a
/// currency code that must fit FixedString(3). ClickHouse refuses the whole insert without
/// saying which row; the processor halves the batch until it knows, dead-letters those rows
/// with the server's answer, lands the rest, and stores its offsets past them.
#[tokio::test]
async fn rows_clickhouse_refuses_are_dead_lettered_with_its_reason_and_the_rest_lands() {
    const N: u64 = 2_000;
    let client = database().await;
    schema::migrate(&client, &schema::Layout::Single)
        .await
        .unwrap();
    client
        .query(
            "ALTER TABLE events ADD COLUMN currency_code FixedString(3) \
             MATERIALIZED toFixedString(currency, 3)",
        )
        .execute()
        .await
        .unwrap();
    let bus = Arc::new(KafkaBus::new(KafkaConfig::new(pitboss_testkit::kafka())).unwrap());
    let bad: Vec<u64> = (0..N).filter(|i| i % 400 == 7).collect();
    let records: Vec<OutRecord> = (0..N)
        .map(|i| {
            if bad.contains(&i) {
                event_in(i, "EURO")
            } else {
                event(i)
            }
        })
        .collect();
    let refused: Vec<Vec<u8>> = bad
        .iter()
        .map(|i| records[*i as usize].value.clone())
        .collect();
    let topic = one_partition(&bus, records).await;
    let config = common::config(&topic, 500);

    let good = N - bad.len() as u64;
    let stats = process_until(&bus, &client, &config, good).await;
    assert_eq!(stats.dead_lettered, bad.len() as u64, "{stats:?}");
    let c = counts(&client).await;
    assert_eq!((c.rows, c.ids), (good, good), "every other row, once");
    let odd: u64 = client
        .query("SELECT count() FROM events WHERE currency NOT IN ('EUR', '')")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(odd, 0);

    let dead = read_all(&bus, &format!("{topic}_dead_letter"), bad.len()).await;
    assert_eq!(
        dead.iter().map(|r| r.value.clone()).collect::<Vec<_>>(),
        refused,
        "the records as they were, in order"
    );
    for (r, i) in dead.iter().zip(&bad) {
        let key = &r.key;
        assert!(
            key.starts_with(&format!(
                "{topic}:0:{i}: clickhouse refused the rows: Code: 131"
            )),
            "{key}"
        );
        assert!(
            key.contains("String too long for type FixedString(3)"),
            "{key}"
        );
    }

    // The partition keeps flowing, and the offsets were stored past the refused rows: the
    // next member neither inserts nor dead-letters anything twice.
    bus.publisher()
        .publish(&topic, (N..N + 100).map(event).collect())
        .await
        .unwrap();
    let stats = process_until(&bus, &client, &config, good + 100).await;
    assert_eq!(
        (stats.rows_inserted, stats.dead_lettered),
        (100, 0),
        "{stats:?}"
    );
    let c = counts(&client).await;
    assert_eq!((c.rows, c.ids), (good + 100, good + 100));
}

/// ClickHouse (18.16 and current) writes the table before its materialized views: a view that
/// refuses a row fails the insert after the rows landed. The processor sees them landed (the
/// high-water mark) and does not split the batch — a split would write them again.
#[tokio::test]
async fn rows_a_materialized_view_refuses_after_the_table_took_them_are_not_written_twice() {
    const N: u64 = 1_000;
    let client = database().await;
    schema::migrate(&client, &schema::Layout::Single)
        .await
        .unwrap();
    for ddl in [
        "CREATE TABLE currencies (currency FixedString(3)) ENGINE = MergeTree ORDER BY currency",
        "CREATE MATERIALIZED VIEW currencies_mv TO currencies AS \
         SELECT toFixedString(currency, 3) AS currency FROM events",
    ] {
        client.query(ddl).execute().await.unwrap();
    }
    let bus = Arc::new(KafkaBus::new(KafkaConfig::new(pitboss_testkit::kafka())).unwrap());
    let records = (0..N)
        .map(|i| {
            if i == 500 {
                event_in(i, "EURO")
            } else {
                event(i)
            }
        })
        .collect();
    let topic = one_partition(&bus, records).await;
    let stats = process_until(&bus, &client, &common::config(&topic, 10_000), N).await;
    let c = counts(&client).await;
    assert_eq!((c.rows, c.ids), (N, N), "{stats:?}");
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
}

/// Awaits a processor that must stop by itself (the guard only keeps a processor that
/// retries forever from hanging the suite).
async fn stopped(
    task: tokio::task::JoinHandle<
        Result<pitboss_processor::RunStats, pitboss_processor::ProcessorError>,
    >,
) -> pitboss_processor::ProcessorError {
    tokio::time::timeout(Duration::from_secs(120), task)
        .await
        .expect("the processor stopped by itself")
        .unwrap()
        .expect_err("the processor failed")
}

#[tokio::test]
async fn a_table_dropped_under_the_processor_stops_it_with_the_reason() {
    let client = database().await;
    schema::migrate(&client, &schema::Layout::Single)
        .await
        .unwrap();
    let bus = Arc::new(KafkaBus::new(KafkaConfig::new(pitboss_testkit::kafka())).unwrap());
    let topic = one_partition(&bus, (0..200).map(event).collect()).await;
    let task = tokio::spawn(run::<EventRow>(
        bus.clone(),
        Arc::new(ClickHouseSink::new(client.clone())),
        common::config(&topic, 10_000),
        std::future::pending(),
    ));
    wait_for_rows(&client, 200).await;
    client.query("DROP TABLE events").execute().await.unwrap();
    bus.publisher()
        .publish(&topic, (200..210).map(event).collect())
        .await
        .unwrap();
    let error = stopped(task).await;
    assert!(
        matches!(error, pitboss_processor::ProcessorError::Schema(_)),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(
        text.starts_with("clickhouse schema: Code: 60") && text.contains("events doesn't exist"),
        "{text}"
    );
}

/// RowBinary carries no types: after a column's type changed, the server cannot read the
/// rows and answers like bad data (`CANNOT_READ_ALL_DATA`…). The processor checks the table's
/// columns before splitting: a schema error, not every row in the dead-letter topic.
#[tokio::test]
async fn a_column_altered_under_the_processor_stops_it_with_the_reason() {
    let client = database().await;
    schema::migrate(&client, &schema::Layout::Single)
        .await
        .unwrap();
    client
        .query("ALTER TABLE events MODIFY COLUMN amount_minor Int32")
        .execute()
        .await
        .unwrap();
    let bus = Arc::new(KafkaBus::new(KafkaConfig::new(pitboss_testkit::kafka())).unwrap());
    let topic = one_partition(&bus, (0..200).map(event).collect()).await;
    let task = tokio::spawn(run::<EventRow>(
        bus.clone(),
        Arc::new(ClickHouseSink::new(client.clone())),
        common::config(&topic, 10_000),
        std::future::pending(),
    ));
    let error = stopped(task).await;
    assert_eq!(
        error.to_string(),
        "clickhouse schema: table events: column amount_minor is Int32, not Int64; \
         the processor writes it as the migrations made it"
    );
    assert_eq!(counts(&client).await.rows, 0);
}

/// Stores through `inner`, but the first insert's answer is lost (an error after the rows
/// landed), as when the connection drops just after ClickHouse committed.
#[derive(Debug)]
struct LoseFirstAnswer {
    inner: ClickHouseSink,
    lost: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl pitboss_processor::Sink<EventRow> for LoseFirstAnswer {
    async fn high_water(
        &self,
        topic: &str,
        partition: u32,
        since_ms: Option<i64>,
    ) -> Result<Option<u64>, pitboss_processor::ProcessorError> {
        pitboss_processor::Sink::<EventRow>::high_water(&self.inner, topic, partition, since_ms)
            .await
    }

    async fn insert(
        &self,
        batch: &Arc<pitboss_processor::Batch<EventRow>>,
    ) -> Result<(), pitboss_processor::ProcessorError> {
        self.inner.insert(batch).await?;
        if !self.lost.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(pitboss_processor::ProcessorError::Store(
                "answer lost".into(),
            ));
        }
        Ok(())
    }
}

/// A batch whose last row is a copy of a stored event lands without it, so the high-water mark
/// stays below the batch's last offset; when the answer to that insert is lost, the retry must
/// not store the batch's other rows (ids the server generated, never looked up otherwise) a
/// second time.
#[tokio::test]
async fn a_retry_after_a_lost_answer_does_not_store_the_landed_rows_twice() {
    let client = database().await;
    schema::migrate(&client, &schema::Layout::Single)
        .await
        .unwrap();
    let bus = Arc::new(KafkaBus::new(KafkaConfig::new(pitboss_testkit::kafka())).unwrap());
    let original = event(0);
    let topic = one_partition(&bus, vec![original.clone()]).await;
    let config = common::config(&topic, 500);
    process_until(&bus, &client, &config, 1).await;

    // Five events with ids the server generated (no client-id header), then the copy.
    let mut batch: Vec<OutRecord> = (1..=5)
        .map(|i| {
            let mut r = event(i);
            r.headers = pitboss_bus::Headers::new();
            r
        })
        .collect();
    batch.push(original);
    bus.publisher().publish(&topic, batch).await.unwrap();
    let sink = Arc::new(LoseFirstAnswer {
        inner: ClickHouseSink::new(client.clone()),
        lost: std::sync::atomic::AtomicBool::new(false),
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run::<EventRow>(bus.clone(), sink.clone(), config, async {
        let _ = stopped.await;
    }));
    wait_for_rows(&client, 6).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // a second insert would show up now
    stop.send(()).unwrap();
    let stats = task.await.unwrap().unwrap();
    assert!(sink.lost.load(std::sync::atomic::Ordering::SeqCst));
    assert!(stats.insert_retries >= 1, "{stats:?}");
    let c = counts(&client).await;
    assert_eq!((c.rows, c.ids), (6, 6), "{stats:?}");
}
