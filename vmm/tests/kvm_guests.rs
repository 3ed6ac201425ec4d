//! Tier 3: the VMM against the real /dev/kvm with tiny test guests,
//! assembled here with iced-x86 and run in 64-bit mode. They exercise the
//! serial port, the i8042 reset, the boot timer, unknown ports and MMIO,
//! and each virtio device through its MMIO registers and a real request.

mod guest;

use std::time::Duration;

use guest::{kvm_or_skip, Program, RESULTS};
use vmm::devices::virtio::mmio::{reg, MAGIC, VENDOR};
use vmm::{Console, DiskConfig, ExitReason, Vm, VmConfig};

fn boot(program: &mut Program, tweak: impl FnOnce(&mut VmConfig)) -> (tempfile::TempDir, Vm) {
    let dir = tempfile::tempdir().expect("tempdir");
    let code = dir.path().join("guest.bin");
    std::fs::write(&code, program.bytes()).expect("code");
    let mut cfg = VmConfig {
        kernel: code,
        mem_mib: 64,
        flat_entry: Some(guest::CODE),
        debug_exit: true,
        console: Console::File(dir.path().join("console")),
        rng: false,
        ..VmConfig::default()
    };
    tweak(&mut cfg);
    let vm = Vm::new(cfg).expect("build the VM");
    (dir, vm)
}

fn run(vm: &mut Vm) -> ExitReason {
    vm.run().expect("run");
    vm.wait(Some(Duration::from_secs(20))).unwrap_or_else(|| {
        vm.stop();
        panic!("the guest did not stop within 20 s")
    })
}

/// A VM whose guest only spins (built, not running), and the length of
/// the guest's code.
fn spinner() -> (tempfile::TempDir, Vm, u64) {
    let mut p = Program::new();
    p.spin();
    let len = p.bytes().len() as u64;
    let (d, vm) = boot(&mut p, |_| {});
    (d, vm, len)
}

/// Stops a running VM, which must say the host asked it to.
fn stop(vm: &mut Vm) {
    vm.stop();
    assert_eq!(
        vm.wait(Some(Duration::from_secs(20))),
        Some(ExitReason::Stopped)
    );
}

#[test]
fn serial_output_reaches_the_console() {
    if !kvm_or_skip() {
        return;
    }
    let mut p = Program::new();
    for b in b"Hello, aurae\n" {
        p.outb(0x3f8, *b);
    }
    p.exit(0x31);
    let (dir, mut vm) = boot(&mut p, |_| {});
    assert_eq!(run(&mut vm), ExitReason::DebugExit(0x31));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("console")).expect("console"),
        "Hello, aurae\n"
    );
}

#[test]
fn an_i8042_reset_stops_the_vm() {
    if !kvm_or_skip() {
        return;
    }
    let mut p = Program::new();
    p.outb(0x64, 0xfe);
    p.spin();
    let (_d, mut vm) = boot(&mut p, |_| {});
    assert_eq!(run(&mut vm), ExitReason::Reset);
}

#[test]
fn ctrl_alt_del_reaches_a_guest_polling_its_keyboard() {
    if !kvm_or_skip() {
        return;
    }
    let mut p = Program::new();
    // Delete's make code comes fourth (after Ctrl, Alt and its prefix).
    p.wait_for_key(0x71, RESULTS);
    p.exit(0x42);
    let (_d, mut vm) = boot(&mut p, |_| {});
    vm.run().expect("run");
    // The guest is polling: it runs on until asked.
    assert_eq!(vm.wait(Some(Duration::from_millis(200))), None);
    vm.stop_handle().ask_guest_to_shut_down();
    assert_eq!(
        vm.wait(Some(Duration::from_secs(20))),
        Some(ExitReason::DebugExit(0x42))
    );
    assert_eq!(
        vm.read_guest(RESULTS, 4).expect("read"),
        vec![4, 0, 0, 0],
        "bytes read up to Delete"
    );
}

