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
        let done = pitboss_testkit::metrics::total(&text, "pitboss_processor_rows_inserted_total")
            == Some(1000.0);
        let lag_seen = [&topic, &overflow].iter().all(|t| {
            (0..2).all(|p| {
                metric(
                    &text,
                    &format!("pitboss_consumer_lag_records{{group=\"{topic}_processor\",topic=\"{t}\",partition=\"{p}\"}} "),
                ) == Some(0.0)
            })
        });
        if done && lag_seen {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Per processor: each topic's own figures, labelled with the table it writes.
    for (t, rows) in [(&topic, 900.0), (&overflow, 100.0)] {
        let labels = format!("{{topic=\"{t}\",table=\"events\"}} ");
        assert_eq!(
            metric(
                &text,
                &format!("pitboss_processor_rows_inserted_total{labels}")
            ),
            Some(rows),
            "{text}"
        );
        for name in [
            "pitboss_processor_batches_total",
            "pitboss_processor_batch_rows_count",
            "pitboss_processor_batch_age_seconds_count",
            "pitboss_processor_insert_seconds_count",
            "pitboss_processor_freshness_seconds_count",
        ] {
            assert!(
                metric(&text, &format!("{name}{labels}")).is_some_and(|v| v > 0.0),
                "{name}{labels}: {text}"
            );
        }
        assert_eq!(
            metric(
                &text,
                &format!("pitboss_processor_dead_letters_total{labels}")
            ),
            Some(0.0),
            "registered at 0: {text}"
        );
    }
    assert!(
        pitboss_testkit::metrics::total(&text, "pitboss_processor_batches_total")
            .is_some_and(|b| b >= 10.0),
        "--batch-max-rows 100 cuts 1,000 rows into at least 10 batches: {text}"
    );
    assert!(
        text.contains(&format!(
            "pitboss_consumer_lag_records{{group=\"{topic}_processor\",topic=\"{overflow}\",partition=\"1\"}} 0"
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

/// `--bus kinesis` needs the `aws` feature (on in scripts/test.sh: `--all-features`).
#[cfg(feature = "aws")]
mod kinesis {
    use super::*;

    /// A `pitboss process` over Kinesis, its admin address read from its log.
    struct KinesisProcessor {
        child: std::process::Child,
        admin: String,
    }

    fn kinesis_processor(
        endpoint: &str,
        clickhouse: &str,
        database: &str,
        topics: &[&str],
    ) -> KinesisProcessor {
        let mut command = Command::new(env!("CARGO_BIN_EXE_pitboss"));
        command
            .args([
                "process",
                "--clickhouse",
                clickhouse,
                "--database",
                database,
            ])
            .args(["--bus", "kinesis", "--kinesis-endpoint", endpoint]);
        for t in topics {
            command.args(["--topic", t]);
        }
        let mut child = command
            .args(["--group", &format!("{}_processor", topics[0])])
            .args(["--session-timeout-secs", "6", "--batch-max-rows", "100"])
            .args(["--admin-listen", "127.0.0.1:0"])
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let admin = loop {
            let line = lines
                .next()
                .expect("the processor exited before its admin listener started")
                .unwrap();
            if let Some(rest) = line.split("admin=").nth(1) {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
        };
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if line.contains("WARN") || line.contains("ERROR") {
                    eprintln!("processor: {line}");
                }
            }
        });
        KinesisProcessor { child, admin }
    }

    async fn rows_inserted(admin: &str) -> f64 {
        let text = reqwest::get(format!("http://{admin}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        pitboss_testkit::metrics::total(&text, "pitboss_processor_rows_inserted_total")
            .unwrap_or(0.0)
    }

    /// `pitboss process --bus kinesis` (moto): every event published to the stream and its overflow
    /// stream is stored once across a SIGKILL, two instances sharing the group's shards, and a
    /// SIGTERM: what the killed member inserted but did not checkpoint is skipped by the
    /// members that take its shards over, by the greatest sequence number stored
    /// (docs/processor.md, "Effectively once"). The events' ids are the server's (no
    /// `pitboss-client-id`), so no lookup by id would catch a copy.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn process_reads_kinesis_across_a_sigkill_a_second_instance_and_a_sigterm() {
        let endpoint = pitboss_testkit::kinesis();
        let clickhouse = pitboss_testkit::clickhouse();
        let topic = pitboss_testkit::unique_name("events");
        let overflow = format!("{topic}_overflow");
        let mut config = pitboss_bus::kinesis::KinesisConfig::new("us-east-1");
        config.endpoint_url = Some(endpoint.clone());
        config.static_credentials = Some(("test".into(), "test".into()));
        let bus = pitboss_bus::kinesis::KinesisBus::new(config).await.unwrap();
        for t in [&topic, &overflow] {
            bus.create_topic(t, 2).await.unwrap();
            bus.create_topic(&format!("{t}_dead_letter"), 1)
                .await
                .unwrap();
        }
        let publish = |from: u64, to: u64| {
            let publisher = bus.publisher();
            let (topic, overflow) = (topic.clone(), overflow.clone());
            async move {
                let split = from + (to - from) * 9 / 10;
                for chunk in (from..split).collect::<Vec<_>>().chunks(500) {
                    publisher
                        .publish(&topic, chunk.iter().map(|i| event(*i)).collect())
                        .await
                        .unwrap();
                }
                publisher
                    .publish(&overflow, (split..to).map(event).collect())
                    .await
                    .unwrap();
            }
        };
        publish(0, 2000).await;

        let database = pitboss_testkit::unique_name("pitboss");
        let count = |sql: &'static str| {
            let client = pitboss_processor::sink::client(&clickhouse, &database);
            async move { client.query(sql).fetch_one::<u64>().await.ok() }
        };
        let topics = [topic.as_str(), overflow.as_str()];

        // The first member gets every shard and is SIGKILLed once it has stored some rows.
        let mut first = kinesis_processor(&endpoint, &clickhouse, &database, &topics);
        let start = Instant::now();
        while rows_inserted(&first.admin).await < 100.0 && start.elapsed() < Duration::from_secs(60)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let by_first = rows_inserted(&first.admin).await;
        assert!(by_first >= 100.0, "nothing stored");
        first.child.kill().unwrap(); // SIGKILL
        first.child.wait().unwrap();

        // Two members share the group; their leases come free when the dead one's expire.
        let mut a = kinesis_processor(&endpoint, &clickhouse, &database, &topics);
        let mut b = kinesis_processor(&endpoint, &clickhouse, &database, &topics);
        // The second half arrives over 10 s, while the members settle who reads which shard.
        for k in 0..20 {
            publish(2000 + k * 100, 2100 + k * 100).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while count("SELECT uniqExact(event_id) FROM events").await != Some(4000)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let (by_a, by_b) = (rows_inserted(&a.admin).await, rows_inserted(&b.admin).await);
        for p in [&mut a, &mut b] {
            Command::new("kill")
                .args(["-TERM", &p.child.id().to_string()])
                .status()
                .unwrap();
            assert!(p.child.wait().unwrap().success(), "SIGTERM exits 0");
        }
        let ids = count("SELECT uniqExact(event_id) FROM events").await;
        let rows = count("SELECT count() FROM events").await;
        // Each row keeps its shard's id and its sequence number.
        let tagged = count(
            "SELECT count() FROM events WHERE match(bus_sequence, '^shardId-[0-9]+:[0-9]+$')",
        )
        .await;
        assert_eq!(
            (ids, rows),
            (Some(4000), Some(4000)),
            "every event stored once (the first member stored {by_first} before its SIGKILL)"
        );
        assert_eq!(
            tagged,
            Some(4000),
            "every row keeps its shard and sequence number"
        );
        assert!(
            by_a > 0.0 && by_b > 0.0,
            "both members stored rows: {by_a} and {by_b}"
        );
    }

    /// Over Kinesis as over Kafka, a materialized view that refuses a row after the table took
    /// the batch fails the insert with the rows landed: the processor sees them landed by the
    /// shard's mark and does not split the batch (a split would write them again; the events'
    /// ids are the server's, so no lookup by id would drop the copies).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rows_a_view_refuses_after_the_table_took_them_are_stored_once_over_kinesis() {
        const N: u64 = 300;
        let endpoint = pitboss_testkit::kinesis();
        let clickhouse = pitboss_testkit::clickhouse();
        let topic = pitboss_testkit::unique_name("events");
        let mut config = pitboss_bus::kinesis::KinesisConfig::new("us-east-1");
        config.endpoint_url = Some(endpoint.clone());
        config.static_credentials = Some(("test".into(), "test".into()));
        let bus = pitboss_bus::kinesis::KinesisBus::new(config).await.unwrap();
        bus.create_topic(&topic, 1).await.unwrap();
        bus.create_topic(&format!("{topic}_dead_letter"), 1)
            .await
            .unwrap();

        let database = pitboss_testkit::unique_name("pitboss");
        let admin = pitboss_processor::sink::client(&clickhouse, "default");
        admin
            .query(&format!("CREATE DATABASE {database}"))
            .execute()
            .await
            .unwrap();
        let client = pitboss_processor::sink::client(&clickhouse, &database);
        pitboss_processor::schema::migrate(&client, &pitboss_processor::schema::Layout::Single)
            .await
            .unwrap();
        for ddl in [
            "CREATE TABLE currencies (currency FixedString(3)) ENGINE = MergeTree ORDER BY currency",
            "CREATE MATERIALIZED VIEW currencies_mv TO currencies AS \
             SELECT toFixedString(currency, 3) AS currency FROM events",
        ] {
            client.query(ddl).execute().await.unwrap();
        }
        let records: Vec<OutRecord> = (0..N)
            .map(|i| {
                let mut e = pitboss_testkit::deposit(i, 50);
                if i == 150 {
                    e.payload = pitboss_model::Payload::Deposit(pitboss_model::Deposit {
                        transaction_id: format!("tx{i}"),
                        amount: pitboss_model::Money::new(100, "EURO"),
                        method: None,
                        device_id: None,
                        ip: None,
                        payment_instrument: None,
                    });
                }
                OutRecord::new(format!("acme:{}", e.player_id), encode_proto(&e))
            })
            .collect();
        bus.publisher().publish(&topic, records).await.unwrap();

        let mut p = kinesis_processor(&endpoint, &clickhouse, &database, &[topic.as_str()]);
        let count = |sql: &'static str| {
            let client = client.clone();
            async move { client.query(sql).fetch_one::<u64>().await.ok() }
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while count("SELECT count() FROM events").await.unwrap_or(0) < N
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await; // anything written twice shows now
        let stored = (
            count("SELECT count() FROM events").await,
            count("SELECT uniqExact(event_id) FROM events").await,
        );
        let dead = pitboss_testkit::metrics::total(
            &reqwest::get(format!("http://{}/metrics", p.admin))
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
            "pitboss_processor_dead_letters_total",
        );
        p.child.kill().unwrap();
        p.child.wait().unwrap();
        assert_eq!(stored, (Some(N), Some(N)), "one row per event");
        assert_eq!(dead.unwrap_or(0.0), 0.0, "nothing dead-lettered");
    }
}
