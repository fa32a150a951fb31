//! Compiles the .proto contract with protox (a pure-Rust protobuf compiler, so no `protoc`
//! has to be installed) and generates the Rust types (prost) and gRPC stubs (tonic). Every file
//! of the contract is listed here and in `PROTO_FILES` (src/lib.rs); a test checks the two agree.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=pitboss");
    let descriptors = protox::compile(
        [
            "pitboss/v1/events.proto",
            "pitboss/v1/ingest.proto",
            "pitboss/v1/live.proto",
        ],
        ["."],
    )?;
    // The contract as a descriptor set, for the gRPC reflection service (`FILE_DESCRIPTOR_SET`).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("pitboss_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        // Deterministic encoding of maps: the same event always encodes to the same bytes.
        .btree_map(".")
        .build_client(true)
        .build_server(true)
        // prost's codec, but a request that is not protobuf is INVALID_ARGUMENT (src/codec.rs).
        .codec_path("crate::codec::Codec")
        .compile_fds(descriptors)?;
    Ok(())
}
