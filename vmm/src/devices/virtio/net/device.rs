//! The net device logic: frames between the virtqueues and the TAP.
//!
//! Every frame carries a 12-byte `virtio_net_hdr_v1` on the queue side; no
//! offloads are offered, so the header is all zeros (and `num_buffers` 1).

use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::metrics::NetMetrics;
use super::tap::Tap;
use crate::devices::event_loop::WatchFault;
use crate::devices::virtio::{
    read_config_bytes, serve_queue, ActivateError, ActiveQueues, Interrupt, VirtioDevice,
    F_VERSION_1, TYPE_NET,
};

pub const F_MAC: u64 = 1 << 5;
pub const HDR_LEN: usize = 12;
/// Largest frame: 64 KiB plus an Ethernet header.
pub const MAX_FRAME: usize = 65562;
pub const RX: usize = 0;
pub const TX: usize = 1;
const QUEUE_SIZES: [u16; 2] = [256, 256];

/// Where frames go to and come from (a TAP, or a test double).
pub trait Backend: Send {
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
    fn send(&mut self, frame: &[u8]) -> std::io::Result<usize>;
}

impl Backend for Tap {
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.read_frame(buf)
    }
    fn send(&mut self, frame: &[u8]) -> std::io::Result<usize> {
        self.write_frame(frame)
    }
}

/// Frames dropped per wake-up while the device needs a reset; more wait
/// for the next wake-up, so a flood costs work, not a stall.
pub(super) const MAX_DRAIN: usize = 256;

pub struct Net<B: Backend = Tap> {
    pub(super) backend: B,
    mac: [u8; 6],
    pub(super) queue_evts: [EventFd; 2],
    pub(super) active: Option<ActiveQueues>,
    /// A frame read from the backend that waits for an rx buffer.
    pub(super) pending: Option<Vec<u8>>,
    /// Whether the event loop watches the backend (it does not while a
    /// frame waits for an rx buffer).
    pub(super) backend_watched: bool,
    pub metrics: Arc<NetMetrics>,
    /// Records a failed event-loop registration, for the VM to report.
    pub watch_fault: WatchFault,
}

impl<B: Backend> Net<B> {
    pub fn new(backend: B, mac: [u8; 6]) -> std::io::Result<Self> {
        Ok(Self {
            backend,
            mac,
            queue_evts: [EventFd::new(EFD_NONBLOCK)?, EventFd::new(EFD_NONBLOCK)?],
            active: None,
            pending: None,
            backend_watched: false,
            metrics: Arc::new(NetMetrics::default()),
            watch_fault: WatchFault::default(),
        })
    }

