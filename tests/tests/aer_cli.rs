//! The `aer` CLI against a real daemon.

use aurae_tests::Daemon;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn exec_wait_streams_output_and_exits_with_the_workload_code() {
    let d = Daemon::start().await;
    let out = d.aer(&[
        "exec",
        "--name",
        "hello",
        "--wait",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 5",
    ]);
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n");

    let out = d.aer(&["ls", "-o", "json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v[0]["id"], "hello");
    assert_eq!(v[0]["exit_code"], 5);

    let out = d.aer(&["ls"]);
    let table = text(&out.stdout);
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table.contains("hello") && table.contains("exited"),
        "{table}"
    );

    let out = d.aer(&["logs", "hello"]);
    assert_eq!(text(&out.stdout), "out\n");
    let out = d.aer(&["status", "hello"]);
    assert!(
        text(&out.stdout).contains("exit_code: 5"),
        "{}",
        text(&out.stdout)
    );
    assert!(d.aer(&["free", "hello"]).status.success());
    let out = d.aer(&["status", "hello"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("no workload named"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn stop_and_health_and_server_errors() {
    let d = Daemon::start().await;
    assert_eq!(text(&d.aer(&["health"]).stdout), "SERVING\n");
    assert!(d
        .aer(&["exec", "--name", "sleeper", "--", "sleep", "30"])
        .status
        .success());
    let out = d.aer(&[
        "stop", "sleeper", "--signal", "KILL", "--grace", "1s", "-o", "json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["signal"], 9);
    let out = d.aer(&["exec", "--name", "Bad_Name", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("InvalidArgument: name:"),
        "{}",
        text(&out.stderr)
    );
}
