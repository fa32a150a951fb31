//! `[money]`: the shipped packs' money values (written for EUR) judged for events in other
//! currencies — converted at the set's rates into the event's minor units, and rounded to a
//! whole one — while windows, alerts and pushes keep the event's own currency.

#![allow(clippy::unwrap_used)]

use crate::common;

use common::*;
use pitboss_antifraud::RuleSet;
use pitboss_model::live::Comparison;
use serde_json::{Value, json};

/// The shipped packs with a `[money]` table beside them (an operator's `rules/money.toml`).
fn with_money(table: &str) -> RuleSet {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../rules");
    let mut files = RuleSet::read_dir(&dir).unwrap();
    files.push(("money.toml".into(), table.into()));
    RuleSet::from_sources(&files).unwrap_or_else(|e| panic!("{e}"))
}

/// 1 JPY = 0.0061 EUR (100.00 EUR = 16,393.44 yen), 1 USD = 0.92 EUR (100.00 EUR = 108.70 USD).
const RATES: &str = "[money]\ncurrency = \"EUR\"\nrates = { JPY = 0.0061, USD = 0.92 }\n";

fn cash(amount: i64, currency: &str) -> Value {
    json!({"amount_minor": amount, "currency": currency})
}

fn bet_in(bet_id: &str, stake: i64, currency: &str) -> Value {
    json!({"bet_id": bet_id, "game_id": "roulette-1", "stake": cash(stake, currency)})
}

/// 20 bets of `stake`, 5 minutes apart, then one of `big` two hours in.
fn spike(s: &mut Script, player: &str, stake: i64, big: i64, currency: &str) {
    for i in 0..20 {
        let id = format!("{player}-h{i}");
        s.send(
            player,
            T0 + i * 5 * MIN,
            "bet_placed",
            bet_in(&id, stake, currency),
        );
    }
    let id = format!("{player}-big");
    s.send(player, T0 + 2 * H, "bet_placed", bet_in(&id, big, currency));
}

fn spiked(s: &Script) -> Vec<&str> {
    s.alerts("fraud.stake_spike")
        .iter()
        .map(|a| a.player_id.as_deref().unwrap())
        .collect()
}

/// `fraud.stake_spike` asks for a stake of at least 10000 (100.00 EUR) and ten times the
/// player's median. In yen, the same 100 EUR is 16,394 yen: 16,393 does not fire, 16,394
/// does, and the alert gives the threshold it was judged by in yen, as its stake.
#[test]
fn a_stake_threshold_written_in_euros_is_judged_in_yen_at_the_sets_rate() {
    let mut s = Script::new(with_money(RATES));
    spike(&mut s, "below", 1_000, 16_393, "JPY");
    spike(&mut s, "at", 1_000, 16_394, "JPY");
    spike(&mut s, "euro", 1_000, 10_000, "EUR");
    assert_eq!(spiked(&s), ["at", "euro"]);
    let a = &s.alerts("fraud.stake_spike")[0];
    let stake = a.measures.iter().find(|m| m.name == "stake").unwrap();
    assert_eq!(
        (
            stake.value,
            stake.threshold,
            stake.comparison,
            stake.currency.as_deref()
        ),
        (16_394.0, 16_394.0, Comparison::Gte, Some("JPY"))
    );
    assert_eq!(
        a.reason,
        "Stake 16394 JPY is 1639% of the player's median stake 1000 JPY over 20 earlier bets."
    );
    // The set's own currency is compared as written.
    let euro = &s.alerts("fraud.stake_spike")[1];
    let stake = euro.measures.iter().find(|m| m.name == "stake").unwrap();
    assert_eq!((stake.value, stake.threshold), (10_000.0, 10_000.0));
    assert_eq!(s.out.unpriced, 0);

    // Without the table, 10000 is 10,000 yen: the 16,393 yen bet fires too.
    let mut s = Script::default();
    spike(&mut s, "below", 1_000, 16_393, "JPY");
    assert_eq!(spiked(&s), ["below"]);
}

/// A filter's number on a money field is converted too: `fraud.win_rate_high_stakes` counts
/// bets of at least 10000 (100.00 EUR), that is 10,870 US cents.
#[test]
fn a_filters_money_is_converted_as_a_conditions_is() {
    let mut s = Script::new(with_money(RATES));
    for (player, stake) in [("cents_short", 10_869), ("enough", 10_870)] {
        for i in 0..20 {
            let id = format!("{player}-{i}");
            s.send(
                player,
                T0 + i * 10 * MIN,
                "bet_placed",
                bet_in(&id, stake, "USD"),
            );
            let (result, payout) = if i < 18 {
                ("win", stake * 2)
            } else {
                ("loss", 0)
            };
            let settle = json!({"bet_id": id, "game_id": "roulette-1", "result": result,
                                "payout": cash(payout, "USD")});
            s.send(player, T0 + i * 10 * MIN + MIN, "bet_settled", settle);
        }
    }
    let a = s.alerts("fraud.win_rate_high_stakes");
    let players: Vec<_> = a.iter().map(|a| a.player_id.as_deref().unwrap()).collect();
    assert_eq!(players, ["enough"]);
    assert_eq!(
        a[0].reason,
        "Won 18 of 20 high-stake bets (90%, threshold 80%) in 7 days, net 1739.20 USD."
    );
}

