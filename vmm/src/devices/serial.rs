//! The 8250 UART at COM1 (vm-superio), its output going to a writer.

use std::io::Write;

use vm_superio::Serial;

use super::IrqTrigger;
use crate::bus::BusDevice;

pub const COM1: u64 = 0x3f8;
pub const COM1_IRQ: u32 = 4;

pub struct SerialDevice<W: Write + Send> {
    serial: Serial<IrqTrigger, vm_superio::serial::NoEvents, W>,
}

impl<W: Write + Send> SerialDevice<W> {
    pub fn new(irq: IrqTrigger, out: W) -> Self {
        Self {
            serial: Serial::new(irq, out),
        }
    }
}

impl<W: Write + Send> BusDevice for SerialDevice<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data.len()) {
            (Ok(o), 1) if o < 8 => data[0] = self.serial.read(o),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(o), [v]) = (u8::try_from(offset), data) {
            if o < 8 {
                let _ = self.serial.write(o, *v);
                let _ = self.serial.writer_mut().flush();
            }
        }
    }
}
