//! The fraud pack, rule by rule: crafted sequences that must fire, and near misses that must
//! not.

#![allow(clippy::unwrap_used)]

use crate::common;

use common::*;
use pitboss_model::live::{Comparison, GroupBy, Recommendation};
use serde_json::json;

#[test]
fn bet_velocity_fires_on_30_bets_in_a_minute_once_per_cooldown() {
    let mut s = Script::default();
    for i in 0..40 {
        s.send(
            "p1",
            T0 + i * 1500,
            "bet_placed",
            bet(&format!("b{i}"), 100),
        );
    }
    let a = s.alerts("fraud.bet_velocity");
    assert_eq!(a.len(), 1, "the cooldown holds back the next 10");
    let m = &a[0].measures[0];
    assert_eq!(
        (m.name.as_str(), m.value, m.threshold, m.comparison),
        ("bets", 30.0, 30.0, Comparison::Gte)
    );
    assert_eq!(m.window_ms, Some(60_000));
    assert_eq!(a[0].trigger_event_id, s.sent[29].event_id.clone().unwrap());
    assert_eq!(a[0].evidence_event_ids.len(), 29);
    assert_eq!(
        a[0].evidence_event_ids[0],
        s.sent[0].event_id.clone().unwrap()
    );
    assert_eq!(a[0].reason, "30 bets within one minute (threshold 30).");
    assert_eq!(a[0].event_time.as_millis(), T0 + 29 * 1500);
    assert_eq!(a[0].received_at.as_millis(), T0 + 29 * 1500 + 50);
    assert_eq!(a[0].detected_at.as_millis(), T0 + 29 * 1500 + 100);
}

#[test]
fn bet_velocity_does_not_fire_below_the_rate() {
    let mut s = Script::default();
    for i in 0..29 {
        s.send(
            "p1",
            T0 + i * 2000,
            "bet_placed",
            bet(&format!("b{i}"), 100),
        );
    }
    // 60 more, one every 2.1 s: never 30 within a minute.
    for i in 0..60 {
        s.send(
            "p2",
            T0 + i * 2100,
            "bet_placed",
            bet(&format!("c{i}"), 100),
        );
    }
    assert!(s.alerts("fraud.bet_velocity").is_empty());
}

#[test]
fn bet_velocity_counts_a_redelivered_event_once() {
    let mut s = Script::default();
    for i in 0..20 {
        s.send(
            "p1",
            T0 + i * 1000,
            "bet_placed",
            bet(&format!("b{i}"), 100),
        );
        s.redeliver(s.sent.len() - 1);
    }
    for i in 0..20 {
        s.redeliver(i * 2);
    }
    assert!(
        s.alerts("fraud.bet_velocity").is_empty(),
        "20 distinct bets, not 60"
    );
}

fn history(s: &mut Script, player: &str, n: i64, stake: i64) {
    for i in 0..n {
        s.send(
            player,
            T0 + i * 5 * MIN,
            "bet_placed",
            bet(&format!("{player}-h{i}"), stake),
        );
    }
}

#[test]
fn stake_spike_fires_ten_times_above_the_players_median() {
    let mut s = Script::default();
    history(&mut s, "p1", 20, 1000);
    s.send("p1", T0 + 2 * H, "bet_placed", bet("big", 20_000));
    let a = s.alerts("fraud.stake_spike");
    assert_eq!(a.len(), 1);
    let spike = a[0]
        .measures
        .iter()
        .find(|m| m.threshold == 10_000.0 && m.value == 20_000.0);
    assert!(spike.is_some(), "{:?}", a[0].measures);
    assert_eq!(a[0].measures[1].currency.as_deref(), Some("EUR"));
    assert_eq!(
        a[0].reason,
        "Stake 200.00 EUR is 2000% of the player's median stake 10.00 EUR over 20 earlier bets."
    );
}

