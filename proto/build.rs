//! Compiles the API's protos (`proto/aurae/*/v0/*.proto`, and the vendored CRI) with protox (a pure-Rust
//! protobuf compiler, so no `protoc` binary is needed) and writes the
//! encoded descriptor set beside the generated code for gRPC reflection.
use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/aurae/runtime/v0/runtime.proto",
        "proto/aurae/metadata/v0/metadata.proto",
        // Kubernetes' CRI (`runtime.v1`), vendored unchanged: see
        // proto/cri/runtime/v1/PROVENANCE.md.
        "proto/cri/runtime/v1/api.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("aurae_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
