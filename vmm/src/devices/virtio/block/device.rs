//! The block device logic: parses requests from descriptor chains and
//! serves them from the backing file.

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_queue::{Queue, Reader, Writer};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::metrics::BlockMetrics;
use crate::devices::event_loop::WatchFault;
use crate::devices::virtio::{
    read_config_bytes, serve_queue_within, single_queue, ActivateError, Interrupt, VirtioDevice,
    F_VERSION_1, TYPE_BLOCK,
};

pub const SECTOR: u64 = 512;
pub const F_SIZE_MAX: u64 = 1 << 1;
pub const F_SEG_MAX: u64 = 1 << 2;
pub const F_RO: u64 = 1 << 5;
pub const F_FLUSH: u64 = 1 << 9;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;
const QUEUE_SIZES: [u16; 1] = [256];
/// Bytes moved per read/write call.
const CHUNK: usize = 64 * 1024;
/// The limits the device announces (SIZE_MAX, SEG_MAX): segments of at
/// most 64 KiB, at most 128 of them, so a request moves at most 8 MiB.
/// Bigger requests fail: one request can't hold the event loop for long.
const SIZE_MAX: u32 = 64 * 1024;
const SEG_MAX: u32 = 128;
const MAX_REQUEST: u64 = SIZE_MAX as u64 * SEG_MAX as u64;
/// About how many bytes one pass over the queue moves (see
/// `process_queue`), and what a flush counts for.
pub const PASS_BUDGET: u64 = 16 << 20;
pub const FLUSH_COST: u64 = 4 << 20;

pub(super) struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<Interrupt>,
}

/// The backing file and what the driver may do with it.
struct Disk {
    file: std::fs::File,
    read_only: bool,
    sectors: u64,
    id: [u8; 20],
    metrics: Arc<BlockMetrics>,
}

pub struct Block {
    disk: Disk,
    pub(super) queue_evts: [EventFd; 1],
    pub(super) active: Option<Active>,
    pub metrics: Arc<BlockMetrics>,
    /// Records a failed event-loop registration, for the VM to report.
    pub watch_fault: WatchFault,
}

#[derive(Debug)]
enum Outcome {
    /// Bytes written into the driver's buffers (the status included), and
    /// what serving the request cost (see `PASS_BUDGET`).
    Done { used: u32, cost: u64 },
    /// The chain was unusable: complete it with length 0.
    Invalid,
}

impl Block {
    pub fn open(path: &Path, read_only: bool) -> std::io::Result<Self> {
        let disk = Disk::open(path, read_only)?;
        Ok(Self {
            metrics: disk.metrics.clone(),
            disk,
            queue_evts: [EventFd::new(EFD_NONBLOCK)?],
            active: None,
            watch_fault: WatchFault::default(),
        })
    }
}

impl Disk {
    fn open(path: &Path, read_only: bool) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)?;
        let len = file.metadata()?.len();
        let mut id = [0u8; 20];
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for (d, s) in id.iter_mut().zip(name.bytes()) {
            *d = s;
        }
        Ok(Self {
            file,
            read_only,
            sectors: len / SECTOR,
            id,
            metrics: Arc::new(BlockMetrics::default()),
        })
    }

    fn in_range(&self, sector: u64, len: u64) -> bool {
        len <= MAX_REQUEST
            && len.is_multiple_of(SECTOR)
            && sector
                .checked_add(len / SECTOR)
                .is_some_and(|end| end <= self.sectors)
    }

    fn serve(&self, reader: &mut Reader<'_>, writer: &mut Writer<'_>) -> Outcome {
        let mut cost = (reader.available_bytes() + writer.available_bytes()) as u64;
        let Ok(kind) = reader.read_obj::<u32>() else {
            return Outcome::Invalid;
        };
        let Ok(_reserved) = reader.read_obj::<u32>() else {
            return Outcome::Invalid;
        };
        let Ok(sector) = reader.read_obj::<u64>() else {
            return Outcome::Invalid;
        };
        let avail = writer.available_bytes();
        if avail == 0 {
            return Outcome::Invalid;
        }
        let Ok(mut status) = writer.split_at(avail - 1) else {
            return Outcome::Invalid;
        };
        let (code, written) = match kind {
            T_IN => self.read_into(sector, writer),
            T_OUT => self.write_from(sector, reader),
            T_FLUSH => {
                self.metrics.flushes.fetch_add(1, Ordering::Relaxed);
                cost += FLUSH_COST;
                if self.read_only || self.file.sync_all().is_ok() {
                    (S_OK, 0)
                } else {
                    (S_IOERR, 0)
                }
            }
            T_GET_ID => {
                let n = writer.available_bytes().min(self.id.len());
                match writer.write_all(&self.id[..n]) {
                    Ok(()) => (S_OK, n as u32),
                    Err(_) => (S_IOERR, 0),
                }
            }
            _ => (S_UNSUPP, 0),
        };
        if code != S_OK {
            self.metrics.failed.fetch_add(1, Ordering::Relaxed);
        }
        match status.write_obj(code) {
            Ok(()) => Outcome::Done {
                used: written + 1,
                cost,
            },
            Err(_) => Outcome::Invalid,
        }
    }

    fn read_into(&self, sector: u64, writer: &mut Writer<'_>) -> (u8, u32) {
        let len = writer.available_bytes() as u64;
        if !self.in_range(sector, len) {
            return (S_IOERR, 0);
        }
        self.metrics.reads.fetch_add(1, Ordering::Relaxed);
        let mut buf = vec![0u8; CHUNK.min(len as usize)];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            if self
                .file
                .read_exact_at(&mut buf[..n], sector * SECTOR + done)
                .is_err()
                || writer.write_all(&buf[..n]).is_err()
            {
                return (S_IOERR, done as u32);
            }
            done += n as u64;
        }
        self.metrics.read_bytes.fetch_add(done, Ordering::Relaxed);
        (S_OK, done as u32)
    }

    fn write_from(&self, sector: u64, reader: &mut Reader<'_>) -> (u8, u32) {
        let len = reader.available_bytes() as u64;
        if self.read_only || !self.in_range(sector, len) {
            return (S_IOERR, 0);
        }
        self.metrics.writes.fetch_add(1, Ordering::Relaxed);
        let mut buf = vec![0u8; CHUNK.min(len as usize)];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            if reader.read_exact(&mut buf[..n]).is_err()
                || self
                    .file
                    .write_all_at(&buf[..n], sector * SECTOR + done)
                    .is_err()
            {
                return (S_IOERR, 0);
            }
            done += n as u64;
        }
        self.metrics.write_bytes.fetch_add(done, Ordering::Relaxed);
        (S_OK, 0)
    }
}

