//! The fields rules read from an event, by name: the envelope, every payload field, a few
//! derived ones (`loss`, `net`, `local_hour`) and custom properties (`properties.<key>`).
//! Names are resolved once, when a rule is loaded; reading a field is a `match`.

use pitboss_model::{CustomValue, Event, EventType, Payload};

/// A field a rule can read. `Stake` on `bet_settled` is the settlement's own stake or, when the
/// client omitted it, the stake joined from its `bet_placed`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Field {
    Type,
    PlayerId,
    SessionId,
    /// The player's local hour (0–23) at `occurred_at`: `utc_offset_min`, or the rule set's
    /// default offset when the event has none.
    LocalHour,
    /// The money field's currency (stake, payout or amount).
    Currency,
    Stake,
    Payout,
    Amount,
    /// `bet_settled`: stake − payout (what the player lost; negative on a win).
    Loss,
    /// `bet_settled`: payout − stake (what the player won; negative on a loss).
    Net,
    WageringRequirement,
    Wagered,
    Odds,
    DurationMs,
    Success,
    /// `bet_placed`: placed by the game's autoplay (false when the client does not say).
    Autoplay,
    BetId,
    GameId,
    RoundId,
    TransactionId,
    BonusId,
    DeviceId,
    Ip,
    PaymentInstrument,
    Country,
    UserAgent,
    Result,
    Status,
    Action,
    Method,
    BetType,
    Channel,
    FailureReason,
    Reason,
    Name,
    Property(String),
}

/// Every plain field name, for error messages and docs.
pub const NAMES: &[&str] = &[
    "type",
    "player_id",
    "session_id",
    "local_hour",
    "currency",
    "stake",
    "payout",
    "amount",
    "loss",
    "net",
    "wagering_requirement",
    "wagered",
    "odds",
    "duration_ms",
    "success",
    "autoplay",
    "bet_id",
    "game_id",
    "round_id",
    "transaction_id",
    "bonus_id",
    "device_id",
    "ip",
    "payment_instrument",
    "country",
    "user_agent",
    "result",
    "status",
    "action",
    "method",
    "bet_type",
    "channel",
    "failure_reason",
    "reason",
    "name",
];

/// A field's value on one event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Missing,
    Num(f64),
    /// Minor units and currency.
    Money(i64, &'a str),
    Text(&'a str),
    Bool(bool),
}

impl Value<'_> {
    /// The value as a number (money as minor units); `None` for text, flags and missing.
    pub fn number(self) -> Option<f64> {
        match self {
            Value::Num(n) => Some(n),
            Value::Money(m, _) => Some(m as f64),
            _ => None,
        }
    }
}

/// What the engine adds to an event before rules read it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extra {
    /// The stake joined from `bet_placed` when a `bet_settled` has none.
    pub joined_stake: Option<i64>,
    /// The offset used when the event has no `utc_offset_min`.
    pub default_offset_min: i32,
    /// What a rule's money values are in the event's currency (`[money]`).
    pub money: crate::money::Scale,
}

impl Field {
    /// Resolves a name (`stake`, `properties.level`); `None` when unknown.
    pub fn parse(name: &str) -> Option<Field> {
        if let Some(key) = name.strip_prefix("properties.") {
            return (!key.is_empty()).then(|| Field::Property(key.to_owned()));
        }
        Some(match name {
            "type" => Field::Type,
            "player_id" => Field::PlayerId,
            "session_id" => Field::SessionId,
            "local_hour" => Field::LocalHour,
            "currency" => Field::Currency,
            "stake" => Field::Stake,
            "payout" => Field::Payout,
            "amount" => Field::Amount,
            "loss" => Field::Loss,
            "net" => Field::Net,
            "wagering_requirement" => Field::WageringRequirement,
            "wagered" => Field::Wagered,
            "odds" => Field::Odds,
            "duration_ms" => Field::DurationMs,
            "success" => Field::Success,
            "autoplay" => Field::Autoplay,
            "bet_id" => Field::BetId,
            "game_id" => Field::GameId,
            "round_id" => Field::RoundId,
            "transaction_id" => Field::TransactionId,
            "bonus_id" => Field::BonusId,
            "device_id" => Field::DeviceId,
            "ip" => Field::Ip,
            "payment_instrument" => Field::PaymentInstrument,
            "country" => Field::Country,
            "user_agent" => Field::UserAgent,
            "result" => Field::Result,
            "status" => Field::Status,
            "action" => Field::Action,
            "method" => Field::Method,
            "bet_type" => Field::BetType,
            "channel" => Field::Channel,
            "failure_reason" => Field::FailureReason,
            "reason" => Field::Reason,
            "name" => Field::Name,
            _ => return None,
        })
    }

