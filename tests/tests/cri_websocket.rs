//! `Exec` and `Attach` over WebSocket (`v5.channel.k8s.io`, and
//! `v4.channel.k8s.io`), as newer Kubernetes clients speak them: a test
//! client (tokio-tungstenite) gets the URL from the CRI, upgrades with the
//! sub-protocol, and reads each channel's messages: the first an empty one
//! on stdout, then stdout and stderr apart, then the `Status` with the exit
//! code; stdin goes in and is closed with v5's close message. Port-forward
//! over WebSocket (`v4.channel.k8s.io`, `v4.base64.channel.k8s.io`, or no
//! sub-protocol): each port's channels open with the port, a request on
//! the data channel reaches the pod's web server and its answer comes
//! back, a port with nothing listening gets its error on the error
//! channel, and the session ends when the pod's connections have; 4 MiB
//! go both ways at once through `cat` and a close is answered; a pod that
//! never reads gets its input closed with an error once the session holds
//! 8 MiB for it, and a client that leaves ends its session and the pod's
//! connection. A client
//! offering no protocol of this server's, and a session without ports, are
//! refused; nothing is left behind.

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
/// `protocols` (none if empty); the socket and the protocol the server chose, or the
/// refusal's HTTP status.
async fn connect(url: &str, protocols: &str) -> Result<(Ws, String), u16> {
    let ws_url = url.replacen("http://", "ws://", 1);
    let mut req = ws_url.as_str().into_client_request().expect("a request");
    if !protocols.is_empty() {
        req.headers_mut()
            .insert("sec-websocket-protocol", protocols.parse().expect("header"));
    }
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

/// A port-forward session of `ports` ports on `url` offering `protocols`
/// (none if empty): their opening messages are read, then an HTTP request
/// goes to the first port; every message until the server closes, as
/// (channel, data).
async fn port_forward(
    url: &str,
    protocols: &str,
    base64: bool,
    ports: usize,
) -> Vec<(u8, Vec<u8>)> {
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::STANDARD;
    let (mut ws, chosen) = connect(url, protocols).await.expect("upgraded");
    assert_eq!(chosen, protocols, "the protocol chosen");
    let request = b"GET /index.html HTTP/1.0\r\n\r\n";
    let sent = if base64 {
        Message::text(format!("0{}", engine.encode(request)))
    } else {
        let mut m = vec![0u8];
        m.extend_from_slice(request);
        Message::binary(m)
    };
    let mut got = Vec::new();
    let mut sent = Some(sent);
    loop {
        let next = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a message within 20 s");
        let (channel, data) = match next {
            Some(Ok(Message::Binary(data))) if !base64 => {
                let (ch, rest) = data.split_first().expect("a channel byte");
                (*ch, rest.to_vec())
            }
            Some(Ok(Message::Text(text))) if base64 => {
                let ch = text.as_bytes()[0] - b'0';
                (ch, engine.decode(&text.as_bytes()[1..]).expect("base64"))
            }
            Some(Ok(Message::Close(_))) | None => return got,
            Some(Ok(m)) => panic!("a message of the other kind: {m:?}"),
            Some(Err(e)) => panic!("reading: {e}"),
        };
        got.push((channel, data));
        // Every channel has opened: the request goes.
        if got.len() == 2 * ports {
            if let Some(m) = sent.take() {
                ws.send(m).await.expect("the request");
            }
        }
    }
}

/// The daemon's holdings once the sessions before have all closed in the
/// background (some take up to a second): two settled snapshots 1.5 s
/// apart agree, within 15 s.
fn quiet(d: &aurae_tests::Daemon) -> Snapshot {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut last = Snapshot::settled(d);
    loop {
        std::thread::sleep(Duration::from_millis(1500));
        let now = Snapshot::settled(d);
        if now == last {
            return now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "auraed's holdings did not settle within 15 s: {last:?}, then {now:?}"
        );
        last = now;
    }
}

/// A binary session of one port on `url`, its two openings read.
async fn one_port_session(
    url: &str,
) -> (
    futures::stream::SplitSink<Ws, Message>,
    futures::stream::SplitStream<Ws>,
) {
    let (ws, _) = connect(url, "v4.channel.k8s.io").await.expect("upgraded");
    let (sink, mut stream) = ws.split();
    for _ in 0..2 {
        let opening = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("the openings");
        assert!(
            matches!(opening, Some(Ok(Message::Binary(_)))),
            "{opening:?}"
        );
    }
    (sink, stream)
}

/// Sends 4 MiB through the one port of the session at `url` (binary) in
/// 64 KiB messages while reading what comes back, which must be the same
/// bytes; then closes the session, and the server answers the close.
async fn echo_through(url: &str) {
    const CHUNK: usize = 64 << 10;
    const CHUNKS: usize = 64;
    let pattern = |i: usize| (i % 251) as u8;
    let (mut sink, mut stream) = one_port_session(url).await;
    let sender = tokio::spawn(async move {
        for k in 0..CHUNKS {
            let mut m = vec![0u8];
            m.extend((0..CHUNK).map(|j| pattern(k * CHUNK + j)));
            sink.send(Message::binary(m)).await.expect("send");
        }
        sink
    });
    let mut got = 0usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got < CHUNK * CHUNKS {
        let m = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("the echo within 60 s ({got} bytes came)"));
        let Some(Ok(Message::Binary(data))) = m else {
            panic!("{m:?} after {got} bytes");
        };
        let (channel, bytes) = data.split_first().expect("a channel byte");
        assert_eq!(*channel, 0, "{:?}", String::from_utf8_lossy(bytes));
        for (j, b) in bytes.iter().enumerate() {
            assert_eq!(*b, pattern(got + j), "byte {}", got + j);
        }
        got += bytes.len();
    }
    // A close, answered with the server's.
    let mut sink = sender.await.expect("the sender");
    sink.close().await.expect("the close");
    let reply = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the close reply within 10 s");
    assert!(matches!(reply, Some(Ok(Message::Close(_)))), "{reply:?}");
}

