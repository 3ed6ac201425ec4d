//! An idle VM costs its VMM nothing: the device event loop sleeps until a
//! device has work, and the VM's stop wakes it at once. (A file of its own,
//! so that no other test's VM runs in this process.)

mod guest;

use std::time::{Duration, Instant};

use guest::{kvm_or_skip, Program};
use vmm::{Console, ExitReason, Vm, VmConfig};

/// Voluntary context switches of the thread named `name` in this process.
fn switches(name: &str) -> Option<u64> {
    std::fs::read_dir("/proc/self/task")
        .ok()?
        .flatten()
        .find_map(|t| {
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            if comm.trim() != name {
                return None;
            }
            std::fs::read_to_string(t.path().join("status"))
                .ok()?
                .lines()
                .find_map(|l| {
                    l.strip_prefix("voluntary_ctxt_switches:")?
                        .trim()
                        .parse()
                        .ok()
                })
        })
}

#[test]
fn the_event_loop_sleeps_while_the_vm_is_idle_and_wakes_to_stop() {
    if !kvm_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let code = dir.path().join("guest.bin");
    let mut p = Program::new();
    p.spin();
    std::fs::write(&code, p.bytes()).expect("code");
    let mut vm = Vm::new(VmConfig {
        kernel: code,
        mem_mib: 64,
        flat_entry: Some(guest::CODE),
        console: Console::None,
        ..VmConfig::default()
    })
    .expect("vm");
    vm.run().expect("run");
    std::thread::sleep(Duration::from_millis(100));
    let before = switches("vmm-events").expect("the event thread");
    std::thread::sleep(Duration::from_millis(600));
    let after = switches("vmm-events").expect("the event thread");
    assert!(
        after - before <= 1,
        "the idle event loop woke {} times in 600 ms",
        after - before
    );
    let stopping = Instant::now();
    vm.stop();
    assert_eq!(
        vm.wait(Some(Duration::from_secs(20))),
        Some(ExitReason::Stopped)
    );
    assert!(
        stopping.elapsed() < Duration::from_millis(500),
        "stopping took {:?}",
        stopping.elapsed()
    );
}
