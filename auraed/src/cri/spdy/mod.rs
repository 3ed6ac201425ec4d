//! SPDY/3.1, the framing of the Kubernetes streaming protocols
//! (`channel.k8s.io` for exec and attach, `portforward.k8s.io`) that
//! kubelet, crictl and critest speak through Go's spdystream. No maintained
//! Rust crate implements it, so it is kept here, small and fuzzed: frames
//! and their zlib header blocks in [`frame`], a server connection in
//! [`connection`].

mod connection;
mod dictionary;
mod frame;
mod stream;

pub use connection::{start, Connection};
pub use frame::{PROTOCOL_ERROR, REFUSED_STREAM};
pub use stream::{Inbound, Stream, StreamWriter};

#[cfg(test)]
mod connection_tests;
