//! Where batches go: ClickHouse in production, an in-memory table in unit tests (with failure
//! injection), behind one small trait.
//!
//! ClickHouse's errors are sorted by their exception code ([`crate::classify`]). An insert
//! refused for its data is checked against the table's columns first: RowBinary carries no
//! column types, so a column whose type changed under the processor makes every row
//! unreadable, which the server reports like bad data — that is a schema error.

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

    /// Inserts the batch, all or nothing. [`ProcessorError::Refused`] when the store refuses
    /// values of its rows (the same rows fail again; the caller splits the batch);
    /// [`ProcessorError::Schema`] when the store cannot take such rows at all.
    async fn insert(&self, batch: &Arc<Batch>) -> Result<(), ProcessorError>;

    /// Records the offset range of `batch` ([`Batch::intent`]) before it is inserted, for
    /// [`Sink::intended`].
    /// A store that drops a block it has seen (ClickHouse's replicated tables) needs it: a
    /// member that replays the partition after a crash then cuts the very same batch, and a
    /// first insert that lands late — after the replaying member read the high-water mark —
    /// makes the replayed one a duplicate block, which the store drops. Stores that cannot
    /// drop duplicates, or that commit their position with the rows, do nothing.
    async fn intend(&self, _batch: &Batch) -> Result<(), ProcessorError> {
        Ok(())
    }

    /// The offset range (first, last row) of the partition's last recorded batch, if any.
    async fn intended(
        &self,
        _topic: &str,
        _partition: u32,
    ) -> Result<Option<(u64, u64)>, ProcessorError> {
        Ok(None)
    }
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
            .map(|r| replica_address(&r.host, r.port))
            .collect::<Result<Vec<_>, _>>()?
            .join(",");
        Ok(ClickHouseSink {
            client: client.with_setting("insert_distributed_sync", "1"),
            table: "events".into(),
            replicas: Some((addresses, database.to_owned())),
        })
    }

    /// Where to read `table` from: itself, or in the cluster layout its local table on every
    /// replica (see `replicas`).
    fn source(&self, table: &str) -> String {
        match &self.replicas {
            None => table.to_owned(),
            Some((addresses, database)) => {
                format!("remote('{addresses}', {database}, {table}_local)")
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

/// A row of `pitboss_batches`.
#[derive(Debug, clickhouse::Row, serde::Serialize, serde::Deserialize)]
struct Intent {
    bus_topic: String,
    bus_partition: u32,
    first_offset: u64,
    last_offset: u64,
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct LastIntent {
    rows: u64,
    first: u64,
    last: u64,
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
                self.source(&self.table)
            ))
            .bind(topic)
            .bind(partition)
            .bind(since_s)
            .fetch_one()
            .await?;
        Ok((hw.rows > 0).then_some(hw.top))
    }

    async fn insert(&self, batch: &Arc<Batch>) -> Result<(), ProcessorError> {
        match self.write(batch).await {
            Err(ProcessorError::Refused(reason)) => {
                self.check_columns().await?;
                Err(ProcessorError::Refused(reason))
            }
            other => other,
        }
    }

    /// Only in the cluster layout: its replicated tables drop a duplicate block. On one
    /// 18.16 server nothing would drop it, so the extra insert would buy nothing.
    async fn intend(&self, batch: &Batch) -> Result<(), ProcessorError> {
        let (Some(_), Some((first, last))) = (&self.replicas, batch.intent()) else {
            return Ok(());
        };
        let mut insert = self.client.insert::<Intent>("pitboss_batches").await?;
        insert
            .write(&Intent {
                bus_topic: batch.topic.clone(),
                bus_partition: batch.partition,
                first_offset: first,
                last_offset: last,
            })
            .await?;
        insert.end().await?;
        Ok(())
    }

    async fn intended(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Option<(u64, u64)>, ProcessorError> {
        if self.replicas.is_none() {
            return Ok(None);
        }
        let i: LastIntent = self
            .client
            .query(&format!(
                "SELECT count() AS rows, argMax(first_offset, last_offset) AS first, \
                 max(last_offset) AS last FROM {} WHERE bus_topic = ? AND bus_partition = ?",
                self.source("pitboss_batches")
            ))
            .bind(topic)
            .bind(partition)
            .fetch_one()
            .await?;
        Ok((i.rows > 0).then_some((i.first, i.last)))
    }
}

impl ClickHouseSink {
    async fn write(&self, batch: &Batch) -> Result<(), ProcessorError> {
        let mut insert = self.client.insert::<EventRow>(&self.table).await?;
        for row in &batch.rows {
            insert.write(row).await?;
        }
        insert.end().await?;
        Ok(())
    }

    /// A schema error if the table's columns are no longer the ones an [`EventRow`] is
    /// written as (RowBinary: by position, without types).
    async fn check_columns(&self) -> Result<(), ProcessorError> {
        #[derive(Debug, clickhouse::Row, serde::Deserialize)]
        struct Column {
            name: String,
            kind: String,
        }
        let Some(expected) = crate::schema::columns("events") else {
            return Err(ProcessorError::Config(
                "no events table in the migrations".into(),
            ));
        };
        let actual: Vec<Column> = self
            .client
            .query(
                "SELECT name, type AS kind FROM system.columns \
                 WHERE database = currentDatabase() AND table = ?",
            )
            .bind(&self.table)
            .fetch_all()
            .await?;
        let mismatch = column_mismatch(
            &expected,
            actual.iter().map(|c| (c.name.as_str(), c.kind.as_str())),
        );
        match mismatch {
            Some(what) => Err(ProcessorError::Schema(format!(
                "table {}: {what}; the processor writes it as the migrations made it",
                self.table
            ))),
            None => Ok(()),
        }
    }
}

/// What differs between the columns the rows are written as and the table's (extra columns of
/// the table do not matter: the server fills them).
fn column_mismatch<'a>(
    expected: &[(&str, &str)],
    actual: impl Iterator<Item = (&'a str, &'a str)>,
) -> Option<String> {
    let actual: std::collections::HashMap<&str, &str> = actual.collect();
    if actual.is_empty() {
        return Some("the table is gone".into());
    }
    expected
        .iter()
        .find_map(|(name, kind)| match actual.get(name) {
            None => Some(format!("column {name} is gone")),
            Some(found) if found != kind => Some(format!("column {name} is {found}, not {kind}")),
            Some(_) => None,
        })
}

/// `host:port` of a replica for `remote()`, which takes it inside a SQL string: only the
/// characters of a host name or an IP address pass.
fn replica_address(host: &str, port: u16) -> Result<String, ProcessorError> {
    let plain = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
    if !plain {
        return Err(ProcessorError::Config(format!(
            "replica host {host:?} in system.clusters is not a host name or an IP address"
        )));
    }
    Ok(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

/// What tells a row from another in a block: bus topic, partition, offset and event id.
type RowId = (String, u32, u64, String);

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
    /// Last intended (first, last) per (topic, partition).
    intents: std::collections::HashMap<(String, u32), (u64, u64)>,
    /// Inserts holding a row with one of these event ids are refused, as ClickHouse refuses
    /// a value: nothing of them is stored, and the answer does not say which row it was.
    refused_ids: std::collections::HashSet<String>,
    /// Drop a block stored before, as a replicated ClickHouse table does: every block stored.
    seen_blocks: Option<std::collections::HashSet<Vec<RowId>>>,
    /// Every call fails with this schema error.
    broken_schema: Option<String>,
    /// The rows of every insert attempt, in order (refused ones included).
    attempts: Vec<Vec<u64>>,
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

    /// Inserts holding a row with one of these event ids are refused for their data.
    pub fn refuse(&self, event_ids: impl IntoIterator<Item = String>) {
        self.lock().refused_ids.extend(event_ids);
    }

    /// From now on a block identical to one stored before is dropped (and the insert
    /// succeeds), as a replicated ClickHouse table drops it.
    pub fn drop_seen_blocks(&self) {
        self.lock()
            .seen_blocks
            .get_or_insert_with(std::collections::HashSet::new);
    }

    /// From now on every call fails with a schema error.
    pub fn break_schema(&self, reason: &str) {
        self.lock().broken_schema = Some(reason.to_owned());
    }

    /// The bus offsets of every insert attempt so far, in order.
    pub fn attempts(&self) -> Vec<Vec<u64>> {
        self.lock().attempts.clone()
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
        let inner = self.lock();
        if let Some(reason) = &inner.broken_schema {
            return Err(ProcessorError::Schema(reason.clone()));
        }
        Ok(inner
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
            inner
                .attempts
                .push(batch.rows.iter().map(|r| r.bus_offset).collect());
            if let Some(reason) = &inner.broken_schema {
                return Err(ProcessorError::Schema(reason.clone()));
            }
            if inner.fail_next > 0 {
                inner.fail_next -= 1;
                return Err(ProcessorError::Store("injected failure".into()));
            }
            if batch
                .rows
                .iter()
                .any(|r| inner.refused_ids.contains(&r.event_id))
            {
                return Err(ProcessorError::Refused("injected refusal".into()));
            }
            let block: Vec<_> = batch
                .rows
                .iter()
                .map(|r| {
                    let topic = r.bus_topic.clone();
                    (topic, r.bus_partition, r.bus_offset, r.event_id.clone())
                })
                .collect();
            let seen = inner
                .seen_blocks
                .as_mut()
                .is_some_and(|seen| !seen.insert(block));
            if seen {
                return Ok(());
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

    async fn intend(&self, batch: &Batch) -> Result<(), ProcessorError> {
        if let Some(range) = batch.intent() {
            self.lock()
                .intents
                .insert((batch.topic.clone(), batch.partition), range);
        }
        Ok(())
    }

    async fn intended(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Option<(u64, u64)>, ProcessorError> {
        Ok(self
            .lock()
            .intents
            .get(&(topic.to_owned(), partition))
            .copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_column_gone_or_of_another_type_is_a_mismatch_and_extra_columns_are_not() {
        let expected = [("tenant_id", "String"), ("amount_minor", "Int64")];
        let table = |columns: &[(&'static str, &'static str)]| {
            column_mismatch(&expected, columns.iter().copied())
        };
        assert_eq!(
            table(&[
                ("tenant_id", "String"),
                ("amount_minor", "Int64"),
                ("currency_code", "FixedString(3)"),
            ]),
            None
        );
        assert_eq!(
            table(&[("tenant_id", "String"), ("amount_minor", "Int32")]).as_deref(),
            Some("column amount_minor is Int32, not Int64")
        );
        assert_eq!(
            table(&[("tenant_id", "String")]).as_deref(),
            Some("column amount_minor is gone")
        );
        assert_eq!(table(&[]).as_deref(), Some("the table is gone"));
    }

    #[test]
    fn replica_addresses_are_host_port_and_nothing_else() {
        assert_eq!(
            replica_address("127.0.0.1", 9000).ok(),
            Some("127.0.0.1:9000".to_owned())
        );
        assert_eq!(
            replica_address("::1", 9000).ok(),
            Some("[::1]:9000".to_owned())
        );
        assert_eq!(
            replica_address("ch-1.internal", 9000).ok(),
            Some("ch-1.internal:9000".to_owned())
        );
        for bad in ["", "a'b", "a,b", "a b", "a)"] {
            assert!(replica_address(bad, 9000).is_err(), "{bad:?}");
        }
    }
}
