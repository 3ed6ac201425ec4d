//! The CRI streaming server over HTTPS (`[cri] stream_tls`, with the
//! certificate and key of `stream_tls_cert` and `stream_tls_key`, from a
//! CA of the test's): `Exec`, `Attach` and `PortForward` answer `https`
//! URLs, the upstream `crictl` streams an exec's output and exit code and,
//! trusting that CA (`SSL_CERT_FILE`), fetches a page through
//! `port-forward` (crictl's port-forward verifies the server's certificate,
//! its exec does not), a client speaking plain HTTP to the server gets no
//! HTTP answer, and nothing is left behind. (The self-signed certificate
//! auraed makes when none is configured is unit-tested in
//! `auraed/src/cri/streaming/tls.rs`.)

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use aurae_proto::cri;
use aurae_tests::cri::{
    cri_client, daemon_options, page_through_port_forward_with, requirements, web_pod, workloads,
    Registry, BUSYBOX as IMAGE,
};
use aurae_tests::leaks::Snapshot;
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
    let (ca, cert, key) = stream_identity(work.path());
    let tls = format!(
        "enabled = true\nstream_tls = true\nstream_tls_cert = {:?}\nstream_tls_key = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    options.extra_config = options.extra_config.replacen("enabled = true\n", &tls, 1);
    let d = aurae_tests::Daemon::start_with(options).await;
    crictl.ok(&["pull", IMAGE]);
    let mut client = d.client().await;
    let mut cri = cri_client(&crictl.socket).await;
    let before = Snapshot::settled(&d);

    let (pod_id, id) = web_pod(&crictl, work.path(), "tls");

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

    // crictl streams through it.
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
    page_through_port_forward_with(&crictl, &pod_id, 8080, &[("SSL_CERT_FILE", &ca)]);

    crictl.ok(&["stop", "--timeout", "1", &id]);
    crictl.ok(&["rm", &id]);
    crictl.ok(&["stopp", &pod_id]);
    crictl.ok(&["rmp", &pod_id]);
    let left = workloads(&mut client).await;
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(Snapshot::settled(&d), before);
}

/// A CA, and the streaming server's certificate from it for 127.0.0.1 and
/// localhost, with its key: the paths of the three PEM files in `dir`.
fn stream_identity(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().expect("a CA key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "stream test CA");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).expect("the CA");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().expect("a key");
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])
        .expect("leaf params")
        .signed_by(&key, &issuer)
        .expect("the server's certificate");
    let files = (
        dir.join("stream-ca.pem"),
        dir.join("stream.pem"),
        dir.join("stream.key"),
    );
    std::fs::write(&files.0, ca_cert.pem()).expect("ca");
    std::fs::write(&files.1, leaf.pem()).expect("cert");
    std::fs::write(&files.2, key.serialize_pem()).expect("key");
    files
}
