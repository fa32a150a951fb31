//! The ClickHouse sink: batches of any table ([`StoredRow`]) into ClickHouse over HTTP, on one
//! server or a cluster, with the high-water mark and the recorded batch ranges read from the
//! store itself.
//!
//! ClickHouse's errors are sorted by their exception code ([`crate::classify`]). An insert
//! refused for its data is checked against the table's columns first: RowBinary carries no
//! column types, so a column whose type changed under the processor makes every row
//! unreadable, which the server reports like bad data — that is a schema error.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use clickhouse::Client;

/// The ClickHouse client type, re-exported for binaries.
pub use clickhouse::Client as ClickHouseClient;

use super::Sink;
use crate::ProcessorError;
use crate::batch::Batch;
use crate::rows::{CopyKey, StoredRow, count_copies};

/// ClickHouse over HTTP (the `clickhouse` crate, RowBinary, validation off for 18.16), on one
/// server or a cluster ([`crate::schema::Layout`]): a [`Sink<R>`] for every [`StoredRow`],
/// writing `R::TABLE`.
#[derive(Clone)]
pub struct ClickHouseSink {
    client: Client,
    /// Another table than `R::TABLE`, with its layout (tests use unique names).
    table: Option<String>,
    /// Cluster layout: the cluster of every replica as a shard of its own
    /// ([`replicas_cluster`]) and the database. The high-water mark is read from all of them:
    /// a `Distributed` read asks one replica per shard, which may not have fetched the newest
    /// part yet — a stale mark would replay a batch that landed.
    replicas: Option<(String, String)>,
    /// Held while a batch of a table with copy keys (`events`) is looked up and inserted.
    lookups: Arc<tokio::sync::Mutex<()>>,
    /// How long one call (an insert with its lookups, a high-water read) may wait for
    /// ClickHouse's answer ([`DEFAULT_TIMEOUT`], or [`ClickHouseSink::with_timeout`]).
    timeout: std::time::Duration,
}

/// How long a call of the sink waits for ClickHouse by default: a server that takes the
/// connection and never answers (hung, a half-open connection through a proxy, a network that
/// drops packets) is a failure to retry after this, not a processor stopped for good without
/// a word.
pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The error of a call ClickHouse did not answer within `wait`: transient (retried; after an
/// insert, the high-water mark says whether it landed all the same).
pub fn no_answer(wait: std::time::Duration) -> ProcessorError {
    ProcessorError::ClickHouse(clickhouse::error::Error::Other(
        format!(
            "no answer within {} s (--clickhouse-timeout-secs)",
            wait.as_secs_f64()
        )
        .into(),
    ))
}

/// `call`'s outcome, or [`no_answer`] once `wait` has passed (the call is dropped: its
/// connection closes).
pub async fn within<T>(
    wait: std::time::Duration,
    call: impl std::future::Future<Output = Result<T, ProcessorError>>,
) -> Result<T, ProcessorError> {
    tokio::time::timeout(wait, call)
        .await
        .unwrap_or_else(|_| Err(no_answer(wait)))
}

impl std::fmt::Debug for ClickHouseSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseSink")
            .field("table", &self.table)
            .finish()
    }
}

/// The HTTP client under every ClickHouse client: `http://`, and `https://` verified against
/// Mozilla's roots together with the system's (or those of the file `SSL_CERT_FILE` names: a
/// private CA). Built here rather than by the `clickhouse` crate's TLS features, whose client
/// panicked at start when the system offered no roots (a wrong `SSL_CERT_FILE`) — for
/// `http://` URLs too. An error only if the TLS provider offers no protocol version (never
/// with ring).
fn http_client() -> Result<Client, rustls::Error> {
    static ROOTS: std::sync::OnceLock<Arc<rustls::RootCertStore>> = std::sync::OnceLock::new();
    let roots = ROOTS.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            tracing::warn!(error = %e, "reading the system's trusted certificates");
        }
        let (added, _) = roots.add_parsable_certificates(native.certs);
        tracing::debug!(added, "system certificates trusted for ClickHouse");
        Arc::new(roots)
    });
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots.clone())
    .with_no_client_auth();
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_keepalive(Some(std::time::Duration::from_secs(60)));
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::with_http_client(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            // ClickHouse closes idle connections after 3 s.
            .pool_idle_timeout(std::time::Duration::from_secs(2))
            .build(connector),
    ))
}

