//! Embedded durable log for the one-process mode, stored in SQLite (WAL).
//!
//! - Partitioned topics; a record's partition is [`partition_for`] of its key.
//! - One writer thread owns the write connection and *group-commits*: every publish waiting
//!   when a transaction starts goes into that transaction, so one fsync covers many batches.
//!   A publish resolves only after its transaction committed (with `Durability::Fsync`, after
//!   the WAL was fsynced), so what was acknowledged survives `kill -9` and power loss.
//! - Consumer groups are coordinated in process: members split partitions (sticky), moves are
//!   cooperative (the old owner sees [`Delivery::Revoking`], commits, then the new owner sees
//!   [`Delivery::Assigned`]), and committed offsets live in the same database.
//! - Retention by age and by size per partition, enforced by the writer thread.
//!
//! One process owns a log directory at a time (an exclusive lock on `LOCK`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot, watch};

use crate::partition::partition_for;
use crate::{
    Ack, Bus, BusError, Consumer, ConsumerConfig, Delivery, OutRecord, Partition, Position,
    Publisher, Record,
};

/// Delivers one op's outcome to its caller after the commit (None: it succeeded).
type Answer = Box<dyn FnOnce(Option<&BusError>)>;

/// How hard a commit pushes data to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync the WAL on every commit: acknowledged records survive power loss.
    Fsync,
    /// No fsync: acknowledged records survive a process crash (`kill -9`), not power loss.
    ProcessCrash,
}

/// Settings of an embedded log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedConfig {
    pub durability: Durability,
    /// Records older than this are deleted (None: keep forever).
    pub retention_age: Option<Duration>,
    /// Oldest records of a partition are deleted while it holds more bytes than this.
    pub retention_bytes_per_partition: Option<u64>,
    /// How often retention runs.
    pub retention_interval: Duration,
    /// Most publish requests merged into one transaction.
    pub max_group_commit: usize,
    /// Largest record (key + value) accepted, like Kafka's `message.max.bytes`.
    pub max_record_bytes: usize,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            durability: Durability::Fsync,
            retention_age: Some(Duration::from_secs(7 * 24 * 3600)),
            retention_bytes_per_partition: Some(1 << 30),
            retention_interval: Duration::from_secs(60),
            max_group_commit: 512,
            max_record_bytes: 1_000_000,
        }
    }
}

fn storage<E: std::fmt::Display>(e: E) -> BusError {
    BusError::Storage(e.to_string())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

const SCHEMA: &str = "
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

/// An embedded durable log in a directory. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EmbeddedBus {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db_path: PathBuf,
    max_record_bytes: usize,
    ops: mpsc::Sender<WriteOp>,
    topics: Mutex<HashMap<String, TopicMeta>>,
    coord: Arc<Mutex<Coordinator>>,
    changed: watch::Sender<u64>,
    _lock: File,
}

#[derive(Debug, Clone, Copy)]
struct TopicMeta {
    id: i64,
    partitions: u32,
}

enum WriteOp {
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
    Commit {
        member: MemberRef,
        offsets: Vec<(Partition, i64)>,
        reply: oneshot::Sender<Result<(), BusError>>,
    },
    /// Runs retention; answers when done (if anyone is waiting).
    Retention { reply: Option<oneshot::Sender<()>> },
}

impl EmbeddedBus {
    /// Opens (or creates) the log in `dir`.
    pub fn open(dir: impl AsRef<Path>, config: EmbeddedConfig) -> Result<Self, BusError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(storage)?;
        let lock = File::create(dir.join("LOCK")).map_err(storage)?;
        lock.try_lock().map_err(|e| {
            BusError::Config(format!(
                "{} is in use by another process: {e}",
                dir.display()
            ))
        })?;
        let db_path = dir.join("log.sqlite");
        let conn = Connection::open(&db_path).map_err(storage)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(storage)?;
        let sync = match config.durability {
            Durability::Fsync => "FULL",
            Durability::ProcessCrash => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync)
            .map_err(storage)?;
        conn.execute_batch(SCHEMA).map_err(storage)?;

