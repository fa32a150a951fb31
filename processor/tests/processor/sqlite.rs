//! The embedded store: the processor over the embedded log into SQLite. Rows, rollups and
//! positions land together; a crash without commit replays nothing twice; rollups equal what
//! the raw rows say; migrations are idempotent under concurrency; `query` is read-only.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pitboss_bus::embedded::{EmbeddedBus, EmbeddedConfig};
use pitboss_bus::{Bus, OutRecord};
use pitboss_model::{BetPlaced, BetSettled, Event, Money, Payload, Timestamp, encode_proto};
use pitboss_processor::sqlite::{self, SqliteSink};
use pitboss_processor::{Batch, BatchConfig, EventRow, ProcessorConfig, ProcessorError, Sink, run};

const MINUTE_MS: i64 = 60_000;
/// 2026-11-28T12:00:00Z.
const NOON_MS: i64 = 1_795_867_200_000;

/// Event `i`: even ones are bets, odd ones settle the previous bet; spread over 3 minutes,
/// 2 games, 2 currencies, 7 players, 2 tenants.
fn event(i: u64) -> Event {
    let tenant = if i.is_multiple_of(5) { "beta" } else { "acme" };
    let at = Timestamp::from_millis(NOON_MS + (i % 3) as i64 * MINUTE_MS + (i % 1000) as i64);
    let game = format!("g{}", i % 2);
    let currency = if i % 4 < 2 { "EUR" } else { "USD" };
    let payload = if i.is_multiple_of(2) {
        Payload::BetPlaced(BetPlaced {
            bet_id: format!("b{i}"),
            game_id: game,
            round_id: None,
            stake: Money::new(100 + i as i64, currency),
            odds: None,
            bet_type: None,
            channel: None,
            device_id: None,
            autoplay: false,
        })
    } else {
        Payload::BetSettled(BetSettled {
            bet_id: format!("b{}", i - 1),
            game_id: game,
            round_id: None,
            result: pitboss_model::SettlementResult::Win,
            payout: Money::new(50 + i as i64, currency),
            stake: None,
        })
    };
    Event {
        event_id: Some(format!("0193735a-0000-7000-8000-{i:012x}")),
        tenant_id: tenant.into(),
        player_id: format!("p{}", i % 7),
        session_id: None,
        occurred_at: at,
        received_at: Some(Timestamp::now()),
        schema_version: 1,
        late: false,
        utc_offset_min: None,
        payload,
    }
}

fn record(i: u64) -> OutRecord {
    let e = event(i);
    OutRecord::new(format!("{}:{}", e.tenant_id, e.player_id), encode_proto(&e))
}

fn config() -> ProcessorConfig {
    ProcessorConfig {
        batch: BatchConfig {
            max_rows: 97,
            max_age: Duration::from_millis(30),
            ..BatchConfig::default()
        },
        retry_initial: Duration::from_millis(5),
        retry_max: Duration::from_millis(20),
        ..ProcessorConfig::default()
    }
}

async fn bus(dir: &std::path::Path) -> Arc<EmbeddedBus> {
    let bus = EmbeddedBus::open(dir.join("log"), EmbeddedConfig::default()).unwrap();
    bus.create_topic("events", 3).await.unwrap();
    bus.create_topic("events_dead_letter", 1).await.unwrap();
    Arc::new(bus)
}

fn count(db: &std::path::Path, sql: &str) -> u64 {
    let answer = sqlite::query(db, sql, 10).unwrap();
    answer.rows[0][0].as_u64().unwrap()
}

/// Runs a processor until the store holds `n` rows (or 20 s), then stops it cleanly.
async fn run_until(bus: Arc<EmbeddedBus>, db: &std::path::Path, n: u64) {
    run_until_count(bus, db, "SELECT count(*) FROM events", n).await;
}

