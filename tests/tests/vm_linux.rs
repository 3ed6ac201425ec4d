//! Tier 4 (e2e), inside the QEMU test host: RunVirtualMachine boots our
//! kernel with an ext4 root disk made here (`mke2fs -d` from a folder with
//! busybox and an init script), to a login marker on its console; then
//! stops it: Stop presses Ctrl-Alt-Del, init shuts down, and the exit
//! reason says so.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use aurae_proto::runtime as pb;
use aurae_tests::guest::e2e_kvm;
use aurae_tests::{Daemon, DaemonOptions};

const MARKER: &str = "aurae-vm login: ready";

/// An ext4 image of `size_mib` holding busybox and `/sbin/init`.
fn root_disk(dir: &Path, size_mib: u32) -> std::path::PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "sbin", "dev", "proc", "sys", "tmp"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox");
    let init = root.join("sbin/init");
    std::fs::write(
        &init,
        format!(
            "#!/bin/busybox sh\n\
             /bin/busybox mount -t proc proc /proc\n\
             /bin/busybox echo \"root is $(/bin/busybox awk '$2 == \"/\" {{print $3}}' /proc/mounts)\"\n\
             /bin/busybox ip link set eth0 up\n\
             /bin/busybox ip addr add 169.254.7.7/16 dev eth0\n\
             T=$({{ printf 'PUT /latest/api/token HTTP/1.0\\r\\nX-aws-ec2-metadata-token-ttl-seconds: 60\\r\\n\\r\\n'; /bin/busybox sleep 1; }} | /bin/busybox timeout 20 /bin/busybox nc 169.254.169.254 80 | /bin/busybox tail -n 1)\n\
             M=http://169.254.169.254/latest/meta-data\n\
             /bin/busybox echo \"imds name=$(/bin/busybox timeout 20 /bin/busybox wget -q -O- --header \"X-aws-ec2-metadata-token: $T\" $M/name)\"\n\
             /bin/busybox echo \"imds role=$(/bin/busybox timeout 20 /bin/busybox wget -q -O- --header \"X-aws-ec2-metadata-token: $T\" $M/tags/role)\"\n\
             /bin/busybox echo 0 > /proc/sys/kernel/ctrl-alt-del\n\
             trap '/bin/busybox echo \"init: Ctrl-Alt-Del, rebooting\"; /bin/busybox sync; /bin/busybox reboot -f' INT\n\
             /bin/busybox echo '{MARKER}'\n\
             while true; do /bin/busybox sleep 3600 & wait $!; done\n"
        ),
    )
    .expect("init");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let img = dir.join("root.ext4");
    // e2fsprogs' mke2fs (busybox has one too, without -t and -d).
    let mke2fs = ["/usr/sbin/mke2fs", "/sbin/mke2fs", "/usr/bin/mke2fs"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .expect("e2fsprogs' mke2fs");
    let out = Command::new(mke2fs)
        .args(["-q", "-t", "ext4", "-d"])
        .arg(&root)
        .arg(&img)
        .arg(format!("{size_mib}M"))
        .output()
        .expect("mke2fs");
    assert!(
        out.status.success(),
        "mke2fs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    img
}

#[tokio::test]
async fn our_kernel_boots_from_an_ext4_root_disk_to_a_login_marker() {
    let Some((image, vmm)) = e2e_kvm(aurae_tests::function_name!()) else {
        return;
    };
    let d = Daemon::start_with(DaemonOptions {
        image_dir: Some(image.clone()),
        vmm: Some(vmm),
        ..Default::default()
    })
    .await;
    let disk = root_disk(&d.dir, 16);
    let mut c = d.client().await;
    let r = c
        .run_virtual_machine(pb::RunVirtualMachineRequest {
            name: "linux".into(),
            kernel: image.join("bzImage").display().to_string(),
            root_disk: Some(pb::VmDisk {
                path: disk.display().to_string(),
                read_only: false,
            }),
            cmdline: "console=ttyS0 root=/dev/vda rw rootwait rootfstype=ext4 init=/sbin/init \
                      reboot=t panic=-1"
                .into(),
            vcpus: 1,
            memory_mib: 256,
            metadata: [("role".to_string(), "ext4-test".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("run_virtual_machine: {}\n{}", e.message(), d.log_text()))
        .into_inner();
    let vm = r.vm.expect("vm");
    let (console, booted) =
        aurae_tests::logs::until(&mut c, "linux", MARKER, Duration::from_secs(100)).await;
    assert!(
        booted,
        "no login marker on the console:\n{console}\nauraed's log:\n{}",
        d.log_text()
    );
    assert!(console.contains("root is ext4"), "{console}");
    // Through its TAP and the redirects of its namespace, the guest reads
    // its own record at the link-local address.
    assert!(console.contains("imds name=linux"), "{console}");
    assert!(console.contains("imds role=ext4-test"), "{console}");
    let stopped = c
        .stop(pb::StopRequest {
            id: "linux".into(),
            ..Default::default()
        })
        .await
        .expect("stop")
        .into_inner()
        .status
        .and_then(|s| s.vm)
        .expect("vm status");
    // Stop pressed Ctrl-Alt-Del; init (which asked the kernel for a SIGINT
    // instead of a reboot) synced and rebooted, a triple fault (reboot=t).
    assert_eq!(
        stopped.exit_reason,
        "guest shutdown (triple fault or halt), asked to shut down",
        "console:\n{}",
        aurae_tests::logs::text(&mut c, "linux").await
    );
    let console = aurae_tests::logs::text(&mut c, "linux").await;
    assert!(
        console.contains("init: Ctrl-Alt-Del, rebooting"),
        "{console}"
    );
    c.free(pb::FreeRequest { id: "linux".into() })
        .await
        .expect("free");
    assert!(
        !Path::new("/sys/class/net").join(&vm.tap).exists(),
        "the TAP went with the VM"
    );
}
