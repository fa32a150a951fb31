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
//!
//! Two layouts render the same migrations ([`Layout`]):
//! - **single**: the tables above on one server;
//! - **cluster** (`ON CLUSTER`, for N shards × M replicas with ZooKeeper): each table becomes
//!   `<name>_local`, a `Replicated*MergeTree` at `/clickhouse/tables/{shard}/<db>/<name>_local`
//!   with replica `{replica}` (the servers' macros), plus `<name>`, a `Distributed` table over
//!   them with the same name and columns, so queries and inserts read as in the single layout.
//!   `events` is sharded by `cityHash64(bus_topic, bus_partition)`: a batch (one bus partition)
//!   lands on one shard as one block, all or nothing, and a replica deduplicates a block it has
//!   seen (the hashes live in ZooKeeper, shared by the shard's replicas). The materialized views
//!   read `events_local` and write `<rollup>_local` on each shard; the migrations ledger is one
//!   replicated table for the whole cluster (`{replica}` must be unique across it).

use clickhouse::Client;

use crate::ProcessorError;

/// Where the schema lives: one server, or a cluster named in the servers' `remote_servers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    Single,
    Cluster { cluster: String, database: String },
}

/// Names that go into DDL unquoted: letters, digits and `_`.
pub fn valid_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

impl Layout {
    /// The cluster layout; cluster and database must be identifiers.
    pub fn cluster(cluster: &str, database: &str) -> Result<Self, ProcessorError> {
        for (what, name) in [("cluster", cluster), ("database", database)] {
            if !valid_identifier(name) {
                return Err(ProcessorError::Config(format!(
                    "{what} name {name:?} must be letters, digits and '_' (not starting with a digit)"
                )));
            }
        }
        Ok(Layout::Cluster {
            cluster: cluster.to_owned(),
            database: database.to_owned(),
        })
    }

    fn on_cluster(&self) -> String {
        match self {
            Layout::Single => String::new(),
            Layout::Cluster { cluster, .. } => format!(" ON CLUSTER {cluster}"),
        }
    }
}

/// Table engines of the schema (replicated in the cluster layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    MergeTree,
    SummingMergeTree,
    AggregatingMergeTree,
    /// Keeps the row with the highest `version` per sorting key (after merges).
    ReplacingMergeTree {
        version: &'static str,
    },
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::MergeTree => "MergeTree",
            Engine::SummingMergeTree => "SummingMergeTree",
            Engine::AggregatingMergeTree => "AggregatingMergeTree",
            Engine::ReplacingMergeTree { .. } => "ReplacingMergeTree",
        }
    }

    /// Engine arguments after the replication ones.
    fn args(self) -> Option<&'static str> {
        match self {
            Engine::ReplacingMergeTree { version } => Some(version),
            _ => None,
        }
    }
}

/// One schema object, rendered per [`Layout`].
#[derive(Debug, Clone, Copy)]
pub enum Statement {
    Table {
        name: &'static str,
        columns: &'static str,
        engine: Engine,
        partition_by: Option<&'static str>,
        order_by: &'static str,
        /// The `Distributed` sharding key in the cluster layout.
        shard_by: &'static str,
    },
    /// A materialized view from `events` into a table; `{events}` in `select` is the source.
    View {
        name: &'static str,
        to: &'static str,
        select: &'static str,
    },
}

