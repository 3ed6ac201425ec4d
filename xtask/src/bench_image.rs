//! `cargo xtask bench image`: image build times (cold, as recorded when the
//! kernel cache entry was built, and warm), artifact sizes against their
//! targets, and the time from QEMU start to the guest auraed answering
//! health over mTLS: the reference figure for our VMM to beat.

use std::time::{Duration, Instant};

use anyhow::bail;

use crate::stats::{median, ms};
use crate::{cache, image};

const BZIMAGE_TARGET: u64 = 6 << 20;
const INITRAMFS_TARGET: u64 = 8 << 20;

fn size_line(name: &str, bytes: u64, target: u64) {
    let verdict = if bytes <= target { "met" } else { "NOT met" };
    println!(
        "{name:<24} {:>10}   (target ≤ {}: {verdict})",
        cache::human_size(bytes),
        cache::human_size(target)
    );
}

pub fn run(runs: usize) -> anyhow::Result<()> {
    if !crate::deps::cargo(&["build", "-p", "auraed"], &[])? {
        bail!("building auraed failed");
    }
    let t0 = Instant::now();
    let img = image::build()?;
    let warm = t0.elapsed();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(img.dir.join("manifest.json"))?)?;
    let cold = manifest["kernel"]["cold_build_seconds"].as_f64();
    std::env::set_var("AURAE_IMAGE_DIR", &img.dir);
    // A quiet guest console, as in the boot benchmark.
    std::env::set_var("AURAE_BENCH", "1");
    let rt = tokio::runtime::Runtime::new()?;
    let mut boots = Vec::new();
    for i in 0..runs.max(1) {
        let started = Instant::now();
        let guest = rt.block_on(aurae_tests::guest::Guest::boot(&img.dir));
        let took = started.elapsed();
        drop(guest);
        println!(
            "boot {}: QEMU start -> guest auraed healthy over mTLS in {:.2} s",
            i + 1,
            took.as_secs_f64()
        );
        boots.push(took);
    }
    println!("\nimage build:");
    match cold {
        Some(c) => println!(
            "{:<24} {c:>9.1} s   (kernel, recorded when its cache entry was built)",
            "cold build"
        ),
        None => println!(
            "{:<24} unknown (the cache entry has no record)",
            "cold build"
        ),
    }
    println!(
        "{:<24} {:>9.2} s   (everything cached)",
        "warm build",
        warm.as_secs_f64()
    );
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    size_line("bzImage", size(&img.bzimage), BZIMAGE_TARGET);
    size_line("initramfs.cpio.zst", size(&img.initramfs), INITRAMFS_TARGET);
    let m: Duration = median(boots);
    println!(
        "{:<24} {:>9.0} ms  (median of {runs}, QEMU -M pc TCG: the reference for the VMM)",
        "QEMU start -> health",
        ms(m)
    );
    if size(&img.bzimage) == 0 {
        bail!("no bzImage");
    }
    Ok(())
}
