//! The Kinesis bus against moto (Kinesis + DynamoDB APIs, started by scripts/stack.sh): the
//! shared contract suite; what only Kinesis has (the header envelope on the wire, legacy and
//! corrupt blobs, companion checkpoints on the lease row, readers leaving DynamoDB untouched,
//! caught-up detection); and, against a scripted fake endpoint, the retry of records that fail
//! inside a successful PutRecords response (moto never throttles).

#![allow(clippy::unwrap_used)]

mod contract;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use pitboss_bus::kinesis::envelope::MAGIC;
use pitboss_bus::kinesis::{KinesisBus, KinesisConfig};
use pitboss_bus::{
    Bus, BusError, Consumer, ConsumerConfig, Delivery, Headers, OutRecord, Partition, Position,
    ReadFrom, Reader, Record, StartFrom, header,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::time::Instant;

const LEASE_TABLE: &str = "pitboss-leases-test";

fn config(endpoint: String) -> KinesisConfig {
    let mut c = KinesisConfig::new("us-east-1");
    c.endpoint_url = Some(endpoint);
    c.static_credentials = Some(("test".into(), "test".into()));
    c.lease_table = LEASE_TABLE.into();
    c
}

async fn make_bus() -> Arc<dyn Bus> {
    Arc::new(
        KinesisBus::new(config(pitboss_testkit::kinesis()))
            .await
            .unwrap(),
    )
}

contract_suite!(make_bus, tells_commits = false);

/// A scripted Kinesis endpoint: answers ListShards with one shard, and PutRecords by failing
/// the records whose data is in `fail` (once each, or always if `always`).
struct Fake {
    calls: Mutex<Vec<Vec<String>>>,
    fail: Vec<String>,
    always: bool,
}

async fn serve(fake: Arc<Fake>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (sock, _) = listener.accept().await.unwrap();
            let fake = fake.clone();
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let mut r = BufReader::new(r);
                loop {
                    let (mut target, mut len) = (String::new(), 0usize);
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let lower = line.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                        if let Some(v) = lower.strip_prefix("x-amz-target:") {
                            target = v.trim().to_owned();
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; len];
                    r.read_exact(&mut body).await.unwrap();
                    let req: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    let reply = if target.ends_with("listshards") {
                        serde_json::json!({"Shards": [{
                            "ShardId": "shardId-000000000000",
                            "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": "340282366920938463463374607431768211455"},
                            "SequenceNumberRange": {"StartingSequenceNumber": "1"}
                        }]})
                    } else {
                        let datas: Vec<String> = req["Records"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|r| r["Data"].as_str().unwrap().to_owned())
                            .collect();
                        let earlier: Vec<String> = fake.calls.lock().unwrap().concat();
                        fake.calls.lock().unwrap().push(datas.clone());
                        let mut failed = 0;
                        let records: Vec<_> = datas
                            .iter()
                            .enumerate()
                            .map(|(i, d)| {
                                if fake.fail.contains(d) && (fake.always || !earlier.contains(d)) {
                                    failed += 1;
                                    serde_json::json!({"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "Rate exceeded for shard"})
                                } else {
                                    serde_json::json!({"ShardId": "shardId-000000000000", "SequenceNumber": format!("4960{i:040}")})
                                }
                            })
                            .collect();
                        serde_json::json!({"FailedRecordCount": failed, "Records": records})
                    };
                    let text = reply.to_string();
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\n\r\n",
                        text.len()
                    );
                    w.write_all(head.as_bytes()).await.unwrap();
                    w.write_all(text.as_bytes()).await.unwrap();
                }
            });
        }
    });
    format!("http://{addr}")
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn records_failing_inside_a_successful_response_are_retried() {
    let fake = Arc::new(Fake {
        calls: Mutex::new(Vec::new()),
        fail: vec![b64("second")],
        always: false,
    });
    let bus = KinesisBus::new(config(serve(fake.clone()).await))
        .await
        .unwrap();
    let acks = bus
        .publisher()
        .publish(
            "events",
            vec![
                OutRecord::new("t:a", "first"),
                OutRecord::new("t:b", "second"),
            ],
        )
        .await
        .expect("the throttled record is retried and succeeds");
    assert_eq!(acks.len(), 2);
    assert!(
        acks.iter()
            .all(|a| matches!(a.position, Position::Sequence(_)))
    );
    let calls = fake.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        vec![vec![b64("first"), b64("second")], vec![b64("second")]],
        "only the failed record is resent"
    );
}

