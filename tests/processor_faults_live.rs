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
use pitboss_testkit::free_port;
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

    /// Every warning and error the processes logged (at most 80 lines), each with its file:
    /// what a failure needs that the tails may have scrolled past.
    fn warnings(&self) -> String {
        let mut out = Vec::new();
        if let Ok(dir) = std::fs::read_dir(self.logs.path()) {
            let mut files: Vec<_> = dir.flatten().map(|e| e.path()).collect();
            files.sort();
            for f in files {
                let text = std::fs::read_to_string(&f).unwrap_or_default();
                let name = f
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                out.extend(
                    text.lines()
                        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
                        .map(|l| format!("{name}: {l}")),
                );
            }
        }
        out.truncate(80);
        out.join("\n")
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

    // Four processors SIGKILLed at random moments: the first 2–9 s after it started (before
    // or after it got its partitions), the others 0–2 s after their first rows are in (a
    // member taking over waits out its predecessor's 6 s session first; killed at random
    // from their start, most died before they stored anything) — between inserts or in the
    // middle of one.
    let stored = || async {
        stack
            .scalar("SELECT count() FROM alerts")
            .await
            .unwrap_or(0)
            + stack
                .scalar("SELECT count() FROM pushes")
                .await
                .unwrap_or(0)
    };
    let mut seen = Vec::new();
    for n in 0..4 {
        let mut child = stack.processor(n);
        let wait = if n == 0 {
            rand::rng().random_range(2_000..9_000)
        } else {
            let before = stored().await;
            pitboss_testkit::until_storing(stored, before, 2 * N, Duration::from_secs(90), || {
                format!("processor {n}\n{}", stack.logs())
            })
            .await;
            rand::rng().random_range(0..2_000)
        };
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

/// The rules engine over Kafka, SIGKILLed five times at random moments while a scripted day of
/// play (fraud and risky-play patterns among normal players) is posted to the real ingest
/// (`pitboss ingest --bus kafka`) and `pitboss process` stores what the engine publishes into
/// ClickHouse. Afterwards ClickHouse holds exactly the alerts and pushes the pure engine raises
/// from the same events — none missed, none extra, one row per id after collapsing — and none for
/// a normal player.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_engine_over_kafka_raises_exactly_the_scripted_alerts_through_five_sigkills() {
    scripted_alerts_through_five_sigkills(1).await;
}

/// The same with the rules split over three engines (`--shard i/3`): each reads every event in
/// its own group and evaluates the keys it owns; hits of rules keyed by device or address for a
/// player another shard owns travel on the forwards topic. Five SIGKILLs of shards picked at
/// random while the others run; afterwards ClickHouse holds exactly what one pure engine raises.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_rules_engines_over_kafka_raise_exactly_the_scripted_alerts_through_five_sigkills() {
    scripted_alerts_through_five_sigkills(3).await;
}

async fn scripted_alerts_through_five_sigkills(shards: u32) {
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
    let _children = Children(vec![
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

    if shards > 1 {
        // A shard that does not exist, and a forwards topic not co-partitioned with the
        // events: refused before anything is read, naming them.
        let bad = format!("{name}_bad_forwards");
        bus.create_topic(&bad, 3).await.unwrap();
        for (shard, forwards, says) in [
            (
                "3/3",
                bad.as_str(),
                "shard 3 of 3 does not exist: shards are numbered 0 to 2".to_owned(),
            ),
            (
                "1/3",
                bad.as_str(),
                format!("topic \"{bad}\" has 3 partitions and \"{events_topic}\" has 8"),
            ),
        ] {
            let out = Command::new(env!("CARGO_BIN_EXE_pitboss"))
                .args([
                    "antifraud",
                    "--bus",
                    "kafka",
                    "--kafka-bootstrap",
                    &stack.kafka,
                ])
                .args(["--topic", &events_topic, "--group", &format!("{name}_bad")])
                .args([
                    "--alerts-topic",
                    &stack.alerts,
                    "--pushes-topic",
                    &stack.pushes,
                ])
                .args(["--dead-letter-topic", &format!("{name}_af_dead_letter")])
                .args(["--shard", shard, "--forwards-topic", forwards])
                .args(["--admin-listen", "127.0.0.1:0"])
                .arg("--state-dir")
                .arg(stack.logs.path().join("bad-state"))
                .env("NO_COLOR", "1")
                .output()
                .unwrap();
            assert!(!out.status.success(), "{out:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(&says), "{shard}: {err}");
        }
    }
    let state = tempfile::tempdir().unwrap();
    let engine = |n: usize, shard: u32| {
        let log =
            std::fs::File::create(stack.logs.path().join(format!("antifraud-{shard}-{n}.log")))
                .unwrap();
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
                // Saves spread over several polls, so kills land between their slices too.
                "--save-slice-units",
                "20",
                "--session-timeout-secs",
                "6",
            ])
            .args(["--admin-listen", "127.0.0.1:0"])
            .args(["--shard", &format!("{shard}/{shards}")])
            .args(["--forwards-topic", &format!("{name}_forwards")])
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    };

    let now = pitboss_model::Timestamp::now().as_millis();
    let mut parts = pitboss_antifraud::scenario::script("demo", now, 300, 3);
    // Multi-accounting across partitions (and, split, across shards): which account raises the
    // alert depends on the order the logins are read in; one alert per rule and shared key.
    let copies = 2;
    parts.extend(pitboss_antifraud::scenario::shared_accounts(
        "demo", now, copies,
    ));
    let shared = |rule: &str| rule.starts_with("fraud.multi_accounting");
    let want_shared: std::collections::BTreeSet<(String, String)> = (0..copies)
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
        .collect();
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
        let a: std::collections::BTreeSet<String> = out
            .alerts
            .iter()
            .filter(|a| !shared(&a.rule_id))
            .map(|a| a.alert_id.clone())
            .collect();
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
    // One engine per shard; each round SIGKILLs one of them (the only one when unsplit) at a
    // random moment and starts it again.
    let mut running = Children((0..shards).map(|s| engine(0, s)).collect());
    let log_of = |shard: u32, n: usize| {
        std::fs::read_to_string(stack.logs.path().join(format!("antifraud-{shard}-{n}.log")))
            .unwrap_or_default()
    };
    for n in 1..=5 {
        let wait = rand::rng().random_range(3_000..10_000);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        if n == 1 {
            // Every engine saved once before the first kill (the first save of an engine
            // without state is whole, and says so): each restart has a state to restore.
            let start = Instant::now();
            while !(0..shards).all(|s| log_of(s, 0).contains("antifraud state saved whole")) {
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "an engine did not save in 60 s"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let victim = rand::rng().random_range(0..shards);
        let child = &mut running.0[victim as usize];
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        *child = engine(n, victim);
        seen.push((
            victim,
            stack
                .scalar("SELECT uniqExact(alert_id) FROM alerts")
                .await
                .unwrap_or(0),
        ));
    }
    posting.await.unwrap();

    let want = (want_alerts.len() + want_shared.len()) as u64;
    let deadline = Instant::now() + Duration::from_secs(180);
    while stack.scalar("SELECT uniqExact(alert_id) FROM alerts").await != Some(want)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await; // anything extra would show up now
    // The restarts rebuilt what was evaluated before the kills from a saved state (not only
    // re-read the topic afresh): a restarted engine reads its state once the dead member's
    // session is over. (Whether one also replayed batches logged since depends on where its
    // kill fell between saves and batches: not asserted.)
    let restored = || {
        std::fs::read_dir(stack.logs.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("antifraud-") && !n.ends_with("-0.log"))
            })
            .any(|p| {
                std::fs::read_to_string(p)
                    .unwrap_or_default()
                    .contains("antifraud state restored")
            })
    };
    let start = Instant::now();
    while !restored() && start.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        restored(),
        "no restarted engine restored a saved state: {seen:?}"
    );
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
    let alerts = ids(
        "SELECT DISTINCT alert_id FROM alerts WHERE rule_id NOT LIKE 'fraud.multi_accounting%'",
    )
    .await;
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
        "one row per alert id once collapsed: {:?}\n{}",
        pitboss_processor::sink::client(&stack.clickhouse, &stack.database)
            .query(
                "SELECT rule_id, group_key, player_id, alert_id, trigger_event_id FROM alerts \
                 FINAL WHERE rule_id LIKE 'fraud.multi_accounting%' ORDER BY rule_id, group_key"
            )
            .fetch_all::<(String, String, String, String, String)>()
            .await
            .unwrap_or_default(),
        stack.warnings()
    );
    let raised: std::collections::BTreeSet<(String, String)> =
        pitboss_processor::sink::client(&stack.clickhouse, &stack.database)
            .query("SELECT DISTINCT rule_id, player_id FROM alerts")
            .fetch_all::<(String, String)>()
            .await
            .unwrap()
            .into_iter()
            .filter(|(rule, _)| !shared(rule))
            .collect();
    // One alert per shared device and address, on one of the accounts that shared it.
    let shared_raised = pitboss_processor::sink::client(&stack.clickhouse, &stack.database)
        .query(
            "SELECT rule_id, group_key, player_id, alert_id FROM alerts FINAL \
             WHERE rule_id LIKE 'fraud.multi_accounting%' ORDER BY rule_id, group_key",
        )
        .fetch_all::<(String, String, String, String)>()
        .await
        .unwrap();
    assert_eq!(
        shared_raised
            .iter()
            .map(|(r, k, _, _)| (r.clone(), k.clone()))
            .collect::<Vec<_>>(),
        want_shared.iter().cloned().collect::<Vec<_>>(),
        "{shared_raised:?}"
    );
    for (_, key, player, _) in &shared_raised {
        let copy = if let Some(d) = key.strip_prefix("shared-device-") {
            d.to_owned()
        } else {
            (key.rsplit('.').next().unwrap().parse::<usize>().unwrap() - 10).to_string()
        };
        assert!(
            player.starts_with(&format!("shared-{copy}-")),
            "{key}: {player}"
        );
    }
    let scripted: std::collections::BTreeSet<(String, String)> = parts
        .iter()
        .flat_map(|p| p.fires.iter().map(|r| ((*r).to_owned(), p.player.clone())))
        .collect();
    assert_eq!(
        raised, scripted,
        "each pattern's player raised its rule, nobody else anything"
    );
    if shards > 1 {
        // Hits of the device and address rules crossed between shards on the forwards topic.
        let mut reader = bus
            .reader_all(&format!("{name}_forwards"), pitboss_bus::ReadFrom::Earliest)
            .await
            .unwrap();
        let mut forwarded = Vec::new();
        while !reader.caught_up() {
            for r in reader.poll(1000, Duration::from_secs(1)).await.unwrap() {
                forwarded.push(pitboss_antifraud::Forward::decode(&r.value).unwrap());
            }
        }
        let forwarded: std::collections::BTreeSet<String> = forwarded
            .iter()
            .map(|f| {
                let a = f.alert.as_ref().unwrap();
                assert!(shared(&a.rule_id), "{a:?}");
                a.alert_id.clone()
            })
            .collect();
        // Exactly the hits whose key and player belong to different shards crossed.
        let crossing: std::collections::BTreeSet<String> = shared_raised
            .iter()
            .filter(|(_, key, player, _)| {
                pitboss_antifraud::Shard::of(shards, "demo", key)
                    != pitboss_antifraud::Shard::of(shards, "demo", player)
            })
            .map(|(_, _, _, id)| id.clone())
            .collect();
        assert_eq!(forwarded, crossing, "{shared_raised:?}");
    }
}

