//! Presence across instances: every gateway publishes who is in its rooms on the `presence`
//! topic every few seconds, reads every other instance's, and answers a `presence` request with
//! its own exact figures plus the others' latest (docs/gateway.md#presence).
//!
//! A record is one part of one instance's snapshot (JSON, internal to the gateways, `v: 1`):
//! the rooms with at least one connection, their connection counts and subjects. A snapshot
//! whose last part has arrived replaces that instance's previous one (a room that emptied is
//! gone within one interval); an instance that drains publishes `gone`; one that stops
//! publishing (SIGKILL) is forgotten once its snapshot is older than the TTL.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pitboss_bus::{Bus, OutRecord, ReadFrom};
use pitboss_model::Timestamp;
use pitboss_runtime::Shutdown;
use serde::{Deserialize, Serialize};

use crate::feed::lock;
use crate::hub::Hub;

/// Subjects listed per room (in snapshots and answers).
pub const MAX_SUBJECTS: usize = 1000;
/// Subjects per snapshot record, so that a record stays far below a bus's size limit (Kafka's
/// default 1 MB, Kinesis' 1 MiB).
const SUBJECTS_PER_PART: usize = 10_000;

/// Tuning of presence sharing.
#[derive(Debug, Clone)]
pub struct PresenceConfig {
    /// Topic the snapshots go to; None: presence is this instance's only (one gateway).
    pub topic: Option<String>,
    /// How often this instance publishes its snapshot…
    pub interval: Duration,
    /// …and how old another instance's may be before it is forgotten.
    pub ttl: Duration,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            topic: Some("presence".into()),
            interval: Duration::from_secs(5),
            ttl: Duration::from_secs(15),
        }
    }
}

/// One room of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomPresence {
    pub channel: String,
    pub connections: usize,
    pub subjects: Vec<String>,
}

/// One part of an instance's snapshot, as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Format version (1).
    pub v: u32,
    /// The instance (its `--gateway-id`).
    pub gateway: String,
    /// When the snapshot was taken (ms); all its parts carry the same.
    pub at_ms: i64,
    /// How long it holds without a newer one.
    pub ttl_ms: i64,
    /// This part's number and how many there are.
    pub part: u32,
    pub parts: u32,
    /// The instance drained: forget it.
    #[serde(default)]
    pub gone: bool,
    pub rooms: Vec<RoomPresence>,
}

impl Snapshot {
    /// `rooms` of `gateway` as records of at most [`SUBJECTS_PER_PART`] subjects each (at least
    /// one, so that an instance with no one in its rooms still replaces its last snapshot).
    pub fn parts(gateway: &str, at_ms: i64, ttl_ms: i64, rooms: Vec<RoomPresence>) -> Vec<Self> {
        let mut chunks: Vec<Vec<RoomPresence>> = vec![Vec::new()];
        let mut subjects = 0;
        for r in rooms {
            let n = r.subjects.len().max(1);
            if subjects + n > SUBJECTS_PER_PART && !chunks.last().is_some_and(Vec::is_empty) {
                chunks.push(Vec::new());
                subjects = 0;
            }
            subjects += n;
            if let Some(last) = chunks.last_mut() {
                last.push(r);
            }
        }
        let parts = chunks.len() as u32;
        chunks
            .into_iter()
            .enumerate()
            .map(|(i, rooms)| Snapshot {
                v: 1,
                gateway: gateway.to_owned(),
                at_ms,
                ttl_ms,
                part: i as u32,
                parts,
                gone: false,
                rooms,
            })
            .collect()
    }
}

/// Rooms of one instance: connections and subjects per channel.
type Rooms = HashMap<String, (usize, Vec<String>)>;

#[derive(Debug, Default)]
struct Instance {
    /// The newest complete snapshot's rooms and time.
    rooms: Rooms,
    at_ms: i64,
    ttl_ms: i64,
    /// A snapshot whose parts are still arriving.
    next: Option<(i64, Rooms)>,
}

/// What the other instances said, by instance.
#[derive(Debug, Default)]
pub struct Cluster {
    own: String,
    instances: HashMap<String, Instance>,
}

impl Cluster {
    /// `own` is this instance's id: its own records are ignored (its figures are exact).
    pub fn new(own: &str) -> Self {
        Cluster {
            own: own.to_owned(),
            instances: HashMap::new(),
        }
    }

