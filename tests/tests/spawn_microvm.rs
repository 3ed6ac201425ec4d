//! Tier 4 (e2e), inside the QEMU test host: auraed spawns an instance on
//! the microVM backend (aurae-vmm in a cell of its own, on a TAP on
//! auraed's bridge), routes requests into it (a cell with a cgroup v2
//! memory limit, busybox, logs), spawns an instance of the instance, and
//! frees it all: the VMM and its TAP go.

use std::path::Path;
use std::time::{Duration, Instant};

use aurae_proto::runtime as pb;
use aurae_tests::guest::e2e_kvm;
use aurae_tests::{Daemon, DaemonOptions};

/// The TAPs of `d`'s instances: `<bridge stem>t<index>`.
fn taps(d: &Daemon) -> Vec<String> {
    let stem: String = d.bridge().chars().take(9).collect();
    let prefix = format!("{stem}t");
    let mut found: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    n.strip_prefix(&prefix)
                        .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

#[tokio::test]
async fn a_microvm_instance_runs_cells_spawns_and_goes_away() {
    let Some((image, vmm)) = e2e_kvm(aurae_tests::function_name!()) else {
        return;
    };
    let d = Daemon::start_with(DaemonOptions {
        image_dir: Some(image),
        vmm: Some(vmm),
        ..Default::default()
    })
    .await;
    let mut c = d.client().await;
    assert!(taps(&d).is_empty(), "no TAP before: {:?}", taps(&d));

    // a: a microVM that can run KVM itself.
    let asked = Instant::now();
    let r = c
        .spawn(pb::SpawnRequest {
            name: "a".into(),
            backend: pb::SpawnBackend::Microvm as i32,
            nested: true,
            memory_mib: 512,
            ready_timeout_ms: Some(300_000),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("spawn a: {}\nauraed log:\n{}", e.message(), d.log_text()))
        .into_inner();
    let took = asked.elapsed();
    let i = r.instance.expect("instance status");
    assert_eq!(i.backend, pb::SpawnBackend::Microvm as i32, "{i:?}");
    assert!(i.address.starts_with("[fd"), "a ULA address: {}", i.address);
    let boot_ms = i.boot_ms.expect("the VMM's boot timer");
    assert!(boot_ms > 0 && boot_ms <= i.ready_ms, "{i:?}");
    eprintln!(
        "BENCH spawn microvm: boot timer {boot_ms} ms, ready {} ms (request to answer {:.0} ms)",
        i.ready_ms,
        took.as_secs_f64() * 1000.0
    );
    assert_eq!(taps(&d).len(), 1, "one TAP: {:?}", taps(&d));
    let status = c
        .status(pb::StatusRequest { id: "a".into() })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(
        status.instance.as_ref().map(|i| i.backend),
        Some(pb::SpawnBackend::Microvm as i32)
    );
    let vmm_pid = status.pid;
    assert!(
        std::fs::read_to_string(format!("/proc/{vmm_pid}/cmdline"))
            .unwrap_or_default()
            .contains("aurae-vmm"),
        "the instance's process is the VMM"
    );

    // Unmodified workloads in the VM read the record a's parent keeps, at
    // 169.254.169.254 (served by a's own auraed, asking its parent).
    d.aer_ok(&["meta", "set", "a", "role=vm"]);
    let out = aurae_tests::instances::imds_from(&d, "a");
    assert!(out.contains("token-length=48"), "{out}");
    assert!(
        out.contains("role=vm\n") && out.contains("path=a\n"),
        "{out}"
    );
    assert!(
        aurae_tests::instances::line_has(&out, "untokened: ", "401"),
        "{out}"
    );

    // A cell with a real cgroup v2 memory limit, inside the guest: its
    // processes run in its leaf, so the limit is read from the guest's
    // side (an executable of the instance's auraed, outside the cell).
    d.aer_ok(&[
        "--instance",
        "a",
        "cell",
        "run",
        "--name",
        "limited",
        "--memory",
        "64M",
        "--",
        "/bin/busybox",
        "sleep",
        "30",
    ]);
    let out = d.aer_ok(&["-o", "json", "--instance", "a", "status", "limited"]);
    let cell: serde_json::Value = serde_json::from_str(&out).expect("status json");
    let cgroup = cell["cgroup"].as_str().expect("cgroup path").to_string();
    let out = d.aer_ok(&[
        "--instance",
        "a",
        "exec",
        "--wait",
        "--",
        "/bin/busybox",
        "cat",
        &format!("{cgroup}/memory.max"),
    ]);
    assert!(out.contains(&(64u64 << 20).to_string()), "{out}");
    // busybox, its output through the routed Logs.
    let out = d.aer_ok(&[
        "--instance",
        "a",
        "exec",
        "--name",
        "hello",
        "--wait",
        "--",
        "/bin/busybox",
        "echo",
        "hello from a microVM",
    ]);
    assert!(out.contains("hello from a microVM"), "{out}");
    let out = d.aer_ok(&["--instance", "a", "logs", "hello"]);
    assert!(out.contains("hello from a microVM"), "{out}");

    // An instance of the instance: a microVM where the guest has KVM
    // (nested), else a cell.
    let out = d.aer_ok(&[
        "-o",
        "json",
        "--instance",
        "a",
        "spawn",
        "--name",
        "b",
        "--timeout",
        "300s",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["spiffe_id"], "spiffe://test.local/auraed/a/b", "{out}");
    eprintln!(
        "BENCH spawn in a microVM: b on {} ({}), ready {} ms",
        v["backend"], v["backend_reason"], v["ready_ms"]
    );
    // Which backend b got follows from what a's kernel offers: /dev/kvm
    // with a hardware backend (a was spawned nested, so its overlay holds
    // the kernel and the VMM) means a microVM.
    let kvm = aurae_tests::instances::sh_in(
        &d,
        "a",
        "test -e /dev/kvm && { test -e /sys/module/kvm_amd || test -e /sys/module/kvm_intel; } && echo kvm=yes || echo kvm=no",
    );
    let expected = if kvm.contains("kvm=yes") {
        "microvm"
    } else {
        "cell"
    };
    assert_eq!(v["backend"], expected, "a says {kvm}; b: {out}");
    assert!(
        v["backend_reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{out}"
    );
    let ls = d.aer_ok(&["--instance", "a/b", "ls"]);
    eprintln!("a/b answers: {ls}");

    // Freeing a: its VMM and its TAP go.
    c.free(pb::FreeRequest { id: "a".into() })
        .await
        .expect("free");
    let deadline = Instant::now() + Duration::from_secs(20);
    let proc = format!("/proc/{vmm_pid}");
    while Path::new(&proc).exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!Path::new(&proc).exists(), "the VMM is gone");
    assert!(taps(&d).is_empty(), "no TAP left: {:?}", taps(&d));
    let list = c.list(pb::ListRequest {}).await.expect("list").into_inner();
    assert!(list.workloads.is_empty(), "{:?}", list.workloads);
}
