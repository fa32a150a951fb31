//! The Pitboss event bus: one small interface over three implementations.
//!
//! - [`embedded::EmbeddedBus`]: a durable partitioned log in SQLite for the one-process mode;
//! - [`kafka::KafkaBus`]: Apache Kafka (or any Kafka-compatible broker) through rdkafka;
//! - [`kinesis::KinesisBus`]: AWS Kinesis, with consumer groups coordinated through DynamoDB leases.
//!
//! All implementations keep the same contract, checked by the same test suite
//! (`tests/contract/`):
//!
//! - [`Publisher::publish`] resolves only when every record of the batch is durable
//!   (Kafka `acks=all`, SQLite transaction committed), and returns an error — never a silent
//!   drop — when any record is not.
//! - Records with the same key (`tenant:player`) land on the same partition, in order.
//! - A [`Consumer`] is a member of a consumer group: the group's members split the partitions;
//!   offsets are stored explicitly ([`Consumer::store`]) and committed explicitly
//!   ([`Consumer::commit`]), so a consumer that dies before committing gets its records
//!   redelivered to whoever takes over its partitions.
//! - Before a partition is taken away, [`Consumer::poll`] returns [`Delivery::Revoking`]: the
//!   consumer flushes its pending work for those partitions and stores their offsets; the next
//!   call to `poll` commits what was stored and hands the partitions over.
//! - A group member starts where [`ConsumerConfig::start`] says (committed, earliest, latest or
//!   a time) and may follow co-partitioned companion topics ([`ConsumerConfig::companions`]).
//! - A [`Reader`] reads chosen partitions from chosen positions or times without a group and
//!   leaves nothing behind.
//! - Records carry [`Headers`] (type, tenant, event time; see [`header`]).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

pub mod embedded;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "kinesis")]
pub mod kinesis;
pub mod memory;
pub mod partition;
#[cfg(feature = "secrets")]
pub mod secrets;

/// Partition (Kafka) or shard index (Kinesis) within a topic.
pub type Partition = u32;

/// Where a record sits in its partition. Positions of one partition order as its records do
/// (see the `Ord` implementation).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Position {
    /// Kafka and embedded-log offset.
    Offset(i64),
    /// Kinesis sequence number (decimal text, up to 128 digits).
    Sequence(String),
}

/// Offsets order numerically, and so do sequence numbers: decimal text without leading zeros,
/// so the longer is the larger, then the text decides. (Ordered as text, "10" would come
/// before "9": moto's sequence numbers are small integers; AWS's grow in length too.) An offset
/// orders before any sequence number (they never share a partition).
impl Ord for Position {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        use std::cmp::Ordering;
        match (self, other) {
            (Position::Offset(a), Position::Offset(b)) => a.cmp(b),
            (Position::Sequence(a), Position::Sequence(b)) => (a.len(), a).cmp(&(b.len(), b)),
            (Position::Offset(_), Position::Sequence(_)) => Ordering::Less,
            (Position::Sequence(_), Position::Offset(_)) => Ordering::Greater,
        }
    }
}

impl PartialOrd for Position {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Offset(o) => write!(f, "{o}"),
            Position::Sequence(s) => f.write_str(s),
        }
    }
}

/// Names of the headers Pitboss components put on their records, so a consumer can route a
/// record without decoding it. Values are UTF-8 text; times are decimal milliseconds since the
/// Unix epoch.
pub mod header {
    /// What the record carries: an event type (`bet_placed`, …), `alert`, `push`, `delivery`,
    /// `alert_ack` (docs/alerts.md).
    pub const TYPE: &str = "pitboss-type";
    /// The tenant the record belongs to.
    pub const TENANT: &str = "pitboss-tenant";
    /// When it happened by the client's clock (`occurred_at` of an event), in ms.
    pub const EVENT_TIME: &str = "pitboss-event-time";
    /// When Pitboss received the triggering event (`received_at`), in ms: the start of
    /// time-to-notify.
    pub const RECEIVED_AT: &str = "pitboss-received-at";
    /// Set (to `1`) on an event whose `event_id` the client chose: the ids an ingest instance
    /// reads back into its dedup window when it starts (docs/api.md, "Duplicates").
    pub const CLIENT_ID: &str = "pitboss-client-id";
    /// Set (to `1`) on a record whose key is deleted: on a compacted Kafka topic
    /// ([`super::Bus::create_compacted_topic`]) the record is sent with no value (a tombstone),
    /// so compaction drops the key; it is read back with an empty value.
    pub const TOMBSTONE: &str = "pitboss-tombstone";
}

