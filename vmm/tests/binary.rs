//! The `aurae-vmm` binary with a tiny PVH guest on /dev/kvm: every one of
//! its threads runs under a seccomp filter once the VM runs (the main and
//! signal threads too), SIGTERM stops the VM cleanly, and what it leaves is
//! what it should: its report, the guest profile, and no vsock socket file.

mod guest;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use guest::{eventually, kvm_or_skip};
use vmm::boot::test_elf::TestElf;

/// 32-bit PVH entry: out 0x3f8 'X'; then spin (jmp $).
const WRITE_X_AND_SPIN: [u8; 9] = [0x66, 0xba, 0xf8, 0x03, 0xb0, b'X', 0xee, 0xeb, 0xfe];

/// A tiny PVH kernel of `code`, in a fresh directory.
fn tiny_kernel(code: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let kernel = dir.path().join("tiny.elf");
    std::fs::write(&kernel, TestElf::pvh(code).build()).expect("kernel");
    (dir, kernel)
}

#[test]
fn every_thread_of_the_binary_is_filtered_and_sigterm_stops_it_cleanly() {
    if !kvm_or_skip() {
        return;
    }
    let (dir, kernel) = tiny_kernel(&WRITE_X_AND_SPIN);
    let console = dir.path().join("console.log");
    let socket = dir.path().join("vsock.sock");
    let profile = dir.path().join("profile.txt");
    let child = Command::new(env!("CARGO_BIN_EXE_aurae-vmm"))
        .arg("--kernel")
        .arg(&kernel)
        .args(["--mem", "16", "--no-rng", "--timeout", "60"])
        .arg("--console")
        .arg(&console)
        .arg("--vsock")
        .arg(format!("3:{}", socket.display()))
        .env("AURAE_VMM_GUEST_PROFILE", &profile)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("aurae-vmm");
    let pid = child.id();
    let ran = eventually(|| std::fs::read(&console).is_ok_and(|c| c.contains(&b'X')));
    // The main thread applies its filter right after starting the VM.
    let mut modes = Vec::new();
    let filtered = ran
        && eventually(|| {
            modes = guest::seccomp_modes(&format!("/proc/{pid}/task"));
            modes.iter().all(|(_, m)| m == "2")
        });
    let socket_existed = socket.exists();
    // SAFETY: kill(2) on our own child, which has not been reaped.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let killed = Instant::now();
    let out = child.wait_with_output().expect("wait");
    // Well before --timeout, and without giving up on a thread: the signal
    // thread stopped the VM, and the filtered main thread kicked vcpu0 out
    // of the guest and joined it.
    let took = killed.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(ran, "the guest wrote nothing; stderr: {stderr}");
    assert!(filtered, "threads (name, seccomp mode): {modes:?}");
    // main, the signal thread, vcpu0, the event loop and the profiler.
    assert!(modes.len() >= 5, "{modes:?}");
    for name in ["vcpu0", "vmm-events", "guest-profiler"] {
        assert!(modes.iter().any(|(n, _)| n == name), "{name}: {modes:?}");
    }
    assert!(socket_existed, "the vsock socket was never made");
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert!(stderr.contains("VM stopped: Stopped"), "{stderr}");
    assert!(!stderr.contains("did not stop"), "{stderr}");
    assert!(
        took < Duration::from_secs(3),
        "SIGTERM to exit took {took:?}"
    );
    assert!(!socket.exists(), "the vsock socket file was left behind");
    let samples = std::fs::read_to_string(&profile).expect("profile");
    let first = samples.lines().next().unwrap_or_default();
    let rip = first.split_whitespace().nth(1).unwrap_or_default();
    // The guest spins at 1 MiB, just past its out instruction.
    let rip = u64::from_str_radix(rip, 16).unwrap_or(0);
    assert!(
        (0x10_0000..0x10_0000 + WRITE_X_AND_SPIN.len() as u64).contains(&rip),
        "first sample {first:?}"
    );
}

