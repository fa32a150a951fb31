//! Delivery receipts: the gateway's record that a message reached a socket, published on the
//! `deliveries` topic (docs/gateway.md#delivery-receipts) and stored by the processor.
//!
//! Sessions hand receipts to a bounded queue and never wait for the bus; one task publishes
//! them in batches. When the bus cannot keep up the queue fills and further receipts are
//! dropped and counted (`pitboss_gateway_receipts_dropped_total`): a slow bus never slows a
//! socket. A failed publish is retried (at least once: consumers keep one receipt per
//! `(message_id, connection_id)`). On shutdown, [`Receipts::finish`] publishes what is queued.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pitboss_bus::{OutRecord, Publisher};
use pitboss_model::live::{Delivery, LiveMessage};
use tokio::sync::watch;

/// Which deliveries get a receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReceiptPolicy {
    /// None.
    Off,
    /// Messages addressed to one person: player pushes and operator alerts (the default: "was
    /// the player told?" has an answer, and a room broadcast to 10,000 sockets does not write
    /// 10,000 records).
    #[default]
    Direct,
    /// Also every socket a room push reached.
    All,
}

impl ReceiptPolicy {
    /// Whether a delivery on `channel` gets a receipt.
    pub fn covers(self, channel: &str) -> bool {
        match self {
            ReceiptPolicy::Off => false,
            ReceiptPolicy::Direct => !channel.starts_with("room:"),
            ReceiptPolicy::All => true,
        }
    }
}

/// Tuning of the receipt writer.
#[derive(Debug, Clone)]
pub struct ReceiptConfig {
    pub policy: ReceiptPolicy,
    pub topic: String,
    /// Receipts queued before new ones are dropped.
    pub queue: usize,
    /// Most receipts per publish.
    pub batch: usize,
}

impl Default for ReceiptConfig {
    fn default() -> Self {
        ReceiptConfig {
            policy: ReceiptPolicy::Direct,
            topic: Delivery::TOPIC.into(),
            queue: 100_000,
            batch: 2_000,
        }
    }
}

/// The sessions' side: cheap to clone.
#[derive(Clone)]
pub struct Receipts {
    policy: ReceiptPolicy,
    tx: Option<flume::Sender<Delivery>>,
    finishing: Arc<watch::Sender<bool>>,
    task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl std::fmt::Debug for Receipts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receipts")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Receipts {
    /// Starts the writer (nothing when the policy is `Off`).
    pub fn start(publisher: Arc<dyn Publisher>, config: ReceiptConfig) -> Receipts {
        let (finishing, finish_rx) = watch::channel(false);
        if config.policy == ReceiptPolicy::Off {
            return Receipts {
                policy: ReceiptPolicy::Off,
                tx: None,
                finishing: Arc::new(finishing),
                task: Arc::new(Mutex::new(None)),
            };
        }
        // Registered at zero, so that an alert on their increase sees the first drop.
        for reason in ["queue_full", "rejected", "stopped"] {
            metrics::counter!("pitboss_gateway_receipts_dropped_total", "reason" => reason)
                .increment(0);
        }
        metrics::counter!("pitboss_gateway_receipts_published_total").increment(0);
        let (tx, rx) = flume::bounded(config.queue.max(1));
        let task = tokio::spawn(write(publisher, config.clone(), rx, finish_rx));
        Receipts {
            policy: config.policy,
            tx: Some(tx),
            finishing: Arc::new(finishing),
            task: Arc::new(Mutex::new(Some(task))),
        }
    }

    /// Whether a delivery on `channel` gets a receipt.
    pub fn covers(&self, channel: &str) -> bool {
        self.tx.is_some() && self.policy.covers(channel)
    }

    /// Queues a receipt; never waits. A full queue drops it (counted).
    pub fn record(&self, d: Delivery) {
        let Some(tx) = &self.tx else { return };
        let reason = match tx.try_send(d) {
            Ok(()) => return,
            Err(flume::TrySendError::Full(_)) => "queue_full",
            Err(flume::TrySendError::Disconnected(_)) => "stopped",
        };
        metrics::counter!("pitboss_gateway_receipts_dropped_total", "reason" => reason)
            .increment(1);
    }

