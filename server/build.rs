//! Compiles server/proto with protox (no system `protoc`) and generates the messages, the
//! servers and the clients with tonic-prost-build. The compiled descriptor set is also written
//! to `$OUT_DIR/terad_descriptor.bin`, which the reflection services serve.

use prost::Message;
use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "tera/meta/v1/meta.proto",
    "tera/auth/v1/auth.proto",
    "grpc/health/v1/health.proto",
    "grpc/reflection/v1/reflection.proto",
    "grpc/reflection/v1alpha/reflection.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("terad_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(false)
        // Encodes through a scratch vector (src/codec.rs).
        .codec_path("crate::codec::TeraCodec")
        // Listings are encoded from the engine's records directly (src/wire.rs).
        .extern_path(".tera.meta.v1.ListResponse", "crate::wire::ListResponse")
        .compile_fds(fds)?;
    Ok(())
}
