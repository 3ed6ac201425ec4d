//! After `kill -9` of auraed with cells and plain executables running, a
//! restarted auraed finds what was left, kills it, removes its cgroups and
//! says so in its log.

use std::time::{Duration, Instant};

use aurae_proto::runtime as pb;
use aurae_tests::{dead, require_root, sh, Daemon, DaemonOptions};

/// The pid of the sleep a shell started (its only child).
fn child_of(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[tokio::test]
async fn a_restart_after_kill_9_leaves_no_orphan() {
    require_root!();
    let mut d = Daemon::start().await;
    let mut c = d.client().await;
    let exe = c
        .run_executable(pb::RunExecutableRequest {
            name: "plain".into(),
            cell: String::new(),
            // A daemonized grandchild too: it outlives its parent's exit.
            executable: Some(sh("(setsid sleep 300 &) ; sleep 300")),
        })
        .await
        .expect("run_executable")
        .into_inner();
    c.run_cell(pb::RunCellRequest {
        name: "boxed".into(),
        executable: Some(sh("sleep 300")),
        executable_name: "boxed-main".into(),
        ..Default::default()
    })
    .await
    .expect("run_cell");
    let cell = c
        .status(pb::StatusRequest { id: "boxed".into() })
        .await
        .expect("status")
        .into_inner();
    let exe_cgroup = d
        .cgroup_dir()
        .expect("cgroup root")
        .join(".executables/plain");
    assert!(
        exe_cgroup.is_dir(),
        "a plain executable runs in a cgroup of auraed's"
    );
    // Both sleeps of the plain executable are in its cgroup.
    let deadline = Instant::now() + Duration::from_secs(5);
    let procs = |cg: &std::path::Path| {
        std::fs::read_to_string(cg.join("leaf/cgroup.procs"))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    while procs(&exe_cgroup) < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(procs(&exe_cgroup), 3, "sh, sleep and the daemonized sleep");
    let sleeper = child_of(exe.pid).expect("the shell's sleep");

    d.crash();
    assert!(
        !dead(exe.pid) && !dead(sleeper),
        "the crash left the executable running"
    );
    let dir = aurae_tests::KeptDir(d.keep_dir());
    drop(d);
    let d2 = Daemon::start_with(DaemonOptions {
        reuse: Some(dir.0.clone()),
        ..Default::default()
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let all = [exe.pid, sleeper, cell.pid];
    while !all.iter().all(|p| dead(*p)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for pid in all {
        assert!(dead(pid), "pid {pid} was left running");
    }
    assert!(!exe_cgroup.exists(), "the executable's cgroup is removed");
    assert!(
        !std::path::Path::new(&cell.cgroup).exists(),
        "the cell's cgroup is removed"
    );
    let log = d2.log_text();
    assert!(
        log.contains("executable plain (killed 3 process(es)"),
        "{log}"
    );
    assert!(log.contains("removed leftover"), "{log}");
    // Nothing left to list, and new work runs.
    let mut c = d2.client().await;
    let list = c.list(pb::ListRequest {}).await.expect("list").into_inner();
    assert!(list.workloads.is_empty(), "{:?}", list.workloads);
}
