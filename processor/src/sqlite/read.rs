//! Reading stored events back (the rules backtest): streamed in the order they were received,
//! never all in memory.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, params};

use super::store;
use crate::ProcessorError;
use crate::rows::{AlertOrigin, StoredEnd, StoredEvent};

fn open_read_only(path: &Path) -> Result<Connection, ProcessorError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(store)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(store)?;
    Ok(conn)
}

const RANGE: &str =
    "received_at_ms >= ?1 AND received_at_ms < ?2 AND (?3 IS NULL OR tenant_id = ?3)";

/// How many events were received in `[from_ms, to_ms)` (of `tenant`, or all).
pub fn count_events(
    path: &Path,
    from_ms: i64,
    to_ms: i64,
    tenant: Option<&str>,
) -> Result<u64, ProcessorError> {
    let conn = open_read_only(path)?;
    let n: i64 = conn
        .query_row(
            &format!("SELECT count(*) FROM events WHERE {RANGE}"),
            params![from_ms, to_ms, tenant],
            |r| r.get(0),
        )
        .map_err(store)?;
    Ok(n.max(0) as u64)
}

/// Calls `f` with each event received in `[from_ms, to_ms)` (of `tenant`, or all), in
/// [`StoredEvent::REPLAY_ORDER`] (received, then as on the bus), rebuilt by [`StoredEvent::to_event`]: a row that is not
/// a valid event is passed as `Err` with the reason. Rows are streamed from one read
/// transaction (a consistent view; `pitboss up` keeps writing meanwhile).
pub fn scan_events(
    path: &Path,
    from_ms: i64,
    to_ms: i64,
    tenant: Option<&str>,
    mut f: impl FnMut(Result<pitboss_model::Event, String>),
) -> Result<u64, ProcessorError> {
    let conn = open_read_only(path)?;
    scan_rows(&conn, from_ms, to_ms, tenant, |row| {
        f(row.and_then(|r| r.to_event()));
    })
}

/// What the stored alert `alert_id` fired on (of `tenant`, or of every tenant holding an alert
/// of that id: ids derive from the trigger's event id, which is unique only within a tenant).
pub fn alert_origins(
    path: &Path,
    alert_id: &str,
    tenant: Option<&str>,
) -> Result<Vec<AlertOrigin>, ProcessorError> {
    let conn = open_read_only(path)?;
    let mut stmt = conn
        .prepare(
            "SELECT DISTINCT tenant_id, rule_id, rule_version, group_by, group_key, player_id \
             FROM alerts WHERE alert_id = ?1 AND (?2 IS NULL OR tenant_id = ?2) \
             ORDER BY tenant_id",
        )
        .map_err(store)?;
    stmt.query_map(params![alert_id, tenant], |r| {
        Ok(AlertOrigin {
            tenant_id: r.get(0)?,
            rule_id: r.get(1)?,
            rule_version: r.get::<_, i64>(2)?.clamp(0, i64::from(u32::MAX)) as u32,
            group_by: r.get(3)?,
            group_key: r.get(4)?,
            player_id: r.get(5)?,
        })
    })
    .map_err(store)?
    .collect::<Result<_, _>>()
    .map_err(store)
}

/// One consistent view of the store (a read transaction, begun at its first read): where its
/// events end on the bus, and its events, as of the same instant however `pitboss up` writes
/// meanwhile (`pitboss rules warm`).
#[derive(Debug)]
pub struct ReadView {
    conn: Connection,
}

impl ReadView {
    pub fn open(path: &Path) -> Result<ReadView, ProcessorError> {
        let conn = open_read_only(path)?;
        conn.execute_batch("BEGIN").map_err(store)?;
        Ok(ReadView { conn })
    }

