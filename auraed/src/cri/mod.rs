//! auraed as a Kubernetes node runtime: the CRI's `RuntimeService` and
//! `ImageService` (`runtime.v1`) on a root-only Unix socket, in plain gRPC
//! as the kubelet speaks it.
//!
//! A pod sandbox is a pod instance of this auraed (a nested auraed in a
//! cell, or a microVM), and each container a cell in it rooted in its
//! image and sharing the instance's network. Images are pulled from OCI
//! registries (through the configured mirrors) into [`image_store`], and
//! unpacked and verified through the image cache `RunCell` uses. `Exec`
//! and `PortForward` are served by auraed's own [`streaming`] server.
//!
//! What is not built answers `UNIMPLEMENTED`, naming what is missing
//! (`runtime_service::not_yet`); the README lists it.

#[cfg(feature = "cri")]
mod authority;
#[cfg(feature = "cri")]
mod cni;
pub mod config;
#[cfg(feature = "cri")]
mod container_binds;
#[cfg(feature = "cri")]
mod container_config;
#[cfg(feature = "cri")]
mod container_status;
#[cfg(feature = "cri")]
mod containers;
#[cfg(feature = "cri")]
mod cri_log;
#[cfg(feature = "cri")]
mod dns;
#[cfg(feature = "cri")]
mod endpoint;
#[cfg(feature = "cri")]
mod events;
#[cfg(feature = "cri")]
mod exec;
#[cfg(feature = "cri")]
mod groups;
#[cfg(feature = "cri")]
mod image_service;
#[cfg(feature = "cri")]
pub mod image_store;
#[cfg(feature = "cri")]
mod metrics;
#[cfg(feature = "cri")]
mod microvm_net;
#[cfg(feature = "cri")]
mod pages;
#[cfg(feature = "cri")]
pub mod pull;
#[cfg(feature = "cri")]
mod records;
#[cfg(feature = "cri")]
mod registry_client;
#[cfg(feature = "cri")]
mod resources;
#[cfg(feature = "cri")]
mod restore;
#[cfg(feature = "cri")]
mod runtime_service;
#[cfg(feature = "cri")]
mod sandbox_status;
#[cfg(feature = "cri")]
mod sandboxes;
#[cfg(feature = "cri")]
mod spdy;
#[cfg(feature = "cri")]
pub mod state;
#[cfg(feature = "cri")]
mod stats;
#[cfg(feature = "cri")]
mod streaming;

#[cfg(feature = "cri")]
pub use endpoint::{bind, serve, Cri, CriServeError, CriService};
#[cfg(feature = "cri")]
pub use restore::release_all;