        let mut topics = HashMap::new();
        let mut next = HashMap::new();
        {
            let mut stmt = conn
                .prepare("SELECT id, name, partitions FROM topics")
                .map_err(storage)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, u32>(2)?,
                    ))
                })
                .map_err(storage)?;
            for row in rows {
                let (id, name, partitions) = row.map_err(storage)?;
                topics.insert(name, TopicMeta { id, partitions });
            }
            let mut stmt = conn
                .prepare("SELECT topic_id, partition, next_offset, bytes FROM partitions")
                .map_err(storage)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        (r.get::<_, i64>(0)?, r.get::<_, u32>(1)?),
                        (r.get::<_, i64>(2)?, r.get::<_, i64>(3)?),
                    ))
                })
                .map_err(storage)?;
            for row in rows {
                let (k, v) = row.map_err(storage)?;
                next.insert(k, v);
            }
        }

        let (ops_tx, ops_rx) = mpsc::channel(4096);
        let (changed, _) = watch::channel(0u64);
        let coord = Arc::new(Mutex::new(Coordinator::default()));
        let writer = Writer {
            conn,
            partitions: next,
            config: config.clone(),
            coord: coord.clone(),
        };
        std::thread::Builder::new()
            .name("pitboss-log-writer".into())
            .spawn(move || writer.run(ops_rx))
            .map_err(storage)?;

        let inner = Arc::new(Inner {
            db_path,
            max_record_bytes: config.max_record_bytes,
            ops: ops_tx,
            topics: Mutex::new(topics),
            coord,
            changed,
            _lock: lock,
        });
        spawn_retention(Arc::downgrade(&inner), config.retention_interval)?;
        Ok(EmbeddedBus { inner })
    }

    /// Runs retention now (it also runs every `retention_interval`).
    pub async fn enforce_retention(&self) -> Result<(), BusError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .ops
            .send(WriteOp::Retention { reply: Some(reply) })
            .await
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())
    }

    /// Earliest retained offset of each partition of `topic` (next offset when empty).
    pub fn earliest_offsets(&self, topic: &str) -> Result<Vec<i64>, BusError> {
        let meta = self.inner.topic(topic)?;
        let conn = self.inner.reader()?;
        (0..meta.partitions)
            .map(|p| {
                conn.query_row(
                    "SELECT COALESCE((SELECT MIN(offset) FROM records WHERE topic_id=?1 AND partition=?2),
                            (SELECT next_offset FROM partitions WHERE topic_id=?1 AND partition=?2), 0)",
                    params![meta.id, p],
                    |r| r.get(0),
                )
                .map_err(storage)
            })
            .collect()
    }
}

fn closed() -> BusError {
    BusError::Unavailable("embedded log writer has stopped".into())
}

fn spawn_retention(inner: Weak<Inner>, every: Duration) -> Result<(), BusError> {
    std::thread::Builder::new()
        .name("pitboss-log-retention".into())
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                let Some(inner) = inner.upgrade() else { return };
                if inner
                    .ops
                    .blocking_send(WriteOp::Retention { reply: None })
                    .is_err()
                {
                    return;
                }
            }
        })
        .map(|_| ())
        .map_err(storage)
}

impl Inner {
    fn topic(&self, name: &str) -> Result<TopicMeta, BusError> {
        lock(&self.topics)
            .get(name)
            .copied()
            .ok_or_else(|| BusError::UnknownTopic(name.into()))
    }

