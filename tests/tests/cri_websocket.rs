//! `Exec` and `Attach` over WebSocket (`v5.channel.k8s.io`, and
//! `v4.channel.k8s.io`), as newer Kubernetes clients speak them: a test
//! client (tokio-tungstenite) gets the URL from the CRI, upgrades with the
//! sub-protocol, and reads each channel's messages: the first an empty one
//! on stdout, then stdout and stderr apart, then the `Status` with the exit
//! code; stdin goes in and is closed with v5's close message. A client
//! offering no protocol of this server's, and port-forward over WebSocket,
//! are refused; nothing is left behind.

use std::time::Duration;

use aurae_proto::cri;
use aurae_tests::cri::BUSYBOX as IMAGE;
use aurae_tests::cri::{cri_client, daemon_with_busybox, requirements, workloads, write_json};
use aurae_tests::leaks::Snapshot;
use aurae_tests::report_skip;
use futures::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Connects to a streaming `url` as a WebSocket client offering
/// `protocols`; the socket and the protocol the server chose, or the
/// refusal's HTTP status.
async fn connect(url: &str, protocols: &str) -> Result<(Ws, String), u16> {
    let ws_url = url.replacen("http://", "ws://", 1);
    let mut req = ws_url.as_str().into_client_request().expect("a request");
    req.headers_mut()
        .insert("sec-websocket-protocol", protocols.parse().expect("header"));
    let host = url
        .strip_prefix("http://")
        .and_then(|r| r.split('/').next())
        .expect("host");
    let tcp = tokio::net::TcpStream::connect(host).await.expect("connect");
    match tokio_tungstenite::client_async(req, tcp).await {
        Ok((ws, resp)) => {
            let chosen = resp
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            Ok((ws, chosen))
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("websocket: {e}"),
    }
}

/// Every channel's data until the server closes, in order, as (channel,
/// text); bounded in time.
async fn read_all(ws: &mut Ws) -> Vec<(u8, String)> {
    let mut got = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a message within 20 s");
        match next {
            Some(Ok(Message::Binary(data))) => {
                let (ch, rest) = data.split_first().expect("a channel byte");
                got.push((*ch, String::from_utf8_lossy(rest).into_owned()));
            }
            Some(Ok(Message::Close(_))) | None => return got,
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("reading: {e}"),
        }
    }
}

