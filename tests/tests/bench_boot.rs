//! The boot benchmark inside the QEMU test host (run by `cargo xtask bench
//! vmm`): our VMM against `qemu -M microvm -enable-kvm`, same kernel build,
//! same initramfs, same devices (virtio-net on the same TAP, virtio-rng),
//! round-robin: launch to the guest's "/init started" console line, and
//! launch to the guest auraed answering health over mTLS. A third figure,
//! with no target, is launch to the guest kernel's clock start (launch to
//! /init minus the kernel's uptime there): the part that differs between
//! VMMs.
//!
//! QEMU runs twice per round: with the bzImage (its usual way), and with
//! the same uncompressed vmlinux that our VMM boots through PVH.
//!
//! Before each boot the test host's free memory is scrubbed (see
//! [`scrub_free_memory`]) and its idle share printed, so that no VMM pays
//! for what the previous guest left behind.

use std::time::Duration;

use aurae_tests::bench::{idle_share, median, scrub_free_memory};
use aurae_tests::guest::{
    image_dir, kvm_boots_linux, Guest, Launcher, TestNetwork, BRIDGE_IP, INSTANCE_IP, TAP,
};

#[tokio::test]
async fn boot_times_against_qemu_microvm() {
    let name = aurae_tests::function_name!();
    if std::env::var_os("AURAE_BENCH").is_none() {
        aurae_tests::report_skip(
            name,
            "a benchmark: cargo xtask bench vmm runs it inside the QEMU test host",
        );
        return;
    }
    if !kvm_boots_linux() {
        aurae_tests::report_skip(name, "this host's KVM can't boot a standard kernel");
        return;
    }
    let Some(image) = image_dir() else {
        aurae_tests::report_skip(name, "the image is not built");
        return;
    };
    let runs: usize = std::env::var("AURAE_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let vmm = aurae_tests::binary("aurae-vmm");
    const PEERS: [&str; 3] = ["aurae-vmm", "qemu-bzImage", "qemu-vmlinux"];
    let mut times: [Vec<[Duration; 3]>; 3] = Default::default();
    for i in 0..runs {
        for (p, which) in PEERS.into_iter().enumerate() {
            // A fresh bridge and TAP per boot: no ARP or TAP state carries
            // over from the previous guest.
            let _net = TestNetwork::create();
            let scrubbed = scrub_free_memory();
            let idle = idle_share(Duration::from_millis(300));
            let launcher = match which {
                // Our VMM loads the uncompressed vmlinux through PVH.
                "aurae-vmm" => Launcher::AuraeVmm {
                    vmm: vmm.clone(),
                    kernel: image.join("vmlinux"),
                    vcpus: 1,
                    nested: false,
                    vsock: false,
                    disk: None,
                    tap: TAP.into(),
                    guest_ip: INSTANCE_IP.into(),
                    gateway: BRIDGE_IP.into(),
                },
                _ => Launcher::QemuMicrovm {
                    kernel: image.join(which.trim_start_matches("qemu-")),
                    tap: TAP.into(),
                    guest_ip: INSTANCE_IP.into(),
                    gateway: BRIDGE_IP.into(),
                    disk: None,
                },
            };
            let mut g = Guest::boot_with(&image, launcher).await;
            let init = g.init_started.unwrap_or_default();
            let health = g.healthy.unwrap_or_default();
            // The guest kernel's own clock at /init: what is left of the
            // launch-to-/init time ran before the kernel's clock started
            // (the VMM, firmware, decompression).
            let console = g.console_text();
            let uptime = console
                .split("/init started, uptime ")
                .nth(1)
                .and_then(|rest| rest.split('s').next())
                .unwrap_or("?");
            g.shutdown();
            // What ran before the guest kernel's clock: the harness's spawn
            // and the VMM (with any firmware and decompression), the part
            // that differs between VMMs.
            let before_kernel = uptime
                .parse::<f64>()
                .ok()
                .and_then(|u| init.checked_sub(Duration::from_secs_f64(u)))
                .unwrap_or_default();

            // Our VMM logs how long building the VM took, and its boot
            // timer (its own start to /init), once it has stopped.
            let vmm_log = std::fs::read_to_string(g.dir.path().join("vmm.log")).unwrap_or_default();
            let ours: Vec<&str> = vmm_log
                .lines()
                .filter(|l| l.contains("VM built") || l.contains("boot timer"))
                .collect();
            println!(
                "BENCH-RUN {i} {which} init_ms={:.0} health_ms={:.0} kernel_uptime_at_init={uptime}s idle_before={idle:.2} scrubbed_mib={} {}",
                init.as_secs_f64() * 1e3,
                health.as_secs_f64() * 1e3,
                scrubbed >> 20,
                ours.join("; ")
            );
            let profile = std::fs::read_to_string(g.dir.path().join("profile.txt"));
            for l in profile.iter().flat_map(|p| p.lines()) {
                println!("BENCH-PROFILE {which} {l}");
            }
            if std::env::var_os("AURAE_BOOT_TRACE").is_some_and(|v| !v.is_empty()) {
                for l in console.lines() {
                    println!("BENCH-CONSOLE {which} {l}");
                }
            }
            times[p].push([init, health, before_kernel]);
        }
    }
    let median_of =
        |p: usize, m: usize| median(times[p].iter().map(|t| t[m]).collect()).as_secs_f64();
    for (m, what, target) in [
        (0, "launch->/init", true),
        (1, "launch->health", true),
        // Not a target: the VMMs' own share, without the guest kernel's
        // time, which is the same under both.
        (2, "launch->guest kernel clock start", false),
    ] {
        let ours = median_of(0, m);
        for (p, peer) in PEERS.iter().enumerate().skip(1) {
            let theirs = median_of(p, m);
            let verdict = match (target, ours <= 0.5 * theirs) {
                (false, _) => "no target",
                (true, true) => "target <= 0.5: met",
                (true, false) => "target <= 0.5: NOT met",
            };
            println!(
                "BENCH {what}: aurae-vmm (vmlinux, PVH) {:.0} ms, qemu microvm ({}) {:.0} ms, ratio {:.2} ({verdict})",
                ours * 1e3,
                peer.trim_start_matches("qemu-"),
                theirs * 1e3,
                ours / theirs.max(1e-9),
            );
        }
    }
    assert!(
        times
            .iter()
            .all(|t| t.iter().all(|e| e[0] > Duration::ZERO)),
        "every VMM reached /init"
    );
}
