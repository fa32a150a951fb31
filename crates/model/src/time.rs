//! Millisecond UTC timestamps, carried as RFC 3339 text in JSON and epoch milliseconds on the wire.

use std::borrow::Cow;

use chrono::{DateTime, SecondsFormat, Utc};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A UTC instant with millisecond precision (milliseconds since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The instant `ms` milliseconds after the Unix epoch.
    pub const fn from_millis(ms: i64) -> Self {
        Timestamp(ms)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// The current time, truncated to milliseconds.
    pub fn now() -> Self {
        Timestamp(Utc::now().timestamp_millis())
    }

    /// Parses RFC 3339 text with any offset; sub-millisecond digits are truncated.
    pub fn parse_rfc3339(s: &str) -> Result<Self, chrono::ParseError> {
        DateTime::parse_from_rfc3339(s).map(|dt| Timestamp(dt.timestamp_millis()))
    }

    /// RFC 3339 text in UTC with exactly three fractional digits, e.g. `2026-11-28T10:00:00.123Z`.
    /// `None` when the instant is outside chrono's range.
    pub fn to_rfc3339(self) -> Option<String> {
        DateTime::<Utc>::from_timestamp_millis(self.0)
            .map(|dt| dt.to_rfc3339_opts(SecondsFormat::Millis, true))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.to_rfc3339() {
            Some(text) => s.serialize_str(&text),
            None => Err(serde::ser::Error::custom(format!(
                "timestamp {} ms is out of range",
                self.0
            ))),
        }
    }
}

/// How every timestamp that is not RFC 3339 text is refused; the decoder reports these as
/// `invalid_timestamp`.
pub(crate) const NOT_RFC3339: &str = "expected an RFC 3339 timestamp";

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Cow::<'de, str>::deserialize(d)?;
        Timestamp::parse_rfc3339(&text)
            .map_err(|e| serde::de::Error::custom(format!("{NOT_RFC3339}: {e}")))
    }
}

impl JsonSchema for Timestamp {
    fn schema_name() -> Cow<'static, str> {
        "Timestamp".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "format": "date-time",
            "description": "RFC 3339 timestamp; stored with millisecond precision in UTC"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_offsets_and_truncates_to_millis() {
        let t = Timestamp::parse_rfc3339("2026-11-28T12:00:00.123456+02:00").expect("valid");
        assert_eq!(t.to_rfc3339().as_deref(), Some("2026-11-28T10:00:00.123Z"));
    }

    #[test]
    fn rejects_non_rfc3339() {
        assert!(Timestamp::parse_rfc3339("28/11/2026").is_err());
        assert!(Timestamp::parse_rfc3339("2026-11-28").is_err());
    }

    #[test]
    fn out_of_range_is_an_error_not_a_panic() {
        assert_eq!(Timestamp::from_millis(i64::MAX).to_rfc3339(), None);
        assert!(serde_json::to_string(&Timestamp::from_millis(i64::MAX)).is_err());
    }
}
