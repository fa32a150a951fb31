//! The embedded log: the shared contract suite, plus what only a local log has to prove —
//! durability across reopen and SIGKILL, retention, the directory lock, revoke timeouts.

#![allow(clippy::unwrap_used)]

mod contract;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pitboss_bus::embedded::{Durability, EmbeddedBus, EmbeddedConfig};
use pitboss_bus::{
    Bus, BusError, Consumer, ConsumerConfig, Delivery, OutRecord, Position, Publisher,
};
use rand::Rng;
use tempfile::TempDir;

/// An embedded bus in a temporary directory that lives as long as the bus.
#[derive(Debug)]
struct TempBus {
    bus: EmbeddedBus,
    _dir: TempDir,
}

#[async_trait]
impl Bus for TempBus {
    async fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), BusError> {
        self.bus.create_topic(topic, partitions).await
    }
    fn publisher(&self) -> Arc<dyn Publisher> {
        self.bus.publisher()
    }
    async fn partition_count(&self, topic: &str) -> Result<u32, BusError> {
        self.bus.partition_count(topic).await
    }
    async fn consumer(
        &self,
        group: &str,
        topic: &str,
        config: ConsumerConfig,
    ) -> Result<Box<dyn Consumer>, BusError> {
        self.bus.consumer(group, topic, config).await
    }
    async fn reader(
        &self,
        topic: &str,
        starts: Vec<(pitboss_bus::Partition, pitboss_bus::ReadFrom)>,
    ) -> Result<Box<dyn pitboss_bus::Reader>, BusError> {
        self.bus.reader(topic, starts).await
    }
    async fn committed_offsets(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<Option<std::collections::BTreeMap<pitboss_bus::Partition, i64>>, BusError> {
        self.bus.committed_offsets(group, topic).await
    }
}

async fn make_bus() -> Arc<dyn Bus> {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path(), EmbeddedConfig::default()).unwrap();
    Arc::new(TempBus { bus, _dir: dir })
}

contract_suite!(make_bus);

/// Two hundred readers come and go; the log holds no group offsets afterwards and a group
/// that joins later starts from the beginning, as if no reader had been there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn short_lived_readers_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path(), EmbeddedConfig::default()).unwrap();
    let shared: Arc<dyn Bus> = Arc::new(bus.clone());
    contract::many_short_lived_readers(shared, "short", 200).await;
    let conn = rusqlite::Connection::open(dir.path().join("log.sqlite")).unwrap();
    let offsets: i64 = conn
        .query_row("SELECT COUNT(*) FROM group_offsets", [], |r| r.get(0))
        .unwrap();
    assert_eq!(offsets, 0, "a reader committed offsets");
    let got = read_all(&bus, "short", "after-readers").await;
    assert_eq!(got.len(), 4, "a new group starts at the beginning");
}

/// A log written before record headers existed (no `headers` column) opens, keeps its
/// records, and takes new records with headers.
#[tokio::test]
async fn a_log_from_before_headers_opens_and_keeps_its_records() {
    let dir = tempfile::tempdir().unwrap();
    {
        let bus = EmbeddedBus::open(dir.path(), EmbeddedConfig::default()).unwrap();
        bus.create_topic("t", 1).await.unwrap();
        bus.publisher()
            .publish("t", vec![OutRecord::new("k", "old")])
            .await
            .unwrap();
    }
    {
        // Make it look like the old layout.
        let conn = rusqlite::Connection::open(dir.path().join("log.sqlite")).unwrap();
        conn.execute_batch("ALTER TABLE records DROP COLUMN headers")
            .unwrap();
    }
    let bus = EmbeddedBus::open(dir.path(), EmbeddedConfig::default()).unwrap();
    bus.publisher()
        .publish("t", vec![OutRecord::new("k", "new").with_header("h", "v")])
        .await
        .unwrap();
    let got = read_all(&bus, "t", "g").await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].value, b"old");
    assert!(got[0].headers.is_empty());
    assert_eq!(got[1].headers.get_str("h"), Some("v"));
}

