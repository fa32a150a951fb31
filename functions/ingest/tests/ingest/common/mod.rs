//! Shared by the ingest test suites: every answer they see is checked against the error table
//! (`pitboss_ingest::codes::ERROR_CODES`) — its code is a row of the table, of the right level,
//! with the table's HTTP status or gRPC code.

#![allow(dead_code, clippy::unwrap_used)]

use pitboss_bus::BusError;
use pitboss_ingest::IngestError;
use pitboss_ingest::codes::{ErrorCodeDoc, Level, lookup};
use pitboss_ingest::core::RequestError;

/// One of every error; the `match` below stops compiling when a variant is added.
pub fn every_error() -> Vec<IngestError> {
    let all = vec![
        IngestError::Unauthorized,
        IngestError::Request(RequestError::Empty),
        IngestError::Request(RequestError::Unreadable("x".into())),
        IngestError::Request(RequestError::TooManyEvents { count: 2, limit: 1 }),
        IngestError::Request(RequestError::EventTooLarge {
            index: 0,
            size: 2,
            limit: 1,
        }),
        IngestError::Request(RequestError::ForeignTenant {
            index: 0,
            found: "a".into(),
            expected: "b".into(),
        }),
        IngestError::BodyTooLarge { limit: 1 },
        IngestError::UnsupportedMediaType("text/plain".into()),
        IngestError::UnsupportedEncoding("br".into()),
        IngestError::RateLimited {
            retry_after_secs: 1,
        },
        IngestError::BatchOverRateLimit {
            events: 11,
            per_second: 10,
        },
        IngestError::BusUnavailable(BusError::Unavailable("x".into())),
        IngestError::BusRejected(BusError::UnknownTopic("x".into())),
        IngestError::BodyTimeout { after_ms: 10_000 },
        IngestError::Draining,
        IngestError::StreamTooLong {
            events: 55,
            limit: 50,
        },
        IngestError::Overloaded(pitboss_ingest::budget::OverBudget::Process(1024)),
        IngestError::Overloaded(pitboss_ingest::budget::OverBudget::Tenant(1024)),
        IngestError::TooManyWebSockets { limit: 2 },
    ];
    for e in &all {
        match e {
            IngestError::Unauthorized
            | IngestError::Request(
                RequestError::Empty
                | RequestError::Unreadable(_)
                | RequestError::TooManyEvents { .. }
                | RequestError::EventTooLarge { .. }
                | RequestError::ForeignTenant { .. },
            )
            | IngestError::BodyTooLarge { .. }
            | IngestError::UnsupportedMediaType(_)
            | IngestError::UnsupportedEncoding(_)
            | IngestError::RateLimited { .. }
            | IngestError::BatchOverRateLimit { .. }
            | IngestError::BusUnavailable(_)
            | IngestError::BusRejected(_)
            | IngestError::BodyTimeout { .. }
            | IngestError::Draining
            | IngestError::StreamTooLong { .. }
            | IngestError::Overloaded(_)
            | IngestError::TooManyWebSockets { .. } => {}
        }
    }
    all
}

/// The row of `code`, which must exist and be of `level`.
pub fn documented(code: &str, level: Level) -> &'static ErrorCodeDoc {
    let doc = lookup(code).unwrap_or_else(|| panic!("{code:?} is not in the error table"));
    assert_eq!(doc.level, level, "{code:?} answered as a {level:?} error");
    doc
}

/// Every code in a JSON answer (an `ErrorBody`, an `IngestResponse` or a WebSocket
/// `FrameReply`): request-level ones with the table's HTTP status (`status`: `None` for a
/// WebSocket frame), event-level ones in the table. Returns the codes found.
pub fn check_json_answer(status: Option<u16>, body: &[u8]) -> Vec<String> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        if let Some(status) = status {
            assert!(
                status < 400,
                "a {status} answer without a JSON error body: {:?}",
                String::from_utf8_lossy(body)
            );
        }
        return Vec::new();
    };
    let mut codes = Vec::new();
    if let Some(code) = value["error"]["code"].as_str() {
        let doc = documented(code, Level::Request);
        if let Some(status) = status {
            assert_eq!(doc.http, Some(status), "{code} answered with HTTP {status}");
        }
        codes.push(code.to_owned());
    }
    for result in value["results"].as_array().into_iter().flatten() {
        for error in result["errors"].as_array().into_iter().flatten() {
            let code = error["code"].as_str().unwrap();
            documented(code, Level::Event);
            codes.push(code.to_owned());
        }
    }
    codes
}

/// A failed gRPC call: its message starts with a code of the table, the gRPC code is the
/// table's, and the `pitboss-error-code` metadata repeats the code. Returns the code.
pub fn check_grpc_status(status: &tonic::Status) -> String {
    let code = status
        .message()
        .split(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    let doc = documented(&code, Level::Request);
    assert_eq!(
        Some(status.code()),
        doc.grpc,
        "{code} answered with gRPC {:?}",
        status.code()
    );
    assert_eq!(
        status
            .metadata()
            .get(pitboss_proto::codec::ERROR_CODE_METADATA)
            .and_then(|v| v.to_str().ok()),
        Some(code.as_str()),
        "{status:?}"
    );
    code
}

/// The per-event codes of a gRPC reply, each checked against the table.
pub fn check_grpc_reply(reply: &pitboss_proto::v1::IngestReply) -> Vec<String> {
    reply
        .results
        .iter()
        .flat_map(|r| &r.errors)
        .map(|e| documented(&e.code, Level::Event).code.to_owned())
        .collect()
}
