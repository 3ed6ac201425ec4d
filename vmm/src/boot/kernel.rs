//! Loading the kernel (ELF with a PVH note, ELF, bzImage, or a flat test
//! binary), the initrd parts back to back, the command line, and the boot
//! parameters: the Linux zero page with its e820 map, or the PVH start info.

use std::fs::File;
use std::path::Path;

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{load_cmdline, BzImage, Cmdline, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::layout::*;
use crate::VmmError;

/// How the first vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// 64-bit Linux boot protocol: long mode, RSI = zero page.
    Linux64(u64),
    /// PVH: 32-bit protected mode, EBX = start info.
    Pvh(u64),
    /// A flat test binary, entered in 64-bit mode.
    Flat(u64),
}

#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ZeroPage(boot_params);
// SAFETY: boot_params is plain old data (integers and arrays) with no
// padding requirements beyond its packed layout.
unsafe impl ByteValued for ZeroPage {}

#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct StartInfo(hvm_start_info);
// SAFETY: plain old data, as above.
unsafe impl ByteValued for StartInfo {}

#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct MemmapEntry(hvm_memmap_table_entry);
// SAFETY: plain old data, as above.
unsafe impl ByteValued for MemmapEntry {}

#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ModlistEntry(hvm_modlist_entry);
// SAFETY: plain old data, as above.
unsafe impl ByteValued for ModlistEntry {}

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

/// A kernel in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    pub entry: Entry,
    /// A bzImage's setup header.
    pub header: Option<setup_header>,
    /// The first guest address past everything the kernel occupies
    /// (including its bss, or a bzImage's decompression space).
    pub end: u64,
}

/// Loads the kernel.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    path: &Path,
    flat_entry: Option<u64>,
) -> Result<LoadedKernel, VmmError> {
    let kernel = load_image(mem, path, flat_entry)?;
    // The loaders check what they write, but not the bss or the space a
    // bzImage decompresses into.
    let size = mem.last_addr().0.saturating_add(1);
    if kernel.end > size {
        return Err(VmmError::Config {
            option: "mem",
            reason: format!(
                "the kernel needs guest memory up to {:#x} ({} MiB), more than the {} MiB given",
                kernel.end,
                kernel.end.div_ceil(1 << 20),
                size >> 20
            ),
        });
    }
    Ok(kernel)
}

fn load_image(
    mem: &GuestMemoryMmap,
    path: &Path,
    flat_entry: Option<u64>,
) -> Result<LoadedKernel, VmmError> {
    let open = || File::open(path).map_err(VmmError::input("kernel", path.display()));
    if let Some(at) = flat_entry {
        let bytes = std::fs::read(path).map_err(VmmError::input("kernel", path.display()))?;
        mem.write_slice(&bytes, GuestAddress(at))
            .map_err(VmmError::input(
                "kernel",
                format_args!("{} does not fit in guest memory", path.display()),
            ))?;
        return Ok(LoadedKernel {
            entry: Entry::Flat(at),
            header: None,
            end: at.saturating_add(bytes.len() as u64),
        });
    }
    match Elf::load(mem, None, &mut open()?, Some(GuestAddress(HIMEM))) {
        Ok(r) => {
            let entry = match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(a) => Entry::Pvh(a.0),
                _ => Entry::Linux64(r.kernel_load.0),
            };
            return Ok(LoadedKernel {
                entry,
                header: None,
                end: r.kernel_end,
            });
        }
        Err(linux_loader::loader::Error::Elf(
            linux_loader::loader::elf::Error::InvalidElfMagicNumber,
        )) => {}
        Err(e) => {
            return Err(VmmError::input(
                "kernel",
                format_args!("{}: bad ELF kernel", path.display()),
            )(e))
        }
    }
    match BzImage::load(mem, None, &mut open()?, Some(GuestAddress(HIMEM))) {
        Ok(r) => Ok(LoadedKernel {
            entry: Entry::Linux64(r.kernel_load.0 + 0x200),
            header: r.setup_header,
            // The kernel decompresses itself to its preferred address
            // (or where it was loaded, if higher) and needs `init_size`
            // bytes there.
            end: r.kernel_end.max(r.setup_header.map_or(0, |h| {
                r.kernel_load
                    .0
                    .max(h.pref_address)
                    .saturating_add(u64::from(h.init_size))
            })),
        }),
        Err(e) => Err(VmmError::input(
            "kernel",
            format_args!(
                "{} is neither an ELF vmlinux nor a bzImage, or does not fit in guest memory",
                path.display()
            ),
        )(e)),
    }
}

