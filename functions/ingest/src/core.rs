//! The pure ingest core: a request body and the caller's tenant in, a plan out — one outcome
//! per event (accepted, duplicate, rejected with reasons) and the bus records to publish.
//! No I/O happens here; the adapters (HTTP, WebSocket, gRPC, Lambda) publish and answer.

use std::collections::HashSet;

use pitboss_bus::{Headers, header};
use pitboss_model::{
    Event, SCHEMA_VERSION, Timestamp, ValidationConfig, Violation, decode_event, decode_event_str,
    encode_proto_owned, new_event_id, validate,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// How the events are laid out in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// A JSON array of events (a single JSON object is accepted as a batch of one).
    Json,
    /// One JSON event per line.
    Ndjson,
}

/// Limits and validation settings of the core; defaults in one place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoreConfig {
    /// Largest single event, in bytes of JSON (Segment's limit: 32 KiB).
    pub max_event_bytes: usize,
    /// Most events in one request.
    pub max_events: usize,
    pub validation: ValidationConfig,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            max_event_bytes: 32 * 1024,
            max_events: 10_000,
            validation: ValidationConfig::default(),
        }
    }
}

/// What happened to one event of a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// Validated, stamped and (once the adapter has published) durable on the bus.
    Accepted {
        event_id: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        late: bool,
    },
    /// Already accepted recently (a client retry): not written again.
    Duplicate { event_id: String },
    /// Refused; nothing was written. `errors` says why.
    Rejected {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
        errors: Vec<Violation>,
    },
}

/// A record the adapter must publish, with the index of its event in the request.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub index: usize,
    /// The client-chosen id's fingerprint, for the dedup window once the bus has the record
    /// (`None` for an id the server assigned).
    pub client_id: Option<IdFingerprint>,
    /// Bus key: `tenant:player`.
    pub key: String,
    /// The enriched event, protobuf-encoded.
    pub value: Vec<u8>,
    /// Bus headers, so consumers route without decoding: type, tenant, event time, received at.
    pub headers: Headers,
}

/// The core's answer for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub outcomes: Vec<Outcome>,
    pub publish: Vec<Prepared>,
}

impl Plan {
    /// The event id of a record to publish (as its outcome reports it).
    pub fn event_id(&self, record: &Prepared) -> &str {
        match self.outcomes.get(record.index) {
            Some(Outcome::Accepted { event_id, .. }) => event_id,
            _ => "",
        }
    }

    /// Counts of (accepted, duplicate, rejected).
    pub fn counts(&self) -> (usize, usize, usize) {
        self.outcomes
            .iter()
            .fold((0, 0, 0), |(a, d, r), o| match o {
                Outcome::Accepted { .. } => (a + 1, d, r),
                Outcome::Duplicate { .. } => (a, d + 1, r),
                Outcome::Rejected { .. } => (a, d, r + 1),
            })
    }
}

/// Why a whole request is refused (as opposed to single events).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("the body is empty")]
    Empty,
    #[error("the body is not a JSON array of events: {0}")]
    Unreadable(String),
    #[error("{count} events in one request; the limit is {limit}")]
    TooManyEvents { count: usize, limit: usize },
    #[error("event {index} has {size} bytes; the limit is {limit}")]
    EventTooLarge {
        index: usize,
        size: usize,
        limit: usize,
    },
    #[error(
        "event {index} belongs to tenant {found:?}; this API key writes only tenant {expected:?}"
    )]
    ForeignTenant {
        index: usize,
        found: String,
        expected: String,
    },
}

/// How a client-chosen event id is compared, within a request and in the edge dedup window:
/// the 128-bit XXH3 of (tenant, id in lower case). 16 bytes, no allocation; two different
/// pairs share one with probability 2^-128.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdFingerprint(pub u128);

