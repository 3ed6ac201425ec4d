//! A cell's security options that contradict each other or the rest of the
//! request are refused, naming the field, and leave nothing behind; so is a
//! huge name or argument list, with an error that still fits in trailers.

use aurae_proto::runtime as pb;
use aurae_tests::{leaks::Snapshot, Daemon};

fn cell(name: &str) -> pb::RunCellRequest {
    pb::RunCellRequest {
        name: name.into(),
        executable: Some(pb::Executable {
            command: "/bin/true".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn share(f: impl FnOnce(&mut pb::HostNamespaces)) -> Option<pb::HostNamespaces> {
    let mut s = pb::HostNamespaces::default();
    f(&mut s);
    Some(s)
}

#[tokio::test]
async fn contradictory_security_options_are_refused_without_leftovers() {
    let d = Daemon::start().await;
    let mut c = d.client().await;
    c.list(pb::ListRequest {}).await.expect("list");
    let before = Snapshot::settled(&d);
    let jailed = || pb::RunCellRequest {
        jailed: true,
        ..cell("bad")
    };
    let cases: Vec<(&str, &str, pb::RunCellRequest)> = vec![
        (
            "a hostname that isn't one",
            "hostname",
            pb::RunCellRequest {
                hostname: "not_a/host".into(),
                ..cell("bad")
            },
        ),
        (
            "a hostname of its own while sharing the host's UTS namespace",
            "hostname",
            pb::RunCellRequest {
                hostname: "h".into(),
                share_host: share(|s| s.uts = true),
                ..cell("bad")
            },
        ),
        (
            "jailed sharing the host network",
            "share_host.net",
            pb::RunCellRequest {
                share_host: share(|s| s.net = true),
                ..jailed()
            },
        ),
        (
            "jailed sharing the host pid namespace",
            "share_host.pid",
            pb::RunCellRequest {
                share_host: share(|s| s.pid = true),
                ..jailed()
            },
        ),
        (
            "a seccomp profile that isn't JSON",
            "seccomp.json",
            pb::RunCellRequest {
                seccomp: Some(pb::SeccompProfile {
                    kind: pb::seccomp_profile::Kind::Custom as i32,
                    json: "{not json".into(),
                }),
                ..cell("bad")
            },
        ),
        (
            "a seccomp profile with an unknown action",
            "seccomp.json",
            pb::RunCellRequest {
                seccomp: Some(pb::SeccompProfile {
                    kind: pb::seccomp_profile::Kind::Custom as i32,
                    json: r#"{"defaultAction":"SCMP_ACT_MAYBE"}"#.into(),
                }),
                ..cell("bad")
            },
        ),
        (
            "a seccomp profile text with the runtime's default",
            "seccomp.json",
            pb::RunCellRequest {
                seccomp: Some(pb::SeccompProfile {
                    kind: pb::seccomp_profile::Kind::RuntimeDefault as i32,
                    json: "{}".into(),
                }),
                ..cell("bad")
            },
        ),
        (
            "a read-only root without an image",
            "read_only_root",
            pb::RunCellRequest {
                read_only_root: true,
                ..cell("bad")
            },
        ),
        (
            "a relative masked path",
            "masked_paths[0]",
            pb::RunCellRequest {
                masked_paths: vec!["etc/passwd".into()],
                ..cell("bad")
            },
        ),
        (
            "a read-only path that climbs",
            "readonly_paths[0]",
            pb::RunCellRequest {
                readonly_paths: vec!["/tmp/../..".into()],
                ..cell("bad")
            },
        ),
        (
            "masked paths in the host's mount namespace",
            "masked_paths",
            pb::RunCellRequest {
                masked_paths: vec!["/etc".into()],
                share_host: share(|s| s.mount = true),
                ..cell("bad")
            },
        ),
        (
            "jailed and privileged",
            "privileged",
            pb::RunCellRequest {
                privileged: true,
                ..jailed()
            },
        ),
        (
            "writable path without a jail",
            "writable_paths[0]",
            pb::RunCellRequest {
                writable_paths: vec!["/var/tmp".into()],
                ..cell("bad")
            },
        ),
        (
            "writable /proc",
            "writable_paths[0]",
            pb::RunCellRequest {
                writable_paths: vec!["/proc/sys".into()],
                ..jailed()
            },
        ),
        (
            "writable path through ..",
            "writable_paths[0]",
            pb::RunCellRequest {
                writable_paths: vec!["/var/../etc".into()],
                ..jailed()
            },
        ),
        (
            "writable auraed state",
            "writable_paths[0]",
            pb::RunCellRequest {
                writable_paths: vec![d.seen_by_auraed("state").display().to_string()],
                ..jailed()
            },
        ),
        (
            "missing writable path",
            "writable_paths[0]",
            pb::RunCellRequest {
                writable_paths: vec!["/no/such/dir".into()],
                ..jailed()
            },
        ),
        (
            "device that is a file",
            "devices[0]",
            pb::RunCellRequest {
                devices: vec!["/etc/passwd".into()],
                ..jailed()
            },
        ),
        (
            "device for a host-view cell",
            "devices[0]",
            pb::RunCellRequest {
                devices: vec!["/dev/null".into()],
                ..cell("bad")
            },
        ),
        (
            "delegated cgroup in the host's cgroup namespace",
            "delegate_cgroup",
            pb::RunCellRequest {
                delegate_cgroup: true,
                share_host: share(|s| s.cgroup = true),
                ..cell("bad")
            },
        ),
        (
            "net sysctls in the host's network namespace",
            "net_sysctls",
            pb::RunCellRequest {
                net_sysctls: true,
                share_host: share(|s| s.net = true),
                ..cell("bad")
            },
        ),
        ("1 MiB name", "name", cell(&"a".repeat(1 << 20))),
        (
            "argv over the total limit",
            "executable.args",
            pb::RunCellRequest {
                executable: Some(pb::Executable {
                    command: "/bin/true".into(),
                    args: vec!["x".repeat(60 * 1024); 20],
                    ..Default::default()
                }),
                ..cell("bad")
            },
        ),
    ];
    for (what, field, req) in cases {
        let err = c.run_cell(req).await.expect_err(what);
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{what}: {}",
            err.message()
        );
        assert!(
            err.message().starts_with(&format!("{field}: ")),
            "{what}: {}",
            err.message()
        );
        assert!(err.message().len() < 1024, "{what}: a short message");
    }
    let list = c.list(pb::ListRequest {}).await.expect("list").into_inner();
    assert!(list.workloads.is_empty(), "{:?}", list.workloads);
    before.assert_unchanged(&d);
}
