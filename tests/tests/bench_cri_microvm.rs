//! The microVM half of `cargo xtask bench cri`, inside the QEMU test host
//! (nested KVM): a CRI pod sandbox on the microVM backend (RuntimeClass
//! handler `aurae-microvm`: a VM booted by aurae-vmm, the container's image
//! given to it over its link) plus one busybox container, driven step by
//! step with crictl to the container's line in its log file, against
//! Debian's containerd 1.6 with runc in the same test host, on the same
//! image from the same local registry and the same CNI bridge network;
//! alternating, medians. Printed as `BENCH` lines, which xtask shows.

use std::path::Path;
use std::time::Duration;

use aurae_tests::bench::scrub_free_memory;
use aurae_tests::cri::{have, Crictl, Registry};
use aurae_tests::cri_bench::{one_pod, Containerd, Steps, IMAGE};
use aurae_tests::guest::e2e_kvm;
use aurae_tests::image::{busybox_layer, write_docker_save, ImageConfig};
use aurae_tests::{critest, report_skip, Daemon, DaemonOptions};

const HANDLER: &str = "aurae-microvm";

/// The image every container runs, and containerd's sandbox image, both of
/// the test host's busybox, pushed to `registry`.
fn push_images(registry: &Registry, dir: &Path) {
    let layer = busybox_layer();
    for (name, cmd) in [
        ("e2e-test-images/busybox:1.29-2", vec!["/bin/sh"]),
        ("pause:3.6", vec!["/bin/sleep", "2147483647"]),
    ] {
        let file = dir.join(format!("{}.tar", name.replace(['/', ':'], "_")));
        let cfg = ImageConfig {
            cmd: cmd.into_iter().map(str::to_string).collect(),
            ..ImageConfig::default()
        };
        write_docker_save(&file, std::slice::from_ref(&layer), &cfg);
        registry.push(&file, name);
    }
}

#[test]
fn bench_cri_microvm_against_containerd() {
    let name = aurae_tests::function_name!();
    if std::env::var_os("AURAE_BENCH").is_none() {
        report_skip(name, "a benchmark: `cargo xtask bench cri` runs it");
        return;
    }
    let Some((image, vmm)) = e2e_kvm(name) else {
        return;
    };
    for program in ["containerd", "runc", "crictl", "docker-registry", "skopeo"] {
        if !have(program) {
            report_skip(name, "containerd, runc, crictl or the registry is not in the test host (`cargo xtask bench cri` carries them)");
            eprintln!("missing: {program}");
            return;
        }
    }
    let runs: usize = std::env::var("AURAE_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let work = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start();
    push_images(&registry, work.path());
    let cni = critest::cni_config(work.path()).expect("the CNI configuration");
    let containerd = Containerd::start(&work.path().join("containerd"), &cni, registry.port, true)
        .expect("containerd");
    let containerd_ctl = Crictl::new(containerd.socket.clone());
    let socket = work.path().join("cri.sock");
    let extra_config = critest::microvm_cri_section(&socket, &cni, registry.port);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let daemon = rt.block_on(Daemon::start_with(DaemonOptions {
        image_dir: Some(image),
        vmm: Some(vmm),
        extra_config,
        ..Default::default()
    }));
    let aurae_ctl = Crictl::new(socket);
    for ctl in [&aurae_ctl, &containerd_ctl] {
        ctl.ok(&["pull", IMAGE]);
    }
    let (mut vm, mut peer) = (Steps::default(), Steps::default());
    let (mut warm_vm, mut warm_peer) = (Steps::default(), Steps::default());
    let deadline = Duration::from_secs(300);
    // Round 0 warms caches and bridges; not counted.
    for i in 0..=runs {
        scrub_free_memory();
        let steps = if i > 0 { &mut vm } else { &mut warm_vm };
        if let Err(e) = one_pod(
            &aurae_ctl,
            work.path(),
            &format!("v{i}"),
            Some(HANDLER),
            deadline,
            steps,
        ) {
            panic!(
                "the microVM pod: {e:#}; auraed's log:\n{}",
                daemon.log_text()
            );
        }
        scrub_free_memory();
        let steps = if i > 0 { &mut peer } else { &mut warm_peer };
        one_pod(
            &containerd_ctl,
            work.path(),
            &format!("k{i}"),
            None,
            deadline,
            steps,
        )
        .expect("the containerd pod");
        let last = |s: &Steps| s.total.last().copied().unwrap_or_default().as_secs_f64();
        let (v, k) = if i > 0 {
            (last(&vm), last(&peer))
        } else {
            (last(&warm_vm), last(&warm_peer))
        };
        println!("BENCH-RUN {i}: microVM pod {v:.2} s, containerd {k:.2} s");
    }
    let floor =
        |ctl: &Crictl| aurae_tests::cri_bench::crictl_floor(ctl, 5).expect("crictl version");
    let (vfloor, kfloor) = (floor(&aurae_ctl), floor(&containerd_ctl));
    let (vf, kf) = (vfloor.as_secs_f64(), kfloor.as_secs_f64());
    println!("BENCH cri, medians of {runs} alternating rounds, steps driven by crictl:");
    println!(
        "BENCH   auraed, microVM pod (aurae-microvm)  {}",
        vm.medians()
    );
    println!(
        "BENCH   containerd 1.6 + runc              {}",
        peer.medians()
    );
    println!(
        "BENCH   pod + container -> log line: microVM {:.2} s, containerd {:.2} s, ratio {:.2}",
        vm.total().as_secs_f64(),
        peer.total().as_secs_f64(),
        vm.total().as_secs_f64() / peer.total().as_secs_f64().max(f64::MIN_POSITIVE)
    );
    let (v, k) = (
        aurae_tests::cri_bench::without_crictl(vm.total(), vfloor),
        aurae_tests::cri_bench::without_crictl(peer.total(), kfloor),
    );
    println!(
        "BENCH   crictl's own share (`crictl version`, median of 5): {vf:.3} s against auraed, \
         {kf:.3} s against containerd, three per pod; without it: microVM {v:.2} s, \
         containerd {k:.2} s, ratio {:.2}",
        v / k.max(f64::MIN_POSITIVE)
    );
    drop(daemon);
    drop(containerd);
}