async fn read_all(bus: &EmbeddedBus, topic: &str, group: &str) -> Vec<pitboss_bus::Record> {
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

#[tokio::test]
async fn records_offsets_and_commits_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let topic = "events";
    let first_acks: Vec<pitboss_bus::Ack>;
    {
        let bus = EmbeddedBus::open(dir.path(), EmbeddedConfig::default()).unwrap();
        bus.create_topic(topic, 2).await.unwrap();
        first_acks = bus
            .publish(topic, contract::records(4, 10, "x"))
            .await
            .unwrap();
        let mut c = bus
            .consumer("g", topic, ConsumerConfig::default())
            .await
            .unwrap();
        let mut seen = 0;
        while seen < 40 {
            if let Delivery::Records(rs) = c.poll(100, Duration::from_millis(200)).await.unwrap() {
                for r in &rs {
                    c.store(&r.topic, r.partition, &r.position).unwrap();
                }
                seen += rs.len();
            }
        }
        c.commit().await.unwrap();
        // The directory is locked while the bus is open.
        let err = EmbeddedBus::open(dir.path(), EmbeddedConfig::default()).expect_err("locked");
        assert!(matches!(err, BusError::Config(_)), "{err:?}");
    }
    // The writer thread releases the lock when the last handle is gone.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let bus = EmbeddedBus::open(dir.path(), EmbeddedConfig::default()).unwrap();
    assert!(
        read_all(&bus, topic, "g").await.is_empty(),
        "committed offsets survived"
    );
    assert_eq!(
        read_all(&bus, topic, "other").await.len(),
        40,
        "records survived"
    );
    let acks = bus
        .publish(topic, vec![OutRecord::new("tenant-x:player-0", "more")])
        .await
        .unwrap();
    let already = first_acks
        .iter()
        .filter(|a| a.partition == acks[0].partition)
        .count();
    assert_eq!(
        acks[0].position,
        Position::Offset(already as i64),
        "offsets continue after reopen"
    );
}

#[tokio::test]
async fn retention_by_size_and_age() {
    let dir = tempfile::tempdir().unwrap();
    let config = EmbeddedConfig {
        retention_bytes_per_partition: Some(10_000),
        retention_age: None,
        ..EmbeddedConfig::default()
    };
    let bus = EmbeddedBus::open(dir.path(), config).unwrap();
    bus.create_topic("t", 1).await.unwrap();
    let recs: Vec<_> = (0..100)
        .map(|i| OutRecord::new("k", vec![b'a' + (i % 26) as u8; 999]))
        .collect();
    bus.publish("t", recs).await.unwrap(); // 100 x 1000 bytes
    bus.enforce_retention().await.unwrap();
    let earliest = bus.earliest_offsets("t").unwrap()[0];
    assert_eq!(earliest, 90, "only the newest 10 KB are kept");
    let kept = read_all(&bus, "t", "g").await;
    assert_eq!(kept.len(), 10);
    assert_eq!(kept[0].position, Position::Offset(90));
    drop(bus);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let config = EmbeddedConfig {
        retention_age: Some(Duration::from_millis(1)),
        ..EmbeddedConfig::default()
    };
    let bus = EmbeddedBus::open(dir.path(), config).unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    bus.enforce_retention().await.unwrap();
    assert!(
        read_all(&bus, "t", "g2").await.is_empty(),
        "old records expired"
    );
    let acks = bus
        .publish("t", vec![OutRecord::new("k", "new")])
        .await
        .unwrap();
    assert_eq!(
        acks[0].position,
        Position::Offset(100),
        "offsets never go back"
    );
}

