//! The embedded store of `pitboss up`: the same batches into SQLite (bundled, WAL), with the
//! same logical schema as ClickHouse and the per-minute rollups maintained in the same
//! transaction as the rows they summarise.
//!
//! One transaction per batch writes the rows, folds them into `bets_per_minute` and
//! `player_minutes`, and moves the partition's high-water mark in `bus_positions`: a batch is
//! in the store with its rollups and its position, or not at all — exactly once, with no
//! replay window.
//!
//! Times are epoch seconds (`occurred_at`, `minute`, …) and milliseconds (`*_ms`); in SQL,
//! `datetime(minute, 'unixepoch')` shows one.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::ProcessorError;
use crate::batch::Batch;
use crate::sink::Sink;

/// One schema version of the embedded store.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, oldest first. Never edit a released one: add a new version.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "events",
        sql: r"
CREATE TABLE IF NOT EXISTS events (
    tenant_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    player_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    type TEXT NOT NULL,
    occurred_at INTEGER NOT NULL,
    occurred_at_ms INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    received_at_ms INTEGER NOT NULL,
    schema_version INTEGER NOT NULL,
    late INTEGER NOT NULL,
    game_id TEXT NOT NULL,
    bet_id TEXT NOT NULL,
    round_id TEXT NOT NULL,
    transaction_id TEXT NOT NULL,
    result TEXT NOT NULL,
    status TEXT NOT NULL,
    method TEXT NOT NULL,
    channel TEXT NOT NULL,
    device_id TEXT NOT NULL,
    ip TEXT NOT NULL,
    country TEXT NOT NULL,
    success INTEGER NOT NULL,
    amount_minor INTEGER NOT NULL,
    payout_minor INTEGER NOT NULL,
    currency TEXT NOT NULL,
    payload TEXT NOT NULL,
    bus_topic TEXT NOT NULL,
    bus_partition INTEGER NOT NULL,
    bus_offset INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_tenant_time ON events (tenant_id, occurred_at, player_id);
CREATE TABLE IF NOT EXISTS bus_positions (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    high_water INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
) WITHOUT ROWID;",
    },
    Migration {
        version: 2,
        name: "alerts and pushes",
        sql: r"
CREATE TABLE IF NOT EXISTS alerts (
    tenant_id TEXT NOT NULL,
    alert_id TEXT NOT NULL,
    rule TEXT NOT NULL,
    severity TEXT NOT NULL,
    player_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    raised_at INTEGER NOT NULL,
    raised_at_ms INTEGER NOT NULL,
    details TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_by_tenant_time ON alerts (tenant_id, raised_at);
CREATE TABLE IF NOT EXISTS pushes (
    tenant_id TEXT NOT NULL,
    push_id TEXT NOT NULL,
    player_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    delivered_at_ms INTEGER NOT NULL,
    outcome TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS pushes_by_tenant_time ON pushes (tenant_id, created_at);",
    },
    Migration {
        version: 3,
        name: "per-minute rollups",
        sql: r"
CREATE TABLE IF NOT EXISTS bets_per_minute (
    tenant_id TEXT NOT NULL,
    minute INTEGER NOT NULL,
    game_id TEXT NOT NULL,
    currency TEXT NOT NULL,
    bets INTEGER NOT NULL,
    settlements INTEGER NOT NULL,
    stakes_minor INTEGER NOT NULL,
    payouts_minor INTEGER NOT NULL,
    ggr_minor INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, minute, game_id, currency)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS player_minutes (
    tenant_id TEXT NOT NULL,
    minute INTEGER NOT NULL,
    player_id TEXT NOT NULL,
    PRIMARY KEY (tenant_id, minute, player_id)
) WITHOUT ROWID;
CREATE VIEW IF NOT EXISTS players_per_minute AS
    SELECT tenant_id, minute, count(*) AS players FROM player_minutes GROUP BY tenant_id, minute;",
    },
];

/// Opens (creating if needed) the store at `path` and brings its schema up to date; returns
/// the connection and the versions this call applied. Safe when two processes open it at
/// once: the check and the migrations run in one write transaction.
pub fn open(path: &Path) -> Result<(Connection, Vec<u32>), ProcessorError> {
    let mut conn = Connection::open(path).map_err(store)?;
    // First: switching to WAL and the migration transaction both wait for other openers.
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(store)?;
    // WAL: readers (`pitboss sql`, the console) never block the writer. NORMAL: a commit
    // survives a process crash; only an OS crash may lose the last transactions, which the
    // bus then replays (the positions roll back with the rows).
    //
    // Two openers that both read the schema and then both want the lock for the switch get
    // SQLITE_BUSY at once, without the busy handler (SQLite's deadlock rule): retry it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Ok(()) => break,
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => return Err(store(e)),
        }
    }
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(store)?;
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(store)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS pitboss_migrations (
            version INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            applied_at INTEGER NOT NULL
        )",
    )
    .map_err(store)?;
    let mut ran = Vec::new();
    for m in MIGRATIONS {
        let done: Option<u32> = tx
            .query_row(
                "SELECT version FROM pitboss_migrations WHERE version = ?1",
                [m.version],
                |r| r.get(0),
            )
            .optional()
            .map_err(store)?;
        if done.is_some() {
            continue;
        }
        tx.execute_batch(m.sql).map_err(|e| {
            ProcessorError::Migration(format!("sqlite version {} ({}): {e}", m.version, m.name))
        })?;
        tx.execute(
            "INSERT INTO pitboss_migrations (version, name, applied_at) VALUES (?1, ?2, unixepoch())",
            params![m.version, m.name],
        )
        .map_err(store)?;
        ran.push(m.version);
    }
    tx.commit().map_err(store)?;
    Ok((conn, ran))
}

