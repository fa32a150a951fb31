//! The routing core, apart from sockets and the bus: which connection gets which message, the
//! bounded history that a resuming client recovers from, cursors, acks and presence. Pure and
//! synchronous (the caller holds it behind a mutex and feeds it records and requests), so every
//! rule here is unit-tested without a socket.
//!
//! **Positions.** A message's position is its bus position (partition, offset or sequence
//! number), the same on every gateway instance. A *cursor* says how far a client has got in a
//! channel: `"<partition>=<position>"` for each partition the channel's messages can be in
//! (`"3=1042"` for a player or room channel, whose messages share one bus key and so one
//! partition; `"0=17,1=5,…"` for an operator channel, whose alerts come from every partition).
//!
//! **History.** Per topic, the newest `history_max` records read in the last `history_max_age`
//! (rebuilt from the bus when the gateway starts), indexed per channel. For each partition the
//! hub knows a *floor*: every record after it is in the history. A resume from a cursor at or
//! after the floor of each of the channel's partitions is complete; one before it is `too_old`.
//! The count bound is shared fairly: past it, the tenant holding the most records loses its
//! oldest (and gets a floor of its own for that partition), so a tenant within its share of
//! the history never loses a record to another tenant's volume.
//! So that an idle subscription's cursor does not fall behind the floor, the hub sends it a
//! fresh `cursor` frame on every tick when its channel's partitions moved.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use pitboss_bus::{Partition, Position, Record};
use pitboss_model::live::{Alert, AlertAck, ChannelName, LiveMessage, MessageType, Push, Target};
use tokio::sync::oneshot;

use crate::protocol::{ProtocolError, Recovery, RequestId, ServerFrame, close};

/// A connection's id within this instance.
pub type ConnId = u64;

/// A frame's text, shared by every connection it goes to (a reference-counted buffer).
pub type Text = axum::extract::ws::Utf8Bytes;

/// What the hub hands a connection's writer.
#[derive(Debug)]
pub enum Out {
    /// A frame as it is (control frames, cursors).
    Frame(Text),
    /// A message delivered live: timed for time-to-notify, and receipted.
    Live { text: Text, message: Arc<Entry> },
    /// Replayed messages (receipted as replayed), then `frames` (the acks a resume missed and
    /// the `subscribed` frame), in order. The messages are written out as frames by the
    /// connection's writer ([`Entry::replay_frame`]), not under the hub's lock: a replay of
    /// 20,000 alerts formatted there held up every tenant's feed.
    Batch {
        replayed: Vec<Arc<Entry>>,
        frames: Vec<Text>,
    },
}

#[cfg(test)]
impl Out {
    /// The frames it writes, in order (the writer, `server::write_queued`, feeds them one by
    /// one as it goes).
    pub fn texts(self) -> Vec<Text> {
        match self {
            Out::Frame(t) | Out::Live { text: t, .. } => vec![t],
            Out::Batch { replayed, frames } => replayed
                .iter()
                .map(|e| e.replay_frame())
                .chain(frames)
                .collect(),
        }
    }
}

/// Tuning of the hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Records kept per topic for resumes…
    pub history_max: usize,
    /// …and for at most this long (by bus time), in milliseconds.
    pub history_max_age_ms: i64,
    /// Most messages one subscribe may replay; more is `too_old` (the client reloads).
    pub max_replay: usize,
    /// Most subscriptions per connection.
    pub max_subscriptions: usize,
    /// An alert not acknowledged yet is kept for its tenant's operators past the history, until
    /// it is acknowledged or this old (by bus time), in milliseconds…
    pub open_alerts_max_age_ms: i64,
    /// …at most this many per tenant (the oldest go first).
    pub open_alerts_max: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            history_max: 200_000,
            history_max_age_ms: 10 * 60 * 1000,
            max_replay: 10_000,
            max_subscriptions: 64,
            open_alerts_max_age_ms: 24 * 60 * 60 * 1000,
            open_alerts_max: 10_000,
        }
    }
}

/// Which partitions a key maps to, when the hub can tell (Kafka and the embedded log: CRC-32 of
/// the key; Kinesis: by hash-key ranges the hub does not know, so every partition counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keying {
    Crc32,
    Unknown,
}

/// Every record after the floor's position is in the history.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Floor {
    /// Not known yet (the feed has not reached the partition's end).
    Pending,
    /// Everything after this position is held (`Offset(-1)`: the whole partition).
    After(Position),
    /// Nothing can be proven (a Kinesis shard read from a time with no record since).
    Unknown,
}

/// A message in the history: what a frame and a delivery receipt need of it.
#[derive(Debug)]
pub struct Entry {
    partition: Partition,
    position: Position,
    id: Arc<str>,
    /// `tenant` + `id`: ids are unique within a tenant only (a rule alert's id derives from the
    /// client's event id), so duplicates and acks are matched on this.
    key: Arc<str>,
    channel: Arc<str>,
    kind: MessageType,
    /// The message's canonical JSON.
    data: Box<str>,
    cursor: Arc<str>,
    bus_ms: i64,
    expires_at_ms: Option<i64>,
    /// `received_at` of the triggering event: the start of time-to-notify.
    received_at_ms: i64,
}

impl Entry {
    /// Its `message` frame as a replay sends it (`replayed: true`).
    pub fn replay_frame(&self) -> Text {
        Text::from(message_frame(
            &self.channel,
            &self.cursor,
            self.kind,
            &self.id,
            &self.data,
            true,
        ))
    }

    /// The `alert_id` or `push_id`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The channel it goes out on.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    pub fn kind(&self) -> MessageType {
        self.kind
    }

    /// `received_at` of the triggering event, in ms.
    pub fn received_at_ms(&self) -> i64 {
        self.received_at_ms
    }
}

#[derive(Debug)]
struct TopicState {
    partitions: u32,
    sequences: bool,
    floor: BTreeMap<Partition, Floor>,
    head: BTreeMap<Partition, Position>,
    /// The history, per tenant, in the order read (by time once the alerts are rebuilt).
    history: HashMap<Arc<str>, VecDeque<Arc<Entry>>>,
    /// Records held, over every tenant.
    held: usize,
    /// Per tenant and partition, past the topic's floor: the newest of the tenant's records
    /// the count bound evicted (its history there is complete only after it).
    tenant_floor: HashMap<Arc<str>, BTreeMap<Partition, Position>>,
    /// The history's entries by key (`tenant` + `id`).
    ids: HashMap<Arc<str>, Arc<Entry>>,
    caught_up: bool,
}

impl TopicState {
    fn new() -> Self {
        TopicState {
            partitions: 0,
            sequences: false,
            floor: BTreeMap::new(),
            head: BTreeMap::new(),
            history: HashMap::new(),
            held: 0,
            tenant_floor: HashMap::new(),
            ids: HashMap::new(),
            caught_up: false,
        }
    }

    /// Whether everything of `tenant` after `pos` on `p` is held (the topic's floor, and the
    /// tenant's own past it).
    fn holds_after(&self, tenant: &str, p: Partition, pos: Option<&Position>) -> bool {
        let topic = match (pos, self.floor.get(&p)) {
            (Some(pos), Some(Floor::After(f))) => pos >= f,
            (None, Some(Floor::After(Position::Offset(-1)))) => true,
            _ => false,
        };
        topic
            && self
                .tenant_floor
                .get(tenant)
                .and_then(|f| f.get(&p))
                .is_none_or(|f| pos.is_some_and(|pos| pos >= f))
    }

    /// Takes `e` (the front of its tenant's history) out of the history: `floor` raised past it.
    fn take_front(&mut self, tenant: &Arc<str>) -> Option<Arc<Entry>> {
        let q = self.history.get_mut(tenant)?;
        let e = q.pop_front()?;
        if q.is_empty() {
            self.history.remove(tenant);
        }
        self.held -= 1;
        self.ids.remove(&e.key);
        Some(e)
    }

    /// The cursor over `partitions` as they stand.
    fn cursor(&self, partitions: &[Partition]) -> String {
        self.cursor_with(partitions, &BTreeMap::new())
    }

    /// The cursor over `partitions`, where a client already `ahead` of this instance keeps its
    /// own (further) positions.
    fn cursor_with(
        &self,
        partitions: &[Partition],
        ahead: &BTreeMap<Partition, Position>,
    ) -> String {
        let mut out = String::new();
        for &p in partitions {
            let pos = match (ahead.get(&p), self.head.get(&p), self.floor.get(&p)) {
                (Some(a), _, _) => a.to_string(),
                (None, Some(h), _) => h.to_string(),
                (None, None, Some(Floor::After(f))) => f.to_string(),
                _ => continue,
            };
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(&p.to_string());
            out.push('=');
            out.push_str(&pos);
        }
        out
    }

    fn parse_cursor(&self, text: &str) -> Result<BTreeMap<Partition, Position>, String> {
        let mut out = BTreeMap::new();
        if text.is_empty() {
            return Ok(out);
        }
        for part in text.split(',') {
            let (p, pos) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected <partition>=<position>"))?;
            let p: Partition = p
                .parse()
                .map_err(|_| format!("{p:?}: not a partition number"))?;
            if p >= self.partitions {
                return Err(format!("partition {p}: the topic has {}", self.partitions));
            }
            let pos = if self.sequences {
                if pos.is_empty() || pos.len() > 128 || !pos.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!("{pos:?}: not a sequence number"));
                }
                Position::Sequence(pos.to_owned())
            } else {
                Position::Offset(
                    pos.parse::<i64>()
                        .ok()
                        .filter(|o| *o >= -1)
                        .ok_or_else(|| format!("{pos:?}: not an offset"))?,
                )
            };
            if out.insert(p, pos).is_some() {
                return Err(format!("partition {p} is given twice"));
            }
        }
        Ok(out)
    }
}

#[derive(Debug)]
struct Channel {
    kind: MessageType,
    /// The partitions its messages can be in.
    partitions: Vec<Partition>,
    subscribers: Vec<ConnId>,
    history: VecDeque<Arc<Entry>>,
    /// The cursor sent to subscribers at the last tick (or with the last message).
    last_cursor: String,
    /// When (wall clock, ms) its last message arrived: a channel with a message since the
    /// last tick got a fresh cursor with it, and the tick leaves it alone.
    last_message_ms: i64,
}

#[derive(Debug)]
struct Conn {
    tx: flume::Sender<Out>,
    kill: Option<oneshot::Sender<(u16, String)>>,
    subject: Arc<str>,
    /// Presence counts and lists it (a player); an operator watching a room is not shown to
    /// the room's players.
    listed: bool,
    subscriptions: HashSet<Arc<str>>,
    /// Per channel, positions this connection already has beyond the feed (see `subscribe`),
    /// and when it said so: a mark the feed has not reached after [`AHEAD_GRACE_MS`] is dropped.
    ahead: HashMap<Arc<str>, (i64, BTreeMap<Partition, Position>)>,
}

/// How long a cursor ahead of this instance's feed holds messages back. Instances' feeds are
/// seconds apart at most; a cursor further ahead than any of them (a bus wiped and refilled, a
/// made-up cursor) would otherwise hold the channel's messages back until the bus reached it.
pub const AHEAD_GRACE_MS: i64 = 30_000;

