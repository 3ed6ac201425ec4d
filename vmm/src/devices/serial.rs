//! The 8250 UART at COM1 (vm-superio), its output going to a writer.

use std::io::Write;

use vm_superio::Serial;

use super::IrqTrigger;
use crate::bus::BusDevice;

pub const COM1: u64 = 0x3f8;
pub const COM1_IRQ: u32 = 4;

/// The most a guest may write to a console log file (64 MiB): a guest that
/// prints forever must not fill the host's disk.
pub const LOG_LIMIT: u64 = 64 << 20;

/// A writer that takes `limit` bytes, then writes one line saying the rest
/// was dropped, and drops everything after it.
pub struct Capped<W: Write> {
    out: W,
    left: u64,
    said: bool,
}

impl<W: Write> Capped<W> {
    pub fn new(out: W, limit: u64) -> Self {
        Self {
            out,
            left: limit,
            said: false,
        }
    }
}

impl<W: Write> Write for Capped<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            if !self.said {
                self.said = true;
                // Best effort: the output it would go to is the one that
                // is full.
                let _ = self
                    .out
                    .write_all(b"\n[aurae-vmm: console log limit reached; the rest is dropped]\n");
            }
            // Taken, and dropped.
            return Ok(buf.len());
        }
        let n = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let written = self.out.write(&buf[..n])?;
        self.left -= written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

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
                // The UART's errors are its output's (a console whose
                // reader went away) or its irqfd's (a full counter is a
                // pending interrupt): the guest's byte is dropped, and
                // neither may stop the guest.
                let _ = self.serial.write(o, *v);
                let _ = self.serial.writer_mut().flush();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capped_log_keeps_its_limit_then_says_so_once() {
        let mut log = Capped::new(Vec::new(), 10);
        for _ in 0..30 {
            log.write_all(b"abcd").expect("write");
        }
        let text = String::from_utf8(log.out).expect("utf8");
        assert!(
            text.starts_with("abcdabcdab\n[aurae-vmm: console log limit"),
            "{text}"
        );
        assert_eq!(text.matches("limit reached").count(), 1);
    }
}
