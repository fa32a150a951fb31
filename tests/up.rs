//! `pitboss up` as a user runs it: a real process on a free port over the embedded log. Events
//! posted over HTTP are acknowledged, survive a graceful shutdown (SIGTERM) and are in the log
//! afterwards.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use pitboss_bus::embedded::{EmbeddedBus, EmbeddedConfig};
use pitboss_bus::{Bus, ConsumerConfig, Delivery};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_accepts_events_and_keeps_them_across_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pitboss"))
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first
        .strip_prefix("Pitboss is up: http://")
        .unwrap_or_else(|| panic!("{first}"))
        .to_owned();
    let key = std::fs::read_to_string(dir.path().join("demo-api-key")).unwrap();
    std::thread::spawn(move || for _ in lines {}); // keep the pipe drained

    let now = pitboss_model::Timestamp::now().to_rfc3339().unwrap();
    let body: Vec<serde_json::Value> = (0..3)
        .map(|i| serde_json::json!({
            "tenant_id": "demo", "player_id": format!("p{i}"), "type": "bet_placed", "occurred_at": now,
            "payload": {"bet_id": format!("b{i}"), "game_id": "roulette", "stake": {"amount_minor": 100, "currency": "EUR"}}
        }))
        .collect();
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("http://{addr}/v1/events"))
        .bearer_auth(key.trim())
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let answer: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(answer["accepted"], 3, "{answer}");
    let unauthorized = client
        .post(format!("http://{addr}/v1/events"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    let ready = client
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);

    // Graceful shutdown on SIGTERM.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "pitboss up exits cleanly on SIGTERM: {status}"
    );

    tokio::time::sleep(Duration::from_millis(200)).await;
    let bus = EmbeddedBus::open(dir.path().join("log"), EmbeddedConfig::default()).unwrap();
    let mut c = bus
        .consumer("check", "events", ConsumerConfig::default())
        .await
        .unwrap();
    let mut seen = 0;
    for _ in 0..20 {
        if let Delivery::Records(rs) = c.poll(100, Duration::from_millis(100)).await.unwrap() {
            seen += rs.len();
        }
    }
    assert_eq!(seen, 3, "the acknowledged events are in the log");
}
