//! Jailed cells are sealed: no new or joined namespaces, no mounts.

use aurae_proto::runtime as pb;
use aurae_tests::{require_root, Daemon};
use tokio_stream::StreamExt;

const PROBE: &str = "mkdir -p /tmp/jailprobe; \
    if unshare -n true 2>/dev/null; then echo unshare-ok; else echo unshare-denied; fi; \
    if mount -t tmpfs none /tmp/jailprobe 2>/dev/null; then echo mount-ok; umount /tmp/jailprobe; else echo mount-denied; fi; \
    if nsenter -t 1 -n true 2>/dev/null; then echo setns-ok; else echo setns-denied; fi; \
    grep -E '^(NoNewPrivs|CapBnd)' /proc/self/status";

async fn probe(jailed: bool) -> String {
    let d = Daemon::start().await;
    let name = if jailed { "sealed" } else { "open" };
    // The unjailed cell is privileged: an ordinary one keeps no
    // CAP_SYS_ADMIN either (see cell_boundary.rs).
    let privileged = !jailed;
    let mut c = d.client().await;
    c.run_cell(pb::RunCellRequest {
        name: name.into(),
        jailed,
        privileged,
        executable: Some(pb::Executable {
            command: "/bin/busybox".into(),
            args: vec!["sh".into(), "-c".into(), PROBE.into()],
            env: vec![pb::EnvVar {
                name: "PATH".into(),
                value: "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into(),
            }],
            ..Default::default()
        }),
        executable_name: "probe".into(),
        ..Default::default()
    })
    .await
    .expect("run_cell");
    c.wait(pb::WaitRequest {
        id: "probe".into(),
        timeout_ms: Some(20_000),
    })
    .await
    .expect("wait");
    let mut s = c
        .logs(pb::LogsRequest {
            id: "probe".into(),
            follow: false,
            wait_for_start: false,
            new_only: false,
        })
        .await
        .expect("logs")
        .into_inner();
    let mut out = String::new();
    while let Some(e) = s.next().await {
        out.push_str(&String::from_utf8_lossy(&e.expect("entry").line));
        out.push('\n');
    }
    out
}

#[tokio::test]
async fn a_jailed_cell_cannot_unshare_mount_or_setns() {
    require_root!();
    let out = probe(true).await;
    assert!(out.contains("unshare-denied"), "{out}");
    assert!(out.contains("mount-denied"), "{out}");
    assert!(out.contains("setns-denied"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    let bnd = out
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:\t"))
        .expect("CapBnd");
    let caps = u64::from_str_radix(bnd.trim(), 16).expect("hex");
    assert_eq!(
        caps & (1 << 21),
        0,
        "CAP_SYS_ADMIN is gone from the bounding set"
    );
}

#[tokio::test]
async fn a_privileged_cell_can_unshare_and_mount() {
    require_root!();
    let out = probe(false).await;
    assert!(out.contains("unshare-ok"), "{out}");
    assert!(out.contains("mount-ok"), "{out}");
    assert!(out.contains("NoNewPrivs:\t0"), "{out}");
}
