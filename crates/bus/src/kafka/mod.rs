//! Kafka bus over rdkafka (librdkafka, bundled build): configuration, error mapping, topics
//! and metadata. The producer ([`publisher`]), the group member ([`consumer`]) and the
//! ungrouped reader ([`reader`]) each have their own module.
//!
//! - Producer: idempotent, `acks=all`, LZ4, keyed by `tenant:player`, headers as Kafka record
//!   headers; `publish` resolves when the broker acknowledged every record of the batch.
//! - Group member: cooperative-sticky (range when it follows companion topics), automatic
//!   offset storing and committing off, a revoke handshake before partitions move.
//! - Reader: `assign()` only, explicit start offsets, nothing stored or committed.

mod consumer;
mod publisher;
mod reader;
mod revival;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::producer::Producer as _;
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};

pub use consumer::KafkaConsumer;
pub use publisher::KafkaPublisher;
pub use reader::KafkaReader;

use crate::{
    Bus, BusError, Consumer, ConsumerConfig, GroupMember, Partition, Position, Publisher, ReadFrom,
    Reader, Record,
};

/// Connection, producer and lookup settings for Kafka. Its `Debug` shows the keys of `extra`,
/// never their values (`sasl.password`).
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// `host:port[,host:port…]`.
    pub bootstrap_servers: String,
    /// Replication factor of topics this bus creates; `None`: the brokers'
    /// `default.replication.factor` (and `min.insync.replicas`), as MSK and a cluster set them.
    pub replication_factor: Option<i32>,
    /// How long a record may wait for its acknowledgement before publish fails.
    pub delivery_timeout: Duration,
    /// Producer batching delay.
    pub linger: Duration,
    /// Producer compression codec.
    pub compression: String,
    /// How long one metadata or offset lookup (partition counts, watermarks, offsets for a
    /// time) may take.
    pub request_timeout: Duration,
    /// librdkafka cannot `assign()` without a `group.id`, so each reader gets a unique one
    /// starting with this prefix. Readers never join, store or commit, so the broker never
    /// sees such a group; with ACLs, allow `DESCRIBE` on groups with this prefix.
    pub reader_group_prefix: String,
    /// Extra librdkafka properties (security.protocol, sasl.*, …), applied last.
    pub extra: BTreeMap<String, String>,
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("replication_factor", &self.replication_factor)
            .field("delivery_timeout", &self.delivery_timeout)
            .field("linger", &self.linger)
            .field("compression", &self.compression)
            .field("request_timeout", &self.request_timeout)
            .field("reader_group_prefix", &self.reader_group_prefix)
            .field("extra", &self.extra.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A client librdkafka would not create, as a configuration error that names the property and
/// librdkafka's reason but not the value (rdkafka's own text ends with it: a misspelt
/// `sasl.pasword=…` would print the password).
pub(crate) fn create_error(e: rdkafka::error::KafkaError) -> BusError {
    match e {
        rdkafka::error::KafkaError::ClientConfig(_, desc, key, value) => {
            // librdkafka's reason quotes an invalid value ("Invalid value \"…\" for …").
            let desc = if value.is_empty() {
                desc
            } else {
                desc.replace(&value, "(the value)")
            };
            BusError::Config(format!("Kafka option {key}: {desc}"))
        }
        other => BusError::Config(other.to_string()),
    }
}

impl KafkaConfig {
    /// Defaults for the given bootstrap servers.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        KafkaConfig {
            bootstrap_servers: bootstrap_servers.into(),
            replication_factor: None,
            delivery_timeout: Duration::from_secs(30),
            linger: Duration::from_millis(5),
            compression: "lz4".into(),
            request_timeout: Duration::from_secs(10),
            reader_group_prefix: "pitboss-reader".into(),
            extra: BTreeMap::new(),
        }
    }

    fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers);
        c.set("client.id", "pitboss");
        c
    }

    fn apply_extra(&self, c: &mut ClientConfig) {
        for (k, v) in &self.extra {
            c.set(k, v);
        }
        // librdkafka's OpenSSL is built in (rdkafka's `ssl-vendored`: the same client in the
        // image, the Lambda zips and `pitboss up`), so its compiled-in certificate directory is
        // not the system's: over TLS (MSK's SASL_SSL, say) it looks for the system's CA bundle
        // where the distributions keep it, unless `ssl.ca.location` says where.
        let tls = self
            .extra
            .iter()
            .any(|(k, v)| k == "security.protocol" && v.to_ascii_lowercase().ends_with("ssl"));
        if tls && !self.extra.contains_key("ssl.ca.location") {
            c.set("ssl.ca.location", "probe");
        }
    }
}