#[test]
fn a_triple_fault_stops_the_vm() {
    if !kvm_or_skip() {
        return;
    }
    let mut p = Program::new();
    // RESULTS is zeroed guest memory: a descriptor of an empty IDT.
    p.triple_fault(RESULTS);
    let (_d, mut vm) = boot(&mut p, |_| {});
    // KVM reports a triple fault as a shutdown; this machine's PVM KVM as
    // an internal error. Either way the VM stops and says why.
    match run(&mut vm) {
        ExitReason::Shutdown => {}
        ExitReason::Error(e) if e.contains("internal error") => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_vm_runs_once() {
    if !kvm_or_skip() {
        return;
    }
    let (_d, mut vm, _) = spinner();
    vm.run().expect("run");
    assert!(vm.run().is_err(), "a second run is refused");
    stop(&mut vm);
}

#[test]
fn the_boot_timer_records_when_init_starts() {
    if !kvm_or_skip() {
        return;
    }
    let mut p = Program::new();
    p.outb(0x440, 123);
    p.exit(1);
    let (_d, mut vm) = boot(&mut p, |_| {});
    assert!(vm.boot_time().is_none());
    assert_eq!(run(&mut vm), ExitReason::DebugExit(1));
    let t = vm.boot_time().expect("boot time recorded");
    assert!(t < Duration::from_secs(20));
}

#[test]
fn unknown_ports_and_addresses_are_ignored_and_counted() {
    if !kvm_or_skip() {
        return;
    }
    let mut p = Program::new();
    p.inb_to(0x1234, RESULTS);
    p.outb(0x1235, 7);
    p.read32_to(0xc000_0000, RESULTS + 8);
    p.write32(0xc000_0000, 5);
    p.exit(2);
    let (_d, mut vm) = boot(&mut p, |_| {});
    assert_eq!(run(&mut vm), ExitReason::DebugExit(2));
    assert_eq!(vm.read_guest(RESULTS, 1).expect("read"), vec![0xff]);
    assert_eq!(vm.read_guest(RESULTS + 8, 4).expect("read"), vec![0xff; 4]);
    let ((pio_r, pio_w), (mmio_r, mmio_w)) = vm.unknown_accesses();
    assert!(pio_r >= 1 && pio_w >= 1 && mmio_r >= 1 && mmio_w >= 1);
}

/// Reads the identification registers and the high feature word of the
/// device at `base`, brings it up with `queues` queues, and reads back its
/// status and whether its last queue is ready.
fn identify(p: &mut Program, base: u64, slot: u64, queues: u64) {
    let at = |i: u64| RESULTS + slot * 0x40 + i * 4;
    for (i, r) in [
        reg::MAGIC,
        reg::VERSION,
        reg::DEVICE_ID,
        reg::VENDOR_ID,
        reg::QUEUE_NUM_MAX,
    ]
    .iter()
    .enumerate()
    {
        p.read32_to(base + r, at(i as u64));
    }
    p.write32(base + reg::DEVICE_FEATURES_SEL, 1);
    p.read32_to(base + reg::DEVICE_FEATURES, at(5));
    let layouts: Vec<guest::QueueLayout> = (0..queues)
        .map(|q| guest::QueueLayout::at(0x40_0000 + slot * 0x1_0000 + q * 0x4000))
        .collect();
    p.virtio_bring_up(base, &layouts);
    p.read32_to(base + reg::STATUS, at(6));
    p.read32_to(base + reg::QUEUE_READY, at(7));
}

#[test]
fn every_virtio_device_answers_the_mmio_register_protocol() {
    if !kvm_or_skip() {
        return;
    }
    let disk = tempfile::NamedTempFile::new().expect("disk");
    std::fs::write(disk.path(), vec![0u8; 4096]).expect("disk");
    let sockets = tempfile::tempdir().expect("tempdir");
    let mut p = Program::new();
    // rng (1 queue), blk (1), vsock (3).
    for (slot, queues) in [(0u64, 1u64), (1, 1), (2, 3)] {
        identify(&mut p, guest::MMIO + slot * 0x1000, slot, queues);
    }
    p.exit(3);
    let path = disk.path().to_path_buf();
    let uds_path = sockets.path().join("v.sock");
    let (_d, mut vm) = boot(&mut p, |c| {
        c.rng = true;
        c.disks = vec![DiskConfig {
            path,
            read_only: false,
        }];
        c.vsock = Some(vmm::VsockConfig { cid: 3, uds_path });
    });
    assert_eq!(run(&mut vm), ExitReason::DebugExit(3));
    // rng, blk, vsock (net has its own test, with a real TAP).
    for (slot, device_id) in [(0u64, 4u32), (1, 2), (2, 19)] {
        let words: Vec<u32> = vm
            .read_guest(RESULTS + slot * 0x40, 32)
            .expect("read")
            .chunks(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(
            words[..5],
            [MAGIC, 2, device_id, VENDOR, 256],
            "device {slot}"
        );
        assert_eq!(words[5] & 1, 1, "device {slot} offers VIRTIO_F_VERSION_1");
        assert_eq!(
            words[6], 0xf,
            "device {slot}: ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK, no NEEDS_RESET"
        );
        assert_eq!(words[7], 1, "device {slot}: its queue is ready");
    }
}

#[test]
fn an_rng_request_goes_through_the_virtqueue() {
    if !kvm_or_skip() {
        return;
    }
    let mut p = Program::new();
    let q = guest::QueueLayout::at(0x30_0000);
    p.virtio_bring_up(guest::MMIO, &[q]);
    p.write32(guest::MMIO + reg::QUEUE_NOTIFY, 0);
    p.poll16(q.used + 2, 1);
    p.exit(4);
    let (_d, mut vm) = boot(&mut p, |c| c.rng = true);
    q.write_chain(&vm, 0, &[(0x40_0000, 256, true)]);
    q.publish(&vm, &[0]);
    assert_eq!(run(&mut vm), ExitReason::DebugExit(4));
    assert_eq!(q.used_elem(&vm, 0), (0, 256));
    assert_ne!(vm.read_guest(0x40_0000, 256).expect("read"), vec![0u8; 256]);
}

#[test]
fn block_reads_and_writes_go_through_the_virtqueue() {
    block_read_then_write(false);
}

/// A read-only disk serves the read and fails the write (VIRTIO_BLK_S_IOERR),
/// and the file is unchanged.
#[test]
fn a_read_only_disk_refuses_writes() {
    block_read_then_write(true);
}

fn block_read_then_write(read_only: bool) {
    if !kvm_or_skip() {
        return;
    }
    let disk = tempfile::NamedTempFile::new().expect("disk");
    let mut content = vec![0u8; 8 * 512];
    content[512..1024].fill(0x11);
    std::fs::write(disk.path(), &content).expect("disk");
    let mut p = Program::new();
    let q = guest::QueueLayout::at(0x30_0000);
    p.virtio_bring_up(guest::MMIO, &[q]);
    p.write32(guest::MMIO + reg::QUEUE_NOTIFY, 0);
    p.poll16(q.used + 2, 2);
    p.exit(5);
    let path = disk.path().to_path_buf();
    let (_d, mut vm) = boot(&mut p, |c| c.disks = vec![DiskConfig { path, read_only }]);
    // Request 1: read sector 1. Request 2: write sector 3.
    let header = |kind: u32, sector: u64| {
        let mut h = kind.to_le_bytes().to_vec();
        h.extend(0u32.to_le_bytes());
        h.extend(sector.to_le_bytes());
        h
    };
    vm.write_guest(0x40_0000, &header(0, 1)).expect("hdr");
    vm.write_guest(0x40_1000, &header(1, 3)).expect("hdr");
    vm.write_guest(0x42_0000, &[0x77; 512]).expect("data");
    q.write_chain(
        &vm,
        0,
        &[
            (0x40_0000, 16, false),
            (0x41_0000, 512, true),
            (0x40_0100, 1, true),
        ],
    );
    q.write_chain(
        &vm,
        3,
        &[
            (0x40_1000, 16, false),
            (0x42_0000, 512, false),
            (0x40_1100, 1, true),
        ],
    );
    q.publish(&vm, &[0, 3]);
    assert_eq!(run(&mut vm), ExitReason::DebugExit(5));
    assert_eq!(
        vm.read_guest(0x41_0000, 512).expect("read"),
        vec![0x11; 512]
    );
    assert_eq!(vm.read_guest(0x40_0100, 1).expect("status"), vec![0]);
    let on_disk = std::fs::read(disk.path()).expect("disk");
    if read_only {
        assert_eq!(vm.read_guest(0x40_1100, 1).expect("status"), vec![1]);
        assert_eq!(on_disk, content, "the file is unchanged");
    } else {
        assert_eq!(vm.read_guest(0x40_1100, 1).expect("status"), vec![0]);
        assert_eq!(&on_disk[3 * 512..4 * 512], &[0x77; 512][..]);
    }
}

#[test]
fn the_guest_profiler_samples_where_the_guest_runs() {
    if !kvm_or_skip() {
        return;
    }
    let (_d, mut vm, len) = spinner();
    vm.profile_guest();
    vm.run().expect("run");
    std::thread::sleep(Duration::from_millis(200));
    stop(&mut vm);
    let samples = vm.guest_samples();
    assert!(samples.len() >= 10, "{} samples in 200 ms", samples.len());
    for (micros, rip) in &samples {
        assert!(
            (guest::CODE..guest::CODE + len).contains(rip),
            "a sample at {rip:#x} is outside the guest's loop"
        );
        assert!(*micros < 20_000_000);
    }
    assert!(
        samples.windows(2).all(|w| w[0].0 <= w[1].0),
        "in time order"
    );
}

/// The threads that handle guest exits and device I/O run under their
/// seccomp filters (mode 2) once the VM runs.
#[test]
fn every_vm_thread_runs_under_its_seccomp_filter() {
    if !kvm_or_skip() {
        return;
    }
    let (_d, mut vm, _) = spinner();
    vm.run().expect("run");
    std::thread::sleep(Duration::from_millis(100));
    let checked: Vec<(String, String)> = guest::seccomp_modes("/proc/self/task")
        .into_iter()
        .filter(|(name, _)| name.starts_with("vcpu") || name == "vmm-events")
        .collect();
    stop(&mut vm);
    assert!(
        checked.iter().any(|(n, _)| n == "vcpu0") && checked.iter().any(|(n, _)| n == "vmm-events"),
        "found {checked:?}"
    );
    assert!(checked.iter().all(|(_, m)| m == "2"), "{checked:?}");
}

/// Without `debug_exit` (the binary's default), port 0x501 is just an
/// unknown port: the guest can't choose the VMM's exit status.
#[test]
fn the_debug_exit_port_is_off_unless_asked_for() {
    if !kvm_or_skip() {
        return;
    }
    let mut p = Program::new();
    p.outb(0x501, 7);
    p.outb(0x64, 0xfe);
    p.spin();
    let (_d, mut vm) = boot(&mut p, |c| c.debug_exit = false);
    assert_eq!(run(&mut vm), ExitReason::Reset);
    let ((_, pio_writes), _) = vm.unknown_accesses();
    assert!(pio_writes >= 1, "{pio_writes}");
}
