//! The engine on the bus: a consumer-group member reading `events` (with its co-partitioned
//! overflow topic) that feeds the [`Engine`] and publishes what it raises onto `alerts` and
//! `pushes`. Runs in `pitboss antifraud` and inside `pitboss up`.
//!
//! **Neither missed nor doubled across a crash.** Each poll is one batch, processed in a
//! canonical order (bus time, topic, partition, position), so its output depends only on the
//! batch's records and the engine's state. Before a batch's alerts and pushes are published, its
//! boundaries (per partition, the last position) are logged in the state file; every
//! `snapshot_interval` what changed in the engine's state since the last save (its units:
//! [`crate::Unit`]) is saved with the positions it covers, the log up to it is dropped, and only
//! then are those positions committed to the group. After a crash the engine is rebuilt from the
//! saved units, records up to its positions are skipped, and the logged batches are
//! rebuilt from the redelivered records with their logged boundaries — so the engine sees the
//! same records in the same order and raises the same messages, with the same ids. Messages of
//! the batch that was being published when the process died may reach the bus twice; their ids
//! are equal, and the processor and the gateway keep one per id.
//!
//! The engine's clock is the bus time of each record (when ingest published it), so a replay
//! evaluates exactly as the first run did; `detected_at` of an alert is the wall clock.
//!
//! A record that is not an event the engine can read goes to the dead-letter topic with the
//! reason in its key; its partition keeps flowing.
//!
//! **One engine per group.** Windows of keys other than the player (device, IP) span
//! partitions, and a partition's windows live in the memory of the engine that read it, so two
//! engines splitting a group would each see part of the stream. Where the bus reports a group's
//! members (Kafka), an engine names itself by its state file's instance id and stands by while
//! another engine is in the group, taking over once it has left; an engine that joins at the
//! same moment as another and finds it in the group at its first assignment leaves again
//! before reading anything and stands by.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pitboss_bus::{
    Bus, BusError, ConsumerConfig, OutRecord, Partition, Position, Publisher, Record, header,
};
use pitboss_model::Timestamp;
use pitboss_model::live::{Alert, LiveMessage, Push};
use pitboss_runtime::worker::{PartitionWork, join_retrying, run_partitioned};

use crate::state::{LoggedBatch, Positions, Saved, StateError, StateStore};
use crate::{AntifraudError, Changes, Engine, Output, RuleSet, Unit};

/// The shipped rule packs (`rules/` at the repository root), built into the binary.
pub fn shipped_sources() -> Vec<(String, String)> {
    [
        (
            "rules/fraud.toml",
            include_str!("../../../rules/fraud.toml"),
        ),
        (
            "rules/responsible_gambling.toml",
            include_str!("../../../rules/responsible_gambling.toml"),
        ),
        (
            "rules/scoring.toml",
            include_str!("../../../rules/scoring.toml"),
        ),
    ]
    .into_iter()
    .map(|(n, t)| (n.to_owned(), t.to_owned()))
    .collect()
}

/// Where the rules come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RulesSource {
    /// The packs built into the binary.
    Shipped,
    /// Every `*.toml` in a directory, reloaded when a file changes.
    Dir(PathBuf),
}

impl RulesSource {
    /// Loads the rule set (refused with file, line and reason).
    pub fn load(&self) -> Result<RuleSet, AntifraudError> {
        RuleSet::from_sources(&self.sources()?)
    }

    /// The `(file name, text)` of every file of the set.
    pub fn sources(&self) -> Result<Vec<(String, String)>, AntifraudError> {
        match self {
            RulesSource::Shipped => Ok(shipped_sources()),
            RulesSource::Dir(d) => RuleSet::read_dir(d),
        }
    }

    /// What identifies the files' current content (names, sizes and a hash of what they
    /// hold); `None` for the built-in packs, which never change. By content, not modification
    /// time: a deploy that keeps times (`cp -p`, `rsync -a`) of a file of the same size
    /// changed the rules without a reload.
    ///
    /// The files of the set as they are now, and what identifies them: read once, so that a
    /// set loaded from them is the very bytes the fingerprint describes (a file rewritten
    /// between a check and a load is not loaded unseen).
    fn read(&self) -> (Option<Fingerprint>, Result<Sources, AntifraudError>) {
        match self {
            RulesSource::Shipped => (None, Ok(shipped_sources())),
            RulesSource::Dir(d) => match RuleSet::read_dir(d) {
                Ok(files) => {
                    let mut fp: Fingerprint = files
                        .iter()
                        .map(|(name, text)| {
                            let h = twox_hash::XxHash3_128::oneshot(text.as_bytes()) as u64;
                            (PathBuf::from(name), text.len() as u64, h)
                        })
                        .collect();
                    fp.sort();
                    (Some(fp), Ok(files))
                }
                // Unreadable as a set (a file not UTF-8, the directory gone): identified by
                // its bytes, so that a change to it is seen.
                Err(e) => (self.raw_fingerprint(), Err(e)),
            },
        }
    }

    fn raw_fingerprint(&self) -> Option<Fingerprint> {
        let RulesSource::Dir(d) = self else {
            return None;
        };
        let mut out: Vec<_> = std::fs::read_dir(d)
            .ok()?
            .filter_map(Result::ok)
            // As loading reads them: an editor's hidden copy changes nothing.
            .filter(|e| {
                e.path().extension().is_some_and(|x| x == "toml")
                    && !e.file_name().to_string_lossy().starts_with('.')
                    && e.path().is_file()
            })
            .map(|e| {
                let text = std::fs::read(e.path()).unwrap_or_default();
                let h = twox_hash::XxHash3_128::oneshot(&text) as u64;
                (e.path(), text.len() as u64, h)
            })
            .collect();
        out.sort();
        Some(out)
    }
}

/// What identifies a rule directory's content: per file, its path, length and a hash.
type Fingerprint = Vec<(PathBuf, u64, u64)>;

/// The `(file name, text)` of a set's files.
type Sources = Vec<(String, String)>;

/// A check of the rule files made off the engine's thread ([`Work::maybe_reload`]).
#[derive(Debug)]
struct ReloadCheck {
    fingerprint: Option<Fingerprint>,
    /// The set, loaded when the check found the files changed and settled, or why not.
    loaded: Option<Result<RuleSet, String>>,
}

/// Settings of the streaming engine.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// The events topic; its companions (the hot-key overflow topic) in `consumer.companions`.
    pub topic: String,
    pub group: String,
    pub alerts_topic: String,
    pub pushes_topic: String,
    pub dead_letter_topic: String,
    pub rules: RulesSource,
    /// The state file (snapshot, the engine's units and the batch log).
    pub state_path: PathBuf,
    /// The compacted topic the state file is mirrored to (Kafka), so an engine that takes the
    /// group over elsewhere starts from this one's windows ([`crate::changelog`]); none: the
    /// state lives only in the file.
    pub state_topic: Option<String>,
    /// How often what changed in the engine's state is saved and the offsets committed.
    pub snapshot_interval: Duration,
    /// Units a save writes between two polls (a save of more units is spread over several,
    /// so the engine does not stop for all of it).
    pub save_slice_units: usize,
    /// How long a slice of a save may hold the engine between two polls: a slice writes as
    /// many units (at most `save_slice_units`) as the recent slices wrote in that time. While
    /// a save lasts and no records wait, slices follow each other; a batch that arrives waits
    /// for one slice at most. Zero: `save_slice_units` alone decides.
    pub save_slice_time: Duration,
    /// How often the rules directory is checked for changes.
    pub reload_interval: Duration,
    /// Records fetched per poll (one batch).
    pub poll_max: usize,
    /// The part of the key space this engine evaluates (`--shard i/N`, [`crate::shard`]).
    /// Split, the engine reads the forwards topic with the events, and its group, state file
    /// and state topic are named after its shard ([`StreamConfig::for_shard`]).
    pub shard: crate::Shard,
    /// Where hits for players another shard owns go (co-partitioned with the events topic).
    pub forwards_topic: String,
    pub consumer: ConsumerConfig,
    /// First and largest wait between publish retries.
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

impl StreamConfig {
    /// The settings of this engine's shard: one shard (the default) runs as configured; shard
    /// `i` of `N` (N > 1) joins `<group>-shard-i-of-N`, keeps `<state file>-shard-i-of-N.db`,
    /// mirrors it to `<state topic>_shard_i_of_N` and reads the forwards topic with the
    /// events, so shards never share a group or a state and a shard's standby takes over
    /// exactly its windows.
    pub fn for_shard(mut self) -> StreamConfig {
        if !self.shard.is_split() {
            return self;
        }
        self.group.push_str(&self.shard.suffix('-'));
        let stem = self
            .state_path
            .file_stem()
            .map_or_else(|| "antifraud".into(), |s| s.to_string_lossy().into_owned());
        let ext = self
            .state_path
            .extension()
            .map(|e| format!(".{}", e.to_string_lossy()))
            .unwrap_or_default();
        self.state_path
            .set_file_name(format!("{stem}{}{ext}", self.shard.suffix('-')));
        if let Some(t) = &mut self.state_topic {
            t.push_str(&self.shard.suffix('_'));
        }
        if !self.consumer.companions.contains(&self.forwards_topic) {
            self.consumer.companions.push(self.forwards_topic.clone());
        }
        self
    }
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            topic: "events".into(),
            group: "pitboss-antifraud".into(),
            alerts_topic: Alert::TOPIC.into(),
            pushes_topic: Push::TOPIC.into(),
            dead_letter_topic: "antifraud_dead_letter".into(),
            rules: RulesSource::Shipped,
            state_path: PathBuf::from("antifraud-state.db"),
            state_topic: None,
            snapshot_interval: Duration::from_secs(5),
            save_slice_units: 200,
            save_slice_time: Duration::from_millis(2),
            reload_interval: Duration::from_secs(2),
            poll_max: 5_000,
            shard: crate::Shard::ALL,
            forwards_topic: "antifraud_forwards".into(),
            consumer: ConsumerConfig {
                companions: vec!["events_overflow".into()],
                ..ConsumerConfig::default()
            },
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
        }
    }
}

/// What a run did (for logs and tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamStats {
    pub events: u64,
    pub alerts: u64,
    pub pushes: u64,
    pub dead_lettered: u64,
    /// Records skipped at start because the restored snapshot already held them.
    pub skipped: u64,
    /// Records between the restored state's positions and the first record read after them,
    /// in no window (`pitboss_antifraud_state_gap_records_total`).
    pub state_gap_records: u64,
    /// Logged batches replayed after a restart.
    pub replayed_batches: u64,
    pub snapshots: u64,
    /// Rule-set reloads that took effect, and those refused (the running set stayed).
    pub reloads: u64,
    pub reloads_refused: u64,
    /// Hits sent to, and received from, other shards ([`crate::shard`]).
    pub forwards_sent: u64,
    /// Events of other shards' players skipped undecoded (no rule here reads them).
    pub skipped_unowned: u64,
    pub forwards_received: u64,
}

/// Why the streaming engine stopped.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Rules(#[from] AntifraudError),
    #[error("reading the state changelog: {0}")]
    Changelog(#[from] crate::changelog::ReadError),
    /// Another engine was in the group at this one's first assignment: it leaves and stands by.
    #[error("another rules engine is in group {group}: {others}")]
    AnotherEngine { group: String, others: String },
    /// The engine was frozen or cut off past its session: it leaves without evaluating what
    /// it read, and stands by.
    #[error("this rules engine was paused for {paused:?}, past its session in group {group}")]
    PausedPastSession { group: String, paused: Duration },
}

/// Wraps a live-path message into its bus record with the four headers.
pub fn live_record<M: LiveMessage>(m: &M) -> OutRecord {
    let mut r = OutRecord::new(m.bus_key(), m.encode_proto())
        .with_header(header::TYPE, M::TYPE)
        .with_header(header::TENANT, m.tenant_id())
        .with_header(header::EVENT_TIME, m.event_time().as_millis().to_string());
    if let Some(t) = m.received_at() {
        r = r.with_header(header::RECEIVED_AT, t.as_millis().to_string());
    }
    r
}

type Tp = (Arc<str>, Partition);

/// How often a running engine checks that it is alone in its group.
const MEMBER_CHECK: Duration = Duration::from_secs(5);

/// How long the logged batches may wait for their records after a restart.
const REPLAY_PATIENCE: Duration = Duration::from_secs(30);

/// A save in progress.
struct Cycle {
    /// What it covers, as of when it began.
    positions: Positions,
    /// The engine-wide values (the last sweep, the join's newest bet and numbers) as of when it
    /// began, with its positions: the state a restart from them rebuilds (later values would
    /// count events after the positions — the join would leave out bets it held there).
    meta: Vec<u8>,
    processed: Positions,
    covers_seq: Option<u64>,
    full: bool,
    /// A full save: the units the file holds that the engine does not (rules no longer
    /// running, keys gone while no save tracked them), deleted by the last slice unless a
    /// slice wrote them meanwhile (a score that came back). A full save
    /// is written in slices like any other and only becomes full there: a restart in between
    /// finds the previous save's positions and units, some rewritten, and replays onto them.
    stale: HashSet<String>,
    /// Whether a slice of this save has been written (a full save marks the changelog first).
    begun: bool,
    /// Units still to write.
    pending: crate::Pending,
    /// Time spent writing so far, and what was written.
    work: Duration,
    units: usize,
    bytes: usize,
}

