//! The CRI streaming server, driven by the upstream `crictl`: a streamed
//! `exec` (stdout, stderr and the exit code apart; then stdin to its end)
//! and a `port-forward` to a web server in a container; its URLs work once
//! and refuse a client that does not upgrade to SPDY/3.1 with the right
//! sub-protocol; bad `Exec`, `Attach` and `PortForward` requests are
//! refused naming the field; then nothing is left behind.

use std::io::{Read, Write};
use std::time::Duration;

use aurae_proto::cri;
use aurae_tests::cri::{
    cri_client, crictl_bin, daemon_with_busybox, page_through_port_forward, requirements, web_pod,
    workloads,
};
use aurae_tests::leaks::Snapshot;
use aurae_tests::report_skip;

/// POSTs to a streaming `url` with `headers`; the response's status code.
fn post(url: &str, headers: &str) -> u16 {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest.split_once('/').expect("a path");
    let mut s = std::net::TcpStream::connect(host).expect("the streaming server");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        s,
        "POST /{path} HTTP/1.1\r\nHost: {host}\r\n{headers}Content-Length: 0\r\n\r\n"
    )
    .expect("request");
    let mut head = [0u8; 12];
    s.read_exact(&mut head).expect("a status line");
    let line = String::from_utf8_lossy(&head).to_string();
    line[9..12].parse().unwrap_or_else(|_| panic!("{line:?}"))
}

const SPDY: &str = "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n";

#[tokio::test(flavor = "multi_thread")]
async fn crictl_exec_and_port_forward_stream_and_leave_nothing() {
    if let Some(why) = requirements() {
        report_skip("crictl_exec_and_port_forward_stream_and_leave_nothing", why);
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let (_registry, d, crictl) = daemon_with_busybox(work.path()).await;
    let mut client = d.client().await;
    let mut cri = cri_client(&crictl.socket).await;
    let before = Snapshot::settled(&d);

    let (pod_id, id) = web_pod(&crictl, work.path(), "streams");

    // A streamed exec: its two streams apart, and its exit code.
    let out = crictl.run(&[
        "exec",
        &id,
        "/bin/busybox",
        "sh",
        "-c",
        "echo to-out; echo to-err >&2; exit 3",
    ]);
    // (crictl 1.26 exits 1 and names the command's exit code.)
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(stderr.contains("exit code 3"), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "to-out\n");
    assert!(stderr.starts_with("to-err\n"), "{out:?}");
    let ok = crictl.ok(&["exec", &id, "/bin/busybox", "echo", "streamed"]);
    assert_eq!(ok, "streamed");
    // Its stdin, to the end.
    let mut piped = std::process::Command::new(crictl_bin())
        .args([
            "--runtime-endpoint",
            &format!("unix://{}", crictl.socket.display()),
            "exec",
            "-i",
            &id,
            "/bin/busybox",
            "sh",
            "-c",
            "cat; echo end",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("crictl exec -i");
    piped
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"through-stdin\n")
        .expect("write");
    let piped = piped.wait_with_output().expect("crictl exec -i");
    assert!(piped.status.success(), "{piped:?}");
    assert_eq!(
        String::from_utf8_lossy(&piped.stdout),
        "through-stdin\nend\n"
    );

    // Port-forward: a local port to the container's web server.
    page_through_port_forward(&crictl, &pod_id, 8080);

    // A URL works once; a client that does not upgrade is refused, and so
    // is one without the sub-protocol.
    let exec = |cmd: &[&str], f: fn(&mut cri::ExecRequest)| {
        let mut r = cri::ExecRequest {
            container_id: id.clone(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            stdout: true,
            ..Default::default()
        };
        f(&mut r);
        r
    };
    let url = cri
        .exec(exec(&["/bin/busybox", "true"], |_| {}))
        .await
        .expect("Exec")
        .into_inner()
        .url;
    assert_eq!(post(&url, ""), 400, "no upgrade");
    // A refused upgrade leaves the URL good (a client may fall back to
    // another protocol); the session it opens uses it up.
    let exec_protocol = format!("{SPDY}X-Stream-Protocol-Version: v4.channel.k8s.io\r\n");
    assert_eq!(post(&url, &exec_protocol), 101, "the URL is still good");
    assert_eq!(post(&url, &exec_protocol), 404, "the token was used");
    let url = cri
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: pod_id.clone(),
            port: vec![8080],
        })
        .await
        .expect("PortForward")
        .into_inner()
        .url;
    let wrong = format!("{SPDY}X-Stream-Protocol-Version: v4.channel.k8s.io\r\n");
    assert_eq!(
        post(&url, &wrong),
        403,
        "exec's protocol for a port-forward"
    );
    assert_eq!(
        post(&url.replace("/portforward/", "/portforward/x"), SPDY),
        404
    );

    // Bad requests, by field.
    let refused = [
        (
            exec(&["true"], |r| {
                r.tty = true;
                r.stderr = true
            }),
            tonic::Code::InvalidArgument,
            "stderr",
        ),
        (
            exec(&["true"], |r| r.stdout = false),
            tonic::Code::InvalidArgument,
            "stdout",
        ),
        (exec(&[], |_| {}), tonic::Code::InvalidArgument, "cmd"),
        (
            exec(&["true"], |r| r.container_id = "nope".into()),
            tonic::Code::NotFound,
            "container_id",
        ),
    ];
    for (request, code, field) in refused {
        let e = cri.exec(request).await.expect_err("refused");
        assert_eq!(e.code(), code, "{field}: {e:?}");
        assert!(e.message().contains(field), "{field}: {e:?}");
    }
    let attach = |f: fn(&mut cri::AttachRequest)| {
        let mut r = cri::AttachRequest {
            container_id: id.clone(),
            stdout: true,
            ..Default::default()
        };
        f(&mut r);
        r
    };
    for (request, code, field) in [
        (
            attach(|r| r.stdin = true),
            tonic::Code::FailedPrecondition,
            "stdin",
        ),
        (
            attach(|r| r.tty = true),
            tonic::Code::InvalidArgument,
            "tty",
        ),
        (
            attach(|r| r.stdout = false),
            tonic::Code::InvalidArgument,
            "stdout",
        ),
        (
            attach(|r| r.container_id = "nope".into()),
            tonic::Code::NotFound,
            "container_id",
        ),
    ] {
        let e = cri.attach(request).await.expect_err("refused");
        assert_eq!(e.code(), code, "{field}: {e:?}");
        assert!(e.message().contains(field), "{field}: {e:?}");
    }
    for (request, code, field) in [
        (
            cri::PortForwardRequest {
                pod_sandbox_id: "nope".into(),
                port: vec![],
            },
            tonic::Code::NotFound,
            "pod_sandbox_id",
        ),
        (
            cri::PortForwardRequest {
                pod_sandbox_id: pod_id.clone(),
                port: vec![80, 70000],
            },
            tonic::Code::InvalidArgument,
            "port[1]",
        ),
    ] {
        let e = cri.port_forward(request).await.expect_err("refused");
        assert_eq!(e.code(), code, "{field}: {e:?}");
        assert!(e.message().contains(field), "{field}: {e:?}");
    }

    crictl.ok(&["stop", "--timeout", "1", &id]);
    crictl.ok(&["rm", &id]);
    crictl.ok(&["stopp", &pod_id]);
    crictl.ok(&["rmp", &pod_id]);
    let left = workloads(&mut client).await;
    assert!(left.is_empty(), "{left:?}");
    // (The sessions' connections close as their clients go.)
    assert_eq!(Snapshot::settled(&d), before);
}
