//! Tier 4 (e2e), inside the QEMU test host: RunPod on the microVM backend.
//! The pod's image (busybox plus a 100 MiB layer) reaches the guest as a
//! read-only virtio-blk disk, not through the initramfs; the guest's auraed
//! checks its digests as it unpacks it; the pod's port answers through the
//! parent's relay and at the instance's address; freeing the pod takes its
//! VMM, TAP and host port.

use std::path::Path;
use std::time::{Duration, Instant};

use aurae_proto::runtime as pb;
use aurae_tests::guest::e2e_kvm;
use aurae_tests::image::{busybox_layer, files_layer, write_docker_save, ImageConfig};
use aurae_tests::instances::TestBridge;
use aurae_tests::pods::{container, free_port, http_get, SERVER};
use aurae_tests::{Daemon, DaemonOptions};

const BIG: usize = 100 << 20;

#[tokio::test]
async fn a_microvm_pod_gets_its_image_by_disk_and_serves_its_port() {
    let Some((image, vmm)) = e2e_kvm(aurae_tests::function_name!()) else {
        return;
    };
    let d = Daemon::start_with(DaemonOptions {
        image_dir: Some(image),
        vmm: Some(vmm),
        ..Default::default()
    })
    .await;
    let big = vec![0x5au8; BIG];
    let img = write_docker_save(
        &d.dir.join("big.tar"),
        &[busybox_layer(), files_layer(&[("big", &big)])],
        &ImageConfig::default(),
    );
    drop(big);
    let mut c = d.client().await;
    let host_port = free_port();
    // A device on a host bridge too: the VMM's second virtio-net, eth1.
    let lan = TestBridge::new("pm");
    let server = format!("/bin/busybox cat /proc/net/dev; /bin/busybox wc -c /big; {SERVER}");
    let asked = Instant::now();
    let r = c
        .run_pod(pb::RunPodRequest {
            name: "web".into(),
            containers: vec![container("server", &img, &server)],
            ports: vec![pb::PodPort {
                container_port: 8080,
                host_port: Some(host_port.into()),
            }],
            backend: pb::SpawnBackend::Microvm as i32,
            memory_mib: 768,
            ready_timeout_ms: Some(300_000),
            networks: vec![pb::PodNetwork {
                bridge: lan.0.clone(),
            }],
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("run_pod: {}\nauraed log:\n{}", e.message(), d.log_text()))
        .into_inner();
    eprintln!(
        "BENCH pod microvm with a 100 MiB image: {:.1} s to RunPod's answer",
        asked.elapsed().as_secs_f64()
    );
    let status = r.pod.expect("pod status");
    let instance = status.instance.expect("instance");
    assert_eq!(instance.backend, pb::SpawnBackend::Microvm as i32);
    let [net] = instance.networks.as_slice() else {
        panic!("{:?}", instance.networks)
    };
    assert_eq!(net.name, "eth1");
    assert_eq!(
        lan.ports(),
        vec![net.host_link.clone()],
        "a TAP on the bridge"
    );
    let vmm_pid = c
        .status(pb::StatusRequest { id: "web".into() })
        .await
        .expect("status")
        .into_inner()
        .pid;
    let cmdline = std::fs::read_to_string(format!("/proc/{vmm_pid}/cmdline")).unwrap_or_default();
    assert!(
        cmdline.contains(&format!("{}:ro", img.display())),
        "the image is the VMM's read-only disk: {cmdline:?}"
    );

    // The page, through the relay and at the instance's address, once the
    // server runs (after reading the 100 MiB layer, slow under TCG: on a
    // busy host it took more than http_get's 36 s).
    let (_, started) = aurae_tests::logs::until(
        &mut c,
        "web/server",
        "/big",
        std::time::Duration::from_secs(240),
    )
    .await;
    assert!(started, "the server never read its layer");
    http_get(&format!("127.0.0.1:{host_port}"));
    http_get(&instance.address.replace(":8443", ":8080"));
    // The 100 MiB layer arrived whole.
    let text = aurae_tests::logs::text(&mut c, "web/server").await;
    assert!(text.contains(&BIG.to_string()), "server logs: {text}");
    assert!(text.contains("eth1:"), "the guest has eth1: {text}");

    c.free(pb::FreeRequest { id: "web".into() })
        .await
        .expect("free");
    let proc = format!("/proc/{vmm_pid}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while Path::new(&proc).exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!Path::new(&proc).exists(), "the VMM is gone");
    assert!(lan.ports().is_empty(), "{:?}", lan.ports());
    assert!(
        std::net::TcpListener::bind(("::", host_port)).is_ok(),
        "the host port is free again"
    );
    let list = c.list(pb::ListRequest {}).await.expect("list").into_inner();
    assert!(list.workloads.is_empty(), "{:?}", list.workloads);
}
