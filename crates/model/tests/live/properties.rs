//! Properties: decoding never panics, validation never panics, and valid messages survive
//! protobuf exactly (push data, floats included, and measures).

use pitboss_model::Timestamp;
use pitboss_model::live::limits::*;
use pitboss_model::live::*;
use proptest::prelude::*;

use crate::fixture;

/// Any JSON value for a push's `data`, floats of every magnitude included.
fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map_or(serde_json::Value::Null, serde_json::Value::Number)),
        "\\PC{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::from),
            prop::collection::btree_map("\\PC{1,8}", inner, 0..5)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Alert::decode_proto(&bytes).map(|m| m.validate());
        let _ = Push::decode_proto(&bytes).map(|m| m.validate());
        let _ = Delivery::decode_proto(&bytes).map(|m| m.validate());
        let _ = AlertAck::decode_proto(&bytes).map(|m| m.validate());
        let _ = Alert::decode_json(&bytes);
        let _ = Push::decode_json(&bytes);
        let _ = Delivery::decode_json(&bytes);
        let _ = AlertAck::decode_json(&bytes);
    }

    /// Push data survives protobuf (where it is JSON text) exactly, floats to the last bit.
    #[test]
    fn push_data_round_trips_exactly(entries in prop::collection::btree_map("\\PC{1,8}", arb_json(), 0..6)) {
        let mut p: Push = fixture("push_operator_room.json");
        p.data = entries.into_iter().collect();
        let back = Push::decode_proto(&p.encode_proto());
        prop_assert_eq!(back.as_ref(), Ok(&p));
    }

    /// Measures survive protobuf exactly, whatever their (finite) values.
    #[test]
    fn measures_round_trip_exactly(
        value in any::<f64>().prop_filter("finite", |f| f.is_finite()),
        threshold in any::<f64>().prop_filter("finite", |f| f.is_finite()),
        window in 1..=MAX_WINDOW_MS,
        factor in prop::option::of(any::<f64>().prop_filter("finite", |f| f.is_finite())),
    ) {
        let mut a: Alert = fixture("alert_loss_chasing.json");
        a.measures[0].value = value;
        a.measures[0].threshold = threshold;
        a.measures[0].window_ms = Some(window);
        // A relative threshold names its baseline and factor (0.0 included).
        a.measures[1].baseline = factor.map(|_| "net_loss".to_owned());
        a.measures[1].factor = factor;
        prop_assert_eq!(a.validate(), Ok(()));
        let back = Alert::decode_proto(&a.encode_proto());
        prop_assert_eq!(back.as_ref(), Ok(&a));
        let json = serde_json::to_vec(&a).expect("json");
        let from_json = Alert::decode_json(&json);
        prop_assert_eq!(from_json.as_ref(), Ok(&a));
    }

    /// Validation never panics, whatever the texts and times.
    #[test]
    fn validation_never_panics(
        id in "\\PC{0,40}", text in "\\PC{0,200}", t in any::<i64>(), version in any::<u32>(),
    ) {
        let mut a: Alert = fixture("alert_multi_accounting.json");
        a.player_id = Some(id.clone());
        a.rule_id = id.clone();
        a.rule_version = version;
        a.group_key = text.clone();
        a.reason = text.clone();
        a.event_time = Timestamp::from_millis(t);
        let _ = a.validate();
        let mut p: Push = fixture("push_loss_chasing.json");
        p.kind = id.clone();
        p.title = text.clone();
        p.target = Target::Room(id.clone());
        p.expires_at = Some(Timestamp::from_millis(t));
        let _ = p.validate();
        let mut d: Delivery = fixture("delivery_push.json");
        d.channel = text.clone();
        let _ = d.validate();
        let mut k: AlertAck = fixture("alert_ack_false_positive.json");
        k.note = Some(text);
        k.operator_id = id;
        let _ = k.validate();
    }
}
