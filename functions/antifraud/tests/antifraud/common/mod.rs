//! Scripted event streams for the engine tests: a player's events at chosen times, with
//! deterministic ids, fed one by one to an engine running the shipped packs (or given rules).

#![allow(dead_code, clippy::unwrap_used)]

use pitboss_antifraud::{Engine, Output, RuleSet};
use pitboss_model::live::{Alert, Push};
use pitboss_model::{Event, Timestamp};
use serde_json::{Value, json};

/// 2026-11-28T12:00:00Z.
pub const T0: i64 = 1_795_867_200_000;
pub const S: i64 = 1000;
pub const MIN: i64 = 60 * S;
pub const H: i64 = 60 * MIN;
pub const D: i64 = 24 * H;

pub fn shipped() -> RuleSet {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../rules");
    RuleSet::load_dir(&dir).unwrap_or_else(|e| panic!("{e}"))
}

/// A stream under construction and the engine it feeds.
pub struct Script {
    pub engine: Engine,
    pub out: Output,
    pub sent: Vec<Event>,
    n: u64,
}

impl Default for Script {
    fn default() -> Self {
        Script::new(shipped())
    }
}

impl Script {
    pub fn new(set: RuleSet) -> Script {
        Script {
            engine: Engine::new(set),
            out: Output::default(),
            sent: Vec::new(),
            n: 0,
        }
    }

    pub fn id(n: u64) -> String {
        format!("0193735a-0000-7000-8000-{n:012x}")
    }

    /// Builds an event; `envelope` adds envelope fields (`session_id`, `utc_offset_min`).
    pub fn event(
        &mut self,
        player: &str,
        t: i64,
        kind: &str,
        payload: Value,
        envelope: Value,
    ) -> Event {
        self.n += 1;
        let mut e = json!({
            "event_id": Script::id(self.n),
            "tenant_id": "acme",
            "player_id": player,
            "type": kind,
            "occurred_at": Timestamp::from_millis(t).to_rfc3339().unwrap(),
            "received_at": Timestamp::from_millis(t + 50).to_rfc3339().unwrap(),
            "payload": payload,
        });
        if let (Some(e), Value::Object(extra)) = (e.as_object_mut(), envelope) {
            e.extend(extra);
        }
        pitboss_model::decode_event(e.to_string().as_bytes()).unwrap_or_else(|v| panic!("{v}: {e}"))
    }

    /// Feeds an event (engine time: 100 ms after it happened); returns how many alerts and
    /// pushes it raised.
    pub fn feed(&mut self, e: Event) -> usize {
        let before = self.out.alerts.len() + self.out.pushes.len();
        let now = Timestamp::from_millis(e.occurred_at.as_millis() + 100);
        self.engine.process(&e, now, &mut self.out).unwrap();
        assert!(self.out.rejected.is_empty(), "{:?}", self.out.rejected);
        self.sent.push(e);
        self.out.alerts.len() + self.out.pushes.len() - before
    }

    pub fn send(&mut self, player: &str, t: i64, kind: &str, payload: Value) -> usize {
        let e = self.event(player, t, kind, payload, json!({}));
        self.feed(e)
    }

    pub fn send_env(
        &mut self,
        player: &str,
        t: i64,
        kind: &str,
        payload: Value,
        envelope: Value,
    ) -> usize {
        let e = self.event(player, t, kind, payload, envelope);
        self.feed(e)
    }

    /// Delivers an already sent event again (a client or publish retry).
    pub fn redeliver(&mut self, index: usize) -> usize {
        let e = self.sent[index].clone();
        self.feed(e)
    }

    pub fn alerts(&self, rule: &str) -> Vec<&Alert> {
        self.out
            .alerts
            .iter()
            .filter(|a| a.rule_id == rule)
            .collect()
    }

    pub fn pushes(&self, rule: &str) -> Vec<&Push> {
        self.out
            .pushes
            .iter()
            .filter(|p| matches!(&p.source, pitboss_model::live::PushSource::Rule(r) if r.rule_id == rule))
            .collect()
    }

    /// Rules that raised anything, sorted, deduplicated.
    pub fn fired(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.out.alerts.iter().map(|a| a.rule_id.clone()).collect();
        ids.extend(self.out.pushes.iter().filter_map(|p| match &p.source {
            pitboss_model::live::PushSource::Rule(r) => Some(r.rule_id.clone()),
            _ => None,
        }));
        ids.sort();
        ids.dedup();
        ids
    }
}

pub fn eur(amount: i64) -> Value {
    json!({"amount_minor": amount, "currency": "EUR"})
}

pub fn bet(bet_id: &str, stake: i64) -> Value {
    json!({"bet_id": bet_id, "game_id": "roulette-1", "stake": eur(stake)})
}

pub fn settle(bet_id: &str, result: &str, payout: i64) -> Value {
    json!({"bet_id": bet_id, "game_id": "roulette-1", "result": result, "payout": eur(payout)})
}

pub fn deposit(tx: &str, amount: i64) -> Value {
    json!({"transaction_id": tx, "amount": eur(amount), "method": "card"})
}

pub fn withdrawal(tx: &str, amount: i64, status: &str) -> Value {
    json!({"transaction_id": tx, "amount": eur(amount), "status": status})
}

pub fn login(ip: &str, device: &str, success: bool) -> Value {
    if success {
        json!({"ip": ip, "device_id": device})
    } else {
        json!({"ip": ip, "device_id": device, "success": false, "failure_reason": "bad_credentials"})
    }
}
