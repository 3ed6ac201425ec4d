//! virtio-net backed by a TAP device.

mod device;
mod event_handler;
pub mod metrics;
pub mod tap;

pub use device::Net;
