//! `cargo xtask bench spawn`: spawning cell-backed instances, measured in
//! one run against peers, alternating, medians compared.
//!
//! - spawn → ready (answering health over mTLS) against starting a plain
//!   cell that runs a fresh auraed by hand, until its health answers;
//! - RSS of an idle cell-backed instance (every process of its cell);
//! - spawns per second, one at a time and four at once;
//! - a RunExecutable routed one hop (host → a) against the same call made
//!   straight to a's address, and routed three hops (a/b/c) against the
//!   same call made straight to c (from b's network namespace), for the
//!   cost per hop;
//! - then, inside the QEMU test host, the microVM backend against QEMU
//!   `-M microvm` booting the same image to health, and each VMM's idle
//!   memory beside its guest's RAM (tests/tests/bench_spawn_microvm.rs).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use aurae_proto::runtime as pb;
use aurae_proto::runtime::runtime_client::RuntimeClient;
use aurae_tests::{Daemon, DaemonOptions};
use tonic::transport::Channel;

use crate::deps;
use crate::stats::{median, ms, report};

fn spawn_req(name: &str) -> pb::SpawnRequest {
    pb::SpawnRequest {
        name: name.into(),
        backend: pb::SpawnBackend::Cell as i32,
        ready_timeout_ms: Some(60_000),
        ..Default::default()
    }
}

/// A client whose requests go to the instance at `path`.
fn routed(
    channel: Channel,
    path: &str,
) -> anyhow::Result<
    RuntimeClient<
        tonic::service::interceptor::InterceptedService<Channel, aer::client::InstanceRoute>,
    >,
> {
    let route = aer::client::InstanceRoute::new(Some(path))?;
    Ok(RuntimeClient::with_interceptor(channel, route))
}

