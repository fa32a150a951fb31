//! Kafka over TLS with SCRAM-SHA-512 (SASL_SSL), as MSK serves its clients: the broker's own
//! listener (scripts/stack.sh), a CA of its own, a user with a password. Records go through
//! and come back; a wrong password and an unknown CA are refused, and the readiness check
//! names the reason.

use std::time::{Duration, Instant};

use pitboss_bus::kafka::{KafkaBus, KafkaConfig};
use pitboss_bus::{Bus, BusError, OutRecord, ReadFrom};

use super::contract::PATIENCE;

fn sasl_ssl_config(password: &str, ca: Option<&str>) -> KafkaConfig {
    let (addr, _, _) = pitboss_testkit::kafka_sasl_ssl();
    let mut config = KafkaConfig::new(addr);
    for (k, v) in [
        ("security.protocol", "SASL_SSL"),
        ("sasl.mechanisms", "SCRAM-SHA-512"),
        ("sasl.username", "pitboss"),
        ("sasl.password", password),
        ("topic.metadata.propagation.max.ms", "2000"),
    ] {
        config.extra.insert(k.into(), v.into());
    }
    if let Some(ca) = ca {
        config.extra.insert("ssl.ca.location".into(), ca.into());
    }
    config.delivery_timeout = Duration::from_secs(5);
    config
}

/// Topic made, records published and read back, all through the SASL_SSL listener (the
/// client is built with TLS: without it librdkafka refuses `security.protocol=SASL_SSL`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_go_through_a_sasl_ssl_listener() {
    let (_, password, ca) = pitboss_testkit::kafka_sasl_ssl();
    let bus = KafkaBus::new(sasl_ssl_config(&password, Some(&ca))).unwrap();
    bus.publisher()
        .check()
        .await
        .expect("metadata over SASL_SSL");
    let topic = pitboss_testkit::unique_name("tls");
    bus.create_topic(&topic, 2).await.unwrap();
    let sent: Vec<OutRecord> = (0..20)
        .map(|i| OutRecord::new(format!("t:p{i}"), format!("tls-{i}")))
        .collect();
    let acks = bus.publisher().publish(&topic, sent.clone()).await.unwrap();
    assert_eq!(acks.len(), 20);
    let mut reader = bus.reader_all(&topic, ReadFrom::Earliest).await.unwrap();
    let mut got = Vec::new();
    let start = Instant::now();
    while got.len() < sent.len() {
        assert!(start.elapsed() < PATIENCE, "read {} of 20", got.len());
        for r in reader.poll(100, Duration::from_millis(200)).await.unwrap() {
            got.push(r.value);
        }
    }
    got.sort();
    let mut want: Vec<Vec<u8>> = sent.into_iter().map(|r| r.value).collect();
    want.sort();
    assert_eq!(got, want);
}

/// A wrong password: the broker refuses the login, and the error says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_refused_as_an_authentication_failure() {
    let (_, _, ca) = pitboss_testkit::kafka_sasl_ssl();
    let bus = KafkaBus::new(sasl_ssl_config("not-the-password", Some(&ca))).unwrap();
    let err = bus
        .publisher()
        .publish("events", vec![OutRecord::new("t:p", "x")])
        .await
        .expect_err("a wrong password must not publish");
    assert!(matches!(err, BusError::Unavailable(_)), "{err:?}");
    assert!(
        !err.to_string().contains("127.0.0.1"),
        "a failed publish (whose text reaches ingest's clients) names no broker: {err}"
    );
    // The readiness check (at start, /readyz) says why.
    let err = bus.publisher().check().await.expect_err("not ready");
    assert!(
        err.to_string().contains("Authentication failed"),
        "the reason is named: {err}"
    );
}

/// No `ssl.ca.location`: the system's CA bundle is looked for (`probe`), and a broker whose
/// certificate a CA outside it signed is refused — the certificate is checked, never skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_no_trusted_ca_signed_is_refused() {
    let (_, password, _) = pitboss_testkit::kafka_sasl_ssl();
    let bus = KafkaBus::new(sasl_ssl_config(&password, None)).unwrap();
    let err = bus
        .publisher()
        .publish("events", vec![OutRecord::new("t:p", "x")])
        .await
        .expect_err("an unknown CA must not publish");
    assert!(matches!(err, BusError::Unavailable(_)), "{err:?}");
    let err = bus.publisher().check().await.expect_err("not ready");
    assert!(
        err.to_string().contains("certificate verify failed"),
        "the reason is named: {err}"
    );
}
