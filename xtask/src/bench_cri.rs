//! `cargo xtask bench cri`: a pod sandbox plus one busybox container to
//! its line in the container's log file, driven step by step with the
//! upstream crictl (`runp`, `create`, `start`, then the log), against
//! Debian's containerd 1.6 with runc on the same image from the same local
//! registry, in one run, alternating; medians. Target: auraed's cell
//! backend at most 0.5× containerd's time. auraed runs twice: with a
//! pre-started instance (`[instances] pool = 1`; each round waits until
//! the pool is refilled, so the figure is a claim's) and without.
//!
//! Then the microVM backend (handler `aurae-microvm`) against containerd,
//! both inside the QEMU test host (`tests/tests/bench_cri_microvm.rs`),
//! at most 5 rounds (each pod there boots a VM under nested KVM); no
//! target, measured and reported.
//!
//! Like the cri tier, the measurement runs in network and mount namespaces
//! of its own (`unshare --net --mount`): the registry, both runtimes and
//! the pods' CNI bridge network never reach the host's network, and
//! containerd's mounts stay inside.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use aurae_tests::cri::{Crictl, Registry};
use aurae_tests::cri_bench::{one_pod, one_pod_grpc, Containerd, Steps, IMAGE};
use aurae_tests::critest_images;
use aurae_tests::{Daemon, DaemonOptions};

use crate::deps;
use crate::stats::report;

/// How long a pod may take to its log line.
const DEADLINE: Duration = Duration::from_secs(30);

pub fn run(runs: usize) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("bench cri needs root (both runtimes make namespaces and cgroups)");
    }
    deps::ensure(&[
        "containerd",
        "runc",
        "docker-registry",
        "skopeo",
        "containernetworking-plugins",
        "iproute2",
        "procps",
        "util-linux",
        "gcc",
        "libc6-dev",
    ])?;
    let sources = crate::cri_tier::image_sources()?;
    deps::release_binaries()?;
    let initramfs = crate::image::build_initramfs()?;
    let image_dir = initramfs.parent().context("image dir")?.to_path_buf();
    println!("==> the rest in network and mount namespaces of its own");
    let status = Command::new("unshare")
        .args(["--net", "--mount", "--propagation", "private", "--"])
        .arg(format!("/proc/{}/exe", std::process::id()))
        .args(["bench-cri-in-netns", "--runs", &runs.to_string()])
        .env("AURAE_BENCH_IMAGE_DIR", &image_dir)
        .env("AURAE_BENCH_BUSYBOX", &sources.busybox)
        .env("AURAE_BENCH_NGINX", &sources.nginx)
        .env("AURAE_BENCH_NNP", &sources.nnp)
        .status()
        .context("running unshare")?;
    anyhow::ensure!(status.success(), "the measurement failed");
    println!("\n==> the microVM backend, inside the QEMU test host (nested KVM)");
    let shared = deps::workspace_root().join("../shared/cri");
    let mut same = vec![
        "/usr/bin/containerd",
        "/usr/bin/containerd-shim-runc-v2",
        "/usr/sbin/runc",
        "/usr/lib/cni/loopback",
    ];
    same.extend(crate::testhost::REGISTRY_AND_CNI);
    let programs =
        crate::testhost::with_programs(&[("usr/bin/crictl", shared.join("crictl"))], &same);
    let microvm = crate::testhost::TestRun {
        test: "bench_cri_microvm".into(),
        env: vec![
            ("AURAE_CRICTL".into(), "/usr/bin/crictl".into()),
            ("TMPDIR".into(), "/tmp".into()),
            ("PATH".into(), "/bin:/usr/bin:/usr/sbin".into()),
        ],
        programs,
        ..Default::default()
    };
    // containerd's runc needs cgroup BPF in the test host's kernel.
    let lines =
        crate::testhost::bench_run(microvm, runs.clamp(1, 5), crate::kernel::Flavour::BenchHost)?;
    println!("\nmicroVM backend, inside the QEMU test host:");
    if lines.is_empty() {
        println!("  SKIPPED: the benchmark measured nothing there (its skip reason is above)");
    }
    for l in lines {
        println!("  {l}");
    }
    Ok(())
}

