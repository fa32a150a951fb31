//! AWS Kinesis bus (aws-sdk-kinesis): configuration, errors, the [`KinesisBus`] and its shard
//! listing; consumer groups are coordinated KCL-style through a DynamoDB lease table
//! (aws-sdk-dynamodb).
//!
//! - Topic = stream, partition = shard (index in shard-id order).
//! - `publisher`: PutRecords, at most one record per partition key per call, so a retried
//!   record can never overtake a later record of the same key; records that failed inside a
//!   successful response (throttling, internal errors) are retried with backoff; the call
//!   resolves only when every record has a sequence number.
//! - [`envelope`]: Kinesis records have no headers; a record's headers travel in an envelope at
//!   the start of its data blob (none when it has no headers).
//! - `consumer` and `leases`: a group member heartbeats a member row and holds shard leases
//!   (owner, expiry, counter, one checkpoint per stream). Members take free or expired leases up
//!   to their fair share; a member above its share sheds leases cooperatively
//!   ([`Delivery::Revoking`](crate::Delivery::Revoking), the application stores, the member
//!   checkpoints and then frees the lease). Checkpoints are written only while the member still
//!   owns the lease (conditional update), so a member that lost its lease cannot move the
//!   group backwards or forwards. The lease of shard `p` also covers shard `p` of every
//!   companion stream.
//! - `reader`: ungrouped readers, shard iterators and nothing else (no DynamoDB).
//! - A member that dies stops renewing; its leases expire after the session timeout and the
//!   others resume from the last checkpoint (records after it are redelivered).
//!
//! Resharding (split/merge) is not handled: closed parent shards are read to their end, child
//! shards are not discovered until the stream is reopened.

mod consumer;
pub mod envelope;
mod leases;
mod publisher;
mod reader;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_sdk_kinesis::types::StreamStatus;

pub use consumer::KinesisConsumer;
pub use reader::KinesisReader;

use crate::{Bus, BusError, Consumer, ConsumerConfig, Partition, Publisher, ReadFrom, Reader};

/// Largest record Kinesis accepts (data blob, header envelope included, + partition key).
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;

/// Settings of the Kinesis bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KinesisConfig {
    pub region: String,
    /// Custom endpoint (LocalStack, moto); None for AWS.
    pub endpoint_url: Option<String>,
    /// Static credentials (access key, secret) for emulators; None uses the default chain.
    pub static_credentials: Option<(String, String)>,
    /// DynamoDB table holding leases and checkpoints (created on first use).
    pub lease_table: String,
    /// Attempts for records that fail inside a PutRecords response.
    pub max_put_attempts: u32,
}

