//! The event envelope and typed payloads in their canonical JSON form.
//!
//! JSON shape (see docs/schema/event.schema.json, generated from these types):
//! `{"event_id", "tenant_id", "player_id", "session_id"?, "type", "occurred_at",
//!   "received_at"?, "schema_version", "late"?, "payload": {...}}`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// The contract version this crate reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

fn default_schema_version() -> u32 {
    SCHEMA_VERSION
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One player event: the envelope plus a typed payload.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[schemars(
    title = "Pitboss event",
    description = "A player event in canonical JSON form"
)]
pub struct Event {
    /// UUID of the event; clients should send a UUIDv7 so that retries are idempotent.
    /// Ingest generates a UUIDv7 when it is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// Operator (tenant) the event belongs to; `[A-Za-z0-9._~@+-]`, at most 64 characters.
    pub tenant_id: String,
    /// Player id within the tenant; `[A-Za-z0-9._~@+-]`, at most 128 characters.
    pub player_id: String,
    /// Game or wallet session the event belongs to. Issued by the operator's backend (the game
    /// server or the wallet) when the session starts, carried by every event of that session
    /// and bracketed by `session_started` / `session_ended`; Pitboss never issues one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// When the event happened, by the client's clock (RFC 3339, millisecond precision).
    pub occurred_at: Timestamp,
    /// When Pitboss accepted the event (set by ingest; clients may omit it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at: Option<Timestamp>,
    /// Contract version the event was written against.
    #[serde(default = "default_schema_version")]
    pub schema_version: u32,
    /// Set by validation when `occurred_at` is older than the lateness horizon.
    #[serde(default, skip_serializing_if = "is_false")]
    pub late: bool,
    /// The player's offset from UTC at `occurred_at`, in minutes (`120` for UTC+2, `-300` for
    /// UTC-5), from -720 to 840: lets rules reason about the player's local time (late-night
    /// play). Absent when the client does not know it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utc_offset_min: Option<i32>,
    /// The event type (`type`) and its typed body (`payload`).
    #[serde(flatten)]
    pub payload: Payload,
}

/// The typed body of an event; the variant is the event's `type`.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(tag = "type", content = "payload", rename_all = "snake_case")]
pub enum Payload {
    BetPlaced(BetPlaced),
    BetSettled(BetSettled),
    Deposit(Deposit),
    Withdrawal(Withdrawal),
    Login(Login),
    Logout(Logout),
    SessionStarted(SessionStarted),
    SessionEnded(SessionEnded),
    Bonus(Bonus),
    Custom(Custom),
}

/// The event types, as they appear in the `type` field.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    BetPlaced,
    BetSettled,
    Deposit,
    Withdrawal,
    Login,
    Logout,
    SessionStarted,
    SessionEnded,
    Bonus,
    Custom,
}

impl EventType {
    /// Every event type, in contract order.
    pub const ALL: [EventType; 10] = [
        EventType::BetPlaced,
        EventType::BetSettled,
        EventType::Deposit,
        EventType::Withdrawal,
        EventType::Login,
        EventType::Logout,
        EventType::SessionStarted,
        EventType::SessionEnded,
        EventType::Bonus,
        EventType::Custom,
    ];

    /// The `type` string of this event type.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::BetPlaced => "bet_placed",
            EventType::BetSettled => "bet_settled",
            EventType::Deposit => "deposit",
            EventType::Withdrawal => "withdrawal",
            EventType::Login => "login",
            EventType::Logout => "logout",
            EventType::SessionStarted => "session_started",
            EventType::SessionEnded => "session_ended",
            EventType::Bonus => "bonus",
            EventType::Custom => "custom",
        }
    }

    /// Parses a `type` string.
    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Payload {
    /// The event type of this payload.
    pub fn event_type(&self) -> EventType {
        match self {
            Payload::BetPlaced(_) => EventType::BetPlaced,
            Payload::BetSettled(_) => EventType::BetSettled,
            Payload::Deposit(_) => EventType::Deposit,
            Payload::Withdrawal(_) => EventType::Withdrawal,
            Payload::Login(_) => EventType::Login,
            Payload::Logout(_) => EventType::Logout,
            Payload::SessionStarted(_) => EventType::SessionStarted,
            Payload::SessionEnded(_) => EventType::SessionEnded,
            Payload::Bonus(_) => EventType::Bonus,
            Payload::Custom(_) => EventType::Custom,
        }
    }
}