/// Age retention deletes exactly the records older than the age in every partition and keeps
/// the newer ones; the byte counts left are theirs (size retention then goes by them).
#[tokio::test]
async fn retention_by_age_deletes_the_old_records_and_keeps_the_new() {
    let dir = tempfile::tempdir().unwrap();
    let config = EmbeddedConfig {
        retention_age: Some(Duration::from_millis(300)),
        retention_bytes_per_partition: None,
        ..EmbeddedConfig::default()
    };
    let bus = EmbeddedBus::open(dir.path(), config).unwrap();
    bus.create_topic("t", 3).await.unwrap();
    let old: Vec<_> = (0..60)
        .map(|i| OutRecord::new(format!("k{i}"), vec![b'o'; 1000]))
        .collect();
    bus.publish("t", old).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let new: Vec<_> = (0..30)
        .map(|i| OutRecord::new(format!("k{i}"), format!("new-{i}")))
        .collect();
    bus.publish("t", new).await.unwrap();
    bus.enforce_retention().await.unwrap();
    let mut kept: Vec<String> = read_all(&bus, "t", "g")
        .await
        .iter()
        .map(|r| String::from_utf8(r.value.clone()).unwrap())
        .collect();
    kept.sort();
    let mut want: Vec<String> = (0..30).map(|i| format!("new-{i}")).collect();
    want.sort();
    assert_eq!(kept, want, "exactly the new records are kept");
    drop(bus);

    // 1 KB a partition holds all its new records (under 300 bytes) but none of the old
    // (60 KB): size retention deletes nothing if the old records' bytes were subtracted.
    let config = EmbeddedConfig {
        retention_age: None,
        retention_bytes_per_partition: Some(1_000),
        ..EmbeddedConfig::default()
    };
    let bus = EmbeddedBus::open(dir.path(), config).unwrap();
    bus.enforce_retention().await.unwrap();
    assert_eq!(read_all(&bus, "t", "g2").await.len(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_never_hands_back_loses_its_partitions_after_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path(), EmbeddedConfig::default()).unwrap();
    bus.create_topic("t", 2).await.unwrap();
    let quick = ConsumerConfig {
        revoke_timeout: Duration::from_millis(300),
        ..ConsumerConfig::default()
    };
    let mut stuck = bus.consumer("g", "t", quick.clone()).await.unwrap();
    assert_eq!(
        stuck.poll(10, Duration::from_secs(1)).await.unwrap(),
        Delivery::Assigned(vec![0, 1])
    );
    let mut other = bus.consumer("g", "t", quick).await.unwrap();
    // `stuck` never polls again; after the timeout `other` gets a partition anyway.
    let start = std::time::Instant::now();
    loop {
        if let Delivery::Assigned(p) = other.poll(10, Duration::from_millis(200)).await.unwrap() {
            assert_eq!(p.len(), 1);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "partition never moved"
        );
    }
    // The stuck member finds out on its next poll and stops reading that partition.
    let _ = stuck.poll(10, Duration::from_millis(100)).await.unwrap();
    assert_eq!(stuck.assignment().len(), 1);
}

/// A process appending to the log is killed with SIGKILL at random moments; every record it
/// was told was durable is in the log afterwards.
#[test]
fn acknowledged_records_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked: Vec<String> = Vec::new();
    let mut rng = rand::rng();
    for round in 0..4 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pitboss-log-append"))
            .arg(dir.path())
            .arg(format!("r{round}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<_>>()
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(300..1200)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        let before = acked.len();
        acked.extend(
            lines
                .into_iter()
                .filter_map(|l| l.strip_prefix("acked ").map(str::to_owned)),
        );
        assert!(
            acked.len() > before,
            "round {round}: the writer acknowledged nothing before the kill"
        );
    }

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let bus = EmbeddedBus::open(
            dir.path(),
            EmbeddedConfig {
                durability: Durability::Fsync,
                ..Default::default()
            },
        )
        .unwrap();
        let stored: std::collections::HashSet<String> = read_all(&bus, "events", "verify")
            .await
            .into_iter()
            .map(|r| String::from_utf8(r.value).unwrap())
            .collect();
        let missing: Vec<_> = acked.iter().filter(|a| !stored.contains(*a)).collect();
        assert!(
            missing.is_empty(),
            "{} of {} acknowledged records lost, e.g. {:?}",
            missing.len(),
            acked.len(),
            missing.first()
        );
    });
}

fn lag_of(text: &str, partition: u32) -> Option<f64> {
    lag_on(text, "lagged", partition)
}

fn lag_on(text: &str, topic: &str, partition: u32) -> Option<f64> {
    let labels = format!("topic=\"{topic}\",partition=\"{partition}\"}} ");
    text.lines()
        .filter(|l| l.starts_with("pitboss_consumer_lag_records{group=\""))
        .find_map(|l| l.split_once(&labels).map(|(_, v)| v))
        .and_then(|v| v.trim().parse().ok())
}

