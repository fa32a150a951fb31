//! Conversion between the model and the protobuf form (bus, gRPC), lossless in both directions.
//! Decoding protobuf never panics: bad bytes, missing oneofs and unknown enum values become
//! violations with a field path.

use pitboss_proto::v1 as pb;
use prost::Message;

use crate::event::*;
use crate::time::Timestamp;
use crate::validate::{Violation, ViolationCode};

/// Encodes an event to protobuf bytes (the bus record value).
pub fn encode_proto(event: &Event) -> Vec<u8> {
    pb::Event::from(event).encode_to_vec()
}

/// [`encode_proto`] consuming the event (no string copies).
pub fn encode_proto_owned(event: Event) -> Vec<u8> {
    pb::Event::from(event).encode_to_vec()
}

/// Decodes protobuf bytes into an event.
pub fn decode_proto(bytes: &[u8]) -> Result<Event, Violation> {
    let msg = pb::Event::decode(bytes)
        .map_err(|e| Violation::new("", ViolationCode::Malformed, format!("protobuf: {e}")))?;
    Event::try_from(msg)
}

pub(crate) fn none_if_empty(s: String) -> Option<String> {
    if s.is_empty() { None } else { Some(s) }
}

fn money_to(m: Money) -> Option<pb::Money> {
    Some(pb::Money {
        amount_minor: m.amount_minor,
        currency: m.currency,
    })
}

fn money_from(m: Option<pb::Money>, path: &str) -> Result<Money, Violation> {
    let m = m.ok_or_else(|| Violation::new(path, ViolationCode::Required, "missing"))?;
    Ok(Money {
        amount_minor: m.amount_minor,
        currency: m.currency,
    })
}

fn money_opt(m: pb::Money) -> Money {
    Money {
        amount_minor: m.amount_minor,
        currency: m.currency,
    }
}

pub(crate) fn bad_enum(path: &str, raw: i32) -> Violation {
    Violation::new(
        path,
        ViolationCode::InvalidValue,
        format!("unknown enum value {raw}"),
    )
}

/// Maps a model enum to its protobuf enum and back: `$to`, `$from` (UNSPECIFIED is refused as
/// `required`) and `$opt_from` (UNSPECIFIED is `None`); shared with the live-path conversions.
macro_rules! enum_map {
    ($model:ty, $pb:ty, $to:ident, $from:ident, $opt_from:ident, { $($m:ident => $p:ident),+ $(,)? }) => {
        fn $to(v: $model) -> i32 {
            match v { $(<$model>::$m => <$pb>::$p as i32),+ }
        }
        /// `Ok(None)` for the UNSPECIFIED value, an error for values this build does not know.
        fn $opt_from(raw: i32, path: &str) -> Result<Option<$model>, Violation> {
            match <$pb>::try_from(raw) {
                $(Ok(<$pb>::$p) => Ok(Some(<$model>::$m)),)+
                Ok(_) => Ok(None),
                Err(_) => Err(bad_enum(path, raw)),
            }
        }
        fn $from(raw: i32, path: &str) -> Result<$model, Violation> {
            $opt_from(raw, path)?.ok_or_else(|| Violation::new(path, ViolationCode::Required, "unspecified"))
        }
    };
}

pub(crate) use enum_map;

enum_map!(BetType, pb::BetType, bet_type_to, _bet_type_from, bet_type_from, {
    Single => Single, Accumulator => Accumulator, System => System, Spin => Spin, Hand => Hand, Other => Other,
});
enum_map!(Channel, pb::Channel, channel_to, _channel_from, channel_from, {
    Web => Web, MobileWeb => MobileWeb, Ios => Ios, Android => Android, Desktop => Desktop,
    Retail => Retail, Api => Api,
});
enum_map!(SettlementResult, pb::SettlementResult, result_to, result_from, _result_opt, {
    Win => Win, Loss => Loss, Void => Void, Cashout => Cashout,
});
enum_map!(PaymentMethod, pb::PaymentMethod, method_to, _method_from, method_from, {
    Card => Card, BankTransfer => BankTransfer, Ewallet => Ewallet, Crypto => Crypto,
    Voucher => Voucher, Other => Other,
});
enum_map!(WithdrawalStatus, pb::WithdrawalStatus, status_to, status_from, _status_opt, {
    Requested => Requested, Approved => Approved, Cancelled => Cancelled,
});
enum_map!(LoginFailure, pb::LoginFailure, failure_to, _failure_from, failure_from, {
    BadCredentials => BadCredentials, UnknownAccount => UnknownAccount,
    AccountLocked => AccountLocked, SecondFactor => SecondFactor, Other => Other,
});
enum_map!(BonusAction, pb::BonusAction, action_to, action_from, _action_opt, {
    Granted => Granted, Wagered => Wagered, Released => Released, Forfeited => Forfeited,
});