    /// Whether the field is an amount of money (rendered with its currency, summed only within
    /// one currency).
    pub fn is_money(&self) -> bool {
        matches!(
            self,
            Field::Stake
                | Field::Payout
                | Field::Amount
                | Field::Loss
                | Field::Net
                | Field::WageringRequirement
                | Field::Wagered
        )
    }

    /// Whether the field holds a number a measure can add up (money, hours, odds, durations,
    /// and custom properties, which may).
    pub fn is_numeric(&self) -> bool {
        self.is_money()
            || matches!(
                self,
                Field::LocalHour | Field::Odds | Field::DurationMs | Field::Property(_)
            )
    }

    /// Reads the field from an event.
    pub fn get<'e>(&self, e: &'e Event, extra: &Extra) -> Value<'e> {
        use Value::{Missing, Money as M, Num, Text};
        let text = |s: &'e Option<String>| s.as_deref().map_or(Missing, Text);
        let money = |m: &'e pitboss_model::Money| M(m.amount_minor, m.currency.as_str());
        match (self, &e.payload) {
            (Field::Type, _) => Text(e.event_type().as_str()),
            (Field::PlayerId, _) => Text(&e.player_id),
            (Field::SessionId, _) => text(&e.session_id),
            (Field::LocalHour, _) => {
                let offset = e.utc_offset_min.unwrap_or(extra.default_offset_min);
                let local_ms = e.occurred_at.as_millis() + i64::from(offset) * 60_000;
                Num(local_ms.div_euclid(3_600_000).rem_euclid(24) as f64)
            }
            (Field::Currency, p) => money_of(p).map_or(Missing, |m| Text(m.currency.as_str())),
            (Field::Stake, Payload::BetPlaced(b)) => money(&b.stake),
            (Field::Stake, Payload::BetSettled(b)) => match (&b.stake, extra.joined_stake) {
                (Some(s), _) => money(s),
                (None, Some(s)) => M(s, b.payout.currency.as_str()),
                (None, None) => Missing,
            },
            (Field::Payout, Payload::BetSettled(b)) => money(&b.payout),
            (Field::Loss | Field::Net, Payload::BetSettled(b)) => {
                let stake = b
                    .stake
                    .as_ref()
                    .map(|s| s.amount_minor)
                    .or(extra.joined_stake);
                match stake {
                    Some(s) if *self == Field::Loss => {
                        M(s - b.payout.amount_minor, &b.payout.currency)
                    }
                    Some(s) => M(b.payout.amount_minor - s, &b.payout.currency),
                    None => Missing,
                }
            }
            (Field::Amount, Payload::Deposit(d)) => money(&d.amount),
            (Field::Amount, Payload::Withdrawal(w)) => money(&w.amount),
            (Field::Amount, Payload::Bonus(b)) => money(&b.amount),
            (Field::WageringRequirement, Payload::Bonus(b)) => {
                b.wagering_requirement.as_ref().map_or(Missing, money)
            }
            (Field::Wagered, Payload::Bonus(b)) => b.wagered.as_ref().map_or(Missing, money),
            (Field::Odds, Payload::BetPlaced(b)) => b
                .odds
                .as_deref()
                .and_then(|o| o.parse::<f64>().ok())
                .map_or(Missing, Num),
            (Field::DurationMs, Payload::SessionEnded(s)) => {
                s.duration_ms.map_or(Missing, |d| Num(d as f64))
            }
            (Field::Success, Payload::Login(l)) => Value::Bool(l.success),
            (Field::Autoplay, Payload::BetPlaced(b)) => Value::Bool(b.autoplay),
            (Field::BetId, Payload::BetPlaced(b)) => Text(&b.bet_id),
            (Field::BetId, Payload::BetSettled(b)) => Text(&b.bet_id),
            (Field::GameId, Payload::BetPlaced(b)) => Text(&b.game_id),
            (Field::GameId, Payload::BetSettled(b)) => Text(&b.game_id),
            (Field::RoundId, Payload::BetPlaced(b)) => text(&b.round_id),
            (Field::RoundId, Payload::BetSettled(b)) => text(&b.round_id),
            (Field::TransactionId, Payload::Deposit(d)) => Text(&d.transaction_id),
            (Field::TransactionId, Payload::Withdrawal(w)) => Text(&w.transaction_id),
            (Field::BonusId, Payload::Bonus(b)) => Text(&b.bonus_id),
            (Field::DeviceId, Payload::BetPlaced(b)) => text(&b.device_id),
            (Field::DeviceId, Payload::Login(l)) => text(&l.device_id),
            (Field::DeviceId, Payload::SessionStarted(s)) => text(&s.device_id),
            (Field::DeviceId, Payload::Deposit(d)) => text(&d.device_id),
            (Field::DeviceId, Payload::Withdrawal(w)) => text(&w.device_id),
            (Field::Ip, Payload::Login(l)) => Text(&l.ip),
            (Field::Ip, Payload::Deposit(d)) => text(&d.ip),
            (Field::Ip, Payload::Withdrawal(w)) => text(&w.ip),
            (Field::PaymentInstrument, Payload::Deposit(d)) => text(&d.payment_instrument),
            (Field::PaymentInstrument, Payload::Withdrawal(w)) => text(&w.payment_instrument),
            (Field::Country, Payload::Login(l)) => text(&l.country),
            (Field::UserAgent, Payload::Login(l)) => text(&l.user_agent),
            (Field::Result, Payload::BetSettled(b)) => Text(enum_str(&b.result)),
            (Field::Status, Payload::Withdrawal(w)) => Text(enum_str(&w.status)),
            (Field::Action, Payload::Bonus(b)) => Text(enum_str(&b.action)),
            (Field::Method, Payload::Deposit(d)) => {
                d.method.as_ref().map_or(Missing, |m| Text(enum_str(m)))
            }
            (Field::Method, Payload::Withdrawal(w)) => {
                w.method.as_ref().map_or(Missing, |m| Text(enum_str(m)))
            }
            (Field::BetType, Payload::BetPlaced(b)) => {
                b.bet_type.as_ref().map_or(Missing, |m| Text(enum_str(m)))
            }
            (Field::Channel, Payload::BetPlaced(b)) => {
                b.channel.as_ref().map_or(Missing, |m| Text(enum_str(m)))
            }
            (Field::Channel, Payload::SessionStarted(s)) => {
                s.channel.as_ref().map_or(Missing, |m| Text(enum_str(m)))
            }
            (Field::FailureReason, Payload::Login(l)) => l
                .failure_reason
                .as_ref()
                .map_or(Missing, |m| Text(enum_str(m))),
            (Field::Reason, Payload::Logout(l)) => text(&l.reason),
            (Field::Reason, Payload::SessionEnded(s)) => text(&s.reason),
            (Field::Name, Payload::Custom(c)) => Text(&c.name),
            (Field::Property(k), Payload::Custom(c)) => match c.properties.get(k) {
                None => Missing,
                Some(CustomValue::Flag(b)) => Value::Bool(*b),
                Some(CustomValue::Integer(i)) => Num(*i as f64),
                Some(CustomValue::Number(n)) => Num(*n),
                Some(CustomValue::Text(t)) => Text(t),
            },
            _ => Missing,
        }
    }

    /// Whether events of type `t` can carry this field at all (used to refuse rules that read a
    /// field none of their events have).
    pub fn possible_on(&self, t: EventType) -> bool {
        use EventType as T;
        match self {
            Field::Type | Field::PlayerId | Field::SessionId | Field::LocalHour => true,
            Field::Currency => matches!(
                t,
                T::BetPlaced | T::BetSettled | T::Deposit | T::Withdrawal | T::Bonus
            ),
            Field::Stake => matches!(t, T::BetPlaced | T::BetSettled),
            Field::Payout | Field::Loss | Field::Net | Field::Result => t == T::BetSettled,
            Field::Amount => matches!(t, T::Deposit | T::Withdrawal | T::Bonus),
            Field::WageringRequirement | Field::Wagered | Field::BonusId | Field::Action => {
                t == T::Bonus
            }
            Field::Odds | Field::BetType | Field::Autoplay => t == T::BetPlaced,
            Field::DurationMs => t == T::SessionEnded,
            Field::Success | Field::Country | Field::UserAgent | Field::FailureReason => {
                t == T::Login
            }
            Field::BetId | Field::GameId | Field::RoundId => {
                matches!(t, T::BetPlaced | T::BetSettled)
            }
            Field::TransactionId | Field::Method | Field::PaymentInstrument => {
                matches!(t, T::Deposit | T::Withdrawal)
            }
            Field::DeviceId => matches!(
                t,
                T::BetPlaced | T::Login | T::SessionStarted | T::Deposit | T::Withdrawal
            ),
            Field::Ip => matches!(t, T::Login | T::Deposit | T::Withdrawal),
            Field::Channel => matches!(t, T::BetPlaced | T::SessionStarted),
            Field::Status => t == T::Withdrawal,
            Field::Reason => matches!(t, T::Logout | T::SessionEnded),
            Field::Name | Field::Property(_) => t == T::Custom,
        }
    }
}