#[tokio::test]
async fn records_that_keep_failing_surface_an_error() {
    let fake = Arc::new(Fake {
        calls: Mutex::new(Vec::new()),
        fail: vec![b64("doomed")],
        always: true,
    });
    let mut c = config(serve(fake.clone()).await);
    c.max_put_attempts = 3;
    let bus = KinesisBus::new(c).await.unwrap();
    let err = bus
        .publisher()
        .publish(
            "events",
            vec![
                OutRecord::new("t:a", "fine"),
                OutRecord::new("t:b", "doomed"),
            ],
        )
        .await
        .expect_err("never acknowledged: must fail");
    assert!(
        matches!(&err, BusError::Unavailable(m) if m.contains("ProvisionedThroughputExceeded")),
        "{err:?}"
    );
    assert_eq!(fake.calls.lock().unwrap().len(), 3, "three attempts");
}

#[tokio::test]
async fn a_missing_stream_is_unknown_topic() {
    let bus = make_bus().await;
    let missing = pitboss_testkit::unique_name("missing");
    let err = bus
        .publisher()
        .publish(&missing, vec![OutRecord::new("t:p", "x")])
        .await
        .expect_err("no such stream");
    assert!(matches!(err, BusError::UnknownTopic(_)), "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// Kinesis-specific behaviour against moto.

/// The raw SDK clients, to write and read what the bus does not (legacy blobs, lease rows).
async fn raw() -> (aws_sdk_kinesis::Client, aws_sdk_dynamodb::Client) {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(pitboss_testkit::kinesis())
        .credentials_provider(aws_credential_types::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .load()
        .await;
    (
        aws_sdk_kinesis::Client::new(&sdk),
        aws_sdk_dynamodb::Client::new(&sdk),
    )
}

async fn stream(bus: &dyn Bus, prefix: &str, shards: u32) -> String {
    let name = pitboss_testkit::unique_name(prefix);
    bus.create_topic(&name, shards)
        .await
        .expect("create stream");
    name
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A millisecond strictly after everything stored so far and strictly before anything stored
/// from now on (moto stamps records with the same clock).
async fn between_ms() -> i64 {
    let before = now_ms();
    while now_ms() <= before {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let t = now_ms();
    while now_ms() <= t {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    t
}

/// `n` records with distinct keys, values `tag#i`.
fn batch(tag: &str, n: usize) -> Vec<OutRecord> {
    (0..n)
        .map(|i| OutRecord::new(format!("tenant:{tag}-{i}"), format!("{tag}#{i}")))
        .collect()
}

fn values(records: &[Record]) -> BTreeSet<String> {
    records
        .iter()
        .map(|r| String::from_utf8(r.value.clone()).unwrap())
        .collect()
}

fn values_of(records: &[OutRecord]) -> BTreeSet<String> {
    records
        .iter()
        .map(|r| String::from_utf8(r.value.clone()).unwrap())
        .collect()
}

const PATIENCE: Duration = contract::PATIENCE;

/// Polls `reader` until it has `n` records, then once more to see that nothing else comes.
async fn read_exactly(reader: &mut dyn Reader, n: usize) -> Vec<Record> {
    let start = Instant::now();
    let mut got = Vec::new();
    while got.len() < n {
        assert!(start.elapsed() < PATIENCE, "read {} of {n}", got.len());
        got.extend(reader.poll(100, Duration::from_millis(200)).await.unwrap());
    }
    got.extend(reader.poll(100, Duration::from_millis(500)).await.unwrap());
    assert_eq!(got.len(), n, "nothing more than expected");
    got
}

/// Polls a group member until it has `n` records, then once more to see that nothing else
/// comes; stores and commits what it got when `commit`.
async fn consume_exactly(consumer: &mut dyn Consumer, n: usize, commit: bool) -> Vec<Record> {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut extra_poll = false;
    loop {
        assert!(start.elapsed() < PATIENCE, "consumed {} of {n}", got.len());
        if let Delivery::Records(rs) = consumer
            .poll(100, Duration::from_millis(200))
            .await
            .unwrap()
        {
            got.extend(rs);
        }
        if got.len() >= n {
            if extra_poll {
                break;
            }
            extra_poll = true;
        }
    }
    assert_eq!(
        got.len(),
        n,
        "nothing more than expected: {:?}",
        values(&got)
    );
    if commit {
        for r in &got {
            consumer.store(&r.topic, r.partition, &r.position).unwrap();
        }
        consumer.commit().await.unwrap();
    }
    got
}

/// Polls until this member holds every one of `partitions` shards.
async fn until_assigned(consumer: &mut dyn Consumer, partitions: usize) {
    let start = Instant::now();
    while consumer.assignment().len() < partitions {
        assert!(start.elapsed() < PATIENCE, "{:?}", consumer.assignment());
        if let Delivery::Records(rs) = consumer
            .poll(100, Duration::from_millis(100))
            .await
            .unwrap()
        {
            assert!(rs.is_empty(), "no records before assignment: {rs:?}");
        }
    }
}

async fn join(
    bus: &dyn Bus,
    group: &str,
    topic: &str,
    config: ConsumerConfig,
) -> Box<dyn Consumer> {
    bus.consumer(group, topic, config).await.expect("consumer")
}

fn starting(start: StartFrom) -> ConsumerConfig {
    ConsumerConfig {
        start,
        ..ConsumerConfig::default()
    }
}

#[tokio::test]
async fn headers_travel_in_an_envelope_and_other_blobs_read_back_unchanged() {
    let bus = make_bus().await;
    let topic = stream(&*bus, "headers", 1).await;
    let headers = Headers::new()
        .with(header::TYPE, "bet_placed")
        .with(header::TENANT, "t1")
        .with(header::EVENT_TIME, "1712345678901")
        .with("binary", vec![0u8, 255]);
    let acks = bus
        .publisher()
        .publish(
            &topic,
            vec![
                OutRecord {
                    key: "t1:p1".into(),
                    value: b"\x0a\x02hi".to_vec(),
                    headers: headers.clone(),
                },
                OutRecord::new("t1:p2", "bare"),
            ],
        )
        .await
        .unwrap();
    // Written by another producer, or before headers existed: no envelope.
    let (kinesis, _) = raw().await;
    let legacy = br#"{"type":"bet_placed"}"#.to_vec();
    let corrupt = [&MAGIC[..], b"\x03\x05ab"].concat(); // three headers in four bytes
    for data in [legacy.clone(), corrupt.clone()] {
        kinesis
            .put_record()
            .stream_name(&topic)
            .partition_key("t1:p3")
            .data(Blob::new(data))
            .send()
            .await
            .unwrap();
    }

    // On the wire: the envelope, and nothing around a record without headers.
    let iterator = kinesis
        .get_shard_iterator()
        .stream_name(&topic)
        .shard_id("shardId-000000000000")
        .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
        .send()
        .await
        .unwrap()
        .shard_iterator
        .unwrap();
    let wire = kinesis
        .get_records()
        .shard_iterator(iterator)
        .send()
        .await
        .unwrap()
        .records;
    assert_eq!(wire.len(), 4);
    assert!(wire[0].data.as_ref().starts_with(&MAGIC));
    assert_eq!(
        wire[1].data.as_ref(),
        b"bare",
        "no envelope without headers"
    );

    let mut reader = bus.reader_all(&topic, ReadFrom::Earliest).await.unwrap();
    let got = read_exactly(&mut *reader, 4).await;
    assert_eq!(got[0].headers, headers);
    assert_eq!(got[0].value, b"\x0a\x02hi");
    assert_eq!(got[0].position, acks[0].position);
    assert_eq!(&*got[0].topic, topic.as_str());
    assert!(got[1].headers.is_empty());
    assert_eq!(got[1].value, b"bare");
    assert!(got[2].headers.is_empty());
    assert_eq!(got[2].value, legacy, "a legacy blob is the value");
    assert!(got[3].headers.is_empty());
    assert_eq!(got[3].value, corrupt, "a corrupt envelope is delivered raw");
}

#[tokio::test]
async fn partition_count_is_the_shard_count() {
    let bus = make_bus().await;
    let topic = stream(&*bus, "count", 3).await;
    assert_eq!(bus.partition_count(&topic).await.unwrap(), 3);
    let missing = pitboss_testkit::unique_name("missing");
    let err = bus.partition_count(&missing).await.unwrap_err();
    assert!(matches!(err, BusError::UnknownTopic(_)), "{err:?}");
}

#[tokio::test]
async fn committed_resumes_after_the_checkpoint_and_earliest_ignores_it() {
    let bus = make_bus().await;
    let topic = stream(&*bus, "earliest", 2).await;
    let group = pitboss_testkit::unique_name("g");
    let a = batch("a", 20);
    contract::publish_all(&*bus, &topic, a.clone(), 20).await;

    let mut first = join(&*bus, &group, &topic, ConsumerConfig::default()).await;
    assert_eq!(
        values(&consume_exactly(&mut *first, 20, true).await),
        values_of(&a)
    );
    first.close().await.unwrap();

    let b = batch("b", 10);
    contract::publish_all(&*bus, &topic, b.clone(), 10).await;
    let mut committed = join(&*bus, &group, &topic, ConsumerConfig::default()).await;
    assert_eq!(
        values(&consume_exactly(&mut *committed, 10, false).await),
        values_of(&b),
        "Committed: right after the checkpoint"
    );
    committed.close().await.unwrap();

    let mut earliest = join(&*bus, &group, &topic, starting(StartFrom::Earliest)).await;
    let all: BTreeSet<String> = values_of(&a).union(&values_of(&b)).cloned().collect();
    assert_eq!(
        values(&consume_exactly(&mut *earliest, 30, false).await),
        all,
        "Earliest: everything, whatever was committed"
    );
    earliest.close().await.unwrap();
}

#[tokio::test]
async fn timestamp_starts_at_the_first_record_stored_at_or_after_it() {
    let bus = make_bus().await;
    let topic = stream(&*bus, "time", 2).await;
    let group = pitboss_testkit::unique_name("g");
    contract::publish_all(&*bus, &topic, batch("a", 20), 20).await;
    let t = between_ms().await;
    let b = batch("b", 20);
    contract::publish_all(&*bus, &topic, b.clone(), 20).await;

    // Everything committed first: the timestamp wins over the checkpoint.
    let mut first = join(&*bus, &group, &topic, ConsumerConfig::default()).await;
    consume_exactly(&mut *first, 40, true).await;
    first.close().await.unwrap();

    let mut member = join(&*bus, &group, &topic, starting(StartFrom::Timestamp(t))).await;
    let got = consume_exactly(&mut *member, 20, false).await;
    assert_eq!(values(&got), values_of(&b));
    assert!(got.iter().all(|r| r.timestamp_ms >= t), "{got:?}");
    member.close().await.unwrap();
}

#[tokio::test]
async fn latest_reads_only_what_comes_after_the_assignment_and_checkpoints_as_usual() {
    let bus = make_bus().await;
    let topic = stream(&*bus, "latest", 2).await;
    let group = pitboss_testkit::unique_name("g");
    contract::publish_all(&*bus, &topic, batch("a", 20), 20).await;

    let mut latest = join(&*bus, &group, &topic, starting(StartFrom::Latest)).await;
    until_assigned(&mut *latest, 2).await;
    let c = batch("c", 10);
    contract::publish_all(&*bus, &topic, c.clone(), 10).await;
    assert_eq!(
        values(&consume_exactly(&mut *latest, 10, true).await),
        values_of(&c)
    );
    latest.close().await.unwrap();

    // The checkpoint it wrote holds for a Committed member.
    let d = batch("d", 6);
    contract::publish_all(&*bus, &topic, d.clone(), 6).await;
    let mut committed = join(&*bus, &group, &topic, ConsumerConfig::default()).await;
    assert_eq!(
        values(&consume_exactly(&mut *committed, 6, false).await),
        values_of(&d)
    );
    committed.close().await.unwrap();
}

/// The lease row of one shard of a group, as DynamoDB has it.
async fn lease_row(
    dynamo: &aws_sdk_dynamodb::Client,
    group: &str,
    topic: &str,
    shard: &str,
) -> std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue> {
    use aws_sdk_dynamodb::types::AttributeValue::S;
    dynamo
        .get_item()
        .table_name(LEASE_TABLE)
        .key("pk", S(format!("{group}|{topic}")))
        .key("sk", S(format!("shard#{shard}")))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .unwrap_or_default()
}

#[tokio::test]
async fn companions_are_read_by_the_holder_of_the_same_shard_and_checkpointed_with_it() {
    let bus = make_bus().await;
    let main = stream(&*bus, "main", 2).await;
    let side = stream(&*bus, "side", 2).await;
    let group = pitboss_testkit::unique_name("g");
    let config = ConsumerConfig {
        companions: vec![side.clone()],
        ..ConsumerConfig::default()
    };
    let mut a = join(&*bus, &group, &main, config.clone()).await;
    let mut b = join(&*bus, &group, &main, config.clone()).await;
    let start = Instant::now();
    while a.assignment().len() != 1 || b.assignment().len() != 1 {
        assert!(
            start.elapsed() < PATIENCE,
            "{:?} {:?}",
            a.assignment(),
            b.assignment()
        );
        for m in [&mut a, &mut b] {
            if let Delivery::Records(rs) = m.poll(100, Duration::from_millis(100)).await.unwrap() {
                assert!(rs.is_empty());
            }
        }
    }

    let keys: Vec<String> = (0..16).map(|i| format!("tenant:player-{i}")).collect();
    for topic in [&main, &side] {
        let recs: Vec<OutRecord> = keys
            .iter()
            .map(|k| OutRecord::new(k.clone(), format!("{topic}/{k}")))
            .collect();
        contract::publish_all(&*bus, topic, recs, 16).await;
    }
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    let start = Instant::now();
    while got_a.len() + got_b.len() < 32 {
        assert!(
            start.elapsed() < PATIENCE,
            "{} + {}",
            got_a.len(),
            got_b.len()
        );
        for (m, got) in [(&mut a, &mut got_a), (&mut b, &mut got_b)] {
            match m.poll(100, Duration::from_millis(100)).await.unwrap() {
                Delivery::Records(rs) => got.extend(rs),
                other => panic!("the group is settled: {other:?}"),
            }
        }
    }
    // Each member got both streams' records of the keys of its shard, and only those.
    for (m, got) in [(&a, &got_a), (&b, &got_b)] {
        let mine: Vec<Partition> = m.assignment();
        assert!(got.iter().all(|r| mine.contains(&r.partition)), "{mine:?}");
        let by_topic = |t: &str| -> BTreeSet<&str> {
            got.iter()
                .filter(|r| &*r.topic == t)
                .map(|r| r.key.as_str())
                .collect()
        };
        assert!(!by_topic(&main).is_empty(), "both members have keys");
        assert_eq!(
            by_topic(&main),
            by_topic(&side),
            "one key, one member, both streams"
        );
    }
    for (m, got) in [(&mut a, &got_a), (&mut b, &got_b)] {
        for r in got.iter() {
            m.store(&r.topic, r.partition, &r.position).unwrap();
        }
        m.commit().await.unwrap();
    }
    let err = a
        .store("elsewhere", a.assignment()[0], &got_a[0].position)
        .unwrap_err();
    assert!(matches!(err, BusError::Config(_)), "{err:?}");

    // Both checkpoints sit on the lease row of the main stream's shard.
    let (_, dynamo) = raw().await;
    let shard = "shardId-000000000000";
    let row = lease_row(&dynamo, &group, &main, shard).await;
    let newest = |topic: &str| {
        got_a
            .iter()
            .chain(&got_b)
            .filter(|r| &*r.topic == topic && r.partition == 0)
            .map(|r| r.position.to_string())
            .max_by_key(|p| (p.len(), p.clone()))
    };
    assert_eq!(
        row.get("checkpoint").and_then(|v| v.as_s().ok()).cloned(),
        newest(&main)
    );
    assert_eq!(
        row.get(&format!("checkpoint#{side}"))
            .and_then(|v| v.as_s().ok())
            .cloned(),
        newest(&side)
    );
    a.close().await.unwrap();
    b.close().await.unwrap();

    // A new member resumes both streams after their checkpoints.
    for topic in [&main, &side] {
        contract::publish_all(
            &*bus,
            topic,
            vec![OutRecord::new("tenant:late", format!("{topic}/late"))],
            1,
        )
        .await;
    }
    let mut c = join(&*bus, &group, &main, config).await;
    let got = consume_exactly(&mut *c, 2, false).await;
    assert_eq!(
        values(&got),
        BTreeSet::from([format!("{main}/late"), format!("{side}/late")])
    );
    c.close().await.unwrap();
}

#[tokio::test]
async fn companions_with_another_shard_count_are_refused() {
    let bus = make_bus().await;
    let main = stream(&*bus, "main", 2).await;
    let side = stream(&*bus, "side", 3).await;
    let config = ConsumerConfig {
        companions: vec![side.clone()],
        ..ConsumerConfig::default()
    };
    let err = bus
        .consumer(&pitboss_testkit::unique_name("g"), &main, config)
        .await
        .unwrap_err();
    let BusError::Config(message) = &err else {
        panic!("{err:?}");
    };
    assert!(
        message.contains(&side) && message.contains("3 shards") && message.contains("has 2"),
        "{message}"
    );
}

#[tokio::test]
async fn a_reader_from_a_timestamp_gets_exactly_the_records_at_or_after_it() {
    let bus = make_bus().await;
    let topic = stream(&*bus, "rtime", 2).await;
    contract::publish_all(&*bus, &topic, batch("a", 20), 20).await;
    let t = between_ms().await;
    let b = batch("b", 20);
    contract::publish_all(&*bus, &topic, b.clone(), 20).await;
    let mut reader = bus
        .reader_all(&topic, ReadFrom::Timestamp(t))
        .await
        .unwrap();
    assert_eq!(values(&read_exactly(&mut *reader, 20).await), values_of(&b));
}

#[tokio::test]
async fn a_reader_resumes_exactly_after_or_at_a_position() {
    let bus = make_bus().await;
    let topic = stream(&*bus, "rpos", 1).await;
    let recs = batch("p", 10);
    let acks = bus.publisher().publish(&topic, recs.clone()).await.unwrap();

    let mut after = bus
        .reader(&topic, vec![(0, ReadFrom::After(acks[4].position.clone()))])
        .await
        .unwrap();
    let got = read_exactly(&mut *after, 5).await;
    let positions: Vec<Position> = got.iter().map(|r| r.position.clone()).collect();
    let expected: Vec<Position> = acks[5..].iter().map(|a| a.position.clone()).collect();
    assert_eq!(positions, expected, "After: the records after it, in order");

    let mut at = bus
        .reader(&topic, vec![(0, ReadFrom::At(acks[4].position.clone()))])
        .await
        .unwrap();
    let got = read_exactly(&mut *at, 6).await;
    assert_eq!(got[0].position, acks[4].position, "At: that record first");
    assert_eq!(got[0].value, recs[4].value);

    // Latest: only what is published after the reader opened.
    let mut latest = bus.reader_all(&topic, ReadFrom::Latest).await.unwrap();
    let late = batch("late", 3);
    contract::publish_all(&*bus, &topic, late.clone(), 3).await;
    assert_eq!(
        values(&read_exactly(&mut *latest, 3).await),
        values_of(&late)
    );
}

#[tokio::test]
async fn readers_refuse_what_the_stream_does_not_have() {
    let bus = make_bus().await;
    let topic = stream(&*bus, "rbad", 2).await;
    for starts in [
        vec![(2, ReadFrom::Earliest)],
        vec![],
        vec![(0, ReadFrom::Earliest), (0, ReadFrom::Latest)],
        vec![(0, ReadFrom::After(Position::Offset(3)))],
    ] {
        let err = bus.reader(&topic, starts.clone()).await.unwrap_err();
        assert!(matches!(err, BusError::Config(_)), "{starts:?}: {err:?}");
    }
    let missing = pitboss_testkit::unique_name("missing");
    let err = bus
        .reader_all(&missing, ReadFrom::Earliest)
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::UnknownTopic(_)), "{err:?}");
}

#[tokio::test]
async fn a_reader_is_caught_up_only_once_every_shard_has_nothing_left() {
    let bus = make_bus().await;
    let topic = stream(&*bus, "caught", 3).await;
    // 400 records land on three shards within a few milliseconds; two shards are read.
    let recs: Vec<OutRecord> = (0..)
        .map(|i| OutRecord::new(format!("k{i}"), format!("v{i}")))
        .take(400)
        .collect();
    let acks = bus.publisher().publish(&topic, recs).await.unwrap();
    let mut newest: BTreeMap<Partition, Position> = BTreeMap::new();
    for a in &acks {
        newest.insert(a.partition, a.position.clone()); // acks are in order per shard
    }
    let mut reader = bus
        .reader(
            &topic,
            vec![(0, ReadFrom::Earliest), (1, ReadFrom::Earliest)],
        )
        .await
        .unwrap();
    assert!(!reader.caught_up());
    assert_eq!(
        reader.end_positions(),
        BTreeMap::from([(0, None), (1, None)]),
        "Kinesis cannot know the end before reading"
    );
    let expected = acks.iter().filter(|a| a.partition < 2).count();
    let mut got = 0;
    let start = Instant::now();
    while !reader.caught_up() {
        assert!(start.elapsed() < PATIENCE);
        // Small polls: answers cut short by their limit are never taken for the end.
        got += reader
            .poll(7, Duration::from_millis(100))
            .await
            .unwrap()
            .len();
        if got < expected {
            assert!(
                !reader.caught_up(),
                "caught up with {got} of {expected} read"
            );
        }
    }
    assert_eq!(got, expected);
    assert_eq!(
        reader.end_positions(),
        BTreeMap::from([(0, newest.get(&0).cloned()), (1, newest.get(&1).cloned())])
    );

    // An empty shard ends with nothing; a resumed one at the position it resumed after.
    let empty = stream(&*bus, "caught-empty", 1).await;
    let mut reader = bus.reader_all(&empty, ReadFrom::Earliest).await.unwrap();
    let start = Instant::now();
    while !reader.caught_up() {
        assert!(start.elapsed() < PATIENCE);
        assert!(
            reader
                .poll(10, Duration::from_millis(100))
                .await
                .unwrap()
                .is_empty()
        );
    }
    assert_eq!(reader.end_positions(), BTreeMap::from([(0, None)]));
    let last = acks.iter().rfind(|a| a.partition == 0).unwrap();
    let mut resumed = bus
        .reader(&topic, vec![(0, ReadFrom::After(last.position.clone()))])
        .await
        .unwrap();
    let start = Instant::now();
    while !resumed.caught_up() {
        assert!(start.elapsed() < PATIENCE);
        assert!(
            resumed
                .poll(10, Duration::from_millis(100))
                .await
                .unwrap()
                .is_empty()
        );
    }
    assert_eq!(
        resumed.end_positions(),
        BTreeMap::from([(0, Some(last.position.clone()))])
    );
}

/// Rows of the lease table that mention `topic` in their key.
async fn rows_of(dynamo: &aws_sdk_dynamodb::Client, topic: &str) -> Vec<String> {
    let mut rows = Vec::new();
    let mut start = None;
    loop {
        let page = match dynamo
            .scan()
            .table_name(LEASE_TABLE)
            .consistent_read(true)
            .set_exclusive_start_key(start.take())
            .send()
            .await
        {
            Ok(page) => page,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                return rows; // no group ever ran: no table yet
            }
            Err(e) => panic!("scan: {e:?}"),
        };
        for item in page.items() {
            let pk = item
                .get("pk")
                .and_then(|v| v.as_s().ok())
                .cloned()
                .unwrap_or_default();
            let sk = item
                .get("sk")
                .and_then(|v| v.as_s().ok())
                .cloned()
                .unwrap_or_default();
            if pk.contains(topic) {
                rows.push(format!("{pk} {sk}"));
            }
        }
        match page.last_evaluated_key {
            Some(key) if !key.is_empty() => start = Some(key),
            _ => return rows,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_short_lived_readers_leave_nothing_in_dynamodb() {
    let bus = make_bus().await;
    let topic = pitboss_testkit::unique_name("readers");
    contract::many_short_lived_readers(bus.clone(), &topic, 200).await;
    let (_, dynamo) = raw().await;
    assert_eq!(rows_of(&dynamo, &topic).await, Vec::<String>::new());

    // The scan does see what a group leaves (its lease rows), so the check above can fail.
    let mut member = join(
        &*bus,
        &pitboss_testkit::unique_name("g"),
        &topic,
        ConsumerConfig::default(),
    )
    .await;
    consume_exactly(&mut *member, 4, true).await;
    member.close().await.unwrap();
    assert_eq!(
        rows_of(&dynamo, &topic).await.len(),
        2,
        "the group's lease rows"
    );
}

/// Kinesis members' lag gauge.
const LAG: &str = "pitboss_consumer_lag_seconds";

/// A group member reports how far behind each shard's newest record its reads are
/// (`pitboss_consumer_lag_seconds`, from GetRecords' `MillisBehindLatest`), as Kafka's members
/// report their lag in records: behind while records wait, 0 once read up, 0 once it leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_reports_how_far_behind_its_reads_are() {
    let handle = contract::recorder();
    let bus = make_bus().await;
    let topic = pitboss_testkit::unique_name("klag");
    let group = pitboss_testkit::unique_name("g");
    bus.create_topic(&topic, 1).await.unwrap();
    let publisher = bus.publisher();
    let batch = |tag: &str| -> Vec<OutRecord> {
        (0..3)
            .map(|i| OutRecord::new("k".to_owned(), format!("{tag}-{i}")))
            .collect()
    };
    publisher.publish(&topic, batch("first")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    publisher.publish(&topic, batch("second")).await.unwrap();
    let lag = || contract::gauge_of(&handle.render(), LAG, &group, &topic, 0);
    let mut member = bus
        .consumer(&group, &topic, ConsumerConfig::default())
        .await
        .unwrap();
    // One record read: the shard's newest arrived 2.5 s after it.
    let mut read = 0;
    let start = Instant::now();
    while read == 0 {
        assert!(start.elapsed() < Duration::from_secs(30), "nothing read");
        if let Delivery::Records(rs) = member.poll(1, Duration::from_millis(200)).await.unwrap() {
            read += rs.len();
        }
    }
    let behind = lag().expect("a lag reported");
    assert!(
        behind >= 1.0,
        "{behind} s behind with the second batch unread"
    );
    // Everything read: 0 at the next report (every 5 s).
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "lag stayed at {:?}",
            lag()
        );
        if let Delivery::Records(rs) = member.poll(100, Duration::from_millis(200)).await.unwrap() {
            read += rs.len();
        }
        if read == 6 && lag() == Some(0.0) {
            break;
        }
    }
    member.close().await.unwrap();
    assert_eq!(lag(), Some(0.0));
    // A member that leaves while behind: 0 (the next owner reports the shard).
    let group = pitboss_testkit::unique_name("g");
    let lag = || contract::gauge_of(&handle.render(), LAG, &group, &topic, 0);
    let mut member = bus
        .consumer(&group, &topic, ConsumerConfig::default())
        .await
        .unwrap();
    let start = Instant::now();
    while lag().is_none_or(|l| l < 1.0) {
        assert!(start.elapsed() < Duration::from_secs(30), "{:?}", lag());
        member.poll(1, Duration::from_millis(200)).await.unwrap();
    }
    member.close().await.unwrap();
    assert_eq!(lag(), Some(0.0));
}

/// A member killed (dropped without `close`, so it never deleted its row) leaves a member row
/// behind; a live member of the group deletes it once it has been expired a session past, and
/// the group goes on (the dead member's shard taken over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_member_deletes_the_row_of_a_member_that_was_killed() {
    let bus = make_bus().await;
    let topic = pitboss_testkit::unique_name("dead");
    let group = pitboss_testkit::unique_name("g");
    bus.create_topic(&topic, 2).await.unwrap();
    let config = ConsumerConfig {
        session_timeout: Duration::from_millis(1_500),
        ..ConsumerConfig::default()
    };
    let (_, dynamo) = raw().await;
    let members = || async {
        rows_of(&dynamo, &topic)
            .await
            .into_iter()
            .filter(|r| r.contains(" member#"))
            .count()
    };
    let mut killed = join(&*bus, &group, &topic, config.clone()).await;
    killed.poll(10, Duration::from_millis(300)).await.unwrap();
    let mut live = join(&*bus, &group, &topic, config).await;
    live.poll(10, Duration::from_millis(300)).await.unwrap();
    assert_eq!(members().await, 2);
    drop(killed);
    let start = Instant::now();
    while members().await > 1 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the killed member's row is still there"
        );
        live.poll(10, Duration::from_millis(300)).await.unwrap();
    }
    // The live member holds both shards now.
    while live.assignment().len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{:?}",
            live.assignment()
        );
        live.poll(10, Duration::from_millis(300)).await.unwrap();
    }
    live.close().await.unwrap();
    assert_eq!(members().await, 0);
}