/// Loads the initrd parts back to back, as high as allowed but above
/// `floor` (the kernel's end); returns (address, size). Each part is read
/// straight from its file into guest memory, with no copy in between.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    floor: u64,
    parts: &[std::path::PathBuf],
) -> Result<Option<(u64, u64)>, VmmError> {
    if parts.is_empty() {
        return Ok(None);
    }
    let mut files = Vec::with_capacity(parts.len());
    // Each part starts 4-byte aligned; the kernel skips the zero padding.
    let mut size = 0u64;
    for p in parts {
        let file = File::open(p).map_err(VmmError::input("initrd", p.display()))?;
        let len = file
            .metadata()
            .map_err(VmmError::input("initrd", p.display()))?
            .len();
        files.push((p, file, size, len));
        size = (size + len).next_multiple_of(4);
    }
    let top = mem_size.min(INITRD_MAX + 1);
    let addr = top
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= HIMEM.max(floor))
        .ok_or_else(|| VmmError::Config {
            option: "mem",
            reason: format!(
                "the initrd ({size} bytes) does not fit in guest memory above the kernel (which ends at {floor:#x})"
            ),
        })?;
    for (p, mut file, offset, len) in files {
        let len = usize::try_from(len).map_err(VmmError::input("initrd", p.display()))?;
        mem.read_exact_volatile_from(GuestAddress(addr + offset), &mut file, len)
            .map_err(VmmError::input("initrd", p.display()))?;
        let end = addr + offset + len as u64;
        let pad = end.next_multiple_of(4) - end;
        mem.write_slice(&[0u8; 3][..pad as usize], GuestAddress(end))
            .map_err(|source| VmmError::GuestMemory {
                what: "padding the initrd",
                source,
            })?;
    }
    Ok(Some((addr, size)))
}

/// The usable RAM ranges of a guest with `mem_size` bytes.
fn ram_ranges(mem_size: u64) -> [(u64, u64, u32); 3] {
    [
        (0, EBDA, E820_RAM),
        (EBDA, HIMEM - EBDA, E820_RESERVED),
        (HIMEM, mem_size - HIMEM, E820_RAM),
    ]
}

