//! The processor's fault test on real services (scripts/stack.sh): 1,000,000 events published
//! to Kafka while `pitboss process` is SIGKILLed at random moments five times and restarted, and
//! ClickHouse is stopped for 30 s and started again under load. Afterwards ClickHouse holds
//! exactly the 1,000,000 events — count() = uniqExact(event_id), without FINAL or OPTIMIZE —
//! and, since the ids are 0..1,000,000, no gaps.
//!
//! Alone in its test binary: it stops the shared ClickHouse, which no other test may see.

#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pitboss_bus::kafka::{KafkaBus, KafkaConfig};
use pitboss_bus::{Bus, OutRecord};
use pitboss_model::encode_proto;
use rand::Rng;

const N: u64 = 1_000_000;

fn event(i: u64) -> OutRecord {
    let e = pitboss_testkit::deposit(i, 5000);
    OutRecord::new(format!("acme:{}", e.player_id), encode_proto(&e))
}

struct Stack {
    clickhouse: String,
    kafka: String,
    database: String,
    topic: String,
    logs: tempfile::TempDir,
}

impl Stack {
    fn processor(&self, n: usize) -> Child {
        let log = std::fs::File::create(self.logs.path().join(format!("process-{n}.log"))).unwrap();
        Command::new(env!("CARGO_BIN_EXE_pitboss"))
            .args([
                "process",
                "--clickhouse",
                &self.clickhouse,
                "--database",
                &self.database,
            ])
            .args(["--kafka-bootstrap", &self.kafka, "--topic", &self.topic])
            .args(["--admin-listen", "127.0.0.1:0"])
            .args([
                "--group",
                &format!("{}_processor", self.topic),
                "--session-timeout-secs",
                "6",
            ])
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn logs(&self) -> String {
        pitboss_testkit::log_tails(self.logs.path(), 15)
    }
}

async fn scalar(clickhouse: &str, database: &str, sql: &str) -> Option<u64> {
    pitboss_processor::sink::client(clickhouse, database)
        .query(sql)
        .fetch_one::<u64>()
        .await
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_events_exactly_once_through_five_sigkills_and_a_clickhouse_outage() {
    let clickhouse = pitboss_testkit::clickhouse();
    let ch_process = pitboss_testkit::ClickHouseProcess::single();
    let stack = Stack {
        clickhouse: clickhouse.clone(),
        kafka: pitboss_testkit::kafka(),
        database: pitboss_testkit::unique_name("faults"),
        topic: pitboss_testkit::unique_name("events"),
        logs: tempfile::tempdir().unwrap(),
    };
    let bus = KafkaBus::new(KafkaConfig::new(stack.kafka.clone())).unwrap();
    bus.create_topic(&stack.topic, 4).await.unwrap();
    bus.create_topic(&format!("{}_dead_letter", stack.topic), 1)
        .await
        .unwrap();

    // Events arrive all along: 1M over about 40 s, 10,000 per acknowledged batch.
    let publisher = bus.publisher();
    let topic = stack.topic.clone();
    let publishing = tokio::spawn(async move {
        let start = Instant::now();
        for (k, chunk) in (0..N).collect::<Vec<_>>().chunks(10_000).enumerate() {
            publisher
                .publish(&topic, chunk.iter().map(|i| event(*i)).collect())
                .await
                .unwrap();
            let due = start + Duration::from_millis(400 * (k as u64 + 1));
            tokio::time::sleep_until(due.into()).await;
        }
    });

    let count = |sql: &'static str| {
        let (c, d) = (stack.clickhouse.clone(), stack.database.clone());
        async move { scalar(&c, &d, sql).await }
    };

    // Five processors SIGKILLed at random moments: the first 2–9 s after it started (before
    // or after it got its partitions), the others 0–2 s after their first rows are in (a
    // member taking over waits out its predecessor's 6 s session first; killed at random
    // from their start, most died before they stored anything) — between inserts or in the
    // middle of one.
    let mut seen = Vec::new();
    for n in 0..5 {
        let mut child = stack.processor(n);
        let wait = if n == 0 {
            rand::rng().random_range(2_000..9_000)
        } else {
            let before = count("SELECT count() FROM events").await.unwrap_or(0);
            pitboss_testkit::until_storing(
                || async { count("SELECT count() FROM events").await.unwrap_or(0) },
                before,
                N,
                Duration::from_secs(90),
                || format!("processor {n}\n{}", stack.logs()),
            )
            .await;
            rand::rng().random_range(0..2_000)
        };
        tokio::time::sleep(Duration::from_millis(wait)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        seen.push(count("SELECT count() FROM events").await.unwrap_or(0));
    }

    // The last processor keeps running; ClickHouse goes away for 30 s under load.
    let mut last = stack.processor(5);
    tokio::time::sleep(Duration::from_secs(2)).await;
    ch_process.stop("TERM");
    tokio::time::sleep(Duration::from_secs(30)).await;
    ch_process.start();

    publishing.await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(240);
    while count("SELECT count() FROM events").await != Some(N) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Anything written twice would show up now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rows = count("SELECT count() FROM events").await;
    let ids = count("SELECT uniqExact(event_id) FROM events").await;
    let dead =
        count("SELECT count() FROM events WHERE event_id NOT LIKE '0193735a-0000-7000-8000-%'")
            .await;
    last.kill().unwrap();
    last.wait().unwrap();
    assert_eq!(
        (rows, ids, dead),
        (Some(N), Some(N), Some(0)),
        "rows after each kill: {seen:?}\n{}",
        stack.logs()
    );
    assert!(
        seen.iter().any(|c| *c > 0 && *c < N),
        "some kills landed while work was in progress: {seen:?}"
    );
}
