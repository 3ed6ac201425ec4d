//! gRPC services: the Runtime API (one implementation per file) and the
//! request/status conversions they share.

mod cell_mounts;
mod cell_security;
pub mod convert;
mod input;
pub mod pod_convert;
mod put_image;
pub mod runtime_service;
pub mod vm_convert;

pub use runtime_service::RuntimeService;
