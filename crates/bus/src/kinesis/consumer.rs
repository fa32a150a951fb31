//! A member of a consumer group on a Kinesis stream and its companions: takes, renews and
//! sheds shard leases (rows in [`leases`](super::leases)), reads the shards it holds from where
//! [`ConsumerConfig::start`] says, and checkpoints what the application stored.
//!
//! The lease of shard index `p` of the main stream covers shard `p` of every companion stream
//! too: the holder reads all of them, and their checkpoints live on that one lease row,
//! written together under the same ownership condition.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::Shared;
use super::leases::{Leases, checkpoint_attribute, start_attribute};
use super::reader::{ShardCursor, Start, fetch_round};
use crate::{BusError, Consumer, ConsumerConfig, Delivery, Partition, Position, StartFrom};

/// A stream read by the group: the main stream or a companion.
#[derive(Debug)]
struct Stream {
    name: Arc<str>,
    /// Shard ids in index order.
    shards: Arc<Vec<String>>,
    /// The lease-row attribute holding its checkpoint.
    checkpoint: String,
}

/// A lease this member holds: shard `p` of every stream, main stream first.
#[derive(Debug)]
struct Lease {
    cursors: Vec<ShardCursor>,
    /// Per stream, the checkpoint on the lease row as far as this member knows.
    committed: Vec<Option<String>>,
    /// Per stream, what the application stored since.
    stored: Vec<Option<String>>,
}

/// A member of a consumer group on a Kinesis stream (and its companions).
#[derive(Debug)]
pub struct KinesisConsumer {
    shared: Arc<Shared>,
    leases: Leases,
    /// The main stream first, then the companions.
    streams: Vec<Stream>,
    start: StartFrom,
    owned: BTreeMap<Partition, Lease>,
    releasing: Vec<Partition>,
    to_revoke: Vec<Partition>,
    to_assign: Vec<Partition>,
    next_maintenance: Instant,
    rotation: usize,
    /// The consumer group (a label of the lag gauge).
    group: Arc<str>,
    /// When the lag gauge is next set.
    next_lag_report: Instant,
    /// The (stream, shard) pairs whose lag this member reported (set to 0 once they are no
    /// longer its own: the new owner reports them).
    lag_reported: BTreeSet<(Arc<str>, Partition)>,
}

/// Rows of dead members a member deletes per maintenance round.
const DEAD_PER_ROUND: usize = 4;

/// How often a member sets `pitboss_consumer_lag_seconds` (as Kafka's statistics come).
const LAG_EVERY: Duration = Duration::from_secs(5);

/// Where a stream's cursor starts in a lease just taken, given the stream's checkpoint and its
/// start mark (the time a member started it at when it had no checkpoint, written on the lease
/// row so a member started at the checkpoint later — a restart without `--start-at` — starts
/// there too if no record came in between, not at TRIM_HORIZON): both count only for
/// [`StartFrom::Committed`] (and for committed-or-a-time).
fn start_of(start: StartFrom, checkpoint: Option<&String>, mark: Option<i64>) -> Start {
    match (start, checkpoint) {
        (StartFrom::Committed | StartFrom::CommittedOrTimestamp(_), Some(seq)) => {
            Start::After(seq.clone())
        }
        (StartFrom::Committed | StartFrom::CommittedOrTimestamp(_), None)
            if let Some(ms) = mark =>
        {
            Start::Timestamp(ms)
        }
        (StartFrom::Committed | StartFrom::Earliest, _) => Start::TrimHorizon,
        (StartFrom::Latest, _) => Start::Latest,
        (StartFrom::Timestamp(ms) | StartFrom::CommittedOrTimestamp(ms), _) => Start::Timestamp(ms),
    }
}

