//! Virtio devices behind the [`VirtioDevice`] trait, and the MMIO transport
//! ([`mmio::MmioTransport`]) that exposes them to the guest. A device knows
//! nothing of the transport: it gets guest memory, its queues and an
//! [`Interrupt`] when the driver activates it.

pub mod block;
pub mod fs;
#[cfg(test)]
mod fuzz_tests;
pub mod mmio;
#[cfg(test)]
mod mmio_fuzz;
pub mod net;
pub mod rng;
#[cfg(test)]
pub mod test_utils;
pub mod vsock;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_RNG: u32 = 4;
pub const TYPE_VSOCK: u32 = 19;
pub const TYPE_FS: u32 = 26;

/// VIRTIO_F_VERSION_1: every device is a modern (virtio 1.x) device.
pub const F_VERSION_1: u64 = 1 << 32;

pub const INT_VRING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// The interrupt of one device: status bits the driver reads and acks, an
/// irqfd to inject it, and the NEEDS_RESET flag.
pub struct Interrupt {
    status: AtomicU32,
    needs_reset: AtomicBool,
    evt: EventFd,
}

impl Interrupt {
    pub fn new(evt: EventFd) -> Arc<Self> {
        Arc::new(Self {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            evt,
        })
    }

    pub fn signal_used_queue(&self) {
        self.status.fetch_or(INT_VRING, Ordering::SeqCst);
        // A write to an eventfd fails only when its counter is full
        // (EAGAIN): it is signalled already.
        let _ = self.evt.write(1);
    }

    /// The device met guest input it can't recover from: it stops
    /// processing until the driver resets it.
    pub fn set_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
        self.status.fetch_or(INT_CONFIG, Ordering::SeqCst);
        // As in `signal_used_queue`: a full counter is a pending interrupt.
        let _ = self.evt.write(1);
    }

    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// A device reset: no interrupt pending, and no reset needed any more.
    pub fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }

    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("expected {expected} queues, got {got}")]
    QueueCount { expected: usize, got: usize },
    #[error("a queue is not set up correctly")]
    InvalidQueue,
    #[error("the fs device's view of guest memory and its queues")]
    FsView(#[source] fs::ViewError),
}

/// A virtio device, independent of the transport.
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    fn avail_features(&self) -> u64;
    fn set_acked_features(&mut self, features: u64);
    /// Reads the device-specific config space; out-of-range reads are zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts the device with the queues the driver set up.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError>;
    /// Stops the device and returns it to its initial state.
    fn reset(&mut self);
    /// One event per queue, written when the driver notifies the queue.
    fn queue_events(&self) -> &[EventFd];
    fn is_activated(&self) -> bool;
}

/// What an activated device works with: guest memory, its queues (in the
/// device's order) and its interrupt.
pub struct ActiveQueues {
    pub mem: GuestMemoryMmap,
    pub queues: Vec<Queue>,
    pub interrupt: Arc<Interrupt>,
}

impl ActiveQueues {
    /// The activation of a device with exactly `expected` queues.
    pub fn new(
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
        expected: usize,
    ) -> Result<Self, ActivateError> {
        if queues.len() != expected {
            return Err(ActivateError::QueueCount {
                expected,
                got: queues.len(),
            });
        }
        Ok(Self {
            mem,
            queues,
            interrupt,
        })
    }

    /// Tells the driver that queue `q` has used buffers, unless it asked
    /// not to be told.
    pub fn notify(&mut self, q: usize) {
        if let Some(queue) = self.queues.get_mut(q) {
            notify_used(queue, &self.mem, &self.interrupt);
        }
    }
}

/// Signals the driver about used buffers of `queue`, unless it suppressed
/// notifications (a ring it corrupted counts as wanting them).
pub fn notify_used(queue: &mut Queue, mem: &GuestMemoryMmap, interrupt: &Interrupt) {
    use virtio_queue::QueueT;
    if queue.needs_notification(mem).unwrap_or(true) {
        interrupt.signal_used_queue();
    }
}

/// The one queue of a single-queue device, or the activation error.
pub fn single_queue(mut queues: Vec<Queue>) -> Result<Queue, ActivateError> {
    match queues.len() {
        1 => Ok(queues.remove(0)),
        got => Err(ActivateError::QueueCount { expected: 1, got }),
    }
}

/// Completes the available chains of `queue` with `serve`, which returns
/// the number of bytes it wrote into the chain's buffers: at most a queue's
/// worth per call, then `kick` (the queue's notification) schedules the
/// rest, so a guest that keeps posting can't hold the event loop. A
/// corrupt avail ring or used ring sets NEEDS_RESET and stops. Signals the
/// driver when anything was used. Returns the number of chains completed.
pub fn serve_queue(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    interrupt: &Interrupt,
    kick: &EventFd,
    serve: impl FnMut(virtio_queue::DescriptorChain<&GuestMemoryMmap>) -> u32,
) -> usize {
    serve_queue_within(queue, mem, interrupt, kick, || false, serve)
}

/// [`serve_queue`], stopping early (and kicking for the rest) once
/// `spent` says this pass did enough work: for devices whose requests vary
/// widely in cost, so that one pass, which holds the device's lock, stays
/// short.
pub fn serve_queue_within(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    interrupt: &Interrupt,
    kick: &EventFd,
    mut spent: impl FnMut() -> bool,
    mut serve: impl FnMut(virtio_queue::DescriptorChain<&GuestMemoryMmap>) -> u32,
) -> usize {
    use virtio_queue::{QueueOwnedT, QueueT};
    if interrupt.needs_reset() {
        return 0;
    }
    let mut served = 0;
    loop {
        if served >= usize::from(queue.size()) || (served > 0 && spent()) {
            // A write to an eventfd fails only when its counter is full
            // (EAGAIN): it is signalled already.
            let _ = kick.write(1);
            break;
        }
        let chain = match queue.iter(mem) {
            Ok(mut iter) => iter.next(),
            Err(_) => {
                interrupt.set_needs_reset();
                break;
            }
        };
        let Some(chain) = chain else { break };
        let head = chain.head_index();
        let len = serve(chain);
        if queue.add_used(mem, head, len).is_err() {
            interrupt.set_needs_reset();
            break;
        }
        served += 1;
    }
    if served > 0 {
        notify_used(queue, mem, interrupt);
    }
    served
}

/// Copies `src` (config space bytes) at `offset` into `data`, zero-filling
/// whatever lies outside.
pub fn read_config_bytes(src: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= src.len() {
        return;
    }
    let n = data.len().min(src.len() - start);
    data[..n].copy_from_slice(&src[start..start + n]);
}
