//! The Kafka bus against a real Apache Kafka broker (started by scripts/stack.sh): the shared
//! contract suite, plus failures only a networked bus has.

#![allow(clippy::unwrap_used)]

mod contract;

use std::sync::Arc;
use std::time::{Duration, Instant};

use pitboss_bus::kafka::{KafkaBus, KafkaConfig};
use pitboss_bus::{Bus, BusError, OutRecord};

async fn make_bus() -> Arc<dyn Bus> {
    let mut config = KafkaConfig::new(pitboss_testkit::kafka());
    // An unknown topic fails fast instead of waiting for metadata for 30 s.
    config
        .extra
        .insert("topic.metadata.propagation.max.ms".into(), "2000".into());
    config.delivery_timeout = Duration::from_secs(10);
    Arc::new(KafkaBus::new(config).unwrap())
}

contract_suite!(make_bus);

/// With no broker reachable, publish fails within the delivery timeout; nothing is reported
/// as delivered.
#[tokio::test]
async fn publish_to_an_unreachable_broker_fails() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Nothing listens on `port` any more.
    let mut config = KafkaConfig::new(format!("127.0.0.1:{port}"));
    config.delivery_timeout = Duration::from_secs(2);
    let bus = KafkaBus::new(config).unwrap();
    let start = Instant::now();
    let err = bus
        .publisher()
        .publish("events", vec![OutRecord::new("t:p", "x")])
        .await
        .expect_err("no broker: must fail");
    assert!(matches!(err, BusError::Unavailable(_)), "{err:?}");
    assert!(err.is_retryable());
    assert!(start.elapsed() < Duration::from_secs(30));
}
