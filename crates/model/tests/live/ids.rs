//! Alert ids and rule push ids are derived from their inputs: the same inputs give the same id,
//! any input changed gives another, and validation refuses an id that does not match.

use pitboss_model::live::*;
use pitboss_model::{Timestamp, ViolationCode};

use crate::{fixture, one, violations};

#[test]
fn alert_ids_are_derived_from_rule_version_and_trigger() {
    let a: Alert = fixture("alert_multi_accounting.json");
    assert_eq!(
        a.alert_id,
        alert_id(&a.rule_id, a.rule_version, &a.trigger_event_id)
    );
    // Any input changed without the id: refused. With the id recomputed: accepted, another id.
    let mut b = a.clone();
    b.rule_version = 3;
    assert_eq!(violations(&b), one("alert_id", ViolationCode::InvalidValue));
    b.alert_id = alert_id(&b.rule_id, b.rule_version, &b.trigger_event_id);
    assert_eq!(violations(&b), vec![]);
    assert_ne!(a.alert_id, b.alert_id);

    let mut c = a.clone();
    c.trigger_event_id = "0193d1a4-8e10-7b3c-9f21-4a5b6c7d8e02".into();
    assert_eq!(violations(&c), one("alert_id", ViolationCode::InvalidValue));
    let mut c = a.clone();
    c.rule_id = "fraud.multi_accounting.shared_ip".into();
    assert_eq!(violations(&c), one("alert_id", ViolationCode::InvalidValue));
    // What the alert says besides rule and trigger does not enter the id: a replay that
    // recomputes a different score still collides with the first alert, as it must.
    let mut d = a.clone();
    d.total_score = 90;
    d.detected_at = Timestamp::from_millis(a.detected_at.as_millis() + 5000);
    assert_eq!(violations(&d), vec![]);
}

#[test]
fn rule_push_ids_are_derived_from_rule_trigger_and_target() {
    let p: Push = fixture("push_loss_chasing.json");
    let PushSource::Rule(r) = &p.source else {
        panic!("rule push")
    };
    assert_eq!(
        p.push_id,
        push_id(&r.rule_id, r.rule_version, &r.trigger_event_id, &p.target)
    );
    let mut q = p.clone();
    q.target = Target::Room("roulette-live-1".into());
    assert_eq!(violations(&q), one("push_id", ViolationCode::InvalidValue));
    q.push_id = push_id(&r.rule_id, r.rule_version, &r.trigger_event_id, &q.target);
    assert_eq!(violations(&q), vec![]);
    assert_ne!(q.push_id, p.push_id);

    let mut q = p.clone();
    if let PushSource::Rule(r) = &mut q.source {
        r.rule_version = 5;
        r.alert_id = Some(alert_id(&r.rule_id, 5, &r.trigger_event_id));
    }
    assert_eq!(violations(&q), one("push_id", ViolationCode::InvalidValue));

    // Operator pushes carry any UUID (a v7 from new_message_id).
    let mut o: Push = fixture("push_operator_room.json");
    o.push_id = new_message_id();
    assert_eq!(violations(&o), vec![]);
}
