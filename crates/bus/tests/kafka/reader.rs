//! Ungrouped Kafka readers, beyond the contract: a time past the end starts at the end, where
//! partitions ended when the reader opened, argument checks, and that hundreds of readers
//! leave no group and no committed offsets in the broker.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use pitboss_bus::kafka::KafkaBus;
use pitboss_bus::{Bus, BusError, Partition, Position, ReadFrom, Reader};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use tokio::time::Instant;

use super::contract::{self, Member, PATIENCE};
use super::{
    kafka_config, make_bus, out_values, publish_sentinels, read_to_end, read_until, values, without,
};

/// A time with no record at or after it: the reader is caught up at once and reads what
/// comes next.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reader_from_a_time_past_the_end_starts_at_the_end() {
    let bus = make_bus().await;
    let topic = pitboss_testkit::unique_name("rtend");
    bus.create_topic(&topic, 3).await.unwrap();
    contract::publish_all(&*bus, &topic, contract::records(12, 5, "old"), 100).await;
    let mut reader = bus
        .reader_all(&topic, ReadFrom::Timestamp(super::now_ms() + 3_600_000))
        .await
        .unwrap();
    assert!(reader.caught_up(), "nothing at or after an hour ahead");
    let later = contract::records(3, 2, "later");
    contract::publish_all(&*bus, &topic, later.clone(), 100).await;
    let sentinels = publish_sentinels(&*bus, &topic, "rt").await;
    let got = without(&read_until(&mut *reader, &sentinels).await, &[&sentinels]);
    assert_eq!(values(&got), out_values(&later));
}

/// End positions are the newest records when the reader opened (None for an empty partition);
/// records published later do not move them, and caught_up turns true once they are read.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reader_knows_where_partitions_ended() {
    let bus = make_bus().await;
    let topic = pitboss_testkit::unique_name("rend");
    bus.create_topic(&topic, 2).await.unwrap();
    let recs = contract::records(40, 2, "end");
    let acks = bus.publisher().publish(&topic, recs.clone()).await.unwrap();
    let mut newest: BTreeMap<Partition, Option<Position>> = BTreeMap::new();
    for a in &acks {
        newest.insert(a.partition, Some(a.position.clone()));
    }
    assert_eq!(newest.len(), 2, "40 keys reach both partitions");
    let mut reader = bus.reader_all(&topic, ReadFrom::Earliest).await.unwrap();
    assert_eq!(reader.end_positions(), newest);
    assert!(!reader.caught_up());
    let after = contract::records(40, 2, "after");
    contract::publish_all(&*bus, &topic, after.clone(), 100).await;
    let got = read_to_end(&mut *reader).await;
    let got_values: BTreeSet<_> = got.iter().map(|r| r.value.clone()).collect();
    assert!(recs.iter().all(|r| got_values.contains(&r.value)));
    assert!(got.len() <= recs.len() + after.len());
    assert_eq!(reader.end_positions(), newest);

    let empty = pitboss_testkit::unique_name("rempty");
    bus.create_topic(&empty, 1).await.unwrap();
    let reader = bus.reader_all(&empty, ReadFrom::Earliest).await.unwrap();
    assert_eq!(reader.end_positions(), BTreeMap::from([(0, None)]));
    assert!(reader.caught_up());
}

/// Partitions must exist and be listed once, positions must be Kafka offsets, the topic must
/// exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_checks_its_arguments() {
    let bus = make_bus().await;
    let topic = pitboss_testkit::unique_name("rargs");
    bus.create_topic(&topic, 3).await.unwrap();
    let config_error = |r: Result<Box<dyn Reader>, BusError>| match r {
        Err(BusError::Config(text)) => text,
        other => panic!("expected a configuration error, got {other:?}"),
    };
    let text = config_error(bus.reader(&topic, vec![(3, ReadFrom::Earliest)]).await);
    assert!(text.contains("3 partitions"), "{text}");
    config_error(bus.reader(&topic, vec![]).await);
    config_error(
        bus.reader(&topic, vec![(1, ReadFrom::Earliest), (1, ReadFrom::Latest)])
            .await,
    );
    config_error(
        bus.reader(
            &topic,
            vec![(0, ReadFrom::After(Position::Sequence("49590".into())))],
        )
        .await,
    );
    let missing = pitboss_testkit::unique_name("missing");
    let err = bus
        .reader(&missing, vec![(0, ReadFrom::Earliest)])
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::UnknownTopic(_)), "{err:?}");
}

/// Group names the broker lists that start with `prefix` (a group with only committed
/// offsets is listed too).
fn groups_with_prefix(admin: &BaseConsumer, prefix: &str) -> BTreeSet<String> {
    admin
        .fetch_group_list(None, Duration::from_secs(10))
        .unwrap()
        .groups()
        .iter()
        .map(|g| g.name().to_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Readers leave nothing in the broker: after the contract's 200 dropped readers and 40 more
/// closed ones (closing waits until the librdkafka client is gone), the closed readers' group
/// ids have no committed offsets, and no group is listed under the readers' `group.id` prefix.
/// A group member under the same prefix that commits is listed: the check sees what it looks
/// for.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn short_lived_readers_leave_nothing_behind() {
    let prefix = pitboss_testkit::unique_name("rdr");
    let mut config = kafka_config();
    config.reader_group_prefix = prefix.clone();
    let bus = KafkaBus::new(config).unwrap();
    let topic = pitboss_testkit::unique_name("rleave");
    contract::many_short_lived_readers(Arc::new(bus.clone()), &topic, 200).await;

    assert_eq!(bus.partition_count(&topic).await.unwrap(), 2);
    let mut ids = Vec::new();
    for _ in 0..5 {
        let closed = futures::future::join_all((0..8).map(|_| async {
            let mut reader = bus
                .open_reader(
                    &topic,
                    vec![(0, ReadFrom::Earliest), (1, ReadFrom::Earliest)],
                )
                .await
                .unwrap();
            assert!(!read_to_end(&mut reader).await.is_empty());
            let id = reader.group_id().to_owned();
            reader.close().await.unwrap();
            id
        }))
        .await;
        ids.extend(closed);
    }
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 40);
    assert!(ids.iter().all(|id| id.starts_with(&prefix)));

    let mut c = rdkafka::ClientConfig::new();
    c.set("bootstrap.servers", pitboss_testkit::kafka());
    let admin: BaseConsumer = c.create().unwrap();
    // An offset fetch under a group id creates nothing.
    c.set("enable.auto.commit", "false");
    for id in &ids {
        let probe: BaseConsumer = c.clone().set("group.id", id).create().unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_range(&topic, 0, 1);
        let committed = probe
            .committed_offsets(tpl, Duration::from_secs(10))
            .unwrap();
        for e in committed.elements() {
            assert_eq!(e.offset(), rdkafka::Offset::Invalid, "{id}: {e:?}");
        }
    }

    // The control: a member under the prefix that commits is listed.
    let control = format!("{prefix}-control");
    let mut member = Member::join(&bus, &control, &topic).await;
    let start = Instant::now();
    while member.received.len() < 4 {
        assert!(start.elapsed() < PATIENCE, "control read nothing");
        member.step(Duration::from_millis(200)).await;
    }
    member.flush_and_commit().await;
    member.consumer.close().await.unwrap();
    let start = Instant::now();
    loop {
        let listed = groups_with_prefix(&admin, &prefix);
        if listed.contains(&control) {
            assert_eq!(listed, BTreeSet::from([control]), "readers left groups");
            break;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "the control group is never listed: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