fn store(e: rusqlite::Error) -> ProcessorError {
    ProcessorError::Store(format!("sqlite: {e}"))
}

/// The embedded store as a processor sink.
#[derive(Clone)]
pub struct SqliteSink {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteSink")
            .field("path", &self.path)
            .finish()
    }
}

impl SqliteSink {
    /// Opens the store at `path` (see [`open`]).
    pub fn open(path: &Path) -> Result<Self, ProcessorError> {
        let (conn, ran) = open(path)?;
        if !ran.is_empty() {
            tracing::info!(path = %path.display(), applied = ?ran, "embedded store schema up to date");
        }
        Ok(SqliteSink {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_owned(),
        })
    }

    fn with_conn<T>(
        conn: &Mutex<Connection>,
        f: impl FnOnce(&mut Connection) -> Result<T, ProcessorError>,
    ) -> Result<T, ProcessorError> {
        let mut guard = conn
            .lock()
            .map_err(|_| ProcessorError::Store("sqlite connection poisoned".into()))?;
        f(&mut guard)
    }
}

/// Start of the minute of an epoch second.
fn minute(epoch_seconds: u32) -> i64 {
    i64::from(epoch_seconds) / 60 * 60
}

#[derive(Default)]
struct BetSums {
    bets: i64,
    settlements: i64,
    stakes: i64,
    payouts: i64,
}

