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

/// Kills the child processes it holds when dropped (a failed assertion leaves nothing running).
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A free loopback port (bound, then released for the child to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The rules engine over Kafka, SIGKILLed five times at random moments while a scripted day of
/// play (fraud and risky-play patterns among normal players) is posted to the real ingest
/// (`pitboss ingest --bus kafka`) and `pitboss process` stores what the engine publishes into
/// ClickHouse. Afterwards ClickHouse holds exactly the alerts and pushes the pure engine raises
/// from the same events — none missed, none extra, one row per id after collapsing — and none for
/// a normal player.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_engine_over_kafka_raises_exactly_the_scripted_alerts_through_five_sigkills() {
    let name = pitboss_testkit::unique_name("af");
    let stack = Stack {
        clickhouse: pitboss_testkit::clickhouse(),
        kafka: pitboss_testkit::kafka(),
        database: format!("{name}_db"),
        alerts: format!("{name}_alerts"),
        pushes: format!("{name}_pushes"),
        logs: tempfile::tempdir().unwrap(),
    };
    let events_topic = format!("{name}_events");
    let bus = KafkaBus::new(KafkaConfig::new(stack.kafka.clone())).unwrap();
    for topic in [&stack.alerts, &stack.pushes] {
        bus.create_topic(topic, 4).await.unwrap();
        bus.create_topic(&format!("{topic}_dead_letter"), 1)
            .await
            .unwrap();
    }
    bus.create_topic(&events_topic, 8).await.unwrap();
    bus.create_topic(&format!("{events_topic}_overflow"), 8)
        .await
        .unwrap();
    bus.create_topic(&format!("{name}_af_dead_letter"), 1)
        .await
        .unwrap();

    // The real ingest, on Kafka.
    let key = "kafka-e2e-key";
    let port = free_port();
    let config = stack.logs.path().join("ingest.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:0\"\ntopic = \"{events_topic}\"\n[[tenants]]\nid = \"demo\"\napi_key_sha256 = [\"{}\"]\n",
            pitboss_ingest::auth::hash_key(key)
        ),
    )
    .unwrap();
    let ingest_log = std::fs::File::create(stack.logs.path().join("ingest.log")).unwrap();
    let mut children = Children(vec![
        Command::new(env!("CARGO_BIN_EXE_pitboss"))
            .args([
                "ingest",
                "--bus",
                "kafka",
                "--kafka-bootstrap",
                &stack.kafka,
            ])
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(ingest_log)
            .spawn()
            .unwrap(),
        stack.processor(0),
    ]);
    let addr = format!("127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let start = Instant::now();
    while client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .is_err()
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "ingest did not start\n{}",
            stack.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let state = tempfile::tempdir().unwrap();
    let engine = |n: usize| {
        let log =
            std::fs::File::create(stack.logs.path().join(format!("antifraud-{n}.log"))).unwrap();
        Command::new(env!("CARGO_BIN_EXE_pitboss"))
            .args([
                "antifraud",
                "--bus",
                "kafka",
                "--kafka-bootstrap",
                &stack.kafka,
            ])
            .args(["--topic", &events_topic, "--group", &format!("{name}_af")])
            .args([
                "--alerts-topic",
                &stack.alerts,
                "--pushes-topic",
                &stack.pushes,
            ])
            .args(["--dead-letter-topic", &format!("{name}_af_dead_letter")])
            .arg("--state-dir")
            .arg(state.path())
            .args([
                "--snapshot-interval-ms",
                "500",
                "--session-timeout-secs",
                "6",
            ])
            .args(["--admin-listen", "127.0.0.1:0"])
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    };

    let now = pitboss_model::Timestamp::now().as_millis();
    let parts = pitboss_antifraud::scenario::script("demo", now, 300, 3);
    let mut events = Vec::new();
    let longest = parts.iter().map(|p| p.events.len()).max().unwrap();
    for i in 0..longest {
        for p in &parts {
            events.extend(p.events.get(i).cloned());
        }
    }
    let (want_alerts, want_pushes) = {
        let set =
            pitboss_antifraud::RuleSet::from_sources(&pitboss_antifraud::stream::shipped_sources())
                .unwrap();
        let mut engine = pitboss_antifraud::Engine::new(set);
        let mut out = pitboss_antifraud::Output::default();
        for e in &events {
            let event = pitboss_model::decode_event(e.to_string().as_bytes()).unwrap();
            engine
                .process(&event, pitboss_model::Timestamp::now(), &mut out)
                .unwrap();
        }
        let a: std::collections::BTreeSet<String> =
            out.alerts.iter().map(|a| a.alert_id.clone()).collect();
        let p: std::collections::BTreeSet<String> =
            out.pushes.iter().map(|p| p.push_id.clone()).collect();
        (a, p)
    };

    // Posted at a steady pace (about 30 s in all) while the engine is killed five times.
    let posting = {
        let (client, addr) = (client.clone(), addr.clone());
        let batches: Vec<Vec<serde_json::Value>> = events.chunks(40).map(<[_]>::to_vec).collect();
        tokio::spawn(async move {
            for b in batches {
                let r = client
                    .post(format!("http://{addr}/v1/events"))
                    .bearer_auth(key)
                    .json(&b)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        })
    };
    let mut seen = Vec::new();
    for n in 0..5 {
        let mut child = engine(n);
        let wait = rand::rng().random_range(3_000..10_000);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        seen.push(
            stack
                .scalar("SELECT uniqExact(alert_id) FROM alerts")
                .await
                .unwrap_or(0),
        );
    }
    children.0.push(engine(5));
    posting.await.unwrap();

    let want = want_alerts.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(180);
    while stack.scalar("SELECT uniqExact(alert_id) FROM alerts").await != Some(want)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await; // anything extra would show up now
    let ids = |sql: &'static str| {
        let client = pitboss_processor::sink::client(&stack.clickhouse, &stack.database);
        async move {
            client
                .query(sql)
                .fetch_all::<String>()
                .await
                .unwrap()
                .into_iter()
                .collect::<std::collections::BTreeSet<String>>()
        }
    };
    let alerts = ids("SELECT DISTINCT alert_id FROM alerts").await;
    let pushes = ids("SELECT DISTINCT push_id FROM pushes").await;
    assert_eq!(
        alerts,
        want_alerts,
        "distinct alerts after each kill: {seen:?}\n{}",
        stack.logs()
    );
    assert_eq!(pushes, want_pushes);
    assert_eq!(
        stack.scalar("SELECT count() FROM alerts FINAL").await,
        Some(want),
        "one row per alert id once collapsed"
    );
    let raised: std::collections::BTreeSet<(String, String)> =
        pitboss_processor::sink::client(&stack.clickhouse, &stack.database)
            .query("SELECT DISTINCT rule_id, player_id FROM alerts")
            .fetch_all::<(String, String)>()
            .await
            .unwrap()
            .into_iter()
            .collect();
    let scripted: std::collections::BTreeSet<(String, String)> = parts
        .iter()
        .flat_map(|p| p.fires.iter().map(|r| ((*r).to_owned(), p.player.clone())))
        .collect();
    assert_eq!(
        raised, scripted,
        "each pattern's player raised its rule, nobody else anything"
    );
}
