//! `pitboss up` storing the live path, SIGKILLed while it stores: alerts, pushes, deliveries
//! and acks (and, as a control that shows any batch written twice, events) are published into
//! its log while it is stopped (the log is locked while it runs); `pitboss up` is started and
//! SIGKILLed as soon as it has stored some of them, four times; the fifth run stores the rest.
//! Afterwards the embedded store holds each message once — as many rows as distinct ids as
//! published — and `pitboss sql` reads the new tables.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pitboss_bus::embedded::{EmbeddedBus, EmbeddedConfig};
use pitboss_bus::{Bus, OutRecord, header};
use pitboss_model::encode_proto;
use pitboss_model::live::LiveMessage;
use pitboss_testkit::live;
use rand::Rng;

/// Alerts, pushes and events published; deliveries and acks: a tenth of it.
const N: u64 = 40_000;

/// `m` as its publisher puts it on the bus (docs/alerts.md: key and headers).
fn record<M: LiveMessage>(m: &M) -> OutRecord {
    let mut r = OutRecord::new(m.bus_key(), m.encode_proto())
        .with_header(header::TYPE, M::TYPE)
        .with_header(header::TENANT, m.tenant_id())
        .with_header(header::EVENT_TIME, m.event_time().as_millis().to_string());
    if let Some(at) = m.received_at() {
        r = r.with_header(header::RECEIVED_AT, at.as_millis().to_string());
    }
    r
}

/// Publishes everything into the log of `data_dir` (`pitboss up` not running), creating the
/// topics as `pitboss up` does (8 partitions).
async fn publish(data_dir: &std::path::Path) {
    let bus = EmbeddedBus::open(data_dir.join("log"), EmbeddedConfig::default()).unwrap();
    for topic in ["events", "alerts", "pushes", "deliveries", "alert_acks"] {
        bus.create_topic(topic, 8).await.unwrap();
    }
    let publisher = bus.publisher();
    for chunk in (0..N).collect::<Vec<_>>().chunks(5_000) {
        let alerts = chunk.iter().map(|i| record(&live::alert(*i))).collect();
        publisher.publish("alerts", alerts).await.unwrap();
        let pushes = chunk.iter().map(|i| record(&live::push(*i))).collect();
        publisher.publish("pushes", pushes).await.unwrap();
        let events = chunk
            .iter()
            .map(|i| {
                let e = pitboss_testkit::deposit(*i, 500);
                OutRecord::new(format!("acme:{}", e.player_id), encode_proto(&e))
            })
            .collect();
        publisher.publish("events", events).await.unwrap();
    }
    let tenth: Vec<u64> = (0..N / 10).collect();
    let deliveries = tenth.iter().map(|i| record(&live::delivery(*i))).collect();
    publisher.publish("deliveries", deliveries).await.unwrap();
    let acks = tenth.iter().map(|i| record(&live::ack(*i))).collect();
    publisher.publish("alert_acks", acks).await.unwrap();
}

/// A `pitboss up` the test started: killed when dropped, so a test that fails (panics) leaves
/// no process behind (one was found running after a failed CI run). Used as the `Child` it
/// holds; the second field is the address of its admin listener (`/metrics`).
struct Up(Child, String);

