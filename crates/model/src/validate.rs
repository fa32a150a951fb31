//! Validation of decoded events: every rule yields a machine-readable reason (field path,
//! code, message). Pure: the current time and all limits are passed in.

use std::net::IpAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::currency::is_iso4217;
use crate::event::*;

/// Why an event (or one of its fields) was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, thiserror::Error)]
#[error("{}{code}: {message}", at(.path))]
pub struct Violation {
    /// Dotted path of the offending field (`payload.stake.amount_minor`); empty for the whole event.
    pub path: String,
    /// Stable machine-readable reason.
    pub code: ViolationCode,
    /// Human-readable explanation.
    pub message: String,
}

/// `path: `, or nothing for the whole event.
fn at(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("{path}: ")
    }
}

impl Violation {
    /// A violation at `path`.
    pub fn new(path: impl Into<String>, code: ViolationCode, message: impl Into<String>) -> Self {
        Violation {
            path: path.into(),
            code,
            message: message.into(),
        }
    }
}

/// The stable reason codes. Clients may switch on these; new codes may be added. What each
/// means, for clients, is documented in one table (`pitboss_ingest::codes::ERROR_CODES`), from
/// which docs/events.md and the OpenAPI document are generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ViolationCode {
    /// Not valid JSON (or trailing data after it).
    Malformed,
    /// A required field is missing or empty.
    Required,
    /// A field the contract does not define.
    UnknownField,
    /// A field has the wrong JSON type (e.g. a string or float where an integer is expected, an
    /// object as a custom property value).
    InvalidType,
    /// A field has a value outside its allowed set.
    InvalidValue,
    /// `type` is not one of the contract's event types.
    UnknownEventType,
    /// `schema_version` is newer than this server understands.
    UnsupportedSchemaVersion,
    /// Not a UUID in canonical hyphenated form.
    InvalidUuid,
    /// An identifier with characters outside `[A-Za-z0-9._~@+-]`.
    InvalidCharacters,
    /// A text or identifier longer than its limit.
    TooLong,
    /// A money amount below zero.
    NegativeAmount,
    /// A money amount above the configured ceiling.
    AmountTooLarge,
    /// Not an ISO 4217 (or configured extra) currency code.
    InvalidCurrency,
    /// Decimal odds that are not of the form `2.50` (at least 1).
    InvalidOdds,
    /// Not an IPv4 or IPv6 address.
    InvalidIp,
    /// Not an ISO 3166-1 alpha-2 code.
    InvalidCountry,
    /// A timestamp that is not RFC 3339 text, or before 1970.
    InvalidTimestamp,
    /// `occurred_at` further in the future than the allowed clock skew.
    FutureTimestamp,
    /// A custom event with too many properties, or a non-finite number.
    InvalidProperty,
}

impl ViolationCode {
    /// Every code, in declaration order (`ALL[c as usize] == c`).
    pub const ALL: [ViolationCode; 19] = [
        ViolationCode::Malformed,
        ViolationCode::Required,
        ViolationCode::UnknownField,
        ViolationCode::InvalidType,
        ViolationCode::InvalidValue,
        ViolationCode::UnknownEventType,
        ViolationCode::UnsupportedSchemaVersion,
        ViolationCode::InvalidUuid,
        ViolationCode::InvalidCharacters,
        ViolationCode::TooLong,
        ViolationCode::NegativeAmount,
        ViolationCode::AmountTooLarge,
        ViolationCode::InvalidCurrency,
        ViolationCode::InvalidOdds,
        ViolationCode::InvalidIp,
        ViolationCode::InvalidCountry,
        ViolationCode::InvalidTimestamp,
        ViolationCode::FutureTimestamp,
        ViolationCode::InvalidProperty,
    ];

    /// The code as it appears in JSON (`"negative_amount"`); no allocation.
    pub const fn as_str(self) -> &'static str {
        match self {
            ViolationCode::Malformed => "malformed",
            ViolationCode::Required => "required",
            ViolationCode::UnknownField => "unknown_field",
            ViolationCode::InvalidType => "invalid_type",
            ViolationCode::InvalidValue => "invalid_value",
            ViolationCode::UnknownEventType => "unknown_event_type",
            ViolationCode::UnsupportedSchemaVersion => "unsupported_schema_version",
            ViolationCode::InvalidUuid => "invalid_uuid",
            ViolationCode::InvalidCharacters => "invalid_characters",
            ViolationCode::TooLong => "too_long",
            ViolationCode::NegativeAmount => "negative_amount",
            ViolationCode::AmountTooLarge => "amount_too_large",
            ViolationCode::InvalidCurrency => "invalid_currency",
            ViolationCode::InvalidOdds => "invalid_odds",
            ViolationCode::InvalidIp => "invalid_ip",
            ViolationCode::InvalidCountry => "invalid_country",
            ViolationCode::InvalidTimestamp => "invalid_timestamp",
            ViolationCode::FutureTimestamp => "future_timestamp",
            ViolationCode::InvalidProperty => "invalid_property",
        }
    }
}

