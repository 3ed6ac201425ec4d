//! `cargo xtask bench cri`: a pod sandbox plus one busybox container to
//! its line in the container's log file, driven step by step with the
//! upstream crictl (`runp`, `create`, `start`, then the log), against
//! Debian's containerd 1.6 with runc on the same image from the same local
//! registry, in one run, alternating; medians. Target: auraed's cell
//! backend at most 0.5× containerd's time. auraed runs twice: with a
//! pre-started instance (`[instances] pool = 1`; each round waits until
//! the pool is refilled, so the figure is a claim's) and without.
//!
//! Like the cri tier, the measurement runs in network and mount namespaces
//! of its own (`unshare --net --mount`): the registry, both runtimes and
//! the pods' CNI bridge network never reach the host's network, and
//! containerd's mounts stay inside.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use aurae_tests::cri::{Crictl, Registry};
use aurae_tests::critest_images;
use aurae_tests::{Daemon, DaemonOptions};

use crate::deps;
use crate::stats::{median, ms, report};

const IMAGE: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";
const PAUSE: &str = "registry.k8s.io/pause:3.6";
const LINE: &str = "hello-bench";

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
    let busybox = deps::unpacked_deb("busybox")?;
    let nginx = deps::unpacked_deb("nginx")?;
    let nnp = crate::cri_tier::nnp_program()?;
    deps::release_binaries()?;
    let initramfs = crate::image::build_initramfs()?;
    let image_dir = initramfs.parent().context("image dir")?.to_path_buf();
    println!("==> the rest in network and mount namespaces of its own");
    let status = Command::new("unshare")
        .args(["--net", "--mount", "--propagation", "private", "--"])
        .arg(format!("/proc/{}/exe", std::process::id()))
        .args(["bench-cri-in-netns", "--runs", &runs.to_string()])
        .env("AURAE_BENCH_IMAGE_DIR", &image_dir)
        .env("AURAE_BENCH_BUSYBOX", &busybox)
        .env("AURAE_BENCH_NGINX", &nginx)
        .env("AURAE_BENCH_NNP", &nnp)
        .status()
        .context("running unshare")?;
    anyhow::ensure!(status.success(), "the measurement failed");
    Ok(())
}

fn env_path(name: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os(name)
        .map(PathBuf::from)
        .with_context(|| format!("{name} is not set (run `cargo xtask bench cri`)"))
}

