//! Realistic sample traffic: the mixed events (bets, settlements, deposits, logins) that the
//! load generator sends and the ingest benchmarks decode, built in one place so both measure
//! the same bodies.

use serde::Serialize;
use serde_json::{Value, json};

/// One sample event. Serialized through this struct, the envelope keeps the documented field
/// order (`type` before `payload`) that SDKs write; a `serde_json::Value` map sorts its keys.
#[derive(Debug, Clone, Serialize)]
pub struct SampleEvent {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    pub tenant_id: String,
    pub player_id: String,
    pub session_id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub occurred_at: String,
    pub payload: Value,
}

/// Event number `i` of a stream for `tenant`, spread over `players` players, all occurring at
/// `occurred_at` (RFC 3339). Without `event_id`: the server assigns one.
pub fn event(tenant: &str, i: usize, players: usize, occurred_at: &str) -> SampleEvent {
    let players = players.max(1);
    let (kind, payload) = match i % 10 {
        0..=4 => (
            "bet_placed",
            json!({
                "bet_id": format!("bet-{i}"), "game_id": format!("slot-{}", i % 40), "round_id": format!("r-{i}"),
                "stake": {"amount_minor": 100 + (i % 5000) as i64, "currency": "EUR"}, "bet_type": "spin", "channel": "android"
            }),
        ),
        5..=7 => (
            "bet_settled",
            json!({
                "bet_id": format!("bet-{}", i.saturating_sub(5)), "game_id": format!("slot-{}", i % 40),
                "result": if i.is_multiple_of(3) { "win" } else { "loss" }, "payout": {"amount_minor": (i % 7) as i64 * 250, "currency": "EUR"}
            }),
        ),
        8 => (
            "deposit",
            json!({
                "transaction_id": format!("dep-{i}"), "amount": {"amount_minor": 5_000, "currency": "EUR"}, "method": "card"
            }),
        ),
        _ => (
            "login",
            json!({
                "ip": format!("203.0.113.{}", i % 250), "device_id": format!("dev-{}", i % players),
                "user_agent": "LuckyBetClient/1.9 (Android 15)", "country": "DE"
            }),
        ),
    };
    SampleEvent {
        event_id: None,
        tenant_id: tenant.to_owned(),
        player_id: format!("player-{}", i % players),
        session_id: format!("s-{}", i % players),
        kind,
        occurred_at: occurred_at.to_owned(),
        payload,
    }
}

/// `batch` events starting at event number `first`.
pub fn events(
    tenant: &str,
    first: usize,
    batch: usize,
    players: usize,
    occurred_at: &str,
) -> Vec<SampleEvent> {
    (first..first + batch)
        .map(|i| event(tenant, i, players, occurred_at))
        .collect()
}

/// A JSON array of `batch` events starting at event number `first`.
pub fn body(
    tenant: &str,
    first: usize,
    batch: usize,
    players: usize,
    occurred_at: &str,
) -> Vec<u8> {
    serde_json::to_vec(&events(tenant, first, batch, players, occurred_at)).unwrap_or_default()
}

/// Gives each event a fresh `event_id` (UUIDv7), as a client that retries idempotently does.
pub fn with_client_ids(mut events: Vec<SampleEvent>) -> Vec<SampleEvent> {
    for e in &mut events {
        e.event_id = Some(pitboss_model::new_event_id());
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{BodyFormat, CoreConfig, NoDedup, Outcome, plan};

    #[test]
    fn every_sample_event_is_accepted_in_the_documented_order() {
        let now = pitboss_model::Timestamp::now();
        let at = now.to_rfc3339().expect("now is in range");
        let body = body("demo", 0, 200, 50, &at);
        let text = std::str::from_utf8(&body).expect("utf-8");
        let first = &text[..text.find("},{").expect("two events")];
        let at_type = first.find("\"type\"").expect("type");
        assert!(
            at_type < first.find("\"payload\"").expect("payload"),
            "{first}"
        );
        let run = |body: &[u8]| {
            plan(
                body,
                BodyFormat::Json,
                "demo",
                &CoreConfig::default(),
                now.as_millis(),
                &NoDedup,
            )
            .expect("plan")
        };
        let p = run(&body);
        assert_eq!(
            p.counts(),
            (200, 0, 0),
            "{:?}",
            p.outcomes
                .iter()
                .find(|o| !matches!(o, Outcome::Accepted { .. }))
        );
        let with_ids = with_client_ids(events("demo", 0, 200, 50, &at));
        let ids: Vec<String> = with_ids.iter().filter_map(|e| e.event_id.clone()).collect();
        let p = run(&serde_json::to_vec(&with_ids).expect("json"));
        assert_eq!(p.counts(), (200, 0, 0));
        let accepted: Vec<&str> = p.publish.iter().map(|r| p.event_id(r)).collect();
        assert_eq!(accepted, ids, "client ids are kept");
    }
}