/// The fingerprint of `event_id` (already in lower case) of `tenant`.
pub fn fingerprint(tenant: &str, event_id: &str) -> IdFingerprint {
    // 0xff is not valid UTF-8: no (tenant, id) pair can shift across the separator.
    let len = tenant.len() + 1 + event_id.len();
    let mut stack = [0u8; 256];
    let mut heap = Vec::new();
    let buf = if len <= stack.len() {
        &mut stack[..len]
    } else {
        heap.resize(len, 0);
        &mut heap[..]
    };
    buf[..tenant.len()].copy_from_slice(tenant.as_bytes());
    buf[tenant.len()] = 0xff;
    buf[tenant.len() + 1..].copy_from_slice(event_id.as_bytes());
    IdFingerprint(twox_hash::XxHash3_128::oneshot(buf))
}

/// Recently accepted client-chosen event ids (the edge dedup window). Ids the server assigns
/// are never looked up nor remembered: they are new by construction, and a client that sends
/// no id cannot retry idempotently anyway, so the window's bounded memory goes to ids that can
/// come back.
pub trait SeenIds {
    /// Whether the id with this fingerprint was accepted recently; `now_ms` is the request's clock.
    fn seen(&self, id: IdFingerprint, now_ms: i64) -> bool;
}

/// A window that has seen nothing (for callers without dedup).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoDedup;

impl SeenIds for NoDedup {
    fn seen(&self, _: IdFingerprint, _: i64) -> bool {
        false
    }
}

/// The raw JSON of one event of a body: its text, or (`Err`) an NDJSON line that is not UTF-8,
/// kept so that the decoder rejects that line alone with a precise reason.
pub type RawEvent<'a> = Result<&'a str, &'a [u8]>;

fn utf8(event: &[u8]) -> RawEvent<'_> {
    std::str::from_utf8(event).map_err(|_| event)
}

fn raw_len(raw: &RawEvent<'_>) -> usize {
    raw.map_or_else(<[u8]>::len, str::len)
}

/// A JSON array's elements as raw text, at most `max` of them kept: past that the rest are
/// only counted (parsed without being kept), so a body of millions of tiny elements costs no
/// memory beyond the limit before it is refused.
struct BoundedArray<'a> {
    kept: Vec<&'a RawValue>,
    count: usize,
}

struct BoundedSeed(usize);

impl<'de> serde::de::DeserializeSeed<'de> for BoundedSeed {
    type Value = BoundedArray<'de>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for BoundedSeed {
    type Value = BoundedArray<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON array of events")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut kept = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.0));
        let mut count = 0;
        while count < self.0 {
            match seq.next_element::<&'de RawValue>()? {
                Some(v) => kept.push(v),
                None => return Ok(BoundedArray { kept, count }),
            }
            count += 1;
        }
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
            count += 1;
        }
        Ok(BoundedArray { kept, count })
    }
}

/// Splits a body into the raw JSON text of each event. The body is checked for UTF-8 once, so
/// the events are decoded as text (serde_json then skips its per-string UTF-8 checks). More
/// than `max_events` events are refused (`TooManyEvents`) without keeping more than that many.
pub fn split(
    body: &[u8],
    format: BodyFormat,
    max_events: usize,
) -> Result<Vec<RawEvent<'_>>, RequestError> {
    let trimmed = body.trim_ascii();
    if trimmed.is_empty() {
        return Err(RequestError::Empty);
    }
    match format {
        // A single object is one event, checked as one (like an NDJSON line).
        BodyFormat::Json if trimmed.starts_with(b"{") => Ok(vec![utf8(trimmed)]),
        BodyFormat::Json => {
            let text = std::str::from_utf8(trimmed).map_err(|_| {
                // serde_json says where the bad byte is.
                RequestError::Unreadable(
                    serde_json::from_slice::<Vec<&RawValue>>(trimmed)
                        .err()
                        .map_or_else(|| "invalid UTF-8".to_owned(), |e| e.to_string()),
                )
            })?;
            let mut de = serde_json::Deserializer::from_str(text);
            let raws = serde::de::DeserializeSeed::deserialize(BoundedSeed(max_events), &mut de)
                .and_then(|r| de.end().map(|()| r))
                .map_err(|e| RequestError::Unreadable(e.to_string()))?;
            if raws.count > max_events {
                return Err(RequestError::TooManyEvents {
                    count: raws.count,
                    limit: max_events,
                });
            }
            if raws.kept.is_empty() {
                // `[]`: no events, like an empty body.
                return Err(RequestError::Empty);
            }
            Ok(raws.kept.into_iter().map(|r| Ok(r.get())).collect())
        }
        BodyFormat::Ndjson => {
            let lines = || {
                trimmed
                    .split(|b| *b == b'\n')
                    .map(<[u8]>::trim_ascii)
                    .filter(|l| !l.is_empty())
            };
            let count = lines().count();
            if count > max_events {
                return Err(RequestError::TooManyEvents {
                    count,
                    limit: max_events,
                });
            }
            Ok(lines().map(utf8).collect())
        }
    }
}

