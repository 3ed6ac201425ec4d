//! Generated types and service stubs for the Aurae Runtime API.
//!
//! The schemas live in `proto/aurae/runtime/v0/runtime.proto` and
//! `proto/aurae/metadata/v0/metadata.proto`.

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

pub mod runtime {
    tonic::include_proto!("aurae.runtime.v0");
}

/// What an auraed tells its instances about themselves.
pub mod metadata {
    tonic::include_proto!("aurae.metadata.v0");
}

/// Kubernetes' Container Runtime Interface (`runtime.v1`, cri-api v0.36.3),
/// vendored unchanged in `proto/cri/runtime/v1/api.proto`: what auraed serves
/// to a kubelet.
pub mod cri {
    #![allow(clippy::all)]
    tonic::include_proto!("runtime.v1");
}

/// Encoded `FileDescriptorSet` of the API, served by gRPC reflection so that
/// generic clients (grpcurl, grpcio) can discover the service.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("aurae_descriptor");

pub use prost_types::Timestamp;
