//! A consumer-group member of the embedded log: follows the coordinator's assignment (and
//! its companion topics' same partitions), starts each partition where the config says,
//! stores and commits offsets through the writer, reports lag.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{oneshot, watch};

use super::coordinator::MemberRef;
use super::reader::{Cursor, blocking, end_offset, fetch, offset_at_time, wait_for_change};
use super::storage::WriteOp;
use super::{Inner, TopicMeta, closed, lock, storage};
use crate::{BusError, Consumer, ConsumerConfig, Delivery, Partition, Position, StartFrom};

/// A topic this member reads: the group's topic first, then its companions.
#[derive(Debug, Clone)]
struct Followed {
    name: Arc<str>,
    meta: TopicMeta,
}

/// A member of a consumer group on an [`super::EmbeddedBus`].
#[derive(Debug)]
pub struct EmbeddedConsumer {
    inner: Arc<Inner>,
    member: MemberRef,
    start: StartFrom,
    topics: Vec<Followed>,
    reader: Arc<Mutex<Connection>>,
    /// What is being fetched: one cursor per owned partition and followed topic.
    cursors: Vec<Cursor>,
    /// Next offset to commit, per (topic id, partition).
    stored: BTreeMap<(i64, Partition), i64>,
    /// Partitions reported as revoking, released on the next poll or commit.
    releasing: Vec<Partition>,
    turn: usize,
    changed: watch::Receiver<u64>,
    left: bool,
    /// Next offset not yet processed (where reading started, then as stored), per owned
    /// (topic id, partition): the base of the lag metric.
    processed: BTreeMap<(i64, Partition), i64>,
    lag_reported: Option<Instant>,
}

enum Change {
    Revoking(Vec<Partition>),
    Assigned(Vec<Partition>),
    None,
}

impl EmbeddedConsumer {
    pub(super) fn join(
        inner: Arc<Inner>,
        group: &str,
        topic: &str,
        config: ConsumerConfig,
    ) -> Result<Self, BusError> {
        let meta = inner.topic(topic)?;
        let mut topics = vec![Followed {
            name: Arc::from(topic),
            meta,
        }];
        for companion in &config.companions {
            let m = inner.topic(companion)?;
            if m.partitions != meta.partitions {
                return Err(BusError::Config(format!(
                    "companion topic {companion:?} has {} partitions; {topic:?} has {}: companions must be co-partitioned",
                    m.partitions, meta.partitions
                )));
            }
            if topics.iter().any(|t| t.meta.id == m.id) {
                return Err(BusError::Config(format!(
                    "topic {companion:?} is followed twice"
                )));
            }
            topics.push(Followed {
                name: Arc::from(companion.as_str()),
                meta: m,
            });
        }
        let reader = inner.reader()?;
        let member = lock(&inner.coord).join(group, meta, config.revoke_timeout);
        inner.notify();
        Ok(EmbeddedConsumer {
            changed: inner.changed.subscribe(),
            inner,
            member,
            start: config.start,
            topics,
            reader: Arc::new(Mutex::new(reader)),
            cursors: Vec::new(),
            stored: BTreeMap::new(),
            releasing: Vec::new(),
            turn: 0,
            left: false,
            processed: BTreeMap::new(),
            lag_reported: None,
        })
    }

    /// Commits what is stored, then hands back the partitions reported as revoking.
    async fn finish_revoke(&mut self) -> Result<(), BusError> {
        if self.releasing.is_empty() {
            return Ok(());
        }
        self.commit_stored().await?;
        let parts = std::mem::take(&mut self.releasing);
        lock(&self.inner.coord).release(&self.member, &parts);
        self.stored.retain(|(_, p), _| !parts.contains(p));
        self.inner.notify();
        Ok(())
    }

