//! A scripted day of play: normal players mixed with the fraud and risky-play patterns the
//! shipped packs detect, as canonical JSON events ready to post to ingest. Deterministic for a
//! given end time and size, so a test (or a demo) knows which players must raise what: each
//! pattern's player id names the rule it should fire (`fraud.bet_velocity` →
//! `velocity-1`…), normal players are `normal-N` and must raise nothing.
//!
//! Every event happened before `end_ms` (ingest refuses the future); the whole script spans
//! five days, which the slowest pattern (deposits speeding up) needs.

use serde_json::{Value, json};

const S: i64 = 1000;
const MIN: i64 = 60 * S;
const H: i64 = 60 * MIN;
const D: i64 = 24 * H;

/// One player's part of the script and what it should raise.
#[derive(Debug, Clone)]
pub struct Part {
    pub player: String,
    /// The rule ids it must fire (empty for a normal player).
    pub fires: Vec<&'static str>,
    pub events: Vec<Value>,
}

fn eur(amount: i64) -> Value {
    json!({"amount_minor": amount, "currency": "EUR"})
}

fn bet(id: &str, stake: i64) -> Value {
    json!({"bet_id": id, "game_id": "roulette-1", "stake": eur(stake)})
}

fn settle(id: &str, result: &str, payout: i64) -> Value {
    json!({"bet_id": id, "game_id": "roulette-1", "result": result, "payout": eur(payout)})
}

struct Builder {
    tenant: String,
    start: i64,
    n: u64,
    seed: u64,
}

impl Builder {
    /// Ids from `seed`; times from a midnight UTC five days before `end_ms`, so the
    /// late-night pattern lands at night.
    fn new(tenant: &str, end_ms: i64, seed: u64) -> Builder {
        Builder {
            tenant: tenant.to_owned(),
            start: (end_ms - 5 * D).div_euclid(D) * D,
            n: 0,
            seed,
        }
    }

    fn id(&mut self) -> String {
        self.n += 1;
        // A UUIDv8-shaped id from the seed and a counter: the same script, the same ids.
        format!(
            "{:08x}-{:04x}-8000-8000-{:012x}",
            (self.seed >> 32) as u32,
            (self.seed >> 16) as u16,
            self.n
        )
    }

    fn event(&mut self, player: &str, t: i64, kind: &str, payload: Value, env: Value) -> Value {
        let at = pitboss_model::Timestamp::from_millis(self.start + t)
            .to_rfc3339()
            .unwrap_or_default();
        let mut e = json!({
            "event_id": self.id(),
            "tenant_id": self.tenant,
            "player_id": player,
            "type": kind,
            "occurred_at": at,
            "payload": payload,
        });
        if let (Some(e), Value::Object(extra)) = (e.as_object_mut(), env) {
            e.extend(extra);
        }
        e
    }
}