impl Block {
    /// Serves the available requests, about [`PASS_BUDGET`] bytes of them
    /// per call (a flush counts as [`FLUSH_COST`]); a kick of the queue's
    /// eventfd brings the loop back for the rest. Each pass holds the
    /// device's lock, which a vCPU touching the device's registers waits
    /// for. Returns the number completed.
    pub fn process_queue(&mut self) -> usize {
        let Some(active) = self.active.as_mut() else {
            return 0;
        };
        let (disk, mem) = (&self.disk, &active.mem);
        let kick = &self.queue_evts[0];
        let cost = std::cell::Cell::new(0u64);
        let spent = || cost.get() >= PASS_BUDGET;
        serve_queue_within(
            &mut active.queue,
            mem,
            &active.interrupt,
            kick,
            spent,
            |chain| {
                let outcome = match (Reader::new(mem, chain.clone()), Writer::new(mem, chain)) {
                    (Ok(mut r), Ok(mut w)) => disk.serve(&mut r, &mut w),
                    _ => Outcome::Invalid,
                };
                match outcome {
                    Outcome::Done { used, cost: c } => {
                        cost.set(cost.get() + c);
                        used
                    }
                    Outcome::Invalid => {
                        disk.metrics.invalid_chains.fetch_add(1, Ordering::Relaxed);
                        0
                    }
                }
            },
        )
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }
    fn avail_features(&self) -> u64 {
        F_VERSION_1 | F_FLUSH | F_SIZE_MAX | F_SEG_MAX | if self.disk.read_only { F_RO } else { 0 }
    }
    fn set_acked_features(&mut self, _features: u64) {}
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_blk_config: the capacity in sectors, size_max,
        // seg_max.
        let mut config = [0u8; 16];
        config[..8].copy_from_slice(&self.disk.sectors.to_le_bytes());
        config[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        config[12..].copy_from_slice(&SEG_MAX.to_le_bytes());
        read_config_bytes(&config, offset, data);
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

    fn header(t: &TestQueue, at: u64, kind: u32, sector: u64) {
        t.write(at, &kind.to_le_bytes());
        t.write(at + 4, &0u32.to_le_bytes());
        t.write(at + 8, &sector.to_le_bytes());
    }

    fn disk(read_only: bool) -> (tempfile::NamedTempFile, Block) {
        let f = tempfile::NamedTempFile::new().expect("file");
        let mut data = vec![0u8; 8 * 512];
        data[512..1024].fill(0xab);
        std::fs::write(f.path(), &data).expect("write");
        let b = Block::open(f.path(), read_only).expect("open");
        (f, b)
    }

    fn run(t: &TestQueue, b: &mut Block) -> usize {
        let (mem, q, irq) = t.activate_parts();
        b.activate(mem, vec![q], irq).expect("activate");
        b.process_queue()
    }

    /// A pass stops once its work adds up to the budget, and kicks the
    /// queue for the rest: flushes, here, which cost a quarter each.
    #[test]
    fn one_pass_does_a_budget_of_work_and_kicks_for_the_rest() {
        let t = TestQueue::new(16);
        let (_f, mut b) = disk(false);
        let per_pass = (PASS_BUDGET / FLUSH_COST) as usize;
        for i in 0..per_pass as u64 + 1 {
            header(&t, 0x4000 + i * 0x100, T_FLUSH, 0);
            t.add_chain(
                i as u16,
                &[(0x4000 + i * 0x100, 16, 0), (0x6000 + i, 1, WRITE)],
            );
        }
        assert_eq!(run(&t, &mut b), per_pass);
        assert_eq!(b.queue_evts[0].read().expect("kicked"), 1);
        assert_eq!(b.process_queue(), 1, "the rest, on the next pass");
        assert_eq!(
            b.metrics.flushes.load(Ordering::Relaxed),
            per_pass as u64 + 1
        );
    }

    #[test]
    fn reads_and_writes_sectors_of_the_backing_file() {
        let t = TestQueue::new(16);
        let (f, mut b) = disk(false);
        header(&t, 0x4000, T_IN, 1);
        t.add_chain(
            0,
            &[(0x4000, 16, 0), (0x5000, 512, WRITE), (0x6000, 1, WRITE)],
        );
        header(&t, 0x4100, T_OUT, 3);
        t.write(0x7000, &[0x5a; 1024]);
        t.add_chain(1, &[(0x4100, 16, 0), (0x7000, 1024, 0), (0x6001, 1, WRITE)]);
        assert_eq!(run(&t, &mut b), 2);
        assert_eq!(t.read(0x5000, 512), vec![0xab; 512]);
        assert_eq!(t.read(0x6000, 2), vec![S_OK, S_OK]);
        assert_eq!(t.used(0).1, 513);
        let on_disk = std::fs::read(f.path()).expect("read");
        assert_eq!(&on_disk[3 * 512..5 * 512], &[0x5a; 1024][..]);
        assert_eq!(b.read_config_u64(), 8);
    }

    #[test]
    fn requests_are_limited_to_what_the_device_announces() {
        let f = tempfile::NamedTempFile::new().expect("file");
        f.as_file().set_len(4 * MAX_REQUEST).expect("sparse disk");
        let b = Block::open(f.path(), false).expect("open");
        let features = b.avail_features();
        assert_ne!(features & F_SIZE_MAX, 0);
        assert_ne!(features & F_SEG_MAX, 0);
        let mut word = [0u8; 4];
        b.read_config(8, &mut word);
        assert_eq!(u32::from_le_bytes(word), SIZE_MAX);
        b.read_config(12, &mut word);
        assert_eq!(u32::from_le_bytes(word), SEG_MAX);
        assert!(b.disk.in_range(0, MAX_REQUEST));
        assert!(
            !b.disk.in_range(0, MAX_REQUEST + SECTOR),
            "larger than SIZE_MAX x SEG_MAX"
        );
    }

    #[test]
    fn read_only_out_of_range_and_unknown_requests_fail_cleanly() {
        let t = TestQueue::new(16);
        let (_f, mut b) = disk(true);
        header(&t, 0x4000, T_OUT, 0);
        t.add_chain(0, &[(0x4000, 16, 0), (0x7000, 512, 0), (0x6000, 1, WRITE)]);
        header(&t, 0x4100, T_IN, 7);
        t.add_chain(
            1,
            &[(0x4100, 16, 0), (0x5000, 1024, WRITE), (0x6001, 1, WRITE)],
        );
        header(&t, 0x4200, 99, 0);
        t.add_chain(2, &[(0x4200, 16, 0), (0x6002, 1, WRITE)]);
        header(&t, 0x4300, T_IN, 0);
        t.add_chain(
            3,
            &[(0x4300, 16, 0), (0x5000, 100, WRITE), (0x6003, 1, WRITE)],
        );
        assert_eq!(run(&t, &mut b), 4);
        assert_eq!(t.read(0x6000, 4), vec![S_IOERR, S_IOERR, S_UNSUPP, S_IOERR]);
        assert_eq!(b.metrics.failed.load(Ordering::Relaxed), 4);
        assert_ne!(b.avail_features() & F_RO, 0);
    }

    #[test]
    fn chains_without_a_status_byte_or_header_are_dropped() {
        let t = TestQueue::new(16);
        let (_f, mut b) = disk(false);
        t.add_chain(0, &[(0x4000, 8, 0)]);
        header(&t, 0x4100, T_IN, 0);
        t.add_chain(1, &[(0x4100, 16, 0)]);
        assert_eq!(run(&t, &mut b), 2);
        assert_eq!(t.used(0).1, 0);
        assert_eq!(b.metrics.invalid_chains.load(Ordering::Relaxed), 2);
    }

    impl Block {
        fn read_config_u64(&self) -> u64 {
            let mut d = [0u8; 8];
            self.read_config(0, &mut d);
            u64::from_le_bytes(d)
        }
    }
}