/// What a `subscribe` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribed {
    pub recovery: Recovery,
    pub replayed: usize,
}

/// The routing core (see the module doc).
#[derive(Debug)]
pub struct Hub {
    config: HubConfig,
    keying: Keying,
    alerts: TopicState,
    pushes: TopicState,
    channels: HashMap<Arc<str>, Channel>,
    conns: HashMap<ConnId, Conn>,
    /// Acknowledged alerts (`tenant` + `id`): the latest ack read for each.
    acked: HashMap<Arc<str>, Acked>,
    /// Acks in the order read, with their bus time: forgotten once older than an alert stays
    /// open (or past [`Hub::acked_max`]).
    acked_order: VecDeque<(i64, Arc<str>)>,
    /// The same, per operator channel: what a console resuming there may have missed, whether
    /// or not the alert is still held (keys no longer in `acked` are skipped, and trimmed from
    /// the front).
    acked_in: HashMap<Arc<str>, VecDeque<Arc<str>>>,
    /// The alert (`tenant` + `id`) each remembered ack (`tenant` + `ack_id`) closed: an
    /// `ack_id` used again for another alert is refused.
    ack_ids: HashMap<Arc<str>, Arc<str>>,
    /// Alerts gone from the history but not acknowledged, per operator channel, oldest first
    /// (an entry acknowledged since stays until it reaches the front: see `open_ids`).
    open: HashMap<Arc<str>, VecDeque<Arc<Entry>>>,
    /// Of those, the ones still open (`tenant` + `id`).
    open_ids: HashMap<Arc<str>, Arc<Entry>>,
    /// When the last tick listed the idle channels.
    last_tick_ms: i64,
}

/// The latest ack of an alert, as the hub remembers it.
#[derive(Debug, Clone)]
struct Acked {
    ack_id: Box<str>,
    /// The rest of its `alert_acked` frame (made again for a console resuming on a cursor from
    /// before it): a few dozen bytes, not the frame's few hundred.
    outcome: pitboss_model::live::AckOutcome,
    operator_id: Box<str>,
    acked_at: pitboss_model::Timestamp,
    /// Where the alert is on the bus, once read (before or after its ack: a restarting
    /// instance reads both topics at once): a console whose cursor is at or past it had it.
    at: Option<(Partition, Position)>,
    /// The ack ids of the alert's earlier acks with their outcomes, oldest first (at most
    /// [`EARLIER_ACKS`]): each still names its stored row, so none may be reused for another
    /// alert or another outcome.
    earlier: Vec<(Box<str>, pitboss_model::live::AckOutcome)>,
}

/// Earlier ack ids remembered per alert (a few re-acks: acknowledged, then escalated, then
/// confirmed); past this many the oldest is forgotten.
const EARLIER_ACKS: usize = 16;

/// What a gateway knows of an ack id on an alert (the `ack` handler's retry check).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckSeen {
    /// The alert's latest ack has this id, with this outcome.
    Latest(pitboss_model::live::AckOutcome),
    /// One of the alert's earlier acks (superseded since) has this id, with this outcome.
    Earlier(pitboss_model::live::AckOutcome),
    /// Not an ack id of this alert that the gateway has read.
    No,
}

impl Acked {
    /// The `alert_acked` frame of alert `alert_id` on operator channel `channel`.
    fn frame(&self, channel: &str, alert_id: &str) -> Text {
        Text::from(
            ServerFrame::AlertAcked {
                channel: channel.to_owned(),
                alert_id: alert_id.to_owned(),
                ack_id: self.ack_id.to_string(),
                outcome: self.outcome,
                operator_id: self.operator_id.to_string(),
                acked_at: self.acked_at,
            }
            .to_text(),
        )
    }
}

/// Counts of what `apply` did, for metrics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub messages: usize,
    pub duplicates: usize,
    pub invalid: usize,
    pub expired: usize,
    pub deliveries: usize,
    pub slow_closed: usize,
}

impl Hub {
    pub fn new(config: HubConfig, keying: Keying) -> Self {
        Hub {
            config,
            keying,
            alerts: TopicState::new(),
            pushes: TopicState::new(),
            channels: HashMap::new(),
            conns: HashMap::new(),
            acked: HashMap::new(),
            acked_order: VecDeque::new(),
            acked_in: HashMap::new(),
            ack_ids: HashMap::new(),
            open: HashMap::new(),
            open_ids: HashMap::new(),
            last_tick_ms: i64::MIN,
        }
    }

    fn topic(&self, kind: MessageType) -> &TopicState {
        match kind {
            MessageType::Alert => &self.alerts,
            MessageType::Push => &self.pushes,
        }
    }

    fn topic_mut(&mut self, kind: MessageType) -> &mut TopicState {
        match kind {
            MessageType::Alert => &mut self.alerts,
            MessageType::Push => &mut self.pushes,
        }
    }

    /// The feed of `kind` reads `partitions` partitions; `sequences` for Kinesis.
    pub fn open_topic(&mut self, kind: MessageType, partitions: u32, sequences: bool) {
        let t = self.topic_mut(kind);
        t.partitions = partitions;
        t.sequences = sequences;
        t.floor = (0..partitions).map(|p| (p, Floor::Pending)).collect();
    }

    /// The feed of `kind` has read every partition up to where it ended when it opened
    /// (`ends`: the newest position then, None for an empty partition). Partitions that gave no
    /// record are held from their end on.
    pub fn caught_up(
        &mut self,
        kind: MessageType,
        ends: &BTreeMap<Partition, Option<Position>>,
        now_ms: i64,
    ) {
        let t = self.topic_mut(kind);
        let sequences = t.sequences;
        for (p, floor) in t.floor.iter_mut() {
            if *floor == Floor::Pending {
                let end = ends.get(p).cloned().flatten();
                // A partition with nothing to read (all it holds is older than the history):
                // the feed stands at its end, so a cursor it gives out is that end — not the
                // client's own stale position echoed back, which was `too_old` again on every
                // reconnect after a restart.
                if let Some(end) = &end {
                    t.head.entry(*p).or_insert_with(|| end.clone());
                }
                *floor = match end {
                    Some(end) => Floor::After(end),
                    None if !sequences => Floor::After(Position::Offset(-1)),
                    None => Floor::Unknown,
                };
            }
        }
        t.caught_up = true;
        if kind == MessageType::Alert {
            // The rebuild read the partitions in turn, and kept every alert within the
            // history's age: in bus-time order now, the count bound evicts the oldest first,
            // as it does live, so the alerts past the history (kept open for operators) are the
            // same ones as before a restart.
            let by_time = |e: &Arc<Entry>| (e.bus_ms, e.partition, e.position.clone());
            for q in t.history.values_mut() {
                q.make_contiguous().sort_by_key(by_time);
            }
            for ch in self.channels.values_mut() {
                if ch
                    .history
                    .front()
                    .is_some_and(|e| e.kind == MessageType::Alert)
                {
                    ch.history.make_contiguous().sort_by_key(by_time);
                }
            }
            self.evict(now_ms);
        }
    }

    /// Whether both feeds have caught up (the gateway is ready for resumes).
    pub fn ready(&self) -> bool {
        self.alerts.caught_up && self.pushes.caught_up
    }

    fn channel_partitions(&self, kind: MessageType, key: Option<&str>) -> Vec<Partition> {
        let n = self.topic(kind).partitions;
        match (self.keying, key) {
            (Keying::Crc32, Some(key)) if n > 0 => {
                vec![pitboss_bus::partition::partition_for(key, n)]
            }
            _ => (0..n).collect(),
        }
    }

    /// The topic and partitions of a channel.
    fn channel_shape(&self, channel: &ChannelName) -> (MessageType, Vec<Partition>) {
        match channel {
            ChannelName::Operator { .. } => (
                MessageType::Alert,
                self.channel_partitions(MessageType::Alert, None),
            ),
            ChannelName::Player {
                tenant_id,
                player_id,
            } => (
                MessageType::Push,
                self.channel_partitions(
                    MessageType::Push,
                    Some(&format!("{tenant_id}:{player_id}")),
                ),
            ),
            ChannelName::Room { tenant_id, room_id } => (
                MessageType::Push,
                self.channel_partitions(MessageType::Push, Some(&format!("{tenant_id}:{room_id}"))),
            ),
        }
    }

    fn channel_entry(&mut self, name: &Arc<str>, parsed: &ChannelName) -> &mut Channel {
        if !self.channels.contains_key(name) {
            let (kind, partitions) = self.channel_shape(parsed);
            self.channels.insert(
                name.clone(),
                Channel {
                    kind,
                    partitions,
                    subscribers: Vec::new(),
                    history: VecDeque::new(),
                    last_cursor: String::new(),
                    last_message_ms: i64::MIN,
                },
            );
        }
        // Inserted just above when missing.
        self.channels.get_mut(name).expect("channel present")
    }

    /// Applies records read from the alerts or pushes topic (`kind`), in partition order:
    /// stores them in the history and hands each to the live subscribers of its channel.
    /// A record whose message id is already held (a republished batch) moves the position on
    /// but is not delivered again.
    pub fn apply(&mut self, kind: MessageType, records: &[Record], now_ms: i64) -> Applied {
        let mut applied = Applied::default();
        for r in records {
            self.apply_one(kind, r, now_ms, &mut applied);
        }
        self.evict(now_ms);
        applied
    }

