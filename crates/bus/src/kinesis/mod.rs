//! AWS Kinesis bus (aws-sdk-kinesis), with consumer groups coordinated KCL-style through a
//! DynamoDB lease table (aws-sdk-dynamodb).
//!
//! - Topic = stream, partition = shard (index in shard-id order).
//! - `publish` uses PutRecords, at most one record per partition key per call, so a retried
//!   record can never overtake a later record of the same key; records that failed inside a
//!   successful response (throttling, internal errors) are retried with backoff; the call
//!   resolves only when every record has a sequence number.
//! - A group member heartbeats a member row and holds shard leases (owner, expiry, counter,
//!   checkpoint). Members take free or expired leases up to their fair share; a member above
//!   its share sheds leases cooperatively: [`Delivery::Revoking`], the application stores,
//!   the member checkpoints and then frees the lease. Checkpoints are written only while the
//!   member still owns the lease (conditional update), so a member that lost its lease cannot
//!   move the group backwards or forwards.
//! - A member that dies stops renewing; its leases expire after the session timeout and the
//!   others resume from the last checkpoint (records after it are redelivered).
//!
//! Resharding (split/merge) is not handled: closed parent shards are read to their end, child
//! shards are not discovered until the stream is reopened.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType, StreamStatus};
use tokio::time::Instant;

use crate::{
    Ack, Bus, BusError, Consumer, ConsumerConfig, Delivery, OutRecord, Partition, Position,
    Publisher, Record,
};

/// Largest record Kinesis accepts (data + partition key).
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// Most records in one PutRecords call.
const MAX_PUT_RECORDS: usize = 500;
/// Most bytes in one PutRecords call.
const MAX_PUT_BYTES: usize = 5 * 1024 * 1024;

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
}

impl Shared {
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
        let ids = Arc::new(ids);
        self.shards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(stream.to_owned(), ids.clone());
        Ok(ids)
    }

    async fn ensure_lease_table(&self) -> Result<(), BusError> {
        self.lease_table_ready
            .get_or_try_init(|| async {
                let table = &self.config.lease_table;
                let attr = |name: &str| {
                    AttributeDefinition::builder()
                        .attribute_name(name)
                        .attribute_type(ScalarAttributeType::S)
                        .build()
                        .map_err(unavailable)
                };
                let key = |name: &str, kind: KeyType| {
                    KeySchemaElement::builder()
                        .attribute_name(name)
                        .key_type(kind)
                        .build()
                        .map_err(unavailable)
                };
                let created = self
                    .dynamo
                    .create_table()
                    .table_name(table)
                    .billing_mode(BillingMode::PayPerRequest)
                    .attribute_definitions(attr("pk")?)
                    .attribute_definitions(attr("sk")?)
                    .key_schema(key("pk", KeyType::Hash)?)
                    .key_schema(key("sk", KeyType::Range)?)
                    .send()
                    .await;
                match created {
                    Ok(_) => {}
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|s| s.is_resource_in_use_exception()) => {}
                    Err(e) => return Err(unavailable(sdk(e))),
                }
                for _ in 0..100 {
                    let d = self
                        .dynamo
                        .describe_table()
                        .table_name(table)
                        .send()
                        .await
                        .map_err(|e| unavailable(sdk(e)))?;
                    if d.table()
                        .and_then(|t| t.table_status())
                        .is_some_and(|s| s.as_str() == "ACTIVE")
                    {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(BusError::Unavailable(format!(
                    "lease table {table} did not become active"
                )))
            })
            .await
            .map(|_| ())
    }
}

