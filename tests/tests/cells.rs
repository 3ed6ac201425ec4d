//! Cells through the real daemon: namespaces, shared localhost, freeze,
//! kill, limits (or their loud refusal), and cleanup after a crash.

use std::time::Duration;

use aurae_proto::runtime as pb;
use aurae_tests::{dead, require_controller, require_root, sh, Daemon, DaemonOptions};

fn cell(name: &str, script: &str) -> pb::RunCellRequest {
    pb::RunCellRequest {
        name: name.into(),
        executable: Some(sh(script)),
        executable_name: format!("{name}-main"),
        ..Default::default()
    }
}

async fn output(d: &Daemon, id: &str) -> (pb::WorkloadStatus, String) {
    aurae_tests::exit_and_output(&mut d.client().await, id, 30000).await
}

async fn exec_in(d: &Daemon, cell: &str, name: &str, script: &str) -> (pb::WorkloadStatus, String) {
    d.client()
        .await
        .run_executable(pb::RunExecutableRequest {
            name: name.into(),
            cell: cell.into(),
            executable: Some(sh(script)),
        })
        .await
        .expect("run in cell");
    output(d, name).await
}

#[tokio::test]
async fn a_cell_gets_its_own_namespaces_and_cgroup() {
    require_root!();
    let d = Daemon::start().await;
    let host_net = std::fs::read_link("/proc/self/ns/net").expect("netns");
    let r = d
        .client()
        .await
        .run_cell(cell(
            "iso",
            "hostname; echo pid=$$; readlink /proc/self/ns/net; cat /proc/self/net/dev | tail -n +3 | cut -d: -f1; cat /proc/self/cgroup",
        ))
        .await
        .expect("run_cell")
        .into_inner();
    assert_eq!(r.executable_id, "iso-main");
    let (st, out) = output(&d, "iso-main").await;
    assert_eq!(st.exit_code, Some(0), "{out}");
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines[0], "iso", "hostname is the cell name");
    assert_ne!(lines[1], "pid=1", "cell-init is PID 1, the workload is not");
    assert!(lines[1].starts_with("pid="));
    assert_ne!(lines[2], host_net.to_string_lossy(), "new net namespace");
    assert_eq!(lines[3], "lo", "only lo in the new net namespace");
    assert_eq!(
        lines.last().copied(),
        Some("0::/"),
        "new cgroup namespace rooted at the cell"
    );
    let status = d
        .client()
        .await
        .status(pb::StatusRequest { id: "iso".into() })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.kind, pb::WorkloadKind::Cell as i32);
    assert!(
        status.cgroup.ends_with(&format!("{}/iso", d.cgroup_root)),
        "{}",
        status.cgroup
    );
    assert!(std::path::Path::new(&status.cgroup).join("leaf").exists());
    // lo is up: loopback works inside.
    let (st, out) = exec_in(
        &d,
        "iso",
        "ping",
        "ip -o link show lo | grep -q UP && echo lo-up",
    )
    .await;
    assert_eq!((st.exit_code, out.trim()), (Some(0), "lo-up"));
}

#[tokio::test]
async fn executables_of_a_cell_share_its_namespaces_and_talk_over_localhost() {
    require_root!();
    let d = Daemon::start().await;
    let mut c = d.client().await;
    c.run_cell(cell(
        "pair",
        "busybox nc -l -p 7070 -e sh -c 'echo served-by-$(hostname)'",
    ))
    .await
    .expect("server cell");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (st, out) = exec_in(
        &d,
        "pair",
        "client",
        "busybox nc 127.0.0.1 7070 </dev/null; hostname",
    )
    .await;
    assert_eq!(st.exit_code, Some(0), "{out}");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["served-by-pair", "pair"]);
    // The server listens in the cell's net namespace only: nothing on the
    // host's loopback.
    assert!(std::net::TcpStream::connect_timeout(
        &"127.0.0.1:7070".parse().expect("addr"),
        Duration::from_millis(300)
    )
    .is_err());
}

