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

/// Partition (Kafka) or shard index (Kinesis) within a topic.
pub type Partition = u32;

/// Where a record sits in its partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Position {
    /// Kafka and embedded-log offset.
    Offset(i64),
    /// Kinesis sequence number (decimal text, up to 128 digits).
    Sequence(String),
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Offset(o) => write!(f, "{o}"),
            Position::Sequence(s) => f.write_str(s),
        }
    }
}

/// A record to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    /// Partitioning key; Pitboss uses `tenant:player`.
    pub key: String,
    /// Record body (protobuf-encoded event, alert or push).
    pub value: Vec<u8>,
}

impl OutRecord {
    /// A record with this key and value.
    pub fn new(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        OutRecord {
            key: key.into(),
            value: value.into(),
        }
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
    pub partition: Partition,
    pub position: Position,
    pub key: String,
    pub value: Vec<u8>,
    /// When the bus stored the record, in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

/// What one call to [`Consumer::poll`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Records from assigned partitions, in partition order; empty when the wait elapsed.
    Records(Vec<Record>),
    /// These partitions were assigned to this consumer; delivery resumes after the group's
    /// committed offset.
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

    /// Marks the record at `position` of `partition` (and everything before it) as processed;
    /// the next commit makes the group resume after it.
    fn store(&mut self, partition: Partition, position: &Position) -> Result<(), BusError>;

    /// Durably commits the stored offsets of the partitions this consumer still owns.
    async fn commit(&mut self) -> Result<(), BusError>;

    /// Partitions currently assigned to this consumer.
    fn assignment(&self) -> Vec<Partition>;

    /// Commits stored offsets and leaves the group, handing its partitions to other members.
    /// Dropping a consumer without `close` leaves the group without committing (as a crash does).
    async fn close(self: Box<Self>) -> Result<(), BusError>;
}

/// Consumer tuning shared by the implementations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// How long a member may take to hand back revoked partitions before they are taken anyway.
    pub revoke_timeout: Duration,
    /// Kafka session timeout (member considered dead after this long without heartbeats).
    pub session_timeout: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            revoke_timeout: Duration::from_secs(30),
            session_timeout: Duration::from_secs(10),
        }
    }
}

/// A bus: creates topics, publishers and group consumers.
#[async_trait]
pub trait Bus: Send + Sync + fmt::Debug {
    /// Creates `topic` with `partitions` partitions if it does not exist (idempotent).
    async fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), BusError>;

    /// A publisher; cheap to clone and share.
    fn publisher(&self) -> std::sync::Arc<dyn Publisher>;

    /// Joins `group` as a new member consuming `topic`.
    async fn consumer(
        &self,
        group: &str,
        topic: &str,
        config: ConsumerConfig,
    ) -> Result<Box<dyn Consumer>, BusError>;
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
    /// Kinesis in a region, optionally at a custom endpoint (LocalStack).
    #[cfg(feature = "kinesis")]
    Kinesis {
        region: String,
        endpoint: Option<String>,
    },
}

/// Parses `key=value` librdkafka properties (from a flag or `PITBOSS_KAFKA_OPTIONS`).
pub fn parse_options<'a>(
    items: impl IntoIterator<Item = &'a str>,
) -> Result<std::collections::BTreeMap<String, String>, BusError> {
    items
        .into_iter()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| match item.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
            _ => Err(BusError::Config(format!(
                "expected key=value, got {:?}",
                item.split('=').next().unwrap_or_default()
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
            BusSpec::Kinesis { region, endpoint } => f
                .debug_struct("Kinesis")
                .field("region", region)
                .field("endpoint", endpoint)
                .finish(),
        }
    }
}

impl BusSpec {
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
                std::sync::Arc::new(kafka::KafkaBus::new(config)?)
            }
            #[cfg(feature = "kinesis")]
            BusSpec::Kinesis { region, endpoint } => {
                let mut config = kinesis::KinesisConfig::new(region.clone());
                config.endpoint_url = endpoint.clone();
                std::sync::Arc::new(kinesis::KinesisBus::new(config).await?)
            }
        })
    }

    /// Opens the bus and returns its publisher.
    pub async fn publisher(&self) -> Result<std::sync::Arc<dyn Publisher>, BusError> {
        Ok(self.open().await?.publisher())
    }
}
