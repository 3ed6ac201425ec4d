//! Pre-started instances (`[instances] pool`), on the development machine:
//! a pod takes one, which then serves with the pod's own identity (on its
//! listeners, towards its parent's metadata endpoint, and in its files),
//! runs the pod's containers from the parent's unpacked images, and is
//! replaced in the background. Only the parent gives an identity, once;
//! and the pool leaves nothing behind when auraed stops.

use std::path::Path;
use std::time::{Duration, Instant};

use aurae_proto::metadata as md;
use aurae_proto::metadata::metadata_client::MetadataClient;
use aurae_proto::runtime as pb;
use aurae_tests::instances::veths;
use aurae_tests::pods::{busybox_image, container, pod, CLIENT, SERVER};
use aurae_tests::{require_image, require_root, Daemon, DaemonOptions};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// Waits (bounded) until auraed has pre-started `n` instances in all.
async fn pre_started(d: &Daemon, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while d.log_text().matches("pre-started an instance").count() < n {
        assert!(
            Instant::now() < deadline,
            "{n} pre-started instances within 60 s:\n{}",
            d.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The URI SAN (the SPIFFE ID) of the first certificate of a PEM chain.
fn spiffe_id(pem: &[u8]) -> String {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).expect("PEM");
    let cert = pem.parse_x509().expect("a certificate");
    let san = cert
        .subject_alternative_name()
        .expect("SAN")
        .expect("a SAN");
    san.value
        .general_names
        .iter()
        .find_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .expect("a URI SAN")
}

#[tokio::test]
async fn a_pod_takes_a_pre_started_instance_and_serves_with_its_own_identity() {
    require_root!();
    let image = require_image!();
    let mut d = Daemon::start_with(DaemonOptions {
        image_dir: Some(image.clone()),
        pool: 1,
        ..Default::default()
    })
    .await;
    pre_started(&d, 1).await;
    let img = busybox_image(&d.dir);
    let mut c = d.client().await;
    let r = c
        .run_pod(pod(
            "web",
            vec![
                container("server", &img, SERVER),
                container("client", &img, CLIENT),
            ],
            vec![],
        ))
        .await
        .unwrap_or_else(|e| panic!("run_pod: {}\n{}", e.message(), d.log_text()))
        .into_inner();
    let instance = r.pod.and_then(|p| p.instance).expect("the pod's instance");
    assert!(
        instance.backend_reason.contains("pre-started (Pooled-")
            && instance.backend_reason.ends_with("-0)"),
        "{instance:?}"
    );
    // The containers ran from the parent's unpacked image and share the
    // instance's localhost.
    aurae_tests::pods::client_got_the_page(&mut c).await;

    // Its record, as it reads it from its parent with its client
    // certificate: the pod's, not the provisional one.
    let own = json(&d.aer_ok(&["-o", "json", "--instance", "web", "metadata"]));
    assert_eq!(own["name"], "web");
    assert_eq!(own["spiffe_id"], "spiffe://test.local/auraed/web");
    // Its files and its listener: the pod's SVID.
    let pid = c
        .status(pb::StatusRequest { id: "web".into() })
        .await
        .expect("status")
        .into_inner()
        .pid;
    let file = |p: &str| std::fs::read(format!("/proc/{pid}/root{p}")).expect("instance file");
    assert_eq!(
        spiffe_id(&file("/etc/aurae/pki/server.crt")),
        "spiffe://test.local/auraed/web"
    );
    let admin = d.config();
    let read = |p: &Path| std::fs::read(p).expect("read");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&admin.auth.ca_crt)))
        .identity(Identity::from_pem(
            read(&admin.auth.client_crt),
            read(&admin.auth.client_key),
        ))
        .domain_name("localhost");
    // A new connection to the instance: the admin (whom the instance
    // allows) reaches it, which the instance refuses to give an identity.
    let direct = Endpoint::from_shared(format!("https://{}", instance.address))
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("the instance, directly");
    let assume = |name: &str| md::AssumeRequest {
        name: name.into(),
        path: name.into(),
        ..Default::default()
    };
    let err = MetadataClient::new(direct)
        .assume(assume("evil"))
        .await
        .expect_err("only the parent");
    aurae_tests::assert_refused(&err, tonic::Code::PermissionDenied, "parent");
    // Routed through the parent, it would carry the parent's identity: not
    // routed.
    let route = aer::client::InstanceRoute::new(Some("web")).expect("route");
    let err = MetadataClient::with_interceptor(d.channel().await.expect("ch"), route)
        .assume(assume("evil"))
        .await
        .expect_err("not routed");
    aurae_tests::assert_refused(&err, tonic::Code::PermissionDenied, "not routed");

    // With the parent's own SVID, straight to the instance: a claimed
    // instance takes no second identity, and one that was not started
    // ahead takes none.
    let parent_tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&admin.auth.ca_crt)))
        .identity(Identity::from_pem(
            read(&d.dir.join("pki/server.crt")),
            read(&d.dir.join("pki/server.key")),
        ))
        .domain_name("localhost");
    let as_parent = |address: String| {
        let tls = parent_tls.clone();
        async move {
            let ch = Endpoint::from_shared(format!("https://{address}"))
                .expect("endpoint")
                .tls_config(tls)
                .expect("tls")
                .connect()
                .await
                .expect("the instance, as its parent");
            MetadataClient::new(ch)
        }
    };
    let err = as_parent(instance.address.clone())
        .await
        .assume(assume("web"))
        .await
        .expect_err("a second identity");
    aurae_tests::assert_refused(&err, tonic::Code::FailedPrecondition, "already");
    let plain = c
        .spawn(pb::SpawnRequest {
            name: "plain".into(),
            backend: pb::SpawnBackend::Cell as i32,
            initramfs: image.join("initramfs.cpio.zst").display().to_string(),
            ready_timeout_ms: Some(30_000),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("spawn plain: {}", e.message()))
        .into_inner();
    let plain = plain.instance.expect("plain's status");
    assert!(!plain.backend_reason.contains("pre-started"), "{plain:?}");
    let err = as_parent(plain.address.clone())
        .await
        .assume(assume("plain"))
        .await
        .expect_err("not started ahead");
    aurae_tests::assert_refused(&err, tonic::Code::FailedPrecondition, "not started ahead");

    // The pool is refilled; the next pod takes the new one and is itself.
    pre_started(&d, 2).await;
    c.run_pod(pod("api", vec![container("server", &img, SERVER)], vec![]))
        .await
        .unwrap_or_else(|e| panic!("run_pod api: {}", e.message()));
    let own = json(&d.aer_ok(&["-o", "json", "--instance", "api", "metadata"]));
    assert_eq!(own["name"], "api");
    for name in ["web", "api", "plain"] {
        c.free(pb::FreeRequest { id: name.into() })
            .await
            .unwrap_or_else(|e| panic!("free {name}: {}", e.message()));
    }
    // Stopping auraed removes the pre-started instances with the rest.
    pre_started(&d, 3).await;
    let cgroups = d.cgroup_dir().expect("cgroup root");
    d.stop();
    let left: Vec<_> = std::fs::read_dir(&cgroups)
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name())
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "cgroups left: {left:?}");
    assert!(veths(&d).is_empty(), "{:?}", veths(&d));
}
