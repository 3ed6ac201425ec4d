//! `cargo xtask bench vmm`: our VMM against `qemu-system-x86_64 -M microvm
//! -enable-kvm`, in one run, alternating, with the same tiny PVH guest (an
//! ELF whose PVH entry writes 'X' to the serial port and exits through the
//! debug-exit port). Measured: process start to the guest's first I/O
//! (the 'X' on the console), CPU time, and peak RSS.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::resource::{getrusage, UsageWho};

use crate::deps;
use crate::stats::{median, ms};

/// 32-bit code: out 0x440 123 (our boot timer; nothing on QEMU);
/// out 0x3f8 'X'; out 0x501 0; hlt; jmp $.
const CODE: [u8; 26] = [
    0x66, 0xba, 0x40, 0x04, 0xb0, 123, 0xee, 0x66, 0xba, 0xf8, 0x03, 0xb0, b'X', 0xee, 0x66, 0xba,
    0x01, 0x05, 0xb0, 0x00, 0xee, 0xf4, 0xeb, 0xfe, 0x90, 0x90,
];

/// A minimal ELF64 with one PT_LOAD and a Xen PHYS32_ENTRY note.
pub fn tiny_pvh_elf() -> Vec<u8> {
    vmm::boot::test_elf::TestElf::pvh(&CODE).build()
}

struct Sample {
    first_io: Duration,
    cpu: Duration,
    /// Our VMM's own CPU time when the guest's first I/O (the boot timer)
    /// reached it.
    cpu_at_first_io: Option<Duration>,
    /// Peak RSS in KiB, from GNU time.
    max_rss_kib: Option<u64>,
}

fn children_cpu() -> Duration {
    getrusage(UsageWho::RUSAGE_CHILDREN)
        .map(|u| {
            let t = |tv: nix::sys::time::TimeVal| {
                Duration::new(tv.tv_sec() as u64, tv.tv_usec() as u32 * 1000)
            };
            t(u.user_time()) + t(u.system_time())
        })
        .unwrap_or_default()
}

/// Runs `cmd` until the guest's 'X' arrives and the process exits.
fn sample(mut cmd: Command) -> anyhow::Result<Sample> {
    let cpu0 = children_cpu();
    let t0 = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()?;
    let mut out = child.stdout.take().context("stdout")?;
    let mut first_io = None;
    let mut byte = [0u8; 1];
    while let Ok(1) = out.read(&mut byte) {
        if byte[0] == b'X' {
            first_io = Some(t0.elapsed());
            break;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the VMM did not exit within 10 s");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let first_io = first_io.with_context(|| {
        format!(
            "the guest printed nothing: {}",
            err.lines().take(3).collect::<Vec<_>>().join(" | ")
        )
    })?;
    let cpu_at_first_io = err.lines().find_map(|l| {
        let inner = l.split_once(" ms after launch (")?.1;
        let ms: f64 = inner.split_whitespace().next()?.parse().ok()?;
        Some(Duration::from_secs_f64(ms / 1000.0))
    });
    let max_rss_kib = err
        .lines()
        .find_map(|l| l.strip_prefix("AURAE-MAXRSS-KIB ")?.trim().parse().ok());
    Ok(Sample {
        first_io,
        cpu: children_cpu().saturating_sub(cpu0),
        cpu_at_first_io,
        max_rss_kib,
    })
}

fn ours(vmm: &Path, elf: &Path) -> Command {
    let mut c = Command::new(vmm);
    c.arg("--kernel").arg(elf).args([
        "--mem",
        "64",
        "--console",
        "stdout",
        "--no-rng",
        "--debug-exit",
    ]);
    c
}

/// `cmd` under GNU time, which reports its peak RSS alone.
fn with_rss(cmd: Command) -> Command {
    let mut c = Command::new("/usr/bin/time");
    c.args(["-f", "AURAE-MAXRSS-KIB %M"])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    c
}

fn qemu(elf: &Path) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-M",
        "microvm,x-option-roms=off,rtc=off,isa-serial=on",
        "-enable-kvm",
        "-cpu",
        "qemu64",
        "-m",
        "64",
    ])
    .args([
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-serial",
        "stdio",
    ])
    .args(["-device", "isa-debug-exit,iobase=0x501,iosize=1", "-kernel"])
    .arg(elf);
    c
}

/// Our real image inside the QEMU test host: aurae-vmm against
/// `qemu -M microvm -enable-kvm`, launch to /init and to health.
fn in_test_host(runs: usize) -> anyhow::Result<()> {
    let pass = |var: &str| (var.to_string(), std::env::var(var).unwrap_or_default());
    let lines = crate::testhost::bench(
        "bench_boot",
        runs,
        vec![pass("AURAE_GUEST_PROFILE"), pass("AURAE_BOOT_TRACE")],
    )?;
    println!(
        "\nour image inside the QEMU test host (nested KVM), medians of {runs} alternating boots:"
    );
    for l in lines {
        println!("  {l}");
    }
    Ok(())
}