    fn apply_one(&mut self, kind: MessageType, r: &Record, now_ms: i64, applied: &mut Applied) {
        let t = self.topic_mut(kind);
        if r.partition >= t.partitions {
            // A partition added after the feed opened: the feed reopens (see feed.rs).
            t.partitions = r.partition + 1;
        }
        let floor = t.floor.entry(r.partition).or_insert(Floor::Pending);
        // A shard nothing could be proven about holds everything from its first record on.
        if matches!(*floor, Floor::Pending | Floor::Unknown) {
            *floor = Floor::After(match &r.position {
                Position::Offset(o) => Position::Offset(o - 1),
                // No predecessor can be named: this record and what follows are held.
                seq @ Position::Sequence(_) => seq.clone(),
            });
        }
        t.head.insert(r.partition, r.position.clone());
        let decoded = match kind {
            MessageType::Alert => Alert::decode_proto(&r.value).map(|a| {
                let channel = ChannelName::Operator {
                    tenant_id: a.tenant_id.clone(),
                };
                (
                    a.alert_id.clone(),
                    channel,
                    serde_json::to_string(&a),
                    a.received_at.as_millis(),
                    None,
                )
            }),
            MessageType::Push => Push::decode_proto(&r.value).map(|p| {
                let channel = match &p.target {
                    Target::Player(id) => ChannelName::Player {
                        tenant_id: p.tenant_id.clone(),
                        player_id: id.clone(),
                    },
                    Target::Room(id) => ChannelName::Room {
                        tenant_id: p.tenant_id.clone(),
                        room_id: id.clone(),
                    },
                };
                (
                    p.push_id.clone(),
                    channel,
                    serde_json::to_string(&p),
                    p.received_at.as_millis(),
                    p.expires_at.map(|e| e.as_millis()),
                )
            }),
        };
        let Ok((id, channel, Ok(data), received_at_ms, expires_at_ms)) = decoded else {
            applied.invalid += 1;
            return;
        };
        let key = scoped(channel.tenant_id(), &id);
        // A copy of an alert that left the history acknowledged, or open (a republished batch,
        // an engine taking over, a restart reading the open span): the same alert, not new.
        // An acknowledged one read for the first time (a restart read its ack first) gives
        // the ack its place, for consoles resuming.
        if kind == MessageType::Alert
            && (self.acked.contains_key(&key) || self.open_ids.contains_key(&key))
        {
            if let Some(a) = self.acked.get_mut(&key)
                && a.at.is_none()
            {
                a.at = Some((r.partition, r.position.clone()));
            }
            applied.duplicates += 1;
            return;
        }
        let t = self.topic_mut(kind);
        if t.ids.contains_key(&key) {
            applied.duplicates += 1;
            return;
        }
        if expires_at_ms.is_some_and(|e| e <= now_ms) {
            applied.expired += 1;
            return;
        }
        let id: Arc<str> = id.into();
        let name: Arc<str> = channel.to_string().into();
        let partitions = self.channel_entry(&name, &channel).partitions.clone();
        let cursor: Arc<str> = self.topic(kind).cursor(&partitions).into();
        let live: Text = message_frame(&name, &cursor, kind, &id, &data, false).into();
        let entry = Arc::new(Entry {
            partition: r.partition,
            position: r.position.clone(),
            id,
            key,
            channel: name.clone(),
            kind,
            data: data.into_boxed_str(),
            cursor: cursor.clone(),
            bus_ms: r.timestamp_ms,
            expires_at_ms,
            received_at_ms,
        });
        let t = self.topic_mut(kind);
        t.ids.insert(entry.key.clone(), entry.clone());
        t.history
            .entry(Arc::from(tenant_of(&entry.key)))
            .or_default()
            .push_back(entry.clone());
        t.held += 1;
        applied.messages += 1;
        let ch = self.channels.get_mut(&name).expect("channel present");
        ch.history.push_back(entry.clone());
        ch.last_cursor = cursor.to_string();
        ch.last_message_ms = now_ms;
        let subscribers = ch.subscribers.clone();
        for conn in subscribers {
            if self.already_has(conn, &name, r.partition, &r.position, now_ms) {
                continue;
            }
            let out = Out::Live {
                text: live.clone(),
                message: entry.clone(),
            };
            match self.offer(conn, out) {
                Offer::Sent => applied.deliveries += 1,
                Offer::Closed => applied.slow_closed += 1,
            }
        }
    }

    /// Whether `conn` came with a cursor at or past this position of the channel; forgets the
    /// partition's mark once the feed has passed it.
    fn already_has(
        &mut self,
        conn: ConnId,
        channel: &Arc<str>,
        p: Partition,
        pos: &Position,
        now_ms: i64,
    ) -> bool {
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        if c.ahead.is_empty() {
            return false;
        }
        let expired = match c.ahead.get(channel) {
            None => return false,
            Some((since, _)) => now_ms.saturating_sub(*since) > AHEAD_GRACE_MS,
        };
        if expired {
            c.ahead.remove(channel);
            return false;
        }
        let Some((_, marks)) = c.ahead.get_mut(channel) else {
            return false;
        };
        let Some(mark) = marks.get(&p) else {
            return false;
        };
        let has = pos <= mark;
        if pos >= mark {
            marks.remove(&p);
            if marks.is_empty() {
                c.ahead.remove(channel);
            }
        }
        has
    }

    /// Queues `out` for `conn`; a full queue closes the connection (slow consumer).
    fn offer(&mut self, conn: ConnId, out: Out) -> Offer {
        let Some(c) = self.conns.get_mut(&conn) else {
            return Offer::Closed;
        };
        match c.tx.try_send(out) {
            Ok(()) => Offer::Sent,
            Err(flume::TrySendError::Full(_)) => {
                if let Some(kill) = c.kill.take() {
                    let _ = kill.send((
                        close::SLOW_CONSUMER,
                        format!(
                            "slow consumer: {} frames queued and unread",
                            c.tx.capacity().unwrap_or_default()
                        ),
                    ));
                }
                self.unregister(conn);
                Offer::Closed
            }
            Err(flume::TrySendError::Disconnected(_)) => {
                self.unregister(conn);
                Offer::Closed
            }
        }
    }

    fn evict(&mut self, now_ms: i64) {
        for kind in [MessageType::Alert, MessageType::Push] {
            let (max, age) = (self.config.history_max, self.config.history_max_age_ms);
            let mut gone = Vec::new();
            let t = self.topic_mut(kind);
            // By age, every tenant's: the topic's floor rises past them.
            let tenants: Vec<Arc<str>> = t.history.keys().cloned().collect();
            for tenant in tenants {
                while t
                    .history
                    .get(&tenant)
                    .and_then(VecDeque::front)
                    .is_some_and(|f| f.bus_ms < now_ms - age)
                {
                    let Some(e) = t.take_front(&tenant) else {
                        break;
                    };
                    let floor = t.floor.entry(e.partition).or_insert(Floor::Pending);
                    if !matches!(floor, Floor::After(f) if *f >= e.position) {
                        *floor = Floor::After(e.position.clone());
                    }
                    gone.push(e);
                }
            }
            // By count: the tenant holding the most loses its oldest, and that tenant alone
            // gets a floor past it. While the alerts are rebuilt (read partition after
            // partition, not in time order) only age evicts; the count bound waits for
            // `caught_up`, which puts them in time order first.
            while t.held > max && (kind == MessageType::Push || t.caught_up) {
                let Some(tenant) = t
                    .history
                    .iter()
                    .max_by_key(|(_, q)| q.len())
                    .map(|(tenant, _)| tenant.clone())
                else {
                    break;
                };
                let Some(e) = t.take_front(&tenant) else {
                    break;
                };
                let floors = t.tenant_floor.entry(tenant).or_default();
                if floors.get(&e.partition).is_none_or(|f| *f < e.position) {
                    floors.insert(e.partition, e.position.clone());
                }
                gone.push(e);
            }
            for e in gone {
                if kind == MessageType::Alert {
                    // Not acknowledged: its tenant's operators still get it on subscribe. (An
                    // ack is kept as long as an alert stays open, not with the history: a copy
                    // of the alert read later is known acknowledged.)
                    if !self.acked.contains_key(&e.key)
                        && e.bus_ms >= now_ms - self.config.open_alerts_max_age_ms
                        && e.expires_at_ms.is_none_or(|x| x > now_ms)
                    {
                        self.keep_open(e.clone());
                    }
                }
                if let Some(ch) = self.channels.get_mut(&e.channel) {
                    // The tenant's oldest is its channel's oldest (both in the order read).
                    if ch.history.front().is_some_and(|f| Arc::ptr_eq(f, &e)) {
                        ch.history.pop_front();
                    } else if let Some(i) = ch.history.iter().position(|f| Arc::ptr_eq(f, &e)) {
                        ch.history.remove(i);
                    }
                    if ch.history.is_empty() && ch.subscribers.is_empty() {
                        self.channels.remove(&e.channel);
                    }
                }
            }
        }
        self.evict_open(now_ms);
    }

    /// Keeps an alert that left the history unacknowledged for its operator channel, within
    /// the tenant's bound.
    fn keep_open(&mut self, e: Arc<Entry>) {
        let max = self.config.open_alerts_max.max(1);
        self.open_ids.insert(e.key.clone(), e.clone());
        let q = self.open.entry(e.channel.clone()).or_default();
        // In bus-time order (a gateway rebuilding them reads the partitions in turn), so the
        // oldest are the front and a replay comes oldest first.
        let at = q.len() - q.iter().rev().take_while(|x| x.bus_ms > e.bus_ms).count();
        q.insert(at, e);
        if q.len() > max {
            // The bound counts open alerts: acknowledged ones still queued go first.
            let ids = &self.open_ids;
            q.retain(|x| ids.contains_key(&x.key));
            while q.len() > max {
                if let Some(old) = q.pop_front() {
                    self.open_ids.remove(&old.key);
                }
            }
        }
    }

    /// Drops open alerts past their age, and acknowledged ones at the front of their queue.
    fn evict_open(&mut self, now_ms: i64) {
        let oldest = now_ms - self.config.open_alerts_max_age_ms;
        // Acks are kept as long as the alerts they close could be read again.
        while let Some((t, _)) = self.acked_order.front() {
            if *t >= oldest && self.acked_order.len() <= self.acked_max() {
                break;
            }
            if let Some((_, id)) = self.acked_order.pop_front() {
                self.forget_ack(&id);
            }
        }
        self.trim_acked_in();
        let ids = &mut self.open_ids;
        self.open.retain(|_, q| {
            while let Some(f) = q.front() {
                if f.bus_ms >= oldest && ids.contains_key(&f.key) {
                    break;
                }
                if f.bus_ms < oldest {
                    ids.remove(&f.key);
                }
                q.pop_front();
            }
            !q.is_empty()
        });
        metrics::gauge!("pitboss_gateway_open_alerts").set(self.open_ids.len() as f64);
    }

    /// Most acks remembered: enough for the history and every tenant's open alerts many times
    /// over (an ack is its id and its `alert_acked` frame, a few hundred bytes).
    fn acked_max(&self) -> usize {
        self.config
            .history_max
            .saturating_add(self.config.open_alerts_max.saturating_mul(20))
            .max(100_000)
    }

    /// Alerts kept open for operators, past the history (for tests and gauges).
    pub fn open_alerts(&self) -> usize {
        self.open_ids.len()
    }

    /// Tells the subscribers of the ack's operator channel (consoles open at once agree).
    fn tell_acked(&mut self, ack: &AlertAck, known: &Acked) {
        let name: Arc<str> = ChannelName::Operator {
            tenant_id: ack.tenant_id.clone(),
        }
        .to_string()
        .into();
        let Some(ch) = self.channels.get(&name) else {
            return;
        };
        if ch.subscribers.is_empty() {
            return;
        }
        let text = known.frame(&name, &ack.alert_id);
        for conn in ch.subscribers.clone() {
            self.offer(conn, Out::Frame(text.clone()));
        }
    }

