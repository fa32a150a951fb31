//! The OpenAPI document stays in sync with the code: the checked-in copy equals what the types
//! generate, the server serves it, every status an error can produce is documented, and every
//! documented operation exists on the router.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::every_error;
use http_body_util::BodyExt;
use pitboss_bus::memory::MemoryPublisher;
use pitboss_ingest::openapi::{document, document_text};
use tower::ServiceExt;

use crate::common;

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

/// The codes the document lists are the table's, with its descriptions.
#[test]
fn the_documents_codes_are_the_tables() {
    use pitboss_ingest::codes::{ERROR_CODES, Level};
    let doc = document();
    let schemas = &doc["components"]["schemas"];
    for (schema, level) in [
        (
            &schemas["ErrorDetail"]["properties"]["code"],
            Level::Request,
        ),
        (&schemas["ViolationCode"], Level::Event),
    ] {
        let listed: Vec<&str> = schema["oneOf"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["const"].as_str().unwrap())
            .collect();
        let table: Vec<&str> = ERROR_CODES
            .iter()
            .filter(|d| d.level == level)
            .map(|d| d.code)
            .collect();
        assert_eq!(listed, table, "{level:?}");
    }
    let responses = &doc["paths"]["/v1/events"]["post"]["responses"];
    for d in ERROR_CODES.iter().filter(|d| d.level == Level::Request) {
        let status = d.http.unwrap().to_string();
        let description = responses[&status]["description"].as_str().unwrap();
        assert!(
            description.contains(&format!("`{}`", d.code)),
            "{status} does not describe {}",
            d.code
        );
    }
}