pub fn run(runs: usize) -> anyhow::Result<()> {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        bail!("bench vmm needs /dev/kvm");
    }
    deps::ensure(&["qemu-system-x86", "time"])?;
    // The VMM as it ships: static, optimized.
    let vmm: PathBuf = crate::image::build_static_vmm()?;
    let dir = tempfile::tempdir()?;
    let elf = dir.path().join("tiny-pvh.elf");
    std::fs::write(&elf, tiny_pvh_elf())?;

    let rss = (0..3)
        .map(|_| sample(with_rss(ours(&vmm, &elf))).map(|s| s.max_rss_kib.unwrap_or(0)))
        .collect::<anyhow::Result<Vec<u64>>>()
        .context("aurae-vmm could not run the tiny PVH guest")?
        .into_iter()
        .max()
        .unwrap_or(0);
    let qemu_rss = sample(with_rss(qemu(&elf)))
        .ok()
        .and_then(|s| s.max_rss_kib);
    // Does QEMU run the tiny guest on this /dev/kvm at all?
    let qemu_works = match sample(qemu(&elf)) {
        Ok(_) => true,
        Err(e) => {
            println!("QEMU -M microvm -enable-kvm could not run the tiny PVH guest here: {e:#}");
            false
        }
    };
    let (mut a, mut q) = (Vec::new(), Vec::new());
    for _ in 0..runs.max(1) {
        a.push(sample(ours(&vmm, &elf))?);
        if qemu_works {
            q.push(sample(qemu(&elf))?);
        }
    }
    let first = |s: &[Sample]| median(s.iter().map(|x| x.first_io).collect());
    let cpu = |s: &[Sample]| median(s.iter().map(|x| x.cpu).collect());
    println!("\nmedians of {runs} alternating runs, tiny PVH guest, this machine's /dev/kvm:");
    println!(
        "{:<44} {:>8.2} ms wall",
        "aurae-vmm: process start -> first I/O",
        ms(first(&a))
    );
    let readies: Vec<Duration> = a.iter().filter_map(|x| x.cpu_at_first_io).collect();
    if readies.len() != a.len() {
        bail!("aurae-vmm did not report its CPU time at the boot timer");
    }
    let cpu_ready = median(readies);
    println!(
        "{:<44} {:>8.2} ms CPU (exec to the guest's first I/O)",
        "aurae-vmm: CPU to first I/O",
        ms(cpu_ready)
    );
    println!(
        "{:<44} {:>8.2} ms CPU (whole run: start, boot, exit)",
        "aurae-vmm: CPU (getrusage, tick-based)",
        ms(cpu(&a))
    );
    if qemu_works {
        println!(
            "{:<44} {:>8.2} ms wall",
            "qemu microvm: process start -> first I/O",
            ms(first(&q))
        );
        println!(
            "{:<44} {:>8.2} ms CPU",
            "qemu microvm: CPU (getrusage, tick-based)",
            ms(cpu(&q))
        );
        println!(
            "{:<44} {:>8.2}",
            "ratio (aurae / qemu), wall to first I/O",
            first(&a).as_secs_f64() / first(&q).as_secs_f64()
        );
        println!(
            "{:<44} {:>8.2}",
            "ratio (aurae / qemu), CPU",
            cpu(&a).as_secs_f64() / cpu(&q).as_secs_f64()
        );
    } else {
        println!("(no QEMU figures on this host; Firecracker publishes ≤ 8 CPU ms to ready and ≤ 5 MiB overhead)");
    }
    let target_cpu = if cpu_ready <= Duration::from_millis(4) {
        "met"
    } else {
        "NOT met"
    };
    println!(
        "{:<44} {:>8}   (target ≤ 4 CPU ms to the first I/O)",
        "aurae-vmm CPU target", target_cpu
    );
    if let Some(q) = qemu_rss {
        println!(
            "{:<44} {:>8.2} MiB",
            "qemu microvm peak RSS",
            q as f64 / 1024.0
        );
    }
    println!(
        "{:<44} {:>8.2} MiB (peak RSS; the tiny guest touches a few pages of its 64 MiB; target ≤ 3 MiB: {})",
        "aurae-vmm peak RSS",
        rss as f64 / 1024.0,
        if rss <= 3 * 1024 { "met" } else { "NOT met" }
    );
    in_test_host(runs.clamp(1, 5))
}