impl Event {
    /// The event type.
    pub fn event_type(&self) -> EventType {
        self.payload.event_type()
    }

    /// The bus key: `tenant:player`, so one player's events stay in order on one partition.
    pub fn bus_key(&self) -> String {
        let mut key = String::with_capacity(self.tenant_id.len() + 1 + self.player_id.len());
        key.push_str(&self.tenant_id);
        key.push(':');
        key.push_str(&self.player_id);
        key
    }
}

/// An amount of money: integer minor units plus an ISO 4217 currency code. Never a float.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Money {
    /// Amount in minor units (cents for EUR, yen for JPY).
    #[serde(deserialize_with = "minor_units")]
    pub amount_minor: i64,
    /// ISO 4217 alphabetic code, upper case.
    pub currency: String,
}

/// The start of the message of an integer amount past what an `i64` holds: the decoder reports
/// it as `amount_too_large`, like an amount over the configured ceiling.
pub(crate) const AMOUNT_PAST_I64: &str = "amount too large";

/// The start of the message of an integer amount below what an `i64` holds: the decoder
/// reports it as `negative_amount`, like any amount below zero.
pub(crate) const AMOUNT_BELOW_I64: &str = "negative amount";

/// `amount_minor`: an integer. One past what 64 bits hold (an unsigned integer over 2⁶³ − 1,
/// or an integer so large that JSON parsers read it as a float) is too large, not of another
/// type; a fraction is of another type.
fn minor_units<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    struct Minor;
    impl serde::de::Visitor<'_> for Minor {
        type Value = i64;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("i64")
        }

        fn visit_i64<E>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v).map_err(|_| {
                E::custom(format!(
                    "{AMOUNT_PAST_I64}: {v} is past the largest amount, 2^63 - 1 minor units"
                ))
            })
        }

        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<i64, E> {
            if v.is_finite() && v.fract() == 0.0 && v <= i64::MIN as f64 {
                Err(E::custom(format!(
                    "{AMOUNT_BELOW_I64}: {v:e} is below zero (an amount is never negative)"
                )))
            } else if v.is_finite() && v.fract() == 0.0 && v.abs() >= i64::MAX as f64 {
                Err(E::custom(format!(
                    "{AMOUNT_PAST_I64}: {v:e} is past the largest amount, 2^63 - 1 minor units"
                )))
            } else {
                Err(E::invalid_type(serde::de::Unexpected::Float(v), &self))
            }
        }
    }
    d.deserialize_i64(Minor)
}

