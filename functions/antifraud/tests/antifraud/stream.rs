//! The streaming engine (`stream::run`, what `pitboss antifraud` and `pitboss up` run) on a
//! real embedded log: a record it cannot decode goes to the dead-letter topic while the
//! partition keeps flowing, and a rules directory is reloaded while it runs — a changed rule
//! takes effect with its windows kept, a broken file is refused and the running set stays.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use pitboss_antifraud::stream::{RulesSource, StreamConfig, run};
use pitboss_bus::embedded::{EmbeddedBus, EmbeddedConfig};
use pitboss_bus::{Bus, ConsumerConfig, Delivery, OutRecord, Record};
use pitboss_model::live::{Alert, LiveMessage};
use pitboss_model::{Timestamp, encode_proto};
use serde_json::json;

use crate::common::{Script, bet};

/// A rule: `limit` bets by one player within an hour (a file of its own length per limit, so
/// a change shows in the size as well as the time).
fn rule(limit: u32) -> String {
    format!(
        r#"# {}
[[rule]]
id = "t.bets"
version = 1
category = "fraud"
description = "Many bets."
severity = "low"
score = 1
events = ["bet_placed"]
group_by = "player"
window = {{ duration = "1h", max_events = 100 }}
reason = "{{bets}} bets."

  [[rule.measure]]
  name = "bets"
  agg = "count"

  [[rule.when]]
  measure = "bets"
  op = "gte"
  value = {limit}
"#,
        "x".repeat(limit as usize)
    )
}

async fn read(bus: &EmbeddedBus, topic: &str, group: &str) -> Vec<Record> {
    let mut c = bus
        .consumer(group, topic, ConsumerConfig::default())
        .await
        .unwrap();
    let mut out = Vec::new();
    loop {
        match c.poll(10_000, Duration::from_millis(300)).await.unwrap() {
            Delivery::Records(rs) if rs.is_empty() => break,
            Delivery::Records(rs) => out.extend(rs),
            _ => {}
        }
    }
    out
}

/// The players the alerts on the bus name, in order (a fresh reader each time).
async fn alerted(bus: &EmbeddedBus) -> Vec<String> {
    static CHECKS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = CHECKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    read(bus, "alerts", &format!("check-{n}"))
        .await
        .iter()
        .map(|r| {
            Alert::decode_proto(&r.value)
                .unwrap()
                .player_id
                .unwrap_or_default()
        })
        .collect()
}

/// The metrics of the engines this test binary runs (a recorder installed once, for all).
fn metrics_page() -> String {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .unwrap()
        })
        .render()
}

/// Waits until the engines of `group` have made `n` reloads with `result` (`ok`, `refused`):
/// a check of the files runs behind the events (at a lower priority), so on a busy machine a
/// change can take seconds to be loaded, and an event published before it is judged by the
/// rules before it.
async fn reloaded(group: &str, result: &str, n: u64) {
    let series = format!("{{group=\"{group}\",result=\"{result}\"}}");
    let count = || {
        pitboss_testkit::metrics::series(&metrics_page(), "pitboss_antifraud_reloads_total")
            .into_iter()
            .find(|(labels, _)| *labels == series)
            .map_or(0, |(_, v)| v as u64)
    };
    for _ in 0..600 {
        if count() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not within 60 s: {n} reloads of {group} with {result}");
}

/// Polls `check` until it holds (10 s at most).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not within 10 s: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_records_are_dead_lettered_and_a_rules_directory_reloads_while_running() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(rules.join("t.toml"), rule(3)).unwrap();
    metrics_page();
    let bus =
        Arc::new(EmbeddedBus::open(dir.path().join("log"), EmbeddedConfig::default()).unwrap());
    for t in [
        "events",
        "events_overflow",
        "alerts",
        "pushes",
        "antifraud_dead_letter",
    ] {
        bus.create_topic(t, 1).await.unwrap();
    }
    let config = StreamConfig {
        rules: RulesSource::Dir(rules.clone()),
        state_path: dir.path().join("antifraud.db"),
        reload_interval: Duration::from_millis(100),
        snapshot_interval: Duration::from_millis(500),
        group: "reloads-test".into(),
        ..StreamConfig::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let engine = tokio::spawn(run(bus.clone() as Arc<dyn Bus>, config, async {
        let _ = stopped.await;
    }));
    let mut script = Script::new(
        pitboss_antifraud::RuleSet::from_sources(&[("t.toml".into(), rule(3))]).unwrap(),
    );
    let now = Timestamp::now().as_millis();
    let bets = |player: &str, n: usize, script: &mut Script| -> Vec<OutRecord> {
        (0..n)
            .map(|i| {
                let e = script.event(
                    player,
                    now + i as i64,
                    "bet_placed",
                    bet(&format!("{player}-{i}"), 500),
                    json!({}),
                );
                OutRecord::new(e.bus_key(), encode_proto(&e))
            })
            .collect()
    };
    let publisher = bus.publisher();

    // Garbage between two of p1's bets: dead-lettered, and the bets after it still count.
    let mut batch = bets("p1", 3, &mut script);
    batch.insert(
        1,
        OutRecord::new("p1", b"\x08\xff\xff not protobuf".to_vec()),
    );
    publisher.publish("events", batch).await.unwrap();
    eventually("p1's alert", || async { alerted(&bus).await == ["p1"] }).await;
    let dead = read(&bus, "antifraud_dead_letter", "dead").await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].value, b"\x08\xff\xff not protobuf".to_vec());
    assert!(dead[0].key.starts_with("events:0:"), "{}", dead[0].key);

    // p2 bets once under the threshold of 3; then the threshold is lowered to 2 (same id,
    // version and window: the windows are kept), and p2's second bet fires on the first.
    let mut p2 = bets("p2", 2, &mut script);
    let second = p2.pop().unwrap();
    publisher.publish("events", p2).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(alerted(&bus).await, ["p1"]);
    std::fs::write(rules.join("t.toml"), rule(2)).unwrap();
    // Loaded once two checks in a row see it (a file mid-write is not).
    reloaded("reloads-test", "ok", 1).await;
    publisher.publish("events", vec![second]).await.unwrap();
    eventually("p2's alert under the reloaded rule", || async {
        alerted(&bus).await == ["p1", "p2"]
    })
    .await;

    // A broken file is refused; the running set (threshold 2) stays in force.
    std::fs::write(
        rules.join("t.toml"),
        rule(2).replace("op = \"gte\"", "op = \"sort-of\""),
    )
    .unwrap();
    reloaded("reloads-test", "refused", 1).await;
    publisher
        .publish("events", bets("p3", 2, &mut script))
        .await
        .unwrap();
    eventually("p3's alert under the rules still running", || async {
        alerted(&bus).await == ["p1", "p2", "p3"]
    })
    .await;

    stop.send(()).unwrap();
    let stats = tokio::time::timeout(Duration::from_secs(30), engine)
        .await
        .expect("the engine stops")
        .unwrap()
        .unwrap();
    assert_eq!((stats.reloads, stats.reloads_refused), (1, 1), "{stats:?}");
}

