//! The ingest's integration tests in one binary (linked once, not once per suite): HTTP,
//! WebSocket and gRPC ingest, the error table and the OpenAPI document, and with the `lambda`
//! feature the Lambda adapter against a fake Runtime API.

mod common;
mod errors;
mod grpc;
mod http;
#[cfg(feature = "lambda")]
mod lambda;
mod openapi;
mod ws;
