//! Compiles `proto/aurae/runtime/v0/runtime.proto` with protox (a pure-Rust
//! protobuf compiler, so no `protoc` binary is needed) and writes the
//! encoded descriptor set beside the generated code for gRPC reflection.
use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/aurae/runtime/v0/runtime.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("aurae_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
