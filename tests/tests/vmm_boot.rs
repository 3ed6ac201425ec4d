//! Tier 4 (e2e), inside the QEMU test host: our VMM boots our image under
//! KVM with a TAP on a bridge; the guest auraed answers over mTLS, runs a
//! cell, reads a read-only virtio-blk disk through its Linux driver, and
//! answers on vsock; the boot timer shows that /init started.

use std::time::Duration;

use aurae_proto::runtime as pb;
use aurae_tests::guest::{e2e_kvm, Guest, Launcher, TestNetwork, BRIDGE_IP, INSTANCE_IP, TAP};
use tokio_stream::StreamExt;

/// What the guest's disk starts with.
const DISK_MARK: &[u8] = b"aurae disk, sector 0\n";

#[tokio::test]
async fn our_vmm_boots_our_image_and_the_guest_runs_a_cell() {
    let Some((image, vmm)) = e2e_kvm(aurae_tests::function_name!()) else {
        return;
    };
    boot_and_check(&image, vmm, image.join("bzImage"), 1, false).await;
}

/// The ELF vmlinux through its PVH entry, with two vCPUs (MP tables), and
/// SVM passed through so the guest can run KVM itself (nested spawn).
#[tokio::test]
async fn our_vmm_boots_vmlinux_through_pvh_with_two_vcpus() {
    let Some((image, vmm)) = e2e_kvm(aurae_tests::function_name!()) else {
        return;
    };
    if !image.join("vmlinux").is_file() {
        aurae_tests::report_skip(aurae_tests::function_name!(), "the image has no vmlinux");
        return;
    }
    boot_and_check(&image, vmm, image.join("vmlinux"), 2, true).await;
}