/// Runs a processor until `sql` counts `n` (or 20 s), then stops it cleanly.
async fn run_until_count(bus: Arc<EmbeddedBus>, db: &std::path::Path, sql: &str, n: u64) {
    let sink = Arc::new(SqliteSink::open(db).unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run::<EventRow>(bus, sink, config(), async {
        let _ = stopped.await;
    }));
    let start = std::time::Instant::now();
    while count(db, sql) < n && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

/// Stores through `inner`, and after `inserts_left` inserts never answers again.
#[derive(Debug)]
struct HangAfter {
    inner: SqliteSink,
    inserts_left: AtomicUsize,
}

#[async_trait::async_trait]
impl Sink<EventRow> for HangAfter {
    async fn high_water(
        &self,
        topic: &str,
        partition: u32,
        since_ms: Option<i64>,
    ) -> Result<Option<u64>, ProcessorError> {
        Sink::<EventRow>::high_water(&self.inner, topic, partition, since_ms).await
    }

    async fn insert(&self, batch: &Arc<Batch<EventRow>>) -> Result<(), ProcessorError> {
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

/// The rollups in the store are exactly those of `events`, each counted once.
fn assert_rollups_are_those_of(db: &std::path::Path, events: std::ops::Range<u64>) {
    let mut bets: BTreeMap<(String, i64, String, String), [i64; 5]> = BTreeMap::new();
    let mut players: BTreeMap<(String, i64), BTreeSet<String>> = BTreeMap::new();
    for i in events {
        let e = event(i);
        let minute = e.occurred_at.as_millis() / MINUTE_MS * 60;
        players
            .entry((e.tenant_id.clone(), minute))
            .or_default()
            .insert(e.player_id.clone());
        match &e.payload {
            Payload::BetPlaced(b) => {
                let s = bets
                    .entry((
                        e.tenant_id.clone(),
                        minute,
                        b.game_id.clone(),
                        b.stake.currency.to_string(),
                    ))
                    .or_default();
                s[0] += 1;
                s[2] += b.stake.amount_minor;
                s[4] += b.stake.amount_minor;
            }
            Payload::BetSettled(b) => {
                let s = bets
                    .entry((
                        e.tenant_id.clone(),
                        minute,
                        b.game_id.clone(),
                        b.payout.currency.to_string(),
                    ))
                    .or_default();
                s[1] += 1;
                s[3] += b.payout.amount_minor;
                s[4] -= b.payout.amount_minor;
            }
            _ => unreachable!(),
        }
    }
    let answer = sqlite::query(
        db,
        "SELECT tenant_id, minute, game_id, currency, bets, settlements, stakes_minor,
                payouts_minor, ggr_minor
         FROM bets_per_minute ORDER BY tenant_id, minute, game_id, currency",
        1000,
    )
    .unwrap();
    let stored: BTreeMap<(String, i64, String, String), [i64; 5]> = answer
        .rows
        .iter()
        .map(|r| {
            let v = |i: usize| r[i].as_str().unwrap().to_owned();
            let int = |i: usize| r[i].as_i64().unwrap();
            (
                (v(0), int(1), v(2), v(3)),
                [int(4), int(5), int(6), int(7), int(8)],
            )
        })
        .collect();
    assert_eq!(stored, bets);
    let answer = sqlite::query(
        db,
        "SELECT tenant_id, minute, players FROM players_per_minute ORDER BY tenant_id, minute",
        1000,
    )
    .unwrap();
    let stored: BTreeMap<(String, i64), u64> = answer
        .rows
        .iter()
        .map(|r| {
            (
                (r[0].as_str().unwrap().to_owned(), r[1].as_i64().unwrap()),
                r[2].as_u64().unwrap(),
            )
        })
        .collect();
    let expected: BTreeMap<(String, i64), u64> = players
        .into_iter()
        .map(|(k, set)| (k, set.len() as u64))
        .collect();
    assert_eq!(stored, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_and_rollups_land_exactly_once_across_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pitboss.db");
    let bus = bus(dir.path()).await;
    let n = 3000u64;
    bus.publisher()
        .publish("events", (0..n / 2).map(record).collect())
        .await
        .unwrap();

    // A member whose fifth batch is stored but never reported (the process dies between the
    // commit in SQLite and the offset commit on the bus): the next member is handed those
    // records again and must not store them twice.
    {
        let sink = Arc::new(HangAfter {
            inner: SqliteSink::open(&db).unwrap(),
            inserts_left: AtomicUsize::new(5),
        });
        let (_never, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run(bus.clone(), sink.clone(), config(), async {
            let _ = stopped.await;
        }));
        let start = std::time::Instant::now();
        while sink.inserts_left.load(Ordering::SeqCst) > 0 {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "5 inserts within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        task.abort();
        let _ = task.await;
    }
    assert!(count(&db, "SELECT count(*) FROM events") >= 5 * 97 - 97);

    bus.publisher()
        .publish("events", (n / 2..n).map(record).collect())
        .await
        .unwrap();
    run_until(bus.clone(), &db, n).await;

    assert_eq!(count(&db, "SELECT count(*) FROM events"), n);
    assert_eq!(count(&db, "SELECT count(DISTINCT event_id) FROM events"), n);

    assert_rollups_are_those_of(&db, 0..n);

    // Positions: each partition's high-water mark is the offset of its last row.
    let positions = count(&db, "SELECT sum(high_water + 1) FROM bus_positions");
    assert_eq!(positions, n, "offsets 0..k per partition sum to n records");
}

/// A client's retry of an event id that the ingest edge did not recognise (after a restart
/// of any part) reaches the log again: the store keeps the first row and counts the event
/// once in every rollup — across a processor restart, and twice within one batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_id_retried_after_a_restart_is_stored_and_rolled_up_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pitboss.db");
    let bus = bus(dir.path()).await;
    let n = 1000u64;
    bus.publisher()
        .publish("events", (0..n).map(record).collect())
        .await
        .unwrap();
    run_until(bus.clone(), &db, n).await;
    let mut retries: Vec<OutRecord> = (0..n).map(record).collect();
    retries.extend((n / 2..n).flat_map(|i| [record(i), record(i)]));
    retries.push(record(n));
    bus.publisher().publish("events", retries).await.unwrap();
    // Until every record of the log is stored or dropped.
    let records = n + n + n + 1;
    let positions = "SELECT coalesce(sum(high_water + 1), 0) FROM bus_positions";
    run_until_count(bus.clone(), &db, positions, records).await;
    assert_eq!(count(&db, positions), records);

    assert_eq!(count(&db, "SELECT count(*) FROM events"), n + 1);
    assert_eq!(
        count(&db, "SELECT count(DISTINCT event_id) FROM events"),
        n + 1
    );
    assert_rollups_are_those_of(&db, 0..n + 1);
}

/// A store written before version 5 may hold an event twice (a retry after a restart):
/// migrating keeps its first row and rebuilds the bets rollup from what is left.
/// `pitboss up` on a log made anew beside the store of the old one (its directory removed, the
/// store kept), the new log already past the old marks: each partition's mark keeps the id of
/// the record at it, so the record now at that offset shows another event, and the processor
/// stops saying so rather than skip the new log's records up to the marks as stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_made_anew_past_the_stores_marks_stops_the_processor_rather_than_being_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pitboss.db");
    let old = bus(dir.path()).await;
    old.publisher()
        .publish("events", (0..300).map(record).collect())
        .await
        .unwrap();
    run_until(old.clone(), &db, 300).await;
    drop(old);
    std::fs::remove_dir_all(dir.path().join("log")).unwrap();

    let new = bus(dir.path()).await;
    new.publisher()
        .publish("events", (1_000..1_900).map(record).collect())
        .await
        .unwrap();
    let sink = Arc::new(SqliteSink::open(&db).unwrap());
    let stopped = tokio::time::timeout(
        Duration::from_secs(20),
        run::<EventRow>(new, sink, config(), std::future::pending()),
    )
    .await
    .expect("the processor stops on its own");
    let Err(ProcessorError::Config(why)) = stopped else {
        panic!("{stopped:?}");
    };
    assert!(
        why.contains("but the record at that offset on the bus is another one (events "),
        "{why}"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM events"),
        300,
        "nothing new stored"
    );
}

#[tokio::test]
async fn migrating_to_one_event_per_id_drops_stored_copies_and_rebuilds_the_rollups() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pitboss.db");
    let bus = bus(dir.path()).await;
    let n = 300u64;
    bus.publisher()
        .publish("events", (0..n).map(record).collect())
        .await
        .unwrap();
    run_until(bus.clone(), &db, n).await;
    // Back to version 4's shape: no unique index, every bet stored and rolled up twice.
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(
            "DROP INDEX events_by_id;
             DELETE FROM pitboss_migrations WHERE version = 5;
             INSERT INTO events SELECT * FROM events WHERE type = 'bet_placed';
             UPDATE bets_per_minute SET bets = 2 * bets, stakes_minor = 2 * stakes_minor,
                 ggr_minor = 2 * stakes_minor - payouts_minor;",
        )
        .unwrap();
    }
    assert_eq!(count(&db, "SELECT count(*) FROM events"), n + n / 2);
    let (_, ran) = sqlite::open(&db).unwrap();
    assert_eq!(ran, vec![5]);
    assert_eq!(count(&db, "SELECT count(*) FROM events"), n);
    assert_eq!(count(&db, "SELECT count(DISTINCT event_id) FROM events"), n);
    assert_rollups_are_those_of(&db, 0..n);
}

/// Events keep the `utc_offset_min` they were sent with (version 6) and the backtest's reader
/// gives it back; a store from before version 6 migrates with its rows at NULL.
#[tokio::test]
async fn events_keep_their_utc_offset_and_a_store_from_before_reads_none() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pitboss.db");
    let bus = bus(dir.path()).await;
    let offset = |i: u64| (!i.is_multiple_of(3)).then_some(i as i32 * 15 - 600);
    let records: Vec<OutRecord> = (0..30)
        .map(|i| {
            let mut e = event(i);
            e.utc_offset_min = offset(i);
            OutRecord::new(format!("{}:{}", e.tenant_id, e.player_id), encode_proto(&e))
        })
        .collect();
    bus.publisher().publish("events", records).await.unwrap();
    run_until(bus.clone(), &db, 30).await;
    let read = |db: &std::path::Path| {
        let mut got = std::collections::BTreeMap::new();
        sqlite::scan_events(db, 0, i64::MAX, None, |e| {
            let e = e.unwrap();
            got.insert(e.event_id.unwrap(), e.utc_offset_min);
        })
        .unwrap();
        got
    };
    let want: std::collections::BTreeMap<String, Option<i32>> = (0..30)
        .map(|i| (event(i).event_id.unwrap(), offset(i)))
        .collect();
    assert_eq!(read(&db), want);
    // Back to version 5's shape: the column gone, the migration not recorded.
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(
            "ALTER TABLE events DROP COLUMN utc_offset_min;
             DELETE FROM pitboss_migrations WHERE version = 6;",
        )
        .unwrap();
    }
    // Read before anything migrates it (a backtest opens the store read-only): none.
    assert!(read(&db).values().all(Option::is_none));
    assert_eq!(read(&db).len(), 30);
    let (_, ran) = sqlite::open(&db).unwrap();
    assert_eq!(ran, vec![6]);
    assert!(read(&db).values().all(Option::is_none));
    assert_eq!(count(&db, "SELECT count(*) FROM events"), 30);
}

