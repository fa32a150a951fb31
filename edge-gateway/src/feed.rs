//! The feed: every gateway instance reads every partition of `alerts`, `pushes` and
//! `alert_acks` with an ungrouped reader (nothing committed, nothing left behind), starting
//! `history_max_age` back so that the history a resuming client needs is rebuilt after a
//! restart, and hands the records to the hub.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pitboss_bus::{Bus, ReadFrom, Reader};
use pitboss_model::Timestamp;
use pitboss_model::live::MessageType;
use pitboss_runtime::Shutdown;
use tokio::sync::watch;

use crate::hub::Hub;

/// What one feed reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedKind {
    Messages(MessageType),
    Acks,
}

impl FeedKind {
    fn label(self) -> &'static str {
        match self {
            FeedKind::Messages(MessageType::Alert) => "alerts",
            FeedKind::Messages(MessageType::Push) => "pushes",
            FeedKind::Acks => "alert_acks",
        }
    }
}

/// Locks the hub; a poisoned lock (a panic elsewhere) still gives the state.
pub fn lock(hub: &Mutex<Hub>) -> std::sync::MutexGuard<'_, Hub> {
    hub.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn open(
    bus: &dyn Bus,
    topic: &str,
    from_ms: i64,
    stop: &Shutdown,
) -> Option<Box<dyn Reader>> {
    let mut wait = Duration::from_millis(200);
    loop {
        match bus.reader_all(topic, ReadFrom::Timestamp(from_ms)).await {
            Ok(r) => return Some(r),
            Err(e) => {
                tracing::warn!(topic, error = %e, "cannot read the topic yet; retrying");
                tokio::select! {
                    () = stop.wait() => return None,
                    () = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// One feed: a topic, what it carries, from how far back.
#[derive(Debug, Clone)]
pub struct Feed {
    pub kind: FeedKind,
    pub topic: String,
    pub history_max_age: Duration,
    /// The bus numbers records with sequence numbers (Kinesis), not offsets.
    pub sequences: bool,
}

/// Reads the feed's topic into the hub until `stop`. `caught_up` is set once the reader has
/// read up to where the topic ended when it opened.
pub async fn run(
    bus: Arc<dyn Bus>,
    hub: Arc<Mutex<Hub>>,
    feed: Feed,
    caught_up: watch::Sender<bool>,
    stop: Shutdown,
) {
    let Feed {
        kind,
        topic,
        history_max_age,
        sequences,
    } = feed;
    let from_ms = Timestamp::now().as_millis() - history_max_age.as_millis() as i64;
    let Some(mut reader) = open(&*bus, &topic, from_ms, &stop).await else {
        return;
    };
    if let FeedKind::Messages(m) = kind {
        lock(&hub).open_topic(m, reader.partitions().len() as u32, sequences);
    }
    let label = kind.label();
    let mut reported = false;
    let mut backoff = Duration::from_millis(100);
    loop {
        let polled = tokio::select! {
            () = stop.wait() => return,
            polled = reader.poll(2000, Duration::from_millis(100)) => polled,
        };
        let records = match polled {
            Ok(r) => {
                backoff = Duration::from_millis(100);
                r
            }
            Err(e) => {
                metrics::counter!("pitboss_gateway_feed_errors_total", "topic" => label)
                    .increment(1);
                tracing::warn!(topic, error = %e, "feed poll failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if !records.is_empty() {
            metrics::counter!("pitboss_gateway_feed_records_total", "topic" => label)
                .increment(records.len() as u64);
            let now = Timestamp::now().as_millis();
            match kind {
                FeedKind::Messages(m) => {
                    let applied = lock(&hub).apply(m, &records, now);
                    if applied.invalid > 0 {
                        metrics::counter!("pitboss_gateway_records_skipped_total", "topic" => label, "reason" => "invalid")
                            .increment(applied.invalid as u64);
                    }
                    if applied.duplicates > 0 {
                        metrics::counter!("pitboss_gateway_records_skipped_total", "topic" => label, "reason" => "duplicate")
                            .increment(applied.duplicates as u64);
                    }
                    if applied.slow_closed > 0 {
                        metrics::counter!("pitboss_gateway_slow_consumers_closed_total")
                            .increment(applied.slow_closed as u64);
                    }
                }
                FeedKind::Acks => {
                    lock(&hub).apply_acks(&records);
                }
            }
        }
        if !reported && reader.caught_up() {
            if let FeedKind::Messages(m) = kind {
                lock(&hub).caught_up(m, &reader.end_positions(), Timestamp::now().as_millis());
            }
            reported = true;
            let _ = caught_up.send(true);
            tracing::info!(topic, "feed caught up");
        }
    }
}
