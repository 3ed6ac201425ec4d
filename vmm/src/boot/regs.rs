//! The boot state of a vCPU: identity page tables and a GDT in guest
//! memory, segment and control registers for long or protected mode,
//! general registers, FPU, boot MSRs and the local APIC's LINT pins.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::kernel::Entry;
use super::layout::*;
use crate::error::KvmError;
use crate::VmmError;

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 0x10;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// GDT entries: null, 64-bit code, data, TSS.
const GDT_ENTRIES: [u64; 4] = [
    0,
    0x00af_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x0080_8b00_0000_ffff,
];
/// The same for 32-bit protected mode (PVH): 32-bit code instead.
const GDT_ENTRIES_32: [u64; 4] = [
    0,
    0x00cf_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x0080_8b00_0000_ffff,
];

fn mem_err(what: &'static str) -> impl Fn(vm_memory::GuestMemoryError) -> VmmError {
    move |source| VmmError::GuestMemory { what, source }
}

/// Identity-maps the first 4 GiB with 2 MiB pages.
pub fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), VmmError> {
    let err = mem_err("writing the boot page tables");
    mem.write_obj(PDPT | 3, GuestAddress(PML4)).map_err(&err)?;
    for i in 0..PD_COUNT {
        mem.write_obj((PD + i * 0x1000) | 3, GuestAddress(PDPT + i * 8))
            .map_err(&err)?;
    }
    for i in 0..512 * PD_COUNT {
        // present, writable, 2 MiB page
        mem.write_obj((i << 21) | 0x83, GuestAddress(PD + i * 8))
            .map_err(&err)?;
    }
    Ok(())
}

fn segment(entry: u64, index: u16) -> kvm_segment {
    let flags = (entry >> 40) & 0xf0ff;
    let granular = (flags >> 15) & 1 == 1;
    let raw_limit = (((entry >> 32) & 0xf_0000) | (entry & 0xffff)) as u32;
    kvm_segment {
        base: 0,
        // KVM wants the byte limit: scaled by 4 KiB when G is set. (Long
        // mode ignores it, 32-bit protected mode does not.)
        limit: if granular {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: index * 8,
        type_: (flags & 0xf) as u8,
        present: ((flags >> 7) & 1) as u8,
        dpl: ((flags >> 5) & 3) as u8,
        db: ((flags >> 14) & 1) as u8,
        s: ((flags >> 4) & 1) as u8,
        l: ((flags >> 13) & 1) as u8,
        g: ((flags >> 15) & 1) as u8,
        avl: ((flags >> 12) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Sets the segment and control registers for `entry`.
pub fn setup_sregs(
    mem: &GuestMemoryMmap,
    vcpu: &VcpuFd,
    index: u8,
    entry: Entry,
) -> Result<(), VmmError> {
    let long = !matches!(entry, Entry::Pvh(_));
    let gdt = if long { GDT_ENTRIES } else { GDT_ENTRIES_32 };
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT + i as u64 * 8))
            .map_err(mem_err("writing the GDT"))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT))
        .map_err(mem_err("writing the IDT"))?;
    let mut s = vcpu
        .get_sregs()
        .map_err(|source| KvmError::GetSregs { index, source })?;
    s.gdt.base = GDT;
    s.gdt.limit = (gdt.len() * 8 - 1) as u16;
    s.idt.base = IDT;
    s.idt.limit = 7;
    let code = segment(gdt[1], 1);
    let data = segment(gdt[2], 2);
    s.cs = code;
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s.tr = segment(gdt[3], 3);
    if long {
        write_page_tables(mem)?;
        s.cr3 = PML4;
        s.cr4 |= CR4_PAE;
        s.cr0 |= CR0_PE | CR0_PG | CR0_ET;
        s.efer |= EFER_LME | EFER_LMA;
    } else {
        s.cr0 = CR0_PE | CR0_ET;
        s.cr4 = 0;
        s.efer = 0;
    }
    vcpu.set_sregs(&s)
        .map_err(|source| KvmError::SetSregs { index, source })?;
    Ok(())
}

pub fn setup_regs(vcpu: &VcpuFd, index: u8, entry: Entry) -> Result<(), KvmError> {
    let mut r = kvm_regs {
        rflags: 2,
        rsp: BOOT_STACK,
        rbp: BOOT_STACK,
        ..Default::default()
    };
    match entry {
        Entry::Linux64(rip) => {
            r.rip = rip;
            r.rsi = ZERO_PAGE;
        }
        Entry::Pvh(rip) => {
            r.rip = rip;
            r.rbx = PVH_INFO;
        }
        Entry::Flat(rip) => r.rip = rip,
    }
    vcpu.set_regs(&r)
        .map_err(|source| KvmError::SetRegs { index, source })
}

