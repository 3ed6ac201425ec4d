//! Where things live in guest physical memory (x86_64).

/// GDT and IDT of the boot vCPU state.
pub const GDT: u64 = 0x500;
pub const IDT: u64 = 0x520;
/// PVH start info, followed by its memory map and module list.
pub const PVH_INFO: u64 = 0x6000;
pub const PVH_MEMMAP: u64 = 0x6040;
pub const PVH_MODLIST: u64 = 0x6200;
/// The Linux zero page (struct boot_params).
pub const ZERO_PAGE: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK: u64 = 0x8ff0;
/// Identity page tables: PML4, PDPT, then four page directories (4 GiB).
pub const PML4: u64 = 0x9000;
pub const PDPT: u64 = 0xa000;
pub const PD: u64 = 0xb000;
pub const PD_COUNT: u64 = 4;
/// The kernel command line.
pub const CMDLINE: u64 = 0x20000;
/// MP table, in the last KiB of base memory (where Linux looks for it).
pub const MPTABLE: u64 = 0x9fc00;
/// End of usable base memory (the EBDA and BIOS area follow).
pub const EBDA: u64 = 0x9fc00;
/// Where the kernel is loaded.
pub const HIMEM: u64 = 0x10_0000;
/// Highest address an initrd may end at (the kernel's initrd_addr_max).
pub const INITRD_MAX: u64 = 0x3fff_ffff;
/// Virtio MMIO devices, one page each, from here.
pub const MMIO_BASE: u64 = 0xd000_0000;
/// Their interrupts, from this GSI up (4 is the serial port).
pub const MMIO_FIRST_IRQ: u32 = 5;
/// The IOAPIC's pins (GSIs 0 to 23), all in the MP table.
pub const IOAPIC_PINS: u32 = 24;
/// So at most this many virtio devices, one interrupt each.
pub const MAX_VIRTIO_DEVICES: usize = (IOAPIC_PINS - MMIO_FIRST_IRQ) as usize;
pub const IOAPIC: u64 = 0xfec0_0000;
pub const LAPIC: u64 = 0xfee0_0000;