#[test]
fn stake_spike_needs_history_a_real_jump_and_a_real_amount() {
    let mut s = Script::default();
    history(&mut s, "short", 5, 1000);
    s.send("short", T0 + 2 * H, "bet_placed", bet("big1", 20_000));
    history(&mut s, "steady", 20, 5000);
    s.send("steady", T0 + 2 * H, "bet_placed", bet("big2", 20_000));
    history(&mut s, "tiny", 20, 10);
    s.send("tiny", T0 + 2 * H, "bet_placed", bet("big3", 5000));
    assert!(s.alerts("fraud.stake_spike").is_empty());
}

#[test]
fn deposit_then_withdrawal_with_little_play_fires() {
    let mut s = Script::default();
    s.send("p1", T0, "deposit", deposit("d1", 50_000));
    s.send("p1", T0 + MIN, "bet_placed", bet("b1", 5000));
    s.send("p1", T0 + 2 * MIN, "bet_placed", bet("b2", 5000));
    s.send(
        "p1",
        T0 + 3 * MIN,
        "withdrawal",
        withdrawal("w1", 45_000, "requested"),
    );
    let a = s.alerts("fraud.deposit_withdrawal_no_play");
    assert_eq!(a.len(), 1);
    assert_eq!(
        a[0].reason,
        "Withdrawal of 450.00 EUR requested after depositing 500.00 EUR and staking only 100.00 EUR (20% of the deposits) within 72 hours."
    );
    assert_eq!(
        a[0].evidence_event_ids.len(),
        3,
        "the deposit and the two bets"
    );
}

/// Hours later, the deposits and bets older than one bucket width (5 min) are folded: the
/// deposits, kept one by one (`exact`), are still the alert's evidence — the events an
/// operator checks first (they were left out with the folded bets).
#[test]
fn the_deposits_stay_the_evidence_once_the_bets_are_folded() {
    let mut s = Script::default();
    s.send("p1", T0, "deposit", deposit("d1", 30_000));
    s.send("p1", T0 + 10 * MIN, "deposit", deposit("d2", 20_000));
    let deposits: Vec<String> = s.sent.iter().filter_map(|e| e.event_id.clone()).collect();
    s.send("p1", T0 + 20 * MIN, "bet_placed", bet("b1", 5000));
    s.send("p1", T0 + 3 * H, "bet_placed", bet("b2", 5000));
    s.send(
        "p1",
        T0 + 5 * H,
        "withdrawal",
        withdrawal("w1", 45_000, "requested"),
    );
    let a = s.alerts("fraud.deposit_withdrawal_no_play");
    assert_eq!(a.len(), 1);
    assert!(
        a[0].reason
            .contains("after depositing 500.00 EUR and staking only 100.00 EUR"),
        "{}",
        a[0].reason
    );
    // Oldest first: both deposits (kept one by one), then what is still exact of the bets
    // (b2: folded in batches, later); b1, folded, is not listed.
    assert_eq!(a[0].evidence_event_ids[..2], deposits[..]);
    let b1 = s.sent[2].event_id.clone().unwrap();
    assert!(
        !a[0].evidence_event_ids.contains(&b1),
        "{:?}",
        a[0].evidence_event_ids
    );
}

#[test]
fn deposit_then_withdrawal_after_real_play_or_small_or_approved_does_not_fire() {
    let mut s = Script::default();
    s.send("played", T0, "deposit", deposit("d1", 50_000));
    for i in 0..12 {
        s.send(
            "played",
            T0 + i * MIN,
            "bet_placed",
            bet(&format!("b{i}"), 5000),
        );
    }
    s.send(
        "played",
        T0 + H,
        "withdrawal",
        withdrawal("w1", 45_000, "requested"),
    );
    s.send("small", T0, "deposit", deposit("d2", 50_000));
    s.send(
        "small",
        T0 + H,
        "withdrawal",
        withdrawal("w2", 10_000, "requested"),
    );
    s.send("approved", T0, "deposit", deposit("d3", 50_000));
    s.send(
        "approved",
        T0 + H,
        "withdrawal",
        withdrawal("w3", 45_000, "approved"),
    );
    s.send("old", T0, "deposit", deposit("d4", 50_000));
    s.send(
        "old",
        T0 + 4 * D,
        "withdrawal",
        withdrawal("w4", 45_000, "requested"),
    );
    assert!(s.alerts("fraud.deposit_withdrawal_no_play").is_empty());
}

