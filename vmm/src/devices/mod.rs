//! Devices: one module per device. Legacy devices sit on the port I/O bus;
//! virtio devices sit behind the MMIO transport.

pub mod boot_timer;
pub mod debug_exit;
pub mod event_loop;
pub mod i8042;
pub mod serial;
pub mod virtio;

use vmm_sys_util::eventfd::EventFd;

/// An interrupt line backed by an irqfd.
pub struct IrqTrigger(pub EventFd);

impl vm_superio::Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.write(1)
    }
}
