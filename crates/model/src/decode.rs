//! Decoding the canonical JSON form, with a field path and a machine-readable code for every
//! failure (`payload.stake.amount_minor: invalid_type`), never a panic.

use serde::de::{DeserializeSeed, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::event::*;
use crate::time::{NOT_RFC3339, Timestamp};
use crate::validate::{Violation, ViolationCode};

/// The envelope as it arrives, before the payload is decoded by its type.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent {
    #[serde(default)]
    event_id: Option<String>,
    tenant_id: String,
    player_id: String,
    #[serde(default)]
    session_id: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    occurred_at: Timestamp,
    #[serde(default)]
    received_at: Option<Timestamp>,
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    late: bool,
    #[serde(default)]
    utc_offset_min: Option<i32>,
    #[serde(default)]
    payload: Option<Box<RawValue>>,
}

/// Decodes one event from JSON bytes. On failure, says where (`path`) and what (`code`).
pub fn decode_event(json: &[u8]) -> Result<Event, Violation> {
    match std::str::from_utf8(json) {
        Ok(text) => decode_event_str(text),
        // The exact path says where the bad byte is.
        Err(_) => decode_event_exact(json),
    }
}

/// [`decode_event`] for text already known to be UTF-8 (one element of a checked batch).
pub fn decode_event_str(json: &str) -> Result<Event, Violation> {
    // Fast path: one pass over the event, when nothing is wrong with it. Any failure, of any
    // kind, goes to the exact path, which alone decides what is reported.
    if let Ok(OnePass(event)) = serde_json::from_str::<OnePass>(json) {
        return Ok(event);
    }
    decode_event_exact(json.as_bytes())
}

/// The reference decoder, with a field path and a code for every failure: the envelope first
/// (the payload kept raw), then the payload by its `type`, each retried with path tracking on
/// failure. [`decode_event`] returns exactly what this returns, for every input; it only gets
/// there faster when the event is good (checked by a property test and the JSON fuzz target).
pub fn decode_event_exact(json: &[u8]) -> Result<Event, Violation> {
    if json.trim_ascii_start().first() != Some(&b'{') {
        // serde would otherwise accept an event written as an array of its fields.
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(json) {
                Ok(_) => Violation::new(
                    "",
                    ViolationCode::InvalidType,
                    "an event must be a JSON object",
                ),
                Err(e) => Violation::new("", ViolationCode::Malformed, e.to_string()),
            },
        );
    }
    if let Ok(raw) = serde_json::from_slice::<RawEvent>(json) {
        return raw.into_event().map_err(|v| in_event(json, v));
    }
    let mut de = serde_json::Deserializer::from_slice(json);
    let raw: RawEvent = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        // A field the decoder refused before the parser reached the text's break (`{"x":`, an
        // object followed by more text) does not hide that the text is not JSON.
        let v = path_violation(e, None);
        if v.code == ViolationCode::Malformed {
            v
        } else {
            not_json(json).unwrap_or(v)
        }
    })?;
    de.end()
        .map_err(|e| Violation::new("", ViolationCode::Malformed, e.to_string()))?;
    raw.into_event().map_err(|v| in_event(json, v))
}

/// A `malformed` violation of the payload (a number out of range: text the envelope's parse
/// let through) places itself in the payload's text ("at line 1 column 9"); this places it in
/// the event's, as every other violation is placed.
fn in_event(json: &[u8], mut v: Violation) -> Violation {
    #[derive(Deserialize)]
    struct PayloadAt<'a> {
        #[serde(borrow, default)]
        payload: Option<&'a RawValue>,
    }
    if v.code != ViolationCode::Malformed {
        return v;
    }
    let Some(head) = v.message.rfind(" at line ") else {
        return v;
    };
    let Some((line, column)) = v.message[head + " at line ".len()..]
        .split_once(" column ")
        .and_then(|(l, c)| Some((l.parse::<usize>().ok()?, c.parse::<usize>().ok()?)))
    else {
        return v;
    };
    let Ok(PayloadAt { payload: Some(raw) }) = serde_json::from_slice::<PayloadAt<'_>>(json) else {
        return v;
    };
    let Some(start) = (raw.get().as_ptr() as usize)
        .checked_sub(json.as_ptr() as usize)
        .filter(|s| *s <= json.len())
    else {
        return v;
    };
    let before = &json[..start];
    let first_line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let (line, column) = if line == 1 {
        (first_line, start - line_start + column)
    } else {
        (first_line + line - 1, column)
    };
    v.message.truncate(head);
    v.message = format!("{} at line {line} column {column}", v.message);
    v
}

