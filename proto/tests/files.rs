//! Every `.proto` file of the contract is compiled by build.rs and listed in `PROTO_FILES`, so a
//! new file cannot be forgotten in either place.

use std::path::Path;

#[test]
fn every_proto_file_is_compiled_and_listed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut on_disk: Vec<String> = std::fs::read_dir(root.join("pitboss/v1"))
        .expect("proto dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".proto"))
        .map(|name| format!("pitboss/v1/{name}"))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = pitboss_proto::PROTO_FILES
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    listed.sort();
    assert_eq!(
        on_disk, listed,
        "PROTO_FILES differs from pitboss/v1/*.proto"
    );

    let build = std::fs::read_to_string(root.join("build.rs")).expect("build.rs");
    for file in &on_disk {
        assert!(
            build.contains(&format!("\"{file}\"")),
            "build.rs does not compile {file}"
        );
    }
}