/// Record headers: names with byte values, in order (Kafka record headers; an envelope on
/// Kinesis; a column on the embedded log). A name may repeat; [`Headers::get`] returns the
/// first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, Vec<u8>)>);

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Headers(Vec::new())
    }

    /// Appends a header.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) {
        self.0.push((name.into(), value.into()));
    }

    /// These headers plus one more.
    #[must_use]
    pub fn with(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.insert(name, value);
        self
    }

    /// The value of the first header called `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The value of the first header called `name`, if it is UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The value of the first header called `name` read as a decimal integer (times in ms).
    pub fn get_i64(&self, name: &str) -> Option<i64> {
        self.get_str(name).and_then(|v| v.parse().ok())
    }

    /// Every header, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Bytes the names and values take (counted against record size limits).
    pub fn byte_len(&self) -> usize {
        self.0.iter().map(|(n, v)| n.len() + v.len()).sum()
    }
}

impl<N: Into<String>, V: Into<Vec<u8>>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        Headers(
            iter.into_iter()
                .map(|(n, v)| (n.into(), v.into()))
                .collect(),
        )
    }
}

/// A record to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    /// Partitioning key; Pitboss uses `tenant:player`.
    pub key: String,
    /// Record body (protobuf-encoded event, alert or push).
    pub value: Vec<u8>,
    /// Headers, delivered with the record.
    pub headers: Headers,
}

impl OutRecord {
    /// A record with this key and value and no headers.
    pub fn new(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        OutRecord {
            key: key.into(),
            value: value.into(),
            headers: Headers::new(),
        }
    }

    /// This record with one more header.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Bytes of key, value and headers (what size limits count).
    pub fn byte_len(&self) -> usize {
        self.key.len() + self.value.len() + self.headers.byte_len()
    }
}

/// Where a published record was durably stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub partition: Partition,
    pub position: Position,
}

/// A consumed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The topic it was read from (a group consumer with companions reads several).
    pub topic: std::sync::Arc<str>,
    pub partition: Partition,
    pub position: Position,
    pub key: String,
    pub value: Vec<u8>,
    /// When the bus stored the record, in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    pub headers: Headers,
}

/// What one call to [`Consumer::poll`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Records from assigned partitions, in partition order; empty when the wait elapsed.
    Records(Vec<Record>),
    /// These partitions were assigned to this consumer (with the same partitions of every
    /// companion topic); delivery starts where [`ConsumerConfig::start`] says.
    Assigned(Vec<Partition>),
    /// These partitions are about to move to another member. Flush pending work for them and
    /// [`Consumer::store`] the offsets of what is durable; the next `poll` (or `commit`)
    /// commits them and releases the partitions. No further records of them are delivered.
    Revoking(Vec<Partition>),
}

/// Errors of the bus; each knows whether retrying can help.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    /// The bus cannot be reached or did not confirm durability; retry with backoff.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// The bus refused a record for good (too large, invalid); retrying will not help.
    #[error("record rejected: {0}")]
    Rejected(String),
    /// The topic does not exist.
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    /// The partition is not (or no longer) assigned to this consumer.
    #[error("partition {0} is not assigned to this consumer")]
    NotAssigned(Partition),
    /// Local storage failed (embedded log).
    #[error("storage: {0}")]
    Storage(String),
    /// Invalid configuration or arguments.
    #[error("configuration: {0}")]
    Config(String),
}