/// Writes the command line and the boot parameters for `entry`.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    entry: Entry,
    header: Option<setup_header>,
    cmdline: &str,
    initrd: Option<(u64, u64)>,
) -> Result<(), VmmError> {
    let mut cl = Cmdline::new(super::CMDLINE_MAX).map_err(|source| VmmError::Cmdline { source })?;
    cl.insert_str(cmdline)
        .map_err(VmmError::input("cmdline", "the kernel command line"))?;
    load_cmdline(mem, GuestAddress(CMDLINE), &cl)
        .map_err(|source| VmmError::LoadCmdline { source })?;
    match entry {
        Entry::Flat(_) => Ok(()),
        Entry::Linux64(_) => {
            let mut p = ZeroPage::default();
            if let Some(h) = header {
                p.0.hdr = h;
            } else {
                p.0.hdr.boot_flag = 0xaa55;
                p.0.hdr.header = 0x5372_6448; // "HdrS"
                p.0.hdr.kernel_alignment = 0x0100_0000;
            }
            p.0.hdr.type_of_loader = 0xff;
            p.0.hdr.cmd_line_ptr = CMDLINE as u32;
            p.0.hdr.cmdline_size = cmdline.len() as u32 + 1;
            if let Some((addr, size)) = initrd {
                p.0.hdr.ramdisk_image = addr as u32;
                p.0.hdr.ramdisk_size = size as u32;
            }
            for (i, (addr, size, kind)) in ram_ranges(mem_size).into_iter().enumerate() {
                p.0.e820_table[i].addr = addr;
                p.0.e820_table[i].size = size;
                p.0.e820_table[i].r#type = kind;
            }
            p.0.e820_entries = 3;
            LinuxBootConfigurator::write_bootparams(
                &BootParams::new(&p, GuestAddress(ZERO_PAGE)),
                mem,
            )
            .map_err(|source| VmmError::BootParams { source })
        }
        Entry::Pvh(_) => {
            let mut info = StartInfo::default();
            info.0.magic = XEN_HVM_START_MAGIC;
            info.0.version = 1;
            info.0.cmdline_paddr = CMDLINE;
            info.0.memmap_paddr = PVH_MEMMAP;
            info.0.memmap_entries = 3;
            let memmap: Vec<MemmapEntry> = ram_ranges(mem_size)
                .into_iter()
                .map(|(addr, size, kind)| {
                    let mut e = MemmapEntry::default();
                    e.0.addr = addr;
                    e.0.size = size;
                    e.0.type_ = kind;
                    e
                })
                .collect();
            let mut params = BootParams::new(&info, GuestAddress(PVH_INFO));
            params.set_sections(&memmap, GuestAddress(PVH_MEMMAP));
            if let Some((addr, size)) = initrd {
                info.0.nr_modules = 1;
                info.0.modlist_paddr = PVH_MODLIST;
                params = BootParams::new(&info, GuestAddress(PVH_INFO));
                params.set_sections(&memmap, GuestAddress(PVH_MEMMAP));
                let mut m = ModlistEntry::default();
                m.0.paddr = addr;
                m.0.size = size;
                params.set_modules(&[m], GuestAddress(PVH_MODLIST));
            }
            PvhBootConfigurator::write_bootparams(&params, mem)
                .map_err(|source| VmmError::BootParams { source })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem(mib: u64) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (mib << 20) as usize)]).expect("memory")
    }

    #[test]
    fn initrd_parts_are_loaded_back_to_back_and_page_aligned_at_the_top() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("base");
        let b = dir.path().join("overlay");
        std::fs::write(&a, b"base-archive").expect("a");
        std::fs::write(&b, b"overlay").expect("b");
        let m = mem(32);
        let (addr, size) = load_initrd(&m, 32 << 20, HIMEM, &[a, b])
            .expect("load")
            .expect("some");
        assert_eq!(addr % 0x1000, 0);
        assert!(addr + size <= 32 << 20);
        let mut got = vec![0u8; size as usize];
        m.read_slice(&mut got, GuestAddress(addr)).expect("read");
        assert_eq!(&got[..12], b"base-archive");
        assert_eq!(
            &got[12..19],
            b"overlay",
            "the second part follows the first (4-byte aligned)"
        );
    }

    #[test]
    fn an_odd_sized_part_is_zero_padded_to_four_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, b"12345").expect("a");
        std::fs::write(&b, b"next").expect("b");
        let m = mem(32);
        // Dirty the memory where the padding goes.
        m.write_slice(&[0xff; 64], GuestAddress((32 << 20) - 0x1000))
            .expect("dirty");
        let (addr, size) = load_initrd(&m, 32 << 20, HIMEM, &[a, b])
            .expect("load")
            .expect("some");
        assert_eq!(size, 12);
        let mut got = vec![0u8; 12];
        m.read_slice(&mut got, GuestAddress(addr)).expect("read");
        assert_eq!(&got, b"12345\0\0\0next");
    }

    #[test]
    fn a_missing_initrd_names_the_option() {
        let dir = tempfile::tempdir().expect("tempdir");
        match load_initrd(&mem(16), 16 << 20, HIMEM, &[dir.path().join("nope")]) {
            Err(VmmError::ConfigInput {
                option,
                subject,
                source,
            }) => {
                assert_eq!(option, "initrd");
                assert!(subject.contains("nope"), "{subject}");
                let io = source.downcast_ref::<std::io::Error>().expect("io error");
                assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_initrd_that_does_not_fit_names_mem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![0u8; 20 << 20]).expect("big");
        match load_initrd(&mem(16), 16 << 20, HIMEM, &[big]) {
            Err(VmmError::Config { option, .. }) => assert_eq!(option, "mem"),
            other => panic!("{other:?}"),
        }
    }

    /// A minimal x86-64 ELF executable: one PT_LOAD of `filesz` bytes at
    /// `paddr`, `memsz` bytes in memory (the rest is bss).
    fn tiny_elf(paddr: u64, filesz: u64, memsz: u64) -> Vec<u8> {
        crate::boot::test_elf::TestElf {
            load: paddr,
            code: vec![0; filesz as usize],
            memsz,
            pvh: false,
        }
        .build()
    }

    #[test]
    fn an_elf_with_a_pvh_note_is_entered_through_pvh() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vmlinux");
        let elf = crate::boot::test_elf::TestElf::pvh(&[0xf4]);
        std::fs::write(&path, elf.build()).expect("elf");
        let k = load_kernel(&mem(4), &path, None).expect("load");
        assert_eq!(k.entry, Entry::Pvh(0x10_0000));
    }

    #[test]
    fn an_elf_kernel_ends_past_its_bss() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vmlinux");
        std::fs::write(&path, tiny_elf(0x100_0000, 0x100, 0x20_0000)).expect("elf");
        let k = load_kernel(&mem(32), &path, None).expect("load");
        assert!(
            matches!(k.entry, Entry::Linux64(0x100_0000)),
            "{:?}",
            k.entry
        );
        assert_eq!(k.end, 0x100_0000 + 0x20_0000, "the bss counts");
        // Memory that holds the file's bytes but not the bss is refused.
        match load_kernel(&mem(17), &path, None) {
            Err(VmmError::Config { option, reason }) => {
                assert_eq!(option, "mem", "{reason}");
                assert!(reason.contains("18 MiB"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // An initrd may not land in that bss.
        let part = dir.path().join("initrd");
        std::fs::write(&part, vec![1u8; 15 << 20]).expect("initrd");
        match load_initrd(&mem(32), 32 << 20, k.end, &[part]) {
            Err(VmmError::Config { option, .. }) => assert_eq!(option, "mem"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_bzimage_kernel_ends_past_the_space_it_decompresses_into() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bzImage");
        // One setup sector after the boot sector, then a 4 KiB payload.
        let mut f = vec![0u8; 1024 + 4096];
        f[0x1f1] = 1; // setup_sects
        f[0x202..0x206].copy_from_slice(b"HdrS");
        f[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // version
        f[0x211] = 1; // LOADED_HIGH
        f[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
        f[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes()); // pref_address
        f[0x260..0x264].copy_from_slice(&0x80_0000u32.to_le_bytes()); // init_size
        std::fs::write(&path, f).expect("bzImage");
        let k = load_kernel(&mem(32), &path, None).expect("load");
        assert_eq!(
            k.end,
            0x100_0000 + 0x80_0000,
            "it decompresses to its preferred address"
        );
    }

    #[test]
    fn an_initrd_that_would_overlap_the_kernel_names_mem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let part = dir.path().join("part");
        std::fs::write(&part, vec![1u8; 4 << 20]).expect("part");
        let m = mem(32);
        // It fits in the memory, but not above a kernel ending at 30 MiB.
        match load_initrd(&m, 32 << 20, 30 << 20, std::slice::from_ref(&part)) {
            Err(VmmError::Config { option, reason }) => {
                assert_eq!(option, "mem");
                assert!(reason.contains("above the kernel"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // Above a kernel ending at 20 MiB it fits, and stays above it.
        let (addr, _) = load_initrd(&m, 32 << 20, 20 << 20, &[part])
            .expect("load")
            .expect("some");
        assert!(addr >= 20 << 20);
    }

    #[test]
    fn zero_page_carries_cmdline_initrd_and_e820() {
        let m = mem(64);
        write_boot_params(
            &m,
            64 << 20,
            Entry::Linux64(HIMEM),
            None,
            "console=ttyS0",
            Some((0x200_0000, 0x1000)),
        )
        .expect("params");
        let mut zp = ZeroPage::default();
        m.read_slice(zp.as_mut_slice(), GuestAddress(ZERO_PAGE))
            .expect("read");
        let hdr = zp.0.hdr;
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE as u32);
        assert_eq!({ hdr.ramdisk_image }, 0x200_0000);
        assert_eq!({ hdr.boot_flag }, 0xaa55);
        assert_eq!(zp.0.e820_entries, 3);
        let mut cl = [0u8; 13];
        m.read_slice(&mut cl, GuestAddress(CMDLINE))
            .expect("cmdline");
        assert_eq!(&cl, b"console=ttyS0");
    }
}