async fn boot_and_check(
    image: &std::path::Path,
    vmm: std::path::PathBuf,
    kernel: std::path::PathBuf,
    vcpus: u8,
    nested: bool,
) {
    let _net = TestNetwork::create();
    // A read-only disk whose first bytes the guest reads back.
    let disk = tempfile::NamedTempFile::new().expect("disk");
    let mut bytes = DISK_MARK.to_vec();
    bytes.resize(1 << 20, 0);
    std::fs::write(disk.path(), &bytes).expect("disk");
    let mut guest = Guest::boot_with(
        image,
        Launcher::AuraeVmm {
            vmm,
            kernel,
            vcpus,
            nested,
            vsock: true,
            disk: Some(disk.path().to_path_buf()),
            tap: TAP.into(),
            guest_ip: INSTANCE_IP.into(),
            gateway: BRIDGE_IP.into(),
        },
    )
    .await;
    // Each step is bounded, so that a hang says where it was, with the
    // guest's console and the VMM's log.
    let mut c = bounded(&guest, "connecting to the guest's auraed", guest.client()).await;
    bounded(&guest, "executables and a cell in the guest", async {
        let nproc = first_line(&mut c, "nproc", &["nproc"]).await;
        assert_eq!(nproc, vcpus.to_string(), "the guest sees every vCPU");
        // With --nested the guest sees SVM or VMX and its KVM comes up;
        // without, neither.
        let virt = first_line(
            &mut c,
            "virt",
            &[
                "sh",
                "-c",
                "grep -qwE 'svm|vmx' /proc/cpuinfo && test -c /dev/kvm && echo kvm || echo none",
            ],
        )
        .await;
        assert_eq!(
            virt,
            if nested { "kvm" } else { "none" },
            "nested: {nested}"
        );
        // The guest's virtio-blk driver reads the disk through our device.
        let head = first_line(&mut c, "disk", &["head", "-c", "18", "/dev/vda"]).await;
        assert_eq!(head.as_bytes(), &DISK_MARK[..18]);
        c.run_cell(pb::RunCellRequest {
            name: "vmcell".into(),
            image: "/images/busybox".into(),
            executable_name: "vmcell-main".into(),
            ..Default::default()
        })
        .await
        .expect("RunCell in the guest booted by our VMM");
        let st = c
            .wait(pb::WaitRequest {
                id: "vmcell-main".into(),
                timeout_ms: Some(60_000),
            })
            .await
            .expect("wait")
            .into_inner();
        let mut logs = c
            .logs(pb::LogsRequest {
                id: "vmcell-main".into(),
                follow: false,
                wait_for_start: false,
                new_only: false,
            })
            .await
            .expect("logs")
            .into_inner();
        let first = logs.next().await.expect("a line").expect("entry");
        assert_eq!(
            (st.exit_code, first.line.as_slice()),
            (Some(0), &b"hello from busybox"[..])
        );
    })
    .await;
    bounded(&guest, "vsock", check_vsock(&guest)).await;

    // Shut the guest down from inside: its init powers off, the VM exits.
    let _ = c
        .run_executable(pb::RunExecutableRequest {
            name: "halt".into(),
            cell: String::new(),
            executable: Some(pb::Executable {
                command: "/bin/busybox".into(),
                args: vec!["kill".into(), "-TERM".into(), "1".into()],
                ..Default::default()
            }),
        })
        .await;
    let mut exited = false;
    for _ in 0..200 {
        if guest.vmm_log().contains("VM stopped") {
            exited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = guest.vmm_log();
    assert!(
        exited,
        "the VMM did not exit after the guest shut down: {log}\nconsole:\n{}",
        guest.console_text()
    );
    assert!(log.contains("boot timer: /init started"), "{log}");
    assert!(log.contains("VM stopped: Shutdown"), "{log}");
    // Every vsock packet the guest sent was well formed, and both host
    // connections (the refused one, the gRPC one) went through the device.
    let vsock = log
        .lines()
        .find(|l| l.contains("aurae-vmm: vsock:"))
        .unwrap_or_else(|| panic!("no vsock counters in the VMM log: {log}"));
    let by_guest: u64 = vsock
        .split(" by the guest")
        .next()
        .and_then(|s| s.rsplit('(').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        vsock.contains(" 2 connections,") && vsock.ends_with(" 0 dropped") && by_guest >= 1,
        "{vsock}"
    );
    // The log's last line comes just before the VMM exits.
    guest.shutdown();
    assert!(
        !guest.vsock_path().exists(),
        "the VMM removed its vsock socket"
    );
    eprintln!("{log}");
}

/// Runs busybox with `args` in the guest as executable `name`, waits for
/// it, and returns its first line of output.
async fn first_line(
    c: &mut aurae_proto::runtime::runtime_client::RuntimeClient<tonic::transport::Channel>,
    name: &str,
    args: &[&str],
) -> String {
    c.run_executable(pb::RunExecutableRequest {
        name: name.into(),
        cell: String::new(),
        executable: Some(pb::Executable {
            command: "/bin/busybox".into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        }),
    })
    .await
    .expect("RunExecutable in the guest");
    c.wait(pb::WaitRequest {
        id: name.into(),
        timeout_ms: Some(60_000),
    })
    .await
    .expect("wait");
    let mut out = c
        .logs(pb::LogsRequest {
            id: name.into(),
            follow: false,
            wait_for_start: false,
            new_only: false,
        })
        .await
        .expect("logs")
        .into_inner();
    let line = out.next().await.expect("output").expect("entry");
    String::from_utf8_lossy(&line.line).into_owned()
}

/// `f`, or a panic naming `what` with the guest's console and the VMM's
/// log if it takes more than two minutes.
async fn bounded<T>(guest: &Guest, what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(120), f).await {
        Ok(v) => v,
        Err(_) => panic!(
            "{what}: no answer in 120 s\nVMM log:\n{}\nconsole:\n{}",
            guest.vmm_log(),
            guest.console_text()
        ),
    }
}

/// vsock with the guest kernel's driver: a host connection to a guest port
/// nobody listens on is refused at once (the guest's reset closes the host
/// socket, with no `OK` line, well before the device's own 2 s timeout, and
/// the VMM counts the guest's reset), and the guest auraed answers health
/// over mTLS on its vsock port, through the VMM's Unix socket.
async fn check_vsock(guest: &Guest) {
    use std::io::{Read, Write};
    let path = guest.vsock_path();
    let asked = std::time::Instant::now();
    let outcome = tokio::task::spawn_blocking(move || {
        let mut s = std::os::unix::net::UnixStream::connect(&path)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.write_all(b"CONNECT 4242\n")?;
        let mut got = Vec::new();
        s.read_to_end(&mut got).map(|_| got)
    })
    .await
    .expect("join");
    match outcome {
        Ok(got) => assert!(
            got.is_empty(),
            "the host expected a refusal from the guest, but read: {}",
            String::from_utf8_lossy(&got)
        ),
        Err(e) => panic!("the guest never answered a vsock connection request: {e}"),
    }
    assert!(
        asked.elapsed() < Duration::from_millis(1500),
        "refused by the guest, not by the device's timeout ({:?})",
        asked.elapsed()
    );

    let channel = tokio::time::timeout(Duration::from_secs(60), guest.vsock_channel())
        .await
        .expect("connecting over vsock timed out")
        .expect("mTLS over vsock to the guest auraed");
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health over vsock")
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}
