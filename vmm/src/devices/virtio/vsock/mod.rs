//! virtio-vsock: stream sockets between the guest and host Unix sockets
//! (see [`muxer`] for the scheme).

mod connection;
mod device;
mod event_handler;
#[cfg(test)]
mod lifecycle_tests;
pub mod metrics;
pub mod muxer;
pub mod packet;
#[cfg(test)]
mod packet_fuzz;
#[cfg(test)]
mod tests;

pub use device::Vsock;
