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
/// Bytes of rooms per snapshot record, so that a record stays far below a bus's size limit
/// (Kafka's default 1 MB, Kinesis' 1 MiB): a room holds at most 1000 subjects of at most 128
/// bytes, about 135 KB, so any room fits.
const BYTES_PER_PART: usize = 512 * 1024;

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
    /// The instance (its `--gateway-id`)…
    pub gateway: String,
    /// …and its start: two processes with the same id are told apart.
    #[serde(default)]
    pub boot: String,
    /// When the snapshot was taken (ms); all its parts carry the same.
    pub at_ms: i64,
    /// How long the sender means it to hold (for reference: each reader expires snapshots
    /// by its own clock and TTL).
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
    /// `rooms` of `gateway` (this start: `boot`) as records of at most [`BYTES_PER_PART`] of
    /// rooms each (at least one, so that an instance with no one in its rooms still replaces its
    /// last snapshot).
    pub fn parts(
        gateway: &str,
        boot: &str,
        at_ms: i64,
        ttl_ms: i64,
        rooms: Vec<RoomPresence>,
    ) -> Vec<Self> {
        let mut chunks: Vec<Vec<RoomPresence>> = vec![Vec::new()];
        let mut bytes = 0;
        for r in rooms {
            // Its JSON: the channel, each subject quoted with a comma, the field names.
            let n = 64 + r.channel.len() + r.subjects.iter().map(|s| s.len() + 3).sum::<usize>();
            if bytes + n > BYTES_PER_PART && !chunks.last().is_some_and(Vec::is_empty) {
                chunks.push(Vec::new());
                bytes = 0;
            }
            bytes += n;
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
                boot: boot.to_owned(),
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

/// A snapshot whose parts are still arriving.
#[derive(Debug)]
struct Pending {
    at_ms: i64,
    parts: u32,
    got: BTreeSet<u32>,
    rooms: Rooms,
    /// When its first part arrived (this instance's clock).
    since_ms: i64,
}

#[derive(Debug, Default)]
struct Instance {
    boot: String,
    /// The newest complete snapshot's rooms, its time (the sender's clock, for order only)…
    rooms: Rooms,
    at_ms: i64,
    /// …and when it was complete here (this instance's clock, for expiry).
    seen_ms: i64,
    next: Option<Pending>,
}

/// How far a previous process's clock may run ahead of this one's (a restart on another host)
/// before its last records read as another process with this id.
const RESTART_SKEW_MS: i64 = 2_000;

/// What the other instances said, by instance.
#[derive(Debug)]
pub struct Cluster {
    own: String,
    own_boot: String,
    /// When this process started (ms): records with its id dated before are its previous
    /// process's.
    own_start_ms: i64,
    ttl_ms: i64,
    instances: HashMap<String, Instance>,
    /// Records with this instance's id from another process were seen (a misconfiguration).
    pub id_conflicts: u64,
}

/// What [`Cluster::apply`] made of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Taken,
    /// Not a snapshot of this format, or dated far in the future.
    Invalid,
    /// Another process publishes with this instance's gateway id.
    IdConflict,
}

impl Cluster {
    /// `own` and `own_boot` identify this instance (its own records are ignored: its figures
    /// are exact); another instance's snapshot counts for `ttl_ms` after it arrived.
    pub fn new(own: &str, own_boot: &str, ttl_ms: i64) -> Self {
        Cluster {
            own: own.to_owned(),
            own_boot: own_boot.to_owned(),
            // The boot is the start's time, ms in base 36 ([`crate::server::GatewayState::boot`]).
            own_start_ms: i64::from_str_radix(own_boot, 36).unwrap_or(0),
            ttl_ms,
            instances: HashMap::new(),
            id_conflicts: 0,
        }
    }

    /// Applies one snapshot part received at `now_ms`.
    pub fn apply(&mut self, s: Snapshot, now_ms: i64) -> Applied {
        if s.v != 1 || s.parts == 0 || s.part >= s.parts || s.at_ms > now_ms + self.ttl_ms {
            return Applied::Invalid;
        }
        if s.gateway == self.own {
            // This process's own, or its previous process's (dated before this one started: a
            // restart reads them back from the bus) are no conflict.
            if s.boot == self.own_boot || s.at_ms <= self.own_start_ms + RESTART_SKEW_MS {
                return Applied::Taken;
            }
            self.id_conflicts += 1;
            return Applied::IdConflict;
        }
        let inst = self.instances.entry(s.gateway.clone()).or_default();
        if s.boot != inst.boot {
            // A restarted process (or the first word from this one): its snapshots replace
            // whatever the previous process said. A late word from an older process that is
            // already replaced is ignored.
            if s.gone || (!inst.boot.is_empty() && s.at_ms < inst.at_ms) {
                return Applied::Taken;
            }
            *inst = Instance {
                boot: s.boot.clone(),
                ..Instance::default()
            };
        }
        if s.gone {
            self.instances.remove(&s.gateway);
            return Applied::Taken;
        }
        if inst.seen_ms != 0 && s.at_ms <= inst.at_ms {
            return Applied::Taken; // older than what it has
        }
        match &inst.next {
            Some(p) if p.at_ms > s.at_ms => return Applied::Taken, // older than the one arriving
            Some(p) if p.at_ms == s.at_ms => {}
            _ => {
                inst.next = Some(Pending {
                    at_ms: s.at_ms,
                    parts: s.parts,
                    got: BTreeSet::new(),
                    rooms: HashMap::new(),
                    since_ms: now_ms,
                });
            }
        }
        let Some(next) = inst.next.as_mut() else {
            return Applied::Taken;
        };
        if next.parts != s.parts {
            return Applied::Invalid;
        }
        next.got.insert(s.part);
        for r in s.rooms {
            next.rooms.insert(r.channel, (r.connections, r.subjects));
        }
        if next.got.len() as u32 == next.parts
            && let Some(done) = inst.next.take()
        {
            inst.rooms = done.rooms;
            inst.at_ms = done.at_ms;
            inst.seen_ms = now_ms;
        }
        Applied::Taken
    }

    /// The other instances' figures for `channel` at `now_ms`: connections, subjects, how many
    /// instances have someone there.
    pub fn room(&self, channel: &str, now_ms: i64) -> (usize, Vec<String>, usize) {
        let mut connections = 0;
        let mut subjects = Vec::new();
        let mut instances = 0;
        for inst in self.instances.values() {
            if inst.seen_ms == 0 || now_ms - inst.seen_ms > self.ttl_ms {
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

    /// Forgets instances with no snapshot newer than the TTL, complete or arriving.
    pub fn expire(&mut self, now_ms: i64) {
        let ttl = self.ttl_ms;
        self.instances.retain(|_, i| {
            now_ms - i.seen_ms <= ttl || i.next.as_ref().is_some_and(|p| now_ms - p.since_ms <= ttl)
        });
    }
}

/// A room's presence across instances: this instance's exact figures (taken with the hub's lock,
/// released before this) and the cluster's.
pub fn merged(
    (local, local_subjects): (usize, Vec<String>),
    cluster: &Mutex<Cluster>,
    channel: &str,
    now_ms: i64,
) -> (usize, Vec<String>, usize) {
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
/// instance's own. Returns once `gone` is published (or could not be, within 2 s).
pub async fn run(
    bus: Arc<dyn Bus>,
    hub: Arc<Mutex<Hub>>,
    cluster: Arc<Mutex<Cluster>>,
    (gateway, boot): (String, String),
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
        let records: Vec<OutRecord> = Snapshot::parts(&gateway, &boot, now, ttl_ms, rooms)
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
        boot,
        at_ms: Timestamp::now().as_millis(),
        ttl_ms,
        part: 0,
        parts: 1,
        gone: true,
        rooms: Vec::new(),
    };
    match tokio::time::timeout(
        Duration::from_secs(2),
        publisher.publish(&topic, vec![record(&gone)]),
    )
    .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(topic, error = %e, "cannot say this instance is gone: the others forget it after their TTL");
        }
        Err(_) => {
            tracing::warn!(
                topic,
                "saying this instance is gone took over 2 s: the others forget it after their TTL"
            );
        }
    }
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
    let mut conflict_reported = false;
    loop {
        let polled = tokio::select! {
            () = stop.wait() => return,
            polled = reader.poll(500, Duration::from_millis(500)) => polled,
        };
        match polled {
            Ok(records) => {
                // Parsed before the lock: the presence answers wait for nothing but the merge.
                let parsed: Vec<Option<Snapshot>> = records
                    .iter()
                    .map(|r| serde_json::from_slice::<Snapshot>(&r.value).ok())
                    .collect();
                let now = Timestamp::now().as_millis();
                let (mut invalid, mut conflicts) = (0u64, 0u64);
                {
                    let mut c = lock_cluster(&cluster);
                    for s in parsed {
                        match s.map(|s| c.apply(s, now)) {
                            Some(Applied::Taken) => {}
                            Some(Applied::IdConflict) => conflicts += 1,
                            Some(Applied::Invalid) | None => invalid += 1,
                        }
                    }
                }
                if invalid > 0 {
                    metrics::counter!("pitboss_gateway_records_skipped_total", "topic" => "presence", "reason" => "invalid")
                        .increment(invalid);
                }
                if conflicts > 0 {
                    metrics::counter!("pitboss_gateway_presence_id_conflicts_total")
                        .increment(conflicts);
                    if !conflict_reported {
                        tracing::warn!(
                            topic,
                            "another gateway process publishes presence with this instance's --gateway-id: give each instance its own"
                        );
                        conflict_reported = true;
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

    fn parts(gw: &str, boot: &str, at: i64, rooms: Vec<RoomPresence>) -> Vec<Snapshot> {
        Snapshot::parts(gw, boot, at, 15_000, rooms)
    }

    fn big_room(channel: &str, n: usize) -> RoomPresence {
        let subjects: Vec<String> = (0..n).map(|i| format!("{i:0>120}")).collect();
        RoomPresence {
            channel: channel.into(),
            connections: subjects.len(),
            subjects,
        }
    }

    #[test]
    fn parts_stay_under_the_size_limit_with_the_longest_ids() {
        let rooms: Vec<RoomPresence> = (0..20)
            .map(|i| big_room(&format!("room:t:r{i}"), 1000))
            .collect();
        let ps = parts("b", "1", 1000, rooms);
        assert!(ps.len() > 1);
        for p in &ps {
            let bytes = serde_json::to_vec(p).unwrap().len();
            assert!(bytes < 900_000, "{bytes} bytes in part {}", p.part);
        }
        assert_eq!(ps.iter().map(|p| p.rooms.len()).sum::<usize>(), 20);
    }

    #[test]
    fn a_snapshot_replaces_the_instances_previous_one_once_all_its_parts_arrived() {
        let mut c = Cluster::new("me", "0", 15_000);
        for p in parts("b", "1", 1000, vec![room("room:t:a", &["p1", "p2"])]) {
            assert_eq!(c.apply(p, 1000), Applied::Taken);
        }
        assert_eq!(c.room("room:t:a", 2000).0, 2);
        // A newer snapshot in three parts: until all three arrived (in any order) the old one
        // holds; a part of an older snapshot arriving in between changes nothing.
        let mut rooms = vec![room("room:t:b", &["p3"])];
        rooms.push(big_room("room:t:c", 1000));
        rooms.extend((0..12).map(|i| big_room(&format!("room:t:d{i}"), 1000)));
        let new = parts("b", "1", 3000, rooms);
        assert!(new.len() >= 3, "{} parts", new.len());
        let last = new.len() - 1;
        c.apply(new[last].clone(), 3100);
        c.apply(
            parts("b", "1", 2000, vec![room("room:t:a", &["p9"])])[0].clone(),
            3100,
        );
        for p in &new[1..last] {
            c.apply(p.clone(), 3100);
        }
        assert_eq!(c.room("room:t:a", 3500).0, 2, "the old snapshot holds");
        c.apply(new[0].clone(), 3200);
        assert_eq!(c.room("room:t:a", 3500).0, 0, "the room emptied");
        assert_eq!(c.room("room:t:b", 3500), (1, vec!["p3".into()], 1));
        // An older snapshot arriving late changes nothing.
        for p in parts("b", "1", 2000, vec![room("room:t:a", &["p9"])]) {
            c.apply(p, 3600);
        }
        assert_eq!(c.room("room:t:a", 3700).0, 0);
    }

    #[test]
    fn instances_add_up_expire_by_this_clock_and_leave() {
        let mut c = Cluster::new("me", "0", 15_000);
        // c's clock is a minute behind: its snapshot still counts (expiry is by arrival here).
        for (gw, at, subjects) in [("b", 1000, &["p1"][..]), ("c", -59_000, &["p1", "p2"][..])] {
            for p in parts(gw, "1", at, vec![room("room:t:a", subjects)]) {
                c.apply(p, 1000);
            }
        }
        let (n, mut subjects, instances) = c.room("room:t:a", 2000);
        subjects.sort();
        assert_eq!(
            (n, subjects, instances),
            (3, vec!["p1".into(), "p1".into(), "p2".into()], 2)
        );
        // c drains; b's snapshot expires 15 s after it arrived.
        let mut gone = parts("c", "1", -58_000, vec![]).remove(0);
        gone.gone = true;
        c.apply(gone, 3000);
        assert_eq!(c.room("room:t:a", 3000).0, 1);
        assert_eq!(
            c.room("room:t:a", 16_001).0,
            0,
            "b arrived more than 15 s ago"
        );
        c.expire(16_001);
        assert!(c.instances.is_empty());
    }

    #[test]
    fn a_restarted_instance_replaces_its_old_self_and_a_late_gone_of_the_old_one_is_ignored() {
        let mut c = Cluster::new("me", "0", 15_000);
        for p in parts("b", "old", 1000, vec![room("room:t:a", &["p1"])]) {
            c.apply(p, 1000);
        }
        for p in parts("b", "new", 2000, vec![room("room:t:a", &["p2"])]) {
            c.apply(p, 2000);
        }
        assert_eq!(c.room("room:t:a", 2500), (1, vec!["p2".into()], 1));
        let mut gone = parts("b", "old", 1500, vec![]).remove(0);
        gone.gone = true;
        c.apply(gone, 2600);
        assert_eq!(
            c.room("room:t:a", 2700).0,
            1,
            "the old process's gone is not the new one's"
        );
    }

    #[test]
    fn own_records_are_ignored_and_another_process_with_this_id_is_reported() {
        let mut c = Cluster::new("me", "0", 15_000);
        let own = parts("me", "0", 1000, vec![room("room:t:a", &["p1"])]).remove(0);
        assert_eq!(c.apply(own, 1000), Applied::Taken);
        let other = parts("me", "9", 5000, vec![room("room:t:a", &["p1"])]).remove(0);
        assert_eq!(c.apply(other, 5000), Applied::IdConflict);
        assert_eq!(c.room("room:t:a", 5000).0, 0);
    }

    #[test]
    fn the_previous_process_of_a_restarted_instance_is_no_conflict() {
        // Started at 100,000 ms ("255s" in base 36); the previous process published until
        // just before, and its records are read back on start.
        let boot = crate::server::base36(100_000);
        let mut c = Cluster::new("me", &boot, 15_000);
        let before = parts("me", "1", 99_000, vec![room("room:t:a", &["p1"])]).remove(0);
        assert_eq!(c.apply(before, 100_100), Applied::Taken);
        assert_eq!(c.id_conflicts, 0);
        assert_eq!(
            c.room("room:t:a", 100_100).0,
            0,
            "its own figures are exact"
        );
        // A process with this id still publishing after this one started is one.
        let later = parts("me", "1", 105_000, vec![room("room:t:a", &["p1"])]).remove(0);
        assert_eq!(c.apply(later, 105_000), Applied::IdConflict);
    }

    #[test]
    fn bad_snapshots_are_refused() {
        let mut c = Cluster::new("me", "0", 15_000);
        let mut s = parts("b", "1", 1000, vec![]).remove(0);
        s.v = 2;
        assert_eq!(c.apply(s.clone(), 1000), Applied::Invalid);
        s.v = 1;
        s.part = 1;
        assert_eq!(c.apply(s.clone(), 1000), Applied::Invalid);
        s.part = 0;
        s.at_ms = 1000 + 3_600_000;
        assert_eq!(c.apply(s, 1000), Applied::Invalid, "dated an hour ahead");
    }

    #[test]
    fn an_instance_that_never_completes_a_snapshot_is_forgotten() {
        let mut c = Cluster::new("me", "0", 15_000);
        let rooms: Vec<RoomPresence> = (0..8)
            .map(|i| big_room(&format!("room:t:r{i}"), 1000))
            .collect();
        let ps = parts("b", "1", 1000, rooms);
        assert!(ps.len() > 1);
        c.apply(ps[0].clone(), 1000);
        c.expire(10_000);
        assert_eq!(c.instances.len(), 1);
        c.expire(16_001);
        assert!(c.instances.is_empty());
    }

    #[test]
    fn an_empty_instance_still_publishes_one_part() {
        let ps = parts("b", "1", 1000, vec![]);
        assert_eq!(ps.len(), 1);
        assert!(ps[0].rooms.is_empty());
    }
}