/// `malformed` at the empty path, saying where, when `json` is not one JSON value (cut off,
/// a syntax error, trailing text); `None` for JSON, and for nesting past the parser's limit
/// (refused where it is, with its path).
fn not_json(json: &[u8]) -> Option<Violation> {
    let e = serde_json::from_slice::<serde::de::IgnoredAny>(json).err()?;
    let message = e.to_string();
    (e.classify() != serde_json::error::Category::Data
        && !message.starts_with("recursion limit exceeded"))
    .then(|| Violation::new("", ViolationCode::Malformed, message))
}

/// An event decoded in one pass: the payload is decoded by its type as soon as it is reached
/// when `type` comes first (the documented field order, which every sample and SDK writes);
/// otherwise it is kept as borrowed raw text until `type` is known. Only for good input: the
/// errors it produces are never shown, the caller falls back to [`decode_event_exact`].
struct OnePass(Event);

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Field {
    EventId,
    TenantId,
    PlayerId,
    SessionId,
    Type,
    OccurredAt,
    ReceivedAt,
    SchemaVersion,
    Late,
    UtcOffsetMin,
    Payload,
}

impl<'de> Deserialize<'de> for OnePass {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(OnePassVisitor)
    }
}

struct OnePassVisitor;

/// Stores a field's value, refusing a second occurrence (as the derived decoder does).
fn once<T, E: serde::de::Error>(
    slot: &mut Option<T>,
    value: T,
    name: &'static str,
) -> Result<(), E> {
    if slot.is_some() {
        return Err(E::duplicate_field(name));
    }
    *slot = Some(value);
    Ok(())
}

impl<'de> Visitor<'de> for OnePassVisitor {
    type Value = OnePass;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OnePass, A::Error> {
        let mut event_id: Option<Option<String>> = None;
        let mut tenant_id: Option<String> = None;
        let mut player_id: Option<String> = None;
        let mut session_id: Option<Option<String>> = None;
        let mut kind: Option<EventType> = None;
        let mut occurred_at: Option<Timestamp> = None;
        let mut received_at: Option<Option<Timestamp>> = None;
        let mut schema_version: Option<Option<u32>> = None;
        let mut late: Option<bool> = None;
        let mut utc_offset_min: Option<Option<i32>> = None;
        let mut payload: Option<Payload> = None;
        let mut raw_payload: Option<&'de RawValue> = None;
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::EventId => once(&mut event_id, map.next_value()?, "event_id")?,
                Field::TenantId => once(&mut tenant_id, map.next_value()?, "tenant_id")?,
                Field::PlayerId => once(&mut player_id, map.next_value()?, "player_id")?,
                Field::SessionId => once(&mut session_id, map.next_value()?, "session_id")?,
                Field::Type => once(&mut kind, map.next_value()?, "type")?,
                Field::OccurredAt => once(&mut occurred_at, map.next_value()?, "occurred_at")?,
                Field::ReceivedAt => once(&mut received_at, map.next_value()?, "received_at")?,
                Field::SchemaVersion => {
                    once(&mut schema_version, map.next_value()?, "schema_version")?
                }
                Field::Late => once(&mut late, map.next_value()?, "late")?,
                Field::UtcOffsetMin => {
                    once(&mut utc_offset_min, map.next_value()?, "utc_offset_min")?
                }
                Field::Payload => {
                    if payload.is_some() || raw_payload.is_some() {
                        return Err(serde::de::Error::duplicate_field("payload"));
                    }
                    match kind {
                        Some(k) => payload = Some(map.next_value_seed(PayloadSeed(k))?),
                        None => raw_payload = Some(map.next_value()?),
                    }
                }
            }
        }
        let missing = serde::de::Error::missing_field;
        let kind = kind.ok_or_else(|| missing("type"))?;
        let payload = match (payload, raw_payload) {
            (Some(p), _) => p,
            (None, Some(raw)) => {
                typed_payload(kind, raw.get()).map_err(serde::de::Error::custom)?
            }
            (None, None) => typed_payload(kind, "{}").map_err(serde::de::Error::custom)?,
        };
        Ok(OnePass(Event {
            event_id: event_id.flatten(),
            tenant_id: tenant_id.ok_or_else(|| missing("tenant_id"))?,
            player_id: player_id.ok_or_else(|| missing("player_id"))?,
            session_id: session_id.flatten(),
            occurred_at: occurred_at.ok_or_else(|| missing("occurred_at"))?,
            received_at: received_at.flatten(),
            schema_version: schema_version.flatten().unwrap_or(SCHEMA_VERSION),
            late: late.unwrap_or(false),
            utc_offset_min: utc_offset_min.flatten(),
            payload,
        }))
    }
}

