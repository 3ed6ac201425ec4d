//! virtio-rng: fills the driver's buffers with random bytes.

mod device;
mod event_handler;
pub mod metrics;

pub use device::Rng;
