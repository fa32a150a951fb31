//! The rules engine's integration tests in one binary (linked once, not once per suite): the
//! engine, the shipped fraud and responsible-gambling packs on crafted sequences, and with the
//! `lambda` feature the Lambda adapter against a fake Runtime API.

mod common;
mod engine;
#[cfg(feature = "lambda")]
mod lambda;
mod money;
mod packs_fraud;
mod packs_rg;
mod stream;