/// The data of `channel`, joined.
fn on(got: &[(u8, String)], channel: u8) -> String {
    got.iter()
        .filter(|(c, _)| *c == channel)
        .map(|(_, t)| t.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_and_attach_over_websocket_and_leave_nothing() {
    if let Some(why) = requirements() {
        report_skip("exec_and_attach_over_websocket_and_leave_nothing", why);
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let (_registry, d, crictl) = daemon_with_busybox(work.path()).await;
    let mut client = d.client().await;
    let mut cri = cri_client(&crictl.socket).await;
    let before = Snapshot::settled(&d);

    let pod = write_json(
        work.path(),
        "pod.json",
        serde_json::json!({
            "metadata": {"name": "ws", "namespace": "default", "uid": "u-ws", "attempt": 0},
            "log_directory": work.path().join("logs").display().to_string(),
        }),
    );
    let container = write_json(
        work.path(),
        "container.json",
        serde_json::json!({
            "metadata": {"name": "main"},
            "image": {"image": IMAGE},
            "command": ["/bin/busybox", "sh", "-c",
                "while true; do echo tick; /bin/busybox sleep 0.2; done"],
            "log_path": "main.log",
        }),
    );
    let pod_id = crictl.ok(&["runp", "--runtime", "aurae-cell", &pod]);
    let id = crictl.ok(&["create", &pod_id, &container, &pod]);
    crictl.ok(&["start", &id]);
    let execs = cri.clone();
    let exec_url = |cmd: &[&str], stdin: bool| {
        let mut cri = execs.clone();
        let r = cri::ExecRequest {
            container_id: id.clone(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            stdin,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        async move { cri.exec(r).await.expect("Exec").into_inner().url }
    };

    // v5: stdout and stderr apart, then the exit code in the Status.
    let url = exec_url(
        &[
            "/bin/busybox",
            "sh",
            "-c",
            "echo to-out; echo to-err >&2; exit 3",
        ],
        false,
    )
    .await;
    let (mut ws, chosen) = connect(&url, "v5.channel.k8s.io, v4.channel.k8s.io")
        .await
        .expect("upgraded");
    assert_eq!(chosen, "v5.channel.k8s.io");
    let got = read_all(&mut ws).await;
    assert_eq!(got.first(), Some(&(1, String::new())), "{got:?}");
    assert_eq!(on(&got, 1), "to-out\n");
    assert_eq!(on(&got, 2), "to-err\n");
    let status: serde_json::Value = serde_json::from_str(&on(&got, 3)).expect("a Status");
    assert_eq!(status["reason"], "NonZeroExitCode", "{status}");
    assert_eq!(status["details"]["causes"][0]["message"], "3");

    // v5 stdin, closed with the close message; v4 also negotiates.
    for protocol in ["v5.channel.k8s.io", "v4.channel.k8s.io"] {
        let url = exec_url(&["/bin/busybox", "sh", "-c", "cat; echo end"], true).await;
        let (mut ws, chosen) = connect(&url, protocol).await.expect("upgraded");
        assert_eq!(chosen, protocol);
        let mut line = vec![0u8];
        line.extend_from_slice(b"through-stdin\n");
        ws.send(Message::binary(line)).await.expect("stdin");
        if protocol.starts_with("v5") {
            ws.send(Message::binary(vec![255u8, 0]))
                .await
                .expect("close stdin");
            let got = read_all(&mut ws).await;
            assert_eq!(on(&got, 1), "through-stdin\nend\n", "{got:?}");
            let status: serde_json::Value = serde_json::from_str(&on(&got, 3)).expect("Status");
            assert_eq!(status["status"], "Success", "{status}");
        } else {
            // v4 has no close for stdin: the client leaving ends the exec.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            let mut seen = String::new();
            while !seen.contains("through-stdin") {
                let m = tokio::time::timeout_at(deadline, ws.next())
                    .await
                    .expect("the echo within 10 s");
                if let Some(Ok(Message::Binary(data))) = m {
                    if data.first() == Some(&1) {
                        seen.push_str(&String::from_utf8_lossy(&data[1..]));
                    }
                }
            }
            drop(ws);
        }
    }

    // Attach: the container's output from now on, until the client goes.
    let url = cri
        .attach(cri::AttachRequest {
            container_id: id.clone(),
            stdout: true,
            ..Default::default()
        })
        .await
        .expect("Attach")
        .into_inner()
        .url;
    let (mut ws, _) = connect(&url, "v5.channel.k8s.io").await.expect("upgraded");
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains("tick") {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("the container's output within 10 s");
        if let Some(Ok(Message::Binary(data))) = m {
            if data.first() == Some(&1) {
                seen.push_str(&String::from_utf8_lossy(&data[1..]));
            }
        }
    }
    drop(ws);

    // No protocol of this server's: refused; port-forward over WebSocket
    // is not built (SPDY only).
    let url = exec_url(&["/bin/busybox", "true"], false).await;
    assert_eq!(
        connect(&url, "base64.channel.k8s.io").await.err(),
        Some(403)
    );
    let url = cri
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: pod_id.clone(),
            port: vec![8080],
        })
        .await
        .expect("PortForward")
        .into_inner()
        .url;
    assert_eq!(connect(&url, "v4.channel.k8s.io").await.err(), Some(501));

    crictl.ok(&["stop", "--timeout", "1", &id]);
    crictl.ok(&["rm", &id]);
    crictl.ok(&["stopp", &pod_id]);
    crictl.ok(&["rmp", &pod_id]);
    let left = workloads(&mut client).await;
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(Snapshot::settled(&d), before);
}