impl std::fmt::Display for ViolationCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Limits the validator enforces; defaults in one place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ValidationConfig {
    /// Largest accepted amount in minor units.
    pub max_amount_minor: i64,
    /// How far `occurred_at` may be ahead of the server clock, in milliseconds.
    pub max_future_skew_ms: i64,
    /// Events older than this (by `occurred_at`, in milliseconds) are accepted but flagged `late`.
    pub late_after_ms: i64,
    /// Currency codes accepted besides ISO 4217 (e.g. "BTC", "USDT"); upper case.
    pub extra_currencies: Vec<String>,
    /// Most properties a custom event may carry.
    pub max_custom_properties: usize,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        ValidationConfig {
            // 10^13 minor units: 100 billion in a two-decimal currency.
            max_amount_minor: 10_000_000_000_000,
            max_future_skew_ms: 5 * 60 * 1000,
            late_after_ms: 7 * 24 * 3600 * 1000,
            extra_currencies: Vec::new(),
            max_custom_properties: 64,
        }
    }
}

/// What validation concluded about an acceptable event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// `occurred_at` is older than the lateness horizon: keep it, but flag it.
    pub late: bool,
}

/// Longest tenant id.
pub const MAX_TENANT_ID: usize = 64;
/// Longest player, session, bet, game, round, transaction or bonus id.
pub const MAX_ID: usize = 128;
/// Longest free-text field (reasons, device ids).
pub const MAX_TEXT: usize = 256;
/// Longest user agent.
pub const MAX_USER_AGENT: usize = 512;
/// Longest custom text property value.
pub const MAX_PROPERTY_TEXT: usize = 1024;
/// Longest custom event name or property key.
pub const MAX_NAME: usize = 64;
/// Westernmost UTC offset in minutes (UTC-12).
pub const MIN_UTC_OFFSET_MIN: i32 = -720;
/// Easternmost UTC offset in minutes (UTC+14).
pub const MAX_UTC_OFFSET_MIN: i32 = 840;
/// Longest session duration accepted (31 days).
pub const MAX_SESSION_MS: i64 = 31 * 24 * 3600 * 1000;

/// Checks every rule and returns all violations (not just the first), or the verdict.
pub fn validate(
    event: &Event,
    cfg: &ValidationConfig,
    now_ms: i64,
) -> Result<Verdict, Vec<Violation>> {
    let mut v = Checker {
        out: Vec::new(),
        cfg,
    };
    if let Some(id) = &event.event_id {
        v.uuid("event_id", id);
    }
    v.id("tenant_id", &event.tenant_id, MAX_TENANT_ID);
    v.id("player_id", &event.player_id, MAX_ID);
    v.opt_id("session_id", event.session_id.as_deref(), MAX_ID);
    if event.schema_version == 0 || event.schema_version > SCHEMA_VERSION {
        v.push(
            "schema_version",
            ViolationCode::UnsupportedSchemaVersion,
            format!(
                "schema_version {} is not supported (1..={SCHEMA_VERSION})",
                event.schema_version
            ),
        );
    }
    let occurred = event.occurred_at.as_millis();
    let mut late = false;
    if occurred < 0 {
        v.push(
            "occurred_at",
            ViolationCode::InvalidTimestamp,
            "occurred_at is before 1970",
        );
    } else if occurred > now_ms.saturating_add(cfg.max_future_skew_ms) {
        v.push(
            "occurred_at",
            ViolationCode::FutureTimestamp,
            format!(
                "occurred_at is {} ms ahead of the server clock (allowed skew {} ms)",
                occurred.saturating_sub(now_ms),
                cfg.max_future_skew_ms
            ),
        );
    } else if occurred < now_ms.saturating_sub(cfg.late_after_ms) {
        late = true;
    }
    if let Some(r) = event.received_at
        && r.as_millis() < 0
    {
        v.push(
            "received_at",
            ViolationCode::InvalidTimestamp,
            "received_at is before 1970",
        );
    }
    if let Some(offset) = event.utc_offset_min
        && !(MIN_UTC_OFFSET_MIN..=MAX_UTC_OFFSET_MIN).contains(&offset)
    {
        v.push(
            "utc_offset_min",
            ViolationCode::InvalidValue,
            format!("must be between {MIN_UTC_OFFSET_MIN} and {MAX_UTC_OFFSET_MIN} minutes"),
        );
    }
    v.payload(&event.payload);
    if v.out.is_empty() {
        Ok(Verdict { late })
    } else {
        Err(v.out)
    }
}