impl Money {
    /// Builds an amount from minor units and a currency code.
    pub fn new(amount_minor: i64, currency: &str) -> Self {
        Money {
            amount_minor,
            currency: currency.to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BetType {
    Single,
    Accumulator,
    System,
    Spin,
    Hand,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Web,
    MobileWeb,
    Ios,
    Android,
    Desktop,
    Retail,
    Api,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BetPlaced {
    pub bet_id: String,
    pub game_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round_id: Option<String>,
    pub stake: Money,
    /// Decimal odds as text ("2.50"), for sports bets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub odds: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bet_type: Option<BetType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<Channel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Placed by the game's autoplay (a slot spinning on its own), not by a click: machine-
    /// regular by design, so rules that look for bots can leave it out. Absent: false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub autoplay: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SettlementResult {
    Win,
    Loss,
    Void,
    Cashout,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BetSettled {
    pub bet_id: String,
    pub game_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round_id: Option<String>,
    pub result: SettlementResult,
    /// What the player receives: 0 on a loss, the stake back on a void.
    pub payout: Money,
    /// The stake of the settled bet, as placed. Optional: when absent, consumers that need it
    /// (the rules engine) join the settlement to its `bet_placed` by `bet_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stake: Option<Money>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentMethod {
    Card,
    BankTransfer,
    Ewallet,
    Crypto,
    Voucher,
    Other,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Deposit {
    pub transaction_id: String,
    pub amount: Money,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<PaymentMethod>,
    /// Device the request came from (the same id as on `login` and `bet_placed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// IPv4 or IPv6 address the request came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// A stable, non-reversible fingerprint of the payment instrument (card, IBAN, wallet)
    /// issued by the payment provider or the operator, e.g. a hash of the card number: the same
    /// instrument always has the same fingerprint. Never the instrument itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_instrument: Option<String>,
}

/// Where a withdrawal is in its lifecycle. One withdrawal is one `transaction_id`: first
/// `requested`, then either `approved` (paid out) or `cancelled` (by the player or the operator;
/// the money goes back to the player's balance). Each step is its own event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WithdrawalStatus {
    Requested,
    Approved,
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Withdrawal {
    pub transaction_id: String,
    pub amount: Money,
    pub status: WithdrawalStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<PaymentMethod>,
    /// Device the request came from (the same id as on `login` and `bet_placed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// IPv4 or IPv6 address the request came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// A stable, non-reversible fingerprint of the payment instrument (card, IBAN, wallet)
    /// issued by the payment provider or the operator, e.g. a hash of the card number: the same
    /// instrument always has the same fingerprint. Never the instrument itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_instrument: Option<String>,
}

fn default_true() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    /// IPv4 or IPv6 address of the client.
    pub ip: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// ISO 3166-1 alpha-2 country code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// False for a failed attempt; defaults to true.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub success: bool,
    /// Why a failed attempt failed; only on a failed attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<LoginFailure>,
}

/// Why a login attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LoginFailure {
    /// Wrong password (or other first factor).
    BadCredentials,
    /// No such account.
    UnknownAccount,
    /// The account is locked or self-excluded.
    AccountLocked,
    /// The second factor (OTP, push approval) failed.
    SecondFactor,
    Other,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Logout {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionStarted {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<Channel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionEnded {
    /// Length of the session in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BonusAction {
    Granted,
    Wagered,
    Released,
    Forfeited,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Bonus {
    pub bonus_id: String,
    pub action: BonusAction,
    pub amount: Money,
    /// How much the player must stake before the bonus can be withdrawn (the wagering
    /// requirement), when the bonus has one. Sent with `granted`, repeatable on later actions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wagering_requirement: Option<Money>,
    /// How much of the requirement the player has staked so far (the progress), as of this
    /// event; typically sent with `wagered` and `released`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wagered: Option<Money>,
}

/// A scalar property value of a custom event.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum CustomValue {
    Flag(bool),
    Integer(i64),
    Number(f64),
    Text(String),
}

/// By hand rather than `untagged`: one pass without buffering, and a value of another JSON type
/// (an object, an array, null) is refused as `invalid type: map, expected …`, which the decoder
/// reports as `invalid_type`, instead of serde's "data did not match any variant".
impl<'de> Deserialize<'de> for CustomValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CustomValueVisitor)
    }
}

struct CustomValueVisitor;

impl serde::de::Visitor<'_> for CustomValueVisitor {
    type Value = CustomValue;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string, integer, number or bool (custom properties are flat)")
    }

    fn visit_bool<E>(self, v: bool) -> Result<CustomValue, E> {
        Ok(CustomValue::Flag(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<CustomValue, E> {
        Ok(CustomValue::Integer(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<CustomValue, E> {
        // Above i64::MAX: a number, as the untagged form decoded it.
        Ok(i64::try_from(v).map_or(CustomValue::Number(v as f64), CustomValue::Integer))
    }

    fn visit_f64<E>(self, v: f64) -> Result<CustomValue, E> {
        Ok(CustomValue::Number(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<CustomValue, E> {
        Ok(CustomValue::Text(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<CustomValue, E> {
        Ok(CustomValue::Text(v))
    }
}

/// An operator-defined event: a name and a bounded, flat set of scalar properties.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Custom {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, CustomValue>,
}