    async fn commit_stored(&mut self) -> Result<(), BusError> {
        if self.stored.is_empty() {
            return Ok(());
        }
        let offsets: Vec<_> = self.stored.iter().map(|((t, p), o)| (*t, *p, *o)).collect();
        let (reply, rx) = oneshot::channel();
        self.inner
            .ops
            .send(WriteOp::Commit {
                member: self.member.clone(),
                offsets,
                reply,
            })
            .await
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    fn sync_with_group(&mut self) -> Change {
        let inner = self.inner.clone();
        let mut coord = lock(&inner.coord);
        let Some(g) = coord.group(&self.member) else {
            return Change::None;
        };
        g.expire(Instant::now());
        let owned = g.owned_by(self.member.id);
        // Partitions taken away by a revoke timeout: stop fetching, forget stored offsets.
        self.cursors.retain(|c| owned.contains(&c.partition));
        let releasing = &self.releasing;
        self.stored
            .retain(|(_, p), _| owned.contains(p) || releasing.contains(p));
        let releasing = self.releasing.clone();
        self.forget_lag(|p| owned.contains(&p) || releasing.contains(&p));
        let Some(m) = g.members.get_mut(&self.member.id) else {
            return Change::None;
        };
        if !m.revoke_pending.is_empty() {
            let parts = std::mem::take(&mut m.revoke_pending);
            m.revoking.extend(parts.iter().copied());
            return Change::Revoking(parts.into_iter().collect());
        }
        if !m.granted.is_empty() {
            let parts: Vec<_> = std::mem::take(&mut m.granted).into_iter().collect();
            return Change::Assigned(parts);
        }
        Change::None
    }

    /// Where each followed topic's partition starts, for newly assigned partitions; and the
    /// starts to commit at once: those a start option chose in a partition the group never
    /// committed (else a member started at the commit later, a restart without `--start-at`,
    /// would read such a partition from its first record if no record came in between).
    #[allow(clippy::type_complexity)]
    fn starts(
        &self,
        parts: &[Partition],
    ) -> Result<(Vec<Cursor>, Vec<(i64, Partition, i64)>), BusError> {
        let conn = lock(&self.reader);
        let mut out = Vec::with_capacity(parts.len() * self.topics.len());
        let mut keep = Vec::new();
        for &p in parts {
            for t in &self.topics {
                let id = t.meta.id;
                let committed = || {
                    conn.query_row(
                        "SELECT next_offset FROM group_offsets WHERE grp=?1 AND topic_id=?2 AND partition=?3",
                        params![self.member.group, id, p],
                        |r| r.get::<_, i64>(0),
                    )
                    .optional()
                    .map_err(storage)
                };
                let commit = match self.start {
                    StartFrom::Earliest => None,
                    _ => committed()?,
                };
                let next = match (self.start, commit) {
                    (StartFrom::Committed, c) => c.unwrap_or(0),
                    (StartFrom::CommittedOrTimestamp(_), Some(c)) => c,
                    (StartFrom::Earliest, _) => 0,
                    (StartFrom::Latest, c) => {
                        let next = end_offset(&conn, id, p)?;
                        if c.is_none() {
                            keep.push((id, p, next));
                        }
                        next
                    }
                    (StartFrom::Timestamp(ts) | StartFrom::CommittedOrTimestamp(ts), c) => {
                        let next = offset_at_time(&conn, id, p, ts)?;
                        if c.is_none() {
                            keep.push((id, p, next));
                        }
                        next
                    }
                };
                out.push(Cursor {
                    topic: t.name.clone(),
                    topic_id: id,
                    partition: p,
                    next,
                });
            }
        }
        Ok((out, keep))
    }

    /// Every 5 s: `pitboss_consumer_lag_records{group, topic, partition}` — records between each owned
    /// partition's end and the next offset not yet processed (as for Kafka).
    async fn report_lag(&mut self) -> Result<(), BusError> {
        if self
            .lag_reported
            .is_some_and(|at| at.elapsed() < Duration::from_secs(5))
            || self.processed.is_empty()
        {
            return Ok(());
        }
        self.lag_reported = Some(Instant::now());
        let parts: Vec<((i64, Partition), i64)> =
            self.processed.iter().map(|(k, o)| (*k, *o)).collect();
        let lags = blocking(&self.reader, move |conn| {
            parts
                .into_iter()
                .map(|((t, p), done)| Ok(((t, p), (end_offset(conn, t, p)? - done).max(0))))
                .collect::<Result<Vec<_>, BusError>>()
        })
        .await?;
        for ((t, p), lag) in lags {
            let Some(name) = self.topics.iter().find(|f| f.meta.id == t) else {
                continue;
            };
            metrics::gauge!(
                "pitboss_consumer_lag_records",
                "group" => self.member.group.clone(),
                "topic" => name.name.to_string(),
                "partition" => p.to_string(),
            )
            .set(lag as f64);
        }
        Ok(())
    }

    /// Stops reporting the lag of partitions `keep` refuses (revoked, or taken away by a
    /// revoke timeout): another member reports them now, and their last value here would be
    /// counted for ever in the group's sum, so it is set to 0.
    fn forget_lag(&mut self, keep: impl Fn(Partition) -> bool) {
        let gone: Vec<(i64, Partition)> = self
            .processed
            .keys()
            .filter(|(_, p)| !keep(*p))
            .copied()
            .collect();
        for (t, p) in gone {
            self.processed.remove(&(t, p));
            if let Some(name) = self.topics.iter().find(|f| f.meta.id == t) {
                metrics::gauge!(
                    "pitboss_consumer_lag_records",
                    "group" => self.member.group.clone(),
                    "topic" => name.name.to_string(),
                    "partition" => p.to_string(),
                )
                .set(0.0);
            }
        }
    }

    fn leave(&mut self) {
        if !self.left {
            self.left = true;
            lock(&self.inner.coord).leave(&self.member);
            self.inner.notify();
        }
    }

    fn owns(&self, partition: Partition) -> bool {
        self.cursors.iter().any(|c| c.partition == partition) || self.releasing.contains(&partition)
    }
}

#[async_trait]
impl Consumer for EmbeddedConsumer {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Delivery, BusError> {
        self.finish_revoke().await?;
        self.report_lag().await?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            self.changed.borrow_and_update();
            match self.sync_with_group() {
                Change::Revoking(parts) => {
                    self.cursors.retain(|c| !parts.contains(&c.partition));
                    self.forget_lag(|p| !parts.contains(&p));
                    self.releasing = parts.clone();
                    return Ok(Delivery::Revoking(parts));
                }
                Change::Assigned(parts) => {
                    let (cursors, keep) = self.starts(&parts)?;
                    if !keep.is_empty() {
                        let (reply, rx) = oneshot::channel();
                        self.inner
                            .ops
                            .send(WriteOp::Commit {
                                member: self.member.clone(),
                                offsets: keep,
                                reply,
                            })
                            .await
                            .map_err(|_| closed())?;
                        rx.await.map_err(|_| closed())??;
                    }
                    for c in cursors {
                        self.processed.insert((c.topic_id, c.partition), c.next);
                        self.cursors.push(c);
                    }
                    self.cursors.sort_by_key(|c| (c.partition, c.topic_id));
                    return Ok(Delivery::Assigned(parts));
                }
                Change::None => {}
            }
            if max > 0
                && super::may_have_records(&self.inner.tails, &self.inner.fetches, &self.cursors)
            {
                let mut cursors = self.cursors.clone();
                let start = self.turn;
                self.turn = self.turn.wrapping_add(1);
                let (cursors, records) = blocking(&self.reader, move |conn| {
                    let records = fetch(conn, &mut cursors, start, max)?;
                    Ok((cursors, records))
                })
                .await?;
                self.cursors = cursors;
                if !records.is_empty() {
                    return Ok(Delivery::Records(records));
                }
            }
            // Wake on new records or a group change; re-check revoke deadlines once a second.
            if !wait_for_change(&mut self.changed, deadline).await {
                return Ok(Delivery::Records(Vec::new()));
            }
        }
    }

