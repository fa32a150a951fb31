//! Live-path messages for tests: valid alerts, pushes, deliveries and alert acks numbered `i`,
//! made from the model's fixtures (crates/model/fixtures/live) with distinct ids derived from
//! `i` and the current time, as the rules engine and the gateway would publish them.

use pitboss_model::Timestamp;
use pitboss_model::live::{Alert, AlertAck, Delivery, Push, PushSource, Target, alert_id, push_id};

fn fixture<T: serde::de::DeserializeOwned>(json: &str) -> T {
    match serde_json::from_str(json) {
        Ok(message) => message,
        Err(e) => panic!("a live fixture does not parse: {e}"),
    }
}

/// The id of the event that triggered alert and push `i`: `0193735a-0000-7000-8000-{i:012x}`.
pub fn trigger_event_id(i: u64) -> String {
    format!("0193735a-0000-7000-8000-{i:012x}")
}

/// Player `p-{i % 100}`: the player of alert `i`, its push and their delivery.
fn player(i: u64) -> String {
    format!("p-{}", i % 100)
}

/// Alert `i`: the loss-chasing fixture for player `p-{i % 100}`, triggered by event
/// [`trigger_event_id`]`(i)` (so its id is deterministic and distinct per `i`), detected now.
pub fn alert(i: u64) -> Alert {
    let mut a: Alert = fixture(include_str!(
        "../../model/fixtures/live/alert_loss_chasing.json"
    ));
    let now = Timestamp::now();
    a.player_id = Some(player(i));
    a.group_key = player(i);
    a.trigger_event_id = trigger_event_id(i);
    a.alert_id = alert_id(&a.rule_id, a.rule_version, &a.trigger_event_id);
    a.event_time = Timestamp::from_millis(now.as_millis() - 200);
    a.received_at = Timestamp::from_millis(now.as_millis() - 100);
    a.detected_at = now;
    a
}

/// Push `i`: the rule push of alert `i`'s hit (the loss-chasing fixture) to its player, made
/// now, expiring in an hour.
pub fn push(i: u64) -> Push {
    let mut p: Push = fixture(include_str!(
        "../../model/fixtures/live/push_loss_chasing.json"
    ));
    let a = alert(i);
    p.target = Target::Player(player(i));
    if let PushSource::Rule(rule) = &mut p.source {
        rule.trigger_event_id = a.trigger_event_id.clone();
        rule.alert_id = Some(alert_id(
            &rule.rule_id,
            rule.rule_version,
            &a.trigger_event_id,
        ));
        p.push_id = push_id(
            &rule.rule_id,
            rule.rule_version,
            &a.trigger_event_id,
            &p.target,
        );
    }
    p.event_time = a.event_time;
    p.received_at = a.received_at;
    p.created_at = Timestamp::now();
    p.expires_at = Some(Timestamp::from_millis(p.created_at.as_millis() + 3_600_000));
    p
}

/// Delivery `i`: push `i` written to connection `c-{i}` of its player, now.
pub fn delivery(i: u64) -> Delivery {
    let mut d: Delivery = fixture(include_str!("../../model/fixtures/live/delivery_push.json"));
    let p = push(i);
    d.message_id = p.push_id;
    d.channel = format!("player:{}:{}", d.tenant_id, player(i));
    d.subscriber = player(i);
    d.connection_id = format!("c-{i}");
    d.received_at = p.received_at;
    d.delivered_at = Timestamp::now();
    d
}

/// Ack `i`: an operator's ack of alert `i`, with the ack id `0193735a-0000-7000-9000-{i:012x}`,
/// now.
pub fn ack(i: u64) -> AlertAck {
    let mut a: AlertAck = fixture(include_str!(
        "../../model/fixtures/live/alert_ack_false_positive.json"
    ));
    a.ack_id = format!("0193735a-0000-7000-9000-{i:012x}");
    a.alert_id = alert(i).alert_id;
    a.acked_at = Timestamp::now();
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use pitboss_model::live::LiveMessage;

    #[test]
    fn the_messages_are_valid_and_their_ids_distinct_and_linked() {
        for i in [0, 1, 99, 100, 12_345] {
            alert(i).validate().expect("alert");
            push(i).validate().expect("push");
            delivery(i).validate().expect("delivery");
            ack(i).validate().expect("ack");
        }
        assert_ne!(alert(1).alert_id, alert(101).alert_id);
        assert_eq!(alert(7).alert_id, alert(7).alert_id, "deterministic");
        assert_eq!(delivery(7).message_id, push(7).push_id);
        assert_eq!(ack(7).alert_id, alert(7).alert_id);
        assert_ne!(push(7).push_id, alert(7).alert_id);
    }
}
