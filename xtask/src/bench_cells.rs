//! `cargo xtask bench cells`: cell start against `crun run` of the same
//! busybox bundle, and the RunExecutable round trip against a plain
//! fork/exec, measured in one run, alternating, medians compared.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use aurae_proto::runtime as pb;
use aurae_proto::runtime::runtime_client::RuntimeClient;
use aurae_tests::image::{self, ImageConfig};
use aurae_tests::Daemon;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::deps;
use crate::stats::{median, report};

const SETTLE: Duration = Duration::from_millis(30);

/// crun refuses hybrid cgroup hosts; give this process (and the auraed it
/// starts) a private mount namespace where /sys/fs/cgroup is cgroup2, so
/// both runtimes use the same cgroup v2 hierarchy.
pub(crate) fn unify_cgroups() -> anyhow::Result<()> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let pure_v2 = info.lines().any(|l| {
        l.split_whitespace().nth(4) == Some("/sys/fs/cgroup") && l.contains(" - cgroup2 ")
    });
    if pure_v2 {
        return Ok(());
    }
    use nix::mount::{mount, MsFlags};
    println!("(hybrid cgroups: running both runtimes in a private mount namespace with cgroup2 at /sys/fs/cgroup)");
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).context("unshare(CLONE_NEWNS)")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    mount(
        Some("cgroup2"),
        "/sys/fs/cgroup",
        Some("cgroup2"),
        MsFlags::empty(),
        None::<&str>,
    )?;
    Ok(())
}

/// What both runtimes start in the cell and pod benchmarks: busybox's
/// `echo hello`, as an image layer with its config, and as a crun bundle.
pub(crate) struct Hello {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) layer: Vec<u8>,
    pub(crate) cfg: ImageConfig,
    pub(crate) bundle: std::path::PathBuf,
}

impl Hello {
    pub(crate) fn make() -> anyhow::Result<Hello> {
        let dir = tempfile::tempdir()?;
        let layer = image::busybox_layer();
        let cfg = ImageConfig {
            cmd: vec!["/bin/echo".into(), "hello".into()],
            ..Default::default()
        };
        let bundle = dir.path().join("bundle");
        crun_bundle(&bundle, &layer)?;
        Ok(Hello {
            dir,
            layer,
            cfg,
            bundle,
        })
    }
}

fn crun_bundle(dir: &Path, layer: &[u8]) -> anyhow::Result<()> {
    image::unpack_into(layer, &dir.join("rootfs"));
    let out = Command::new("crun")
        .arg("spec")
        .current_dir(dir)
        .output()
        .context("crun spec")?;
    if !out.status.success() {
        bail!("crun spec: {}", String::from_utf8_lossy(&out.stderr));
    }
    let path = dir.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(["/bin/echo", "hello"]);
    // Nothing that needs BPF or rlimits the sandbox refuses; no limits, as
    // the aurae cell has none either.
    if let Some(p) = spec["process"].as_object_mut() {
        p.remove("rlimits");
    }
    if let Some(l) = spec["linux"].as_object_mut() {
        l.remove("resources");
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)?;
    Ok(())
}

pub(crate) fn crun_first_line(bundle: &Path, id: &str) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let mut child = Command::new("crun")
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("crun run")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let took = t0.elapsed();
    let status = child.wait()?;
    if line.trim() != "hello" || !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        bail!("crun run printed {line:?} ({status}): {err}");
    }
    Ok(took)
}

pub(crate) async fn aurae_first_line(
    c: &mut RuntimeClient<Channel>,
    req: pb::RunCellRequest,
) -> anyhow::Result<Duration> {
    let name = req.name.clone();
    // Attach to the first executable's output before it exists, on the same
    // connection, as `aer cell run --wait` does.
    let mut attach = c.clone();
    let exe = req.executable_name.clone();
    let t0 = Instant::now();
    let logs = tokio::spawn(async move {
        attach
            .logs(pb::LogsRequest {
                id: exe,
                follow: true,
                wait_for_start: true,
                new_only: false,
            })
            .await
    });
    c.run_cell(req).await?;
    let mut logs = logs.await??.into_inner();
    let first = logs.next().await.context("no output")??;
    let took = t0.elapsed();
    if first.line != b"hello" {
        bail!("cell printed {:?}", String::from_utf8_lossy(&first.line));
    }
    c.free(pb::FreeRequest { id: name }).await?;
    Ok(took)
}