/// Operators silence a rule for one player by dropping a snoozes file into the rules
/// directory: the running engine picks it up, the player's hits raise nothing while others'
/// fire; an engine started again on the same directory and state keeps it (it is in the
/// files); the file taken away, the player's next bet fires on the windows kept all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snoozes_file_silences_one_player_while_running_and_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(rules.join("t.toml"), rule(3)).unwrap();
    metrics_page();
    let bus =
        Arc::new(EmbeddedBus::open(dir.path().join("log"), EmbeddedConfig::default()).unwrap());
    for t in ["events", "events_overflow", "alerts", "pushes"] {
        bus.create_topic(t, 1).await.unwrap();
    }
    let start = || {
        let config = StreamConfig {
            rules: RulesSource::Dir(rules.clone()),
            state_path: dir.path().join("antifraud.db"),
            reload_interval: Duration::from_millis(100),
            snapshot_interval: Duration::from_millis(300),
            group: "snoozes-test".into(),
            ..StreamConfig::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let engine = tokio::spawn(run(bus.clone() as Arc<dyn Bus>, config, async {
            let _ = stopped.await;
        }));
        (stop, engine)
    };
    let stop_engine = |(stop, engine): (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<Result<_, _>>,
    )| async move {
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(30), engine)
            .await
            .expect("the engine stops")
            .unwrap()
            .unwrap()
    };
    let mut script = Script::new(
        pitboss_antifraud::RuleSet::from_sources(&[("t.toml".into(), rule(3))]).unwrap(),
    );
    let now = Timestamp::now().as_millis();
    let mut n = 0;
    let mut bets = |player: &str, count: usize| -> Vec<OutRecord> {
        (0..count)
            .map(|_| {
                n += 1;
                let e = script.event(
                    player,
                    now + n,
                    "bet_placed",
                    bet(&format!("{player}-{n}"), 500),
                    json!({}),
                );
                OutRecord::new(e.bus_key(), encode_proto(&e))
            })
            .collect()
    };
    let publisher = bus.publisher();

    let engine = start();
    // Running: p0's burst fires.
    publisher.publish("events", bets("p0", 3)).await.unwrap();
    eventually("p0's alert", || async { alerted(&bus).await == ["p0"] }).await;
    std::fs::write(
        rules.join("snoozes.toml"),
        "[[snooze]]\nrule = \"t.bets\"\ntenant = \"acme\"\nkey = \"p1\"\n\
         until = \"2099-01-01T00:00:00Z\"\nreason = \"the operator's own test account\"\n",
    )
    .unwrap();
    // Loaded once two checks in a row see it.
    reloaded("snoozes-test", "ok", 1).await;
    // p1 first, then p2 on the same partition: p2's alert means p1's bets were evaluated.
    let mut batch = bets("p1", 3);
    batch.extend(bets("p2", 3));
    publisher.publish("events", batch).await.unwrap();
    eventually("p2's alert", || async {
        alerted(&bus).await == ["p0", "p2"]
    })
    .await;
    let stats = stop_engine(engine).await;
    assert_eq!(
        (stats.events, stats.alerts, stats.reloads),
        (9, 2, 1),
        "{stats:?}"
    );

    // Started again on the same directory and state: still silenced.
    let engine = start();
    let mut batch = bets("p1", 1);
    batch.extend(bets("p3", 3));
    publisher.publish("events", batch).await.unwrap();
    eventually("p3's alert", || async {
        alerted(&bus).await == ["p0", "p2", "p3"]
    })
    .await;

    // Unsnoozed: p1's fifth bet fires at once on the four its window kept (through the
    // restart, and the reload), and no cooldown started by a silenced hit holds it back.
    std::fs::remove_file(rules.join("snoozes.toml")).unwrap();
    reloaded("snoozes-test", "ok", 2).await;
    publisher.publish("events", bets("p1", 1)).await.unwrap();
    eventually("p1's alert", || async {
        alerted(&bus).await == ["p0", "p2", "p3", "p1"]
    })
    .await;
    let alerts = read(&bus, "alerts", "last-check").await;
    let last = Alert::decode_proto(&alerts[3].value).unwrap();
    assert_eq!(last.reason, "5 bets.");
    let stats = stop_engine(engine).await;
    assert_eq!(stats.reloads, 1, "{stats:?}");
}
