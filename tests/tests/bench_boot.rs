//! The boot benchmark inside the QEMU test host (run by `cargo xtask bench
//! vmm`): our VMM against `qemu -M microvm -enable-kvm`, same kernel, same
//! initramfs, same TAP, alternating: launch to the guest's "/init started"
//! console line, and launch to the guest auraed answering health over mTLS.

use std::time::Duration;

use aurae_tests::guest::{
    image_dir, kvm_boots_linux, Guest, Launcher, TestNetwork, BRIDGE_IP, INSTANCE_IP, TAP,
};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

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
    let (mut ours, mut qemu) = (Vec::new(), Vec::new());
    for i in 0..runs {
        for which in ["aurae-vmm", "qemu"] {
            // A fresh bridge and TAP per boot: no ARP or TAP state carries
            // over from the previous guest.
            let _net = TestNetwork::create();
            let launcher = match which {
                // Our VMM loads the uncompressed vmlinux through PVH; QEMU
                // boots the bzImage of the same build.
                "aurae-vmm" => Launcher::AuraeVmm {
                    vmm: vmm.clone(),
                    kernel: image.join("vmlinux"),
                    vcpus: 1,
                    nested: false,
                    tap: TAP.into(),
                    guest_ip: INSTANCE_IP.into(),
                    gateway: BRIDGE_IP.into(),
                },
                _ => Launcher::QemuMicrovm {
                    tap: TAP.into(),
                    guest_ip: INSTANCE_IP.into(),
                    gateway: BRIDGE_IP.into(),
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
            let vmm_log = std::fs::read_to_string(g.dir.path().join("vmm.log")).unwrap_or_default();
            let built = vmm_log
                .lines()
                .find(|l| l.contains("VM built"))
                .unwrap_or("");
            println!(
                "BENCH-RUN {i} {which} init_ms={:.0} health_ms={:.0} kernel_uptime_at_init={uptime}s {built}",
                init.as_secs_f64() * 1e3,
                health.as_secs_f64() * 1e3
            );
            if std::env::var_os("AURAE_BOOT_TRACE").is_some_and(|v| !v.is_empty()) {
                for l in console.lines() {
                    println!("BENCH-CONSOLE {which} {l}");
                }
            }
            g.shutdown();
            let entry = (init, health);
            if which == "qemu" {
                qemu.push(entry);
            } else {
                ours.push(entry);
            }
        }
    }
    let m = |v: &[(Duration, Duration)], f: fn(&(Duration, Duration)) -> Duration| {
        median(v.iter().map(f).collect())
    };
    let (oi, oh) = (m(&ours, |e| e.0), m(&ours, |e| e.1));
    let (qi, qh) = (m(&qemu, |e| e.0), m(&qemu, |e| e.1));
    println!("BENCH launch->/init: aurae-vmm (vmlinux, PVH) {:.0} ms, qemu microvm (bzImage) {:.0} ms, ratio {:.2} (target <= 0.5)", oi.as_secs_f64() * 1e3, qi.as_secs_f64() * 1e3, oi.as_secs_f64() / qi.as_secs_f64().max(1e-9));
    println!("BENCH launch->health: aurae-vmm (vmlinux, PVH) {:.0} ms, qemu microvm (bzImage) {:.0} ms, ratio {:.2} (target <= 0.5)", oh.as_secs_f64() * 1e3, qh.as_secs_f64() * 1e3, oh.as_secs_f64() / qh.as_secs_f64().max(1e-9));
    assert!(
        oi > Duration::ZERO && qi > Duration::ZERO,
        "both VMMs reached /init"
    );
}
