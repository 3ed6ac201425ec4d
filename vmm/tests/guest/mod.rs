//! Test guests: 64-bit code assembled with iced-x86, and the virtqueue
//! layout a driver would set up, written into guest memory by the test.

#![allow(dead_code)]

use iced_x86::code_asm::*;
use vmm::devices::virtio::mmio::reg;
use vmm::Vm;

/// Where the code is loaded and entered.
pub const CODE: u64 = 0x10_0000;
/// Where guests store what they read, for the test to check.
pub const RESULTS: u64 = 0x20_0000;
pub const MMIO: u64 = 0xd000_0000;
pub const QUEUE_SIZE: u32 = 16;
const DEBUG_EXIT: u32 = 0x501;

/// Reports the running test as skipped, with `reason`: on stderr, and in
/// the file `AURAE_SKIP_LOG` names (where `cargo xtask test` collects the
/// skips it prints), so that a skip never passes for a pass. The same
/// format as `aurae_tests::report_skip`, which these tests can't use: the
/// vmm crate's tests don't depend on the daemon's test harness.
pub fn skip(reason: &str) {
    let line = format!(
        "SKIP {}: {reason}",
        std::thread::current().name().unwrap_or("a vmm test")
    );
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("AURAE_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            // One write: tests that skip at once must not interleave.
            let _ = f.write_all(format!("{line}\n").as_bytes());
        }
    }
}

/// Whether /dev/kvm can be used; reports the test as skipped if not.
pub fn kvm_or_skip() -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            skip(&format!("/dev/kvm is not usable here ({e})"));
            false
        }
    }
}

/// Polls `check` every 10 ms for at most 10 s.
pub fn eventually(mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    false
}

/// Bytes waiting to be read in the pipe `fd` (FIONREAD). A pipe holds
/// 64 KiB by default: once that much waits, its next write blocks.
pub fn pipe_queued(fd: &impl std::os::fd::AsRawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD on a descriptor the caller holds writes one int
    // into `n`.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
    usize::try_from(n).unwrap_or(0)
}

/// (thread name, seccomp mode) of each thread under `tasks`, a
/// `/proc/<pid>/task` directory.
pub fn seccomp_modes(tasks: &str) -> Vec<(String, String)> {
    let tasks = std::fs::read_dir(tasks).expect("tasks");
    tasks
        .flatten()
        .map(|task| {
            let read = |f: &str| std::fs::read_to_string(task.path().join(f)).unwrap_or_default();
            let mode = read("status")
                .lines()
                .find_map(|l| l.strip_prefix("Seccomp:").map(|m| m.trim().to_string()))
                .unwrap_or_default();
            (read("comm").trim().to_string(), mode)
        })
        .collect()
}

pub struct Program {
    a: CodeAssembler,
}

impl Program {
    pub fn new() -> Self {
        Self {
            a: CodeAssembler::new(64).expect("assembler"),
        }
    }

    pub fn bytes(&mut self) -> Vec<u8> {
        self.a.assemble(CODE).expect("assemble")
    }

    pub fn outb(&mut self, port: u32, value: u8) {
        self.a.mov(dx, port).expect("mov");
        self.a.mov(al, u32::from(value)).expect("mov");
        self.a.out(dx, al).expect("out");
    }

    pub fn inb_to(&mut self, port: u32, dst: u64) {
        self.a.mov(dx, port).expect("mov");
        self.a.in_(al, dx).expect("in");
        self.a.mov(rbx, dst).expect("mov");
        self.a.mov(byte_ptr(rbx), al).expect("store");
    }

    pub fn read32_to(&mut self, src: u64, dst: u64) {
        self.a.mov(rbx, src).expect("mov");
        self.a.mov(eax, dword_ptr(rbx)).expect("load");
        self.a.mov(rbx, dst).expect("mov");
        self.a.mov(dword_ptr(rbx), eax).expect("store");
    }

    pub fn write32(&mut self, addr: u64, value: u32) {
        self.a.mov(rbx, addr).expect("mov");
        self.a.mov(eax, value).expect("mov");
        self.a.mov(dword_ptr(rbx), eax).expect("store");
    }

    /// Spins until the 16-bit value at `addr` equals `expected`.
    pub fn poll16(&mut self, addr: u64, expected: u32) {
        let mut top = self.a.create_label();
        self.a.set_label(&mut top).expect("label");
        self.a.mov(rbx, addr).expect("mov");
        self.a.movzx(eax, word_ptr(rbx)).expect("load");
        self.a.cmp(eax, expected).expect("cmp");
        self.a.jne(top).expect("jne");
    }