    /// Records acks read from `alert_acks`: acknowledged alerts are no longer redelivered. A
    /// record of an ack already read (the same `ack_id`: a publish retried) changes nothing.
    pub fn apply_acks(&mut self, records: &[Record]) -> usize {
        let mut n = 0;
        for r in records {
            let Ok(ack) = AlertAck::decode_proto(&r.value) else {
                continue;
            };
            let id = scoped(&ack.tenant_id, &ack.alert_id);
            // Already read: the latest ack, or an earlier one a later ack superseded (a record
            // of it written again — a retry from elsewhere — must not undo the later one).
            if self.acked.get(&id).is_some_and(|a| {
                *a.ack_id == *ack.ack_id || a.earlier.iter().any(|(e, _)| **e == *ack.ack_id)
            }) {
                continue;
            }
            let channel: Arc<str> = ChannelName::Operator {
                tenant_id: ack.tenant_id.clone(),
            }
            .to_string()
            .into();
            let at = match self.acked.get(&id) {
                Some(a) => a.at.clone(),
                None => self.place_of(&id),
            };
            self.open_ids.remove(&id);
            let mut earlier = self
                .acked
                .get(&id)
                .map(|a| {
                    let mut e = a.earlier.clone();
                    e.push((a.ack_id.clone(), a.outcome));
                    e
                })
                .unwrap_or_default();
            if earlier.len() > EARLIER_ACKS {
                let (gone, _) = earlier.remove(0);
                let by_id = scoped(&ack.tenant_id, &gone);
                if self.ack_ids.get(&by_id).is_some_and(|k| *k == id) {
                    self.ack_ids.remove(&by_id);
                }
            }
            let known = Acked {
                ack_id: ack.ack_id.as_str().into(),
                outcome: ack.outcome,
                operator_id: ack.operator_id.as_str().into(),
                acked_at: ack.acked_at,
                at,
                earlier,
            };
            self.tell_acked(&ack, &known);
            self.ack_ids
                .insert(scoped(&ack.tenant_id, &ack.ack_id), id.clone());
            // Replaced by a later ack, the earlier ack id still names this alert (its row is
            // stored under it: reused for another alert, that row would be replaced).
            if self.acked.insert(id.clone(), known).is_none() {
                self.acked_order.push_back((r.timestamp_ms, id.clone()));
                self.acked_in.entry(channel).or_default().push_back(id);
                n += 1;
            }
        }
        // By age in `evict_open`; by count here.
        while self.acked_order.len() > self.acked_max() {
            if let Some((_, old)) = self.acked_order.pop_front() {
                self.forget_ack(&old);
            }
        }
        self.trim_acked_in();
        n
    }

    /// Forgets the ack of alert `key` and its ack id (if that id still names this alert).
    fn forget_ack(&mut self, key: &Arc<str>) {
        if let Some(a) = self.acked.remove(key) {
            for ack_id in a
                .earlier
                .iter()
                .map(|(id, _)| id)
                .chain(std::iter::once(&a.ack_id))
            {
                let by_id = scoped(tenant_of(key), ack_id);
                if self.ack_ids.get(&by_id).is_some_and(|k| k == key) {
                    self.ack_ids.remove(&by_id);
                }
            }
        }
    }

    /// Where alert `key` of operator channel `channel` is on the bus, if this instance holds
    /// it (in the history or open past it).
    fn place_of(&self, key: &Arc<str>) -> Option<(Partition, Position)> {
        self.alerts
            .ids
            .get(key)
            .or_else(|| self.open_ids.get(key))
            .map(|e| (e.partition, e.position.clone()))
    }

    /// Drops, per operator channel, the acks no longer remembered (oldest first, as they go).
    fn trim_acked_in(&mut self) {
        let acked = &self.acked;
        self.acked_in.retain(|_, q| {
            while q.front().is_some_and(|k| !acked.contains_key(k)) {
                q.pop_front();
            }
            !q.is_empty()
        });
    }

    /// Registers a connection; `kill` is how the hub closes it (slow consumer).
    pub fn register(
        &mut self,
        conn: ConnId,
        subject: &str,
        listed: bool,
        tx: flume::Sender<Out>,
        kill: oneshot::Sender<(u16, String)>,
    ) {
        metrics::gauge!("pitboss_gateway_connections").increment(1.0);
        self.conns.insert(
            conn,
            Conn {
                tx,
                kill: Some(kill),
                subject: subject.into(),
                listed,
                subscriptions: HashSet::new(),
                ahead: HashMap::new(),
            },
        );
    }

    /// Forgets a connection and its subscriptions.
    pub fn unregister(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        metrics::gauge!("pitboss_gateway_connections").decrement(1.0);
        metrics::gauge!("pitboss_gateway_subscriptions").decrement(c.subscriptions.len() as f64);
        for name in c.subscriptions {
            self.drop_subscriber(&name, conn);
        }
    }

    fn drop_subscriber(&mut self, name: &Arc<str>, conn: ConnId) {
        if let Some(ch) = self.channels.get_mut(name) {
            ch.subscribers.retain(|c| *c != conn);
            if ch.subscribers.is_empty() && ch.history.is_empty() {
                self.channels.remove(name);
            }
        }
    }

    /// Subscribes `conn` to `channel` (already authorized by the caller). With `since`, the
    /// messages after it are queued first (plus, on an operator channel, every alert in the
    /// history not acknowledged yet), then the `subscribed` frame, in one batch; live messages
    /// follow in order. Subscribing again to a channel only replays and confirms.
    pub fn subscribe(
        &mut self,
        conn: ConnId,
        channel: &ChannelName,
        since: Option<&str>,
        id: Option<RequestId>,
        now_ms: i64,
    ) -> Result<Subscribed, ProtocolError> {
        let name: Arc<str> = channel.to_string().into();
        let Some(c) = self.conns.get(&conn) else {
            return Err(ProtocolError::new("closed", "the connection is closed"));
        };
        if !c.subscriptions.contains(&name)
            && c.subscriptions.len() >= self.config.max_subscriptions
        {
            return Err(ProtocolError::new(
                "too_many_subscriptions",
                format!(
                    "at most {} subscriptions per connection",
                    self.config.max_subscriptions
                ),
            ));
        }
        let (kind, partitions) = self.channel_shape(channel);
        let topic = self.topic(kind);
        let since = match since {
            None => None,
            Some(text) => Some(
                topic
                    .parse_cursor(text)
                    .map_err(|m| ProtocolError::new("invalid_cursor", format!("since: {m}")))?,
            ),
        };
        let tenant = channel.tenant_id();
        let recoverable = since.as_ref().is_none_or(|s| {
            partitions
                .iter()
                .all(|p| topic.holds_after(tenant, *p, s.get(p)))
        });
        // A cursor ahead of this instance's feed (the client came from an instance that had
        // read further): live messages up to it are not sent again.
        let ahead: BTreeMap<Partition, Position> = since
            .iter()
            .flatten()
            .filter(|(p, pos)| partitions.contains(p) && topic.head.get(p).is_none_or(|h| *pos > h))
            .map(|(p, pos)| (*p, pos.clone()))
            .collect();
        self.channel_entry(&name, channel);
        let is_operator = matches!(channel, ChannelName::Operator { .. });
        let ch = self.channels.get(&name).expect("channel present");
        let mut replay = Vec::new();
        // A resume on an operator channel: the acks of alerts the client had (at or before its
        // cursor), as `alert_acked` frames, since it may have missed them while away (in the
        // history or older, open until acknowledged); an alert acknowledged before the client
        // saw it is not sent at all.
        let resume = recoverable && since.is_some();
        // Every ack of the channel whose alert is at or before the cursor, held or not (an
        // alert older than the history, acknowledged, or read back after its ack by a
        // restarted instance), in the order they came.
        let mut acks: Vec<(&str, &Acked)> = Vec::new();
        if is_operator
            && resume
            && let Some(q) = self.acked_in.get(&name)
        {
            let had_at = |(p, pos): &(Partition, Position)| {
                since
                    .as_ref()
                    .is_some_and(|s| s.get(p).is_some_and(|c| pos <= c))
            };
            // The newest first, as many as a replay, then back in their order.
            for key in q.iter().rev() {
                if acks.len() >= self.config.max_replay {
                    break;
                }
                if let Some(a) = self.acked.get(key)
                    && a.at.as_ref().is_some_and(had_at)
                {
                    // The alert id is the key's part after the tenant.
                    let id = key.split_once('\u{1f}').map_or(&**key, |(_, id)| id);
                    acks.push((id, a));
                }
            }
            acks.reverse();
        }
        // Alerts that left the history unacknowledged come first (they are older than it).
        if is_operator && let Some(q) = self.open.get(&name) {
            for e in q {
                if e.expires_at_ms.is_some_and(|x| x <= now_ms) {
                    continue;
                }
                if !self.acked.contains_key(&e.key) && self.open_ids.contains_key(&e.key) {
                    replay.push(e.clone());
                }
            }
        }
        for e in &ch.history {
            if e.expires_at_ms.is_some_and(|x| x <= now_ms) {
                continue;
            }
            let acked = if is_operator {
                self.acked.get(&e.key)
            } else {
                None
            };
            let missed = since.as_ref().is_some_and(|s| {
                recoverable && s.get(&e.partition).is_none_or(|pos| e.position > *pos)
            });
            if acked.is_none() && (missed || is_operator) {
                replay.push(e.clone());
            }
        }
        // At most as many as the replay (the newest), like it.
        if acks.len() > self.config.max_replay {
            acks.drain(..acks.len() - self.config.max_replay);
        }
        let acks: Vec<Text> = acks.into_iter().map(|(id, a)| a.frame(&name, id)).collect();
        let mut recovery = match (&since, recoverable) {
            (None, _) => Recovery::None,
            (Some(_), true) => Recovery::Complete,
            (Some(_), false) => Recovery::TooOld,
        };
        // An operator channel replays its open alerts besides what the history holds.
        let max_replay = if is_operator {
            self.config
                .max_replay
                .saturating_add(self.config.open_alerts_max)
        } else {
            self.config.max_replay
        };
        if replay.len() > max_replay {
            recovery = Recovery::TooOld;
            let skip = replay.len() - max_replay;
            replay.drain(..skip);
        }
        let cursor = self.topic(kind).cursor_with(&partitions, &ahead);
        let replayed = replay.len();
        let mut batch: Vec<Text> = acks;
        batch.push(
            ServerFrame::Subscribed {
                id,
                channel: name.to_string(),
                cursor,
                recovery,
                replayed,
            }
            .to_text()
            .into(),
        );
        let c = self.conns.get_mut(&conn).expect("checked above");
        if ahead.is_empty() {
            c.ahead.remove(&name);
        } else {
            c.ahead.insert(name.clone(), (now_ms, ahead));
        }
        let fresh = !c.ahead.contains_key(&name);
        if c.subscriptions.insert(name.clone()) {
            metrics::gauge!("pitboss_gateway_subscriptions").increment(1.0);
            let ch = self.channels.get_mut(&name).expect("channel present");
            ch.subscribers.push(conn);
        }
        // A channel no tick has refreshed yet: its first subscriber's `subscribed` carried the
        // cursor, so the tick sends one only once the partitions move.
        let plain = self.topic(kind).cursor(&partitions);
        if let Some(ch) = self.channels.get_mut(&name)
            && ch.last_cursor.is_empty()
            && fresh
        {
            ch.last_cursor = plain;
        }
        let out = Out::Batch {
            frames: batch,
            replayed: replay,
        };
        if let Offer::Closed = self.offer(conn, out) {
            return Err(ProtocolError::new("closed", "the connection is closed"));
        }
        Ok(Subscribed { recovery, replayed })
    }

