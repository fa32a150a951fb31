//! The JSON Schema of the canonical JSON form, generated from the Rust types so it cannot drift.
//! `docs/schema/event.schema.json` is this output; a test keeps the checked-in copy in sync.

use crate::event::Event;

/// The JSON Schema (draft 2020-12) of one event in canonical JSON form.
pub fn event_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(Event);
    schema.to_value()
}

/// The schema as pretty-printed text with a trailing newline, as checked in.
pub fn event_schema_text() -> String {
    let mut text = serde_json::to_string_pretty(&event_schema()).unwrap_or_default();
    text.push('\n');
    text
}
