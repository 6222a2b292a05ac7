//! Generates the Rust code of Fovea's .proto contracts and the encoded file descriptor set that
//! gRPC reflection serves. Needs `protoc` (Debian: protobuf-compiler).

use std::env;
use std::path::PathBuf;

/// Every contract file, relative to `proto/`.
const PROTOS: &[&str] = &[
    "proto/fovea/v1/chat.proto",
    "proto/fovea/v1/sampling.proto",
    "proto/fovea/v1/output.proto",
    "proto/fovea/v1/generation.proto",
    "proto/fovea/worker/v1/types.proto",
    "proto/fovea/worker/v1/job.proto",
    "proto/fovea/worker/v1/status.proto",
    "proto/fovea/worker/v1/worker.proto",
    "proto/fovea/worker/v1/vision.proto",
    "proto/fovea/worker/v1/kv_transfer.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // tonic-prost-build emits no rerun-if-changed lines; without one, any file of the crate would
    // rerun this script.
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("fovea_descriptor.bin"))
        // Image bytes, features and KV chunks are forwarded between services: `Bytes` shares them
        // instead of copying.
        .bytes(".")
        .compile_protos(PROTOS, &["proto"])?;
    Ok(())
}
