//! What the benchmarks inside the QEMU test host share: a quiet start for
//! each boot (scrubbed free memory, the idle share before it), medians, and
//! a VMM's resident memory outside its guest's RAM.

use std::time::Duration;

/// The test host's idle share over `window`, from /proc/stat: near 1.0
/// when nothing (a previous guest's teardown, say) runs in the background.
pub fn idle_share(window: Duration) -> f64 {
    let read = || -> (u64, u64) {
        let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let cpu: Vec<u64> = text
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|n| n.parse().ok())
            .collect();
        let idle = cpu.get(3).copied().unwrap_or(0) + cpu.get(4).copied().unwrap_or(0);
        (idle, cpu.iter().sum())
    };
    let (i0, t0) = read();
    std::thread::sleep(window);
    let (i1, t1) = read();
    i1.saturating_sub(i0) as f64 / t1.saturating_sub(t0).max(1) as f64
}

/// Writes once to every 2 MiB of the test host's free memory, then frees
/// it, so that each VMM starts on scrubbed memory. Under TCG, a page that a
/// previous guest ran code from still carries that code's translations:
/// the first write to it afterwards invalidates them, and that cost (about
/// 0.3 s for the 10 MiB of a kernel) would fall on whichever VMM happens to
/// get those pages next. Returns the bytes scrubbed.
pub fn scrub_free_memory() -> usize {
    const HUGE: usize = 2 << 20;
    let free_kib: usize = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemFree:")?
                .trim()
                .strip_suffix(" kB")?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    // Leave room for everything else in the test host.
    let len = (free_kib * 1024).saturating_sub(192 << 20) / HUGE * HUGE;
    if len == 0 {
        return 0;
    }
    // SAFETY: a fresh private anonymous mapping that nothing else uses.
    let at = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if at == libc::MAP_FAILED {
        return 0;
    }
    // SAFETY: advice and writes stay within the mapping made above, which
    // is unmapped right after.
    unsafe {
        libc::madvise(at, len, libc::MADV_HUGEPAGE);
        let base = at.cast::<u8>();
        for off in (0..len).step_by(HUGE) {
            base.add(off).write_volatile(1);
        }
        libc::munmap(at, len);
    }
    len
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// What a VMM process holds resident besides its guest's RAM, in KiB: the
/// sum of Rss over its mappings in /proc/<pid>/smaps, less the anonymous
/// mappings at least half the guest's size (its RAM, however the VMM
/// splits or reserves it). `None` if the process is gone.
pub fn rss_beside_guest_ram_kib(pid: u32, guest_mib: u64) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let (mut total, mut guest) = (0u64, 0u64);
    let mut in_guest_ram = false;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: range perms offset dev inode [path].
            let size = first
                .split_once('-')
                .and_then(|(a, b)| {
                    let a = u64::from_str_radix(a, 16).ok()?;
                    let b = u64::from_str_radix(b, 16).ok()?;
                    b.checked_sub(a)
                })
                .unwrap_or(0);
            let anonymous = words.nth(4).is_none();
            in_guest_ram = anonymous && size >= (guest_mib << 20) / 2;
        } else if first == "Rss:" {
            let kib: u64 = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            total += kib;
            if in_guest_ram {
                guest += kib;
            }
        }
    }
    Some(total - guest)
}

/// A benchmark of the test host's microVMs: when `cargo xtask bench` runs
/// it there (`AURAE_BENCH`, with a KVM that boots our image), the image's
/// folder, an auraed on our VMM, and the runs asked for (3 when unset);
/// otherwise `None`, reported as a skip that names `xtask_target`.
pub async fn microvm_bench(
    name: &str,
    xtask_target: &str,
) -> Option<(std::path::PathBuf, crate::Daemon, usize)> {
    if std::env::var_os("AURAE_BENCH").is_none() {
        crate::report_skip(
            name,
            &format!(
                "a benchmark: cargo xtask bench {xtask_target} runs it inside the QEMU test host"
            ),
        );
        return None;
    }
    let (image, vmm) = crate::guest::e2e_kvm(name)?;
    let runs = std::env::var("AURAE_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let d = crate::Daemon::start_with(crate::DaemonOptions {
        image_dir: Some(image.clone()),
        vmm: Some(vmm),
        ..Default::default()
    })
    .await;
    Some((image, d, runs))
}

#[cfg(test)]
mod tests {
    #[test]
    fn our_own_rss_counts_and_a_big_mapping_is_left_out() {
        let me = std::process::id();
        let before = super::rss_beside_guest_ram_kib(me, 64).expect("smaps");
        assert!(before > 0);
        // 64 MiB, touched: guest RAM for a 64 MiB guest, so left out.
        let mut ram = vec![1u8; 64 << 20];
        ram[12345] = 2;
        let after = super::rss_beside_guest_ram_kib(me, 64).expect("smaps");
        assert!(
            after < before + (16 << 10),
            "{before} KiB, then {after} KiB with 64 MiB of guest RAM"
        );
        // For a 1 GiB guest the same 64 MiB counts as the VMM's own.
        let as_own = super::rss_beside_guest_ram_kib(me, 1024).expect("smaps");
        assert!(as_own >= before + (60 << 10), "{before} then {as_own}");
        std::hint::black_box(&ram);
    }
}