/// Plans one request: every event decoded, checked against the caller's tenant, validated,
/// deduplicated (within the request and against `seen`), stamped with `received_at = now_ms`
/// and an event id (UUIDv7 when absent), and encoded for the bus.
pub fn plan(
    body: &[u8],
    format: BodyFormat,
    tenant: &str,
    config: &CoreConfig,
    now_ms: i64,
    seen: &dyn SeenIds,
) -> Result<Plan, RequestError> {
    let raws = split(body, format, config.max_events)?;
    check_limits(raws.iter().map(raw_len), config)?;
    let decoded = raws
        .iter()
        .map(|r| {
            let (result, bytes) = match r {
                Ok(text) => (decode_event_str(text), text.as_bytes()),
                Err(bytes) => (decode_event(bytes), *bytes),
            };
            result.map_err(|v| (locate(v, body, bytes), client_id_of(bytes)))
        })
        .collect();
    plan_decoded(decoded, tenant, config, now_ms, seen)
}

/// A decoding violation of the event at `event` (a slice of `body`), told in terms of the
/// body the client sent: serde_json's " at line L column C" counts within the event (or its
/// payload), so an NDJSON line's error always said "line 1". Text that is not JSON gets the
/// position in the body (line 3 of an NDJSON body is line 3); for any other violation the
/// path says where, and the position is dropped. Runs only for refused events.
fn locate(mut v: Violation, body: &[u8], event: &[u8]) -> Violation {
    let Some((head, line, column)) = serde_position(&v.message) else {
        return v;
    };
    if v.code != pitboss_model::ViolationCode::Malformed {
        v.message.truncate(head);
        return v;
    }
    let start = (event.as_ptr() as usize)
        .checked_sub(body.as_ptr() as usize)
        .filter(|s| *s <= body.len())
        .unwrap_or(0);
    let before = &body[..start];
    let body_line = before.iter().filter(|b| **b == b'\n').count() + line;
    let body_column = if line == 1 {
        let line_start = before
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        column + (start - line_start)
    } else {
        column
    };
    v.message.truncate(head);
    v.message = format!("{} at line {body_line} column {body_column}", v.message);
    v
}

/// The byte index where serde_json's " at line L column C" suffix starts, and L and C.
fn serde_position(message: &str) -> Option<(usize, usize, usize)> {
    let head = message.rfind(" at line ")?;
    let (line, column) = message[head + " at line ".len()..].split_once(" column ")?;
    Some((head, line.parse().ok()?, column.parse().ok()?))
}

/// [`plan`] for events that arrived in protobuf form (gRPC); limits apply to encoded sizes.
pub fn plan_proto(
    events: Vec<pitboss_proto::v1::Event>,
    tenant: &str,
    config: &CoreConfig,
    now_ms: i64,
    seen: &dyn SeenIds,
) -> Result<Plan, RequestError> {
    if events.is_empty() {
        return Err(RequestError::Empty);
    }
    check_limits(events.iter().map(prost::Message::encoded_len), config)?;
    let decoded = events
        .into_iter()
        .map(|e| {
            let id = (!e.event_id.is_empty()).then(|| e.event_id.clone());
            Event::try_from(e).map_err(|v| (v, id))
        })
        .collect();
    plan_decoded(decoded, tenant, config, now_ms, seen)
}