/// Sends up to 64 MiB to the one port of the session at `url`, whose pod
/// never reads, until its error channel says its input is closed (within
/// 60 s); then drops the connection without a close.
async fn overflow_through(url: &str) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (mut sink, mut stream) = one_port_session(url).await;
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let sender = tokio::spawn(async move {
        let mut m = vec![0u8; (64 << 10) + 1];
        m[1] = b'x';
        for _ in 0..1024 {
            if stopped.load(Ordering::SeqCst)
                || sink.send(Message::binary(m.clone())).await.is_err()
            {
                break;
            }
        }
        sink
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let m = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("the port's error within 60 s");
        match m {
            Some(Ok(Message::Binary(data))) if data.first() == Some(&1) => {
                let text = String::from_utf8_lossy(&data[1..]);
                assert!(text.contains("input is closed"), "{text}");
                break;
            }
            Some(Ok(_)) => {}
            other => panic!("the session ended before the port's error: {other:?}"),
        }
    }
    stop.store(true, Ordering::SeqCst);
    let sink = sender.await.expect("the sender");
    drop((sink, stream));
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
                "mkdir -p /tmp/www; echo pf-page > /tmp/www/index.html; \
                 /bin/busybox httpd -p 8080 -h /tmp/www; \
                 /bin/busybox nc -ll -p 8081 -e /bin/busybox cat & \
                 /bin/busybox nc -ll -p 8082 -e /bin/busybox sleep 3600 & \
                 while true; do echo tick; /bin/busybox sleep 0.2; done"],
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

    // No protocol of this server's: refused.
    let url = exec_url(&["/bin/busybox", "true"], false).await;
    assert_eq!(
        connect(&url, "base64.channel.k8s.io").await.err(),
        Some(403)
    );

    // Port-forward: the web server on 8080, and 9 with nothing on it.
    let forward_url = |ports: Vec<i32>| {
        let mut cri = cri.clone();
        let r = cri::PortForwardRequest {
            pod_sandbox_id: pod_id.clone(),
            port: ports,
        };
        async move {
            cri.port_forward(r)
                .await
                .expect("PortForward")
                .into_inner()
                .url
        }
    };
    for (protocol, base64) in [
        ("v4.channel.k8s.io", false),
        ("v4.base64.channel.k8s.io", true),
        ("", false),
    ] {
        let url = forward_url(vec![8080, 9]).await;
        let got = port_forward(&url, protocol, base64, 2).await;
        // Each channel first carries its port, little-endian.
        let opening: Vec<_> = got.iter().take(4).cloned().collect();
        let expected = vec![
            (0, 8080u16.to_le_bytes().to_vec()),
            (1, 8080u16.to_le_bytes().to_vec()),
            (2, 9u16.to_le_bytes().to_vec()),
            (3, 9u16.to_le_bytes().to_vec()),
        ];
        assert_eq!(opening, expected, "{protocol:?}");
        let channel = |c: u8| -> String {
            got.iter()
                .skip(4)
                .filter(|(ch, _)| *ch == c)
                .map(|(_, d)| String::from_utf8_lossy(d).into_owned())
                .collect()
        };
        assert!(channel(0).contains("pf-page"), "{protocol:?}: {got:?}");
        assert_eq!(channel(1), "", "{protocol:?}");
        assert!(
            channel(3).contains("an error occurred forwarding 9 -> 9"),
            "{protocol:?}: {got:?}"
        );
    }
    // The ports from the URL, the request having none; none at all, or a
    // bad one, is refused naming `port`.
    let url = forward_url(Vec::new()).await;
    let got = port_forward(&format!("{url}?port=8080"), "v4.channel.k8s.io", false, 1).await;
    assert!(
        got.iter()
            .any(|(c, d)| *c == 0 && String::from_utf8_lossy(d).contains("pf-page")),
        "{got:?}"
    );
    // Both ways at once, more than the sockets hold: 4 MiB echoed by `cat`
    // while the client goes on sending, then a close, answered. And a pod
    // that never reads: the port's input is closed with an error once the
    // session holds 8 MiB of it, and the client then leaves with the pod's
    // connection open. Each session ends, and its connection to the pod
    // with it (auraed holds what it held before).
    let mid = quiet(&d);
    echo_through(&forward_url(vec![8081]).await).await;
    overflow_through(&forward_url(vec![8082]).await).await;
    assert_eq!(Snapshot::settled(&d), mid);
    // base64 numbers channels with one character: 40 ports at most.
    let url = forward_url(vec![8080; 41]).await;
    assert_eq!(
        connect(&url, "v4.base64.channel.k8s.io").await.err(),
        Some(400)
    );
    let url = forward_url(Vec::new()).await;
    assert_eq!(connect(&url, "v4.channel.k8s.io").await.err(), Some(400));
    let url = forward_url(Vec::new()).await;
    assert_eq!(
        connect(&format!("{url}?port=0"), "v4.channel.k8s.io")
            .await
            .err(),
        Some(400)
    );

    crictl.ok(&["stop", "--timeout", "1", &id]);
    crictl.ok(&["rm", &id]);
    crictl.ok(&["stopp", &pod_id]);
    crictl.ok(&["rmp", &pod_id]);
    let left = workloads(&mut client).await;
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(Snapshot::settled(&d), before);
}
