//! The QEMU test host: our kernel (which has KVM_AMD and every cgroup v2
//! controller) booted under `qemu-system-x86_64 -M pc,accel=tcg -cpu max`,
//! with an initramfs holding busybox, the chosen test binaries, auraed, aer
//! and their shared libraries. Its `/init` mounts a pure cgroup v2
//! hierarchy with every controller enabled, runs the tests, and prints their
//! exit code on the console, which is how the result gets back here.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use initramfs::Manifest;

use crate::deps;
use crate::testhost_watch::Verdict;

const RESULT_MARKER: &str = "AURAE-TESTHOST-RESULT";

/// The test host's CPU (see the constant's documentation).
const TEST_HOST_CPU: &str = aurae_tests::guest::TCG_CPU;

/// The host's TSC rate in kHz, from its BogoMIPS (Linux derives them from
/// the TSC rate: BogoMIPS = kHz / 500). Under TCG the test host's TSC is the
/// host's; told its rate (`tsc_early_khz`), the test host skips calibrating
/// it against the PIT, which TCG's uneven timing can make fail. When that
/// happened the test host marked its TSC unstable and fell back to jiffies,
/// and its nested guests hung before printing anything.
fn host_tsc_khz() -> Option<u64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let bogomips: f64 = cpuinfo
        .lines()
        .find(|l| l.starts_with("bogomips"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    let khz = (bogomips * 500.0).round() as u64;
    // A sanity range: 100 MHz to 10 GHz.
    (100_000..10_000_000).contains(&khz).then_some(khz)
}

/// A test binary of the `aurae-tests` crate, with the filter arguments to
/// pass it.
#[derive(Debug, Clone, Default)]
pub struct TestRun {
    pub test: String,
    /// Arguments for the test binary (filters, --nocapture).
    pub filters: Vec<String>,
    /// Extra environment, e.g. AURAE_BENCH=1.
    pub env: Vec<(String, String)>,
    /// Put QEMU (and its firmware) in the test host too.
    pub needs_qemu: bool,
    /// Use release builds of auraed and aer (benchmarks compare them with
    /// optimized peers; aurae-vmm is always a static release build).
    pub release: bool,
    /// Programs of this machine the test runs there (their path there, and
    /// here), with their shared libraries (and skopeo's policy file with it).
    pub programs: Vec<(String, PathBuf)>,
    /// Data files the test reads there (their path there, and here).
    pub files: Vec<(String, PathBuf)>,
}

/// What came back from the test host.
pub struct Outcome {
    pub passed: bool,
    /// Console lines that start with "BENCH".
    pub bench_lines: Vec<String>,
}

/// Runs the benchmark test binary `test` inside the test host (release
/// builds, QEMU there too) with `AURAE_BENCH_RUNS=runs` and `env`; its
/// "BENCH " lines, without the prefix (per-run "BENCH-RUN" lines are
/// printed as they come, not returned). Fails if the benchmark failed.
pub fn bench(test: &str, runs: usize, env: Vec<(String, String)>) -> anyhow::Result<Vec<String>> {
    let run = TestRun {
        test: test.into(),
        env,
        needs_qemu: true,
        ..Default::default()
    };
    bench_run(run, runs, crate::kernel::Flavour::Guest)
}

/// [`bench`] of a run with programs or files of its own (release builds),
/// in a test host booted from the kernel of `host` (its guests boot the
/// image's kernel whichever it is).
pub fn bench_run(
    mut bench: TestRun,
    runs: usize,
    host: crate::kernel::Flavour,
) -> anyhow::Result<Vec<String>> {
    let img = crate::image::build()?;
    let host_kernel = match host {
        crate::kernel::Flavour::Guest => img.bzimage.clone(),
        flavour => crate::kernel::build_flavour(flavour)?.bzimage,
    };
    bench.env.push(("AURAE_BENCH".into(), "1".into()));
    bench
        .env
        .push(("AURAE_BENCH_RUNS".into(), runs.to_string()));
    bench.filters = vec!["--nocapture".into()];
    bench.release = true;
    let test = bench.test.clone();
    let outcome = run(&host_kernel, Some(&img.dir), &[bench])?;
    if !outcome.passed {
        bail!("the benchmark {test} failed inside the test host");
    }
    Ok(outcome
        .bench_lines
        .iter()
        .filter_map(|l| l.strip_prefix("BENCH "))
        .map(str::to_string)
        .collect())
}

/// The tests that need what only the test host has: cgroup v2 limits, and
/// a KVM that boots standard kernels (for our VMM and our image).
pub fn default_runs() -> Vec<TestRun> {
    vec![
        TestRun {
            test: "cells".into(),
            ..Default::default()
        },
        TestRun {
            test: "vmm_boot".into(),
            ..Default::default()
        },
        TestRun {
            test: "spawn_microvm".into(),
            ..Default::default()
        },
        TestRun {
            test: "pod_microvm".into(),
            ..Default::default()
        },
        TestRun {
            test: "vm_linux".into(),
            ..Default::default()
        },
        TestRun {
            test: "cri_microvm".into(),
            env: vec![
                ("AURAE_CRICTL".into(), "/usr/bin/crictl".into()),
                ("TMPDIR".into(), "/tmp".into()),
            ],
            programs: with_programs(
                &[(
                    "usr/bin/crictl",
                    deps::workspace_root().join("../shared/cri/crictl"),
                )],
                REGISTRY_AND_CNI,
            ),
            ..Default::default()
        },
    ]
}

/// What a CRI test in the test host needs beside its client, at the same
/// paths there as here: a registry, skopeo, and the CNI plugins of a bridge
/// network.
pub const REGISTRY_AND_CNI: &[&str] = &[
    "/usr/bin/docker-registry",
    "/usr/bin/skopeo",
    "/usr/lib/cni/bridge",
    "/usr/lib/cni/host-local",
];

/// A run's programs: `own` (their path there, and here), then `same`, at
/// the same path there as here.
pub fn with_programs(own: &[(&str, PathBuf)], same: &[&str]) -> Vec<(String, PathBuf)> {
    own.iter()
        .map(|(at, p)| (at.to_string(), p.clone()))
        .chain(
            same.iter()
                .map(|p| (p.trim_start_matches('/').to_string(), PathBuf::from(p))),
        )
        .collect()
}

/// Builds the named integration test binaries and returns their paths.
fn test_binaries(names: &[String]) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "test",
        "-p",
        "aurae-tests",
        "--no-run",
        "--message-format=json",
    ]);
    for n in names {
        cmd.args(["--test", n]);
    }
    let out = cmd
        .current_dir(deps::workspace_root())
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("building the test binaries failed");
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(exe), Some(name)) = (v["executable"].as_str(), v["target"]["name"].as_str())
        else {
            continue;
        };
        if names.iter().any(|n| n == name) {
            found.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    if found.len() != names.len() {
        bail!("found test binaries {found:?}, wanted {names:?}");
    }
    Ok(found)
}