    fn reader(&self) -> Result<Connection, BusError> {
        let conn = Connection::open_with_flags(
            &self.db_path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(storage)?;
        conn.pragma_update(None, "query_only", true)
            .map_err(storage)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(storage)?;
        Ok(conn)
    }

    fn notify(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave their maps half-updated in a way that
    // matters more than stopping would; keep serving.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Writer {
    conn: Connection,
    /// (topic id, partition) -> (next offset, bytes held)
    partitions: HashMap<(i64, u32), (i64, i64)>,
    config: EmbeddedConfig,
    coord: Arc<Mutex<Coordinator>>,
}

impl Writer {
    fn run(mut self, mut ops: mpsc::Receiver<WriteOp>) {
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
                        for (p, off) in offsets.into_iter().filter(|(p, _)| owned.contains(p)) {
                            stmt.execute(params![member.group, member.topic_id, p, off])
                                .map_err(storage)?;
                        }
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
    parts: &mut HashMap<(i64, u32), (i64, i64)>,
    config: &EmbeddedConfig,
) -> Result<(), BusError> {
    let cutoff = config
        .retention_age
        .map(|a| now_ms() - a.as_millis() as i64);
    for (&(topic_id, partition), state) in parts.iter_mut() {
        if let Some(cutoff) = cutoff {
            let mut stmt = tx
                    .prepare_cached("DELETE FROM records WHERE topic_id=?1 AND partition=?2 AND ts_ms < ?3 RETURNING length(key) + length(value)")
                    .map_err(storage)?;
            let freed: i64 = stmt
                .query_map(params![topic_id, partition, cutoff], |r| r.get::<_, i64>(0))
                .map_err(storage)?
                .filter_map(Result::ok)
                .sum();
            state.1 -= freed;
        }
        if let Some(max) = config.retention_bytes_per_partition {
            let excess = state.1 - max as i64;
            if excess > 0 {
                // Walk the oldest records until enough bytes are covered, then delete them.
                let mut stmt = tx
                        .prepare_cached("SELECT offset, length(key) + length(value) FROM records WHERE topic_id=?1 AND partition=?2 ORDER BY offset")
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
                    state.1 -= freed;
                }
            }
        }
        tx.execute(
            "UPDATE partitions SET bytes=?3 WHERE topic_id=?1 AND partition=?2",
            params![topic_id, partition, state.1],
        )
        .map_err(storage)?;
    }
    Ok(())
}

fn create_topic(
    tx: &rusqlite::Transaction<'_>,
    parts: &mut HashMap<(i64, u32), (i64, i64)>,
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
        parts.insert((id, p), (0, 0));
    }
    Ok(TopicMeta { id, partitions })
}

fn append(
    tx: &rusqlite::Transaction<'_>,
    parts: &mut HashMap<(i64, u32), (i64, i64)>,
    topic: TopicMeta,
    records: Vec<OutRecord>,
) -> Result<Vec<Ack>, BusError> {
    let ts = now_ms();
    let mut acks = Vec::with_capacity(records.len());
    let mut insert = tx
        .prepare_cached("INSERT INTO records (topic_id, partition, offset, ts_ms, key, value) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
        .map_err(storage)?;
    let mut touched = BTreeSet::new();
    for r in records {
        let p = partition_for(&r.key, topic.partitions);
        let state = parts
            .get_mut(&(topic.id, p))
            .ok_or_else(|| BusError::UnknownTopic(format!("topic id {}", topic.id)))?;
        let offset = state.0;
        insert
            .execute(params![topic.id, p, offset, ts, r.key, r.value])
            .map_err(storage)?;
        state.0 += 1;
        state.1 += (r.key.len() + r.value.len()) as i64;
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
        let (next, bytes) = parts[&(topic.id, p)];
        update
            .execute(params![topic.id, p, next, bytes])
            .map_err(storage)?;
    }
    Ok(acks)
}

#[async_trait]
impl Publisher for EmbeddedBus {
    async fn publish(&self, topic: &str, records: Vec<OutRecord>) -> Result<Vec<Ack>, BusError> {
        let meta = self.inner.topic(topic)?;
        if records.is_empty() {
            return Ok(Vec::new());
        }
        if let Some((i, r)) = records
            .iter()
            .enumerate()
            .find(|(_, r)| r.key.len() + r.value.len() > self.inner.max_record_bytes)
        {
            return Err(BusError::Rejected(format!(
                "record {i} has {} bytes; the limit is {}",
                r.key.len() + r.value.len(),
                self.inner.max_record_bytes
            )));
        }
        let (reply, rx) = oneshot::channel();
        self.inner
            .ops
            .send(WriteOp::Append {
                topic: meta,
                records,
                reply,
            })
            .await
            .map_err(|_| closed())?;
        let acks = rx.await.map_err(|_| closed())??;
        self.inner.notify();
        Ok(acks)
    }

    async fn check(&self) -> Result<(), BusError> {
        if self.inner.ops.is_closed() {
            Err(closed())
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Bus for EmbeddedBus {
    async fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), BusError> {
        if topic.is_empty() || partitions == 0 {
            return Err(BusError::Config(
                "a topic needs a name and at least one partition".into(),
            ));
        }
        let (reply, rx) = oneshot::channel();
        self.inner
            .ops
            .send(WriteOp::CreateTopic {
                name: topic.into(),
                partitions,
                reply,
            })
            .await
            .map_err(|_| closed())?;
        let meta = rx.await.map_err(|_| closed())??;
        lock(&self.inner.topics).insert(topic.into(), meta);
        Ok(())
    }

    fn publisher(&self) -> Arc<dyn Publisher> {
        Arc::new(self.clone())
    }

    async fn consumer(
        &self,
        group: &str,
        topic: &str,
        config: ConsumerConfig,
    ) -> Result<Box<dyn Consumer>, BusError> {
        let meta = self.inner.topic(topic)?;
        let member = lock(&self.inner.coord).join(group, meta, config.revoke_timeout);
        self.inner.notify();
        let reader = self.inner.reader()?;
        Ok(Box::new(EmbeddedConsumer {
            changed: self.inner.changed.subscribe(),
            inner: self.inner.clone(),
            member,
            reader: Arc::new(Mutex::new(reader)),
            positions: BTreeMap::new(),
            stored: BTreeMap::new(),
            releasing: Vec::new(),
            cursor: 0,
            left: false,
            topic: topic.to_owned(),
            processed: BTreeMap::new(),
            lag_reported: None,
        }))
    }
}

/// Identifies one member of one group on one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MemberRef {
    group: String,
    topic_id: i64,
    id: u64,
}

#[derive(Debug, Default)]
struct Coordinator {
    groups: HashMap<(String, i64), Group>,
    next_member: u64,
}

#[derive(Debug)]
struct Group {
    owner: Vec<Option<u64>>,
    members: BTreeMap<u64, Member>,
    revoke_timeout: Duration,
}

#[derive(Debug, Default)]
struct Member {
    /// Partitions to give up, not yet told to the consumer.
    revoke_pending: BTreeSet<Partition>,
    /// Partitions the consumer was told to give up and has not released yet.
    revoking: BTreeSet<Partition>,
    /// Partitions newly granted, not yet told to the consumer.
    granted: BTreeSet<Partition>,
    /// When a revoke must be finished by.
    revoke_deadline: Option<Instant>,
}

impl Coordinator {
    fn join(&mut self, group: &str, topic: TopicMeta, revoke_timeout: Duration) -> MemberRef {
        self.next_member += 1;
        let id = self.next_member;
        let g = self
            .groups
            .entry((group.to_owned(), topic.id))
            .or_insert_with(|| Group {
                owner: vec![None; topic.partitions as usize],
                members: BTreeMap::new(),
                revoke_timeout,
            });
        g.members.insert(id, Member::default());
        g.rebalance();
        MemberRef {
            group: group.to_owned(),
            topic_id: topic.id,
            id,
        }
    }

    fn group(&mut self, m: &MemberRef) -> Option<&mut Group> {
        self.groups.get_mut(&(m.group.clone(), m.topic_id))
    }

    fn leave(&mut self, m: &MemberRef) {
        if let Some(g) = self.group(m) {
            g.members.remove(&m.id);
            for o in g.owner.iter_mut() {
                if *o == Some(m.id) {
                    *o = None;
                }
            }
            g.rebalance();
        }
    }

    fn release(&mut self, m: &MemberRef, parts: &[Partition]) {
        if let Some(g) = self.group(m) {
            for &p in parts {
                if g.owner.get(p as usize) == Some(&Some(m.id)) {
                    g.owner[p as usize] = None;
                }
            }
            if let Some(mem) = g.members.get_mut(&m.id) {
                for p in parts {
                    mem.revoking.remove(p);
                }
                if mem.revoking.is_empty() && mem.revoke_pending.is_empty() {
                    mem.revoke_deadline = None;
                }
            }
            g.rebalance();
        }
    }

    fn owned_by(&mut self, m: &MemberRef) -> BTreeSet<Partition> {
        self.group(m)
            .map_or_else(BTreeSet::new, |g| g.owned_by(m.id))
    }
}

impl Group {
    fn owned_by(&self, id: u64) -> BTreeSet<Partition> {
        (0..self.owner.len() as u32)
            .filter(|&p| self.owner[p as usize] == Some(id))
            .collect()
    }

    /// Sticky balanced target: members keep what they own up to their quota; the rest is
    /// spread over members below quota. Free partitions are granted at once; owned ones that
    /// must move are revoked from their owner first.
    fn rebalance(&mut self) {
        let n = self.owner.len();
        let ids: Vec<u64> = self.members.keys().copied().collect();
        if ids.is_empty() {
            return;
        }
        let mut by_load = ids.clone();
        let load = |id: u64| self.owner.iter().filter(|o| **o == Some(id)).count();
        by_load.sort_by_key(|&id| (std::cmp::Reverse(load(id)), id));
        let (base, extra) = (n / ids.len(), n % ids.len());
        let quota: HashMap<u64, usize> = by_load
            .iter()
            .enumerate()
            .map(|(i, &id)| (id, base + usize::from(i < extra)))
            .collect();
        let mut count: HashMap<u64, usize> = HashMap::new();
        let mut target = vec![None; n];
        for (p, o) in self.owner.iter().enumerate() {
            if let Some(o) = o {
                let c = count.entry(*o).or_default();
                if quota.get(o).is_some_and(|q| *c < *q) {
                    *c += 1;
                    target[p] = Some(*o);
                }
            }
        }
        for t in target.iter_mut().filter(|t| t.is_none()) {
            if let Some(&id) = by_load
                .iter()
                .find(|id| count.get(id).copied().unwrap_or(0) < quota[id])
            {
                *count.entry(id).or_default() += 1;
                *t = Some(id);
            }
        }
        for (p, t) in target.into_iter().enumerate() {
            let p32 = p as u32;
            match (self.owner[p], t) {
                (None, Some(t)) => {
                    self.owner[p] = Some(t);
                    if let Some(m) = self.members.get_mut(&t) {
                        m.granted.insert(p32);
                    }
                }
                (Some(o), Some(t)) if o != t => {
                    if let Some(m) = self.members.get_mut(&o)
                        && m.revoke_pending.insert(p32)
                        && m.revoke_deadline.is_none()
                    {
                        m.revoke_deadline = Some(Instant::now() + self.revoke_timeout);
                    }
                }
                (Some(o), Some(_)) => {
                    if let Some(m) = self.members.get_mut(&o) {
                        m.revoke_pending.remove(&p32);
                    }
                }
                _ => {}
            }
        }
    }

    /// Takes partitions away from members that did not hand them back in time.
    fn expire(&mut self, now: Instant) {
        let late: Vec<u64> = self
            .members
            .iter()
            .filter(|(_, m)| m.revoke_deadline.is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        if late.is_empty() {
            return;
        }
        for id in late {
            tracing::warn!(
                member = id,
                "revoke timed out; partitions reassigned without commit"
            );
            let Some(m) = self.members.get_mut(&id) else {
                continue;
            };
            m.revoke_deadline = None;
            // Everything it was asked to give up, whether or not it was told yet.
            let mut gone = std::mem::take(&mut m.revoke_pending);
            gone.append(&mut m.revoking);
            for p in gone {
                if let Some(o) = self.owner.get_mut(p as usize).filter(|o| **o == Some(id)) {
                    *o = None;
                }
            }
        }
        self.rebalance();
    }
}

/// A member of a consumer group on an [`EmbeddedBus`].
#[derive(Debug)]
pub struct EmbeddedConsumer {
    inner: Arc<Inner>,
    member: MemberRef,
    reader: Arc<Mutex<Connection>>,
    /// Next offset to fetch, per partition being fetched.
    positions: BTreeMap<Partition, i64>,
    /// Next offset to commit, per partition.
    stored: BTreeMap<Partition, i64>,
    /// Partitions reported as revoking, released on the next poll or commit.
    releasing: Vec<Partition>,
    cursor: usize,
    changed: watch::Receiver<u64>,
    left: bool,
    topic: String,
    /// Next offset not yet processed (committed at assignment, then as stored), per owned
    /// partition: the base of the lag metric.
    processed: BTreeMap<Partition, i64>,
    lag_reported: Option<std::time::Instant>,
}

enum Change {
    Revoking(Vec<Partition>),
    Assigned(Vec<Partition>),
    None,
}

impl EmbeddedConsumer {
    /// Commits what is stored, then hands back the partitions reported as revoking.
    async fn finish_revoke(&mut self) -> Result<(), BusError> {
        if self.releasing.is_empty() {
            return Ok(());
        }
        self.commit_stored().await?;
        let parts = std::mem::take(&mut self.releasing);
        lock(&self.inner.coord).release(&self.member, &parts);
        for p in &parts {
            self.stored.remove(p);
        }
        self.inner.notify();
        Ok(())
    }

    async fn commit_stored(&mut self) -> Result<(), BusError> {
        if self.stored.is_empty() {
            return Ok(());
        }
        let offsets: Vec<_> = self.stored.iter().map(|(p, o)| (*p, *o)).collect();
        let (reply, rx) = oneshot::channel();
        self.inner
            .ops
            .send(WriteOp::Commit {
                member: self.member.clone(),
                offsets,
                reply,
            })
            .await
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    fn sync_with_group(&mut self) -> Change {
        let mut coord = lock(&self.inner.coord);
        let Some(g) = coord.group(&self.member) else {
            return Change::None;
        };
        g.expire(Instant::now());
        let owned = g.owned_by(self.member.id);
        // Partitions taken away by a revoke timeout: stop fetching, forget stored offsets.
        self.positions.retain(|p, _| owned.contains(p));
        self.stored
            .retain(|p, _| owned.contains(p) || self.releasing.contains(p));
        let Some(m) = g.members.get_mut(&self.member.id) else {
            return Change::None;
        };
        if !m.revoke_pending.is_empty() {
            let parts = std::mem::take(&mut m.revoke_pending);
            m.revoking.extend(parts.iter().copied());
            return Change::Revoking(parts.into_iter().collect());
        }
        if !m.granted.is_empty() {
            let parts: Vec<_> = std::mem::take(&mut m.granted).into_iter().collect();
            return Change::Assigned(parts);
        }
        Change::None
    }

    fn committed(&self, parts: &[Partition]) -> Result<Vec<i64>, BusError> {
        let conn = lock(&self.reader);
        parts
            .iter()
            .map(|p| {
                conn.query_row(
                    "SELECT next_offset FROM group_offsets WHERE grp=?1 AND topic_id=?2 AND partition=?3",
                    params![self.member.group, self.member.topic_id, p],
                    |r| r.get::<_, i64>(0),
                )
                .optional()
                .map(|o| o.unwrap_or(0))
                .map_err(storage)
            })
            .collect()
    }

    async fn fetch(&mut self, max: usize) -> Result<Vec<Record>, BusError> {
        if self.positions.is_empty() || max == 0 {
            return Ok(Vec::new());
        }
        let mut parts: Vec<(Partition, i64)> =
            self.positions.iter().map(|(p, o)| (*p, *o)).collect();
        let start = self.cursor % parts.len();
        parts.rotate_left(start);
        self.cursor = self.cursor.wrapping_add(1);
        let reader = self.reader.clone();
        let topic_id = self.member.topic_id;
        let records = tokio::task::spawn_blocking(move || -> Result<Vec<Record>, BusError> {
            let conn = lock(&reader);
            let mut stmt = conn
                .prepare_cached("SELECT offset, ts_ms, key, value FROM records WHERE topic_id=?1 AND partition=?2 AND offset >= ?3 ORDER BY offset LIMIT ?4")
                .map_err(storage)?;
            let mut out = Vec::new();
            for (p, from) in parts {
                let left = max - out.len();
                if left == 0 {
                    break;
                }
                let rows = stmt
                    .query_map(params![topic_id, p, from, left as i64], |r| {
                        Ok(Record {
                            partition: p,
                            position: Position::Offset(r.get(0)?),
                            timestamp_ms: r.get(1)?,
                            key: r.get(2)?,
                            value: r.get(3)?,
                        })
                    })
                    .map_err(storage)?;
                for row in rows {
                    out.push(row.map_err(storage)?);
                }
            }
            Ok(out)
        })
        .await
        .map_err(storage)??;
        for r in &records {
            if let (Some(pos), Position::Offset(o)) =
                (self.positions.get_mut(&r.partition), &r.position)
            {
                *pos = o + 1;
            }
        }
        Ok(records)
    }

    /// Every 5 s: `pitboss_consumer_lag_records{topic, partition}` — records between each owned
    /// partition's end and the next offset not yet processed (as for Kafka).
    async fn report_lag(&mut self) -> Result<(), BusError> {
        if self
            .lag_reported
            .is_some_and(|at| at.elapsed() < Duration::from_secs(5))
            || self.processed.is_empty()
        {
            return Ok(());
        }
        self.lag_reported = Some(std::time::Instant::now());
        let reader = self.reader.clone();
        let topic_id = self.member.topic_id;
        let parts: Vec<(Partition, i64)> = self.processed.iter().map(|(p, o)| (*p, *o)).collect();
        let lags =
            tokio::task::spawn_blocking(move || -> Result<Vec<(Partition, i64)>, BusError> {
                let conn = lock(&reader);
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT next_offset FROM partitions WHERE topic_id=?1 AND partition=?2",
                    )
                    .map_err(storage)?;
                parts
                    .into_iter()
                    .map(|(p, done)| {
                        let end: i64 = stmt
                            .query_row(params![topic_id, p], |r| r.get(0))
                            .map_err(storage)?;
                        Ok((p, (end - done).max(0)))
                    })
                    .collect()
            })
            .await
            .map_err(storage)??;
        for (p, lag) in lags {
            metrics::gauge!(
                "pitboss_consumer_lag_records",
                "topic" => self.topic.clone(),
                "partition" => p.to_string(),
            )
            .set(lag as f64);
        }
        Ok(())
    }

    fn leave(&mut self) {
        if !self.left {
            self.left = true;
            lock(&self.inner.coord).leave(&self.member);
            self.inner.notify();
        }
    }
}

#[async_trait]
impl Consumer for EmbeddedConsumer {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Delivery, BusError> {
        self.finish_revoke().await?;
        self.report_lag().await?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            self.changed.borrow_and_update();
            match self.sync_with_group() {
                Change::Revoking(parts) => {
                    for p in &parts {
                        self.positions.remove(p);
                        self.processed.remove(p);
                    }
                    self.releasing = parts.clone();
                    return Ok(Delivery::Revoking(parts));
                }
                Change::Assigned(parts) => {
                    let offsets = self.committed(&parts)?;
                    for (p, o) in parts.iter().zip(offsets) {
                        self.positions.insert(*p, o);
                        self.processed.insert(*p, o);
                    }
                    return Ok(Delivery::Assigned(parts));
                }
                Change::None => {}
            }
            let records = self.fetch(max).await?;
            if !records.is_empty() {
                return Ok(Delivery::Records(records));
            }
            // Wake on new records or a group change; re-check revoke deadlines once a second.
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Delivery::Records(Vec::new()));
            }
            let nap = (deadline - now).min(Duration::from_secs(1));
            // Either a change arrived or the nap ended: both mean "look again".
            let _ = tokio::time::timeout(nap, self.changed.changed()).await;
        }
    }

    fn store(&mut self, partition: Partition, position: &Position) -> Result<(), BusError> {
        let Position::Offset(o) = position else {
            return Err(BusError::Config(format!(
                "not an embedded-log offset: {position}"
            )));
        };
        if !self.positions.contains_key(&partition) && !self.releasing.contains(&partition) {
            return Err(BusError::NotAssigned(partition));
        }
        let next = o + 1;
        let slot = self.stored.entry(partition).or_insert(next);
        *slot = (*slot).max(next);
        if let Some(done) = self.processed.get_mut(&partition) {
            *done = (*done).max(next);
        }
        Ok(())
    }

    async fn commit(&mut self) -> Result<(), BusError> {
        self.commit_stored().await?;
        self.finish_revoke().await
    }

    fn assignment(&self) -> Vec<Partition> {
        self.positions.keys().copied().collect()
    }

    async fn close(mut self: Box<Self>) -> Result<(), BusError> {
        self.commit_stored().await?;
        self.leave();
        Ok(())
    }
}

impl Drop for EmbeddedConsumer {
    fn drop(&mut self) {
        self.leave();
    }
}
