#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use pitboss_bus::memory::MemoryPublisher;

use super::*;
use crate::stream::shipped_sources;

/// Units in memory, with DynamoDB's conditional semantics; `steal` bumps the version of the
/// first unit loaded that many times, as another invocation writing it would.
#[derive(Default)]
struct MemoryUnits {
    units: Mutex<HashMap<String, Stored>>,
    steal: AtomicUsize,
    down: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl UnitStore for MemoryUnits {
    async fn load(&self, names: &[String]) -> Result<HashMap<String, Stored>, StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("connection refused".into()));
        }
        let mut units = self.units.lock().unwrap();
        let out: HashMap<String, Stored> = names
            .iter()
            .filter_map(|n| units.get(n).map(|s| (n.clone(), s.clone())))
            .collect();
        if self.steal.load(Ordering::SeqCst) > 0
            && let Some(n) = names.iter().find(|n| units.contains_key(*n))
        {
            self.steal.fetch_sub(1, Ordering::SeqCst);
            if let Some(s) = units.get_mut(n) {
                s.version += 1;
            }
        }
        Ok(out)
    }

    async fn save(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let mut units = self.units.lock().unwrap();
        let mut conflicts = 0;
        for w in writes {
            if units.get(&w.name).map(|s| s.version) != w.expected {
                conflicts += 1;
                continue;
            }
            match w.value {
                Some(bytes) => {
                    let version = w.expected.map_or(1, |v| v + 1);
                    units.insert(w.name, Stored { version, bytes });
                }
                None => {
                    units.remove(&w.name);
                }
            }
        }
        if conflicts > 0 {
            return Err(StoreError::Conflict(conflicts));
        }
        Ok(())
    }
}

const T0: i64 = 1_795_867_200_000;

fn shipped() -> RuleSet {
    RuleSet::from_sources(&shipped_sources()).unwrap()
}

fn scripted() -> Vec<pitboss_model::Event> {
    let parts = crate::scenario::script("acme", T0, 10, 1);
    (0..60)
        .flat_map(|i| parts.iter().filter_map(move |p| p.events.get(i)))
        .map(|e| pitboss_model::decode_event(e.to_string().as_bytes()).unwrap())
        .collect()
}

fn function(store: Arc<MemoryUnits>, bus: &MemoryPublisher) -> Function {
    for t in ["alerts", "pushes", "antifraud_dead_letter"] {
        bus.create_topic(t, 4);
    }
    Function {
        set: shipped(),
        store,
        publisher: bus.publisher(),
        topics: Topics::default(),
    }
}

fn ids(bus: &MemoryPublisher) -> Vec<String> {
    use pitboss_model::live::{Alert, LiveMessage, Push};
    let mut v: Vec<String> = bus
        .records("alerts")
        .iter()
        .map(|r| Alert::decode_proto(&r.value).unwrap().alert_id)
        .collect();
    v.extend(
        bus.records("pushes")
            .iter()
            .map(|r| Push::decode_proto(&r.value).unwrap().push_id),
    );
    v.sort();
    v.dedup();
    v
}

fn expected(events: &[pitboss_model::Event]) -> Vec<String> {
    let mut engine = Engine::new(shipped());
    let mut out = Output::default();
    for e in events {
        engine
            .process(e, Timestamp::from_millis(T0), &mut out)
            .unwrap();
    }
    let mut v: Vec<String> = out.alerts.iter().map(|a| a.alert_id.clone()).collect();
    v.extend(out.pushes.iter().map(|p| p.push_id.clone()));
    v.sort();
    v
}

fn kinesis_batches(events: &[pitboss_model::Event], size: usize) -> Vec<Value> {
    events
        .chunks(size)
        .enumerate()
        .map(|(b, chunk)| {
            let recs: Vec<(Vec<u8>, String, i64)> = chunk
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    (
                        pitboss_model::encode_proto(e),
                        format!("{:056}", b * 1000 + i + 1),
                        T0,
                    )
                })
                .collect();
            events::kinesis("events", 0, &recs)
        })
        .collect()
}