impl BusError {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, BusError::Unavailable(_) | BusError::Storage(_))
    }
}

/// Writes batches of records durably.
#[async_trait]
pub trait Publisher: Send + Sync + fmt::Debug {
    /// Appends the batch to `topic`. Resolves only when every record is durable; the acks are
    /// in the order of `records`. On error, some records may have been stored (a retry may
    /// duplicate them; consumers deduplicate by event id).
    async fn publish(&self, topic: &str, records: Vec<OutRecord>) -> Result<Vec<Ack>, BusError>;

    /// Whether the bus can take writes now (for readiness probes); cheap, bounded by the caller.
    async fn check(&self) -> Result<(), BusError>;
}

/// A member of a consumer group reading one topic.
#[async_trait]
pub trait Consumer: Send + fmt::Debug {
    /// Waits up to `wait` for records (at most `max`) or a change of assignment.
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Delivery, BusError>;

    /// Marks the record at `position` of `partition` of `topic` (the main topic or a companion)
    /// and everything before it as processed; the next commit makes the group resume after it.
    fn store(
        &mut self,
        topic: &str,
        partition: Partition,
        position: &Position,
    ) -> Result<(), BusError>;

    /// Durably commits the stored offsets of the partitions this consumer still owns.
    async fn commit(&mut self) -> Result<(), BusError>;

    /// Partitions currently assigned to this consumer.
    fn assignment(&self) -> Vec<Partition>;

    /// Commits stored offsets and leaves the group, handing its partitions to other members.
    /// Dropping a consumer without `close` leaves the group without committing (as a crash does).
    async fn close(self: Box<Self>) -> Result<(), BusError>;
}

/// Where a group member starts reading a partition it is assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// Right after the group's committed offset; the earliest retained record when the group
    /// has none.
    #[default]
    Committed,
    /// The earliest retained record, whatever the group committed.
    Earliest,
    /// The end of the partition when it is assigned: only records published after that.
    Latest,
    /// The first record the bus stored at or after this time (ms since the Unix epoch),
    /// whatever the group committed; the end when there is none.
    Timestamp(i64),
    /// Right after the group's committed offset, as [`StartFrom::Committed`]; where the group
    /// has none (a new group, a partition it never committed), the first record stored at or
    /// after this time (ms since the Unix epoch) instead of the earliest retained one. What a
    /// consumer that takes over from another reader at a known moment needs: a restart resumes
    /// where it committed.
    CommittedOrTimestamp(i64),
}

/// Consumer tuning shared by the implementations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// How long a member may take to hand back revoked partitions before they are taken anyway.
    pub revoke_timeout: Duration,
    /// Kafka session timeout (member considered dead after this long without heartbeats).
    pub session_timeout: Duration,
    /// Where reading starts in each partition this member is assigned. Offsets are stored and
    /// committed the same way whatever it is.
    pub start: StartFrom,
    /// Co-partitioned topics read together with the main topic: the member assigned partition
    /// `p` of the topic also reads partition `p` of each companion, and commits their offsets
    /// in the same group. Every companion must have the topic's partition count (else
    /// [`BusError::Config`]); as keys map to partitions the same way on every topic of a bus,
    /// one key's records on all of them are read by one member. Pitboss follows `events` with
    /// its hot-key overflow topic this way (docs/bus.md, "Hot keys").
    pub companions: Vec<String>,
    /// How this member names itself to the group (Kafka `client.id`, which
    /// [`Bus::group_members`] reports); the bus's default when `None`.
    pub client_id: Option<String>,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            revoke_timeout: Duration::from_secs(30),
            session_timeout: Duration::from_secs(10),
            start: StartFrom::Committed,
            companions: Vec::new(),
            client_id: None,
        }
    }
}

/// One member of a consumer group, as [`Bus::group_members`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// The name it gave itself ([`ConsumerConfig::client_id`]).
    pub client_id: String,
    /// Where it connects from, as the broker sees it.
    pub host: String,
}