#[test]
fn three_players_on_one_device_fire_with_the_linked_accounts() {
    let mut s = Script::default();
    s.send("p1", T0, "login", login("10.0.0.1", "dev-X", true));
    s.send("p2", T0 + H, "login", login("10.0.0.2", "dev-X", true));
    s.send("p1", T0 + 2 * H, "login", login("10.0.0.1", "dev-X", true));
    assert!(s.alerts("fraud.multi_accounting.device").is_empty());
    s.send(
        "p3",
        T0 + 3 * H,
        "deposit",
        json!({"transaction_id": "d", "amount": eur(100), "device_id": "dev-X"}),
    );
    let a = s.alerts("fraud.multi_accounting.device");
    assert_eq!(a.len(), 1);
    assert_eq!(
        (a[0].group_by, a[0].group_key.as_str()),
        (GroupBy::Device, "dev-X")
    );
    assert_eq!(a[0].player_id.as_deref(), Some("p3"));
    assert_eq!(a[0].related_player_ids, ["p1", "p2"]);
}

#[test]
fn shared_devices_below_three_players_or_a_day_apart_do_not_fire() {
    let mut s = Script::default();
    s.send("p1", T0, "login", login("10.0.0.1", "dev-A", true));
    s.send("p2", T0, "login", login("10.0.0.2", "dev-A", true));
    s.send("p3", T0, "login", login("10.0.0.3", "dev-B", true));
    s.send("p4", T0, "login", login("10.0.0.4", "dev-C", true));
    s.send("p5", T0 + 25 * H, "login", login("10.0.0.5", "dev-A", true));
    assert!(s.alerts("fraud.multi_accounting.device").is_empty());
}

#[test]
fn five_players_on_one_ip_fire_four_do_not() {
    let mut s = Script::default();
    for p in 0..4 {
        s.send(
            &format!("p{p}"),
            T0 + p * MIN,
            "login",
            login("198.51.100.7", &format!("d{p}"), true),
        );
    }
    assert!(s.alerts("fraud.multi_accounting.ip").is_empty());
    s.send("p4", T0 + 5 * MIN, "withdrawal", json!({"transaction_id": "w", "amount": eur(100), "status": "requested", "ip": "198.51.100.7"}));
    let a = s.alerts("fraud.multi_accounting.ip");
    assert_eq!(a.len(), 1);
    assert_eq!(
        (a[0].group_by, a[0].related_player_ids.len()),
        (GroupBy::Ip, 4)
    );
}

/// Five players' logins on one address read out of time order (their partitions' backlogs read
/// after a restart): the fourth in time is read last. As of its own time it sees four players
/// and the fifth, read before it, saw four too; evaluated against the window up to the
/// address's newest login, it completes the five and fires. A player's own windows still end
/// at the trigger.
#[test]
fn a_shared_address_read_out_of_time_order_still_fires_on_the_login_that_completes_it() {
    let mut s = Script::default();
    for p in [0, 1, 2, 4, 3] {
        s.send(
            &format!("p{p}"),
            T0 + p * MIN,
            "login",
            login("198.51.100.7", &format!("d{p}"), true),
        );
        if p == 4 {
            assert!(s.alerts("fraud.multi_accounting.ip").is_empty());
        }
    }
    let a = s.alerts("fraud.multi_accounting.ip");
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].player_id.as_deref(), Some("p3"));
    assert_eq!(a[0].related_player_ids.len(), 4);
    // Later logins read late on the same address: within the hour's cooldown of the hit, as of
    // the address's newest login, nothing more — neither a login from an hour before the hit
    // (as of its own time it is far from the hit) nor one 30 minutes after it.
    s.send("p5", T0 - H, "login", login("198.51.100.7", "d5", true));
    s.send(
        "p6",
        T0 + 30 * MIN,
        "login",
        login("198.51.100.7", "d6", true),
    );
    assert_eq!(s.alerts("fraud.multi_accounting.ip").len(), 1);
    // A login from before the address's day (older than the window up to its newest login):
    // not evaluated, whatever the cooldown.
    s.send(
        "p7",
        T0 + 4 * MIN - 25 * H,
        "login",
        login("198.51.100.7", "d7", true),
    );
    assert_eq!(s.alerts("fraud.multi_accounting.ip").len(), 1);
    // Past the cooldown, counted from the hit (not moved back by the late logins), a new
    // account fires again.
    s.send(
        "p8",
        T0 + 4 * MIN + H + MIN,
        "login",
        login("198.51.100.7", "d8", true),
    );
    let a = s.alerts("fraud.multi_accounting.ip");
    assert_eq!(a.len(), 2);
    assert_eq!(a[1].player_id.as_deref(), Some("p8"));
}

