//! The live path into real ClickHouse 18.16 (services from scripts/stack.sh): alerts, pushes,
//! deliveries and alert acks published to Kafka as the rules engine and the gateway publish
//! them, stored by the processor through a member that dies between an insert and its commit —
//! each exactly once, without FINAL; a copy of a message (a second rules engine) is a second
//! row until `FINAL` (or a merge) keeps one, and `alerts_per_minute` counts it once. A database
//! migrated to version 4 gets the new tables in place of version 2's.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clickhouse::Client;
use pitboss_bus::Bus;
use pitboss_bus::kafka::{KafkaBus, KafkaConfig};
use pitboss_model::live::LiveMessage;
use pitboss_processor::schema::{self, Layout};
use pitboss_processor::{
    AckRow, AlertRow, Batch, ClickHouseSink, DeliveryRow, ProcessorError, PushRow, Sink, StoredRow,
    run, sink,
};
use pitboss_testkit::live;

use crate::common;

async fn database() -> Client {
    let url = pitboss_testkit::clickhouse();
    let db = pitboss_testkit::unique_name("live");
    sink::client(&url, "default")
        .query(&format!("CREATE DATABASE {db}"))
        .execute()
        .await
        .unwrap();
    sink::client(&url, &db)
}

async fn scalar(client: &Client, sql: &str) -> u64 {
    client.query(sql).fetch_one::<u64>().await.unwrap()
}

/// Stores through ClickHouse; its `hang_at`-th insert lands and never answers (the member dies
/// before committing it).
#[derive(Debug)]
struct DiesAfterInsert {
    inner: ClickHouseSink,
    inserts: AtomicUsize,
    hang_at: usize,
}

#[async_trait::async_trait]
impl<R: StoredRow> Sink<R> for DiesAfterInsert {
    async fn high_water(
        &self,
        topic: &str,
        partition: u32,
        since_ms: Option<i64>,
    ) -> Result<Option<u64>, ProcessorError> {
        Sink::<R>::high_water(&self.inner, topic, partition, since_ms).await
    }

    async fn insert(&self, batch: &Arc<Batch<R>>) -> Result<(), ProcessorError> {
        self.inner.insert(batch).await?;
        if self.inserts.fetch_add(1, Ordering::SeqCst) + 1 >= self.hang_at {
            return std::future::pending().await;
        }
        Ok(())
    }
}

/// The SQL of a table's id (what it keeps one row per, within the tenant).
fn id_sql(table: &str) -> &'static str {
    match table {
        "alerts" => "alert_id",
        "pushes" => "push_id",
        "deliveries" => "concat(message_id, '/', connection_id)",
        "alert_acks" => "ack_id",
        other => panic!("no table {other}"),
    }
}