/// Where an ungrouped [`Reader`] starts in one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadFrom {
    /// The earliest retained record.
    Earliest,
    /// The end of the partition when the reader opens: only records published after that.
    Latest,
    /// The first record stored at or after this time (ms since the Unix epoch).
    Timestamp(i64),
    /// The record at this position (inclusive).
    At(Position),
    /// The record after this position (a client resuming after the last record it has).
    After(Position),
}

/// Reads partitions of one topic without joining a group: nothing is committed, and nothing
/// is left behind in the broker (no group, no offsets) or in DynamoDB (no lease rows) once it
/// is dropped. Every gateway instance reads every partition of `alerts` and `pushes` this way;
/// the rules engine rebuilds a partition's windows this way.
#[async_trait]
pub trait Reader: Send + fmt::Debug {
    /// Waits up to `wait` for records (at most `max`) of the partitions being read; empty when
    /// the wait elapsed. Records of one partition come in order.
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, BusError>;

    /// The partitions being read.
    fn partitions(&self) -> Vec<Partition>;

    /// Per partition, the position of the newest record stored when the reader opened (None:
    /// the partition was empty). Kinesis cannot tell this without reading: its reader returns
    /// the newest position it has seen once a shard reported nothing left behind, None before.
    fn end_positions(&self) -> std::collections::BTreeMap<Partition, Option<Position>>;

    /// Whether every partition has been read up to where it ended when the reader opened
    /// (Kinesis: every shard has answered a fetch with nothing left behind).
    fn caught_up(&self) -> bool;
}

/// A bus: creates topics, publishers and group consumers.
#[async_trait]
pub trait Bus: Send + Sync + fmt::Debug {
    /// Creates `topic` with `partitions` partitions if it does not exist (idempotent).
    async fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), BusError>;

    /// As [`Bus::create_topic`], saying whether this call made the topic: `false` when it was
    /// there, or another process made it while this call ran (Kafka and Kinesis tell; here,
    /// looked up first).
    async fn create_topic_if_missing(
        &self,
        topic: &str,
        partitions: u32,
    ) -> Result<bool, BusError> {
        match self.partition_count(topic).await {
            Ok(_) => Ok(false),
            Err(BusError::UnknownTopic(_)) => {
                self.create_topic(topic, partitions).await.map(|()| true)
            }
            Err(e) => Err(e),
        }
    }

    /// A publisher; cheap to clone and share.
    fn publisher(&self) -> std::sync::Arc<dyn Publisher>;

    /// How many partitions (shards) `topic` has.
    async fn partition_count(&self, topic: &str) -> Result<u32, BusError>;

    /// Joins `group` as a new member consuming `topic` (and `config.companions`).
    async fn consumer(
        &self,
        group: &str,
        topic: &str,
        config: ConsumerConfig,
    ) -> Result<Box<dyn Consumer>, BusError>;

    /// An ungrouped reader of these partitions of `topic`, each from its own start
    /// ([`BusError::Config`] for a partition the topic does not have, or none at all).
    async fn reader(
        &self,
        topic: &str,
        starts: Vec<(Partition, ReadFrom)>,
    ) -> Result<Box<dyn Reader>, BusError>;

    /// Creates `topic` (when missing) with one partition and log compaction (the last record
    /// of each key is kept, whatever its age; keys deleted with [`header::TOMBSTONE`] go): for
    /// state mirrored onto the bus; an existing one must have one partition and compact. True
    /// when this call made it. Buses without compaction refuse ([`BusError::Config`]).
    async fn create_compacted_topic(&self, topic: &str) -> Result<bool, BusError> {
        Err(BusError::Config(format!(
            "{topic}: this bus has no compacted topics (Kafka has)"
        )))
    }

    /// Sets how long `topic` keeps its records, in hours. Only Kinesis streams have it as a
    /// property of their own (24 h when made; Kafka topics take the brokers' `log.retention`,
    /// the embedded log its `EmbeddedConfig` retention): other buses refuse
    /// ([`BusError::Config`]).
    async fn set_retention_hours(&self, topic: &str, _hours: u32) -> Result<(), BusError> {
        Err(BusError::Config(format!(
            "{topic}: this bus sets no retention per topic (Kinesis does)"
        )))
    }

    /// The members of consumer group `group` right now (an empty list: nobody is in it), or
    /// `None` when this bus cannot tell (the embedded log's groups live in one process;
    /// Kinesis leases are not reported).
    async fn group_members(&self, _group: &str) -> Result<Option<Vec<GroupMember>>, BusError> {
        Ok(None)
    }

    /// The next offset consumer group `group` reads in each partition of `topic` it has
    /// committed (a partition it never committed is left out), or `None` when this bus cannot
    /// tell (Kinesis, whose leases hold sequence numbers). Read without joining the group.
    async fn committed_offsets(
        &self,
        _group: &str,
        _topic: &str,
    ) -> Result<Option<std::collections::BTreeMap<Partition, i64>>, BusError> {
        Ok(None)
    }

    /// What partition `partition` of `topic` is, by a name that stays with it when the
    /// topic's partitions are numbered anew: on Kinesis the shard id (a shard's number is its
    /// index in shard-id order, which moves when a reshard's closed parent shards leave the
    /// list); `None` where the number is the partition (Kafka, the embedded log). The same
    /// numbering as this bus's consumers and readers.
    async fn partition_id(
        &self,
        _topic: &str,
        _partition: Partition,
    ) -> Result<Option<String>, BusError> {
        Ok(None)
    }

    async fn reader_all(&self, topic: &str, from: ReadFrom) -> Result<Box<dyn Reader>, BusError> {
        let n = self.partition_count(topic).await?;
        self.reader(topic, (0..n).map(|p| (p, from.clone())).collect())
            .await
    }
}