    /// Ends `conn`'s subscription to `channel`; whether it had one.
    pub fn unsubscribe(&mut self, conn: ConnId, channel: &str) -> bool {
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        let Some(name) = c.subscriptions.take(channel) else {
            return false;
        };
        c.ahead.remove(&name);
        metrics::gauge!("pitboss_gateway_subscriptions").decrement(1.0);
        self.drop_subscriber(&name, conn);
        true
    }

    /// The channels `conn` is subscribed to.
    pub fn subscriptions(&self, conn: ConnId) -> Vec<String> {
        self.conns
            .get(&conn)
            .map(|c| c.subscriptions.iter().map(|s| s.to_string()).collect())
            .unwrap_or_default()
    }

    /// Every room with someone in it on this instance (for the presence snapshot).
    pub fn rooms_presence(&self) -> Vec<crate::presence::RoomPresence> {
        self.channels
            .iter()
            .filter(|(name, ch)| !ch.subscribers.is_empty() && name.starts_with("room:"))
            .map(|(name, _)| {
                let (connections, subjects) = self.presence(name);
                crate::presence::RoomPresence {
                    channel: name.to_string(),
                    connections,
                    subjects,
                }
            })
            .filter(|r| r.connections > 0)
            .collect()
    }

    /// Players' connections subscribed to `channel` on this instance, and their distinct
    /// subjects (operators watching are neither counted nor listed: a room's players would see
    /// who from the operator's staff is watching them).
    pub fn presence(&self, channel: &str) -> (usize, Vec<String>) {
        let Some(ch) = self.channels.get(channel) else {
            return (0, Vec::new());
        };
        let players: Vec<&Conn> = ch
            .subscribers
            .iter()
            .filter_map(|c| self.conns.get(c))
            .filter(|c| c.listed)
            .collect();
        let mut subjects: Vec<String> = players
            .iter()
            .map(|c| c.subject.to_string())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        subjects.sort();
        subjects.truncate(crate::presence::MAX_SUBJECTS);
        (players.len(), subjects)
    }

    /// Periodic work: evicts history past its age, and sends each subscription whose channel
    /// had no message in the last half interval and whose partitions moved its new cursor (so an idle
    /// client's cursor stays within the history). Returns how many cursor frames were queued.
    /// (The gateway runs it in two halves, [`Hub::idle_channels`] and chunks of
    /// [`Hub::refresh_cursors`].)
    pub fn tick(&mut self, now_ms: i64) -> usize {
        let idle = self.idle_channels(now_ms);
        self.refresh_cursors(&idle)
    }