/// One RunExecutable of `busybox true`, waited for and freed; the time of the
/// whole round trip.
async fn roundtrip<T>(c: &mut RuntimeClient<T>, name: &str) -> anyhow::Result<Duration>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let t0 = Instant::now();
    let r = c
        .run_executable(pb::RunExecutableRequest {
            name: name.into(),
            cell: String::new(),
            // busybox: the image's whole userland, and on the host too.
            executable: Some(pb::Executable {
                command: "/bin/busybox".into(),
                args: vec!["true".into()],
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    c.wait(pb::WaitRequest {
        id: r.id.clone(),
        timeout_ms: Some(10_000),
    })
    .await?;
    let took = t0.elapsed();
    c.free(pb::FreeRequest { id: r.id }).await?;
    Ok(took)
}

/// The RSS of every process of the cell `name` of daemon `d`, in KiB.
fn cell_rss_kib(d: &Daemon, name: &str) -> anyhow::Result<u64> {
    let procs = d
        .cgroup_dir()
        .context("no cgroup root")?
        .join(name)
        .join("leaf/cgroup.procs");
    let mut total = 0;
    for pid in std::fs::read_to_string(&procs)?.lines() {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

/// The peer of a spawn: a plain host-view cell running a fresh auraed (its
/// own PKI made once, its own state and socket), until its health answers.
async fn plain_cell_with_auraed(
    c: &mut RuntimeClient<Channel>,
    auraed: &Path,
    peer: &Path,
    i: usize,
) -> anyhow::Result<Duration> {
    let dir = peer.join(format!("run-{i}"));
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("aurae.sock");
    let base = std::fs::read_to_string(peer.join("pki/auraed.toml"))?;
    let config = base.replacen(
        "[server]\n",
        &format!("[server]\nsocket = {:?}\n", socket.display().to_string()),
        1,
    ) + &format!(
        "\n[runtime]\nstate_dir = {:?}\ncgroup_root = \"aurae-bench-peer-{i}\"\n",
        dir.join("state").display().to_string()
    );
    // The socket line pki init wrote comes first; ours replaces it.
    let config = remove_second_socket(&config);
    std::fs::write(dir.join("auraed.toml"), config)?;
    let client_cfg = aer::client::ClientConfig::load(&peer.join("pki/config"))?;
    let mut client_cfg = client_cfg;
    client_cfg.system.socket = socket.clone();
    let name = format!("peer-{i}");
    let t0 = Instant::now();
    c.run_cell(pb::RunCellRequest {
        name: name.clone(),
        privileged: true,
        share_host: Some(pb::HostNamespaces {
            net: true,
            ..Default::default()
        }),
        executable: Some(pb::Executable {
            command: auraed.display().to_string(),
            args: vec![
                "--config".into(),
                dir.join("auraed.toml").display().to_string(),
            ],
            ..Default::default()
        }),
        executable_name: format!("{name}-auraed"),
        ..Default::default()
    })
    .await?;
    // Bounded: 1000 tries of at most a few ms each.
    for _ in 0..1000 {
        if socket.exists() {
            if let Ok(ch) = client_cfg.connect(None).await {
                let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
                if let Ok(r) = h
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                {
                    if r.get_ref().status == 1 {
                        let took = t0.elapsed();
                        c.free(pb::FreeRequest { id: name }).await?;
                        return Ok(took);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    bail!("the peer's auraed never answered health")
}

/// Keeps the first `socket = ` line of the [server] section.
fn remove_second_socket(config: &str) -> String {
    let mut seen = false;
    config
        .lines()
        .filter(|l| {
            if l.starts_with("socket = ") {
                let keep = !seen;
                seen = true;
                keep
            } else {
                true
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A process of the cell named `name` somewhere under the cgroup `dir`
/// (an instance's cells live in its delegated subtree, its processes in
/// leaves below the cell's cgroup).
fn pid_in_cell(dir: &Path, name: &str) -> Option<u32> {
    fn any_pid(dir: &Path) -> Option<u32> {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        if let Some(pid) = procs.lines().find_map(|l| l.trim().parse().ok()) {
            return Some(pid);
        }
        subdirs(dir).find_map(|d| any_pid(&d))
    }
    fn subdirs(dir: &Path) -> impl Iterator<Item = PathBuf> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_dir())
    }
    subdirs(dir).find_map(|d| {
        if d.file_name().is_some_and(|n| n == name) {
            any_pid(&d)
        } else {
            pid_in_cell(&d, name)
        }
    })
}

/// A TCP connection to `addr` ("[ip]:port") made from the network
/// namespace of process `pid`: on a thread of its own that enters the
/// namespace (a socket stays in the namespace it was made in).
async fn tcp_from_netns_of(pid: u32, addr: String) -> std::io::Result<tokio::net::TcpStream> {
    // A thread of its own, not one of tokio's pooled ones: it stays in the
    // namespace it entered, and ends here.
    let stream = tokio::task::spawn_blocking(move || {
        std::thread::spawn(move || {
            let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
            let s = std::net::TcpStream::connect(&addr)?;
            s.set_nonblocking(true)?;
            s.set_nodelay(true)?;
            Ok::<_, std::io::Error>(s)
        })
        .join()
        .map_err(|_| std::io::Error::other("the connecting thread panicked"))?
    })
    .await
    .map_err(std::io::Error::other)??;
    tokio::net::TcpStream::from_std(stream)
}

pub fn run(runs: usize) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("bench spawn needs root (instances are cells on a bridge)");
    }
    let release = deps::release_binaries()?;
    let initramfs = crate::image::build_initramfs()?;
    let image_dir: PathBuf = initramfs.parent().context("image dir")?.to_path_buf();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let d = Daemon::start_with(DaemonOptions {
            image_dir: Some(image_dir),
            ..Default::default()
        })
        .await;
        let peer = d.dir.join("peer");
        let out = std::process::Command::new(release.join("auraed"))
            .args(["pki", "init", "--trust-domain", "peer.local", "--out"])
            .arg(peer.join("pki"))
            .arg("--socket")
            .arg(peer.join("unused.sock"))
            .output()?;
        if !out.status.success() {
            bail!("pki init: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut c = d.client().await;
        // Warm: the bridge, the unpacked image.
        c.spawn(spawn_req("warm")).await?;
        c.free(pb::FreeRequest { id: "warm".into() }).await?;

        let (mut ours, mut theirs, mut rss) = (vec![], vec![], vec![]);
        for i in 0..=runs {
            let t0 = Instant::now();
            c.spawn(spawn_req("s")).await?;
            let spawned = t0.elapsed();
            tokio::time::sleep(Duration::from_millis(200)).await;
            let kib = cell_rss_kib(&d, "s")?;
            c.free(pb::FreeRequest { id: "s".into() }).await?;
            let p = plain_cell_with_auraed(&mut c, &release.join("auraed"), &peer, i).await?;
            if i > 0 {
                ours.push(spawned);
                theirs.push(p);
                rss.push(kib);
            }
        }
        println!("\nmedians of {runs} alternating runs (release build, cell backend):");
        report(
            "spawn -> ready (mTLS health)",
            median(ours.clone()),
            "cell + auraed by hand",
            median(theirs),
            None,
        );
        let ready = median(ours);
        println!(
            "  spawn -> ready: {:.1} ms against the 100 ms target: {}",
            ms(ready),
            if ready <= Duration::from_millis(100) {
                "met"
            } else {
                "NOT met"
            }
        );
        rss.sort_unstable();
        let rss_mib = rss[rss.len() / 2] as f64 / 1024.0;
        println!(
            "  RSS of an idle cell-backed instance: {rss_mib:.1} MiB (target ≤ 30: {})",
            if rss_mib <= 30.0 { "met" } else { "NOT met" }
        );

        let n = runs.max(4);
        let t0 = Instant::now();
        for i in 0..n {
            let name = format!("seq-{i}");
            c.spawn(spawn_req(&name)).await?;
        }
        let seq = t0.elapsed();
        for i in 0..n {
            c.free(pb::FreeRequest {
                id: format!("seq-{i}"),
            })
            .await?;
        }
        let t0 = Instant::now();
        let rounds = n.div_ceil(4);
        for r in 0..rounds {
            let mut calls = Vec::new();
            for k in 0..4 {
                let mut c2 = c.clone();
                let name = format!("par-{r}-{k}");
                calls.push(async move { c2.spawn(spawn_req(&name)).await });
            }
            for res in futures::future::join_all(calls).await {
                res?;
            }
        }
        let par = t0.elapsed();
        for r in 0..rounds {
            for k in 0..4 {
                c.free(pb::FreeRequest {
                    id: format!("par-{r}-{k}"),
                })
                .await?;
            }
        }
        println!(
            "  spawns per second: {:.1} one at a time, {:.1} four at once",
            n as f64 / seq.as_secs_f64(),
            (rounds * 4) as f64 / par.as_secs_f64()
        );

        // Routing: host → a against a direct connection to a, and
        // host → a → b → c against a direct connection to c, made from
        // b's network namespace (c's bridge is b's; the host has no route
        // to it).
        let a = c.spawn(spawn_req("a")).await?.into_inner();
        routed(d.channel().await?, "a")?
            .spawn(spawn_req("b"))
            .await?;
        let leaf_status = routed(d.channel().await?, "a/b")?
            .spawn(spawn_req("c"))
            .await?
            .into_inner();
        let leaf_addr = leaf_status
            .instance
            .context("c's instance status")?
            .address;
        let b_pid = d
            .cgroup_dir()
            .and_then(|dir| pid_in_cell(&dir.join("a"), "b"))
            .context("no process of instance a/b found under a's cgroup")?;
        let mut via_host = routed(d.channel().await?, "a")?;
        let mut leaf = routed(d.channel().await?, "a/b/c")?;
        let mut direct = RuntimeClient::new(d.config().connect(Some(&a.address)).await?);
        let mut direct_leaf = RuntimeClient::new(
            d.config()
                .connect_via(&leaf_addr.clone(), move || {
                    let addr = leaf_addr.clone();
                    async move { tcp_from_netns_of(b_pid, addr).await }
                })
                .await?,
        );
        let (mut one_hop, mut straight, mut three_hops, mut at_leaf) =
            (vec![], vec![], vec![], vec![]);
        for i in 0..=runs {
            let h = roundtrip(&mut via_host, &format!("h{i}")).await?;
            let s = roundtrip(&mut direct, &format!("s{i}")).await?;
            let t = roundtrip(&mut leaf, &format!("t{i}")).await?;
            let l = roundtrip(&mut direct_leaf, &format!("l{i}")).await?;
            if i > 0 {
                one_hop.push(h);
                straight.push(s);
                three_hops.push(t);
                at_leaf.push(l);
            }
        }
        let (one, st, three, lo) = (
            median(one_hop),
            median(straight),
            median(three_hops),
            median(at_leaf),
        );
        report(
            "RunExecutable to a, routed by the host",
            one,
            "straight to a",
            st,
            None,
        );
        report(
            "RunExecutable to a/b/c (3 hops)",
            three,
            "straight to c",
            lo,
            None,
        );
        for (what, hops, routed, straight) in [("one hop", 1, one, st), ("three hops", 3, three, lo)] {
            let per_hop = routed.saturating_sub(straight) / hops;
            println!(
                "  added per routing hop ({what} against a direct call): {:.2} ms (target ≤ 1 ms: {})",
                ms(per_hop),
                if per_hop <= Duration::from_millis(1) {
                    "met"
                } else {
                    "NOT met"
                }
            );
        }
        c.free(pb::FreeRequest { id: "a".into() }).await?;
        Ok::<_, anyhow::Error>(())
    })?;
    // The microVM backend needs a KVM that boots standard kernels: the
    // QEMU test host's nested one.
    let lines = crate::testhost::bench("bench_spawn_microvm", runs.clamp(1, 5), vec![])?;
    println!("\nmicroVM backend, inside the QEMU test host (nested KVM), medians:");
    for l in lines {
        println!("  {l}");
    }
    Ok(())
}
