//! The Kinesis bus against moto (Kinesis + DynamoDB APIs, started by scripts/stack.sh): the
//! shared contract suite; and, against a scripted fake endpoint, the retry of records that fail
//! inside a successful PutRecords response (moto never throttles).

#![allow(clippy::unwrap_used)]

mod contract;

use std::sync::{Arc, Mutex};

use pitboss_bus::kinesis::{KinesisBus, KinesisConfig};
use pitboss_bus::{Bus, BusError, OutRecord, Position};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

fn config(endpoint: String) -> KinesisConfig {
    let mut c = KinesisConfig::new("us-east-1");
    c.endpoint_url = Some(endpoint);
    c.static_credentials = Some(("test".into(), "test".into()));
    c.lease_table = "pitboss-leases-test".into();
    c
}

async fn make_bus() -> Arc<dyn Bus> {
    Arc::new(
        KinesisBus::new(config(pitboss_testkit::kinesis()))
            .await
            .unwrap(),
    )
}

contract_suite!(make_bus);

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