#[tokio::test]
async fn batches_with_state_in_the_store_raise_what_one_engine_raises() {
    let events = scripted();
    let want = expected(&events);
    assert!(want.len() > 5, "{want:?}");
    let store = Arc::new(MemoryUnits::default());
    let bus = MemoryPublisher::new();
    let f = function(store.clone(), &bus);
    let batches = kinesis_batches(&events, 25);
    for (i, b) in batches.iter().enumerate() {
        let inv = parse_event(b.clone()).unwrap();
        let stats = f.handle(inv.records.clone()).await.unwrap();
        assert_eq!(stats.attempts, 1);
        if i == 3 {
            // Delivered again (a retry after a crash): the same ids, nothing new.
            let before = ids(&bus);
            f.handle(inv.records).await.unwrap();
            assert_eq!(ids(&bus), before);
        }
    }
    assert_eq!(ids(&bus), want);
    assert!(!store.units.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_unit_changed_by_another_invocation_makes_the_batch_evaluate_again() {
    let events = scripted();
    let want = expected(&events);
    let store = Arc::new(MemoryUnits::default());
    let bus = MemoryPublisher::new();
    let f = function(store.clone(), &bus);
    let mut retried = 0;
    for (i, b) in kinesis_batches(&events, 25).into_iter().enumerate() {
        if i == 2 {
            store.steal.store(1, Ordering::SeqCst);
        }
        let stats = f.handle(parse_event(b).unwrap().records).await.unwrap();
        if stats.attempts > 1 {
            retried += 1;
        }
    }
    assert_eq!(retried, 1);
    assert_eq!(ids(&bus), want);
    // A store that keeps changing: the batch fails after ATTEMPTS evaluations.
    store.steal.store(100, Ordering::SeqCst);
    let b = kinesis_batches(&events, 25).remove(0);
    assert!(matches!(
        f.handle(parse_event(b).unwrap().records).await,
        Err(BatchError::Contended)
    ));
    store.steal.store(0, Ordering::SeqCst);
    store.down.store(true, Ordering::SeqCst);
    let b = kinesis_batches(&events, 25).remove(0);
    assert!(matches!(
        f.handle(parse_event(b).unwrap().records).await,
        Err(BatchError::Store(StoreError::Unavailable(_)))
    ));
}

#[tokio::test]
async fn unreadable_records_go_to_the_dead_letter_topic_and_the_rest_flows() {
    let events = scripted();
    let store = Arc::new(MemoryUnits::default());
    let bus = MemoryPublisher::new();
    let f = function(store, &bus);
    let mut no_id = events[0].clone();
    no_id.event_id = Some("not-a-uuid".into());
    let recs = vec![
        (b"\xff\xfe garbage".to_vec(), format!("{:056}", 1), T0),
        (
            pitboss_model::encode_proto(&no_id),
            format!("{:056}", 2),
            T0,
        ),
        (
            pitboss_model::encode_proto(&events[1]),
            format!("{:056}", 3),
            T0,
        ),
    ];
    let inv = parse_event(events::kinesis("events", 4, &recs)).unwrap();
    let stats = f.handle(inv.records).await.unwrap();
    assert_eq!((stats.events, stats.dead_lettered), (1, 2));
    let dead = bus.records("antifraud_dead_letter");
    assert_eq!(dead.len(), 2);
    assert!(dead[0].key.starts_with("events:4:"), "{}", dead[0].key);
    assert!(dead.iter().any(|d| d.key.contains("undecodable")));
    assert!(dead.iter().any(|d| d.key.contains("UUID")));
}

#[test]
fn kinesis_and_kafka_events_parse_and_failures_name_each_partitions_first_record() {
    let e = events::kinesis(
        "events",
        3,
        &[
            (b"a".to_vec(), "49".repeat(20), T0),
            (b"b".to_vec(), "50".repeat(20), T0 + 5),
        ],
    );
    let inv = parse_event(e).unwrap();
    assert_eq!(inv.records.len(), 2);
    assert_eq!(
        (&*inv.records[0].topic, inv.records[0].partition),
        ("events", 3)
    );
    assert_eq!(inv.records[1].value, b"b");
    assert_eq!(inv.records[1].timestamp_ms, T0 + 5);
    assert_eq!(response(&inv, false), json!({"batchItemFailures": []}));
    assert_eq!(
        response(&inv, true),
        json!({"batchItemFailures": [{"itemIdentifier": "49".repeat(20)}]})
    );

    let e = events::kafka(&[
        ("events".into(), 1, 7, b"x".to_vec(), T0),
        ("events".into(), 1, 8, b"y".to_vec(), T0),
        ("events".into(), 0, 41, b"z".to_vec(), T0 + 1),
    ]);
    let inv = parse_event(e).unwrap();
    assert_eq!(inv.records.len(), 3);
    assert_eq!(inv.records[0].value, b"z", "partitions in order");
    assert_eq!(
        response(&inv, true),
        json!({"batchItemFailures": [
            {"itemIdentifier": {"partition": "events-0", "offset": 41}},
            {"itemIdentifier": {"partition": "events-1", "offset": 7}},
        ]})
    );
    // The unaltered fixtures as AWS documents them parse too.
    for f in ["kinesis-event.json", "msk-event.json"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(f);
        let v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        assert_eq!(parse_event(v).unwrap().records.len(), 1, "{f}");
    }
    assert!(parse_event(json!({"Records": [{"eventSource": "aws:sqs"}]})).is_err());

    // Arrival times as AWS's JSON writes them (trailing zeros dropped), with microseconds (as
    // an emulator's Python `datetime.timestamp()` can write them), and as strings: milliseconds, sub-millisecond digits dropped.
    let mut e = events::kinesis("events", 0, &[(b"a".to_vec(), "1".into(), T0)]);
    let template = e["Records"][0].clone();
    let cases = [
        (json!(1_700_321_084.47), 1_700_321_084_470),
        (json!(1_700_321_084.4), 1_700_321_084_400),
        (json!(1_700_321_084.005), 1_700_321_084_005),
        (json!(1_733_480_000.123_456), 1_733_480_000_123),
        (json!(1_733_480_000.999_999), 1_733_480_000_999),
        (json!(1_700_321_084), 1_700_321_084_000),
        (json!("1700321084.47"), 1_700_321_084_470),
    ];
    e["Records"] = cases
        .iter()
        .map(|(at, _)| {
            let mut r = template.clone();
            r["kinesis"]["approximateArrivalTimestamp"] = at.clone();
            r
        })
        .collect();
    let inv = parse_event(e.clone()).unwrap();
    let got: Vec<i64> = inv.records.iter().map(|r| r.timestamp_ms).collect();
    let want: Vec<i64> = cases.iter().map(|(_, ms)| *ms).collect();
    assert_eq!(got, want);
    // Not a time: refused naming the record and the field.
    e["Records"][2]["kinesis"]["approximateArrivalTimestamp"] = json!("soon");
    let err = parse_event(e).unwrap_err().to_string();
    assert!(
        err.contains("Records[2].kinesis.approximateArrivalTimestamp"),
        "{err}"
    );
    assert!(parse_event(json!({"hello": 1})).is_err());
}