fn env_path(name: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os(name)
        .map(PathBuf::from)
        .with_context(|| format!("{name} is not set (run `cargo xtask bench cri`)"))
}

/// Waits (bounded) until `d` has pre-started `n` instances in all.
fn pool_refilled(d: &Daemon, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while d.log_text().matches("pre-started an instance").count() < n {
        if Instant::now() > deadline {
            bail!("auraed did not pre-start instance {n} within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// With `AURAE_BENCH_LOGS=<dir>`, both auraed logs go there when dropped.
struct KeepLogs<'a>([(&'static str, &'a Daemon); 2]);

impl Drop for KeepLogs<'_> {
    fn drop(&mut self) {
        let Some(dir) = std::env::var_os("AURAE_BENCH_LOGS").map(PathBuf::from) else {
            return;
        };
        for (name, d) in self.0 {
            let file = dir.join(format!("{name}.log"));
            let kept =
                std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&file, d.log_text()));
            match kept {
                Ok(()) => println!("auraed's log ({name}): {}", file.display()),
                Err(e) => eprintln!("warning: keeping auraed's log in {}: {e}", file.display()),
            }
        }
    }
}

/// What is left of each runtime's time without crictl's own: three crictl
/// calls per pod, each at least a `crictl version` (start, connect,
/// `Version`, exit) against that runtime.
fn print_floor(
    ours: Duration,
    our_floor: Duration,
    peer: Duration,
    peer_floor: Duration,
    n: usize,
) {
    use aurae_tests::cri_bench::{without_crictl, CRICTL_CALLS};
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (a, k) = (
        without_crictl(ours, our_floor) * 1000.0,
        without_crictl(peer, peer_floor) * 1000.0,
    );
    println!(
        "crictl's own share (`crictl version`, median of {n}): against auraed {:.1} ms, against \
         containerd {:.1} ms; three per pod",
        ms(our_floor),
        ms(peer_floor)
    );
    println!(
        "  without it: auraed (pre-started) {a:.1} ms, containerd {k:.1} ms, ratio {:.2}; \
         the best ratio crictl leaves (auraed taking no time at all): {:.2}",
        a / k.max(f64::MIN_POSITIVE),
        f64::from(CRICTL_CALLS) * ms(our_floor) / ms(peer).max(f64::MIN_POSITIVE)
    );
}

fn print_steps(name: &str, s: &Steps) -> Duration {
    println!("  {name:<32} {}", s.medians());
    s.total()
}

/// The measurement, inside its namespaces (`cargo xtask bench-cri-in-netns`).
pub fn run_in_netns(runs: usize) -> anyhow::Result<()> {
    let lo = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()?;
    anyhow::ensure!(lo.success(), "ip link set lo up failed");
    let sources = critest_images::Sources {
        busybox: env_path("AURAE_BENCH_BUSYBOX")?,
        nginx: env_path("AURAE_BENCH_NGINX")?,
        nnp: env_path("AURAE_BENCH_NNP")?,
    };
    let image_dir = env_path("AURAE_BENCH_IMAGE_DIR")?;
    let work = tempfile::tempdir()?;
    let registry = Registry::start();
    critest_images::push_one(
        &registry,
        work.path(),
        &sources,
        "e2e-test-images/busybox:1.29-2",
        &["/bin/sh"],
    );
    critest_images::push_one(
        &registry,
        work.path(),
        &sources,
        "pause:3.6",
        &["/bin/sleep", "2147483647"],
    );
    let cni = aurae_tests::critest::cni_config(work.path())?;
    let containerd =
        Containerd::start(&work.path().join("containerd"), &cni, registry.port, false)?;
    let containerd_ctl = Crictl::new(containerd.socket.clone());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let aurae = |pool: usize, name: &str| -> anyhow::Result<(Daemon, Crictl)> {
        let socket = work.path().join(format!("{name}.sock"));
        let extra = aurae_tests::critest::cri_section(&socket, &cni, registry.port, "keep");
        let d = rt.block_on(Daemon::start_with(DaemonOptions {
            image_dir: Some(image_dir.clone()),
            extra_config: extra,
            pool,
            ..Default::default()
        }));
        Ok((d, Crictl::new(socket)))
    };
    let (pooled, pooled_ctl) = aurae(1, "pooled")?;
    let (cold, cold_ctl) = aurae(0, "cold")?;
    // Kept however the measurement ends (a failure is when they matter).
    let logs = KeepLogs([("pooled", &pooled), ("cold", &cold)]);
    for ctl in [&pooled_ctl, &cold_ctl, &containerd_ctl] {
        ctl.ok(&["pull", IMAGE]);
    }
    let (mut p, mut c, mut k) = (Steps::default(), Steps::default(), Steps::default());
    let mut warm_up = Steps::default();
    // Round 0 warms caches and bridges; not counted.
    for i in 0..=runs {
        pool_refilled(&pooled, i + 1)?;
        one_pod(
            &pooled_ctl,
            work.path(),
            &format!("p{i}"),
            None,
            DEADLINE,
            if i > 0 { &mut p } else { &mut warm_up },
        )?;
        pool_refilled(&pooled, i + 2)?;
        one_pod(
            &cold_ctl,
            work.path(),
            &format!("c{i}"),
            None,
            DEADLINE,
            if i > 0 { &mut c } else { &mut warm_up },
        )?;
        one_pod(
            &containerd_ctl,
            work.path(),
            &format!("k{i}"),
            None,
            DEADLINE,
            if i > 0 { &mut k } else { &mut warm_up },
        )?;
    }
    // The same through the CRI directly: each runtime's own time.
    let (mut pg, mut kg) = (Steps::default(), Steps::default());
    for i in 0..=runs {
        pool_refilled(&pooled, runs + i + 2)?;
        rt.block_on(one_pod_grpc(
            &pooled_ctl.socket,
            work.path(),
            &format!("pg{i}"),
            DEADLINE,
            if i > 0 { &mut pg } else { &mut warm_up },
        ))?;
        rt.block_on(one_pod_grpc(
            &containerd_ctl.socket,
            work.path(),
            &format!("kg{i}"),
            DEADLINE,
            if i > 0 { &mut kg } else { &mut warm_up },
        ))?;
    }
    // crictl's own share, measured against both runtimes after the pods.
    let floor_rounds = (runs * 2).max(5);
    let pf = aurae_tests::cri_bench::crictl_floor(&pooled_ctl, floor_rounds)?;
    let kf = aurae_tests::cri_bench::crictl_floor(&containerd_ctl, floor_rounds)?;
    println!("\nmedians of {runs} alternating rounds, steps driven by crictl (release auraed, cell backend):");
    let pt = print_steps("auraed (pre-started instance)", &p);
    let ct = print_steps("auraed (instance started anew)", &c);
    let kt = print_steps("containerd 1.6 + runc", &k);
    println!();
    print_floor(pt, pf, kt, kf, floor_rounds);
    println!(
        "\nthe same through the CRI directly (one gRPC client, no crictl): each runtime's own time"
    );
    let pgt = print_steps("auraed (pre-started instance)", &pg);
    let kgt = print_steps("containerd 1.6 + runc", &kg);
    println!(
        "  ratio {:.2}",
        pgt.as_secs_f64() / kgt.as_secs_f64().max(f64::MIN_POSITIVE)
    );
    report(
        "pod + container -> log line (pre-started)",
        pt,
        "containerd",
        kt,
        Some(0.5),
    );
    report(
        "pod + container -> log line (new instance)",
        ct,
        "containerd",
        kt,
        None,
    );
    drop(logs);
    drop(pooled);
    drop(cold);
    drop(rt);
    drop(containerd);
    Ok(())
}