/// A client for `url`, whose query may carry `user` and `password` (as ClickHouse's HTTP
/// interface takes them; docker-compose.yml and the terraform pass them so). The `clickhouse`
/// crate drops the URL's query from every request, so they are taken out of it here and sent
/// as the `X-ClickHouse-User` and `X-ClickHouse-Key` headers (ClickHouse 18.16 and current
/// releases): never in a request line that a proxy logs, and never logged by Pitboss.
pub fn client(url: &str, database: &str) -> Client {
    let (url, user, password) = credentials(url);
    let base = match http_client() {
        Ok(client) => client,
        Err(e) => {
            tracing::warn!(error = %e, "no TLS for ClickHouse: http:// URLs only");
            Client::default()
        }
    };
    let mut client = base
        .with_url(url)
        .with_database(database)
        .with_validation(false)
        // One insert is one block (one part per partition): all or nothing.
        .with_setting("max_insert_block_size", "1048576");
    if let Some(user) = user {
        client = client.with_user(user);
    }
    if let Some(password) = password {
        client = client.with_password(password);
    }
    client
}

/// Whether `url` can name a ClickHouse server: an `http://` or `https://` URL with a host
/// (any other is refused at start, naming it without its password; it was retried for ever).
pub fn check_url(url: &str) -> Result<(), String> {
    match url::Url::parse(&credentials(url).0) {
        Ok(u)
            if matches!(u.scheme(), "http" | "https")
                && u.host_str().is_some_and(|h| !h.is_empty()) =>
        {
            Ok(())
        }
        Ok(_) => Err(format!(
            "{} is not an http:// or https:// URL of a ClickHouse server",
            redacted_url(url)
        )),
        Err(e) => Err(format!("{}: not a URL ({e})", redacted_url(url))),
    }
}

/// `url` without its `user` and `password` query parameters: what may be logged or printed.
pub fn redacted_url(url: &str) -> String {
    match url::Url::parse(&credentials(url).0) {
        Ok(mut parsed) => {
            if parsed.password().is_some() && parsed.set_password(Some("redacted")).is_err() {
                return "(a URL whose password cannot be hidden)".to_owned();
            }
            parsed.into()
        }
        // What cannot be parsed cannot be cleaned either.
        Err(_) => "(an unparsable URL)".to_owned(),
    }
}

/// `url` without its `user` and `password` query parameters, and their (decoded) values. A URL
/// that does not parse is left as it is: the client reports it on its first request.
fn credentials(url: &str) -> (String, Option<String>, Option<String>) {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return (url.to_owned(), None, None);
    };
    let (mut user, mut password) = (None, None);
    let rest: Vec<(String, String)> = parsed
        .query_pairs()
        .filter_map(|(key, value)| match &*key {
            "user" => {
                user = Some(value.into_owned());
                None
            }
            "password" => {
                password = Some(value.into_owned());
                None
            }
            _ => Some((key.into_owned(), value.into_owned())),
        })
        .collect();
    if rest.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(rest);
    }
    (parsed.into(), user, password)
}