    /// The first half of a tick: drops expired history and lists the subscribed channels
    /// without a message in the last half interval (the others got a fresh cursor with their
    /// messages). The gateway then refreshes them in chunks ([`Hub::refresh_cursors`]),
    /// releasing the hub between chunks, so that 100,000 idle subscriptions do not hold up the
    /// live path.
    pub fn idle_channels(&mut self, now_ms: i64) -> Vec<Arc<str>> {
        self.evict(now_ms);
        // Marks ahead of the feed that it has not reached in time stop holding anything back
        // (and the connection gets cursor frames again).
        for c in self.conns.values_mut() {
            if !c.ahead.is_empty() {
                c.ahead
                    .retain(|_, (since, _)| now_ms.saturating_sub(*since) <= AHEAD_GRACE_MS);
            }
        }
        let since = self.last_tick_ms;
        self.last_tick_ms = now_ms;
        // A message in the last half interval is fresh enough; one older gets a refresh, so a
        // cursor is at most one and a half intervals old.
        let fresh_after = if since == i64::MIN {
            i64::MAX
        } else {
            now_ms - (now_ms - since) / 2
        };
        self.channels
            .iter()
            .filter(|(_, ch)| !ch.subscribers.is_empty() && ch.last_message_ms <= fresh_after)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Sends each of `channels` whose cursor moved its new cursor; how many frames were sent.
    pub fn refresh_cursors(&mut self, channels: &[Arc<str>]) -> usize {
        let mut sent = 0;
        for name in channels {
            let Some(ch) = self.channels.get(name) else {
                continue;
            };
            if ch.subscribers.is_empty() {
                continue;
            }
            let cursor = self.topic(ch.kind).cursor(&ch.partitions);
            if cursor == ch.last_cursor {
                continue;
            }
            let frame: Text = format!(
                r#"{{"type":"cursor","channel":{},"cursor":{}}}"#,
                json_str(name),
                json_str(&cursor)
            )
            .into();
            let Some(ch) = self.channels.get_mut(name) else {
                continue;
            };
            ch.last_cursor = cursor;
            for conn in &ch.subscribers {
                // A full queue is left alone here: the live path decides about slow clients.
                // A client ahead of this instance keeps its own, further cursor.
                if let Some(c) = self.conns.get(conn)
                    && !c.ahead.contains_key(name)
                    && c.tx.try_send(Out::Frame(frame.clone())).is_ok()
                {
                    sent += 1;
                }
            }
        }
        sent
    }

    /// Whether this instance holds `tenant`'s alert `alert_id`: in the history, open past it,
    /// or acknowledged (what an ack may name: one of the tenant's alerts, not any id).
    pub fn knows_alert(&self, tenant: &str, alert_id: &str) -> bool {
        let key = scoped(tenant, alert_id);
        self.alerts.ids.contains_key(&key)
            || self.open_ids.contains_key(&key)
            || self.acked.contains_key(&key)
    }

    /// Whether an ack of `tenant`'s alert `alert_id` has been read.
    pub fn is_acked(&self, tenant: &str, alert_id: &str) -> bool {
        self.acked.contains_key(&scoped(tenant, alert_id))
    }

    /// Whether `tenant`'s alert `alert_id` is acknowledged by the ack `ack_id` (its latest).
    pub fn has_ack(&self, tenant: &str, alert_id: &str, ack_id: &str) -> bool {
        matches!(self.ack_seen(tenant, alert_id, ack_id), AckSeen::Latest(_))
    }

    /// Whether `ack_id` is the latest ack of `tenant`'s alert `alert_id` (and with which
    /// outcome), one of its earlier ones, or neither.
    pub fn ack_seen(&self, tenant: &str, alert_id: &str, ack_id: &str) -> AckSeen {
        match self.acked.get(&scoped(tenant, alert_id)) {
            Some(a) if *a.ack_id == *ack_id => AckSeen::Latest(a.outcome),
            Some(a) => a
                .earlier
                .iter()
                .find(|(e, _)| **e == *ack_id)
                .map_or(AckSeen::No, |(_, o)| AckSeen::Earlier(*o)),
            _ => AckSeen::No,
        }
    }

    /// The alert id another of `tenant`'s acks with `ack_id` closed, if it is not `alert_id`.
    pub fn ack_id_taken(&self, tenant: &str, ack_id: &str, alert_id: &str) -> Option<String> {
        let key = self.ack_ids.get(&scoped(tenant, ack_id))?;
        let id = key.split_once('\u{1f}').map_or(&**key, |(_, id)| id);
        (id != alert_id).then(|| id.to_owned())
    }

    /// How many messages the history holds (alerts, pushes).
    pub fn history_len(&self) -> (usize, usize) {
        (self.alerts.held, self.pushes.held)
    }

    /// The current cursor of a channel (tests, the publish API's answer).
    pub fn cursor_of(&mut self, channel: &ChannelName) -> String {
        let (kind, partitions) = self.channel_shape(channel);
        self.topic(kind).cursor(&partitions)
    }
}

enum Offer {
    Sent,
    Closed,
}

/// The tenant of a key made by [`scoped`].
fn tenant_of(key: &str) -> &str {
    key.split_once('\u{1f}').map_or("", |(t, _)| t)
}

/// `tenant` and `id` as one key (the separator cannot occur in either).
fn scoped(tenant: &str, id: &str) -> Arc<str> {
    format!("{tenant}\u{1f}{id}").into()
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// `{"type":"message","channel","cursor","kind","id","replayed"?,"data"}`.
fn message_frame(
    channel: &str,
    cursor: &str,
    kind: MessageType,
    id: &str,
    data: &str,
    replayed: bool,
) -> String {
    let kind = match kind {
        MessageType::Alert => "alert",
        MessageType::Push => "push",
    };
    format!(
        r#"{{"type":"message","channel":{},"cursor":{},"kind":"{kind}","id":{}{},"data":{data}}}"#,
        json_str(channel),
        json_str(cursor),
        json_str(id),
        if replayed { r#","replayed":true"# } else { "" },
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::collections::BTreeMap;

    use pitboss_model::Timestamp;
    use pitboss_model::live::{AckOutcome, Target};
    use pitboss_testkit::live;

    use super::*;

    const PARTITIONS: u32 = 4;

    fn hub(config: HubConfig) -> Hub {
        let mut h = Hub::new(config, Keying::Crc32);
        for kind in [MessageType::Alert, MessageType::Push] {
            h.open_topic(kind, PARTITIONS, false);
            h.caught_up(kind, &(0..PARTITIONS).map(|p| (p, None)).collect(), now());
        }
        h
    }

    /// Records as the bus would hand them: each message on its key's partition, at the next
    /// offset of that partition.
    #[derive(Default)]
    struct Log {
        next: BTreeMap<Partition, i64>,
    }

    impl Log {
        fn record<M: LiveMessage>(&mut self, m: &M) -> Record {
            let p = pitboss_bus::partition::partition_for(&m.bus_key(), PARTITIONS);
            let o = self.next.entry(p).or_insert(0);
            let r = Record {
                topic: M::TOPIC.into(),
                partition: p,
                position: Position::Offset(*o),
                key: m.bus_key(),
                value: m.encode_proto(),
                timestamp_ms: Timestamp::now().as_millis(),
                headers: Default::default(),
            };
            *o += 1;
            r
        }
    }

    struct Client {
        rx: flume::Receiver<Out>,
        kill: oneshot::Receiver<(u16, String)>,
    }

    impl Client {
        /// Every frame queued so far, as JSON.
        fn frames(&mut self) -> Vec<serde_json::Value> {
            let mut out = Vec::new();
            while let Ok(o) = self.rx.try_recv() {
                let texts = o.texts();
                out.extend(
                    texts
                        .iter()
                        .map(|t| serde_json::from_str(t.as_str()).unwrap()),
                );
            }
            out
        }

        fn message_ids(&mut self) -> Vec<String> {
            self.frames()
                .into_iter()
                .filter(|f| f["type"] == "message")
                .map(|f| f["id"].as_str().unwrap().to_owned())
                .collect()
        }
    }

    fn connect(h: &mut Hub, conn: ConnId, subject: &str, capacity: usize) -> Client {
        let (tx, rx) = flume::bounded(capacity);
        let (kill_tx, kill) = oneshot::channel();
        h.register(conn, subject, true, tx, kill_tx);
        Client { rx, kill }
    }

    fn now() -> i64 {
        Timestamp::now().as_millis()
    }

    fn player_push(i: u64, player: &str) -> Push {
        let mut p = live::push(i);
        p.target = Target::Player(player.into());
        p.push_id = format!("push-{i}");
        p
    }

    fn channel(name: &str) -> ChannelName {
        ChannelName::parse(name, "channel").unwrap()
    }

    #[test]
    fn a_push_reaches_its_player_and_no_one_else() {
        let mut h = hub(HubConfig::default());
        let mut log = Log::default();
        let tenant = live::push(0).tenant_id;
        let mut a = connect(&mut h, 1, "a", 64);
        let mut b = connect(&mut h, 2, "b", 64);
        h.subscribe(
            1,
            &channel(&format!("player:{tenant}:a")),
            None,
            None,
            now(),
        )
        .unwrap();
        h.subscribe(
            2,
            &channel(&format!("player:{tenant}:b")),
            None,
            None,
            now(),
        )
        .unwrap();
        a.frames();
        b.frames();
        let recs = [
            log.record(&player_push(1, "a")),
            log.record(&player_push(2, "b")),
            log.record(&player_push(3, "a")),
        ];
        let applied = h.apply(MessageType::Push, &recs, now());
        assert_eq!(applied.deliveries, 3);
        assert_eq!(a.message_ids(), ["push-1", "push-3"]);
        assert_eq!(b.message_ids(), ["push-2"]);
        // Another tenant's player of the same id gets nothing.
        let mut other = player_push(4, "a");
        other.tenant_id = "other-tenant".into();
        h.apply(MessageType::Push, &[log.record(&other)], now());
        assert!(a.message_ids().is_empty());
    }

    #[test]
    fn a_resume_gets_exactly_what_was_missed_and_a_republished_copy_is_not_sent_twice() {
        let mut h = hub(HubConfig::default());
        let mut log = Log::default();
        let tenant = live::push(0).tenant_id;
        let ch = channel(&format!("player:{tenant}:a"));
        let mut a = connect(&mut h, 1, "a", 64);
        h.subscribe(1, &ch, None, None, now()).unwrap();
        let first = [
            log.record(&player_push(1, "a")),
            log.record(&player_push(2, "a")),
        ];
        h.apply(MessageType::Push, &first, now());
        let frames = a.frames();
        let cursor = frames.last().unwrap()["cursor"]
            .as_str()
            .unwrap()
            .to_owned();
        h.unregister(1);
        // Missed while away: 3 and 4 (and a copy of 2 republished with the same id).
        let missed = [
            log.record(&player_push(3, "a")),
            log.record(&player_push(2, "a")),
            log.record(&player_push(4, "a")),
        ];
        let applied = h.apply(MessageType::Push, &missed, now());
        assert_eq!(applied.duplicates, 1);
        let mut back = connect(&mut h, 2, "a", 64);
        let s = h.subscribe(2, &ch, Some(&cursor), None, now()).unwrap();
        assert_eq!(
            s,
            Subscribed {
                recovery: Recovery::Complete,
                replayed: 2
            }
        );
        let frames = back.frames();
        let ids: Vec<_> = frames
            .iter()
            .filter(|f| f["type"] == "message")
            .map(|f| f["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["push-3", "push-4"]);
        assert!(
            frames
                .iter()
                .filter(|f| f["type"] == "message")
                .all(|f| f["replayed"] == true)
        );
        let subscribed = frames.last().unwrap();
        assert_eq!(subscribed["type"], "subscribed");
        assert_eq!(subscribed["recovery"], "complete");
        // Live delivery continues after the replay.
        h.apply(
            MessageType::Push,
            &[log.record(&player_push(5, "a"))],
            now(),
        );
        assert_eq!(back.message_ids(), ["push-5"]);
    }

    /// A restart reads the partitions in turn, not in time order: the alerts kept open past the
    /// history are still the ones a live feed kept (a newer open alert vanished and an evicted
    /// one came back, with both bounds exceeded).
    #[test]
    fn a_rebuild_read_partition_by_partition_keeps_the_open_alerts_a_live_feed_keeps() {
        let config = HubConfig {
            history_max: 3,
            open_alerts_max: 5,
            ..HubConfig::default()
        };
        let alerts: Vec<_> = (1..=20).map(live::alert).collect();
        let tenant = alerts[0].tenant_id.clone();
        let ch = channel(&format!("operator:{tenant}"));
        let mut log = Log::default();
        let base = now() - 60_000;
        let mut recs: Vec<Record> = alerts
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let mut r = log.record(a);
                r.timestamp_ms = base + i as i64 * 1000;
                r
            })
            .collect();
        let replay = |h: &mut Hub| {
            let mut c = connect(h, 1, "ops", 64);
            h.subscribe(1, &ch, None, None, now()).unwrap();
            c.message_ids()
        };
        let mut live = hub(config.clone());
        live.apply(MessageType::Alert, &recs, now());
        let want = replay(&mut live);
        let newest: Vec<String> = alerts[12..].iter().map(|a| a.alert_id.clone()).collect();
        assert_eq!(want, newest, "the newest 3 + 5");
        recs.sort_by_key(|r| (r.partition, r.position.clone()));
        assert_ne!(
            recs.iter().map(|r| r.timestamp_ms).collect::<Vec<_>>(),
            (0..20).map(|i| base + i * 1000).collect::<Vec<_>>(),
            "the partitions interleave in time"
        );
        let mut rebuilt = Hub::new(config, Keying::Crc32);
        for kind in [MessageType::Alert, MessageType::Push] {
            rebuilt.open_topic(kind, PARTITIONS, false);
        }
        for r in &recs {
            rebuilt.apply(MessageType::Alert, std::slice::from_ref(r), now());
        }
        for kind in [MessageType::Alert, MessageType::Push] {
            rebuilt.caught_up(kind, &(0..PARTITIONS).map(|p| (p, None)).collect(), now());
        }
        assert_eq!(replay(&mut rebuilt), want);
    }

    /// After a restart whose feed found nothing to read on a partition (all it holds is older
    /// than the history), a stale cursor is `too_old` once: the cursor given back is the
    /// partition's end, from which the next subscribe is complete.
    #[test]
    fn a_stale_cursor_after_a_restart_gets_the_partitions_end_and_then_resumes() {
        let mut h = Hub::new(HubConfig::default(), Keying::Crc32);
        for kind in [MessageType::Alert, MessageType::Push] {
            h.open_topic(kind, PARTITIONS, false);
            h.caught_up(
                kind,
                &(0..PARTITIONS)
                    .map(|p| (p, Some(Position::Offset(1))))
                    .collect(),
                now(),
            );
        }
        let tenant = live::push(0).tenant_id;
        let ch = channel(&format!("player:{tenant}:a"));
        let p = pitboss_bus::partition::partition_for(&format!("{tenant}:a"), PARTITIONS);
        let mut a = connect(&mut h, 1, "a", 64);
        let s = h
            .subscribe(1, &ch, Some(&format!("{p}=0")), None, now())
            .unwrap();
        assert_eq!(s.recovery, Recovery::TooOld);
        let frame = a.frames().last().unwrap().clone();
        assert_eq!(frame["cursor"], format!("{p}=1"), "{frame}");
        let mut b = connect(&mut h, 2, "a", 64);
        let s = h
            .subscribe(2, &ch, Some(&format!("{p}=1")), None, now())
            .unwrap();
        assert_eq!(s.recovery, Recovery::Complete);
        assert_eq!(b.frames().last().unwrap()["recovery"], "complete");
    }

    /// The count bound is shared fairly between tenants (an outside audit: one tenant
    /// publishing 3,000 pushes to its own players made another tenant's player's resume
    /// `too_old`, her pushes lost to her): past it, the tenant holding the most loses its
    /// oldest, and only its own resumes from before them are `too_old`.
    #[test]
    fn one_tenants_volume_does_not_evict_another_tenants_history() {
        let mut h = hub(HubConfig {
            history_max: 10,
            ..HubConfig::default()
        });
        let mut log = Log::default();
        let push_to = |tenant: &str, i: u64, player: &str| {
            let mut p = player_push(i, player);
            p.tenant_id = tenant.into();
            p
        };
        let victim = channel("player:victimco:alice");
        let mut a = connect(&mut h, 1, "alice", 64);
        h.subscribe(1, &victim, None, None, now()).unwrap();
        let cursor = a.frames().last().unwrap()["cursor"]
            .as_str()
            .unwrap()
            .to_owned();
        h.unregister(1);
        for i in 0..3 {
            h.apply(
                MessageType::Push,
                &[log.record(&push_to("victimco", i, "alice"))],
                now(),
            );
        }
        // The other tenant floods its own players, far past the bound.
        let attacker = channel("player:attackerco:mallory");
        let mut m = connect(&mut h, 2, "mallory", 64);
        h.subscribe(2, &attacker, None, None, now()).unwrap();
        let mallory_cursor = m.frames().last().unwrap()["cursor"]
            .as_str()
            .unwrap()
            .to_owned();
        h.unregister(2);
        for i in 100..130 {
            h.apply(
                MessageType::Push,
                &[log.record(&push_to("attackerco", i, "mallory"))],
                now(),
            );
        }
        assert_eq!(h.history_len().1, 10, "the bound holds");
        let mut back = connect(&mut h, 3, "alice", 64);
        let s = h.subscribe(3, &victim, Some(&cursor), None, now()).unwrap();
        assert_eq!(
            (s.recovery, s.replayed),
            (Recovery::Complete, 3),
            "alice's pushes are hers"
        );
        assert_eq!(back.message_ids(), ["push-0", "push-1", "push-2"]);
        // The flooding tenant's own resume from before its evicted pushes is too old.
        let mut again = connect(&mut h, 4, "mallory", 64);
        let s = h
            .subscribe(4, &attacker, Some(&mallory_cursor), None, now())
            .unwrap();
        assert_eq!(s.recovery, Recovery::TooOld);
        assert_eq!(again.frames().last().unwrap()["recovery"], "too_old");
        // Both at their share: the one holding more loses its oldest.
        for i in 3..10 {
            h.apply(
                MessageType::Push,
                &[log.record(&push_to("victimco", i, "alice"))],
                now(),
            );
        }
        assert_eq!(h.history_len().1, 10);
        let mut last = connect(&mut h, 5, "alice", 64);
        let s = h.subscribe(5, &victim, Some(&cursor), None, now()).unwrap();
        assert_eq!(s.recovery, Recovery::TooOld, "past her share, hers go too");
        drop(last.frames());
    }

    #[test]
    fn a_cursor_older_than_the_history_is_too_old() {
        let mut h = hub(HubConfig {
            history_max: 2,
            ..HubConfig::default()
        });
        let mut log = Log::default();
        let tenant = live::push(0).tenant_id;
        let ch = channel(&format!("player:{tenant}:a"));
        let mut a = connect(&mut h, 1, "a", 64);
        h.subscribe(1, &ch, None, None, now()).unwrap();
        h.apply(
            MessageType::Push,
            &[log.record(&player_push(1, "a"))],
            now(),
        );
        let cursor = a.frames().last().unwrap()["cursor"]
            .as_str()
            .unwrap()
            .to_owned();
        h.unregister(1);
        for i in 2..6 {
            h.apply(
                MessageType::Push,
                &[log.record(&player_push(i, "a"))],
                now(),
            );
        }
        let mut back = connect(&mut h, 2, "a", 64);
        let s = h.subscribe(2, &ch, Some(&cursor), None, now()).unwrap();
        assert_eq!(s.recovery, Recovery::TooOld);
        assert_eq!(s.replayed, 0);
        assert_eq!(back.frames().last().unwrap()["recovery"], "too_old");
        // A malformed cursor is an error, not a silent reset.
        let e = h
            .subscribe(2, &ch, Some("zero=1"), None, now())
            .unwrap_err();
        assert_eq!(e.code, "invalid_cursor");
        let e = h.subscribe(2, &ch, Some("99=1"), None, now()).unwrap_err();
        assert_eq!(e.code, "invalid_cursor");
        // A partition given twice: which position the client meant is unknown (the last one
        // was taken).
        let e = h
            .subscribe(2, &ch, Some("0=2,0=0"), None, now())
            .unwrap_err();
        assert_eq!(e.code, "invalid_cursor");
        assert!(e.message.contains("given twice"), "{}", e.message);
    }

    #[test]
    fn the_tick_leaves_channels_with_a_message_in_the_last_half_interval_alone() {
        let mut h = hub(HubConfig::default());
        let mut log = Log::default();
        let tenant = live::push(0).tenant_id;
        let busy = channel(&format!("player:{tenant}:busy"));
        let mut c = connect(&mut h, 1, "busy", 64);
        h.subscribe(1, &busy, None, None, now()).unwrap();
        let t0 = now();
        h.tick(t0);
        c.frames();
        // Another player on the same partition, so that the busy channel's cursor moves.
        let p = pitboss_bus::partition::partition_for(&format!("{tenant}:busy"), PARTITIONS);
        let mut others = (100..).map(|i| format!("other-{i}")).filter(|name| {
            pitboss_bus::partition::partition_for(&format!("{tenant}:{name}"), PARTITIONS) == p
        });
        let mut i = 0;
        let mut push_to = |h: &mut Hub, player: &str, at: i64| {
            i += 1;
            h.apply(
                MessageType::Push,
                &[log.record(&player_push(i, player))],
                at,
            );
        };
        push_to(&mut h, "busy", t0 + 700);
        let other = others.next().unwrap();
        push_to(&mut h, &other, t0 + 800);
        assert_eq!(c.frames().len(), 1, "the message, with its cursor");
        assert_eq!(
            h.tick(t0 + 1000),
            0,
            "a message in the last half interval brought a fresh cursor: none sent"
        );
        push_to(&mut h, &other, t0 + 1500);
        assert_eq!(
            h.tick(t0 + 2000),
            1,
            "the message is older than half an interval: refreshed"
        );
        let frames = c.frames();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0]["type"], "cursor");
    }

    #[test]
    fn an_idle_subscription_gets_fresh_cursors_and_stays_recoverable() {
        let mut h = hub(HubConfig {
            history_max: 3,
            ..HubConfig::default()
        });
        let mut log = Log::default();
        let tenant = live::push(0).tenant_id;
        let ch = channel(&format!("player:{tenant}:idle"));
        let mut idle = connect(&mut h, 1, "idle", 64);
        h.subscribe(1, &ch, None, None, now()).unwrap();
        idle.frames();
        assert_eq!(
            h.tick(now()),
            0,
            "nothing moved since `subscribed` gave the cursor: nothing sent"
        );
        // Other players' pushes on the idle player's partition turn the history over.
        let p_idle = pitboss_bus::partition::partition_for(&format!("{tenant}:idle"), PARTITIONS);
        let mut n = 0;
        let mut i = 100;
        while n < 6 {
            let name = format!("other-{i}");
            i += 1;
            if pitboss_bus::partition::partition_for(&format!("{tenant}:{name}"), PARTITIONS)
                != p_idle
            {
                continue;
            }
            h.apply(
                MessageType::Push,
                &[log.record(&player_push(i, &name))],
                now(),
            );
            n += 1;
            assert_eq!(
                h.tick(now()),
                1,
                "the idle subscription gets the moved cursor"
            );
        }
        let frames = idle.frames();
        assert!(frames.iter().all(|f| f["type"] == "cursor"), "{frames:?}");
        let cursor = frames.last().unwrap()["cursor"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(h.tick(now()), 0, "nothing moved: nothing sent");
        h.unregister(1);
        let mut back = connect(&mut h, 2, "idle", 64);
        assert_eq!(
            h.subscribe(2, &ch, Some(&cursor), None, now())
                .unwrap()
                .recovery,
            Recovery::Complete
        );
        back.frames();
    }

    #[test]
    fn a_client_ahead_of_this_instance_is_not_sent_what_it_has() {
        let mut h = hub(HubConfig::default());
        let mut log = Log::default();
        let tenant = live::push(0).tenant_id;
        let ch = channel(&format!("player:{tenant}:a"));
        let recs: Vec<_> = (1..=3).map(|i| log.record(&player_push(i, "a"))).collect();
        // The client saw 1 and 2 on another instance; this one has read only 1.
        h.apply(MessageType::Push, &recs[..1], now());
        let p = recs[1].partition;
        let mut a = connect(&mut h, 1, "a", 64);
        let s = h
            .subscribe(1, &ch, Some(&format!("{p}=1")), None, now())
            .unwrap();
        assert_eq!(s.recovery, Recovery::Complete);
        let frames = a.frames();
        assert_eq!(
            frames.last().unwrap()["cursor"],
            format!("{p}=1"),
            "its own cursor, not behind it"
        );
        h.apply(MessageType::Push, &recs[1..], now());
        assert_eq!(a.message_ids(), ["push-3"]);
    }

    /// A cursor further ahead than any instance gets (a bus wiped and refilled, a made-up
    /// cursor) holds the channel's messages back for a grace period only.
    #[test]
    fn a_cursor_far_ahead_of_every_feed_stops_holding_messages_back() {
        let mut h = hub(HubConfig::default());
        let mut log = Log::default();
        let tenant = live::push(0).tenant_id;
        let ch = channel(&format!("player:{tenant}:a"));
        let first = log.record(&player_push(1, "a"));
        let p = first.partition;
        h.apply(MessageType::Push, &[first], now());
        let mut a = connect(&mut h, 1, "a", 64);
        h.subscribe(1, &ch, Some(&format!("{p}=999999999")), None, now())
            .unwrap();
        a.frames();
        // Within the grace: held back as a client from a further instance would have it.
        h.apply(
            MessageType::Push,
            &[log.record(&player_push(2, "a"))],
            now(),
        );
        assert_eq!(a.message_ids(), Vec::<String>::new());
        // Past it: delivered.
        let later = now() + AHEAD_GRACE_MS + 1;
        h.apply(
            MessageType::Push,
            &[log.record(&player_push(3, "a"))],
            later,
        );
        assert_eq!(a.message_ids(), ["push-3"]);
    }

    #[test]
    fn a_client_that_does_not_read_is_closed_and_the_others_served() {
        let mut h = hub(HubConfig::default());
        let mut log = Log::default();
        let tenant = live::push(0).tenant_id;
        let ch = channel(&format!("room:{tenant}:table"));
        let mut slow = connect(&mut h, 1, "slow", 2);
        let mut fast = connect(&mut h, 2, "fast", 64);
        for c in [1, 2] {
            h.subscribe(c, &ch, None, None, now()).unwrap();
        }
        fast.frames();
        for i in 0..5 {
            let mut p = player_push(i, "x");
            p.target = Target::Room("table".into());
            let applied = h.apply(MessageType::Push, &[log.record(&p)], now());
            assert!(applied.deliveries >= 1);
        }
        let (code, reason) = slow.kill.try_recv().expect("closed");
        assert_eq!(code, close::SLOW_CONSUMER);
        assert!(reason.contains("slow consumer"), "{reason}");
        assert_eq!(fast.message_ids().len(), 5);
        assert_eq!(h.presence(&ch.to_string()).0, 1);
    }

    #[test]
    fn operators_get_unacknowledged_alerts_on_subscribe_and_acked_ones_are_not_redelivered() {
        let mut h = hub(HubConfig::default());
        let mut log = Log::default();
        let alerts: Vec<_> = (1..=3).map(live::alert).collect();
        let tenant = alerts[0].tenant_id.clone();
        let recs: Vec<_> = alerts.iter().map(|a| log.record(a)).collect();
        h.apply(MessageType::Alert, &recs, now());
        let mut ack = live::ack(1);
        ack.alert_id = alerts[1].alert_id.clone();
        ack.outcome = AckOutcome::Confirmed;
        let ack_rec = log.record(&ack);
        assert_eq!(h.apply_acks(&[ack_rec]), 1);
        let mut ops = connect(&mut h, 1, "ops", 64);
        let s = h
            .subscribe(
                1,
                &channel(&format!("operator:{tenant}")),
                None,
                None,
                now(),
            )
            .unwrap();
        assert_eq!(s.replayed, 2);
        let ids = ops.message_ids();
        assert_eq!(
            ids,
            [alerts[0].alert_id.clone(), alerts[2].alert_id.clone()]
        );
    }

    /// A console resuming on its cursor learns the acks made while it was away (an
    /// `alert_acked` for each alert it had that was acknowledged since), and is not sent an
    /// alert that was acknowledged before it ever saw it; a record of an ack already read (the
    /// same `ack_id`, a publish retried) changes nothing and tells no one twice.
    #[test]
    fn a_console_resuming_gets_the_acks_it_missed_and_not_the_alerts_acknowledged_meanwhile() {
        let mut h = hub(HubConfig::default());
        let mut log = Log::default();
        let alerts: Vec<_> = (1..=4).map(live::alert).collect();
        let tenant = alerts[0].tenant_id.clone();
        let ch = channel(&format!("operator:{tenant}"));
        h.apply(
            MessageType::Alert,
            &[log.record(&alerts[0]), log.record(&alerts[1])],
            now(),
        );
        let mut anna = connect(&mut h, 1, "anna", 64);
        h.subscribe(1, &ch, None, None, now()).unwrap();
        let frames = anna.frames();
        let cursor = frames.last().unwrap()["cursor"]
            .as_str()
            .unwrap()
            .to_string();
        h.unregister(1);
        // While she is away: alert 0, which she has, is acknowledged; alerts 2 and 3 arrive
        // and 3 is acknowledged at once.
        let mut ack0 = live::ack(1);
        ack0.alert_id = alerts[0].alert_id.clone();
        let ack0_rec = log.record(&ack0);
        assert_eq!(h.apply_acks(std::slice::from_ref(&ack0_rec)), 1);
        h.apply(
            MessageType::Alert,
            &[log.record(&alerts[2]), log.record(&alerts[3])],
            now(),
        );
        let mut ack3 = live::ack(3);
        ack3.alert_id = alerts[3].alert_id.clone();
        h.apply_acks(&[log.record(&ack3)]);
        let mut anna = connect(&mut h, 2, "anna", 64);
        let s = h.subscribe(2, &ch, Some(&cursor), None, now()).unwrap();
        assert_eq!(s.recovery, Recovery::Complete);
        let got: Vec<(String, String)> = anna
            .frames()
            .iter()
            .map(|f| {
                let id = f
                    .get("alert_id")
                    .or_else(|| f.get("id"))
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string();
                (f["type"].as_str().unwrap().to_string(), id)
            })
            .collect();
        let at = |t: &str, i: usize| (t.to_string(), alerts[i].alert_id.clone());
        assert_eq!(
            got,
            [
                // Open: the one she had and the one she missed.
                at("message", 1),
                at("message", 2),
                // Acknowledged while she was away: its ack, not the alert again.
                at("alert_acked", 0),
                ("subscribed".to_string(), String::new()),
            ],
            "alert 3, acknowledged before she saw it, is not sent"
        );
        assert_eq!(s.replayed, 2);
        // The same ack read again: nothing new, no second `alert_acked`.
        assert_eq!(h.apply_acks(&[ack0_rec]), 0);
        assert!(anna.frames().is_empty());
        assert!(h.has_ack(&tenant, &alerts[0].alert_id, &ack0.ack_id));
        assert!(!h.has_ack(&tenant, &alerts[0].alert_id, &ack3.ack_id));
    }

    /// The same for an alert that had left the history (open until acknowledged): a console
    /// resuming gets its ack too.
    /// A restarted instance reads `alerts` and `alert_acks` at once, so an ack may come before
    /// its alert, and an acknowledged alert is then never held (neither in the history nor open
    /// past it). A console resuming there is still told of every ack of an alert it had, as on
    /// the instance that ran all along, whichever topic the restart read first; also once the
    /// acknowledged alerts have left the open queue.
    #[test]
    fn a_restarted_instance_tells_a_resuming_console_of_the_acks_whatever_it_read_first() {
        let config = HubConfig {
            history_max: 2,
            ..HubConfig::default()
        };
        let mut log = Log::default();
        let alerts: Vec<_> = (1..=4).map(live::alert).collect();
        let tenant = alerts[0].tenant_id.clone();
        let ch = channel(&format!("operator:{tenant}"));
        let recs: Vec<_> = alerts.iter().map(|a| log.record(a)).collect();
        // The console's cursor, from the instance before the restart.
        let mut before = hub(config.clone());
        before.apply(MessageType::Alert, &recs, now());
        let mut c = connect(&mut before, 1, "anna", 64);
        before.subscribe(1, &ch, None, None, now()).unwrap();
        let cursor = c.frames().last().unwrap()["cursor"]
            .as_str()
            .unwrap()
            .to_string();
        // While it is away: alert 0 (open past the history) and alert 2 (in it) acknowledged.
        let acks: Vec<_> = [0, 2]
            .iter()
            .map(|&i| {
                let mut ack = live::ack(i as u64);
                ack.alert_id = alerts[i].alert_id.clone();
                log.record(&ack)
            })
            .collect();
        for acks_first in [true, false] {
            let mut h = hub(config.clone());
            if acks_first {
                h.apply_acks(&acks);
                h.apply(MessageType::Alert, &recs, now());
            } else {
                h.apply(MessageType::Alert, &recs, now());
                h.apply_acks(&acks);
            }
            // Acknowledged alerts leave the open queue.
            h.tick(now() + 1);
            let mut c = connect(&mut h, 2, "anna", 64);
            h.subscribe(2, &ch, Some(&cursor), None, now()).unwrap();
            let frames = c.frames();
            let mut acked: Vec<&str> = frames
                .iter()
                .filter(|f| f["type"] == "alert_acked")
                .map(|f| f["alert_id"].as_str().unwrap())
                .collect();
            acked.sort_unstable();
            let mut want = [0, 2].map(|i| alerts[i].alert_id.as_str());
            want.sort_unstable();
            assert_eq!(acked, want, "acks first: {acks_first}: {frames:?}");
            let messages: Vec<&str> = frames
                .iter()
                .filter(|f| f["type"] == "message")
                .map(|f| f["id"].as_str().unwrap())
                .collect();
            assert_eq!(
                messages,
                [1, 3].map(|i| alerts[i].alert_id.as_str()),
                "acks first: {acks_first}: the open ones"
            );
        }
    }

    #[test]
    fn a_console_resuming_gets_the_ack_of_an_alert_older_than_the_history() {
        let mut h = hub(HubConfig {
            history_max: 2,
            ..HubConfig::default()
        });
        let mut log = Log::default();
        let alerts: Vec<_> = (1..=4).map(live::alert).collect();
        let tenant = alerts[0].tenant_id.clone();
        let ch = channel(&format!("operator:{tenant}"));
        let recs: Vec<_> = alerts.iter().map(|a| log.record(a)).collect();
        h.apply(MessageType::Alert, &recs, now());
        // History: 2 and 3; 0 and 1 open past it.
        assert_eq!(h.open_alerts(), 2);
        let mut c = connect(&mut h, 1, "anna", 64);
        h.subscribe(1, &ch, None, None, now()).unwrap();
        let cursor = c.frames().last().unwrap()["cursor"]
            .as_str()
            .unwrap()
            .to_string();
        h.unregister(1);
        let mut ack = live::ack(1);
        ack.alert_id = alerts[0].alert_id.clone();
        h.apply_acks(&[log.record(&ack)]);
        let mut c = connect(&mut h, 2, "anna", 64);
        h.subscribe(2, &ch, Some(&cursor), None, now()).unwrap();
        let frames = c.frames();
        let acked: Vec<&str> = frames
            .iter()
            .filter(|f| f["type"] == "alert_acked")
            .map(|f| f["alert_id"].as_str().unwrap())
            .collect();
        assert_eq!(acked, [alerts[0].alert_id.as_str()], "{frames:?}");
        let messages: Vec<&str> = frames
            .iter()
            .filter(|f| f["type"] == "message")
            .map(|f| f["id"].as_str().unwrap())
            .collect();
        assert_eq!(
            messages,
            [1, 2, 3].map(|i| alerts[i].alert_id.as_str()),
            "the open ones, not the acknowledged one"
        );
    }

    /// An alert that leaves the history (by count or age) unacknowledged is still its
    /// operators' on subscribe — an operator who reloads loses no open case — until it is
    /// acknowledged, ages past `open_alerts_max_age_ms`, or is pushed out by the tenant's bound.
    #[test]
    fn unacknowledged_alerts_outlive_the_history_for_operators() {
        let mut h = hub(HubConfig {
            history_max: 2,
            open_alerts_max: 3,
            ..HubConfig::default()
        });
        let mut log = Log::default();
        let alerts: Vec<_> = (1..=6).map(live::alert).collect();
        let tenant = alerts[0].tenant_id.clone();
        let ch = channel(&format!("operator:{tenant}"));
        let ids = |v: &[usize]| -> Vec<String> {
            v.iter().map(|i| alerts[*i].alert_id.clone()).collect()
        };
        // Alert 0 is acknowledged while still in the history.
        h.apply(MessageType::Alert, &[log.record(&alerts[0])], now());
        let mut ack = live::ack(1);
        ack.alert_id = alerts[0].alert_id.clone();
        h.apply_acks(&[log.record(&ack)]);
        let recs: Vec<_> = alerts[1..].iter().map(|a| log.record(a)).collect();
        h.apply(MessageType::Alert, &recs, now());
        // History: 4 and 5. Open past it: 1, 2, 3 (0 was acknowledged).
        assert_eq!(h.open_alerts(), 3);
        let subscribe = |h: &mut Hub, conn: ConnId| {
            let mut c = connect(h, conn, "ops", 64);
            h.subscribe(conn, &ch, None, None, now()).unwrap();
            let got = c.message_ids();
            h.unregister(conn);
            got
        };
        assert_eq!(subscribe(&mut h, 1), ids(&[1, 2, 3, 4, 5]));
        // A copy read again (a republished batch, a restart reading the open span) of an alert
        // acknowledged or open past the history is the same alert: not delivered, not open twice.
        let copies = [log.record(&alerts[0]), log.record(&alerts[1])];
        assert_eq!(h.apply(MessageType::Alert, &copies, now()).duplicates, 2);
        assert_eq!(h.open_alerts(), 3);
        assert_eq!(subscribe(&mut h, 9), ids(&[1, 2, 3, 4, 5]));
        // Acknowledged after it left the history: no longer delivered.
        let mut ack = live::ack(2);
        ack.alert_id = alerts[2].alert_id.clone();
        h.apply_acks(&[log.record(&ack)]);
        assert_eq!(subscribe(&mut h, 2), ids(&[1, 3, 4, 5]));
        // The tenant's bound: the oldest open ones go first.
        let more: Vec<_> = (7..=9).map(live::alert).collect();
        let recs: Vec<_> = more.iter().map(|a| log.record(a)).collect();
        h.apply(MessageType::Alert, &recs, now());
        let got = subscribe(&mut h, 3);
        assert_eq!(
            got.len(),
            3 + 2,
            "three open past the history, two in it: {got:?}"
        );
        assert!(!got.contains(&alerts[1].alert_id), "the oldest went");
        // Past their age: gone.
        h.apply(MessageType::Alert, &[], now() + 25 * 3600 * 1000);
        assert_eq!(h.open_alerts(), 0);
    }

    #[test]
    fn the_same_id_in_two_tenants_is_two_messages_and_an_ack_is_its_tenants_only() {
        let mut h = hub(HubConfig::default());
        let mut log = Log::default();
        let a = live::alert(1);
        let mut b = a.clone();
        b.tenant_id = "zeta".into();
        h.apply(MessageType::Alert, &[log.record(&a), log.record(&b)], now());
        let mut ack = live::ack(1);
        ack.tenant_id = a.tenant_id.clone();
        ack.alert_id = a.alert_id.clone();
        h.apply_acks(&[log.record(&ack)]);
        assert!(h.is_acked(&a.tenant_id, &a.alert_id));
        assert!(!h.is_acked("zeta", &a.alert_id));
        let mut ops = connect(&mut h, 1, "ops", 64);
        let s = h
            .subscribe(1, &channel("operator:zeta"), None, None, now())
            .unwrap();
        assert_eq!(
            s.replayed, 1,
            "zeta's alert is delivered and still unacknowledged"
        );
        assert_eq!(ops.message_ids(), vec![a.alert_id.clone()]);
    }

    #[test]
    fn expired_pushes_are_not_delivered() {
        let mut h = hub(HubConfig::default());
        let mut log = Log::default();
        let tenant = live::push(0).tenant_id;
        let mut a = connect(&mut h, 1, "a", 64);
        h.subscribe(
            1,
            &channel(&format!("player:{tenant}:a")),
            None,
            None,
            now(),
        )
        .unwrap();
        a.frames();
        let mut p = player_push(1, "a");
        p.expires_at = Some(Timestamp::from_millis(now() - 1));
        assert_eq!(
            h.apply(MessageType::Push, &[log.record(&p)], now()).expired,
            1
        );
        assert!(a.message_ids().is_empty());
    }

    #[test]
    fn garbage_on_the_topic_is_skipped() {
        let mut h = hub(HubConfig::default());
        let r = Record {
            topic: "pushes".into(),
            partition: 0,
            position: Position::Offset(0),
            key: "k".into(),
            value: vec![0xff, 0x00, 0x13],
            timestamp_ms: now(),
            headers: Default::default(),
        };
        assert_eq!(h.apply(MessageType::Push, &[r], now()).invalid, 1);
    }
}
