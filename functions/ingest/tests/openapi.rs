//! The OpenAPI document stays in sync with the code: the checked-in copy equals what the types
//! generate, the server serves it, every status an error can produce is documented, and every
//! documented operation exists on the router.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use pitboss_bus::BusError;
use pitboss_bus::memory::MemoryPublisher;
use pitboss_ingest::IngestError;
use pitboss_ingest::core::RequestError;
use pitboss_ingest::openapi::{document, document_text};
use tower::ServiceExt;

/// One of every error; the `match` below stops compiling when a variant is added.
fn every_error() -> Vec<IngestError> {
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
        IngestError::RateLimited {
            retry_after_secs: 1,
        },
        IngestError::BusUnavailable(BusError::Unavailable("x".into())),
        IngestError::BusRejected(BusError::UnknownTopic("x".into())),
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
            | IngestError::RateLimited { .. }
            | IngestError::BusUnavailable(_)
            | IngestError::BusRejected(_) => {}
        }
    }
    all
}

#[test]
fn checked_in_document_matches_the_code() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    let generated = document_text();
    if std::env::var_os("PITBOSS_UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path)
        .expect("docs/openapi.json: run with PITBOSS_UPDATE_SCHEMA=1");
    assert!(
        checked_in == generated,
        "docs/openapi.json is stale: rerun with PITBOSS_UPDATE_SCHEMA=1"
    );
}

#[test]
fn every_error_status_is_documented() {
    let doc = document();
    let responses = &doc["paths"]["/v1/events"]["post"]["responses"];
    for e in every_error() {
        let status = e.status().as_u16().to_string();
        assert!(
            responses.get(&status).is_some(),
            "{status} ({}) is not in the document",
            e.code()
        );
        if e.retry_after().is_some() {
            assert!(
                responses[&status]["headers"].get("Retry-After").is_some(),
                "{status} must document Retry-After"
            );
        }
    }
    // The schemas the handlers use are all there.
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for name in [
        "Event",
        "IngestResponse",
        "ErrorBody",
        "FrameReply",
        "Violation",
        "Outcome",
    ] {
        assert!(schemas.contains_key(name), "schema {name} missing");
    }
}

#[tokio::test]
async fn served_and_every_documented_operation_exists() {
    let state = pitboss_ingest::state(
        pitboss_ingest::IngestConfig::default(),
        MemoryPublisher::new().publisher(),
    )
    .unwrap();
    let app = pitboss_ingest::http::router(state);
    let resp = app
        .clone()
        .oneshot(
            Request::get("/v1/openapi.json")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let served: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(served, document());

    for (path, ops) in document()["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let resp = app
                .clone()
                .oneshot(
                    Request::builder()
                        .method(method.clone())
                        .uri(path)
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert!(
                resp.status() != StatusCode::NOT_FOUND
                    && resp.status() != StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path} is documented but not routed ({})",
                resp.status()
            );
        }
    }
}