/// Lets the kernel finish the previous run's teardown (network namespaces
/// are destroyed by a worker, after the last process has gone) before the
/// next measurement, so that no runtime pays for its predecessor's cleanup.
pub(crate) async fn settle() {
    tokio::time::sleep(SETTLE).await;
}

async fn roundtrip(c: &mut RuntimeClient<Channel>, i: usize) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let r = c
        .run_executable(pb::RunExecutableRequest {
            name: format!("rt-{i}"),
            cell: String::new(),
            executable: Some(pb::Executable {
                command: "/bin/true".into(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    let st = c
        .wait(pb::WaitRequest {
            id: r.id.clone(),
            timeout_ms: Some(10_000),
        })
        .await?
        .into_inner();
    let took = t0.elapsed();
    if st.exit_code != Some(0) {
        bail!("/bin/true exited with {st:?}");
    }
    c.free(pb::FreeRequest { id: r.id }).await?;
    Ok(took)
}

pub fn run(runs: usize) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("bench cells needs root (cells and crun use cgroups and namespaces)");
    }
    deps::ensure(&["crun", "busybox-static"])?;
    deps::release_binaries()?;
    unify_cgroups()?;

    let hello = Hello::make()?;
    let layout = image::write_layout(
        &hello.dir.path().join("image"),
        std::slice::from_ref(&hello.layer),
        &hello.cfg,
    );
    let bundle = hello.bundle.clone();

    // A single-threaded client, like `aer`.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let d = Daemon::start().await;
        // One connection for every request, as a control plane keeps its
        // channel to the node open.
        let mut c = d.client().await;
        let (mut image_cell, mut host_cell, mut crun, mut ours_rt, mut fork_rt) =
            (vec![], vec![], vec![], vec![], vec![]);
        // One warm-up round of each, not counted.
        for i in 0..=runs {
            settle().await;
            let a = aurae_first_line(
                &mut c,
                pb::RunCellRequest {
                    name: format!("img-{i}"),
                    image: layout.display().to_string(),
                    executable_name: format!("img-{i}-main"),
                    ..Default::default()
                },
            )
            .await?;
            settle().await;
            let h = aurae_first_line(
                &mut c,
                pb::RunCellRequest {
                    name: format!("host-{i}"),
                    executable: Some(pb::Executable {
                        command: "/bin/echo".into(),
                        args: vec!["hello".into()],
                        ..Default::default()
                    }),
                    executable_name: format!("host-{i}-main"),
                    ..Default::default()
                },
            )
            .await?;
            settle().await;
            let cr = crun_first_line(&bundle, &format!("aurae-bench-{}-{i}", std::process::id()))?;
            settle().await;
            let r = roundtrip(&mut c, i).await?;
            settle().await;
            let t0 = Instant::now();
            let s = Command::new("/bin/true").status()?;
            let f = t0.elapsed();
            if !s.success() {
                bail!("/bin/true failed");
            }
            if i > 0 {
                image_cell.push(a);
                host_cell.push(h);
                crun.push(cr);
                ours_rt.push(r);
                fork_rt.push(f);
            }
        }
        println!("\nmedians of {runs} alternating runs (release build):");
        let crun_median = median(crun);
        report(
            "cell start, OCI image -> first line",
            median(image_cell),
            "crun run",
            crun_median,
            Some(0.5),
        );
        report(
            "cell start, host root -> first line",
            median(host_cell),
            "crun run",
            crun_median,
            Some(0.5),
        );
        report(
            "RunExecutable round trip (/bin/true)",
            median(ours_rt),
            "fork/exec",
            median(fork_rt),
            None,
        );
        Ok(())
    })
}