struct Work {
    config: StreamConfig,
    engine: Engine,
    store: StateStore,
    publisher: Arc<dyn Publisher>,
    /// Records at or before these positions are already in the engine's state.
    skip_upto: HashMap<Tp, Position>,
    /// Batches logged before the restart, still to be rebuilt and replayed.
    replay: VecDeque<LoggedBatch>,
    /// Records waiting for the batch they belong to (while replaying).
    buffer: HashMap<Tp, VecDeque<Record>>,
    /// Highest position received per partition.
    received: HashMap<Tp, Position>,
    /// Partitions the restored state covers whose first record of this run has not come yet
    /// (checked against the positions when it does: [`Work::first_record`]).
    unchecked: HashSet<Tp>,
    /// Last position processed per partition (what a snapshot covers).
    processed: Positions,
    next_seq: u64,
    /// Sequence of the last logged batch, and whether anything was processed since the
    /// last snapshot.
    last_seq: Option<u64>,
    dirty: bool,
    last_snapshot: Instant,
    /// When the state gauges were last refreshed.
    last_stats: Option<Instant>,
    /// The gauges' walk of the state in progress ([`Work::step_gauges`]).
    stats_walk: Option<crate::StatsWalk>,
    /// The save in progress.
    cycle: Option<Cycle>,
    /// What writing one unit of a save has cost lately (ser + SQLite), which sizes the slices
    /// to `save_slice_time`.
    unit_cost: Option<Duration>,
    durable: Vec<(Arc<str>, Partition, Position)>,
    fingerprint: Option<Fingerprint>,
    /// A changed fingerprint seen at the last check, loaded once a check sees it again: files
    /// caught mid-write (truncated, cut at a rule) are not loaded, only what stays.
    settling: Option<Option<Fingerprint>>,
    last_reload_check: Instant,
    /// The check of the rule files in progress, on a thread of its own at a lower priority:
    /// reading and hashing them, and loading a changed set (a set whose lists hold a million
    /// values takes about half a second), would stall the events behind it.
    reload_check: Option<std::thread::JoinHandle<ReloadCheck>>,
    /// When replaying began (the first assignment): past [`REPLAY_PATIENCE`], the logged
    /// batches are replayed with whatever arrived (a partition whose records never come cannot
    /// hold the rest back).
    replay_since: Instant,
    out: Output,
    stats: StreamStats,
    /// The bus, for the group's members.
    bus: Arc<dyn Bus>,
    /// How this engine names itself in the group (from the state file's instance id).
    client_id: String,
    /// The engine found itself alone in the group at an assignment: it keeps its partitions
    /// when another engine joins (that one leaves).
    incumbent: bool,
    /// The state file's instance id (the writer of the saves it marks).
    instance: String,
    /// The changelog the state file is mirrored to.
    changelog: Option<crate::changelog::Changelog>,
    /// Sequence of the last save (across every engine of the group, via the changelog).
    save_seq: u64,
    /// When the group's members were last checked while running, and since when another
    /// engine has been seen in it.
    members_checked: Instant,
    others_since: Option<Instant>,
    /// When the last turn of the loop (a poll and what followed) ended, and whether this
    /// turn's wait was checked already ([`Work::check_paused`]); how long the engine was
    /// paused, once it found it was.
    last_turn: Instant,
    turn_checked: bool,
    paused: Option<Duration>,
}

/// Runs the engine on `bus` until `shutdown` resolves; then saves its state, commits and
/// leaves the group.
pub async fn run(
    bus: Arc<dyn Bus>,
    config: StreamConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<StreamStats, StreamError> {
    let config = config.for_shard();
    // Bad rules and an unusable state file are refused before anything else.
    config.rules.load()?;
    // The counters a scrape should show (and an alert on their rate find) before their first
    // event.
    for name in [
        "pitboss_antifraud_events_total",
        "pitboss_antifraud_alerts_total",
        "pitboss_antifraud_pushes_total",
        "pitboss_antifraud_dead_letters_total",
        "pitboss_antifraud_late_triggers_total",
        "pitboss_antifraud_unpriced_events_total",
        "pitboss_antifraud_state_gap_records_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    for result in ["ok", "refused"] {
        metrics::counter!("pitboss_antifraud_reloads_total", "group" => config.group.clone(), "result" => result)
            .increment(0);
    }
    // One process per state file: a second one would write the same rows and, named alike,
    // not see the first as another engine.
    let lock = crate::state::lock(&config.state_path)?;
    let instance = StateStore::open(&config.state_path, &config.group)?.instance_id()?;
    let client_id = format!("pitboss-antifraud-{instance}");
    if let Some(topic) = &config.state_topic {
        bus.create_compacted_topic(topic).await?;
    }
    if config.shard.is_split() {
        ensure_forwards_topic(&*bus, &config.topic, &config.forwards_topic).await?;
    }
    let poll_max = config.poll_max;
    let mut stats = StreamStats::default();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut attempt = 0;
    loop {
        let free = stand_by(
            bus.clone(),
            config.group.clone(),
            client_id.clone(),
            attempt,
            shutdown.as_mut(),
        )
        .await;
        if !free {
            return Ok(stats);
        }
        // The state is read now, after any stand-by: the engine that ran the group until now
        // may have saved since this process started.
        let mut work = Work::start(bus.clone(), config.clone(), client_id.clone(), stats).await?;
        // Reading the state may have taken a while: another engine may have joined meanwhile.
        let others = other_engines(bus.clone(), config.group.clone(), client_id.clone()).await?;
        if others.is_some_and(|o| !o.is_empty()) {
            stats = work.stats;
            attempt += 1;
            continue;
        }
        let Some(mut consumer) = join_retrying(
            &*bus,
            &work.config.group,
            &work.config.topic,
            &work.config.consumer,
            shutdown.as_mut(),
        )
        .await?
        else {
            return Ok(work.stats);
        };
        match run_partitioned(&mut *consumer, &mut work, poll_max, shutdown.as_mut()).await {
            Err(StreamError::AnotherEngine { group, others }) => {
                // Nothing was read: leave, and wait for the group to empty.
                consumer.close().await?;
                tracing::warn!(%group, %others, "another rules engine is in the group with this one; leaving it and standing by");
                stats = work.stats;
                attempt += 1;
            }
            Err(StreamError::PausedPastSession { group, paused }) => {
                tracing::warn!(%group, ?paused, "this rules engine was paused past its session (frozen, or cut off from the broker): leaving the group without evaluating what it read, and standing by");
                consumer.close().await?;
                stats = work.stats;
                attempt += 1;
            }
            r => {
                r?;
                consumer.close().await?;
                drop(lock);
                return Ok(work.stats);
            }
        }
    }
}

impl Work {
    /// The engine as the state file (or, when the group's last save is another engine's, the
    /// changelog) left it.
    async fn start(
        bus: Arc<dyn Bus>,
        mut config: StreamConfig,
        client_id: String,
        stats: StreamStats,
    ) -> Result<Work, StreamError> {
        // The files read once: the fingerprint the reload checks start from is of the very
        // bytes loaded (a change made while the state is restored is a change).
        let (fingerprint, files) = config.rules.read();
        let set = RuleSet::from_sources(&files?)?;
        tracing::info!(
            rules = set.rules.len(),
            from = %match &config.rules {
                RulesSource::Shipped => "the shipped packs".to_owned(),
                RulesSource::Dir(d) => d.display().to_string(),
            },
            ids = ?set.rules.iter().map(|r| format!("{}@{}", r.id, r.version)).collect::<Vec<_>>(),
            "rule set loaded"
        );
        publish_lists(None, &set);
        let mut store = StateStore::open(&config.state_path, &config.group)?;
        let instance = store.instance_id()?;
        let local = store.mark()?;
        let mut save_seq = local.as_ref().map_or(0, |(s, _)| *s);
        let mut changelog = None;
        // Records to put in the changelog before anything else, and whether the first save
        // must be full (the file and the changelog may differ).
        let mut catch_up = Vec::new();
        let mut force_full = false;
        let mut next_seq = 1;
        if let Some(topic) = &config.state_topic {
            let mut log = crate::changelog::Changelog::new(
                topic.clone(),
                config.group.clone(),
                instance.clone(),
            );
            let local_batches: Vec<u64> = store.batches()?.iter().map(|b| b.seq).collect();
            let read = crate::changelog::read(&bus, topic, &config.group).await?;
            let (image, chunked) = read.unwrap_or_default();
            if image.skipped > 0 {
                tracing::warn!(topic = %topic, skipped = image.skipped, "changelog records that could not be read were left out");
            }
            // The file is as new as the changelog when this engine wrote the changelog's last
            // save or batch (the file is written first); another engine's is newer.
            let take = image.last_writer.as_ref().is_some_and(|w| *w != instance);
            if let Some(m) = &image.mark {
                save_seq = save_seq.max(m.save_seq);
                next_seq = next_seq.max(m.covers_seq.map_or(1, |c| c + 1));
            }
            if let Some(last) = image.batches.keys().next_back() {
                next_seq = next_seq.max(last + 1);
            }
            // A full save cut short in the changelog is finished by a full save.
            force_full = image.full_open;
            if take {
                store.import(&image)?;
                tracing::info!(
                    topic = %topic,
                    units = image.units.len(),
                    batches = image.batches.len(),
                    save = image.mark.as_ref().map_or(0, |m| m.save_seq),
                    "state taken from the changelog (the group's last save or batch was another engine's)"
                );
                log.resume(chunked, image.batches.keys().copied().collect());
            } else {
                // This file is the newer: the changelog gets what it may lack — this file's
                // logged batches, none of another run's, and a full save.
                let same = match (&image.mark, &local) {
                    (Some(m), Some((seq, w))) => m.save_seq == *seq && m.writer == *w,
                    (None, None) => true,
                    _ => false,
                };
                force_full |= !same;
                log.resume(chunked, local_batches.clone());
                let stale: Vec<u64> = image
                    .batches
                    .keys()
                    .filter(|s| !local_batches.contains(s))
                    .copied()
                    .collect();
                catch_up.extend(log.forget_batches(&stale));
                for b in store.batches()? {
                    catch_up.push(log.batch(&b)?);
                }
            }
            changelog = Some(log);
        }
        let Restored {
            mut engine,
            skip_upto,
            replay,
            units,
        } = restore(set, &store)?;
        // Units of state this start took from the file (0: it started with empty windows).
        metrics::gauge!("pitboss_antifraud_restored_units", "group" => config.group.clone())
            .set(units as f64);
        engine.set_shard(config.shard);
        if force_full {
            // Everything the file holds goes to the changelog with the first save.
            engine.track_changes(true);
        }
        // After the logged batches and any the changelog knows of — or, starting from state
        // that could not be read (its batches not replayed), after any left in the log, so the
        // first save drops them too rather than a new batch taking the sequence of a stale
        // one.
        next_seq = next_seq.max(store.batches()?.last().map_or(1, |b| b.seq + 1));
        if !replay.is_empty() {
            tracing::info!(
                batches = replay.len(),
                "replaying the batches logged before the restart"
            );
        }
        config.consumer.client_id = Some(client_id.clone());
        let unchecked = skip_upto.keys().cloned().collect();
        let mut work = Work {
            fingerprint,
            settling: None,
            engine,
            store,
            publisher: bus.publisher(),
            skip_upto,
            replay,
            buffer: HashMap::new(),
            received: HashMap::new(),
            unchecked,
            processed: Positions::new(),
            next_seq,
            last_seq: None,
            dirty: force_full,
            last_snapshot: Instant::now(),
            last_stats: None,
            stats_walk: None,
            cycle: None,
            unit_cost: None,
            durable: Vec::new(),
            last_reload_check: Instant::now(),
            reload_check: None,
            replay_since: Instant::now(),
            out: Output::default(),
            stats,
            bus,
            client_id,
            incumbent: false,
            instance,
            changelog,
            save_seq,
            members_checked: Instant::now(),
            others_since: None,
            last_turn: Instant::now(),
            turn_checked: false,
            paused: None,
            config,
        };
        if !catch_up.is_empty() {
            work.mirror(catch_up).await?;
        }
        Ok(work)
    }

    /// Whether a record is an event of a player another shard owns, of a type no rule this
    /// engine evaluates for such players reads — told from its headers and key (`tenant:player`,
    /// as ingest publishes events) without decoding it. A record that does not say is decoded.
    fn unowned_and_unread(&self, r: &Record) -> bool {
        let (Some(t), Some(tenant)) = (
            r.headers
                .get_str(header::TYPE)
                .and_then(pitboss_model::EventType::parse),
            r.headers.get_str(header::TENANT),
        ) else {
            return false;
        };
        let Some(player) = r.key.strip_prefix(tenant).and_then(|k| k.strip_prefix(':')) else {
            return false;
        };
        !self.engine.reads_unowned(t) && !self.engine.shard().owns(tenant, player)
    }

    /// Whether this engine dead-letters a record it cannot use ([`dead_letters_on`]).
    fn dead_letters_here(&self, r: &Record, event: Option<&pitboss_model::Event>) -> bool {
        dead_letters_on(self.config.shard, &r.key, event)
    }

    /// Every 5 s while running: another engine that stays in the group for 10 s is not one
    /// joining (those leave at their first assignment) but an engine that ran the group while
    /// this one was cut off from it (a session lost without leaving). Both see the other; the
    /// one whose name sorts last leaves and stands by, so one engine runs the group again.
    async fn check_alone(&mut self) -> Result<(), StreamError> {
        if !self.incumbent || self.members_checked.elapsed() < MEMBER_CHECK {
            return Ok(());
        }
        self.members_checked = Instant::now();
        let others = match other_engines(
            self.bus.clone(),
            self.config.group.clone(),
            self.client_id.clone(),
        )
        .await
        {
            Ok(Some(o)) => o,
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "could not list the group's members");
                return Ok(());
            }
        };
        if others.is_empty() {
            self.others_since = None;
            return Ok(());
        }
        let since = *self.others_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= 2 * MEMBER_CHECK
            && others.iter().any(|o| o.client_id < self.client_id)
        {
            self.snapshot().await?;
            self.incumbent = false;
            return Err(StreamError::AnotherEngine {
                group: self.config.group.clone(),
                others: describe(&others),
            });
        }
        Ok(())
    }

    /// A poll that came back later than the session timeout after the last turn (records or
    /// not: the first poll after a wake may bring none): the process was frozen, or its commit
    /// hung on a broker it was cut off from, long enough for the group to drop it, and a
    /// stand-by may have taken over and evaluated the records this engine would read next —
    /// evaluating them here would raise their alerts a second time, and a save would put an
    /// older state after the new owner's. Neither: it leaves and stands by (the group's owner,
    /// or this engine once the group is free, goes on from the last commit and the newest
    /// save). Checked once a turn, before what the turn evaluates (its time does not count).
    fn check_paused(&mut self) -> Result<(), StreamError> {
        if self.paused.is_none() && !std::mem::replace(&mut self.turn_checked, true) {
            let waited = self.last_turn.elapsed();
            if self.incumbent && waited > self.config.consumer.session_timeout {
                self.paused = Some(waited);
            }
        }
        match self.paused {
            Some(paused) => {
                self.incumbent = false;
                Err(StreamError::PausedPastSession {
                    group: self.config.group.clone(),
                    paused,
                })
            }
            None => Ok(()),
        }
    }

    /// Publishes records to the changelog (in order, waiting until durable).
    async fn mirror(&mut self, records: Vec<OutRecord>) -> Result<(), StreamError> {
        let Some(topic) = self.changelog.as_ref().map(|l| l.topic.clone()) else {
            return Ok(());
        };
        let backoff = (self.config.retry_initial, self.config.retry_max);
        let publisher = self.publisher.clone();
        publish(&publisher, &topic, records, backoff).await
    }
}

