//! auraed: the Aurae runtime daemon.
//!
//! It serves the `aurae.runtime.v0.Runtime` gRPC API over mTLS and runs
//! workloads: executables (supervised processes) and cells (cgroup v2 plus
//! namespaces, optionally from an OCI image, optionally jailed).

pub mod auth;
pub mod blocking;
pub mod cells;
pub mod cgroup;
pub mod config;
pub mod cri;
pub mod daemon;
pub mod error;
pub mod executables;
pub mod input;
pub mod instances;
pub mod jail;
pub mod log_files;
pub mod logs;
pub mod metadata;
pub mod net;
pub mod oci;
pub mod pki;
pub mod pods;
pub mod registry;
pub mod route;
pub mod runtime;
pub mod seccomp;
pub mod server;
pub mod service;
pub mod svid_swap;
pub mod sys;
pub mod tls_accept;
pub mod validation;
