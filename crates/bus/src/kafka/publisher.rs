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

use super::{KafkaConfig, blocking, kafka_error};
use crate::{Ack, BusError, Headers, OutRecord, Partition, Position, Publisher};

/// The producer side of a [`super::KafkaBus`].
pub struct KafkaPublisher {
    producer: Arc<ThreadedProducer<BatchContext>>,
}

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
        let producer: ThreadedProducer<BatchContext> = c
            .create_with_context(BatchContext::default())
            .map_err(super::create_error)?;
        Ok(KafkaPublisher {
            producer: Arc::new(producer),
        })
    }

    pub(super) fn producer(&self) -> Arc<ThreadedProducer<BatchContext>> {
        self.producer.clone()
    }

    pub(super) fn flush(&self, timeout: Duration) -> Result<(), BusError> {
        self.producer
            .flush(Timeout::After(timeout))
            .map_err(kafka_error)
    }
}

#[async_trait]
impl Publisher for KafkaPublisher {
    async fn publish(&self, topic: &str, records: Vec<OutRecord>) -> Result<Vec<Ack>, BusError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
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
                match self.producer.send(attempt) {
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

    async fn check(&self) -> Result<(), BusError> {
        let producer = self.producer.clone();
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
