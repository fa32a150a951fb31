//! `pitboss process` as an operator runs it (real Kafka and ClickHouse from scripts/stack.sh):
//! it consumes the events topic and its overflow topic, batches as its flags say, and its
//! admin listener serves the metrics an operator watches — rows inserted, batch sizes and
//! ages, insert latency, freshness, and the consumer lag of each partition.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pitboss_bus::kafka::{KafkaBus, KafkaConfig};
use pitboss_bus::{Bus, OutRecord};
use pitboss_model::encode_proto;

fn event(i: u64) -> OutRecord {
    let e = pitboss_testkit::deposit(i, 10);
    OutRecord::new(format!("acme:{}", e.player_id), encode_proto(&e))
}

fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_consumes_both_topics_and_serves_its_metrics() {
    let kafka = pitboss_testkit::kafka();
    let clickhouse = pitboss_testkit::clickhouse();
    let topic = pitboss_testkit::unique_name("events");
    let overflow = format!("{topic}_overflow");
    let bus = KafkaBus::new(KafkaConfig::new(kafka.clone())).unwrap();
    for t in [&topic, &overflow] {
        bus.create_topic(t, 2).await.unwrap();
        bus.create_topic(&format!("{t}_dead_letter"), 1)
            .await
            .unwrap();
    }
    bus.publisher()
        .publish(&topic, (0..900).map(event).collect())
        .await
        .unwrap();
    bus.publisher()
        .publish(&overflow, (900..1000).map(event).collect())
        .await
        .unwrap();

    let database = pitboss_testkit::unique_name("pitboss");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pitboss"))
        .args([
            "process",
            "--clickhouse",
            &clickhouse,
            "--database",
            &database,
        ])
        .args([
            "--kafka-bootstrap",
            &kafka,
            "--topic",
            &topic,
            "--topic",
            &overflow,
        ])
        .args(["--group", &format!("{topic}_processor")])
        .args(["--admin-listen", "127.0.0.1:0", "--batch-max-rows", "100"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let admin = loop {
        let line = lines.next().unwrap().unwrap();
        if let Some(rest) = line.split("admin=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});

    let client = reqwest::Client::new();
    let url = format!("http://{admin}/metrics");
    let start = Instant::now();
    let mut text = String::new();
    // Lag comes from librdkafka's statistics every 5 s.
    while start.elapsed() < Duration::from_secs(60) {
        text = client.get(&url).send().await.unwrap().text().await.unwrap();
        let done = metric(&text, "pitboss_processor_rows_inserted_total ") == Some(1000.0);
        let lag_seen = [&topic, &overflow].iter().all(|t| {
            (0..2).all(|p| {
                metric(
                    &text,
                    &format!("pitboss_consumer_lag_records{{topic=\"{t}\",partition=\"{p}\"}} "),
                ) == Some(0.0)
            })
        });
        if done && lag_seen {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        metric(&text, "pitboss_processor_rows_inserted_total "),
        Some(1000.0),
        "{text}"
    );
    assert!(
        metric(&text, "pitboss_processor_batches_total ").is_some_and(|b| b >= 10.0),
        "--batch-max-rows 100 cuts 1,000 rows into at least 10 batches: {text}"
    );
    for name in [
        "pitboss_processor_batch_rows_count ",
        "pitboss_processor_batch_age_seconds_count ",
        "pitboss_processor_insert_seconds_count ",
        "pitboss_processor_freshness_seconds_count ",
    ] {
        assert!(
            metric(&text, name).is_some_and(|v| v > 0.0),
            "{name}: {text}"
        );
    }
    assert!(
        text.contains(&format!(
            "pitboss_consumer_lag_records{{topic=\"{overflow}\",partition=\"1\"}} 0"
        )),
        "lag of every owned partition, caught up: {text}"
    );
    let health = client
        .get(format!("http://{admin}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}
