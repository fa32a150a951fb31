//! The ClickHouse schema as versioned migrations, for ClickHouse 18.16 and current releases
//! alike (DESIGN.md, "ClickHouse": no DateTime64, Map, LowCardinality, TTL or CODEC; times as
//! `DateTime` plus epoch milliseconds as `UInt64`).
//!
//! Every statement is idempotent (`IF NOT EXISTS`; a `DROP` or an added column checked first,
//! see [`migrate`]), so two processors starting at once may both run a migration: the second
//! run changes nothing. Applied versions are recorded in `pitboss_migrations`; a version
//! already recorded is skipped.
//!
//! Tables:
//! - `events`: the envelope plus typed payload columns, and the bus position of each row
//!   (`bus_topic`, `bus_partition`, `bus_offset`) — the processor's high-water mark lives with
//!   the data, so a replay after a crash is recognised without a second store. Partitioned by
//!   the month of `received_at` (stamped at ingest, so one batch falls in one partition and is
//!   written as one part: an insert is all or nothing). ORDER BY (tenant, time, player) for
//!   the dashboards.
//! - `alerts`, `pushes`, `deliveries`, `alert_acks` (version 5, which replaced version 2's
//!   `alerts` and `pushes`): the live path's messages (docs/alerts.md), with their bus
//!   position like `events`; ReplacingMergeTrees keeping one row per message id.
//! - `bets_per_minute` (SummingMergeTree), fed by a materialized view on `events`: bets,
//!   stakes, payouts and GGR by tenant, game and currency per minute; `players_per_minute`
//!   (AggregatingMergeTree with `uniqState`) for active players; `alerts_per_minute`
//!   (`uniqExactState` of alert ids) per rule, fed by a view on `alerts`.
//!
//! Two layouts render the same migrations ([`Layout`]):
//! - **single**: the tables above on one server;
//! - **cluster** (`ON CLUSTER`, for N shards × M replicas with ZooKeeper): each table becomes
//!   `<name>_local`, a `Replicated*MergeTree` at `/clickhouse/tables/{shard}/<db>/<name>_local`
//!   with replica `{replica}` (the servers' macros), plus `<name>`, a `Distributed` table over
//!   them with the same name and columns, so queries and inserts read as in the single layout.
//!   `events` and the live-path tables are sharded by `cityHash64(bus_topic, bus_partition)`:
//!   a batch (one bus partition)
//!   lands on one shard as one block, all or nothing, and a replica deduplicates a block it has
//!   seen (the hashes live in ZooKeeper, shared by the shard's replicas). The materialized views
//!   read `events_local` (`alerts_local`) and write `<rollup>_local` on each shard; the migrations ledger is one
//!   replicated table for the whole cluster (`{replica}` must be unique across it).

use clickhouse::Client;

use crate::ProcessorError;

mod migrations;

pub use migrations::MIGRATIONS;

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
    /// A materialized view from the table `from` into the table `to`; `{from}` in `select` is
    /// the source (`<from>_local` of each shard in the cluster layout).
    View {
        name: &'static str,
        to: &'static str,
        from: &'static str,
        select: &'static str,
    },
    /// Drops a table an earlier migration created (and, in the cluster layout, its local
    /// table) — [`migrate`] only while it still has `old_column`, a column of that earlier
    /// shape, so a second `migrate` running at once never drops what replaced it. A table that
    /// a pending migration drops is not created in the first place ([`plan`]).
    Drop {
        name: &'static str,
        old_column: &'static str,
    },
    /// Adds a column at the end of a table an earlier migration created (and, in the cluster
    /// layout, of its local table and its `Distributed` one); rows already stored read its
    /// default (`NULL` for a `Nullable` type). ClickHouse 18.16 has no `ADD COLUMN IF NOT
    /// EXISTS`: [`migrate`] runs each `ALTER` only where the column is missing.
    AddColumn {
        table: &'static str,
        column: &'static str,
        ty: &'static str,
    },
}

