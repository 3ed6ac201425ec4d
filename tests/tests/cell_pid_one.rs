//! A `pid_one` cell: its first executable is PID 1 of a PID namespace of
//! its own, with a /proc of that namespace masked as the cell's; an
//! executable started later joins it and sees it as PID 1.

use aurae_proto::runtime as pb;
use aurae_tests::{require_root, sh, Daemon};

fn cell(name: &str, script: &str) -> pb::RunCellRequest {
    pb::RunCellRequest {
        name: name.into(),
        executable: Some(sh(script)),
        executable_name: format!("{name}-main"),
        ..Default::default()
    }
}

async fn exec_in(d: &Daemon, cell: &str, name: &str, script: &str) -> (pb::WorkloadStatus, String) {
    let mut c = d.client().await;
    c.run_executable(pb::RunExecutableRequest {
        name: name.into(),
        cell: cell.into(),
        executable: Some(sh(script)),
    })
    .await
    .expect("run in cell");
    aurae_tests::exit_and_output(&mut c, name, 30000).await
}

#[tokio::test]
async fn a_pid_one_cells_first_executable_is_pid_1_and_later_ones_join_it() {
    require_root!();
    let d = Daemon::start().await;
    let mut req = cell("solo", "echo pid=$$; exec sleep 60");
    req.pid_one = true;
    d.client().await.run_cell(req).await.expect("run_cell");
    // An executable started later runs in the first one's PID namespace,
    // with its own /proc, masked as the cell's (/proc/sys read-only).
    let (st, out) = exec_in(
        &d,
        "solo",
        "look",
        "tr '\\0' ' ' < /proc/1/cmdline; echo; \
         (echo x > /proc/sys/kernel/hostname) 2>/dev/null && echo writable || echo read-only",
    )
    .await;
    assert_eq!(st.exit_code, Some(0), "{out}");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["sleep 60 ", "read-only"]);
    let (logs, seen) = aurae_tests::logs::until(
        &mut d.client().await,
        "solo-main",
        "pid=",
        std::time::Duration::from_secs(10),
    )
    .await;
    assert!(seen && logs.contains("pid=1"), "{logs}");

    // It needs the cell's own PID namespace.
    let mut req = cell("shared-pid", "true");
    req.pid_one = true;
    req.share_host = Some(pb::HostNamespaces {
        pid: true,
        ..Default::default()
    });
    let e = d.client().await.run_cell(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("pid_one"), "{}", e.message());
}