/// Other engines in the group (members with another name), as the bus reports them; `None`
/// when it cannot tell.
async fn other_engines(
    bus: Arc<dyn Bus>,
    group: String,
    client_id: String,
) -> Result<Option<Vec<pitboss_bus::GroupMember>>, BusError> {
    Ok(bus
        .group_members(&group)
        .await?
        .map(|m| m.into_iter().filter(|m| m.client_id != client_id).collect()))
}

/// The other engines, each named once (a killed engine and its restart share a name).
fn describe(others: &[pitboss_bus::GroupMember]) -> String {
    let mut names: Vec<String> = others
        .iter()
        .map(|m| format!("{} at {}", m.client_id, m.host))
        .collect();
    names.sort_unstable();
    names.dedup();
    names.join(", ")
}

/// Waits while another engine is in the group (checking every 1–2 s); false when `shutdown`
/// came first. A member with this engine's own name is this engine's previous run (its state
/// file), gone without leaving: the group drops it when its session times out.
async fn stand_by(
    bus: Arc<dyn Bus>,
    group: String,
    client_id: String,
    attempt: u32,
    mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> bool {
    let mut standing = false;
    // After leaving a group it met another engine in, wait before looking: 1–2 s, then up to
    // 8–16 s, different for each engine, so two that left together do not join in step again.
    if attempt > 0 {
        tokio::select! {
            () = shutdown.as_mut() => return false,
            () = tokio::time::sleep(jittered(attempt)) => {}
        }
    }
    loop {
        match other_engines(bus.clone(), group.clone(), client_id.clone()).await {
            Ok(Some(others)) if !others.is_empty() => {
                if !standing {
                    tracing::info!(%group, others = %describe(&others), "another rules engine is active in the group: standing by until it leaves");
                    metrics::gauge!("pitboss_antifraud_standby", "group" => group.clone()).set(1.0);
                    standing = true;
                }
            }
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(error = %e, %group, "could not list the group's members; retrying");
            }
        }
        tokio::select! {
            () = shutdown.as_mut() => return false,
            () = tokio::time::sleep(jittered(1)) => {}
        }
    }
    // Said whenever this engine had stood aside (for another, or after meeting one), so the
    // logs always show which engine took the group.
    if standing || attempt > 0 {
        tracing::info!(%group, "the group is free: taking over");
    }
    metrics::gauge!("pitboss_antifraud_standby", "group" => group.clone()).set(0.0);
    true
}

