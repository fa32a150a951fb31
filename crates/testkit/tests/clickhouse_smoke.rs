//! ClickHouse smoke test against the real server started by scripts/stack.sh: create a table
//! with the schema features Pitboss relies on, insert 100k rows with the `clickhouse` crate
//! (RowBinary, validation off as 18.16 requires), and read every row back.

#![allow(clippy::unwrap_used)]

use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
struct EventRow {
    event_id: String,
    tenant_id: String,
    player_id: String,
    event_type: String,
    amount_minor: i64,
    currency: String,
    occurred_at: u32,
    occurred_at_ms: u64,
}

#[derive(Debug, Row, Deserialize)]
struct Totals {
    rows: u64,
    ids: u64,
    amount: i64,
}

fn row(i: u64) -> EventRow {
    EventRow {
        event_id: format!("0193735a-0000-7000-8000-{i:012x}"),
        tenant_id: format!("tenant-{}", i % 3),
        player_id: format!("player-{}", i % 1000),
        event_type: if i.is_multiple_of(2) {
            "bet_placed"
        } else {
            "bet_settled"
        }
        .into(),
        amount_minor: (i % 10_000) as i64,
        currency: "EUR".into(),
        occurred_at: 1_795_860_000 + (i / 100) as u32,
        occurred_at_ms: 1_795_860_000_000 + i,
    }
}

#[tokio::test]
async fn insert_100k_rows_and_read_them_back() {
    let client = Client::default()
        .with_url(pitboss_testkit::clickhouse())
        .with_validation(false);
    let table = pitboss_testkit::unique_name("smoke");
    client
        .query(&format!(
            "CREATE TABLE {table} (
                event_id String, tenant_id String, player_id String, event_type String,
                amount_minor Int64, currency String,
                occurred_at DateTime, occurred_at_ms UInt64
            ) ENGINE = MergeTree
            PARTITION BY toYYYYMM(occurred_at)
            ORDER BY (tenant_id, occurred_at, player_id)"
        ))
        .execute()
        .await
        .unwrap();

    const N: u64 = 100_000;
    let mut insert = client.insert::<EventRow>(&table).await.unwrap();
    for i in 0..N {
        insert.write(&row(i)).await.unwrap();
    }
    insert.end().await.unwrap();

    let totals: Totals = client
        .query(&format!("SELECT count() AS rows, uniqExact(event_id) AS ids, sum(amount_minor) AS amount FROM {table}"))
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(totals.rows, N);
    assert_eq!(totals.ids, N);
    assert_eq!(
        totals.amount,
        (0..N).map(|i| (i % 10_000) as i64).sum::<i64>()
    );

    let mut back: Vec<EventRow> = client
        .query(&format!("SELECT ?fields FROM {table} WHERE tenant_id = ?"))
        .bind("tenant-1")
        .fetch_all()
        .await
        .unwrap();
    back.sort_by_key(|r| r.occurred_at_ms);
    let expected: Vec<EventRow> = (0..N).filter(|i| i % 3 == 1).map(row).collect();
    assert_eq!(back.len(), expected.len());
    assert_eq!(back, expected, "every row reads back exactly as written");

    client
        .query(&format!("DROP TABLE {table}"))
        .execute()
        .await
        .unwrap();
}