fn custom_value_to(v: CustomValue) -> pb::CustomValue {
    use pb::custom_value::Kind;
    let kind = match v {
        CustomValue::Flag(b) => Kind::Flag(b),
        CustomValue::Integer(i) => Kind::Integer(i),
        CustomValue::Number(n) => Kind::Number(n),
        CustomValue::Text(t) => Kind::Text(t),
    };
    pb::CustomValue { kind: Some(kind) }
}

fn custom_value_from(v: pb::CustomValue, path: &str) -> Result<CustomValue, Violation> {
    use pb::custom_value::Kind;
    match v.kind {
        Some(Kind::Flag(b)) => Ok(CustomValue::Flag(b)),
        Some(Kind::Integer(i)) => Ok(CustomValue::Integer(i)),
        Some(Kind::Number(n)) => Ok(CustomValue::Number(n)),
        Some(Kind::Text(t)) => Ok(CustomValue::Text(t)),
        None => Err(Violation::new(
            path,
            ViolationCode::Required,
            "property value has no kind",
        )),
    }
}

impl From<Event> for pb::Event {
    /// By value: the strings move into the message (the ingest hot path encodes each event once).
    fn from(e: Event) -> Self {
        use pb::event::Payload as P;
        let payload = match e.payload {
            Payload::BetPlaced(b) => P::BetPlaced(pb::BetPlaced {
                bet_id: b.bet_id,
                game_id: b.game_id,
                round_id: b.round_id.unwrap_or_default(),
                stake: money_to(b.stake),
                odds: b.odds.unwrap_or_default(),
                bet_type: b.bet_type.map_or(0, bet_type_to),
                channel: b.channel.map_or(0, channel_to),
                device_id: b.device_id.unwrap_or_default(),
                autoplay: b.autoplay,
            }),
            Payload::BetSettled(b) => P::BetSettled(pb::BetSettled {
                bet_id: b.bet_id,
                game_id: b.game_id,
                round_id: b.round_id.unwrap_or_default(),
                result: result_to(b.result),
                payout: money_to(b.payout),
                stake: b.stake.and_then(money_to),
            }),
            Payload::Deposit(d) => P::Deposit(pb::Deposit {
                transaction_id: d.transaction_id,
                amount: money_to(d.amount),
                method: d.method.map_or(0, method_to),
                device_id: d.device_id.unwrap_or_default(),
                ip: d.ip.unwrap_or_default(),
                payment_instrument: d.payment_instrument.unwrap_or_default(),
            }),
            Payload::Withdrawal(w) => P::Withdrawal(pb::Withdrawal {
                transaction_id: w.transaction_id,
                amount: money_to(w.amount),
                status: status_to(w.status),
                method: w.method.map_or(0, method_to),
                device_id: w.device_id.unwrap_or_default(),
                ip: w.ip.unwrap_or_default(),
                payment_instrument: w.payment_instrument.unwrap_or_default(),
            }),
            Payload::Login(l) => P::Login(pb::Login {
                ip: l.ip,
                device_id: l.device_id.unwrap_or_default(),
                user_agent: l.user_agent.unwrap_or_default(),
                country: l.country.unwrap_or_default(),
                success: l.success,
                failure_reason: l.failure_reason.map_or(0, failure_to),
            }),
            Payload::Logout(l) => P::Logout(pb::Logout {
                reason: l.reason.unwrap_or_default(),
            }),
            Payload::SessionStarted(s) => P::SessionStarted(pb::SessionStarted {
                channel: s.channel.map_or(0, channel_to),
                device_id: s.device_id.unwrap_or_default(),
            }),
            Payload::SessionEnded(s) => P::SessionEnded(pb::SessionEnded {
                duration_ms: s.duration_ms,
                reason: s.reason.unwrap_or_default(),
            }),
            Payload::Bonus(b) => P::Bonus(pb::Bonus {
                bonus_id: b.bonus_id,
                action: action_to(b.action),
                amount: money_to(b.amount),
                wagering_requirement: b.wagering_requirement.and_then(money_to),
                wagered: b.wagered.and_then(money_to),
            }),
            Payload::Custom(c) => P::Custom(pb::Custom {
                name: c.name,
                properties: c
                    .properties
                    .into_iter()
                    .map(|(k, v)| (k, custom_value_to(v)))
                    .collect(),
            }),
        };
        pb::Event {
            event_id: e.event_id.unwrap_or_default(),
            tenant_id: e.tenant_id,
            player_id: e.player_id,
            session_id: e.session_id.unwrap_or_default(),
            occurred_at_ms: e.occurred_at.as_millis(),
            received_at_ms: e.received_at.map_or(0, Timestamp::as_millis),
            schema_version: e.schema_version,
            late: e.late,
            utc_offset_min: e.utc_offset_min,
            payload: Some(payload),
        }
    }
}

impl From<&Event> for pb::Event {
    fn from(e: &Event) -> Self {
        pb::Event::from(e.clone())
    }
}

impl TryFrom<pb::Event> for Event {
    type Error = Violation;

