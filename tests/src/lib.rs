//! Test harness: starts the real `auraed` binary with real certificates on a
//! temporary socket, drives it through the generated client and through
//! `aer`, and builds small OCI images from Debian's busybox-static.

pub mod bench;
pub mod cri;
pub mod cri_bench;
pub mod critest;
pub mod critest_images;
pub mod daemon;
pub mod guest;
pub mod image;
pub mod instances;
pub mod leaks;
pub mod logs;
pub mod pods;

pub use daemon::{Daemon, DaemonOptions};

/// Asserts that a request was refused with `code`, its message saying
/// `says`.
#[track_caller]
pub fn assert_refused(err: &tonic::Status, code: tonic::Code, says: &str) {
    assert_eq!(err.code(), code, "{}", err.message());
    assert!(err.message().contains(says), "{}", err.message());
}

/// Whether the current process runs as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Reports a skipped test: on stderr, and in the file named by
/// `AURAE_SKIP_LOG` (which `cargo xtask test` prints as a summary), so a
/// skip never looks like a pass.
pub fn report_skip(test: &str, reason: &str) {
    let line = format!("SKIP {test}: {reason}");
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("AURAE_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            // One write: tests that skip at once must not interleave.
            let _ = f.write_all(format!("{line}\n").as_bytes());
        }
    }
}

/// The name of the enclosing function, for skip reports.
#[macro_export]
macro_rules! function_name {
    () => {{
        fn f() {}
        let name = std::any::type_name_of_val(&f);
        name.strip_suffix("::f")
            .unwrap_or(name)
            .trim_end_matches("::{{closure}}")
    }};
}

/// Skips the calling test (with a printed reason) unless running as root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            $crate::report_skip(
                $crate::function_name!(),
                "needs root (cells use cgroups and namespaces)",
            );
            return;
        }
    };
}

/// Controllers that cgroup v2 offers on this host.
pub fn v2_controllers() -> Vec<String> {
    let mount = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .find(|m| std::path::Path::new(m).join("cgroup.controllers").exists());
    mount
        .and_then(|m| std::fs::read_to_string(format!("{m}/cgroup.controllers")).ok())
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Skips the calling test unless cgroup v2 has `controller`.
#[macro_export]
macro_rules! require_controller {
    ($c:expr) => {
        if !$crate::v2_controllers().iter().any(|c| c == $c) {
            $crate::report_skip(
                $crate::function_name!(),
                &format!(
                    "cgroup v2 has no '{}' controller on this host (available: {:?}); limits are proven in the QEMU test host",
                    $c,
                    $crate::v2_controllers()
                ),
            );
            return;
        }
    };
}

/// Path of a workspace binary (built by `cargo build --workspace` first; the
/// xtask test runner does that).
pub fn binary(name: &str) -> std::path::PathBuf {
    let var = format!("{}_BIN", name.to_uppercase().replace('-', "_"));
    if let Some(p) = std::env::var_os(&var) {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current exe");
    // A test runs from target/<profile>/deps/, xtask from target/<profile>/.
    let dir = exe.parent().expect("target dir");
    let path = [
        dir.join(name),
        dir.parent().map(|p| p.join(name)).unwrap_or_default(),
    ]
    .into_iter()
    .find(|p| p.exists())
    .unwrap_or_else(|| dir.join(name));
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` (or `cargo xtask test`) first, or set {var}",
        path.display()
    );
    path
}

/// Waits (up to `timeout_ms`) for workload `id` to exit, then returns its
/// status and its output (stdout and stderr interleaved), a line each.
pub async fn exit_and_output(
    c: &mut aurae_proto::runtime::runtime_client::RuntimeClient<tonic::transport::Channel>,
    id: &str,
    timeout_ms: u32,
) -> (aurae_proto::runtime::WorkloadStatus, String) {
    use aurae_proto::runtime as pb;
    use tokio_stream::StreamExt;
    let st = c
        .wait(pb::WaitRequest {
            id: id.into(),
            timeout_ms: Some(timeout_ms),
        })
        .await
        .expect("wait")
        .into_inner();
    let mut s = c
        .logs(pb::LogsRequest {
            id: id.into(),
            follow: false,
            wait_for_start: false,
            new_only: false,
        })
        .await
        .expect("logs")
        .into_inner();
    let mut text = String::new();
    while let Some(e) = s.next().await {
        text.push_str(&String::from_utf8_lossy(&e.expect("entry").line));
        text.push('\n');
    }
    (st, text)
}

/// `/bin/sh -c <script>`.
pub fn sh(script: &str) -> aurae_proto::runtime::Executable {
    aurae_proto::runtime::Executable {
        command: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        ..Default::default()
    }
}

/// A folder a test kept past its daemon (to restart on it), removed when
/// this is dropped, pass or fail: it holds a CA and keys.
#[derive(Debug)]
pub struct KeptDir(pub std::path::PathBuf);

impl Drop for KeptDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether process `pid` is gone, or a zombie waiting for whoever
/// inherited it.
pub fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}