/// Decodes a payload object of a known type (an object only: serde would also take a struct
/// written as an array of its fields).
struct PayloadSeed(EventType);

impl<'de> DeserializeSeed<'de> for PayloadSeed {
    type Value = Payload;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Payload, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PayloadSeed {
    type Value = Payload;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a payload object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Payload, A::Error> {
        let d = serde::de::value::MapAccessDeserializer::new(map);
        Ok(match self.0 {
            EventType::BetPlaced => Payload::BetPlaced(Deserialize::deserialize(d)?),
            EventType::BetSettled => Payload::BetSettled(Deserialize::deserialize(d)?),
            EventType::Deposit => Payload::Deposit(Deserialize::deserialize(d)?),
            EventType::Withdrawal => Payload::Withdrawal(Deserialize::deserialize(d)?),
            EventType::Login => Payload::Login(Deserialize::deserialize(d)?),
            EventType::Logout => Payload::Logout(Deserialize::deserialize(d)?),
            EventType::SessionStarted => Payload::SessionStarted(Deserialize::deserialize(d)?),
            EventType::SessionEnded => Payload::SessionEnded(Deserialize::deserialize(d)?),
            EventType::Bonus => Payload::Bonus(Deserialize::deserialize(d)?),
            EventType::Custom => Payload::Custom(Deserialize::deserialize(d)?),
        })
    }
}

fn typed_payload(kind: EventType, text: &str) -> Result<Payload, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let payload = PayloadSeed(kind).deserialize(&mut de)?;
    de.end()?;
    Ok(payload)
}

impl RawEvent {
    fn into_event(self) -> Result<Event, Violation> {
        let payload_text = self.payload.as_deref().map_or("{}", RawValue::get);
        if !payload_text.trim_start().starts_with('{') {
            // serde would otherwise accept a struct written as an array of its fields.
            return Err(Violation::new(
                "payload",
                ViolationCode::InvalidType,
                "payload must be a JSON object",
            ));
        }
        let kind = EventType::parse(&self.kind).ok_or_else(|| {
            Violation::new(
                "type",
                ViolationCode::UnknownEventType,
                format!(
                    "unknown event type {:?}; expected one of: {}",
                    truncate(&self.kind, 64),
                    EventType::ALL.map(EventType::as_str).join(", ")
                ),
            )
        })?;
        let payload = match kind {
            EventType::BetPlaced => Payload::BetPlaced(payload(payload_text)?),
            EventType::BetSettled => Payload::BetSettled(payload(payload_text)?),
            EventType::Deposit => Payload::Deposit(payload(payload_text)?),
            EventType::Withdrawal => Payload::Withdrawal(payload(payload_text)?),
            EventType::Login => Payload::Login(payload(payload_text)?),
            EventType::Logout => Payload::Logout(payload(payload_text)?),
            EventType::SessionStarted => Payload::SessionStarted(payload(payload_text)?),
            EventType::SessionEnded => Payload::SessionEnded(payload(payload_text)?),
            EventType::Bonus => Payload::Bonus(payload(payload_text)?),
            EventType::Custom => Payload::Custom(payload(payload_text)?),
        };
        Ok(Event {
            event_id: self.event_id,
            tenant_id: self.tenant_id,
            player_id: self.player_id,
            session_id: self.session_id,
            occurred_at: self.occurred_at,
            received_at: self.received_at,
            schema_version: self.schema_version.unwrap_or(SCHEMA_VERSION),
            late: self.late,
            utc_offset_min: self.utc_offset_min,
            payload,
        })
    }
}