    fn try_from(e: pb::Event) -> Result<Self, Violation> {
        use pb::event::Payload as P;
        let payload = match e.payload {
            None => {
                return Err(Violation::new(
                    "payload",
                    ViolationCode::Required,
                    "event has no payload",
                ));
            }
            Some(P::BetPlaced(b)) => Payload::BetPlaced(BetPlaced {
                bet_id: b.bet_id,
                game_id: b.game_id,
                round_id: none_if_empty(b.round_id),
                stake: money_from(b.stake, "payload.stake")?,
                odds: none_if_empty(b.odds),
                bet_type: bet_type_from(b.bet_type, "payload.bet_type")?,
                channel: channel_from(b.channel, "payload.channel")?,
                device_id: none_if_empty(b.device_id),
                autoplay: b.autoplay,
            }),
            Some(P::BetSettled(b)) => Payload::BetSettled(BetSettled {
                bet_id: b.bet_id,
                game_id: b.game_id,
                round_id: none_if_empty(b.round_id),
                result: result_from(b.result, "payload.result")?,
                payout: money_from(b.payout, "payload.payout")?,
                stake: b.stake.map(money_opt),
            }),
            Some(P::Deposit(d)) => Payload::Deposit(Deposit {
                transaction_id: d.transaction_id,
                amount: money_from(d.amount, "payload.amount")?,
                method: method_from(d.method, "payload.method")?,
                device_id: none_if_empty(d.device_id),
                ip: none_if_empty(d.ip),
                payment_instrument: none_if_empty(d.payment_instrument),
            }),
            Some(P::Withdrawal(w)) => Payload::Withdrawal(Withdrawal {
                transaction_id: w.transaction_id,
                amount: money_from(w.amount, "payload.amount")?,
                status: status_from(w.status, "payload.status")?,
                method: method_from(w.method, "payload.method")?,
                device_id: none_if_empty(w.device_id),
                ip: none_if_empty(w.ip),
                payment_instrument: none_if_empty(w.payment_instrument),
            }),
            Some(P::Login(l)) => Payload::Login(Login {
                ip: l.ip,
                device_id: none_if_empty(l.device_id),
                user_agent: none_if_empty(l.user_agent),
                country: none_if_empty(l.country),
                success: l.success,
                failure_reason: failure_from(l.failure_reason, "payload.failure_reason")?,
            }),
            Some(P::Logout(l)) => Payload::Logout(Logout {
                reason: none_if_empty(l.reason),
            }),
            Some(P::SessionStarted(s)) => Payload::SessionStarted(SessionStarted {
                channel: channel_from(s.channel, "payload.channel")?,
                device_id: none_if_empty(s.device_id),
            }),
            Some(P::SessionEnded(s)) => Payload::SessionEnded(SessionEnded {
                duration_ms: s.duration_ms,
                reason: none_if_empty(s.reason),
            }),
            Some(P::Bonus(b)) => Payload::Bonus(Bonus {
                bonus_id: b.bonus_id,
                action: action_from(b.action, "payload.action")?,
                amount: money_from(b.amount, "payload.amount")?,
                wagering_requirement: b.wagering_requirement.map(money_opt),
                wagered: b.wagered.map(money_opt),
            }),
            Some(P::Custom(c)) => Payload::Custom(Custom {
                name: c.name,
                properties: c
                    .properties
                    .into_iter()
                    .map(|(k, v)| {
                        let path = format!("payload.properties.{k}");
                        custom_value_from(v, &path).map(|v| (k, v))
                    })
                    .collect::<Result<_, _>>()?,
            }),
        };
        Ok(Event {
            event_id: none_if_empty(e.event_id),
            tenant_id: e.tenant_id,
            player_id: e.player_id,
            session_id: none_if_empty(e.session_id),
            occurred_at: Timestamp::from_millis(e.occurred_at_ms),
            received_at: (e.received_at_ms != 0).then(|| Timestamp::from_millis(e.received_at_ms)),
            schema_version: e.schema_version,
            late: e.late,
            utc_offset_min: e.utc_offset_min,
            payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_bytes_are_a_violation() {
        let v = decode_proto(&[0xff, 0xff, 0xff, 0xff]).expect_err("garbage");
        assert_eq!(v.code, ViolationCode::Malformed);
    }

    #[test]
    fn missing_payload_and_unknown_enum_are_violations() {
        let msg = pb::Event {
            tenant_id: "t".into(),
            ..Default::default()
        };
        let v = decode_proto(&msg.encode_to_vec()).expect_err("no payload");
        assert_eq!(
            (v.path.as_str(), v.code),
            ("payload", ViolationCode::Required)
        );

        let msg = pb::Event {
            payload: Some(pb::event::Payload::BetSettled(pb::BetSettled {
                result: 99,
                payout: Some(pb::Money {
                    amount_minor: 1,
                    currency: "EUR".into(),
                }),
                ..Default::default()
            })),
            ..Default::default()
        };
        let v = decode_proto(&msg.encode_to_vec()).expect_err("bad enum");
        assert_eq!(
            (v.path.as_str(), v.code),
            ("payload.result", ViolationCode::InvalidValue)
        );
    }
}