/// containerd with its root, state, socket, CNI and registry mirror in
/// `dir`; killed on drop.
struct Containerd {
    child: Child,
    socket: PathBuf,
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Containerd {
    fn start(dir: &Path, cni: &Path, registry_port: u16) -> anyhow::Result<Containerd> {
        let hosts = dir.join("certs.d/registry.k8s.io");
        std::fs::create_dir_all(&hosts)?;
        std::fs::write(
            hosts.join("hosts.toml"),
            format!(
                "server = \"https://registry.k8s.io\"\n\
                 [host.\"http://127.0.0.1:{registry_port}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
            ),
        )?;
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = {root:?}\nstate = {state:?}\n[grpc]\n  address = {socket:?}\n\
                 [plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = {PAUSE:?}\n\
                 restrict_oom_score_adj = true\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"/usr/lib/cni\"\n  conf_dir = {cni:?}\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = {certs:?}\n",
                root = dir.join("root").display().to_string(),
                state = dir.join("state").display().to_string(),
                socket = socket.display().to_string(),
                cni = cni.display().to_string(),
                certs = dir.join("certs.d").display().to_string(),
            ),
        )?;
        let log = std::fs::File::create(dir.join("containerd.log"))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting containerd")?;
        let c = Containerd { child, socket };
        let deadline = Instant::now() + Duration::from_secs(30);
        let crictl = Crictl {
            socket: c.socket.clone(),
        };
        while !crictl.run(&["info"]).status.success() {
            if Instant::now() > deadline {
                bail!(
                    "containerd did not answer within 30 s: {}",
                    std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(c)
    }
}

/// The time of each step of one pod, and in all.
#[derive(Default)]
struct Steps {
    runp: Vec<Duration>,
    create: Vec<Duration>,
    start: Vec<Duration>,
    line: Vec<Duration>,
    total: Vec<Duration>,
}

/// One pod sandbox and container to its log line; removed after (not
/// timed).
fn one_pod(crictl: &Crictl, dir: &Path, round: &str, steps: &mut Steps) -> anyhow::Result<()> {
    let logs = dir.join(format!("logs-{round}"));
    std::fs::create_dir_all(&logs)?;
    let pod = dir.join(format!("pod-{round}.json"));
    std::fs::write(
        &pod,
        serde_json::json!({
            "metadata": {"name": format!("bench-{round}"), "namespace": "bench",
                         "uid": format!("uid-{round}"), "attempt": 0},
            "log_directory": logs.display().to_string(),
            "linux": {},
        })
        .to_string(),
    )?;
    let container = dir.join(format!("container-{round}.json"));
    std::fs::write(
        &container,
        serde_json::json!({
            "metadata": {"name": "main"},
            "image": {"image": IMAGE},
            "command": ["/bin/sh", "-c", format!("echo {LINE}; exec sleep 60")],
            "log_path": "main.log",
            "linux": {},
        })
        .to_string(),
    )?;
    let (pod, container) = (pod.display().to_string(), container.display().to_string());
    let t0 = Instant::now();
    let pod_id = crictl.ok(&["runp", &pod]);
    let t1 = Instant::now();
    let id = crictl.ok(&["create", &pod_id, &container, &pod]);
    let t2 = Instant::now();
    crictl.ok(&["start", &id]);
    let t3 = Instant::now();
    let log = logs.join("main.log");
    let deadline = t0 + Duration::from_secs(30);
    while !std::fs::read_to_string(&log).is_ok_and(|t| t.contains(LINE)) {
        if Instant::now() > deadline {
            bail!("no {LINE:?} in {} within 30 s", log.display());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let t4 = Instant::now();
    crictl.ok(&["stopp", &pod_id]);
    crictl.ok(&["rmp", &pod_id]);
    steps.runp.push(t1 - t0);
    steps.create.push(t2 - t1);
    steps.start.push(t3 - t2);
    steps.line.push(t4 - t3);
    steps.total.push(t4 - t0);
    Ok(())
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

fn print_steps(name: &str, s: Steps) -> Duration {
    let m = |v: Vec<Duration>| ms(median(v));
    let total = median(s.total.clone());
    println!(
        "  {name:<32} runp {:>7.1}  create {:>6.1}  start {:>6.1}  log line {:>6.1}  all {:>7.1} ms",
        m(s.runp),
        m(s.create),
        m(s.start),
        m(s.line),
        ms(total)
    );
    total
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
    let cni = crate::cri_tier::cni_config(work.path())?;
    let containerd = Containerd::start(&work.path().join("containerd"), &cni, registry.port)?;
    let containerd_ctl = Crictl {
        socket: containerd.socket.clone(),
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let aurae = |pool: usize, name: &str| -> anyhow::Result<(Daemon, Crictl)> {
        let socket = work.path().join(format!("{name}.sock"));
        let extra = crate::cri_tier::cri_section(&socket, &cni, registry.port, "keep");
        let d = rt.block_on(Daemon::start_with(DaemonOptions {
            image_dir: Some(image_dir.clone()),
            extra_config: extra,
            pool,
            ..Default::default()
        }));
        Ok((d, Crictl { socket }))
    };
    let (pooled, pooled_ctl) = aurae(1, "pooled")?;
    let (cold, cold_ctl) = aurae(0, "cold")?;
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
            if i > 0 { &mut p } else { &mut warm_up },
        )?;
        pool_refilled(&pooled, i + 2)?;
        one_pod(
            &cold_ctl,
            work.path(),
            &format!("c{i}"),
            if i > 0 { &mut c } else { &mut warm_up },
        )?;
        one_pod(
            &containerd_ctl,
            work.path(),
            &format!("k{i}"),
            if i > 0 { &mut k } else { &mut warm_up },
        )?;
    }
    println!("\nmedians of {runs} alternating rounds, steps driven by crictl (release auraed, cell backend):");
    let pt = print_steps("auraed (pre-started instance)", p);
    let ct = print_steps("auraed (instance started anew)", c);
    let kt = print_steps("containerd 1.6 + runc", k);
    println!();
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
    drop(pooled);
    drop(cold);
    drop(rt);
    drop(containerd);
    Ok(())
}
