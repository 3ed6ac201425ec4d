//! The virtio-mmio transport (version 2): the register protocol between the
//! guest driver and a [`VirtioDevice`]. Every guest access is validated here;
//! nothing the guest writes can make the VMM panic.

use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{Interrupt, VirtioDevice};
use crate::bus::BusDevice;

pub const MMIO_LEN: u64 = 0x1000;
pub const MAGIC: u32 = 0x7472_6976;
pub const VERSION: u32 = 2;
pub const VENDOR: u32 = 0x4155_5241; // "ARUA"

pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 0x40;
pub const STATUS_FAILED: u32 = 0x80;

pub mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_AVAIL_LOW: u64 = 0x090;
    pub const QUEUE_AVAIL_HIGH: u64 = 0x094;
    pub const QUEUE_USED_LOW: u64 = 0x0a0;
    pub const QUEUE_USED_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    /// What never changes about the device, kept here so that the guest's
    /// register reads and queue notifications don't wait for the device's
    /// lock (held while the event loop serves it).
    device_type: u32,
    avail_features: u64,
    queue_evts: Vec<EventFd>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    acked_features: u64,
    status: u32,
    config_generation: u32,
    /// Guest accesses the transport refused (bad width, offset, or order).
    pub bad_accesses: u64,
}

impl MmioTransport {
    /// Fails only if the device's queue eventfds can't be duplicated (out
    /// of descriptors).
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemoryMmap,
        irq_evt: EventFd,
    ) -> std::io::Result<Self> {
        let (sizes, device_type, avail_features, queue_evts) = {
            let d = device.lock().unwrap_or_else(|e| e.into_inner());
            (
                d.queue_max_sizes().to_vec(),
                d.device_type(),
                d.avail_features(),
                d.queue_events()
                    .iter()
                    .map(EventFd::try_clone)
                    .collect::<std::io::Result<Vec<_>>>(),
            )
        };
        let queue_evts = queue_evts?;
        // Queue::new fails only for a size that is not a power of two;
        // devices declare valid sizes.
        let queues = sizes.iter().filter_map(|s| Queue::new(*s).ok()).collect();
        Ok(Self {
            device,
            device_type,
            avail_features,
            queue_evts,
            mem,
            interrupt: Interrupt::new(irq_evt),
            queues,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            acked_features: 0,
            status: 0,
            config_generation: 0,
            bad_accesses: 0,
        })
    }

    pub fn interrupt(&self) -> Arc<Interrupt> {
        self.interrupt.clone()
    }

    fn device(&self) -> std::sync::MutexGuard<'_, dyn VirtioDevice + 'static> {
        self.device.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        // Queues can only be configured before DRIVER_OK.
        if self.status & STATUS_DRIVER_OK != 0 {
            return None;
        }
        self.queues.get_mut(self.queue_select as usize)
    }

    fn reset(&mut self) {
        self.device().reset();
        let sizes: Vec<u16> = self.queues.iter().map(|q| q.max_size()).collect();
        self.queues = sizes.iter().filter_map(|s| Queue::new(*s).ok()).collect();
        self.status = 0;
        self.acked_features = 0;
        self.queue_select = 0;
        self.interrupt.reset();
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // The driver may only add bits, in the order the spec gives.
        let added = value & !self.status;
        if value & self.status != self.status {
            self.bad_accesses += 1;
            return;
        }
        let ok = match added {
            STATUS_ACKNOWLEDGE => self.status == 0,
            STATUS_DRIVER => self.status == STATUS_ACKNOWLEDGE,
            STATUS_FEATURES_OK => self.status == STATUS_ACKNOWLEDGE | STATUS_DRIVER,
            STATUS_DRIVER_OK => {
                self.status == STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK
            }
            STATUS_FAILED => true,
            _ => false,
        };
        if !ok {
            self.bad_accesses += 1;
            return;
        }
        self.status = value;
        if added == STATUS_FEATURES_OK {
            let features = self.acked_features;
            self.device().set_acked_features(features);
        }
        if added == STATUS_DRIVER_OK {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let valid = self.queues.iter().all(|q| q.is_valid(&self.mem));
        let result = if valid {
            let queues = self
                .queues
                .iter()
                .filter_map(|q| Queue::try_from(q.state()).ok())
                .collect();
            let mem = self.mem.clone();
            let interrupt = self.interrupt.clone();
            self.device().activate(mem, queues, interrupt)
        } else {
            Err(super::ActivateError::InvalidQueue)
        };
        // The guest's mistake: the device tells it (NEEDS_RESET), and the
        // VMM does not log what a guest can repeat at will.
        if result.is_err() {
            self.status |= STATUS_NEEDS_RESET;
            self.interrupt.set_needs_reset();
        }
    }

    fn read32(&mut self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.device_type,
            reg::VENDOR_ID => VENDOR,
            reg::DEVICE_FEATURES => {
                let f = self.avail_features;
                match self.device_features_select {
                    0 => f as u32,
                    1 => (f >> 32) as u32,
                    _ => 0,
                }
            }
            reg::QUEUE_NUM_MAX => self
                .queues
                .get(self.queue_select as usize)
                .map(|q| q.max_size().into())
                .unwrap_or(0),
            reg::QUEUE_READY => self
                .queues
                .get(self.queue_select as usize)
                .map(|q| q.ready().into())
                .unwrap_or(0),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => {
                let needs_reset = if self.interrupt.needs_reset() {
                    STATUS_NEEDS_RESET
                } else {
                    0
                };
                self.status | needs_reset
            }
            reg::CONFIG_GENERATION => self.config_generation,
            _ => {
                self.bad_accesses += 1;
                0
            }
        }
    }

    fn write32(&mut self, offset: u64, v: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_select = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_select = v,
            reg::DRIVER_FEATURES => {
                if self.status != STATUS_ACKNOWLEDGE | STATUS_DRIVER {
                    self.bad_accesses += 1;
                    return;
                }
                let avail = self.avail_features;
                let v = u64::from(v);
                match self.driver_features_select {
                    0 => self.acked_features = (self.acked_features & !0xffff_ffff) | (v & avail),
                    1 => {
                        self.acked_features =
                            (self.acked_features & 0xffff_ffff) | ((v << 32) & avail)
                    }
                    _ => self.bad_accesses += 1,
                }
            }
            reg::QUEUE_SEL => self.queue_select = v,
            reg::QUEUE_NUM => match (self.selected_queue(), u16::try_from(v)) {
                (Some(q), Ok(size)) => q.set_size(size),
                _ => self.bad_accesses += 1,
            },
            reg::QUEUE_READY => match self.selected_queue() {
                Some(q) => q.set_ready(v == 1),
                None => self.bad_accesses += 1,
            },
            reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_AVAIL_LOW
            | reg::QUEUE_AVAIL_HIGH
            | reg::QUEUE_USED_LOW
            | reg::QUEUE_USED_HIGH => {
                let Some(q) = self.selected_queue() else {
                    self.bad_accesses += 1;
                    return;
                };
                match offset {
                    reg::QUEUE_DESC_LOW => q.set_desc_table_address(Some(v), None),
                    reg::QUEUE_DESC_HIGH => q.set_desc_table_address(None, Some(v)),
                    reg::QUEUE_AVAIL_LOW => q.set_avail_ring_address(Some(v), None),
                    reg::QUEUE_AVAIL_HIGH => q.set_avail_ring_address(None, Some(v)),
                    reg::QUEUE_USED_LOW => q.set_used_ring_address(Some(v), None),
                    _ => q.set_used_ring_address(None, Some(v)),
                }
            }
            reg::QUEUE_NOTIFY => {
                // Normally an ioeventfd catches this write in the kernel;
                // when it reaches us, forward it the same way.
                let active = self.status & STATUS_DRIVER_OK != 0;
                let notified = active
                    && match self.queue_evts.get(v as usize) {
                        Some(evt) => evt.write(1).is_ok(),
                        None => false,
                    };
                if !notified {
                    self.bad_accesses += 1;
                }
            }
            reg::INTERRUPT_ACK => self.interrupt.ack(v),
            reg::STATUS => self.set_status(v),
            _ => self.bad_accesses += 1,
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device().read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            self.bad_accesses += 1;
            data.fill(0);
            return;
        }
        let v = self.read32(offset);
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            self.device().write_config(offset - reg::CONFIG, data);
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            self.bad_accesses += 1;
            return;
        };
        if !offset.is_multiple_of(4) {
            self.bad_accesses += 1;
            return;
        }
        self.write32(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::rng::Rng;
    use crate::devices::virtio::test_utils::{TestQueue, AVAIL_RING, DESC_TABLE, USED_RING, WRITE};

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut d = [0u8; 4];
        t.read(off, &mut d);
        u32::from_le_bytes(d)
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn transport() -> (TestQueue, Arc<Mutex<Rng>>, MmioTransport) {
        let tq = TestQueue::new(16);
        let rng = Arc::new(Mutex::new(Rng::new().expect("rng")));
        let t = MmioTransport::new(rng.clone(), tq.mem.clone(), EventFd::new(0).expect("evt"))
            .expect("transport");
        (tq, rng, t)
    }

    /// The driver's side of the protocol, up to DRIVER_OK.
    fn bring_up(t: &mut MmioTransport) {
        w(t, reg::STATUS, STATUS_ACKNOWLEDGE);
        w(t, reg::STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(t, reg::DRIVER_FEATURES_SEL, 1);
        w(t, reg::DRIVER_FEATURES, 1);
        w(
            t,
            reg::STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        w(t, reg::QUEUE_SEL, 0);
        w(t, reg::QUEUE_NUM, 16);
        w(t, reg::QUEUE_DESC_LOW, DESC_TABLE as u32);
        w(t, reg::QUEUE_AVAIL_LOW, AVAIL_RING as u32);
        w(t, reg::QUEUE_USED_LOW, USED_RING as u32);
        w(t, reg::QUEUE_READY, 1);
        w(
            t,
            reg::STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
    }

    #[test]
    fn identifies_the_device_and_negotiates_features() {
        let (_tq, _rng, mut t) = transport();
        assert_eq!(r(&mut t, reg::MAGIC), MAGIC);
        assert_eq!(r(&mut t, reg::VERSION), 2);
        assert_eq!(r(&mut t, reg::DEVICE_ID), crate::devices::virtio::TYPE_RNG);
        w(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 1, "VERSION_1");
        assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 256);
        bring_up(&mut t);
        assert_eq!(r(&mut t, reg::STATUS), 0xf);
        assert!(t.device().is_activated());
        // Queue setup is frozen after DRIVER_OK.
        let before = t.bad_accesses;
        w(&mut t, reg::QUEUE_NUM, 8);
        assert_eq!(t.bad_accesses, before + 1);
        // Writing 0 resets.
        w(&mut t, reg::STATUS, 0);
        assert_eq!(r(&mut t, reg::STATUS), 0);
        assert!(!t.device().is_activated());
    }

    #[test]
    fn a_notified_queue_is_served_and_interrupts() {
        let (tq, rng, mut t) = transport();
        bring_up(&mut t);
        tq.add_chain(0, &[(0x4000, 32, WRITE)]);
        w(&mut t, reg::QUEUE_NOTIFY, 0);
        let evt = rng.lock().expect("rng").queue_events()[0]
            .read()
            .expect("notified");
        assert_eq!(evt, 1);
        rng.lock().expect("rng").process_queue();
        assert_eq!(tq.used(0).1, 32);
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 1);
        w(&mut t, reg::INTERRUPT_ACK, 1);
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 0);
    }

    /// While the event loop holds the device (serving its queues), a vCPU
    /// can still read what identifies it, notify a queue and handle its
    /// interrupt.
    #[test]
    fn identity_notifications_and_interrupts_do_not_wait_for_a_busy_device() {
        let (_tq, rng, mut t) = transport();
        bring_up(&mut t);
        let busy = rng.lock().expect("rng");
        let (done, finished) = std::sync::mpsc::channel();
        let vcpu = std::thread::spawn(move || {
            let id = r(&mut t, reg::DEVICE_ID);
            let features = r(&mut t, reg::DEVICE_FEATURES);
            w(&mut t, reg::QUEUE_NOTIFY, 0);
            let irq = r(&mut t, reg::INTERRUPT_STATUS);
            w(&mut t, reg::INTERRUPT_ACK, irq);
            let _ = done.send((id, features));
        });
        let answered = finished.recv_timeout(std::time::Duration::from_secs(5));
        drop(busy);
        let _ = vcpu.join();
        assert_eq!(
            answered,
            Ok((crate::devices::virtio::TYPE_RNG, 0)),
            "(device id, features 0-31)"
        );
        let notified = rng.lock().expect("rng").queue_events()[0].read();
        assert_eq!(notified.ok(), Some(1));
    }

    #[test]
    fn out_of_order_and_odd_accesses_are_refused_and_counted() {
        let (_tq, _rng, mut t) = transport();
        w(&mut t, reg::STATUS, STATUS_DRIVER_OK);
        assert_eq!(
            r(&mut t, reg::STATUS),
            0,
            "DRIVER_OK before ACKNOWLEDGE is refused"
        );
        let mut b = [0u8; 2];
        t.read(reg::MAGIC, &mut b);
        t.write(reg::QUEUE_SEL + 1, &[1, 2, 3, 4]);
        w(&mut t, 0x0f0, 1);
        w(&mut t, reg::QUEUE_NOTIFY, 0);
        assert!(t.bad_accesses >= 5, "{}", t.bad_accesses);
    }

    #[test]
    fn a_broken_queue_sets_needs_reset() {
        let (_tq, _rng, mut t) = transport();
        w(&mut t, reg::STATUS, STATUS_ACKNOWLEDGE);
        w(&mut t, reg::STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(
            &mut t,
            reg::STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        w(&mut t, reg::QUEUE_NUM, 16);
        w(&mut t, reg::QUEUE_DESC_LOW, 0xffff_f000);
        w(&mut t, reg::QUEUE_DESC_HIGH, 0xffff);
        w(&mut t, reg::QUEUE_READY, 1);
        w(&mut t, reg::STATUS, 0xf);
        assert_ne!(r(&mut t, reg::STATUS) & STATUS_NEEDS_RESET, 0);
        // The driver resets the device, which then works again.
        w(&mut t, reg::STATUS, 0);
        assert_eq!(r(&mut t, reg::STATUS), 0, "a reset clears NEEDS_RESET");
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 0);
        w(&mut t, reg::STATUS, STATUS_ACKNOWLEDGE);
        assert_eq!(r(&mut t, reg::STATUS), STATUS_ACKNOWLEDGE);
    }
}