fn write_batch(conn: &mut Connection, batch: &Batch) -> Result<(), ProcessorError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(store)?;
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO events VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13,
                 ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30)",
            )
            .map_err(store)?;
        let mut bets: HashMap<(&str, i64, &str, &str), BetSums> = HashMap::new();
        let mut players: HashSet<(&str, i64, &str)> = HashSet::new();
        for r in &batch.rows {
            insert
                .execute(params![
                    r.tenant_id,
                    r.event_id,
                    r.player_id,
                    r.session_id,
                    r.kind,
                    r.occurred_at,
                    r.occurred_at_ms as i64,
                    r.received_at,
                    r.received_at_ms as i64,
                    r.schema_version,
                    r.late,
                    r.game_id,
                    r.bet_id,
                    r.round_id,
                    r.transaction_id,
                    r.result,
                    r.status,
                    r.method,
                    r.channel,
                    r.device_id,
                    r.ip,
                    r.country,
                    r.success,
                    r.amount_minor,
                    r.payout_minor,
                    r.currency,
                    r.payload,
                    r.bus_topic,
                    r.bus_partition,
                    r.bus_offset as i64,
                ])
                .map_err(store)?;
            let m = minute(r.occurred_at);
            players.insert((&r.tenant_id, m, &r.player_id));
            // The same rollup as ClickHouse's bets_per_minute_mv.
            match r.kind.as_str() {
                "bet_placed" => {
                    let s = bets
                        .entry((&r.tenant_id, m, &r.game_id, &r.currency))
                        .or_default();
                    s.bets += 1;
                    s.stakes += r.amount_minor;
                }
                "bet_settled" => {
                    let s = bets
                        .entry((&r.tenant_id, m, &r.game_id, &r.currency))
                        .or_default();
                    s.settlements += 1;
                    s.payouts += r.payout_minor;
                }
                _ => {}
            }
        }
        let mut upsert = tx
            .prepare_cached(
                "INSERT INTO bets_per_minute VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (tenant_id, minute, game_id, currency) DO UPDATE SET
                    bets = bets + excluded.bets,
                    settlements = settlements + excluded.settlements,
                    stakes_minor = stakes_minor + excluded.stakes_minor,
                    payouts_minor = payouts_minor + excluded.payouts_minor,
                    ggr_minor = ggr_minor + excluded.ggr_minor",
            )
            .map_err(store)?;
        for ((tenant, m, game, currency), s) in bets {
            upsert
                .execute(params![
                    tenant,
                    m,
                    game,
                    currency,
                    s.bets,
                    s.settlements,
                    s.stakes,
                    s.payouts,
                    s.stakes - s.payouts
                ])
                .map_err(store)?;
        }
        let mut seen = tx
            .prepare_cached("INSERT OR IGNORE INTO player_minutes VALUES (?1, ?2, ?3)")
            .map_err(store)?;
        for (tenant, m, player) in players {
            seen.execute(params![tenant, m, player]).map_err(store)?;
        }
        if let Some((_, last)) = batch.offsets {
            tx.execute(
                "INSERT INTO bus_positions VALUES (?1, ?2, ?3)
                 ON CONFLICT (topic, partition) DO UPDATE SET
                    high_water = max(high_water, excluded.high_water)",
                params![batch.topic, batch.partition, last as i64],
            )
            .map_err(store)?;
        }
    }
    tx.commit().map_err(store)
}

#[async_trait]
impl Sink for SqliteSink {
    /// Exact from `bus_positions` (one row per partition): `since_ms` is not needed.
    async fn high_water(
        &self,
        topic: &str,
        partition: u32,
        _since_ms: Option<i64>,
    ) -> Result<Option<u64>, ProcessorError> {
        let conn = self.conn.clone();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            Self::with_conn(&conn, |c| {
                c.query_row(
                    "SELECT high_water FROM bus_positions WHERE topic = ?1 AND partition = ?2",
                    params![topic, partition],
                    |r| r.get::<_, i64>(0),
                )
                .optional()
                .map(|hw| hw.map(|v| v as u64))
                .map_err(store)
            })
        })
        .await
        .map_err(|e| ProcessorError::Store(format!("sqlite task: {e}")))?
    }

    async fn insert(&self, batch: &Arc<Batch>) -> Result<(), ProcessorError> {
        let conn = self.conn.clone();
        let batch = batch.clone();
        tokio::task::spawn_blocking(move || Self::with_conn(&conn, |c| write_batch(c, &batch)))
            .await
            .map_err(|e| ProcessorError::Store(format!("sqlite task: {e}")))?
    }
}

/// A read-only query's answer: column names and rows of JSON values (integers and reals as
/// numbers, text as strings, NULL as null, blobs as hex strings).
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<serde_json::Value>>,
}

/// Runs one read-only statement against the store at `path` (`pitboss sql`). Writes are
/// refused by SQLite itself (the connection is opened read-only).
pub fn query(path: &Path, sql: &str, max_rows: usize) -> Result<Answer, ProcessorError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(store)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(store)?;
    let mut stmt = conn.prepare(sql).map_err(store)?;
    let columns: Vec<String> = stmt.column_names().map(str::to_owned).collect();
    let n = columns.len();
    let mut rows = Vec::new();
    let mut cursor = stmt.query([]).map_err(store)?;
    while let Some(row) = cursor.next().map_err(store)? {
        if rows.len() >= max_rows {
            return Err(ProcessorError::Store(format!(
                "more than {max_rows} rows: add a LIMIT or raise --max-rows"
            )));
        }
        let mut values = Vec::with_capacity(n);
        for i in 0..n {
            use rusqlite::types::ValueRef;
            values.push(match row.get_ref(i).map_err(store)? {
                ValueRef::Null => serde_json::Value::Null,
                ValueRef::Integer(v) => v.into(),
                ValueRef::Real(v) => v.into(),
                ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned().into(),
                ValueRef::Blob(b) => hex_of(b).into(),
            });
        }
        rows.push(values);
    }
    Ok(Answer { columns, rows })
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
