//! The Lambda binary driven through a fake Lambda Runtime API (what AWS runs it against), with
//! real API Gateway HTTP API v2 and function-URL events, writing to the real Kafka broker of the
//! test stack (also over SASL_SSL with its options from Secrets Manager, moto, as on MSK): the
//! answers are the router's answers, and accepted events are on the topic.

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
    bus.create_topic(&format!("{topic}_overflow"), 3)
        .await
        .unwrap();
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

    // A REST API (payload v1) on its stage `prod`, and an HTTP API on a named stage (in its raw
    // path): the stage is not part of the route (both were a 404 with an empty body).
    let mut rest = fixture("apigw-rest-v1-post-events.json");
    rest["headers"]["Authorization"] = format!("Bearer {KEY}").into();
    rest["multiValueHeaders"]["Authorization"] = serde_json::json!([format!("Bearer {KEY}")]);
    rest["body"] = serde_json::to_string(&events("acme", 2)).unwrap().into();
    let answer = runtime.invoke("req-rest", rest.clone()).await;
    assert_eq!(answer["statusCode"], 200, "{answer}");
    // A stage named like the route's first segment.
    rest["requestContext"]["stage"] = "v1".into();
    rest["requestContext"]["path"] = "/v1/v1/events".into();
    rest["body"] = serde_json::to_string(&events("acme", 1)).unwrap().into();
    let answer = runtime.invoke("req-rest-v1", rest).await;
    assert_eq!(answer["statusCode"], 200, "{answer}");
    let mut staged = fixture("apigw-http-v2-post-events.json");
    staged["headers"]["authorization"] = format!("Bearer {KEY}").into();
    staged["rawPath"] = "/prod/v1/events".into();
    staged["requestContext"]["http"]["path"] = "/prod/v1/events".into();
    staged["requestContext"]["stage"] = "prod".into();
    staged["body"] = serde_json::to_string(&events("acme", 1)).unwrap().into();
    let answer = runtime.invoke("req-staged", staged).await;
    assert_eq!(answer["statusCode"], 200, "{answer}");

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
    while seen < 9 && start.elapsed() < Duration::from_secs(60) {
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
    assert_eq!(seen, 9, "every accepted event is on the topic");
    consumer.close().await.unwrap();
    function.kill().unwrap();
    function.wait().unwrap();
}

/// A Secrets Manager secret in moto holding `value`, named `name`; its ARN.
async fn put_secret(endpoint: &str, name: &str, value: &str) -> String {
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
        .name(name)
        .secret_string(value)
        .send()
        .await
        .unwrap()
        .arn()
        .unwrap()
        .to_owned()
}

/// The function as on MSK: it publishes over SASL/SCRAM and TLS with the options (the password
/// among them) read at start from Secrets Manager, in the console's JSON form, none in its
/// environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_options_from_secrets_manager_take_events_over_sasl_ssl() {
    let moto = pitboss_testkit::kinesis();
    let (sasl_ssl, password, ca) = pitboss_testkit::kafka_sasl_ssl();
    let bootstrap = pitboss_testkit::kafka();
    let topic = pitboss_testkit::unique_name("lambda_secret_events");
    let bus = KafkaBus::new(KafkaConfig::new(&bootstrap)).unwrap();
    bus.create_topic(&topic, 1).await.unwrap();
    bus.create_topic(&format!("{topic}_overflow"), 1)
        .await
        .unwrap();
    let secret = serde_json::json!({
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "pitboss",
        "sasl.password": password,
        "ssl.ca.location": ca,
    });
    let arn = put_secret(
        &moto,
        &pitboss_testkit::unique_name("kafka-options"),
        &secret.to_string(),
    )
    .await;
    let config = format!(
        "topic = \"{topic}\"\n[[tenants]]\nid = \"acme\"\napi_key_sha256 = [\"{}\"]\n",
        hash_key(KEY)
    );
    let runtime = Runtime::default();
    let addr = runtime.start().await;
    let mut function = std::process::Command::new(env!("CARGO_BIN_EXE_pitboss-ingest-lambda"))
        .env("AWS_LAMBDA_RUNTIME_API", &addr)
        .env("AWS_LAMBDA_FUNCTION_NAME", "pitboss-ingest")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_ENDPOINT_URL_SECRETS_MANAGER", &moto)
        .env("PITBOSS_CONFIG_TOML", &config)
        .env("PITBOSS_BUS", "kafka")
        .env("PITBOSS_KAFKA_BOOTSTRAP", &sasl_ssl)
        .env("PITBOSS_KAFKA_OPTIONS_SECRET", &arn)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut event = fixture("apigw-http-v2-post-events.json");
    event["headers"]["authorization"] = format!("Bearer {KEY}").into();
    event["body"] = serde_json::to_string(&events("acme", 2)).unwrap().into();
    let answer = runtime.invoke("req-1", event).await;
    function.kill().unwrap();
    function.wait().unwrap();
    assert_eq!(answer["statusCode"], 200, "{answer}");
    let mut reader = bus
        .reader_all(&topic, pitboss_bus::ReadFrom::Earliest)
        .await
        .unwrap();
    let mut seen = 0;
    let start = std::time::Instant::now();
    while seen < 2 && start.elapsed() < Duration::from_secs(60) {
        seen += reader
            .poll(100, Duration::from_millis(300))
            .await
            .unwrap()
            .len();
    }
    assert_eq!(seen, 2, "both events reached the topic over SASL_SSL");
}

