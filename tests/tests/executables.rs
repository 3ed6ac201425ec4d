//! Executables in auraed's own context, through the real daemon.

use std::time::Duration;

use aurae_proto::runtime as pb;
use aurae_tests::Daemon;
use tokio_stream::StreamExt;

fn sh(script: &str) -> pb::Executable {
    pb::Executable {
        command: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        ..Default::default()
    }
}

async fn run(d: &Daemon, name: &str, exe: pb::Executable) -> pb::RunExecutableResponse {
    d.client()
        .await
        .run_executable(pb::RunExecutableRequest {
            name: name.into(),
            cell: String::new(),
            executable: Some(exe),
        })
        .await
        .expect("run_executable")
        .into_inner()
}

async fn wait(d: &Daemon, id: &str) -> pb::WorkloadStatus {
    d.client()
        .await
        .wait(pb::WaitRequest {
            id: id.into(),
            timeout_ms: Some(20_000),
        })
        .await
        .expect("wait")
        .into_inner()
}

async fn logs(d: &Daemon, id: &str, follow: bool) -> Vec<pb::LogEntry> {
    let mut s = d
        .client()
        .await
        .logs(pb::LogsRequest {
            id: id.into(),
            follow,
            wait_for_start: false,
            new_only: false,
        })
        .await
        .expect("logs")
        .into_inner();
    let mut out = Vec::new();
    while let Some(e) = s.next().await {
        out.push(e.expect("entry"));
    }
    out
}

fn lines(entries: &[pb::LogEntry], stream: pb::LogStream) -> Vec<String> {
    entries
        .iter()
        .filter(|e| e.stream == stream as i32)
        .map(|e| String::from_utf8_lossy(&e.line).into_owned())
        .collect()
}

#[tokio::test]
async fn captures_stdout_and_stderr_separately_and_records_the_exit() {
    let d = Daemon::start().await;
    let r = run(&d, "out", sh("echo one; echo two >&2; echo three; exit 7")).await;
    assert!(r.pid > 0);
    let st = wait(&d, &r.id).await;
    assert_eq!(st.exit_code, Some(7));
    assert_eq!(st.signal, None);
    assert_eq!(st.state, pb::WorkloadState::Exited as i32);
    assert!(st.started_at.is_some() && st.exited_at.is_some());
    let entries = logs(&d, "out", false).await;
    assert_eq!(lines(&entries, pb::LogStream::Stdout), ["one", "three"]);
    assert_eq!(lines(&entries, pb::LogStream::Stderr), ["two"]);
}

#[tokio::test]
async fn env_cwd_and_ids_are_applied() {
    let d = Daemon::start().await;
    let mut exe = sh("echo \"$FOO $(pwd) $(id -u):$(id -g)\"");
    exe.env = vec![pb::EnvVar {
        name: "FOO".into(),
        value: "bar baz".into(),
    }];
    exe.cwd = "/tmp".into();
    if aurae_tests::is_root() {
        exe.uid = Some(65534);
        exe.gid = Some(65534);
    }
    let r = run(&d, "envs", exe).await;
    assert_eq!(wait(&d, &r.id).await.exit_code, Some(0));
    let out = lines(&logs(&d, "envs", false).await, pb::LogStream::Stdout);
    let ids = if aurae_tests::is_root() {
        "65534:65534".to_string()
    } else {
        format!("{}:{}", nix::unistd::getuid(), nix::unistd::getgid())
    };
    assert_eq!(out, [format!("bar baz /tmp {ids}")]);
}

