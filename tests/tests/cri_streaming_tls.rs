//! The CRI streaming server over HTTPS (`[cri] stream_tls`, with the
//! self-signed certificate auraed makes when none is configured): `Exec`,
//! `Attach` and `PortForward` answer `https` URLs, the upstream `crictl`
//! streams an exec's output and exit code and fetches a page through
//! `port-forward` over them, a client speaking plain HTTP to the server
//! gets no HTTP answer, and nothing is left behind.

use std::io::{Read, Write};
use std::time::Duration;

use aurae_proto::cri;
use aurae_tests::cri::{
    cri_client, daemon_options, page_through_port_forward, requirements, workloads, write_json,
    Registry, BUSYBOX as IMAGE,
};
use aurae_tests::leaks::Snapshot;
use aurae_tests::pods::SERVER;
use aurae_tests::report_skip;

#[tokio::test(flavor = "multi_thread")]
async fn crictl_streams_over_https_and_leaves_nothing() {
    if let Some(why) = requirements() {
        report_skip("crictl_streams_over_https_and_leaves_nothing", why);
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start();
    registry.push(
        &aurae_tests::pods::busybox_image(work.path()),
        "e2e-test-images/busybox:1.29-2",
    );
    let (mut options, crictl) = daemon_options(&registry, "remove");
    assert!(options.extra_config.contains("enabled = true\n"));
    options.extra_config =
        options
            .extra_config
            .replacen("enabled = true\n", "enabled = true\nstream_tls = true\n", 1);
    let d = aurae_tests::Daemon::start_with(options).await;
    crictl.ok(&["pull", IMAGE]);
    let mut client = d.client().await;
    let mut cri = cri_client(&crictl.socket).await;
    let before = Snapshot::settled(&d);

    let pod = write_json(
        work.path(),
        "pod.json",
        serde_json::json!({
            "metadata": {"name": "tls", "namespace": "default", "uid": "u-tls", "attempt": 0},
            "log_directory": work.path().join("logs").display().to_string(),
        }),
    );
    let container = write_json(
        work.path(),
        "container.json",
        serde_json::json!({
            "metadata": {"name": "web"},
            "image": {"image": IMAGE},
            "command": ["/bin/busybox", "sh", "-c", SERVER],
            "log_path": "web.log",
        }),
    );
    let pod_id = crictl.ok(&["runp", "--runtime", "aurae-cell", &pod]);
    let id = crictl.ok(&["create", &pod_id, &container, &pod]);
    crictl.ok(&["start", &id]);

    // Every URL is an https one.
    let exec_url = cri
        .exec(cri::ExecRequest {
            container_id: id.clone(),
            cmd: vec!["/bin/busybox".into(), "true".into()],
            stdout: true,
            ..Default::default()
        })
        .await
        .expect("Exec")
        .into_inner()
        .url;
    let attach_url = cri
        .attach(cri::AttachRequest {
            container_id: id.clone(),
            stdout: true,
            ..Default::default()
        })
        .await
        .expect("Attach")
        .into_inner()
        .url;
    let forward_url = cri
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: pod_id.clone(),
            port: vec![8080],
        })
        .await
        .expect("PortForward")
        .into_inner()
        .url;
    for url in [&exec_url, &attach_url, &forward_url] {
        assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    }

    // Plain HTTP to it: the TLS handshake fails, no HTTP answer comes.
    let host = exec_url
        .strip_prefix("https://")
        .and_then(|r| r.split('/').next())
        .expect("host");
    let mut plain = std::net::TcpStream::connect(host).expect("the streaming server");
    plain
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    write!(
        plain,
        "POST /exec/x HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n"
    )
    .expect("request");
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        !String::from_utf8_lossy(&answer).contains("HTTP/1.1"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );

    // crictl (which does not verify the certificate) streams through it.
    let out = crictl.run(&[
        "exec",
        &id,
        "/bin/busybox",
        "sh",
        "-c",
        "echo to-out; echo to-err >&2; exit 3",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("exit code 3"), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "to-out\n");
    assert!(stderr.starts_with("to-err\n"), "{out:?}");
    page_through_port_forward(&crictl, &pod_id, 8080);

    crictl.ok(&["stop", "--timeout", "1", &id]);
    crictl.ok(&["rm", &id]);
    crictl.ok(&["stopp", &pod_id]);
    crictl.ok(&["rmp", &pod_id]);
    let left = workloads(&mut client).await;
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(Snapshot::settled(&d), before);
}