fn check_limits(
    sizes: impl ExactSizeIterator<Item = usize>,
    config: &CoreConfig,
) -> Result<(), RequestError> {
    if sizes.len() > config.max_events {
        return Err(RequestError::TooManyEvents {
            count: sizes.len(),
            limit: config.max_events,
        });
    }
    for (index, size) in sizes.enumerate() {
        if size > config.max_event_bytes {
            return Err(RequestError::EventTooLarge {
                index,
                size,
                limit: config.max_event_bytes,
            });
        }
    }
    Ok(())
}

/// The `event_id` of an event that could not be decoded, when it has a string one (a
/// refusal names the event the client sent, whatever else is wrong with it).
fn client_id_of(event: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        event_id: Option<String>,
    }
    serde_json::from_slice::<Id>(event).ok()?.event_id
}

/// Decoded events, or why each could not be, with the client's `event_id` when it had one.
type Decoded = Vec<Result<Event, (Violation, Option<String>)>>;

fn plan_decoded(
    decoded: Decoded,
    tenant: &str,
    config: &CoreConfig,
    now_ms: i64,
    seen: &dyn SeenIds,
) -> Result<Plan, RequestError> {
    if let Some((index, e)) = decoded.iter().enumerate().find_map(|(i, d)| {
        d.as_ref()
            .ok()
            .filter(|e| e.tenant_id != tenant)
            .map(|e| (i, e))
    }) {
        return Err(RequestError::ForeignTenant {
            index,
            found: e.tenant_id.clone(),
            expected: tenant.to_owned(),
        });
    }

    let mut outcomes = Vec::with_capacity(decoded.len());
    let mut publish = Vec::with_capacity(decoded.len());
    let mut in_request: HashSet<IdFingerprint, foldhash::fast::RandomState> =
        HashSet::with_hasher(Default::default());
    for (index, d) in decoded.into_iter().enumerate() {
        let mut event = match d {
            Ok(e) => e,
            Err((v, event_id)) => {
                outcomes.push(Outcome::Rejected {
                    // Echoed in the canonical (lower-case) form every other answer gives.
                    event_id: event_id.map(|id| id.to_ascii_lowercase()),
                    errors: vec![v],
                });
                continue;
            }
        };
        let verdict = match validate(&event, &config.validation, now_ms) {
            Ok(v) => v,
            Err(errors) => {
                // Echoed in the canonical (lower-case) form every other answer gives.
                let event_id = event.event_id.map(|mut id| {
                    id.make_ascii_lowercase();
                    id
                });
                outcomes.push(Outcome::Rejected { event_id, errors });
                continue;
            }
        };
        let (event_id, client_id) = match event.event_id.take() {
            Some(mut id) => {
                // Client ids are compared in canonical (lower-case) form.
                id.make_ascii_lowercase();
                let fp = fingerprint(tenant, &id);
                if !in_request.insert(fp) || seen.seen(fp, now_ms) {
                    outcomes.push(Outcome::Duplicate { event_id: id });
                    continue;
                }
                (id, Some(fp))
            }
            None => (new_event_id(), None),
        };
        event.event_id = Some(event_id.clone());
        event.received_at = Some(Timestamp::from_millis(now_ms));
        event.late = verdict.late;
        if event.schema_version == 0 {
            event.schema_version = SCHEMA_VERSION;
        }
        let key = event.bus_key();
        let mut headers = Headers::new()
            .with(header::TYPE, event.event_type().as_str())
            .with(header::TENANT, tenant)
            .with(
                header::EVENT_TIME,
                event.occurred_at.as_millis().to_string(),
            )
            .with(header::RECEIVED_AT, now_ms.to_string());
        if client_id.is_some() {
            headers.insert(header::CLIENT_ID, "1");
        }
        publish.push(Prepared {
            index,
            client_id,
            key,
            value: encode_proto_owned(event),
            headers,
        });
        outcomes.push(Outcome::Accepted {
            event_id,
            late: verdict.late,
        });
    }
    Ok(Plan { outcomes, publish })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pitboss_model::{Payload, ViolationCode, decode_proto};

    const NOW: i64 = 1_795_870_800_000; // 2026-11-28T13:00:00Z

    fn bet(id: Option<&str>, tenant: &str, amount: i64) -> String {
        let id = id
            .map(|i| format!(r#""event_id":"{i}","#))
            .unwrap_or_default();
        format!(
            r#"{{{id}"tenant_id":"{tenant}","player_id":"p1","type":"bet_placed","occurred_at":"2026-11-28T12:00:00Z","payload":{{"bet_id":"b1","game_id":"g1","stake":{{"amount_minor":{amount},"currency":"EUR"}}}}}}"#
        )
    }

    fn run(body: impl AsRef<[u8]>, format: BodyFormat) -> Result<Plan, RequestError> {
        plan(
            body.as_ref(),
            format,
            "acme",
            &CoreConfig::default(),
            NOW,
            &NoDedup,
        )
    }

    const ID1: &str = "0193735a-6b2e-7c41-9d3f-2a1b4c5d6e7f";
    const ID2: &str = "0193735a-6b2e-7c41-9d3f-2a1b4c5d6e80";

    #[test]
    fn accepts_a_json_array_and_stamps_events() {
        let body = format!(
            "[{},{}]",
            bet(Some(ID1), "acme", 100),
            bet(None, "acme", 200)
        );
        let plan = run(&body, BodyFormat::Json).expect("plan");
        assert_eq!(plan.counts(), (2, 0, 0));
        assert_eq!(plan.publish.len(), 2);
        assert_eq!(plan.event_id(&plan.publish[0]), ID1);
        assert!(plan.publish[0].client_id.is_some());
        assert_eq!(
            plan.publish[1].client_id, None,
            "a server id is not for the window"
        );
        assert_eq!(plan.publish[0].key, "acme:p1");
        let generated = uuid::Uuid::parse_str(plan.event_id(&plan.publish[1])).expect("uuid");
        assert_eq!(generated.get_version_num(), 7, "missing ids become UUIDv7");
        let event = decode_proto(&plan.publish[1].value).expect("proto");
        assert_eq!(event.received_at, Some(Timestamp::from_millis(NOW)));
        assert_eq!(
            event.event_id.as_deref(),
            Some(plan.event_id(&plan.publish[1]))
        );
        assert!(matches!(event.payload, Payload::BetPlaced(ref b) if b.stake.amount_minor == 200));
    }

    #[test]
    fn accepts_ndjson_and_a_single_object() {
        let body = format!(
            "{}\n\n{}\n",
            bet(Some(ID1), "acme", 1),
            bet(Some(ID2), "acme", 2)
        );
        assert_eq!(
            run(&body, BodyFormat::Ndjson).expect("ndjson").counts(),
            (2, 0, 0)
        );
        assert_eq!(
            run(bet(None, "acme", 1), BodyFormat::Json)
                .expect("object")
                .counts(),
            (1, 0, 0)
        );
    }

    #[test]
    fn rejects_single_events_with_reasons_and_keeps_order() {
        // The id in upper case: answered in its canonical form, as accepted ones are.
        let body = format!(
            "[{},{},{{\"nope\":1}}]",
            bet(Some(&ID1.to_ascii_uppercase()), "acme", -5),
            bet(Some(ID2), "acme", 5)
        );
        let plan = run(&body, BodyFormat::Json).expect("plan");
        assert_eq!(plan.counts(), (1, 0, 2));
        match &plan.outcomes[0] {
            Outcome::Rejected { event_id, errors } => {
                assert_eq!(event_id.as_deref(), Some(ID1));
                assert_eq!(errors[0].code, ViolationCode::NegativeAmount);
                assert_eq!(errors[0].path, "payload.stake.amount_minor");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(plan.outcomes[1], Outcome::Accepted { .. }));
        assert!(
            matches!(&plan.outcomes[2], Outcome::Rejected { errors, .. } if errors[0].code == ViolationCode::UnknownField)
        );
        assert_eq!(plan.publish.len(), 1);
        assert_eq!(plan.publish[0].index, 1);
    }

    /// An event refused while it is decoded (a required field missing, a field of the wrong
    /// type) still names the client's id, lower-cased as every answer gives it: docs/api.md
    /// says a result's `event_id` is the client's (it was left out of these).
    #[test]
    fn an_event_refused_as_it_is_decoded_names_the_clients_id() {
        let missing_player = format!(
            r#"{{"event_id":"{}","tenant_id":"acme","type":"login","occurred_at":"2026-11-28T12:00:00Z","payload":{{}}}}"#,
            ID1.to_ascii_uppercase()
        );
        let body = format!(r#"[{missing_player},{{"event_id":7,"tenant_id":"acme"}}]"#);
        let plan = run(&body, BodyFormat::Json).expect("plan");
        assert_eq!(plan.counts(), (0, 0, 2));
        match &plan.outcomes[0] {
            Outcome::Rejected { event_id, errors } => {
                assert_eq!(event_id.as_deref(), Some(ID1));
                assert_eq!(errors[0].path, "player_id", "{errors:?}");
            }
            other => panic!("{other:?}"),
        }
        // An id that is not a string is not echoed.
        assert!(matches!(
            &plan.outcomes[1],
            Outcome::Rejected { event_id: None, .. }
        ));
        let ndjson = format!("{missing_player}\n");
        let plan = run(&ndjson, BodyFormat::Ndjson).expect("plan");
        assert!(matches!(
            &plan.outcomes[0],
            Outcome::Rejected { event_id: Some(id), .. } if id == ID1
        ));
    }

    #[test]
    fn duplicates_within_a_request_and_within_the_window() {
        let body = format!(
            "[{},{}]",
            bet(Some(ID1), "acme", 1),
            bet(Some(&ID1.to_uppercase()), "acme", 1)
        );
        let plan = run(&body, BodyFormat::Json).expect("plan");
        assert_eq!(plan.counts(), (1, 1, 0));
        assert_eq!(plan.publish.len(), 1);

        struct Seen;
        impl SeenIds for Seen {
            fn seen(&self, id: IdFingerprint, _: i64) -> bool {
                id == fingerprint("acme", ID2)
            }
        }
        let body = format!(
            "[{},{}]",
            bet(Some(ID1), "acme", 1),
            bet(Some(ID2), "acme", 1)
        );
        let planned = super::plan(
            body.as_bytes(),
            BodyFormat::Json,
            "acme",
            &CoreConfig::default(),
            NOW,
            &Seen,
        )
        .expect("plan");
        assert_eq!(
            planned.outcomes[1],
            Outcome::Duplicate {
                event_id: ID2.into()
            }
        );
        assert_eq!(planned.publish.len(), 1);
    }

    #[test]
    fn whole_request_errors() {
        assert_eq!(run("", BodyFormat::Json), Err(RequestError::Empty));
        assert_eq!(run("  \n ", BodyFormat::Ndjson), Err(RequestError::Empty));
        assert_eq!(run("[]", BodyFormat::Json), Err(RequestError::Empty));
        assert_eq!(run(" [ ] ", BodyFormat::Json), Err(RequestError::Empty));
        assert!(matches!(
            run("[1,", BodyFormat::Json),
            Err(RequestError::Unreadable(_))
        ));
        assert!(matches!(
            run("\"text\"", BodyFormat::Json),
            Err(RequestError::Unreadable(_))
        ));
        let foreign = format!("[{},{}]", bet(None, "acme", 1), bet(None, "other", 1));
        assert_eq!(
            run(&foreign, BodyFormat::Json),
            Err(RequestError::ForeignTenant {
                index: 1,
                found: "other".into(),
                expected: "acme".into()
            })
        );
        let many = format!("[{}]", vec![bet(None, "acme", 1); 10_001].join(","));
        assert_eq!(
            run(&many, BodyFormat::Json),
            Err(RequestError::TooManyEvents {
                count: 10_001,
                limit: 10_000
            })
        );
        // Millions of tiny events are counted, not kept, before the refusal (the array's
        // elements and the lines were all held first: ~7 million in a 20 MiB body).
        let tiny = format!("[{}{{}}]", "{},".repeat(2_999_999));
        assert_eq!(
            split(tiny.as_bytes(), BodyFormat::Json, 10_000),
            Err(RequestError::TooManyEvents {
                count: 3_000_000,
                limit: 10_000
            })
        );
        let lines = "{}\n".repeat(3_000_000);
        assert_eq!(
            split(lines.as_bytes(), BodyFormat::Ndjson, 10_000),
            Err(RequestError::TooManyEvents {
                count: 3_000_000,
                limit: 10_000
            })
        );
        // Within the limit, and malformed past it: as before.
        assert_eq!(
            split(b"[{},{}]", BodyFormat::Json, 2).map(|r| r.len()),
            Ok(2)
        );
        assert!(matches!(
            split(b"[{},{},{]", BodyFormat::Json, 2),
            Err(RequestError::Unreadable(_))
        ));
        assert!(matches!(
            split(b"[{}] x", BodyFormat::Json, 2),
            Err(RequestError::Unreadable(_))
        ));
        let huge = bet(None, "acme", 1).replace("\"g1\"", &format!("\"{}\"", "g".repeat(40_000)));
        assert!(matches!(
            run(&huge, BodyFormat::Json),
            Err(RequestError::EventTooLarge { index: 0, .. })
        ));
    }

    /// A line that is not JSON is refused at the empty path, wherever it breaks off, and the
    /// message gives its line in the body (blank lines count); other reasons name the field and
    /// carry no position of serde's (which counted within the line or the payload).
    #[test]
    fn ndjson_lines_that_are_not_json_say_which_line() {
        let good = bet(None, "acme", 1);
        let cut = &good[..good.len() - 20];
        let body = format!(
            "{good}\n\n  {cut}\nnot json\n{}\n",
            bet(None, "acme", 1).replace("\"g1\"", "7")
        );
        let plan = run(&body, BodyFormat::Ndjson).expect("plan");
        assert_eq!(plan.counts(), (1, 0, 3));
        let errors = |i: usize| match &plan.outcomes[i] {
            Outcome::Rejected { errors, .. } => errors[0].clone(),
            other => panic!("{other:?}"),
        };
        let v = errors(1);
        assert_eq!((v.path.as_str(), v.code), ("", ViolationCode::Malformed));
        assert!(
            v.message
                .ends_with(&format!("at line 3 column {}", cut.len() + 2)),
            "{v}"
        );
        let v = errors(2);
        assert_eq!((v.path.as_str(), v.code), ("", ViolationCode::Malformed));
        assert!(v.message.ends_with("at line 4 column 2"), "{v}");
        let v = errors(3);
        assert_eq!(
            (v.path.as_str(), v.code),
            ("payload.game_id", ViolationCode::InvalidType)
        );
        assert!(!v.message.contains(" at line "), "{v}");
    }

    #[test]
    fn invalid_utf8_is_an_error_never_a_panic() {
        let mut body = bet(None, "acme", 1).into_bytes();
        let at = body.len() - 10;
        body[at] = 0xff;
        let array = [b"[".as_slice(), &body, b"]"].concat();
        assert!(matches!(
            run(&array, BodyFormat::Json),
            Err(RequestError::Unreadable(_))
        ));
        // A single object is one event: rejected alone, with a reason.
        let single = run(&body, BodyFormat::Json).expect("plan");
        assert!(
            matches!(&single.outcomes[0], Outcome::Rejected { errors, .. } if errors[0].code == ViolationCode::Malformed)
        );
        let ndjson = [bet(None, "acme", 1).as_bytes(), b"\n", &body].concat();
        let p = run(&ndjson, BodyFormat::Ndjson).expect("plan");
        assert_eq!(p.counts(), (1, 0, 1));
        assert!(
            matches!(&p.outcomes[1], Outcome::Rejected { errors, .. } if errors[0].code == ViolationCode::Malformed)
        );
    }

    #[test]
    fn outcomes_serialize_in_the_documented_shape() {
        let json = serde_json::to_value(Outcome::Accepted {
            event_id: ID1.into(),
            late: false,
        })
        .expect("json");
        assert_eq!(
            json,
            serde_json::json!({"status": "accepted", "event_id": ID1})
        );
        let json = serde_json::to_value(Outcome::Duplicate {
            event_id: ID1.into(),
        })
        .expect("json");
        assert_eq!(
            json,
            serde_json::json!({"status": "duplicate", "event_id": ID1})
        );
    }
}