pub fn setup_fpu(vcpu: &VcpuFd, index: u8) -> Result<(), KvmError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu)
        .map_err(|source| KvmError::SetFpu { index, source })
}

/// The MSRs Linux expects zeroed (or set) at boot.
pub fn setup_msrs(vcpu: &VcpuFd, index: u8) -> Result<(), KvmError> {
    const SYSENTER_CS: u32 = 0x174;
    const SYSENTER_ESP: u32 = 0x175;
    const SYSENTER_EIP: u32 = 0x176;
    const STAR: u32 = 0xc000_0081;
    const LSTAR: u32 = 0xc000_0082;
    const CSTAR: u32 = 0xc000_0083;
    const SYSCALL_MASK: u32 = 0xc000_0084;
    const KERNEL_GS_BASE: u32 = 0xc000_0102;
    const TSC: u32 = 0x10;
    const MISC_ENABLE: u32 = 0x1a0;
    let entries: Vec<kvm_msr_entry> = [
        (SYSENTER_CS, 0),
        (SYSENTER_ESP, 0),
        (SYSENTER_EIP, 0),
        (STAR, 0),
        (CSTAR, 0),
        (KERNEL_GS_BASE, 0),
        (SYSCALL_MASK, 0),
        (LSTAR, 0),
        (TSC, 0),
        (MISC_ENABLE, 1),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect();
    let msrs =
        Msrs::from_entries(&entries).map_err(|source| KvmError::MsrList { index, source })?;
    let set = vcpu
        .set_msrs(&msrs)
        .map_err(|source| KvmError::SetMsrs { index, source })?;
    if set != entries.len() {
        // A host (PVM, for one) may refuse some; Linux copes, so say so only.
        eprintln!(
            "aurae-vmm: the host accepted {set} of {} boot MSRs",
            entries.len()
        );
    }
    Ok(())
}

/// LINT0 to ExtINT and LINT1 to NMI, as a PC's BIOS leaves them.
pub fn setup_lapic(vcpu: &VcpuFd, index: u8) -> Result<(), KvmError> {
    const LVT_LINT0: usize = 0x350;
    const LVT_LINT1: usize = 0x360;
    const EXTINT: u32 = 0x700;
    const NMI: u32 = 0x400;
    let mut lapic = vcpu
        .get_lapic()
        .map_err(|source| KvmError::GetLapic { index, source })?;
    for (off, mode) in [(LVT_LINT0, EXTINT), (LVT_LINT1, NMI)] {
        let bytes: Vec<u8> = lapic.regs[off..off + 4].iter().map(|b| *b as u8).collect();
        let v = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let v = (v & !0x700) | mode;
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            lapic.regs[off + i] = *b as libc::c_char;
        }
    }
    vcpu.set_lapic(&lapic)
        .map_err(|source| KvmError::SetLapic { index, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guest memory too small for the page tables: the error says what
    /// was being written and keeps vm-memory's error (with the address).
    #[test]
    fn a_failed_guest_write_names_what_and_keeps_its_source() {
        use std::error::Error as _;
        let ram = crate::guest_ram::GuestRam::new(4096, false).expect("ram");
        let mem = ram.guest_memory().expect("memory");
        let e = write_page_tables(&mem).expect_err("PML4 is past 4 KiB");
        assert_eq!(e.to_string(), "writing the boot page tables (guest memory)");
        let source = e.source().expect("a source");
        assert!(
            source
                .downcast_ref::<vm_memory::GuestMemoryError>()
                .is_some(),
            "{source:?}"
        );
    }

    #[test]
    fn flat_segments_span_4_gib() {
        let cs = segment(GDT_ENTRIES_32[1], 1);
        assert_eq!(
            (cs.limit, cs.g, cs.db, cs.l, cs.type_, cs.selector),
            (0xffff_ffff, 1, 1, 0, 0xb, 8)
        );
        let cs64 = segment(GDT_ENTRIES[1], 1);
        assert_eq!((cs64.l, cs64.db), (1, 0));
        let ds = segment(GDT_ENTRIES[2], 2);
        assert_eq!((ds.type_, ds.s, ds.present), (3, 1, 1));
    }
}
