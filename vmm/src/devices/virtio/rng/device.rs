//! The rng device logic.

use std::io::{Read, Write};
use std::sync::Arc;

use virtio_queue::{Queue, Writer};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::metrics::RngMetrics;
use crate::devices::event_loop::WatchFault;
use crate::devices::virtio::{
    serve_queue, single_queue, ActivateError, Interrupt, VirtioDevice, F_VERSION_1, TYPE_RNG,
};

/// Most bytes handed out per request, however large the buffers.
pub const MAX_REQUEST: usize = 64 * 1024;
const QUEUE_SIZES: [u16; 1] = [256];

pub(super) struct Active {
    pub mem: GuestMemoryMmap,
    pub queue: Queue,
    pub interrupt: Arc<Interrupt>,
}

pub struct Rng {
    pub(super) queue_evts: [EventFd; 1],
    pub(super) active: Option<Active>,
    entropy: std::fs::File,
    pub metrics: Arc<RngMetrics>,
    /// Records a failed event-loop registration, for the VM to report.
    pub watch_fault: WatchFault,
}

impl Rng {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            queue_evts: [EventFd::new(EFD_NONBLOCK)?],
            active: None,
            entropy: std::fs::File::open("/dev/urandom")?,
            metrics: Arc::new(RngMetrics::default()),
            watch_fault: WatchFault::default(),
        })
    }

    /// Serves every available request. Returns the number served.
    pub fn process_queue(&mut self) -> usize {
        let Some(active) = self.active.as_mut() else {
            return 0;
        };
        let (entropy, metrics, mem) = (&mut self.entropy, &self.metrics, &active.mem);
        let mut chunk = vec![0u8; MAX_REQUEST];
        let kick = &self.queue_evts[0];
        serve_queue(&mut active.queue, mem, &active.interrupt, kick, |chain| {
            RngMetrics::inc(&metrics.requests, 1);
            let Ok(mut w) = Writer::new(mem, chain) else {
                RngMetrics::inc(&metrics.invalid_chains, 1);
                return 0;
            };
            let n = w.available_bytes().min(MAX_REQUEST);
            if entropy.read_exact(&mut chunk[..n]).is_err() {
                RngMetrics::inc(&metrics.entropy_errors, 1);
                0
            } else if w.write_all(&chunk[..n]).is_ok() {
                RngMetrics::inc(&metrics.bytes, n as u64);
                n as u32
            } else {
                RngMetrics::inc(&metrics.invalid_chains, 1);
                0
            }
        })
    }
}

impl Rng {
    /// Whether the device stopped on bad guest input.
    pub fn active_needs_reset(&self) -> bool {
        self.active
            .as_ref()
            .is_some_and(|a| a.interrupt.needs_reset())
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }
    fn avail_features(&self) -> u64 {
        F_VERSION_1
    }
    fn set_acked_features(&mut self, _features: u64) {}
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        let queue = single_queue(queues)?;
        self.active = Some(Active {
            mem,
            queue,
            interrupt,
        });
        Ok(())
    }
    fn reset(&mut self) {
        self.active = None;
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

    #[test]
    fn fills_writable_buffers_and_reports_the_length() {
        let t = TestQueue::new(16);
        t.add_chain(0, &[(0x4000, 64, WRITE), (0x5000, 32, WRITE)]);
        let mut rng = Rng::new().expect("rng");
        let (mem, q, irq) = t.activate_parts();
        rng.activate(mem, vec![q], irq.clone()).expect("activate");
        assert_eq!(rng.process_queue(), 1);
        assert_eq!(t.used(0), (0, 96));
        assert_ne!(
            t.read(0x4000, 64),
            vec![0u8; 64],
            "random bytes were written"
        );
        assert_eq!(irq.status() & crate::devices::virtio::INT_VRING, 1);
    }

    #[test]
    fn a_queue_s_worth_per_pass_then_the_notification_schedules_the_rest() {
        let t = TestQueue::new(16);
        for i in 0..16 {
            t.add_chain(i, &[(0x4000 + u64::from(i) * 0x100, 8, WRITE)]);
        }
        let mut rng = Rng::new().expect("rng");
        let (mem, q, irq) = t.activate_parts();
        rng.activate(mem, vec![q], irq).expect("activate");
        assert!(rng.queue_evts[0].read().is_err(), "no notification yet");
        assert_eq!(rng.process_queue(), 16);
        assert_eq!(
            rng.queue_evts[0].read().ok(),
            Some(1),
            "a full pass schedules another"
        );
        assert_eq!(rng.process_queue(), 0);
    }

    #[test]
    fn read_only_and_out_of_memory_buffers_are_dropped() {
        let t = TestQueue::new(16);
        t.add_chain(0, &[(0x4000, 64, 0)]);
        t.add_chain(1, &[(0xffff_0000, 64, WRITE)]);
        let mut rng = Rng::new().expect("rng");
        let (mem, q, irq) = t.activate_parts();
        rng.activate(mem, vec![q], irq).expect("activate");
        assert_eq!(rng.process_queue(), 2);
        assert_eq!(t.used(0).1, 0);
        assert_eq!(t.used(1).1, 0);
        assert!(
            rng.metrics
                .invalid_chains
                .load(std::sync::atomic::Ordering::Relaxed)
                >= 1
        );
    }

    #[test]
    fn huge_buffers_get_at_most_max_request() {
        let t = TestQueue::new(16);
        t.add_chain(0, &[(0x10000, 1 << 20, WRITE)]);
        let mut rng = Rng::new().expect("rng");
        let (mem, q, irq) = t.activate_parts();
        rng.activate(mem, vec![q], irq).expect("activate");
        rng.process_queue();
        assert_eq!(t.used(0).1, MAX_REQUEST as u32);
    }
}