#[tokio::test]
async fn sharing_a_host_namespace_is_explicit() {
    require_root!();
    let d = Daemon::start().await;
    let host_net = std::fs::read_link("/proc/self/ns/net")
        .expect("netns")
        .to_string_lossy()
        .into_owned();
    let mut req = cell("shared", "readlink /proc/self/ns/net; hostname");
    req.share_host = Some(pb::HostNamespaces {
        net: true,
        uts: true,
        ..Default::default()
    });
    d.client().await.run_cell(req).await.expect("run_cell");
    let (_, out) = output(&d, "shared-main").await;
    let host_name = nix::unistd::gethostname()
        .expect("hostname")
        .to_string_lossy()
        .into_owned();
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [host_net.as_str(), host_name.as_str()]
    );
}

#[tokio::test]
async fn freeze_thaw_and_free() {
    require_root!();
    let d = Daemon::start().await;
    let mut c = d.client().await;
    let marker = d.dir.join("ticks");
    let script = format!(
        "while true; do echo x >> {}; sleep 0.02; done",
        marker.display()
    );
    c.run_cell(cell("ice", &script)).await.expect("run_cell");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let st = c
        .freeze(pb::FreezeRequest { id: "ice".into() })
        .await
        .expect("freeze")
        .into_inner();
    assert_eq!(
        st.status.expect("status").state,
        pb::WorkloadState::Frozen as i32
    );
    let before = std::fs::read(&marker).expect("ticks").len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        std::fs::read(&marker).expect("ticks").len(),
        before,
        "no progress while frozen"
    );
    c.thaw(pb::FreezeRequest { id: "ice".into() })
        .await
        .expect("thaw");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        std::fs::read(&marker).expect("ticks").len() > before,
        "progress after thaw"
    );
    let status = c
        .status(pb::StatusRequest { id: "ice".into() })
        .await
        .expect("status")
        .into_inner();
    let cgroup = std::path::PathBuf::from(status.cgroup);
    let init_pid = status.pid;
    c.free(pb::FreeRequest { id: "ice".into() })
        .await
        .expect("free");
    assert!(!cgroup.exists(), "cgroup removed");
    assert!(dead(init_pid), "cell init gone");
    assert!(
        !d.seen_by_auraed("state/cells/ice").exists(),
        "state removed"
    );
    let e = c
        .status(pb::StatusRequest {
            id: "ice-main".into(),
        })
        .await
        .expect_err("freed with the cell");
    assert_eq!(e.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn stop_signals_the_cell_then_kills_it() {
    require_root!();
    let d = Daemon::start().await;
    let mut c = d.client().await;
    c.run_cell(cell(
        "stubborn",
        "trap '' TERM; while true; do sleep 0.05; done",
    ))
    .await
    .expect("run");
    let st = c
        .stop(pb::StopRequest {
            id: "stubborn".into(),
            signal: 15,
            grace_period_ms: Some(300),
        })
        .await
        .expect("stop")
        .into_inner()
        .status
        .expect("status");
    assert_eq!(st.state, pb::WorkloadState::Stopped as i32);
    let exe = c
        .status(pb::StatusRequest {
            id: "stubborn-main".into(),
        })
        .await
        .expect("exe")
        .into_inner();
    assert_eq!(exe.signal, Some(9));
    let e = c
        .run_executable(pb::RunExecutableRequest {
            name: "late".into(),
            cell: "stubborn".into(),
            executable: Some(sh("true")),
        })
        .await
        .expect_err("stopped cell");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    c.free(pb::FreeRequest {
        id: "stubborn".into(),
    })
    .await
    .expect("free");
}

#[tokio::test]
async fn a_limit_without_its_v2_controller_fails_loudly_and_leaves_nothing() {
    require_root!();
    if aurae_tests::v2_controllers().iter().any(|c| c == "memory") {
        aurae_tests::report_skip(
            aurae_tests::function_name!(),
            "this host's cgroup v2 has the memory controller; the refusal is for hybrid hosts",
        );
        return;
    }
    let d = Daemon::start().await;
    let mut req = cell("limited", "true");
    req.limits = Some(pb::CellLimits {
        memory_max_bytes: Some(64 << 20),
        ..Default::default()
    });
    let e = d
        .client()
        .await
        .run_cell(req)
        .await
        .expect_err("no memory controller");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(
        e.message().contains("'memory' controller")
            && e.message().contains("limits.memory_max_bytes"),
        "{}",
        e.message()
    );
    let root = d.cgroup_dir().expect("cgroup root");
    assert!(!root.join("limited").exists());
    assert!(!d.seen_by_auraed("state/cells/limited").exists());
}

#[tokio::test]
async fn memory_max_oom_kills_and_the_status_says_so() {
    require_root!();
    require_controller!("memory");
    let d = Daemon::start().await;
    let mut req = cell(
        "oom",
        "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
    );
    req.limits = Some(pb::CellLimits {
        memory_max_bytes: Some(32 << 20),
        ..Default::default()
    });
    d.client().await.run_cell(req).await.expect("run_cell");
    let (st, out) = output(&d, "oom-main").await;
    assert!(st.oom_killed, "status: {st:?} output: {out}");
    assert_eq!(st.signal, Some(9));
}

#[tokio::test]
async fn pids_max_refuses_a_fork() {
    require_root!();
    require_controller!("pids");
    let d = Daemon::start().await;
    let mut req = cell(
        "forky",
        "for i in 1 2 3 4 5 6 7 8; do sleep 5 & done; wait; echo done",
    );
    req.limits = Some(pb::CellLimits {
        pids_max: Some(4),
        ..Default::default()
    });
    d.client().await.run_cell(req).await.expect("run_cell");
    let (_, out) = output(&d, "forky-main").await;
    assert!(
        out.to_lowercase()
            .contains("resource temporarily unavailable")
            || out.contains("can't fork"),
        "{out}"
    );
}

#[tokio::test]
async fn cpu_max_throttles() {
    require_root!();
    require_controller!("cpu");
    let d = Daemon::start().await;
    let mut req = cell("slow", "timeout 1 sh -c 'while true; do :; done'; true");
    req.limits = Some(pb::CellLimits {
        cpu_quota_us: Some(10_000),
        cpu_period_us: Some(100_000),
        ..Default::default()
    });
    d.client().await.run_cell(req).await.expect("run_cell");
    output(&d, "slow-main").await;
    let status = d
        .client()
        .await
        .status(pb::StatusRequest { id: "slow".into() })
        .await
        .expect("status")
        .into_inner();
    let stat = std::fs::read_to_string(std::path::Path::new(&status.cgroup).join("cpu.stat"))
        .expect("cpu.stat");
    let field = |k: &str| {
        stat.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(field("nr_throttled ") > 0, "{stat}");
    assert!(
        field("usage_usec ") < 500_000,
        "10% of one CPU for ~1s: {stat}"
    );
}

#[tokio::test]
async fn a_restarted_daemon_removes_cells_left_by_a_crash() {
    require_root!();
    let mut d = Daemon::start().await;
    d.client()
        .await
        .run_cell(cell("orphan", "sleep 300"))
        .await
        .expect("run_cell");
    let status = d
        .client()
        .await
        .status(pb::StatusRequest {
            id: "orphan".into(),
        })
        .await
        .expect("status")
        .into_inner();
    let cgroup = std::path::PathBuf::from(&status.cgroup);
    d.crash();
    assert!(cgroup.exists(), "the crash left the cell behind");
    let dir = aurae_tests::KeptDir(d.keep_dir());
    drop(d);
    let d2 = Daemon::start_with(DaemonOptions {
        reuse: Some(dir.0.clone()),
        ..Default::default()
    })
    .await;
    assert!(!cgroup.exists(), "leftover cgroup removed at start");
    // The leftover init exits once the host's init has reaped the orphans
    // of its pid namespace.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !dead(status.pid) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(dead(status.pid), "leftover processes killed");
    assert!(
        d2.log_text().contains("removed leftover"),
        "{}",
        d2.log_text()
    );
    drop(d2);
    drop(dir);
}

#[tokio::test]
async fn every_cell_gets_network_and_ipc_namespaces_of_its_own() {
    // Cells may get them from auraed's pool of ready namespaces: each must
    // still be new, and no two cells may share one.
    require_root!();
    let d = Daemon::start().await;
    let host_ipc = std::fs::read_link("/proc/self/ns/ipc").expect("ipc ns");
    let mut seen = std::collections::BTreeSet::new();
    for name in ["neta", "netb", "netc"] {
        d.client()
            .await
            .run_cell(cell(
                name,
                "readlink /proc/self/ns/net; ip -o link show lo | grep -c UP; readlink /proc/self/ns/ipc",
            ))
            .await
            .expect("run_cell");
        let (st, out) = output(&d, &format!("{name}-main")).await;
        assert_eq!(st.exit_code, Some(0), "{out}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines.get(1).copied(),
            Some("1"),
            "lo is up in {name}: {out}"
        );
        assert!(
            seen.insert(lines[0].to_string()),
            "{name} shares a network namespace: {out}"
        );
        let ipc = lines.get(2).copied().unwrap_or_default();
        assert_ne!(
            ipc,
            host_ipc.to_string_lossy(),
            "{name} has a new IPC namespace"
        );
        assert!(
            seen.insert(ipc.to_string()),
            "{name} shares an IPC namespace: {out}"
        );
        // A second executable of the cell is in the same IPC namespace.
        let (st, again) = exec_in(
            &d,
            name,
            &format!("{name}-ipc"),
            "readlink /proc/self/ns/ipc",
        )
        .await;
        assert_eq!((st.exit_code, again.trim()), (Some(0), ipc));
    }
}

#[tokio::test]
async fn update_limits_lowers_a_running_cells_pids_max() {
    require_root!();
    require_controller!("pids");
    let d = Daemon::start().await;
    let work = tempfile::tempdir().expect("tempdir");
    let go = work.path().join("go");
    // The cell forks only once its limit is lowered (the file says so).
    let script = format!(
        "while [ ! -e {} ]; do sleep 0.1; done; for i in 1 2 3 4 5 6 7 8; do sleep 5 & done; \
         wait; echo done",
        go.display()
    );
    d.client()
        .await
        .run_cell(cell("lowered", &script))
        .await
        .expect("run_cell");
    let updated = d
        .client()
        .await
        .update_limits(pb::UpdateLimitsRequest {
            id: "lowered".into(),
            limits: Some(pb::CellLimits {
                pids_max: Some(4),
                ..Default::default()
            }),
        })
        .await
        .expect("update_limits")
        .into_inner();
    let cgroup = updated.status.expect("status").cgroup;
    assert_eq!(
        std::fs::read_to_string(std::path::Path::new(&cgroup).join("pids.max"))
            .expect("pids.max")
            .trim(),
        "4"
    );
    std::fs::write(&go, "").expect("go");
    let (_, out) = output(&d, "lowered-main").await;
    assert!(
        out.to_lowercase()
            .contains("resource temporarily unavailable")
            || out.contains("can't fork"),
        "{out}"
    );
}

#[tokio::test]
async fn update_limits_refuses_bad_requests_by_field_and_changes_nothing() {
    require_root!();
    let d = Daemon::start().await;
    let mut c = d.client().await;
    c.run_cell(cell("steady", "sleep 60"))
        .await
        .expect("run_cell");
    let update = |id: &str, limits: pb::CellLimits| pb::UpdateLimitsRequest {
        id: id.into(),
        limits: Some(limits),
    };
    let e = c
        .update_limits(update("nope", pb::CellLimits::default()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{}", e.message());
    let e = c
        .update_limits(update(
            "steady",
            pb::CellLimits {
                cpu_weight: Some(0),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().starts_with("limits.cpu_weight"),
        "{}",
        e.message()
    );
    // A limit whose controller this host lacks fails loudly, naming both.
    if !aurae_tests::v2_controllers().iter().any(|c| c == "memory") {
        let e = c
            .update_limits(update(
                "steady",
                pb::CellLimits {
                    memory_max_bytes: Some(64 << 20),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(
            e.message().contains("'memory' controller")
                && e.message().contains("limits.memory_max_bytes"),
            "{}",
            e.message()
        );
    }
    c.free(pb::FreeRequest {
        id: "steady".into(),
    })
    .await
    .expect("free");
}
