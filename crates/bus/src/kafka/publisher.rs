//! The Kafka producer side: an idempotent `acks=all` producer whose `publish` resolves when
//! every record of the batch (key, value and headers) has a delivery report.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message as _, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};
use rdkafka::util::Timeout;

use super::revival::Revival;
use super::{KafkaConfig, blocking, kafka_error};
use crate::{Ack, BusError, Headers, OutRecord, Partition, Position, Publisher};

/// The producer side of a [`super::KafkaBus`].
pub struct KafkaPublisher {
    /// Replaced whole when it stopped reconnecting ([`super::revival`]).
    producer: std::sync::RwLock<Arc<ThreadedProducer<BatchContext>>>,
    config: KafkaConfig,
    revival: std::sync::Mutex<Revival>,
}

/// How long a producer may fail every publish before it is replaced: a few delivery
/// timeouts, so a broker that is only slow to come back is given its time.
const REPLACE_AFTER: Duration = Duration::from_secs(60);

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KafkaPublisher")
    }
}

/// One `publish` call in flight: an ack slot per record, and who to wake when the last one
/// is settled. (rdkafka's FutureProducer allocates a channel and a future per record; one
/// shared state per batch took a few percent of the ingest CPU off.)
struct Batch {
    state: std::sync::Mutex<BatchState>,
}

struct BatchState {
    acks: Vec<Option<Ack>>,
    first_error: Option<BusError>,
    remaining: usize,
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Which batch and which record of it a delivery report belongs to.
pub(super) struct Slot {
    batch: Arc<Batch>,
    index: usize,
}

/// The producer's context: delivery reports settle their batch; errors of the client itself
/// (a refused login, a certificate it does not trust, brokers down) are logged and kept, so the
/// readiness check (`check`, what a process reports at start and on `/readyz`) says why the
/// brokers do not answer instead of only that they do not. A publish that fails keeps its own
/// error: its text reaches clients (ingest's 503 body), which have no business with broker
/// addresses; the reason is in the log.
#[derive(Default)]
pub(super) struct BatchContext {
    last_error: std::sync::Mutex<Option<(std::time::Instant, String)>>,
}

/// How long a client error explains a failed check: an old disconnect says nothing of now.
const LAST_ERROR_FRESH: Duration = Duration::from_secs(30);

impl BatchContext {
    /// `e`, with the client's last error if it is recent.
    fn explain(&self, e: &KafkaError) -> BusError {
        let last = self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .filter(|(at, _)| at.elapsed() < LAST_ERROR_FRESH);
        match last {
            Some((_, why)) => BusError::Unavailable(format!("{e}; the client's last error: {why}")),
            None => kafka_error(e.clone()),
        }
    }
}

impl ClientContext for BatchContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "kafka client error");
        let mut last = self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // "All brokers are down" follows the error that brought them down (a refused login,
        // a failed handshake): the first says why, so it is kept for a minute.
        let summary = error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown);
        if summary
            && last
                .as_ref()
                .is_some_and(|(at, _)| at.elapsed() < Duration::from_secs(60))
        {
            return;
        }
        *last = Some((std::time::Instant::now(), format!("{error}: {reason}")));
    }
}

impl ProducerContext for BatchContext {
    type DeliveryOpaque = Box<Slot>;

    fn delivery(&self, result: &DeliveryResult<'_>, slot: Box<Slot>) {
        let mut state = slot
            .batch
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match result {
            Ok(m) => {
                state.acks[slot.index] = Some(Ack {
                    partition: m.partition() as Partition,
                    position: Position::Offset(m.offset()),
                });
            }
            Err((e, _)) => {
                state
                    .first_error
                    .get_or_insert_with(|| kafka_error(e.clone()));
            }
        }
        state.remaining -= 1;
        if state.remaining == 0
            && let Some(done) = state.done.take()
        {
            let _ = done.send(());
        }
    }
}

/// Kafka record headers for `headers` (None when there are none: no allocation per record).
fn kafka_headers(headers: &Headers) -> Option<OwnedHeaders> {
    if headers.is_empty() {
        return None;
    }
    Some(headers.iter().fold(
        OwnedHeaders::new_with_capacity(headers.len()),
        |acc, (key, value)| {
            acc.insert(Header {
                key,
                value: Some(value),
            })
        },
    ))
}

