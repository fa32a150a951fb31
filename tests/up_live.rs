//! `pitboss up` storing the live path, SIGKILLed while it stores: alerts, pushes, deliveries
//! and acks (and, as a control that shows any batch written twice, events) are published into
//! its log while it is stopped (the log is locked while it runs); `pitboss up` is started and
//! SIGKILLed as soon as it has stored some of them, four times; the fifth run stores the rest.
//! Afterwards the embedded store holds each message once — as many rows as distinct ids as
//! published — and `pitboss sql` reads the new tables.

#![allow(clippy::unwrap_used)]

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

/// Starts `pitboss up` on free ports over `data_dir`; returns once it is up.
fn up(data_dir: &std::path::Path) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pitboss"))
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("Pitboss is up: "), "{first}");
    std::thread::spawn(move || for _ in lines {}); // keep the pipe drained
    child
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
    // middle of storing.
    let mut seen = Vec::new();
    for round in 0..4 {
        let before = stored(dir.path());
        let mut child = up(dir.path());
        let start = Instant::now();
        while stored(dir.path()) == before && start.elapsed() < Duration::from_secs(60) {
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
        seen.iter().any(|s| s[0] > 0 && s[0] < N) || seen.iter().any(|s| s[1] > 0 && s[1] < N),
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