/// A stream's retention is set (raised and lowered) and waited for; outside Kinesis's bounds it
/// is refused. (`pitboss topics --bus kinesis` gives the streams it makes 168 h with it: Kinesis
/// makes them with 24.)
#[tokio::test]
async fn a_streams_retention_is_set_both_ways_within_kinesiss_bounds() {
    let bus = make_bus().await;
    let topic = pitboss_testkit::unique_name("keep");
    bus.create_topic(&topic, 1).await.unwrap();
    let (kinesis, _) = raw().await;
    let retention = || async {
        kinesis
            .describe_stream_summary()
            .stream_name(&topic)
            .send()
            .await
            .unwrap()
            .stream_description_summary()
            .unwrap()
            .retention_period_hours()
    };
    assert_eq!(retention().await, 24);
    bus.set_retention_hours(&topic, 168).await.unwrap();
    assert_eq!(retention().await, 168);
    bus.set_retention_hours(&topic, 72).await.unwrap();
    assert_eq!(retention().await, 72);
    bus.set_retention_hours(&topic, 72).await.unwrap();
    let e = bus.set_retention_hours(&topic, 12).await.unwrap_err();
    assert!(
        matches!(&e, BusError::Config(m) if m.contains("24 to 8760")),
        "{e}"
    );
    assert_eq!(retention().await, 72);
}
