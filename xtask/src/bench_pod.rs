//! `cargo xtask bench pod`: RunPod to the container's first output line,
//! cell backend, against a plain RunCell of the same image (target: at most
//! 2×) and `crun run` of the same busybox bundle, in one run, alternating,
//! medians compared. The pod takes a pre-started instance (`[instances]
//! pool = 1`; each round waits until the pool has been refilled, so the
//! figure is a claim's, not a burst's), and shares the parent's unpacked
//! image, whose cache is warm as it is for RunCell. A second auraed without
//! a pool gives the figure of a pod that starts its instance (no target).
//!
//! Then the microVM backend, inside the QEMU test host (nested KVM): RunPod
//! against QEMU `-M microvm` booting the same kernel and initramfs with the
//! same image as its disk, to a RunCell's first line
//! (tests/tests/bench_pod_microvm.rs).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use aurae_proto::runtime as pb;
use aurae_proto::runtime::runtime_client::RuntimeClient;
use aurae_tests::image;
use aurae_tests::{Daemon, DaemonOptions};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::bench_cells::{aurae_first_line, crun_first_line, settle, unify_cgroups, Hello};
use crate::deps;
use crate::stats::{median, report};

/// RunPod of `archive` printing "hello", to that line on the container's
/// log stream (through the pod's instance); the pod is freed after.
async fn pod_first_line(
    c: &mut RuntimeClient<Channel>,
    archive: &std::path::Path,
    name: &str,
) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    c.run_pod(pb::RunPodRequest {
        name: name.into(),
        containers: vec![pb::PodContainer {
            name: "main".into(),
            image: archive.display().to_string(),
            executable: None,
            limits: None,
        }],
        backend: pb::SpawnBackend::Cell as i32,
        ready_timeout_ms: Some(30_000),
        ..Default::default()
    })
    .await?;
    let mut logs = c
        .logs(pb::LogsRequest {
            id: format!("{name}/main"),
            follow: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    let first = logs.next().await.context("no output")??;
    let took = t0.elapsed();
    if first.line != b"hello" {
        bail!("the pod printed {:?}", String::from_utf8_lossy(&first.line));
    }
    c.free(pb::FreeRequest { id: name.into() }).await?;
    Ok(took)
}

/// Waits (bounded) until `d` has pre-started `n` instances in all.
async fn pool_refilled(d: &Daemon, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while d.log_text().matches("pre-started an instance").count() < n {
        if Instant::now() > deadline {
            bail!("auraed did not pre-start instance {n} within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

pub fn run(runs: usize) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("bench pod needs root (instances, cells and crun use cgroups and namespaces)");
    }
    deps::ensure(&["crun", "busybox-static"])?;
    deps::release_binaries()?;
    let initramfs = crate::image::build_initramfs()?;
    let image_dir = initramfs.parent().context("image dir")?.to_path_buf();
    unify_cgroups()?;

    let hello = Hello::make()?;
    // The same image for both: an archive (a pod's image must be one to
    // reach a microVM, so that is what pods are given).
    let archive = image::write_docker_save(
        &hello.dir.path().join("busybox.tar"),
        std::slice::from_ref(&hello.layer),
        &hello.cfg,
    );
    let bundle = hello.bundle.clone();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let start = |pool| {
            Daemon::start_with(DaemonOptions {
                image_dir: Some(image_dir.clone()),
                pool,
                ..Default::default()
            })
        };
        let (pooled, cold) = (start(1).await, start(0).await);
        let (mut pc, mut cc) = (pooled.client().await, cold.client().await);
        let (mut pods, mut colds, mut cells, mut crun) = (vec![], vec![], vec![], vec![]);
        // Round 0 warms the image caches and the bridges; not counted.
        for i in 0..=runs {
            pool_refilled(&pooled, i + 1).await?;
            settle().await;
            let p = pod_first_line(&mut pc, &archive, &format!("pod-{i}")).await?;
            // The refill runs before anything else is measured.
            pool_refilled(&pooled, i + 2).await?;
            settle().await;
            let cp = pod_first_line(&mut cc, &archive, &format!("cold-{i}")).await?;
            settle().await;
            let cell = aurae_first_line(
                &mut pc,
                pb::RunCellRequest {
                    name: format!("cell-{i}"),
                    image: archive.display().to_string(),
                    executable_name: format!("cell-{i}-main"),
                    ..Default::default()
                },
            )
            .await?;
            settle().await;
            let cr = crun_first_line(
                &bundle,
                &format!("aurae-bench-pod-{}-{i}", std::process::id()),
            )?;
            if i > 0 {
                pods.push(p);
                colds.push(cp);
                cells.push(cell);
                crun.push(cr);
            }
        }
        let pod = median(pods);
        println!("\nmedians of {runs} alternating runs (release build, cell backend):");
        report(
            "RunPod (pre-started) -> first line",
            pod,
            "RunCell, same image (warm cache)",
            median(cells),
            Some(2.0),
        );
        report(
            "RunPod (pre-started) -> first line",
            pod,
            "crun run",
            median(crun),
            None,
        );
        report(
            "RunPod (new instance) -> first line",
            median(colds),
            "RunPod (pre-started)",
            pod,
            None,
        );
        Ok::<_, anyhow::Error>(())
    })?;
    let lines = crate::testhost::bench("bench_pod_microvm", runs.clamp(1, 5), vec![])?;
    println!("\nmicroVM backend, inside the QEMU test host (nested KVM), medians:");
    for l in lines {
        println!("  {l}");
    }
    Ok(())
}
