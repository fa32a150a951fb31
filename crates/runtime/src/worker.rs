//! The partitioned-worker loop every group consumer of Pitboss runs (the processor today, the
//! rules engine next): poll → hand records, assignments and revocations to the work → store
//! the offsets of what the work reports durable, and only those → commit. A revocation is
//! answered only after the work made everything of those partitions durable, so the next
//! owner resumes exactly after it; on shutdown the work finishes and the last offsets are
//! committed before the member leaves.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pitboss_bus::{Bus, BusError, Consumer, ConsumerConfig, Delivery, Partition, Position, Record};

/// What a worker does with what its group member receives. Implementations keep their own
/// state per partition; the loop only moves records in and durable positions out.
#[async_trait]
pub trait PartitionWork: Send {
    type Error: From<BusError> + Send;

    /// These partitions (and the same partitions of the consumer's companion topics) are now
    /// this member's.
    async fn assigned(&mut self, partitions: &[Partition]) -> Result<(), Self::Error>;

    /// Records of owned partitions, in order within each partition.
    async fn records(&mut self, records: Vec<Record>) -> Result<(), Self::Error>;

    /// These partitions are leaving: make everything pending for them durable before
    /// returning (their positions then come out of [`PartitionWork::take_durable`]) and forget
    /// them.
    async fn revoking(&mut self, partitions: &[Partition]) -> Result<(), Self::Error>;

    /// Runs after every poll: time-based work (a batch that came due) and collecting output
    /// that became durable meanwhile.
    async fn tick(&mut self) -> Result<(), Self::Error>;

    /// How long the next poll may wait for records (until the next piece of work is due).
    fn poll_wait(&self) -> Duration;

    /// Positions whose output became durable since the last call: `(topic, partition,
    /// position)`, each meaning "this record and everything before it in its partition".
    fn take_durable(&mut self) -> Vec<(Arc<str>, Partition, Position)>;

    /// Shutdown: make everything pending durable.
    async fn finish(&mut self) -> Result<(), Self::Error>;
}