struct Checker<'c> {
    out: Vec<Violation>,
    cfg: &'c ValidationConfig,
}

fn id_char_ok(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | '@' | '+' | '-')
}

/// The UUID rule (canonical hyphenated form only: 36 characters, as produced by every UUID
/// library), shared with the live-path messages.
pub(crate) fn uuid_violation(path: &str, value: &str) -> Option<Violation> {
    let ok = value.len() == 36 && uuid::Uuid::try_parse(value).is_ok();
    (!ok).then(|| {
        Violation::new(
            path,
            ViolationCode::InvalidUuid,
            "expected a UUID like 0192f0c1-7a2b-7c3d-8e4f-5a6b7c8d9e0f",
        )
    })
}

/// The id rule (required, at most `max` bytes, `[A-Za-z0-9._~@+-]`), shared with the live-path
/// messages.
pub fn id_violation(path: &str, value: &str, max: usize) -> Option<Violation> {
    if value.is_empty() {
        Some(Violation::new(
            path,
            ViolationCode::Required,
            "must not be empty",
        ))
    } else if value.len() > max {
        Some(Violation::new(
            path,
            ViolationCode::TooLong,
            format!("longer than {max} bytes"),
        ))
    } else {
        value.chars().find(|c| !id_char_ok(*c)).map(|bad| {
            Violation::new(
                path,
                ViolationCode::InvalidCharacters,
                format!("character {bad:?} is not allowed; use [A-Za-z0-9._~@+-]"),
            )
        })
    }
}

