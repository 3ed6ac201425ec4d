//! The microVM half of `cargo xtask bench spawn`, inside the QEMU test host:
//! `Spawn` on the microVM backend (auraed issues the identity, writes the
//! overlay, makes the TAP, starts aurae-vmm in a cell, waits for health
//! over mTLS) against QEMU `-M microvm` booting the same kernel and
//! initramfs to health (with an overlay the harness wrote beforehand), one
//! after the other, round-robin. Both guests get 1 vCPU and 512 MiB.
//!
//! Also measured, a second after each is ready: what each VMM process holds
//! resident besides its guest's RAM (the VMM's own overhead).

use std::time::{Duration, Instant};

use aurae_proto::runtime as pb;
use aurae_tests::bench::{idle_share, median, rss_beside_guest_ram_kib, scrub_free_memory};
use aurae_tests::guest::{Guest, Launcher, TestNetwork, BRIDGE_IP, INSTANCE_IP, TAP};

const GUEST_MIB: u64 = 512;

#[tokio::test]
async fn spawn_to_ready_against_qemu_microvm() {
    let Some((image, d, runs)) =
        aurae_tests::bench::microvm_bench(aurae_tests::function_name!(), "spawn").await
    else {
        return;
    };
    let mut c = d.client().await;
    let request = || pb::SpawnRequest {
        name: "m".into(),
        backend: pb::SpawnBackend::Microvm as i32,
        vcpus: 1,
        memory_mib: GUEST_MIB,
        ready_timeout_ms: Some(120_000),
        ..Default::default()
    };
    let (mut ours, mut theirs) = (vec![], vec![]);
    let (mut our_rss, mut their_rss) = (vec![], vec![]);
    // Round 0 warms what only the first spawn pays for (the bridge, the
    // unpacked image, page cache) and is not counted.
    for i in 0..=runs {
        scrub_free_memory();
        let idle = idle_share(Duration::from_millis(300));
        let asked = Instant::now();
        let r = c
            .spawn(request())
            .await
            .unwrap_or_else(|e| panic!("spawn: {}\nauraed log:\n{}", e.message(), d.log_text()))
            .into_inner();
        let spawned = asked.elapsed();
        let status = r.instance.expect("instance status");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let pid = c
            .status(pb::StatusRequest { id: "m".into() })
            .await
            .expect("status")
            .into_inner()
            .pid;
        let rss = rss_beside_guest_ram_kib(pid, GUEST_MIB).expect("the VMM's smaps");
        c.free(pb::FreeRequest { id: "m".into() })
            .await
            .expect("free");

        let _net = TestNetwork::create();
        scrub_free_memory();
        let their_idle = idle_share(Duration::from_millis(300));
        let mut g = Guest::boot_with(
            &image,
            Launcher::QemuMicrovm {
                kernel: image.join("vmlinux"),
                tap: TAP.into(),
                guest_ip: INSTANCE_IP.into(),
                gateway: BRIDGE_IP.into(),
                disk: None,
            },
        )
        .await;
        let health = g.healthy.expect("QEMU's guest answered health");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let qemu_rss = rss_beside_guest_ram_kib(g.pid(), GUEST_MIB).expect("QEMU's smaps");
        g.shutdown();
        println!(
            "BENCH-RUN {i} spawn_ms={:.0} (instance ready_ms={} boot_ms={:?}) rss_kib={rss} idle_before={idle:.2} | qemu health_ms={:.0} rss_kib={qemu_rss} idle_before={their_idle:.2}",
            spawned.as_secs_f64() * 1e3,
            status.ready_ms,
            status.boot_ms,
            health.as_secs_f64() * 1e3,
        );
        if i > 0 {
            ours.push(spawned);
            theirs.push(health);
            our_rss.push(rss);
            their_rss.push(qemu_rss);
        }
    }
    let (o, t) = (median(ours).as_secs_f64(), median(theirs).as_secs_f64());
    println!(
        "BENCH spawn -> ready, microVM backend: Spawn {:.0} ms, qemu microvm launch -> health {:.0} ms, ratio {:.2} (no target)",
        o * 1e3,
        t * 1e3,
        o / t.max(1e-9)
    );
    our_rss.sort_unstable();
    their_rss.sort_unstable();
    let (o, t) = (our_rss[our_rss.len() / 2], their_rss[their_rss.len() / 2]);
    println!(
        "BENCH idle VMM overhead beside guest RAM: aurae-vmm {:.1} MiB, qemu microvm {:.1} MiB, ratio {:.2} (no target)",
        o as f64 / 1024.0,
        t as f64 / 1024.0,
        o as f64 / (t as f64).max(1.0)
    );
    let list = c.list(pb::ListRequest {}).await.expect("list").into_inner();
    assert!(list.workloads.is_empty(), "{:?}", list.workloads);
}