#[async_trait]
impl Publisher for KinesisBus {
    async fn publish(&self, topic: &str, records: Vec<OutRecord>) -> Result<Vec<Ack>, BusError> {
        if let Some((i, r)) = records
            .iter()
            .enumerate()
            .find(|(_, r)| r.key.len() + r.value.len() > MAX_RECORD_BYTES)
        {
            return Err(BusError::Rejected(format!(
                "record {i} has {} bytes; Kinesis accepts at most {MAX_RECORD_BYTES}",
                r.key.len() + r.value.len()
            )));
        }
        if let Some((i, _)) = records
            .iter()
            .enumerate()
            .find(|(_, r)| r.key.is_empty() || r.key.len() > 256)
        {
            return Err(BusError::Rejected(format!(
                "record {i}: a partition key needs 1 to 256 characters"
            )));
        }
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let shard_ids = self.shared.shard_ids(topic).await?;
        let mut acks: Vec<Option<Ack>> = vec![None; records.len()];
        for call in rounds(&records) {
            self.put_with_retries(topic, &records, &call, &shard_ids, &mut acks)
                .await?;
        }
        acks.into_iter()
            .map(|a| a.ok_or_else(|| BusError::Unavailable("a record was not acknowledged".into())))
            .collect()
    }

    async fn check(&self) -> Result<(), BusError> {
        self.shared
            .kinesis
            .list_streams()
            .limit(1)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| unavailable(sdk(e)))
    }
}

/// Splits a batch into PutRecords calls, in order, with at most one record per key per call
/// (and within the count and size limits), so per-key order survives partial failures.
fn rounds(records: &[OutRecord]) -> Vec<Vec<usize>> {
    let mut calls: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut keys = std::collections::HashSet::new();
    let mut bytes = 0;
    for (i, r) in records.iter().enumerate() {
        let size = r.key.len() + r.value.len();
        if keys.contains(r.key.as_str())
            || current.len() == MAX_PUT_RECORDS
            || bytes + size > MAX_PUT_BYTES
        {
            calls.push(std::mem::take(&mut current));
            keys.clear();
            bytes = 0;
        }
        keys.insert(r.key.as_str());
        bytes += size;
        current.push(i);
    }
    if !current.is_empty() {
        calls.push(current);
    }
    calls
}

