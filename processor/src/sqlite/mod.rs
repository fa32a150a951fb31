//! The embedded store of `pitboss up`: the same batches into SQLite (bundled, WAL), with the
//! same logical schema as ClickHouse and the per-minute rollups maintained in the same
//! transaction as the rows they summarise; one [`SqliteSink`] stores every table.
//!
//! One transaction per batch writes the rows ([`SqliteRow`]: events with their rollups folded
//! into `bets_per_minute` and `player_minutes`; alerts, pushes, deliveries and acks upserted by
//! their id) and moves the partition's high-water mark in `bus_positions`: a batch is in the
//! store with its rollups and its position, or not at all — exactly once, with no replay
//! window.
//!
//! Times are epoch seconds (`occurred_at`, `minute`, …) and milliseconds (`*_ms`); in SQL,
//! `datetime(minute, 'unixepoch')` shows one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::ProcessorError;
use crate::batch::Batch;
use crate::rows::StoredRow;
use crate::sink::Sink;

mod migrations;
mod read;
mod write;

pub use migrations::{MIGRATIONS, Migration};
pub use read::{ReadView, alert_origins, count_events, scan_events};
pub use write::SqliteRow;

/// Opens (creating if needed) the store at `path` and brings its schema up to date; returns
/// the connection and the versions this call applied. Safe when two processes open it at
/// once: the check and the migrations run in one write transaction.
pub fn open(path: &Path) -> Result<(Connection, Vec<u32>), ProcessorError> {
    let mut conn = Connection::open(path).map_err(store)?;
    // First: switching to WAL and the migration transaction both wait for other openers.
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(store)?;
    // WAL: readers (`pitboss sql`, the console) never block the writer. FULL: a commit is on
    // disk when it returns. The bus offsets are committed (fsynced) right after a batch's rows
    // and positions: with NORMAL an OS crash or power cut could roll the rows back while the
    // offsets stayed, and the bus would never deliver those records again. One fsync per batch
    // (a batch closes within a second), ~0.3 ms here.
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
    conn.pragma_update(None, "synchronous", "FULL")
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

pub(crate) fn store(e: rusqlite::Error) -> ProcessorError {
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

fn write_batch<R: StoredRow>(
    conn: &mut Connection,
    batch: &Batch<R>,
) -> Result<(), ProcessorError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(store)?;
    R::write(&tx, &batch.rows)?;
    if let Some((_, last)) = batch.offsets {
        // The record at the mark is the batch's last row's (the offsets are its rows').
        let last_id = batch.rows.last().map(StoredRow::id);
        tx.execute(
            "INSERT INTO bus_positions (topic, partition, high_water, last_id) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (topic, partition) DO UPDATE SET
                last_id = CASE WHEN excluded.high_water >= high_water
                          THEN excluded.last_id ELSE last_id END,
                high_water = max(high_water, excluded.high_water)",
            params![batch.topic, batch.partition, last as i64, last_id],
        )
        .map_err(store)?;
    }
    tx.commit().map_err(store)
}

#[async_trait]
impl<R: StoredRow> Sink<R> for SqliteSink {
    /// Positions are committed with the rows: nothing to record.
    fn records_intents(&self) -> bool {
        false
    }

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

    /// The id of the record at the partition's mark, kept with it (`bus_positions.last_id`):
    /// only for `offset` at the mark.
    async fn id_at(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        _since_ms: Option<i64>,
    ) -> Result<Option<String>, ProcessorError> {
        let conn = self.conn.clone();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            Self::with_conn(&conn, |c| {
                c.query_row(
                    "SELECT last_id FROM bus_positions \
                     WHERE topic = ?1 AND partition = ?2 AND high_water = ?3",
                    params![topic, partition, offset as i64],
                    |r| r.get::<_, Option<String>>(0),
                )
                .optional()
                .map(Option::flatten)
                .map_err(store)
            })
        })
        .await
        .map_err(|e| ProcessorError::Store(format!("sqlite task: {e}")))?
    }

    async fn insert(&self, batch: &Arc<Batch<R>>) -> Result<(), ProcessorError> {
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

/// Runs one read-only statement against the store at `path` (`pitboss sql`). Writes to the
/// store are refused by SQLite itself (the connection is opened read-only), and so is every
/// statement SQLite does not call read-only: `VACUUM INTO` (a copy of the store, players' IP
/// addresses and all, in a file of its own), temporary tables, `PRAGMA` settings.
pub fn query(path: &Path, sql: &str, max_rows: usize) -> Result<Answer, ProcessorError> {
    query_with(path, sql, &[], max_rows)
}

/// A value bound to a parameter of [`query_with`].
pub use rusqlite::types::Value as SqlValue;

/// [`query`] with values bound to its `?1`, `?2`… parameters.
pub fn query_with(
    path: &Path,
    sql: &str,
    params: &[SqlValue],
    max_rows: usize,
) -> Result<Answer, ProcessorError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(store)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(store)?;
    let mut stmt = conn.prepare(sql).map_err(store)?;
    if !stmt.readonly() {
        return Err(ProcessorError::Store(
            "attempt to write a readonly database: only statements that read are run here \
             (SELECT, WITH, EXPLAIN; not VACUUM INTO, CREATE TEMP, or PRAGMA settings)"
                .into(),
        ));
    }
    let columns: Vec<String> = stmt.column_names().map(str::to_owned).collect();
    let n = columns.len();
    let mut rows = Vec::new();
    let mut cursor = stmt
        .query(rusqlite::params_from_iter(params.iter()))
        .map_err(store)?;
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
