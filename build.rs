//! Generates the Rust types for `proto/` with a pure-Rust protobuf compiler (no system `protoc`):
//! prost structs plus their proto3-JSON serde impls (pbjson), keeping the proto field names.

use std::error::Error;
use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["courier.proto", "node.proto", "signal.proto"], ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    prost_build::Config::new().out_dir(&out_dir).compile_fds(descriptors.clone())?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors.encode_to_vec())?
        .out_dir(&out_dir)
        .preserve_proto_field_names()
        // Defaults (0, false, "") are written out, so a JSON client reads `signal_offset_state:
        // false` instead of a missing key; the proto3 JSON mapping allows both.
        .emit_fields()
        // The node-to-node envelope and the signal endpoint are only ever protobuf; they need no
        // JSON mapping (`.signal` is outside the `.courier` built below anyway).
        .exclude([".courier.node"])
        .build(&[".courier"])?;
    Ok(())
}