impl KinesisConsumer {
    /// Checks the streams (every companion must have the main stream's shard count) and joins
    /// the group.
    pub(super) async fn join(
        shared: Arc<Shared>,
        group: &str,
        topic: &str,
        config: ConsumerConfig,
    ) -> Result<Self, BusError> {
        let main = shared.shard_ids(topic).await?;
        let mut streams = vec![Stream {
            name: Arc::from(topic),
            shards: main.clone(),
            checkpoint: checkpoint_attribute(topic, true),
        }];
        let mut names = BTreeSet::from([topic]);
        for companion in &config.companions {
            if !names.insert(companion) {
                return Err(BusError::Config(format!(
                    "{companion} is given twice among {topic} and its companions"
                )));
            }
            let shards = shared.shard_ids(companion).await?;
            if shards.len() != main.len() {
                return Err(BusError::Config(format!(
                    "companion {companion} has {} shards but {topic} has {}: companions must \
                     have the same shard count",
                    shards.len(),
                    main.len()
                )));
            }
            streams.push(Stream {
                name: Arc::from(companion.as_str()),
                shards,
                checkpoint: checkpoint_attribute(companion, false),
            });
        }
        shared.ensure_lease_table().await?;
        let leases = Leases::new(
            &shared,
            group,
            topic,
            uuid::Uuid::now_v7().to_string(),
            config.session_timeout.as_millis() as i64,
        );
        leases.heartbeat().await?;
        Ok(KinesisConsumer {
            shared,
            leases,
            streams,
            start: config.start,
            owned: BTreeMap::new(),
            releasing: Vec::new(),
            to_revoke: Vec::new(),
            to_assign: Vec::new(),
            next_maintenance: Instant::now(),
            rotation: 0,
            group: Arc::from(group),
            next_lag_report: Instant::now(),
            lag_reported: BTreeSet::new(),
        })
    }

    /// The shard id of index `p` of the main stream: the key of the lease row.
    fn lease_shard(&self, p: Partition) -> &str {
        &self.streams[0].shards[p as usize]
    }

    /// Sets `pitboss_consumer_lag_seconds{group, topic, partition}` for every shard of every
    /// stream this member holds a lease on, from the last GetRecords answer's
    /// `MillisBehindLatest` (how far behind the shard's newest record its reads are: what
    /// CloudWatch's `GetRecords.IteratorAgeMilliseconds` says for the stream as a whole); a
    /// shard no longer held reads 0 here.
    fn report_lag(&mut self) {
        let now = Instant::now();
        if now < self.next_lag_report {
            return;
        }
        self.next_lag_report = now + LAG_EVERY;
        let gauge = |topic: &Arc<str>, p: Partition| {
            metrics::gauge!(
                "pitboss_consumer_lag_seconds",
                "group" => self.group.to_string(),
                "topic" => topic.to_string(),
                "partition" => p.to_string(),
            )
        };
        let mut held = BTreeSet::new();
        for (&p, lease) in &self.owned {
            if self.releasing.contains(&p) {
                continue;
            }
            for cursor in &lease.cursors {
                if let Some(ms) = cursor.behind_ms() {
                    gauge(cursor.topic(), p).set(ms.max(0) as f64 / 1000.0);
                    held.insert((cursor.topic().clone(), p));
                }
            }
        }
        for (topic, p) in self.lag_reported.difference(&held) {
            gauge(topic, *p).set(0.0);
        }
        self.lag_reported = held;
    }

    /// Forgets a lease another member owns now (its stored offsets go with it).
    fn lost(&mut self, p: Partition) {
        self.owned.remove(&p);
        self.releasing.retain(|r| *r != p);
        self.to_revoke.retain(|r| *r != p);
        self.to_assign.retain(|r| *r != p);
    }

