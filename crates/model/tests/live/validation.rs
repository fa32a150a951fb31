//! Every validation rule of the live-path messages has a refusing case (and the limit itself is
//! accepted).

use pitboss_model::live::limits::*;
use pitboss_model::live::*;
use pitboss_model::{Timestamp, ViolationCode};

use crate::{fixture, one, v, violations};

#[test]
fn alert_ids_tenant_player_rule_and_scores() {
    let a: Alert = fixture("alert_multi_accounting.json");
    let mut b = a.clone();
    b.tenant_id = "acme:casino".into();
    b.player_id = Some(String::new());
    b.total_score = b.score - 1;
    assert_eq!(
        violations(&b),
        vec![
            v("tenant_id", ViolationCode::InvalidCharacters),
            v("player_id", ViolationCode::Required),
            v("total_score", ViolationCode::InvalidValue),
        ]
    );
    let mut b = a.clone();
    b.alert_id = "5B9A90EC2ABD5F0CBD057A64A9980E46".into();
    assert_eq!(
        violations(&b),
        vec![
            v("alert_id", ViolationCode::InvalidUuid),
            v("alert_id", ViolationCode::InvalidValue)
        ]
    );
    // The rule id is a dotted name; its version starts at 1 (0 is protobuf's "unset").
    let mut b = a.clone();
    b.rule_id = "Fraud/MultiAccounting".into();
    b.rule_version = 0;
    b.alert_id = alert_id(&b.rule_id, 0, &b.trigger_event_id);
    assert_eq!(
        violations(&b),
        vec![
            v("rule_id", ViolationCode::InvalidCharacters),
            v("rule_version", ViolationCode::InvalidValue)
        ]
    );
}

#[test]
fn alert_group_reason_and_lists() {
    let a: Alert = fixture("alert_multi_accounting.json");
    let mut b = a.clone();
    b.group_key = "x".repeat(MAX_GROUP_KEY + 1);
    b.reason = "Two lines:\nnot one sentence".into();
    b.related_player_ids = vec!["p 1".into()];
    assert_eq!(
        violations(&b),
        vec![
            v("group_key", ViolationCode::TooLong),
            v("related_player_ids[0]", ViolationCode::InvalidCharacters),
            v("reason", ViolationCode::InvalidCharacters),
        ]
    );
    let mut b = a.clone();
    b.group_key = String::new();
    b.reason = " ".into();
    b.related_player_ids = vec!["p".into(); MAX_RELATED_PLAYERS + 1];
    b.evidence_event_ids = vec![a.trigger_event_id.clone(); MAX_EVIDENCE_EVENTS + 1];
    assert_eq!(
        violations(&b),
        vec![
            v("group_key", ViolationCode::Required),
            v("related_player_ids", ViolationCode::TooLong),
            v("reason", ViolationCode::Required),
            v("evidence_event_ids", ViolationCode::TooLong),
        ]
    );
    let mut b = a.clone();
    b.reason = "я".repeat(MAX_REASON_CHARS + 1);
    b.trigger_event_id = "nope".into();
    b.evidence_event_ids = vec!["nope".into()];
    b.alert_id = alert_id(&b.rule_id, b.rule_version, "nope");
    assert_eq!(
        violations(&b),
        vec![
            v("reason", ViolationCode::TooLong),
            v("trigger_event_id", ViolationCode::InvalidUuid),
            v("evidence_event_ids[0]", ViolationCode::InvalidUuid),
        ]
    );
    // Grouped by player: the group key is the player.
    let mut lc: Alert = fixture("alert_loss_chasing.json");
    assert_eq!(violations(&lc), vec![]);
    lc.group_key = "p-1".into();
    assert_eq!(
        violations(&lc),
        one("group_key", ViolationCode::InvalidValue)
    );
    lc.group_key = "p-20417".into();
    lc.player_id = None;
    assert_eq!(
        violations(&lc),
        one("group_key", ViolationCode::InvalidValue)
    );
}

