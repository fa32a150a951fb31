//! Compiles the .proto contract with protox (a pure-Rust protobuf compiler, so no `protoc`
//! has to be installed) and generates the Rust types with prost-build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=pitboss");
    let descriptors = protox::compile(["pitboss/v1/events.proto"], ["."])?;
    prost_build::Config::new()
        // Deterministic encoding of maps: the same event always encodes to the same bytes.
        .btree_map(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