    /// Applies one snapshot part; false when it is not one (skipped).
    pub fn apply(&mut self, s: Snapshot) -> bool {
        if s.v != 1 || s.parts == 0 || s.part >= s.parts {
            return false;
        }
        if s.gateway == self.own {
            return true;
        }
        if s.gone {
            self.instances.remove(&s.gateway);
            return true;
        }
        let inst = self.instances.entry(s.gateway.clone()).or_default();
        if s.at_ms <= inst.at_ms {
            return true; // older than what it has
        }
        let next = match &mut inst.next {
            Some((at, rooms)) if *at == s.at_ms => rooms,
            _ => {
                inst.next = Some((s.at_ms, HashMap::new()));
                &mut inst.next.as_mut().expect("just set").1
            }
        };
        for r in s.rooms {
            next.insert(r.channel, (r.connections, r.subjects));
        }
        if s.part + 1 == s.parts
            && let Some((at, rooms)) = inst.next.take()
        {
            inst.rooms = rooms;
            inst.at_ms = at;
            inst.ttl_ms = s.ttl_ms;
        }
        true
    }

    /// The other instances' figures for `channel` at `now_ms`: connections, subjects, how many
    /// instances have someone there.
    pub fn room(&self, channel: &str, now_ms: i64) -> (usize, Vec<String>, usize) {
        let mut connections = 0;
        let mut subjects = Vec::new();
        let mut instances = 0;
        for inst in self.instances.values() {
            if now_ms - inst.at_ms > inst.ttl_ms {
                continue;
            }
            if let Some((n, s)) = inst.rooms.get(channel)
                && *n > 0
            {
                connections += n;
                subjects.extend(s.iter().cloned());
                instances += 1;
            }
        }
        (connections, subjects, instances)
    }

    /// Forgets instances whose snapshot expired.
    pub fn expire(&mut self, now_ms: i64) {
        self.instances
            .retain(|_, i| i.next.is_some() || now_ms - i.at_ms <= i.ttl_ms);
    }
}

/// A room's presence across instances: this hub's exact figures and the cluster's.
pub fn merged(
    hub: &Hub,
    cluster: &Mutex<Cluster>,
    channel: &str,
    now_ms: i64,
) -> (usize, Vec<String>, usize) {
    let (local, local_subjects) = hub.presence(channel);
    let (remote, remote_subjects, instances) = lock_cluster(cluster).room(channel, now_ms);
    let subjects: BTreeSet<String> = local_subjects.into_iter().chain(remote_subjects).collect();
    let subjects: Vec<String> = subjects.into_iter().take(MAX_SUBJECTS).collect();
    (local + remote, subjects, instances + usize::from(local > 0))
}

pub fn lock_cluster(c: &Mutex<Cluster>) -> std::sync::MutexGuard<'_, Cluster> {
    c.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn record(s: &Snapshot) -> OutRecord {
    OutRecord::new(s.gateway.clone(), serde_json::to_vec(s).unwrap_or_default())
        .with_header(pitboss_bus::header::TYPE, "presence")
}

/// Publishes this instance's snapshot every interval, and `gone` when `stop` fires; reads the
/// others' into `cluster`. Failures are logged and retried: presence falls back to this
/// instance's own.
pub async fn run(
    bus: Arc<dyn Bus>,
    hub: Arc<Mutex<Hub>>,
    cluster: Arc<Mutex<Cluster>>,
    gateway: String,
    config: PresenceConfig,
    stop: Shutdown,
) {
    let Some(topic) = config.topic.clone() else {
        return;
    };
    let publisher = bus.publisher();
    tokio::spawn(read(
        bus,
        cluster.clone(),
        topic.clone(),
        config.ttl,
        stop.clone(),
    ));
    let ttl_ms = config.ttl.as_millis() as i64;
    let mut every = tokio::time::interval(config.interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        tokio::select! {
            () = stop.wait() => break,
            _ = every.tick() => {}
        }
        let now = Timestamp::now().as_millis();
        let rooms = lock(&hub).rooms_presence();
        lock_cluster(&cluster).expire(now);
        let records: Vec<OutRecord> = Snapshot::parts(&gateway, now, ttl_ms, rooms)
            .iter()
            .map(record)
            .collect();
        match publisher.publish(&topic, records).await {
            Ok(_) => warned = false,
            Err(e) => {
                metrics::counter!("pitboss_gateway_presence_errors_total").increment(1);
                if !warned {
                    tracing::warn!(topic, error = %e, "cannot publish presence: it is this instance's only until the bus takes it");
                    warned = true;
                }
            }
        }
    }
    let gone = Snapshot {
        v: 1,
        gateway: gateway.clone(),
        at_ms: Timestamp::now().as_millis(),
        ttl_ms,
        part: 0,
        parts: 1,
        gone: true,
        rooms: Vec::new(),
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        publisher.publish(&topic, vec![record(&gone)]),
    )
    .await;
}