impl KafkaPublisher {
    pub(super) fn new(config: &KafkaConfig) -> Result<Self, BusError> {
        Ok(KafkaPublisher {
            producer: std::sync::RwLock::new(Arc::new(Self::build(config)?)),
            config: config.clone(),
            revival: std::sync::Mutex::new(Revival::new(REPLACE_AFTER)),
        })
    }

    fn build(config: &KafkaConfig) -> Result<ThreadedProducer<BatchContext>, BusError> {
        let mut c = config.client();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", &config.compression)
            .set("linger.ms", config.linger.as_millis().to_string())
            .set(
                "message.timeout.ms",
                config.delivery_timeout.as_millis().to_string(),
            )
            .set("partitioner", "consistent_random")
            .set("queue.buffering.max.messages", "1000000")
            .set("queue.buffering.max.kbytes", "1048576");
        config.apply_extra(&mut c);
        c.create_with_context(BatchContext::default())
            .map_err(super::create_error)
    }

    pub(super) fn producer(&self) -> Arc<ThreadedProducer<BatchContext>> {
        self.producer
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(super) fn flush(&self, timeout: Duration) -> Result<(), BusError> {
        self.producer()
            .flush(Timeout::After(timeout))
            .map_err(kafka_error)
    }

    /// Notes how a publish went; a producer that has failed every publish for
    /// [`REPLACE_AFTER`] is replaced by a new one (the old one's records still in flight are
    /// purged: their publishes fail, and their callers retry).
    fn note(&self, outcome: &Result<Vec<Ack>, BusError>) {
        let now = std::time::Instant::now();
        let mut revival = self
            .revival
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match outcome {
            Ok(_) => return revival.ok(),
            Err(BusError::Unavailable(_)) => revival.failed(now),
            // A record refused, a topic missing: the client is not what fails.
            Err(_) => return,
        }
        if !revival.due(now) {
            return;
        }
        revival.replaced(now);
        drop(revival);
        match Self::build(&self.config) {
            Ok(fresh) => {
                let old = std::mem::replace(
                    &mut *self
                        .producer
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                    Arc::new(fresh),
                );
                metrics::counter!("pitboss_bus_clients_replaced_total", "client" => "producer")
                    .increment(1);
                tracing::warn!(
                    "every publish failed for {REPLACE_AFTER:?}: the Kafka producer was replaced by a new one (a client can stop reconnecting after a broker stall)"
                );
                // Its drop purges and waits for its threads: not on the async runtime.
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn_blocking(move || drop(old));
                }
            }
            Err(e) => tracing::warn!(error = %e, "a new Kafka producer could not be made"),
        }
    }
}

#[async_trait]
impl Publisher for KafkaPublisher {
    async fn publish(&self, topic: &str, records: Vec<OutRecord>) -> Result<Vec<Ack>, BusError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        // A publish its caller gives up on (ingest waits 10 s, the producer 30 s) counts as a
        // failure too: otherwise a producer that never delivers again is never found failing
        // by a caller that always gives up first (ingest answered 503 for 13 minutes).
        let mut pending = Pending {
            publisher: self,
            settled: false,
        };
        let outcome = self.publish_with(self.producer(), topic, records).await;
        pending.settled = true;
        self.note(&outcome);
        outcome
    }

    async fn check(&self) -> Result<(), BusError> {
        let producer = self.producer();
        blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Duration::from_secs(2))
                .map(|_| ())
                // Metadata that does not come says nothing of why: the client's last error does.
                .map_err(|e| producer.context().explain(&e))
        })
        .await
    }
}

/// A publish in progress: dropped before it settled (its caller gave up), it is noted as a
/// failure.
struct Pending<'a> {
    publisher: &'a KafkaPublisher,
    settled: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.publisher.note(&Err(BusError::Unavailable(
                "the caller gave up waiting for the delivery".into(),
            )));
        }
    }
}