/// `2^(attempt-1)` to twice that seconds (capped at 8–16 s), different for each process and
/// call.
fn jittered(attempt: u32) -> Duration {
    let base = 1_000u64 << attempt.saturating_sub(1).min(3);
    let jitter = u64::from(std::process::id()).wrapping_mul(2_654_435_761)
        ^ (Timestamp::now().as_millis() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    Duration::from_millis(base + (jitter >> 7) % base)
}

/// The engine as the state file left it: what it holds, the positions it covers, the batches
/// to replay.
pub(crate) struct Restored {
    pub(crate) engine: Engine,
    skip_upto: HashMap<Tp, Position>,
    replay: VecDeque<LoggedBatch>,
    /// Units of state taken from the file (a whole-engine blob: the units it would be).
    units: usize,
}

/// Rebuilds the engine from the state file, tracking its changes so each save writes only what
/// changed since the one before:
///
/// - no snapshot: empty windows, the batches logged since the start replayed, and the first
///   save writes the whole state;
/// - a snapshot of units: every stored unit loaded, then the engine-wide values. When a unit
///   could not be loaded because its rule is not running any more (removed, or another version
///   or window definition) the next save is full — it rewrites every unit, which drops those —
///   otherwise the state as loaded counts as saved and the next save writes only changes;
/// - a whole-engine blob (a file written before units): [`Engine::restore`], and the next save
///   is full, which turns the file into units.
///
/// State that cannot be read (a unit or blob of another format, corrupt bytes) is dropped: the
/// engine starts with empty windows, as before any snapshot, and its first save is full. A
/// failing state file (I/O) is an error.
pub(crate) fn restore(set: RuleSet, store: &StateStore) -> Result<Restored, StreamError> {
    let cold = |set: RuleSet| {
        let mut engine = Engine::new(set);
        engine.track_changes(true);
        Restored {
            engine,
            skip_upto: HashMap::new(),
            replay: VecDeque::new(),
            units: 0,
        }
    };
    let Some(s) = store.snapshot()? else {
        // Never saved, but batches may have been evaluated and their output published (a
        // crash before the first save completes): the group has committed nothing either, so
        // their records come again from where the last run began, and are replayed in the
        // logged batches (re-read in other batches, a key shared across partitions could read
        // them in another order and raise its alert on another event: a second alert).
        let mut restored = cold(set);
        restored.replay = store.batches()?.into();
        return Ok(restored);
    };
    let (engine, units) = match s.engine {
        Saved::Whole(bytes) => match Engine::restore(set.clone(), &bytes) {
            Ok((mut engine, report)) => {
                tracing::info!(
                    kept = report.kept.len(),
                    fresh = ?report.fresh,
                    removed = ?report.removed,
                    taken_at_ms = s.taken_at_ms,
                    "antifraud state restored from a whole-engine snapshot; the next save writes it as units"
                );
                engine.track_changes(true);
                // Its windows' keys, bets and scored players: what units would have held.
                let st = engine.stats();
                (engine, st.keys + st.joined_bets + st.scored_players)
            }
            Err(e) => {
                tracing::warn!(error = %e, "antifraud snapshot not restored; starting with empty windows");
                return Ok(cold(set));
            }
        },
        Saved::Units { meta } => match load_units(set.clone(), store, &meta) {
            Ok((engine, loaded, skipped)) => {
                tracing::info!(
                    loaded,
                    skipped,
                    taken_at_ms = s.taken_at_ms,
                    "antifraud state restored{}",
                    if skipped > 0 {
                        "; units of rules no longer running are dropped at the next save"
                    } else {
                        ""
                    }
                );
                (engine, loaded)
            }
            Err(StreamError::Rules(e)) => {
                tracing::warn!(error = %e, "antifraud state not restored; starting with empty windows");
                let mut fresh = cold(set);
                // The file keeps that save's values until this engine's first save completes:
                // bets numbered after its join's numbers are never taken for what it held.
                fresh.engine.number_bets_after(&meta);
                return Ok(fresh);
            }
            Err(e) => return Err(e),
        },
    };
    Ok(Restored {
        engine,
        skip_upto: s.positions.into_iter().collect(),
        replay: store.batches()?.into(),
        units,
    })
}

/// An engine running `set` with every stored unit it can take and the engine-wide values
/// `meta`, tracking changes; with how many units were loaded and skipped.
fn load_units(
    set: RuleSet,
    store: &StateStore,
    meta: &[u8],
) -> Result<(Engine, usize, usize), StreamError> {
    let mut engine = Engine::new(set);
    let (mut loaded, mut skipped) = (0usize, 0usize);
    store.for_each_unit(|name, bytes| {
        match Unit::parse(name) {
            Some(unit) if engine.load_unit(&unit, bytes)? => loaded += 1,
            _ => skipped += 1,
        }
        Ok::<_, StreamError>(())
    })?;
    engine.set_meta(meta)?;
    if skipped > 0 {
        engine.track_changes(true);
    } else {
        engine.track_changes_from_here();
    }
    Ok((engine, loaded, skipped))
}

impl Work {
    /// Takes records in: skips what the snapshot holds, then either processes them as a new
    /// batch or, while logged batches remain, files them for those.
    async fn take(&mut self, records: Vec<Record>) -> Result<(), StreamError> {
        let mut fresh = Vec::with_capacity(records.len());
        for r in records {
            let tp = (r.topic.clone(), r.partition);
            // Once every covered partition has shown its first record, one test a record.
            if !self.unchecked.is_empty() && self.unchecked.remove(&tp) {
                self.first_record(&tp, &r.position);
            }
            if self.skip_upto.get(&tp).is_some_and(|s| r.position <= *s) {
                self.stats.skipped += 1;
                continue;
            }
            self.received.insert(tp, r.position.clone());
            fresh.push(r);
        }
        if self.replay.is_empty() {
            if !fresh.is_empty() {
                self.batch(fresh, None).await?;
            }
            return Ok(());
        }
        for r in fresh {
            self.buffer
                .entry((r.topic.clone(), r.partition))
                .or_default()
                .push_back(r);
        }
        self.replay_ready(false).await
    }

    /// The first record of a partition in this run, after the state restored covers it up to
    /// an offset: when it comes later than the next one, the records in between are in no
    /// window — the group committed past the state (a state file older than the group's
    /// commits, a warm start over a gap) or the bus no longer holds them (retention). Said, and
    /// counted (`pitboss_antifraud_state_gap_records_total`).
    fn first_record(&mut self, tp: &Tp, at: &Position) {
        let (Some(Position::Offset(covered)), Position::Offset(first)) =
            (self.skip_upto.get(tp), at)
        else {
            return;
        };
        let missing = first.saturating_sub(covered.saturating_add(1));
        if missing > 0 {
            tracing::warn!(
                topic = %tp.0,
                partition = tp.1,
                covered,
                first,
                missing,
                "the engine's state covers this partition up to an offset, and the first record \
                 read comes later: the records in between are in no window (the group \
                 committed past the state, or the bus no longer holds them)"
            );
            metrics::counter!("pitboss_antifraud_state_gap_records_total")
                .increment(u64::try_from(missing).unwrap_or(0));
            self.stats.state_gap_records += u64::try_from(missing).unwrap_or(0);
        }
    }

    /// Replays every logged batch whose records have all arrived (`force`: whatever arrived).
    /// When none remain, what is left in the buffer is a new batch.
    async fn replay_ready(&mut self, force: bool) -> Result<(), StreamError> {
        while let Some(b) = self.replay.front() {
            let complete = b
                .ends
                .iter()
                .all(|(tp, end)| self.received.get(tp).is_some_and(|got| got >= end));
            if !complete && !force {
                return Ok(());
            }
            let Some(b) = self.replay.pop_front() else {
                break;
            };
            let mut records = Vec::new();
            for (tp, end) in &b.ends {
                if let Some(q) = self.buffer.get_mut(tp) {
                    while q.front().is_some_and(|r| r.position <= *end) {
                        records.extend(q.pop_front());
                    }
                }
            }
            self.stats.replayed_batches += 1;
            metrics::counter!("pitboss_antifraud_replayed_batches_total", "group" => self.config.group.clone())
                .increment(1);
            self.batch(records, Some(b)).await?;
        }
        let rest: Vec<Record> = self.buffer.drain().flat_map(|(_, q)| q).collect();
        if !rest.is_empty() {
            self.batch(rest, None).await?;
        }
        Ok(())
    }

    /// Processes one batch in canonical order, logs it (unless it is a logged one being
    /// replayed), publishes what it raised, and remembers where each partition got to.
    async fn batch(
        &mut self,
        records: Vec<Record>,
        logged: Option<LoggedBatch>,
    ) -> Result<(), StreamError> {
        let records = canonical_order(records);
        let mut mirrored = None;
        let seq = match logged {
            Some(b) => b.seq,
            None => {
                if records.is_empty() {
                    return Ok(());
                }
                let mut ends = Positions::new();
                for r in &records {
                    let e = ends
                        .entry((r.topic.clone(), r.partition))
                        .or_insert_with(|| r.position.clone());
                    if r.position > *e {
                        *e = r.position.clone();
                    }
                }
                let b = LoggedBatch {
                    seq: self.next_seq,
                    logged_at_ms: Timestamp::now().as_millis(),
                    ends,
                };
                self.next_seq += 1;
                self.store.log_batch(&b)?;
                // Durable in the changelog too before the batch's output is published: sent
                // now, waited for after the evaluation.
                if let Some(log) = &mut self.changelog {
                    let record = log.batch(&b)?;
                    let (publisher, topic) = (self.publisher.clone(), log.topic.clone());
                    let backoff = (self.config.retry_initial, self.config.retry_max);
                    mirrored = Some(tokio::spawn(async move {
                        publish(&publisher, &topic, vec![record], backoff).await
                    }));
                }
                b.seq
            }
        };
        self.out.clear();
        let mut dead = Vec::new();
        let split = self.config.shard.is_split();
        let mut received = 0u64;
        // The bus time of the event behind each alert and push raised here.
        let mut raised_at: Vec<i64> = Vec::new();
        for r in &records {
            if split && *r.topic == *self.config.forwards_topic {
                match crate::Forward::decode(&r.value) {
                    Ok(f) => {
                        received += 1;
                        self.engine.apply_forward(f, &mut self.out);
                    }
                    // One shard dead-letters it: the one its key's player belongs to.
                    Err(reason) if self.dead_letters_here(r, None) => {
                        dead.push(dead_letter(r, &reason))
                    }
                    Err(_) => {}
                }
                continue;
            }
            if split && self.unowned_and_unread(r) {
                // Another shard's player, and nothing here reads its type: not even decoded.
                self.stats.events += 1;
                self.stats.skipped_unowned += 1;
                continue;
            }
            let (reason, event) = match pitboss_model::decode_proto(&r.value) {
                Ok(event) => {
                    self.stats.events += 1;
                    let before = self.out.alerts.len() + self.out.pushes.len();
                    let done = self.engine.process(
                        &event,
                        Timestamp::from_millis(r.timestamp_ms),
                        &mut self.out,
                    );
                    let raised = self.out.alerts.len() + self.out.pushes.len() - before;
                    raised_at.extend(std::iter::repeat_n(r.timestamp_ms, raised));
                    match done {
                        Ok(()) => (None, None),
                        Err(e) => (Some(e.to_string()), Some(event)),
                    }
                }
                Err(v) => (Some(format!("undecodable event: {v}")), None),
            };
            if let Some(reason) = reason
                && self.dead_letters_here(r, event.as_ref())
            {
                dead.push(dead_letter(r, &reason));
            }
        }
        let detected = Timestamp::now();
        if let Some(m) = mirrored {
            m.await
                .map_err(|e| BusError::Unavailable(format!("changelog publish: {e}")))??;
        }
        let (alerts, pushes) = output_records(&mut self.out, detected);
        let forwards = forward_records(&mut self.out);
        let (na, np, nd) = (alerts.len() as u64, pushes.len() as u64, dead.len() as u64);
        let nf = forwards.len() as u64;
        let alerts_topic = self.config.alerts_topic.clone();
        let pushes_topic = self.config.pushes_topic.clone();
        let dead_topic = self.config.dead_letter_topic.clone();
        let forwards_topic = self.config.forwards_topic.clone();
        let backoff = (self.config.retry_initial, self.config.retry_max);
        tokio::try_join!(
            publish(&self.publisher, &alerts_topic, alerts, backoff),
            publish(&self.publisher, &pushes_topic, pushes, backoff),
            publish(&self.publisher, &dead_topic, dead, backoff),
            publish(&self.publisher, &forwards_topic, forwards, backoff),
        )?;
        let published = Timestamp::now().as_millis();
        for at in raised_at {
            metrics::histogram!("pitboss_antifraud_bus_to_alert_seconds")
                .record((published - at).max(0) as f64 / 1000.0);
        }
        if split {
            metrics::counter!("pitboss_antifraud_forwards_sent_total").increment(nf);
            metrics::counter!("pitboss_antifraud_forwards_received_total").increment(received);
        }
        self.stats.forwards_sent += nf;
        self.stats.forwards_received += received;
        if let Some(first) = self.out.alerts.first() {
            metrics::histogram!("pitboss_antifraud_event_to_alert_seconds").record(
                (detected.as_millis() - first.received_at.as_millis()).max(0) as f64 / 1000.0,
            );
        }
        metrics::counter!("pitboss_antifraud_events_total").increment(records.len() as u64);
        metrics::counter!("pitboss_antifraud_alerts_total").increment(na);
        metrics::counter!("pitboss_antifraud_pushes_total").increment(np);
        metrics::counter!("pitboss_antifraud_dead_letters_total").increment(nd);
        self.stats.alerts += na;
        self.stats.pushes += np;
        self.stats.dead_lettered += nd;
        for r in records {
            let tp = (r.topic, r.partition);
            let e = self
                .processed
                .entry(tp)
                .or_insert_with(|| r.position.clone());
            if r.position > *e {
                *e = r.position;
            }
        }
        self.last_seq = Some(seq);
        self.dirty = true;
        Ok(())
    }

    /// Saves everything processed so far: finishes the save in progress, then saves what
    /// changed since it began (on shutdown and when partitions are revoked).
    async fn snapshot(&mut self) -> Result<(), StreamError> {
        while self.cycle.is_some() {
            self.write_slice().await?;
        }
        self.begin_save().await?;
        while self.cycle.is_some() {
            self.write_slice().await?;
        }
        Ok(())
    }

    /// Begins a save of what changed since the last one, covering the positions processed
    /// now. A full save (the first, or after a reload that moved, dropped or refolded rules)
    /// is written at once; otherwise the
    /// changed units are written in slices (`save_slice_units`) between batches
    /// ([`Work::write_slice`]), so the engine does not stop for the whole save.
    async fn begin_save(&mut self) -> Result<(), StreamError> {
        self.last_snapshot = Instant::now();
        if !self.dirty {
            return Ok(());
        }
        self.dirty = false;
        // Positions restored at start and not moved since stay covered too.
        let mut positions = self.processed.clone();
        for (tp, p) in &self.skip_upto {
            positions.entry(tp.clone()).or_insert_with(|| p.clone());
        }
        // Taken units are gone from the engine's tracker: if the save fails the run stops,
        // and the next one restores from what the file holds.
        let (full, units) = self.engine.take_pending();
        let stale = if full {
            let keep: HashSet<String> = units.names().collect();
            self.store
                .unit_names()?
                .into_iter()
                .filter(|n| !keep.contains(n))
                .collect()
        } else {
            HashSet::new()
        };
        self.cycle = Some(Cycle {
            positions,
            meta: self.engine.meta()?,
            processed: self.processed.clone(),
            covers_seq: self.last_seq,
            full,
            stale,
            begun: false,
            pending: units,
            work: Duration::ZERO,
            units: 0,
            bytes: 0,
        });
        self.write_slice().await
    }

    /// Writes the next slice of the save in progress (as many units as `save_slice_time`
    /// allows, at most `save_slice_units`); the last slice writes the positions the save
    /// covers, drops the batch log up to them (a full save: also the units the engine does not
    /// hold), and hands them to the loop to commit. Units written in slices may already hold
    /// events after those positions, which a restart replays onto them harmlessly
    /// (docs/rules.md, "Across crashes").
    async fn write_slice(&mut self) -> Result<(), StreamError> {
        let Some(cycle) = self.cycle.as_mut() else {
            return Ok(());
        };
        let started = Instant::now();
        let most = self.config.save_slice_units.max(1);
        let take = match self.unit_cost {
            Some(cost) if !self.config.save_slice_time.is_zero() => {
                let fit = self.config.save_slice_time.as_nanos() / cost.as_nanos().max(1);
                usize::try_from(fit).unwrap_or(most).clamp(1, most)
            }
            _ => most,
        }
        .min(cycle.pending.len());
        let slice = self.engine.next_slice(&mut cycle.pending, take);
        let units = self.engine.changes_of(slice)?;
        if !cycle.stale.is_empty() {
            for c in &units {
                cycle.stale.remove(&c.unit.name());
            }
        }
        // The changelog's full save begins with its first slice: units not written again
        // before its mark are dropped when the mark arrives.
        let marks_full = cycle.full && !cycle.begun;
        cycle.begun = true;
        if !cycle.pending.is_empty() {
            let saved = self.store.save_units(&units)?;
            cycle.units += saved.upserted + saved.deleted;
            cycle.bytes += saved.bytes;
            let spent = started.elapsed();
            cycle.work += spent;
            if let Some(n) = u32::try_from(units.len()).ok().filter(|n| *n > 0) {
                let sample = spent / n;
                self.unit_cost = Some(match self.unit_cost {
                    Some(c) => (c * 3 + sample) / 4,
                    None => sample,
                });
            }
            if let Some(log) = &mut self.changelog {
                let records = log.units(marks_full, &units, self.save_seq + 1);
                self.mirror(records).await?;
            }
            return Ok(());
        }
        let Some(cycle) = self.cycle.take() else {
            return Ok(());
        };
        let changes = Changes {
            full: false,
            units,
            meta: cycle.meta,
        };
        let taken_at_ms = Timestamp::now().as_millis();
        self.save_seq += 1;
        self.store.mark_next_save(self.save_seq, &self.instance);
        let stale: Vec<String> = cycle.stale.into_iter().collect();
        let mut saved = self.store.save_dropping(
            taken_at_ms,
            &cycle.positions,
            &changes,
            &stale,
            cycle.covers_seq,
        )?;
        saved.full = cycle.full;
        // The changelog holds the save before its positions are committed to the group.
        if let Some(log) = &mut self.changelog {
            let mut records = log.units(marks_full, &changes.units, self.save_seq);
            records.extend(log.finish(&crate::changelog::SaveMark {
                save_seq: self.save_seq,
                writer: self.instance.clone(),
                taken_at_ms,
                positions: cycle.positions.clone(),
                meta: changes.meta.clone(),
                covers_seq: cycle.covers_seq,
            })?);
            self.mirror(records).await?;
        }
        metrics::histogram!("pitboss_antifraud_snapshot_seconds")
            .record((cycle.work + started.elapsed()).as_secs_f64());
        // Labelled by group: split engines in one process (`pitboss up --rules-shards`) each
        // have their own.
        let group = self.config.group.clone();
        metrics::gauge!("pitboss_antifraud_snapshot_bytes", "group" => group.clone())
            .set((cycle.bytes + saved.bytes) as f64);
        metrics::gauge!("pitboss_antifraud_snapshot_units", "group" => group.clone())
            .set((cycle.units + saved.upserted + saved.deleted) as f64);
        if saved.full {
            tracing::info!(
                units = saved.upserted,
                bytes = saved.bytes,
                "antifraud state saved whole"
            );
        }
        self.durable
            .extend(cycle.processed.into_iter().map(|((t, p), pos)| (t, p, pos)));
        self.stats.snapshots += 1;
        Ok(())
    }

    /// Refreshes the state gauges once a minute. Counting walks every key (tens of
    /// milliseconds on a large state, on the engine's thread), so the walk is spread over the
    /// loop's turns, 16 map parts (a 16th of a rule's keys) a turn.
    fn step_gauges(&mut self) {
        let walk = match &mut self.stats_walk {
            Some(w) => w,
            None if self
                .last_stats
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) =>
            {
                self.last_stats = Some(Instant::now());
                self.stats_walk.insert(crate::StatsWalk::default())
            }
            None => return,
        };
        let Some(s) = self.engine.stats_step(walk, 16) else {
            return;
        };
        self.stats_walk = None;
        let group = self.config.group.clone();
        metrics::gauge!("pitboss_antifraud_window_entries", "group" => group.clone())
            .set(s.entries as f64);
        metrics::gauge!("pitboss_antifraud_window_buckets", "group" => group.clone())
            .set(s.buckets as f64);
        metrics::gauge!("pitboss_antifraud_window_keys", "group" => group.clone())
            .set(s.keys as f64);
        metrics::gauge!("pitboss_antifraud_state_bytes", "group" => group).set(s.bytes as f64);
    }

    /// Every `reload_interval`, checks the rule files off the engine's thread; a turn after
    /// the check is done, applies what it found: a set changed and then unchanged for one more
    /// check (files caught mid-write are not loaded, only what stays) is swapped in.
    fn maybe_reload(&mut self) {
        if let Some(task) = &self.reload_check {
            if !task.is_finished() {
                return;
            }
            let Some(task) = self.reload_check.take() else {
                return;
            };
            match task.join() {
                Ok(check) => self.apply_reload_check(check),
                // Reading the files panicked (a load that panics is caught in the check and
                // refused with the fingerprint it read): the next check tries again.
                Err(_) => tracing::error!("a check of the rule files panicked"),
            }
            return;
        }
        if self.last_reload_check.elapsed() < self.config.reload_interval {
            return;
        }
        self.last_reload_check = Instant::now();
        let source = self.config.rules.clone();
        let (before, settling) = (self.fingerprint.clone(), self.settling.clone());
        let spawned = std::thread::Builder::new()
            .name("pitboss-rules-check".into())
            .spawn(move || {
                // Behind the events: on a busy machine the check waits, not the engine.
                #[cfg(target_os = "linux")]
                let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 10);
                let (fingerprint, files) = source.read();
                let settled = fingerprint != before && settling.as_ref() == Some(&fingerprint);
                let loaded = settled.then(|| {
                    let files = files.map_err(|e| e.to_string())?;
                    // A loader that panics refuses these files once, as a refused set is:
                    // they are not loaded again until they change.
                    std::panic::catch_unwind(|| RuleSet::from_sources(&files))
                        .map_err(|p| {
                            let why = p
                                .downcast_ref::<&str>()
                                .map(|s| (*s).to_owned())
                                .or_else(|| p.downcast_ref::<String>().cloned())
                                .unwrap_or_default();
                            format!("loading the rule set panicked: {why}")
                        })?
                        .map_err(|e| e.to_string())
                });
                ReloadCheck {
                    fingerprint,
                    loaded,
                }
            });
        match spawned {
            Ok(t) => self.reload_check = Some(t),
            Err(e) => tracing::warn!(error = %e, "the rule files not checked: no thread"),
        }
    }

    fn apply_reload_check(&mut self, check: ReloadCheck) {
        let ReloadCheck {
            fingerprint,
            loaded,
        } = check;
        if fingerprint == self.fingerprint {
            self.settling = None;
            return;
        }
        let Some(loaded) = loaded else {
            // Changed since the last check: loaded when the next check finds it unchanged.
            self.settling = Some(fingerprint);
            return;
        };
        self.settling = None;
        self.fingerprint = fingerprint;
        match loaded {
            Ok(set) => {
                publish_lists(Some(self.engine.rules()), &set);
                // The old lists are dropped on a thread of their own: a million values take
                // tens of milliseconds to free.
                let old_lists: Vec<_> = self.engine.rules().lists().into_iter().cloned().collect();
                let report = self.engine.replace_rules(set);
                if old_lists.iter().any(|l| !l.is_empty()) {
                    // (No thread to be had: they are dropped here, as before.)
                    let _ = std::thread::Builder::new()
                        .name("pitboss-rules-drop".into())
                        .spawn(move || drop(old_lists));
                }
                self.stats.reloads += 1;
                metrics::counter!("pitboss_antifraud_reloads_total", "group" => self.config.group.clone(), "result" => "ok")
                    .increment(1);
                if report.removed.is_empty()
                    && report.refolded.is_empty()
                    && report.reset.is_empty()
                {
                    tracing::info!(kept = report.kept.len(), fresh = ?report.fresh, "rules reloaded");
                } else {
                    // State went with the change: said louder than a routine reload (a file
                    // emptied or cut short by a tool mid-write removes every rule it held).
                    tracing::warn!(
                        kept = report.kept.len(),
                        fresh = ?report.fresh,
                        removed = ?report.removed,
                        reset = ?report.reset,
                        buckets_dropped = ?report.refolded,
                        "rules reloaded: the windows of removed rules and of rules whose version or window changed (reset), and the folded events of rules whose buckets changed, are dropped"
                    );
                }
            }
            Err(e) => {
                self.stats.reloads_refused += 1;
                metrics::counter!("pitboss_antifraud_reloads_total", "group" => self.config.group.clone(), "result" => "refused")
                    .increment(1);
                // One line (each problem after "; "): a log pipeline taking one event a line
                // kept "rule set refused:" and lost the reasons on the lines after it.
                let error = e.to_string().replacen(":\n", ": ", 1).replace('\n', "; ");
                tracing::error!(%error, "rules not reloaded; the running set stays in force");
            }
        }
    }
}

