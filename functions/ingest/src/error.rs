//! Errors of the ingest function, mapped to HTTP in exactly one place (`IngestError::status`).

use axum::http::StatusCode;
use pitboss_bus::BusError;

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
    #[error("tenant rate limit exceeded; retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("the event bus did not acknowledge the events; nothing was accepted: {0}")]
    BusUnavailable(BusError),
    #[error("the event bus refused the events: {0}")]
    BusRejected(BusError),
}

impl IngestError {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            IngestError::Unauthorized => StatusCode::UNAUTHORIZED,
            IngestError::Request(RequestError::ForeignTenant { .. }) => StatusCode::FORBIDDEN,
            IngestError::Request(
                RequestError::TooManyEvents { .. } | RequestError::EventTooLarge { .. },
            )
            | IngestError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            IngestError::Request(RequestError::Empty | RequestError::Unreadable(_)) => {
                StatusCode::BAD_REQUEST
            }
            IngestError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IngestError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            IngestError::BusUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            // A bus that refuses for good (unknown topic, broker-side limits) is a server fault.
            IngestError::BusRejected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            IngestError::Unauthorized => "unauthorized",
            IngestError::Request(RequestError::ForeignTenant { .. }) => "forbidden_tenant",
            IngestError::Request(RequestError::TooManyEvents { .. }) => "too_many_events",
            IngestError::Request(RequestError::EventTooLarge { .. }) => "event_too_large",
            IngestError::BodyTooLarge { .. } => "body_too_large",
            IngestError::Request(RequestError::Empty) => "empty_body",
            IngestError::Request(RequestError::Unreadable(_)) => "unreadable_body",
            IngestError::UnsupportedMediaType(_) => "unsupported_media_type",
            IngestError::RateLimited { .. } => "rate_limited",
            IngestError::BusUnavailable(_) => "bus_unavailable",
            IngestError::BusRejected(_) => "bus_rejected",
        }
    }

    /// Seconds a client should wait before retrying, when a retry can help.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            IngestError::RateLimited { retry_after_secs } => Some(*retry_after_secs),
            IngestError::BusUnavailable(_) => Some(1),
            _ => None,
        }
    }
}
