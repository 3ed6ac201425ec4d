//! Counters of the block device.

use std::sync::atomic::AtomicU64;

#[derive(Debug, Default)]
pub struct BlockMetrics {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub flushes: AtomicU64,
    pub read_bytes: AtomicU64,
    pub write_bytes: AtomicU64,
    /// Requests refused with an I/O error or as unsupported.
    pub failed: AtomicU64,
    /// Chains dropped because they were malformed.
    pub invalid_chains: AtomicU64,
}
