//! The microVM half of `cargo xtask bench pod`, inside the QEMU test host:
//! `RunPod` on the microVM backend (an instance booted by aurae-vmm, the
//! image attached as a read-only disk, a container started from it) to the
//! container's first output line, against QEMU `-M microvm` booting the
//! same kernel and initramfs with the same image as its disk, to health,
//! then a `RunCell` of that disk in its auraed, to the first line. One
//! after the other, round-robin; both guests get 1 vCPU and 512 MiB.

use std::path::Path;
use std::time::{Duration, Instant};

use aurae_proto::runtime as pb;
use aurae_proto::runtime::runtime_client::RuntimeClient;
use aurae_tests::bench::{median, scrub_free_memory};
use aurae_tests::guest::{Guest, Launcher, TestNetwork, BRIDGE_IP, INSTANCE_IP, TAP};
use aurae_tests::image::{busybox_layer, write_docker_save, ImageConfig};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

const GUEST_MIB: u64 = 512;

/// The first line `id` logs, which must be "hello".
async fn first_line(c: &mut RuntimeClient<Channel>, id: &str) {
    let mut logs = c
        .logs(pb::LogsRequest {
            id: id.into(),
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("logs {id}: {}", e.message()))
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(120), logs.next())
        .await
        .expect("a line within 120 s")
        .expect("a line")
        .expect("the stream");
    assert_eq!(first.line, b"hello", "{id}");
}

/// RunPod of `archive` on the microVM backend, to its first line.
async fn pod(c: &mut RuntimeClient<Channel>, archive: &Path) -> Duration {
    let asked = Instant::now();
    c.run_pod(pb::RunPodRequest {
        name: "p".into(),
        containers: vec![pb::PodContainer {
            name: "main".into(),
            image: archive.display().to_string(),
            executable: None,
            limits: None,
        }],
        backend: pb::SpawnBackend::Microvm as i32,
        vcpus: 1,
        memory_mib: GUEST_MIB,
        ready_timeout_ms: Some(120_000),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("run_pod: {}", e.message()));
    first_line(c, "p/main").await;
    let took = asked.elapsed();
    c.free(pb::FreeRequest { id: "p".into() })
        .await
        .expect("free");
    took
}

/// QEMU microvm with `archive` as its disk, to health, then RunCell of the
/// disk in its auraed, to the first line.
async fn qemu(image: &Path, archive: &Path) -> (Duration, Duration) {
    let _net = TestNetwork::create();
    let launched = Instant::now();
    let mut g = Guest::boot_with(
        image,
        Launcher::QemuMicrovm {
            kernel: image.join("vmlinux"),
            tap: TAP.into(),
            guest_ip: INSTANCE_IP.into(),
            gateway: BRIDGE_IP.into(),
            disk: Some(archive.to_path_buf()),
        },
    )
    .await;
    let health = g.healthy.expect("QEMU's guest answered health");
    let mut c = g.client().await;
    let r = c
        .run_cell(pb::RunCellRequest {
            name: "main".into(),
            image: "/dev/vda".into(),
            share_host: Some(pb::HostNamespaces {
                net: true,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("run_cell in QEMU's guest: {}", e.message()))
        .into_inner();
    first_line(&mut c, &r.executable_id).await;
    let took = launched.elapsed();
    g.shutdown();
    (took, health)
}

#[tokio::test]
async fn run_pod_to_first_line_against_qemu_microvm() {
    let Some((image, d, runs)) =
        aurae_tests::bench::microvm_bench(aurae_tests::function_name!(), "pod").await
    else {
        return;
    };
    let archive = write_docker_save(
        &d.dir.join("hello.tar"),
        &[busybox_layer()],
        &ImageConfig {
            cmd: vec!["/bin/busybox".into(), "echo".into(), "hello".into()],
            ..Default::default()
        },
    );
    let mut c = d.client().await;
    let (mut ours, mut theirs) = (vec![], vec![]);
    // Round 0 warms the bridge and the page cache; not counted.
    for i in 0..=runs {
        scrub_free_memory();
        let o = pod(&mut c, &archive).await;
        scrub_free_memory();
        let (t, health) = qemu(&image, &archive).await;
        println!(
            "BENCH-RUN {i} runpod_first_line_ms={:.0} | qemu first_line_ms={:.0} (health_ms={:.0})",
            o.as_secs_f64() * 1e3,
            t.as_secs_f64() * 1e3,
            health.as_secs_f64() * 1e3,
        );
        if i > 0 {
            ours.push(o);
            theirs.push(t);
        }
    }
    let (o, t) = (median(ours).as_secs_f64(), median(theirs).as_secs_f64());
    println!(
        "BENCH pod -> first line, microVM backend: RunPod {:.0} ms, qemu microvm launch -> health -> RunCell -> first line {:.0} ms, ratio {:.2} (no target)",
        o * 1e3,
        t * 1e3,
        o / t.max(1e-9)
    );
    let list = c.list(pb::ListRequest {}).await.expect("list").into_inner();
    assert!(list.workloads.is_empty(), "{:?}", list.workloads);
}