impl Statement {
    /// The SQL for `layout`, in order.
    pub fn render(&self, layout: &Layout) -> Vec<String> {
        match (*self, layout) {
            (
                Statement::Table {
                    name,
                    columns,
                    engine,
                    partition_by,
                    order_by,
                    ..
                },
                Layout::Single,
            ) => vec![format!(
                "CREATE TABLE IF NOT EXISTS {name} ({columns}) ENGINE = {}{}{}\nORDER BY {order_by}",
                engine.name(),
                engine.args().map_or(String::new(), |a| format!("({a})")),
                partition_by.map_or(String::new(), |p| format!("\nPARTITION BY {p}")),
            )],
            (
                Statement::Table {
                    name,
                    columns,
                    engine,
                    partition_by,
                    order_by,
                    shard_by,
                },
                Layout::Cluster { cluster, database },
            ) => vec![
                // Names qualified: a server running an `ON CLUSTER` task resolves unqualified
                // ones (such as the `AS` source) in its default database.
                format!(
                    "CREATE TABLE IF NOT EXISTS {database}.{name}_local{on} ({columns}) \
                     ENGINE = Replicated{engine}('/clickhouse/tables/{{shard}}/{database}/{name}_local', '{{replica}}'{args}){partition}\nORDER BY {order_by}",
                    on = layout.on_cluster(),
                    engine = engine.name(),
                    args = engine.args().map_or(String::new(), |a| format!(", {a}")),
                    partition =
                        partition_by.map_or(String::new(), |p| format!("\nPARTITION BY {p}")),
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {database}.{name}{on} AS {database}.{name}_local \
                     ENGINE = Distributed({cluster}, {database}, {name}_local, {shard_by})",
                    on = layout.on_cluster(),
                ),
            ],
            (Statement::View { name, to, select }, Layout::Single) => vec![format!(
                "CREATE MATERIALIZED VIEW IF NOT EXISTS {name} TO {to} AS\n{}",
                select.replace("{events}", "events")
            )],
            (Statement::View { name, to, select }, Layout::Cluster { database, .. }) => {
                vec![format!(
                    "CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.{name}{on} TO {database}.{to}_local AS\n{}",
                    select.replace("{events}", &format!("{database}.events_local")),
                    on = layout.on_cluster(),
                )]
            }
        }
    }
}

/// One schema version: statements run in order.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub statements: &'static [Statement],
}

impl Migration {
    /// Every statement of this version for `layout`.
    pub fn sql(&self, layout: &Layout) -> Vec<String> {
        self.statements
            .iter()
            .flat_map(|s| s.render(layout))
            .collect()
    }
}

/// Every migration, oldest first. Never edit a released one: add a new version.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "events",
        statements: &[Statement::Table {
            name: "events",
            columns: r"
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
",
            engine: Engine::MergeTree,
            partition_by: Some("toYYYYMM(received_at)"),
            order_by: "(tenant_id, occurred_at, player_id, event_id)",
            shard_by: "cityHash64(bus_topic, bus_partition)",
        }],
    },
    Migration {
        version: 2,
        name: "alerts and pushes",
        statements: &[
            Statement::Table {
                name: "alerts",
                columns: r"
    tenant_id String,
    alert_id String,
    rule String,
    severity String,
    player_id String,
    event_id String,
    raised_at DateTime,
    raised_at_ms UInt64,
    details String
",
                engine: Engine::MergeTree,
                partition_by: Some("toYYYYMM(raised_at)"),
                order_by: "(tenant_id, raised_at, rule, player_id)",
                shard_by: "cityHash64(tenant_id, player_id)",
            },
            Statement::Table {
                name: "pushes",
                columns: r"
    tenant_id String,
    push_id String,
    player_id String,
    kind String,
    created_at DateTime,
    created_at_ms UInt64,
    delivered_at_ms UInt64,
    outcome String
",
                engine: Engine::MergeTree,
                partition_by: Some("toYYYYMM(created_at)"),
                order_by: "(tenant_id, created_at, player_id)",
                shard_by: "cityHash64(tenant_id, player_id)",
            },
        ],
    },
    Migration {
        version: 3,
        name: "per-minute rollups",
        statements: &[
            Statement::Table {
                name: "bets_per_minute",
                columns: r"
    tenant_id String,
    minute DateTime,
    game_id String,
    currency String,
    bets UInt64,
    settlements UInt64,
    stakes_minor Int64,
    payouts_minor Int64,
    ggr_minor Int64
",
                engine: Engine::SummingMergeTree,
                partition_by: Some("toYYYYMM(minute)"),
                order_by: "(tenant_id, minute, game_id, currency)",
                // Filled on each shard by the view; never inserted into directly.
                shard_by: "rand()",
            },
            Statement::View {
                name: "bets_per_minute_mv",
                to: "bets_per_minute",
                select: r"SELECT
    tenant_id,
    toStartOfMinute(occurred_at) AS minute,
    game_id,
    currency,
    toUInt64(sum(type = 'bet_placed')) AS bets,
    toUInt64(sum(type = 'bet_settled')) AS settlements,
    sum(if(type = 'bet_placed', amount_minor, 0)) AS stakes_minor,
    sum(if(type = 'bet_settled', payout_minor, 0)) AS payouts_minor,
    sum(if(type = 'bet_placed', amount_minor, 0)) - sum(if(type = 'bet_settled', payout_minor, 0)) AS ggr_minor
FROM {events}
WHERE type IN ('bet_placed', 'bet_settled')
GROUP BY tenant_id, minute, game_id, currency",
            },
            Statement::Table {
                name: "players_per_minute",
                columns: r"
    tenant_id String,
    minute DateTime,
    players AggregateFunction(uniq, String)
",
                engine: Engine::AggregatingMergeTree,
                partition_by: Some("toYYYYMM(minute)"),
                order_by: "(tenant_id, minute)",
                shard_by: "rand()",
            },
            Statement::View {
                name: "players_per_minute_mv",
                to: "players_per_minute",
                select: r"SELECT tenant_id, toStartOfMinute(occurred_at) AS minute, uniqState(player_id) AS players
FROM {events}
GROUP BY tenant_id, minute",
            },
        ],
    },
    Migration {
        version: 4,
        name: "batch intents",
        statements: &[Statement::Table {
            // The offset range of each partition's batch about to be inserted, written before
            // the insert (run.rs): a member replaying the partition after a crash cuts the
            // same batch, which a replicated table then drops if the first insert landed.
            // One row per partition after merges.
            name: "pitboss_batches",
            columns: r"
    bus_topic String,
    bus_partition UInt32,
    first_offset UInt64,
    last_offset UInt64
",
            engine: Engine::ReplacingMergeTree {
                version: "last_offset",
            },
            partition_by: None,
            order_by: "(bus_topic, bus_partition)",
            shard_by: "cityHash64(bus_topic, bus_partition)",
        }],
    },
];

