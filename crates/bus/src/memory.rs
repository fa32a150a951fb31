//! An in-memory publisher for unit tests of components that write to the bus, with failure
//! injection (`fail_publishes`). It keeps the publish contract — unknown topics are errors,
//! acks are in order, nothing is stored when a publish fails — but has no consumers: tests that
//! read back use the embedded log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use crate::partition::partition_for;
use crate::{Ack, BusError, OutRecord, Position, Publisher};

/// In-memory topics; clones share them.
#[derive(Debug, Clone, Default)]
pub struct MemoryPublisher {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    /// Topic -> partitions -> records.
    topics: HashMap<String, Vec<Vec<OutRecord>>>,
    failure: Option<BusError>,
    /// While true, publishes wait (a bus that is slow to acknowledge).
    held: tokio::sync::watch::Sender<bool>,
    /// How many times `check` was asked.
    checks: usize,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            topics: HashMap::new(),
            failure: None,
            held: tokio::sync::watch::channel(false).0,
            checks: 0,
        }
    }
}

impl MemoryPublisher {
    /// An empty bus without topics.
    pub fn new() -> Self {
        MemoryPublisher::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates `topic` with `partitions` partitions (idempotent).
    pub fn create_topic(&self, topic: &str, partitions: u32) {
        self.lock()
            .topics
            .entry(topic.to_owned())
            .or_insert_with(|| vec![Vec::new(); partitions.max(1) as usize]);
    }

    /// How many times [`Publisher::check`] was asked.
    pub fn checks(&self) -> usize {
        self.lock().checks
    }

    /// From now on every publish and readiness check fails with `failure` (None: recover).
    pub fn fail_publishes(&self, failure: Option<BusError>) {
        self.lock().failure = failure;
    }

    /// While `held`, every publish waits without answering (a slow bus); false releases them.
    pub fn hold_publishes(&self, held: bool) {
        self.lock().held.send_replace(held);
    }

    /// How many records `topic` holds.
    pub fn len(&self, topic: &str) -> usize {
        self.lock()
            .topics
            .get(topic)
            .map_or(0, |ps| ps.iter().map(Vec::len).sum())
    }

    /// Whether `topic` holds no records.
    pub fn is_empty(&self, topic: &str) -> bool {
        self.len(topic) == 0
    }

    /// Every record of `topic`, partition by partition.
    pub fn records(&self, topic: &str) -> Vec<OutRecord> {
        self.lock()
            .topics
            .get(topic)
            .map(|ps| ps.concat())
            .unwrap_or_default()
    }

    /// This bus as a shared publisher.
    pub fn publisher(&self) -> Arc<dyn Publisher> {
        Arc::new(self.clone())
    }
}

#[async_trait]
impl Publisher for MemoryPublisher {
    async fn publish(&self, topic: &str, records: Vec<OutRecord>) -> Result<Vec<Ack>, BusError> {
        let mut held = self.lock().held.subscribe();
        // Waits while held; an error means the sender is gone, which cannot happen while `self` lives.
        let _ = held.wait_for(|h| !*h).await;
        let mut inner = self.lock();
        if let Some(f) = &inner.failure {
            return Err(f.clone());
        }
        let partitions = inner
            .topics
            .get_mut(topic)
            .ok_or_else(|| BusError::UnknownTopic(topic.to_owned()))?;
        let n = partitions.len() as u32;
        Ok(records
            .into_iter()
            .map(|r| {
                let p = partition_for(&r.key, n);
                let log = &mut partitions[p as usize];
                log.push(r);
                Ack {
                    partition: p,
                    position: Position::Offset(log.len() as i64 - 1),
                }
            })
            .collect())
    }

    async fn check(&self) -> Result<(), BusError> {
        let mut inner = self.lock();
        inner.checks += 1;
        match &inner.failure {
            Some(f) => Err(f.clone()),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_the_publish_contract_and_injects_failures() {
        let m = MemoryPublisher::new();
        let err = m
            .publish("t", vec![OutRecord::new("k", "v")])
            .await
            .expect_err("unknown topic");
        assert!(matches!(err, BusError::UnknownTopic(_)));
        m.create_topic("t", 2);
        let acks = m
            .publish(
                "t",
                vec![OutRecord::new("k", "a"), OutRecord::new("k", "b")],
            )
            .await
            .expect("publish");
        assert_eq!(acks[1].position, Position::Offset(1));
        m.fail_publishes(Some(BusError::Unavailable("down".into())));
        assert!(
            m.publish("t", vec![OutRecord::new("k", "c")])
                .await
                .is_err()
        );
        assert!(m.check().await.is_err());
        assert_eq!(m.len("t"), 2, "a failed publish stores nothing");
    }
}