impl KinesisConfig {
    /// Defaults for a region.
    pub fn new(region: impl Into<String>) -> Self {
        KinesisConfig {
            region: region.into(),
            endpoint_url: None,
            static_credentials: None,
            lease_table: "pitboss-leases".into(),
            max_put_attempts: 8,
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(e.to_string())
}

/// Full error text of an SDK error (service message included).
fn sdk<E: std::error::Error>(e: E) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A Kinesis call's error: `UnknownTopic` when the stream does not exist, else `Unavailable`.
fn stream_error<E, R>(stream: &str, e: aws_sdk_kinesis::error::SdkError<E, R>) -> BusError
where
    E: aws_sdk_kinesis::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    if e.as_service_error().and_then(|s| s.code()) == Some("ResourceNotFoundException") {
        BusError::UnknownTopic(stream.to_owned())
    } else {
        unavailable(sdk(e))
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A Kinesis bus. Cheap to clone.
#[derive(Debug, Clone)]
pub struct KinesisBus {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    kinesis: aws_sdk_kinesis::Client,
    dynamo: aws_sdk_dynamodb::Client,
    config: KinesisConfig,
    /// Stream -> shard ids in index order.
    shards: Mutex<HashMap<String, Arc<Vec<String>>>>,
    lease_table_ready: tokio::sync::OnceCell<()>,
}

impl KinesisBus {
    /// Builds the clients (credentials from the default AWS chain unless static ones are set).
    pub async fn new(config: KinesisConfig) -> Result<Self, BusError> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(config.region.clone()));
        if let Some(url) = &config.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let Some((key, secret)) = &config.static_credentials {
            loader = loader.credentials_provider(aws_credential_types::Credentials::new(
                key,
                secret,
                None,
                None,
                "pitboss-static",
            ));
        }
        let sdk = loader.load().await;
        Ok(KinesisBus {
            shared: Arc::new(Shared {
                kinesis: aws_sdk_kinesis::Client::new(&sdk),
                dynamo: aws_sdk_dynamodb::Client::new(&sdk),
                config,
                shards: Mutex::new(HashMap::new()),
                lease_table_ready: tokio::sync::OnceCell::new(),
            }),
        })
    }
    /// Waits (up to 30 s) until `topic` is active: made, or updated (a retention change).
    async fn until_active(&self, topic: &str) -> Result<(), BusError> {
        for _ in 0..300 {
            let d = self
                .shared
                .kinesis
                .describe_stream_summary()
                .stream_name(topic)
                .send()
                .await
                .map_err(|e| unavailable(sdk(e)))?;
            if d.stream_description_summary()
                .is_some_and(|s| *s.stream_status() == StreamStatus::Active)
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(BusError::Unavailable(format!(
            "stream {topic} did not become active"
        )))
    }
}

impl Shared {
    /// The shard ids of `stream` in index order (listed once per bus, then cached).
    async fn shard_ids(&self, stream: &str) -> Result<Arc<Vec<String>>, BusError> {
        if let Some(ids) = self
            .shards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(stream)
        {
            return Ok(ids.clone());
        }
        let mut ids = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let req = match &token {
                Some(t) => self.kinesis.list_shards().next_token(t),
                None => self.kinesis.list_shards().stream_name(stream),
            };
            let out = req.send().await.map_err(|e| stream_error(stream, e))?;
            ids.extend(out.shards().iter().map(|s| s.shard_id().to_owned()));
            token = out.next_token().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        ids.sort();
        // The first listing stays: every consumer, reader and `partition_id` of this bus
        // numbers the shards alike (one listing that finished later does not renumber them).
        let ids = self
            .shards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(stream.to_owned())
            .or_insert_with(|| Arc::new(ids))
            .clone();
        Ok(ids)
    }
}

#[async_trait]
impl Bus for KinesisBus {
    async fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), BusError> {
        self.create_topic_if_missing(topic, partitions)
            .await
            .map(|_| ())
    }

    async fn create_topic_if_missing(
        &self,
        topic: &str,
        partitions: u32,
    ) -> Result<bool, BusError> {
        let kinesis = &self.shared.kinesis;
        let made = match kinesis
            .create_stream()
            .stream_name(topic)
            .shard_count(partitions as i32)
            .send()
            .await
        {
            Ok(_) => true,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_in_use_exception()) =>
            {
                false
            }
            Err(e) => return Err(unavailable(sdk(e))),
        };
        self.until_active(topic).await?;
        Ok(made)
    }

    fn publisher(&self) -> Arc<dyn Publisher> {
        Arc::new(self.clone())
    }

    async fn partition_count(&self, topic: &str) -> Result<u32, BusError> {
        Ok(self.shared.shard_ids(topic).await?.len() as u32)
    }

    async fn partition_id(
        &self,
        topic: &str,
        partition: Partition,
    ) -> Result<Option<String>, BusError> {
        let ids = self.shared.shard_ids(topic).await?;
        ids.get(partition as usize)
            .map(|id| Some(id.clone()))
            .ok_or_else(|| {
                BusError::Config(format!(
                    "{topic} has {} shards: no shard {partition}",
                    ids.len()
                ))
            })
    }

    /// Raises or lowers the stream's retention to `hours` (24 to 8760), then waits until it is
    /// active again (a retention change updates the stream).
    async fn set_retention_hours(&self, topic: &str, hours: u32) -> Result<(), BusError> {
        if !(24..=8760).contains(&hours) {
            return Err(BusError::Config(format!(
                "{topic}: a Kinesis stream keeps its records 24 to 8760 hours, not {hours}"
            )));
        }
        let kinesis = &self.shared.kinesis;
        let now = kinesis
            .describe_stream_summary()
            .stream_name(topic)
            .send()
            .await
            .map_err(|e| unavailable(sdk(e)))?
            .stream_description_summary()
            .map(|s| s.retention_period_hours())
            .unwrap_or(24);
        let hours = hours as i32;
        if now == hours {
            return Ok(());
        }
        let changed = if hours > now {
            kinesis
                .increase_stream_retention_period()
                .stream_name(topic)
                .retention_period_hours(hours)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| unavailable(sdk(e)))
        } else {
            kinesis
                .decrease_stream_retention_period()
                .stream_name(topic)
                .retention_period_hours(hours)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| unavailable(sdk(e)))
        };
        changed?;
        self.until_active(topic).await
    }

    async fn consumer(
        &self,
        group: &str,
        topic: &str,
        config: ConsumerConfig,
    ) -> Result<Box<dyn Consumer>, BusError> {
        Ok(Box::new(
            KinesisConsumer::join(self.shared.clone(), group, topic, config).await?,
        ))
    }

    async fn reader(
        &self,
        topic: &str,
        starts: Vec<(Partition, ReadFrom)>,
    ) -> Result<Box<dyn Reader>, BusError> {
        Ok(Box::new(
            KinesisReader::open(self.shared.clone(), topic, starts).await?,
        ))
    }
}
