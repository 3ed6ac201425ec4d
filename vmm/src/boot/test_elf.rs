//! Freestanding ELF kernels for test guests and the benchmark: flat code in
//! one PT_LOAD, optionally behind a Xen PVH entry note (so that it is
//! entered in 32-bit protected mode, paging off, like a PVH vmlinux).

/// `PT_LOAD`, `PT_NOTE`, and the Xen note type of a PVH entry point.
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// Where the code starts in the file.
const CODE_OFFSET: usize = 0x1000;
/// Where the PVH note sits in the file (within the first page).
const NOTE_OFFSET: usize = 0x200;

/// One PT_LOAD of `code` at physical address `load`, `memsz` bytes in
/// memory (at least the code's; the rest is bss), entered at `load`.
#[derive(Debug, Clone)]
pub struct TestElf {
    pub load: u64,
    pub code: Vec<u8>,
    pub memsz: u64,
    /// Add a PHYS32_ENTRY note pointing at `load`.
    pub pvh: bool,
}

impl TestElf {
    /// A PVH kernel of `code` at 1 MiB.
    pub fn pvh(code: &[u8]) -> Self {
        Self {
            load: 0x10_0000,
            code: code.to_vec(),
            memsz: code.len() as u64,
            pvh: true,
        }
    }

    /// The file's bytes.
    pub fn build(&self) -> Vec<u8> {
        // The PVH entry is a 32-bit address, and a loadable segment's
        // address must agree with its page-aligned file offset.
        debug_assert!(self.load < 1 << 32 || !self.pvh, "a PVH entry below 4 GiB");
        debug_assert!(
            self.load.is_multiple_of(0x1000),
            "a page-aligned load address"
        );
        let mut f = vec![0u8; CODE_OFFSET];
        let mut put = |at: usize, v: &[u8]| f[at..at + v.len()].copy_from_slice(v);
        put(0, &[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]); // 64-bit, LE, v1
        put(16, &2u16.to_le_bytes()); // ET_EXEC
        put(18, &62u16.to_le_bytes()); // x86-64
        put(20, &1u32.to_le_bytes());
        put(24, &self.load.to_le_bytes()); // e_entry
        put(32, &64u64.to_le_bytes()); // e_phoff
        put(52, &64u16.to_le_bytes()); // e_ehsize
        put(54, &56u16.to_le_bytes()); // e_phentsize
        put(56, &(1 + u16::from(self.pvh)).to_le_bytes()); // e_phnum
        let filesz = self.code.len() as u64;
        let load = [
            &PT_LOAD.to_le_bytes()[..],
            &7u32.to_le_bytes(), // RWX
            &(CODE_OFFSET as u64).to_le_bytes(),
            &self.load.to_le_bytes(), // vaddr
            &self.load.to_le_bytes(), // paddr
            &filesz.to_le_bytes(),
            &self.memsz.max(filesz).to_le_bytes(),
            &0x1000u64.to_le_bytes(),
        ]
        .concat();
        put(64, &load);
        if self.pvh {
            // namesz, descsz, type, "Xen\0", then the 32-bit entry address
            // (as 8 bytes).
            let note = [
                &4u32.to_le_bytes()[..],
                &8u32.to_le_bytes(),
                &XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes(),
                b"Xen\0",
                &self.load.to_le_bytes(),
            ]
            .concat();
            let header = [
                &PT_NOTE.to_le_bytes()[..],
                &4u32.to_le_bytes(),
                &(NOTE_OFFSET as u64).to_le_bytes(),
                &0u64.to_le_bytes(),
                &0u64.to_le_bytes(),
                &(note.len() as u64).to_le_bytes(),
                &(note.len() as u64).to_le_bytes(),
                &4u64.to_le_bytes(),
            ]
            .concat();
            put(64 + 56, &header);
            put(NOTE_OFFSET, &note);
        }
        f.extend_from_slice(&self.code);
        f
    }
}
