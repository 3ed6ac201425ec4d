//! Guest RAM: one anonymous mapping, aligned to 2 MiB and, on request,
//! advised for transparent huge pages.
//!
//! KVM maps guest memory with 2 MiB page-table entries only where the host
//! backs it with huge pages, which needs the host address and the guest
//! address to share their offset within 2 MiB. Linux 6.1 does not align
//! large anonymous mappings by itself, so this reserves 2 MiB more than it
//! needs and maps the RAM at the first aligned address inside. Each huge
//! entry saves the guest up to 512 separate (nested) page faults, which is
//! most of what a booting guest's first touches of memory cost under nested
//! virtualization. Where THP is missing the advice is refused and the RAM
//! simply stays in 4 KiB pages. Without the advice the host uses huge pages
//! only if its THP mode is `always`.
//!
//! The advice comes before the VMM writes the kernel and initrd, so that
//! they too sit in huge pages. Writing them then costs more (each 2 MiB
//! touched is a whole huge page to allocate and zero), but in the QEMU test
//! host, advising only after loading left the kernel image in 4 KiB pages
//! and made the guest's own boot about 0.3 s slower, far more than it saved.

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use crate::VmmError;

/// The huge page size that KVM uses for guest memory on x86-64.
pub const HUGE_PAGE: usize = 2 << 20;

/// The mapping that backs guest memory; unmapped when dropped.
pub struct GuestRam {
    addr: *mut libc::c_void,
    len: usize,
    huge_advised: bool,
}

// SAFETY: the mapping is plain memory owned by this value; sharing the
// address between threads is what guest memory is for (vm-memory guards the
// accesses).
unsafe impl Send for GuestRam {}
// SAFETY: as above; `GuestRam` itself only reads its own fields.
unsafe impl Sync for GuestRam {}

const PROT_RW: libc::c_int = libc::PROT_READ | libc::PROT_WRITE;
const FLAGS: libc::c_int = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;

fn mem_err(what: &'static str) -> VmmError {
    VmmError::GuestRamMap {
        what,
        source: std::io::Error::last_os_error(),
    }
}

impl GuestRam {
    /// Maps `len` bytes (a multiple of the page size) at a 2 MiB-aligned
    /// address, advised for huge pages if `huge` is set.
    pub fn new(len: usize, huge: bool) -> Result<GuestRam, VmmError> {
        if len == 0 || !len.is_multiple_of(4096) {
            return Err(VmmError::GuestRamSize {
                len,
                why: "not a positive number of pages",
            });
        }
        let span = len.checked_add(HUGE_PAGE).ok_or(VmmError::GuestRamSize {
            len,
            why: "too large",
        })?;
        // SAFETY: a fresh reservation at an address the kernel picks; no
        // existing memory is affected.
        let reserved =
            unsafe { libc::mmap(std::ptr::null_mut(), span, libc::PROT_NONE, FLAGS, -1, 0) };
        if reserved == libc::MAP_FAILED {
            return Err(mem_err("reserving guest memory"));
        }
        let start = reserved as usize;
        let aligned = start.next_multiple_of(HUGE_PAGE);
        let (head, tail) = (aligned - start, start + span - (aligned + len));
        // SAFETY: [aligned, aligned + len) lies inside the reservation made
        // above, which nothing else uses, so MAP_FIXED replaces only it.
        let ram = unsafe {
            libc::mmap(
                aligned as *mut libc::c_void,
                len,
                PROT_RW,
                FLAGS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if ram == libc::MAP_FAILED {
            let err = mem_err("mapping guest memory");
            // SAFETY: unmaps exactly the reservation made above.
            unsafe { libc::munmap(reserved, span) };
            return Err(err);
        }
        // SAFETY: the head and tail are the unused ends of our reservation.
        unsafe {
            if head > 0 {
                libc::munmap(reserved, head);
            }
            if tail > 0 {
                libc::munmap((aligned + len) as *mut libc::c_void, tail);
            }
        }
        // SAFETY: advice on our own mapping; it fails harmlessly (EINVAL)
        // on a kernel without THP.
        let huge_advised = huge && unsafe { libc::madvise(ram, len, libc::MADV_HUGEPAGE) } == 0;
        Ok(GuestRam {
            addr: ram,
            len,
            huge_advised,
        })
    }

    /// Whether the kernel took the huge page advice.
    pub fn huge_advised(&self) -> bool {
        self.huge_advised
    }

    /// Guest memory at guest physical address 0 over this mapping.
    ///
    /// The returned memory borrows the mapping without owning it: the
    /// caller keeps `self` alive for as long as any clone of it is used.
    pub fn guest_memory(&self) -> Result<GuestMemoryMmap, VmmError> {
        // SAFETY: [addr, addr + len) is a live read-write mapping owned by
        // `self`; the caller's contract keeps it mapped while in use.
        let region = unsafe {
            MmapRegionBuilder::new(self.len)
                .with_mmap_prot(PROT_RW)
                .with_mmap_flags(FLAGS)
                .with_raw_mmap_pointer(self.addr.cast())
        }
        .build()
        .map_err(|source| VmmError::GuestRegion { source })?;
        let region =
            GuestRegionMmap::new(region, GuestAddress(0)).ok_or(VmmError::GuestRamSize {
                len: self.len,
                why: "overflows the address space",
            })?;
        GuestMemoryMmap::from_regions(vec![region])
            .map_err(|source| VmmError::GuestRegions { source })
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours, and its owner outlives every user
        // (see `guest_memory`).
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

#[cfg(test)]
impl GuestRam {
    fn host_addr(&self) -> usize {
        self.addr as usize
    }

    fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn ram_is_aligned_to_huge_pages_and_usable() {
        let ram = GuestRam::new(6 << 20, true).expect("ram");
        assert_eq!(ram.host_addr() % HUGE_PAGE, 0);
        // The advice is taken wherever the kernel has THP at all.
        let thp = std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists();
        assert_eq!(ram.huge_advised(), thp);
        assert!(!GuestRam::new(2 << 20, false).expect("ram").huge_advised());
        assert_eq!(ram.len(), 6 << 20);
        let mem = ram.guest_memory().expect("memory");
        let region = mem.iter().next().expect("one region");
        assert_eq!(region.as_ptr() as usize, ram.host_addr());
        assert_eq!(region.len(), 6 << 20);
        mem.write_obj(0xabcd_u32, GuestAddress((6 << 20) - 4))
            .expect("write at the end");
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress((6 << 20) - 4))
                .expect("read"),
            0xabcd
        );
        assert!(mem.write_obj(1u8, GuestAddress(6 << 20)).is_err());
    }

    #[test]
    fn odd_sizes_are_refused() {
        assert!(GuestRam::new(0, false).is_err());
        assert!(GuestRam::new(4097, false).is_err());
    }
}
