//! `cargo xtask demo`: the main job with its embedded default. It builds
//! the guest image, starts auraed with fresh certificates, runs a cell from
//! a busybox OCI image on the host, then, through the `Spawn` RPC and
//! `aer` alone, spawns an instance of the image (a microVM where KVM boots
//! standard kernels, else a cell running the same image), runs a cell in
//! it, spawns an instance inside that instance, and draws the tree.

use anyhow::{bail, Context};
use aurae_proto::runtime as pb;
use aurae_proto::runtime::runtime_client::RuntimeClient;
use aurae_tests::image::{self, ImageConfig};
use aurae_tests::{Daemon, DaemonOptions};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::deps;

async fn print_output(c: &mut RuntimeClient<Channel>, id: &str) -> anyhow::Result<()> {
    let mut logs = c
        .logs(pb::LogsRequest {
            id: id.into(),
            follow: true,
            wait_for_start: false,
            new_only: false,
        })
        .await?
        .into_inner();
    while let Some(line) = logs.next().await {
        println!("    | {}", String::from_utf8_lossy(&line?.line));
    }
    Ok(())
}

/// Runs `aer <args>` against `d`, echoing the command and its output.
fn aer(d: &Daemon, args: &[&str]) -> anyhow::Result<()> {
    println!("$ aer {}", args.join(" "));
    let out = d.aer(args);
    for line in String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
    {
        println!("    | {line}");
    }
    if !out.status.success() {
        bail!("aer {} failed ({})", args.join(" "), out.status);
    }
    Ok(())
}

pub fn run() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the demo needs root: cells use cgroups and namespaces");
    }
    deps::ensure(&["busybox-static"])?;
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
        let d = Daemon::start_with(DaemonOptions {
            image_dir: Some(img.dir.clone()),
            ..Default::default()
        })
        .await;
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

        println!("==> spawning an instance of the image (the Spawn RPC, through aer)");
        aer(&d, &["spawn", "--name", "demo", "--timeout", "120s"])?;
        println!("==> running a cell inside the instance, routed through auraed");
        aer(
            &d,
            &[
                "--instance", "demo", "cell", "run", "--name", "hello", "--wait", "--",
                "/bin/sh", "-c", "echo hello from cell $(hostname) inside instance demo",
            ],
        )?;
        println!("==> the instance spawns an instance of its own");
        aer(&d, &["--instance", "demo", "spawn", "--name", "inner", "--timeout", "120s"])?;
        aer(
            &d,
            &[
                "--instance", "demo/inner", "exec", "--wait", "--", "/bin/sh", "-c",
                "echo hello from $(hostname), two hops down",
            ],
        )?;
        println!("==> the tree");
        aer(&d, &["ls"])?;
        aer(&d, &["free", "demo"])?;
        println!("==> done");
        Ok(())
    })
}