fn payload<T: for<'de> Deserialize<'de>>(text: &str) -> Result<T, Violation> {
    if let Ok(v) = serde_json::from_str(text) {
        return Ok(v);
    }
    let mut de = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| path_violation(e, Some("payload")))
}

impl<'de> Deserialize<'de> for Event {
    /// Deserializes the canonical JSON form. Works with serde_json deserializers (the payload
    /// is captured raw and decoded by its `type`); use [`decode_event`] for precise errors.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        RawEvent::deserialize(d)?
            .into_event()
            .map_err(serde::de::Error::custom)
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

/// Turns a serde error with its path into a violation, classifying serde_json's messages.
pub(crate) fn path_violation(
    err: serde_path_to_error::Error<serde_json::Error>,
    prefix: Option<&str>,
) -> Violation {
    let mut path = err.path().to_string();
    if path == "." {
        path.clear();
    }
    let inner = err.into_inner();
    let message = inner.to_string();
    // Text that is not JSON (a syntax error, input cut off) leaves the whole event unreadable,
    // whatever field the parser had reached: a line cut off inside `payload` is reported like
    // a line of prose, at the empty path. Nesting too deep is JSON the decoder refuses to
    // descend into: there the path says where.
    let mut whole_event = false;
    let code = match inner.classify() {
        serde_json::error::Category::Syntax
        | serde_json::error::Category::Eof
        | serde_json::error::Category::Io => {
            whole_event = !message.starts_with("recursion limit exceeded");
            ViolationCode::Malformed
        }
        serde_json::error::Category::Data => {
            if let Some(field) = backticked(&message, "missing field `") {
                path = join(&path, field);
                ViolationCode::Required
            } else if let Some(field) = backticked(&message, "unknown field `") {
                // serde_path_to_error already ends the path with the unknown key.
                if !path.ends_with(field) {
                    path = join(&path, field);
                }
                ViolationCode::UnknownField
            } else if message.starts_with("invalid type") {
                ViolationCode::InvalidType
            } else if message.starts_with(NOT_RFC3339) {
                ViolationCode::InvalidTimestamp
            } else if message.starts_with(crate::event::AMOUNT_PAST_I64) {
                ViolationCode::AmountTooLarge
            } else if message.starts_with(crate::event::AMOUNT_BELOW_I64) {
                ViolationCode::NegativeAmount
            } else {
                ViolationCode::InvalidValue
            }
        }
    };
    let mut path = match prefix {
        _ if whole_event => String::new(),
        Some(p) => join(p, &path),
        None => path,
    };
    if path.len() > MAX_PATH {
        // Deeply nested input would otherwise echo a path as long as the input.
        let cut = (0..=MAX_PATH)
            .rev()
            .find(|i| path.is_char_boundary(*i))
            .unwrap_or(0);
        path.truncate(cut);
        path.push('…');
    }
    Violation::new(path, code, message)
}

/// Longest field path reported in a violation.
const MAX_PATH: usize = 128;

fn backticked<'m>(message: &'m str, lead: &str) -> Option<&'m str> {
    let rest = message.strip_prefix(lead)?;
    rest.split('`').next()
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_owned(),
        (_, true) => a.to_owned(),
        _ => format!("{a}.{b}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> Violation {
        decode_event(json.as_bytes()).expect_err("must not decode")
    }

    /// A number out of range inside the payload is placed in the event's text (it was placed
    /// in the payload's: "column 45" of an event whose payload began at column 112).
    #[test]
    #[allow(clippy::unwrap_used)]
    fn a_number_out_of_range_in_the_payload_is_placed_in_the_event() {
        let payload =
            r#"{"bet_id":"b1","game_id":"g","stake":{"amount_minor":1e400,"currency":"EUR"}}"#;
        let alone = serde_json::from_str::<BetPlaced>(payload).unwrap_err();
        let event = format!(r#"{{{BASE},"type":"bet_placed","payload":{payload}}}"#);
        let v = err(&event);
        assert_eq!(v.code, ViolationCode::Malformed, "{v:?}");
        let offset = event.find(payload).unwrap();
        assert!(
            v.message
                .ends_with(&format!("at line 1 column {}", offset + alone.column())),
            "{v:?} (alone: {alone})"
        );
        // On a later line of the event, the line and the column are the event's.
        let event = format!("{{{BASE},\n\"type\":\"bet_placed\",\n\"payload\":\n{payload}}}");
        let v = err(&event);
        assert!(
            v.message
                .ends_with(&format!("at line 4 column {}", alone.column())),
            "{v:?}"
        );
    }

    const BASE: &str =
        r#""tenant_id":"acme","player_id":"p1","occurred_at":"2026-11-28T10:00:00Z""#;

    #[test]
    fn missing_nested_field_names_its_path() {
        let v = err(&format!(
            r#"{{{BASE},"type":"bet_placed","payload":{{"bet_id":"b","game_id":"g"}}}}"#
        ));
        assert_eq!(v.path, "payload.stake");
        assert_eq!(v.code, ViolationCode::Required);
    }

    #[test]
    fn wrong_type_names_its_path() {
        let v = err(&format!(
            r#"{{{BASE},"type":"deposit","payload":{{"transaction_id":"t","amount":{{"amount_minor":"12","currency":"EUR"}}}}}}"#
        ));
        assert_eq!(v.path, "payload.amount.amount_minor");
        assert_eq!(v.code, ViolationCode::InvalidType);
    }

    #[test]
    fn float_money_is_rejected() {
        let v = err(&format!(
            r#"{{{BASE},"type":"deposit","payload":{{"transaction_id":"t","amount":{{"amount_minor":12.5,"currency":"EUR"}}}}}}"#
        ));
        assert_eq!(v.path, "payload.amount.amount_minor");
        assert_eq!(v.code, ViolationCode::InvalidType);
    }

    #[test]
    fn unknown_type_and_unknown_field() {
        let v = err(&format!(r#"{{{BASE},"type":"jackpot"}}"#));
        assert_eq!(
            (v.path.as_str(), v.code),
            ("type", ViolationCode::UnknownEventType)
        );
        let v = err(&format!(r#"{{{BASE},"type":"logout","colour":"red"}}"#));
        assert_eq!(
            (v.path.as_str(), v.code),
            ("colour", ViolationCode::UnknownField)
        );
        let v = err(&format!(
            r#"{{{BASE},"type":"logout","payload":{{"why":1}}}}"#
        ));
        assert_eq!(
            (v.path.as_str(), v.code),
            ("payload.why", ViolationCode::UnknownField)
        );
    }

    #[test]
    fn an_amount_past_64_bits_is_too_large_and_a_fraction_of_another_type() {
        for amount in [
            "9223372036854775808",
            "18446744073709551615",
            "18446744073709551616",
            "1e30",
        ] {
            let v = err(&format!(
                r#"{{{BASE},"type":"deposit","payload":{{"transaction_id":"t","amount":{{"amount_minor":{amount},"currency":"EUR"}}}}}}"#
            ));
            assert_eq!(
                (v.path.as_str(), v.code),
                ("payload.amount.amount_minor", ViolationCode::AmountTooLarge),
                "{amount}: {v}"
            );
        }
        // Below what 64 bits hold: negative, as -1 is.
        for amount in ["-9223372036854775809", "-1e30"] {
            let v = err(&format!(
                r#"{{{BASE},"type":"deposit","payload":{{"transaction_id":"t","amount":{{"amount_minor":{amount},"currency":"EUR"}}}}}}"#
            ));
            assert_eq!(
                (v.path.as_str(), v.code),
                ("payload.amount.amount_minor", ViolationCode::NegativeAmount),
                "{amount}: {v}"
            );
        }
        let v = err(&format!(
            r#"{{{BASE},"type":"deposit","payload":{{"transaction_id":"t","amount":{{"amount_minor":1.5,"currency":"EUR"}}}}}}"#
        ));
        assert_eq!(
            (v.path.as_str(), v.code),
            ("payload.amount.amount_minor", ViolationCode::InvalidType),
            "{v}"
        );
    }

    #[test]
    fn malformed_and_trailing_garbage() {
        assert_eq!(err("{").code, ViolationCode::Malformed);
        assert_eq!(err("").code, ViolationCode::Malformed);
        let v = err(&format!(r#"{{{BASE},"type":"logout"}} x"#));
        assert_eq!(v.code, ViolationCode::Malformed);
    }

    #[test]
    fn a_timestamp_that_is_not_rfc_3339_is_invalid_timestamp() {
        for bad in ["28/11/2026", "2026-11-28", "", "2026-11-28T10:00:00"] {
            let v = err(&format!(
                r#"{{"tenant_id":"acme","player_id":"p1","type":"logout","occurred_at":"{bad}"}}"#
            ));
            assert_eq!(
                (v.path.as_str(), v.code),
                ("occurred_at", ViolationCode::InvalidTimestamp),
                "{bad:?}: {v}"
            );
        }
        let v = err(&format!(
            r#"{{{BASE},"type":"logout","received_at":"yesterday"}}"#
        ));
        assert_eq!(
            (v.path.as_str(), v.code),
            ("received_at", ViolationCode::InvalidTimestamp)
        );
    }

    #[test]
    fn a_custom_property_of_another_json_type_is_invalid_type_with_a_plain_message() {
        for value in [r#"{"b":1}"#, "[1]", "null"] {
            let v = err(&format!(
                r#"{{{BASE},"type":"custom","payload":{{"name":"x","properties":{{"a":{value}}}}}}}"#
            ));
            assert_eq!(
                (v.path.as_str(), v.code),
                ("payload.properties.a", ViolationCode::InvalidType),
                "{value}: {v}"
            );
            assert!(v.message.contains("custom properties are flat"), "{v}");
            assert!(!v.message.contains("untagged"), "{v}");
        }
        let e = decode_event(
            format!(
                r#"{{{BASE},"type":"custom","payload":{{"name":"x","properties":{{"b":true,"i":-3,"u":18446744073709551615,"f":1.5,"t":"x"}}}}}}"#
            )
            .as_bytes(),
        )
        .expect("scalars decode");
        let Payload::Custom(c) = e.payload else {
            panic!("custom")
        };
        assert_eq!(c.properties["b"], CustomValue::Flag(true));
        assert_eq!(c.properties["i"], CustomValue::Integer(-3));
        assert_eq!(
            c.properties["u"],
            CustomValue::Number(18446744073709551615.0)
        );
        assert_eq!(c.properties["f"], CustomValue::Number(1.5));
        assert_eq!(c.properties["t"], CustomValue::Text("x".into()));
    }

    /// Text that is not JSON is refused at the empty path, wherever it breaks off.
    #[test]
    fn text_that_is_not_json_is_malformed_at_the_empty_path() {
        let good = format!(
            r#"{{{BASE},"type":"bet_placed","payload":{{"bet_id":"b","game_id":"g","stake":{{"amount_minor":1,"currency":"EUR"}}}}}}"#
        );
        for cut in [good.len() - 20, good.len() - 1, 30, 1] {
            let v = err(&good[..cut]);
            assert_eq!(
                (v.path.as_str(), v.code),
                ("", ViolationCode::Malformed),
                "{}: {v}",
                &good[..cut]
            );
        }
        let v = err(&good.replace("\"stake\":{", "\"stake\":{,"));
        assert_eq!((v.path.as_str(), v.code), ("", ViolationCode::Malformed));
        let v = err("not json");
        assert_eq!((v.path.as_str(), v.code), ("", ViolationCode::Malformed));
        // Also when a field the decoder refuses (unknown, missing) comes before the break.
        for text in [
            r#"{"x":"#.to_string(),
            r#"{"x":1"#.to_string(),
            r#"{"tenant_id":"acme"} trailing"#.to_string(),
            format!(r#"{{{BASE},"why":1"#),
            format!(r#"{{{BASE},"type":"bogus"}}}}"#),
        ] {
            let v = err(&text);
            assert_eq!(
                (v.path.as_str(), v.code),
                ("", ViolationCode::Malformed),
                "{text}: {v}"
            );
        }
        // JSON with a refused field stays that field's violation.
        let v = err(r#"{"x":1}"#);
        assert_eq!(
            (v.path.as_str(), v.code),
            ("x", ViolationCode::UnknownField)
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let (open, close) = ("[".repeat(100_000), "]".repeat(100_000));
        // A property value is a scalar: the nesting is refused before it is read.
        let v = err(&format!(
            r#"{{{BASE},"type":"custom","payload":{{"name":"x","properties":{{"a":{open}1{close}}}}}}}"#
        ));
        assert_eq!(
            (v.path.as_str(), v.code),
            ("payload.properties.a", ViolationCode::InvalidType)
        );
        // Valid JSON, but not an object.
        let v = err(&format!("{open}1{close}"));
        assert_eq!((v.path.as_str(), v.code), ("", ViolationCode::InvalidType));
        let v = err(&format!("{open}1"));
        assert_eq!((v.path.as_str(), v.code), ("", ViolationCode::Malformed));
        let v = err(&format!(r#"{{{BASE},"type":"logout","x":{open}1{close}}}"#));
        assert_eq!(
            (v.path.as_str(), v.code),
            ("x", ViolationCode::UnknownField)
        );
        // A path never echoes more than MAX_PATH bytes of the input.
        let long = "k".repeat(10_000);
        let v = err(&format!(
            r#"{{{BASE},"type":"logout","payload":{{"{long}":1}}}}"#
        ));
        assert_eq!(v.code, ViolationCode::UnknownField);
        assert!(v.path.starts_with("payload.kkk"), "{}", v.path);
        assert!(v.path.len() <= MAX_PATH + '…'.len_utf8());
    }

    #[test]
    fn an_event_is_an_object_not_an_array_of_its_fields() {
        let v = err(r#"[null,"acme","p1",null,"logout","2026-11-28T10:00:00Z"]"#);
        assert_eq!((v.path.as_str(), v.code), ("", ViolationCode::InvalidType));
        let v = err(r#""text""#);
        assert_eq!((v.path.as_str(), v.code), ("", ViolationCode::InvalidType));
    }

    #[test]
    fn payload_must_be_an_object() {
        let v = err(&format!(
            r#"{{{BASE},"type":"session_ended","payload":[-1,null]}}"#
        ));
        assert_eq!(
            (v.path.as_str(), v.code),
            ("payload", ViolationCode::InvalidType)
        );
    }

    #[test]
    fn payload_may_be_omitted_when_all_its_fields_are_optional() {
        let e = decode_event(format!(r#"{{{BASE},"type":"logout"}}"#).as_bytes()).expect("ok");
        assert_eq!(e.payload, Payload::Logout(Logout { reason: None }));
        assert_eq!(e.schema_version, SCHEMA_VERSION);
    }
}
