//! Reading the canonical JSON form: each refusal names the field and a stable code.

use std::fmt::Debug;

use pitboss_model::ViolationCode;
use pitboss_model::live::*;

use crate::{fixture_dir, v};

fn json_refusal<T: LiveMessage + Debug>(json: &str) -> (String, ViolationCode) {
    let v = T::decode_json(json.as_bytes()).expect_err(json);
    (v.path, v.code)
}

fn with(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture_dir().join(name)).expect("fixture"))
            .expect("json");
    edit(&mut value);
    value.to_string()
}

#[test]
fn json_refusals_name_the_field() {
    let a = "alert_multi_accounting.json";
    assert_eq!(
        json_refusal::<Alert>(&with(a, |v| {
            v["colour"] = "red".into();
        })),
        v("colour", ViolationCode::UnknownField)
    );
    assert_eq!(
        json_refusal::<Alert>(&with(a, |v| {
            v["measures"][1]["unit"] = "count".into();
        })),
        v("measures[1].unit", ViolationCode::UnknownField)
    );
    assert_eq!(
        json_refusal::<Alert>(&with(a, |v| {
            v.as_object_mut().expect("object").remove("reason");
        })),
        v("reason", ViolationCode::Required)
    );
    assert_eq!(
        json_refusal::<Alert>(&with(a, |v| {
            v["severity"] = "severe".into();
        })),
        v("severity", ViolationCode::InvalidValue)
    );
    assert_eq!(
        json_refusal::<Alert>(&with(a, |v| {
            v["score"] = 40.5.into();
        })),
        v("score", ViolationCode::InvalidType)
    );
    assert_eq!(
        json_refusal::<Alert>(&with(a, |v| {
            v["score"] = (-1).into();
        })),
        v("score", ViolationCode::InvalidValue)
    );
    assert_eq!(
        json_refusal::<Alert>(&with(a, |v| {
            v["detected_at"] = "28/11/2026".into();
        })),
        v("detected_at", ViolationCode::InvalidTimestamp)
    );

    let p = "push_loss_chasing.json";
    assert_eq!(
        json_refusal::<Push>(&with(p, |v| {
            v["target"] = serde_json::json!({"player": "p-1", "room": "r-1"});
        })),
        v("target", ViolationCode::InvalidValue)
    );
    assert_eq!(
        json_refusal::<Push>(&with(p, |v| {
            v["target"] = serde_json::json!({"table": "t-1"});
        })),
        v("target.table", ViolationCode::UnknownField)
    );
    assert_eq!(
        json_refusal::<Push>(&with(p, |v| {
            v["target"] = serde_json::json!({});
        })),
        v("target", ViolationCode::InvalidValue)
    );
    assert_eq!(
        json_refusal::<Push>(&with(p, |v| {
            v["target"] = "p-1".into();
        })),
        v("target", ViolationCode::InvalidType)
    );
    assert_eq!(
        json_refusal::<Push>(&with(p, |v| {
            v["source"] = serde_json::json!({"rule": v["source"]["rule"].clone(), "operator": {"operator_id": "op"}});
        })),
        v("source", ViolationCode::InvalidValue)
    );
    assert_eq!(
        json_refusal::<Push>(&with(p, |v| {
            v["data"] = serde_json::json!([1, 2]);
        })),
        v("data", ViolationCode::InvalidType)
    );
    assert_eq!(
        json_refusal::<Push>(&with(p, |v| {
            v["source"]["rule"]["alert"] = "x".into();
        })),
        v("source.rule.alert", ViolationCode::UnknownField)
    );
    assert_eq!(
        json_refusal::<Delivery>(&with("delivery_push.json", |v| {
            v["message_type"] = "event".into();
        })),
        v("message_type", ViolationCode::InvalidValue)
    );
    assert_eq!(
        json_refusal::<AlertAck>(&with("alert_ack_escalated.json", |v| {
            v["outcome"] = "confirmed_fraud".into();
        })),
        v("outcome", ViolationCode::InvalidValue)
    );
    assert_eq!(
        json_refusal::<AlertAck>(&format!(
            "{} {{}}",
            with("alert_ack_escalated.json", |_| {})
        )),
        v("", ViolationCode::Malformed)
    );
    assert_eq!(
        // Cut off: the whole message is unreadable, wherever it broke off.
        json_refusal::<AlertAck>("{\"ack_id\": "),
        v("", ViolationCode::Malformed)
    );
}