    /// Publishes what is queued and stops the writer, waiting at most `within`. Receipts
    /// recorded after this are dropped.
    pub async fn finish(&self, within: Duration) {
        let _ = self.finishing.send(true);
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task
            && tokio::time::timeout(within, task).await.is_err()
        {
            tracing::warn!("delivery receipts not all published before the drain deadline");
        }
    }
}

fn record(d: &Delivery) -> OutRecord {
    crate::server::live_record(d)
}

/// The writer: a batch of whatever is queued, published; retried with backoff until it is
/// stored (or, once finishing, until the caller's deadline ends the process).
async fn write(
    publisher: Arc<dyn Publisher>,
    config: ReceiptConfig,
    rx: flume::Receiver<Delivery>,
    mut finish: watch::Receiver<bool>,
) {
    let mut batch: Vec<OutRecord> = Vec::with_capacity(config.batch);
    loop {
        let finishing = *finish.borrow();
        if batch.is_empty() {
            if finishing {
                match rx.try_recv() {
                    Ok(d) => batch.push(record(&d)),
                    Err(_) => return,
                }
            } else {
                tokio::select! {
                    d = rx.recv_async() => match d {
                        Ok(d) => batch.push(record(&d)),
                        Err(_) => return,
                    },
                    _ = finish.changed() => continue,
                }
            }
        }
        while batch.len() < config.batch {
            match rx.try_recv() {
                Ok(d) => batch.push(record(&d)),
                Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let mut backoff = Duration::from_millis(50);
        loop {
            match publisher.publish(&config.topic, batch.clone()).await {
                Ok(_) => {
                    metrics::counter!("pitboss_gateway_receipts_published_total").increment(n);
                    break;
                }
                Err(e) if !e.is_retryable() => {
                    // Refused for good (a record too large, no such topic): retrying would
                    // hold up every receipt behind these.
                    metrics::counter!("pitboss_gateway_receipts_dropped_total", "reason" => "rejected")
                        .increment(n);
                    tracing::warn!(error = %e, topic = %config.topic, receipts = n, "the bus refused delivery receipts: dropped");
                    break;
                }
                Err(e) => {
                    metrics::counter!("pitboss_gateway_receipts_publish_errors_total").increment(1);
                    tracing::warn!(error = %e, topic = %config.topic, receipts = n, retry_in_ms = backoff.as_millis() as u64, "publishing delivery receipts failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use pitboss_bus::memory::MemoryPublisher;
    use pitboss_bus::{BusError, header};
    use pitboss_model::Timestamp;
    use pitboss_model::live::MessageType;

    fn delivery(n: u32) -> Delivery {
        Delivery {
            message_type: MessageType::Push,
            message_id: pitboss_model::live::new_message_id(),
            tenant_id: "acme".into(),
            channel: format!("player:acme:p{n}"),
            subscriber: format!("p{n}"),
            gateway_id: "gw".into(),
            connection_id: format!("gw-1-{n}"),
            delivered_at: Timestamp::from_millis(1_700_000_000_100),
            received_at: Timestamp::from_millis(1_700_000_000_000),
            replayed: false,
        }
    }

    fn stored(bus: &MemoryPublisher) -> Vec<Delivery> {
        bus.records("deliveries")
            .iter()
            .map(|r| Delivery::decode_proto(&r.value).unwrap())
            .collect()
    }

    #[test]
    fn the_policy_covers_direct_channels_by_default() {
        let p = ReceiptPolicy::default();
        assert!(p.covers("player:acme:p1"));
        assert!(p.covers("operator:acme"));
        assert!(!p.covers("room:acme:lobby"));
        assert!(ReceiptPolicy::All.covers("room:acme:lobby"));
        assert!(!ReceiptPolicy::Off.covers("player:acme:p1"));
    }

    #[tokio::test]
    async fn receipts_are_published_with_their_headers_and_finish_flushes_the_queue() {
        let bus = MemoryPublisher::new();
        bus.create_topic("deliveries", 4);
        let r = Receipts::start(Arc::new(bus.clone()), ReceiptConfig::default());
        let sent: Vec<Delivery> = (0..50).map(delivery).collect();
        for d in &sent {
            r.record(d.clone());
        }
        r.finish(Duration::from_secs(5)).await;
        let mut got = stored(&bus);
        got.sort_by_key(|d| d.connection_id.clone());
        let mut want = sent.clone();
        want.sort_by_key(|d| d.connection_id.clone());
        assert_eq!(got, want);
        let rec = &bus.records("deliveries")[0];
        assert_eq!(rec.headers.get(header::TYPE), Some(&b"delivery"[..]));
        assert_eq!(rec.headers.get(header::TENANT), Some(&b"acme"[..]));
        // After finish, nothing more is taken.
        r.record(delivery(99));
        assert_eq!(stored(&bus).len(), 50);
    }

    #[tokio::test]
    async fn a_failing_bus_is_retried_until_it_stores_them() {
        let bus = MemoryPublisher::new();
        bus.create_topic("deliveries", 4);
        bus.fail_publishes(Some(BusError::Unavailable("down".into())));
        let r = Receipts::start(Arc::new(bus.clone()), ReceiptConfig::default());
        r.record(delivery(1));
        r.record(delivery(2));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(stored(&bus).is_empty());
        bus.fail_publishes(None);
        r.finish(Duration::from_secs(10)).await;
        assert_eq!(stored(&bus).len(), 2);
    }

    #[tokio::test]
    async fn a_full_queue_drops_new_receipts_and_never_blocks() {
        let bus = MemoryPublisher::new();
        bus.create_topic("deliveries", 4);
        bus.fail_publishes(Some(BusError::Unavailable("down".into())));
        let config = ReceiptConfig {
            queue: 10,
            batch: 5,
            ..ReceiptConfig::default()
        };
        let r = Receipts::start(Arc::new(bus.clone()), config);
        // The writer takes the first and retries it; then 10 more fit the queue.
        r.record(delivery(0));
        tokio::time::sleep(Duration::from_millis(100)).await;
        for n in 1..100 {
            r.record(delivery(n));
        }
        bus.fail_publishes(None);
        r.finish(Duration::from_secs(10)).await;
        let mut got: Vec<String> = stored(&bus).into_iter().map(|d| d.subscriber).collect();
        got.sort_by_key(|s| s[1..].parse::<u32>().unwrap());
        let want: Vec<String> = (0..=10).map(|n| format!("p{n}")).collect();
        assert_eq!(got, want, "the first, and the ten that fitted");
    }

    #[tokio::test]
    async fn a_batch_the_bus_refuses_for_good_is_dropped_and_the_next_go_on() {
        let bus = MemoryPublisher::new();
        bus.create_topic("deliveries", 4);
        bus.fail_publishes(Some(BusError::Rejected("too large".into())));
        let r = Receipts::start(Arc::new(bus.clone()), ReceiptConfig::default());
        r.record(delivery(1));
        tokio::time::sleep(Duration::from_millis(100)).await;
        bus.fail_publishes(None);
        r.record(delivery(2));
        r.finish(Duration::from_secs(5)).await;
        let got: Vec<String> = stored(&bus).into_iter().map(|d| d.subscriber).collect();
        assert_eq!(got, vec!["p2".to_owned()]);
    }

    #[tokio::test]
    async fn off_records_nothing() {
        let bus = MemoryPublisher::new();
        bus.create_topic("deliveries", 4);
        let config = ReceiptConfig {
            policy: ReceiptPolicy::Off,
            ..ReceiptConfig::default()
        };
        let r = Receipts::start(Arc::new(bus.clone()), config);
        assert!(!r.covers("player:acme:p1"));
        r.record(delivery(1));
        r.finish(Duration::from_secs(1)).await;
        assert!(stored(&bus).is_empty());
    }
}