/// The shared libraries `binary` needs, from ldd.
fn shared_libs(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(binary).output().context("ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => l.split_whitespace().next(),
            }?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

fn init_script(runs: &[TestRun]) -> String {
    let mut s = String::from(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         export PATH=/bin:/usr/bin HOME=/root AURAED_BIN=/target/auraed AER_BIN=/target/aer AURAE_VMM_BIN=/target/aurae-vmm RUST_BACKTRACE=1 AURAE_SKIP_LOG=/tmp/skipped\n\
         [ -d /image ] && export AURAE_E2E=1 AURAE_IMAGE_DIR=/image\n\
         mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev\n\
         mkdir -p /dev/pts /dev/shm /root; mount -t devpts devpts /dev/pts; mount -t tmpfs shm /dev/shm\n\
         mount -t tmpfs tmp /tmp; mount -t tmpfs run /run; mount -t cgroup2 cgroup2 /sys/fs/cgroup\n\
         for c in $(cat /sys/fs/cgroup/cgroup.controllers); do echo +$c > /sys/fs/cgroup/cgroup.subtree_control; done\n\
         ip link set lo up; hostname testhost\n\
         echo \"testhost: kernel $(uname -r), $(nproc) CPUs, cgroup v2 controllers: $(cat /sys/fs/cgroup/cgroup.subtree_control), kvm: $(ls /dev/kvm 2>&1)\"\n\
         dmesg | grep -iE 'tsc|clocksource|svm|npt|smpboot|brought up' | sed 's/^/testhost: dmesg: /'\n\
         rc=0\n",
    );
    for r in runs {
        // Single-quoted: a value (a regular expression, say) reaches the
        // test as it is.
        let env: Vec<String> = r
            .env
            .iter()
            .map(|(k, v)| format!("{k}='{}'", v.replace('\'', "'\\''")))
            .collect();
        s.push_str(&format!(
            "echo \"testhost: running {0} {1}\"\nenv {2} /tests/{0} --test-threads=1 {1} || rc=1\n",
            r.test,
            r.filters.join(" "),
            env.join(" ")
        ));
    }
    s.push_str("[ -f /tmp/skipped ] && sed 's/^/testhost: /' /tmp/skipped\n");
    // The test host's clock as the runs left it (a TSC found unstable under
    // TCG changes how fast its VMs run).
    s.push_str("dmesg | grep -iE 'unstable|clocksource' | sed 's/^/testhost: dmesg: /'\n");
    s.push_str(&format!("echo \"{RESULT_MARKER} $rc\"\nsync\nreboot -f\n"));
    s
}

/// Runs `runs` inside the test host booted from `kernel`; returns whether
/// they all passed.
pub fn run(kernel: &Path, image: Option<&Path>, runs: &[TestRun]) -> anyhow::Result<Outcome> {
    deps::ensure(&["qemu-system-x86", "busybox-static", "e2fsprogs"])?;
    let release = runs.iter().any(|r| r.release);
    let mut build = vec!["build", "-p", "auraed", "-p", "aer"];
    if release {
        build.push("--release");
    }
    if !deps::cargo(&build, &[])? {
        bail!("building auraed failed");
    }
    let names: Vec<String> = runs.iter().map(|r| r.test.clone()).collect();
    let binaries = test_binaries(&names)?;
    let target = deps::target_dir().join(if release { "release" } else { "debug" });
    let mut m = Manifest::new();
    m.file("bin/busybox", "/bin/busybox", 0o755)?;
    m.bytes("init", init_script(runs), 0o755)?;
    for d in ["proc", "sys", "dev", "tmp", "run", "root", "etc"] {
        m.dir(d, 0o755)?;
    }
    m.bytes("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644)?;
    // As any host has (containerd copies both into each pod's sandbox);
    // no resolver: nothing in the test host asks one.
    m.bytes("etc/hosts", "127.0.0.1 localhost\n::1 localhost\n", 0o644)?;
    m.bytes(
        "etc/resolv.conf",
        "# the test host has no resolver\n",
        0o644,
    )?;
    m.char_device("dev/console", 0o600, 5, 1)?;
    let mut payload: Vec<(String, PathBuf)> = vec![
        // Tests make ext4 disks for VMs (`mke2fs -d`).
        ("usr/bin/mke2fs".into(), PathBuf::from("/usr/sbin/mke2fs")),
        ("target/auraed".into(), target.join("auraed")),
        ("target/aer".into(), target.join("aer")),
        // The VMM as auraed will run it: static, optimized.
        ("target/aurae-vmm".into(), crate::image::build_static_vmm()?),
    ];
    if let Some(image) = image {
        for f in ["bzImage", "vmlinux", "initramfs.cpio.zst"] {
            m.file(&format!("image/{f}"), image.join(f), 0o644)?;
        }
    }
    payload.extend(binaries.into_iter().map(|(n, p)| (format!("tests/{n}"), p)));
    // Runs may carry the same program or file: each goes in once.
    let programs: std::collections::BTreeMap<&String, &PathBuf> = runs
        .iter()
        .flat_map(|r| &r.programs)
        .map(|(at, p)| (at, p))
        .collect();
    if !programs.is_empty() {
        deps::ensure(&[
            "docker-registry",
            "skopeo",
            "containernetworking-plugins",
            "ca-certificates",
        ])?;
    }
    for (at, p) in programs {
        let name = p
            .file_name()
            .with_context(|| format!("{} has no file name", p.display()))?;
        payload.push((at.to_string(), p.to_path_buf()));
        if name == "skopeo" {
            let policy = Path::new("/etc/containers/policy.json");
            m.file("etc/containers/policy.json", policy, 0o644)?;
        }
        if name == "docker-registry" {
            // auraed's registry client (reqwest) needs CA certificates,
            // even for the plain-HTTP registry of the test.
            let certs = Path::new("/etc/ssl/certs/ca-certificates.crt");
            m.file("etc/ssl/certs/ca-certificates.crt", certs, 0o644)?;
        }
    }
    let files: std::collections::BTreeMap<&String, &PathBuf> = runs
        .iter()
        .flat_map(|r| &r.files)
        .map(|(at, p)| (at, p))
        .collect();
    for (at, p) in files {
        m.file(at, p, 0o644)?;
    }
    if runs.iter().any(|r| r.needs_qemu) {
        let qemu = PathBuf::from("/usr/bin/qemu-system-x86_64");
        payload.push(("usr/bin/qemu-system-x86_64".into(), qemu));
        for dir in ["/usr/share/qemu", "/usr/share/seabios"] {
            for e in std::fs::read_dir(dir)
                .with_context(|| format!("reading {dir}"))?
                .filter_map(Result::ok)
            {
                let real = std::fs::canonicalize(e.path())?;
                if real.is_file() {
                    m.file(&e.path().to_string_lossy(), real, 0o644)?;
                }
            }
        }
    }
    let mut libs = std::collections::BTreeSet::new();
    for (path, src) in &payload {
        m.file(path, src, 0o755)?;
        libs.extend(shared_libs(src)?);
    }
    for lib in libs {
        let real =
            std::fs::canonicalize(&lib).with_context(|| format!("resolving {}", lib.display()))?;
        m.file(&lib.to_string_lossy(), real, 0o755)?;
    }
    let dir = tempfile::tempdir()?;
    let initrd = dir.path().join("testhost.cpio.zst");
    m.write_zstd_file(&initrd, 3)?;
    let size = std::fs::metadata(&initrd).map(|m| m.len()).unwrap_or(0);
    println!(
        "[testhost] initramfs {} ({}), booting {}",
        initrd.display(),
        crate::cache::human_size(size),
        kernel.display()
    );

    // lapic=notscdeadline: the test host's timer is the LAPIC's one-shot
    // mode, counted in QEMU's virtual time, not a TSC deadline. The test
    // host's nested guests run with TSC offsets, and the hangs that the
    // watchdog catches began with nested guests; the TSC-deadline timer is
    // the suspect, not proven.
    let mut append = String::from(
        "console=ttyS0 reboot=t panic=-1 8250.nr_uarts=1 loglevel=4 lapic=notscdeadline",
    );
    match host_tsc_khz() {
        Some(khz) => append.push_str(&format!(" tsc_early_khz={khz}")),
        None => {
            println!("[testhost] the host's TSC rate is unknown; the test host calibrates its own")
        }
    }
    // A test host that hangs (see `testhost_watch`) is not a test failure:
    // it is retried once, loudly.
    match boot(kernel, &initrd, &append, dir.path())? {
        Run::Done(outcome) => Ok(outcome),
        Run::Hung(report) => {
            println!("[testhost] {report}");
            println!("[testhost] retrying the test host once");
            match boot(kernel, &initrd, &append, dir.path())? {
                Run::Done(outcome) => Ok(outcome),
                Run::Hung(report) => bail!("the test host hung again: {report}"),
            }
        }
    }
}

/// How a test host run ended.
enum Run {
    Done(Outcome),
    Hung(String),
}

/// Boots the test host and follows its console until it reports a result.
fn boot(kernel: &Path, initrd: &Path, append: &str, dir: &Path) -> anyhow::Result<Run> {
    let monitor = dir.join("monitor.sock");
    let _ = std::fs::remove_file(&monitor);
    let started = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-M", "pc,accel=tcg", "-cpu", TEST_HOST_CPU])
        // The initramfs (debug test binaries, auraed, QEMU) unpacks into a
        // rootfs of at most half the memory: 2 GiB stopped being enough
        // ("Initramfs unpacking failed: write error") once it passed 1 GiB;
        // 3 GiB once the CRI test brought crictl, a registry and skopeo.
        .args(["-smp", "2", "-m", "4096"])
        .args([
            "-nographic",
            "-nodefaults",
            "-no-reboot",
            "-serial",
            "stdio",
        ])
        .arg("-monitor")
        .arg(format!("unix:{},server=on,wait=off", monitor.display()))
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(append)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let mut watch = crate::testhost_watch::Watch::new(qemu.id(), &monitor);
    let stdout = qemu.stdout.take().context("qemu stdout")?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // `AURAE_TESTHOST_MINUTES` lengthens it for a long run by hand
    // (critest on the microVM backend with every spec, say).
    let minutes: u64 = match std::env::var("AURAE_TESTHOST_MINUTES") {
        Ok(m) => m
            .parse()
            .with_context(|| format!("AURAE_TESTHOST_MINUTES={m:?} is not a number"))?,
        // The e2e tier's boot runs every default test and a critest
        // sample: about 20 minutes.
        Err(_) => 40,
    };
    let deadline = started + Duration::from_secs(minutes * 60);
    let mut result = None;
    let mut bench_lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.min(Duration::from_secs(5))) {
            Ok(line) => {
                let line = line.trim_end_matches('\r');
                println!(
                    "[testhost {:>5.1}s] {line}",
                    started.elapsed().as_secs_f64()
                );
                let _ = std::io::stdout().flush();
                if line.trim().starts_with("BENCH") {
                    bench_lines.push(line.trim().to_string());
                }
                if let Some(code) = line.trim().strip_prefix(RESULT_MARKER) {
                    result = code.trim().parse::<i32>().ok();
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if Instant::now() >= deadline {
                    let _ = qemu.kill();
                    bail!("the test host did not finish within {minutes} minutes");
                }
                if let Ok(Some(_)) = qemu.try_wait() {
                    break;
                }
                if result.is_none() {
                    match watch.check() {
                        Verdict::Running => {}
                        Verdict::Nudged(Some(report)) => println!("[testhost] {report}"),
                        Verdict::Nudged(None) => {}
                        Verdict::Hung(report) => {
                            let _ = qemu.kill();
                            let _ = qemu.wait();
                            return Ok(Run::Hung(report));
                        }
                    }
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = qemu.wait()?;
    println!(
        "[testhost] QEMU exited ({status}) after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    match result {
        Some(code) => Ok(Run::Done(Outcome {
            passed: code == 0,
            bench_lines,
        })),
        None => bail!("the test host stopped without reporting a result"),
    }
}
