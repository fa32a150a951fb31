//! The live path's fault test on real services (scripts/stack.sh): alerts and pushes published
//! to Kafka (as the rules engine publishes them) while `pitboss process --topic …=alerts
//! --topic …=pushes` is SIGKILLed at random moments four times and restarted. Afterwards
//! ClickHouse holds each alert and each push exactly once — count() = uniqExact(id) = the number
//! published, without FINAL or OPTIMIZE — so no batch was written twice, however the kills
//! fell, and none was lost.

#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pitboss_bus::kafka::{KafkaBus, KafkaConfig};
use pitboss_bus::{Bus, OutRecord, header};
use pitboss_model::live::LiveMessage;
use pitboss_testkit::live;
use rand::Rng;

/// Alerts, and as many pushes.
const N: u64 = 60_000;

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

struct Stack {
    clickhouse: String,
    kafka: String,
    database: String,
    alerts: String,
    pushes: String,
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
            .args(["--kafka-bootstrap", &self.kafka])
            .args(["--topic", &format!("{}=alerts", self.alerts)])
            .args(["--topic", &format!("{}=pushes", self.pushes)])
            .args(["--admin-listen", "127.0.0.1:0"])
            .args([
                "--group",
                &format!("{}_processor", self.alerts),
                "--session-timeout-secs",
                "6",
                "--batch-max-rows",
                "5000",
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

    async fn scalar(&self, sql: &str) -> Option<u64> {
        pitboss_processor::sink::client(&self.clickhouse, &self.database)
            .query(sql)
            .fetch_one::<u64>()
            .await
            .ok()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_pushes_exactly_once_through_four_sigkills() {
    let stack = Stack {
        clickhouse: pitboss_testkit::clickhouse(),
        kafka: pitboss_testkit::kafka(),
        database: pitboss_testkit::unique_name("live_faults"),
        alerts: pitboss_testkit::unique_name("alerts"),
        pushes: pitboss_testkit::unique_name("pushes"),
        logs: tempfile::tempdir().unwrap(),
    };
    let bus = KafkaBus::new(KafkaConfig::new(stack.kafka.clone())).unwrap();
    for topic in [&stack.alerts, &stack.pushes] {
        bus.create_topic(topic, 4).await.unwrap();
        bus.create_topic(&format!("{topic}_dead_letter"), 1)
            .await
            .unwrap();
    }

    // Alerts and pushes arrive all along: N of each over about 24 s, 2,500 per acknowledged
    // batch.
    let publisher = bus.publisher();
    let (alerts, pushes) = (stack.alerts.clone(), stack.pushes.clone());
    let publishing = tokio::spawn(async move {
        let start = Instant::now();
        for (k, chunk) in (0..N).collect::<Vec<_>>().chunks(2_500).enumerate() {
            let a = chunk.iter().map(|i| record(&live::alert(*i))).collect();
            publisher.publish(&alerts, a).await.unwrap();
            let p = chunk.iter().map(|i| record(&live::push(*i))).collect();
            publisher.publish(&pushes, p).await.unwrap();
            let due = start + Duration::from_millis(1_000 * (k as u64 + 1));
            tokio::time::sleep_until(due.into()).await;
        }
    });

    // Four processors SIGKILLed at random moments (2–9 s: some before, some after they got
    // their partitions, some in the middle of an insert).
    let mut seen = Vec::new();
    for n in 0..4 {
        let mut child = stack.processor(n);
        let wait = rand::rng().random_range(2_000..9_000);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        seen.push((
            stack
                .scalar("SELECT count() FROM alerts")
                .await
                .unwrap_or(0),
            stack
                .scalar("SELECT count() FROM pushes")
                .await
                .unwrap_or(0),
        ));
    }

    let mut last = stack.processor(4);
    publishing.await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(240);
    while (
        stack.scalar("SELECT count() FROM alerts").await,
        stack.scalar("SELECT count() FROM pushes").await,
    ) != (Some(N), Some(N))
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Anything written twice would show up now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let counts = (
        stack.scalar("SELECT count() FROM alerts").await,
        stack.scalar("SELECT uniqExact(alert_id) FROM alerts").await,
        stack.scalar("SELECT count() FROM pushes").await,
        stack.scalar("SELECT uniqExact(push_id) FROM pushes").await,
    );
    let expected_alerts: u64 = stack
        .scalar(&format!(
            "SELECT count() FROM alerts WHERE bus_topic = '{}' AND startsWith(trigger_event_id, '0193735a-0000-7000-8000-')",
            stack.alerts
        ))
        .await
        .unwrap_or(0);
    last.kill().unwrap();
    last.wait().unwrap();
    assert_eq!(
        counts,
        (Some(N), Some(N), Some(N), Some(N)),
        "rows (alerts, pushes) after each kill: {seen:?}\n{}",
        stack.logs()
    );
    assert_eq!(expected_alerts, N, "every alert from its topic, none other");
    assert!(
        seen.iter()
            .any(|(a, p)| (*a > 0 && *a < N) || (*p > 0 && *p < N)),
        "some kills landed while work was in progress: {seen:?}"
    );
}
