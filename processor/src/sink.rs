//! Where batches go: ClickHouse in production, an in-memory table in unit tests (with failure
//! injection), behind one small trait.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use clickhouse::Client;

/// The ClickHouse client type, re-exported for binaries.
pub use clickhouse::Client as ClickHouseClient;

use crate::ProcessorError;
use crate::batch::Batch;
use crate::rows::EventRow;

/// A store for batches of event rows.
#[async_trait]
pub trait Sink: Send + Sync + std::fmt::Debug {
    /// The highest bus offset stored for (topic, partition), if any: everything at or below it
    /// is already in the store (inserts are all-or-nothing), so a replay skips it.
    ///
    /// `since_ms`: rows received (`received_at_ms`) before it cannot hold a higher offset, so
    /// a store may leave them unread (ClickHouse skips whole parts by their `received_at`
    /// range; without it the query reads the `bus_*` columns of the whole table).
    async fn high_water(
        &self,
        topic: &str,
        partition: u32,
        since_ms: Option<i64>,
    ) -> Result<Option<u64>, ProcessorError>;

    /// Inserts the batch, all or nothing.
    async fn insert(&self, batch: &Arc<Batch>) -> Result<(), ProcessorError>;
}

/// ClickHouse over HTTP (the `clickhouse` crate, RowBinary, validation off for 18.16), on one
/// server or a cluster ([`crate::schema::Layout`]).
#[derive(Clone)]
pub struct ClickHouseSink {
    client: Client,
    table: String,
    /// Cluster layout: every replica's native address (`host:port`) and the database. The
    /// high-water mark is read from all of them: a `Distributed` read asks one replica per
    /// shard, which may not have fetched the newest part yet — a stale mark would replay a
    /// batch that landed.
    replicas: Option<(String, String)>,
}

impl std::fmt::Debug for ClickHouseSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseSink")
            .field("table", &self.table)
            .finish()
    }
}

/// A client for `url` (credentials, if any, from the URL's user info are not logged).
pub fn client(url: &str, database: &str) -> Client {
    Client::default()
        .with_url(url)
        .with_database(database)
        .with_validation(false)
        // One insert is one block (one part per partition): all or nothing.
        .with_setting("max_insert_block_size", "1048576")
}

impl ClickHouseSink {
    pub fn new(client: Client) -> Self {
        ClickHouseSink {
            client,
            table: "events".into(),
            replicas: None,
        }
    }

    /// Into the cluster layout's `events` (a `Distributed` table) of `database`: inserts wait
    /// until the shard has the block (`insert_distributed_sync`); the replicas are read from
    /// `system.clusters` of the server `client` talks to.
    pub async fn cluster(
        client: Client,
        cluster: &str,
        database: &str,
    ) -> Result<Self, ProcessorError> {
        #[derive(Debug, clickhouse::Row, serde::Deserialize)]
        struct Replica {
            host: String,
            port: u16,
        }
        let replicas: Vec<Replica> = client
            .query(
                "SELECT host_address AS host, port FROM system.clusters \
                 WHERE cluster = ? ORDER BY shard_num, replica_num",
            )
            .bind(cluster)
            .fetch_all()
            .await?;
        if replicas.is_empty() {
            return Err(ProcessorError::Config(format!(
                "cluster {cluster:?} is not in the server's remote_servers"
            )));
        }
        let addresses = replicas
            .iter()
            .map(|r| {
                if r.host.contains(':') {
                    format!("[{}]:{}", r.host, r.port)
                } else {
                    format!("{}:{}", r.host, r.port)
                }
            })
            .collect::<Vec<_>>()
            .join(",");
        Ok(ClickHouseSink {
            client: client.with_setting("insert_distributed_sync", "1"),
            table: "events".into(),
            replicas: Some((addresses, database.to_owned())),
        })
    }

    /// Where the high-water mark is read from.
    fn high_water_source(&self) -> String {
        match &self.replicas {
            None => self.table.clone(),
            Some((addresses, database)) => {
                format!("remote('{addresses}', {database}, {}_local)", self.table)
            }
        }
    }

