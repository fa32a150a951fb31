//! Every error code the ingest API answers with, in one table: [`ERROR_CODES`]. Request-level
//! codes (the whole request, WebSocket frame or gRPC call failed) take their HTTP status, gRPC
//! code and retry advice from here (`IngestError::code`, `status`, `grpc::status`); event-level
//! codes are the model's [`ViolationCode`]s, one result per refused event. The error tables of
//! docs/api.md and docs/events.md and the code lists of docs/openapi.json are generated from this
//! table, and tests keep them equal (`PITBOSS_UPDATE_SCHEMA=1 cargo test -p pitboss-ingest
//! --test ingest -- errors:: openapi::` rewrites them).

use std::fmt::Write as _;

use pitboss_model::ViolationCode;
use tonic::Code;

/// What an error refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// The whole request (or WebSocket frame, or gRPC call): nothing of it was written.
    Request,
    /// One event, in its result; the other events of the request are not affected.
    Event,
}

/// Whether sending the same thing again can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// No: the request (or event) must change first.
    No,
    /// Yes, after the `Retry-After` header's seconds (`retry_after_secs` on a WebSocket).
    AfterRetryAfter,
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCodeDoc {
    /// The stable machine-readable code.
    pub code: &'static str,
    pub level: Level,
    /// HTTP status of a request-level error (`None` for an event-level code: the request is
    /// answered 200, or 400 when every event was refused).
    pub http: Option<u16>,
    /// gRPC status code of a request-level error (`None`: never produced over gRPC).
    pub grpc: Option<Code>,
    pub retry: Retry,
    /// When it happens, for clients (Markdown).
    pub meaning: &'static str,
}

/// The request-level codes, in the order of their rows at the start of [`ERROR_CODES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestCode {
    EmptyBody,
    UnreadableBody,
    Unauthorized,
    ForbiddenTenant,
    BodyTooLarge,
    EventTooLarge,
    TooManyEvents,
    UnsupportedMediaType,
    UnsupportedEncoding,
    RateLimited,
    BatchOverRateLimit,
    BusRejected,
    BusUnavailable,
    BodyTimeout,
    Draining,
    StreamTooLong,
    Overloaded,
    TooManyWebSockets,
}

impl RequestCode {
    /// Every request-level code, in table order (`ALL[c as usize] == c`).
    pub const ALL: [RequestCode; 18] = [
        RequestCode::EmptyBody,
        RequestCode::UnreadableBody,
        RequestCode::Unauthorized,
        RequestCode::ForbiddenTenant,
        RequestCode::BodyTooLarge,
        RequestCode::EventTooLarge,
        RequestCode::TooManyEvents,
        RequestCode::UnsupportedMediaType,
        RequestCode::UnsupportedEncoding,
        RequestCode::RateLimited,
        RequestCode::BatchOverRateLimit,
        RequestCode::BusRejected,
        RequestCode::BusUnavailable,
        RequestCode::BodyTimeout,
        RequestCode::Draining,
        RequestCode::StreamTooLong,
        RequestCode::Overloaded,
        RequestCode::TooManyWebSockets,
    ];

    /// Its row of [`ERROR_CODES`].
    pub const fn doc(self) -> &'static ErrorCodeDoc {
        &ERROR_CODES[self as usize]
    }

    /// The code as clients see it.
    pub const fn as_str(self) -> &'static str {
        self.doc().code
    }

    /// The HTTP status (every request-level row has one; a test checks it).
    pub fn http_status(self) -> axum::http::StatusCode {
        self.doc()
            .http
            .and_then(|s| axum::http::StatusCode::from_u16(s).ok())
            .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The gRPC code (INVALID_ARGUMENT for the HTTP-only codes, which gRPC never produces).
    pub fn grpc_code(self) -> Code {
        self.doc().grpc.unwrap_or(Code::InvalidArgument)
    }
}

/// The row of an event-level code.
pub const fn event_doc(code: ViolationCode) -> &'static ErrorCodeDoc {
    &ERROR_CODES[RequestCode::ALL.len() + code as usize]
}

/// The row of `code`, if it is one.
pub fn lookup(code: &str) -> Option<&'static ErrorCodeDoc> {
    ERROR_CODES.iter().find(|d| d.code == code)
}

const fn request(
    code: &'static str,
    http: u16,
    grpc: Option<Code>,
    retry: Retry,
    meaning: &'static str,
) -> ErrorCodeDoc {
    ErrorCodeDoc {
        code,
        level: Level::Request,
        http: Some(http),
        grpc,
        retry,
        meaning,
    }
}

const fn event(code: ViolationCode, meaning: &'static str) -> ErrorCodeDoc {
    ErrorCodeDoc {
        code: code.as_str(),
        level: Level::Event,
        http: None,
        grpc: None,
        retry: Retry::No,
        meaning,
    }
}

