//! Contract tests of the live path (alerts, pushes, deliveries, alert acks): realistic fixtures
//! round-trip JSON -> model -> protobuf -> model -> JSON, deterministic ids follow their inputs,
//! every validation rule has a refusing case, bus keys and header values are what docs/alerts.md
//! says, decoding never panics, and the checked-in JSON Schemas match the generated ones.

mod ids;
mod json;
mod properties;
mod round_trip;
mod validation;

use std::path::{Path, PathBuf};

use pitboss_model::ViolationCode;
use pitboss_model::live::*;

pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/live")
}

/// Every live fixture as (file name, text), sorted by name.
pub fn fixtures() -> Vec<(String, String)> {
    let mut out: Vec<_> = std::fs::read_dir(fixture_dir())
        .expect("fixtures/live")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let name = p.file_name().expect("name").to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).expect("read fixture"))
        })
        .collect();
    out.sort();
    out
}

/// The message type a fixture holds, from its file name's prefix.
pub fn type_of(name: &str) -> &'static str {
    [AlertAck::TYPE, Alert::TYPE, Push::TYPE, Delivery::TYPE]
        .into_iter()
        .find(|t| name.starts_with(&format!("{t}_")))
        .unwrap_or_else(|| panic!("{name}: no message type prefix"))
}

pub fn fixture<T: LiveMessage>(name: &str) -> T {
    let text = std::fs::read(fixture_dir().join(name)).expect("fixture");
    T::decode_json(&text).unwrap_or_else(|v| panic!("{name}: {v}"))
}

/// Every violation of `m` as (path, code), in order.
pub fn violations<T: LiveMessage>(m: &T) -> Vec<(String, ViolationCode)> {
    match m.validate() {
        Ok(()) => Vec::new(),
        Err(v) => v.into_iter().map(|v| (v.path, v.code)).collect(),
    }
}

pub fn one(path: &str, code: ViolationCode) -> Vec<(String, ViolationCode)> {
    vec![(path.to_owned(), code)]
}

pub fn v(path: &str, code: ViolationCode) -> (String, ViolationCode) {
    (path.to_owned(), code)
}