/// `pitboss_antifraud_list_entries{list}`: the entries of each list of `set` (every tenant's
/// counted), and 0 for the lists of the set it replaces that it no longer has.
fn publish_lists(before: Option<&RuleSet>, set: &RuleSet) {
    let now = set.lists();
    for gone in before.into_iter().flat_map(RuleSet::lists) {
        if !now.iter().any(|l| l.name == gone.name) {
            metrics::gauge!("pitboss_antifraud_list_entries", "list" => gone.name.clone()).set(0.0);
        }
    }
    for l in now {
        metrics::gauge!("pitboss_antifraud_list_entries", "list" => l.name.clone())
            .set(l.len() as f64);
    }
}

/// The dead-letter record of a record the engine cannot evaluate: its value, keyed by
/// `topic:partition:position: reason`.
pub(crate) fn dead_letter(r: &Record, reason: &str) -> OutRecord {
    tracing::warn!(topic = %r.topic, partition = r.partition, position = %r.position, %reason, "event dead-lettered");
    OutRecord::new(
        format!("{}:{}:{}: {reason}", r.topic, r.partition, r.position),
        r.value.clone(),
    )
}

/// Whether `shard` dead-letters a record (key `key`, decoded as `event` when it could be) that
/// no engine can use: every record when it is the only engine; split, exactly one shard does —
/// the one owning the event's player (from the decoded event, else from the record's
/// `tenant:player` key), shard 0 when neither names one.
fn dead_letters_on(shard: crate::Shard, key: &str, event: Option<&pitboss_model::Event>) -> bool {
    if !shard.is_split() {
        return true;
    }
    if let Some(e) = event {
        return shard.owns(&e.tenant_id, &e.player_id);
    }
    match key.split_once(':') {
        Some((tenant, player)) => shard.owns(tenant, player),
        None => shard.index() == 0,
    }
}

/// The records of the hits a batch sends to other shards, keyed by player.
fn forward_records(out: &mut Output) -> Vec<OutRecord> {
    out.forwards
        .drain(..)
        .map(|f| {
            OutRecord::new(f.bus_key(), f.encode())
                .with_header(header::TYPE, crate::Forward::TYPE)
                .with_header(header::TENANT, f.tenant_id.as_str())
                .with_header(header::EVENT_TIME, f.t.to_string())
        })
        .collect()
}

/// Why the forwards topic must have the events topic's partitions (in the refusals).
pub const FORWARDS_COPARTITIONED: &str = "the forwards topic of split rules engines must be \
    co-partitioned with the events topic (docs/rules.md, \"Several engines\")";

/// The forwards topic of split engines: made with the events topic's partitions where missing
/// (every shard reads it with the events, as a co-partitioned companion), refused when it has
/// other partitions.
async fn ensure_forwards_topic(
    bus: &dyn Bus,
    events: &str,
    forwards: &str,
) -> Result<(), StreamError> {
    let n = bus.partition_count(events).await?;
    bus.create_topic_if_missing(forwards, n).await?;
    let m = bus.partition_count(forwards).await?;
    if m != n {
        return Err(BusError::Config(format!(
            "topic {forwards:?} has {m} partitions and {events:?} has {n}: \
             {FORWARDS_COPARTITIONED}; recreate it with {n}"
        ))
        .into());
    }
    Ok(())
}

/// The bus records of what a batch raised, stamped with the time it was evaluated: alerts'
/// `detected_at`, pushes' `created_at` and, as far after it as the rule says, `expires_at`
/// (the engine's own clock is the records' bus time, which a replay repeats); messages that
/// break the live contract are logged and dropped.
pub(crate) fn output_records(
    out: &mut Output,
    detected: Timestamp,
) -> (Vec<OutRecord>, Vec<OutRecord>) {
    for rej in out.rejected.drain(..) {
        tracing::warn!(rule = %rej.rule_id, message = rej.message, violations = ?rej.violations, "rule output breaks the contract; not published");
        metrics::counter!("pitboss_antifraud_rejected_total", "rule" => rej.rule_id, "message" => rej.message)
            .increment(1);
    }
    if out.late_triggers > 0 {
        let (rule, event_id) = out.late_first.take().unwrap_or_default();
        tracing::warn!(
            triggers = out.late_triggers,
            first_rule = %rule,
            first_event_id = %event_id,
            "events read later than their rule's window (older than its duration before their key's newest event): not evaluated"
        );
        metrics::counter!("pitboss_antifraud_late_triggers_total").increment(out.late_triggers);
        out.late_triggers = 0;
    }
    if out.unpriced > 0 {
        let currency = out.unpriced_first.take().unwrap_or_default();
        // Once per currency and process: the counter keeps counting.
        static WARNED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
        let first = WARNED.lock().is_ok_and(|mut w| {
            let first = !w.contains(&currency) && w.len() < 64;
            if first {
                w.push(currency.clone());
            }
            first
        });
        if first {
            tracing::warn!(
                currency = %currency,
                "events in a currency the rule set's [money] table has no rate for: the rules' money values are compared with them as written (docs/rules.md, \"Money in several currencies\"); said once per currency, counted in pitboss_antifraud_unpriced_events_total"
            );
        }
        metrics::counter!("pitboss_antifraud_unpriced_events_total").increment(out.unpriced);
        out.unpriced = 0;
    }
    if let Some(first) = out.snoozed.first() {
        tracing::debug!(
            hits = out.snoozed.len(),
            first_rule = %first.rule_id,
            first_event_id = %first.trigger_event_id,
            "hits silenced by a [[snooze]] of the rule set: not published"
        );
        for z in out.snoozed.drain(..) {
            metrics::counter!("pitboss_antifraud_snoozed_total", "rule" => z.rule_id).increment(1);
        }
    }
    let alerts = out
        .alerts
        .iter_mut()
        .map(|a| {
            a.detected_at = detected.max(a.received_at);
            live_record(&*a)
        })
        .collect();
    let pushes = out
        .pushes
        .iter_mut()
        .map(|p| {
            let made = detected.max(p.created_at);
            let later = made.as_millis().saturating_sub(p.created_at.as_millis());
            p.created_at = made;
            p.expires_at = p
                .expires_at
                .map(|e| Timestamp::from_millis(e.as_millis().saturating_add(later)));
            live_record(&*p)
        })
        .collect();
    (alerts, pushes)
}