/// Every error code: first the request-level ones in [`RequestCode`] order, then the
/// event-level ones in [`ViolationCode::ALL`] order (tests check both orders).
pub const ERROR_CODES: &[ErrorCodeDoc] = &[
    request(
        "empty_body",
        400,
        Some(Code::InvalidArgument),
        Retry::No,
        "no events: an empty body, `[]`, only blank NDJSON lines, an empty WebSocket frame or gRPC batch",
    ),
    request(
        "unreadable_body",
        400,
        Some(Code::InvalidArgument),
        Retry::No,
        "not a JSON array or object of events (or broken gzip, invalid UTF-8); a gRPC message that is not protobuf",
    ),
    request(
        "unauthorized",
        401,
        Some(Code::Unauthenticated),
        Retry::No,
        "no or unknown API key (`WWW-Authenticate: Bearer`); checked before anything else",
    ),
    request(
        "forbidden_tenant",
        403,
        Some(Code::PermissionDenied),
        Retry::No,
        "an event's `tenant_id` is not the key's tenant",
    ),
    request(
        "body_too_large",
        413,
        Some(Code::ResourceExhausted),
        Retry::No,
        "body over `max_body_bytes` (20 MiB) after decompression",
    ),
    request(
        "event_too_large",
        413,
        Some(Code::ResourceExhausted),
        Retry::No,
        "one event over `core.max_event_bytes` (32 KiB)",
    ),
    request(
        "too_many_events",
        413,
        Some(Code::ResourceExhausted),
        Retry::No,
        "more than `core.max_events` (10,000) events",
    ),
    request(
        "unsupported_media_type",
        415,
        None,
        Retry::No,
        "a `Content-Type` other than JSON or NDJSON",
    ),
    request(
        "unsupported_encoding",
        415,
        None,
        Retry::No,
        "a `Content-Encoding` other than `gzip` (or `identity`)",
    ),
    request(
        "rate_limited",
        429,
        Some(Code::ResourceExhausted),
        Retry::AfterRetryAfter,
        "the tenant's events per second are used up (accepted and refused events count; duplicates, a client's retries, do not)",
    ),
    request(
        "batch_over_rate_limit",
        413,
        Some(Code::ResourceExhausted),
        Retry::No,
        "more events in one request than the tenant's events per second (`events_per_second`): no wait makes it pass; split it",
    ),
    request(
        "bus_rejected",
        500,
        Some(Code::Internal),
        Retry::No,
        "the bus refused for good (e.g. topic missing: a server fault)",
    ),
    request(
        "bus_unavailable",
        503,
        Some(Code::Unavailable),
        Retry::AfterRetryAfter,
        "the bus did not acknowledge in time (`publish_timeout_ms`, 10 s)",
    ),
    request(
        "body_timeout",
        408,
        Some(Code::DeadlineExceeded),
        Retry::No,
        "the body stalled: nothing of it arrived for `header_read_timeout_ms` (10 s) (gRPC: within a message, once part of it was read); nothing was written (a gRPC stream: its batches before were, `pitboss-batches-written`)",
    ),
    request(
        "draining",
        503,
        Some(Code::Unavailable),
        Retry::AfterRetryAfter,
        "the server is shutting down (SIGTERM): an `IngestStream` reads no further batch; the batches before were written (`pitboss-batches-written`); resend the rest on a new connection",
    ),
    request(
        "stream_too_long",
        413,
        Some(Code::ResourceExhausted),
        Retry::No,
        "gRPC `IngestStream` only: the batch would take the stream past 10 × `core.max_events` (100,000) events, the most one reply adds up; the batches before were written (`pitboss-batches-written`); send the rest on a new stream",
    ),
    request(
        "overloaded",
        503,
        Some(Code::Unavailable),
        Retry::AfterRetryAfter,
        "the process holds `max_inflight_body_bytes` (256 MiB) of request bodies, all requests, gRPC batches and WebSocket frames together, or the tenant's requests their share of it (`max_inflight_body_bytes_per_tenant`, 64 MiB), and there is no room for this one now; nothing of it was written",
    ),
    request(
        "too_many_websockets",
        429,
        None,
        Retry::AfterRetryAfter,
        "`GET /v1/ingest/ws` only: the tenant holds `max_websockets_per_tenant` (2,500) ingest WebSockets on this instance already; refused before the upgrade (a socket closing frees its place)",
    ),
    event(
        ViolationCode::Malformed,
        "the event is not JSON (an NDJSON line, a WebSocket frame or body of one event) or not protobuf, or has trailing data; at the empty path, wherever the text breaks off, and the message says where",
    ),
    event(
        ViolationCode::Required,
        "a required field is missing or empty",
    ),
    event(
        ViolationCode::UnknownField,
        "a field the contract does not define",
    ),
    event(
        ViolationCode::InvalidType,
        "wrong JSON type: a string for a number, a float for money, an array for an object, an object for a custom property value, an event that is not an object",
    ),
    event(
        ViolationCode::InvalidValue,
        "a value outside its set (unknown enum value, duration or UTC offset out of range)",
    ),
    event(
        ViolationCode::UnknownEventType,
        "`type` is not one of the event types",
    ),
    event(
        ViolationCode::UnsupportedSchemaVersion,
        "`schema_version` is 0 or newer than the server",
    ),
    event(
        ViolationCode::InvalidUuid,
        "`event_id` is not a canonical UUID",
    ),
    event(
        ViolationCode::InvalidCharacters,
        "an id or name with characters outside its charset",
    ),
    event(ViolationCode::TooLong, "an id or text over its limit"),
    event(ViolationCode::NegativeAmount, "money below zero"),
    event(
        ViolationCode::AmountTooLarge,
        "money above the configured ceiling (default 10¹³ minor units)",
    ),
    event(
        ViolationCode::InvalidCurrency,
        "not an ISO 4217 code in current use nor a configured extra currency",
    ),
    event(
        ViolationCode::InvalidOdds,
        "odds that are not decimal text of at least 1 (`\"2.75\"`)",
    ),
    event(ViolationCode::InvalidIp, "not an IPv4 or IPv6 address"),
    event(
        ViolationCode::InvalidCountry,
        "not an ISO 3166-1 alpha-2 country code",
    ),
    event(
        ViolationCode::InvalidTimestamp,
        "a time that is not RFC 3339 text, or before 1970",
    ),
    event(
        ViolationCode::FutureTimestamp,
        "`occurred_at` ahead of the server clock by more than the allowed skew (default 5 min)",
    ),
    event(
        ViolationCode::InvalidProperty,
        "too many custom properties, or a non-finite number",
    ),
];

