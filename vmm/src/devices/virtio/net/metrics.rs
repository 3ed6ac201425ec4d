//! Counters of the net device.

use std::sync::atomic::AtomicU64;

#[derive(Debug, Default)]
pub struct NetMetrics {
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Frames dropped: malformed chains, oversized frames, TAP errors.
    pub dropped: AtomicU64,
}