#[test]
fn alert_measures_are_finite_named_and_bounded() {
    let a: Alert = fixture("alert_loss_chasing.json");
    let mut b = a.clone();
    b.measures[0].value = f64::NAN;
    b.measures[0].currency = Some("eur".into());
    b.measures[1].threshold = f64::INFINITY;
    b.measures[1].window_ms = Some(0);
    b.measures[2].name = "minutes between deposits".into();
    assert_eq!(
        violations(&b),
        vec![
            v("measures[0].value", ViolationCode::InvalidValue),
            v("measures[0].currency", ViolationCode::InvalidCurrency),
            v("measures[1].threshold", ViolationCode::InvalidValue),
            v("measures[1].window_ms", ViolationCode::InvalidValue),
            v("measures[2].name", ViolationCode::InvalidCharacters),
        ]
    );
    let mut b = a.clone();
    b.measures[0].window_ms = Some(MAX_WINDOW_MS + 1);
    b.measures[1].currency = Some(String::new());
    assert_eq!(
        violations(&b),
        vec![
            v("measures[0].window_ms", ViolationCode::InvalidValue),
            v("measures[1].currency", ViolationCode::InvalidCurrency),
        ]
    );
    // Operators' extra currencies (USDT) are accepted as well as ISO 4217 codes.
    let mut b = a.clone();
    b.measures[0].currency = Some("USDT".into());
    b.measures[0].window_ms = Some(MAX_WINDOW_MS);
    assert_eq!(violations(&b), vec![]);
    // A relative threshold: a baseline (a measure's name) with a finite factor, both or neither.
    let mut b = a.clone();
    b.measures[0].baseline = Some("deposits".into());
    b.measures[0].factor = Some(0.6);
    assert_eq!(violations(&b), vec![]);
    b.measures[0].factor = Some(f64::NAN);
    b.measures[1].baseline = Some("Week Total".into());
    b.measures[2].factor = Some(2.0);
    assert_eq!(
        violations(&b),
        vec![
            v("measures[0].factor", ViolationCode::InvalidValue),
            v("measures[1].baseline", ViolationCode::InvalidCharacters),
            v("measures[1].factor", ViolationCode::InvalidValue),
            v("measures[2].factor", ViolationCode::InvalidValue),
        ]
    );
    let mut b = a.clone();
    b.measures = vec![a.measures[0].clone(); MAX_MEASURES + 1];
    assert_eq!(violations(&b), one("measures", ViolationCode::TooLong));
}

#[test]
fn alert_times_are_between_1970_and_9999() {
    let mut a: Alert = fixture("alert_shared_ip.json");
    a.event_time = Timestamp::from_millis(-1);
    a.received_at = Timestamp::from_millis(MAX_TIMESTAMP_MS + 1);
    a.detected_at = Timestamp::from_millis(i64::MAX);
    assert_eq!(
        violations(&a),
        vec![
            v("event_time", ViolationCode::InvalidTimestamp),
            v("received_at", ViolationCode::InvalidTimestamp),
            v("detected_at", ViolationCode::InvalidTimestamp),
        ]
    );
    // The last accepted instant can be written as RFC 3339.
    a.event_time = Timestamp::from_millis(0);
    a.received_at = Timestamp::from_millis(MAX_TIMESTAMP_MS);
    a.detected_at = Timestamp::from_millis(MAX_TIMESTAMP_MS);
    assert_eq!(violations(&a), vec![]);
    assert_eq!(
        a.received_at.to_rfc3339().as_deref(),
        Some("9999-12-31T23:59:59.999Z")
    );
}

#[test]
fn push_target_kind_and_texts() {
    let p: Push = fixture("push_operator_room.json");
    let mut q = p.clone();
    q.target = Target::Room("roulette:1".into());
    q.kind = "message".into();
    q.title = "Line one\nline two".into();
    q.body = "ring\u{7}".into();
    assert_eq!(
        violations(&q),
        vec![
            v("target.room", ViolationCode::InvalidCharacters),
            v("kind", ViolationCode::InvalidValue),
            v("title", ViolationCode::InvalidCharacters),
            v("body", ViolationCode::InvalidCharacters),
        ]
    );
    let mut q = p.clone();
    q.target = Target::Player(String::new());
    q.kind = "Operator.Message".into();
    q.title = "   ".into();
    q.body = String::new();
    assert_eq!(
        violations(&q),
        vec![
            v("target.player", ViolationCode::Required),
            v("kind", ViolationCode::InvalidCharacters),
            v("title", ViolationCode::Required),
            v("body", ViolationCode::Required),
        ]
    );
    // Limits count characters: 100 Cyrillic letters are a valid title, 101 are not.
    let mut q = p.clone();
    q.title = "Т".repeat(MAX_TITLE_CHARS);
    q.body = "Б".repeat(MAX_BODY_CHARS);
    assert_eq!(violations(&q), vec![]);
    q.title.push('Т');
    q.body.push('Б');
    assert_eq!(
        violations(&q),
        vec![
            v("title", ViolationCode::TooLong),
            v("body", ViolationCode::TooLong)
        ]
    );
}

#[test]
fn push_data_is_bounded() {
    let mut p: Push = fixture("push_operator_room.json");
    // {"k":"…"} is 8 bytes plus the string.
    p.data = serde_json::Map::new();
    p.data
        .insert("k".into(), "x".repeat(MAX_DATA_BYTES - 8).into());
    assert_eq!(violations(&p), vec![]);
    p.data
        .insert("k".into(), "x".repeat(MAX_DATA_BYTES - 7).into());
    assert_eq!(violations(&p), one("data", ViolationCode::TooLong));
}

