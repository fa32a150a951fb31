//! Every fixture round-trips through both forms; keys, header values and times are as documented;
//! the checked-in JSON Schemas are the generated ones; the JSON examples in docs/alerts.md are
//! fixtures.

use std::fmt::Debug;
use std::path::Path;

use pitboss_model::live::schema::live_schemas;
use pitboss_model::live::*;

use crate::{fixture, fixtures, type_of};

fn round_trip<T: LiveMessage + PartialEq + Debug>(name: &str, text: &str) {
    let message = T::decode_json(text.as_bytes()).unwrap_or_else(|v| panic!("{name}: {v}"));
    message
        .validate()
        .unwrap_or_else(|v| panic!("{name} should be valid: {v:?}"));

    // JSON -> model -> JSON is the identity on canonical input.
    let original: serde_json::Value = serde_json::from_str(text).expect("json");
    assert_eq!(
        original,
        serde_json::to_value(&message).expect("serialize"),
        "{name}: JSON round trip"
    );

    // model -> protobuf -> model is the identity, and so the JSON that comes out is the input.
    let bytes = message.encode_proto();
    let back = T::decode_proto(&bytes).unwrap_or_else(|v| panic!("{name}: {v}"));
    assert_eq!(message, back, "{name}: protobuf round trip");
    assert_eq!(
        original,
        serde_json::to_value(&back).expect("serialize"),
        "{name}: JSON -> protobuf -> JSON"
    );
    // Encoding is deterministic: the same message always makes the same bytes.
    assert_eq!(bytes, back.encode_proto(), "{name}: deterministic encoding");
}

#[test]
fn every_live_fixture_round_trips_through_json_and_protobuf() {
    let all = fixtures();
    assert!(all.len() >= 9, "fixtures missing: {}", all.len());
    for (name, text) in &all {
        match type_of(name) {
            AlertAck::TYPE => round_trip::<AlertAck>(name, text),
            Alert::TYPE => round_trip::<Alert>(name, text),
            Push::TYPE => round_trip::<Push>(name, text),
            _ => round_trip::<Delivery>(name, text),
        }
    }
}

#[test]
fn every_message_type_has_a_fixture() {
    let names: Vec<String> = fixtures().into_iter().map(|(n, _)| n).collect();
    for t in [Alert::TYPE, Push::TYPE, Delivery::TYPE, AlertAck::TYPE] {
        assert!(
            names.iter().any(|n| type_of(n) == t),
            "no fixture for {t}: {names:?}"
        );
    }
}

#[test]
fn types_topics_keys_and_header_times() {
    assert_eq!(
        [Alert::TYPE, Push::TYPE, Delivery::TYPE, AlertAck::TYPE],
        ["alert", "push", "delivery", "alert_ack"]
    );
    assert_eq!(
        [Alert::TOPIC, Push::TOPIC, Delivery::TOPIC, AlertAck::TOPIC],
        ["alerts", "pushes", "deliveries", "alert_acks"]
    );

    let a: Alert = fixture("alert_multi_accounting.json");
    assert_eq!(a.bus_key(), "acme-casino:p-88412");
    assert_eq!(a.tenant_id(), "acme-casino");
    assert_eq!(a.event_time(), a.event_time);
    assert_eq!(LiveMessage::received_at(&a), Some(a.received_at));
    // No player: the group key stands in for it.
    let ip: Alert = fixture("alert_shared_ip.json");
    assert_eq!(ip.bus_key(), "acme-casino:2001:db8:4a1f::17");

    let p: Push = fixture("push_loss_chasing.json");
    assert_eq!(p.bus_key(), "acme-casino:p-20417");
    assert_eq!(LiveMessage::received_at(&p), Some(p.received_at));
    let room: Push = fixture("push_operator_room.json");
    assert_eq!(room.bus_key(), "acme-casino:roulette-live-1");

    let d: Delivery = fixture("delivery_push.json");
    assert_eq!(d.bus_key(), "acme-casino:p-20417");
    assert_eq!(d.event_time(), d.delivered_at);
    assert_eq!(LiveMessage::received_at(&d), Some(d.received_at));
    assert_eq!(d.time_to_notify_ms(), 19);
    let op: Delivery = fixture("delivery_alert_replayed.json");
    assert_eq!(op.bus_key(), "acme-casino:op-marina.k");

    let k: AlertAck = fixture("alert_ack_false_positive.json");
    assert_eq!(
        k.bus_key(),
        "acme-casino:5b9a90ec-2abd-5f0c-bd05-7a64a9980e46"
    );
    assert_eq!(k.event_time(), k.acked_at);
    assert_eq!(LiveMessage::received_at(&k), None);
}

