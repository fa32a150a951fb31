//! The antifraud Lambda binary (`pitboss-antifraud-lambda`) driven through a fake Lambda
//! Runtime API with Kinesis and MSK event payloads of the scripted day of play: its window state
//! in DynamoDB (moto), its alerts and pushes on Kinesis (moto) or Kafka (the test stack's
//! broker, over SASL_SSL with the options from Secrets Manager, as on MSK). The function is SIGKILLed while it evaluates batches and the batch redelivered, as
//! Lambda does; the published ids are exactly those one engine raises over the whole stream.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};
use pitboss_antifraud::lambda::events;
use pitboss_antifraud::{Engine, Output, RuleSet};
use pitboss_bus::{Bus, ReadFrom};
use pitboss_model::live::{Alert, LiveMessage, Push};
use pitboss_model::{Event, Timestamp};
use pitboss_testkit::lambda::Runtime;

fn shipped() -> RuleSet {
    RuleSet::from_sources(&pitboss_antifraud::stream::shipped_sources()).unwrap()
}

async fn dynamo(endpoint: &str) -> aws_sdk_dynamodb::Client {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_credential_types::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

/// The state table as infra/terraform and localstack/ create it.
async fn state_table(endpoint: &str) -> String {
    let name = pitboss_testkit::unique_name("antifraud_state");
    dynamo(endpoint)
        .await
        .create_table()
        .table_name(&name)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("unit")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("unit")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .unwrap();
    name
}

/// A Secrets Manager secret in moto holding `value`; its ARN.
async fn put_secret(endpoint: &str, value: &str) -> String {
    let config = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(aws_sdk_secretsmanager::config::BehaviorVersion::latest())
        .region(aws_sdk_secretsmanager::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_credential_types::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .build();
    aws_sdk_secretsmanager::Client::from_conf(config)
        .create_secret()
        .name(pitboss_testkit::unique_name("kafka-options"))
        .secret_string(value)
        .send()
        .await
        .unwrap()
        .arn()
        .unwrap()
        .to_owned()
}

fn kinesis_bus_config(endpoint: &str) -> pitboss_bus::kinesis::KinesisConfig {
    let mut c = pitboss_bus::kinesis::KinesisConfig::new("us-east-1");
    c.endpoint_url = Some(endpoint.to_owned());
    c.static_credentials = Some(("test".into(), "test".into()));
    c.lease_table = "pitboss-leases-test".into();
    c
}

struct Setup {
    runtime: Runtime,
    runtime_api: String,
    env: Vec<(String, String)>,
}

impl Setup {
    fn spawn(&self) -> std::process::Child {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pitboss-antifraud-lambda"));
        cmd.env("AWS_LAMBDA_RUNTIME_API", &self.runtime_api)
            .env("AWS_LAMBDA_FUNCTION_NAME", "pitboss-antifraud")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.spawn().unwrap()
    }
}

/// The scripted day's events (ending now), round-robin over players, and the ids one engine
/// raises from them with its clock at `arrival`.
fn script(normal: usize) -> (Vec<Event>, i64, BTreeSet<String>) {
    let now = Timestamp::now().as_millis();
    let parts = pitboss_antifraud::scenario::script("acme", now - 1000, normal, 1);
    let longest = parts.iter().map(|p| p.events.len()).max().unwrap();
    let events: Vec<Event> = (0..longest)
        .flat_map(|i| parts.iter().filter_map(move |p| p.events.get(i)))
        .map(|e| pitboss_model::decode_event(e.to_string().as_bytes()).unwrap())
        .collect();
    let mut engine = Engine::new(shipped());
    let mut out = Output::default();
    for e in &events {
        engine
            .process(e, Timestamp::from_millis(now), &mut out)
            .unwrap();
    }
    let mut want: BTreeSet<String> = out.alerts.iter().map(|a| a.alert_id.clone()).collect();
    want.extend(out.pushes.iter().map(|p| p.push_id.clone()));
    (events, now, want)
}

/// Every alert and push id on the two topics: read until `want` arrived and a second passed
/// without more (to catch extras), or 60 s.
async fn published(bus: &Arc<dyn Bus>, alerts: &str, pushes: &str, want: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let mut readers = vec![
        (
            bus.reader_all(alerts, ReadFrom::Earliest).await.unwrap(),
            true,
        ),
        (
            bus.reader_all(pushes, ReadFrom::Earliest).await.unwrap(),
            false,
        ),
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut quiet = 0;
    while std::time::Instant::now() < deadline && !(ids.len() >= want && quiet >= 4) {
        let mut any = false;
        for (reader, is_alert) in &mut readers {
            for r in reader.poll(500, Duration::from_millis(250)).await.unwrap() {
                any = true;
                ids.push(if *is_alert {
                    Alert::decode_proto(&r.value).unwrap().alert_id
                } else {
                    Push::decode_proto(&r.value).unwrap().push_id
                });
            }
        }
        quiet = if any { 0 } else { quiet + 1 };
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_batches_with_state_in_dynamodb_raise_exactly_one_engines_alerts_through_sigkills()
{
    let moto = pitboss_testkit::kinesis();
    let table = state_table(&moto).await;
    let bus: Arc<dyn Bus> = Arc::new(
        pitboss_bus::kinesis::KinesisBus::new(kinesis_bus_config(&moto))
            .await
            .unwrap(),
    );
    let alerts = pitboss_testkit::unique_name("alerts");
    let pushes = pitboss_testkit::unique_name("pushes");
    let dead = pitboss_testkit::unique_name("dead");
    for t in [&alerts, &pushes, &dead] {
        bus.create_topic(t, 1).await.unwrap();
    }
    let runtime = Runtime::default();
    let runtime_api = runtime.start().await;
    let setup = Setup {
        runtime,
        runtime_api,
        env: vec![
            ("PITBOSS_STATE_TABLE".into(), table.clone()),
            ("PITBOSS_DYNAMODB_ENDPOINT".into(), moto.clone()),
            ("PITBOSS_BUS".into(), "kinesis".into()),
            ("PITBOSS_KINESIS_ENDPOINT".into(), moto.clone()),
            ("PITBOSS_ALERTS_TOPIC".into(), alerts.clone()),
            ("PITBOSS_PUSHES_TOPIC".into(), pushes.clone()),
            ("PITBOSS_DEAD_LETTER_TOPIC".into(), dead.clone()),
        ],
    };
    let (events, arrival, want) = script(30);
    assert!(want.len() > 5, "{want:?}");
    let batches: Vec<serde_json::Value> = events
        .chunks(60)
        .enumerate()
        .map(|(b, chunk)| {
            let recs: Vec<(Vec<u8>, String, i64)> = chunk
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let mut bytes = pitboss_model::encode_proto(e);
                    if b == 1 && i == 0 {
                        bytes = b"\xff not an event".to_vec();
                    }
                    (bytes, format!("{:056}", b * 1000 + i + 1), arrival)
                })
                .collect();
            events::kinesis("events", 0, &recs)
        })
        .collect();
    assert!(batches.len() >= 8, "{}", batches.len());
    let kill_at = [2, batches.len() / 2, batches.len() - 2];
    let mut function = setup.spawn();
    let mut request = 0;
    for (b, batch) in batches.iter().enumerate() {
        if kill_at.contains(&b) {
            // Killed while (or just before) it evaluates the batch: Lambda runs a fresh
            // instance and delivers the batch again.
            request += 1;
            setup.runtime.queue(&format!("r{request}"), batch.clone());
            tokio::time::sleep(Duration::from_millis(40 * (b as u64 % 5))).await;
            function.kill().unwrap();
            function.wait().unwrap();
            function = setup.spawn();
        }
        request += 1;
        let answer = setup
            .runtime
            .invoke(&format!("r{request}"), batch.clone())
            .await;
        assert_eq!(
            answer,
            serde_json::json!({"batchItemFailures": []}),
            "batch {b}"
        );
    }
    // A batch delivered once more after it succeeded (Lambda may): nothing new.
    request += 1;
    let answer = setup
        .runtime
        .invoke(&format!("r{request}"), batches[3].clone())
        .await;
    assert_eq!(answer["batchItemFailures"], serde_json::json!([]));
    function.kill().unwrap();
    function.wait().unwrap();

    let got = published(&bus, &alerts, &pushes, want.len()).await;
    let distinct: BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(
        distinct, want,
        "the ids one engine raises, none missed, none extra"
    );
    let mut reader = bus.reader_all(&dead, ReadFrom::Earliest).await.unwrap();
    let mut dead_letters = Vec::new();
    for _ in 0..6 {
        dead_letters.extend(reader.poll(10, Duration::from_millis(500)).await.unwrap());
        if !dead_letters.is_empty() {
            break;
        }
    }
    assert!(
        !dead_letters.is_empty(),
        "the unreadable record is dead-lettered"
    );
    assert!(
        dead_letters[0].key.contains("undecodable"),
        "{}",
        dead_letters[0].key
    );

    // The store unreachable: the batch is reported from its first record, for a retry.
    let mut broken = setup.env.clone();
    for (k, v) in &mut broken {
        if k == "PITBOSS_DYNAMODB_ENDPOINT" {
            *v = "http://127.0.0.1:9".into();
        }
    }
    let down = Setup {
        env: broken,
        runtime: setup.runtime.clone(),
        runtime_api: setup.runtime_api.clone(),
    };
    let mut function = down.spawn();
    let answer = setup.runtime.invoke("down", batches[0].clone()).await;
    assert_eq!(
        answer,
        serde_json::json!({"batchItemFailures": [{"itemIdentifier": format!("{:056}", 1)}]})
    );
    function.kill().unwrap();
    function.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msk_batches_over_two_partitions_publish_to_kafka_exactly_one_engines_alerts() {
    let moto = pitboss_testkit::kinesis();
    let table = state_table(&moto).await;
    let bootstrap = pitboss_testkit::kafka();
    // The function publishes as on MSK: SASL/SCRAM over TLS, the options (the password among
    // them) read at start from Secrets Manager, none in its environment (docs/deploy.md).
    let (sasl_ssl, password, ca) = pitboss_testkit::kafka_sasl_ssl();
    let secret = put_secret(
        &moto,
        &format!(
            "security.protocol=SASL_SSL,sasl.mechanisms=SCRAM-SHA-512,sasl.username=pitboss,\
             sasl.password={password},ssl.ca.location={ca}"
        ),
    )
    .await;
    let bus: Arc<dyn Bus> = Arc::new(
        pitboss_bus::kafka::KafkaBus::new(pitboss_bus::kafka::KafkaConfig::new(&bootstrap))
            .unwrap(),
    );
    let alerts = pitboss_testkit::unique_name("alerts");
    let pushes = pitboss_testkit::unique_name("pushes");
    let dead = pitboss_testkit::unique_name("dead");
    for t in [&alerts, &pushes, &dead] {
        bus.create_topic(t, 2).await.unwrap();
    }
    let runtime = Runtime::default();
    let runtime_api = runtime.start().await;
    let setup = Setup {
        runtime,
        runtime_api,
        env: vec![
            ("PITBOSS_STATE_TABLE".into(), table),
            ("PITBOSS_DYNAMODB_ENDPOINT".into(), moto.clone()),
            ("PITBOSS_BUS".into(), "kafka".into()),
            ("PITBOSS_KAFKA_BOOTSTRAP".into(), sasl_ssl),
            ("PITBOSS_KAFKA_OPTIONS_SECRET".into(), secret),
            ("AWS_ENDPOINT_URL_SECRETS_MANAGER".into(), moto),
            ("PITBOSS_ALERTS_TOPIC".into(), alerts.clone()),
            ("PITBOSS_PUSHES_TOPIC".into(), pushes.clone()),
            ("PITBOSS_DEAD_LETTER_TOPIC".into(), dead),
        ],
    };
    let (events, arrival, want) = script(10);
    assert!(want.len() > 5, "{want:?}");
    // Players split over two partitions, as ingest keys them (tenant:player); each partition's
    // events keep their order.
    let partition_of = |e: &Event| (e.player_id.bytes().map(u32::from).sum::<u32>()) % 2;
    let mut offsets = [0i64; 2];
    let mut function = setup.spawn();
    for (b, chunk) in events.chunks(120).enumerate() {
        let recs: Vec<(String, u32, i64, Vec<u8>, i64)> = chunk
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let p = partition_of(e);
                offsets[p as usize] += 1;
                (
                    "events".to_owned(),
                    p,
                    offsets[p as usize],
                    pitboss_model::encode_proto(e),
                    // Bus time follows the script, so the function's canonical order (the two
                    // partitions merged by bus time) is the order one engine saw.
                    arrival + (b * 120 + i) as i64,
                )
            })
            .collect();
        let answer = setup
            .runtime
            .invoke(&format!("k{b}"), events::kafka(&recs))
            .await;
        assert_eq!(
            answer,
            serde_json::json!({"batchItemFailures": []}),
            "batch {b}"
        );
    }
    function.kill().unwrap();
    function.wait().unwrap();
    let got: BTreeSet<String> = published(&bus, &alerts, &pushes, want.len())
        .await
        .into_iter()
        .collect();
    assert_eq!(got, want);
}

/// The function's failures as the Runtime API contract asks: an init failure (no state table)
/// posted to `/runtime/init/error` naming the variable (the invoker saw `Runtime.ExitError`
/// only), and a payload that is no mapping's batch answered with a readable error type (it
/// was a Rust type name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_failures_and_unreadable_payloads_are_reported_as_the_runtime_api_asks() {
    let moto = pitboss_testkit::kinesis();
    let runtime = Runtime::default();
    let runtime_api = runtime.start().await;
    let without_table = Setup {
        runtime,
        runtime_api,
        env: vec![("PITBOSS_BUS".into(), "kinesis".into())],
    };
    let mut function = without_table.spawn();
    let reported = without_table
        .runtime
        .init_error(Duration::from_secs(20))
        .await
        .expect("the failure posted to /runtime/init/error");
    assert_eq!(reported["header"], "Runtime.InitError", "{reported}");
    assert!(
        reported["errorMessage"]
            .as_str()
            .is_some_and(|m| m.contains("PITBOSS_STATE_TABLE")),
        "{reported}"
    );
    assert!(!function.wait().unwrap().success());

    let table = state_table(&moto).await;
    let runtime = Runtime::default();
    let runtime_api = runtime.start().await;
    let setup = Setup {
        runtime,
        runtime_api,
        env: vec![
            ("PITBOSS_STATE_TABLE".into(), table),
            ("PITBOSS_DYNAMODB_ENDPOINT".into(), moto.clone()),
            ("PITBOSS_BUS".into(), "kinesis".into()),
            ("PITBOSS_KINESIS_ENDPOINT".into(), moto.clone()),
        ],
    };
    let mut function = setup.spawn();
    let answer = setup
        .runtime
        .invoke("not-a-batch", serde_json::json!({"foo": 1}))
        .await;
    function.kill().unwrap();
    function.wait().unwrap();
    assert_eq!(answer["errorType"], "Pitboss.InvalidEvent", "{answer}");
    assert!(
        answer["errorMessage"]
            .as_str()
            .is_some_and(|m| m.contains("not a Kinesis or Kafka event")),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_units_are_chunked_versioned_and_written_all_or_none() {
    use pitboss_antifraud::lambda::dynamo::DynamoUnits;
    use pitboss_antifraud::lambda::{StoreError, UnitStore, Write};
    let moto = pitboss_testkit::kinesis();
    let table = state_table(&moto).await;
    let store = DynamoUnits::new(dynamo(&moto).await, &table);
    let far = Timestamp::now().as_millis() / 1000 + 86_400;
    let big: Vec<u8> = (0..900_000u32).map(|i| (i % 251) as u8).collect();
    let write = |name: &str, expected: Option<u64>, value: Option<Vec<u8>>| Write {
        name: name.into(),
        expected,
        value,
        expires_at_s: far,
    };
    // A unit over the item limit, in three items.
    store
        .save(vec![write("w|big|1", None, Some(big.clone()))])
        .await
        .unwrap();
    let got = store
        .load(&["w|big|1".into(), "w|none".into()])
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got["w|big|1"].version, 1);
    assert!(got["w|big|1"].bytes == big, "chunks reassembled");
    // Written again as if it did not exist: refused.
    assert!(matches!(
        store
            .save(vec![write("w|big|1", None, Some(vec![1]))])
            .await,
        Err(StoreError::Conflict(1))
    ));
    // One stale version in a transaction: none of its writes is applied.
    let r = store
        .save(vec![
            write("w|big|1", Some(7), Some(vec![2])),
            write("w|other|1", None, Some(vec![3])),
        ])
        .await;
    assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
    let got = store
        .load(&["w|big|1".into(), "w|other|1".into()])
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "the other write was not applied");
    assert!(got["w|big|1"].bytes == big);
    // The right versions: both applied; then a delete.
    store
        .save(vec![
            write("w|big|1", Some(1), Some(vec![4, 5])),
            write("w|other|1", None, Some(vec![6])),
        ])
        .await
        .unwrap();
    let got = store
        .load(&["w|big|1".into(), "w|other|1".into()])
        .await
        .unwrap();
    assert_eq!(
        (got["w|big|1"].version, &got["w|big|1"].bytes[..]),
        (2, &[4u8, 5][..])
    );
    store
        .save(vec![write("w|other|1", Some(1), None)])
        .await
        .unwrap();
    let got = store.load(&["w|other|1".into()]).await.unwrap();
    assert!(got.is_empty());
    // 250 units in one save: three transactions.
    let many: Vec<Write> = (0..250)
        .map(|i| write(&format!("s|acme\u{1f}p{i}"), None, Some(vec![i as u8])))
        .collect();
    let names: Vec<String> = many.iter().map(|w| w.name.clone()).collect();
    store.save(many).await.unwrap();
    assert_eq!(store.load(&names).await.unwrap().len(), 250);
}
