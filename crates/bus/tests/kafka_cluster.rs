//! Kafka fault test on the 3-broker cluster (RF 3, min.insync.replicas 2) started by
//! `scripts/stack.sh start --cluster`: a broker is killed with SIGKILL in the middle of a
//! stream of publishes; publishing goes on (two in-sync replicas remain) and every record
//! acknowledged before and after the kill is consumed. The topic is created without a
//! replication factor of Pitboss's own: it takes the brokers' default (3), as on MSK.

#![allow(clippy::unwrap_used)]

mod contract;

use std::collections::BTreeSet;
use std::time::Duration;

use pitboss_bus::kafka::{KafkaBus, KafkaConfig};
use pitboss_bus::{Bus, BusError, ConsumerConfig, Delivery};

/// How many replicas each partition of `topic` has, from the brokers' metadata.
fn replicas(topic: &str) -> Vec<usize> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let client: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", pitboss_testkit::kafka_cluster())
        .create()
        .unwrap();
    let md = client
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    md.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.replicas().len())
        .collect()
}

fn broker_pid(node: u32) -> i32 {
    let dir =
        std::env::var("PITBOSS_TEST_KAFKA_CLUSTER_PIDS").expect("PITBOSS_TEST_KAFKA_CLUSTER_PIDS");
    std::fs::read_to_string(format!("{dir}/kafka-{node}.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_records_survive_losing_a_broker() {
    let mut config = KafkaConfig::new(pitboss_testkit::kafka_cluster());
    config.delivery_timeout = Duration::from_secs(60);
    let bus = KafkaBus::new(config).unwrap();
    let topic = pitboss_testkit::unique_name("fault");
    bus.create_topic(&topic, 6).await.unwrap();
    assert_eq!(
        replicas(&topic),
        vec![3; 6],
        "replicas per partition: the brokers' default.replication.factor"
    );

    let before = contract::records(50, 20, "before");
    contract::publish_all(&bus, &topic, before.clone(), 100).await;

    // Kill the broker of node 12 (one of the three; which one leads is irrelevant with RF 3).
    let pid = broker_pid(12);
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();

    // Keep publishing: with two in-sync replicas left, acks=all still succeeds (leaders that
    // were on the dead broker move; the producer retries internally within the timeout).
    let after = contract::records(50, 20, "after");
    let publisher = bus.publisher();
    for chunk in after.chunks(100) {
        let mut attempts = 0;
        loop {
            match publisher.publish(&topic, chunk.to_vec()).await {
                Ok(acks) => {
                    assert_eq!(acks.len(), chunk.len());
                    break;
                }
                Err(e @ BusError::Unavailable(_)) if attempts < 3 => {
                    attempts += 1;
                    eprintln!("publish during failover: {e}; retrying");
                }
                Err(e) => panic!("publish with one broker down: {e:?}"),
            }
        }
    }

    let mut consumer = bus
        .consumer(
            &pitboss_testkit::unique_name("g"),
            &topic,
            ConsumerConfig::default(),
        )
        .await
        .unwrap();
    let expected: BTreeSet<Vec<u8>> = before
        .iter()
        .chain(&after)
        .map(|r| r.value.clone())
        .collect();
    let mut seen = BTreeSet::new();
    let start = std::time::Instant::now();
    while !expected.is_subset(&seen) {
        assert!(
            start.elapsed() < contract::PATIENCE,
            "consumed {} of {}",
            seen.len(),
            expected.len()
        );
        if let Delivery::Records(rs) = consumer
            .poll(1000, Duration::from_millis(300))
            .await
            .unwrap()
        {
            seen.extend(rs.into_iter().map(|r| r.value));
        }
    }
    consumer.close().await.unwrap();
}
