//! The `cri` tier: the upstream CRI validation suite (`critest`, from
//! `../shared/cri`) against auraed's CRI endpoint on the cell backend. Its
//! images are built from Debian's packages under the names critest pulls
//! (`aurae_tests::critest_images`), pushed to a `docker-registry` on
//! loopback, and reached through auraed's mirror configuration. Everything
//! after the preparation runs in a network namespace of its own, so no
//! packet to a pod or the registry leaves it; pods get IPv4 addresses there
//! from a CNI bridge network (Debian's `containernetworking-plugins`).
//!
//! Each spec in `tests/cri/passing.txt` must run and pass
//! (`aurae_tests::critest` says how a run can take others). The tier prints how many of the
//! suite's specs that is.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use aurae_tests::cri::Registry;
use aurae_tests::{critest, critest_images};
use aurae_tests::{Daemon, DaemonOptions};

use crate::deps;

pub enum Outcome {
    Passed,
    Failed,
    Skipped(String),
}

fn shared() -> PathBuf {
    deps::workspace_root().join("../shared/cri")
}

pub fn run() -> anyhow::Result<Outcome> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(Outcome::Skipped(
            "needs root (pod instances are cells)".into(),
        ));
    }
    let critest = shared().join("critest");
    if !critest.is_file() {
        return Ok(Outcome::Skipped(format!(
            "no critest at {}",
            critest.display()
        )));
    }
    deps::ensure(&[
        "docker-registry",
        "skopeo",
        "busybox-static",
        "procps",
        "util-linux",
        "gcc",
        "libc6-dev",
        "iproute2",
        "containernetworking-plugins",
    ])?;
    let sources = image_sources()?;
    println!("==> the image's initramfs, for the pods' instances");
    let initramfs = crate::image::build_initramfs()?;
    let image_dir = initramfs.parent().context("image dir")?.to_path_buf();
    println!("==> the rest in a network namespace of its own (unshare --net)");
    let status = Command::new("unshare")
        .args(["--net", "--"])
        // This very binary, even if a build has replaced its file since.
        .arg(format!("/proc/{}/exe", std::process::id()))
        .arg("cri-in-netns")
        .env(ENV_IMAGE_DIR, &image_dir)
        .env(ENV_BUSYBOX, &sources.busybox)
        .env(ENV_NGINX, &sources.nginx)
        .env(ENV_NNP, &sources.nnp)
        .status()
        .context("running unshare")?;
    Ok(if status.success() {
        Outcome::Passed
    } else {
        Outcome::Failed
    })
}

const ENV_IMAGE_DIR: &str = "AURAE_CRI_TIER_IMAGE_DIR";
const ENV_BUSYBOX: &str = "AURAE_CRI_TIER_BUSYBOX";
const ENV_NGINX: &str = "AURAE_CRI_TIER_NGINX";
const ENV_NNP: &str = "AURAE_CRI_TIER_NNP";

fn env_path(name: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os(name)
        .map(PathBuf::from)
        .with_context(|| format!("{name} is not set (run `cargo xtask test --tier cri`)"))
}

