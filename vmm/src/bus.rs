//! Port I/O and MMIO buses: address ranges mapped to devices. Accesses
//! that hit no device are ignored (reads return all ones) and counted.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A device on a bus. Offsets are relative to the device's base address.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error)]
#[error("bus range {base:#x}+{len:#x} overlaps another device")]
pub struct Overlap {
    pub base: u64,
    pub len: u64,
}

type Shared = Arc<Mutex<dyn BusDevice>>;

#[derive(Default)]
pub struct Bus {
    devices: BTreeMap<u64, (u64, Shared)>,
    unknown_reads: AtomicU64,
    unknown_writes: AtomicU64,
}

impl Bus {
    pub fn insert(&mut self, base: u64, len: u64, device: Shared) -> Result<(), Overlap> {
        let end = base.checked_add(len).ok_or(Overlap { base, len })?;
        let clash = self
            .devices
            .range(..end)
            .next_back()
            .is_some_and(|(b, (l, _))| b + l > base);
        if len == 0 || clash {
            return Err(Overlap { base, len });
        }
        self.devices.insert(base, (len, device));
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(u64, &Shared)> {
        let (base, (len, dev)) = self.devices.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset.checked_add(size as u64)? <= *len).then_some((offset, dev))
    }

    /// Returns false (after filling `data` with ones) when no device is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, dev)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                self.unknown_reads.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, dev)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write(offset, data);
                true
            }
            None => {
                self.unknown_writes.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// (reads, writes) that hit no device.
    pub fn unknown_accesses(&self) -> (u64, u64) {
        (
            self.unknown_reads.load(Ordering::Relaxed),
            self.unknown_writes.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range_and_counts_misses() {
        let mut bus = Bus::default();
        let dev = Arc::new(Mutex::new(Echo(vec![])));
        bus.insert(0x100, 8, dev.clone()).expect("insert");
        assert!(bus.insert(0x104, 8, dev.clone()).is_err(), "overlap");
        assert!(bus.insert(0xfc, 8, dev.clone()).is_err(), "overlap below");
        assert!(bus.insert(u64::MAX, 2, dev.clone()).is_err(), "wraps");
        let mut b = [0u8; 2];
        assert!(bus.read(0x103, &mut b));
        assert_eq!(b, [3, 3]);
        assert!(!bus.read(0x107, &mut b), "straddles the end");
        assert_eq!(b, [0xff, 0xff]);
        assert!(bus.write(0x101, &[9]));
        assert!(!bus.write(0x200, &[9]));
        assert_eq!(bus.unknown_accesses(), (1, 1));
        assert_eq!(dev.lock().expect("lock").0, vec![(1, vec![9])]);
    }
}
