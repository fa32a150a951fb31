//! The JSON Schemas of the live-path messages, generated from the Rust types so they cannot
//! drift. `docs/schema/<type>.schema.json` is this output; a test keeps the checked-in copies in
//! sync.

use crate::live::{Alert, AlertAck, Delivery, LiveMessage, Push};
use crate::schema::schema_text;

/// Each message's `pitboss-type` (its schema's file name stem) and its schema as checked in.
pub fn live_schemas() -> [(&'static str, String); 4] {
    [
        (Alert::TYPE, schema_text::<Alert>()),
        (Push::TYPE, schema_text::<Push>()),
        (Delivery::TYPE, schema_text::<Delivery>()),
        (AlertAck::TYPE, schema_text::<AlertAck>()),
    ]
}