#[tokio::test]
async fn followers_replay_history_then_stream_until_exit() {
    let d = Daemon::start().await;
    run(
        &d,
        "ticker",
        sh("echo first; sleep 0.5; for i in 1 2 3; do echo tick $i; sleep 0.1; done"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (a, b) = tokio::join!(logs(&d, "ticker", true), logs(&d, "ticker", true));
    for follower in [a, b] {
        assert_eq!(
            lines(&follower, pb::LogStream::Stdout),
            ["first", "tick 1", "tick 2", "tick 3"]
        );
        let seqs: Vec<u64> = follower.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [0, 1, 2, 3]);
        assert!(follower.iter().all(|e| e.dropped_before == 0));
    }
}

#[tokio::test]
async fn the_ring_buffer_is_bounded_and_reports_what_it_dropped() {
    // The test daemon keeps 64 KiB per executable.
    let d = Daemon::start().await;
    let r = run(&d, "flood", sh("i=0; while [ $i -lt 5000 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxx; i=$((i+1)); done")).await;
    wait(&d, &r.id).await;
    let entries = logs(&d, "flood", false).await;
    let bytes: usize = entries.iter().map(|e| e.line.len()).sum();
    assert!(bytes <= 65536, "kept {bytes} bytes");
    assert!(
        entries[0].dropped_before > 0,
        "the first retained line reports the evicted ones"
    );
    assert_eq!(
        entries.last().map(|e| e.line.clone()),
        Some(b"line-4999-xxxxxxxxxxxxxxxxxxxxxxxx".to_vec())
    );
}

#[tokio::test]
async fn stop_signals_then_kills_after_the_grace_period() {
    let d = Daemon::start().await;
    let mut c = d.client().await;
    run(
        &d,
        "polite",
        sh("trap 'echo bye; exit 0' TERM; while true; do sleep 0.05; done"),
    )
    .await;
    run(
        &d,
        "stubborn",
        sh("trap '' TERM; echo ready; while true; do sleep 0.05; done"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let polite = c
        .stop(pb::StopRequest {
            id: "polite".into(),
            signal: 0,
            grace_period_ms: Some(5000),
        })
        .await
        .expect("stop")
        .into_inner()
        .status
        .expect("status");
    assert_eq!(polite.exit_code, Some(0));
    let started = std::time::Instant::now();
    let stubborn = c
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
    assert_eq!(stubborn.signal, Some(9), "killed after ignoring SIGTERM");
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn free_releases_only_exited_executables() {
    let d = Daemon::start().await;
    let mut c = d.client().await;
    run(&d, "long", sh("sleep 30")).await;
    let err = c
        .free(pb::FreeRequest { id: "long".into() })
        .await
        .expect_err("running");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    c.stop(pb::StopRequest {
        id: "long".into(),
        signal: 9,
        grace_period_ms: Some(0),
    })
    .await
    .expect("stop");
    c.free(pb::FreeRequest { id: "long".into() })
        .await
        .expect("free");
    let err = c
        .status(pb::StatusRequest { id: "long".into() })
        .await
        .expect_err("gone");
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn missing_commands_and_duplicate_names_are_reported() {
    let d = Daemon::start().await;
    let mut c = d.client().await;
    let err = c
        .run_executable(pb::RunExecutableRequest {
            name: "ghost".into(),
            cell: String::new(),
            executable: Some(pb::Executable {
                command: "definitely-not-a-command".into(),
                ..Default::default()
            }),
        })
        .await
        .expect_err("missing");
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(
        err.message().contains("executable.command"),
        "{}",
        err.message()
    );
    // The failed name is free again.
    run(&d, "ghost", sh("true")).await;
    let err = c
        .run_executable(pb::RunExecutableRequest {
            name: "ghost".into(),
            cell: String::new(),
            executable: Some(sh("true")),
        })
        .await
        .expect_err("duplicate");
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
}

#[tokio::test]
async fn every_workload_rpc_is_served_and_an_empty_request_names_its_first_field() {
    let d = Daemon::start().await;
    let mut c = d.client().await;
    let e = c
        .spawn(pb::SpawnRequest::default())
        .await
        .expect_err("spawn");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("name: "), "{}", e.message());
    let e = c
        .run_pod(pb::RunPodRequest::default())
        .await
        .expect_err("pod");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("name: "), "{}", e.message());
    let e = c
        .run_virtual_machine(pb::RunVirtualMachineRequest::default())
        .await
        .expect_err("vm");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("name: "), "{}", e.message());
}

#[tokio::test]
async fn a_follower_can_attach_before_the_executable_exists() {
    let d = Daemon::start().await;
    let mut attach = d.client().await;
    let follower = tokio::spawn(async move {
        let mut s = attach
            .logs(pb::LogsRequest {
                id: "late".into(),
                follow: true,
                wait_for_start: true,
                new_only: false,
            })
            .await
            .expect("attach")
            .into_inner();
        let mut out = Vec::new();
        while let Some(e) = s.next().await {
            out.push(String::from_utf8_lossy(&e.expect("entry").line).into_owned());
        }
        out
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    run(&d, "late", sh("echo first; echo second")).await;
    assert_eq!(follower.await.expect("follower"), ["first", "second"]);
    // Without a creation to wait for, attaching ends with NOT_FOUND after
    // the wait; without wait_for_start it fails at once.
    let err = d
        .client()
        .await
        .logs(pb::LogsRequest {
            id: "never".into(),
            follow: true,
            wait_for_start: false,
            new_only: false,
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), tonic::Code::NotFound);
}