fn kafka_error(e: KafkaError) -> BusError {
    use RDKafkaErrorCode as C;
    match e.rdkafka_error_code() {
        Some(
            C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::InvalidMessage
            | C::InvalidRecord
            | C::MessageBatchTooLarge,
        ) => BusError::Rejected(e.to_string()),
        Some(C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition) => {
            BusError::UnknownTopic(e.to_string())
        }
        _ => BusError::Unavailable(e.to_string()),
    }
}

/// Runs a blocking librdkafka call off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BusError> + Send + 'static,
) -> Result<T, BusError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BusError::Unavailable(e.to_string()))?
}

/// Records handed from a poll thread to its consumer or reader in one channel send:
/// per-record sends (and the wake-up of the receiving task each one costs) capped consumption
/// near 130k records/s on 2 cores.
const POLL_CHUNK: usize = 1024;

/// A polled message as a [`Record`] of `topic` (the caller's shared name for `m.topic()`).
fn record_of(m: &rdkafka::message::BorrowedMessage<'_>, topic: Arc<str>) -> Record {
    Record {
        topic,
        partition: m.partition() as Partition,
        position: Position::Offset(m.offset()),
        key: m
            .key()
            .map(|k| match std::str::from_utf8(k) {
                Ok(k) => k.to_owned(),
                Err(_) => String::from_utf8_lossy(k).into_owned(),
            })
            .unwrap_or_default(),
        value: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        timestamp_ms: m.timestamp().to_millis().unwrap_or(0),
        headers: m
            .headers()
            .map(|hs| {
                // A header with a null value (possible from other producers) reads as empty.
                hs.iter()
                    .map(|h| (h.key, h.value.unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// How many partitions `topic` has, from fresh metadata.
fn partition_count_with<C: ConsumerContext>(
    client: &BaseConsumer<C>,
    topic: &str,
    timeout: Duration,
) -> Result<u32, BusError> {
    let md = client
        .fetch_metadata(Some(topic), timeout)
        .map_err(kafka_error)?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        return Err(BusError::UnknownTopic(topic.to_owned()));
    };
    match t.error().map(RDKafkaErrorCode::from) {
        None if !t.partitions().is_empty() => Ok(t.partitions().len() as u32),
        None => Err(BusError::Unavailable(format!(
            "topic {topic} has no partitions in the metadata yet"
        ))),
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
            Err(BusError::UnknownTopic(topic.to_owned()))
        }
        Some(code) => Err(BusError::Unavailable(format!(
            "metadata of {topic}: {code}"
        ))),
    }
}

/// A topic and a partition as librdkafka numbers it.
type TopicPart = (String, i32);

/// Low and high watermarks of each of `parts` (the offsets of the oldest retained
/// record and of the next record to be written).
fn watermarks<C: ConsumerContext>(
    client: &BaseConsumer<C>,
    parts: &[TopicPart],
    timeout: Duration,
) -> Result<BTreeMap<TopicPart, (i64, i64)>, BusError> {
    parts
        .iter()
        .map(|(topic, p)| {
            let marks = client
                .fetch_watermarks(topic, *p, timeout)
                .map_err(kafka_error)?;
            Ok(((topic.clone(), *p), marks))
        })
        .collect()
}

/// For each partition, the offset of the first record stored at or after its time in ms
/// (None: there is none yet).
fn offsets_at_time<C: ConsumerContext>(
    client: &BaseConsumer<C>,
    times: &[(TopicPart, i64)],
    timeout: Duration,
) -> Result<BTreeMap<TopicPart, Option<i64>>, BusError> {
    if times.is_empty() {
        // librdkafka refuses an empty list.
        return Ok(BTreeMap::new());
    }
    let mut query = TopicPartitionList::with_capacity(times.len());
    for ((topic, p), ms) in times {
        // Negative times are Kafka's "latest" and "earliest" markers: the epoch means "all".
        query
            .add_partition_offset(topic, *p, Offset::Offset((*ms).max(0)))
            .map_err(kafka_error)?;
    }
    let found = client
        .offsets_for_times(query, Timeout::After(timeout))
        .map_err(kafka_error)?;
    found
        .elements()
        .iter()
        .map(|e| {
            e.error().map_err(kafka_error)?;
            let at = match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            Ok(((e.topic().to_owned(), e.partition()), at))
        })
        .collect()
}

/// Start offsets for `parts` from a time: the first record at or after `ms`, or the high
/// watermark taken *before* the lookup when there is none, so a record stored between the two
/// requests is read rather than skipped.
fn start_offsets_at_time<C: ConsumerContext>(
    client: &BaseConsumer<C>,
    parts: &[TopicPart],
    ms: i64,
    timeout: Duration,
) -> Result<BTreeMap<TopicPart, i64>, BusError> {
    let marks = watermarks(client, parts, timeout)?;
    let times: Vec<_> = parts.iter().map(|tp| (tp.clone(), ms)).collect();
    let found = offsets_at_time(client, &times, timeout)?;
    Ok(marks
        .into_iter()
        .map(|(tp, (_, high))| {
            let at = found.get(&tp).copied().flatten().unwrap_or(high);
            (tp, at)
        })
        .collect())
}

/// A Kafka bus: one shared idempotent producer, consumers and readers created per use.
#[derive(Clone)]
pub struct KafkaBus {
    config: KafkaConfig,
    publisher: Arc<KafkaPublisher>,
    /// A group-less consumer for metadata lookups, created on first use. Unlike the producer it
    /// never asks the broker to auto-create a topic it looks up.
    meta: Arc<std::sync::Mutex<Option<Arc<BaseConsumer>>>>,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus")
            .field("bootstrap", &self.config.bootstrap_servers)
            .finish()
    }
}

impl KafkaBus {
    /// Creates the producer (no connection is made until first use).
    pub fn new(config: KafkaConfig) -> Result<Self, BusError> {
        let publisher = KafkaPublisher::new(&config)?;
        Ok(KafkaBus {
            config,
            publisher: Arc::new(publisher),
            meta: Arc::default(),
        })
    }

    /// Waits until the producer has delivered everything queued (used at shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), BusError> {
        self.publisher.flush(timeout)
    }

    fn meta(&self) -> Result<Arc<BaseConsumer>, BusError> {
        let mut meta = self
            .meta
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(m) = meta.as_ref() {
            return Ok(m.clone());
        }
        let mut c = self.config.client();
        c.set("allow.auto.create.topics", "false");
        self.config.apply_extra(&mut c);
        let created: Arc<BaseConsumer> = Arc::new(c.create().map_err(create_error)?);
        *meta = Some(created.clone());
        Ok(created)
    }

    /// Creates `topic` (when missing) with `partitions` and the topic settings `extra`; waits
    /// until every partition has a leader. True when this call made it.
    async fn create(
        &self,
        topic: &str,
        partitions: u32,
        extra: &[(&str, &str)],
    ) -> Result<bool, BusError> {
        let mut c = self.config.client();
        self.config.apply_extra(&mut c);
        let admin: AdminClient<DefaultClientContext> = c.create().map_err(create_error)?;
        // -1: the brokers' default (KIP-464); their `min.insync.replicas` goes with it.
        let mut new = NewTopic::new(
            topic,
            partitions as i32,
            TopicReplication::Fixed(self.config.replication_factor.unwrap_or(-1)),
        );
        if let Some(rf) = self.config.replication_factor {
            new = new.set("min.insync.replicas", if rf >= 3 { "2" } else { "1" });
        }
        for (k, v) in extra {
            new = new.set(k, v);
        }

        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = admin
            .create_topics([&new], &opts)
            .await
            .map_err(kafka_error)?;
        let mut made = false;
        for r in results {
            match r {
                Ok(_) => made = true,
                // Another creator's (or there before): its partitions are its own.
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => return Ok(false),
                Err((t, code)) => {
                    return Err(BusError::Unavailable(format!("create topic {t}: {code}")));
                }
            }
        }
        // Wait until every partition has a leader, so the first publish does not race metadata.
        let producer = self.publisher.producer();
        let topic = topic.to_owned();
        blocking(move || {
            for _ in 0..100 {
                if let Ok(md) = producer
                    .client()
                    .fetch_metadata(Some(&topic), Duration::from_secs(5))
                {
                    let ready = md.topics().iter().any(|t| {
                        t.name() == topic
                            && t.error().is_none()
                            && t.partitions().len() == partitions as usize
                            && t.partitions().iter().all(|p| p.leader() >= 0)
                    });
                    if ready {
                        return Ok(made);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(BusError::Unavailable(format!(
                "topic {topic} has no leaders after creation"
            )))
        })
        .await
    }

    /// Partition counts of `topics`, in order.
    async fn partition_counts(&self, topics: Vec<String>) -> Result<Vec<u32>, BusError> {
        let meta = self.meta()?;
        let timeout = self.config.request_timeout;
        blocking(move || {
            topics
                .iter()
                .map(|t| partition_count_with(&meta, t, timeout))
                .collect()
        })
        .await
    }

    /// Checks that every companion is another existing topic with `topic`'s partition count.
    async fn check_companions(&self, topic: &str, companions: &[String]) -> Result<(), BusError> {
        let mut seen = BTreeSet::from([topic]);
        for c in companions {
            if !seen.insert(c) {
                return Err(BusError::Config(format!(
                    "companion {c:?} is the topic itself or listed twice"
                )));
            }
        }
        let mut topics = vec![topic.to_owned()];
        topics.extend(companions.iter().cloned());
        let counts = self.partition_counts(topics).await?;
        let main = counts[0];
        for (c, n) in companions.iter().zip(&counts[1..]) {
            if *n != main {
                return Err(BusError::Config(format!(
                    "companion {c} has {n} partitions but {topic} has {main}: companions must be \
                     co-partitioned"
                )));
            }
        }
        Ok(())
    }

    /// An ungrouped reader of these partitions of `topic` ([`Bus::reader`]), as its concrete
    /// type: [`KafkaReader::close`] waits until its librdkafka client is gone.
    pub async fn open_reader(
        &self,
        topic: &str,
        starts: Vec<(Partition, ReadFrom)>,
    ) -> Result<KafkaReader, BusError> {
        let config = self.config.clone();
        let topic = topic.to_owned();
        blocking(move || KafkaReader::open(&config, &topic, starts)).await
    }
}

#[async_trait]
impl Bus for KafkaBus {
    async fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), BusError> {
        self.create(topic, partitions, &[]).await.map(|_| ())
    }

    async fn create_topic_if_missing(
        &self,
        topic: &str,
        partitions: u32,
    ) -> Result<bool, BusError> {
        match self.partition_count(topic).await {
            Ok(_) => Ok(false),
            Err(BusError::UnknownTopic(_)) => self.create(topic, partitions, &[]).await,
            Err(e) => Err(e),
        }
    }

    async fn create_compacted_topic(&self, topic: &str) -> Result<bool, BusError> {
        let n = match self.partition_count(topic).await {
            Err(BusError::UnknownTopic(_)) => {
                if self
                    .create(topic, 1, &[("cleanup.policy", "compact")])
                    .await?
                {
                    return Ok(true);
                }
                // Made by another process meanwhile: checked like any other.
                self.partition_count(topic).await?
            }
            Err(e) => return Err(e),
            Ok(n) => n,
        };
        if n != 1 {
            return Err(BusError::Config(format!(
                "topic {topic} has {n} partitions; a compacted state topic has 1 (delete it or name another)"
            )));
        }
        // It exists: it must compact, or old keys would expire with their records.
        let mut c = self.config.client();
        self.config.apply_extra(&mut c);
        let admin: AdminClient<DefaultClientContext> = c.create().map_err(create_error)?;
        let opts = AdminOptions::new().request_timeout(Some(self.config.request_timeout));
        let results = admin
            .describe_configs([&rdkafka::admin::ResourceSpecifier::Topic(topic)], &opts)
            .await
            .map_err(kafka_error)?;
        let policy = results
            .into_iter()
            .next()
            .and_then(Result::ok)
            .and_then(|r| r.get("cleanup.policy").and_then(|e| e.value.clone()))
            .unwrap_or_default();
        if !policy.split(',').any(|p| p.trim() == "compact") {
            return Err(BusError::Config(format!(
                "topic {topic} has cleanup.policy={policy:?}; a state topic needs \"compact\" (kafka-configs.sh --alter --entity-type topics --entity-name {topic} --add-config cleanup.policy=compact)"
            )));
        }
        Ok(false)
    }

    fn publisher(&self) -> Arc<dyn Publisher> {
        self.publisher.clone()
    }

    async fn partition_count(&self, topic: &str) -> Result<u32, BusError> {
        Ok(self.partition_counts(vec![topic.to_owned()]).await?[0])
    }

    async fn group_members(&self, group: &str) -> Result<Option<Vec<GroupMember>>, BusError> {
        let meta = self.meta()?;
        let timeout = self.config.request_timeout;
        let group = group.to_owned();
        blocking(move || {
            let list = meta
                .fetch_group_list(Some(&group), timeout)
                .map_err(kafka_error)?;
            Ok(Some(
                list.groups()
                    .iter()
                    .filter(|g| g.name() == group)
                    .flat_map(|g| g.members())
                    .map(|m| GroupMember {
                        client_id: m.client_id().to_owned(),
                        host: m.client_host().trim_start_matches('/').to_owned(),
                    })
                    .collect(),
            ))
        })
        .await
    }

    async fn committed_offsets(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<Option<BTreeMap<Partition, i64>>, BusError> {
        let partitions = self.partition_count(topic).await?;
        // A consumer that never subscribes asks the group's coordinator without joining.
        let mut c = self.config.client();
        c.set("group.id", group);
        c.set("enable.auto.commit", "false");
        self.config.apply_extra(&mut c);
        let consumer: BaseConsumer = c.create().map_err(create_error)?;
        let timeout = self.config.request_timeout;
        let topic = topic.to_owned();
        blocking(move || {
            let mut tpl = TopicPartitionList::new();
            for p in 0..partitions {
                tpl.add_partition(&topic, i32::try_from(p).unwrap_or(i32::MAX));
            }
            // A group's coordinator is found on the first ask (a new group's is made then):
            // "not coordinator" and "loading" pass within the request timeout.
            let deadline = std::time::Instant::now() + timeout;
            let got = loop {
                match consumer.committed_offsets(tpl.clone(), timeout) {
                    Ok(got) => break got,
                    Err(e)
                        if matches!(
                            e.rdkafka_error_code(),
                            Some(
                                RDKafkaErrorCode::NotCoordinator
                                    | RDKafkaErrorCode::CoordinatorLoadInProgress
                                    | RDKafkaErrorCode::CoordinatorNotAvailable
                            )
                        ) && std::time::Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    Err(e) => return Err(kafka_error(e)),
                }
            };
            Ok(Some(
                got.elements()
                    .iter()
                    .filter_map(|e| match e.offset() {
                        Offset::Offset(o) => Some((u32::try_from(e.partition()).ok()?, o)),
                        _ => None,
                    })
                    .collect(),
            ))
        })
        .await
    }

    async fn consumer(
        &self,
        group: &str,
        topic: &str,
        config: ConsumerConfig,
    ) -> Result<Box<dyn Consumer>, BusError> {
        if !config.companions.is_empty() {
            self.check_companions(topic, &config.companions).await?;
        }
        Ok(Box::new(KafkaConsumer::join(
            &self.config,
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
        Ok(Box::new(self.open_reader(topic, starts).await?))
    }
}
