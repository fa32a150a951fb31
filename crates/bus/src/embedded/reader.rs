//! Reading the embedded log: where a start (earliest, latest, a time) falls in a partition,
//! the fetch shared by group members and readers, and the ungrouped [`EmbeddedReader`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::watch;

use super::storage::decode_headers;
use super::{Inner, lock, storage};
use crate::{BusError, Partition, Position, ReadFrom, Reader, Record};

/// One partition of one topic being read, and the next offset to fetch.
#[derive(Debug, Clone)]
pub(super) struct Cursor {
    pub topic: Arc<str>,
    pub topic_id: i64,
    pub partition: Partition,
    pub next: i64,
}

/// The offset the next record appended to a partition gets.
pub(super) fn end_offset(conn: &Connection, topic_id: i64, p: Partition) -> Result<i64, BusError> {
    conn.prepare_cached("SELECT next_offset FROM partitions WHERE topic_id=?1 AND partition=?2")
        .and_then(|mut s| s.query_row(params![topic_id, p], |r| r.get(0)))
        .optional()
        .map_err(storage)
        .map(Option::unwrap_or_default)
}

/// The timestamp of the first record at or after `offset`, if any.
fn ts_from(
    conn: &Connection,
    topic_id: i64,
    p: Partition,
    offset: i64,
) -> Result<Option<i64>, BusError> {
    conn.prepare_cached("SELECT ts_ms FROM records WHERE topic_id=?1 AND partition=?2 AND offset >= ?3 ORDER BY offset LIMIT 1")
        .and_then(|mut s| s.query_row(params![topic_id, p, offset], |r| r.get(0)).optional())
        .map_err(storage)
}

/// The offset of the first record stored at or after `ts_ms` (the end offset when none is).
/// Timestamps never go back within a partition (the writer keeps them monotonic), so this
/// bisects with index lookups instead of scanning.
pub(super) fn offset_at_time(
    conn: &Connection,
    topic_id: i64,
    p: Partition,
    ts_ms: i64,
) -> Result<i64, BusError> {
    let (mut lo, mut hi) = (0i64, end_offset(conn, topic_id, p)?);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match ts_from(conn, topic_id, p, mid)? {
            Some(ts) if ts >= ts_ms => hi = mid,
            Some(_) => lo = mid + 1,
            // Nothing at or after mid: everything before is older.
            None => return Ok(hi),
        }
    }
    Ok(lo)
}

/// The next offset to fetch for a reader start.
pub(super) fn resolve(
    conn: &Connection,
    topic_id: i64,
    p: Partition,
    from: &ReadFrom,
) -> Result<i64, BusError> {
    let offset = |pos: &Position| match pos {
        Position::Offset(o) => Ok(*o),
        other => Err(BusError::Config(format!(
            "not an embedded-log offset: {other}"
        ))),
    };
    Ok(match from {
        // Offsets below the earliest retained record simply find nothing before it.
        ReadFrom::Earliest => 0,
        ReadFrom::Latest => end_offset(conn, topic_id, p)?,
        ReadFrom::Timestamp(ts) => offset_at_time(conn, topic_id, p, *ts)?,
        ReadFrom::At(pos) => offset(pos)?,
        ReadFrom::After(pos) => offset(pos)?.saturating_add(1),
    })
}

/// Up to `max` records from the cursors, starting with the one at `start` (round robin, so
/// no partition starves), and moves the cursors past what was read.
pub(super) fn fetch(
    conn: &Connection,
    cursors: &mut [Cursor],
    start: usize,
    max: usize,
) -> Result<Vec<Record>, BusError> {
    let mut out = Vec::new();
    if cursors.is_empty() {
        return Ok(out);
    }
    let mut stmt = conn
        .prepare_cached("SELECT offset, ts_ms, key, value, headers FROM records WHERE topic_id=?1 AND partition=?2 AND offset >= ?3 ORDER BY offset LIMIT ?4")
        .map_err(storage)?;
    let n = cursors.len();
    for i in 0..n {
        let left = max.saturating_sub(out.len());
        if left == 0 {
            break;
        }
        let c = &mut cursors[(start + i) % n];
        let mut rows = stmt
            .query(params![c.topic_id, c.partition, c.next, left as i64])
            .map_err(storage)?;
        while let Some(row) = rows.next().map_err(storage)? {
            let offset: i64 = row.get(0).map_err(storage)?;
            let headers = decode_headers(
                row.get_ref(4)
                    .map_err(storage)?
                    .as_blob_or_null()
                    .map_err(storage)?,
            )?;
            out.push(Record {
                topic: c.topic.clone(),
                partition: c.partition,
                position: Position::Offset(offset),
                timestamp_ms: row.get(1).map_err(storage)?,
                key: row.get(2).map_err(storage)?,
                value: row.get(3).map_err(storage)?,
                headers,
            });
            c.next = offset + 1;
        }
    }
    Ok(out)
}