fn bonus(action: &str, requirement: Option<i64>, wagered: Option<i64>) -> serde_json::Value {
    let mut b = json!({"bonus_id": "welcome", "action": action, "amount": eur(10_000)});
    if let Some(r) = requirement {
        b["wagering_requirement"] = eur(r);
    }
    if let Some(w) = wagered {
        b["wagered"] = eur(w);
    }
    b
}

#[test]
fn withdrawal_before_the_wagering_requirement_fires() {
    let mut s = Script::default();
    s.send("p1", T0, "bonus", bonus("granted", Some(350_000), None));
    s.send(
        "p1",
        T0 + H,
        "bonus",
        bonus("wagered", Some(350_000), Some(105_000)),
    );
    s.send(
        "p1",
        T0 + 2 * H,
        "withdrawal",
        withdrawal("w1", 5000, "requested"),
    );
    let a = s.alerts("fraud.bonus_withdrawal_before_wagering");
    assert_eq!(a.len(), 1);
    assert_eq!(
        a[0].reason,
        "Withdrawal requested with bonus wagering at 30% (1050.00 EUR of 3500.00 EUR)."
    );
    // Straight after the grant: no progress at all.
    s.send("p2", T0, "bonus", bonus("granted", Some(350_000), None));
    s.send(
        "p2",
        T0 + MIN,
        "withdrawal",
        withdrawal("w2", 5000, "requested"),
    );
    assert_eq!(s.alerts("fraud.bonus_withdrawal_before_wagering").len(), 2);
}

#[test]
fn withdrawal_after_wagering_or_forfeit_or_without_requirement_does_not_fire() {
    let mut s = Script::default();
    s.send("met", T0, "bonus", bonus("granted", Some(350_000), None));
    s.send(
        "met",
        T0 + H,
        "bonus",
        bonus("wagered", Some(350_000), Some(350_000)),
    );
    s.send(
        "met",
        T0 + 2 * H,
        "withdrawal",
        withdrawal("w1", 5000, "requested"),
    );
    s.send("gone", T0, "bonus", bonus("granted", Some(350_000), None));
    s.send("gone", T0 + H, "bonus", bonus("forfeited", None, None));
    s.send(
        "gone",
        T0 + 2 * H,
        "withdrawal",
        withdrawal("w2", 5000, "requested"),
    );
    s.send("free", T0, "bonus", bonus("granted", None, None));
    s.send(
        "free",
        T0 + H,
        "withdrawal",
        withdrawal("w3", 5000, "requested"),
    );
    assert!(
        s.alerts("fraud.bonus_withdrawal_before_wagering")
            .is_empty()
    );
}

#[test]
fn machine_regular_betting_fires_human_jitter_does_not() {
    let mut s = Script::default();
    for i in 0..31 {
        s.send(
            "bot",
            T0 + i * 4000,
            "bet_placed",
            bet(&format!("b{i}"), 100),
        );
    }
    // A human: gaps between 2 and 9 s, from a fixed pseudo-random sequence.
    let mut t = T0;
    let mut x: i64 = 7;
    for i in 0..60 {
        x = (x * 1_103_515_245 + 12_345) % 2_147_483_648;
        t += 2000 + x % 7000;
        s.send("human", t, "bet_placed", bet(&format!("h{i}"), 100));
    }
    let a = s.alerts("fraud.bot_regular_betting");
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].player_id.as_deref(), Some("bot"));
    assert!(
        a[0].reason
            .starts_with("The last 31 bets came every 4s with a coefficient of variation of 0"),
        "{}",
        a[0].reason
    );
}