/// The lag gauge counts what is on each owned partition and not yet processed, and falls to 0
/// once everything is stored (reported at most every 5 s, so the test waits once).
#[test]
fn consumer_lag_per_partition_follows_what_is_processed() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = TempDir::new().unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let bus = EmbeddedBus::open(dir.path(), EmbeddedConfig::default()).unwrap();
            bus.create_topic("lagged", 2).await.unwrap();
            let records = (0..40)
                .map(|i| OutRecord::new(format!("k{i}"), vec![1]))
                .collect();
            bus.publisher().publish("lagged", records).await.unwrap();
            let mut c = bus
                .consumer("g", "lagged", ConsumerConfig::default())
                .await
                .unwrap();
            let mut got = Vec::new();
            let start = std::time::Instant::now();
            while got.len() < 40 {
                assert!(start.elapsed() < Duration::from_secs(20), "{got:?}");
                if let Delivery::Records(rs) =
                    c.poll(1000, Duration::from_millis(100)).await.unwrap()
                {
                    got.extend(rs);
                }
            }
            let text = handle.render();
            for p in 0..2 {
                let on_p = got.iter().filter(|r| r.partition == p).count();
                assert!(on_p > 0, "both partitions hold records");
                assert_eq!(lag_of(&text, p), Some(on_p as f64), "{text}");
            }

            for r in &got {
                c.store(&r.topic, r.partition, &r.position).unwrap();
            }
            c.commit().await.unwrap();
            tokio::time::sleep(Duration::from_millis(5100)).await;
            c.poll(10, Duration::from_millis(10)).await.unwrap();
            let text = handle.render();
            assert_eq!(
                (lag_of(&text, 0), lag_of(&text, 1)),
                (Some(0.0), Some(0.0)),
                "{text}"
            );
        });
    });
}

/// A member of group `g` owning both partitions of `topic` (made, with 40 records it has not
/// processed), once it has reported their lag.
async fn lagging_member(
    bus: &EmbeddedBus,
    topic: &str,
    config: ConsumerConfig,
    handle: &metrics_exporter_prometheus::PrometheusHandle,
) -> Box<dyn pitboss_bus::Consumer> {
    bus.create_topic(topic, 2).await.unwrap();
    let records = (0..40)
        .map(|i| OutRecord::new(format!("k{i}"), vec![1]))
        .collect();
    bus.publisher().publish(topic, records).await.unwrap();
    let mut member = bus.consumer("g", topic, config).await.unwrap();
    let start = std::time::Instant::now();
    while lag_on(&handle.render(), topic, 0).is_none()
        || lag_on(&handle.render(), topic, 1).is_none()
    {
        assert!(start.elapsed() < Duration::from_secs(20));
        member.poll(1000, Duration::from_millis(100)).await.unwrap();
    }
    member
}

/// A partition taken away from a member (a second member joined) reads 0 in the old member's
/// lag gauge: the new owner reports it now, and the old member's last value was counted for
/// ever in the group's sum (an outside audit: 42 records of lag on an idle group, Kafka too).
#[test]
fn a_revoked_partitions_lag_is_no_longer_reported_by_its_old_member() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = TempDir::new().unwrap();
    let lag = |text: &str, p: u32| lag_on(text, "moved", p);
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let bus = EmbeddedBus::open(dir.path(), EmbeddedConfig::default()).unwrap();
            let mut first = lagging_member(&bus, "moved", ConsumerConfig::default(), &handle).await;
            let start = std::time::Instant::now();
            let _second = bus
                .consumer("g", "moved", ConsumerConfig::default())
                .await
                .unwrap();
            let revoked = loop {
                assert!(start.elapsed() < Duration::from_secs(20));
                if let Delivery::Revoking(parts) =
                    first.poll(1000, Duration::from_millis(100)).await.unwrap()
                {
                    break parts;
                }
            };
            assert_eq!(revoked.len(), 1, "{revoked:?}");
            let text = handle.render();
            let (gone, kept) = (revoked[0], 1 - revoked[0]);
            assert_eq!(lag(&text, gone), Some(0.0), "{text}");
            assert!(lag(&text, kept).is_some_and(|v| v > 0.0), "{text}");
        });
    });
}

/// The same when the partition is taken away by a revoke timeout (its member did not poll in
/// time, so it never heard of the revoke): its lag here reads 0 at its next poll, not the last
/// value for ever.
#[test]
fn a_partition_taken_by_a_revoke_timeout_is_no_longer_reported_by_its_old_member() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = TempDir::new().unwrap();
    let lag = |text: &str, p: u32| lag_on(text, "expired", p);
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let bus = EmbeddedBus::open(dir.path(), EmbeddedConfig::default()).unwrap();
            let config = ConsumerConfig {
                revoke_timeout: Duration::from_millis(200),
                ..ConsumerConfig::default()
            };
            let mut first = lagging_member(&bus, "expired", config.clone(), &handle).await;
            let mut second = bus.consumer("g", "expired", config).await.unwrap();
            // The first does not poll past the revoke timeout; the second's polls expire it.
            tokio::time::sleep(Duration::from_millis(400)).await;
            second.poll(10, Duration::from_millis(50)).await.unwrap();
            first.poll(10, Duration::from_millis(50)).await.unwrap();
            let text = handle.render();
            let zeros = (0..2).filter(|p| lag(&text, *p) == Some(0.0)).count();
            assert_eq!(zeros, 1, "one partition moved to the second member: {text}");
        });
    });
}

