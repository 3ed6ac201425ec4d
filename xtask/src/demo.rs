//! `cargo xtask demo`: the main job with its embedded default. It builds
//! the guest image, starts auraed with fresh certificates, runs a cell from
//! a busybox OCI image on the host, boots an instance of the image (our VMM
//! where KVM boots standard kernels, QEMU otherwise) and runs a cell inside
//! it through the instance's own auraed over mTLS.

use anyhow::{bail, Context};
use aurae_proto::runtime as pb;
use aurae_proto::runtime::runtime_client::RuntimeClient;
use aurae_tests::guest::{
    kvm_boots_linux, Guest, Launcher, TestNetwork, BRIDGE_IP, INSTANCE_IP, TAP,
};
use aurae_tests::image::{self, ImageConfig};
use aurae_tests::Daemon;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::deps;

async fn print_output(c: &mut RuntimeClient<Channel>, id: &str) -> anyhow::Result<()> {
    let mut logs = c
        .logs(pb::LogsRequest {
            id: id.into(),
            follow: true,
            wait_for_start: false,
        })
        .await?
        .into_inner();
    while let Some(line) = logs.next().await {
        println!("    | {}", String::from_utf8_lossy(&line?.line));
    }
    Ok(())
}

pub fn run() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the demo needs root: cells use cgroups and namespaces");
    }
    deps::ensure(&["busybox-static", "qemu-system-x86"])?;
    println!("==> building the guest image (kernel cached outside the clone)");
    let img = crate::image::build()?;
    println!("==> building auraed, aer and aurae-vmm");
    if !deps::cargo(
        &[
            "build",
            "--release",
            "-p",
            "auraed",
            "-p",
            "aer",
            "-p",
            "vmm",
        ],
        &[],
    )? {
        bail!("build failed");
    }
    let release = deps::target_dir().join("release");
    std::env::set_var("AURAED_BIN", release.join("auraed"));
    std::env::set_var("AER_BIN", release.join("aer"));
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        println!("==> starting auraed (mTLS on a unix socket, SPIFFE certificates from `auraed pki init`)");
        let d = Daemon::start().await;
        println!("    socket {}", d.socket.display());
        let layout = image::write_layout(
            &d.dir.join("busybox-image"),
            &[image::busybox_layer()],
            &ImageConfig {
                cmd: vec!["/bin/sh".into(), "-c".into(), "echo hello from cell $(hostname), pid $$".into()],
                ..Default::default()
            },
        );
        println!("==> running a cell on the host from the busybox OCI image");
        let mut c = d.client().await;
        let r = c
            .run_cell(pb::RunCellRequest {
                name: "demo".into(),
                image: layout.display().to_string(),
                executable_name: "demo-main".into(),
                ..Default::default()
            })
            .await
            .context("RunCell")?
            .into_inner();
        print_output(&mut c, &r.executable_id).await?;
        println!("==> aer ls\n{}", String::from_utf8_lossy(&d.aer(&["ls"]).stdout));
        c.free(pb::FreeRequest { id: "demo".into() }).await?;

        let (launcher, _net) = if kvm_boots_linux() {
            println!("==> booting an instance of the image with aurae-vmm (KVM, TAP {TAP} on a bridge)");
            let net = TestNetwork::create();
            (
                Launcher::AuraeVmm {
                    vmm: release.join("aurae-vmm"),
                    kernel: img.bzimage.clone(),
                    vcpus: 1,
                    nested: false,
                    vsock: false,
                    disk: None,
                    tap: TAP.into(),
                    guest_ip: INSTANCE_IP.into(),
                    gateway: BRIDGE_IP.into(),
                },
                Some(net),
            )
        } else {
            println!("==> booting an instance of the image with QEMU (TCG): this host's KVM (PVM) can't boot a standard kernel");
            (Launcher::Qemu, None)
        };
        let started = std::time::Instant::now();
        let guest = Guest::boot_with(&img.dir, launcher).await;
        println!("    the instance's auraed answered health over mTLS after {:.1} s", started.elapsed().as_secs_f64());
        let mut gc = guest.client().await;
        println!("==> running a cell inside the instance, from the OCI image in its initramfs");
        gc.run_cell(pb::RunCellRequest {
            name: "inside".into(),
            image: "/images/busybox".into(),
            executable: Some(pb::Executable {
                command: "/bin/sh".into(),
                args: vec!["-c".into(), "echo hello from cell $(hostname) inside the instance; cat /proc/1/comm".into()],
                ..Default::default()
            }),
            executable_name: "inside-main".into(),
            ..Default::default()
        })
        .await
        .context("RunCell in the instance")?;
        print_output(&mut gc, "inside-main").await?;
        let spawn = c.spawn(pb::SpawnRequest { name: "demo-instance".into(), vcpus: 1, memory_mib: 256, ..Default::default() }).await;
        if let Err(e) = spawn {
            println!("==> note: the Spawn RPC itself is not served yet ({:?}: {}); the demo booted the instance directly", e.code(), e.message());
        }
        println!("==> done");
        Ok(())
    })
}
