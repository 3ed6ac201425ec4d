//! `cargo xtask image`: the guest image every instance boots, in
//! `target/aurae-image/`: the kernel (`bzImage`, `vmlinux`), the base
//! initramfs whose `/init` is the static guest-init, and a manifest with
//! hashes and sizes. Per-instance data goes into overlay archives
//! ([`instance_overlay`]) appended after the base.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use initramfs::Manifest;
use sha2::{Digest, Sha256};

use crate::{cache, deps, kernel};

#[derive(Debug, Clone)]
pub struct Image {
    pub dir: PathBuf,
    pub bzimage: PathBuf,
    pub initramfs: PathBuf,
}

/// Builds guest-init as a static executable (gnu target, static CRT: nothing
/// to download) and returns its path.
pub fn build_guest_init() -> anyhow::Result<PathBuf> {
    // The `image` profile builds for size (see Cargo.toml): every guest
    // kernel unpacks this binary before /init.
    build_static("guest-init", "guest-init", "image")
}

/// Builds aurae-vmm as a static executable, optimized for speed: it starts
/// with no dynamic loader work (tens of milliseconds under the test host's
/// TCG), and it can run in a cell whose root holds nothing but itself.
pub fn build_static_vmm() -> anyhow::Result<PathBuf> {
    build_static("vmm", "aurae-vmm", "release")
}

/// Builds `bin` of `package` with `profile`, statically linked, and checks
/// that it is.
fn build_static(package: &str, bin: &str, profile: &str) -> anyhow::Result<PathBuf> {
    println!("[image] building {bin} (static, {profile} profile)");
    let triple = "x86_64-unknown-linux-gnu";
    let ok = deps::cargo(
        &[
            "build",
            "--profile",
            profile,
            "-p",
            package,
            "--bin",
            bin,
            "--target",
            triple,
        ],
        &[("RUSTFLAGS", "-C target-feature=+crt-static")],
    )?;
    if !ok {
        bail!("building {bin} failed");
    }
    let path = deps::target_dir().join(triple).join(profile).join(bin);
    let out = Command::new("ldd").arg(&path).output().context("ldd")?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    if !text.contains("not a dynamic executable") && !text.contains("statically linked") {
        bail!("{} is not static: {text}", path.display());
    }
    Ok(path)
}

/// Debian's static busybox, the instance's userland: a shell and the
/// usual tools for diagnostics and simple workloads.
const BUSYBOX: &str = "/bin/busybox";

/// The base initramfs: guest-init as /init, busybox (with `/bin/sh`), and
/// the mount points guest-init needs.
pub fn base_manifest(guest_init: &Path) -> anyhow::Result<Manifest> {
    let mut m = Manifest::new();
    m.file("init", guest_init, 0o755)?;
    m.dir("bin", 0o755)?;
    m.file("bin/busybox", Path::new(BUSYBOX), 0o755)?;
    m.symlink("bin/sh", "busybox")?;
    for dir in ["proc", "sys", "dev", "run", "tmp", "etc/aurae/pki", "var"] {
        m.dir(dir, 0o755)?;
    }
    m.char_device("dev/console", 0o600, 5, 1)?;
    m.char_device("dev/null", 0o666, 1, 3)?;
    // For the boot timer write, before devtmpfs is mounted.
    m.char_device("dev/port", 0o600, 1, 4)?;
    Ok(m)
}

fn sha256_file(path: &Path) -> anyhow::Result<(String, u64)> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok((hex::encode(Sha256::digest(&data)), data.len() as u64))
}

/// Copies `src` to `dst` through a temporary name.
fn install(src: &Path, dst: &Path) -> anyhow::Result<()> {
    let tmp = dst.with_extension("tmp");
    std::fs::copy(src, &tmp)
        .with_context(|| format!("copying {} to {}", src.display(), tmp.display()))?;
    std::fs::rename(&tmp, dst)?;
    Ok(())
}

/// zstd level of the image's initramfs: near the best size for a fraction
/// of the time of the top levels; the guest unpacks every level equally
/// fast.
const IMAGE_ZSTD_LEVEL: i32 = 12;

/// Only the base initramfs (no kernel: enough for cell-backed instances),
/// in `target/aurae-image/initramfs.cpio.zst`; returns its path.
pub fn build_initramfs() -> anyhow::Result<PathBuf> {
    deps::ensure(&["busybox-static"])?;
    let guest_init = build_guest_init()?;
    let dir = deps::target_dir().join("aurae-image");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("initramfs.cpio.zst");
    let tmp = dir.join("initramfs.cpio.zst.tmp");
    base_manifest(&guest_init)?.write_zstd_file(&tmp, IMAGE_ZSTD_LEVEL)?;
    std::fs::rename(&tmp, &path)?;
    println!("[image] {}", path.display());
    Ok(path)
}

pub fn build() -> anyhow::Result<Image> {
    let started = Instant::now();
    let k = kernel::build()?;
    let dir = deps::target_dir().join("aurae-image");
    std::fs::create_dir_all(&dir)?;
    install(&k.bzimage, &dir.join("bzImage"))?;
    install(&k.vmlinux, &dir.join("vmlinux"))?;
    build_initramfs()?;
    let mut files = serde_json::Map::new();
    for name in ["bzImage", "vmlinux", "initramfs.cpio.zst"] {
        let (sha, size) = sha256_file(&dir.join(name))?;
        files.insert(
            name.into(),
            serde_json::json!({"sha256": sha, "size": size}),
        );
    }
    let manifest = serde_json::json!({
        "kernel": {"cache": k.dir, "cold_build_seconds": k.cold_build_secs},
        "init": "guest-init (static)",
        "files": files,
    });
    let tmp = dir.join("manifest.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&manifest)?)?;
    std::fs::rename(&tmp, dir.join("manifest.json"))?;
    println!(
        "[image] {} in {:.1}s:",
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    for name in ["bzImage", "vmlinux", "initramfs.cpio.zst", "manifest.json"] {
        let size = std::fs::metadata(dir.join(name))
            .map(|m| m.len())
            .unwrap_or(0);
        println!("  {name:<20} {}", cache::human_size(size));
    }
    Ok(Image {
        bzimage: dir.join("bzImage"),
        initramfs: dir.join("initramfs.cpio.zst"),
        dir,
    })
}