/// A currency the table has no rate for is compared as written (as without a table) and
/// counted, so an operator sees a rate is missing.
#[test]
fn a_currency_without_a_rate_is_compared_as_written_and_counted() {
    let mut s = Script::new(with_money(RATES));
    spike(&mut s, "pence", 1_000, 10_000, "GBP");
    assert_eq!(spiked(&s), ["pence"]);
    assert_eq!(s.out.unpriced, 21, "every GBP event");
    assert_eq!(s.out.unpriced_first.as_deref(), Some("GBP"));
}

/// Loss chasing sums an hour's losses within the trigger's currency and asks for 20000 (200.00
/// EUR) of them: 32,787 yen; 17,095 pence at 1 GBP = 1.17 EUR (a value converted to less
/// than written: the running totals' early check converts it too, or 17,095 pence would be
/// judged against 20,000 and never fire).
#[test]
fn a_windows_sum_is_judged_in_its_currency_against_the_converted_value() {
    let chase = |s: &mut Script, player: &str, lost_each: i64, currency: &str| {
        // Five losing bets of `lost_each`, then one at three times the stake.
        for i in 0..5 {
            let id = format!("{player}-{i}");
            let t = T0 + i * 5 * MIN;
            s.send(player, t, "bet_placed", bet_in(&id, lost_each, currency));
            let settle = json!({"bet_id": id, "game_id": "roulette-1", "result": "loss",
                                "payout": cash(0, currency)});
            s.send(player, t + MIN, "bet_settled", settle);
        }
        let id = format!("{player}-up");
        s.send(
            player,
            T0 + 30 * MIN,
            "bet_placed",
            bet_in(&id, lost_each * 3, currency),
        );
    };
    let mut s = Script::new(with_money(
        "[money]\ncurrency = \"EUR\"\nrates = { JPY = 0.0061, GBP = 1.17 }\n",
    ));
    // 5 × 6,557 = 32,785 yen lost: under 32,787. 5 × 6,558 = 32,790: over.
    chase(&mut s, "short", 6_557, "JPY");
    chase(&mut s, "over", 6_558, "JPY");
    // 5 × 3,418 = 17,090 pence: under 17,095. 5 × 3,419 = 17,095: at it.
    chase(&mut s, "pence_short", 3_418, "GBP");
    chase(&mut s, "pence_at", 3_419, "GBP");
    let fired: Vec<_> = s
        .pushes("rg.loss_chasing")
        .iter()
        .map(|p| p.target.clone())
        .collect();
    assert_eq!(fired.len(), 2, "{fired:?}");
    let a = s.alerts("rg.loss_chasing");
    let players: Vec<_> = a.iter().map(|a| a.player_id.as_deref().unwrap()).collect();
    assert_eq!(players, ["over", "pence_at"]);
    let lost = a[0].measures.iter().find(|m| m.name == "lost").unwrap();
    assert_eq!(
        (lost.value, lost.threshold, lost.currency.as_deref()),
        (32_790.0, 32_787.0, Some("JPY"))
    );
    let lost = a[1].measures.iter().find(|m| m.name == "lost").unwrap();
    assert_eq!(
        (lost.value, lost.threshold, lost.currency.as_deref()),
        (17_095.0, 17_095.0, Some("GBP"))
    );
}

/// A baseline is in the trigger's currency already and is not converted: loss chasing's
/// "twice the hour's average stake" after 7,000 yen bets is 14,000 yen (converted as if it
/// were euro cents, it would be 22,951 yen, and the bet would not fire).
#[test]
fn a_baseline_stays_in_the_events_currency() {
    let mut s = Script::new(with_money(RATES));
    for i in 0..5 {
        let id = format!("b{i}");
        let t = T0 + i * 5 * MIN;
        s.send("p1", t, "bet_placed", bet_in(&id, 7_000, "JPY"));
        let settle = json!({"bet_id": id, "game_id": "roulette-1", "result": "loss",
                            "payout": cash(0, "JPY")});
        s.send("p1", t + MIN, "bet_settled", settle);
    }
    // 35,000 yen lost (over 32,787); a stake of 14,000 is twice the average of 7,000.
    s.send(
        "p1",
        T0 + 30 * MIN,
        "bet_placed",
        bet_in("up", 14_000, "JPY"),
    );
    let a = s.alerts("rg.loss_chasing");
    assert_eq!(a.len(), 1);
    let stake = a[0].measures.iter().find(|m| m.name == "stake").unwrap();
    assert_eq!((stake.value, stake.threshold), (14_000.0, 14_000.0));
}