/// `n` high-stake bets, `wins` of them won; settlements without a stake (joined by bet id)
/// unless `stake_on_settle`.
fn high_stakes(s: &mut Script, player: &str, n: i64, wins: i64, stake: i64, stake_on_settle: bool) {
    for i in 0..n {
        let id = format!("{player}-{i}");
        s.send(player, T0 + i * 10 * MIN, "bet_placed", bet(&id, stake));
        let (result, payout) = if i < wins {
            ("win", stake * 2)
        } else {
            ("loss", 0)
        };
        let mut p = settle(&id, result, payout);
        if stake_on_settle {
            p["stake"] = eur(stake);
        }
        s.send(player, T0 + i * 10 * MIN + MIN, "bet_settled", p);
    }
}

#[test]
fn win_rate_on_high_stakes_fires_with_joined_or_sent_stakes() {
    let mut s = Script::default();
    high_stakes(&mut s, "joined", 20, 18, 20_000, false);
    high_stakes(&mut s, "sent", 20, 17, 20_000, true);
    let a = s.alerts("fraud.win_rate_high_stakes");
    assert_eq!(
        a.iter()
            .map(|a| a.player_id.as_deref().unwrap())
            .collect::<Vec<_>>(),
        ["joined", "sent"]
    );
    assert_eq!(
        a[0].reason,
        "Won 18 of 20 high-stake bets (90%, threshold 80%) in 7 days, net 3200.00 EUR."
    );
}

#[test]
fn win_rate_normal_or_on_low_stakes_does_not_fire() {
    let mut s = Script::default();
    high_stakes(&mut s, "lucky_small", 20, 20, 1000, false);
    high_stakes(&mut s, "normal", 20, 10, 20_000, false);
    high_stakes(&mut s, "few", 10, 10, 20_000, false);
    assert!(s.alerts("fraud.win_rate_high_stakes").is_empty());
}

#[test]
fn failed_logins_then_a_withdrawal_fire_as_account_takeover() {
    let mut s = Script::default();
    for i in 0..5 {
        s.send(
            "p1",
            T0 + i * MIN,
            "login",
            login("203.0.113.9", "dev-evil", false),
        );
    }
    s.send(
        "p1",
        T0 + 6 * MIN,
        "login",
        login("203.0.113.9", "dev-evil", true),
    );
    s.send(
        "p1",
        T0 + 8 * MIN,
        "withdrawal",
        withdrawal("w1", 90_000, "requested"),
    );
    let a = s.alerts("fraud.account_takeover");
    assert_eq!(a.len(), 1);
    assert_eq!(
        a[0].reason,
        "Withdrawal of 900.00 EUR requested after 5 failed logins within the hour (threshold 5)."
    );
    assert_eq!(
        a[0].evidence_event_ids.len(),
        5,
        "the failed logins, not the successful one"
    );
    assert_eq!(a[0].severity, pitboss_model::live::Severity::Critical);
    assert_eq!(
        (a[0].total_score, a[0].recommendation),
        (60, Recommendation::Review)
    );
}

#[test]
fn few_or_old_failed_logins_do_not_fire() {
    let mut s = Script::default();
    for i in 0..4 {
        s.send(
            "few",
            T0 + i * MIN,
            "login",
            login("203.0.113.9", "d", false),
        );
    }
    s.send(
        "few",
        T0 + 8 * MIN,
        "withdrawal",
        withdrawal("w1", 90_000, "requested"),
    );
    for i in 0..6 {
        s.send(
            "old",
            T0 + i * MIN,
            "login",
            login("203.0.113.9", "d", false),
        );
    }
    s.send(
        "old",
        T0 + 2 * H,
        "withdrawal",
        withdrawal("w2", 90_000, "requested"),
    );
    assert!(s.alerts("fraud.account_takeover").is_empty());
}