#[test]
fn migrations_are_recorded_once_when_two_processes_open_the_store_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pitboss.db");
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let db = db.clone();
            std::thread::spawn(move || sqlite::open(&db).map(|(_, ran)| ran))
        })
        .collect();
    let ran: Vec<Vec<u32>> = handles
        .into_iter()
        .map(|h| h.join().unwrap().unwrap())
        .collect();
    let all: Vec<u32> = sqlite::MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(ran.iter().filter(|r| **r == all).count(), 1, "{ran:?}");
    assert!(ran.iter().all(|r| r.is_empty() || *r == all), "{ran:?}");
    assert_eq!(
        count(&db, "SELECT count(*) FROM pitboss_migrations"),
        all.len() as u64
    );
}

#[test]
fn queries_are_read_only_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pitboss.db");
    sqlite::open(&db).unwrap();
    let err = sqlite::query(&db, "DELETE FROM events", 10).unwrap_err();
    assert!(err.to_string().contains("readonly"), "{err}");
    // Nothing written elsewhere either: no copy of the store, no temporary table, no setting.
    let copy = dir.path().join("copy.db");
    for sql in [
        format!("VACUUM INTO '{}'", copy.display()),
        "CREATE TEMP TABLE t (x)".into(),
        "PRAGMA user_version = 7".into(),
    ] {
        let err = sqlite::query(&db, &sql, 10).unwrap_err();
        assert!(err.to_string().contains("readonly"), "{sql}: {err}");
    }
    assert!(!copy.exists(), "VACUUM INTO wrote a copy of the store");
    let ok = sqlite::query(&db, "PRAGMA user_version", 10).unwrap();
    assert_eq!(ok.columns, ["user_version"]);
    let err = sqlite::query(&db, "SELECT * FROM no_such_table", 10).unwrap_err();
    assert!(err.to_string().contains("no such table"), "{err}");
    let err = sqlite::query(
        &db,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50) SELECT i FROM n",
        10,
    )
    .unwrap_err();
    assert!(err.to_string().contains("more than 10 rows"), "{err}");
    let ok = sqlite::query(&db, "SELECT 1 AS one, NULL AS missing, 'x' AS s", 10).unwrap();
    assert_eq!(ok.columns, ["one", "missing", "s"]);
    assert_eq!(
        ok.rows,
        [[serde_json::json!(1), serde_json::Value::Null, "x".into()]]
    );
}

/// The store's commits are on disk when they return (`synchronous=FULL`, 2): the bus offsets
/// committed right after a batch's rows cannot outlive the rows in an OS crash or power cut.
#[test]
fn the_store_syncs_every_commit() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pitboss.db");
    let (conn, _) = sqlite::open(&db).unwrap();
    let sync: i64 = conn
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sync, 2, "synchronous is not FULL");
}
