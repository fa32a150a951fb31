//! `pitboss migrate` and `pitboss process` on the 2-shard x 2-replica ClickHouse cluster
//! (`--clickhouse-cluster`, scripts/stack.sh start --cluster): 300,000 events published to
//! Kafka while the processor is SIGKILLed three times at random moments as it works and
//! restarted, and one replica of shard 2 is SIGKILLed under load and started 10 s later.
//! Afterwards the
//! cluster holds exactly the 300,000 events — count() = uniqExact(event_id), without FINAL or
//! OPTIMIZE, ids 0..300,000 so no gaps — and the two replicas of each shard hold the same rows.
//!
//! Alone in its test binary: it kills a server of the shared cluster.

#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pitboss_bus::kafka::{KafkaBus, KafkaConfig};
use pitboss_bus::{Bus, OutRecord};
use pitboss_model::encode_proto;
use pitboss_testkit::ClickHouseProcess;
use rand::Rng;

const N: u64 = 300_000;

fn event(i: u64) -> OutRecord {
    let e = pitboss_testkit::deposit(i, 5000);
    OutRecord::new(format!("acme:{}", e.player_id), encode_proto(&e))
}

fn pitboss(args: &[&str], log: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_pitboss"))
        .args(args)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

async fn scalar(url: &str, database: &str, sql: &str) -> Option<u64> {
    pitboss_processor::sink::client(url, database)
        .query(sql)
        .fetch_one::<u64>()
        .await
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_keeps_every_event_once_through_processor_and_replica_kills() {
    let (urls, cluster) = pitboss_testkit::clickhouse_cluster();
    let kafka = pitboss_testkit::kafka();
    let database = pitboss_testkit::unique_name("cluster_faults");
    let topic = pitboss_testkit::unique_name("events");
    let logs = tempfile::tempdir().unwrap();
    let bus = KafkaBus::new(KafkaConfig::new(kafka.clone())).unwrap();
    bus.create_topic(&topic, 4).await.unwrap();
    bus.create_topic(&format!("{topic}_dead_letter"), 1)
        .await
        .unwrap();

    // The schema, on every server, from one `pitboss migrate`.
    let ch = [
        "--clickhouse",
        &urls[0],
        "--clickhouse-cluster",
        &cluster,
        "--database",
        &database,
    ];
    let status = Command::new(env!("CARGO_BIN_EXE_pitboss"))
        .arg("migrate")
        .args(ch)
        .status()
        .unwrap();
    assert!(status.success(), "pitboss migrate --clickhouse-cluster");

    // Events arrive all along: 300k over about 20 s, 10,000 per acknowledged batch.
    let publisher = bus.publisher();
    let t = topic.clone();
    let publishing = tokio::spawn(async move {
        let start = Instant::now();
        for (k, chunk) in (0..N).collect::<Vec<_>>().chunks(10_000).enumerate() {
            publisher
                .publish(&t, chunk.iter().map(|i| event(*i)).collect())
                .await
                .unwrap();
            let due = start + Duration::from_millis(650 * (k as u64 + 1));
            tokio::time::sleep_until(due.into()).await;
        }
    });

    let group = format!("{topic}_processor");
    let process = |n: usize| {
        let mut args = vec!["process"];
        args.extend(ch);
        args.extend([
            "--kafka-bootstrap",
            &kafka,
            "--topic",
            &topic,
            "--group",
            &group,
            "--admin-listen",
            "127.0.0.1:0",
            "--session-timeout-secs",
            "6",
        ]);
        pitboss(&args, &logs.path().join(format!("process-{n}.log")))
    };
    let count = |sql: &'static str| {
        let (url, db) = (urls[0].clone(), database.clone());
        async move { scalar(&url, &db, sql).await }
    };

    // Three processors SIGKILLed at random moments while they work: each once its first rows
    // are in (a member taking over waits out its predecessor's 6 s session first), then
    // 0–2 s later — between inserts or in the middle of one.
    let mut seen = Vec::new();
    for n in 0..3 {
        let mut child = process(n);
        let before = count("SELECT count() FROM events").await.unwrap_or(0);
        pitboss_testkit::until_storing(
            || async { count("SELECT count() FROM events").await.unwrap_or(0) },
            before,
            N,
            Duration::from_secs(90),
            || {
                format!(
                    "processor {n}\n{}",
                    pitboss_testkit::log_tails(logs.path(), 12)
                )
            },
        )
        .await;
        let wait = rand::rng().random_range(0..2_000);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        seen.push(count("SELECT count() FROM events").await.unwrap_or(0));
    }

    // The last processor keeps running; a replica of shard 2 dies under load and comes back.
    let mut last = process(3);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let replica = ClickHouseProcess::cluster_member(3);
    replica.stop("KILL");
    tokio::time::sleep(Duration::from_secs(10)).await;
    replica.start();

    publishing.await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(240);
    while count("SELECT count() FROM events").await != Some(N) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await; // anything written twice shows up now
    let rows = count("SELECT count() FROM events").await;
    let ids = count("SELECT uniqExact(event_id) FROM events").await;
    let stray =
        count("SELECT count() FROM events WHERE event_id NOT LIKE '0193735a-0000-7000-8000-%'")
            .await;
    last.kill().unwrap();
    last.wait().unwrap();
    assert_eq!(
        (rows, ids, stray),
        (Some(N), Some(N), Some(0)),
        "rows after each kill: {seen:?}\n{}",
        pitboss_testkit::log_tails(logs.path(), 12)
    );
    assert!(
        seen.iter().all(|c| *c > 0) && seen.iter().any(|c| *c < N),
        "kills landed while work was in progress: {seen:?}"
    );

    // The restarted replica catches up: both replicas of each shard hold the same rows.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut locals = Vec::new();
    for url in &urls {
        let mut n = None;
        while n.is_none() && Instant::now() < deadline {
            let _ = pitboss_processor::sink::client(url, &database)
                .query("SYSTEM SYNC REPLICA events_local")
                .execute()
                .await;
            n = scalar(url, &database, "SELECT count() FROM events_local").await;
            if n.is_none() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        locals.push(n);
    }
    assert_eq!(locals[0], locals[1], "shard 1 replicas: {locals:?}");
    assert_eq!(locals[2], locals[3], "shard 2 replicas: {locals:?}");
    assert_eq!(
        locals[0].unwrap_or(0) + locals[2].unwrap_or(0),
        N,
        "{locals:?}"
    );
}