/// The batch in the order the engine sees it, which depends only on the records: each
/// partition's records stay in their order, and the partitions are merged by bus time (then
/// topic, partition) — the same order however the bus delivered them.
pub(crate) fn canonical_order(records: Vec<Record>) -> Vec<Record> {
    let n = records.len();
    let mut queues: std::collections::BTreeMap<Tp, VecDeque<Record>> = Default::default();
    for r in records {
        queues
            .entry((r.topic.clone(), r.partition))
            .or_default()
            .push_back(r);
    }
    let mut heap: std::collections::BinaryHeap<std::cmp::Reverse<(i64, Tp)>> = queues
        .iter()
        .filter_map(|(tp, q)| {
            q.front()
                .map(|r| std::cmp::Reverse((r.timestamp_ms, tp.clone())))
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    while let Some(std::cmp::Reverse((_, tp))) = heap.pop() {
        let Some(q) = queues.get_mut(&tp) else {
            continue;
        };
        out.extend(q.pop_front());
        if let Some(next) = q.front() {
            heap.push(std::cmp::Reverse((next.timestamp_ms, tp)));
        }
    }
    out
}

/// Publishes, retrying while the bus may take the records later.
pub(crate) async fn publish(
    publisher: &Arc<dyn Publisher>,
    topic: &str,
    records: Vec<OutRecord>,
    (initial, max): (Duration, Duration),
) -> Result<(), StreamError> {
    if records.is_empty() {
        return Ok(());
    }
    let mut delay = initial;
    loop {
        match publisher.publish(topic, records.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_retryable() => {
                tracing::warn!(%topic, error = %e, "publish failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(max);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[async_trait]
impl PartitionWork for Work {
    type Error = StreamError;

    async fn assigned(&mut self, _partitions: &[Partition]) -> Result<(), StreamError> {
        if self.incumbent {
            return Ok(());
        }
        // Two engines that left their stand-by together meet here, before either read
        // anything: both leave (and stand by again, at different paces).
        let others = other_engines(
            self.bus.clone(),
            self.config.group.clone(),
            self.client_id.clone(),
        )
        .await?;
        match others {
            Some(others) if !others.is_empty() => Err(StreamError::AnotherEngine {
                group: self.config.group.clone(),
                others: describe(&others),
            }),
            _ => {
                self.incumbent = true;
                // The wait to join (a rebalance waits out a dead member's session) is no pause,
                // and no part of the logged batches' patience: their records can only come
                // from now on (counted from the start, a slow join left them 30 s spent, and
                // the batches were replayed with nothing, out of their order).
                self.last_turn = Instant::now();
                self.replay_since = Instant::now();
                self.turn_checked = true;
                Ok(())
            }
        }
    }

    async fn records(&mut self, records: Vec<Record>) -> Result<(), StreamError> {
        self.check_paused()?;
        self.take(records).await
    }

    async fn revoking(&mut self, partitions: &[Partition]) -> Result<(), StreamError> {
        if self.check_paused().is_err() {
            // After a pause the partitions were lost, not handed over: nothing is evaluated,
            // saved or committed for them (the group's owner went on from its own commits),
            // but the revocation completes, so the consumer can leave; the next turn ends the
            // run ([`Work::tick`]).
            self.durable.clear();
            let gone = |tp: &Tp| partitions.contains(&tp.1);
            self.processed.retain(|tp, _| !gone(tp));
            self.received.retain(|tp, _| !gone(tp));
            self.skip_upto.retain(|tp, _| !gone(tp));
            return Ok(());
        }
        // Whatever was filed for a logged batch is processed now, then everything is saved.
        if !self.replay.is_empty() {
            self.replay_ready(true).await?;
        }
        self.snapshot().await?;
        let gone = |tp: &Tp| partitions.contains(&tp.1);
        self.processed.retain(|tp, _| !gone(tp));
        self.received.retain(|tp, _| !gone(tp));
        self.skip_upto.retain(|tp, _| !gone(tp));
        Ok(())
    }

    async fn tick(&mut self) -> Result<(), StreamError> {
        self.check_paused()?;
        self.maybe_reload();
        self.check_alone().await?;
        // Only once the partitions came (before the first assignment, nothing can arrive).
        if self.incumbent
            && !self.replay.is_empty()
            && self.replay_since.elapsed() >= REPLAY_PATIENCE
        {
            tracing::warn!(
                batches = self.replay.len(),
                "logged batches incomplete after {REPLAY_PATIENCE:?}; replaying what arrived"
            );
            self.replay_ready(true).await?;
        }
        if self.cycle.is_some() {
            self.write_slice().await?;
        } else if self.last_snapshot.elapsed() >= self.config.snapshot_interval {
            self.begin_save().await?;
        }
        self.step_gauges();
        self.last_turn = Instant::now();
        self.turn_checked = false;
        Ok(())
    }

    fn poll_wait(&self) -> Duration {
        // While a save lasts, a slice follows every poll.
        if self.cycle.is_some() {
            return Duration::from_millis(5);
        }
        self.config
            .snapshot_interval
            .saturating_sub(self.last_snapshot.elapsed())
            .clamp(Duration::from_millis(10), Duration::from_millis(500))
    }

    fn take_durable(&mut self) -> Vec<(Arc<str>, Partition, Position)> {
        std::mem::take(&mut self.durable)
    }

    async fn finish(&mut self) -> Result<(), StreamError> {
        if !self.replay.is_empty() {
            self.replay_ready(true).await?;
        }
        self.snapshot().await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::state::write_file_before_units;
    use crate::{Change, Changes, EngineStats};

    const T0: i64 = 1_780_000_000_000;

    fn shipped() -> RuleSet {
        RulesSource::Shipped.load().unwrap()
    }

    /// A rule file replaced by one of the same size with the old modification time (`cp -p`,
    /// `rsync -a` of a changed threshold: 25 → 28) is a change; the same bytes written again
    /// are not.
    #[test]
    fn the_rules_fingerprint_follows_content_not_times() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fraud.toml");
        std::fs::write(&file, "value = 25\n").unwrap();
        let when = std::fs::metadata(&file).unwrap().modified().unwrap();
        let source = RulesSource::Dir(dir.path().to_owned());
        let before = source.read().0;
        std::fs::write(&file, "value = 28\n").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(when)
            .unwrap();
        assert_eq!(std::fs::metadata(&file).unwrap().modified().unwrap(), when);
        let after = source.read().0;
        assert_ne!(before, after);
        std::fs::write(&file, "value = 28\n").unwrap();
        assert_eq!(source.read().0, after);
    }

    fn positions() -> Positions {
        let mut p = Positions::new();
        p.insert((Arc::from("events"), 0), Position::Offset(99));
        p
    }

    /// An engine that has seen the scripted day of play for 20 normal players.
    fn busy_engine() -> Engine {
        let now = Timestamp::from_millis(T0);
        let mut engine = Engine::new(shipped());
        let mut out = Output::default();
        for p in crate::scenario::script("acme", T0, 20, 1) {
            for e in &p.events {
                let e = pitboss_model::decode_event(e.to_string().as_bytes()).unwrap();
                engine.process(&e, now, &mut out).unwrap();
            }
        }
        engine
    }

    fn held(s: EngineStats) -> (usize, usize, usize, usize) {
        (s.keys, s.entries, s.joined_bets, s.scored_players)
    }

    fn saved(engine: &mut Engine, store: &mut StateStore) {
        let c = engine.take_changes().unwrap();
        store.save(1, &positions(), &c, Some(1)).unwrap();
    }

    #[test]
    fn a_record_no_engine_can_use_is_dead_lettered_by_exactly_one_shard() {
        use crate::Shard;
        let event = pitboss_model::decode_event(
            br#"{"event_id":"not-a-uuid","tenant_id":"acme","player_id":"p9","type":"login","occurred_at":"2026-12-01T00:00:00Z","payload":{"ip":"10.0.0.1"}}"#,
        )
        .unwrap();
        for n in [1u32, 2, 3, 7] {
            let shards: Vec<Shard> = (0..n).map(|i| Shard::new(i, n).unwrap()).collect();
            for (key, e) in [
                ("acme:p1", None),
                ("acme:p2", None),
                ("no colon", None),
                ("", None),
                ("acme:whatever", Some(&event)),
            ] {
                let on: Vec<u32> = shards
                    .iter()
                    .filter(|s| dead_letters_on(**s, key, e))
                    .map(|s| s.index())
                    .collect();
                assert_eq!(on.len(), 1, "{n} shards, {key:?}: {on:?}");
                if let Some(e) = e {
                    assert_eq!(on[0], Shard::of(n, &e.tenant_id, &e.player_id));
                }
            }
        }
    }

    /// A save written in slices with events processed between them, and a crash before its
    /// last slice: the file holds units newer than its positions. Restored and replayed from
    /// those positions, the engine raises nothing that one engine that never stopped does not,
    /// misses nothing, and ends with the same state.
    #[test]
    fn a_crash_between_the_slices_of_a_save_restores_to_the_same_alerts_and_state() {
        let parts = crate::scenario::script("acme", T0, 30, 1);
        let longest = parts.iter().map(|p| p.events.len()).max().unwrap();
        let events: Vec<pitboss_model::Event> = (0..longest)
            .flat_map(|i| parts.iter().filter_map(move |p| p.events.get(i)))
            .map(|e| pitboss_model::decode_event(e.to_string().as_bytes()).unwrap())
            .collect();
        let now = Timestamp::from_millis(T0);
        let ids = |out: &Output| -> std::collections::BTreeSet<String> {
            let mut v: std::collections::BTreeSet<String> =
                out.alerts.iter().map(|a| a.alert_id.clone()).collect();
            v.extend(out.pushes.iter().map(|p| p.push_id.clone()));
            v
        };
        let mut whole = Engine::new(shipped());
        let mut want = Output::default();
        for e in &events {
            whole.process(e, now, &mut want).unwrap();
        }
        let at = |i: usize| {
            let mut p = Positions::new();
            p.insert((Arc::from("events"), 0), Position::Offset(i as i64));
            p
        };
        let (n1, n2, n3) = (events.len() / 4, events.len() / 2, events.len() * 3 / 4);
        // Whichever units the slices hold (the order a save takes them in is the engine's):
        // as taken, reversed, rotated.
        for order in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let mut store = StateStore::open(&dir.path().join("s.db"), "g").unwrap();
            let mut engine = Engine::new(shipped());
            engine.track_changes(true);
            let mut got = Output::default();
            for e in &events[..n1] {
                engine.process(e, now, &mut got).unwrap();
            }
            // A completed save covering events[..n1].
            let c = engine.take_changes().unwrap();
            store.save(1, &at(n1 - 1), &c, None).unwrap();
            for e in &events[n1..n2] {
                engine.process(e, now, &mut got).unwrap();
            }
            // A save begins (it would cover events[..n2]) and writes its first slice…
            let (full, mut pending) = engine.take_pending();
            assert!(!full && pending.len() > 40, "{}", pending.len());
            let units = engine.name_all(&mut pending);
            match order {
                1 => units.reverse(),
                2 => {
                    let third = units.len() / 3;
                    units.rotate_left(third);
                }
                _ => {}
            }
            let half = pending.len() / 2;
            let slice = engine.next_slice(&mut pending, half);
            store
                .save_units(&engine.changes_of(slice).unwrap())
                .unwrap();
            // …events go on between slices, a second slice is written, then the process dies.
            for e in &events[n2..n3] {
                engine.process(e, now, &mut got).unwrap();
            }
            let half = pending.len() / 2;
            let slice = engine.next_slice(&mut pending, half);
            store
                .save_units(&engine.changes_of(slice).unwrap())
                .unwrap();
            drop(engine);
            drop(store);

            let store = StateStore::open(&dir.path().join("s.db"), "g").unwrap();
            let mut r = restore(shipped(), &store).unwrap();
            assert_eq!(r.skip_upto, at(n1 - 1).into_iter().collect());
            for e in &events[n1..] {
                r.engine.process(e, now, &mut got).unwrap();
            }
            assert!(ids(&want).len() > 5);
            assert_eq!(
                ids(&got),
                ids(&want),
                "order {order}: none missed, none that one engine does not raise"
            );
            assert_eq!(held(r.engine.stats()), held(whole.stats()), "order {order}");
        }
    }

    /// A stake join of three bets and an hour, and a rule that fires on a player's third
    /// settlement whose stake the join supplied within three hours.
    const JOIN_RULES: &str = r#"
[engine]
join_max_bets = 3
join_horizon = "1h"

[[rule]]
id = "t.settled_with_stake"
version = 1
category = "fraud"
description = "A third settlement whose stake the join supplied within three hours."
severity = "low"
score = 1
events = ["bet_settled"]
group_by = "player"
window = { duration = "3h", max_events = 10 }
reason = "{settled} settlements with a stake"
  [[rule.measure]]
  name = "settled"
  agg = "count"
  where = { stake = { exists = true } }
  [[rule.when]]
  measure = "settled"
  op = "gte"
  value = 3
"#;

    fn join_set() -> RuleSet {
        RuleSet::from_sources(&[("t.toml".into(), JOIN_RULES.into())]).unwrap()
    }

    /// b1 and bx placed; b1 settles and two more bets push it out of the join (over three
    /// bets); bx settles, and a bet two hours on takes bx, b2 and b3 (past the horizon); b4
    /// settles: the third settlement with a stake.
    fn join_events() -> Vec<pitboss_model::Event> {
        let ev = |n: u32, t: i64, kind: &str, payload: String| {
            let json = format!(
                r#"{{"event_id":"0193735a-0000-7000-8000-{n:012x}","tenant_id":"acme","player_id":"p-1","type":"{kind}","occurred_at":"{}","payload":{payload}}}"#,
                Timestamp::from_millis(t).to_rfc3339().unwrap()
            );
            pitboss_model::decode_event(json.as_bytes()).unwrap()
        };
        let bet = |n, t, id: &str| {
            ev(
                n,
                t,
                "bet_placed",
                format!(
                    r#"{{"bet_id":"{id}","game_id":"g","stake":{{"amount_minor":500,"currency":"EUR"}}}}"#
                ),
            )
        };
        let settle = |n, t, id: &str| {
            ev(
                n,
                t,
                "bet_settled",
                format!(
                    r#"{{"bet_id":"{id}","game_id":"g","result":"loss","payout":{{"amount_minor":0,"currency":"EUR"}}}}"#
                ),
            )
        };
        vec![
            bet(1, T0, "b1"),
            bet(2, T0 + 500, "bx"),
            // The save covers the two above. Then b1 settles, and two more bets push it out
            // (over 3 bets); bx settles, and a bet two hours on takes bx, b2 and b3 (horizon).
            settle(3, T0 + 1_000, "b1"),
            bet(4, T0 + 2_000, "b2"),
            bet(5, T0 + 3_000, "b3"),
            settle(6, T0 + 5_000, "bx"),
            bet(7, T0 + 7_200_000, "b4"),
            settle(8, T0 + 7_201_000, "b4"),
        ]
    }

    /// The stake join forgets bets placed before a save (over its count bound, past its
    /// horizon) because of events after it. A save begun after that, its slices written, and a
    /// crash before its positions: the restore replays, from the earlier save's positions, the
    /// settlements that found those stakes the first time — they find them again — and the
    /// bets placed after those positions are placed again, not held twice.
    #[test]
    fn a_restore_finds_the_stakes_the_join_forgot_after_the_save_s_positions() {
        let set = join_set;
        let events = join_events();
        let now = Timestamp::from_millis(T0);
        let ids = |out: &Output| -> Vec<String> {
            let mut v: Vec<String> = out.alerts.iter().map(|a| a.alert_id.clone()).collect();
            v.sort();
            v
        };
        let mut whole = Engine::new(set());
        let mut want = Output::default();
        for e in &events {
            whole.process(e, now, &mut want).unwrap();
        }
        assert_eq!(want.alerts.len(), 1, "the third settlement with a stake");
        let at = |i: usize| {
            let mut p = Positions::new();
            p.insert((Arc::from("events"), 0), Position::Offset(i as i64));
            p
        };
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::open(&dir.path().join("s.db"), "g").unwrap();
        let mut engine = Engine::new(set());
        engine.track_changes(true);
        let mut got = Output::default();
        for e in &events[..2] {
            engine.process(e, now, &mut got).unwrap();
        }
        let c = engine.take_changes().unwrap();
        store.save(1, &at(1), &c, None).unwrap();
        for e in &events[2..7] {
            engine.process(e, now, &mut got).unwrap();
        }
        assert!(got.alerts.is_empty());
        // The next save begins; a slice writes the join's units, and the process dies before
        // the windows' (and the last slice's positions).
        let (full, mut pending) = engine.take_pending();
        assert!(!full);
        let bets: Vec<Unit> = engine
            .name_all(&mut pending)
            .iter()
            .filter(|u| matches!(u, Unit::Bet(_)))
            .cloned()
            .collect();
        assert_eq!(
            bets.len(),
            3,
            "b2..b4 placed; b1 and bx forgotten, kept until covered"
        );
        store.save_units(&engine.changes_of(bets).unwrap()).unwrap();
        drop(engine);
        drop(store);

        let store = StateStore::open(&dir.path().join("s.db"), "g").unwrap();
        let mut r = restore(set(), &store).unwrap();
        assert_eq!(r.skip_upto, at(1).into_iter().collect());
        assert_eq!(r.engine.stats().joined_bets, 2, "b1 and bx, as at the save");
        for e in &events[2..] {
            r.engine.process(e, now, &mut got).unwrap();
        }
        assert_eq!(
            ids(&got),
            ids(&want),
            "the replay raises what one engine raises"
        );
        assert_eq!(held(r.engine.stats()), held(whole.stats()));
        assert_eq!(r.engine.stats().joined_bets, 1, "b4 alone");
    }

    /// A save through the engine's own loop: it begins covering two bets, the join forgets
    /// both (and holds three later ones) while its slices are written between batches, and it
    /// completes. The join's values it records are those of its positions — recorded at its
    /// end they left the two bets out of a restart from those positions, and the replayed
    /// settlements found no stake.
    #[tokio::test]
    async fn a_save_records_the_join_as_of_its_positions_so_a_restart_finds_what_it_held() {
        let dir = tempfile::tempdir().unwrap();
        let bus: Arc<dyn Bus> = Arc::new(
            pitboss_bus::embedded::EmbeddedBus::open(dir.path().join("log"), Default::default())
                .unwrap(),
        );
        let rules = dir.path().join("rules");
        std::fs::create_dir(&rules).unwrap();
        std::fs::write(rules.join("t.toml"), JOIN_RULES).unwrap();
        let config = StreamConfig {
            group: "g".into(),
            state_path: dir.path().join("s.db"),
            rules: RulesSource::Dir(rules),
            save_slice_units: 1,
            ..StreamConfig::default()
        };
        for t in [
            &config.alerts_topic,
            &config.pushes_topic,
            &config.dead_letter_topic,
        ] {
            bus.create_topic(t, 1).await.unwrap();
        }
        let events = join_events();
        let records: Vec<Record> = events
            .iter()
            .enumerate()
            .map(|(i, e)| Record {
                topic: Arc::from("events"),
                partition: 0,
                position: Position::Offset(i as i64),
                key: e.bus_key(),
                value: pitboss_model::encode_proto(e),
                timestamp_ms: T0,
                headers: Default::default(),
            })
            .collect();
        let mut work = Work::start(bus, config, "test".into(), StreamStats::default())
            .await
            .unwrap();
        work.take(records[..2].to_vec()).await.unwrap();
        work.begin_save().await.unwrap();
        assert!(work.cycle.is_some(), "written in slices");
        work.take(records[2..7].to_vec()).await.unwrap();
        while work.cycle.is_some() {
            work.write_slice().await.unwrap();
        }
        let mut covered = Positions::new();
        covered.insert((Arc::from("events"), 0), Position::Offset(1));
        assert_eq!(work.store.snapshot().unwrap().unwrap().positions, covered);
        assert_eq!(work.engine.stats().joined_bets, 1, "b4 alone");
        drop(work);

        let store = StateStore::open(&dir.path().join("s.db"), "g").unwrap();
        let mut r = restore(join_set(), &store).unwrap();
        assert_eq!(r.skip_upto, covered.into_iter().collect());
        assert_eq!(
            r.engine.stats().joined_bets,
            2,
            "b1 and bx, as at the save's positions"
        );
        let mut out = Output::default();
        for e in &events[2..] {
            r.engine
                .process(e, Timestamp::from_millis(T0), &mut out)
                .unwrap();
        }
        assert_eq!(out.alerts.len(), 1, "the third settlement with a stake");
    }

    /// Two players on one device, read from two partitions: the second player read raises the
    /// alert. The first run reads them in two batches, the later-stamped record first, and
    /// dies before its first save; the next reads both at once (so their canonical order is
    /// the other way round). The batches logged by the first run are replayed as they were,
    /// so the alert raised again is the same one — re-read as one new batch it was raised on
    /// the other player's event: a second alert for one device.
    #[tokio::test]
    async fn batches_logged_before_the_first_save_are_replayed_as_they_were_after_a_crash() {
        const RULE: &str = r#"
[[rule]]
id = "t.shared_device"
version = 1
category = "fraud"
description = "Two players on one device."
severity = "high"
score = 10
events = ["login"]
group_by = "device"
window = { duration = "1h", max_events = 10 }
cooldown = "1h"
reason = "{players} players"
  [[rule.measure]]
  name = "players"
  agg = "count_distinct"
  field = "player_id"
  [[rule.when]]
  measure = "players"
  op = "gte"
  value = 2
"#;
        let dir = tempfile::tempdir().unwrap();
        let bus: Arc<dyn Bus> = Arc::new(
            pitboss_bus::embedded::EmbeddedBus::open(dir.path().join("log"), Default::default())
                .unwrap(),
        );
        let rules = dir.path().join("rules");
        std::fs::create_dir(&rules).unwrap();
        std::fs::write(rules.join("t.toml"), RULE).unwrap();
        let config = StreamConfig {
            group: "g".into(),
            state_path: dir.path().join("s.db"),
            rules: RulesSource::Dir(rules),
            ..StreamConfig::default()
        };
        for t in [
            &config.alerts_topic,
            &config.pushes_topic,
            &config.dead_letter_topic,
        ] {
            bus.create_topic(t, 1).await.unwrap();
        }
        let login = |n: u32, player: &str, partition: u32, bus_ms: i64| {
            let json = format!(
                r#"{{"event_id":"0193735a-0000-7000-8000-{n:012x}","tenant_id":"acme","player_id":"{player}","type":"login","occurred_at":"{}","payload":{{"device_id":"d-1","ip":"192.0.2.1"}}}}"#,
                Timestamp::from_millis(T0).to_rfc3339().unwrap()
            );
            let e = pitboss_model::decode_event(json.as_bytes()).unwrap();
            Record {
                topic: Arc::from("events"),
                partition,
                position: Position::Offset(0),
                key: e.bus_key(),
                value: pitboss_model::encode_proto(&e),
                timestamp_ms: bus_ms,
                headers: Default::default(),
            }
        };
        // Stamped first on partition 0, later on partition 1; the later one read first.
        let (a, b) = (login(1, "p-a", 0, T0), login(2, "p-b", 1, T0 + 5));
        let alerts = |bus: Arc<dyn Bus>| async move {
            let mut reader = bus
                .reader_all("alerts", pitboss_bus::ReadFrom::Earliest)
                .await
                .unwrap();
            let mut ids = Vec::new();
            for r in reader.poll(100, Duration::from_millis(200)).await.unwrap() {
                ids.push(
                    pitboss_model::live::Alert::decode_proto(&r.value)
                        .unwrap()
                        .alert_id,
                );
            }
            ids
        };

        let mut work = Work::start(
            bus.clone(),
            config.clone(),
            "one".into(),
            Default::default(),
        )
        .await
        .unwrap();
        work.take(vec![b.clone()]).await.unwrap();
        work.take(vec![a.clone()]).await.unwrap();
        let first = alerts(bus.clone()).await;
        assert_eq!(first.len(), 1, "{first:?}");
        drop(work); // killed: nothing saved, nothing committed
        assert!(
            StateStore::open(&config.state_path, "g")
                .unwrap()
                .snapshot()
                .unwrap()
                .is_none()
        );

        let mut work = Work::start(bus.clone(), config, "two".into(), Default::default())
            .await
            .unwrap();
        work.take(vec![a, b]).await.unwrap();
        let again = alerts(bus).await;
        assert_eq!(again.len(), 2, "raised again on the replay: {again:?}");
        assert_eq!(again[1], again[0], "the same alert, on the same event");
        assert_eq!(work.stats.replayed_batches, 2, "the two logged batches");
    }

    /// What a batch raises leaves stamped with the time it was evaluated: an alert's
    /// `detected_at`, a push's `created_at`, and its `expires_at` as long after that as the
    /// rule says (they were the trigger's bus time: a push raised on a replay 10 s late, or
    /// read from a backlog, expired early).
    #[test]
    fn alerts_and_pushes_leave_stamped_with_the_time_they_were_evaluated() {
        let sources = vec![(
            "t.toml".to_owned(),
            r#"
[[rule]]
id = "t.big"
version = 1
category = "responsible_gambling"
description = "A big stake."
severity = "low"
score = 1
events = ["bet_placed"]
group_by = "player"
window = { duration = "1m", max_events = 10 }
reason = "stake {stake}"
  [[rule.measure]]
  name = "stake"
  agg = "current"
  field = "stake"
  [[rule.when]]
  measure = "stake"
  op = "gte"
  value = 1
  [rule.push]
  to = "player"
  kind = "rg.notice"
  title = "A notice"
  body = "Stake {stake}"
  expires_after = "1h"
"#
            .to_owned(),
        )];
        let mut engine = Engine::new(RuleSet::from_sources(&sources).unwrap());
        let json = format!(
            r#"{{"event_id":"0193735a-0000-7000-8000-000000000001","tenant_id":"acme","player_id":"p-1","type":"bet_placed","occurred_at":"{}","received_at":"{}","payload":{{"bet_id":"b","game_id":"g","stake":{{"amount_minor":500,"currency":"EUR"}}}}}}"#,
            Timestamp::from_millis(T0).to_rfc3339().unwrap(),
            Timestamp::from_millis(T0 + 40).to_rfc3339().unwrap()
        );
        let e = pitboss_model::decode_event(json.as_bytes()).unwrap();
        let mut out = Output::default();
        engine
            .process(&e, Timestamp::from_millis(T0 + 40), &mut out)
            .unwrap();
        assert_eq!((out.alerts.len(), out.pushes.len()), (1, 1));
        let evaluated = Timestamp::from_millis(T0 + 10_040);
        let (alerts, pushes) = output_records(&mut out, evaluated);
        let a = pitboss_model::live::Alert::decode_proto(&alerts[0].value).unwrap();
        let p = pitboss_model::live::Push::decode_proto(&pushes[0].value).unwrap();
        assert_eq!(a.detected_at, evaluated);
        assert_eq!(p.created_at, evaluated);
        assert_eq!(
            p.expires_at,
            Some(Timestamp::from_millis(T0 + 10_040 + 3_600_000))
        );
        assert_eq!(p.received_at, Timestamp::from_millis(T0 + 40));
    }

    /// The first save of a cold engine is full (it rewrites the file); on a large state that
    /// was one transaction with the engine stopped for it. It is written in slices like any
    /// other, batches go on between them, and its last slice deletes what the file held that
    /// the engine does not.
    #[tokio::test]
    async fn a_full_save_is_written_in_slices_between_batches_and_drops_what_the_engine_does_not_hold()
     {
        let dir = tempfile::tempdir().unwrap();
        let bus: Arc<dyn Bus> = Arc::new(
            pitboss_bus::embedded::EmbeddedBus::open(dir.path().join("log"), Default::default())
                .unwrap(),
        );
        let config = StreamConfig {
            group: "g".into(),
            state_path: dir.path().join("s.db"),
            save_slice_units: 25,
            ..StreamConfig::default()
        };
        for t in [
            &config.alerts_topic,
            &config.pushes_topic,
            &config.dead_letter_topic,
        ] {
            bus.create_topic(t, 1).await.unwrap();
        }
        // A unit of a rule's earlier definition, left in the file (no snapshot: a cold start).
        let stale = Unit::Window {
            rule: "fraud.bet_velocity@0.0000000000000000".into(),
            key: 1,
        };
        StateStore::open(&config.state_path, "g")
            .unwrap()
            .save_units(&[Change {
                unit: stale.clone(),
                value: Some(vec![1, 0]),
                expires_at_ms: 0,
            }])
            .unwrap();
        // Player by player, those who score last: they score between the slices.
        let records: Vec<Record> = crate::scenario::script("acme", T0, 20, 1)
            .iter()
            .rev()
            .flat_map(|p| p.events.clone())
            .enumerate()
            .map(|(i, e)| {
                let e = pitboss_model::decode_event(e.to_string().as_bytes()).unwrap();
                Record {
                    topic: Arc::from("events"),
                    partition: 0,
                    position: Position::Offset(i as i64),
                    key: format!("{}:{}", e.tenant_id, e.player_id),
                    value: pitboss_model::encode_proto(&e),
                    timestamp_ms: T0,
                    headers: Default::default(),
                }
            })
            .collect();
        let half = records.len() / 2;
        // And the scores of every player of the day, from another run: stale at the start
        // (this engine holds none of them yet), rewritten by the slices as players score.
        let scores: Vec<Change> = {
            let mut other = Engine::new(shipped());
            other.track_changes(true);
            let mut out = Output::default();
            for r in &records {
                let e = pitboss_model::decode_proto(&r.value).unwrap();
                other
                    .process(&e, Timestamp::from_millis(T0), &mut out)
                    .unwrap();
            }
            let all = other.take_changes().unwrap().units;
            all.into_iter()
                .filter(|c| matches!(c.unit, Unit::Score(_)))
                .collect()
        };
        assert!(scores.len() > 3, "{}", scores.len());
        StateStore::open(&config.state_path, "g")
            .unwrap()
            .save_units(&scores)
            .unwrap();
        let mut work = Work::start(bus, config, "test".into(), StreamStats::default())
            .await
            .unwrap();
        work.take(records[..half].to_vec()).await.unwrap();
        work.begin_save().await.unwrap();
        assert!(
            work.cycle.as_ref().is_some_and(|c| c.full),
            "the first save is full"
        );
        let left = work.cycle.as_ref().map_or(0, |c| c.pending.len());
        assert!(left > 100, "one slice written, {left} units to go");
        let scored_before = work.engine.stats().scored_players;
        // Batches go on between the slices.
        work.take(records[half..].to_vec()).await.unwrap();
        assert!(
            work.engine.stats().scored_players > scored_before,
            "players score between the slices"
        );
        let mut slices = 1;
        while work.cycle.is_some() {
            work.write_slice().await.unwrap();
            slices += 1;
        }
        assert!(slices > 3, "{slices} slices");
        let names = work.store.unit_names().unwrap();
        assert!(!names.contains(&stale.name()), "the stale unit is gone");
        let mut covered = Positions::new();
        covered.insert((Arc::from("events"), 0), Position::Offset(half as i64 - 1));
        assert_eq!(
            work.store.snapshot().unwrap().unwrap().positions,
            covered,
            "the full save covers what was processed when it began"
        );
        // The next save brings the file up to the engine.
        work.dirty = true;
        work.snapshot().await.unwrap();
        let r = restore(shipped(), &work.store).unwrap();
        assert_eq!(held(r.engine.stats()), held(work.engine.stats()));
        assert!(held(r.engine.stats()).0 > 50);
        // Every player who has scored by now has a score in the file: a stale score that a
        // slice wrote again is not deleted by the last one.
        work.engine.track_changes(true);
        let (_, all) = work.engine.take_dirty();
        let scored: Vec<String> = all
            .iter()
            .filter(|u| matches!(u, Unit::Score(_)))
            .map(Unit::name)
            .collect();
        assert!(scored.len() > 3, "{}", scored.len());
        let names = work.store.unit_names().unwrap();
        for name in &scored {
            assert!(names.contains(name), "{name:?} was deleted");
        }
    }

    /// A reload between two slices of a save renumbers the rules (a new rule that sorts first
    /// shifts every index): the windows the save took are still named after the rules they
    /// belonged to when it began.
    #[test]
    fn a_reload_between_slices_does_not_rename_the_windows_a_save_took() {
        let mut engine = busy_engine();
        engine.track_changes(true);
        let _ = engine.take_changes().unwrap();
        let now = Timestamp::from_millis(T0 + 1_000);
        let mut out = Output::default();
        for p in crate::scenario::script("acme", T0 + 1_000, 5, 1) {
            for e in &p.events {
                let e = pitboss_model::decode_event(e.to_string().as_bytes()).unwrap();
                engine.process(&e, now, &mut out).unwrap();
            }
        }
        let (full, mut pending) = engine.take_pending();
        assert!(!full);
        let first = crate::rules::tests::GOOD.replace("fraud.test", "aaa.first");
        let mut sources = shipped_sources();
        sources.insert(0, ("aaa.toml".into(), first));
        let report = engine.replace_rules(RuleSet::from_sources(&sources).unwrap());
        assert!(report.fresh.contains(&"aaa.first".to_owned()), "{report:?}");
        let mut named = Vec::new();
        while !pending.is_empty() {
            named.extend(engine.next_slice(&mut pending, 50));
        }
        let windows: Vec<&Unit> = named
            .iter()
            .filter(|u| matches!(u, Unit::Window { .. }))
            .collect();
        assert!(windows.len() > 20, "{}", windows.len());
        for u in windows {
            let Unit::Window { rule, .. } = u else {
                continue;
            };
            assert!(
                !rule.starts_with("aaa.first@"),
                "{rule} did not exist when the save began"
            );
        }
        // And each names the rule whose window it is: the engine, reloaded, holds it there.
        let changes = engine.changes_of(named).unwrap();
        assert!(
            changes
                .iter()
                .filter(|c| matches!(c.unit, Unit::Window { .. }))
                .all(|c| c.value.is_some()),
            "every window named is one the engine holds"
        );
    }

    /// The gauges' walk, 16 map parts a turn, counts what one walk of every key counts, and
    /// the next walk starts afresh.
    #[test]
    fn the_gauges_walk_in_steps_counts_what_one_walk_counts() {
        let engine = busy_engine();
        let rules = RulesSource::Shipped.load().unwrap().rules.len();
        for _ in 0..2 {
            let mut walk = crate::StatsWalk::default();
            let mut turns = 1;
            let s = loop {
                if let Some(s) = engine.stats_step(&mut walk, 16) {
                    break s;
                }
                turns += 1;
            };
            assert_eq!(s, engine.stats());
            assert!(s.keys > 50 && s.entries > 50, "{s:?}");
            // A map per field the rules key by (player, session, device, ip, payment
            // instrument), not per rule.
            assert!(rules > 5);
            assert_eq!(turns, (5 * 256usize).div_ceil(16));
        }
    }

    #[test]
    fn restored_from_units_the_next_save_writes_only_what_changes() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::open(&dir.path().join("s.db"), "g").unwrap();
        let mut r = restore(shipped(), &store).unwrap();
        assert!(r.skip_upto.is_empty() && r.replay.is_empty());
        assert!(r.engine.take_changes().unwrap().full, "first start: full");

        let mut engine = busy_engine();
        engine.track_changes(true);
        saved(&mut engine, &mut store);
        let mut r = restore(shipped(), &store).unwrap();
        assert_eq!(held(r.engine.stats()), held(engine.stats()));
        assert_eq!(r.skip_upto, positions().into_iter().collect());
        let next = r.engine.take_changes().unwrap();
        assert!(
            !next.full && next.units.is_empty(),
            "the loaded state counts as saved"
        );
    }

    /// A snooze added (or a threshold edited) leaves every rule where it was: the windows
    /// changed since the last save are what the next one writes, not the whole state (a
    /// whole save of a large state stalls the partition for seconds). A rule taken out makes
    /// it whole, which deletes that rule's windows.
    #[test]
    fn a_reload_that_keeps_every_rule_in_place_saves_only_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::open(&dir.path().join("s.db"), "g").unwrap();
        let mut engine = busy_engine();
        engine.track_changes(true);
        saved(&mut engine, &mut store);
        let n = store.unit_count().unwrap();
        let mut sources = shipped_sources();
        sources.push((
            "rules/snoozes.toml".into(),
            "[[snooze]]\nrule = \"fraud.bet_velocity\"\ntenant = \"acme\"\nkey = \"p-1\"\n\
             until = \"2030-01-01T00:00:00Z\"\nreason = \"a test account\"\n"
                .into(),
        ));
        let report = engine.replace_rules(RuleSet::from_sources(&sources).unwrap());
        assert!(
            report.fresh.is_empty() && report.removed.is_empty(),
            "{report:?}"
        );
        let next = engine.take_changes().unwrap();
        assert!(
            !next.full && next.units.is_empty(),
            "nothing changed since the save"
        );
        let now = Timestamp::from_millis(T0 + 1_000);
        let mut out = Output::default();
        for p in crate::scenario::script("acme", T0 + 1_000, 1, 1) {
            for e in &p.events {
                let e = pitboss_model::decode_event(e.to_string().as_bytes()).unwrap();
                engine.process(&e, now, &mut out).unwrap();
            }
        }
        let next = engine.take_changes().unwrap();
        assert!(
            !next.full && !next.units.is_empty(),
            "the windows one player moved"
        );
        // The responsible-gambling pack taken out: whole, its windows deleted.
        sources.retain(|(name, _)| !name.contains("responsible_gambling"));
        let report = engine.replace_rules(RuleSet::from_sources(&sources).unwrap());
        assert!(!report.removed.is_empty());
        let next = engine.take_changes().unwrap();
        assert!(next.full);
        store.save(2, &positions(), &next, Some(2)).unwrap();
        assert!(store.unit_count().unwrap() < n);
    }

    #[test]
    fn units_of_a_rule_no_longer_running_make_the_next_save_full_which_drops_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::open(&dir.path().join("s.db"), "g").unwrap();
        let mut engine = busy_engine();
        engine.track_changes(true);
        saved(&mut engine, &mut store);
        let n = store.unit_count().unwrap();
        // A window of a rule's earlier definition.
        let stale = Changes {
            full: false,
            units: vec![Change {
                unit: Unit::Window {
                    rule: "fraud.bet_velocity@0.0000000000000000".into(),
                    key: 1,
                },
                value: Some(vec![1, 0]),
                expires_at_ms: 0,
            }],
            meta: engine.take_changes().unwrap().meta,
        };
        store.save(2, &positions(), &stale, None).unwrap();
        assert_eq!(store.unit_count().unwrap(), n + 1);

        let mut r = restore(shipped(), &store).unwrap();
        assert_eq!(held(r.engine.stats()), held(engine.stats()));
        saved(&mut r.engine, &mut store);
        assert_eq!(store.unit_count().unwrap(), n, "the stale unit is gone");
        let mut r = restore(shipped(), &store).unwrap();
        assert!(!r.engine.take_changes().unwrap().full);
    }

    #[test]
    fn a_whole_engine_snapshot_is_restored_and_the_next_save_writes_it_as_units() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let engine = busy_engine();
        write_file_before_units(&path, "g", &positions(), &engine.snapshot().unwrap());
        let mut store = StateStore::open(&path, "g").unwrap();
        let mut r = restore(shipped(), &store).unwrap();
        assert_eq!(held(r.engine.stats()), held(engine.stats()));
        assert_eq!(r.skip_upto, positions().into_iter().collect());
        saved(&mut r.engine, &mut store);
        assert!(matches!(
            store.snapshot().unwrap().unwrap().engine,
            Saved::Units { .. }
        ));
        let mut r = restore(shipped(), &store).unwrap();
        assert_eq!(held(r.engine.stats()), held(engine.stats()));
        assert!(!r.engine.take_changes().unwrap().full);
    }

    #[test]
    fn an_unreadable_unit_starts_the_engine_cold_and_its_first_save_rewrites_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::open(&dir.path().join("s.db"), "g").unwrap();
        let mut engine = busy_engine();
        engine.track_changes(true);
        let mut c = engine.take_changes().unwrap();
        let bad = c.units.iter_mut().find(|c| matches!(c.unit, Unit::Bet(_)));
        bad.unwrap().value = Some(vec![99, 1, 2]);
        store.save(1, &positions(), &c, None).unwrap();
        let mut r = restore(shipped(), &store).unwrap();
        assert_eq!(r.engine.stats().keys, 0);
        assert!(r.skip_upto.is_empty() && r.replay.is_empty());
        saved(&mut r.engine, &mut store);
        assert_eq!(store.unit_count().unwrap(), 0);
    }
}