async fn read(
    bus: Arc<dyn Bus>,
    cluster: Arc<Mutex<Cluster>>,
    topic: String,
    ttl: Duration,
    stop: Shutdown,
) {
    // From one TTL back: the snapshots that still hold.
    let from = Timestamp::now().as_millis() - ttl.as_millis() as i64;
    let mut reader = loop {
        match bus.reader_all(&topic, ReadFrom::Timestamp(from)).await {
            Ok(r) => break r,
            Err(e) => {
                tracing::warn!(topic, error = %e, "cannot read presence yet; retrying in 5 s");
                tokio::select! {
                    () = stop.wait() => return,
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        }
    };
    loop {
        let polled = tokio::select! {
            () = stop.wait() => return,
            polled = reader.poll(500, Duration::from_millis(500)) => polled,
        };
        match polled {
            Ok(records) => {
                let mut c = lock_cluster(&cluster);
                for r in records {
                    let ok = serde_json::from_slice::<Snapshot>(&r.value)
                        .ok()
                        .is_some_and(|s| c.apply(s));
                    if !ok {
                        metrics::counter!("pitboss_gateway_records_skipped_total", "topic" => "presence", "reason" => "invalid")
                            .increment(1);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(topic, error = %e, "presence poll failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn room(channel: &str, subjects: &[&str]) -> RoomPresence {
        RoomPresence {
            channel: channel.into(),
            connections: subjects.len(),
            subjects: subjects.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn a_snapshot_replaces_the_instances_previous_one_once_all_its_parts_arrived() {
        let mut c = Cluster::new("me");
        for p in Snapshot::parts("b", 1000, 15_000, vec![room("room:t:a", &["p1", "p2"])]) {
            assert!(c.apply(p));
        }
        assert_eq!(c.room("room:t:a", 2000).0, 2);
        // A newer snapshot in two parts: until the second arrives the old one holds.
        let mut rooms = vec![room("room:t:b", &["p3"])];
        let many: Vec<String> = (0..SUBJECTS_PER_PART).map(|i| format!("x{i}")).collect();
        rooms.push(RoomPresence {
            channel: "room:t:c".into(),
            connections: many.len(),
            subjects: many,
        });
        let parts = Snapshot::parts("b", 3000, 15_000, rooms);
        assert_eq!(parts.len(), 2);
        c.apply(parts[0].clone());
        assert_eq!(c.room("room:t:a", 3500).0, 2, "the old snapshot holds");
        c.apply(parts[1].clone());
        assert_eq!(c.room("room:t:a", 3500).0, 0, "the room emptied");
        assert_eq!(c.room("room:t:b", 3500), (1, vec!["p3".into()], 1));
        // An older snapshot arriving late changes nothing.
        for p in Snapshot::parts("b", 2000, 15_000, vec![room("room:t:a", &["p9"])]) {
            c.apply(p);
        }
        assert_eq!(c.room("room:t:a", 3500).0, 0);
    }

    #[test]
    fn instances_add_up_expire_and_leave_and_the_own_is_ignored() {
        let mut c = Cluster::new("me");
        for (gw, subjects) in [
            ("b", &["p1"][..]),
            ("c", &["p1", "p2"][..]),
            ("me", &["p7"][..]),
        ] {
            for p in Snapshot::parts(gw, 1000, 15_000, vec![room("room:t:a", subjects)]) {
                c.apply(p);
            }
        }
        let (n, mut subjects, instances) = c.room("room:t:a", 2000);
        subjects.sort();
        assert_eq!(
            (n, subjects, instances),
            (3, vec!["p1".into(), "p1".into(), "p2".into()], 2)
        );
        // c drains; b's snapshot expires after its TTL.
        c.apply(Snapshot {
            v: 1,
            gateway: "c".into(),
            at_ms: 3000,
            ttl_ms: 15_000,
            part: 0,
            parts: 1,
            gone: true,
            rooms: vec![],
        });
        assert_eq!(c.room("room:t:a", 3000).0, 1);
        assert_eq!(c.room("room:t:a", 16_001).0, 0, "b is older than its TTL");
        c.expire(16_001);
        assert!(c.instances.is_empty());
    }

    #[test]
    fn bad_snapshots_are_refused() {
        let mut c = Cluster::new("me");
        let mut s = Snapshot::parts("b", 1000, 15_000, vec![]).remove(0);
        s.v = 2;
        assert!(!c.apply(s.clone()));
        s.v = 1;
        s.part = 1;
        assert!(!c.apply(s));
    }

    #[test]
    fn an_empty_instance_still_publishes_one_part() {
        let parts = Snapshot::parts("b", 1000, 15_000, vec![]);
        assert_eq!(parts.len(), 1);
        assert!(parts[0].rooms.is_empty());
    }
}