    fn store(
        &mut self,
        topic: &str,
        partition: Partition,
        position: &Position,
    ) -> Result<(), BusError> {
        let Position::Offset(o) = position else {
            return Err(BusError::Config(format!(
                "not an embedded-log offset: {position}"
            )));
        };
        let Some(t) = self.topics.iter().find(|t| &*t.name == topic) else {
            return Err(BusError::Config(format!(
                "topic {topic:?} is not followed by this consumer"
            )));
        };
        if !self.owns(partition) {
            return Err(BusError::NotAssigned(partition));
        }
        let key = (t.meta.id, partition);
        let next = o + 1;
        let slot = self.stored.entry(key).or_insert(next);
        *slot = (*slot).max(next);
        if let Some(done) = self.processed.get_mut(&key) {
            *done = (*done).max(next);
        }
        Ok(())
    }

    async fn commit(&mut self) -> Result<(), BusError> {
        self.commit_stored().await?;
        self.finish_revoke().await
    }

    fn assignment(&self) -> Vec<Partition> {
        self.cursors
            .iter()
            .map(|c| c.partition)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    async fn close(mut self: Box<Self>) -> Result<(), BusError> {
        self.commit_stored().await?;
        self.leave();
        Ok(())
    }
}

impl Drop for EmbeddedConsumer {
    fn drop(&mut self) {
        self.leave();
    }
}
