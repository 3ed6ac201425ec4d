//! guest-init: PID 1 of an aurae guest.
//!
//! As PID 1 it mounts the file systems (with a pure cgroup v2 hierarchy),
//! sets the hostname and a pod's sysctls, configures `lo` and `eth0` from
//! the kernel command line, starts the guest auraed (`guest-init serve`, the auraed library in
//! nested mode, on eth0 with mTLS), reaps orphans, and powers off or reboots
//! cleanly when asked (SIGTERM, SIGINT, SIGPWR) or when auraed exits,
//! printing the reason on the console.

mod bootparams;
mod mounts;
mod network;
mod serve;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

use bootparams::BootParams;

fn say(msg: &str) {
    eprintln!("aurae-guest-init: {msg}");
}

fn uptime() -> String {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|u| u.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// Prints the kernel's log so far with its timestamps (`aurae.bootlog=1`):
/// a boot with a quiet console can be profiled afterwards. Each read of
/// /dev/kmsg returns one record, `<prio>,<seq>,<usec>,<flags>;<text>`.
fn print_kernel_log() {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(mut kmsg) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
    else {
        say("aurae.bootlog: /dev/kmsg is not readable");
        return;
    };
    let mut buf = vec![0u8; 8192];
    // Bounded: the log holds a finite number of records, and a read past
    // the last one fails with EAGAIN.
    for _ in 0..100_000 {
        let n = match kmsg.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            // EPIPE: a record was overwritten while reading; go on.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(_) => break,
        };
        let record = String::from_utf8_lossy(&buf[..n]);
        let Some((head, text)) = record.split_once(';') else {
            continue;
        };
        let usec: u64 = head
            .split(',')
            .nth(2)
            .and_then(|u| u.parse().ok())
            .unwrap_or(0);
        let text = text.lines().next().unwrap_or_default();
        eprintln!("[{:5}.{:06}] {text}", usec / 1_000_000, usec % 1_000_000);
    }
}

/// Tells the VMM's boot timer that /init has started: a write of 123 to
/// I/O port 0x440 (through /dev/port). Elsewhere the write goes nowhere.
fn boot_timer() {
    use std::os::unix::fs::FileExt;
    if let Ok(port) = std::fs::OpenOptions::new().write(true).open("/dev/port") {
        let _ = port.write_at(&[123], 0x440);
    }
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("serve") {
        if let Err(e) = serve::run() {
            eprintln!("auraed (guest): {e:#}");
            std::process::exit(1);
        }
        return;
    }
    if std::process::id() != 1 {
        eprintln!("guest-init runs as PID 1 (or as `guest-init serve`)");
        std::process::exit(2);
    }
    let mut poweroff = false;
    let reason = match boot(&mut poweroff) {
        Ok((child, params)) => supervise(child, &params),
        Err(e) => format!("fatal error: {e:#}"),
    };
    shutdown(&reason, poweroff)
}

fn boot(poweroff: &mut bool) -> anyhow::Result<(Child, BootParams)> {
    // First thing: tell the VMM's boot timer that /init runs (the base
    // initramfs carries /dev/port for this).
    boot_timer();
    mounts::root_on_its_own_mount()?;
    mounts::mount_all()?;
    say(&format!("/init started, uptime {}s", uptime()));
    let cmdline = std::fs::read_to_string("/proc/cmdline").context("reading /proc/cmdline")?;
    let params = BootParams::parse(&cmdline).map_err(anyhow::Error::msg)?;
    *poweroff = params.poweroff;
    if let Some(tag) = &params.volumes {
        mounts::volumes(tag)?;
    }
    if params.bootlog {
        print_kernel_log();
    }
    nix::unistd::sethostname(&params.name).context("setting the hostname")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(network::configure(&params))?;
    drop(rt);
    // After the network's own settings, so the pod's win.
    pod_sysctls()?;
    // Signals for PID 1 are handled synchronously with sigwait.
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&pid1_signals()), None)?;
    let child = Command::new("/proc/self/exe")
        .arg("serve")
        .spawn()
        .context("starting the guest auraed")?;
    say(&format!(
        "auraed started (pid {}), serving on port {}",
        child.id(),
        params.port
    ));
    Ok((child, params))
}

/// Sets a microVM pod's sysctls, if its parent put them into the initrd: in
/// the guest's own namespaces, which are the pod's. One the kernel refuses
/// stops the boot, naming it on the console.
fn pod_sysctls() -> anyhow::Result<()> {
    use auraed::sys::ns_sysctl::{parse_file, write_here, POD_FILE};
    let text = match std::fs::read_to_string(POD_FILE) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {POD_FILE}")),
    };
    let sysctls = parse_file(&text).with_context(|| format!("the pod's sysctls ({POD_FILE})"))?;
    write_here(&sysctls).context("setting the pod's sysctls")?;
    say(&format!("the pod's {} sysctls set", sysctls.len()));
    Ok(())
}

/// The signals PID 1 waits for: children exiting, and shutdown requests.
fn pid1_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGPWR,
    ] {
        set.add(s);
    }
    set
}

/// Reaps orphans until auraed exits or a shutdown is requested.
fn supervise(child: Child, _params: &BootParams) -> String {
    let daemon = nix::unistd::Pid::from_raw(child.id() as i32);
    let set = pid1_signals();
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(pid, code)) if pid == daemon => {
                        return format!("auraed exited with code {code}")
                    }
                    Ok(WaitStatus::Signaled(pid, sig, _)) if pid == daemon => {
                        return format!("auraed was killed by {sig}")
                    }
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(_) => continue,
                }
            },
            Ok(sig) => {
                stop_daemon(daemon);
                return format!("shutdown requested ({sig})");
            }
            Err(e) => return format!("waiting for signals failed: {e}"),
        }
    }
}

fn stop_daemon(daemon: nix::unistd::Pid) {
    let _ = nix::sys::signal::kill(daemon, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match waitpid(daemon, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(20)),
            _ => return,
        }
    }
}

fn shutdown(reason: &str, poweroff: bool) -> ! {
    say(&format!("shutting down: {reason}"));
    // Everything else goes, then the file systems are synced.
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-1), Signal::SIGKILL);
    nix::unistd::sync();
    let how = if poweroff {
        nix::sys::reboot::RebootMode::RB_POWER_OFF
    } else {
        nix::sys::reboot::RebootMode::RB_AUTOBOOT
    };
    let _ = nix::sys::reboot::reboot(how);
    // reboot(2) only returns on error; PID 1 must not exit.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