impl KafkaPublisher {
    /// One batch through `producer`, resolved when every record has its delivery report.
    async fn publish_with(
        &self,
        producer: Arc<ThreadedProducer<BatchContext>>,
        topic: &str,
        records: Vec<OutRecord>,
    ) -> Result<Vec<Ack>, BusError> {
        let (done, settled) = tokio::sync::oneshot::channel();
        let batch = Arc::new(Batch {
            state: std::sync::Mutex::new(BatchState {
                acks: vec![None; records.len()],
                first_error: None,
                remaining: records.len(),
                done: Some(done),
            }),
        });
        for (index, r) in records.iter().enumerate() {
            let mut attempt = BaseRecord::with_opaque_to(
                topic,
                Box::new(Slot {
                    batch: batch.clone(),
                    index,
                }),
            )
            .key(r.key.as_bytes());
            if r.headers.get(crate::header::TOMBSTONE).is_none() {
                attempt = attempt.payload(r.value.as_slice());
            }
            if let Some(headers) = kafka_headers(&r.headers) {
                // librdkafka counts headers against `message.max.bytes` with key and value.
                attempt = attempt.headers(headers);
            }
            loop {
                match producer.send(attempt) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // The local queue is full: let deliveries drain, then try again.
                        attempt = back;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err((e, _)) => {
                        // Records already queued still report (and are acknowledged or not);
                        // the caller sees this batch as failed either way.
                        let unsent = records.len() - index;
                        let mut state = batch
                            .state
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        state.remaining -= unsent;
                        drop(state);
                        return Err(kafka_error(e));
                    }
                }
            }
        }
        // Not held while the deliveries are awaited: a producer replaced meanwhile is dropped
        // by the replacement (off the async threads), whose purge settles them.
        drop(producer);
        settled
            .await
            .map_err(|_| BusError::Unavailable("producer dropped the delivery".into()))?;
        let mut state = batch
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(e) = state.first_error.take() {
            return Err(e);
        }
        std::mem::take(&mut state.acks)
            .into_iter()
            .map(|a| {
                a.ok_or_else(|| BusError::Unavailable("a record got no delivery report".into()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::Bus as _;

    /// A producer that failed every publish for the span is replaced, once, and the new one
    /// publishes (on the test broker). A refused record is not the client failing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_producer_failing_for_the_span_is_replaced_by_one_that_publishes() {
        let config = KafkaConfig::new(pitboss_testkit::kafka());
        let bus = super::super::KafkaBus::new(config.clone()).unwrap();
        let topic = pitboss_testkit::unique_name("replaced_producer");
        bus.create_topic(&topic, 1).await.unwrap();
        let publisher = KafkaPublisher::new(&config).unwrap();
        let first = Arc::as_ptr(&publisher.producer());
        let unavailable: Result<Vec<Ack>, BusError> = Err(BusError::Unavailable("down".into()));
        let refused: Result<Vec<Ack>, BusError> = Err(BusError::Rejected("too large".into()));
        // Failing, but not for the span yet; refusals do not count.
        publisher.note(&unavailable);
        publisher.note(&refused);
        assert_eq!(Arc::as_ptr(&publisher.producer()), first);
        // Failing since a span ago, and all along.
        *publisher.revival.lock().unwrap() = {
            let now = std::time::Instant::now();
            let mut r = Revival::new(REPLACE_AFTER);
            r.failed(now - REPLACE_AFTER);
            r.failed(now - REPLACE_AFTER / 2);
            r
        };
        publisher.note(&unavailable);
        let second = Arc::as_ptr(&publisher.producer());
        assert_ne!(second, first, "replaced");
        // Not again within the span.
        publisher.note(&unavailable);
        assert_eq!(Arc::as_ptr(&publisher.producer()), second);
        let acks = publisher
            .publish(&topic, vec![OutRecord::new("k", "v")])
            .await
            .unwrap();
        assert_eq!(acks.len(), 1);
    }

    /// A publish its caller gives up on before the producer does (ingest's 10 s against the
    /// delivery timeout's 30 s) counts as a failure: a producer that never delivers again is
    /// replaced even when every caller gives up first. (On a broker that stopped answering:
    /// a topic of the test broker, the publisher pointed at a port nobody answers on.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_publish_given_up_on_counts_as_a_failure() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let config = KafkaConfig::new(format!("127.0.0.1:{}", dead.local_addr().unwrap().port()));
        drop(dead);
        let publisher = KafkaPublisher::new(&config).unwrap();
        let first = Arc::as_ptr(&publisher.producer());
        let gave_up = tokio::time::timeout(
            Duration::from_millis(300),
            publisher.publish("t", vec![OutRecord::new("k", "v")]),
        )
        .await;
        assert!(gave_up.is_err(), "no broker: the caller gave up");
        assert!(
            publisher
                .revival
                .lock()
                .unwrap()
                .due(std::time::Instant::now() + REPLACE_AFTER),
            "noted as failing"
        );
        assert_eq!(Arc::as_ptr(&publisher.producer()), first);
    }
}