    /// Per `(bus topic, partition)`, where its stored events end.
    pub fn ends(&self) -> Result<Vec<StoredEnd>, ProcessorError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT bus_topic, bus_partition, max(bus_offset), count(DISTINCT event_id) \
                 FROM events GROUP BY bus_topic, bus_partition ORDER BY bus_topic, bus_partition",
            )
            .map_err(store)?;
        stmt.query_map([], |r| {
            Ok(StoredEnd {
                topic: r.get(0)?,
                partition: r.get::<_, i64>(1)?.clamp(0, i64::from(u32::MAX)) as u32,
                newest: r.get::<_, i64>(2)?.max(0) as u64,
                events: r.get::<_, i64>(3)?.max(0) as u64,
            })
        })
        .map_err(store)?
        .collect::<Result<_, _>>()
        .map_err(store)
    }

    /// When the event stored at `offset` of `topic`'s `partition` was received (ms).
    pub fn received_at(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> Result<Option<i64>, ProcessorError> {
        self.conn
            .query_row(
                "SELECT max(received_at_ms) FROM events \
                 WHERE bus_topic = ?1 AND bus_partition = ?2 AND bus_offset = ?3",
                params![
                    topic,
                    i64::from(partition),
                    i64::try_from(offset).unwrap_or(i64::MAX)
                ],
                |r| r.get(0),
            )
            .map_err(store)
    }

    /// Calls `f` with each stored row received from `from_ms` on, in
    /// [`StoredEvent::REPLAY_ORDER`]; a row that cannot be read is passed as `Err`.
    pub fn scan(
        &self,
        from_ms: i64,
        f: impl FnMut(Result<StoredEvent, String>),
    ) -> Result<u64, ProcessorError> {
        scan_rows(&self.conn, from_ms, i64::MAX, None, f)
    }
}

/// Calls `f` with each stored row received in `[from_ms, to_ms)` (of `tenant`, or all), in
/// [`StoredEvent::REPLAY_ORDER`]; a row that cannot be read is passed as `Err` with the reason.
fn scan_rows(
    conn: &Connection,
    from_ms: i64,
    to_ms: i64,
    tenant: Option<&str>,
    mut f: impl FnMut(Result<StoredEvent, String>),
) -> Result<u64, ProcessorError> {
    // A store last written before version 6 (opened read-only: not migrated here) has no
    // `utc_offset_min`: read as none.
    let has_offset: bool = conn
        .query_row(
            "SELECT count(*) > 0 FROM pragma_table_info('events') WHERE name = 'utc_offset_min'",
            [],
            |r| r.get(0),
        )
        .map_err(store)?;
    let columns = if has_offset {
        StoredEvent::COLUMNS.to_owned()
    } else {
        StoredEvent::columns_without_offset("NULL")
    };
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {columns} FROM events WHERE {RANGE} ORDER BY {}",
            StoredEvent::REPLAY_ORDER
        ))
        .map_err(store)?;
    let mut rows = stmt.query(params![from_ms, to_ms, tenant]).map_err(store)?;
    let mut n = 0u64;
    while let Some(r) = rows.next().map_err(store)? {
        n += 1;
        let row = (|| -> rusqlite::Result<StoredEvent> {
            Ok(StoredEvent {
                tenant_id: r.get(0)?,
                event_id: r.get(1)?,
                player_id: r.get(2)?,
                session_id: r.get(3)?,
                kind: r.get(4)?,
                occurred_at_ms: r.get::<_, i64>(5)?.max(0) as u64,
                received_at_ms: r.get::<_, i64>(6)?.max(0) as u64,
                schema_version: r.get(7)?,
                late: r.get(8)?,
                payload: r.get(9)?,
                utc_offset_min: r.get(10)?,
                bus_topic: r.get(11)?,
                bus_partition: r.get::<_, i64>(12)?.clamp(0, i64::from(u32::MAX)) as u32,
                bus_offset: r.get::<_, i64>(13)?.max(0) as u64,
            })
        })();
        f(row.map_err(|e| format!("row {n}: {e}")));
    }
    Ok(n)
}