/// A planned statement: what [`plan`] keeps, with the columns later migrations of the same plan
/// add to it when it is a table created in that plan (created with them), and, for such an
/// `AddColumn`, `folded`: [`script`] leaves it out, [`migrate`] still runs it (where the
/// column is missing: a table an interrupted run made before this version).
#[derive(Debug, Clone)]
pub struct Planned {
    pub statement: &'static Statement,
    pub added: Vec<(&'static str, &'static str)>,
    pub folded: bool,
}

/// One step of an `AddColumn`: the table it gives the column, its SQL, and the SQL that runs
/// after it whatever happened (dropping what a swap left).
#[derive(Debug, Clone)]
struct AddStep {
    target: String,
    sql: Vec<String>,
    cleanup: Vec<String>,
}

impl Planned {
    /// The SQL for `layout`, in order.
    pub fn render(&self, layout: &Layout) -> Vec<String> {
        self.statement.render_with(layout, &self.added)
    }
}

impl Statement {
    /// The SQL for `layout`, in order.
    pub fn render(&self, layout: &Layout) -> Vec<String> {
        self.render_with(layout, &[])
    }

    /// An `AddColumn`'s steps: the table each one gives the column, its SQL, and the SQL that
    /// always runs after it (cleanup). In the cluster layout the local tables are altered
    /// (replicated: `ON CLUSTER` reaches every replica), then the `Distributed` table is made
    /// anew beside the old one — its columns written out, not copied from a replica that may
    /// not have applied the ALTER yet — and swapped in by `RENAME` (ClickHouse 18.16 refuses
    /// `ALTER … ON CLUSTER` on a table that is not replicated when the cluster's shards
    /// replicate internally). The swap's names end with `tag`, one per call, so two `migrate`
    /// at once never touch each other's tables. A `Distributed` table holds no rows (the
    /// processor inserts synchronously), so nothing is lost in the swap; for the moment of the
    /// `RENAME` the table is missing on each server, which inserts ride out (`run.rs`).
    fn add_column_steps(&self, layout: &Layout, tag: &str) -> Vec<AddStep> {
        let Statement::AddColumn { table, column, ty } = *self else {
            return Vec::new();
        };
        match layout {
            Layout::Single => vec![AddStep {
                target: table.to_owned(),
                sql: vec![format!("ALTER TABLE {table} ADD COLUMN {column} {ty}")],
                cleanup: Vec::new(),
            }],
            Layout::Cluster { cluster, database } => {
                let on = layout.on_cluster();
                let shard_by = MIGRATIONS
                    .iter()
                    .flat_map(|m| m.statements)
                    .filter_map(|s| match s {
                        Statement::Table { name, shard_by, .. } if *name == table => {
                            Some(*shard_by)
                        }
                        _ => None,
                    })
                    .next_back()
                    .unwrap_or("rand()");
                let columns = columns_through(table, self)
                    .iter()
                    .map(|(name, ty)| format!("{name} {ty}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let engine = format!(
                    "ENGINE = Distributed({cluster}, {database}, {table}_local, {shard_by})"
                );
                let (t, swap, old) = (
                    format!("{database}.{table}"),
                    format!("{database}.{table}_pitboss_swap_{tag}"),
                    format!("{database}.{table}_pitboss_old_{tag}"),
                );
                vec![
                    AddStep {
                        target: format!("{table}_local"),
                        sql: vec![format!(
                            "ALTER TABLE {t}_local{on} ADD COLUMN {column} {ty}"
                        )],
                        cleanup: Vec::new(),
                    },
                    AddStep {
                        target: table.to_owned(),
                        sql: vec![
                            format!("CREATE TABLE IF NOT EXISTS {swap}{on} ({columns}) {engine}"),
                            format!("RENAME TABLE {t} TO {old}, {swap} TO {t}{on}"),
                        ],
                        // A RENAME renames pair by pair: one that failed halfway (another
                        // `migrate` swapping at once) may leave the table missing, made here
                        // with the new columns.
                        cleanup: vec![
                            format!("CREATE TABLE IF NOT EXISTS {t}{on} ({columns}) {engine}"),
                            format!("DROP TABLE IF EXISTS {old}{on}"),
                            format!("DROP TABLE IF EXISTS {swap}{on}"),
                        ],
                    },
                ]
            }
        }
    }
    /// The SQL for `layout`, a `Table` with the columns `added` after its own.
    fn render_with(&self, layout: &Layout, added: &[(&str, &str)]) -> Vec<String> {
        let mut columns_text = String::new();
        if let Statement::Table { columns, .. } = self {
            columns_text = columns.trim_end().to_owned();
            for (name, ty) in added {
                columns_text += &format!(",\n    {name} {ty}");
            }
            columns_text.push('\n');
        }
        let columns = columns_text.as_str();
        match (*self, layout) {
            (
                Statement::Table {
                    name,
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
                    engine,
                    partition_by,
                    order_by,
                    shard_by,
                    ..
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
            (
                Statement::View {
                    name,
                    to,
                    from,
                    select,
                },
                Layout::Single,
            ) => vec![format!(
                "CREATE MATERIALIZED VIEW IF NOT EXISTS {name} TO {to} AS\n{}",
                select.replace("{from}", from)
            )],
            (
                Statement::View {
                    name,
                    to,
                    from,
                    select,
                },
                Layout::Cluster { database, .. },
            ) => {
                vec![format!(
                    "CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.{name}{on} TO {database}.{to}_local AS\n{}",
                    select.replace("{from}", &format!("{database}.{from}_local")),
                    on = layout.on_cluster(),
                )]
            }
            (Statement::Drop { name, .. }, Layout::Single) => {
                vec![format!("DROP TABLE IF EXISTS {name}")]
            }
            (Statement::AddColumn { .. }, _) => self
                .add_column_steps(layout, "0")
                .into_iter()
                .flat_map(|step| step.sql.into_iter().chain(step.cleanup))
                .collect(),
            (Statement::Drop { name, .. }, Layout::Cluster { database, .. }) => vec![
                format!(
                    "DROP TABLE IF EXISTS {database}.{name}{on}",
                    on = layout.on_cluster()
                ),
                format!(
                    "DROP TABLE IF EXISTS {database}.{name}_local{on}",
                    on = layout.on_cluster()
                ),
            ],
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

/// The columns of `table` as the migrations leave it — name and type, in order: the latest
/// `Table` statement's, then the columns added after it — for a check that the server's table
/// still reads rows as the processor writes them.
pub fn columns(table: &str) -> Option<Vec<(&'static str, &'static str)>> {
    columns_until(table, None)
}

/// The columns of `table` once `last` (an `AddColumn` of it) has run.
fn columns_through(table: &str, last: &Statement) -> Vec<(&'static str, &'static str)> {
    columns_until(table, Some(last)).unwrap_or_default()
}

/// The columns of `table` after every migration, or up to and including `last`.
fn columns_until(
    table: &str,
    last: Option<&Statement>,
) -> Option<Vec<(&'static str, &'static str)>> {
    let mut found: Option<Vec<(&'static str, &'static str)>> = None;
    for statement in MIGRATIONS.iter().flat_map(|m| m.statements) {
        match statement {
            Statement::Table { name, columns, .. } if *name == table => {
                found = Some(
                    columns
                        .lines()
                        .map(|line| line.trim().trim_end_matches(','))
                        .filter_map(|line| line.split_once(' '))
                        .collect(),
                );
            }
            Statement::Drop { name, .. } if *name == table => found = None,
            Statement::AddColumn {
                table: t,
                column,
                ty,
            } if *t == table => {
                if let Some(cols) = found.as_mut() {
                    cols.push((*column, *ty));
                }
            }
            _ => {}
        }
        if last.is_some_and(|l| std::ptr::eq(l, statement)) {
            break;
        }
    }
    found
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

/// The migrations not in `done` and, for each, the statements to run, in order: a table (or
/// a view on one) that a pending migration drops again is not created, a table is dropped
/// only if a migration in `done` created it — on an empty database nothing is dropped — and a
/// table created in this plan is created with the columns later pending migrations add to it
/// (no `ALTER` then: the script of an empty database stays `IF NOT EXISTS` throughout).
pub fn plan(done: &[u32]) -> Vec<(&'static Migration, Vec<Planned>)> {
    let pending: Vec<(usize, &'static Migration)> = MIGRATIONS
        .iter()
        .enumerate()
        .filter(|(_, m)| !done.contains(&m.version))
        .collect();
    let dropped_after = |i: usize, table: &str| {
        pending.iter().any(|(j, m)| {
            *j > i
                && m.statements
                    .iter()
                    .any(|s| matches!(s, Statement::Drop { name, .. } if *name == table))
        })
    };
    let created = |table: &str| {
        MIGRATIONS
            .iter()
            .filter(|m| done.contains(&m.version))
            .flat_map(|m| m.statements)
            .any(|s| matches!(s, Statement::Table { name, .. } if *name == table))
    };
    // A pending migration before `i` creates `table` (and no later one drops it).
    let created_in_plan = |i: usize, table: &str| {
        pending.iter().any(|(j, m)| {
            *j < i
                && !dropped_after(*j, table)
                && m.statements
                    .iter()
                    .any(|s| matches!(s, Statement::Table { name, .. } if *name == table))
        })
    };
    let added_after = |i: usize, table: &str| -> Vec<(&'static str, &'static str)> {
        pending
            .iter()
            .filter(|(j, _)| *j > i)
            .flat_map(|(_, m)| m.statements)
            .filter_map(|s| match s {
                Statement::AddColumn {
                    table: t,
                    column,
                    ty,
                } if *t == table => Some((*column, *ty)),
                _ => None,
            })
            .collect()
    };
    pending
        .iter()
        .map(|(i, m)| {
            let statements = m
                .statements
                .iter()
                .filter(|s| match s {
                    Statement::Table { name, .. } => !dropped_after(*i, name),
                    Statement::View { from, to, .. } => {
                        !dropped_after(*i, from) && !dropped_after(*i, to)
                    }
                    Statement::Drop { name, .. } => created(name),
                    Statement::AddColumn { table, .. } => !dropped_after(*i, table),
                })
                .map(|s| Planned {
                    statement: s,
                    added: match s {
                        Statement::Table { name, .. } => added_after(*i, name),
                        _ => Vec::new(),
                    },
                    folded: matches!(s, Statement::AddColumn { table, .. } if created_in_plan(*i, table)),
                })
                .collect();
            (*m, statements)
        })
        .collect()
}

/// Every migration as one SQL script for `layout`, ledger included (`;`-terminated
/// statements, `-- version` comments): what [`migrate`] runs on an empty database, for review
/// or for another tool to apply. Every statement is `IF NOT EXISTS` (columns a later version adds
/// are in the tables' `CREATE`), so it may run twice.
pub fn script(layout: &Layout) -> String {
    let mut out = format!("-- the migrations ledger\n{};\n\n", ledger(layout));
    for (m, statements) in plan(&[]) {
        out += &format!("-- version {}: {}\n", m.version, m.name);
        for statement in statements
            .iter()
            .filter(|s| !s.folded)
            .flat_map(|s| s.render(layout))
        {
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

/// Whether `table` (or, in the cluster layout, `<table>_local`) of the client's database has
/// the column `column`.
async fn has_column(client: &Client, table: &str, column: &str) -> Result<bool, ProcessorError> {
    Ok(table_has_column(client, table, column).await?
        || table_has_column(client, &format!("{table}_local"), column).await?)
}

/// Whether exactly `table` of the client's database has the column `column`.
async fn table_has_column(
    client: &Client,
    table: &str,
    column: &str,
) -> Result<bool, ProcessorError> {
    let n: u64 = client
        .query(
            "SELECT count() FROM system.columns WHERE database = currentDatabase() \
             AND table = ? AND name = ?",
        )
        .bind(table)
        .bind(column)
        .fetch_one()
        .await?;
    Ok(n > 0)
}

/// Records `m` as applied in the ledger.
pub async fn record(client: &Client, m: &Migration) -> Result<(), ProcessorError> {
    client
        .query("INSERT INTO pitboss_migrations (version, name, applied_at) VALUES (?, ?, now())")
        .bind(m.version)
        .bind(m.name)
        .execute()
        .await?;
    Ok(())
}

/// Brings the schema up to date ([`plan`]); returns the versions this call applied.
pub async fn migrate(client: &Client, layout: &Layout) -> Result<Vec<u32>, ProcessorError> {
    let done = applied(client, layout).await?;
    let mut ran = Vec::new();
    for (m, statements) in plan(&done) {
        let failed = |e: String| {
            ProcessorError::Migration(format!("version {} ({}): {e}", m.version, m.name))
        };
        for planned in statements {
            let statement = planned.statement;
            if let Statement::Drop { name, old_column } = statement
                && !has_column(client, name, old_column)
                    .await
                    .map_err(|e| failed(e.to_string()))?
            {
                continue;
            }
            // Each step only where the column is missing (also after a CREATE that had it); one
            // that fails because another `migrate` gave the table the column meanwhile is done;
            // what a step leaves is dropped whatever happened; the version is recorded only
            // once every table has the column.
            if let Statement::AddColumn { column, .. } = statement {
                // The random end of a UUIDv7 (its start is the time: two at once would share it).
                let tag = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
                for step in statement.add_column_steps(layout, &tag) {
                    let there = |client| table_has_column(client, &step.target, column);
                    if there(client).await.map_err(|e| failed(e.to_string()))? {
                        continue;
                    }
                    let mut error = None;
                    for sql in &step.sql {
                        if let Err(e) = client.query(sql).execute().await {
                            error = Some(e.to_string());
                            break;
                        }
                    }
                    for sql in &step.cleanup {
                        if let Err(e) = client.query(sql).execute().await {
                            tracing::warn!(%sql, error = %e, "migration cleanup failed");
                        }
                    }
                    if !there(client).await.map_err(|e| failed(e.to_string()))? {
                        return Err(failed(error.unwrap_or_else(|| {
                            format!("{} has no column {column} after the migration", step.target)
                        })));
                    }
                }
                continue;
            }
            for sql in planned.render(layout) {
                client
                    .query(&sql)
                    .execute()
                    .await
                    .map_err(|e| failed(e.to_string()))?;
            }
        }
        record(client, m).await?;
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
        let sql: Vec<String> = MIGRATIONS[..4]
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

    /// The statements `plan` keeps, rendered for the single layout, by version.
    fn planned(done: &[u32]) -> Vec<(u32, Vec<String>)> {
        plan(done)
            .into_iter()
            .map(|(m, statements)| {
                let sql = statements
                    .iter()
                    .flat_map(|s| s.render(&Layout::Single))
                    .collect();
                (m.version, sql)
            })
            .collect()
    }

    #[test]
    fn an_empty_database_never_gets_the_tables_a_later_migration_replaces() {
        let all = planned(&[]);
        assert_eq!(
            all.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5, 6, 7]
        );
        assert!(all[1].1.is_empty(), "version 2 is superseded: {:?}", all[1]);
        // Version 6's and 7's columns are in their tables' CREATE; their ALTERs stay in the
        // plan (`migrate` runs each only where the column is missing) but not in the script.
        assert_eq!(all[5].1.len(), 1, "{:?}", all[5]);
        assert_eq!(all[6].1.len(), 5, "{:?}", all[6]);
        assert!(plan(&[])[5].1[0].folded);
        assert!(plan(&[])[6].1.iter().all(|p| p.folded));
        assert!(!script(&Layout::Single).contains("ALTER"));
        assert!(
            all[0].1[0].ends_with("    bus_offset UInt64,\n    utc_offset_min Nullable(Int16),\n    bus_sequence String\n) ENGINE = MergeTree\nPARTITION BY toYYYYMM(received_at)\nORDER BY (tenant_id, occurred_at, player_id, event_id)"),
            "{}",
            all[0].1[0]
        );
        for table in ["alerts", "pushes", "deliveries", "alert_acks"] {
            let create = all[4]
                .1
                .iter()
                .find(|s| s.starts_with(&format!("CREATE TABLE IF NOT EXISTS {table} (")))
                .expect(table);
            assert!(
                create.contains("    bus_offset UInt64,\n    bus_sequence String\n)"),
                "{create}"
            );
        }
        let sql: Vec<&String> = all.iter().flat_map(|(_, sql)| sql).collect();
        assert!(
            sql.iter().all(|s| !s.starts_with("DROP")),
            "nothing to drop"
        );
        assert_eq!(
            sql.iter()
                .filter(|s| s.starts_with("CREATE TABLE IF NOT EXISTS alerts ("))
                .count(),
            1
        );
        assert_eq!(
            script(&Layout::Single).matches("CREATE").count(),
            sql.iter().filter(|s| !s.starts_with("ALTER")).count() + 1
        );

        // A database at version 4 has version 2's tables: version 5 drops them (if they still
        // have that shape, which `migrate` checks) and creates the new ones.
        let from_4 = planned(&[1, 2, 3, 4]);
        assert_eq!(from_4.len(), 3);
        assert_eq!(
            from_4[2],
            (
                7,
                ["events", "alerts", "pushes", "deliveries", "alert_acks"]
                    .map(|t| format!("ALTER TABLE {t} ADD COLUMN bus_sequence String"))
                    .to_vec()
            )
        );
        assert_eq!(
            from_4[1],
            (
                6,
                vec!["ALTER TABLE events ADD COLUMN utc_offset_min Nullable(Int16)".to_owned()]
            )
        );
        let (version, sql) = &from_4[0];
        assert_eq!(*version, 5);
        assert_eq!(
            sql[..2],
            ["DROP TABLE IF EXISTS alerts", "DROP TABLE IF EXISTS pushes"]
        );
        assert!(sql[2].starts_with("CREATE TABLE IF NOT EXISTS alerts (\n    tenant_id String,"));
        assert_eq!(sql.len(), 8);
    }

    /// In the cluster layout a column is added to the local tables, then the Distributed table
    /// is made anew with it and swapped in; the columns the processor checks include it, at
    /// the end.
    #[test]
    fn an_added_column_alters_both_tables_of_a_cluster_and_ends_the_columns() {
        let layout = Layout::cluster("pitboss", "analytics").expect("valid names");
        let v6 = plan(&[1, 2, 3, 4, 5])
            .into_iter()
            .filter(|(m, _)| m.version == 6)
            .flat_map(|(_, s)| s)
            .flat_map(|p| p.render(&layout))
            .collect::<Vec<_>>();
        assert_eq!(v6.len(), 6, "{v6:#?}");
        assert_eq!(
            v6[0],
            "ALTER TABLE analytics.events_local ON CLUSTER pitboss ADD COLUMN utc_offset_min Nullable(Int16)"
        );
        let engine = "ENGINE = Distributed(pitboss, analytics, events_local, cityHash64(bus_topic, bus_partition))";
        // The Distributed table's columns written out, the new one last.
        assert!(
            v6[1].starts_with("CREATE TABLE IF NOT EXISTS analytics.events_pitboss_swap_0 ON CLUSTER pitboss (tenant_id String, event_id String, ")
                && v6[1].ends_with(&format!("bus_offset UInt64, utc_offset_min Nullable(Int16)) {engine}")),
            "{}",
            v6[1]
        );
        assert_eq!(
            v6[2],
            "RENAME TABLE analytics.events TO analytics.events_pitboss_old_0, analytics.events_pitboss_swap_0 TO analytics.events ON CLUSTER pitboss"
        );
        // Cleanup: the table made if a RENAME halfway left none, then what the swap left.
        assert!(v6[3].starts_with(
            "CREATE TABLE IF NOT EXISTS analytics.events ON CLUSTER pitboss (tenant_id String"
        ));
        assert_eq!(
            v6[4],
            "DROP TABLE IF EXISTS analytics.events_pitboss_old_0 ON CLUSTER pitboss"
        );
        assert_eq!(
            v6[5],
            "DROP TABLE IF EXISTS analytics.events_pitboss_swap_0 ON CLUSTER pitboss"
        );
        let events = columns("events").expect("events");
        assert_eq!(events.last(), Some(&("bus_sequence", "String")));
        assert_eq!(events.len(), 32);
        // An empty cluster gets it in the local table's CREATE (the Distributed one copies it).
        let script = script(&layout);
        assert!(!script.contains("ALTER"), "{script}");
        assert!(script.contains(
            "bus_offset UInt64,\n    utc_offset_min Nullable(Int16),\n    bus_sequence String\n) ENGINE = ReplicatedMergeTree"
        ));
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
