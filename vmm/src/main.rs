//! aurae-vmm: boot a microVM from the command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use vmm::seccomp::{self, ThreadKind};
use vmm::{Console, DiskConfig, ExitReason, Vm, VmConfig};

#[derive(Parser)]
#[command(name = "aurae-vmm", about = "Aurae's KVM microVM monitor", version)]
struct Cli {
    /// bzImage or ELF vmlinux.
    #[arg(long)]
    kernel: PathBuf,
    /// cpio archive; repeat to load several back to back.
    #[arg(long)]
    initrd: Vec<PathBuf>,
    #[arg(
        long,
        default_value = "console=ttyS0 reboot=t panic=-1 8250.nr_uarts=1"
    )]
    cmdline: String,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    mem: u64,
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// An existing TAP interface for virtio-net; repeat for more (eth0,
    /// eth1... in the guest). Each guest MAC is derived from its TAP's name.
    #[arg(long)]
    tap: Vec<String>,
    /// The guest's MAC on one of the TAPs, as TAP=XX:XX:XX:XX:XX:XX
    /// (unicast); repeatable.
    #[arg(long, value_parser = parse_mac)]
    mac: Vec<(String, [u8; 6])>,
    /// A raw disk image; append ":ro" for read-only. Repeatable.
    #[arg(long)]
    disk: Vec<String>,
    /// A host folder shared over virtio-fs, as TAG=PATH; the guest mounts
    /// it with `mount -t virtiofs TAG <dir>`. Repeatable.
    #[arg(long)]
    fs: Vec<vmm::FsConfig>,
    /// Serial console output: a file path, "stdout", or "none".
    #[arg(long, default_value = "stdout")]
    console: String,
    /// Let the guest run KVM itself (SVM/VMX CPUID bits).
    #[arg(long)]
    nested: bool,
    /// Back guest memory with transparent huge pages where the host has
    /// them (recommended for Linux guests).
    #[arg(long)]
    huge_pages: bool,
    /// A virtio-vsock device: the guest's CID and the Unix socket for host
    /// connections, as CID:PATH (the path must not exist).
    #[arg(long)]
    vsock: Option<vmm::VsockConfig>,
    /// Let the guest stop the VM with an exit status of its choice, by
    /// writing it to port 0x501 (test guests).
    #[arg(long)]
    debug_exit: bool,
    /// Leave out the virtio-rng device.
    #[arg(long)]
    no_rng: bool,
    /// Stop the VM after this many seconds.
    #[arg(long)]
    timeout: Option<u64>,
}

/// How long ago this process was created (forked), from its start time in
/// /proc/self/stat (kernel clock ticks, so to about 10 ms).
fn since_start() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses; start time is
    // field 22 overall, the 20th after it.
    let rest = stat.rsplit_once(')')?.1;
    let ticks: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|h| *h > 0)? as u64;
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).ok()?;
    let now = Duration::new(now.tv_sec() as u64, now.tv_nsec() as u32);
    now.checked_sub(Duration::from_millis(ticks * 1000 / hz))
}

/// Printed on stderr when SIGUSR1 asks the guest to shut down (auraed
/// reads it to tell a requested shutdown from the guest's own).
const ASKED_LINE: &str = "aurae-vmm: asked the guest to shut down (Ctrl-Alt-Del)";

