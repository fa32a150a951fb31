//! Ungrouped Kafka readers: starts (time, position, latest), where partitions ended when the
//! reader opened, argument checks, and that hundreds of them leave no group and no committed
//! offsets in the broker.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use pitboss_bus::kafka::KafkaBus;
use pitboss_bus::{Bus, BusError, ConsumerConfig, Delivery, Partition, Position, ReadFrom, Reader};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use tokio::time::Instant;

use super::contract::{self, PATIENCE};
use super::{
    kafka_config, make_bus, out_values, publish_sentinels, read_to_end, read_until, time_boundary,
    values, without,
};

/// From a time: exactly the records stored at or after it, then whatever comes next; a time
/// past the end starts at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reader_from_a_timestamp_gets_exactly_the_later_records() {
    let bus = make_bus().await;
    let topic = pitboss_testkit::unique_name("rtime");
    bus.create_topic(&topic, 3).await.unwrap();
    contract::publish_all(&*bus, &topic, contract::records(12, 5, "old"), 100).await;
    let t = time_boundary().await;
    let new = contract::records(12, 5, "new");
    contract::publish_all(&*bus, &topic, new.clone(), 100).await;

    let mut reader = bus
        .reader_all(&topic, ReadFrom::Timestamp(t))
        .await
        .unwrap();
    assert_eq!(reader.partitions(), vec![0, 1, 2]);
    let got = read_to_end(&mut *reader).await;
    assert_eq!(values(&got), out_values(&new), "caught up: exactly the new");
    assert!(got.iter().all(|r| r.timestamp_ms >= t));
    // Nothing else hides between them and what comes next.
    let sentinels = publish_sentinels(&*bus, &topic, "rt").await;
    let more = read_until(&mut *reader, &sentinels).await;
    assert_eq!(without(&more, &[&sentinels]), vec![]);

    let mut ahead = bus
        .reader_all(&topic, ReadFrom::Timestamp(t + 3_600_000))
        .await
        .unwrap();
    assert!(ahead.caught_up(), "nothing at or after an hour ahead");
    let later = contract::records(3, 2, "later");
    contract::publish_all(&*bus, &topic, later.clone(), 100).await;
    let sentinels = publish_sentinels(&*bus, &topic, "rt2").await;
    let got = without(&read_until(&mut *ahead, &sentinels).await, &[&sentinels]);
    assert_eq!(values(&got), out_values(&later));
}

/// After a position: exactly the records that follow it in its partition; At includes it;
/// Latest reads only what is published after opening.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reader_after_a_position_resumes_exactly() {
    let bus = make_bus().await;
    let topic = pitboss_testkit::unique_name("rafter");
    bus.create_topic(&topic, 2).await.unwrap();
    contract::publish_all(&*bus, &topic, contract::records(10, 10, "p"), 100).await;

    let mut all = bus.reader_all(&topic, ReadFrom::Earliest).await.unwrap();
    let everything = read_to_end(&mut *all).await;
    drop(all);
    let mut by_partition: BTreeMap<Partition, Vec<_>> = BTreeMap::new();
    for r in &everything {
        by_partition.entry(r.partition).or_default().push(r.clone());
    }
    assert_eq!(by_partition.len(), 2);
    // Resume each partition after its 7th record.
    let cut: BTreeMap<Partition, Position> = by_partition
        .iter()
        .map(|(p, rs)| (*p, rs[6].position.clone()))
        .collect();
    let expected: Vec<_> = by_partition
        .values()
        .flat_map(|rs| rs[7..].iter().cloned())
        .collect();

    let mut after = bus
        .reader(
            &topic,
            cut.iter()
                .map(|(p, pos)| (*p, ReadFrom::After(pos.clone())))
                .collect(),
        )
        .await
        .unwrap();
    let got = read_to_end(&mut *after).await;
    assert_eq!(values(&got), values(&expected));
    for (p, rs) in &by_partition {
        let mine: Vec<_> = got.iter().filter(|r| r.partition == *p).collect();
        assert_eq!(
            mine.first().map(|r| &r.position),
            rs.get(7).map(|r| &r.position),
            "partition {p} resumes right after the cut, in order"
        );
    }

    let (p, pos) = cut.iter().next().unwrap();
    let mut at = bus
        .reader(&topic, vec![(*p, ReadFrom::At(pos.clone()))])
        .await
        .unwrap();
    let got = read_to_end(&mut *at).await;
    assert_eq!(
        got.first().map(|r| &r.position),
        Some(pos),
        "At includes it"
    );
    assert_eq!(got.len(), by_partition[p].len() - 6);

    let mut latest = bus.reader_all(&topic, ReadFrom::Latest).await.unwrap();
    assert!(latest.caught_up());
    let sentinels = publish_sentinels(&*bus, &topic, "ra").await;
    let got = read_until(&mut *latest, &sentinels).await;
    assert_eq!(values(&got), sentinels.into_iter().collect::<Vec<_>>());
}