    /// Sends every frame the driver queued. Returns how many chains were used.
    pub fn process_tx(&mut self) -> usize {
        let Some(active) = self.active.as_mut() else {
            return 0;
        };
        let (backend, metrics, mem) = (&mut self.backend, &self.metrics, &active.mem);
        let mut frame = vec![0u8; MAX_FRAME];
        let kick = &self.queue_evts[TX];
        serve_queue(
            &mut active.queues[TX],
            mem,
            &active.interrupt,
            kick,
            |chain| {
                let read = Reader::new(mem, chain).ok().and_then(|mut r| {
                    let len = r.available_bytes();
                    if !(HDR_LEN..=HDR_LEN + MAX_FRAME).contains(&len) {
                        return None;
                    }
                    let mut hdr = [0u8; HDR_LEN];
                    r.read_exact(&mut hdr).ok()?;
                    let n = len - HDR_LEN;
                    r.read_exact(&mut frame[..n]).ok()?;
                    Some(n)
                });
                match read {
                    Some(n) if backend.send(&frame[..n]).is_ok() => {
                        metrics.tx_frames.fetch_add(1, Ordering::Relaxed);
                        metrics.tx_bytes.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    _ => {
                        metrics.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                0
            },
        )
    }

    /// Moves frames from the backend into rx buffers until either runs out.
    /// Returns true when a frame is left waiting for rx buffers.
    pub fn process_rx(&mut self) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        if active.interrupt.needs_reset() {
            // Until the driver resets the device, frames are dropped: the
            // backend must not stay readable, or the event loop would spin.
            if self.pending.take().is_some() {
                self.metrics.dropped.fetch_add(1, Ordering::Relaxed);
            }
            let mut buf = vec![0u8; MAX_FRAME];
            for _ in 0..MAX_DRAIN {
                match self.backend.recv(&mut buf) {
                    Ok(n) if n > 0 => {
                        self.metrics.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => break,
                }
            }
            return false;
        }
        let mut delivered = 0;
        loop {
            let frame = match self.pending.take() {
                Some(f) => f,
                None => {
                    let mut buf = vec![0u8; MAX_FRAME];
                    match self.backend.recv(&mut buf) {
                        Ok(n) if n > 0 => {
                            buf.truncate(n);
                            buf
                        }
                        _ => break,
                    }
                }
            };
            let chain = match active.queues[RX].iter(&active.mem) {
                Ok(mut it) => it.next(),
                Err(_) => {
                    active.interrupt.set_needs_reset();
                    break;
                }
            };
            let Some(chain) = chain else {
                self.pending = Some(frame);
                break;
            };
            let head = chain.head_index();
            let written = Writer::new(&active.mem, chain).ok().and_then(|mut w| {
                if w.available_bytes() < HDR_LEN + frame.len() {
                    return None;
                }
                let mut hdr = [0u8; HDR_LEN];
                hdr[10] = 1; // num_buffers
                w.write_all(&hdr).ok()?;
                w.write_all(&frame).ok()?;
                Some((HDR_LEN + frame.len()) as u32)
            });
            match written {
                Some(_) => {
                    self.metrics.rx_frames.fetch_add(1, Ordering::Relaxed);
                    self.metrics
                        .rx_bytes
                        .fetch_add(frame.len() as u64, Ordering::Relaxed);
                }
                None => {
                    self.metrics.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            if active.queues[RX]
                .add_used(&active.mem, head, written.unwrap_or(0))
                .is_err()
            {
                active.interrupt.set_needs_reset();
                break;
            }
            delivered += 1;
        }
        if delivered > 0 {
            active.notify(RX);
        }
        self.pending.is_some()
    }
}

impl<B: Backend> VirtioDevice for Net<B> {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }
    fn avail_features(&self) -> u64 {
        F_VERSION_1 | F_MAC
    }
    fn set_acked_features(&mut self, _features: u64) {}
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.mac, offset, data);
    }
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        self.active = Some(ActiveQueues::new(mem, queues, interrupt, 2)?);
        Ok(())
    }
    fn reset(&mut self) {
        self.active = None;
        self.pending = None;
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }
    fn is_activated(&self) -> bool {
        self.active.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{TestQueue, WRITE};
    use std::collections::VecDeque;

    #[derive(Default)]
    struct Loop {
        inbound: VecDeque<Vec<u8>>,
        sent: Vec<Vec<u8>>,
    }

    impl Backend for Loop {
        fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match self.inbound.pop_front() {
                Some(f) => {
                    buf[..f.len()].copy_from_slice(&f);
                    Ok(f.len())
                }
                None => Err(std::io::ErrorKind::WouldBlock.into()),
            }
        }
        fn send(&mut self, frame: &[u8]) -> std::io::Result<usize> {
            self.sent.push(frame.to_vec());
            Ok(frame.len())
        }
    }

    /// rx at the start of memory, tx right after it.
    fn rx_tx() -> (TestQueue, TestQueue) {
        let rx = TestQueue::new(16);
        let tx = TestQueue::with_mem(rx.mem.clone(), 0x2000, 16);
        (rx, tx)
    }

    #[test]
    fn tx_strips_the_header_and_rx_prepends_it() {
        let (rx, tx) = rx_tx();
        let mut net = Net::new(Loop::default(), [2, 0, 0, 0, 0, 1]).expect("net");
        tx.write(0x4000, &[0u8; HDR_LEN]);
        tx.write(0x4000 + HDR_LEN as u64, b"frame-out");
        tx.add_chain(0, &[(0x4000, (HDR_LEN + 9) as u32, 0)]);
        net.activate(rx.mem.clone(), vec![rx.queue(), tx.queue()], rx.interrupt())
            .expect("activate");
        assert_eq!(net.process_tx(), 1);
        assert_eq!(net.backend.sent, vec![b"frame-out".to_vec()]);

        net.backend.inbound.push_back(b"frame-in".to_vec());
        rx.add_chain(0, &[(0x8000, 2048, WRITE)]);
        assert!(!net.process_rx());
        assert_eq!(rx.used(0).1, (HDR_LEN + 8) as u32);
        assert_eq!(&rx.read(0x8000 + HDR_LEN as u64, 8), b"frame-in");
        assert_eq!(rx.read(0x8000 + 10, 1), vec![1], "num_buffers");
    }

    #[test]
    fn rx_waits_for_buffers_and_drops_what_does_not_fit() {
        let (rx, tx) = rx_tx();
        let mut net = Net::new(Loop::default(), [2, 0, 0, 0, 0, 1]).expect("net");
        net.backend.inbound.push_back(vec![7u8; 100]);
        net.activate(rx.mem.clone(), vec![rx.queue(), tx.queue()], rx.interrupt())
            .expect("activate");
        assert!(net.process_rx(), "no rx buffer yet: the frame waits");
        rx.add_chain(0, &[(0x8000, 50, WRITE)]);
        assert!(!net.process_rx());
        assert_eq!(rx.used(0).1, 0, "too small: dropped");
        assert_eq!(net.metrics.dropped.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_device_that_needs_a_reset_drains_its_backend_instead_of_spinning() {
        let (rx, tx) = rx_tx();
        let mut net = Net::new(Loop::default(), [2, 0, 0, 0, 0, 1]).expect("net");
        let irq = rx.interrupt();
        net.activate(rx.mem.clone(), vec![rx.queue(), tx.queue()], irq.clone())
            .expect("activate");
        net.backend.inbound.push_back(vec![1u8; 60]);
        assert!(net.process_rx(), "no rx buffer: the frame waits");
        irq.set_needs_reset();
        for _ in 0..3 {
            net.backend.inbound.push_back(vec![2u8; 60]);
        }
        assert!(!net.process_rx(), "nothing waits any more");
        assert!(net.backend.inbound.is_empty(), "the backend was drained");
        assert!(net.pending.is_none());
        assert_eq!(net.metrics.dropped.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn tx_chains_that_are_too_short_or_writable_are_dropped() {
        let (rx, tx) = rx_tx();
        let mut net = Net::new(Loop::default(), [2, 0, 0, 0, 0, 1]).expect("net");
        tx.add_chain(0, &[(0x4000, 4, 0)]);
        tx.add_chain(1, &[(0x5000, 64, WRITE)]);
        net.activate(rx.mem.clone(), vec![rx.queue(), tx.queue()], rx.interrupt())
            .expect("activate");
        assert_eq!(net.process_tx(), 2);
        assert!(net.backend.sent.is_empty());
        assert_eq!(net.metrics.dropped.load(Ordering::Relaxed), 2);
    }
}
