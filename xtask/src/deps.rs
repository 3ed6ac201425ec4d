//! Installing what the tiers and benchmarks need, with apt, when missing.

use std::process::Command;
use std::sync::Once;

use anyhow::{bail, Context};

static APT_UPDATE: Once = Once::new();

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Installs the Debian `packages` that are not installed yet.
/// Builds auraed and aer in release and points the test harness at them
/// (`AURAED_BIN`, `AER_BIN`), as the benchmarks run them; returns the
/// release folder.
pub fn release_binaries() -> anyhow::Result<std::path::PathBuf> {
    println!("==> building release binaries");
    if !cargo(&["build", "--release", "-p", "auraed", "-p", "aer"], &[])? {
        bail!("build failed");
    }
    let release = target_dir().join("release");
    std::env::set_var("AURAED_BIN", release.join("auraed"));
    std::env::set_var("AER_BIN", release.join("aer"));
    Ok(release)
}

pub fn ensure(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("missing packages {missing:?}, and installing them needs root");
    }
    println!("==> installing {}", missing.join(" "));
    let mut update_ok = true;
    APT_UPDATE.call_once(|| {
        update_ok = Command::new("apt-get")
            .args(["update", "-q"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    });
    if !update_ok {
        bail!("apt-get update failed");
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get install")?;
    if !status.success() {
        bail!("apt-get install {missing:?} failed");
    }
    Ok(())
}

/// The Debian package `package` unpacked (`dpkg-deb -x`, not installed)
/// under the target folder; fetched with `apt-get download` once.
pub fn unpacked_deb(package: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = target_dir().join("debs").join(package);
    let root = dir.join("root");
    if root.join(".unpacked").is_file() {
        return Ok(root);
    }
    println!("==> fetching the Debian package {package}");
    std::fs::create_dir_all(&dir)?;
    let download = || {
        Command::new("apt-get")
            .args(["download", "-q", package])
            .current_dir(&dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !download() {
        let updated = Command::new("apt-get")
            .args(["update", "-q"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !updated || !download() {
            bail!("apt-get download {package} failed");
        }
    }
    let deb = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .with_context(|| format!("no .deb of {package} in {}", dir.display()))?;
    let _ = std::fs::remove_dir_all(&root);
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&root)
        .status()
        .context("running dpkg-deb")?;
    if !status.success() {
        bail!("dpkg-deb -x {} failed", deb.display());
    }
    std::fs::write(root.join(".unpacked"), "")?;
    Ok(root)
}

/// Installs the PyPI package `package` with `python3 -m pip` when python3
/// cannot import `module`. Never fails: a test that needs the module skips
/// itself (with the reason) when it is still missing, so this only says
/// what went wrong.
pub fn ensure_python_module(module: &str, package: &str) {
    let importable = || {
        Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if importable() {
        return;
    }
    println!("==> installing {package} with python3 -m pip");
    let status = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", package])
        .status();
    match status {
        Ok(s) if s.success() && importable() => {}
        Ok(s) if s.success() => {
            println!("warning: pip installed {package}, but python3 still cannot import {module}; its tests will skip")
        }
        Ok(s) => println!("warning: pip install {package} failed ({s}); its tests will skip"),
        Err(e) => println!(
            "warning: running python3 -m pip: {e}; the tests that need {package} will skip"
        ),
    }
}

/// Runs `cargo` with `args` in the workspace, failing on a non-zero exit.
pub fn cargo(args: &[&str], envs: &[(&str, &str)]) -> anyhow::Result<bool> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    Ok(status.success())
}

pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Cargo's target directory: `CARGO_TARGET_DIR` (relative to the
/// workspace when relative), else `<workspace>/target`.
pub fn target_dir() -> std::path::PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace_root().join(dir),
        _ => workspace_root().join("target"),
    }
}

/// The installed version of a Debian package.
pub fn package_version(package: &str) -> anyhow::Result<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", package])
        .output()
        .context("dpkg-query")?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || v.is_empty() {
        bail!("package {package} is not installed");
    }
    Ok(v)
}