/// The tier inside its own network namespace (`cargo xtask
/// cri-in-netns`, run by [`run`]): loopback up, the registry, the images,
/// the CNI network, auraed and critest. Fails if critest does.
pub fn run_in_netns() -> anyhow::Result<()> {
    let critest_bin = shared().join("critest");
    let lo = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .context("running ip")?;
    anyhow::ensure!(lo.success(), "ip link set lo up failed");
    let sources = critest_images::Sources {
        busybox: env_path(ENV_BUSYBOX)?,
        nginx: env_path(ENV_NGINX)?,
        nnp: env_path(ENV_NNP)?,
    };
    let image_dir = env_path(ENV_IMAGE_DIR)?;
    let root = deps::workspace_root();
    let specs = critest::passing_list(&root.join("tests/cri/passing.txt"))?;
    let selection = critest::Selection::from_env(&specs);

    let work = tempfile::tempdir()?;
    println!("==> critest's images, pushed to a registry on loopback");
    let registry = Registry::start();
    critest_images::push(&registry, work.path(), &sources);
    let cni = critest::cni_config(work.path())?;
    let socket = work.path().join("cri.sock");
    let extra = critest::cri_section(&socket, &cni, registry.port, "keep");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let extra_options = DaemonOptions {
        image_dir: Some(image_dir.clone()),
        extra_config: extra,
        ..Default::default()
    };
    let daemon = rt.block_on(Daemon::start_with(extra_options.clone()));
    let endpoint = format!("unix://{}", socket.display());
    let report = deps::target_dir().join("critest-report.json");
    let mut cmd = critest::command(&critest_bin, &endpoint, None, &report, &selection);
    println!(
        "==> critest: {} (of the suite's {} specs)",
        selection.describe(),
        critest::SUITE
    );
    let started = Instant::now();
    let status = cmd.current_dir(work.path()).status().context("critest")?;
    println!("==> critest took {:.1}s", started.elapsed().as_secs_f64());
    let summary = critest::summarize(&report, &specs, "==> ");
    // Each listed spec must have run and passed.
    let listed = match (&selection, summary) {
        (critest::Selection::Listed(_), Ok(s)) => critest::all_passed(&s, &specs),
        (critest::Selection::Listed(_), Err(e)) => Err(e),
        (_, Err(e)) => {
            println!("(no summary: {e:#})");
            Ok(())
        }
        (_, Ok(_)) => Ok(()),
    };
    let kept = pod_kept_across_a_crash(work.path(), daemon, &rt, &extra_options);
    let leftover = pod_left_at_shutdown(work.path(), &rt, &image_dir, &cni, registry.port);
    let crashed = pod_left_by_a_crash(work.path(), &rt, &image_dir, &cni, registry.port);
    drop(rt);
    anyhow::ensure!(status.success(), "critest failed");
    listed?;
    kept.and(leftover).and(crashed)
}

/// With `pod_restart = "keep"`, a pod outlives a crash (kill -9) of auraed
/// on its CNI network: the restarted auraed lists it ready with its
/// address, still held, and gives the address back when it is removed.
fn pod_kept_across_a_crash(
    work: &Path,
    mut daemon: Daemon,
    rt: &tokio::runtime::Runtime,
    options: &DaemonOptions,
) -> anyhow::Result<()> {
    let socket = work.join("cri.sock");
    let before = pod_holding_an_address(work, &socket, "kept", "kept-across-a-crash")?;
    let crictl = aurae_tests::cri::Crictl::new(socket);
    let id = crictl.ok(&["pods", "-q", "--name", "kept"]);
    let ip = crictl.ok(&[
        "inspectp",
        "-o",
        "go-template",
        "--template",
        "{{.status.network.ip}}",
        &id,
    ]);
    daemon.crash();
    let again = rt.block_on(daemon.restart(options));
    let checked = (|| {
        let state = crictl.ok(&[
            "inspectp",
            "-o",
            "go-template",
            "--template",
            "{{.status.state}} {{.status.network.ip}}",
            &id,
        ]);
        anyhow::ensure!(
            state == format!("SANDBOX_READY {ip}"),
            "after the restart the pod is {state:?}, not ready on {ip}; auraed's log:\n{}",
            again.log_text()
        );
        anyhow::ensure!(
            allocations(work) == before + 1,
            "the kept pod's CNI address was released"
        );
        crictl.ok(&["stopp", &id]);
        crictl.ok(&["rmp", &id]);
        anyhow::ensure!(
            allocations(work) == before,
            "the kept pod's CNI address is still held after rmp"
        );
        Ok(())
    })();
    // Pods are kept when auraed stops: none may outlive the tier, whatever
    // the checks above found.
    let left = crictl.run(&["pods", "-q"]);
    let left = String::from_utf8_lossy(&left.stdout).trim().to_string();
    for id in left.split_whitespace() {
        crictl.run(&["stopp", id]);
        crictl.run(&["rmp", id]);
    }
    drop(again);
    checked?;
    anyhow::ensure!(left.is_empty(), "pods left running after critest: {left}");
    println!(
        "==> a pod kept across a crash (kill -9) was ready on its CNI address after the restart"
    );
    Ok(())
}

