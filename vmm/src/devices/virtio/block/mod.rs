//! virtio-blk over a raw file, optionally read-only.

mod device;
mod event_handler;
pub mod metrics;

pub use device::Block;
