//! The OpenAPI 3.1 document of the ingest API (`GET /v1/openapi.json`), built from the very
//! types the handlers serialize: schemas come from schemars (JSON Schema 2020-12, the dialect
//! OpenAPI 3.1 uses), error responses from `IngestError`. `docs/openapi.json` is this output; a
//! test keeps it in sync.

use pitboss_model::Event;
use schemars::generate::SchemaSettings;
use serde_json::{Value, json};

use crate::codes::{ERROR_CODES, Level, Retry, json_schema};
use crate::http::{ErrorBody, IngestResponse};
use crate::ws::FrameReply;

fn error(description: &str, schema: &Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

/// The error responses of `POST /v1/events`, one per HTTP status of the error table, each
/// describing its codes; `Retry-After` where a code of that status can be retried.
fn error_responses(err: &Value, response: &Value) -> serde_json::Map<String, Value> {
    let retry = json!({"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}});
    let mut statuses: Vec<u16> = ERROR_CODES.iter().filter_map(|d| d.http).collect();
    statuses.sort_unstable();
    statuses.dedup();
    statuses
        .into_iter()
        .map(|status| {
            let rows: Vec<_> = ERROR_CODES
                .iter()
                .filter(|d| d.level == Level::Request && d.http == Some(status))
                .collect();
            let codes = rows
                .iter()
                .map(|d| format!("`{}`: {}", d.code, d.meaning))
                .collect::<Vec<_>>()
                .join("; ");
            let mut value = if status == 400 {
                json!({
                    "description": format!("every event refused (body: IngestResponse), or the request refused (body: ErrorBody) — {codes}"),
                    "content": {"application/json": {"schema": {"oneOf": [response, err]}}}
                })
            } else {
                error(&codes, err)
            };
            if rows.iter().any(|d| d.retry == Retry::AfterRetryAfter) {
                value["headers"] = retry.clone();
            }
            (status.to_string(), value)
        })
        .collect()
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
    let mut schemas = generator.take_definitions(true);
    // The codes and what they mean come from the error table, not from doc comments.
    if let Some(code) = schemas
        .get_mut("ErrorDetail")
        .and_then(|d| d["properties"].get_mut("code"))
    {
        *code = json_schema(
            Level::Request,
            "Why the whole request (or frame) was refused: a stable machine-readable code.",
        );
    }
    schemas.insert(
        "ViolationCode".into(),
        json_schema(
            Level::Event,
            "Why one event was refused: a stable machine-readable code. Clients may switch on these; new codes may be added.",
        ),
    );
    let mut responses = serde_json::Map::new();
    responses.insert(
        "200".into(),
        json!({"description": "processed; per-event results in request order", "content": {"application/json": {"schema": response}}}),
    );
    responses.extend(error_responses(&err, &response));
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
                "parameters": [{"name": "Content-Encoding", "in": "header", "required": false,
                    "description": "gzip, or none; any other is 415 unsupported_encoding",
                    "schema": {"type": "string", "enum": ["gzip", "identity"]}}],
                "requestBody": {"required": true, "content": {
                    "application/json": {"schema": {"oneOf": [batch, event]}},
                    "application/x-ndjson": {"schema": {"type": "string", "description": "one event per line"}}
                }},
                "responses": responses
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