impl ClickHouseSink {
    pub fn new(client: Client) -> Self {
        ClickHouseSink {
            client,
            table: None,
            replicas: None,
            lookups: Arc::default(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Waits at most `wait` for ClickHouse's answer to each call (at least 1 ms).
    pub fn with_timeout(mut self, wait: std::time::Duration) -> Self {
        self.timeout = wait.max(std::time::Duration::from_millis(1));
        self
    }

    /// Into the cluster layout's tables (`Distributed` ones) of `database`: inserts wait
    /// until the shard has the block (`insert_distributed_sync`). Reads that must see every
    /// replica go through the cluster [`replicas_cluster`]`(cluster)` of the servers'
    /// `remote_servers`, checked here against `cluster` in `system.clusters` of the server
    /// `client` talks to: each of its shards one replica, together the replicas of `cluster`.
    pub async fn cluster(
        client: Client,
        cluster: &str,
        database: &str,
    ) -> Result<Self, ProcessorError> {
        #[derive(Debug, clickhouse::Row, serde::Deserialize)]
        struct Replica {
            cluster: String,
            shard: u32,
            host: String,
            port: u16,
        }
        // The names go into SQL text.
        crate::schema::Layout::cluster(cluster, database)?;
        let all = replicas_cluster(cluster);
        let replicas: Vec<Replica> = client
            .query(
                "SELECT cluster, shard_num AS shard, host_address AS host, port \
                 FROM system.clusters WHERE cluster IN (?, ?) ORDER BY shard_num, replica_num",
            )
            .bind(cluster)
            .bind(&all)
            .fetch_all()
            .await?;
        let of = |name: &str| -> Vec<(u32, String, u16)> {
            replicas
                .iter()
                .filter(|r| r.cluster == name)
                .map(|r| (r.shard, r.host.clone(), r.port))
                .collect()
        };
        check_replicas_cluster(cluster, &of(cluster), &of(&all))?;
        Ok(ClickHouseSink {
            client: client.with_setting("insert_distributed_sync", "1"),
            table: None,
            replicas: Some((all, database.to_owned())),
            lookups: Arc::default(),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Where to read `table` from: itself, or in the cluster layout its local table on every
    /// replica, through the cluster of all replicas (see `replicas`) — whose user and password
    /// come from the servers' config, never from the query.
    fn source(&self, table: &str) -> String {
        match &self.replicas {
            None => table.to_owned(),
            Some((all, database)) => format!("cluster('{all}', {database}, {table}_local)"),
        }
    }

    /// Writes into another table with the layout of the rows' own (tests use unique names).
    pub fn with_table(mut self, table: &str) -> Self {
        self.table = Some(table.to_owned());
        self
    }

    /// The table rows of `R` go to.
    fn table_of<R: StoredRow>(&self) -> &str {
        self.table.as_deref().unwrap_or(R::TABLE)
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
impl<R: StoredRow> Sink<R> for ClickHouseSink {
    async fn high_water(
        &self,
        topic: &str,
        partition: u32,
        since_ms: Option<i64>,
    ) -> Result<Option<u64>, ProcessorError> {
        // The stamp is in the partition key, so every part keeps its min/max: parts entirely
        // older than `since` are not read.
        let since_s = since_ms.map_or(0, |ms| ms.div_euclid(1000).max(0));
        let read = self
            .client
            .query(&format!(
                "SELECT count() AS rows, max(bus_offset) AS top FROM {} \
                 WHERE bus_topic = ? AND bus_partition = ? AND {} >= toDateTime(?) \
                 AND bus_sequence = ''",
                self.source(self.table_of::<R>()),
                R::STAMP_COLUMN,
            ))
            .bind(topic)
            .bind(partition)
            .bind(since_s)
            .fetch_one::<HighWater>();
        let hw = within(self.timeout, async { Ok(read.await?) }).await?;
        Ok((hw.rows > 0).then_some(hw.top))
    }

    async fn id_at(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        since_ms: Option<i64>,
    ) -> Result<Option<String>, ProcessorError> {
        let since_s = since_ms.map_or(0, |ms| ms.div_euclid(1000).max(0));
        let read = self
            .client
            .query(&format!(
                "SELECT {} FROM {} \
                 WHERE bus_topic = ? AND bus_partition = ? AND bus_offset = ? \
                 AND bus_sequence = '' AND {} >= toDateTime(?) LIMIT 1",
                R::ID_SQL,
                self.source(self.table_of::<R>()),
                R::STAMP_COLUMN,
            ))
            .bind(topic)
            .bind(partition)
            .bind(offset)
            .bind(since_s)
            .fetch_optional::<String>();
        within(self.timeout, async { Ok(read.await?) }).await
    }

    async fn high_water_sequence(
        &self,
        topic: &str,
        shard: &str,
        since_ms: Option<i64>,
    ) -> Result<Option<String>, ProcessorError> {
        let since_s = since_ms.map_or(0, |ms| ms.div_euclid(1000).max(0));
        let prefix = crate::rows::tag_sequence(shard, "");
        // One shard's values share their prefix: the longest, then the greatest as text, is
        // the greatest number (decimal text without leading zeros).
        let read = self
            .client
            .query(&format!(
                "SELECT bus_sequence FROM {} \
                 WHERE bus_topic = ? AND startsWith(bus_sequence, ?) AND {} >= toDateTime(?) \
                 ORDER BY length(bus_sequence) DESC, bus_sequence DESC LIMIT 1",
                self.source(self.table_of::<R>()),
                R::STAMP_COLUMN,
            ))
            .bind(topic)
            .bind(&prefix)
            .bind(since_s)
            .fetch_optional::<String>();
        let top = within(self.timeout, async { Ok(read.await?) }).await?;
        Ok(top.and_then(|s| s.strip_prefix(&prefix).map(str::to_owned)))
    }

    async fn insert(&self, batch: &Arc<Batch<R>>) -> Result<(), ProcessorError> {
        within(self.timeout, async {
            match self.write(batch).await {
                Err(ProcessorError::Refused(reason)) => {
                    self.check_columns::<R>().await?;
                    Err(ProcessorError::Refused(reason))
                }
                other => other,
            }
        })
        .await
    }

    fn records_intents(&self) -> bool {
        self.replicas.is_some()
    }

    /// Only in the cluster layout: its replicated tables drop a duplicate block. On one
    /// 18.16 server nothing would drop it, so the extra insert would buy nothing.
    async fn intend(&self, batch: &Batch<R>) -> Result<(), ProcessorError> {
        let (Some(_), Some((first, last))) = (&self.replicas, batch.intent()) else {
            return Ok(());
        };
        within(self.timeout, async {
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
        })
        .await
    }

    async fn intended(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Option<(u64, u64)>, ProcessorError> {
        if self.replicas.is_none() {
            return Ok(None);
        }
        let read = self
            .client
            .query(&format!(
                "SELECT count() AS rows, argMax(first_offset, last_offset) AS first, \
                 max(last_offset) AS last FROM {} WHERE bus_topic = ? AND bus_partition = ?",
                self.source("pitboss_batches")
            ))
            .bind(topic)
            .bind(partition)
            .fetch_one::<LastIntent>();
        let i = within(self.timeout, async { Ok(read.await?) }).await?;
        Ok((i.rows > 0).then_some((i.first, i.last)))
    }
}

/// A row of the lookup's temporary table: an event's sort key ([`CopyKey`]).
#[derive(Debug, clickhouse::Row, serde::Serialize, serde::Deserialize, PartialEq, Eq, Hash)]
struct StoredKey {
    tenant_id: String,
    occurred_at: u32,
    player_id: String,
    event_id: String,
}

impl StoredKey {
    fn of(k: CopyKey<'_>) -> Self {
        StoredKey {
            tenant_id: k.tenant_id.to_owned(),
            occurred_at: k.occurred_at,
            player_id: k.player_id.to_owned(),
            event_id: k.event_id.to_owned(),
        }
    }
}

impl ClickHouseSink {
    /// Inserts the rows of `batch` that are not copies — of a row stored already (a client's
    /// retry the ingest edge did not recognise: after a restart of any part, or through
    /// another ingest instance) or of an earlier row of the batch. Nothing is inserted when
    /// every row is a copy.
    async fn write<R: StoredRow>(&self, batch: &Batch<R>) -> Result<(), ProcessorError> {
        // Lookup and insert of one table's batches one at a time in this process: the events
        // topic and its hot-key overflow have a processor each, and a copy on one must not
        // pass the lookup while its original from the other is being inserted.
        let _one_at_a_time = match batch.rows.first().and_then(StoredRow::copy_key) {
            Some(_) => Some(self.lookups.lock().await),
            None => None,
        };
        let everything = batch.uncertain || batch.recut.is_some();
        let stored = self.stored_copies(&batch.rows, everything).await?;
        let mut seen = HashSet::new();
        let mut copies = 0;
        let mut insert = None;
        for row in &batch.rows {
            if let Some(key) = row.copy_key() {
                let copy = !seen.insert(key)
                    || (!stored.is_empty() && stored.contains(&StoredKey::of(key)));
                if copy {
                    copies += 1;
                    continue;
                }
            }
            let insert = match &mut insert {
                Some(insert) => insert,
                None => insert.insert(self.client.insert::<R>(self.table_of::<R>()).await?),
            };
            insert.write(row).await?;
        }
        if let Some(insert) = insert {
            insert.end().await?;
        }
        count_copies::<R>(copies);
        Ok(())
    }

    /// The sort keys of `rows` that the table holds already, among the rows whose id a client
    /// chose ([`StoredRow::id_from_client`]; no round trip when there are none). The keys go into a temporary table of a one-off session, which the
    /// lookup joins by the table's sort key: ClickHouse 18.16 parses a literal list of
    /// thousands of tuples slowly, and `IN` a table uses the primary key all the same. In the
    /// cluster layout every replica is read (`GLOBAL IN` ships the keys to them): a replica
    /// that has not fetched a part yet could hide a copy.
    async fn stored_copies<R: StoredRow>(
        &self,
        rows: &[R],
        everything: bool,
    ) -> Result<HashSet<StoredKey>, ProcessorError> {
        let keys: Vec<StoredKey> = rows
            .iter()
            .filter(|r| everything || r.id_from_client())
            .filter_map(|r| r.copy_key().map(StoredKey::of))
            .collect();
        if keys.is_empty() {
            return Ok(HashSet::new());
        }
        let session = self
            .client
            .clone()
            .with_setting("session_id", format!("pitboss-{}", uuid::Uuid::now_v7()))
            .with_setting("session_timeout", "30")
            // Cluster layout: a replica that is down is skipped (the other replica of its shard
            // is read) instead of holding up every batch.
            .with_setting("skip_unavailable_shards", "1");
        session
            .query(
                "CREATE TEMPORARY TABLE pitboss_batch_keys (tenant_id String, \
                 occurred_at DateTime, player_id String, event_id String) ENGINE = Memory",
            )
            .execute()
            .await?;
        let mut insert = session.insert::<StoredKey>("pitboss_batch_keys").await?;
        for key in &keys {
            insert.write(key).await?;
        }
        insert.end().await?;
        let found: Vec<StoredKey> = session
            .query(&format!(
                "SELECT tenant_id, toUInt32(occurred_at) AS occurred_at_s, player_id, event_id \
                 FROM {} WHERE (tenant_id, occurred_at, player_id, event_id) {} pitboss_batch_keys",
                self.source(self.table_of::<R>()),
                if self.replicas.is_some() {
                    "GLOBAL IN"
                } else {
                    "IN"
                },
            ))
            .fetch_all()
            .await?;
        // Best effort: the session expires anyway.
        if let Err(e) = session
            .query("DROP TEMPORARY TABLE pitboss_batch_keys")
            .execute()
            .await
        {
            tracing::debug!(error = %e, "temporary key table not dropped; its session expires");
        }
        Ok(found.into_iter().collect())
    }

    /// A schema error if the table's columns are no longer the ones an `R` is written as
    /// (RowBinary: by position, without types).
    async fn check_columns<R: StoredRow>(&self) -> Result<(), ProcessorError> {
        #[derive(Debug, clickhouse::Row, serde::Deserialize)]
        struct Column {
            name: String,
            kind: String,
        }
        let Some(expected) = crate::schema::columns(R::TABLE) else {
            return Err(ProcessorError::Config(format!(
                "no {} table in the migrations",
                R::TABLE
            )));
        };
        let actual: Vec<Column> = self
            .client
            .query(
                "SELECT name, type AS kind FROM system.columns \
                 WHERE database = currentDatabase() AND table = ?",
            )
            .bind(self.table_of::<R>())
            .fetch_all()
            .await?;
        let mismatch = column_mismatch(
            &expected,
            actual.iter().map(|c| (c.name.as_str(), c.kind.as_str())),
        );
        match mismatch {
            Some(what) => Err(ProcessorError::Schema(format!(
                "table {}: {what}; the processor writes it as the migrations made it",
                self.table_of::<R>()
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

/// The cluster the high-water marks and the copy lookups read through in the cluster layout:
/// `<cluster>_replicas`, every replica of `cluster` a shard of its own (a `Distributed` read
/// asks one replica per shard), with the same user and password as `cluster` in the servers'
/// `remote_servers`. The `cluster()` table function reads it on ClickHouse 18.16 and current
/// releases alike (current ones also have `clusterAllReplicas`, 18.16 does not); `remote()`
/// would connect without credentials, as `default`.
pub fn replicas_cluster(cluster: &str) -> String {
    format!("{cluster}_replicas")
}

/// Whether `all` (shard, host, port, as `system.clusters` lists the cluster
/// [`replicas_cluster`]`(cluster)`) has every replica of `cluster` as a shard of its own, and
/// nothing else: a shard of two replicas would be read on one of them, and a missing replica
/// not at all — either could hide the newest part.
fn check_replicas_cluster(
    cluster: &str,
    replicas: &[(u32, String, u16)],
    all: &[(u32, String, u16)],
) -> Result<(), ProcessorError> {
    let name = replicas_cluster(cluster);
    let fix = format!(
        "define it in the servers' remote_servers: every replica of {cluster:?} as a shard of \
         its own, with the user and password of {cluster:?} (docs/processor.md, \"Cluster layout\")"
    );
    if replicas.is_empty() {
        return Err(ProcessorError::Config(format!(
            "cluster {cluster:?} is not in the server's remote_servers"
        )));
    }
    if all.is_empty() {
        return Err(ProcessorError::Config(format!(
            "cluster {name:?} is not in the server's remote_servers: {fix}"
        )));
    }
    let mut shards: Vec<u32> = all.iter().map(|(shard, ..)| *shard).collect();
    shards.sort_unstable();
    shards.dedup();
    if shards.len() != all.len() {
        return Err(ProcessorError::Config(format!(
            "cluster {name:?} has a shard of more than one replica, which a read would ask \
             only one of: {fix}"
        )));
    }
    let hosts = |list: &[(u32, String, u16)]| -> std::collections::BTreeSet<(String, u16)> {
        list.iter()
            .map(|(_, host, port)| (host.clone(), *port))
            .collect()
    };
    if hosts(replicas) != hosts(all) || all.len() != replicas.len() {
        return Err(ProcessorError::Config(format!(
            "cluster {name:?} is not the replicas of {cluster:?}: {fix}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::unwrap_used)]
    fn only_http_and_https_urls_with_a_host_name_a_server() {
        assert!(check_url("http://127.0.0.1:8123").is_ok());
        assert!(check_url("https://ch.example.com:8443/?user=u&password=p").is_ok());
        let e = check_url("ftp://ch:21/?password=s3cret").unwrap_err();
        assert!(
            e.contains("not an http:// or https:// URL") && !e.contains("s3cret"),
            "{e}"
        );
        assert!(check_url("127.0.0.1:8123").is_err());
        assert!(check_url("").is_err());
    }

    #[test]
    fn redacted_urls_keep_no_password() {
        assert_eq!(
            redacted_url("http://ch:8123/?user=pitboss&password=s3cret&max_threads=2"),
            "http://ch:8123/?max_threads=2"
        );
        assert_eq!(
            redacted_url("http://pitboss:s3cret@ch:8123/"),
            "http://pitboss:redacted@ch:8123/"
        );
        assert!(!redacted_url("ch:8123/?password=s3cret").contains("s3cret"));
        assert_eq!(
            redacted_url("http://ch:99999/?password=s3cret"),
            "(an unparsable URL)"
        );
    }

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
    fn user_and_password_leave_the_url_for_headers() {
        assert_eq!(
            credentials("http://ch:8123/?user=pitboss&password=a%2Bb%26c&database=x"),
            (
                "http://ch:8123/?database=x".to_owned(),
                Some("pitboss".to_owned()),
                Some("a+b&c".to_owned())
            )
        );
        assert_eq!(
            credentials("https://ch:8443/?password=p&user=u"),
            (
                "https://ch:8443/".to_owned(),
                Some("u".to_owned()),
                Some("p".to_owned())
            )
        );
        assert_eq!(
            credentials("http://127.0.0.1:8123"),
            ("http://127.0.0.1:8123/".to_owned(), None, None)
        );
        assert_eq!(
            credentials("not a url"),
            ("not a url".to_owned(), None, None)
        );
    }

    #[test]
    fn the_replicas_cluster_must_be_every_replica_as_a_shard_of_its_own() {
        let r = |shard: u32, host: &str, port: u16| (shard, host.to_owned(), port);
        let pitboss = [
            r(1, "10.0.0.1", 9000),
            r(1, "10.0.0.2", 9000),
            r(2, "10.0.0.3", 9000),
            r(2, "10.0.0.4", 9000),
        ];
        let each: Vec<_> = pitboss
            .iter()
            .enumerate()
            .map(|(i, (_, host, port))| r(i as u32 + 1, host, *port))
            .collect();
        assert!(check_replicas_cluster("pitboss", &pitboss, &each).is_ok());
        let refused =
            |all: &[(u32, String, u16)]| match check_replicas_cluster("pitboss", &pitboss, all) {
                Err(ProcessorError::Config(why)) => why,
                other => panic!("{other:?}"),
            };
        assert!(refused(&[]).starts_with(
            "cluster \"pitboss_replicas\" is not in the server's remote_servers: define it"
        ));
        // A copy of `pitboss`: one replica per shard would be read.
        assert!(refused(&pitboss).contains("a shard of more than one replica"));
        assert!(refused(&each[..3]).contains("is not the replicas of \"pitboss\""));
        let mut moved = each.clone();
        moved[3].2 = 9001;
        assert!(refused(&moved).contains("is not the replicas of"));
        assert!(matches!(
            check_replicas_cluster("pitboss", &[], &each),
            Err(ProcessorError::Config(why)) if why == "cluster \"pitboss\" is not in the server's remote_servers"
        ));
    }
}

/// Where a page of [`events_page`] ended: the key of its last row, in
/// [`crate::rows::StoredEvent::REPLAY_ORDER`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventCursor {
    pub received_at_ms: u64,
    pub bus_topic: String,
    pub bus_partition: u32,
    pub bus_offset: u64,
    pub event_id: String,
    pub tenant_id: String,
}

impl EventCursor {
    /// The cursor after `row`.
    pub fn after(row: &crate::rows::StoredEvent) -> Self {
        EventCursor {
            received_at_ms: row.received_at_ms,
            bus_topic: row.bus_topic.clone(),
            bus_partition: row.bus_partition,
            bus_offset: row.bus_offset,
            event_id: row.event_id.clone(),
            tenant_id: row.tenant_id.clone(),
        }
    }
}

/// Where the stored events end on the bus, per `(bus topic, partition)` (`pitboss rules warm`
/// reads up to these).
pub async fn stored_ends(client: &Client) -> Result<Vec<crate::rows::StoredEnd>, ProcessorError> {
    Ok(client
        .query(
            "SELECT bus_topic AS topic, bus_partition AS partition, max(bus_offset) AS newest, \
             uniqExact(event_id) AS events FROM events GROUP BY bus_topic, bus_partition \
             ORDER BY bus_topic, bus_partition",
        )
        .fetch_all()
        .await?)
}

/// What the stored alert `alert_id` fired on (of `tenant`, or of every tenant holding an alert
/// of that id), copies not merged away yet counted once.
pub async fn alert_origins(
    client: &Client,
    alert_id: &str,
    tenant: Option<&str>,
) -> Result<Vec<crate::rows::AlertOrigin>, ProcessorError> {
    let sql = format!(
        "SELECT DISTINCT tenant_id, rule_id, rule_version, group_by, group_key, player_id \
         FROM alerts WHERE alert_id = ?{} ORDER BY tenant_id",
        if tenant.is_some() {
            " AND tenant_id = ?"
        } else {
            ""
        }
    );
    let mut q = client.query(&sql).bind(alert_id);
    if let Some(t) = tenant {
        q = q.bind(t);
    }
    Ok(q.fetch_all().await?)
}

/// When the event stored at `offset` of `topic`'s `partition` was received (ms).
pub async fn stored_received_at(
    client: &Client,
    topic: &str,
    partition: u32,
    offset: u64,
) -> Result<Option<u64>, ProcessorError> {
    let at: Vec<u64> = client
        .query(
            "SELECT received_at_ms FROM events \
             WHERE bus_topic = ? AND bus_partition = ? AND bus_offset = ? LIMIT 1",
        )
        .bind(topic)
        .bind(partition)
        .bind(offset)
        .fetch_all()
        .await?;
    Ok(at.into_iter().next())
}

/// How many events of `events` were received in `[from_ms, to_ms)` (of `tenant`, or all),
/// copies not yet merged away included.
pub async fn count_events(
    client: &Client,
    from_ms: u64,
    to_ms: u64,
    tenant: Option<&str>,
) -> Result<u64, ProcessorError> {
    let sql = format!(
        "SELECT count() FROM events WHERE received_at_ms >= ? AND received_at_ms < ?{}",
        if tenant.is_some() {
            " AND tenant_id = ?"
        } else {
            ""
        }
    );
    let mut q = client.query(&sql).bind(from_ms).bind(to_ms);
    if let Some(t) = tenant {
        q = q.bind(t);
    }
    Ok(q.fetch_one::<u64>().await?)
}

/// The columns [`events_page`] reads for [`crate::rows::StoredEvent`]: a database not migrated
/// to version 6 yet (older processors still serving it) has no `utc_offset_min`, read as none.
/// Asked once per scan, not per page.
pub async fn stored_event_columns(client: &Client) -> Result<String, ProcessorError> {
    let has_offset: u64 = client
        .query(
            "SELECT count() FROM system.columns WHERE database = currentDatabase() \
             AND table = 'events' AND name = 'utc_offset_min'",
        )
        .fetch_one()
        .await?;
    Ok(if has_offset > 0 {
        crate::rows::StoredEvent::COLUMNS.to_owned()
    } else {
        crate::rows::StoredEvent::columns_without_offset("CAST(NULL AS Nullable(Int16))")
    })
}

/// One page of the events received in `[from_ms, to_ms)` (of `tenant`, or all), after
/// `after`, in [`crate::rows::StoredEvent::REPLAY_ORDER`] (keyset pagination: each page costs
/// the same), reading `columns` ([`stored_event_columns`]). Without `FINAL`: a copy the table
/// has not merged away yet comes back too (the same event id, received at the same time), and
/// the caller drops it.
pub async fn events_page(
    client: &Client,
    columns: &str,
    from_ms: u64,
    to_ms: u64,
    tenant: Option<&str>,
    after: Option<&EventCursor>,
    limit: u64,
) -> Result<Vec<crate::rows::StoredEvent>, ProcessorError> {
    let mut sql =
        format!("SELECT {columns} FROM events WHERE received_at_ms >= ? AND received_at_ms < ?");
    if tenant.is_some() {
        sql.push_str(" AND tenant_id = ?");
    }
    if after.is_some() {
        // (k1, …, k6) > (c1, …, c6), spelled out (ClickHouse 18.16 compares no tuples).
        sql.push_str(
            " AND (received_at_ms > ? OR (received_at_ms = ? AND (bus_topic > ? \
             OR (bus_topic = ? AND (bus_partition > ? OR (bus_partition = ? AND (bus_offset > ? \
             OR (bus_offset = ? AND (event_id > ? OR (event_id = ? AND tenant_id > ?))))))))))",
        );
    }
    sql.push_str(&format!(
        " ORDER BY {} LIMIT ?",
        crate::rows::StoredEvent::REPLAY_ORDER
    ));
    let mut q = client.query(&sql).bind(from_ms).bind(to_ms);
    if let Some(t) = tenant {
        q = q.bind(t);
    }
    if let Some(c) = after {
        q = q
            .bind(c.received_at_ms)
            .bind(c.received_at_ms)
            .bind(c.bus_topic.as_str())
            .bind(c.bus_topic.as_str())
            .bind(c.bus_partition)
            .bind(c.bus_partition)
            .bind(c.bus_offset)
            .bind(c.bus_offset)
            .bind(c.event_id.as_str())
            .bind(c.event_id.as_str())
            .bind(c.tenant_id.as_str());
    }
    Ok(q.bind(limit)
        .fetch_all::<crate::rows::StoredEvent>()
        .await?)
}
