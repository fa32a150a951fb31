//! The Lambda binary driven through a fake Lambda Runtime API (what AWS runs it against), with
//! real API Gateway HTTP API v2 and function-URL events, writing to the real Kafka broker of the
//! test stack: the answers are the router's answers, and accepted events are on the topic.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::time::Duration;

use base64::Engine as _;
use pitboss_bus::kafka::{KafkaBus, KafkaConfig};
use pitboss_bus::{Bus, ConsumerConfig, Delivery};
use pitboss_ingest::auth::hash_key;
use pitboss_testkit::lambda::Runtime;

const KEY: &str = "pk_live_lambda_9d8c7b6a5f4e";

fn fixture(name: &str) -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn events(tenant: &str, n: usize) -> Vec<serde_json::Value> {
    let now = pitboss_model::Timestamp::now().to_rfc3339().unwrap();
    (0..n)
        .map(|i| serde_json::json!({
            "event_id": uuid::Uuid::now_v7().to_string(), "tenant_id": tenant, "player_id": format!("p{i}"),
            "type": "bet_placed", "occurred_at": now,
            "payload": {"bet_id": format!("b{i}"), "game_id": "blackjack", "stake": {"amount_minor": 500, "currency": "EUR"}}
        }))
        .collect()
}

fn spawn_function(runtime_api: &str, config: &str, bootstrap: &str) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_pitboss-ingest-lambda"))
        .env("AWS_LAMBDA_RUNTIME_API", runtime_api)
        .env("AWS_LAMBDA_FUNCTION_NAME", "pitboss-ingest")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env(
            "AWS_LAMBDA_LOG_STREAM_NAME",
            "2026/11/28/[$LATEST]0123456789abcdef",
        )
        .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/pitboss-ingest")
        .env("PITBOSS_CONFIG_TOML", config)
        .env("PITBOSS_BUS", "kafka")
        .env("PITBOSS_KAFKA_BOOTSTRAP", bootstrap)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_gateway_and_function_url_events_reach_kafka() {
    let bootstrap = pitboss_testkit::kafka();
    let topic = pitboss_testkit::unique_name("lambda_events");
    let bus = KafkaBus::new(KafkaConfig::new(&bootstrap)).unwrap();
    bus.create_topic(&topic, 3).await.unwrap();
    let config = format!(
        "topic = \"{topic}\"\n[[tenants]]\nid = \"acme\"\napi_key_sha256 = [\"{}\"]\n",
        hash_key(KEY)
    );
    let runtime = Runtime::default();
    let addr = runtime.start().await;
    let mut function = spawn_function(&addr, &config, &bootstrap);

    // API Gateway HTTP API (payload v2), JSON body.
    let mut event = fixture("apigw-http-v2-post-events.json");
    event["headers"]["authorization"] = format!("Bearer {KEY}").into();
    event["body"] = serde_json::to_string(&events("acme", 3)).unwrap().into();
    let answer = runtime.invoke("req-1", event.clone()).await;
    assert_eq!(answer["statusCode"], 200, "{answer}");
    let body: serde_json::Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["accepted"], 3, "{body}");

    // The same event without the key: the router's 401, through Lambda.
    event["headers"]
        .as_object_mut()
        .unwrap()
        .remove("authorization");
    let answer = runtime.invoke("req-2", event).await;
    assert_eq!(answer["statusCode"], 401, "{answer}");

    // A function URL with a gzip-compressed NDJSON body (base64, as Lambda delivers binary).
    let ndjson: String = events("acme", 2).iter().map(|e| format!("{e}\n")).collect();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(ndjson.as_bytes()).unwrap();
    let mut event = fixture("function-url-post-events-gzip.json");
    event["headers"]["x-api-key"] = KEY.into();
    event["body"] = base64::engine::general_purpose::STANDARD
        .encode(gz.finish().unwrap())
        .into();
    let answer = runtime.invoke("req-3", event).await;
    assert_eq!(answer["statusCode"], 200, "{answer}");

    let mut consumer = bus
        .consumer(
            &pitboss_testkit::unique_name("g"),
            &topic,
            ConsumerConfig::default(),
        )
        .await
        .unwrap();
    let mut seen = 0;
    let start = std::time::Instant::now();
    while seen < 5 && start.elapsed() < Duration::from_secs(60) {
        if let Delivery::Records(rs) = consumer
            .poll(100, Duration::from_millis(300))
            .await
            .unwrap()
        {
            for r in &rs {
                let e = pitboss_model::decode_proto(&r.value).unwrap();
                assert_eq!(e.tenant_id, "acme");
                assert!(e.received_at.is_some());
            }
            seen += rs.len();
        }
    }
    assert_eq!(seen, 5, "every accepted event is on the topic");
    consumer.close().await.unwrap();
    function.kill().unwrap();
    function.wait().unwrap();
}

#[test]
fn a_function_without_config_fails_at_init_with_a_clear_message() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pitboss-ingest-lambda"))
        .env_remove("PITBOSS_CONFIG_TOML")
        .env_remove("PITBOSS_CONFIG")
        .env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("PITBOSS_CONFIG_TOML"), "{stderr}");
}
