//! The fs device's view of guest memory and of its queues through the
//! versions of vm-memory and virtio-queue that fuse-backend-rs is built on
//! (0.17; the VMM's are 0.18). The view aliases the VM's own mappings, and
//! each queue is the transport's, carried over by its state: nothing is
//! copied, and the device works on the same rings the driver writes.

use fs_memory::{GuestAddress, GuestRegionMmap, MmapRegion};
use vm_memory::{GuestMemoryBackend as _, GuestMemoryRegion as _, MemoryRegionAddress};

/// Guest memory as vm-memory 0.17 sees it.
pub type FsMemory = fs_memory::GuestMemoryMmap;

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("the host address of guest memory at {0:#x}")]
    HostAddress(u64, #[source] vm_memory::GuestMemoryError),
    #[error("a view of guest memory at {0:#x} (MmapRegion::build_raw)")]
    Region(u64, #[source] fs_memory::mmap::MmapRegionError),
    #[error("a region of guest memory at {0:#x} overflows the guest's address space")]
    Overflow(u64),
    #[error("the regions of guest memory (GuestMemoryMmap::from_regions)")]
    Regions(#[source] fs_memory::GuestRegionCollectionError),
    #[error("a queue the driver set up (Queue::try_from)")]
    Queue(#[source] fs_queue::Error),
}

/// A view of `mem`'s regions. The view owns no mapping (nor does `mem`,
/// itself a view of the VM's `GuestRam`): it is valid while the guest's
/// memory is mapped, which is until the VM's `GuestRam` goes. The device
/// uses it on the event thread only, which holds that `GuestRam` while it
/// runs (see `event_thread`), as every device's memory relies on.
pub fn view(mem: &vm_memory::GuestMemoryMmap) -> Result<FsMemory, ViewError> {
    let regions = mem
        .iter()
        .map(|r| {
            let start = r.start_addr().0;
            let host = r
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|e| ViewError::HostAddress(start, e))?;
            let len = usize::try_from(r.len()).map_err(|_| ViewError::Overflow(start))?;
            // SAFETY: `host..host + len` is one region of the VM's guest
            // memory, readable and writable, mapped until the VM's
            // `GuestRam` goes; the view is used only on the event thread,
            // which holds that `GuestRam` while it runs (see `view`). A
            // `build_raw` region never unmaps what it views.
            let region = unsafe {
                MmapRegion::build_raw(
                    host,
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                )
            }
            .map_err(|e| ViewError::Region(start, e))?;
            GuestRegionMmap::new(region, GuestAddress(start)).ok_or(ViewError::Overflow(start))
        })
        .collect::<Result<Vec<_>, _>>()?;
    FsMemory::from_regions(regions).map_err(ViewError::Regions)
}

/// The transport's `queue` as a virtio-queue 0.17 queue, in the same state.
pub fn queue(queue: &virtio_queue::Queue) -> Result<fs_queue::Queue, ViewError> {
    let s = queue.state();
    fs_queue::Queue::try_from(fs_queue::QueueState {
        max_size: s.max_size,
        next_avail: s.next_avail,
        next_used: s.next_used,
        event_idx_enabled: s.event_idx_enabled,
        size: s.size,
        ready: s.ready,
        desc_table: s.desc_table,
        avail_ring: s.avail_ring,
        used_ring: s.used_ring,
    })
    .map_err(ViewError::Queue)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fs_memory::Bytes as _;
    use vm_memory::Bytes as _;

    #[test]
    fn the_view_reads_and_writes_the_same_memory() {
        let mem = vm_memory::GuestMemoryMmap::from_ranges(&[
            (vm_memory::GuestAddress(0), 0x10000),
            (vm_memory::GuestAddress(0x100000), 0x10000),
        ])
        .expect("memory");
        let v = view(&mem).expect("view");
        mem.write_obj(0xabcd_u32, vm_memory::GuestAddress(0x100010))
            .expect("write");
        assert_eq!(v.read_obj::<u32>(GuestAddress(0x100010)).ok(), Some(0xabcd));
        v.write_obj(0x1234_u32, GuestAddress(0x20)).expect("write");
        assert_eq!(
            mem.read_obj::<u32>(vm_memory::GuestAddress(0x20)).ok(),
            Some(0x1234)
        );
        // Outside both regions, as outside the VM's.
        assert!(v.read_obj::<u32>(GuestAddress(0x20000)).is_err());
    }
}
