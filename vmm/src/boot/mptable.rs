//! MP tables (Intel MultiProcessor Specification 1.4), so the guest finds
//! its vCPUs, the I/O APIC and the ISA interrupts without ACPI.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{IOAPIC, LAPIC, MPTABLE};

/// The most vCPUs the MP table describes.
pub const MAX_CPUS: usize = 32;
const IRQS: u8 = super::layout::IOAPIC_PINS as u8;

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Builds the floating pointer and the configuration table for `cpus`.
pub fn build(cpus: u8) -> Vec<u8> {
    let table_addr = MPTABLE + 16;
    let ioapic_id = cpus + 1;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        // Processor: type 0, apic id, apic version, flags (enabled, BSP),
        // signature, feature flags (FPU, APIC), reserved.
        entries.extend([0, id, 0x14, 1 | if id == 0 { 2 } else { 0 }]);
        entries.extend(0x600u32.to_le_bytes());
        entries.extend(0x201u32.to_le_bytes());
        entries.extend([0u8; 8]);
        count += 1;
    }
    // Bus 0: ISA.
    entries.extend([1, 0]);
    entries.extend(*b"ISA   ");
    count += 1;
    // The I/O APIC.
    entries.extend([2, ioapic_id, 0x11, 1]);
    entries.extend((IOAPIC as u32).to_le_bytes());
    count += 1;
    // ISA IRQ i -> I/O APIC pin i.
    for irq in 0..IRQS {
        entries.extend([3, 0, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // LINT0: ExtINT, LINT1: NMI.
    entries.extend([4, 3, 0, 0, 0, 0, 0, 0]);
    entries.extend([4, 1, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let mut table = Vec::new();
    table.extend(*b"PCMP");
    table.extend(((44 + entries.len()) as u16).to_le_bytes());
    table.push(4); // spec 1.4
    table.push(0); // checksum, below
    table.extend(*b"AURAE   ");
    table.extend(*b"MICROVM     ");
    table.extend(0u32.to_le_bytes()); // oem table
    table.extend(0u16.to_le_bytes()); // oem table size
    table.extend(count.to_le_bytes());
    table.extend((LAPIC as u32).to_le_bytes());
    table.extend(0u32.to_le_bytes());
    table.extend(entries);
    table[7] = checksum(&table);

    let mut mpf = Vec::new();
    mpf.extend(*b"_MP_");
    mpf.extend((table_addr as u32).to_le_bytes());
    mpf.extend([1, 4, 0, 0, 0, 0, 0, 0]);
    mpf[10] = checksum(&mpf);
    mpf.extend(table);
    mpf
}

pub fn write(mem: &GuestMemoryMmap, cpus: u8) -> Result<(), vm_memory::GuestMemoryError> {
    mem.write_slice(&build(cpus), GuestAddress(MPTABLE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_checksum_to_zero_and_count_their_entries() {
        let t = build(4);
        assert_eq!(&t[0..4], b"_MP_");
        assert_eq!(t[..16].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let table = &t[16..];
        let len = u16::from_le_bytes([table[4], table[5]]) as usize;
        assert_eq!(len, table.len());
        assert_eq!(table.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let count = u16::from_le_bytes([table[34], table[35]]);
        assert_eq!(count, 4 + 1 + 1 + 24 + 2);
        assert!(MPTABLE + t.len() as u64 <= 0xa0000, "fits below 640 KiB");
    }
}
