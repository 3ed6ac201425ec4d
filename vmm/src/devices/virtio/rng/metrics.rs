//! Counters of the rng device.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct RngMetrics {
    pub requests: AtomicU64,
    pub bytes: AtomicU64,
    /// Chains dropped because they were malformed.
    pub invalid_chains: AtomicU64,
    pub entropy_errors: AtomicU64,
}

impl RngMetrics {
    pub fn inc(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }
}