/// A pod whose auraed is killed (-9) gives its CNI address back when
/// auraed starts again on the same state.
fn pod_left_by_a_crash(
    work: &Path,
    rt: &tokio::runtime::Runtime,
    image_dir: &Path,
    cni: &Path,
    registry_port: u16,
) -> anyhow::Result<()> {
    let socket = work.join("crash.sock");
    let options = DaemonOptions {
        image_dir: Some(image_dir.to_path_buf()),
        extra_config: critest::cri_section(&socket, cni, registry_port, "remove"),
        ..Default::default()
    };
    let mut daemon = rt.block_on(Daemon::start_with(options.clone()));
    let before = pod_holding_an_address(work, &socket, "crashed", "left-by-a-crash")?;
    daemon.crash();
    let again = rt.block_on(daemon.restart(&options));
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    while allocations(work) != before {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the crashed pod's CNI address is still held 30 s after auraed restarted"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    drop(again);
    println!("==> a pod left by a crash (kill -9) gave its CNI address back at the restart");
    Ok(())
}

/// The addresses host-local holds for the tier's network.
fn allocations(work: &Path) -> usize {
    std::fs::read_dir(work.join("ipam/critest"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .parse::<std::net::IpAddr>()
                        .is_ok()
                })
                .count()
        })
        .unwrap_or(0)
}

/// Runs a pod named `name` through crictl on `socket` and checks it holds
/// one CNI address; the number held before it.
fn pod_holding_an_address(
    work: &Path,
    socket: &Path,
    name: &str,
    uid: &str,
) -> anyhow::Result<usize> {
    let before = allocations(work);
    let pod = work.join(format!("{uid}.json"));
    std::fs::write(
        &pod,
        serde_json::json!({
            "metadata": {"name": name, "namespace": "tier", "uid": uid},
            "linux": {},
        })
        .to_string(),
    )?;
    let crictl = aurae_tests::cri::Crictl::new(socket.to_path_buf());
    let out = crictl.run(&[
        "runp",
        "--runtime",
        "aurae-cell",
        &pod.display().to_string(),
    ]);
    anyhow::ensure!(
        out.status.success(),
        "runp: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let held = allocations(work);
    anyhow::ensure!(
        held == before + 1,
        "the pod holds {held} - {before} CNI addresses, not 1"
    );
    Ok(before)
}

/// With `pod_restart = "remove"`, a pod still running when auraed stops
/// gives its CNI address back.
fn pod_left_at_shutdown(
    work: &Path,
    rt: &tokio::runtime::Runtime,
    image_dir: &Path,
    cni: &Path,
    registry_port: u16,
) -> anyhow::Result<()> {
    let socket = work.join("shutdown.sock");
    let mut daemon = rt.block_on(Daemon::start_with(DaemonOptions {
        image_dir: Some(image_dir.to_path_buf()),
        extra_config: critest::cri_section(&socket, cni, registry_port, "remove"),
        ..Default::default()
    }));
    let before = pod_holding_an_address(work, &socket, "left", "left-at-shutdown")?;
    daemon.stop();
    let after = allocations(work);
    anyhow::ensure!(
        after == before,
        "{after} CNI addresses held after auraed stopped, {before} before the pod"
    );
    println!("==> a pod left running at shutdown gave its CNI address back");
    Ok(())
}

/// What critest's images are built from on this machine: Debian's
/// busybox and nginx packages, unpacked, and [`nnp_program`].
pub(crate) fn image_sources() -> anyhow::Result<critest_images::Sources> {
    Ok(critest_images::Sources {
        busybox: deps::unpacked_deb("busybox")?,
        nginx: deps::unpacked_deb("nginx")?,
        nnp: nnp_program()?,
    })
}

/// The NoNewPrivs specs' program (upstream's `nnp`): setuid root, it
/// prints the effective uid it runs with. Built static with the C
/// compiler.
fn nnp_program() -> anyhow::Result<PathBuf> {
    const SOURCE: &str = "#include <stdio.h>\n#include <unistd.h>\n\
        int main(void) { printf(\"Effective uid: %d\\n\", (int)geteuid()); return 0; }\n";
    let dir = deps::target_dir().join("critest");
    std::fs::create_dir_all(&dir)?;
    let (src, bin) = (dir.join("nnp.c"), dir.join("nnp"));
    std::fs::write(&src, SOURCE)?;
    let status = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .context("running cc")?;
    anyhow::ensure!(status.success(), "cc {} failed", src.display());
    Ok(bin)
}