    /// Loads an empty IDT (the zeroed descriptor at `scratch`) and raises
    /// an exception: it can't be delivered, nor can the double fault, so
    /// the CPU shuts down (a triple fault).
    pub fn triple_fault(&mut self, scratch: u64) {
        self.a.mov(rbx, scratch).expect("mov");
        self.a.lidt(ptr(rbx)).expect("lidt");
        self.a.int3().expect("int3");
        self.spin();
    }

    /// Writes `byte` to the serial port forever.
    pub fn flood_serial(&mut self, byte: u8) {
        self.a.mov(dx, 0x3f8u32).expect("mov");
        self.a.mov(al, u32::from(byte)).expect("mov");
        let mut top = self.a.create_label();
        self.a.set_label(&mut top).expect("label");
        self.a.out(dx, al).expect("out");
        self.a.jmp(top).expect("jmp");
    }

    /// Polls the i8042 until the keyboard sends `code` (scan code set 2),
    /// counting the bytes before it at `count` (a 32-bit counter).
    pub fn wait_for_key(&mut self, code: u8, count: u64) {
        let mut top = self.a.create_label();
        self.a.set_label(&mut top).expect("label");
        self.a.in_(al, 0x64).expect("in");
        self.a.test(al, 1).expect("test");
        self.a.jz(top).expect("jz");
        self.a.in_(al, 0x60).expect("in");
        self.a.mov(rbx, count).expect("mov");
        self.a.add(dword_ptr(rbx), 1).expect("add");
        self.a.cmp(al, u32::from(code)).expect("cmp");
        self.a.jne(top).expect("jne");
    }

    pub fn spin(&mut self) {
        let mut top = self.a.create_label();
        self.a.set_label(&mut top).expect("label");
        self.a.jmp(top).expect("jmp");
    }

    /// Stops the VM with `code` through the debug exit port.
    pub fn exit(&mut self, code: u8) {
        self.outb(DEBUG_EXIT, code);
        self.spin();
    }

    /// The driver side of virtio-mmio, up to DRIVER_OK, for `queues`.
    pub fn virtio_bring_up(&mut self, base: u64, queues: &[QueueLayout]) {
        self.write32(base + reg::STATUS, 1);
        self.write32(base + reg::STATUS, 3);
        self.write32(base + reg::DRIVER_FEATURES_SEL, 1);
        self.write32(base + reg::DRIVER_FEATURES, 1);
        self.write32(base + reg::STATUS, 0xb);
        for (i, q) in queues.iter().enumerate() {
            self.write32(base + reg::QUEUE_SEL, i as u32);
            self.write32(base + reg::QUEUE_NUM, QUEUE_SIZE);
            self.write32(base + reg::QUEUE_DESC_LOW, q.desc as u32);
            self.write32(base + reg::QUEUE_AVAIL_LOW, q.avail as u32);
            self.write32(base + reg::QUEUE_USED_LOW, q.used as u32);
            self.write32(base + reg::QUEUE_READY, 1);
        }
        self.write32(base + reg::STATUS, 0xf);
    }
}

/// A split virtqueue of QUEUE_SIZE entries in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct QueueLayout {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

impl QueueLayout {
    pub fn at(base: u64) -> Self {
        Self {
            desc: base,
            avail: base + 0x800,
            used: base + 0x1000,
        }
    }

    /// Writes a chain of (addr, len, device-writable) buffers from `head`.
    pub fn write_chain(&self, vm: &Vm, head: u16, bufs: &[(u64, u32, bool)]) {
        for (i, (addr, len, writable)) in bufs.iter().enumerate() {
            let idx = head + i as u16;
            let mut flags = if *writable { 2u16 } else { 0 };
            if i + 1 < bufs.len() {
                flags |= 1;
            }
            let mut d = addr.to_le_bytes().to_vec();
            d.extend(len.to_le_bytes());
            d.extend(flags.to_le_bytes());
            d.extend((idx + 1).to_le_bytes());
            vm.write_guest(self.desc + u64::from(idx) * 16, &d)
                .expect("descriptor");
        }
    }

    /// Puts `heads` in the avail ring and sets its index.
    pub fn publish(&self, vm: &Vm, heads: &[u16]) {
        for (i, h) in heads.iter().enumerate() {
            vm.write_guest(self.avail + 4 + i as u64 * 2, &h.to_le_bytes())
                .expect("ring");
        }
        vm.write_guest(self.avail + 2, &(heads.len() as u16).to_le_bytes())
            .expect("idx");
    }

    pub fn used_elem(&self, vm: &Vm, pos: u64) -> (u32, u32) {
        let b = vm.read_guest(self.used + 4 + pos * 8, 8).expect("used");
        (
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        )
    }
}
