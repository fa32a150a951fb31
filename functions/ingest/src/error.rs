//! Errors of the ingest function. Each has a [`RequestCode`], whose row of the error table
//! (`crate::codes::ERROR_CODES`) gives its code, HTTP status, gRPC code and retry advice.

use axum::http::StatusCode;
use pitboss_bus::BusError;

use crate::codes::RequestCode;
use crate::core::RequestError;

/// Invalid configuration, found at start-up.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

/// Why a request failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("missing or invalid API key")]
    Unauthorized,
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("the body exceeds {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error(
        "unsupported content type {0:?}; send application/json (an array of events) or application/x-ndjson"
    )]
    UnsupportedMediaType(String),
    #[error("unsupported content encoding {0:?}; send gzip or an uncompressed body")]
    UnsupportedEncoding(String),
    #[error("tenant rate limit exceeded; retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error(
        "{events} events in one request, more than the tenant's rate limit of {per_second} events per second allows at once: no retry of it can pass; send at most {per_second} per request"
    )]
    BatchOverRateLimit { events: usize, per_second: u32 },
    #[error(
        "the event bus did not acknowledge the events in time; some may be stored all the same: retry with the same event ids (those stored are answered duplicate): {0}"
    )]
    BusUnavailable(BusError),
    #[error("the event bus refused the events: {0}")]
    BusRejected(BusError),
    #[error("the body stalled: nothing of it arrived for {after_ms} ms; nothing was written")]
    BodyTimeout { after_ms: u64 },
    #[error(
        "the server is shutting down: no further batch of this stream is read; resend the rest on a new connection"
    )]
    Draining,
    #[error(
        "a stream carries at most {limit} events (its reply holds a result for each): this batch would take it to {events}; send it and the rest on a new stream"
    )]
    StreamTooLong { events: usize, limit: usize },
    #[error("{0}; nothing of it was written: retry in a second")]
    Overloaded(crate::budget::OverBudget),
    #[error(
        "the tenant holds its {limit} ingest WebSockets on this instance already: close one or send over fewer (a socket closing frees its place)"
    )]
    TooManyWebSockets { limit: usize },
}

impl IngestError {
    /// Its row of the error table.
    pub fn kind(&self) -> RequestCode {
        match self {
            IngestError::Unauthorized => RequestCode::Unauthorized,
            IngestError::Request(RequestError::ForeignTenant { .. }) => {
                RequestCode::ForbiddenTenant
            }
            IngestError::Request(RequestError::TooManyEvents { .. }) => RequestCode::TooManyEvents,
            IngestError::Request(RequestError::EventTooLarge { .. }) => RequestCode::EventTooLarge,
            IngestError::BodyTooLarge { .. } => RequestCode::BodyTooLarge,
            IngestError::Request(RequestError::Empty) => RequestCode::EmptyBody,
            IngestError::Request(RequestError::Unreadable(_)) => RequestCode::UnreadableBody,
            IngestError::UnsupportedMediaType(_) => RequestCode::UnsupportedMediaType,
            IngestError::UnsupportedEncoding(_) => RequestCode::UnsupportedEncoding,
            IngestError::RateLimited { .. } => RequestCode::RateLimited,
            IngestError::BatchOverRateLimit { .. } => RequestCode::BatchOverRateLimit,
            IngestError::BusUnavailable(_) => RequestCode::BusUnavailable,
            // A bus that refuses for good (unknown topic, broker-side limits) is a server fault.
            IngestError::BusRejected(_) => RequestCode::BusRejected,
            IngestError::BodyTimeout { .. } => RequestCode::BodyTimeout,
            IngestError::Draining => RequestCode::Draining,
            IngestError::StreamTooLong { .. } => RequestCode::StreamTooLong,
            IngestError::Overloaded(_) => RequestCode::Overloaded,
            IngestError::TooManyWebSockets { .. } => RequestCode::TooManyWebSockets,
        }
    }

    /// The HTTP status for this error (from the table).
    pub fn status(&self) -> StatusCode {
        self.kind().http_status()
    }

    /// Stable machine-readable code (from the table).
    pub fn code(&self) -> &'static str {
        self.kind().as_str()
    }

    /// Seconds a client should wait before retrying, when a retry can help (the table's
    /// `Retry::AfterRetryAfter` rows; a test checks they agree).
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            IngestError::RateLimited { retry_after_secs } => Some(*retry_after_secs),
            IngestError::BusUnavailable(_) | IngestError::Draining | IngestError::Overloaded(_) => {
                Some(1)
            }
            // A client reconnecting before the server has seen its old socket die: the idle
            // timeout reaps that one.
            IngestError::TooManyWebSockets { .. } => Some(5),
            _ => None,
        }
    }
}
