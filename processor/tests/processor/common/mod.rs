//! Shared by the processor's tests on real services: a Kafka topic holding `n` events, and
//! the processor settings they use.

#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use pitboss_bus::kafka::KafkaBus;
use pitboss_bus::{Bus, OutRecord};
use pitboss_processor::{BatchConfig, ProcessorConfig};

/// A fresh topic of 4 partitions (and its dead-letter topic) holding `event(0..n)`,
/// published 10,000 per acknowledged batch.
pub async fn published_topic(bus: &KafkaBus, n: u64, event: impl Fn(u64) -> OutRecord) -> String {
    let topic = pitboss_testkit::unique_name("events");
    bus.create_topic(&topic, 4).await.unwrap();
    bus.create_topic(&format!("{topic}_dead_letter"), 1)
        .await
        .unwrap();
    let publisher = bus.publisher();
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        publisher
            .publish(&topic, chunk.iter().map(|i| event(*i)).collect())
            .await
            .unwrap();
    }
    topic
}

/// The processor of `topic` in group `<topic>_processor`, batches of `max_rows` or 300 ms.
pub fn config(topic: &str, max_rows: usize) -> ProcessorConfig {
    ProcessorConfig {
        topic: topic.to_owned(),
        group: format!("{topic}_processor"),
        dead_letter_topic: format!("{topic}_dead_letter"),
        batch: BatchConfig {
            max_rows,
            max_age: Duration::from_millis(300),
            ..BatchConfig::default()
        },
        ..ProcessorConfig::default()
    }
}

/// A live-path message as its publisher puts it on the bus: keyed by its bus key, with the
/// `pitboss-type`, `pitboss-tenant`, `pitboss-event-time` and `pitboss-received-at` headers
/// (docs/alerts.md).
pub fn live_record<M: pitboss_model::live::LiveMessage>(m: &M) -> OutRecord {
    use pitboss_bus::header;
    let mut r = OutRecord::new(m.bus_key(), m.encode_proto())
        .with_header(header::TYPE, M::TYPE)
        .with_header(header::TENANT, m.tenant_id())
        .with_header(header::EVENT_TIME, m.event_time().as_millis().to_string());
    if let Some(at) = m.received_at() {
        r = r.with_header(header::RECEIVED_AT, at.as_millis().to_string());
    }
    r
}

/// Brings the database of `client` to version `through` by hand (each migration's statements
/// and its ledger row), as a processor of that version left it: where a later migration starts.
#[allow(dead_code)] // not every test binary starts from an older version
pub async fn migrated_through(
    client: &clickhouse::Client,
    layout: &pitboss_processor::schema::Layout,
    through: u32,
) {
    use pitboss_processor::schema;
    schema::applied(client, layout).await.unwrap(); // the ledger
    for m in schema::MIGRATIONS.iter().filter(|m| m.version <= through) {
        for sql in m.sql(layout) {
            client.query(&sql).execute().await.unwrap();
        }
        schema::record(client, m).await.unwrap();
    }
}
