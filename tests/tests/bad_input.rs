//! Malformed requests get precise errors, and leave nothing behind: no
//! cgroup, mount, fd, process or state directory.

use aurae_proto::runtime as pb;
use aurae_tests::{image, leaks::Snapshot, Daemon};

fn exe(cmd: &str) -> pb::Executable {
    pb::Executable {
        command: cmd.into(),
        ..Default::default()
    }
}

fn cell(name: &str) -> pb::RunCellRequest {
    pb::RunCellRequest {
        name: name.into(),
        executable: Some(exe("/bin/true")),
        ..Default::default()
    }
}

fn limits(l: pb::CellLimits) -> pb::RunCellRequest {
    pb::RunCellRequest {
        limits: Some(l),
        ..cell("limits")
    }
}

#[tokio::test]
async fn thirty_malformed_requests_leak_nothing() {
    let d = Daemon::start().await;
    let mut c = d.client().await;
    let corrupt = image::write_layout(
        &d.dir.join("corrupt"),
        &[image::files_layer(&[("a", b"a")])],
        &Default::default(),
    );
    image::corrupt_layers(&corrupt);
    let not_image = d.dir.join("not-an-image");
    std::fs::create_dir_all(&not_image).expect("dir");

    // Warm up (the first requests allocate connection state), then measure.
    c.list(pb::ListRequest {}).await.expect("list");
    let before = Snapshot::settled(&d);

    use tonic::Code::*;
    let mut cases: Vec<(&str, tonic::Code, &str, Result<(), tonic::Status>)> = Vec::new();
    macro_rules! case {
        ($what:expr, $code:expr, $field:expr, $call:expr) => {
            cases.push(($what, $code, $field, $call.await.map(|_| ())));
        };
    }
    let run_exe = |name: &str, cell: &str, e: Option<pb::Executable>| pb::RunExecutableRequest {
        name: name.into(),
        cell: cell.into(),
        executable: e,
    };
    case!(
        "no executable",
        InvalidArgument,
        "executable",
        c.run_executable(run_exe("", "", None))
    );
    case!(
        "empty command",
        InvalidArgument,
        "executable.command",
        c.run_executable(run_exe("", "", Some(exe(""))))
    );
    case!(
        "NUL in command",
        InvalidArgument,
        "executable.command",
        c.run_executable(run_exe("", "", Some(exe("/bin/tr\0ue"))))
    );
    case!(
        "NUL in arg",
        InvalidArgument,
        "executable.args[0]",
        c.run_executable(run_exe(
            "",
            "",
            Some(pb::Executable {
                args: vec!["a\0b".into()],
                ..exe("/bin/echo")
            })
        ))
    );
    case!(
        "env name with =",
        InvalidArgument,
        "executable.env[0].name",
        c.run_executable(run_exe(
            "",
            "",
            Some(pb::Executable {
                env: vec![pb::EnvVar {
                    name: "A=B".into(),
                    value: "c".into()
                }],
                ..exe("/bin/true")
            })
        ))
    );
    case!(
        "empty env name",
        InvalidArgument,
        "executable.env[0].name",
        c.run_executable(run_exe(
            "",
            "",
            Some(pb::Executable {
                env: vec![pb::EnvVar::default()],
                ..exe("/bin/true")
            })
        ))
    );
    case!(
        "relative cwd",
        InvalidArgument,
        "executable.cwd",
        c.run_executable(run_exe(
            "",
            "",
            Some(pb::Executable {
                cwd: "tmp".into(),
                ..exe("/bin/true")
            })
        ))
    );
    case!(
        "missing cwd",
        NotFound,
        "executable.cwd",
        c.run_executable(run_exe(
            "",
            "",
            Some(pb::Executable {
                cwd: "/does/not/exist".into(),
                ..exe("/bin/true")
            })
        ))
    );
    case!(
        "missing command",
        NotFound,
        "executable.command",
        c.run_executable(run_exe("", "", Some(exe("/no/such/binary"))))
    );
    case!(
        "invalid uid",
        InvalidArgument,
        "executable.uid",
        c.run_executable(run_exe(
            "",
            "",
            Some(pb::Executable {
                uid: Some(u32::MAX),
                ..exe("/bin/true")
            })
        ))
    );
    case!(
        "name with slash",
        InvalidArgument,
        "name",
        c.run_executable(run_exe("a/b", "", Some(exe("/bin/true"))))
    );
    case!(
        "name with dotdot",
        InvalidArgument,
        "name",
        c.run_executable(run_exe("..", "", Some(exe("/bin/true"))))
    );
    case!(
        "uppercase name",
        InvalidArgument,
        "name",
        c.run_executable(run_exe("Web", "", Some(exe("/bin/true"))))
    );
    case!(
        "64-char name",
        InvalidArgument,
        "name",
        c.run_executable(run_exe(&"a".repeat(64), "", Some(exe("/bin/true"))))
    );
    case!(
        "unknown cell",
        NotFound,
        "cell",
        c.run_executable(run_exe("", "nosuchcell", Some(exe("/bin/true"))))
    );
    case!(
        "bad cell name",
        InvalidArgument,
        "cell",
        c.run_executable(run_exe("", "../x", Some(exe("/bin/true"))))
    );
    case!(
        "empty cell name",
        InvalidArgument,
        "name",
        c.run_cell(cell(""))
    );
    case!(
        "cell name with NUL",
        InvalidArgument,
        "name",
        c.run_cell(cell("a\0b"))
    );
    case!(
        "cell name ending in -",
        InvalidArgument,
        "name",
        c.run_cell(cell("web-"))
    );
    case!(
        "cell without executable",
        InvalidArgument,
        "executable",
        c.run_cell(pb::RunCellRequest {
            name: "noexe".into(),
            executable: Some(exe("")),
            ..Default::default()
        })
    );
    case!(
        "cpu quota too small",
        InvalidArgument,
        "limits.cpu_quota_us",
        c.run_cell(limits(pb::CellLimits {
            cpu_quota_us: Some(1),
            ..Default::default()
        }))
    );
    case!(
        "cpu period without quota",
        InvalidArgument,
        "limits.cpu_period_us",
        c.run_cell(limits(pb::CellLimits {
            cpu_period_us: Some(100_000),
            ..Default::default()
        }))
    );
    case!(
        "cpu weight zero",
        InvalidArgument,
        "limits.cpu_weight",
        c.run_cell(limits(pb::CellLimits {
            cpu_weight: Some(0),
            ..Default::default()
        }))
    );
    case!(
        "memory too small",
        InvalidArgument,
        "limits.memory_max_bytes",
        c.run_cell(limits(pb::CellLimits {
            memory_max_bytes: Some(10),
            ..Default::default()
        }))
    );
    case!(
        "memory beyond the host",
        InvalidArgument,
        "limits.memory_high_bytes",
        c.run_cell(limits(pb::CellLimits {
            memory_high_bytes: Some(u64::MAX),
            ..Default::default()
        }))
    );
    case!(
        "pids zero",
        InvalidArgument,
        "limits.pids_max",
        c.run_cell(limits(pb::CellLimits {
            pids_max: Some(0),
            ..Default::default()
        }))
    );
    case!(
        "cpuset garbage",
        InvalidArgument,
        "limits.cpuset_cpus",
        c.run_cell(limits(pb::CellLimits {
            cpuset_cpus: "zero".into(),
            ..Default::default()
        }))
    );
    case!(
        "cpuset missing cpu",
        InvalidArgument,
        "limits.cpuset_cpus",
        c.run_cell(limits(pb::CellLimits {
            cpuset_cpus: "0-4095".into(),
            ..Default::default()
        }))
    );
    case!(
        "cpuset mems garbage",
        InvalidArgument,
        "limits.cpuset_mems",
        c.run_cell(limits(pb::CellLimits {
            cpuset_mems: "1-".into(),
            ..Default::default()
        }))
    );
    case!(
        "relative image",
        InvalidArgument,
        "image",
        c.run_cell(pb::RunCellRequest {
            image: "img".into(),
            ..cell("img")
        })
    );
    case!(
        "missing image",
        NotFound,
        "image",
        c.run_cell(pb::RunCellRequest {
            image: "/no/such/image".into(),
            ..cell("img")
        })
    );
    case!(
        "directory that is no image",
        InvalidArgument,
        "image",
        c.run_cell(pb::RunCellRequest {
            image: not_image.display().to_string(),
            ..cell("img")
        })
    );
    case!(
        "corrupt image",
        InvalidArgument,
        "image",
        c.run_cell(pb::RunCellRequest {
            image: corrupt.display().to_string(),
            ..cell("img")
        })
    );
    case!(
        "image with shared mount ns",
        InvalidArgument,
        "share_host.mount",
        c.run_cell(pb::RunCellRequest {
            image: corrupt.display().to_string(),
            share_host: Some(pb::HostNamespaces {
                mount: true,
                ..Default::default()
            }),
            ..cell("img")
        })
    );
    case!(
        "user namespace",
        Unimplemented,
        "user_namespace",
        c.run_cell(pb::RunCellRequest {
            user_namespace: true,
            ..cell("userns")
        })
    );
    case!(
        "ambient ALL",
        InvalidArgument,
        "cap_ambient[0]",
        c.run_cell(pb::RunCellRequest {
            cap_ambient: vec!["ALL".into()],
            ..cell("ambient")
        })
    );
    case!(
        "ambient capability not kept",
        InvalidArgument,
        "cap_ambient",
        c.run_cell(pb::RunCellRequest {
            cap_drop: vec!["ALL".into()],
            cap_ambient: vec!["NET_BIND_SERVICE".into()],
            ..cell("ambient")
        })
    );
    case!(
        "ambient in a jail",
        InvalidArgument,
        "cap_ambient",
        c.run_cell(pb::RunCellRequest {
            jailed: true,
            cap_ambient: vec!["CHOWN".into()],
            ..cell("ambient")
        })
    );
    case!(
        "stop unknown",
        NotFound,
        "id",
        c.stop(pb::StopRequest {
            id: "ghost".into(),
            ..Default::default()
        })
    );
    case!(
        "stop bad signal",
        InvalidArgument,
        "signal",
        c.stop(pb::StopRequest {
            id: "ghost".into(),
            signal: 999,
            ..Default::default()
        })
    );
    case!(
        "stop huge grace",
        InvalidArgument,
        "grace_period_ms",
        c.stop(pb::StopRequest {
            id: "ghost".into(),
            signal: 0,
            grace_period_ms: Some(u32::MAX)
        })
    );
    case!(
        "free bad id",
        InvalidArgument,
        "id",
        c.free(pb::FreeRequest { id: "/etc".into() })
    );
    case!(
        "status empty id",
        InvalidArgument,
        "id",
        c.status(pb::StatusRequest { id: String::new() })
    );
    case!(
        "logs unknown",
        NotFound,
        "id",
        c.logs(pb::LogsRequest {
            id: "ghost".into(),
            follow: true,
            wait_for_start: false,
            new_only: false,
        })
    );
    case!(
        "wait unknown",
        NotFound,
        "id",
        c.wait(pb::WaitRequest {
            id: "ghost".into(),
            timeout_ms: Some(10)
        })
    );
    case!(
        "freeze unknown",
        NotFound,
        "id",
        c.freeze(pb::FreezeRequest { id: "ghost".into() })
    );

    assert!(cases.len() >= 30);
    for (what, code, field, result) in &cases {
        let err = match result {
            Result::Ok(()) => panic!("{what}: accepted"),
            Err(e) => e,
        };
        assert_eq!(err.code(), *code, "{what}: {}", err.message());
        assert!(
            err.message().contains(field),
            "{what}: message {:?} does not name {field}",
            err.message()
        );
    }

    // Still serving, and nothing leaked.
    let health = d.aer(&["health"]);
    assert!(health.status.success());
    let list = c.list(pb::ListRequest {}).await.expect("list").into_inner();
    assert!(list.workloads.is_empty(), "{:?}", list.workloads);
    before.assert_unchanged(&d);
}