    /// Heartbeat, renew owned leases, then move toward the fair share.
    async fn maintain(&mut self) -> Result<(), BusError> {
        self.leases.heartbeat().await?;
        let owned: Vec<Partition> = self.owned.keys().copied().collect();
        for p in owned {
            if !self.leases.renew(self.lease_shard(p)).await? {
                tracing::warn!(stream = %self.streams[0].name, shard = p, "lease lost; another member owns it now");
                self.lost(p);
            }
        }

        let view = self.leases.view().await?;
        // Rows of members killed (they never left) are deleted once expired a session past,
        // a few a round: they were counted out already, but stayed in the table for good.
        for (sk, expires) in view.dead_members.iter().take(DEAD_PER_ROUND) {
            match self.leases.bury(sk, *expires).await {
                Ok(true) => {
                    tracing::info!(stream = %self.streams[0].name, row = %sk, "deleted the row of a member that died");
                }
                Ok(false) => {}
                // Housekeeping: the lease work of the round goes on (the next round retries).
                Err(e) => {
                    tracing::warn!(stream = %self.streams[0].name, row = %sk, error = %e, "could not delete the row of a member that died");
                }
            }
        }
        let now = super::now_ms();
        let shard_count = self.streams[0].shards.len();
        let fair = shard_count.div_ceil(view.live_members);

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
        for p in 0..shard_count as Partition {
            if self.owned.len() >= fair {
                break;
            }
            if self.owned.contains_key(&p) || self.releasing.contains(&p) {
                continue;
            }
            let row = view
                .leases
                .get(self.lease_shard(p))
                .cloned()
                .unwrap_or_default();
            if !row.owner.is_empty() && row.expires > now {
                continue;
            }
            if !self.leases.take(self.lease_shard(p), row.counter).await? {
                continue; // someone else was faster
            }
            let committed: Vec<Option<String>> = self
                .streams
                .iter()
                .map(|s| row.checkpoints.get(&s.checkpoint).cloned())
                .collect();
            let cursors = self
                .streams
                .iter()
                .zip(&committed)
                .map(|(s, checkpoint)| {
                    ShardCursor::new(
                        s.name.clone(),
                        p,
                        s.shards[p as usize].clone(),
                        start_of(
                            self.start,
                            checkpoint.as_ref(),
                            row.starts.get(&s.checkpoint).copied(),
                        ),
                    )
                })
                .collect();
            // Where the option starts a stream that has no checkpoint is marked on the row at
            // once (a start mark: see `start_of`); a committed-or-a-time member keeps a mark
            // there is (it starts there).
            // `Latest`: the time of the take, by this host's clock against Kinesis's arrival
            // times (a clock ahead of Kinesis's by d would skip, after a restart at the mark,
            // what arrived within d of the take: keep hosts synchronised, as AWS's time sync
            // does).
            let now_ms = super::now_ms();
            let marks: Vec<(String, String)> = self
                .streams
                .iter()
                .zip(&committed)
                .filter(|(_, c)| c.is_none())
                .filter_map(|(s, _)| {
                    let at = match self.start {
                        StartFrom::CommittedOrTimestamp(_)
                            if row.starts.contains_key(&s.checkpoint) =>
                        {
                            return None;
                        }
                        StartFrom::Timestamp(ms) | StartFrom::CommittedOrTimestamp(ms) => ms,
                        StartFrom::Latest => now_ms,
                        StartFrom::Committed | StartFrom::Earliest => return None,
                    };
                    Some((start_attribute(&s.checkpoint), at.to_string()))
                })
                .collect();
            let lease = self.owned.entry(p).or_insert(Lease {
                cursors,
                stored: vec![None; committed.len()],
                committed,
            });
            self.to_assign.push(p);
            for cursor in &mut lease.cursors {
                cursor.prime(&self.shared).await?;
            }
            // Written once the lease is held (a failure here must not leave it unrenewed).
            if !marks.is_empty() {
                match self.leases.checkpoint(self.lease_shard(p), &marks).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(stream = %self.streams[0].name, shard = p, "lease lost while marking its start; another member owns it now");
                        self.lost(p);
                    }
                    // Without the mark, a later start at the checkpoint reads this shard from
                    // TRIM_HORIZON if no record comes before it: as before marks.
                    Err(e) => {
                        tracing::warn!(stream = %self.streams[0].name, shard = p, error = %e, "could not mark where this shard starts");
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes the stored positions that moved since the last checkpoint, one conditional
    /// update per lease.
    async fn commit_stored(&mut self) -> Result<(), BusError> {
        let mut fenced = Vec::new();
        for (&p, lease) in &mut self.owned {
            let changes: Vec<(String, String)> = lease
                .stored
                .iter()
                .zip(&lease.committed)
                .zip(&self.streams)
                .filter_map(|((stored, committed), stream)| match stored {
                    Some(seq) if Some(seq) != committed.as_ref() => {
                        Some((stream.checkpoint.clone(), seq.clone()))
                    }
                    _ => None,
                })
                .collect();
            if changes.is_empty() {
                continue;
            }
            if self
                .leases
                .checkpoint(&self.streams[0].shards[p as usize], &changes)
                .await?
            {
                lease.committed.clone_from(&lease.stored);
            } else {
                // Fenced: the lease moved on; its new owner resumes from the last checkpoint.
                fenced.push(p);
            }
        }
        for p in fenced {
            tracing::warn!(stream = %self.streams[0].name, shard = p, "checkpoint fenced off; another member owns the lease now");
            self.lost(p);
        }
        Ok(())
    }

    async fn release(&mut self, parts: &[Partition]) -> Result<(), BusError> {
        for &p in parts {
            // Not owned any more is fine too: someone else has it already.
            self.leases.release(self.lease_shard(p)).await?;
            self.owned.remove(&p);
        }
        Ok(())
    }

    async fn finish_revoke(&mut self) -> Result<(), BusError> {
        if self.releasing.is_empty() {
            return Ok(());
        }
        self.commit_stored().await?;
        let parts = std::mem::take(&mut self.releasing);
        self.release(&parts).await
    }

    async fn fetch(&mut self, max: usize) -> Result<Vec<crate::Record>, BusError> {
        let cursors = self
            .owned
            .iter_mut()
            .filter(|(p, _)| !self.to_revoke.contains(p) && !self.releasing.contains(p))
            .flat_map(|(_, lease)| lease.cursors.iter_mut())
            .collect();
        let records = fetch_round(&self.shared, cursors, self.rotation, max.max(1)).await?;
        self.rotation = self.rotation.wrapping_add(1);
        Ok(records)
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
                    + Duration::from_millis((self.leases.lease_ms() / 5).clamp(100, 2000) as u64);
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
            self.report_lag();
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

    fn store(
        &mut self,
        topic: &str,
        partition: Partition,
        position: &Position,
    ) -> Result<(), BusError> {
        let Position::Sequence(seq) = position else {
            return Err(BusError::Config(format!(
                "not a Kinesis sequence number: {position}"
            )));
        };
        let Some(stream) = self.streams.iter().position(|s| &*s.name == topic) else {
            return Err(BusError::Config(format!(
                "{topic} is neither {} nor one of its companions",
                self.streams[0].name
            )));
        };
        let Some(lease) = self.owned.get_mut(&partition) else {
            return Err(BusError::NotAssigned(partition));
        };
        // Sequence numbers grow within a shard; compare numerically (they are decimal text).
        let stored = &mut lease.stored[stream];
        let newer = stored
            .as_ref()
            .is_none_or(|old| (old.len(), old.as_str()) < (seq.len(), seq.as_str()));
        if newer {
            *stored = Some(seq.clone());
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
        // Gone: another member reports these shards now.
        self.next_lag_report = Instant::now();
        self.report_lag();
        self.leases.leave().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_starts_where_the_start_option_says() {
        let seq = "49590338271490256608559692538361571095921575989136588898".to_owned();
        let cases = [
            (
                StartFrom::Committed,
                Some(&seq),
                None,
                Start::After(seq.clone()),
            ),
            (StartFrom::Committed, None, None, Start::TrimHorizon),
            (StartFrom::Earliest, Some(&seq), None, Start::TrimHorizon),
            (StartFrom::Latest, Some(&seq), None, Start::Latest),
            (
                StartFrom::Timestamp(42),
                Some(&seq),
                None,
                Start::Timestamp(42),
            ),
            (StartFrom::Timestamp(42), None, None, Start::Timestamp(42)),
            (
                StartFrom::CommittedOrTimestamp(42),
                Some(&seq),
                None,
                Start::After(seq.clone()),
            ),
            (
                StartFrom::CommittedOrTimestamp(42),
                None,
                None,
                Start::Timestamp(42),
            ),
            // A start mark (a shard that got no record since a member started it at a time)…
            (
                StartFrom::Committed,
                None,
                Some(1_700),
                Start::Timestamp(1_700),
            ),
            (
                StartFrom::CommittedOrTimestamp(42),
                None,
                Some(1_700),
                Start::Timestamp(1_700),
            ),
            // …gives way to a checkpoint, and to the options that ignore the group's position.
            (
                StartFrom::Committed,
                Some(&seq),
                Some(1_700),
                Start::After(seq.clone()),
            ),
            (StartFrom::Earliest, None, Some(1_700), Start::TrimHorizon),
            (StartFrom::Latest, None, Some(1_700), Start::Latest),
            (
                StartFrom::Timestamp(42),
                None,
                Some(1_700),
                Start::Timestamp(42),
            ),
        ];
        for (start, checkpoint, mark, expected) in cases {
            assert_eq!(
                start_of(start, checkpoint, mark),
                expected,
                "{start:?} {checkpoint:?} {mark:?}"
            );
        }
    }

    #[test]
    fn a_start_mark_lives_beside_its_checkpoint_not_in_it() {
        assert_eq!(start_attribute("checkpoint"), "start_at");
        assert_eq!(
            start_attribute("checkpoint#events_overflow"),
            "start_at#events_overflow"
        );
    }
}
