//! The test tiers. Every CI run runs all of them; a tier whose requirement
//! is missing is reported as skipped, with the reason.

use std::time::Instant;

use clap::ValueEnum;

use crate::deps;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Tier {
    /// Unit tests of every crate.
    Unit,
    /// The real auraed binary over its real socket with real certificates.
    Integration,
    /// The VMM against /dev/kvm with tiny guests.
    Vmm,
    /// Inside the QEMU test host: our VMM boots our image.
    E2e,
    /// The upstream CRI validation suite (critest) against auraed's CRI.
    Cri,
}

enum Outcome {
    Passed,
    Failed,
    Skipped(String),
}

pub fn run(selected: &[Tier]) -> anyhow::Result<()> {
    let tiers: Vec<Tier> = if selected.is_empty() {
        vec![
            Tier::Unit,
            Tier::Integration,
            Tier::Vmm,
            Tier::E2e,
            Tier::Cri,
        ]
    } else {
        selected.to_vec()
    };
    if nix::unistd::geteuid().is_root() {
        deps::ensure(&["busybox-static"])?;
    }
    println!("==> building the workspace");
    if !deps::cargo(&["build", "--workspace", "--bins"], &[])? {
        anyhow::bail!("the build failed");
    }
    let mut results = Vec::new();
    for tier in tiers {
        let started = Instant::now();
        println!("\n==> tier {tier:?}");
        let outcome = match tier {
            Tier::Unit => pass_fail(deps::cargo(
                &[
                    "test",
                    "--workspace",
                    "--exclude",
                    "aurae-tests",
                    "--lib",
                    "--bins",
                ],
                &[],
            )?),
            Tier::Integration => integration()?,
            Tier::Vmm => vmm_tier()?,
            Tier::E2e => e2e()?,
            Tier::Cri => match crate::cri_tier::run()? {
                crate::cri_tier::Outcome::Passed => Outcome::Passed,
                crate::cri_tier::Outcome::Failed => Outcome::Failed,
                crate::cri_tier::Outcome::Skipped(why) => Outcome::Skipped(why),
            },
        };
        results.push((tier, outcome, started.elapsed()));
    }
    println!("\n==> summary");
    let mut failed = false;
    for (tier, outcome, took) in &results {
        let text = match outcome {
            Outcome::Passed => "passed".to_string(),
            Outcome::Failed => {
                failed = true;
                "FAILED".to_string()
            }
            Outcome::Skipped(why) => format!("SKIPPED: {why}"),
        };
        println!(
            "  {:<12} {:>6.1}s  {text}",
            format!("{tier:?}"),
            took.as_secs_f64()
        );
    }
    if failed {
        anyhow::bail!("some tiers failed");
    }
    Ok(())
}

fn pass_fail(ok: bool) -> Outcome {
    if ok {
        Outcome::Passed
    } else {
        Outcome::Failed
    }
}

/// The VMM against this machine's /dev/kvm with tiny guests.
fn vmm_tier() -> anyhow::Result<Outcome> {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return Ok(Outcome::Skipped(format!(
            "/dev/kvm is not usable here: {e}"
        )));
    }
    // Every integration test of the VMM (a new file can't be left out);
    // a test that skips itself (no root for a TAP, say) is listed.
    let ok = run_tests(&["test", "-p", "vmm", "--test", "*"], &[])?;
    Ok(pass_fail(ok))
}

/// Builds the image, runs the limit tests inside the QEMU test host, and
/// the guest-image tests against our image booted by QEMU.
fn e2e() -> anyhow::Result<Outcome> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(Outcome::Skipped(
            "needs root (apt, cgroups and namespaces inside the test host)".into(),
        ));
    }
    deps::ensure(&["qemu-system-x86"])?;
    let img = crate::image::build()?;
    println!("\n==> the built kernel config has every option of the fragment");
    let config_ok = run_tests(
        &[
            "test",
            "-p",
            "xtask",
            "--",
            "the_built_config_has_every_fragment_option",
        ],
        &[("AURAE_REQUIRE_KERNEL", "1")],
    )?;
    // One boot for all: each boot of the test host costs about 75 s (TCG)
    // before its first test runs.
    let mut runs = crate::testhost::default_runs();
    let critest_ok = match crate::testhost_critest::missing() {
        Some(why) => {
            println!("SKIPPED (critest on the microVM backend): {why}");
            true
        }
        None => match crate::testhost_critest::run(crate::testhost_critest::Specs::Sample) {
            Ok(run) => {
                runs.push(run);
                true
            }
            Err(e) => {
                println!("critest on the microVM backend could not be prepared: {e:#}");
                false
            }
        },
    };
    println!(
        "
==> the QEMU test host: cell limits under a pure cgroup v2, our VMM and image, microVM
    instances, pods and VMs, CRI on the microVM backend (crictl, and a critest sample)"
    );
    let host_ok = crate::testhost::run(&img.bzimage, Some(&img.dir), &runs)?.passed;
    println!(
        "
==> our image booted by QEMU: the guest auraed over mTLS"
    );
    let dir = img.dir.to_string_lossy().into_owned();
    let guest_ok = run_tests(
        &["test", "-p", "aurae-tests", "--test", "guest_image"],
        &[("AURAE_E2E", "1"), ("AURAE_IMAGE_DIR", &dir)],
    )?;
    Ok(pass_fail(config_ok && critest_ok && host_ok && guest_ok))
}

fn integration() -> anyhow::Result<Outcome> {
    // tests/tests/grpcio_client.rs: a client in another language.
    deps::ensure_python_module("grpc", "grpcio");
    // tests/tests/cri.rs: images pulled from a registry of the test's own
    // (on loopback), pushed there with skopeo.
    if nix::unistd::geteuid().is_root() {
        deps::ensure(&["docker-registry", "skopeo"])?;
    }
    // tests/tests/spawn.rs: cell-backed instances run the image's initramfs
    // (no kernel needed on this tier).
    println!("==> the image's initramfs, for spawned instances");
    crate::image::build_initramfs()?;
    Ok(pass_fail(run_tests(
        &["test", "-p", "aurae-tests", "--no-fail-fast"],
        &[],
    )?))
}

/// Runs cargo test and prints the tests that skipped themselves.
fn run_tests(args: &[&str], envs: &[(&str, &str)]) -> anyhow::Result<bool> {
    let skips = tempfile::NamedTempFile::new()?;
    let path = skips.path().to_string_lossy().into_owned();
    let mut all: Vec<(&str, &str)> = envs.to_vec();
    all.push(("AURAE_SKIP_LOG", &path));
    let ok = deps::cargo(args, &all)?;
    let skipped = std::fs::read_to_string(skips.path()).unwrap_or_default();
    if !skipped.trim().is_empty() {
        println!("\nskipped tests:");
        for line in skipped.lines() {
            println!("  {line}");
        }
    }
    Ok(ok)
}