/// The script for `tenant`, ending before `end_ms`, with `normal` normal players (and one of
/// each pattern per `copies`). Parts in the order they should be sent; within a part, events in
/// time order.
pub fn script(tenant: &str, end_ms: i64, normal: usize, copies: usize) -> Vec<Part> {
    let mut b = Builder::new(
        tenant,
        end_ms,
        0x0195_0000_5ce0 ^ (end_ms as u64).rotate_left(17),
    );
    let mut parts = Vec::new();
    for c in 0..copies {
        // Bet velocity: 40 bets within a minute.
        let p = format!("velocity-{c}");
        // Human jitter (1.0–1.9 s apart), so it is fast but not machine-regular.
        let events = (0..40)
            .map(|i| {
                let t = D + 14 * H + i * 1000 + (i * i * 337) % 900;
                b.event(
                    &p,
                    t,
                    "bet_placed",
                    bet(&format!("{p}-{i}"), 100),
                    json!({}),
                )
            })
            .collect();
        parts.push(Part {
            player: p,
            fires: vec!["fraud.bet_velocity"],
            events,
        });

        // Deposit, two small bets, withdrawal of most of it.
        let p = format!("cashout-{c}");
        let events = vec![
            b.event(&p, D + 14 * H, "deposit", json!({"transaction_id": format!("{p}-d"), "amount": eur(50_000), "method": "card"}), json!({})),
            b.event(&p, D + 14 * H + MIN, "bet_placed", bet(&format!("{p}-1"), 5000), json!({})),
            b.event(&p, D + 14 * H + 2 * MIN, "bet_placed", bet(&format!("{p}-2"), 5000), json!({})),
            b.event(&p, D + 14 * H + 3 * MIN, "withdrawal", json!({"transaction_id": format!("{p}-w"), "amount": eur(45_000), "status": "requested"}), json!({})),
        ];
        parts.push(Part {
            player: p,
            fires: vec!["fraud.deposit_withdrawal_no_play"],
            events,
        });

        // Account takeover: five failed logins, a success, a withdrawal.
        let p = format!("takeover-{c}");
        let mut events: Vec<Value> = (0..5)
            .map(|i| b.event(&p, 2 * D + 14 * H + i * MIN, "login", json!({"ip": "203.0.113.9", "device_id": format!("evil-{c}"), "success": false, "failure_reason": "bad_credentials"}), json!({})))
            .collect();
        events.push(b.event(
            &p,
            2 * D + 14 * H + 6 * MIN,
            "login",
            json!({"ip": "203.0.113.9", "device_id": format!("evil-{c}")}),
            json!({}),
        ));
        events.push(b.event(&p, 2 * D + 14 * H + 8 * MIN, "withdrawal", json!({"transaction_id": format!("{p}-w"), "amount": eur(90_000), "status": "requested"}), json!({})));
        parts.push(Part {
            player: p,
            fires: vec!["fraud.account_takeover"],
            events,
        });

        // Bonus, a third of the wagering, then a withdrawal.
        let p = format!("bonus-{c}");
        let bonus = |action: &str, wagered: Option<i64>| {
            let mut v = json!({"bonus_id": "welcome", "action": action, "amount": eur(10_000), "wagering_requirement": eur(350_000)});
            if let Some(w) = wagered {
                v["wagered"] = eur(w);
            }
            v
        };
        let events = vec![
            b.event(&p, D + 12 * H, "bonus", bonus("granted", None), json!({})),
            b.event(&p, D + 13 * H, "bonus", bonus("wagered", Some(105_000)), json!({})),
            b.event(&p, D + 14 * H, "withdrawal", json!({"transaction_id": format!("{p}-w"), "amount": eur(5000), "status": "requested"}), json!({})),
        ];
        parts.push(Part {
            player: p,
            fires: vec!["fraud.bonus_withdrawal_before_wagering"],
            events,
        });

        // A bot: 31 bets exactly 4 s apart.
        let p = format!("bot-{c}");
        let events = (0..31)
            .map(|i| {
                b.event(
                    &p,
                    3 * D + 14 * H + i * 4000,
                    "bet_placed",
                    bet(&format!("{p}-{i}"), 100),
                    json!({}),
                )
            })
            .collect();
        parts.push(Part {
            player: p,
            fires: vec!["fraud.bot_regular_betting"],
            events,
        });

        // Loss chasing: five lost bets, then a stake of more than twice the average.
        let p = format!("chaser-{c}");
        let mut events = Vec::new();
        for i in 0..5 {
            let id = format!("{p}-{i}");
            events.push(b.event(
                &p,
                3 * D + 16 * H + i * 2 * MIN,
                "bet_placed",
                bet(&id, 5000),
                json!({}),
            ));
            events.push(b.event(
                &p,
                3 * D + 16 * H + i * 2 * MIN + MIN,
                "bet_settled",
                settle(&id, "loss", 0),
                json!({}),
            ));
        }
        events.push(b.event(
            &p,
            3 * D + 16 * H + 15 * MIN,
            "bet_placed",
            bet(&format!("{p}-chase"), 12_000),
            json!({}),
        ));
        parts.push(Part {
            player: p,
            fires: vec!["rg.loss_chasing"],
            events,
        });

        // Late night: 20 bets from 02:00 UTC.
        let p = format!("night-{c}");
        let events = (0..20)
            .map(|i| {
                b.event(
                    &p,
                    4 * D + 2 * H + i * MIN,
                    "bet_placed",
                    bet(&format!("{p}-{i}"), 100),
                    json!({"utc_offset_min": 0}),
                )
            })
            .collect();
        parts.push(Part {
            player: p,
            fires: vec!["rg.late_night"],
            events,
        });
    }
    for n in 0..normal {
        // Normal play: a deposit, a few bets a minute or more apart at human pace, settled at
        // even odds, in the afternoon.
        let p = format!("normal-{n}");
        let base = D + (n as i64 % 3) * D + 14 * H + (n as i64 % 60) * MIN;
        let mut events = vec![b.event(
            &p,
            base,
            "deposit",
            json!({"transaction_id": format!("{p}-d"), "amount": eur(2000), "method": "card"}),
            json!({}),
        )];
        let mut t = base + MIN;
        let mut x = n as i64 * 7 + 3;
        for i in 0..8 {
            x = (x * 1_103_515_245 + 12_345) % 2_147_483_648;
            t += 60 * S + x % (90 * S);
            let id = format!("{p}-{i}");
            events.push(b.event(&p, t, "bet_placed", bet(&id, 200), json!({})));
            let (result, payout) = if x % 2 == 0 {
                ("win", 400)
            } else {
                ("loss", 0)
            };
            events.push(b.event(
                &p,
                t + 20 * S,
                "bet_settled",
                settle(&id, result, payout),
                json!({}),
            ));
        }
        parts.push(Part {
            player: p,
            fires: vec![],
            events,
        });
    }
    parts
}

/// Multi-accounting, `copies` times: five accounts (`shared-C-0` … `shared-C-4`) log in on one
/// device (`shared-device-C`) and one address (`198.51.100.{10+C}`), each after 2k small bets
/// of its own. The device rule fires once per copy (3 players) and the address rule once (5).
///
/// Unlike the patterns of [`script`], these span players, so partitions: which account's login
/// raises the alert depends on the order the engine reads the logins in, which the bus does not
/// fix across partitions. Whatever that order, the window holds all the logins read so far when
/// each is evaluated (the five share one event time), and the 3rd and 5th read raise the
/// alerts: exactly one alert per rule and copy, on one of the five accounts (docs/rules.md,
/// "Known limits of the packs").
pub fn shared_accounts(tenant: &str, end_ms: i64, copies: usize) -> Vec<Part> {
    let mut b = Builder::new(
        tenant,
        end_ms,
        0x0195_0000_5a4e ^ (end_ms as u64).rotate_left(23),
    );
    let mut parts = Vec::new();
    for c in 0..copies {
        for k in 0..5i64 {
            let p = format!("shared-{c}-{k}");
            let mut events: Vec<Value> = (0..2 * k)
                .map(|j| {
                    b.event(
                        &p,
                        D + 14 * H + j * MIN,
                        "bet_placed",
                        bet(&format!("{p}-{j}"), 100),
                        json!({}),
                    )
                })
                .collect();
            events.push(b.event(
                &p,
                D + 15 * H,
                "login",
                json!({"ip": format!("198.51.100.{}", 10 + c), "device_id": format!("shared-device-{c}")}),
                json!({}),
            ));
            parts.push(Part {
                player: p,
                fires: vec![],
                events,
            });
        }
    }
    parts
}