#[test]
fn push_sources_and_expiry() {
    let p: Push = fixture("push_loss_chasing.json");
    let mut q = p.clone();
    if let PushSource::Rule(r) = &mut q.source {
        r.alert_id = Some("b412a962-64af-5377-8305-c6a1a2fde03d".into());
    }
    q.expires_at = Some(q.created_at);
    assert_eq!(
        violations(&q),
        vec![
            v("source.rule.alert_id", ViolationCode::InvalidValue),
            v("expires_at", ViolationCode::InvalidValue),
        ]
    );
    // A rule that only pushes raises no alert.
    let mut q = p.clone();
    if let PushSource::Rule(r) = &mut q.source {
        r.alert_id = None;
    }
    q.expires_at = None;
    assert_eq!(violations(&q), vec![]);
    let mut q = p.clone();
    if let PushSource::Rule(r) = &mut q.source {
        r.rule_id = String::new();
        r.rule_version = 0;
        r.trigger_event_id = "x".into();
        r.alert_id = None;
    }
    q.push_id = push_id("", 0, "x", &q.target);
    assert_eq!(
        violations(&q),
        vec![
            v("source.rule.rule_id", ViolationCode::Required),
            v("source.rule.rule_version", ViolationCode::InvalidValue),
            v("source.rule.trigger_event_id", ViolationCode::InvalidUuid),
        ]
    );
    let mut o: Push = fixture("push_operator_room.json");
    o.source = PushSource::Operator(OperatorSource {
        operator_id: "marina k".into(),
    });
    o.push_id = "not-a-uuid".into();
    o.created_at = Timestamp::from_millis(-1);
    assert_eq!(
        violations(&o),
        vec![
            v("push_id", ViolationCode::InvalidUuid),
            v(
                "source.operator.operator_id",
                ViolationCode::InvalidCharacters
            ),
            v("created_at", ViolationCode::InvalidTimestamp),
        ]
    );
}

#[test]
fn delivery_channel_subscriber_and_ids() {
    let d: Delivery = fixture("delivery_push.json");
    let mut e = d.clone();
    e.channel = "player:other-casino:p-20417".into();
    assert_eq!(violations(&e), one("channel", ViolationCode::InvalidValue));
    e.channel = "player:acme-casino:p-1".into();
    assert_eq!(
        violations(&e),
        one("subscriber", ViolationCode::InvalidValue)
    );
    e.channel = "operator:acme-casino".into();
    assert_eq!(violations(&e), one("channel", ViolationCode::InvalidValue));
    e.channel = "lobby:acme-casino".into();
    assert_eq!(violations(&e), one("channel", ViolationCode::InvalidValue));
    // Room pushes reach every player in the room.
    e.channel = "room:acme-casino:roulette-live-1".into();
    assert_eq!(violations(&e), vec![]);

    let mut a: Delivery = fixture("delivery_alert_replayed.json");
    a.channel = "room:acme-casino:roulette-live-1".into();
    a.message_id = "5b9a90ec".into();
    a.gateway_id = String::new();
    a.connection_id = "c".repeat(MAX_ID + 1);
    a.delivered_at = Timestamp::from_millis(-1);
    assert_eq!(
        violations(&a),
        vec![
            v("message_id", ViolationCode::InvalidUuid),
            v("gateway_id", ViolationCode::Required),
            v("connection_id", ViolationCode::TooLong),
            v("channel", ViolationCode::InvalidValue),
            v("delivered_at", ViolationCode::InvalidTimestamp),
        ]
    );
}

#[test]
fn ack_ids_and_note() {
    let k: AlertAck = fixture("alert_ack_false_positive.json");
    let mut b = k.clone();
    b.ack_id = "1".into();
    b.alert_id = String::new();
    b.operator_id = "op:1".into();
    b.note = Some("\n".into());
    assert_eq!(
        violations(&b),
        vec![
            v("ack_id", ViolationCode::InvalidUuid),
            v("alert_id", ViolationCode::InvalidUuid),
            v("operator_id", ViolationCode::InvalidCharacters),
            v("note", ViolationCode::Required),
        ]
    );
    let mut b = k.clone();
    b.note = Some("n".repeat(MAX_NOTE_CHARS + 1));
    b.acked_at = Timestamp::from_millis(-1);
    assert_eq!(
        violations(&b),
        vec![
            v("note", ViolationCode::TooLong),
            v("acked_at", ViolationCode::InvalidTimestamp)
        ]
    );
    b.note = Some("tab\tand\u{1b}escape".into());
    b.acked_at = k.acked_at;
    assert_eq!(
        violations(&b),
        one("note", ViolationCode::InvalidCharacters)
    );
}