    /// Writes into another table with the `events` layout (tests use unique names).
    pub fn with_table(mut self, table: &str) -> Self {
        self.table = table.to_owned();
        self
    }
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct HighWater {
    rows: u64,
    top: u64,
}

#[async_trait]
impl Sink for ClickHouseSink {
    async fn high_water(
        &self,
        topic: &str,
        partition: u32,
        since_ms: Option<i64>,
    ) -> Result<Option<u64>, ProcessorError> {
        // `received_at` is in the partition key, so every part keeps its min/max: parts
        // entirely older than `since` are not read.
        let since_s = since_ms.map_or(0, |ms| ms.div_euclid(1000).max(0));
        let hw: HighWater = self
            .client
            .query(&format!(
                "SELECT count() AS rows, max(bus_offset) AS top FROM {} \
                 WHERE bus_topic = ? AND bus_partition = ? AND received_at >= toDateTime(?)",
                self.high_water_source()
            ))
            .bind(topic)
            .bind(partition)
            .bind(since_s)
            .fetch_one()
            .await?;
        Ok((hw.rows > 0).then_some(hw.top))
    }

    async fn insert(&self, batch: &Arc<Batch>) -> Result<(), ProcessorError> {
        let mut insert = self.client.insert::<EventRow>(&self.table).await?;
        for row in &batch.rows {
            insert.write(row).await?;
        }
        insert.end().await?;
        Ok(())
    }
}

/// An in-memory `events` table for unit tests, with failure injection.
#[derive(Debug, Clone, Default)]
pub struct MemorySink {
    inner: Arc<Mutex<MemoryInner>>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    rows: Vec<EventRow>,
    fail_next: usize,
    /// Fail after storing (the insert landed but the answer was lost).
    lose_answer_next: usize,
    /// Never answer after storing (the process dies before it hears back).
    hang_after_store_next: usize,
    inserts: usize,
}

impl MemorySink {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The next `n` inserts fail without storing anything.
    pub fn fail_next(&self, n: usize) {
        self.lock().fail_next = n;
    }

    /// The next `n` inserts store their rows and then report a failure.
    pub fn lose_answer_next(&self, n: usize) {
        self.lock().lose_answer_next = n;
    }

    /// The next `n` inserts store their rows and then never answer.
    pub fn hang_after_store_next(&self, n: usize) {
        self.lock().hang_after_store_next = n;
    }

    pub fn rows(&self) -> Vec<EventRow> {
        self.lock().rows.clone()
    }

    /// Successful or answer-lost inserts so far.
    pub fn inserts(&self) -> usize {
        self.lock().inserts
    }
}

#[async_trait]
impl Sink for MemorySink {
    async fn high_water(
        &self,
        topic: &str,
        partition: u32,
        since_ms: Option<i64>,
    ) -> Result<Option<u64>, ProcessorError> {
        let since = since_ms.unwrap_or(i64::MIN);
        Ok(self
            .lock()
            .rows
            .iter()
            .filter(|r| {
                r.bus_topic == topic
                    && r.bus_partition == partition
                    && r.received_at_ms as i64 >= since
            })
            .map(|r| r.bus_offset)
            .max())
    }

    async fn insert(&self, batch: &Arc<Batch>) -> Result<(), ProcessorError> {
        let hang = {
            let mut inner = self.lock();
            if inner.fail_next > 0 {
                inner.fail_next -= 1;
                return Err(ProcessorError::Store("injected failure".into()));
            }
            inner.rows.extend(batch.rows.iter().cloned());
            inner.inserts += 1;
            if inner.lose_answer_next > 0 {
                inner.lose_answer_next -= 1;
                return Err(ProcessorError::Store("injected lost answer".into()));
            }
            let hang = inner.hang_after_store_next > 0;
            inner.hang_after_store_next = inner.hang_after_store_next.saturating_sub(1);
            hang
        };
        if hang {
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}