#[test]
fn the_push_and_its_delivery_carry_the_alerts_times() {
    // A rule hit's alert, push and delivery agree on the trigger, so time-to-notify of the
    // push is computable from the delivery row alone.
    let a: Alert = fixture("alert_loss_chasing.json");
    let p: Push = fixture("push_loss_chasing.json");
    let d: Delivery = fixture("delivery_push.json");
    let PushSource::Rule(r) = &p.source else {
        panic!("rule push")
    };
    assert_eq!(r.alert_id.as_deref(), Some(a.alert_id.as_str()));
    assert_eq!(r.trigger_event_id, a.trigger_event_id);
    assert_eq!((p.event_time, p.received_at), (a.event_time, a.received_at));
    assert_eq!(d.message_id, p.push_id);
    assert_eq!(d.received_at, p.received_at);
}

#[test]
fn checked_in_json_schemas_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/schema");
    let update = std::env::var_os("PITBOSS_UPDATE_SCHEMA").is_some();
    for (kind, generated) in live_schemas() {
        let path = dir.join(format!("{kind}.schema.json"));
        if update {
            std::fs::write(&path, &generated).expect("write schema");
        }
        let checked_in = std::fs::read_to_string(&path)
            .unwrap_or_else(|_| panic!("{path:?} missing: run with PITBOSS_UPDATE_SCHEMA=1"));
        assert!(
            checked_in == generated,
            "docs/schema/{kind}.schema.json is stale: rerun `PITBOSS_UPDATE_SCHEMA=1 cargo test -p pitboss-model`"
        );
    }
    // Enums are snake_case strings in JSON.
    let [alert, push, delivery, ack] = live_schemas().map(|(_, s)| s);
    for word in [
        "\"responsible_gambling\"",
        "\"critical\"",
        "\"gte\"",
        "\"ip\"",
    ] {
        assert!(alert.contains(word), "alert schema lacks {word}");
    }
    for word in ["\"player\"", "\"room\"", "\"operator\"", "\"rule\""] {
        assert!(push.contains(word), "push schema lacks {word}");
    }
    assert!(delivery.contains("\"alert\"") && delivery.contains("\"push\""));
    assert!(ack.contains("\"false_positive\"") && ack.contains("\"confirmed\""));
}

#[test]
fn every_json_example_in_the_docs_is_a_fixture() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/alerts.md"))
            .expect("docs/alerts.md");
    let fixtures: Vec<serde_json::Value> = fixtures()
        .iter()
        .map(|(_, text)| serde_json::from_str(text).expect("fixture"))
        .collect();
    let examples: Vec<&str> = doc
        .split("```json\n")
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap_or_default())
        .collect();
    assert!(examples.len() >= 5, "{} examples", examples.len());
    for example in examples {
        let value: serde_json::Value = serde_json::from_str(example)
            .unwrap_or_else(|e| panic!("docs/alerts.md example is not JSON ({e}):\n{example}"));
        assert!(
            fixtures.contains(&value),
            "docs/alerts.md example is not one of the fixtures (which are round-tripped and validated):\n{example}"
        );
    }
}
