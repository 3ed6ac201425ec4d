//! gRPC services: the Runtime API (one implementation per file) and the
//! request/status conversions they share.

pub mod convert;
pub mod pod_convert;
pub mod runtime_service;

pub use runtime_service::RuntimeService;
