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
//! - The WAL is checkpointed by a thread of its own ([`Checkpointer`]), not in the commit that
//!   fills it: no publish waits for the log to be copied back into the database.
//!
//! - Ungrouped readers ([`crate::Reader`]) read chosen partitions from a position or a time
//!   and leave nothing behind; records carry headers (a column of their own).
//!
//! One process owns a log directory at a time (an exclusive lock on `LOCK`).
//!
//! Modules: `storage` (schema, writer thread), `coordinator` (groups), `consumer` (group
//! members), `reader` (ungrouped readers and the fetch both use).

mod checkpoint;
mod consumer;
mod coordinator;
mod reader;
mod storage;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, params};
use tokio::sync::{mpsc, oneshot, watch};

pub use checkpoint::{CHECKPOINT_EVERY, Checkpointer};
pub use consumer::EmbeddedConsumer;
use coordinator::Coordinator;
pub use reader::EmbeddedReader;
use storage::{WriteOp, Writer};

#[cfg(doc)]
use crate::Delivery;
#[cfg(doc)]
use crate::partition::partition_for;
use crate::{
    Ack, Bus, BusError, Consumer, ConsumerConfig, OutRecord, Partition, Publisher, ReadFrom, Reader,
};

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
    /// Largest record (key + value + headers) accepted, like Kafka's `message.max.bytes`.
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
    changed: Arc<watch::Sender<u64>>,
    /// Per (topic id, partition), the offset the next appended record gets, as of the last
    /// commit: a reader woken by a change looks here first and queries the database only
    /// for partitions that grew (every append wakes every reader of the log).
    tails: Arc<Tails>,
    /// Database fetches made by consumers and readers (see [`EmbeddedBus::fetches`]).
    fetches: Arc<std::sync::atomic::AtomicU64>,
    /// Checkpoints the log's WAL off the writer's thread (stops with the log).
    _checkpointer: Checkpointer,
    _lock: File,
}

/// The end offsets of every partition, updated by the writer after each commit.
type Tails = Mutex<HashMap<(i64, u32), i64>>;

/// Whether any cursor may have records to fetch (a partition without a known end: yes); a
/// yes is counted as a fetch.
fn may_have_records(
    tails: &Tails,
    fetches: &std::sync::atomic::AtomicU64,
    cursors: &[reader::Cursor],
) -> bool {
    let tails = lock(tails);
    let may = cursors.iter().any(|c| {
        tails
            .get(&(c.topic_id, c.partition))
            .is_none_or(|&end| c.next < end)
    });
    if may {
        fetches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    may
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TopicMeta {
    id: i64,
    partitions: u32,
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
        // Another connection holding the file's write lock for a moment (an operator's
        // `sqlite3` on it, docs/bus.md) makes writes wait: failing at once stopped the writer,
        // and with it every role of `pitboss up`.
        conn.busy_timeout(Duration::from_secs(30))
            .map_err(storage)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(storage)?;
        let sync = match config.durability {
            Durability::Fsync => "FULL",
            Durability::ProcessCrash => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync)
            .map_err(storage)?;
        Checkpointer::writer_pragmas(&conn).map_err(storage)?;
        storage::migrate(&conn)?;
        let checkpointer =
            Checkpointer::spawn(&db_path, sync, CHECKPOINT_EVERY).map_err(storage)?;

        let mut topics = HashMap::new();
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
        }
        let next = storage::load_partitions(&conn)?;

        let (ops_tx, ops_rx) = mpsc::channel(4096);
        let (changed, _) = watch::channel(0u64);
        let changed = Arc::new(changed);
        let tails: Arc<Tails> = Arc::new(Mutex::new(
            next.iter().map(|(k, st)| (*k, st.next)).collect(),
        ));
        let coord = Arc::new(Mutex::new(Coordinator::default()));
        let writer = Writer {
            conn,
            partitions: next,
            config: config.clone(),
            coord: coord.clone(),
            tails: tails.clone(),
            changed: changed.clone(),
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
            tails,
            fetches: Arc::default(),
            _checkpointer: checkpointer,
            _lock: lock,
        });
        spawn_retention(Arc::downgrade(&inner), config.retention_interval)?;
        Ok(EmbeddedBus { inner })
    }

    /// How many times consumers and readers of this log have queried it for records so far.
    /// Every append wakes every reader; one whose partitions did not grow goes back to
    /// waiting without a query.
    pub fn fetches(&self) -> u64 {
        self.inner
            .fetches
            .load(std::sync::atomic::Ordering::Relaxed)
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
            .find(|(_, r)| r.byte_len() > self.inner.max_record_bytes)
        {
            return Err(BusError::Rejected(format!(
                "record {i} has {} bytes; the limit is {}",
                r.byte_len(),
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
        // The writer told the readers (tails, then a change) before it answered.
        rx.await.map_err(|_| closed())?
    }

    /// Through the writer: answers once it could take the log's write lock (so it waits
    /// while another connection holds the lock: publishes wait as long then).
    async fn check(&self) -> Result<(), BusError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .ops
            .send(WriteOp::Check { reply })
            .await
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
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

    async fn partition_count(&self, topic: &str) -> Result<u32, BusError> {
        Ok(self.inner.topic(topic)?.partitions)
    }

    async fn committed_offsets(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<Option<std::collections::BTreeMap<Partition, i64>>, BusError> {
        let meta = self.inner.topic(topic)?;
        let conn = self.inner.reader()?;
        let mut stmt = conn
            .prepare(
                "SELECT partition, next_offset FROM group_offsets WHERE grp=?1 AND topic_id=?2",
            )
            .map_err(storage)?;
        let got = stmt
            .query_map(params![group, meta.id], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
            })
            .map_err(storage)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(storage)?;
        Ok(Some(
            got.into_iter()
                .filter_map(|(p, o)| Some((Partition::try_from(p).ok()?, o)))
                .collect(),
        ))
    }

    async fn consumer(
        &self,
        group: &str,
        topic: &str,
        config: ConsumerConfig,
    ) -> Result<Box<dyn Consumer>, BusError> {
        Ok(Box::new(EmbeddedConsumer::join(
            self.inner.clone(),
            group,
            topic,
            config,
        )?))
    }

    async fn reader(
        &self,
        topic: &str,
        starts: Vec<(Partition, ReadFrom)>,
    ) -> Result<Box<dyn Reader>, BusError> {
        Ok(Box::new(
            EmbeddedReader::open(self.inner.clone(), topic, starts).await?,
        ))
    }
}
