//! Spawn on the development machine (the cell backend, since its PVM KVM
//! can't boot a standard kernel): real auraed binaries, real certificates,
//! the image's own initramfs. A chain of three, requests routed hop by
//! hop, logs through two hops, teardown that cascades, and a rollback at
//! every step.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aurae_proto::runtime as pb;
use aurae_tests::instances::{daemon, image, spawn_req, veths};
use aurae_tests::{leaks::Snapshot, require_image, require_root, Daemon, DaemonOptions};
use tokio_stream::StreamExt;

#[tokio::test]
async fn a_chain_of_three_spawns_routes_and_tears_down() {
    require_root!();
    let image = require_image!();
    let d = daemon(image, None).await;
    let before = Snapshot::settled(&d);
    let veths_before = veths(&d);

    // host → a → a/b → a/b/c, each spawned through its parent.
    let mut ids = Vec::new();
    for (path, name) in [(None, "a"), (Some("a"), "b"), (Some("a/b"), "c")] {
        let mut args = vec!["-o", "json"];
        if let Some(p) = path {
            args.extend(["--instance", p]);
        }
        args.extend(["spawn", "--name", name, "--backend", "cell"]);
        let out = d.aer_ok(&args);
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!(v["backend"], "cell", "{out}");
        ids.push(v["spiffe_id"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(
        ids,
        [
            "spiffe://test.local/auraed/a",
            "spiffe://test.local/auraed/a/b",
            "spiffe://test.local/auraed/a/b/c"
        ]
    );
    // RunExecutable in the leaf, three hops down: guest-init, asked for
    // something it doesn't do, says so and exits 2.
    let out = d.aer(&[
        "--instance",
        "a/b/c",
        "exec",
        "--name",
        "probe",
        "--wait",
        "--",
        "/init",
        "what",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Its logs (stderr), replayed through the hops.
    let out = d.aer(&["--instance", "a/b/c", "logs", "probe"]);
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(logs.contains("guest-init runs as PID 1"), "{logs}");
    // RunCell in the middle instance: a cell of its own, inside its cell.
    let out = d.aer(&[
        "--instance",
        "a/b",
        "cell",
        "run",
        "--name",
        "inner",
        "--wait",
        "--",
        "/init",
        "what",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The instance tree, from the host's List: a holds b, which holds c.
    let list = d
        .client()
        .await
        .list(pb::ListRequest {})
        .await
        .expect("list")
        .into_inner();
    let a = list
        .workloads
        .iter()
        .find_map(|w| w.instance.as_ref().filter(|i| i.name == "a"))
        .expect("a listed");
    let b = a
        .children
        .iter()
        .find(|i| i.name == "b")
        .expect("b under a");
    assert_eq!(b.spiffe_id, "spiffe://test.local/auraed/a/b");
    assert!(b.children.iter().any(|i| i.name == "c"), "c under b: {b:?}");
    // And as aer draws it.
    let ls = d.aer_ok(&["ls"]);
    assert!(ls.contains("instance"), "{ls}");
    let ls = d.aer_ok(&["--instance", "a", "ls"]);
    assert!(ls.contains("b"), "{ls}");

    // Freeing a takes b and c with it.
    let mut c = d.client().await;
    let status = c
        .status(pb::StatusRequest { id: "a".into() })
        .await
        .expect("status")
        .into_inner();
    c.free(pb::FreeRequest { id: "a".into() })
        .await
        .expect("free");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{}", status.pid)).exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !Path::new(&format!("/proc/{}", status.pid)).exists(),
        "a's auraed is gone"
    );
    assert_eq!(veths(&d), veths_before, "no veth left");
    let list = c.list(pb::ListRequest {}).await.expect("list").into_inner();
    assert!(list.workloads.is_empty(), "{:?}", list.workloads);
    before.assert_unchanged(&d);
}

#[tokio::test]
async fn logs_stream_live_through_two_hops() {
    require_root!();
    let image = require_image!();
    let d = daemon(image, None).await;
    d.aer_ok(&["spawn", "--name", "a", "--backend", "cell"]);
    d.aer_ok(&[
        "--instance",
        "a",
        "spawn",
        "--name",
        "b",
        "--backend",
        "cell",
    ]);
    // An executable in b that prints, waits, and prints again; followed
    // from the host through a, both lines arrive, the second live.
    d.aer_ok(&[
        "--instance",
        "a/b",
        "exec",
        "--name",
        "live",
        "--",
        "/bin/sh",
        "-c",
        "echo first-line; sleep 1; echo second-line",
    ]);
    let mut c = d.client().await;
    let mut req = tonic::Request::new(pb::LogsRequest {
        id: "live".into(),
        follow: true,
        wait_for_start: false,
        new_only: false,
    });
    req.metadata_mut()
        .insert("aurae-instance", "a/b".parse().expect("metadata"));
    let mut stream = c.logs(req).await.expect("logs").into_inner();
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        let mut seen = Vec::new();
        while let Some(Ok(line)) = stream.next().await {
            seen.push(String::from_utf8_lossy(&line.line).into_owned());
        }
        seen
    })
    .await;
    let lines = found.expect("the stream ended when the executable exited");
    assert_eq!(lines, ["first-line", "second-line"]);
}

#[tokio::test]
async fn a_wrong_identity_is_refused_by_an_instance() {
    require_root!();
    let image = require_image!();
    let d = daemon(image, None).await;
    let out = d.aer_ok(&["-o", "json", "spawn", "--name", "a", "--backend", "cell"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let addr = v["address"].as_str().expect("address").to_string();
    // The host's client SVID (spiffe://test.local/aer) may manage the host,
    // and so the instance through it; directly, only the host's own
    // identity and its admins may.
    let direct = d.aer(&["--tcp", &addr, "ls"]);
    assert!(
        direct.status.success(),
        "an admin may connect directly: {}",
        String::from_utf8_lossy(&direct.stderr)
    );
    // A client of another trust domain is refused at the handshake.
    let other = Daemon::start().await;
    let out = std::process::Command::new(aurae_tests::binary("aer"))
        .env("AURAE_CONFIG", &other.client_config)
        .args(["--tcp", &addr, "ls"])
        .output()
        .expect("aer");
    assert!(!out.status.success(), "another domain's client was let in");
}

#[tokio::test]
async fn a_failure_at_any_step_leaves_nothing() {
    require_root!();
    let image = require_image!();
    for step in [
        "backend", "image", "identity", "bridge", "cell", "veth", "init", "ready",
    ] {
        let d = daemon(image.clone(), Some(step)).await;
        let mut c = d.client().await;
        c.list(pb::ListRequest {}).await.expect("list");
        let before = Snapshot::settled(&d);
        let veths_before = veths(&d);
        let err = c.spawn(spawn_req("a")).await.expect_err(step);
        assert!(
            err.message().contains(&format!("step {step}")),
            "{step}: {}",
            err.message()
        );
        before.assert_unchanged(&d);
        assert_eq!(veths(&d), veths_before, "{step}: no veth left");
        let list = c.list(pb::ListRequest {}).await.expect("list").into_inner();
        assert!(list.workloads.is_empty(), "{step}: {:?}", list.workloads);
    }
}

#[tokio::test]
async fn twenty_spawn_free_cycles_leak_nothing() {
    require_root!();
    let image = require_image!();
    let d = daemon(image, None).await;
    let mut c = d.client().await;
    // The first spawn makes the bridge and unpacks the image: after it,
    // every cycle must return to the same state.
    c.spawn(spawn_req("warm")).await.expect("spawn");
    c.free(pb::FreeRequest { id: "warm".into() })
        .await
        .expect("free");
    let before = Snapshot::settled(&d);
    let veths_before = veths(&d);
    for i in 0..20 {
        c.spawn(spawn_req("cycle"))
            .await
            .unwrap_or_else(|e| panic!("spawn {i}: {e}"));
        c.free(pb::FreeRequest { id: "cycle".into() })
            .await
            .unwrap_or_else(|e| panic!("free {i}: {e}"));
    }
    before.assert_unchanged(&d);
    assert_eq!(veths(&d), veths_before);
}

#[tokio::test]
async fn bad_spawn_requests_name_the_field() {
    let image = image().unwrap_or_else(|| PathBuf::from("/nonexistent"));
    let d = daemon(image, None).await;
    let mut c = d.client().await;
    c.list(pb::ListRequest {}).await.expect("list");
    let before = Snapshot::settled(&d);
    let cases: Vec<(&str, tonic::Code, pb::SpawnRequest)> = vec![
        ("name", tonic::Code::InvalidArgument, spawn_req("Bad/Name")),
        (
            "vcpus",
            tonic::Code::InvalidArgument,
            pb::SpawnRequest {
                vcpus: 100_000,
                ..spawn_req("a")
            },
        ),
        (
            "memory_mib",
            tonic::Code::InvalidArgument,
            pb::SpawnRequest {
                memory_mib: u64::MAX,
                ..spawn_req("a")
            },
        ),
        (
            "backend",
            tonic::Code::InvalidArgument,
            pb::SpawnRequest {
                backend: 42,
                ..spawn_req("a")
            },
        ),
        (
            "initramfs",
            tonic::Code::InvalidArgument,
            pb::SpawnRequest {
                initramfs: "/no/such/initrd".into(),
                ..spawn_req("a")
            },
        ),
        (
            "kernel",
            tonic::Code::InvalidArgument,
            pb::SpawnRequest {
                kernel: "/no/such/kernel".into(),
                ..spawn_req("a")
            },
        ),
        (
            "kernel",
            tonic::Code::InvalidArgument,
            pb::SpawnRequest {
                kernel: "/etc".into(),
                ..spawn_req("a")
            },
        ),
        (
            "kernel",
            tonic::Code::InvalidArgument,
            pb::SpawnRequest {
                kernel: "/etc/passwd".into(),
                ..spawn_req("a")
            },
        ),
        (
            "initramfs",
            tonic::Code::InvalidArgument,
            pb::SpawnRequest {
                initramfs: "/etc/passwd".into(),
                ..spawn_req("a")
            },
        ),
    ];
    for (field, code, req) in cases {
        let err = c.spawn(req).await.expect_err(field);
        assert_eq!(err.code(), code, "{field}: {}", err.message());
        assert!(
            err.message().starts_with(field),
            "{field}: {}",
            err.message()
        );
    }
    // A microVM where KVM can't boot one (this machine's PVM): refused,
    // naming why.
    let err = c
        .spawn(pb::SpawnRequest {
            backend: pb::SpawnBackend::Microvm as i32,
            ..spawn_req("a")
        })
        .await
        .expect_err("microvm");
    assert!(
        err.code() == tonic::Code::FailedPrecondition,
        "{}",
        err.message()
    );
    assert!(err.message().starts_with("backend: "), "{}", err.message());
    before.assert_unchanged(&d);
}

#[tokio::test]
async fn a_restart_after_kill_9_removes_instances_left_behind() {
    require_root!();
    let image = require_image!();
    let mut d = daemon(image.clone(), None).await;
    d.aer_ok(&["spawn", "--name", "a", "--backend", "cell"]);
    d.aer_ok(&[
        "--instance",
        "a",
        "spawn",
        "--name",
        "b",
        "--backend",
        "cell",
    ]);
    let mut c = d.client().await;
    let a = c
        .status(pb::StatusRequest { id: "a".into() })
        .await
        .expect("status")
        .into_inner();
    let left = veths(&d);
    let ip = std::process::Command::new("ip")
        .args(["-o", "link"])
        .output()
        .expect("ip");
    assert!(
        !left.is_empty(),
        "a's veth: {} {}",
        d.bridge(),
        String::from_utf8_lossy(&ip.stdout)
    );
    d.crash();
    assert!(
        Path::new(&format!("/proc/{}", a.pid)).exists(),
        "the crash left a running"
    );
    let dir = aurae_tests::KeptDir(d.keep_dir());
    drop(d);
    let d2 = Daemon::start_with(DaemonOptions {
        reuse: Some(dir.0.clone()),
        image_dir: Some(image),
        ..Default::default()
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while (Path::new(&format!("/proc/{}", a.pid)).exists() || !veths(&d2).is_empty())
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !Path::new(&format!("/proc/{}", a.pid)).exists(),
        "a's auraed killed"
    );
    assert!(
        veths(&d2).is_empty(),
        "its veth went with its network namespace"
    );
    assert!(
        d2.log_text().contains("removed leftover"),
        "{}",
        d2.log_text()
    );
    // The name is free again.
    let mut c = d2.client().await;
    c.spawn(spawn_req("a")).await.expect("spawn again");
}

#[tokio::test]
async fn a_dead_instance_shows_within_a_second_and_is_reclaimed() {
    require_root!();
    let image = require_image!();
    let d = daemon(image, None).await;
    let mut c = d.client().await;
    c.spawn(spawn_req("a")).await.expect("spawn");
    // A second instance of that name is refused while it exists.
    let dup = c.spawn(spawn_req("a")).await.expect_err("duplicate");
    assert_eq!(dup.code(), tonic::Code::AlreadyExists, "{}", dup.message());
    assert!(dup.message().starts_with("name: "), "{}", dup.message());
    assert_eq!(veths(&d).len(), 1);
    let status = c
        .status(pb::StatusRequest { id: "a".into() })
        .await
        .expect("status")
        .into_inner();
    // The instance's auraed dies (as a crashed guest would).
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(status.pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let killed = Instant::now();
    let exited = loop {
        let s = c
            .status(pb::StatusRequest { id: "a".into() })
            .await
            .expect("status")
            .into_inner();
        if s.state == pb::WorkloadState::Exited as i32 {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "still running: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exited < Duration::from_secs(1), "exited after {exited:?}");
    // Its cell and veth are reclaimed without a Free.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !veths(&d).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(veths(&d).is_empty(), "{:?}", veths(&d));
    let cell = d.cgroup_dir().expect("cgroup root").join("a");
    assert!(!cell.exists(), "its cgroup is gone");
    // Routing to it says why.
    let out = d.aer(&["--instance", "a", "ls"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));
    c.free(pb::FreeRequest { id: "a".into() })
        .await
        .expect("free");
}

#[tokio::test]
async fn the_image_beside_auraeds_build_is_found_without_configuration() {
    require_root!();
    let image = require_image!();
    if std::env::var_os("AURAE_IMAGE_DIR").is_some() || Path::new(auraed_default_image()).exists() {
        aurae_tests::report_skip(
            aurae_tests::function_name!(),
            "the image is configured elsewhere here",
        );
        return;
    }
    assert!(image.ends_with("aurae-image"));
    // No [instances] image_dir: auraed looks beside its own build.
    let d = Daemon::start().await;
    let mut c = d.client().await;
    c.spawn(spawn_req("a"))
        .await
        .expect("spawn with the default image");
    c.free(pb::FreeRequest { id: "a".into() })
        .await
        .expect("free");
}

/// auraed's default `[instances] image_dir` (`DEFAULT_IMAGE_DIR` in
/// auraed/src/instances/mod.rs; the tests drive the binaries, not the
/// library).
fn auraed_default_image() -> &'static str {
    "/usr/local/share/aurae/image"
}
