//! Tier 4 (e2e): our image booted by QEMU; the guest auraed serves the
//! Runtime API over mTLS and runs executables and cells (including an OCI
//! image cell and cgroup v2 limits) inside the guest.

use aurae_proto::runtime as pb;
use aurae_tests::guest::{image_dir, Guest};

/// The image and QEMU are needed; the e2e tier sets AURAE_E2E.
fn ready(name: &str) -> Option<std::path::PathBuf> {
    if std::env::var_os("AURAE_E2E").is_none() {
        aurae_tests::report_skip(
            name,
            "runs in the e2e tier (cargo xtask test --tier e2e), which builds the image",
        );
        return None;
    }
    let Some(dir) = image_dir() else {
        aurae_tests::report_skip(name, "target/aurae-image is not built (cargo xtask image)");
        return None;
    };
    if std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        aurae_tests::report_skip(name, "qemu-system-x86_64 is not installed");
        return None;
    }
    Some(dir)
}

async fn output(
    c: &mut aurae_proto::runtime::runtime_client::RuntimeClient<tonic::transport::Channel>,
    id: &str,
) -> (pb::WorkloadStatus, String) {
    aurae_tests::exit_and_output(c, id, 120000).await
}

fn busybox(script: &str) -> pb::Executable {
    pb::Executable {
        command: "/bin/busybox".into(),
        args: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

#[tokio::test]
async fn the_guest_auraed_runs_executables_and_cells_over_mtls() {
    let Some(image) = ready(aurae_tests::function_name!()) else {
        return;
    };
    let guest = Guest::boot(&image).await;
    let mut c = guest.client().await;

    c.run_executable(pb::RunExecutableRequest {
        name: "hello".into(),
        cell: String::new(),
        executable: Some(busybox("echo hello from $(/bin/busybox hostname); /bin/busybox cat /proc/1/comm /sys/fs/cgroup/cgroup.subtree_control")),
    })
    .await
    .expect("RunExecutable in the guest");
    let (st, out) = output(&mut c, "hello").await;
    assert_eq!(st.exit_code, Some(0), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "hello from guest");
    assert_eq!(lines[1], "init", "guest-init is PID 1");
    assert!(
        lines[2].contains("memory") && lines[2].contains("pids") && lines[2].contains("cpu"),
        "{out}"
    );

    c.run_cell(pb::RunCellRequest {
        name: "oci".into(),
        image: "/images/busybox".into(),
        executable_name: "oci-main".into(),
        ..Default::default()
    })
    .await
    .expect("RunCell with an OCI image in the guest");
    let (st, out) = output(&mut c, "oci-main").await;
    assert_eq!(
        (st.exit_code, out.as_str()),
        (Some(0), "hello from busybox\n"),
        "console:\n{}",
        guest.console_text()
    );

    // Pure cgroup v2 in the guest: a memory limit is enforced.
    c.run_cell(pb::RunCellRequest {
        name: "oom".into(),
        limits: Some(pb::CellLimits {
            memory_max_bytes: Some(16 << 20),
            ..Default::default()
        }),
        executable: Some(busybox("x=$(/bin/busybox head -c 100000000 /dev/zero | /bin/busybox tr '\\0' a); echo survived")),
        executable_name: "oom-main".into(),
        ..Default::default()
    })
    .await
    .expect("RunCell with memory.max in the guest");
    let (st, out) = output(&mut c, "oom-main").await;
    assert!(st.oom_killed, "{st:?} {out}");
}
