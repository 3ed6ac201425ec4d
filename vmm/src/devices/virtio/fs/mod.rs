//! virtio-fs: a host folder shared with the guest, which mounts it by its
//! tag (`mount -t virtiofs <tag> <dir>`). Requests are FUSE messages on the
//! device's queues, answered by a passthrough file system (fuse-backend-rs)
//! rooted at the folder. The guest sees only what lies under it: lookups
//! are `openat` on the folder's descriptors, and `..` of the root is the
//! root. No DAX window: file data is copied through the queues.

mod device;
mod event_handler;
mod memory;
pub mod metrics;
#[cfg(test)]
mod tests;

pub use device::{Fs, FsError, TAG_MAX};
pub use memory::ViewError;