/// A secret that cannot be read, or holds a malformed option, stops the cold start with a
/// message naming the variable and the secret; no value of the secret is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_or_malformed_secret_fails_at_init_naming_it() {
    let moto = pitboss_testkit::kinesis();
    let malformed = put_secret(
        &moto,
        &pitboss_testkit::unique_name("kafka-options"),
        "sasl.username=pitboss,hunter2-not-an-option",
    )
    .await;
    let missing = pitboss_testkit::unique_name("no-such-secret");
    for (secret, want) in [
        (malformed.as_str(), "item 2 is not key=value"),
        (missing.as_str(), "cannot read secret"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pitboss-ingest-lambda"))
            .env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_ENDPOINT_URL_SECRETS_MANAGER", &moto)
            .env(
                "PITBOSS_CONFIG_TOML",
                format!(
                    "topic = \"events\"\n[[tenants]]\nid = \"acme\"\napi_key_sha256 = [\"{}\"]\n",
                    hash_key(KEY)
                ),
            )
            .env("PITBOSS_BUS", "kafka")
            .env("PITBOSS_KAFKA_BOOTSTRAP", "127.0.0.1:9")
            .env("PITBOSS_KAFKA_OPTIONS_SECRET", secret)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("PITBOSS_KAFKA_OPTIONS_SECRET"), "{stderr}");
        assert!(stderr.contains(secret), "{stderr}");
        assert!(stderr.contains(want), "{stderr}");
        if secret == missing {
            assert!(stderr.contains("ResourceNotFoundException"), "{stderr}");
        }
        assert!(!stderr.contains("hunter2"), "{stderr}");
    }
}

/// A function without its config fails at init, naming what is missing in its log and to the
/// Runtime API's `/init/error` (so the invoker sees it, not `Runtime.ExitError`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_without_config_fails_at_init_with_a_clear_message() {
    let runtime = pitboss_testkit::lambda::Runtime::default();
    let api = runtime.start().await;
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_pitboss-ingest-lambda"))
            .env_remove("PITBOSS_CONFIG_TOML")
            .env_remove("PITBOSS_CONFIG")
            .env("AWS_LAMBDA_RUNTIME_API", api)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("PITBOSS_CONFIG_TOML"), "{stderr}");
    let reported = runtime
        .init_error(Duration::from_secs(5))
        .await
        .expect("the failure posted to /runtime/init/error");
    assert_eq!(reported["header"], "Runtime.InitError", "{reported}");
    assert_eq!(reported["errorType"], "Pitboss.InitError", "{reported}");
    assert!(
        reported["errorMessage"]
            .as_str()
            .is_some_and(|m| m.contains("PITBOSS_CONFIG_TOML")),
        "{reported}"
    );
}

/// A function whose overflow topic does not exist, or is not co-partitioned with the events
/// topic, fails at init naming it, as the standalone server refuses to start (it served, and
/// a hot player's request wrote part of its events and then failed: a 500 after a write).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_mispartitioned_overflow_topic_fails_at_init_naming_it() {
    let bootstrap = pitboss_testkit::kafka();
    let topic = pitboss_testkit::unique_name("lambda_no_overflow");
    let bus = KafkaBus::new(KafkaConfig::new(&bootstrap)).unwrap();
    bus.create_topic(&topic, 3).await.unwrap();
    let init = |config: String| {
        std::process::Command::new(env!("CARGO_BIN_EXE_pitboss-ingest-lambda"))
            .env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9")
            .env("PITBOSS_CONFIG_TOML", config)
            .env("PITBOSS_BUS", "kafka")
            .env("PITBOSS_KAFKA_BOOTSTRAP", &bootstrap)
            .output()
            .unwrap()
    };
    let config = |overflow: &str| {
        format!(
            "topic = \"{topic}\"\noverflow_topic = \"{overflow}\"\n[[tenants]]\nid = \"acme\"\napi_key_sha256 = [\"{}\"]\n",
            hash_key(KEY)
        )
    };
    let missing = format!("{topic}_missing_overflow");
    let out = init(config(&missing));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains(&format!(
                "overflow_topic {missing:?}: no such topic on the bus"
            )),
        "{stderr}"
    );
    let narrow = format!("{topic}_narrow_overflow");
    bus.create_topic(&narrow, 1).await.unwrap();
    let out = init(config(&narrow));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains(&format!(
                "topic {narrow:?} has 1 partitions and {topic:?} has 3"
            )),
        "{stderr}"
    );
}
