//! Test helper: a split virtqueue laid out in test guest memory, with
//! descriptor chains written the way a driver would write them. Devices
//! run against it without KVM.

use std::cell::Cell;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::Interrupt;

pub const NEXT: u16 = 1;
pub const WRITE: u16 = 2;

pub const DESC_TABLE: u64 = 0x0;
pub const AVAIL_RING: u64 = 0x800;
pub const USED_RING: u64 = 0x1000;
/// Test memory: 4 MiB.
pub const MEM_SIZE: usize = 4 << 20;

pub struct TestQueue {
    pub mem: GuestMemoryMmap,
    pub size: u16,
    /// Where this queue's structures start (several queues share memory).
    pub base: u64,
    next_desc: Cell<u16>,
    next_avail: Cell<u16>,
}

impl TestQueue {
    pub fn new(size: u16) -> Self {
        let mem =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("test memory");
        Self::with_mem(mem, 0, size)
    }

    /// A queue whose structures start at `base` of `mem`.
    pub fn with_mem(mem: GuestMemoryMmap, base: u64, size: u16) -> Self {
        Self {
            mem,
            size,
            base,
            next_desc: Cell::new(0),
            next_avail: Cell::new(0),
        }
    }

    /// Writes a raw descriptor at `index` of the table.
    pub fn write_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(self.base + DESC_TABLE + u64::from(index) * 16);
        self.mem.write_obj(addr, at).expect("addr");
        self.mem
            .write_obj(len, GuestAddress(at.0 + 8))
            .expect("len");
        self.mem
            .write_obj(flags, GuestAddress(at.0 + 12))
            .expect("flags");
        self.mem
            .write_obj(next, GuestAddress(at.0 + 14))
            .expect("next");
    }

    /// Publishes descriptor `head` in the avail ring.
    pub fn publish(&self, head: u16) {
        let pos = self.next_avail.get();
        let slot = GuestAddress(self.base + AVAIL_RING + 4 + u64::from(pos % self.size) * 2);
        self.mem.write_obj(head, slot).expect("ring");
        self.next_avail.set(pos.wrapping_add(1));
        self.mem
            .write_obj(
                self.next_avail.get(),
                GuestAddress(self.base + AVAIL_RING + 2),
            )
            .expect("idx");
    }

    /// Adds a chain of (addr, len, flags) buffers and publishes it; returns
    /// the head index. `_pos` documents the expected used-ring position.
    pub fn add_chain(&self, _pos: u16, bufs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_desc.get();
        for (i, (addr, len, flags)) in bufs.iter().enumerate() {
            let idx = head + i as u16;
            let last = i + 1 == bufs.len();
            let flags = if last { *flags } else { *flags | NEXT };
            self.write_desc(idx, *addr, *len, flags, idx + 1);
        }
        self.next_desc.set(head + bufs.len() as u16);
        self.publish(head);
        head
    }

    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).expect("queue");
        q.set_size(self.size);
        q.set_desc_table_address(Some((self.base + DESC_TABLE) as u32), Some(0));
        q.set_avail_ring_address(Some((self.base + AVAIL_RING) as u32), Some(0));
        q.set_used_ring_address(Some((self.base + USED_RING) as u32), Some(0));
        q.set_ready(true);
        q
    }

    pub fn interrupt(&self) -> Arc<Interrupt> {
        Interrupt::new(EventFd::new(0).expect("eventfd"))
    }

    pub fn activate_parts(&self) -> (GuestMemoryMmap, Queue, Arc<Interrupt>) {
        (self.mem.clone(), self.queue(), self.interrupt())
    }

    /// The used element at `pos`: (descriptor id, length).
    pub fn used(&self, pos: u16) -> (u32, u32) {
        let at = self.base + USED_RING + 4 + u64::from(pos % self.size) * 8;
        let id: u32 = self.mem.read_obj(GuestAddress(at)).expect("id");
        let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).expect("len");
        (id, len)
    }

    pub fn used_idx(&self) -> u16 {
        self.mem
            .read_obj(GuestAddress(self.base + USED_RING + 2))
            .expect("used idx")
    }

    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem
            .read_slice(&mut v, GuestAddress(addr))
            .expect("read");
        v
    }

    pub fn write(&self, addr: u64, data: &[u8]) {
        self.mem
            .write_slice(data, GuestAddress(addr))
            .expect("write");
    }
}