/// End positions are the newest records when the reader opened (None for an empty partition);
/// caught_up turns true once they are read, whatever comes after.
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
    // Records published after opening do not move the end.
    let after = contract::records(40, 2, "after");
    contract::publish_all(&*bus, &topic, after.clone(), 100).await;
    let got = read_to_end(&mut *reader).await;
    let got_values: BTreeSet<_> = got.iter().map(|r| r.value.clone()).collect();
    assert!(recs.iter().all(|r| got_values.contains(&r.value)));
    assert!(got.len() <= recs.len() + after.len());
    assert_eq!(reader.end_positions(), newest);

    // An empty partition is caught up at once, with no end.
    let empty = pitboss_testkit::unique_name("rempty");
    bus.create_topic(&empty, 1).await.unwrap();
    let reader = bus.reader_all(&empty, ReadFrom::Earliest).await.unwrap();
    assert_eq!(reader.end_positions(), BTreeMap::from([(0, None)]));
    assert!(reader.caught_up());
}

/// Partitions must exist, be listed once, and positions must be Kafka offsets.
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
    assert!(text.contains('3'), "{text}");
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

/// Group names the broker knows that start with `prefix`.
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

/// 200 short-lived readers leave nothing in the broker: no consumer group is listed under
/// their `group.id` prefix, and their group ids have no committed offsets. A group member under
/// the same prefix that commits does show up, so the check can see what it looks for.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_leave_no_group_and_no_offsets() {
    let prefix = pitboss_testkit::unique_name("rdr");
    let mut config = kafka_config();
    config.reader_group_prefix = prefix.clone();
    let bus = KafkaBus::new(config).unwrap();
    let topic = pitboss_testkit::unique_name("rleave");
    bus.create_topic(&topic, 2).await.unwrap();
    let recs = contract::records(10, 3, "l");
    contract::publish_all(&bus, &topic, recs.clone(), 100).await;

    let mut ids = Vec::new();
    let started = Instant::now();
    for wave in 0..25 {
        let opened = futures::future::join_all((0..8).map(|_| async {
            let mut reader = bus
                .open_reader(
                    &topic,
                    vec![(0, ReadFrom::Earliest), (1, ReadFrom::Earliest)],
                )
                .await
                .unwrap();
            let got = read_to_end(&mut reader).await;
            assert_eq!(got.len(), recs.len());
            let id = reader.group_id().to_owned();
            reader.close().await.unwrap();
            id
        }))
        .await;
        ids.extend(opened);
        assert!(started.elapsed() < 3 * PATIENCE, "wave {wave}: too slow");
    }
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 200);
    assert!(ids.iter().all(|id| id.starts_with(&prefix)));

    let mut c = rdkafka::ClientConfig::new();
    c.set("bootstrap.servers", pitboss_testkit::kafka());
    let admin: BaseConsumer = c.create().unwrap();
    // No committed offsets under any reader's group id (an offset fetch creates nothing).
    for id in ids.iter().step_by(20) {
        c.set("group.id", id).set("enable.auto.commit", "false");
        let probe: BaseConsumer = c.create().unwrap();
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
    let mut member = bus
        .consumer(&control, &topic, ConsumerConfig::default())
        .await
        .unwrap();
    let start = Instant::now();
    let mut stored = 0;
    while stored < recs.len() {
        assert!(start.elapsed() < PATIENCE);
        if let Delivery::Records(rs) = member.poll(100, Duration::from_millis(200)).await.unwrap() {
            for r in &rs {
                member.store(&r.topic, r.partition, &r.position).unwrap();
            }
            stored += rs.len();
        }
    }
    member.commit().await.unwrap();
    member.close().await.unwrap();
    let start = Instant::now();
    loop {
        let listed = groups_with_prefix(&admin, &prefix);
        if listed.contains(&control) {
            assert_eq!(
                listed,
                BTreeSet::from([control]),
                "readers left groups behind"
            );
            break;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "the control group is never listed: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