/// Which bus a process writes to, as chosen by configuration (CLI flags, environment).
#[derive(Clone, PartialEq, Eq)]
pub enum BusSpec {
    /// The embedded log in a directory (one process only).
    Embedded { dir: std::path::PathBuf },
    /// Kafka with these bootstrap servers and extra librdkafka properties (security.protocol,
    /// sasl.*, linger.ms, …; applied last).
    #[cfg(feature = "kafka")]
    Kafka {
        bootstrap: String,
        options: std::collections::BTreeMap<String, String>,
    },
    /// Kinesis in a region, optionally at a custom endpoint (LocalStack), with the consumer
    /// groups' leases in a DynamoDB table (`pitboss-leases` unless named).
    #[cfg(feature = "kinesis")]
    Kinesis {
        region: String,
        endpoint: Option<String>,
        lease_table: Option<String>,
    },
}

/// Parses `key=value` librdkafka properties (from a flag or `PITBOSS_KAFKA_OPTIONS`).
pub fn parse_options<'a>(
    items: impl IntoIterator<Item = &'a str>,
) -> Result<std::collections::BTreeMap<String, String>, BusError> {
    items
        .into_iter()
        .map(str::trim)
        .enumerate()
        .filter(|(_, s)| !s.is_empty())
        .map(|(n, item)| match item.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
            // Not shown: the item may be a piece of a password holding a comma.
            _ => Err(BusError::Config(format!(
                "option {} is not key=value",
                n + 1
            ))),
        })
        .collect()
}

impl std::fmt::Debug for BusSpec {
    /// Option values may be credentials (sasl.password): only their keys are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BusSpec::Embedded { dir } => f.debug_struct("Embedded").field("dir", dir).finish(),
            #[cfg(feature = "kafka")]
            BusSpec::Kafka { bootstrap, options } => f
                .debug_struct("Kafka")
                .field("bootstrap", bootstrap)
                .field("options", &options.keys().collect::<Vec<_>>())
                .finish(),
            #[cfg(feature = "kinesis")]
            BusSpec::Kinesis {
                region,
                endpoint,
                lease_table,
            } => f
                .debug_struct("Kinesis")
                .field("region", region)
                .field("endpoint", endpoint)
                .field("lease_table", lease_table)
                .finish(),
        }
    }
}