/// Runs `work` on `consumer` until `shutdown` resolves or either fails. On shutdown the work
/// finishes and what it made durable is committed; on an error nothing more is committed (the
/// next owner replays from the last commit). The consumer is left open for the caller to
/// close.
pub async fn run_partitioned<W: PartitionWork>(
    consumer: &mut dyn Consumer,
    work: &mut W,
    poll_max: usize,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), W::Error> {
    tokio::pin!(shutdown);
    // A bus that does not answer (Kinesis or DynamoDB unreachable a moment, an embedded log
    // busy) is waited out, the time-based work going on: it stopped the processor and the
    // rules engine at its first failed call (an SRE's audit of the Kinesis path).
    let mut backoff = RETRY_FIRST;
    let mut commit_due = false;
    loop {
        commit_retrying(consumer, work, &mut commit_due).await?;
        let wait = work.poll_wait();
        let delivery = tokio::select! {
            () = &mut shutdown => break,
            d = consumer.poll(poll_max, wait) => d,
        };
        let delivery = match delivery {
            Ok(d) => {
                backoff = RETRY_FIRST;
                d
            }
            Err(e) if e.is_retryable() => {
                metrics::counter!("pitboss_bus_poll_retries_total").increment(1);
                tracing::warn!(error = %e, retry_in = ?backoff, "the bus did not answer a poll; retrying");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(RETRY_MAX);
                work.tick().await?;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        match delivery {
            Delivery::Records(records) => {
                if !records.is_empty() {
                    work.records(records).await?;
                }
            }
            Delivery::Assigned(partitions) => work.assigned(&partitions).await?,
            Delivery::Revoking(partitions) => {
                work.revoking(&partitions).await?;
                // Stored now; the next poll commits them and lets the partitions go.
                store(consumer, work)?;
            }
        }
        work.tick().await?;
    }
    work.finish().await?;
    // The last positions, and any a commit the bus did not answer left due.
    if store(consumer, work)? || commit_due {
        consumer.commit().await?;
    }
    Ok(())
}

/// Joins `group` on `topic`, waiting out a bus that does not answer yet (Kinesis or its lease
/// table unreachable a moment; a Kafka broker is retried inside librdkafka) as
/// [`run_partitioned`] waits out a poll; `None` when `shutdown` resolves first.
pub async fn join_retrying<F: std::future::Future<Output = ()>>(
    bus: &dyn Bus,
    group: &str,
    topic: &str,
    config: &ConsumerConfig,
    mut shutdown: std::pin::Pin<&mut F>,
) -> Result<Option<Box<dyn Consumer>>, BusError> {
    let mut backoff = RETRY_FIRST;
    loop {
        match bus.consumer(group, topic, config.clone()).await {
            Ok(c) => return Ok(Some(c)),
            Err(e) if e.is_retryable() => {
                tracing::warn!(%topic, %group, error = %e, retry_in = ?backoff, "the bus does not answer yet; retrying");
                tokio::select! {
                    () = shutdown.as_mut() => return Ok(None),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(RETRY_MAX);
            }
            Err(e) => return Err(e),
        }
    }
}

/// The first wait after a poll the bus did not answer, doubled up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Stores the durable positions and commits them; a commit the bus did not answer is tried
/// again on the next turn (`due`), what it covers staying stored.
async fn commit_retrying<W: PartitionWork>(
    consumer: &mut dyn Consumer,
    work: &mut W,
    due: &mut bool,
) -> Result<(), W::Error> {
    if store(consumer, work)? {
        *due = true;
    }
    if !*due {
        return Ok(());
    }
    match consumer.commit().await {
        Ok(()) => *due = false,
        Err(e) if e.is_retryable() => {
            metrics::counter!("pitboss_bus_commit_retries_total").increment(1);
            tracing::warn!(error = %e, "the bus did not answer a commit; retried on the next turn");
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// Stores the durable positions; true when any was stored. A partition the member no longer
/// holds (its assignment was lost: a broker that stopped answering past the session, and the
/// group went on without it) is skipped, not an error: its next owner reads again from the
/// last commit, as after any rebalance, and this member gets its new assignment on a later
/// poll. (Failing on it stopped the rules engine and the processor after a broker stall.)
fn store<W: PartitionWork>(consumer: &mut dyn Consumer, work: &mut W) -> Result<bool, W::Error> {
    let durable = work.take_durable();
    let mut stored = false;
    for (topic, partition, position) in &durable {
        match consumer.store(topic, *partition, position) {
            Ok(()) => stored = true,
            Err(BusError::NotAssigned(p)) => {
                metrics::counter!("pitboss_bus_commits_skipped_total").increment(1);
                tracing::warn!(%topic, partition = p, "position not stored: the partition's assignment was lost; its next owner reads again from the last commit");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(stored)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::{BTreeMap, VecDeque};

    use super::*;

    /// A consumer that plays a script of deliveries and records what was stored and committed.
    #[derive(Debug, Default)]
    struct Scripted {
        script: VecDeque<Delivery>,
        stored: BTreeMap<Partition, i64>,
        committed: Vec<BTreeMap<Partition, i64>>,
        /// What was stored when each poll came.
        at_poll: Vec<BTreeMap<Partition, i64>>,
        /// Partitions whose assignment was lost: storing a position of one is refused.
        lost: Vec<Partition>,
        /// The next polls and commits that fail as a bus that does not answer.
        failing_polls: usize,
        failing_commits: usize,
    }

    #[async_trait]
    impl Consumer for Scripted {
        async fn poll(&mut self, _: usize, _: Duration) -> Result<Delivery, BusError> {
            if self.failing_polls > 0 {
                self.failing_polls -= 1;
                return Err(BusError::Unavailable("connection refused".into()));
            }
            self.at_poll.push(self.stored.clone());
            match self.script.pop_front() {
                Some(d) => Ok(d),
                None => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Ok(Delivery::Records(Vec::new()))
                }
            }
        }
        fn store(&mut self, _: &str, p: Partition, pos: &Position) -> Result<(), BusError> {
            let Position::Offset(o) = pos else {
                return Err(BusError::Config("offset".into()));
            };
            if self.lost.contains(&p) {
                return Err(BusError::NotAssigned(p));
            }
            self.stored.insert(p, *o);
            Ok(())
        }
        async fn commit(&mut self) -> Result<(), BusError> {
            if self.failing_commits > 0 {
                self.failing_commits -= 1;
                return Err(BusError::Unavailable("connection refused".into()));
            }
            self.committed.push(self.stored.clone());
            Ok(())
        }
        fn assignment(&self) -> Vec<Partition> {
            Vec::new()
        }
        async fn close(self: Box<Self>) -> Result<(), BusError> {
            Ok(())
        }
    }

    /// Holds records until `flush_every` are pending, then reports them durable.
    #[derive(Default)]
    struct Batching {
        pending: Vec<Record>,
        durable: Vec<(Arc<str>, Partition, Position)>,
        flush_every: usize,
        log: Vec<String>,
    }

    impl Batching {
        fn flush(&mut self, only: Option<&[Partition]>) {
            let (go, keep): (Vec<Record>, Vec<Record>) = std::mem::take(&mut self.pending)
                .into_iter()
                .partition(|r| only.is_none_or(|ps| ps.contains(&r.partition)));
            self.pending = keep;
            for r in go {
                self.durable.push((r.topic, r.partition, r.position));
            }
        }
    }

    #[async_trait]
    impl PartitionWork for Batching {
        type Error = BusError;
        async fn assigned(&mut self, p: &[Partition]) -> Result<(), BusError> {
            self.log.push(format!("assigned {p:?}"));
            Ok(())
        }
        async fn records(&mut self, records: Vec<Record>) -> Result<(), BusError> {
            self.pending.extend(records);
            if self.pending.len() >= self.flush_every {
                self.flush(None);
            }
            Ok(())
        }
        async fn revoking(&mut self, p: &[Partition]) -> Result<(), BusError> {
            self.log.push(format!("revoking {p:?}"));
            self.flush(Some(p));
            Ok(())
        }
        async fn tick(&mut self) -> Result<(), BusError> {
            Ok(())
        }
        fn poll_wait(&self) -> Duration {
            Duration::from_millis(5)
        }
        fn take_durable(&mut self) -> Vec<(Arc<str>, Partition, Position)> {
            std::mem::take(&mut self.durable)
        }
        async fn finish(&mut self) -> Result<(), BusError> {
            self.log.push("finish".into());
            self.flush(None);
            Ok(())
        }
    }

    /// Runs the loop over `consumer` for 200 ms, then shuts it down; it must end cleanly.
    async fn run_for_200_ms(consumer: &mut Scripted, work: &mut Batching) {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = run_partitioned(consumer, work, 100, async {
            let _ = stopped.await;
        });
        let stopper = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _ = stop.send(());
        };
        let (ran, ()) = tokio::join!(run, stopper);
        ran.unwrap();
    }

    fn rec(p: Partition, o: i64) -> Record {
        Record {
            topic: "t".into(),
            partition: p,
            position: Position::Offset(o),
            key: String::new(),
            value: Vec::new(),
            timestamp_ms: 0,
            headers: Default::default(),
        }
    }

    #[tokio::test]
    async fn only_durable_positions_are_stored_and_revokes_flush_first() {
        let mut consumer = Scripted {
            script: VecDeque::from([
                Delivery::Assigned(vec![0, 1]),
                Delivery::Records(vec![rec(0, 0), rec(1, 0), rec(0, 1)]),
                // Not durable yet (3 pending of 4): nothing may be committed.
                Delivery::Revoking(vec![1]),
                Delivery::Records(vec![rec(0, 2), rec(0, 3)]),
                Delivery::Records(vec![rec(0, 4)]),
            ]),
            ..Scripted::default()
        };
        let mut work = Batching {
            flush_every: 4,
            ..Batching::default()
        };
        run_for_200_ms(&mut consumer, &mut work).await;
        assert_eq!(
            work.log,
            ["assigned [0, 1]", "revoking [1]", "finish"],
            "the work saw the revoke and the shutdown"
        );
        // Partition 1 was flushed by the revoke and stored before the next poll (which hands
        // it over); partition 0's three pending records were not stored.
        assert!(consumer.at_poll[2].is_empty(), "{:?}", consumer.at_poll);
        assert_eq!(consumer.at_poll[3], BTreeMap::from([(1, 0)]));
        // The first commit comes once the batch of 4 records of partition 0 is durable.
        assert_eq!(consumer.committed[0], BTreeMap::from([(0, 3), (1, 0)]));
        assert_eq!(
            consumer.committed.last().unwrap(),
            &BTreeMap::from([(0, 4), (1, 0)]),
            "everything durable is committed at shutdown"
        );
    }

    /// A partition whose assignment was lost (a broker that stopped answering past the
    /// session) refuses its position: the loop skips it and goes on with the others (it
    /// stopped the rules engine and the processor after a broker stall).
    #[tokio::test]
    async fn a_position_of_a_lost_partition_is_skipped_and_the_loop_goes_on() {
        let mut consumer = Scripted {
            script: VecDeque::from([
                Delivery::Assigned(vec![0, 1]),
                Delivery::Records(vec![rec(0, 0), rec(1, 0)]),
                Delivery::Records(vec![rec(0, 1), rec(1, 1)]),
            ]),
            lost: vec![1],
            ..Scripted::default()
        };
        let mut work = Batching {
            flush_every: 2,
            ..Batching::default()
        };
        run_for_200_ms(&mut consumer, &mut work).await;
        assert_eq!(
            consumer.committed.last().unwrap(),
            &BTreeMap::from([(0, 1)]),
            "partition 0 went on; the lost one was not stored"
        );
    }

    /// Polls and commits the bus does not answer are tried again: the loop goes on and what
    /// was made durable is committed once the bus answers.
    #[tokio::test]
    async fn a_bus_that_does_not_answer_a_moment_is_waited_out() {
        let mut consumer = Scripted {
            script: VecDeque::from([
                Delivery::Assigned(vec![0]),
                Delivery::Records(vec![rec(0, 0), rec(0, 1)]),
            ]),
            failing_polls: 1,
            failing_commits: 1,
            ..Scripted::default()
        };
        let mut work = Batching {
            flush_every: 2,
            ..Batching::default()
        };
        run_for_200_ms(&mut consumer, &mut work).await;
        assert_eq!((consumer.failing_polls, consumer.failing_commits), (0, 0));
        assert_eq!(
            consumer.committed.last().unwrap(),
            &BTreeMap::from([(0, 1)]),
            "committed once the bus answered"
        );
    }

    /// A bus whose first `failing` joins fail as a bus that does not answer.
    #[derive(Debug)]
    struct Flaky {
        inner: pitboss_bus::embedded::EmbeddedBus,
        failing: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl Bus for Flaky {
        async fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), BusError> {
            self.inner.create_topic(topic, partitions).await
        }
        fn publisher(&self) -> Arc<dyn pitboss_bus::Publisher> {
            self.inner.publisher()
        }
        async fn partition_count(&self, topic: &str) -> Result<u32, BusError> {
            self.inner.partition_count(topic).await
        }
        async fn consumer(
            &self,
            group: &str,
            topic: &str,
            config: ConsumerConfig,
        ) -> Result<Box<dyn Consumer>, BusError> {
            use std::sync::atomic::Ordering::SeqCst;
            if self
                .failing
                .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(BusError::Unavailable("connection refused".into()));
            }
            self.inner.consumer(group, topic, config).await
        }
        async fn reader(
            &self,
            topic: &str,
            starts: Vec<(Partition, pitboss_bus::ReadFrom)>,
        ) -> Result<Box<dyn pitboss_bus::Reader>, BusError> {
            self.inner.reader(topic, starts).await
        }
    }

    /// Joining waits out a bus that does not answer yet, and gives up when shut down.
    #[tokio::test]
    async fn a_join_the_bus_does_not_answer_yet_is_tried_again() {
        let dir = tempfile::tempdir().unwrap();
        let bus = Flaky {
            inner: pitboss_bus::embedded::EmbeddedBus::open(dir.path(), Default::default())
                .unwrap(),
            failing: 2.into(),
        };
        bus.create_topic("t", 1).await.unwrap();
        let config = ConsumerConfig::default();
        let never = std::pin::pin!(std::future::pending::<()>());
        let joined = join_retrying(&bus, "g", "t", &config, never).await.unwrap();
        assert!(joined.is_some());
        bus.failing
            .store(usize::MAX, std::sync::atomic::Ordering::SeqCst);
        let soon = std::pin::pin!(tokio::time::sleep(Duration::from_millis(300)));
        assert!(
            join_retrying(&bus, "g", "t", &config, soon)
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn an_error_of_the_work_stops_the_loop_without_committing_more() {
        struct Failing;
        #[async_trait]
        impl PartitionWork for Failing {
            type Error = BusError;
            async fn assigned(&mut self, _: &[Partition]) -> Result<(), BusError> {
                Ok(())
            }
            async fn records(&mut self, _: Vec<Record>) -> Result<(), BusError> {
                Err(BusError::Storage("disk full".into()))
            }
            async fn revoking(&mut self, _: &[Partition]) -> Result<(), BusError> {
                Ok(())
            }
            async fn tick(&mut self) -> Result<(), BusError> {
                Ok(())
            }
            fn poll_wait(&self) -> Duration {
                Duration::from_millis(1)
            }
            fn take_durable(&mut self) -> Vec<(Arc<str>, Partition, Position)> {
                Vec::new()
            }
            async fn finish(&mut self) -> Result<(), BusError> {
                panic!("finish must not run after an error")
            }
        }
        let mut consumer = Scripted {
            script: VecDeque::from([Delivery::Records(vec![rec(0, 0)])]),
            ..Scripted::default()
        };
        let err = run_partitioned(&mut consumer, &mut Failing, 10, std::future::pending())
            .await
            .unwrap_err();
        assert!(matches!(err, BusError::Storage(_)));
        assert!(consumer.committed.is_empty());
    }
}
