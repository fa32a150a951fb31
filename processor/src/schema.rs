//! The ClickHouse schema as versioned migrations, for ClickHouse 18.16 and current releases
//! alike (DESIGN.md, "ClickHouse": no DateTime64, Map, LowCardinality, TTL or CODEC; times as
//! `DateTime` plus epoch milliseconds as `UInt64`).
//!
//! Every statement is idempotent (`IF NOT EXISTS`), so two processors starting at once may both
//! run a migration: the second run changes nothing. Applied versions are recorded in
//! `pitboss_migrations`; a version already recorded is skipped.
//!
//! Tables:
//! - `events`: the envelope plus typed payload columns, and the bus position of each row
//!   (`bus_topic`, `bus_partition`, `bus_offset`) — the processor's high-water mark lives with
//!   the data, so a replay after a crash is recognised without a second store. Partitioned by
//!   the month of `received_at` (stamped at ingest, so one batch falls in one partition and is
//!   written as one part: an insert is all or nothing). ORDER BY (tenant, time, player) for
//!   the dashboards.
//! - `alerts`, `pushes`: what antifraud raised and what the edge delivered.
//! - `bets_per_minute` (SummingMergeTree), fed by a materialized view on `events`: bets,
//!   stakes, payouts and GGR by tenant, game and currency per minute; `players_per_minute`
//!   (AggregatingMergeTree with `uniqState`) for active players.

use clickhouse::Client;

use crate::ProcessorError;

/// One schema version: statements run in order.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub statements: &'static [&'static str],
}

/// Every migration, oldest first. Never edit a released one: add a new version.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "events",
        statements: &[r"CREATE TABLE IF NOT EXISTS events (
    tenant_id String,
    event_id String,
    player_id String,
    session_id String,
    type String,
    occurred_at DateTime,
    occurred_at_ms UInt64,
    received_at DateTime,
    received_at_ms UInt64,
    schema_version UInt32,
    late UInt8,
    game_id String,
    bet_id String,
    round_id String,
    transaction_id String,
    result String,
    status String,
    method String,
    channel String,
    device_id String,
    ip String,
    country String,
    success UInt8,
    amount_minor Int64,
    payout_minor Int64,
    currency String,
    payload String,
    bus_topic String,
    bus_partition UInt32,
    bus_offset UInt64
) ENGINE = MergeTree
PARTITION BY toYYYYMM(received_at)
ORDER BY (tenant_id, occurred_at, player_id, event_id)"],
    },
    Migration {
        version: 2,
        name: "alerts and pushes",
        statements: &[
            r"CREATE TABLE IF NOT EXISTS alerts (
    tenant_id String,
    alert_id String,
    rule String,
    severity String,
    player_id String,
    event_id String,
    raised_at DateTime,
    raised_at_ms UInt64,
    details String
) ENGINE = MergeTree
PARTITION BY toYYYYMM(raised_at)
ORDER BY (tenant_id, raised_at, rule, player_id)",
            r"CREATE TABLE IF NOT EXISTS pushes (
    tenant_id String,
    push_id String,
    player_id String,
    kind String,
    created_at DateTime,
    created_at_ms UInt64,
    delivered_at_ms UInt64,
    outcome String
) ENGINE = MergeTree
PARTITION BY toYYYYMM(created_at)
ORDER BY (tenant_id, created_at, player_id)",
        ],
    },
    Migration {
        version: 3,
        name: "per-minute rollups",
        statements: &[
            r"CREATE TABLE IF NOT EXISTS bets_per_minute (
    tenant_id String,
    minute DateTime,
    game_id String,
    currency String,
    bets UInt64,
    settlements UInt64,
    stakes_minor Int64,
    payouts_minor Int64,
    ggr_minor Int64
) ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (tenant_id, minute, game_id, currency)",
            r"CREATE MATERIALIZED VIEW IF NOT EXISTS bets_per_minute_mv TO bets_per_minute AS
SELECT
    tenant_id,
    toStartOfMinute(occurred_at) AS minute,
    game_id,
    currency,
    toUInt64(sum(type = 'bet_placed')) AS bets,
    toUInt64(sum(type = 'bet_settled')) AS settlements,
    sum(if(type = 'bet_placed', amount_minor, 0)) AS stakes_minor,
    sum(if(type = 'bet_settled', payout_minor, 0)) AS payouts_minor,
    sum(if(type = 'bet_placed', amount_minor, 0)) - sum(if(type = 'bet_settled', payout_minor, 0)) AS ggr_minor
FROM events
WHERE type IN ('bet_placed', 'bet_settled')
GROUP BY tenant_id, minute, game_id, currency",
            r"CREATE TABLE IF NOT EXISTS players_per_minute (
    tenant_id String,
    minute DateTime,
    players AggregateFunction(uniq, String)
) ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (tenant_id, minute)",
            r"CREATE MATERIALIZED VIEW IF NOT EXISTS players_per_minute_mv TO players_per_minute AS
SELECT tenant_id, toStartOfMinute(occurred_at) AS minute, uniqState(player_id) AS players
FROM events
GROUP BY tenant_id, minute",
        ],
    },
];

const LEDGER: &str = r"CREATE TABLE IF NOT EXISTS pitboss_migrations (
    version UInt32,
    name String,
    applied_at DateTime
) ENGINE = MergeTree
ORDER BY version";

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct Applied {
    version: u32,
}

/// Versions recorded as applied.
pub async fn applied(client: &Client) -> Result<Vec<u32>, ProcessorError> {
    client.query(LEDGER).execute().await?;
    let rows: Vec<Applied> = client
        .query("SELECT DISTINCT version FROM pitboss_migrations ORDER BY version")
        .fetch_all()
        .await?;
    Ok(rows.into_iter().map(|a| a.version).collect())
}

/// Brings the schema up to date; returns the versions this call applied.
pub async fn migrate(client: &Client) -> Result<Vec<u32>, ProcessorError> {
    let done = applied(client).await?;
    let mut ran = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
        for statement in m.statements {
            client.query(statement).execute().await.map_err(|e| {
                ProcessorError::Migration(format!("version {} ({}): {e}", m.version, m.name))
            })?;
        }
        client
            .query(
                "INSERT INTO pitboss_migrations (version, name, applied_at) VALUES (?, ?, now())",
            )
            .bind(m.version)
            .bind(m.name)
            .execute()
            .await?;
        tracing::info!(version = m.version, name = m.name, "migration applied");
        ran.push(m.version);
    }
    Ok(ran)
}