/// Posts `body` until it is answered 200 (waiting out 429, 503 and a server not up yet);
/// returns how many events were answered `duplicate`.
async fn post_until_answered(
    client: &reqwest::Client,
    addr: &str,
    body: &[serde_json::Value],
) -> u64 {
    for _ in 0..600 {
        match client
            .post(format!("http://{addr}/v1/events"))
            .bearer_auth(RETRY_KEY)
            .json(body)
            .send()
            .await
        {
            Ok(resp) if resp.status() == 200 => {
                let answer: serde_json::Value = resp.json().await.unwrap();
                let duplicates = answer["duplicates"].as_u64().unwrap();
                let answered = answer["accepted"].as_u64().unwrap() + duplicates;
                assert_eq!(answered, body.len() as u64, "{answer}");
                return duplicates;
            }
            Ok(resp) => assert!(matches!(resp.status().as_u16(), 429 | 503), "{resp:?}"),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no answer from {addr}");
}

const RETRY_KEY: &str = "retry-e2e-key";

/// Issue #12 on the distributed path: `pitboss ingest` on Kafka and `pitboss process` into
/// ClickHouse. The client's batches are retried after both were SIGKILLed (one batch in
/// flight at the kill), then after both were SIGTERMed. Half the retries go to a second ingest
/// instance without an edge dedup window (`dedup_window_secs = 0`), so they reach the bus and
/// only the store can drop them; the first instance reads its window back from Kafka at every
/// start and answers `duplicate`. ClickHouse holds each event id once, and the rollups count it
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_ids_retried_after_sigkill_sigterm_and_through_another_ingest_are_stored_once() {
    const N: u64 = 3_000;
    let name = pitboss_testkit::unique_name("retry");
    let (kafka, clickhouse) = (pitboss_testkit::kafka(), pitboss_testkit::clickhouse());
    let database = format!("{name}_db");
    let topic = format!("{name}_events");
    let bus = KafkaBus::new(KafkaConfig::new(kafka.clone())).unwrap();
    bus.create_topic(&topic, 4).await.unwrap();
    // The hot-key overflow topic is co-partitioned with the events topic.
    bus.create_topic(&format!("{topic}_overflow"), 4)
        .await
        .unwrap();
    bus.create_topic(&format!("{topic}_dead_letter"), 1)
        .await
        .unwrap();
    let logs = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port()];
    let ingest = |n: usize| {
        let config = logs.path().join(format!("ingest-{n}.toml"));
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{}\"\nadmin_listen = \"127.0.0.1:0\"\ntopic = \"{topic}\"\ndedup_window_secs = {}\n[[tenants]]\nid = \"demo\"\napi_key_sha256 = [\"{}\"]\n",
                ports[n],
                if n == 0 { 900 } else { 0 },
                pitboss_ingest::auth::hash_key(RETRY_KEY)
            ),
        )
        .unwrap();
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(logs.path().join(format!("ingest-{n}.log")))
            .unwrap();
        Command::new(env!("CARGO_BIN_EXE_pitboss"))
            .args(["ingest", "--bus", "kafka", "--kafka-bootstrap", &kafka])
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    };
    let process = || events_processor(&logs, &kafka, &clickhouse, &database, &topic, &name, &[]);
    let signal = |children: &mut Children, sig: &str| {
        for c in &mut children.0 {
            Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status()
                .unwrap();
        }
        for c in &mut children.0 {
            let status = c.wait().unwrap();
            if sig == "-TERM" {
                assert!(
                    status.success(),
                    "{status} after SIGTERM\n{}",
                    pitboss_testkit::log_tails(logs.path(), 15)
                );
            }
        }
        children.0.clear();
    };
    let at = pitboss_model::Timestamp::now().to_rfc3339().unwrap();
    let events: Vec<serde_json::Value> = (0..2 * N)
        .map(|i| pitboss_testkit::client_bet(i, &at))
        .collect();
    let client = reqwest::Client::new();
    let addrs = ports.map(|p| format!("127.0.0.1:{p}"));

    // First run: N acknowledged, the next N posted while both are SIGKILLed.
    let mut children = Children(vec![ingest(0), process()]);
    for chunk in events[..N as usize].chunks(200) {
        post_until_answered(&client, &addrs[0], chunk).await;
    }
    let in_flight = {
        let (client, addr) = (client.clone(), addrs[0].clone());
        let rest = events[N as usize..].to_vec();
        tokio::spawn(async move {
            for chunk in rest.chunks(200) {
                let sent = client
                    .post(format!("http://{addr}/v1/events"))
                    .bearer_auth(RETRY_KEY)
                    .json(chunk)
                    .send()
                    .await;
                if sent.is_err() {
                    break;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&mut children, "-KILL");
    in_flight.await.unwrap();

    // Second run: everything retried, half through each of two ingest instances; SIGTERM.
    // Instance 0 read its dedup window back from Kafka: every acknowledged event it gets is a
    // duplicate; instance 1 keeps no window and passes its copies on to the store.
    children.0.extend([ingest(0), ingest(1), process()]);
    let mut duplicates = [0, 0];
    for (i, chunk) in events.chunks(200).enumerate() {
        duplicates[i % 2] += post_until_answered(&client, &addrs[i % 2], chunk).await;
    }
    // Chunks 0, 2, … of the first N events (acknowledged in the first run) went to instance 0.
    assert!(duplicates[0] >= N / 2, "{duplicates:?}");
    assert_eq!(duplicates[1], 0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    signal(&mut children, "-TERM");

    // Third run: everything retried again, the other way round; the store settles.
    children.0.extend([ingest(0), ingest(1), process()]);
    let mut duplicates = [0, 0];
    for (i, chunk) in events.chunks(200).enumerate() {
        duplicates[(i + 1) % 2] += post_until_answered(&client, &addrs[(i + 1) % 2], chunk).await;
    }
    assert_eq!(duplicates, [N, 0], "all acknowledged before");
    // The last retries are stored (or dropped) once the consumer group has no lag left: wait
    // for the count, then for a while longer in which nothing may change.
    let ch = pitboss_processor::sink::client(&clickhouse, &database);
    let count = || async {
        ch.query("SELECT count() FROM events")
            .fetch_one::<u64>()
            .await
            .unwrap_or(0)
    };
    let start = Instant::now();
    while count().await < 2 * N && start.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    signal(&mut children, "-TERM");

    let t: (u64, u64, u64, u64, i64, i64) = ch
        .query(
            "SELECT (SELECT count() FROM events), (SELECT uniqExact(event_id) FROM events), \
             sum(bets), sum(settlements), sum(stakes_minor), sum(payouts_minor) FROM bets_per_minute",
        )
        .fetch_one()
        .await
        .unwrap();
    let stakes: i64 = (0..2 * N).step_by(2).map(|i| 100 + i as i64).sum();
    assert_eq!(
        t,
        (2 * N, 2 * N, N, N, stakes, (N * 40) as i64),
        "{}",
        pitboss_testkit::log_tails(logs.path(), 15)
    );
}

/// Issue #12: `pitboss process` on SIGTERM stores what it holds and exits 0 — 20 times, each at
/// a random moment while events stream in. Afterwards ClickHouse holds every published event
/// exactly once: what a drained processor stored and committed is neither lost nor replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pitboss_process_drains_on_sigterm_under_load_and_exits_0_every_time() {
    use rand::Rng;
    let name = pitboss_testkit::unique_name("drain");
    let (kafka, clickhouse) = (pitboss_testkit::kafka(), pitboss_testkit::clickhouse());
    let database = format!("{name}_db");
    let topic = format!("{name}_events");
    let bus = KafkaBus::new(KafkaConfig::new(kafka.clone())).unwrap();
    bus.create_topic(&topic, 4).await.unwrap();
    bus.create_topic(&format!("{topic}_dead_letter"), 1)
        .await
        .unwrap();
    let logs = tempfile::tempdir().unwrap();
    let process = || {
        events_processor(
            &logs,
            &kafka,
            &clickhouse,
            &database,
            &topic,
            &name,
            &["--batch-max-age-ms", "200"],
        )
    };

    // Events stream in, 100 every 10 ms, until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let (publisher, topic, stop) = (bus.publisher(), topic.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let records = (n..n + 100)
                    .map(|i| {
                        let e = pitboss_testkit::deposit(i, 500);
                        OutRecord::new(e.bus_key(), pitboss_model::encode_proto(&e))
                    })
                    .collect();
                publisher.publish(&topic, records).await.unwrap();
                n += 100;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            n
        })
    };
    for round in 0..20 {
        let mut child = Children(vec![process()]);
        let wait = rand::rng().random_range(300..2_500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let pid = child.0[0].id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let mut c = child.0.remove(0);
        let status = tokio::task::spawn_blocking(move || c.wait().unwrap())
            .await
            .unwrap();
        assert!(
            status.success(),
            "round {round}: SIGTERM {wait} ms after start: {status}\n{}",
            pitboss_testkit::log_tails(logs.path(), 20)
        );
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let published = publisher.await.unwrap();

    // A last processor stores the rest.
    let mut last = Children(vec![process()]);
    let ch = pitboss_processor::sink::client(&clickhouse, &database);
    let count = || async {
        ch.query("SELECT count() FROM events")
            .fetch_one::<u64>()
            .await
            .unwrap_or(0)
    };
    let start = Instant::now();
    while count().await < published && start.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = last.0[0].id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(last.0[0].wait().unwrap().success());
    let ids: u64 = ch
        .query("SELECT uniqExact(event_id) FROM events")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        (count().await, ids),
        (published, published),
        "every published event once\n{}",
        pitboss_testkit::log_tails(logs.path(), 20)
    );
}

/// `pitboss process` of the events `topic` into `database` (group `<name>_p`), logging to
/// `process.log` in `logs` (appended across restarts), with `extra` arguments.
fn events_processor(
    logs: &tempfile::TempDir,
    kafka: &str,
    clickhouse: &str,
    database: &str,
    topic: &str,
    name: &str,
    extra: &[&str],
) -> Child {
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(logs.path().join("process.log"))
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_pitboss"))
        .args([
            "process",
            "--clickhouse",
            clickhouse,
            "--database",
            database,
        ])
        .args(["--kafka-bootstrap", kafka, "--topic", topic])
        .args([
            "--admin-listen",
            "127.0.0.1:0",
            "--group",
            &format!("{name}_p"),
        ])
        .args(["--session-timeout-secs", "6"])
        .args(extra)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// The topics `group_engine` reads and writes under `name`.
async fn group_topics(bus: &dyn Bus, name: &str) {
    for (topic, partitions) in [
        (format!("{name}_events"), 8),
        (format!("{name}_events_overflow"), 8),
        (format!("{name}_alerts"), 2),
        (format!("{name}_pushes"), 2),
        (format!("{name}_dead_letter"), 1),
    ] {
        bus.create_topic(&topic, partitions).await.unwrap();
    }
}

/// `pitboss antifraud` on Kafka for the one-engine-per-group test, logging to `log`.
fn group_engine(kafka: &str, name: &str, state: &std::path::Path, log: &std::path::Path) -> Child {
    group_engine_with(kafka, name, state, log, &[])
}

/// [`group_engine`] with more arguments.
fn group_engine_with(
    kafka: &str,
    name: &str,
    state: &std::path::Path,
    log: &std::path::Path,
    more: &[&str],
) -> Child {
    Command::new(env!("CARGO_BIN_EXE_pitboss"))
        .args(["antifraud", "--bus", "kafka", "--kafka-bootstrap", kafka])
        .args([
            "--topic",
            &format!("{name}_events"),
            "--group",
            &format!("{name}_af"),
        ])
        .args(["--alerts-topic", &format!("{name}_alerts")])
        .args(["--pushes-topic", &format!("{name}_pushes")])
        .args(["--dead-letter-topic", &format!("{name}_dead_letter")])
        .arg("--state-dir")
        .arg(state)
        .args([
            "--snapshot-interval-ms",
            "500",
            "--session-timeout-secs",
            "6",
        ])
        .args(["--admin-listen", "127.0.0.1:0"])
        .args(more)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// 30 bets within a minute by `player`: `fraud.bet_velocity` fires once, on the 30th.
fn bet_burst(player: &str, n0: u64) -> Vec<OutRecord> {
    bets(
        player,
        n0,
        0..30,
        pitboss_model::Timestamp::now().as_millis(),
    )
}

/// Bets `range` of 30 by `player`, one a second from `t0`, at the player's midday: the bursts
/// are for `fraud.bet_velocity` alone, and between 00:00 and 05:00 of the player's time
/// `rg.late_night` would fire on them too.
fn bets(player: &str, n0: u64, range: std::ops::Range<u64>, t0: i64) -> Vec<OutRecord> {
    let utc_hour = t0.div_euclid(3_600_000).rem_euclid(24);
    let offset_min = match (12 - utc_hour).rem_euclid(24) * 60 {
        m if m > 720 => m - 1440,
        m => m,
    };
    range
        .map(|i| {
            let t = pitboss_model::Timestamp::from_millis(t0 + i as i64 * 1_000)
                .to_rfc3339()
                .unwrap();
            let json = format!(
                r#"{{"event_id":"0193735a-0000-7000-8000-{:012x}","tenant_id":"demo","player_id":"{player}","type":"bet_placed","occurred_at":"{t}","utc_offset_min":{offset_min},"payload":{{"bet_id":"b-{player}-{i}","game_id":"roulette","stake":{{"amount_minor":100,"currency":"EUR"}}}}}}"#,
                n0 + i
            );
            let e = pitboss_model::decode_event(json.as_bytes()).unwrap();
            OutRecord::new(format!("demo:{player}"), pitboss_model::encode_proto(&e))
        })
        .collect()
}

/// The players of the alerts on `topic` so far (one per alert record).
async fn alerted_players(bus: &KafkaBus, topic: &str, want: usize) -> Vec<String> {
    use pitboss_bus::ReadFrom;
    let mut reader = bus.reader_all(topic, ReadFrom::Earliest).await.unwrap();
    let mut players = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(if want == 0 { 3 } else { 60 }) {
        for r in reader.poll(100, Duration::from_millis(200)).await.unwrap() {
            let a = pitboss_model::live::Alert::decode_proto(&r.value).unwrap();
            players.push(a.player_id.unwrap_or_default());
        }
        if want > 0 && players.len() >= want {
            // Anything more (a double) would come with these: read a little longer.
            for r in reader.poll(100, Duration::from_secs(2)).await.unwrap() {
                let a = pitboss_model::live::Alert::decode_proto(&r.value).unwrap();
                players.push(a.player_id.unwrap_or_default());
            }
            break;
        }
    }
    players.sort();
    players
}

/// Waits until the group's members are exactly `n` (their client ids).
async fn members_become(
    bus: &KafkaBus,
    group: &str,
    n: usize,
    logs: &[&std::path::Path],
) -> Vec<String> {
    let start = Instant::now();
    loop {
        // A broker just started answers "coordinator load in progress" for a moment.
        let m: Vec<String> = match bus.group_members(group).await {
            Ok(members) => members.unwrap().into_iter().map(|m| m.client_id).collect(),
            Err(pitboss_bus::BusError::Unavailable(e))
                if start.elapsed() < Duration::from_secs(60) =>
            {
                eprintln!("group members not known yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(e) => panic!("{e}"),
        };
        if m.len() == n {
            return m;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "group {group} has {m:?}, not {n} members\n{}",
            logs.iter()
                .map(|l| std::fs::read_to_string(l).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn wait_for_line(log: &std::path::Path, needle: &str) {
    let start = Instant::now();
    while !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains(needle)
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no {needle:?} in {}:\n{}",
            log.display(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One rules engine per group (docs/rules.md, "One engine per group"): a second `pitboss
/// antifraud` in the group stands by without joining it while the first runs; after the first
/// is stopped (SIGTERM) it takes over and raises alerts; an engine restarted on the same state
/// file after a SIGKILL is not held back by its own previous run; and the first engine, started
/// again while the second runs, stands by. Every burst of bets raises its alert exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_rules_engine_in_the_group_stands_by_and_takes_over_when_the_first_leaves() {
    let kafka = pitboss_testkit::kafka();
    let name = pitboss_testkit::unique_name("one");
    let group = format!("{name}_af");
    let bus = KafkaBus::new(KafkaConfig::new(kafka.clone())).unwrap();
    group_topics(&bus, &name).await;
    let dir = tempfile::tempdir().unwrap();
    let (state_a, state_b) = (dir.path().join("a"), dir.path().join("b"));
    let logs: Vec<std::path::PathBuf> = (0..4)
        .map(|i| dir.path().join(format!("engine-{i}.log")))
        .collect();
    let all_logs: Vec<&std::path::Path> = logs.iter().map(|p| p.as_path()).collect();
    let publisher = bus.publisher();
    let events = format!("{name}_events");
    let alerts = format!("{name}_alerts");

    // A runs alone; B stands by without joining.
    let mut a = Children(vec![group_engine(&kafka, &name, &state_a, &logs[0])]);
    let first = members_become(&bus, &group, 1, &all_logs).await;
    let mut b = Children(vec![group_engine(&kafka, &name, &state_b, &logs[1])]);
    wait_for_line(&logs[1], "standing by until it leaves");
    assert_eq!(
        members_become(&bus, &group, 1, &all_logs).await,
        first,
        "B joined the group"
    );
    // A second process on A's state directory is refused: it would write A's rows.
    let twin_log = dir.path().join("twin.log");
    let mut twin = group_engine(&kafka, &name, &state_a, &twin_log);
    let status = twin.wait().unwrap();
    let said = std::fs::read_to_string(&twin_log).unwrap();
    assert!(
        !status.success() && said.contains("in use by another rules engine process"),
        "{status}: {said}"
    );
    publisher
        .publish(&events, bet_burst("p-1", 0))
        .await
        .unwrap();
    assert_eq!(alerted_players(&bus, &alerts, 1).await, ["p-1"]);

    // A stops (SIGTERM): B takes over, with a name of its own.
    let pid = a.0[0].id();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(
        a.0[0].wait().unwrap().success(),
        "A did not exit 0 on SIGTERM"
    );
    wait_for_line(&logs[1], "the group is free: taking over");
    let second = members_become(&bus, &group, 1, &all_logs).await;
    assert_ne!(second, first);
    publisher
        .publish(&events, bet_burst("p-2", 100))
        .await
        .unwrap();
    assert_eq!(alerted_players(&bus, &alerts, 2).await, ["p-1", "p-2"]);

    // B is SIGKILLed and restarted on its state file: its own previous run does not hold it.
    b.0[0].kill().unwrap();
    b.0[0].wait().unwrap();
    b.0.push(group_engine(&kafka, &name, &state_b, &logs[2]));
    // A, started again meanwhile, finds B (the new run, or its previous one until the group
    // drops it) and stands by.
    a.0.push(group_engine(&kafka, &name, &state_a, &logs[3]));
    wait_for_line(&logs[3], "standing by until it leaves");
    publisher
        .publish(&events, bet_burst("p-3", 200))
        .await
        .unwrap();
    assert_eq!(
        alerted_players(&bus, &alerts, 3).await,
        ["p-1", "p-2", "p-3"]
    );
    assert_eq!(
        members_become(&bus, &group, 1, &all_logs).await,
        second,
        "A joined the group"
    );
    let restarted = std::fs::read_to_string(&logs[2]).unwrap();
    assert!(
        !restarted.contains("standing by"),
        "B stood by for its own previous run:\n{restarted}"
    );
    drop(a);
    drop(b);
}

/// What a test of two rules engines in one Kafka group starts from: its topics (a prefix of
/// its own), the group's name, a directory for the engines' states and their two logs.
struct GroupRig {
    kafka: String,
    name: String,
    group: String,
    bus: KafkaBus,
    dir: tempfile::TempDir,
    logs: Vec<std::path::PathBuf>,
    publisher: std::sync::Arc<dyn pitboss_bus::Publisher>,
    events: String,
    alerts: String,
}

impl GroupRig {
    async fn new(prefix: &str) -> GroupRig {
        let kafka = pitboss_testkit::kafka();
        let name = pitboss_testkit::unique_name(prefix);
        let bus = KafkaBus::new(KafkaConfig::new(kafka.clone())).unwrap();
        group_topics(&bus, &name).await;
        let dir = tempfile::tempdir().unwrap();
        let logs = (0..2)
            .map(|i| dir.path().join(format!("engine-{i}.log")))
            .collect();
        GroupRig {
            kafka,
            group: format!("{name}_af"),
            publisher: bus.publisher(),
            bus,
            dir,
            logs,
            events: format!("{name}_events"),
            alerts: format!("{name}_alerts"),
            name,
        }
    }
}

/// Two engines started at the same moment on an empty group (docs/rules.md, "One active
/// engine"): they may both find it free, but they end with one in the group and the other
/// standing by, each burst raises its alert once, and when the active one stops the other
/// takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rules_engines_started_together_end_with_one_in_the_group() {
    let GroupRig {
        kafka,
        name,
        group,
        bus,
        dir,
        logs,
        publisher,
        events,
        alerts,
    } = GroupRig::new("two").await;
    let all_logs: Vec<&std::path::Path> = logs.iter().map(|p| p.as_path()).collect();
    let mut engines = Children(vec![
        group_engine(&kafka, &name, &dir.path().join("a"), &logs[0]),
        group_engine(&kafka, &name, &dir.path().join("b"), &logs[1]),
    ]);
    // Settled: one member, and the other engine's last word is standing by for that member
    // (each names the engine it yields to: `others=<client id>`).
    let standby_for = |member: &str| -> Option<usize> {
        logs.iter().position(|l| {
            std::fs::read_to_string(l)
                .unwrap_or_default()
                .lines()
                .rfind(|x| x.contains("standing by"))
                .is_some_and(|x| x.contains(&format!("others={member} ")))
        })
    };
    let start = Instant::now();
    let (active, standby) = loop {
        let members = members_become(&bus, &group, 1, &all_logs).await;
        if let Some(i) = standby_for(&members[0]) {
            break (members, i);
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no engine stands by for {members:?}:\n{}\n---\n{}",
            std::fs::read_to_string(&logs[0]).unwrap_or_default(),
            std::fs::read_to_string(&logs[1]).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    publisher
        .publish(&events, bet_burst("p-1", 0))
        .await
        .unwrap();
    assert_eq!(alerted_players(&bus, &alerts, 1).await, ["p-1"]);
    // Still one, the same, a while later (a stand-by that had joined too would show by now:
    // engines check their group every 5 s).
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(members_become(&bus, &group, 1, &all_logs).await, active);
    publisher
        .publish(&events, bet_burst("p-2", 100))
        .await
        .unwrap();
    assert_eq!(alerted_players(&bus, &alerts, 2).await, ["p-1", "p-2"]);
    // The active one stops (SIGTERM): the stand-by takes over.
    let on = 1 - standby;
    Command::new("kill")
        .args(["-TERM", &engines.0[on].id().to_string()])
        .status()
        .unwrap();
    assert!(engines.0[on].wait().unwrap().success());
    let start = Instant::now();
    while members_become(&bus, &group, 1, &all_logs).await == active {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the stand-by did not take over:\n{}",
            std::fs::read_to_string(&logs[standby]).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    publisher
        .publish(&events, bet_burst("p-3", 200))
        .await
        .unwrap();
    assert_eq!(
        alerted_players(&bus, &alerts, 3).await,
        ["p-1", "p-2", "p-3"]
    );
    drop(engines);
}

/// An engine frozen (SIGSTOP: a process cut off from the broker) past the session timeout
/// loses the group to its stand-by; woken (SIGCONT), it finds its turn came back past its
/// session and leaves without evaluating what it read (docs/rules.md: it read the burst the
/// stand-by had already alerted, and alerted it a second time in one CI run), and the group ends
/// with one member. No burst is alerted twice or missed on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_frozen_past_its_session_wakes_to_a_group_that_ends_with_one_member() {
    let GroupRig {
        kafka,
        name,
        group,
        bus,
        dir,
        logs,
        publisher,
        events,
        alerts,
    } = GroupRig::new("frozen").await;
    let all_logs: Vec<&std::path::Path> = logs.iter().map(|p| p.as_path()).collect();
    let a = Children(vec![group_engine(
        &kafka,
        &name,
        &dir.path().join("a"),
        &logs[0],
    )]);
    let first = members_become(&bus, &group, 1, &all_logs).await;
    let b = Children(vec![group_engine(
        &kafka,
        &name,
        &dir.path().join("b"),
        &logs[1],
    )]);
    wait_for_line(&logs[1], "standing by until it leaves");
    publisher
        .publish(&events, bet_burst("p-1", 0))
        .await
        .unwrap();
    assert_eq!(alerted_players(&bus, &alerts, 1).await, ["p-1"]);

    // A freezes; past its session (6 s) the group drops it and B takes over.
    let signal = |sig: &str, pid: u32| {
        assert!(
            Command::new("kill")
                .args([sig, &pid.to_string()])
                .status()
                .unwrap()
                .success()
        );
    };
    let pid_a = a.0[0].id();
    signal("-STOP", pid_a);
    wait_for_line(&logs[1], "the group is free: taking over");
    let second = members_become(&bus, &group, 1, &all_logs).await;
    assert_ne!(second, first);
    publisher
        .publish(&events, bet_burst("p-2", 100))
        .await
        .unwrap();
    assert_eq!(alerted_players(&bus, &alerts, 2).await, ["p-1", "p-2"]);

    // A wakes, sees the pause and leaves: one member again.
    signal("-CONT", pid_a);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let last = members_become(&bus, &group, 1, &all_logs).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        members_become(&bus, &group, 1, &all_logs).await,
        last,
        "the group did not settle on one engine"
    );
    let said: String = logs
        .iter()
        .map(|l| std::fs::read_to_string(l).unwrap_or_default())
        .collect();
    assert!(
        said.contains("paused past its session"),
        "the woken engine did not see it was paused past its session:\n{said}"
    );
    publisher
        .publish(&events, bet_burst("p-3", 200))
        .await
        .unwrap();
    assert_eq!(
        alerted_players(&bus, &alerts, 3).await,
        ["p-1", "p-2", "p-3"]
    );
    drop(a);
    drop(b);
}

/// `--start-at`: an engine in a group that has committed nothing starts at the time — the
/// events before it are not evaluated (no alert for them) — and, restarted once it has
/// committed, resumes at its commit, not at the time again: with a new state directory (no
/// positions of its own to skip by) it raises nothing a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_of_a_new_group_starts_at_the_time_it_is_given_and_resumes_at_its_commit() {
    let kafka = pitboss_testkit::kafka();
    let name = pitboss_testkit::unique_name("at");
    let bus = KafkaBus::new(KafkaConfig::new(kafka.clone())).unwrap();
    group_topics(&bus, &name).await;
    let dir = tempfile::tempdir().unwrap();
    let publisher = bus.publisher();
    let events = format!("{name}_events");
    let alerts = format!("{name}_alerts");
    // Before the switch: p-0's burst (another reader's business).
    publisher
        .publish(&events, bet_burst("p-0", 0))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let switch = pitboss_model::Timestamp::now();
    let at = switch.to_rfc3339().unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    publisher
        .publish(&events, bet_burst("p-1", 100))
        .await
        .unwrap();
    let logs: Vec<std::path::PathBuf> = (0..2)
        .map(|i| dir.path().join(format!("engine-{i}.log")))
        .collect();
    let more = ["--start-at", at.as_str()];
    let mut first = Children(vec![group_engine_with(
        &kafka,
        &name,
        &dir.path().join("a"),
        &logs[0],
        &more,
    )]);
    assert_eq!(
        alerted_players(&bus, &alerts, 1).await,
        ["p-1"],
        "the events stored after the time only"
    );
    // SIGTERM: it saves and commits.
    Command::new("kill")
        .args(["-TERM", &first.0[0].id().to_string()])
        .status()
        .unwrap();
    assert!(first.0[0].wait().unwrap().success());
    // Restarted with the same time but a state directory of its own that knows nothing.
    let mut engine = Children(vec![group_engine_with(
        &kafka,
        &name,
        &dir.path().join("b"),
        &logs[1],
        &more,
    )]);
    publisher
        .publish(&events, bet_burst("p-2", 200))
        .await
        .unwrap();
    assert_eq!(
        alerted_players(&bus, &alerts, 2).await,
        ["p-1", "p-2"],
        "resumed at the commit: p-1's burst not evaluated again"
    );
    engine.0[0].kill().unwrap();
    // An output topic that is not there is refused before anything is read, naming it.
    let refused = Command::new(env!("CARGO_BIN_EXE_pitboss"))
        .args(["antifraud", "--bus", "kafka", "--kafka-bootstrap", &kafka])
        .args(["--topic", &events, "--group", &format!("{name}_af2")])
        .args(["--alerts-topic", &format!("{name}_no_alerts")])
        .args(["--admin-listen", "127.0.0.1:0"])
        .arg("--state-dir")
        .arg(dir.path().join("c"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && said.contains(&format!(
                "--alerts-topic \"{name}_no_alerts\": no such topic"
            )),
        "{said}"
    );
    // So is a processor's topic that is not there (it ran on, warning without naming it).
    let refused = Command::new(env!("CARGO_BIN_EXE_pitboss"))
        .args(["process", "--bus", "kafka", "--kafka-bootstrap", &kafka])
        .args(["--clickhouse", &pitboss_testkit::clickhouse()])
        .args(["--database", &format!("{name}_db")])
        .args(["--topic", &format!("{name}_nosuch")])
        .args(["--admin-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && said.contains(&format!("--topic \"{name}_nosuch\": no such topic")),
        "{said}"
    );
    // And a topic without its dead-letter topic: the first bad record would find it missing
    // and stop the processor, so it is refused at start, naming it.
    let nodl = format!("{name}_nodl");
    bus.create_topic(&nodl, 1).await.unwrap();
    // (Under `timeout`: a processor that was not refused would run on.)
    let refused = Command::new("timeout")
        .arg("60")
        .arg(env!("CARGO_BIN_EXE_pitboss"))
        .args(["process", "--bus", "kafka", "--kafka-bootstrap", &kafka])
        .args(["--clickhouse", &pitboss_testkit::clickhouse()])
        .args(["--database", &format!("{name}_db")])
        .args(["--topic", &nodl])
        .args(["--admin-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && said.contains(&format!("\"{nodl}_dead_letter\": no such topic")),
        "{said}"
    );
    // A time that is not one is refused, naming the flag's value.
    let refused = Command::new(env!("CARGO_BIN_EXE_pitboss"))
        .args(["antifraud", "--bus", "kafka", "--kafka-bootstrap", &kafka])
        .args(["--start-at", "yesterday"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && said.contains("\"yesterday\" is not an RFC 3339 time"),
        "{said}"
    );
}

/// Events of `topic` a save in the changelog covers (the mark's positions: offset + 1 per
/// partition).
async fn saved_events(
    bus: &std::sync::Arc<dyn Bus>,
    state_topic: &str,
    group: &str,
    topic: &str,
) -> i64 {
    let Some((image, _)) = pitboss_antifraud::changelog::read(bus, state_topic, group)
        .await
        .unwrap()
    else {
        return 0;
    };
    image.mark.map_or(0, |m| {
        m.positions
            .iter()
            .filter(|((t, _), _)| &**t == topic)
            .map(|(_, p)| match p {
                pitboss_bus::Position::Offset(o) => o + 1,
                pitboss_bus::Position::Sequence(_) => 0,
            })
            .sum()
    })
}

async fn wait_saved(bus: &std::sync::Arc<dyn Bus>, name: &str, n: i64, logs: &[&std::path::Path]) {
    let start = Instant::now();
    while saved_events(
        bus,
        "antifraud_state",
        &format!("{name}_af"),
        &format!("{name}_events"),
    )
    .await
        < n
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no save covering {n} events in the changelog\n{}",
            logs.iter()
                .map(|l| std::fs::read_to_string(l).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The state changelog (docs/rules.md, "The state changelog"): an engine that takes the group
/// over with a state directory of its own — after the first engine's SIGTERM, then after a
/// SIGKILL — starts from the windows of the engine it replaces: a burst of 30 bets split 20
/// before the takeover and 10 after raises its alert, once (with empty windows the new engine
/// would count 10 bets and raise nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_taking_the_group_over_elsewhere_starts_from_the_windows_it_replaces() {
    let kafka = pitboss_testkit::kafka();
    let name = pitboss_testkit::unique_name("log");
    let group = format!("{name}_af");
    let bus: std::sync::Arc<dyn Bus> =
        std::sync::Arc::new(KafkaBus::new(KafkaConfig::new(kafka.clone())).unwrap());
    group_topics(&*bus, &name).await;
    let kbus = KafkaBus::new(KafkaConfig::new(kafka.clone())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let logs: Vec<std::path::PathBuf> = (0..3)
        .map(|i| dir.path().join(format!("engine-{i}.log")))
        .collect();
    let all_logs: Vec<&std::path::Path> = logs.iter().map(|p| p.as_path()).collect();
    let publisher = bus.publisher();
    let events = format!("{name}_events");
    let alerts = format!("{name}_alerts");
    let t0 = pitboss_model::Timestamp::now().as_millis();

    // A runs the group and sees 20 bets of p-1; its save reaches the changelog; SIGTERM.
    let mut a = Children(vec![group_engine(
        &kafka,
        &name,
        &dir.path().join("a"),
        &logs[0],
    )]);
    members_become(&kbus, &group, 1, &all_logs).await;
    publisher
        .publish(&events, bets("p-1", 0, 0..20, t0))
        .await
        .unwrap();
    wait_saved(&bus, &name, 20, &all_logs).await;
    let pid = a.0[0].id();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(
        a.0[0].wait().unwrap().success(),
        "A did not exit 0 on SIGTERM"
    );

    // B, on a state directory of its own, takes over from the changelog: 10 more bets fire.
    let mut b = Children(vec![group_engine(
        &kafka,
        &name,
        &dir.path().join("b"),
        &logs[1],
    )]);
    wait_for_line(&logs[1], "state taken from the changelog");
    publisher
        .publish(&events, bets("p-1", 0, 20..30, t0))
        .await
        .unwrap();
    assert_eq!(alerted_players(&kbus, &alerts, 1).await, ["p-1"]);

    // B sees 20 bets of p-2, saves, and is SIGKILLed; C takes over from the changelog once
    // the group has dropped B.
    publisher
        .publish(&events, bets("p-2", 100, 0..20, t0))
        .await
        .unwrap();
    wait_saved(&bus, &name, 50, &all_logs).await;
    b.0[0].kill().unwrap();
    b.0[0].wait().unwrap();
    let _c = Children(vec![group_engine(
        &kafka,
        &name,
        &dir.path().join("c"),
        &logs[2],
    )]);
    wait_for_line(&logs[2], "state taken from the changelog");
    publisher
        .publish(&events, bets("p-2", 100, 20..30, t0))
        .await
        .unwrap();
    assert_eq!(alerted_players(&kbus, &alerts, 2).await, ["p-1", "p-2"]);
    drop(a);
}

/// `pitboss rules warm` (docs/rules.md, "Starting warm") on a Kafka group with an empty
/// changelog: the engine started on the warmed file writes the whole state to the changelog
/// with its first save, so an engine taking the group over elsewhere starts warm too — 20
/// bets of a burst stored before the warm start, 10 after the takeover: the alert needs all 30.
/// (Marked as no engine's, the warmed file's first save is full; without the mark it was
/// incremental and the changelog never held the warmed windows.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warmed_state_reaches_the_changelog_whole_and_an_engine_taking_over_starts_warm() {
    use pitboss_processor::sqlite::SqliteRow;

    let kafka = pitboss_testkit::kafka();
    let name = pitboss_testkit::unique_name("warm");
    let group = format!("{name}_af");
    let bus: std::sync::Arc<dyn Bus> =
        std::sync::Arc::new(KafkaBus::new(KafkaConfig::new(kafka.clone())).unwrap());
    group_topics(&*bus, &name).await;
    let kbus = KafkaBus::new(KafkaConfig::new(kafka.clone())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let logs: Vec<std::path::PathBuf> = (0..2)
        .map(|i| dir.path().join(format!("engine-{i}.log")))
        .collect();
    let all_logs: Vec<&std::path::Path> = logs.iter().map(|p| p.as_path()).collect();
    let events = format!("{name}_events");
    let alerts = format!("{name}_alerts");
    let t0 = pitboss_model::Timestamp::now().as_millis();

    // 20 bets of p-1 on the bus, and in the store as the processor keeps them.
    let history = bets("p-1", 0, 0..20, t0);
    let acks = bus
        .publisher()
        .publish(&events, history.clone())
        .await
        .unwrap();
    let rows: Vec<_> = history
        .iter()
        .zip(&acks)
        .map(|(r, ack)| {
            let mut e = pitboss_model::decode_proto(&r.value).unwrap();
            e.received_at = Some(e.occurred_at);
            let pitboss_bus::Position::Offset(o) = ack.position else {
                panic!("{:?}", ack.position)
            };
            pitboss_processor::rows::from_event(e, &events, ack.partition, o as u64).unwrap()
        })
        .collect();
    let (mut conn, _) = pitboss_processor::sqlite::open(&dir.path().join("pitboss.db")).unwrap();
    let tx = conn.transaction().unwrap();
    pitboss_processor::EventRow::write(&tx, &rows).unwrap();
    tx.commit().unwrap();
    drop(conn);

    let warmed = Command::new(env!("CARGO_BIN_EXE_pitboss"))
        .args([
            "rules",
            "warm",
            "--bus",
            "kafka",
            "--kafka-bootstrap",
            &kafka,
        ])
        .args(["--topic", &events, "--group", &group, "--format", "json"])
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--state-dir")
        .arg(dir.path().join("a"))
        .env_remove("PITBOSS_BUS")
        .output()
        .unwrap();
    assert!(
        warmed.status.success(),
        "{}",
        String::from_utf8_lossy(&warmed.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&warmed.stdout).unwrap();
    assert_eq!(report["events_warmed"], 20, "{report}");
    let units: std::collections::BTreeSet<String> = pitboss_antifraud::state::StateStore::open(
        &dir.path().join("a").join("antifraud.db"),
        &group,
    )
    .unwrap()
    .unit_names()
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(units.len() as u64, report["units"].as_u64().unwrap());

    // A starts on the warmed file: its first save puts every unit in the changelog.
    let mut a = Children(vec![group_engine(
        &kafka,
        &name,
        &dir.path().join("a"),
        &logs[0],
    )]);
    let start = Instant::now();
    loop {
        // The engine makes the changelog topic as it starts: not there before.
        let image = pitboss_antifraud::changelog::read(&bus, "antifraud_state", &group)
            .await
            .ok()
            .flatten()
            .map(|(image, _)| image);
        let held: std::collections::BTreeSet<String> =
            image.iter().flat_map(|i| i.units.keys().cloned()).collect();
        if image.as_ref().is_some_and(|i| i.mark.is_some()) && held == units {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the changelog holds {} of the {} warmed units\n{}",
            held.len(),
            units.len(),
            all_logs
                .iter()
                .map(|l| std::fs::read_to_string(l).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    a.0[0].kill().unwrap();
    a.0[0].wait().unwrap();

    // B, on a state directory of its own, takes over from the changelog: 10 more bets fire.
    let _b = Children(vec![group_engine(
        &kafka,
        &name,
        &dir.path().join("b"),
        &logs[1],
    )]);
    wait_for_line(&logs[1], "state taken from the changelog");
    bus.publisher()
        .publish(&events, bets("p-1", 0, 20..30, t0))
        .await
        .unwrap();
    assert_eq!(alerted_players(&kbus, &alerts, 1).await, ["p-1"]);
}

/// `pitboss topics` with `args` against the test broker.
fn pitboss_topics(kafka: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pitboss"))
        .args(["topics", "--bus", "kafka", "--kafka-bootstrap", kafka])
        .args(args)
        .output()
        .unwrap()
}

/// `pitboss topics` (docs/deploy.md: MSK and compose do not create topics on first use) makes
/// every topic the roles use once — keyed ones with `--partitions`, dead letters and the
/// compacted state topic with one — says so per topic, changes nothing on a second run, keeps
/// a topic that exists with other partitions, and refuses, naming it, a state topic that is not
/// one and an overflow topic not co-partitioned with the events. Two runs at once both succeed,
/// and each topic is reported made by one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pitboss_topics_makes_every_topic_once_and_refuses_ones_that_cannot_work() {
    let kafka = pitboss_testkit::kafka();
    let bus = KafkaBus::new(KafkaConfig::new(kafka.clone())).unwrap();
    let p = format!("{}_", pitboss_testkit::unique_name("tp"));

    let out = pitboss_topics(&kafka, &["--prefix", &p, "--partitions", "3"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 16, "{stdout}");
    assert!(lines.iter().all(|l| l.starts_with("created ")), "{stdout}");
    for (topic, n) in [
        ("events", 3),
        ("events_overflow", 3),
        ("alerts", 3),
        ("pushes", 3),
        ("deliveries", 3),
        ("alert_acks", 3),
        ("presence", 3),
        ("antifraud_forwards", 3),
        ("events_dead_letter", 1),
        ("events_overflow_dead_letter", 1),
        ("alerts_dead_letter", 1),
        ("pushes_dead_letter", 1),
        ("deliveries_dead_letter", 1),
        ("alert_acks_dead_letter", 1),
        ("antifraud_dead_letter", 1),
        ("antifraud_state", 1),
    ] {
        let topic = format!("{p}{topic}");
        assert_eq!(bus.partition_count(&topic).await.unwrap(), n, "{topic}");
    }
    // The state topic compacts: the bus's own check of an existing state topic accepts it.
    bus.create_compacted_topic(&format!("{p}antifraud_state"))
        .await
        .unwrap();

    let again = pitboss_topics(&kafka, &["--prefix", &p, "--partitions", "5"]);
    assert!(again.status.success(), "{again:?}");
    let stdout = String::from_utf8(again.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 16, "{stdout}");
    assert!(
        stdout.contains(&format!(
            "exists  {p}alerts (3 partitions, kept; --partitions 5 applies to new topics)"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "exists  {p}antifraud_state (1 partition, compacted)"
        )),
        "{stdout}"
    );
    assert_eq!(bus.partition_count(&format!("{p}alerts")).await.unwrap(), 3);

    // Two at once on topics nobody made yet (every task of a deployment runs it as it starts):
    // both succeed and the topics are as one would have made them.
    let c = format!("{}_", pitboss_testkit::unique_name("tc"));
    let two: Vec<_> = (0..2)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_pitboss"))
                .args(["topics", "--bus", "kafka", "--kafka-bootstrap", &kafka])
                .args(["--prefix", &c, "--partitions", "2"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut created = std::collections::BTreeMap::<String, usize>::new();
    for child in two {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_eq!(stdout.lines().count(), 16, "{stdout}");
        for line in stdout.lines() {
            if let Some(rest) = line.strip_prefix("created ") {
                let topic = rest.split(' ').next().unwrap().to_owned();
                *created.entry(topic).or_default() += 1;
            }
        }
    }
    // Each topic said `created` by exactly one of the two.
    assert_eq!(created.len(), 16, "{created:?}");
    assert!(created.values().all(|&n| n == 1), "{created:?}");
    for (topic, n) in [("events", 2), ("presence", 2), ("pushes_dead_letter", 1)] {
        let topic = format!("{c}{topic}");
        assert_eq!(bus.partition_count(&topic).await.unwrap(), n, "{topic}");
    }
    bus.create_compacted_topic(&format!("{c}antifraud_state"))
        .await
        .unwrap();

    // Its stdout closed at once (`pitboss topics | head -1`): it still makes every topic.
    let d = format!("{}_", pitboss_testkit::unique_name("td"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_pitboss"))
        .args(["topics", "--bus", "kafka", "--kafka-bootstrap", &kafka])
        .args(["--prefix", &d])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    assert!(child.wait().unwrap().success());
    assert_eq!(
        bus.partition_count(&format!("{d}antifraud_state"))
            .await
            .unwrap(),
        1
    );

    // A state topic that is not one: refused, naming it.
    let q = format!("{}_", pitboss_testkit::unique_name("tq"));
    bus.create_topic(&format!("{q}antifraud_state"), 2)
        .await
        .unwrap();
    let out = pitboss_topics(&kafka, &["--prefix", &q]);
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{q}antifraud_state has 2 partitions")),
        "{err}"
    );

    // An overflow topic, and the forwards topic of split rules engines, with other partitions
    // than the events: refused, naming both and why.
    for (topic, why) in [
        (
            "events_overflow",
            "the overflow topic must be co-partitioned",
        ),
        (
            "antifraud_forwards",
            "the forwards topic of split rules engines must be co-partitioned",
        ),
    ] {
        let r = format!("{}_", pitboss_testkit::unique_name("tr"));
        bus.create_topic(&format!("{r}{topic}"), 2).await.unwrap();
        let out = pitboss_topics(&kafka, &["--prefix", &r, "--partitions", "4"]);
        assert!(!out.status.success(), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "topic \"{r}{topic}\" has 2 partitions and \"{r}events\" has 4: {why}"
            )),
            "{err}"
        );
    }

    let out = pitboss_topics(&kafka, &["--prefix", "a b"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--prefix \"a b\""),
        "{out:?}"
    );
}

/// `--bus kinesis` needs the `aws` feature (on in scripts/test.sh: `--all-features`).
#[cfg(feature = "aws")]
mod kinesis {
    use super::*;
    use std::collections::BTreeSet;

    /// `pitboss topics --bus kinesis` makes every stream with the retention asked (168 h by
    /// default: Kinesis's own is 24), and a second run finds them all, keeping what they have.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn topics_on_kinesis_makes_streams_that_keep_their_records_as_long_as_asked() {
        let endpoint = pitboss_testkit::kinesis();
        let prefix = format!("{}_", pitboss_testkit::unique_name("kt"));
        let run = |extra: &[&str]| {
            let out = Command::new(env!("CARGO_BIN_EXE_pitboss"))
                .args([
                    "topics",
                    "--bus",
                    "kinesis",
                    "--kinesis-endpoint",
                    &endpoint,
                ])
                .args(["--prefix", &prefix, "--partitions", "1"])
                .args(extra)
                .env("AWS_REGION", "us-east-1")
                .env("AWS_ACCESS_KEY_ID", "test")
                .env("AWS_SECRET_ACCESS_KEY", "test")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        let first = run(&["--retention-hours", "72"]);
        assert!(
            first.contains(&format!("created {prefix}events (1 partition, 72 h)")),
            "{first}"
        );
        assert!(
            first
                .lines()
                .filter(|l| l.starts_with("created"))
                .all(|l| l.ends_with(", 72 h)")),
            "{first}"
        );
        let again = run(&[]);
        assert!(!again.contains("created"), "{again}");
        assert!(
            again.contains(&format!("exists  {prefix}events")),
            "{again}"
        );
    }

    /// The rules split over three engines on Kinesis (moto): `pitboss antifraud --bus kinesis
    /// --shard i/3`, each reading every event stream shard under its own group, the forwards
    /// stream between them. The scripted day is published to the events stream while shards
    /// picked at random are SIGKILLed three times and restarted; afterwards the alerts and
    /// pushes streams hold exactly the ids one pure engine raises (a kill may publish a batch
    /// again, with the same ids: consumers keep one per id), one multi-accounting alert per
    /// shared device and address, and the device and address hits of players another shard
    /// owns crossed on the forwards stream.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn split_rules_engines_over_kinesis_raise_exactly_the_scripted_alerts_through_three_sigkills()
     {
        let endpoint = pitboss_testkit::kinesis();
        let name = pitboss_testkit::unique_name("kaf");
        let mut config = pitboss_bus::kinesis::KinesisConfig::new("us-east-1");
        config.endpoint_url = Some(endpoint.clone());
        config.static_credentials = Some(("test".into(), "test".into()));
        let bus = pitboss_bus::kinesis::KinesisBus::new(config).await.unwrap();
        let (events, alerts, pushes, forwards) = (
            format!("{name}_events"),
            format!("{name}_alerts"),
            format!("{name}_pushes"),
            format!("{name}_forwards"),
        );
        for (topic, shards) in [
            (events.clone(), 4),
            (format!("{events}_overflow"), 4),
            (forwards.clone(), 4),
            (alerts.clone(), 2),
            (pushes.clone(), 2),
            (format!("{name}_dead_letter"), 1),
        ] {
            bus.create_topic(&topic, shards).await.unwrap();
        }
        let logs = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let shards = 3u32;
        let engine = |n: usize, shard: u32| {
            let log = std::fs::File::create(logs.path().join(format!("antifraud-{shard}-{n}.log")))
                .unwrap();
            Command::new(env!("CARGO_BIN_EXE_pitboss"))
                .args([
                    "antifraud",
                    "--bus",
                    "kinesis",
                    "--kinesis-endpoint",
                    &endpoint,
                ])
                .args(["--topic", &events, "--group", &format!("{name}_af")])
                .args(["--alerts-topic", &alerts, "--pushes-topic", &pushes])
                .args(["--dead-letter-topic", &format!("{name}_dead_letter")])
                .arg("--state-dir")
                .arg(state.path())
                .args([
                    "--snapshot-interval-ms",
                    "500",
                    "--save-slice-units",
                    "20",
                    "--session-timeout-secs",
                    "6",
                ])
                .args(["--admin-listen", "127.0.0.1:0"])
                .args(["--shard", &format!("{shard}/{shards}")])
                .args(["--forwards-topic", &forwards])
                .env("AWS_REGION", "us-east-1")
                .env("AWS_ACCESS_KEY_ID", "test")
                .env("AWS_SECRET_ACCESS_KEY", "test")
                .env("NO_COLOR", "1")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap()
        };
        let logs_text = || {
            let mut all = String::new();
            for e in std::fs::read_dir(logs.path()).unwrap().flatten() {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                all.push_str(&format!("--- {}\n", e.path().display()));
                for l in tail.into_iter().rev() {
                    all.push_str(l);
                    all.push('\n');
                }
            }
            all
        };

        let now = pitboss_model::Timestamp::now().as_millis();
        let mut parts = pitboss_antifraud::scenario::script("demo", now, 100, 2);
        let copies = 2;
        parts.extend(pitboss_antifraud::scenario::shared_accounts(
            "demo", now, copies,
        ));
        let shared = |rule: &str| rule.starts_with("fraud.multi_accounting");
        let mut script = Vec::new();
        let longest = parts.iter().map(|p| p.events.len()).max().unwrap();
        for i in 0..longest {
            for p in &parts {
                script.extend(p.events.get(i).cloned());
            }
        }
        let script: Vec<pitboss_model::Event> = script
            .iter()
            .map(|e| pitboss_model::decode_event(e.to_string().as_bytes()).unwrap())
            .collect();
        let (want_alerts, want_pushes) = {
            let set = pitboss_antifraud::RuleSet::from_sources(
                &pitboss_antifraud::stream::shipped_sources(),
            )
            .unwrap();
            let mut engine = pitboss_antifraud::Engine::new(set);
            let mut out = pitboss_antifraud::Output::default();
            for e in &script {
                engine
                    .process(e, pitboss_model::Timestamp::now(), &mut out)
                    .unwrap();
            }
            let a: BTreeSet<String> = out
                .alerts
                .iter()
                .filter(|a| !shared(&a.rule_id))
                .map(|a| a.alert_id.clone())
                .collect();
            let p: BTreeSet<String> = out.pushes.iter().map(|p| p.push_id.clone()).collect();
            (a, p)
        };

        assert!(
            want_alerts.len() >= 10 && !want_pushes.is_empty(),
            "{want_alerts:?}"
        );
        let mut running = Children((0..shards).map(|s| engine(0, s)).collect());
        // Published at a steady pace (about 20 s) while shards are killed.
        let posting = {
            let publisher = bus.publisher();
            let events = events.clone();
            let batches: Vec<Vec<OutRecord>> = script
                .chunks(40)
                .map(|c| {
                    c.iter()
                        .map(|e| OutRecord::new(e.bus_key(), pitboss_model::encode_proto(e)))
                        .collect()
                })
                .collect();
            tokio::spawn(async move {
                for b in batches {
                    publisher.publish(&events, b).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            })
        };
        for n in 1..=3 {
            let wait = rand::rng().random_range(3_000..8_000);
            tokio::time::sleep(Duration::from_millis(wait)).await;
            let victim = rand::rng().random_range(0..shards);
            let child = &mut running.0[victim as usize];
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            *child = engine(n, victim);
        }
        posting.await.unwrap();

        // Every alert and push id on the output streams (a batch published again after a kill
        // repeats ids: one each).
        let mut alert_reader = bus
            .reader_all(&alerts, pitboss_bus::ReadFrom::Earliest)
            .await
            .unwrap();
        let mut push_reader = bus
            .reader_all(&pushes, pitboss_bus::ReadFrom::Earliest)
            .await
            .unwrap();
        let mut got_alerts: Vec<pitboss_model::live::Alert> = Vec::new();
        let mut got_pushes: BTreeSet<String> = BTreeSet::new();
        let want = want_alerts.len() + 2 * copies;
        let deadline = Instant::now() + Duration::from_secs(240);
        // What the output streams hold by now, read on.
        async fn read_on(
            alerts: &mut Box<dyn pitboss_bus::Reader>,
            pushes: &mut Box<dyn pitboss_bus::Reader>,
            got_alerts: &mut Vec<pitboss_model::live::Alert>,
            got_pushes: &mut BTreeSet<String>,
        ) {
            for r in alerts.poll(500, Duration::from_millis(500)).await.unwrap() {
                got_alerts.push(pitboss_model::live::Alert::decode_proto(&r.value).unwrap());
            }
            for r in pushes.poll(500, Duration::from_millis(200)).await.unwrap() {
                let p = pitboss_model::live::Push::decode_proto(&r.value).unwrap();
                got_pushes.insert(p.push_id);
            }
        }
        loop {
            read_on(
                &mut alert_reader,
                &mut push_reader,
                &mut got_alerts,
                &mut got_pushes,
            )
            .await;
            let distinct: BTreeSet<&str> = got_alerts.iter().map(|a| a.alert_id.as_str()).collect();
            if distinct.len() >= want && got_pushes.len() >= want_pushes.len() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {want} alerts, {} of {} pushes\n{}",
                distinct.len(),
                got_pushes.len(),
                want_pushes.len(),
                logs_text()
            );
        }
        // Anything extra would come with these.
        for _ in 0..6 {
            read_on(
                &mut alert_reader,
                &mut push_reader,
                &mut got_alerts,
                &mut got_pushes,
            )
            .await;
        }
        let alerts_got: BTreeSet<String> = got_alerts
            .iter()
            .filter(|a| !shared(&a.rule_id))
            .map(|a| a.alert_id.clone())
            .collect();
        assert_eq!(alerts_got, want_alerts, "{}", logs_text());
        assert_eq!(got_pushes, want_pushes);
        // One multi-accounting alert per shared device and address, on one of its accounts.
        let shared_got: BTreeSet<(String, String, String)> = got_alerts
            .iter()
            .filter(|a| shared(&a.rule_id))
            .map(|a| (a.rule_id.clone(), a.group_key.clone(), a.alert_id.clone()))
            .collect();
        let keys: Vec<(String, String)> = shared_got
            .iter()
            .map(|(r, k, _)| (r.clone(), k.clone()))
            .collect();
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
        assert_eq!(keys, want_shared, "{shared_got:?}");
        // Hits of players another shard owns crossed on the forwards stream.
        let mut reader = bus
            .reader_all(&forwards, pitboss_bus::ReadFrom::Earliest)
            .await
            .unwrap();
        let mut forwarded = BTreeSet::new();
        for _ in 0..10 {
            for r in reader.poll(1000, Duration::from_millis(300)).await.unwrap() {
                let f = pitboss_antifraud::Forward::decode(&r.value).unwrap();
                let a = f.alert.as_ref().unwrap();
                assert!(shared(&a.rule_id), "{a:?}");
                forwarded.insert(a.alert_id.clone());
            }
        }
        let crossing: BTreeSet<String> = got_alerts
            .iter()
            .filter(|a| shared(&a.rule_id))
            .filter(|a| {
                pitboss_antifraud::Shard::of(shards, "demo", &a.group_key)
                    != pitboss_antifraud::Shard::of(
                        shards,
                        "demo",
                        a.player_id.as_deref().unwrap_or_default(),
                    )
            })
            .map(|a| a.alert_id.clone())
            .collect();
        assert_eq!(forwarded, crossing);
        drop(running);
    }
}

/// A ClickHouse that does not answer yet when `pitboss process` starts (started after it, or
/// restarting) is waited for (docs/processor.md): the processor warns and retries; a SIGTERM
/// while it waits exits 0; once ClickHouse answers it goes on and stores the topic's events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clickhouse_that_does_not_answer_yet_at_start_is_waited_for() {
    let kafka = pitboss_testkit::kafka();
    let clickhouse = pitboss_testkit::clickhouse();
    let name = pitboss_testkit::unique_name("late_ch");
    let bus = KafkaBus::new(KafkaConfig::new(kafka.clone())).unwrap();
    bus.create_topic(&name, 1).await.unwrap();
    bus.create_topic(&format!("{name}_dead_letter"), 1)
        .await
        .unwrap();
    let events: Vec<OutRecord> = (0..3)
        .map(|i| {
            let e = pitboss_testkit::deposit(i, 500);
            OutRecord::new(
                format!("acme:{}", e.player_id),
                pitboss_model::encode_proto(&e),
            )
        })
        .collect();
    bus.publisher().publish(&name, events).await.unwrap();
    // Nothing listens here until the test says so.
    let port = free_port();
    let logs = tempfile::tempdir().unwrap();
    let spawn = |log: &std::path::Path| {
        let file = std::fs::File::create(log).unwrap();
        Command::new(env!("CARGO_BIN_EXE_pitboss"))
            .args(["process", "--kafka-bootstrap", &kafka, "--topic", &name])
            .args(["--clickhouse", &format!("http://127.0.0.1:{port}")])
            .args(["--database", &name, "--group", &format!("{name}_p")])
            .args(["--admin-listen", "127.0.0.1:0"])
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap()
    };
    let (a, b) = (logs.path().join("a.log"), logs.path().join("b.log"));
    let mut first = spawn(&a);
    wait_for_line(&a, "ClickHouse does not answer yet; retrying");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        first.try_wait().unwrap().is_none(),
        "it waits, it does not exit:\n{}",
        std::fs::read_to_string(&a).unwrap_or_default()
    );
    // Alive meanwhile, as a health check sees it.
    let log = std::fs::read_to_string(&a).unwrap();
    let admin = log
        .split("admin=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no admin address in:\n{log}"))
        .to_owned();
    let health = reqwest::get(format!("http://{admin}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    Command::new("kill")
        .args(["-TERM", &first.id().to_string()])
        .status()
        .unwrap();
    assert!(
        first.wait().unwrap().success(),
        "a SIGTERM while waiting exits 0"
    );

    let mut second = Children(vec![spawn(&b)]);
    wait_for_line(&b, "ClickHouse does not answer yet; retrying");
    // ClickHouse answers now, on that port.
    let target = clickhouse
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let _proxy = Freezer::start_on(port, target).await;
    let count = || async {
        pitboss_processor::sink::client(&clickhouse, &name)
            .query("SELECT count() FROM events")
            .fetch_one::<u64>()
            .await
            .ok()
    };
    let start = Instant::now();
    while count().await != Some(3) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the events were not stored once ClickHouse answered:\n{}",
            std::fs::read_to_string(&b).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Command::new("kill")
        .args(["-TERM", &second.0[0].id().to_string()])
        .status()
        .unwrap();
    assert!(second.0[0].wait().unwrap().success());
}

/// A TCP proxy to `target` that can be frozen: while frozen it takes connections and passes
/// nothing either way, on new connections and on those already open (a hung server, a
/// half-open connection), holding every socket open.
struct Freezer {
    frozen: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    port: u16,
}

impl Freezer {
    async fn start(target: String) -> Freezer {
        Freezer::start_on(0, target).await
    }

    /// On `port` (0: any free one).
    async fn start_on(port: u16, target: String) -> Freezer {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = std::sync::Arc::new(tokio::sync::watch::Sender::new(false));
        let state = frozen.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let target = target.clone();
                let mut rx = state.subscribe();
                tokio::spawn(async move {
                    // Frozen from its start: nothing passes until the thaw, then it is dropped
                    // (the client's request, never answered, has timed out by then).
                    let frozen_now = *rx.borrow();
                    if frozen_now {
                        drop(rx.wait_for(|f| !*f).await);
                        drop(client);
                        return;
                    }
                    let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        () = async { drop(rx.wait_for(|f| *f).await) } => {
                            // Held, silent, until the test ends (connections after the thaw
                            // pass; these stay hung like half-open ones).
                            std::future::pending::<()>().await;
                        }
                    }
                });
            }
        });
        Freezer { frozen, port }
    }

    fn freeze(&self, on: bool) {
        self.frozen.send_replace(on);
    }
}

/// A standalone gateway whose topic is missing is refused at start, naming the flag and the
/// topic, as the other roles are (its feed retried a missing `--alerts-topic` for ever;
/// receipts to a missing `--deliveries-topic` were dropped a while later, /readyz 200
/// meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_whose_topic_is_missing_is_refused_at_start() {
    let kafka = pitboss_testkit::kafka();
    let name = pitboss_testkit::unique_name("gwmissing");
    let bus = KafkaBus::new(KafkaConfig::new(kafka.clone())).unwrap();
    for t in ["alerts", "pushes", "acks", "deliveries", "presence"] {
        bus.create_topic(&format!("{name}_{t}"), 1).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef").unwrap();
    for missing in ["alerts", "deliveries"] {
        let topic = |t: &str| {
            if t == missing {
                "nosuch_topic_here".to_owned()
            } else {
                format!("{name}_{t}")
            }
        };
        let out = Command::new(env!("CARGO_BIN_EXE_pitboss"))
            .args(["gateway", "--bus", "kafka", "--kafka-bootstrap", &kafka])
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .arg("--jwt-secret-file")
            .arg(&secret)
            .args(["--alerts-topic", &topic("alerts")])
            .args(["--pushes-topic", &topic("pushes")])
            .args(["--acks-topic", &topic("acks")])
            .args(["--deliveries-topic", &topic("deliveries")])
            .args(["--presence-topic", &topic("presence")])
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success()
                && said.contains(&format!(
                    "--{missing}-topic \"nosuch_topic_here\": no such topic"
                )),
            "{missing}: {said}"
        );
    }
}

/// A ClickHouse that takes the connection and never answers, in the middle of a run
/// (docs/processor.md, `--clickhouse-timeout-secs`): the processor's insert fails after the
/// timeout with a warning naming it, and is retried; once ClickHouse answers again every
/// event is stored once. Without the timeout the insert waited for ever without a word.
/// Meanwhile the stall shows from outside (docs/processor.md, "Health"): `/readyz` answers 503
/// `store: not reached yet: …` at start and `store: failing for N s: …` mid-run, and
/// `pitboss_processor_unstored_seconds` climbs (the processor stops polling, so neither the
/// consumer lag nor the freshness gauge moves).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clickhouse_that_stops_answering_mid_run_is_timed_out_named_and_retried() {
    let kafka = pitboss_testkit::kafka();
    let clickhouse = pitboss_testkit::clickhouse();
    let name = pitboss_testkit::unique_name("hung_ch");
    let bus = KafkaBus::new(KafkaConfig::new(kafka.clone())).unwrap();
    bus.create_topic(&name, 1).await.unwrap();
    bus.create_topic(&format!("{name}_dead_letter"), 1)
        .await
        .unwrap();
    let publish = |range: std::ops::Range<u64>| {
        let records: Vec<OutRecord> = range
            .map(|i| {
                let e = pitboss_testkit::deposit(i, 500);
                OutRecord::new(
                    format!("acme:{}", e.player_id),
                    pitboss_model::encode_proto(&e),
                )
            })
            .collect();
        let publisher = bus.publisher();
        let name = name.clone();
        async move { publisher.publish(&name, records).await.unwrap() }
    };
    let proxy = Freezer::start(
        clickhouse
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned(),
    )
    .await;
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("p.log");
    // Hung from the start: the start-up's calls time out too, and are retried.
    proxy.freeze(true);
    let running = Children(vec![
        Command::new(env!("CARGO_BIN_EXE_pitboss"))
            .args(["process", "--kafka-bootstrap", &kafka, "--topic", &name])
            .args(["--clickhouse", &format!("http://127.0.0.1:{}", proxy.port)])
            .args(["--database", &name, "--group", &format!("{name}_p")])
            .args([
                "--clickhouse-timeout-secs",
                "2",
                "--batch-max-age-ms",
                "100",
            ])
            .args(["--admin-listen", "127.0.0.1:0"])
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    ]);
    let count = || async {
        pitboss_processor::sink::client(&clickhouse, &name)
            .query("SELECT count() FROM events")
            .fetch_one::<u64>()
            .await
            .ok()
    };
    let wait_count = |want: u64| {
        let log = log.clone();
        async move {
            let start = Instant::now();
            while count().await != Some(want) {
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "{want} events not stored (now {:?}):\n{}",
                    count().await,
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    wait_for_line(&log, "ClickHouse does not answer yet; retrying");
    let seen = std::fs::read_to_string(&log).unwrap();
    let admin = seen
        .lines()
        .find_map(|l| l.split("admin=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();
    let http = reqwest::Client::new();
    let readyz = || {
        let (http, admin) = (http.clone(), admin.clone());
        async move {
            let r = http
                .get(format!("http://{admin}/readyz"))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let unstored = || {
        let (http, admin, name) = (http.clone(), admin.clone(), name.clone());
        async move {
            let text = http
                .get(format!("http://{admin}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let prefix =
                format!("pitboss_processor_unstored_seconds{{topic=\"{name}\",table=\"events\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .and_then(|v| v.trim().parse::<f64>().ok())
        }
    };
    let (status, why) = readyz().await;
    assert!(
        status == 503
            && why.starts_with("store: not reached yet: ")
            && why.contains("no answer within 2 s"),
        "not ready before ClickHouse answers, and why: {status} {why}"
    );
    let warning = seen
        .lines()
        .find(|l| l.contains("ClickHouse does not answer yet"))
        .unwrap_or_default();
    assert!(
        warning.contains("no answer within 2 s (--clickhouse-timeout-secs)")
            && warning.contains(&format!("127.0.0.1:{}", proxy.port)),
        "the wait and the server are named: {warning}"
    );
    proxy.freeze(false);
    publish(0..3).await;
    wait_count(3).await;
    let start = Instant::now();
    while (readyz().await, unstored().await) != ((200, "ready".to_owned()), Some(0.0)) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "ready, and nothing held, once stored: {:?} {:?}",
            readyz().await,
            unstored().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // ClickHouse hangs mid-run: the next batch's insert is timed out and retried, and the log
    // says so.
    proxy.freeze(true);
    publish(3..6).await;
    wait_for_line(&log, "insert failed");
    let seen = std::fs::read_to_string(&log).unwrap();
    let failed = seen
        .lines()
        .find(|l| l.contains("insert failed"))
        .unwrap_or_default();
    assert!(
        failed.contains("no answer within 2 s (--clickhouse-timeout-secs)"),
        "the failed insert names the timeout: {failed}"
    );
    assert_eq!(
        count().await,
        Some(3),
        "nothing more was stored while it hung"
    );
    let (status, why) = readyz().await;
    assert!(
        status == 503
            && why.starts_with("store: failing for ")
            && why.contains("no answer within 2 s"),
        "not ready while inserts fail, and why: {status} {why}"
    );
    let before = unstored().await.unwrap();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let after = unstored().await.unwrap();
    assert!(
        before > 0.0 && after >= before + 1.0,
        "the oldest unstored row's age climbs while the store hangs: {before} then {after}"
    );

    // It answers again: the batch lands, once.
    proxy.freeze(false);
    wait_count(6).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(count().await, Some(6), "every event stored once");
    assert_eq!(readyz().await, (200, "ready".to_owned()), "ready again");
    assert_eq!(unstored().await, Some(0.0), "nothing held once stored");
    let mut running = running;
    let child = running.0.pop().unwrap();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let mut child = child;
    assert!(child.wait().unwrap().success(), "a SIGTERM exits 0");
}
