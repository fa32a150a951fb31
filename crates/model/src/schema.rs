//! The JSON Schema of the canonical JSON form, generated from the Rust types so it cannot drift.
//! `docs/schema/event.schema.json` is this output; a test keeps the checked-in copy in sync.
//! (The live-path messages' schemas are in `live::schema`.)

use schemars::JsonSchema;

use crate::event::Event;

/// The JSON Schema (draft 2020-12) of one event in canonical JSON form.
pub fn event_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(Event);
    schema.to_value()
}

/// The schema as pretty-printed text with a trailing newline, as checked in.
pub fn event_schema_text() -> String {
    schema_text::<Event>()
}

/// The JSON Schema (draft 2020-12) of `T` as pretty-printed text with a trailing newline, as
/// checked in under `docs/schema/`.
pub fn schema_text<T: JsonSchema>() -> String {
    let schema = schemars::schema_for!(T);
    let mut text = serde_json::to_string_pretty(&schema.to_value()).unwrap_or_default();
    text.push('\n');
    text
}