impl BusSpec {
    /// The bus named by the environment, as the Lambda functions are configured: `PITBOSS_BUS`
    /// (`kafka` by default, `kinesis`, `embedded`) and its settings (`PITBOSS_KAFKA_BOOTSTRAP`
    /// and `PITBOSS_KAFKA_OPTIONS`; `AWS_REGION`, `PITBOSS_KINESIS_ENDPOINT` and
    /// `PITBOSS_KINESIS_LEASE_TABLE`;
    /// `PITBOSS_DATA_DIR`).
    pub fn from_env() -> Result<BusSpec, BusError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let required =
            |name: &str| var(name).ok_or_else(|| BusError::Config(format!("{name} is not set")));
        match var("PITBOSS_BUS").as_deref().unwrap_or("kafka") {
            #[cfg(feature = "kafka")]
            "kafka" => Ok(BusSpec::Kafka {
                bootstrap: required("PITBOSS_KAFKA_BOOTSTRAP")?,
                options: parse_options(
                    var("PITBOSS_KAFKA_OPTIONS")
                        .as_deref()
                        .unwrap_or("")
                        .split(','),
                )
                .map_err(|e| BusError::Config(format!("PITBOSS_KAFKA_OPTIONS: {e}")))?,
            }),
            #[cfg(feature = "kinesis")]
            "kinesis" => Ok(BusSpec::Kinesis {
                region: required("AWS_REGION")?,
                endpoint: var("PITBOSS_KINESIS_ENDPOINT"),
                lease_table: var("PITBOSS_KINESIS_LEASE_TABLE"),
            }),
            #[cfg(not(feature = "kafka"))]
            "kafka" => Err(BusError::Config(
                "PITBOSS_BUS=kafka: built without Kafka (pitboss-bus feature `kafka`)".into(),
            )),
            #[cfg(not(feature = "kinesis"))]
            "kinesis" => Err(BusError::Config(
                "PITBOSS_BUS=kinesis: built without Kinesis (pitboss-bus feature `kinesis`)".into(),
            )),
            "embedded" => Ok(BusSpec::Embedded {
                dir: required("PITBOSS_DATA_DIR")?.into(),
            }),
            other => Err(BusError::Config(format!(
                "PITBOSS_BUS={other:?}: expected kafka, kinesis or embedded"
            ))),
        }
    }

    /// [`BusSpec::from_env`], then the librdkafka options kept in the Secrets Manager secret
    /// named by `PITBOSS_KAFKA_OPTIONS_SECRET` (ARN or name), if set, over those of
    /// `PITBOSS_KAFKA_OPTIONS`: how the Lambda functions get MSK's SASL/SCRAM credentials
    /// without them in their environment ([`secrets`]).
    #[cfg(feature = "secrets")]
    pub async fn from_env_with_secrets() -> Result<BusSpec, BusError> {
        let mut spec = BusSpec::from_env()?;
        let Some(id) = std::env::var(secrets::KAFKA_OPTIONS_SECRET)
            .ok()
            .filter(|v| !v.trim().is_empty())
        else {
            return Ok(spec);
        };
        match &mut spec {
            BusSpec::Kafka { options, .. } => {
                let text = secrets::secret_string(&id).await?;
                options.extend(secrets::parse_secret_options(&id, &text)?);
                Ok(spec)
            }
            _ => Err(BusError::Config(format!(
                "{} is set but PITBOSS_BUS is not kafka: the secret holds Kafka options",
                secrets::KAFKA_OPTIONS_SECRET
            ))),
        }
    }

    /// Opens the bus.
    pub async fn open(&self) -> Result<std::sync::Arc<dyn Bus>, BusError> {
        Ok(match self {
            BusSpec::Embedded { dir } => std::sync::Arc::new(embedded::EmbeddedBus::open(
                dir,
                embedded::EmbeddedConfig::default(),
            )?),
            #[cfg(feature = "kafka")]
            BusSpec::Kafka { bootstrap, options } => {
                let mut config = kafka::KafkaConfig::new(bootstrap.clone());
                config.extra = options.clone();
                // A producer setting: given to the producer alone (librdkafka warns about it on
                // every consumer that is handed it).
                if let Some(v) = config.extra.remove("linger.ms") {
                    config.linger = std::time::Duration::from_millis(v.parse().map_err(|_| {
                        BusError::Config(format!("linger.ms={v:?} is not a number of milliseconds"))
                    })?);
                }
                std::sync::Arc::new(kafka::KafkaBus::new(config)?)
            }
            #[cfg(feature = "kinesis")]
            BusSpec::Kinesis {
                region,
                endpoint,
                lease_table,
            } => {
                let mut config = kinesis::KinesisConfig::new(region.clone());
                config.endpoint_url = endpoint.clone();
                if let Some(t) = lease_table {
                    config.lease_table = t.clone();
                }
                std::sync::Arc::new(kinesis::KinesisBus::new(config).await?)
            }
        })
    }

    /// Opens the bus and returns its publisher.
    pub async fn publisher(&self) -> Result<std::sync::Arc<dyn Publisher>, BusError> {
        Ok(self.open().await?.publisher())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_order_as_numbers() {
        let seq = |s: &str| Position::Sequence(s.to_owned());
        let mut sequences = vec![seq("10"), seq("9"), seq("100"), seq("11"), seq("2")];
        sequences.sort();
        assert_eq!(
            sequences,
            vec![seq("2"), seq("9"), seq("10"), seq("11"), seq("100")]
        );
        assert!(Position::Offset(9) < Position::Offset(10));
        assert!(Position::Offset(i64::MAX) < seq("0"));
        assert_eq!(seq("42").cmp(&seq("42")), std::cmp::Ordering::Equal);
    }

    /// `linger.ms` goes to the producer only, and a value that is not milliseconds is refused
    /// naming it (nothing connects: no broker is needed).
    #[cfg(feature = "kafka")]
    #[tokio::test]
    async fn linger_is_the_producers_and_a_bad_one_is_refused() {
        let spec = |v: &str| BusSpec::Kafka {
            bootstrap: "127.0.0.1:9".into(),
            options: [("linger.ms".to_owned(), v.to_owned())].into(),
        };
        assert!(spec("0").open().await.is_ok());
        match spec("soon").open().await {
            Err(BusError::Config(m)) => assert!(m.contains("linger.ms=\"soon\""), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    /// No error about an option shows its value: a password holding a comma, a misspelt or
    /// invalid property (librdkafka's own text quotes the value), the `Debug` of the specs.
    #[cfg(feature = "kafka")]
    #[tokio::test]
    async fn option_errors_and_debug_never_show_a_value() {
        let Err(e) = parse_options("sasl.username=u,sasl.password=ab,hunter2".split(',')) else {
            panic!("a malformed option was accepted");
        };
        let e = e.to_string();
        assert!(e.contains("option 3 is not key=value"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        for (k, v) in [
            ("sasl.pasword", "hunter2"),
            ("security.protocol", "hunter2"),
        ] {
            let spec = BusSpec::Kafka {
                bootstrap: "127.0.0.1:9".into(),
                options: [(k.to_owned(), v.to_owned())].into(),
            };
            assert!(!format!("{spec:?}").contains("hunter2"));
            match spec.open().await {
                Err(BusError::Config(m)) => {
                    assert!(m.contains(k), "{m}");
                    assert!(!m.contains("hunter2"), "{m}");
                }
                other => panic!("{k}: {other:?}"),
            }
        }
        let mut config = kafka::KafkaConfig::new("127.0.0.1:9");
        config
            .extra
            .insert("sasl.password".into(), "hunter2".into());
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