/// How a gRPC code is written in the docs.
pub fn grpc_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

fn rows(level: Level) -> impl Iterator<Item = &'static ErrorCodeDoc> {
    ERROR_CODES.iter().filter(move |d| d.level == level)
}

/// The request-level table of docs/api.md.
pub fn request_table_markdown() -> String {
    let mut out =
        String::from("| Status | `code` | gRPC | When | Retry? |\n|---|---|---|---|---|\n");
    for d in rows(Level::Request) {
        let http = d.http.map_or_else(|| "—".to_owned(), |s| s.to_string());
        let grpc = d.grpc.map_or("— (HTTP only)", grpc_name);
        let retry = match d.retry {
            Retry::No => "no",
            Retry::AfterRetryAfter => "after `Retry-After` seconds",
        };
        let _ = writeln!(
            out,
            "| {http} | `{}` | {grpc} | {} | {retry} |",
            d.code, d.meaning
        );
    }
    out
}

/// The event-level table of docs/events.md.
pub fn event_table_markdown() -> String {
    let mut out = String::from("| Code | When |\n|---|---|\n");
    for d in rows(Level::Event) {
        let _ = writeln!(out, "| `{}` | {} |", d.code, d.meaning);
    }
    out
}

/// Where a generated table goes in a Markdown document.
/// (Generated from this table: `PITBOSS_UPDATE_SCHEMA=1 cargo test -p pitboss-ingest --test
/// errors` rewrites it.)
pub const BEGIN_MARKER: &str = "<!-- error-codes:begin -->";
/// The end of the generated part.
pub const END_MARKER: &str = "<!-- error-codes:end -->";

/// `doc` with the text between the markers replaced by `table`; `None` without both markers.
pub fn splice(doc: &str, table: &str) -> Option<String> {
    let begin = doc.find(BEGIN_MARKER)? + BEGIN_MARKER.len();
    let end = begin + doc[begin..].find(END_MARKER)?;
    Some(format!("{}\n{table}{}", &doc[..begin], &doc[end..]))
}

/// The JSON Schema (`oneOf` of `const` + `description`) of the codes of one level, for the
/// OpenAPI document.
pub fn json_schema(level: Level, description: &str) -> serde_json::Value {
    let one_of: Vec<serde_json::Value> = rows(level)
        .map(|d| {
            let mut text = d.meaning.to_owned();
            if let (Some(http), Level::Request) = (d.http, level) {
                let _ = match d.grpc {
                    Some(grpc) => write!(text, " (HTTP {http}; gRPC {})", grpc_name(grpc)),
                    None => write!(text, " (HTTP {http}; not produced over gRPC)"),
                };
            }
            serde_json::json!({"const": d.code, "description": text, "type": "string"})
        })
        .collect();
    serde_json::json!({"description": description, "oneOf": one_of})
}
