//! Counters of the fs device.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct FsMetrics {
    /// FUSE messages answered (or taken without an answer, as FORGET is).
    pub requests: AtomicU64,
    /// Messages the server could not decode or answer (the chain is used
    /// with no reply).
    pub failed: AtomicU64,
    /// Chains dropped because their buffers were not in guest memory.
    pub invalid_chains: AtomicU64,
}

impl FsMetrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