/// The binary reports a bad option by its flag and exits with status 2,
/// leaving its console log alone.
#[test]
fn the_binary_names_a_bad_option_and_exits_2() {
    if !kvm_or_skip() {
        return;
    }
    let (dir, kernel) = tiny_kernel(&WRITE_X_AND_SPIN);
    let console = dir.path().join("console.log");
    std::fs::write(&console, "the last boot's log\n").expect("console");
    let kernel = kernel.to_string_lossy().into_owned();
    let cases: [(&[&str], &str); 5] = [
        (&["--kernel", "/no/such/kernel"], "--kernel"),
        (&["--kernel", &kernel, "--vcpus", "0"], "--vcpus"),
        (&["--kernel", &kernel, "--mem", "1"], "--mem"),
        (&["--kernel", &kernel, "--tap", "aurae-nosuch0"], "--tap"),
        (&["--kernel", &kernel, "--disk", "/no/such/disk"], "--disk"),
    ];
    for (args, flag) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_aurae-vmm"))
            .args(args)
            // Should one get past the checks, its guest spins: not forever.
            .args(["--timeout", "5"])
            .arg("--console")
            .arg(&console)
            .stdin(Stdio::null())
            .output()
            .expect("aurae-vmm");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.starts_with(&format!("aurae-vmm: {flag}:")),
            "{args:?}: {stderr}"
        );
    }
    // A profile file that can't be made fails before the VM makes its own
    // files (the vsock socket).
    let socket = dir.path().join("vsock.sock");
    let out = Command::new(env!("CARGO_BIN_EXE_aurae-vmm"))
        .args(["--kernel", &kernel, "--timeout", "5"])
        .arg("--console")
        .arg(&console)
        .arg("--vsock")
        .arg(format!("3:{}", socket.display()))
        .env("AURAE_VMM_GUEST_PROFILE", "/no/such/dir/profile")
        .stdin(Stdio::null())
        .output()
        .expect("aurae-vmm");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("AURAE_VMM_GUEST_PROFILE"), "{stderr}");
    assert!(!socket.exists(), "the vsock socket was left behind");
    assert_eq!(
        std::fs::read_to_string(&console).expect("console"),
        "the last boot's log\n"
    );
}

/// A console nobody reads (a full stdout pipe) blocks the vCPU in write(2),
/// where no kick gets it out. SIGTERM still ends the binary: `wait` gives up
/// on that thread after 5 s and the VMM exits, keeping guest memory mapped
/// until then rather than pulling it from under the thread.
#[test]
fn a_vcpu_stuck_on_a_full_console_does_not_keep_the_binary_from_exiting() {
    if !kvm_or_skip() {
        return;
    }
    // 32-bit: mov dx, 0x3f8; mov al, 'X'; then out dx, al forever.
    const FLOOD: [u8; 9] = [0x66, 0xba, 0xf8, 0x03, 0xb0, b'X', 0xee, 0xeb, 0xfd];
    let (_dir, kernel) = tiny_kernel(&FLOOD);
    let mut child = Command::new(env!("CARGO_BIN_EXE_aurae-vmm"))
        .arg("--kernel")
        .arg(&kernel)
        .args([
            "--mem",
            "16",
            "--no-rng",
            "--timeout",
            "60",
            "--console",
            "stdout",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("aurae-vmm");
    let pid = child.id();
    // Held open and never read.
    let _stdout = child.stdout.take();
    let mut stderr = child.stderr.take().expect("stderr");
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    // Once the pipe holds 64 KiB, the next console write blocks.
    let queued = || _stdout.as_ref().map_or(0, guest::pipe_queued);
    let blocked = eventually(|| queued() >= 65536);
    let seen = queued();
    // SAFETY: kill(2) on our own child, which has not been reaped.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let started = Instant::now();
    let mut exited = false;
    while !exited && started.elapsed() < Duration::from_secs(30) {
        exited = matches!(child.try_wait(), Ok(Some(_)));
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = started.elapsed();
    if !exited {
        let _ = child.kill();
    }
    // The status of the exit seen above (std keeps it), or of the kill.
    let status = child.wait().ok().filter(|_| exited);
    drop(_stdout);
    let stderr = stderr.join().unwrap_or_default();
    assert!(
        blocked,
        "vcpu0 never blocked on the console (wchan {seen:?})"
    );
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{stderr}");
    assert!(
        stderr.contains("VM threads did not stop; guest memory is kept mapped"),
        "{stderr}"
    );
    // One 5 s grace period, not one in `wait` and another in `Drop`.
    assert!(took < Duration::from_secs(9), "took {took:?}");
}
