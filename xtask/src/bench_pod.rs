//! `cargo xtask bench pod`: RunPod to the container's first output line,
//! cell backend, against a plain RunCell of the same image (target: at most
//! 2×) and `crun run` of the same busybox bundle, in one run, alternating,
//! medians compared. The host's image cache is warm for RunCell, while each
//! pod's instance starts with an empty one and unpacks the image: part of
//! what a pod costs today.
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
        let d = Daemon::start_with(DaemonOptions {
            image_dir: Some(image_dir),
            ..Default::default()
        })
        .await;
        let mut c = d.client().await;
        let (mut pods, mut cells, mut crun) = (vec![], vec![], vec![]);
        // Round 0 warms the image caches and the bridge; not counted.
        for i in 0..=runs {
            settle().await;
            let p = pod_first_line(&mut c, &archive, &format!("pod-{i}")).await?;
            settle().await;
            let cell = aurae_first_line(
                &mut c,
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
                cells.push(cell);
                crun.push(cr);
            }
        }
        let pod = median(pods);
        println!("\nmedians of {runs} alternating runs (release build, cell backend):");
        report(
            "RunPod -> first line",
            pod,
            "RunCell, same image (warm cache)",
            median(cells),
            Some(2.0),
        );
        report("RunPod -> first line", pod, "crun run", median(crun), None);
        Ok::<_, anyhow::Error>(())
    })?;
    let lines = crate::testhost::bench("bench_pod_microvm", runs.clamp(1, 5), vec![])?;
    println!("\nmicroVM backend, inside the QEMU test host (nested KVM), medians:");
    for l in lines {
        println!("  {l}");
    }
    Ok(())
}
