//! A vCPU that won't stop (blocked writing to a console nobody reads) keeps
//! guest memory mapped after its `Vm` is gone, and the memory goes when the
//! thread ends. Alone in its test binary: it measures the process's mapped
//! memory.

mod guest;

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use guest::{eventually, kvm_or_skip, Program};
use vmm::{Console, ExitReason, Vm, VmConfig};

const MEM_MIB: u64 = 256;

/// The process's mapped memory, in MiB (VmSize).
fn mapped_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmSize:")?
                .trim()
                .strip_suffix(" kB")?
                .parse()
                .ok()
        })
        .map_or(0, |kib: u64| kib >> 10)
}

fn vcpu_thread_exists() -> bool {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks.flatten().any(|t| {
                std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "vcpu0")
            })
        })
        .unwrap_or(false)
}

#[test]
fn guest_memory_outlives_a_stuck_vcpu_thread_and_goes_with_it() {
    if !kvm_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let console = dir.path().join("console");
    nix::unistd::mkfifo(&console, nix::sys::stat::Mode::S_IRWXU).expect("fifo");
    // The reading end, opened first so that the VM's open doesn't wait.
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&console)
        .expect("reader");
    let mut p = Program::new();
    p.flood_serial(b'X');
    let code = dir.path().join("guest.bin");
    std::fs::write(&code, p.bytes()).expect("code");
    let before = mapped_mib();
    let mut vm = Vm::new(VmConfig {
        kernel: code,
        mem_mib: MEM_MIB,
        flat_entry: Some(guest::CODE),
        console: Console::File(console.clone()),
        rng: false,
        ..VmConfig::default()
    })
    .expect("build the VM");
    vm.run().expect("run");
    // Once the pipe holds 64 KiB, vcpu0 blocks in write(2).
    let full = eventually(|| guest::pipe_queued(&reader) >= 65536);
    vm.stop();
    let reason = vm.wait(Some(Duration::from_secs(10)));
    drop(vm);
    let while_stuck = mapped_mib();
    let stuck = vcpu_thread_exists();

    // Reading lets the write finish; the thread sees the stop and ends.
    let mut buf = vec![0u8; 1 << 16];
    let ended = eventually(|| {
        let _ = reader.read(&mut buf);
        !vcpu_thread_exists()
    });
    let unmapped = eventually(|| mapped_mib() + MEM_MIB / 2 < while_stuck);
    let after = mapped_mib();

    assert!(full, "the console pipe never filled");
    assert_eq!(reason, Some(ExitReason::Stopped));
    assert!(stuck, "vcpu0 should still be blocked in write(2)");
    assert!(
        while_stuck >= before + MEM_MIB,
        "guest memory stays mapped while the thread lives: {before} MiB before, {while_stuck} MiB"
    );
    assert!(ended, "vcpu0 did not end once its write finished");
    assert!(
        unmapped,
        "guest memory went with the thread: {while_stuck} MiB, then {after} MiB"
    );
}