/// Runs `f` on a connection off the async threads.
pub(super) async fn blocking<T: Send + 'static>(
    conn: &Arc<Mutex<Connection>>,
    f: impl FnOnce(&Connection) -> Result<T, BusError> + Send + 'static,
) -> Result<T, BusError> {
    let conn = conn.clone();
    tokio::task::spawn_blocking(move || f(&lock(&conn)))
        .await
        .map_err(storage)?
}

/// Waits until the log changed or `deadline`; false when the deadline passed.
pub(super) async fn wait_for_change(
    changed: &mut watch::Receiver<u64>,
    deadline: tokio::time::Instant,
) -> bool {
    let now = tokio::time::Instant::now();
    if now >= deadline {
        return false;
    }
    // Re-check at least once a second (revoke deadlines of group members).
    let nap = (deadline - now).min(Duration::from_secs(1));
    // Either a change arrived or the nap ended: both mean "look again".
    let _ = tokio::time::timeout(nap, changed.changed()).await;
    true
}

/// Reads chosen partitions of one topic without a group: it keeps its positions in memory
/// only, so dropping it leaves nothing behind.
#[derive(Debug)]
pub struct EmbeddedReader {
    conn: Arc<Mutex<Connection>>,
    cursors: Vec<Cursor>,
    /// Per partition: the end offset when the reader opened.
    ends: BTreeMap<Partition, i64>,
    /// Per partition: the newest record's position when the reader opened.
    newest: BTreeMap<Partition, Option<Position>>,
    changed: watch::Receiver<u64>,
    /// The log's end offsets and fetch count (not the log itself: a reader does not keep it
    /// open).
    tails: Arc<super::Tails>,
    fetches: Arc<std::sync::atomic::AtomicU64>,
    turn: usize,
}

impl EmbeddedReader {
    pub(super) async fn open(
        inner: Arc<Inner>,
        topic: &str,
        starts: Vec<(Partition, ReadFrom)>,
    ) -> Result<Self, BusError> {
        let meta = inner.topic(topic)?;
        if starts.is_empty() {
            return Err(BusError::Config(format!(
                "a reader of {topic:?} needs at least one partition"
            )));
        }
        let mut seen = BTreeSet::new();
        for (p, _) in &starts {
            if *p >= meta.partitions {
                return Err(BusError::Config(format!(
                    "topic {topic:?} has {} partitions; there is no partition {p}",
                    meta.partitions
                )));
            }
            if !seen.insert(*p) {
                return Err(BusError::Config(format!("partition {p} given twice")));
            }
        }
        let changed = inner.changed.subscribe();
        let conn = Arc::new(Mutex::new(inner.reader()?));
        let topic: Arc<str> = Arc::from(topic);
        let id = meta.id;
        let name = topic.clone();
        let (cursors, ends, newest) = blocking(&conn, move |conn| {
            let mut cursors = Vec::with_capacity(starts.len());
            let (mut ends, mut newest) = (BTreeMap::new(), BTreeMap::new());
            for (p, from) in starts {
                let end = end_offset(conn, id, p)?;
                let last = end - 1;
                let stored = last >= 0 && ts_from(conn, id, p, last)?.is_some();
                ends.insert(p, end);
                newest.insert(p, stored.then_some(Position::Offset(last)));
                cursors.push(Cursor {
                    topic: name.clone(),
                    topic_id: id,
                    partition: p,
                    next: resolve(conn, id, p, &from)?,
                });
            }
            Ok((cursors, ends, newest))
        })
        .await?;
        Ok(EmbeddedReader {
            conn,
            cursors,
            ends,
            newest,
            changed,
            tails: inner.tails.clone(),
            fetches: inner.fetches.clone(),
            turn: 0,
        })
    }
}

#[async_trait]
impl Reader for EmbeddedReader {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, BusError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            self.changed.borrow_and_update();
            if max == 0 {
                return Ok(Vec::new());
            }
            if super::may_have_records(&self.tails, &self.fetches, &self.cursors) {
                let mut cursors = self.cursors.clone();
                let start = self.turn;
                self.turn = self.turn.wrapping_add(1);
                let (cursors, records) = blocking(&self.conn, move |conn| {
                    let records = fetch(conn, &mut cursors, start, max)?;
                    Ok((cursors, records))
                })
                .await?;
                self.cursors = cursors;
                if !records.is_empty() {
                    return Ok(records);
                }
            }
            if !wait_for_change(&mut self.changed, deadline).await {
                return Ok(Vec::new());
            }
        }
    }

    fn partitions(&self) -> Vec<Partition> {
        self.cursors.iter().map(|c| c.partition).collect()
    }

    fn end_positions(&self) -> BTreeMap<Partition, Option<Position>> {
        self.newest.clone()
    }

    fn caught_up(&self) -> bool {
        self.cursors
            .iter()
            .all(|c| c.next >= self.ends.get(&c.partition).copied().unwrap_or(0))
    }
}