impl KinesisBus {
    async fn put_with_retries(
        &self,
        stream: &str,
        records: &[OutRecord],
        call: &[usize],
        shard_ids: &[String],
        acks: &mut [Option<Ack>],
    ) -> Result<(), BusError> {
        let mut todo: Vec<usize> = call.to_vec();
        let mut backoff = Duration::from_millis(50);
        for attempt in 1..=self.shared.config.max_put_attempts {
            let entries = todo
                .iter()
                .map(|&i| {
                    PutRecordsRequestEntry::builder()
                        .partition_key(&records[i].key)
                        .data(Blob::new(records[i].value.clone()))
                        .build()
                        .map_err(unavailable)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = self
                .shared
                .kinesis
                .put_records()
                .stream_name(stream)
                .set_records(Some(entries))
                .send()
                .await
                .map_err(|e| stream_error(stream, e))?;
            let mut failed = Vec::new();
            let mut last_error = String::new();
            for (&i, entry) in todo.iter().zip(out.records()) {
                match (
                    entry.error_code(),
                    entry.shard_id(),
                    entry.sequence_number(),
                ) {
                    (None, Some(shard), Some(seq)) => {
                        let partition =
                            shard_ids.iter().position(|s| s == shard).unwrap_or(0) as Partition;
                        acks[i] = Some(Ack {
                            partition,
                            position: Position::Sequence(seq.to_owned()),
                        });
                    }
                    (code, _, _) => {
                        last_error = format!(
                            "{}: {}",
                            code.unwrap_or("no sequence number"),
                            entry.error_message().unwrap_or_default()
                        );
                        failed.push(i);
                    }
                }
            }
            if failed.is_empty() {
                return Ok(());
            }
            tracing::warn!(stream, failed = failed.len(), attempt, error = %last_error, "PutRecords partially failed; retrying the failed records");
            todo = failed;
            if attempt < self.shared.config.max_put_attempts {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            } else {
                return Err(BusError::Unavailable(format!(
                    "{} records still failing after {attempt} attempts: {last_error}",
                    todo.len()
                )));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Bus for KinesisBus {
    async fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), BusError> {
        let kinesis = &self.shared.kinesis;
        match kinesis
            .create_stream()
            .stream_name(topic)
            .shard_count(partitions as i32)
            .send()
            .await
        {
            Ok(_) => {}
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_in_use_exception()) => {}
            Err(e) => return Err(unavailable(sdk(e))),
        }
        for _ in 0..300 {
            let d = kinesis
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

    fn publisher(&self) -> Arc<dyn Publisher> {
        Arc::new(self.clone())
    }

    async fn consumer(
        &self,
        group: &str,
        topic: &str,
        config: ConsumerConfig,
    ) -> Result<Box<dyn Consumer>, BusError> {
        self.shared.ensure_lease_table().await?;
        let shards = self.shared.shard_ids(topic).await?;
        let mut consumer = KinesisConsumer {
            shared: self.shared.clone(),
            pk: format!("{group}|{topic}"),
            stream: topic.to_owned(),
            member: uuid::Uuid::now_v7().to_string(),
            shards,
            lease_ms: config.session_timeout.as_millis() as i64,
            owned: BTreeMap::new(),
            stored: BTreeMap::new(),
            releasing: Vec::new(),
            to_revoke: Vec::new(),
            to_assign: Vec::new(),
            next_maintenance: Instant::now(),
            cursor: 0,
        };
        consumer.heartbeat().await?;
        Ok(Box::new(consumer))
    }
}

#[derive(Debug)]
struct Lease {
    /// Last checkpointed sequence number when the lease was taken.
    checkpoint: Option<String>,
    /// Sequence number of the last record handed to the application.
    delivered: Option<String>,
    iterator: Option<String>,
    /// Do not call GetRecords on this shard before this instant (it was empty).
    idle_until: Option<Instant>,
}

/// A member of a consumer group on a Kinesis stream.
#[derive(Debug)]
pub struct KinesisConsumer {
    shared: Arc<Shared>,
    pk: String,
    stream: String,
    member: String,
    shards: Arc<Vec<String>>,
    lease_ms: i64,
    owned: BTreeMap<Partition, Lease>,
    stored: BTreeMap<Partition, String>,
    releasing: Vec<Partition>,
    to_revoke: Vec<Partition>,
    to_assign: Vec<Partition>,
    next_maintenance: Instant,
    cursor: usize,
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn conditional_failed<E, R>(e: &aws_sdk_dynamodb::error::SdkError<E, R>) -> bool
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    e.as_service_error()
        .and_then(|s| s.code())
        .is_some_and(|c| c == "ConditionalCheckFailedException")
}

impl KinesisConsumer {
    fn shard_key(&self, p: Partition) -> String {
        format!("shard#{}", self.shards[p as usize])
    }

    async fn heartbeat(&mut self) -> Result<(), BusError> {
        self.shared
            .dynamo
            .put_item()
            .table_name(&self.shared.config.lease_table)
            .item("pk", s(&self.pk))
            .item("sk", s(format!("member#{}", self.member)))
            .item("lease_expires", n(now_ms() + self.lease_ms))
            .send()
            .await
            .map_err(|e| unavailable(sdk(e)))?;
        Ok(())
    }

    /// Heartbeat, renew owned leases, then move toward the fair share.
    async fn maintain(&mut self) -> Result<(), BusError> {
        self.heartbeat().await?;
        let table = self.shared.config.lease_table.clone();
        let dynamo = self.shared.dynamo.clone();
        let owned: Vec<Partition> = self
            .owned
            .keys()
            .copied()
            .chain(self.releasing.iter().copied())
            .collect();
        for p in owned {
            let renewed = self
                .update_owned_lease(
                    p,
                    "SET lease_expires = :exp, lease_counter = lease_counter + :one",
                    &[(":exp", n(now_ms() + self.lease_ms)), (":one", n(1))],
                )
                .await?;
            if !renewed {
                tracing::warn!(shard = p, "lease lost; another member owns it now");
                self.owned.remove(&p);
                self.stored.remove(&p);
                self.releasing.retain(|r| *r != p);
                self.to_revoke.retain(|r| *r != p);
                self.to_assign.retain(|r| *r != p);
            }
        }

        let now = now_ms();
        let rows = dynamo
            .query()
            .table_name(&table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(&self.pk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable(sdk(e)))?;
        let mut members = 0usize;
        let mut leases: HashMap<String, (String, i64, i64, Option<String>)> = HashMap::new();
        for item in rows.items() {
            let sk = item
                .get("sk")
                .and_then(|v| v.as_s().ok())
                .cloned()
                .unwrap_or_default();
            let num = |k: &str| {
                item.get(k)
                    .and_then(|v| v.as_n().ok())
                    .and_then(|v| v.parse::<i64>().ok())
                    .unwrap_or(0)
            };
            if sk.starts_with("member#") {
                if num("lease_expires") > now {
                    members += 1;
                }
            } else if let Some(shard) = sk.strip_prefix("shard#") {
                let owner = item
                    .get("lease_owner")
                    .and_then(|v| v.as_s().ok())
                    .cloned()
                    .unwrap_or_default();
                let checkpoint = item.get("checkpoint").and_then(|v| v.as_s().ok()).cloned();
                leases.insert(
                    shard.to_owned(),
                    (
                        owner,
                        num("lease_expires"),
                        num("lease_counter"),
                        checkpoint,
                    ),
                );
            }
        }
        let members = members.max(1);
        let fair = self.shards.len().div_ceil(members);

        // Shed leases above the fair share, cooperatively.
        let holding = self.owned.len() - self.to_revoke.len().min(self.owned.len());
        if holding > fair {
            let extra: Vec<Partition> = self
                .owned
                .keys()
                .rev()
                .filter(|p| !self.to_revoke.contains(p))
                .take(holding - fair)
                .copied()
                .collect();
            self.to_revoke.extend(extra);
            return Ok(());
        }

        // Take free or expired leases up to the fair share.
        for (idx, shard) in self.shards.clone().iter().enumerate() {
            let p = idx as Partition;
            if self.owned.len() >= fair {
                break;
            }
            if self.owned.contains_key(&p) || self.releasing.contains(&p) {
                continue;
            }
            let (owner, expires, counter, checkpoint) = match leases.get(shard) {
                Some(l) => l.clone(),
                None => (String::new(), 0, 0, None),
            };
            if !owner.is_empty() && expires > now {
                continue;
            }
            let taken = dynamo
                .update_item()
                .table_name(&table)
                .key("pk", s(&self.pk))
                .key("sk", s(format!("shard#{shard}")))
                .update_expression(
                    "SET lease_owner = :me, lease_expires = :exp, lease_counter = :next",
                )
                .condition_expression(
                    "attribute_not_exists(lease_counter) OR lease_counter = :seen",
                )
                .expression_attribute_values(":me", s(&self.member))
                .expression_attribute_values(":exp", n(now_ms() + self.lease_ms))
                .expression_attribute_values(":next", n(counter + 1))
                .expression_attribute_values(":seen", n(counter))
                .send()
                .await;
            match taken {
                Ok(_) => {
                    self.owned.insert(
                        p,
                        Lease {
                            checkpoint,
                            delivered: None,
                            iterator: None,
                            idle_until: None,
                        },
                    );
                    self.to_assign.push(p);
                }
                Err(e) if conditional_failed(&e) => {} // someone else was faster
                Err(e) => return Err(unavailable(sdk(e))),
            }
        }
        Ok(())
    }

    async fn commit_stored(&mut self) -> Result<(), BusError> {
        let stored: Vec<(Partition, String)> =
            self.stored.iter().map(|(p, q)| (*p, q.clone())).collect();
        for (p, seq) in stored {
            if !self
                .update_owned_lease(p, "SET checkpoint = :seq", &[(":seq", s(&seq))])
                .await?
            {
                // Fenced: the lease moved on; its new owner resumes from the last checkpoint.
                self.owned.remove(&p);
                self.stored.remove(&p);
            }
        }
        Ok(())
    }

    async fn release(&mut self, parts: &[Partition]) -> Result<(), BusError> {
        for &p in parts {
            // Not owned any more is fine too: someone else has it already.
            self.update_owned_lease(
                p,
                "SET lease_owner = :none, lease_expires = :zero, lease_counter = lease_counter + :one",
                &[(":none", s("")), (":zero", n(0)), (":one", n(1))],
            )
            .await?;
            self.owned.remove(&p);
            self.stored.remove(&p);
        }
        Ok(())
    }

    /// Updates this member's lease row of shard `p`, only while this member owns it.
    /// `Ok(false)`: it does not (any more) — the update was fenced off.
    async fn update_owned_lease(
        &self,
        p: Partition,
        expression: &str,
        values: &[(&str, AttributeValue)],
    ) -> Result<bool, BusError> {
        let mut request = self
            .shared
            .dynamo
            .update_item()
            .table_name(&self.shared.config.lease_table)
            .key("pk", s(&self.pk))
            .key("sk", s(self.shard_key(p)))
            .update_expression(expression)
            .condition_expression("lease_owner = :me")
            .expression_attribute_values(":me", s(&self.member));
        for (name, value) in values {
            request = request.expression_attribute_values(*name, value.clone());
        }
        match request.send().await {
            Ok(_) => Ok(true),
            Err(e) if conditional_failed(&e) => Ok(false),
            Err(e) => Err(unavailable(sdk(e))),
        }
    }

    async fn finish_revoke(&mut self) -> Result<(), BusError> {
        if self.releasing.is_empty() {
            return Ok(());
        }
        self.commit_stored().await?;
        let parts = std::mem::take(&mut self.releasing);
        self.release(&parts).await
    }

    async fn iterator(&self, p: Partition, lease: &Lease) -> Result<Option<String>, BusError> {
        let req = self
            .shared
            .kinesis
            .get_shard_iterator()
            .stream_name(&self.stream)
            .shard_id(&self.shards[p as usize]);
        let req = match lease.delivered.as_ref().or(lease.checkpoint.as_ref()) {
            Some(seq) => req
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(seq),
            None => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
        };
        let out = req.send().await.map_err(|e| unavailable(sdk(e)))?;
        Ok(out.shard_iterator().map(str::to_owned))
    }

    async fn fetch(&mut self, max: usize) -> Result<Vec<Record>, BusError> {
        let mut parts: Vec<Partition> = self
            .owned
            .keys()
            .filter(|p| !self.to_revoke.contains(p))
            .copied()
            .collect();
        if parts.is_empty() {
            return Ok(Vec::new());
        }
        let start = self.cursor % parts.len();
        parts.rotate_left(start);
        self.cursor = self.cursor.wrapping_add(1);
        let mut out = Vec::new();
        for p in parts {
            if out.len() >= max {
                break;
            }
            let Some(lease) = self.owned.get(&p) else {
                continue;
            };
            if lease.idle_until.is_some_and(|t| Instant::now() < t) {
                continue;
            }
            let iterator = match &lease.iterator {
                Some(it) => it.clone(),
                None => match self.iterator(p, lease).await? {
                    Some(it) => it,
                    None => continue, // closed shard, read to its end
                },
            };
            let limit = (max - out.len()).min(10_000) as i32;
            let got = self
                .shared
                .kinesis
                .get_records()
                .shard_iterator(&iterator)
                .limit(limit)
                .send()
                .await;
            let Some(lease) = self.owned.get_mut(&p) else {
                continue;
            };
            let got = match got {
                Ok(g) => g,
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_expired_iterator_exception()) =>
                {
                    lease.iterator = None;
                    continue;
                }
                Err(e) => return Err(unavailable(sdk(e))),
            };
            lease.iterator = got.next_shard_iterator().map(str::to_owned);
            if got.records().is_empty() {
                lease.idle_until = Some(Instant::now() + Duration::from_millis(200));
            } else {
                lease.idle_until = None;
            }
            for r in got.records() {
                lease.delivered = Some(r.sequence_number().to_owned());
                out.push(Record {
                    partition: p,
                    position: Position::Sequence(r.sequence_number().to_owned()),
                    key: r.partition_key().unwrap_or_default().to_owned(),
                    value: r.data().as_ref().to_vec(),
                    timestamp_ms: r
                        .approximate_arrival_timestamp()
                        .and_then(|t| t.to_millis().ok())
                        .unwrap_or(0),
                });
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Consumer for KinesisConsumer {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Delivery, BusError> {
        self.finish_revoke().await?;
        let deadline = Instant::now() + wait;
        loop {
            if Instant::now() >= self.next_maintenance {
                self.maintain().await?;
                self.next_maintenance = Instant::now()
                    + Duration::from_millis((self.lease_ms / 5).clamp(100, 2000) as u64);
            }
            if !self.to_revoke.is_empty() {
                let parts = std::mem::take(&mut self.to_revoke);
                self.releasing.extend(parts.iter().copied());
                return Ok(Delivery::Revoking(parts));
            }
            if !self.to_assign.is_empty() {
                return Ok(Delivery::Assigned(std::mem::take(&mut self.to_assign)));
            }
            let records = self.fetch(max).await?;
            if !records.is_empty() {
                return Ok(Delivery::Records(records));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Delivery::Records(Vec::new()));
            }
            let nap = (deadline - now)
                .min(Duration::from_millis(100))
                .min(self.next_maintenance.saturating_duration_since(now));
            tokio::time::sleep(nap.max(Duration::from_millis(5))).await;
        }
    }

    fn store(&mut self, partition: Partition, position: &Position) -> Result<(), BusError> {
        let Position::Sequence(seq) = position else {
            return Err(BusError::Config(format!(
                "not a Kinesis sequence number: {position}"
            )));
        };
        if !self.owned.contains_key(&partition) {
            return Err(BusError::NotAssigned(partition));
        }
        // Sequence numbers grow within a shard; compare numerically (they are decimal text).
        let newer = self
            .stored
            .get(&partition)
            .is_none_or(|old| (old.len(), old.as_str()) < (seq.len(), seq.as_str()));
        if newer {
            self.stored.insert(partition, seq.clone());
        }
        Ok(())
    }

    async fn commit(&mut self) -> Result<(), BusError> {
        self.commit_stored().await?;
        self.finish_revoke().await
    }

    fn assignment(&self) -> Vec<Partition> {
        self.owned
            .keys()
            .filter(|p| !self.releasing.contains(p))
            .copied()
            .collect()
    }

    async fn close(mut self: Box<Self>) -> Result<(), BusError> {
        self.commit_stored().await?;
        let all: Vec<Partition> = self.owned.keys().copied().collect();
        self.release(&all).await?;
        self.shared
            .dynamo
            .delete_item()
            .table_name(&self.shared.config.lease_table)
            .key("pk", s(&self.pk))
            .key("sk", s(format!("member#{}", self.member)))
            .send()
            .await
            .map_err(|e| unavailable(sdk(e)))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_keep_one_record_per_key_per_call_and_preserve_order() {
        let recs: Vec<OutRecord> = ["a", "b", "a", "c", "a", "b"]
            .iter()
            .enumerate()
            .map(|(i, k)| OutRecord::new(*k, vec![i as u8]))
            .collect();
        let calls = rounds(&recs);
        assert_eq!(calls, vec![vec![0, 1], vec![2, 3], vec![4, 5]]);
        let flat: Vec<usize> = calls.concat();
        assert_eq!(flat, (0..recs.len()).collect::<Vec<_>>());
    }

    #[test]
    fn rounds_respect_count_and_size_limits() {
        let many: Vec<OutRecord> = (0..1200)
            .map(|i| OutRecord::new(format!("k{i}"), vec![0u8; 10]))
            .collect();
        assert!(rounds(&many).iter().all(|c| c.len() <= MAX_PUT_RECORDS));
        let big: Vec<OutRecord> = (0..12)
            .map(|i| OutRecord::new(format!("k{i}"), vec![0u8; 1_000_000]))
            .collect();
        assert!(rounds(&big).iter().all(|c| c.len() <= 5));
    }
}