impl Checker<'_> {
    fn push(&mut self, path: &str, code: ViolationCode, message: impl Into<String>) {
        self.out.push(Violation::new(path, code, message));
    }

    fn uuid(&mut self, path: &str, value: &str) {
        self.out.extend(uuid_violation(path, value));
    }

    fn id(&mut self, path: &str, value: &str, max: usize) {
        self.out.extend(id_violation(path, value, max));
    }

    fn opt_id(&mut self, path: &str, value: Option<&str>, max: usize) {
        if let Some(value) = value {
            self.id(path, value, max);
        }
    }

    fn text(&mut self, path: &str, value: Option<&str>, max: usize) {
        if let Some(value) = value
            && value.len() > max
        {
            self.push(
                path,
                ViolationCode::TooLong,
                format!("longer than {max} bytes"),
            );
        }
    }

    /// Two amounts of one payload that are compared or subtracted (a settlement's stake and
    /// payout, a bonus and its wagering) must be in one currency.
    fn same_currency(&mut self, path: &str, m: &Money, other: &Money, other_name: &str) {
        // A code already refused is not refused twice.
        if m.currency != other.currency && !self.out.iter().any(|v| v.path == path) {
            self.push(
                path,
                ViolationCode::InvalidCurrency,
                format!(
                    "{:?} differs from the {other_name}'s {:?}: both are in one currency",
                    m.currency.chars().take(16).collect::<String>(),
                    other.currency.chars().take(16).collect::<String>()
                ),
            );
        }
    }

    fn money(&mut self, path: &str, m: &Money) {
        if m.amount_minor < 0 {
            self.push(
                &format!("{path}.amount_minor"),
                ViolationCode::NegativeAmount,
                format!("{} is below zero", m.amount_minor),
            );
        } else if m.amount_minor > self.cfg.max_amount_minor {
            self.push(
                &format!("{path}.amount_minor"),
                ViolationCode::AmountTooLarge,
                format!(
                    "{} exceeds the ceiling {}",
                    m.amount_minor, self.cfg.max_amount_minor
                ),
            );
        }
        let known =
            is_iso4217(&m.currency) || self.cfg.extra_currencies.iter().any(|c| c == &m.currency);
        if !known {
            self.push(
                &format!("{path}.currency"),
                ViolationCode::InvalidCurrency,
                format!(
                    "{:?} is not an ISO 4217 code (upper case, e.g. EUR)",
                    m.currency.chars().take(16).collect::<String>()
                ),
            );
        }
    }

    /// Where a deposit or withdrawal came from: device id and instrument fingerprint as text,
    /// the IP address parsed.
    fn fingerprint(&mut self, device: Option<&str>, ip: Option<&str>, instrument: Option<&str>) {
        self.text("payload.device_id", device, MAX_TEXT);
        if let Some(ip) = ip
            && ip.parse::<IpAddr>().is_err()
        {
            self.push(
                "payload.ip",
                ViolationCode::InvalidIp,
                "expected an IPv4 or IPv6 address",
            );
        }
        self.text("payload.payment_instrument", instrument, MAX_TEXT);
    }

    fn odds(&mut self, path: &str, odds: Option<&str>) {
        let Some(odds) = odds else { return };
        let (int, frac) = odds.split_once('.').unwrap_or((odds, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        let shape_ok = (1..=6).contains(&int.len())
            && digits(int)
            && frac.len() <= 4
            && digits(frac)
            && !(odds.contains('.') && frac.is_empty());
        let at_least_one = int.parse::<u32>().is_ok_and(|i| i >= 1);
        if !shape_ok || !at_least_one {
            self.push(
                path,
                ViolationCode::InvalidOdds,
                "expected decimal odds of at least 1, like \"2.50\"",
            );
        }
    }

    fn payload(&mut self, p: &Payload) {
        match p {
            Payload::BetPlaced(b) => {
                self.id("payload.bet_id", &b.bet_id, MAX_ID);
                self.id("payload.game_id", &b.game_id, MAX_ID);
                self.opt_id("payload.round_id", b.round_id.as_deref(), MAX_ID);
                self.money("payload.stake", &b.stake);
                self.odds("payload.odds", b.odds.as_deref());
                self.text("payload.device_id", b.device_id.as_deref(), MAX_TEXT);
            }
            Payload::BetSettled(b) => {
                self.id("payload.bet_id", &b.bet_id, MAX_ID);
                self.id("payload.game_id", &b.game_id, MAX_ID);
                self.opt_id("payload.round_id", b.round_id.as_deref(), MAX_ID);
                self.money("payload.payout", &b.payout);
                if let Some(stake) = &b.stake {
                    self.money("payload.stake", stake);
                    self.same_currency("payload.stake.currency", stake, &b.payout, "payout");
                }
            }
            Payload::Deposit(d) => {
                self.id("payload.transaction_id", &d.transaction_id, MAX_ID);
                self.money("payload.amount", &d.amount);
                self.fingerprint(
                    d.device_id.as_deref(),
                    d.ip.as_deref(),
                    d.payment_instrument.as_deref(),
                );
            }
            Payload::Withdrawal(w) => {
                self.id("payload.transaction_id", &w.transaction_id, MAX_ID);
                self.money("payload.amount", &w.amount);
                self.fingerprint(
                    w.device_id.as_deref(),
                    w.ip.as_deref(),
                    w.payment_instrument.as_deref(),
                );
            }
            Payload::Login(l) => {
                if l.ip.parse::<IpAddr>().is_err() {
                    self.push(
                        "payload.ip",
                        ViolationCode::InvalidIp,
                        "expected an IPv4 or IPv6 address",
                    );
                }
                self.text("payload.device_id", l.device_id.as_deref(), MAX_TEXT);
                self.text(
                    "payload.user_agent",
                    l.user_agent.as_deref(),
                    MAX_USER_AGENT,
                );
                if let Some(c) = &l.country
                    && !crate::country::is_iso3166(c)
                {
                    self.push(
                        "payload.country",
                        ViolationCode::InvalidCountry,
                        format!(
                            "{:?} is not an ISO 3166-1 alpha-2 country code (upper case, e.g. \"DE\"; \"GB\" for the United Kingdom)",
                            c.chars().take(8).collect::<String>()
                        ),
                    );
                }
                if l.success && l.failure_reason.is_some() {
                    self.push(
                        "payload.failure_reason",
                        ViolationCode::InvalidValue,
                        "only a failed attempt (success: false) has a failure_reason",
                    );
                }
            }
            Payload::Logout(l) => self.text("payload.reason", l.reason.as_deref(), MAX_TEXT),
            Payload::SessionStarted(s) => {
                self.text("payload.device_id", s.device_id.as_deref(), MAX_TEXT)
            }
            Payload::SessionEnded(s) => {
                if let Some(d) = s.duration_ms
                    && !(0..=MAX_SESSION_MS).contains(&d)
                {
                    self.push(
                        "payload.duration_ms",
                        ViolationCode::InvalidValue,
                        format!("must be between 0 and {MAX_SESSION_MS}"),
                    );
                }
                self.text("payload.reason", s.reason.as_deref(), MAX_TEXT);
            }
            Payload::Bonus(b) => {
                self.id("payload.bonus_id", &b.bonus_id, MAX_ID);
                self.money("payload.amount", &b.amount);
                if let Some(m) = &b.wagering_requirement {
                    self.money("payload.wagering_requirement", m);
                    self.same_currency(
                        "payload.wagering_requirement.currency",
                        m,
                        &b.amount,
                        "amount",
                    );
                }
                if let Some(m) = &b.wagered {
                    self.money("payload.wagered", m);
                    self.same_currency("payload.wagered.currency", m, &b.amount, "amount");
                }
            }
            Payload::Custom(c) => self.custom(c),
        }
    }

    fn custom(&mut self, c: &Custom) {
        self.name("payload.name", &c.name);
        if c.properties.len() > self.cfg.max_custom_properties {
            self.push(
                "payload.properties",
                ViolationCode::InvalidProperty,
                format!(
                    "{} properties; at most {}",
                    c.properties.len(),
                    self.cfg.max_custom_properties
                ),
            );
            return;
        }
        for (key, value) in &c.properties {
            let path = format!(
                "payload.properties.{}",
                key.chars().take(MAX_NAME).collect::<String>()
            );
            self.name(&path, key);
            match value {
                CustomValue::Text(t) if t.len() > MAX_PROPERTY_TEXT => self.push(
                    &path,
                    ViolationCode::TooLong,
                    format!("longer than {MAX_PROPERTY_TEXT} bytes"),
                ),
                CustomValue::Number(n) if !n.is_finite() => self.push(
                    &path,
                    ViolationCode::InvalidProperty,
                    "numbers must be finite",
                ),
                _ => {}
            }
        }
    }

    /// Custom event names and property keys: `[a-z0-9_.]`, starting with a letter.
    fn name(&mut self, path: &str, value: &str) {
        let ok_char =
            |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.';
        if value.is_empty() {
            self.push(path, ViolationCode::Required, "must not be empty");
        } else if value.len() > MAX_NAME {
            self.push(
                path,
                ViolationCode::TooLong,
                format!("longer than {MAX_NAME} bytes"),
            );
        } else if !value.starts_with(|c: char| c.is_ascii_lowercase())
            || !value.chars().all(ok_char)
        {
            self.push(
                path,
                ViolationCode::InvalidCharacters,
                "use [a-z0-9_.], starting with a letter",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A violation reads `path: code: message`, and without a path (the whole event)
    /// `code: message` (it read `: code: message`).
    #[test]
    fn a_violation_reads_with_its_path_and_without_one() {
        let v = Violation::new("payload.stake", ViolationCode::Required, "missing");
        assert_eq!(v.to_string(), "payload.stake: required: missing");
        let v = Violation::new("", ViolationCode::Malformed, "protobuf: truncated");
        assert_eq!(v.to_string(), "malformed: protobuf: truncated");
    }

    /// `as_str` is what serde writes, and `ALL` lists every code once, in order: the JSON
    /// Schema derived from the enum names every variant.
    #[test]
    fn every_code_is_listed_and_named_as_serde_names_it() {
        for (i, code) in ViolationCode::ALL.iter().enumerate() {
            assert_eq!(*code as usize, i, "{code:?} out of order in ALL");
            let serde = serde_json::to_value(code).expect("json");
            assert_eq!(serde.as_str(), Some(code.as_str()));
            assert_eq!(code.to_string(), code.as_str());
        }
        let schema = schemars::schema_for!(ViolationCode).to_value();
        let mut variants: Vec<&str> = schema["oneOf"]
            .as_array()
            .expect("oneOf")
            .iter()
            .filter_map(|v| v["const"].as_str())
            .collect();
        let mut all: Vec<&str> = ViolationCode::ALL.iter().map(|c| c.as_str()).collect();
        variants.sort_unstable();
        all.sort_unstable();
        assert_eq!(
            variants, all,
            "ViolationCode::ALL must list every variant once"
        );
    }
}
