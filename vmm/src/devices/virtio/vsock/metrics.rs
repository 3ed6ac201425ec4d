//! Counters of the vsock device.

use std::sync::atomic::AtomicU64;

#[derive(Debug, Default)]
pub struct VsockMetrics {
    pub tx_packets: AtomicU64,
    pub rx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Packets dropped: malformed chains, wrong addresses.
    pub dropped: AtomicU64,
    /// Connections reset (by either side, or refused).
    pub resets: AtomicU64,
    /// Resets the guest sent for a connection (a refusal, or its close).
    pub guest_resets: AtomicU64,
    pub connections: AtomicU64,
}
