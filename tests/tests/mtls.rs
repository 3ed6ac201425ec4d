//! mTLS and SPIFFE authorization on the Unix socket and TCP.

use std::path::Path;

use aer::client::{connect_unix, ClientConfig};
use aurae_proto::runtime as pb;
use aurae_proto::runtime::runtime_client::RuntimeClient;
use aurae_tests::{Daemon, DaemonOptions};
use tokio_stream::StreamExt;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

fn tls(ca: &Path, identity: Option<(&Path, &Path)>) -> ClientTlsConfig {
    let mut t = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).expect("ca")))
        .domain_name("localhost");
    if let Some((crt, key)) = identity {
        t = t.identity(Identity::from_pem(
            std::fs::read(crt).expect("crt"),
            std::fs::read(key).expect("key"),
        ));
    }
    t
}

async fn list(d: &Daemon, tls: Option<ClientTlsConfig>) -> Result<(), tonic::Status> {
    let ch = connect_unix(&d.socket, tls)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    RuntimeClient::new(ch)
        .list(pb::ListRequest {})
        .await
        .map(|_| ())
}

fn issue(d: &Daemon, ca_dir: &Path, id: &str, name: &str) {
    let out = std::process::Command::new(aurae_tests::binary("auraed"))
        .args(["pki", "issue", "--ca-dir"])
        .arg(ca_dir)
        .args(["--spiffe-id", id, "--name", name, "--out"])
        .arg(d.dir.join("pki"))
        .output()
        .expect("pki issue");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_listed_client_is_served_on_the_socket_and_tcp() {
    let d = Daemon::start_with(DaemonOptions {
        tcp: true,
        ..Default::default()
    })
    .await;
    d.client()
        .await
        .list(pb::ListRequest {})
        .await
        .expect("unix");
    let tcp = d.tcp.clone().expect("tcp");
    let mut c = d.config().runtime(Some(&tcp)).await.expect("tcp connect");
    c.list(pb::ListRequest {}).await.expect("tcp list");
}

#[tokio::test]
async fn clients_without_a_valid_certificate_are_refused() {
    let d = Daemon::start().await;
    let pki = d.dir.join("pki");
    // No client certificate at all.
    assert!(list(&d, Some(tls(&pki.join("ca.crt"), None)))
        .await
        .is_err());
    // No TLS at all.
    assert!(list(&d, None).await.is_err());
    // A certificate with the allowed SPIFFE ID, from another CA.
    let other = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(aurae_tests::binary("auraed"))
        .args(["pki", "init", "--trust-domain", "test.local", "--out"])
        .arg(other.path())
        .output()
        .expect("pki init");
    assert!(out.status.success());
    let err = list(
        &d,
        Some(tls(
            &pki.join("ca.crt"),
            Some((
                &other.path().join("client.crt"),
                &other.path().join("client.key"),
            )),
        )),
    )
    .await
    .expect_err("foreign CA");
    assert_ne!(err.code(), tonic::Code::Ok);
}

#[tokio::test]
async fn an_unlisted_spiffe_id_gets_permission_denied() {
    let d = Daemon::start_with(DaemonOptions {
        tcp: true,
        ..Default::default()
    })
    .await;
    let pki = d.dir.join("pki");
    issue(&d, &pki, "spiffe://test.local/intruder", "intruder");
    let creds = Some((pki.join("intruder.crt"), pki.join("intruder.key")));
    let creds = creds.as_ref().map(|(a, b)| (a.as_path(), b.as_path()));
    let err = list(&d, Some(tls(&pki.join("ca.crt"), creds)))
        .await
        .expect_err("unlisted");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("spiffe://test.local/intruder"),
        "{}",
        err.message()
    );
    // Same over TCP.
    let mut cfg: ClientConfig = d.config();
    cfg.auth.client_crt = pki.join("intruder.crt");
    cfg.auth.client_key = pki.join("intruder.key");
    let tcp = d.tcp.clone().expect("tcp");
    let err = cfg
        .runtime(Some(&tcp))
        .await
        .expect("connect")
        .list(pb::ListRequest {})
        .await
        .expect_err("tcp");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn health_and_reflection_let_generic_clients_discover_the_api() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let d = Daemon::start().await;
    let ch = d.channel().await.expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "aurae.runtime.v0.Runtime".into(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(
        r.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let mut refl = ServerReflectionClient::new(ch);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = refl
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("reflection")
        .into_inner();
    let msg = resp.next().await.expect("one response").expect("ok");
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("unexpected reflection response");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"aurae.runtime.v0.Runtime".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
}