impl std::ops::Deref for Up {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Up {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `pitboss up` on free ports over `data_dir` without the rules engine (the messages
/// stored here are published by the test); returns once it is up.
fn up(data_dir: &std::path::Path) -> Up {
    up_with(data_dir, &["--no-rules"]).0
}

/// Starts `pitboss up` on free ports over `data_dir` with `extra` arguments; returns once it is
/// up, with the address of its API.
fn up_with(data_dir: &std::path::Path, extra: &[&str]) -> (Up, String) {
    let (child, addr, _) = up_full(data_dir, extra);
    (child, addr)
}

/// As [`up_with`], also returning the gateway's address.
fn up_full(data_dir: &std::path::Path, extra: &[&str]) -> (Up, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pitboss"))
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--gateway-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data_dir)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its log, drained; a start that fails shows its refusal (the last line).
    let errors = BufReader::new(child.stderr.take().unwrap());
    let last = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let keep = last.clone();
    // With `PITBOSS_TEST_UP_LOG` set, every line is also appended to that file (to read a
    // failure's runs afterwards).
    let mut log = std::env::var_os("PITBOSS_TEST_UP_LOG").map(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap()
    });
    std::thread::spawn(move || {
        use std::io::Write;
        for line in errors.lines().map_while(Result::ok) {
            if let Some(f) = log.as_mut() {
                let _ = writeln!(f, "{line}");
            }
            *keep.lock().unwrap() = line;
        }
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let Some(Ok(first)) = lines.next() else {
        let _ = child.wait();
        std::thread::sleep(Duration::from_millis(100));
        panic!("`pitboss up` did not start: {}", last.lock().unwrap());
    };
    let addr = first
        .strip_prefix("Pitboss is up: http://")
        .unwrap_or_else(|| panic!("{first}"))
        .to_owned();
    // The banner names the admin listener (`admin: http://ADDR/metrics`), then the gateway:
    // `  live:    ws://ADDR/v1/ws?token=…`.
    let mut admin = String::new();
    let gateway = loop {
        let line = lines.next().unwrap().unwrap();
        if let Some((_, rest)) = line.split_once("admin: http://") {
            admin = rest.split('/').next().unwrap().to_owned();
        }
        if let Some(rest) = line.trim_start().strip_prefix("live:") {
            let url = rest.trim_start().strip_prefix("ws://").unwrap();
            break url.split('/').next().unwrap().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {}); // keep the pipe drained
    assert!(!admin.is_empty(), "the banner names the admin listener");
    (Up(child, admin), addr, gateway)
}

/// `pitboss sql --format json` over `data_dir`: one JSON object per row.
fn sql(data_dir: &std::path::Path, query: &str) -> Vec<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_pitboss"))
        .args(["sql", "--format", "json", "--data-dir"])
        .arg(data_dir)
        .arg(query)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{query}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The series of `name` on the admin listener `admin` of a `pitboss up`: (labels, value).
async fn series(admin: &str, name: &str) -> Vec<(String, f64)> {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    pitboss_testkit::metrics::series(&text, name)
}

/// Waits until each of the `engines` rules engines of the `pitboss up` whose admin listener is
/// `admin` has completed a save in this run (`pitboss_antifraud_snapshot_units{group}` is set
/// at the end of each).
async fn saved(admin: &str, engines: usize) {
    let start = Instant::now();
    while series(admin, "pitboss_antifraud_snapshot_units")
        .await
        .len()
        < engines
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{engines} engines did not save in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the rules engines of the `pitboss up` whose admin listener is `admin` rebuilt at their
/// start: (units of state restored, batches replayed so far), all groups summed.
async fn rebuilt(admin: &str) -> (f64, f64) {
    let sum = |s: Vec<(String, f64)>| s.iter().map(|(_, v)| v).sum();
    (
        sum(series(admin, "pitboss_antifraud_restored_units").await),
        sum(series(admin, "pitboss_antifraud_replayed_batches_total").await),
    )
}

/// Rows stored so far: (alerts, pushes, deliveries, acks, events); zeros while the store does
/// not exist or has no tables yet (its first start is migrating it).
fn stored(data_dir: &std::path::Path) -> [u64; 5] {
    let out = Command::new(env!("CARGO_BIN_EXE_pitboss"))
        .args(["sql", "--format", "json", "--data-dir"])
        .arg(data_dir)
        .arg(
            "SELECT (SELECT count(*) FROM alerts) AS a, (SELECT count(*) FROM pushes) AS p,
                    (SELECT count(*) FROM deliveries) AS d, (SELECT count(*) FROM alert_acks) AS k,
                    (SELECT count(*) FROM events) AS e",
        )
        .output()
        .unwrap();
    if !out.status.success() {
        let error = String::from_utf8_lossy(&out.stderr);
        assert!(
            error.contains("no embedded store") || error.contains("no such table"),
            "{error}"
        );
        return [0; 5];
    }
    let row: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    ["a", "p", "d", "k", "e"].map(|c| row[c].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_stores_the_live_path_once_through_sigkills() {
    let dir = tempfile::tempdir().unwrap();
    publish(dir.path()).await;
    let all = [N, N, N / 10, N / 10, N];

    // Killed as soon as it has stored something new, give or take a few milliseconds: in the
    // middle of storing. At least four kills, and more (up to sixteen) until one fell while
    // alerts or pushes were partly stored (how far each kill gets depends on the machine).
    let mut seen: Vec<[u64; 5]> = Vec::new();
    let partly = |seen: &[[u64; 5]]| {
        seen.iter().any(|s| s[0] > 0 && s[0] < N) || seen.iter().any(|s| s[1] > 0 && s[1] < N)
    };
    for round in 0..16 {
        if round >= 4 && (partly(&seen) || seen.last() == Some(&all)) {
            break;
        }
        let before = stored(dir.path());
        let mut child = up(dir.path());
        let start = Instant::now();
        // From the fifth round on, killed once alerts or pushes (not only the other tables)
        // have moved: on a busy machine the first rows stored after a start were always
        // events, deliveries or acks, and twelve kills never caught alerts half stored.
        let moved = |now: [u64; 5]| {
            if round < 4 || (before[0] == N && before[1] == N) {
                now != before
            } else {
                now[0] != before[0] || now[1] != before[1]
            }
        };
        while !moved(stored(dir.path())) && start.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let wait = rand::rng().random_range(0..200);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let now = stored(dir.path());
        assert!(
            now != before || now == all,
            "round {round}: nothing stored in 60 s"
        );
        seen.push(now);
    }

    let mut child = up(dir.path());
    let start = Instant::now();
    while stored(dir.path()) != all && start.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // anything extra would show up now
    let distinct = sql(
        dir.path(),
        "SELECT (SELECT count(DISTINCT alert_id) FROM alerts) AS a,
                (SELECT count(DISTINCT push_id) FROM pushes) AS p,
                (SELECT count(DISTINCT message_id || '/' || connection_id) FROM deliveries) AS d,
                (SELECT count(DISTINCT ack_id) FROM alert_acks) AS k,
                (SELECT count(DISTINCT event_id) FROM events) AS e",
    );
    let distinct = ["a", "p", "d", "k", "e"].map(|c| distinct[0][c].as_u64().unwrap());
    assert_eq!(
        (stored(dir.path()), distinct),
        (all, all),
        "rows after each kill (alerts, pushes, deliveries, acks, events): {seen:?}"
    );
    assert!(
        partly(&seen),
        "some kills fell in the middle of storing: {seen:?}"
    );

    // `pitboss sql` reads the new tables and the rollup.
    let a = live::alert(7);
    let rows = sql(
        dir.path(),
        &format!(
            "SELECT rule_id, severity, player_id, json_extract(measures, '$[0].name') AS measure
             FROM alerts WHERE alert_id = '{}'",
            a.alert_id
        ),
    );
    assert_eq!(
        rows,
        [serde_json::json!({
            "rule_id": "rg.loss_chasing", "severity": "medium", "player_id": "p-7",
            "measure": "net_loss"
        })]
    );
    let p = live::push(7);
    let rows = sql(
        dir.path(),
        &format!(
            "SELECT p.target_type, p.target_id, p.alert_id = '{}' AS of_the_alert,
                    d.delivered_at_ms - d.received_at_ms >= 0 AS notified
             FROM pushes p JOIN deliveries d ON d.message_id = p.push_id
             WHERE p.push_id = '{}'",
            a.alert_id, p.push_id
        ),
    );
    assert_eq!(
        rows,
        [serde_json::json!({
            "target_type": "player", "target_id": "p-7", "of_the_alert": 1, "notified": 1
        })]
    );
    let rows = sql(dir.path(), "SELECT sum(alerts) AS n FROM alerts_per_minute");
    assert_eq!(rows, [serde_json::json!({"n": N})]);

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}

/// Alert and push ids the shipped packs raise from `events` (in this order), computed by the
/// pure engine.
fn expected(events: &[serde_json::Value]) -> (BTreeSet<String>, BTreeSet<String>) {
    let out = pure(events);
    (
        out.alerts.iter().map(|a| a.alert_id.clone()).collect(),
        out.pushes.iter().map(|p| p.push_id.clone()).collect(),
    )
}

/// What the pure engine raises from `events` in this order.
fn pure(events: &[serde_json::Value]) -> pitboss_antifraud::Output {
    let set =
        pitboss_antifraud::RuleSet::from_sources(&pitboss_antifraud::stream::shipped_sources())
            .unwrap();
    let mut engine = pitboss_antifraud::Engine::new(set);
    let mut out = pitboss_antifraud::Output::default();
    for e in events {
        let event = pitboss_model::decode_event(e.to_string().as_bytes()).unwrap();
        let now = pitboss_model::Timestamp::now();
        engine.process(&event, now, &mut out).unwrap();
    }
    out
}

/// The ids of the multi-accounting alerts the pure engine raises from `events` in this order
/// (another order of the shared logins raises them on another account).
fn expected_shared(events: &[serde_json::Value]) -> BTreeSet<String> {
    pure(events)
        .alerts
        .iter()
        .filter(|a| a.rule_id.starts_with("fraud.multi_accounting"))
        .map(|a| a.alert_id.clone())
        .collect()
}

/// Posts `batch`: Ok once it is answered 200, else what came back instead.
async fn post_until_answered(
    client: &reqwest::Client,
    addr: &str,
    key: &str,
    batch: &[serde_json::Value],
) -> Result<(), String> {
    match client
        .post(format!("http://{addr}/v1/events"))
        .bearer_auth(key)
        .json(batch)
        .send()
        .await
    {
        Ok(r) if r.status() == 200 => Ok(()),
        Ok(r) => Err(format!(
            "{}: {}",
            r.status(),
            r.text().await.unwrap_or_default()
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// The scripted day of play (fraud and risky-play patterns among normal players) posted to
/// `pitboss up` over HTTP while it is SIGKILLed five times at random moments: afterwards the
/// store holds exactly the alerts and pushes the pure engine raises from the same events —
/// none missed, none twice, none for a normal player.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_raises_exactly_the_scripted_alerts_through_five_sigkills() {
    let dir = scripted_alerts_through_five_sigkills_of_up(&[]).await;
    assert!(dir.path().join("antifraud.db").exists());
}

/// The same across power cuts: the data directory is on a file system that keeps what is
/// written in memory until it is fsynced (`scripts/powercut_fs.py`), and each stop kills the
/// process and that file system together, so only what was fsynced survives, as after the power
/// goes. Every event answered `accepted` is stored once, and the alerts and pushes are exactly
/// the pure engine's (docs/bus.md, docs/processor.md, docs/rules.md: acknowledged events, the
/// store's rows and offsets, the engine's log and state survive a power cut).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_raises_exactly_the_scripted_alerts_through_five_power_cuts() {
    let dir = scripted_alerts_through_five_stops_of_up(&[], Stop::PowerCut).await;
    assert!(dir.path().join("disk/antifraud.db").exists());
}

/// The same with the rules split over three engines in the process (`--rules-shards 3`): the
/// device and address rules' hits for players another shard owns cross on the forwards topic of
/// the embedded log, and the store holds exactly what one pure engine raises.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_with_split_rules_engines_raises_exactly_the_scripted_alerts_through_five_sigkills() {
    let dir = scripted_alerts_through_five_sigkills_of_up(&["--rules-shards", "3"]).await;
    // Three engines ran, each with its own state.
    for i in 0..3 {
        let state = dir.path().join(format!("antifraud-shard-{i}-of-3.db"));
        assert!(state.exists(), "{}", state.display());
    }
    assert!(!dir.path().join("antifraud.db").exists());
}

/// How a round of [`scripted_alerts_through_five_stops_of_up`] ends.
#[derive(Clone, Copy, PartialEq)]
enum Stop {
    /// SIGKILL: the process dies, what it wrote stays in the OS's cache.
    Kill,
    /// A power cut: the data directory is on `scripts/powercut_fs.py`, and the process and the
    /// file system are SIGKILLed together, so nothing that was not fsynced survives.
    PowerCut,
}

/// A data directory on `scripts/powercut_fs.py`: `mnt` shows `disk` with what is written held
/// in the file system's memory until it is fsynced.
struct Mounted {
    fs: Child,
    mnt: std::path::PathBuf,
}

impl Mounted {
    fn new(disk: &std::path::Path, mnt: &std::path::Path) -> Mounted {
        use std::os::unix::fs::MetadataExt;
        std::fs::create_dir_all(disk).unwrap();
        std::fs::create_dir_all(mnt).unwrap();
        let parent = std::fs::metadata(mnt.parent().unwrap()).unwrap().dev();
        let fs = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/scripts/powercut_fs.py"
            ))
            .args([disk, mnt])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut mounted = Mounted {
            fs,
            mnt: mnt.to_owned(),
        };
        let start = Instant::now();
        while std::fs::metadata(mnt).unwrap().dev() == parent {
            assert!(
                mounted.fs.try_wait().unwrap().is_none(),
                "scripts/powercut_fs.py exited (fuse3 and mfusepy are installed by scripts/stack.sh)"
            );
            assert!(start.elapsed() < Duration::from_secs(30), "not mounted");
            std::thread::sleep(Duration::from_millis(20));
        }
        mounted
    }

    /// The power goes: the file system dies with what it held, and is unmounted.
    fn cut(&mut self) {
        let _ = self.fs.kill();
        let _ = self.fs.wait();
        let out = Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(&self.mnt)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "fusermount3: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if matches!(self.fs.try_wait(), Ok(None)) {
            self.cut();
        }
    }
}

/// The power-cut file system itself: while mounted, reads see what was written (a rewrite with
/// O_TRUNC included); after the cut, only what was fsynced is on the disk. (If it passed
/// everything through, the power-cut test below would prove nothing.)
#[test]
fn the_power_cut_file_system_keeps_only_what_was_synced() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let (disk, mnt) = (dir.path().join("disk"), dir.path().join("mnt"));
    let mut fs = Mounted::new(&disk, &mnt);
    std::fs::write(mnt.join("unsynced"), "lost").unwrap();
    let mut synced = std::fs::File::create(mnt.join("synced")).unwrap();
    synced.write_all(b"kept").unwrap();
    synced.sync_all().unwrap();
    drop(synced);
    // Synced long, then rewritten shorter without a sync.
    let mut rewritten = std::fs::File::create(mnt.join("rewritten")).unwrap();
    rewritten.write_all(b"a longer first version").unwrap();
    rewritten.sync_all().unwrap();
    drop(rewritten);
    std::fs::write(mnt.join("rewritten"), "short").unwrap();
    for (name, want) in [
        ("unsynced", "lost"),
        ("synced", "kept"),
        ("rewritten", "short"),
    ] {
        assert_eq!(
            std::fs::read_to_string(mnt.join(name)).unwrap(),
            want,
            "{name}, mounted"
        );
    }
    fs.cut();
    for (name, want) in [("unsynced", ""), ("synced", "kept"), ("rewritten", "")] {
        assert_eq!(
            std::fs::read_to_string(disk.join(name)).unwrap(),
            want,
            "{name}, after the cut"
        );
    }
}

async fn scripted_alerts_through_five_sigkills_of_up(extra: &[&str]) -> tempfile::TempDir {
    scripted_alerts_through_five_stops_of_up(extra, Stop::Kill).await
}

/// The scripted day posted to `pitboss up`, stopped five times by `stop`: afterwards the store
/// holds every event once and exactly the alerts and pushes the pure engine raises. Returns the
/// directory whose `disk` (power cuts) or itself (kills) is the data directory.
async fn scripted_alerts_through_five_stops_of_up(extra: &[&str], stop: Stop) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    // Where `pitboss up` writes (a mount of the disk for power cuts) and where it is read after.
    let (disk, mnt) = match stop {
        Stop::Kill => (dir.path().to_owned(), dir.path().to_owned()),
        Stop::PowerCut => (dir.path().join("disk"), dir.path().join("mnt")),
    };
    let now = pitboss_model::Timestamp::now().as_millis();
    let mut parts = pitboss_antifraud::scenario::script("demo", now, 300, 3);
    // Multi-accounting across partitions (and, split, across shards): which account raises the
    // alert depends on the order the logins are read in; one alert per rule and shared key.
    let copies = 2;
    parts.extend(pitboss_antifraud::scenario::shared_accounts(
        "demo", now, copies,
    ));
    let want_shared: Vec<(String, String)> = (0..copies)
        .flat_map(|c| {
            [
                (
                    "fraud.multi_accounting.device".to_owned(),
                    format!("shared-device-{c}"),
                ),
                (
                    "fraud.multi_accounting.ip".to_owned(),
                    format!("198.51.100.{}", 10 + c),
                ),
            ]
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // Interleave the players (each one's events stay in order), as concurrent play would.
    let mut events = Vec::new();
    let longest = parts.iter().map(|p| p.events.len()).max().unwrap();
    for i in 0..longest {
        for p in &parts {
            events.extend(p.events.get(i).cloned());
        }
    }
    let (mut want_alerts, want_pushes) = expected(&events);
    assert!(want_alerts.len() >= 21 && !want_pushes.is_empty());
    let shared_ids = expected_shared(&events);
    want_alerts.retain(|id| !shared_ids.contains(id));

    let client = reqwest::Client::new();
    let batches: Vec<&[serde_json::Value]> = events.chunks(40).collect();
    let mut next = 0;
    let mut rounds = Vec::new();
    // Engines in the process (one per shard), and batches they replayed after a restart.
    let engines = extra
        .iter()
        .position(|a| *a == "--rules-shards")
        .map_or(1, |i| extra[i + 1].parse::<usize>().unwrap());
    let (mut restored, mut replayed) = (0.0, 0.0);
    for round in 0..6 {
        // Snapshots every 700 ms: some kills land after one, most with batches logged since.
        let mut args = vec!["--snapshot-interval-ms", "700", "--save-slice-units", "20"];
        args.extend(extra);
        // The last round runs on the disk itself: what the cuts left there.
        let mut mounted = (stop == Stop::PowerCut && round < 5).then(|| Mounted::new(&disk, &mnt));
        let data = if mounted.is_some() { &mnt } else { &disk };
        let (mut child, addr) = up_with(data, &args);
        let key = std::fs::read_to_string(data.join("demo-api-key"))
            .unwrap()
            .trim()
            .to_owned();
        // A sixth of the stream per round; the last round sends the rest.
        let until = if round == 5 {
            batches.len()
        } else {
            (next + batches.len() / 6).min(batches.len())
        };
        let posted_from = next;
        while next < until {
            if let Err(e) = post_until_answered(&client, &addr, &key, batches[next]).await {
                panic!("round {round}: batch {next} not answered: {e}");
            }
            next += 1;
        }
        if round == 5 {
            let start = Instant::now();
            loop {
                let row = &sql(
                    &disk,
                    "SELECT (SELECT count(*) FROM alerts) AS n, (SELECT count(*) FROM events) AS e",
                )[0];
                let (n, e) = (row["n"].as_u64().unwrap(), row["e"].as_u64().unwrap());
                if (n as usize >= want_alerts.len() + want_shared.len()
                    && e as usize >= events.len())
                    || start.elapsed() > Duration::from_secs(120)
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await; // anything extra would show now
            let (u, b) = rebuilt(&child.1).await;
            (restored, replayed) = (restored + u, replayed + b);
            child.kill().unwrap();
            child.wait().unwrap();
            break;
        }
        if matches!(round, 1 | 3 | 4) && next > posted_from {
            // These kills come after a save of this run: the next start restores its units
            // and replays the batches logged since. The others may come before this run's
            // first save (a start with no state, every batch logged from the beginning
            // replayed by the next). A run given nothing new may have nothing to save.
            saved(&child.1, engines).await;
        }
        // Killed while the engine works through what was just posted, or soon after: before
        // or after its next snapshot; and while the next batches are being posted, so that one
        // is in flight. A batch not answered is posted again after the restart, as a client
        // retries (the same ids); one answered must survive.
        let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let poster = {
            let (client, addr, key, answered) =
                (client.clone(), addr.clone(), key.clone(), answered.clone());
            // A few batches, paced, so the stream lasts through the rounds.
            let ahead: Vec<Vec<serde_json::Value>> = batches[next..]
                .iter()
                .take(10)
                .map(|b| b.to_vec())
                .collect();
            tokio::spawn(async move {
                for batch in &ahead {
                    if post_until_answered(&client, &addr, &key, batch)
                        .await
                        .is_err()
                    {
                        break;
                    }
                    answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(40)).await;
                }
            })
        };
        let wait = rand::rng().random_range(0..900);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        eprintln!("round {round}: killed {wait} ms after batch {next} was answered");
        let (u, b) = rebuilt(&child.1).await;
        (restored, replayed) = (restored + u, replayed + b);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        if let Some(m) = mounted.as_mut() {
            m.cut();
        }
        poster.abort();
        let _ = poster.await;
        next += answered.load(std::sync::atomic::Ordering::SeqCst);
        rounds.push(stored(&disk)[0]);
    }

    // Restarts rebuilt what was evaluated before the kills from saved state and logged
    // batches (not only re-read the log afresh, as a start with no state does).
    assert!(
        restored > 0.0 && replayed > 0.0,
        "units restored {restored}, batches replayed {replayed}: {rounds:?}"
    );

    let ids = |q: &str, col: &str| -> Vec<String> {
        sql(&disk, q)
            .iter()
            .map(|r| r[col].as_str().unwrap().to_owned())
            .collect()
    };
    let alerts = ids(
        "SELECT alert_id FROM alerts WHERE rule_id NOT LIKE 'fraud.multi_accounting%' \
         ORDER BY alert_id",
        "alert_id",
    );
    let pushes = ids("SELECT push_id FROM pushes ORDER BY push_id", "push_id");
    // Every event was answered accepted: each is stored, once.
    let posted: BTreeSet<String> = events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(posted.len(), events.len());
    let kept = ids("SELECT event_id FROM events ORDER BY event_id", "event_id");
    assert_eq!(
        kept,
        posted.into_iter().collect::<Vec<_>>(),
        "events stored once each"
    );
    assert_eq!(
        alerts,
        want_alerts.iter().cloned().collect::<Vec<_>>(),
        "alerts stored after each kill: {rounds:?}"
    );
    assert_eq!(pushes, want_pushes.iter().cloned().collect::<Vec<_>>());
    // Each pattern's player raised its rule, and nobody else raised anything.
    // One alert per shared device and address, on one of the accounts that shared it.
    let shared_raised: Vec<(String, String, String)> = sql(
        &disk,
        "SELECT rule_id, group_key, player_id FROM alerts \
         WHERE rule_id LIKE 'fraud.multi_accounting%' ORDER BY rule_id, group_key",
    )
    .iter()
    .map(|r| {
        let s = |c: &str| r[c].as_str().unwrap().to_owned();
        (s("rule_id"), s("group_key"), s("player_id"))
    })
    .collect();
    assert_eq!(
        shared_raised
            .iter()
            .map(|(r, k, _)| (r.clone(), k.clone()))
            .collect::<Vec<_>>(),
        want_shared,
        "{shared_raised:?}"
    );
    for (_, key, player) in &shared_raised {
        let copy = match key.strip_prefix("shared-device-") {
            Some(c) => c.to_owned(),
            None => (key.rsplit('.').next().unwrap().parse::<usize>().unwrap() - 10).to_string(),
        };
        assert!(
            player.starts_with(&format!("shared-{copy}-")),
            "{key}: {player}"
        );
    }
    let raised: BTreeSet<(String, String)> = sql(
        &disk,
        "SELECT DISTINCT rule_id, player_id FROM alerts \
         WHERE rule_id NOT LIKE 'fraud.multi_accounting%'",
    )
    .iter()
    .map(|r| {
        let s = |c: &str| r[c].as_str().unwrap().to_owned();
        (s("rule_id"), s("player_id"))
    })
    .collect();
    let scripted: BTreeSet<(String, String)> = parts
        .iter()
        .flat_map(|p| p.fires.iter().map(|r| ((*r).to_owned(), p.player.clone())))
        .collect();
    assert_eq!(raised, scripted);
    dir
}

/// `pitboss token` for `pitboss up`'s gateway.
fn token(data_dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pitboss"))
        .arg("token")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next JSON frame of `ws` (fails the test after 30 s or on a close).
async fn frame(ws: &mut Ws) -> serde_json::Value {
    use futures::StreamExt;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("a frame within 30 s")
            .expect("open")
            .unwrap();
        if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

async fn send(ws: &mut Ws, v: serde_json::Value) {
    use futures::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        v.to_string().into(),
    ))
    .await
    .unwrap();
}

/// An operator console on `pitboss up`'s gateway sees the scripted day's alerts live as the
/// rules engine raises them, acknowledges each; `pitboss up` is SIGKILLed; the rest of the day
/// is posted to a restarted `pitboss up` while the console is away; the console reconnects to
/// the new process with its cursor and gets exactly the alerts it missed — none it had (acked
/// or seen), none twice — and the resume says `complete`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_console_sees_alerts_live_and_resumes_after_a_sigkill_with_exactly_what_it_missed()
 {
    let dir = tempfile::tempdir().unwrap();
    let now = pitboss_model::Timestamp::now().as_millis();
    let parts = pitboss_antifraud::scenario::script("demo", now, 300, 2);
    let (first, second): (Vec<_>, Vec<_>) = parts.iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let events = |half: &[(usize, &pitboss_antifraud::scenario::Part)]| -> Vec<serde_json::Value> {
        half.iter().flat_map(|(_, p)| p.events.clone()).collect()
    };
    let (first, second) = (events(&first), events(&second));
    let (want_first, _) = expected(&first);
    let all: Vec<_> = first.iter().chain(&second).cloned().collect();
    let (want_all, _) = expected(&all);
    assert!(!want_first.is_empty() && want_all.len() > want_first.len());

    let client = reqwest::Client::new();
    let (mut child, addr, gateway) = up_full(dir.path(), &["--snapshot-interval-ms", "500"]);
    let key = std::fs::read_to_string(dir.path().join("demo-api-key"))
        .unwrap()
        .trim()
        .to_owned();
    let ops = token(
        dir.path(),
        &["--tenant", "demo", "--role", "operator", "--subject", "ops"],
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{gateway}/v1/ws?token={ops}"))
        .await
        .unwrap();
    assert_eq!(frame(&mut ws).await["type"], "welcome");
    send(
        &mut ws,
        serde_json::json!({"type": "subscribe", "channel": "operator:demo"}),
    )
    .await;
    assert_eq!(frame(&mut ws).await["type"], "subscribed");
    for batch in first.chunks(40) {
        post_until_answered(&client, &addr, &key, batch)
            .await
            .unwrap();
    }
    // Live: every alert of the first half, each acknowledged as it arrives.
    let mut seen = BTreeSet::new();
    let mut cursor = String::new();
    while seen.len() < want_first.len() {
        let f = frame(&mut ws).await;
        match f["type"].as_str() {
            Some("message") => {
                let id = f["id"].as_str().unwrap().to_owned();
                assert!(seen.insert(id.clone()), "{id} delivered twice");
                cursor = f["cursor"].as_str().unwrap().to_owned();
                send(&mut ws, serde_json::json!({"type": "ack", "alert_id": id})).await;
            }
            Some("cursor") => cursor = f["cursor"].as_str().unwrap().to_owned(),
            // The answer to an ack, and its news to every console of the tenant.
            Some("acked" | "alert_acked") => {}
            other => panic!("{other:?}: {f}"),
        }
    }
    assert_eq!(seen, want_first);
    // Every ack answered (stored on the bus) before the kill.
    let mut acked = 0;
    while acked < want_first.len() {
        let f = frame(&mut ws).await;
        match f["type"].as_str() {
            Some("acked") => acked += 1,
            Some("alert_acked") => {}
            Some("cursor") => cursor = f["cursor"].as_str().unwrap().to_owned(),
            other => panic!("{other:?}: {f}"),
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    drop(ws);

    let (mut child, addr, gateway) = up_full(dir.path(), &["--snapshot-interval-ms", "500"]);
    for batch in second.chunks(40) {
        post_until_answered(&client, &addr, &key, batch)
            .await
            .unwrap();
    }
    let start = Instant::now();
    while (sql(dir.path(), "SELECT count(*) AS n FROM alerts")[0]["n"]
        .as_u64()
        .unwrap() as usize)
        < want_all.len()
    {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "alerts not all raised"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{gateway}/v1/ws?token={ops}"))
        .await
        .unwrap();
    assert_eq!(frame(&mut ws).await["type"], "welcome");
    send(
        &mut ws,
        serde_json::json!({"type": "subscribe", "channel": "operator:demo", "since": cursor}),
    )
    .await;
    let mut replayed = BTreeSet::new();
    let subscribed = loop {
        let f = frame(&mut ws).await;
        match f["type"].as_str() {
            Some("message") => {
                assert_eq!(f["replayed"], true);
                let id = f["id"].as_str().unwrap().to_owned();
                assert!(replayed.insert(id.clone()), "{id} replayed twice");
            }
            Some("alert_acked") => {}
            _ => break f,
        }
    };
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    assert_eq!(subscribed["recovery"], "complete", "{subscribed}");
    let missed: BTreeSet<String> = want_all.difference(&want_first).cloned().collect();
    assert_eq!(replayed, missed);
    child.kill().unwrap();
    child.wait().unwrap();
}

/// `query` against ClickHouse at `url` (database `db`): one JSON object per row, 64-bit
/// integers as numbers.
async fn clickhouse_rows(url: &str, db: &str, query: &str) -> Vec<serde_json::Value> {
    let r = reqwest::Client::new()
        .post(format!(
            "{url}/?database={db}&output_format_json_quote_64bit_integers=0"
        ))
        .body(format!("{query} FORMAT JSONEachRow"))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert!(status.is_success(), "{query}: {text}");
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `pitboss up --kafka-bootstrap … --clickhouse-url …`: the same command on Kafka and
/// ClickHouse. The scripted day of play is posted over HTTP in four rounds; the first two end
/// with a SIGKILL at a random moment, the third with a SIGTERM (which must exit 0). Afterwards
/// ClickHouse holds every posted event once and exactly the alerts and pushes the pure engine
/// raises from the same events, each once; an operator's console figures (`/v1/stats`) are
/// read from ClickHouse and count those alerts; a second `pitboss up` on another topic prefix
/// and database on the same cluster sees none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_on_kafka_and_clickhouse_stores_exactly_the_scripted_alerts_through_sigkill_and_sigterm()
{
    let (kafka, clickhouse) = (pitboss_testkit::kafka(), pitboss_testkit::clickhouse());
    let prefix = format!("{}_", pitboss_testkit::unique_name("up"));
    let db = pitboss_testkit::unique_name("up");
    let dir = tempfile::tempdir().unwrap();
    let now = pitboss_model::Timestamp::now().as_millis();
    let parts = pitboss_antifraud::scenario::script("demo", now, 300, 2);
    let mut events = Vec::new();
    let longest = parts.iter().map(|p| p.events.len()).max().unwrap();
    for i in 0..longest {
        for p in &parts {
            events.extend(p.events.get(i).cloned());
        }
    }
    // The script's day lies in the past; the console's figures (bets in the last hour,
    // players in the last five minutes) need some play of now.
    let at = pitboss_model::Timestamp::now().to_rfc3339().unwrap();
    events.extend((0..8).map(|i| pitboss_testkit::client_bet(i, &at)));
    let (want_alerts, want_pushes) = expected(&events);
    assert!(want_alerts.len() >= 14 && !want_pushes.is_empty());
    let args = [
        "--kafka-bootstrap",
        &kafka,
        "--topic-prefix",
        &prefix,
        "--clickhouse-url",
        &clickhouse,
        "--clickhouse-database",
        &db,
        "--snapshot-interval-ms",
        "700",
        "--save-slice-units",
        "20",
    ];
    let stored_alerts = || async {
        clickhouse_rows(&clickhouse, &db, "SELECT count() AS n FROM alerts").await[0]["n"]
            .as_u64()
            .unwrap() as usize
    };

    let client = reqwest::Client::new();
    let batches: Vec<&[serde_json::Value]> = events.chunks(40).collect();
    let mut next = 0;
    let mut restored = 0.0;
    for round in 0..4 {
        let (mut child, addr, gateway) = up_full(dir.path(), &args);
        let key = std::fs::read_to_string(dir.path().join("demo-api-key"))
            .unwrap()
            .trim()
            .to_owned();
        let until = if round == 3 {
            batches.len()
        } else {
            (next + batches.len() / 4).min(batches.len())
        };
        while next < until {
            if let Err(e) = post_until_answered(&client, &addr, &key, batches[next]).await {
                panic!("round {round}: batch {next} not answered: {e}");
            }
            next += 1;
        }
        // Each stop comes after the engine saved in this run (a restarted member waits out the
        // dead one's session before it gets partitions): the next start restores.
        if round < 3 {
            saved(&child.1, 1).await;
        }
        if round > 0 {
            restored += rebuilt(&child.1).await.0;
        }
        match round {
            0 | 1 => {
                let wait = rand::rng().random_range(0..900);
                tokio::time::sleep(Duration::from_millis(wait)).await;
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
            }
            2 => {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
                let status = child.wait().unwrap();
                assert!(status.success(), "SIGTERM: {status}");
            }
            _ => {
                let start = Instant::now();
                while stored_alerts().await < want_alerts.len()
                    && start.elapsed() < Duration::from_secs(120)
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                // The console's figures below count the play of now, the last batch: stored
                // by the processor, which yields to the live path, maybe after the alerts.
                let stored_now = || async {
                    clickhouse_rows(
                        &clickhouse,
                        &db,
                        "SELECT count() AS n FROM events \
                         WHERE event_id LIKE '0193735a-0000-7000-8000-%'",
                    )
                    .await[0]["n"]
                        .as_u64()
                        .unwrap() as usize
                };
                while stored_now().await < 8 && start.elapsed() < Duration::from_secs(120) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                tokio::time::sleep(Duration::from_secs(2)).await; // anything extra would show now
                // The console's figures, from ClickHouse.
                let ops = token(
                    dir.path(),
                    &["--tenant", "demo", "--role", "operator", "--subject", "ops"],
                );
                let stats: serde_json::Value = client
                    .get(format!("http://{gateway}/v1/stats"))
                    .bearer_auth(&ops)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                assert_eq!(stats["store"], true, "{stats}");
                assert!(stats.get("store_error").is_none(), "{stats}");
                assert_eq!(
                    stats["alerts_last_hour"].as_u64(),
                    Some(want_alerts.len() as u64),
                    "{stats}"
                );
                assert!(stats["active_players"].as_u64().unwrap() > 0, "{stats}");
                assert!(
                    !stats["ggr_by_game"].as_array().unwrap().is_empty(),
                    "{stats}"
                );
                assert!(
                    !stats["recent_pushes"].as_array().unwrap().is_empty(),
                    "{stats}"
                );
                child.kill().unwrap();
                child.wait().unwrap();
            }
        }
    }
    assert!(restored > 0.0, "no start restored the engine's state");

    let ids = |rows: Vec<serde_json::Value>, col: &str| -> Vec<String> {
        rows.iter()
            .map(|r| r[col].as_str().unwrap().to_owned())
            .collect()
    };
    // One row per id (FINAL: a message the engine published again after a SIGKILL is one id
    // stored twice until the table merges it), and exactly the expected ids.
    let alerts = ids(
        clickhouse_rows(
            &clickhouse,
            &db,
            "SELECT alert_id FROM alerts FINAL ORDER BY alert_id",
        )
        .await,
        "alert_id",
    );
    assert_eq!(alerts, want_alerts.iter().cloned().collect::<Vec<_>>());
    let pushes = ids(
        clickhouse_rows(
            &clickhouse,
            &db,
            "SELECT push_id FROM pushes FINAL ORDER BY push_id",
        )
        .await,
        "push_id",
    );
    assert_eq!(pushes, want_pushes.iter().cloned().collect::<Vec<_>>());
    let counts = &clickhouse_rows(
        &clickhouse,
        &db,
        "SELECT count() AS n, uniqExact(event_id) AS ids FROM events",
    )
    .await[0];
    assert_eq!(counts["n"].as_u64(), Some(events.len() as u64), "{counts}");
    assert_eq!(
        counts["ids"].as_u64(),
        Some(events.len() as u64),
        "{counts}"
    );

    // Another deployment on the same cluster (another prefix and database): it stores what
    // is posted to it and nothing of the first's topics, and the first's tables do not change.
    let other = tempfile::tempdir().unwrap();
    let other_db = pitboss_testkit::unique_name("up");
    let other_prefix = format!("{}_", pitboss_testkit::unique_name("up"));
    let (mut child, addr, _) = up_full(
        other.path(),
        &[
            "--kafka-bootstrap",
            &kafka,
            "--topic-prefix",
            &other_prefix,
            "--clickhouse-url",
            &clickhouse,
            "--clickhouse-database",
            &other_db,
        ],
    );
    let key = std::fs::read_to_string(other.path().join("demo-api-key"))
        .unwrap()
        .trim()
        .to_owned();
    let own: Vec<serde_json::Value> = (100..108)
        .map(|i| pitboss_testkit::client_bet(i, &at))
        .collect();
    post_until_answered(&client, &addr, &key, &own)
        .await
        .unwrap();
    let count = |db: String| {
        let clickhouse = clickhouse.clone();
        async move {
            clickhouse_rows(&clickhouse, &db, "SELECT count() AS n FROM events").await[0]["n"]
                .as_u64()
                .unwrap()
        }
    };
    let start = Instant::now();
    while count(other_db.clone()).await < own.len() as u64 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the second deployment stored nothing"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // anything of the first would show now
    assert_eq!(count(other_db.clone()).await, own.len() as u64);
    assert_eq!(count(db.clone()).await, events.len() as u64);
    child.kill().unwrap();
    child.wait().unwrap();
}