fn money_of(p: &Payload) -> Option<&pitboss_model::Money> {
    match p {
        Payload::BetPlaced(b) => Some(&b.stake),
        Payload::BetSettled(b) => Some(&b.payout),
        Payload::Deposit(d) => Some(&d.amount),
        Payload::Withdrawal(w) => Some(&w.amount),
        Payload::Bonus(b) => Some(&b.amount),
        _ => None,
    }
}

/// The currency of an event's money, if it has any.
pub fn currency_of(e: &Event) -> Option<&str> {
    money_of(&e.payload).map(|m| m.currency.as_str())
}

/// The snake_case name of a model enum value, without allocating.
fn enum_str<T: EnumName>(v: &T) -> &'static str {
    v.name()
}

trait EnumName {
    fn name(&self) -> &'static str;
}

macro_rules! names {
    ($t:ty, { $($v:ident => $s:literal),+ $(,)? }) => {
        impl EnumName for $t {
            fn name(&self) -> &'static str {
                match self { $(<$t>::$v => $s),+ }
            }
        }
    };
}

names!(pitboss_model::SettlementResult, { Win => "win", Loss => "loss", Void => "void", Cashout => "cashout" });
names!(pitboss_model::WithdrawalStatus, { Requested => "requested", Approved => "approved", Cancelled => "cancelled" });
names!(pitboss_model::BonusAction, { Granted => "granted", Wagered => "wagered", Released => "released", Forfeited => "forfeited" });
names!(pitboss_model::PaymentMethod, {
    Card => "card", BankTransfer => "bank_transfer", Ewallet => "ewallet", Crypto => "crypto",
    Voucher => "voucher", Other => "other",
});
names!(pitboss_model::BetType, {
    Single => "single", Accumulator => "accumulator", System => "system", Spin => "spin",
    Hand => "hand", Other => "other",
});
names!(pitboss_model::Channel, {
    Web => "web", MobileWeb => "mobile_web", Ios => "ios", Android => "android",
    Desktop => "desktop", Retail => "retail", Api => "api",
});
names!(pitboss_model::LoginFailure, {
    BadCredentials => "bad_credentials", UnknownAccount => "unknown_account",
    AccountLocked => "account_locked", SecondFactor => "second_factor", Other => "other",
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_and_enum_names_match_serde() {
        for n in NAMES {
            assert!(Field::parse(n).is_some(), "{n}");
        }
        assert_eq!(
            Field::parse("properties.level"),
            Some(Field::Property("level".into()))
        );
        assert_eq!(Field::parse("properties."), None);
        assert_eq!(Field::parse("stak"), None);
        let serde_name = |v: serde_json::Value| v.as_str().map(str::to_owned);
        for r in [
            pitboss_model::LoginFailure::SecondFactor,
            pitboss_model::LoginFailure::AccountLocked,
        ] {
            assert_eq!(
                Some(r.name().to_owned()),
                serde_name(serde_json::to_value(r).expect("json"))
            );
        }
        let m = pitboss_model::PaymentMethod::BankTransfer;
        assert_eq!(
            Some(m.name().to_owned()),
            serde_name(serde_json::to_value(m).expect("json"))
        );
    }
}