/// `N` messages of `M` on a new Kafka topic (4 partitions); a member whose third insert lands
/// and never answers; the next member stores the rest. Each message once, without FINAL; then a
/// copy of message 5, stamped later: two rows, one with FINAL, the copy's.
async fn exactly_once<R: StoredRow, M: LiveMessage>(message: fn(u64) -> M) {
    const N: u64 = 3_000;
    let client = database().await;
    schema::migrate(&client, &Layout::Single).await.unwrap();
    let bus = Arc::new(KafkaBus::new(KafkaConfig::new(pitboss_testkit::kafka())).unwrap());
    let topic = common::published_topic(&bus, N, |i| common::live_record(&message(i))).await;
    let config = common::config(&topic, 400);
    let table = R::TABLE;
    let id = id_sql(table);
    let rows = format!("SELECT count() FROM {table}");

    let dying = Arc::new(DiesAfterInsert {
        inner: ClickHouseSink::new(client.clone()),
        inserts: AtomicUsize::new(0),
        hang_at: 3,
    });
    let first = tokio::spawn(run::<R>(
        bus.clone(),
        dying.clone(),
        config.clone(),
        std::future::pending(),
    ));
    let start = std::time::Instant::now();
    while dying.inserts.load(Ordering::SeqCst) < 3 {
        assert!(start.elapsed() < Duration::from_secs(60), "3 inserts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.abort();
    let _ = first.await;
    let landed = scalar(&client, &rows).await;
    assert!(landed > 0 && landed < N, "{landed}");

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let sink = Arc::new(ClickHouseSink::new(client.clone()));
    let second = tokio::spawn(run::<R>(bus.clone(), sink, config, async {
        let _ = stopped.await;
    }));
    let wait_for = |n: u64| {
        let (client, rows) = (client.clone(), rows.clone());
        async move {
            let start = std::time::Instant::now();
            while scalar(&client, &rows).await < n {
                assert!(start.elapsed() < Duration::from_secs(120), "{rows} < {n}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    wait_for(N).await;
    tokio::time::sleep(Duration::from_secs(1)).await; // anything extra would show up now
    let ids = format!("SELECT uniqExact({id}) FROM {table}");
    assert_eq!(
        (scalar(&client, &rows).await, scalar(&client, &ids).await),
        (N, N),
        "{table}: exactly once, without FINAL"
    );

    // A copy: a second rules engine (or a replay) publishing message 5 again, later.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let copy = message(5);
    bus.publisher()
        .publish(&topic, vec![common::live_record(&copy)])
        .await
        .unwrap();
    wait_for(N + 1).await;
    stop.send(()).unwrap();
    let stats = second.await.unwrap().unwrap();
    assert!(stats.skipped_replays > 0, "{stats:?}");
    assert_eq!(scalar(&client, &ids).await, N, "{table}: one id more");
    assert_eq!(
        scalar(&client, &format!("SELECT count() FROM {table} FINAL")).await,
        N,
        "{table}: FINAL keeps one row per id"
    );
    let copy = R::decode(&topic, &as_record(&copy)).unwrap();
    let stamp = format!("{}_ms", R::STAMP_COLUMN);
    let kept = scalar(
        &client,
        &format!(
            "SELECT {stamp} FROM {table} FINAL WHERE {id} = '{}'",
            copy.id()
        ),
    )
    .await;
    assert_eq!(
        kept,
        copy.stamped_at_ms(),
        "{table}: the latest copy is kept"
    );
    client
        .query(&format!("OPTIMIZE TABLE {table} FINAL"))
        .execute()
        .await
        .unwrap();
    assert_eq!(
        scalar(&client, &rows).await,
        N,
        "{table}: merged to one row"
    );
    if table == "alerts" {
        assert_eq!(
            scalar(
                &client,
                "SELECT uniqExactMerge(alerts) FROM alerts_per_minute"
            )
            .await,
            N,
            "each alert counted once, its copy too"
        );
    }
}

/// `m` as a record read from the bus (to decode it in the test).
fn as_record<M: LiveMessage>(m: &M) -> pitboss_bus::Record {
    let r = common::live_record(m);
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

#[tokio::test]
async fn alerts_land_exactly_once_through_a_crash() {
    exactly_once::<AlertRow, _>(live::alert).await;
}

#[tokio::test]
async fn pushes_land_exactly_once_through_a_crash() {
    exactly_once::<PushRow, _>(live::push).await;
}

#[tokio::test]
async fn deliveries_land_exactly_once_through_a_crash() {
    exactly_once::<DeliveryRow, _>(live::delivery).await;
}

#[tokio::test]
async fn alert_acks_land_exactly_once_through_a_crash() {
    exactly_once::<AckRow, _>(live::ack).await;
}

/// The columns of `table`.
async fn columns(client: &Client, table: &str) -> Vec<String> {
    client
        .query(
            // In table order (18.16 has no `position` to sort by).
            "SELECT name FROM system.columns WHERE database = currentDatabase() AND table = ?",
        )
        .bind(table)
        .fetch_all::<String>()
        .await
        .unwrap()
}

/// A database where versions 1-4 ran (with version 2's `alerts` and `pushes`): two `migrate`
/// at once apply version 5 — the old tables replaced, the new ones there once — and a third
/// finds nothing to do.
#[tokio::test]
async fn a_database_at_version_4_gets_the_live_tables_in_place_of_version_2s() {
    let client = database().await;
    common::migrated_through(&client, &Layout::Single, 4).await;
    assert!(
        columns(&client, "alerts")
            .await
            .contains(&"raised_at".into())
    );
    let (a, b) = tokio::join!(
        schema::migrate(&client, &Layout::Single),
        schema::migrate(&client, &Layout::Single)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a == [5, 6, 7] || b == [5, 6, 7], "{a:?} {b:?}");
    use clickhouse::Row;
    for (table, expected) in [
        ("alerts", AlertRow::COLUMN_NAMES),
        ("pushes", PushRow::COLUMN_NAMES),
        ("deliveries", DeliveryRow::COLUMN_NAMES),
        ("alert_acks", AckRow::COLUMN_NAMES),
    ] {
        assert_eq!(columns(&client, table).await, expected, "{table}");
    }
    let engine: String = client
        .query("SELECT engine FROM system.tables WHERE database = currentDatabase() AND name = 'alerts'")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(engine, "ReplacingMergeTree");
    assert!(
        schema::migrate(&client, &Layout::Single)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A database at version 5 holding events gets `utc_offset_min` (version 6): the rows it held
/// read NULL, a row written after keeps its offset, and the backtest's reader gives it back
/// on the event.
#[tokio::test]
async fn a_database_at_version_5_keeps_utc_offsets_from_version_6_on() {
    let client = database().await;
    common::migrated_through(&client, &Layout::Single, 5).await;
    let now_ms = pitboss_model::Timestamp::now().as_millis() as u64;
    client
        .query(&format!(
            "INSERT INTO events (tenant_id, event_id, player_id, type, occurred_at, occurred_at_ms, \
             received_at, received_at_ms, schema_version, payload) VALUES ('acme', \
             '0193735a-0000-7000-8000-000000000001', 'p1', 'login', toDateTime({s}), {now_ms}, \
             toDateTime({s}), {now_ms}, 1, '{{\"ip\":\"10.0.0.1\",\"success\":true}}')",
            s = now_ms / 1000
        ))
        .execute()
        .await
        .unwrap();
    assert!(
        !columns(&client, "events")
            .await
            .contains(&"utc_offset_min".into())
    );
    // The backtest's reader on a database not migrated yet: the event, without an offset.
    let read = sink::stored_event_columns(&client).await.unwrap();
    let before = sink::events_page(&client, &read, 0, u64::MAX, Some("acme"), None, 10)
        .await
        .unwrap();
    assert_eq!(before.len(), 1);
    assert_eq!(before[0].to_event().unwrap().utc_offset_min, None);
    assert_eq!(
        schema::migrate(&client, &Layout::Single).await.unwrap(),
        [6, 7]
    );
    use clickhouse::Row;
    assert_eq!(
        columns(&client, "events").await,
        pitboss_processor::EventRow::COLUMN_NAMES
    );
    // Version 7 gave every table of the bus its `bus_sequence`, at the end.
    for (table, expected) in [
        ("alerts", AlertRow::COLUMN_NAMES),
        ("pushes", PushRow::COLUMN_NAMES),
        ("deliveries", DeliveryRow::COLUMN_NAMES),
        ("alert_acks", AckRow::COLUMN_NAMES),
    ] {
        let got = columns(&client, table).await;
        assert_eq!(got, expected, "{table}");
        assert_eq!(got.last().map(String::as_str), Some("bus_sequence"));
    }
    // Written as the processor writes: an event sent with its offset.
    let at = pitboss_model::Timestamp::from_millis(now_ms as i64 + 1);
    let mut event = pitboss_model::decode_event(
        format!(
            r#"{{"event_id":"0193735a-0000-7000-8000-000000000002","tenant_id":"acme","player_id":"p1",
                "type":"login","occurred_at":"{}","utc_offset_min":-300,"payload":{{"ip":"10.0.0.1"}}}}"#,
            at.to_rfc3339().unwrap()
        )
        .as_bytes(),
    )
    .unwrap();
    event.received_at = Some(at);
    let row = pitboss_processor::rows::from_event(event, "events", 0, 1).unwrap();
    assert_eq!(row.utc_offset_min, Some(-300));
    let mut insert = client
        .insert::<pitboss_processor::EventRow>("events")
        .await
        .unwrap();
    insert.write(&row).await.unwrap();
    insert.end().await.unwrap();
    let read = sink::stored_event_columns(&client).await.unwrap();
    let stored = sink::events_page(&client, &read, 0, u64::MAX, Some("acme"), None, 10)
        .await
        .unwrap();
    let offsets: Vec<Option<i32>> = stored
        .iter()
        .map(|s| s.to_event().unwrap().utc_offset_min)
        .collect();
    assert_eq!(offsets, [None, Some(-300)]);
    assert!(
        schema::migrate(&client, &Layout::Single)
            .await
            .unwrap()
            .is_empty()
    );
}
