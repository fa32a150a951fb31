//! Storage of the embedded log: the SQLite schema, and the writer thread that owns the write
//! connection, group-commits appends, topic creation, offset commits and retention, and
//! answers each caller only after its transaction committed.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot};

use super::coordinator::{Coordinator, MemberRef};
use super::{EmbeddedConfig, TopicMeta, lock, now_ms, storage};
use crate::partition::partition_for;
use crate::{Ack, BusError, Headers, OutRecord, Partition, Position};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS topics (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    partitions INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS partitions (
    topic_id INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    PRIMARY KEY (topic_id, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    topic_id INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    headers BLOB,
    PRIMARY KEY (topic_id, partition, offset)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS group_offsets (
    grp TEXT NOT NULL,
    topic_id INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (grp, topic_id, partition)
) WITHOUT ROWID;
";

/// Creates the schema, and brings a log written by an older version up to it (the `headers`
/// column came with record headers).
pub(super) fn migrate(conn: &Connection) -> Result<(), BusError> {
    conn.execute_batch(SCHEMA).map_err(storage)?;
    let has_headers: bool = conn
        .query_row(
            "SELECT COUNT(*) > 0 FROM pragma_table_info('records') WHERE name = 'headers'",
            [],
            |r| r.get(0),
        )
        .map_err(storage)?;
    if !has_headers {
        conn.execute_batch("ALTER TABLE records ADD COLUMN headers BLOB")
            .map_err(storage)?;
    }
    Ok(())
}

/// Bytes a stored record counts against the retention size limit.
const RECORD_BYTES_SQL: &str = "length(key) + length(value) + COALESCE(length(headers), 0)";

/// Headers in the `headers` column: a count, then each name and value, each length-prefixed
/// (LEB128 varints). NULL when a record has none.
pub(super) fn encode_headers(headers: &Headers) -> Option<Vec<u8>> {
    if headers.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(headers.byte_len() + 4 * headers.len() + 2);
    put_varint(&mut out, headers.len() as u64);
    for (name, value) in headers.iter() {
        put_varint(&mut out, name.len() as u64);
        out.extend_from_slice(name.as_bytes());
        put_varint(&mut out, value.len() as u64);
        out.extend_from_slice(value);
    }
    Some(out)
}

/// Reads what [`encode_headers`] wrote.
pub(super) fn decode_headers(blob: Option<&[u8]>) -> Result<Headers, BusError> {
    let Some(mut buf) = blob else {
        return Ok(Headers::new());
    };
    let bad = || BusError::Storage("corrupt record headers".into());
    let count = take_varint(&mut buf).ok_or_else(bad)?;
    let mut headers = Headers::new();
    for _ in 0..count {
        let name = take_bytes(&mut buf).ok_or_else(bad)?;
        let name = std::str::from_utf8(name).map_err(|_| bad())?;
        let value = take_bytes(&mut buf).ok_or_else(bad)?;
        headers.insert(name, value);
    }
    if buf.is_empty() {
        Ok(headers)
    } else {
        Err(bad())
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn take_bytes<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(take_varint(buf)?).ok()?;
    if len > buf.len() {
        return None;
    }
    let (head, rest) = buf.split_at(len);
    *buf = rest;
    Some(head)
}

/// What the writer knows of one partition.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct PartState {
    /// Offset the next record gets.
    pub next: i64,
    /// Bytes held (retention by size).
    pub bytes: i64,
    /// Timestamp of the newest record: timestamps never go back within a partition, so a
    /// reader can find the first record at or after a time by bisection.
    pub last_ts: i64,
}

/// Delivers one op's outcome to its caller after the commit (None: it succeeded).
type Answer = Box<dyn FnOnce(Option<&BusError>)>;

pub(super) enum WriteOp {
    CreateTopic {
        name: String,
        partitions: u32,
        reply: oneshot::Sender<Result<TopicMeta, BusError>>,
    },
    Append {
        topic: TopicMeta,
        records: Vec<OutRecord>,
        reply: oneshot::Sender<Result<Vec<Ack>, BusError>>,
    },
    /// Commits next offsets (topic id, partition, next offset) of a group member, fenced by
    /// the partitions it still owns.
    Commit {
        member: MemberRef,
        offsets: Vec<(i64, Partition, i64)>,
        reply: oneshot::Sender<Result<(), BusError>>,
    },
    /// Runs retention; answers when done (if anyone is waiting).
    Retention { reply: Option<oneshot::Sender<()>> },
    /// Writes nothing: answers once a transaction holding the log's write lock committed (the
    /// readiness check: the writer can write now).
    Check {
        reply: oneshot::Sender<Result<(), BusError>>,
    },
}

/// Loads every partition's state from the database.
pub(super) fn load_partitions(
    conn: &Connection,
) -> Result<HashMap<(i64, u32), PartState>, BusError> {
    let mut out = HashMap::new();
    let mut stmt = conn
        .prepare("SELECT topic_id, partition, next_offset, bytes FROM partitions")
        .map_err(storage)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                (r.get::<_, i64>(0)?, r.get::<_, u32>(1)?),
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .map_err(storage)?;
    let mut last = conn
        .prepare("SELECT ts_ms FROM records WHERE topic_id=?1 AND partition=?2 ORDER BY offset DESC LIMIT 1")
        .map_err(storage)?;
    for row in rows {
        let (k, next, bytes) = row.map_err(storage)?;
        let last_ts = last
            .query_row(params![k.0, k.1], |r| r.get(0))
            .optional()
            .map_err(storage)?
            .unwrap_or(0);
        out.insert(
            k,
            PartState {
                next,
                bytes,
                last_ts,
            },
        );
    }
    Ok(out)
}

pub(super) struct Writer {
    pub conn: Connection,
    pub partitions: HashMap<(i64, u32), PartState>,
    pub config: EmbeddedConfig,
    pub coord: Arc<Mutex<Coordinator>>,
    /// Where readers look for what grew (`super::Tails`), and how they are woken.
    pub tails: Arc<super::Tails>,
    pub changed: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Writer {
    pub fn run(mut self, mut ops: mpsc::Receiver<WriteOp>) {
        while let Some(first) = ops.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < self.config.max_group_commit {
                match ops.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.execute(batch);
        }
    }

    /// Runs every op of the batch in one transaction and answers each after the commit.
    /// (A reply that cannot be delivered means the caller stopped waiting; the outcome stands.)
    fn execute(&mut self, batch: Vec<WriteOp>) {
        let before = self.partitions.clone();
        let mut answers: Vec<Answer> = Vec::with_capacity(batch.len());
        // Partitions appended to, or all of them (after a topic was created).
        let mut grown: Vec<(i64, u32)> = Vec::new();
        let mut created = false;
        let result = (|| -> Result<(), BusError> {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(storage)?;
            for op in batch {
                match op {
                    WriteOp::Append {
                        topic,
                        records,
                        reply,
                    } => {
                        let acks = append(&tx, &mut self.partitions, topic, records)?;
                        grown.extend(acks.iter().map(|a| (topic.id, a.partition)));
                        answers.push(Box::new(move |err| {
                            let _ = reply.send(match err {
                                None => Ok(acks),
                                Some(e) => Err(BusError::Storage(e.to_string())),
                            });
                        }));
                    }
                    WriteOp::CreateTopic {
                        name,
                        partitions,
                        reply,
                    } => {
                        let res = create_topic(&tx, &mut self.partitions, &name, partitions);
                        created = true;
                        answers.push(Box::new(move |err| {
                            let _ = reply.send(match err {
                                None => res,
                                Some(e) => Err(BusError::Storage(e.to_string())),
                            });
                        }));
                    }
                    WriteOp::Commit {
                        member,
                        offsets,
                        reply,
                    } => {
                        // Fenced: only partitions the member still owns are committed.
                        let owned = lock(&self.coord).owned_by(&member);
                        let mut stmt = tx
                            .prepare_cached("INSERT OR REPLACE INTO group_offsets (grp, topic_id, partition, next_offset) VALUES (?1, ?2, ?3, ?4)")
                            .map_err(storage)?;
                        for (topic_id, p, off) in
                            offsets.into_iter().filter(|(_, p, _)| owned.contains(p))
                        {
                            stmt.execute(params![member.group, topic_id, p, off])
                                .map_err(storage)?;
                        }
                        answers.push(Box::new(move |err| {
                            let _ = reply.send(match err {
                                None => Ok(()),
                                Some(e) => Err(BusError::Storage(e.to_string())),
                            });
                        }));
                    }
                    WriteOp::Check { reply } => {
                        answers.push(Box::new(move |err| {
                            let _ = reply.send(match err {
                                None => Ok(()),
                                Some(e) => Err(BusError::Storage(e.to_string())),
                            });
                        }));
                    }
                    WriteOp::Retention { reply } => {
                        retention(&tx, &mut self.partitions, &self.config)?;
                        answers.push(Box::new(move |_| {
                            if let Some(reply) = reply {
                                let _ = reply.send(());
                            }
                        }));
                    }
                }
            }
            tx.commit().map_err(storage)
        })();
        if result.is_err() {
            self.partitions = before;
        } else if created || !grown.is_empty() {
            // Readers first learn what grew, then are woken; both before any publisher hears
            // its records are stored, so what was acknowledged is always visible.
            {
                let mut tails = lock(&self.tails);
                if created {
                    tails.extend(self.partitions.iter().map(|(k, st)| (*k, st.next)));
                } else {
                    for k in grown {
                        if let Some(st) = self.partitions.get(&k) {
                            tails.insert(k, st.next);
                        }
                    }
                }
            }
            self.changed.send_modify(|v| *v = v.wrapping_add(1));
        }
        for answer in answers {
            answer(result.as_ref().err());
        }
        if let Err(e) = result {
            tracing::error!(error = %e, "embedded log transaction failed; its publishes were refused");
        }
    }
}

/// Deletes records past the age and size limits and updates the byte counts.
fn retention(
    tx: &rusqlite::Transaction<'_>,
    parts: &mut HashMap<(i64, u32), PartState>,
    config: &EmbeddedConfig,
) -> Result<(), BusError> {
    let cutoff = config
        .retention_age
        .map(|a| now_ms() - a.as_millis() as i64);
    for (&(topic_id, partition), state) in parts.iter_mut() {
        if let Some(cutoff) = cutoff {
            // A partition's timestamps never decrease with its offsets (`append` stamps each
            // record with the later of now and the previous stamp), so what is too old is a
            // prefix: walk it by the primary key from the oldest record and stop at the first
            // one to keep. Filtering on `ts_ms` alone (no index) read the whole partition on
            // the writer every `retention_interval`, holding every publish behind it for
            // seconds once the log held a few gigabytes.
            let mut stmt = tx
                .prepare_cached(&format!(
                    "DELETE FROM records WHERE topic_id=?1 AND partition=?2 AND offset < COALESCE(\
                       (SELECT offset FROM records WHERE topic_id=?1 AND partition=?2 AND ts_ms >= ?3 \
                        ORDER BY offset LIMIT 1), \
                       (SELECT next_offset FROM partitions WHERE topic_id=?1 AND partition=?2), 0) \
                     RETURNING {RECORD_BYTES_SQL}"
                ))
                .map_err(storage)?;
            let freed: i64 = stmt
                .query_map(params![topic_id, partition, cutoff], |r| r.get::<_, i64>(0))
                .map_err(storage)?
                .filter_map(Result::ok)
                .sum();
            state.bytes -= freed;
        }
        if let Some(max) = config.retention_bytes_per_partition {
            let excess = state.bytes - max as i64;
            if excess > 0 {
                // Walk the oldest records until enough bytes are covered, then delete them.
                let mut stmt = tx
                    .prepare_cached(&format!("SELECT offset, {RECORD_BYTES_SQL} FROM records WHERE topic_id=?1 AND partition=?2 ORDER BY offset"))
                    .map_err(storage)?;
                let mut rows = stmt.query(params![topic_id, partition]).map_err(storage)?;
                let (mut cut, mut freed) = (None, 0i64);
                while let Some(row) = rows.next().map_err(storage)? {
                    freed += row.get::<_, i64>(1).map_err(storage)?;
                    cut = Some(row.get::<_, i64>(0).map_err(storage)?);
                    if freed >= excess {
                        break;
                    }
                }
                drop(rows);
                if let Some(cut) = cut {
                    tx.execute(
                        "DELETE FROM records WHERE topic_id=?1 AND partition=?2 AND offset <= ?3",
                        params![topic_id, partition, cut],
                    )
                    .map_err(storage)?;
                    state.bytes -= freed;
                }
            }
        }
        tx.execute(
            "UPDATE partitions SET bytes=?3 WHERE topic_id=?1 AND partition=?2",
            params![topic_id, partition, state.bytes],
        )
        .map_err(storage)?;
    }
    Ok(())
}

fn create_topic(
    tx: &rusqlite::Transaction<'_>,
    parts: &mut HashMap<(i64, u32), PartState>,
    name: &str,
    partitions: u32,
) -> Result<TopicMeta, BusError> {
    let existing: Option<(i64, u32)> = tx
        .query_row(
            "SELECT id, partitions FROM topics WHERE name=?1",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(storage)?;
    if let Some((id, partitions)) = existing {
        return Ok(TopicMeta { id, partitions });
    }
    tx.execute(
        "INSERT INTO topics (name, partitions) VALUES (?1, ?2)",
        params![name, partitions],
    )
    .map_err(storage)?;
    let id = tx.last_insert_rowid();
    for p in 0..partitions {
        tx.execute(
            "INSERT INTO partitions (topic_id, partition, next_offset, bytes) VALUES (?1, ?2, 0, 0)",
            params![id, p],
        )
        .map_err(storage)?;
        parts.insert((id, p), PartState::default());
    }
    Ok(TopicMeta { id, partitions })
}

fn append(
    tx: &rusqlite::Transaction<'_>,
    parts: &mut HashMap<(i64, u32), PartState>,
    topic: TopicMeta,
    records: Vec<OutRecord>,
) -> Result<Vec<Ack>, BusError> {
    let now = now_ms();
    let mut acks = Vec::with_capacity(records.len());
    let mut insert = tx
        .prepare_cached("INSERT INTO records (topic_id, partition, offset, ts_ms, key, value, headers) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")
        .map_err(storage)?;
    let mut touched = BTreeSet::new();
    for r in records {
        let p = partition_for(&r.key, topic.partitions);
        let state = parts
            .get_mut(&(topic.id, p))
            .ok_or_else(|| BusError::UnknownTopic(format!("topic id {}", topic.id)))?;
        let offset = state.next;
        let ts = now.max(state.last_ts);
        let headers = encode_headers(&r.headers);
        insert
            .execute(params![topic.id, p, offset, ts, r.key, r.value, headers])
            .map_err(storage)?;
        state.next += 1;
        state.last_ts = ts;
        state.bytes += (r.key.len() + r.value.len() + headers.as_ref().map_or(0, Vec::len)) as i64;
        touched.insert(p);
        acks.push(Ack {
            partition: p,
            position: Position::Offset(offset),
        });
    }
    let mut update = tx
        .prepare_cached(
            "UPDATE partitions SET next_offset=?3, bytes=?4 WHERE topic_id=?1 AND partition=?2",
        )
        .map_err(storage)?;
    for p in touched {
        let s = parts[&(topic.id, p)];
        update
            .execute(params![topic.id, p, s.next, s.bytes])
            .map_err(storage)?;
    }
    Ok(acks)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn headers_round_trip_and_none_is_null() {
        assert_eq!(encode_headers(&Headers::new()), None);
        assert_eq!(decode_headers(None).unwrap(), Headers::new());
        let h = Headers::new()
            .with("pitboss-type", "bet_placed")
            .with("empty", "")
            .with("bin", vec![0u8, 255, 128])
            .with("long", vec![7u8; 300]);
        let blob = encode_headers(&h).unwrap();
        assert_eq!(decode_headers(Some(&blob)).unwrap(), h);
    }

    #[test]
    fn corrupt_headers_are_an_error_not_a_panic() {
        let blob = encode_headers(&Headers::new().with("a", "bcd")).unwrap();
        for cut in 0..blob.len() {
            assert!(decode_headers(Some(&blob[..cut])).is_err(), "cut at {cut}");
        }
        let mut long = blob.clone();
        long.push(0);
        assert!(decode_headers(Some(&long)).is_err());
        assert!(decode_headers(Some(&[0xff; 12])).is_err());
    }
}
