//! An executable's stdin and terminal through the real daemon: `Input`
//! writes to a pipe or a terminal and closes it; a terminal is the
//! process's controlling one (in a cell, from the cell's own devpts) and
//! takes resizes; bad `Input` calls are refused naming the field, and a
//! process's stdin and terminal go with it.

use std::time::Duration;

use aurae_proto::runtime as pb;
use aurae_tests::leaks::Snapshot;
use aurae_tests::Daemon;
use tokio_stream::StreamExt;

fn sh(script: &str, stdin: bool, tty: bool) -> pb::Executable {
    pb::Executable {
        command: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        stdin,
        tty,
        ..Default::default()
    }
}

async fn run(d: &Daemon, name: &str, cell: &str, exe: pb::Executable) -> String {
    d.client()
        .await
        .run_executable(pb::RunExecutableRequest {
            name: name.into(),
            cell: cell.into(),
            executable: Some(exe),
        })
        .await
        .expect("run_executable")
        .into_inner()
        .id
}

/// Sends `messages` on one `Input` call.
async fn input(d: &Daemon, messages: Vec<pb::InputRequest>) -> Result<u64, tonic::Status> {
    d.client()
        .await
        .input(tokio_stream::iter(messages))
        .await
        .map(|r| r.into_inner().written)
}

fn data(id: &str, bytes: &[u8]) -> pb::InputRequest {
    pb::InputRequest {
        id: id.into(),
        data: bytes.to_vec(),
        ..Default::default()
    }
}

fn close() -> pb::InputRequest {
    pb::InputRequest {
        close: true,
        ..Default::default()
    }
}

/// The output (joined, each line with its newline unless partial) once
/// the executable has exited, and its exit code.
async fn output(d: &Daemon, id: &str) -> (String, Option<i32>) {
    let mut c = d.client().await;
    let st = c
        .wait(pb::WaitRequest {
            id: id.into(),
            timeout_ms: Some(20_000),
        })
        .await
        .expect("wait")
        .into_inner();
    let mut s = c
        .logs(pb::LogsRequest {
            id: id.into(),
            ..Default::default()
        })
        .await
        .expect("logs")
        .into_inner();
    let mut out = String::new();
    while let Some(e) = s.next().await {
        let e = e.expect("entry");
        out.push_str(&String::from_utf8_lossy(&e.line));
        if !e.partial {
            out.push('\n');
        }
    }
    (out, st.exit_code)
}

#[tokio::test]
async fn input_reaches_a_pipe_and_closing_it_ends_the_reader() {
    let d = Daemon::start().await;
    let id = run(&d, "cat", "", sh("cat; echo done", true, false)).await;
    let written = input(
        &d,
        vec![data(&id, b"hello\n"), data("", b"world\n"), close()],
    )
    .await
    .expect("input");
    assert_eq!(written, 12);
    let (out, code) = output(&d, &id).await;
    assert_eq!(out, "hello\nworld\ndone\n");
    assert_eq!(code, Some(0));
    // Closed: more is refused.
    let e = input(&d, vec![data(&id, b"late")])
        .await
        .expect_err("closed");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
}

#[tokio::test]
async fn a_terminal_is_the_controlling_one_and_takes_resizes() {
    let d = Daemon::start().await;
    // Reads one line (the resize comes first), then reports.
    let script = "read line; test -t 0 && test -t 1 && echo is-a-tty; stty size; echo got=$line";
    let id = run(&d, "term", "", sh(script, false, true)).await;
    let resize = pb::InputRequest {
        id: id.clone(),
        resize: Some(pb::TerminalSize {
            cols: 100,
            rows: 40,
        }),
        ..Default::default()
    };
    input(&d, vec![resize, data("", b"typed\n")])
        .await
        .expect("input");
    let (out, code) = output(&d, &id).await;
    assert_eq!(code, Some(0), "{out}");
    // The terminal echoes what was typed; its lines end in \r.
    let out = out.replace('\r', "");
    assert!(out.contains("is-a-tty\n"), "{out:?}");
    assert!(out.contains("40 100\n"), "{out:?}");
    assert!(out.contains("got=typed\n"), "{out:?}");
}

#[tokio::test]
async fn a_cells_terminal_comes_from_its_own_devpts() {
    let d = Daemon::start().await;
    let mut c = d.client().await;
    c.run_cell(pb::RunCellRequest {
        name: "ttycell".into(),
        ..Default::default()
    })
    .await
    .expect("run_cell");
    // Its name is found in the cell's own /dev/pts (a devpts instance of
    // its own, whose few entries are the cell's).
    let script = "t=$(tty) && test -c $t && echo found:$t; ls /dev/pts | wc -l";
    let id = run(&d, "ttycell-tty", "ttycell", sh(script, false, true)).await;
    let (out, code) = output(&d, &id).await;
    let out = out.replace('\r', "");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("found:/dev/pts/"), "{out:?}");
    let entries: usize = out
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(99);
    assert!(entries <= 4, "{out:?}");
    c.free(pb::FreeRequest {
        id: "ttycell".into(),
    })
    .await
    .expect("free");
}

#[tokio::test]
async fn bad_input_calls_name_the_field_and_a_process_leaves_nothing() {
    let d = Daemon::start().await;
    let before = Snapshot::settled(&d);
    let plain = run(&d, "plain", "", sh("sleep 30", false, false)).await;
    let piped = run(&d, "piped", "", sh("cat", true, false)).await;
    let cases: Vec<(Vec<pb::InputRequest>, tonic::Code, &str)> = vec![
        (vec![], tonic::Code::InvalidArgument, "id"),
        (vec![data("nope", b"x")], tonic::Code::NotFound, "nope"),
        (vec![data("", b"x")], tonic::Code::InvalidArgument, "id"),
        (
            vec![data(&plain, b"x")],
            tonic::Code::FailedPrecondition,
            "without stdin",
        ),
        (
            vec![pb::InputRequest {
                id: piped.clone(),
                resize: Some(pb::TerminalSize { cols: 80, rows: 24 }),
                ..Default::default()
            }],
            tonic::Code::FailedPrecondition,
            "terminal",
        ),
        (
            vec![pb::InputRequest {
                id: piped.clone(),
                resize: Some(pb::TerminalSize {
                    cols: 70_000,
                    rows: 24,
                }),
                ..Default::default()
            }],
            tonic::Code::InvalidArgument,
            "resize.cols",
        ),
    ];
    for (messages, code, says) in cases {
        let e = input(&d, messages).await.expect_err("refused");
        assert_eq!(e.code(), code, "{says}: {e:?}");
        assert!(e.message().contains(says), "{says}: {e:?}");
    }
    let mut c = d.client().await;
    for id in [&plain, &piped] {
        c.stop(pb::StopRequest {
            id: id.clone(),
            signal: 9,
            grace_period_ms: Some(0),
        })
        .await
        .expect("stop");
        c.wait(pb::WaitRequest {
            id: id.clone(),
            timeout_ms: Some(10_000),
        })
        .await
        .expect("wait");
        c.free(pb::FreeRequest { id: id.clone() })
            .await
            .expect("free");
    }
    // A terminal's master and a pipe's write end go with their process.
    let term = run(&d, "term", "", sh("echo hi", true, true)).await;
    let _ = output(&d, &term).await;
    c.free(pb::FreeRequest { id: term }).await.expect("free");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(Snapshot::settled(&d), before);
}
