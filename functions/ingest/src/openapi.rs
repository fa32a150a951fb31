//! The OpenAPI 3.1 document of the ingest API (`GET /v1/openapi.json`), built from the very
//! types the handlers serialize: schemas come from schemars (JSON Schema 2020-12, the dialect
//! OpenAPI 3.1 uses), error responses from `IngestError`. `docs/openapi.json` is this output; a
//! test keeps it in sync.

use pitboss_model::Event;
use schemars::generate::SchemaSettings;
use serde_json::{Value, json};

use crate::http::{ErrorBody, IngestResponse};
use crate::ws::FrameReply;

fn error(description: &str, schema: &Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

/// The document, as served.
pub fn document() -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "/components/schemas".into())
        .into_generator();
    let batch = generator.subschema_for::<Vec<Event>>().to_value();
    let event = generator.subschema_for::<Event>().to_value();
    let response = generator.subschema_for::<IngestResponse>().to_value();
    let err = generator.subschema_for::<ErrorBody>().to_value();
    let frame = generator.subschema_for::<FrameReply>().to_value();
    let schemas = generator.take_definitions(true);
    let retry = json!({"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}});
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Pitboss ingest API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Player events in; answered only after the bus acknowledged every accepted event. See docs/api.md.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"}
        },
        "security": [{"bearer": []}, {"apiKey": []}],
        "paths": {
            "/v1/events": {"post": {
                "operationId": "postEvents",
                "summary": "Ingest a batch of events",
                "requestBody": {"required": true, "content": {
                    "application/json": {"schema": {"oneOf": [batch, event]}},
                    "application/x-ndjson": {"schema": {"type": "string", "description": "one event per line"}}
                }},
                "responses": {
                    "200": {"description": "processed; per-event results in request order", "content": {"application/json": {"schema": response}}},
                    "400": {"description": "every event refused (body: IngestResponse), or an empty/unreadable body (body: ErrorBody)",
                            "content": {"application/json": {"schema": {"oneOf": [response, err]}}}},
                    "401": error("missing or invalid API key", &err),
                    "403": error("an event of another tenant", &err),
                    "413": error("body, event or event count over the limits", &err),
                    "415": error("unsupported content type", &err),
                    "429": {"description": "tenant rate exceeded", "headers": retry, "content": {"application/json": {"schema": err}}},
                    "500": error("the bus refused for good (a server fault)", &err),
                    "503": {"description": "the bus did not acknowledge; nothing was accepted", "headers": retry, "content": {"application/json": {"schema": err}}}
                }
            }},
            "/v1/ingest/ws": {"get": {
                "operationId": "ingestWebSocket",
                "summary": "WebSocket ingest: frames of events in, one FrameReply per frame out",
                "description": "Frames are JSON arrays of events (or one event). Replies carry the frame's sequence number.",
                "responses": {
                    "101": {"description": "switching protocols; replies are FrameReply", "content": {"application/json": {"schema": frame}}},
                    "401": error("missing or invalid API key", &err)
                }
            }},
            "/v1/openapi.json": {"get": {"operationId": "openapi", "security": [], "responses": {"200": {"description": "this document"}}}},
            "/healthz": {"get": {"operationId": "health", "security": [], "responses": {"200": {"description": "serving"}}}},
            "/readyz": {"get": {"operationId": "ready", "security": [], "responses": {
                "200": {"description": "the bus can take writes"}, "503": {"description": "the bus cannot take writes"}}}}
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"}
            }
        }
    })
}

/// The document as pretty text with a trailing newline, as checked in.
pub fn document_text() -> String {
    let mut text = serde_json::to_string_pretty(&document()).unwrap_or_default();
    text.push('\n');
    text
}
