//! Generated protobuf types of the Pitboss contract (`proto/pitboss/v1/*.proto`).
//!
//! Domain code works with `pitboss-model`, which converts to and from these types; only
//! the wire adapters (bus, gRPC) touch them directly.

pub mod codec;

/// Version 1 of the contract: events, the live-path messages (alerts, pushes, deliveries, alert
/// acks) and the `Ingest` gRPC service (client and server).
#[allow(missing_debug_implementations, clippy::all)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/pitboss.v1.rs"));
}

/// The contract's files and everything they import, as an encoded `FileDescriptorSet`: what
/// the ingest's gRPC reflection service describes (`grpcurl` without the .proto files).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/pitboss_descriptor.bin"));

/// The contract's file descriptor path, for tools that want to locate the sources.
pub const PROTO_FILES: &[&str] = &[
    "pitboss/v1/events.proto",
    "pitboss/v1/ingest.proto",
    "pitboss/v1/live.proto",
];