/// The columns of `table` as its migrations create it — name and type, in order — for a check
/// that the server's table still reads rows as the processor writes them.
pub fn columns(table: &str) -> Option<Vec<(&'static str, &'static str)>> {
    MIGRATIONS
        .iter()
        .flat_map(|m| m.statements)
        .find_map(|s| match s {
            Statement::Table { name, columns, .. } if *name == table => Some(*columns),
            _ => None,
        })
        .map(|columns| {
            columns
                .lines()
                .map(|line| line.trim().trim_end_matches(','))
                .filter_map(|line| line.split_once(' '))
                .collect()
        })
}

const LEDGER_COLUMNS: &str = "version UInt32, name String, applied_at DateTime";

fn ledger(layout: &Layout) -> String {
    match layout {
        Layout::Single => format!(
            "CREATE TABLE IF NOT EXISTS pitboss_migrations ({LEDGER_COLUMNS}) ENGINE = MergeTree ORDER BY version"
        ),
        // One ledger for the whole cluster: every server is a replica of it.
        Layout::Cluster { database, .. } => format!(
            "CREATE TABLE IF NOT EXISTS {database}.pitboss_migrations{} ({LEDGER_COLUMNS}) \
             ENGINE = ReplicatedMergeTree('/clickhouse/tables/all/{database}/pitboss_migrations', '{{replica}}') ORDER BY version",
            layout.on_cluster()
        ),
    }
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct Applied {
    version: u32,
}

/// Creates `database` (on every server of a cluster layout) through a client of any database.
pub async fn create_database(
    client: &Client,
    database: &str,
    layout: &Layout,
) -> Result<(), ProcessorError> {
    if !valid_identifier(database) {
        return Err(ProcessorError::Config(format!(
            "database name {database:?} must be letters, digits and '_' (not starting with a digit)"
        )));
    }
    client
        .query(&format!(
            "CREATE DATABASE IF NOT EXISTS {database}{}",
            layout.on_cluster()
        ))
        .execute()
        .await?;
    Ok(())
}

/// Every migration as one SQL script for `layout`, ledger included (`;`-terminated
/// statements, `-- version` comments): what [`migrate`] runs on an empty database, for review
/// or for another tool to apply.
pub fn script(layout: &Layout) -> String {
    let mut out = format!("-- the migrations ledger\n{};\n\n", ledger(layout));
    for m in MIGRATIONS {
        out += &format!("-- version {}: {}\n", m.version, m.name);
        for statement in m.sql(layout) {
            out += &statement;
            out += ";\n\n";
        }
        out += &format!(
            "INSERT INTO pitboss_migrations (version, name, applied_at) VALUES ({}, '{}', now());\n\n",
            m.version,
            m.name.replace('\'', "''")
        );
    }
    out
}

/// Versions recorded as applied.
pub async fn applied(client: &Client, layout: &Layout) -> Result<Vec<u32>, ProcessorError> {
    client.query(&ledger(layout)).execute().await?;
    let rows: Vec<Applied> = client
        .query("SELECT DISTINCT version FROM pitboss_migrations ORDER BY version")
        .fetch_all()
        .await?;
    Ok(rows.into_iter().map(|a| a.version).collect())
}

/// Brings the schema up to date; returns the versions this call applied.
pub async fn migrate(client: &Client, layout: &Layout) -> Result<Vec<u32>, ProcessorError> {
    let done = applied(client, layout).await?;
    let mut ran = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
        for statement in m.sql(layout) {
            client.query(&statement).execute().await.map_err(|e| {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_single_layout_creates_plain_tables_and_views_on_events() {
        let sql: Vec<String> = MIGRATIONS
            .iter()
            .flat_map(|m| m.sql(&Layout::Single))
            .collect();
        assert_eq!(sql.len(), 8);
        assert!(sql[7].contains(
            "ENGINE = ReplacingMergeTree(last_offset)\nORDER BY (bus_topic, bus_partition)"
        ));
        assert!(sql[0].starts_with("CREATE TABLE IF NOT EXISTS events ("));
        assert!(sql[0].ends_with(
            "ENGINE = MergeTree\nPARTITION BY toYYYYMM(received_at)\nORDER BY (tenant_id, occurred_at, player_id, event_id)"
        ));
        assert!(
            sql.iter()
                .all(|s| !s.contains("ON CLUSTER") && !s.contains("_local"))
        );
        assert!(sql[4].contains("TO bets_per_minute AS") && sql[4].contains("FROM events\n"));
    }

    #[test]
    fn the_cluster_layout_replicates_local_tables_behind_distributed_ones() {
        let layout = Layout::cluster("pitboss", "analytics").expect("valid names");
        let v1 = MIGRATIONS[0].sql(&layout);
        assert_eq!(v1.len(), 2);
        assert!(
            v1[0].starts_with(
                "CREATE TABLE IF NOT EXISTS analytics.events_local ON CLUSTER pitboss ("
            )
        );
        assert!(v1[0].contains(
            "ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/analytics/events_local', '{replica}')"
        ));
        assert_eq!(
            v1[1],
            "CREATE TABLE IF NOT EXISTS analytics.events ON CLUSTER pitboss AS analytics.events_local \
             ENGINE = Distributed(pitboss, analytics, events_local, cityHash64(bus_topic, bus_partition))"
        );
        let v3 = MIGRATIONS[2].sql(&layout);
        assert!(v3[0].contains("ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/analytics/bets_per_minute_local'"));
        assert!(v3[2].starts_with("CREATE MATERIALIZED VIEW IF NOT EXISTS analytics.bets_per_minute_mv ON CLUSTER pitboss TO analytics.bets_per_minute_local AS"));
        assert!(v3[2].contains("FROM analytics.events_local\n"));
        assert!(
            ledger(&layout)
                .contains("'/clickhouse/tables/all/analytics/pitboss_migrations', '{replica}'")
        );
    }

    #[test]
    fn the_events_columns_are_the_ones_an_event_row_writes() {
        use clickhouse::Row;
        let events = columns("events").expect("events");
        let names: Vec<&str> = events.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, crate::rows::EventRow::COLUMN_NAMES);
        assert_eq!(events[5], ("occurred_at", "DateTime"));
        assert_eq!(events[23], ("amount_minor", "Int64"));
        assert_eq!(
            columns("players_per_minute").expect("rollup")[2],
            ("players", "AggregateFunction(uniq, String)")
        );
        assert_eq!(columns("nope"), None);
    }

    #[test]
    fn names_that_would_break_the_ddl_are_refused() {
        for bad in ["", "a-b", "a b", "x;DROP", "1abc", "é"] {
            assert!(Layout::cluster(bad, "db").is_err(), "{bad:?}");
            assert!(Layout::cluster("c", bad).is_err(), "{bad:?}");
        }
        assert!(Layout::cluster("pitboss_2x2", "db_1").is_ok());
    }
}
