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

/// Stands in for a VMM's vsock socket in front of `target` (the daemon's
/// Unix socket): reads `CONNECT <port>`, answers `OK <n>` if the port is
/// `open_port` (and closes otherwise), then relays bytes both ways.
fn fake_vmm_vsock(
    dir: &std::path::Path,
    target: std::path::PathBuf,
    open_port: u32,
) -> std::path::PathBuf {
    use std::io::{BufRead, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    let path = dir.join("vmm-vsock.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    std::thread::spawn(move || {
        for conn in listener.incoming().take(4) {
            let Ok(mut host) = conn else { return };
            let mut line = String::new();
            let mut reader = std::io::BufReader::new(host.try_clone().expect("clone"));
            if reader.read_line(&mut line).is_err() || line.trim() != format!("CONNECT {open_port}")
            {
                continue; // dropped: the guest refused
            }
            let Ok(guest) = UnixStream::connect(&target) else {
                return;
            };
            let _ = host.write_all(b"OK 1073741824\n");
            let (mut g2, mut h2) = (
                guest.try_clone().expect("clone"),
                host.try_clone().expect("clone"),
            );
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut reader, &mut g2);
            });
            std::thread::spawn(move || {
                let mut g = guest;
                let _ = std::io::copy(&mut g, &mut h2);
            });
        }
    });
    path
}

#[tokio::test]
async fn aer_reaches_an_auraed_through_a_vmm_vsock_socket() {
    let d = Daemon::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let sock = fake_vmm_vsock(tmp.path(), d.socket.clone(), 8443);
    let target = format!("{}:8443", sock.display());
    let out = d.aer(&["--vsock", &target, "health"]);
    assert_eq!(text(&out.stdout), "SERVING\n", "{}", text(&out.stderr));
    // A port nothing listens on in the guest: a clear error.
    let out = d.aer(&["--vsock", &format!("{}:9", sock.display()), "ls"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("nothing listens on vsock port 9"),
        "{}",
        text(&out.stderr)
    );
    // A malformed target names the flag.
    let out = d.aer(&["--vsock", "no-port", "ls"]);
    assert!(
        text(&out.stderr).contains("--vsock:"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn aer_ls_with_a_90_kb_command_line_prints_short_lines() {
    let d = Daemon::start().await;
    // The daemon takes up to 64 KiB per argument: two of 45 KB.
    let (a, b) = ("a".repeat(45_000), "b".repeat(45_000));
    let out = d.aer(&[
        "exec", "--name", "bigcmd", "--wait", "--", "/bin/sh", "-c", "exit 0", &a, &b,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let out = d.aer(&["ls"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert_eq!(table.lines().count(), 2, "{table}");
    for line in table.lines() {
        assert!(line.len() < 300, "{} bytes: {line}", line.len());
    }
    assert!(table.contains("bigcmd"), "{table}");
    assert!(table.contains("/bin/sh -c exit 0 aaaa"), "{table}");
    assert!(table.contains('…'), "{table}");

    // JSON keeps the whole command.
    let out = d.aer(&["ls", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v[0]["command"][3], a.as_str());
    assert_eq!(v[0]["command"][4], b.as_str());

    // A stdout nobody reads (like `aer ls | head -1` after head exits):
    // status 1, not a panic.
    let (read, write) = nix::unistd::pipe().expect("pipe");
    drop(read);
    let out = std::process::Command::new(aurae_tests::binary("aer"))
        .env("AURAE_CONFIG", &d.client_config)
        .args(["ls", "-o", "json"])
        .stdout(std::process::Stdio::from(write))
        .output()
        .expect("run aer");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("panicked"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn aer_ls_escapes_control_characters_in_commands() {
    let d = Daemon::start().await;
    let out = d.aer(&[
        "exec",
        "--name",
        "hostile",
        "--wait",
        "--",
        "/bin/sh",
        "-c",
        "exit 0",
        "a\x1b[2Jb",
        "c\nd\re",
        "f\u{9b}31m",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let out = d.aer(&["ls"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert_eq!(table.lines().count(), 2, "{table}");
    assert!(table.contains(r"a\x1b[2Jb c\nd\re f\u{9b}31m"), "{table:?}");
    assert!(
        !table.chars().any(|c| c.is_control() && c != '\n'),
        "{table:?}"
    );

    // `aer status` shows the command as a JSON array, whose escapes cover
    // C0 controls; aer escapes the rest.
    let out = d.aer(&["status", "hostile"]);
    let details = text(&out.stdout);
    assert!(
        details.contains(r#""a\u001b[2Jb","c\nd\re","f\u{9b}31m""#),
        "{details:?}"
    );
    assert!(
        !details.chars().any(|c| c.is_control() && c != '\n'),
        "{details:?}"
    );
}

#[tokio::test]
async fn exec_with_i_passes_our_stdin_to_its_end() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let d = Daemon::start().await;
    let mut aer = Command::new(aurae_tests::binary("aer"))
        .env("AURAE_CONFIG", &d.client_config)
        .args([
            "exec",
            "-i",
            "--",
            "/bin/sh",
            "-c",
            "cat; echo done; exit 3",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("aer");
    aer.stdin
        .take()
        .expect("stdin")
        .write_all(b"from-aer\n")
        .expect("write");
    let out = aer.wait_with_output().expect("aer");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "from-aer\ndone\n",
        "{out:?}"
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
}

#[tokio::test]
async fn a_process_that_ends_before_our_stdin_does_still_gives_its_code() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let d = Daemon::start().await;
    let mut aer = Command::new(aurae_tests::binary("aer"))
        .env("AURAE_CONFIG", &d.client_config)
        .args(["exec", "-i", "--", "/bin/sh", "-c", "head -n 1; exit 4"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("aer");
    let mut stdin = aer.stdin.take().expect("stdin");
    // More than the process reads, then our stdin stays open a while.
    let writer = std::thread::spawn(move || {
        for _ in 0..200 {
            if stdin.write_all(b"line\n").is_err() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    });
    let out = aer.wait_with_output().expect("aer");
    writer.join().expect("writer");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "line\n", "{out:?}");
    assert_eq!(out.status.code(), Some(4), "{out:?}");
}