fn main() {
    let start_to_main = since_start();
    // SIGTERM and SIGINT stop the VM; SIGUSR1 asks the guest to shut down
    // (Ctrl-Alt-Del), and the VM runs on until it does. Blocked first, so
    // that one sent while the VM is being built waits for the signal
    // thread instead of killing the VMM (every thread inherits the mask).
    use nix::sys::signal::Signal;
    let mut signals = nix::sys::signal::SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGUSR1);
    // pthread_sigmask fails only for a bad `how` (EINVAL), which
    // `thread_block` never passes.
    let _ = signals.thread_block();
    let cli = Cli::parse();
    let disks = cli
        .disk
        .iter()
        .map(|d| match d.strip_suffix(":ro") {
            Some(p) => DiskConfig {
                path: p.into(),
                read_only: true,
            },
            None => DiskConfig {
                path: d.into(),
                read_only: false,
            },
        })
        .collect();
    let console = match cli.console.as_str() {
        "stdout" => Console::Stdout,
        "none" => Console::None,
        path => Console::File(path.into()),
    };
    let config = VmConfig {
        kernel: cli.kernel,
        initrds: cli.initrd,
        cmdline: cli.cmdline,
        mem_mib: cli.mem,
        vcpus: cli.vcpus,
        taps: cli.tap,
        macs: cli.mac,
        disks,
        shares: cli.fs,
        console,
        nested: cli.nested,
        huge_pages: cli.huge_pages,
        rng: !cli.no_rng,
        vsock: cli.vsock,
        flat_entry: None,
        debug_exit: cli.debug_exit,
    };
    // A diagnostic: the boot vCPU's instruction pointer every millisecond,
    // written to this file as "<microseconds> <rip>" lines when the VM
    // stops (resolve them with `nm vmlinux`). Opened first: a bad path
    // fails before the VM creates anything, and once the VM runs this
    // thread may open no file.
    let profile = match std::env::var_os("AURAE_VMM_GUEST_PROFILE") {
        None => None,
        Some(path) => match std::fs::File::create(&path) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("aurae-vmm: AURAE_VMM_GUEST_PROFILE {path:?}: {e}");
                std::process::exit(2);
            }
        },
    };
    let mut vm = match Vm::new(config) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("aurae-vmm: {}", vmm::error_chain(&e));
            std::process::exit(2);
        }
    };
    let phases: Vec<String> = vm
        .build_phases()
        .iter()
        .map(|(what, took)| format!("{what} {:.1}", took.as_secs_f64() * 1000.0))
        .collect();
    eprintln!(
        "aurae-vmm: process start to main {} ms; VM built (ms): {}; huge pages advised: {}",
        start_to_main.map_or("?".into(), |d| d.as_millis().to_string()),
        phases.join(", "),
        if vm.huge_pages_advised() { "yes" } else { "no" }
    );
    let stopper = vm.stop_handle();
    std::thread::spawn(move || {
        // It only waits for signals, and stops the VM or asks the guest.
        if let Err(e) = seccomp::apply(ThreadKind::Control) {
            stopper.fail(format!(
                "the signal thread's seccomp filter: {}",
                vmm::error_chain(&e)
            ));
            return;
        }
        loop {
            match signals.wait() {
                Ok(Signal::SIGUSR1) => {
                    eprintln!("{ASKED_LINE}");
                    stopper.ask_guest_to_shut_down();
                }
                // sigwait fails only for a bad set; stop rather than spin.
                _ => {
                    stopper.stop();
                    return;
                }
            }
        }
    });
    if profile.is_some() {
        vm.profile_guest();
    }
    if let Err(e) = vm.run() {
        eprintln!("aurae-vmm: starting the VM: {}", vmm::error_chain(&e));
        drop(vm);
        std::process::exit(2);
    }
    // From here this thread only waits, reports and cleans up.
    if let Err(e) = seccomp::apply(ThreadKind::Control) {
        eprintln!(
            "aurae-vmm: this thread's seccomp filter: {}",
            vmm::error_chain(&e)
        );
        vm.stop();
        vm.wait(None);
        drop(vm);
        std::process::exit(2);
    }
    let reason = match vm.wait(cli.timeout.map(Duration::from_secs)) {
        Some(r) => r,
        None => {
            vm.stop();
            vm.wait(None).unwrap_or(ExitReason::Stopped)
        }
    };
    if let Some(t) = vm.boot_time() {
        eprintln!(
            "aurae-vmm: boot timer: /init started {:.1} ms after launch ({:.2} CPU ms)",
            t.as_secs_f64() * 1000.0,
            vm.boot_cpu().unwrap_or_default().as_secs_f64() * 1000.0
        );
    }
    if let Some(m) = vm.vsock_metrics() {
        let n = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        eprintln!(
            "aurae-vmm: vsock: {} packets from the guest, {} to it, {} connections, {} resets ({} by the guest), {} dropped",
            n(&m.tx_packets),
            n(&m.rx_packets),
            n(&m.connections),
            n(&m.resets),
            n(&m.guest_resets),
            n(&m.dropped)
        );
    }
    if let Some(mut file) = profile {
        let samples: String = vm
            .guest_samples()
            .iter()
            .map(|(us, rip)| format!("{us} {rip:x}\n"))
            .collect();
        if let Err(e) = std::io::Write::write_all(&mut file, samples.as_bytes()) {
            eprintln!("aurae-vmm: writing the guest profile: {e}");
        }
    }
    eprintln!("aurae-vmm: VM stopped: {reason:?}");
    // Dropped here, as process::exit runs no destructors: the VM's files
    // (the vsock socket) go with it.
    drop(vm);
    std::process::exit(match reason {
        ExitReason::Shutdown | ExitReason::Reset | ExitReason::PowerOff | ExitReason::Stopped => 0,
        ExitReason::DebugExit(v) => i32::from(v),
        ExitReason::Error(_) => 1,
    });
}

/// `TAP=XX:XX:XX:XX:XX:XX`.
fn parse_mac(s: &str) -> Result<(String, [u8; 6]), String> {
    let (tap, mac) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected TAP=XX:XX:XX:XX:XX:XX"))?;
    let bytes: Vec<u8> = mac
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{mac:?} is not a MAC address"))?;
    let mac: [u8; 6] = bytes
        .try_into()
        .map_err(|_| format!("{mac:?} is not six bytes"))?;
    Ok((tap.to_string(), mac))
}