/// Every append wakes every reader of the log; a reader (or group member) whose partitions did
/// not grow goes back to waiting without querying the database. Without that, each record
/// published cost every consumer of every topic a query on a blocking thread (`pitboss up`
/// runs a dozen).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_of_a_quiet_topic_do_not_query_when_another_topic_grows() {
    use pitboss_bus::ReadFrom;
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path(), EmbeddedConfig::default()).unwrap();
    bus.create_topic("busy", 2).await.unwrap();
    bus.create_topic("quiet", 2).await.unwrap();
    let mut reader = bus
        .reader(
            "quiet",
            vec![(0, ReadFrom::Earliest), (1, ReadFrom::Earliest)],
        )
        .await
        .unwrap();
    let mut member = bus
        .consumer("g", "quiet", ConsumerConfig::default())
        .await
        .unwrap();
    // The member's assignment first.
    loop {
        if let Delivery::Assigned(_) = member.poll(10, Duration::from_secs(5)).await.unwrap() {
            break;
        }
    }
    let publisher = bus.publisher();
    let before = bus.fetches();
    let polling = tokio::spawn(async move {
        let mut got = 0;
        for _ in 0..20 {
            got += reader
                .poll(10, Duration::from_millis(50))
                .await
                .unwrap()
                .len();
            if let Delivery::Records(r) = member.poll(10, Duration::from_millis(50)).await.unwrap()
            {
                got += r.len();
            }
        }
        (got, reader, member)
    });
    for i in 0..200 {
        publisher
            .publish("busy", vec![OutRecord::new(format!("k{i}"), b"v".to_vec())])
            .await
            .unwrap();
    }
    let (got, mut reader, mut member) = polling.await.unwrap();
    assert_eq!(got, 0, "nothing was published to the quiet topic");
    assert_eq!(
        bus.fetches() - before,
        0,
        "200 appends to another topic made the quiet topic's reader and member query the log"
    );
    // And what grows is read at once.
    publisher
        .publish("quiet", vec![OutRecord::new("k", b"v".to_vec())])
        .await
        .unwrap();
    let mut seen = reader.poll(10, Duration::from_secs(5)).await.unwrap().len();
    for _ in 0..50 {
        if seen == 2 {
            break;
        }
        if let Delivery::Records(r) = member.poll(10, Duration::from_secs(1)).await.unwrap() {
            seen += r.len();
        }
    }
    assert_eq!(
        seen, 2,
        "the reader and the member each read the new record"
    );
}

/// Another connection holding the log file's write lock for 8 s (an operator's `sqlite3` on
/// it) makes a publish wait, not the writer stop: it goes through once the lock is let go,
/// and so do the publishes after it. (Without a busy timeout the writer failed at once with
/// "database is locked" and stopped: "embedded log writer has stopped", and `pitboss up` exited.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_locked_a_moment_by_another_connection_makes_publishes_wait_not_fail() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path(), EmbeddedConfig::default()).unwrap();
    bus.create_topic("t", 1).await.unwrap();
    let publisher = bus.publisher();
    let one = |v: &str| vec![OutRecord::new("k".to_owned(), v.as_bytes().to_vec())];
    publisher.publish("t", one("a")).await.unwrap();
    let other = rusqlite::Connection::open(dir.path().join("log.sqlite")).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let waiting = {
        let publisher = publisher.clone();
        tokio::spawn(async move { publisher.publish("t", one("b")).await })
    };
    // Longer than SQLite's default wait (rusqlite's 5 s).
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(!waiting.is_finished(), "the publish waits for the lock");
    // The readiness check (ingest's `/readyz`) waits too: it says the log takes no writes now
    // rather than `ready` while every publish waits.
    assert!(
        tokio::time::timeout(Duration::from_secs(1), publisher.check())
            .await
            .is_err(),
        "the check waits for the lock as publishes do"
    );
    other.execute_batch("COMMIT").unwrap();
    drop(other);
    tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    publisher.publish("t", one("c")).await.unwrap();
    publisher.check().await.unwrap();
}
