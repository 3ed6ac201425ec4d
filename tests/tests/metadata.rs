//! The instance metadata service on the development machine (cell-backed
//! instances): each instance reads its own record through its parent's
//! bridge endpoint, with the SVID its parent issued; admins set it; an
//! instance can't read another's record, nor use the parent's API; bad
//! metadata is refused by name and leaves nothing.

use std::collections::HashMap;
use std::path::PathBuf;

use aurae_proto::metadata as md;
use aurae_proto::metadata::metadata_client::MetadataClient;
use aurae_proto::runtime as pb;
use aurae_tests::instances::{daemon, imds_from, spawn_req};
use aurae_tests::{leaks::Snapshot, require_image, require_root};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// A file of instance `pid`'s root (its cell), as the host sees it.
fn inside(pid: u32, path: &str) -> Vec<u8> {
    std::fs::read(format!("/proc/{pid}/root{path}")).expect("a file of the instance")
}

#[tokio::test]
async fn each_instance_reads_its_own_record_and_no_other() {
    require_root!();
    let image = require_image!();
    let d = daemon(image, None).await;
    let mut c = d.client().await;
    let a = c
        .spawn(pb::SpawnRequest {
            metadata: HashMap::from([
                ("role".to_string(), "db".to_string()),
                ("team/owner".to_string(), "ops".to_string()),
            ]),
            ..spawn_req("a")
        })
        .await
        .unwrap_or_else(|e| panic!("spawn a: {}", e.message()))
        .into_inner();
    let route = aer::client::InstanceRoute::new(Some("a")).expect("route");
    pb::runtime_client::RuntimeClient::with_interceptor(d.channel().await.expect("ch"), route)
        .spawn(pb::SpawnRequest {
            metadata: HashMap::from([("k".to_string(), "v".to_string())]),
            ..spawn_req("b")
        })
        .await
        .unwrap_or_else(|e| panic!("spawn a/b: {}", e.message()));

    // a's record, as a reads it from the host.
    let ra = json(&d.aer_ok(&["-o", "json", "--instance", "a", "metadata"]));
    assert_eq!(ra["name"], "a");
    assert_eq!(ra["path"], "a");
    assert_eq!(ra["spiffe_id"], "spiffe://test.local/auraed/a");
    assert_eq!(ra["backend"], "cell");
    assert_eq!(ra["address"], a.address.as_str());
    assert_eq!(ra["metadata"]["role"], "db");
    assert_eq!(ra["metadata"]["team/owner"], "ops");
    let parent = ra["parent_address"].as_str().expect("parent").to_string();
    assert!(
        parent.starts_with("[fd") && parent.ends_with(":8444"),
        "{parent}"
    );
    // b's, as b reads it from a.
    let rb = json(&d.aer_ok(&["-o", "json", "--instance", "a/b", "metadata"]));
    assert_eq!(rb["path"], "a/b");
    assert_eq!(rb["spiffe_id"], "spiffe://test.local/auraed/a/b");
    assert_eq!(rb["metadata"]["k"], "v");
    assert_ne!(rb["parent_address"], ra["parent_address"]);
    // The host itself was spawned by nobody.
    let out = d.aer(&["metadata"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("was not spawned"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The parent's admins change a's record.
    d.aer_ok(&["meta", "set", "a", "role=cache", "--remove", "team/owner"]);
    let ra = json(&d.aer_ok(&["-o", "json", "--instance", "a", "metadata"]));
    assert_eq!(ra["metadata"]["role"], "cache");
    assert!(ra["metadata"].get("team/owner").is_none(), "{ra}");
    // The same, spelled with the instance's path: its parent is asked.
    d.aer_ok(&["--instance", "a", "meta", "set", "tier=1"]);
    d.aer_ok(&["--instance", "a/b", "meta", "set", "tier=2"]);
    let ra = json(&d.aer_ok(&["-o", "json", "--instance", "a", "meta", "get"]));
    assert_eq!(
        (ra["name"].as_str(), ra["metadata"]["tier"].as_str()),
        (Some("a"), Some("1"))
    );
    let rb = json(&d.aer_ok(&["-o", "json", "--instance", "a/b", "metadata"]));
    assert_eq!(rb["metadata"]["tier"], "2", "{rb}");

    // With a's own SVID, taken from its cell: the bridge endpoint gives a
    // its own record and refuses everything else; the host's API refuses a.
    let pid = c
        .status(pb::StatusRequest { id: "a".into() })
        .await
        .expect("status")
        .into_inner()
        .pid;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(inside(pid, "/etc/aurae/pki/ca.crt")))
        .identity(Identity::from_pem(
            inside(pid, "/etc/aurae/pki/server.crt"),
            inside(pid, "/etc/aurae/pki/server.key"),
        ))
        .domain_name("localhost");
    let bridge = Endpoint::from_shared(format!("https://{parent}"))
        .expect("endpoint")
        .tls_config(tls.clone())
        .expect("tls")
        .connect()
        .await
        .expect("the bridge endpoint");
    let mut as_a = MetadataClient::new(bridge);
    let own = as_a.own(md::OwnRequest {}).await.expect("own").into_inner();
    assert_eq!(own.name, "a");
    for (what, err) in [
        (
            "get",
            as_a.get(md::GetRequest { id: "a".into() }).await.err(),
        ),
        (
            "set",
            as_a.set(md::SetRequest {
                id: "a".into(),
                ..Default::default()
            })
            .await
            .err(),
        ),
    ] {
        let err = err.unwrap_or_else(|| panic!("{what} on the bridge must be refused"));
        assert_eq!(
            err.code(),
            tonic::Code::PermissionDenied,
            "{what}: {}",
            err.message()
        );
    }
    let socket = d.socket.clone();
    let host_api = tonic::transport::Endpoint::from_static("https://localhost")
        .tls_config(tls)
        .expect("tls")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let s = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(s).await?,
                ))
            }
        }))
        .await
        .expect("the host's socket");
    let err = MetadataClient::new(host_api)
        .get(md::GetRequest { id: "a".into() })
        .await
        .expect_err("an instance is no admin of its parent");
    assert_eq!(
        err.code(),
        tonic::Code::PermissionDenied,
        "{}",
        err.message()
    );

    // The host's own admin identity is no instance: the bridge refuses it.
    let admin = d.config();
    let read = |p: &PathBuf| std::fs::read(p).expect("read");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&admin.auth.ca_crt)))
        .identity(Identity::from_pem(
            read(&admin.auth.client_crt),
            read(&admin.auth.client_key),
        ))
        .domain_name("localhost");
    let as_admin = Endpoint::from_shared(format!("https://{parent}"))
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("the bridge endpoint");
    let err = MetadataClient::new(as_admin)
        .own(md::OwnRequest {})
        .await
        .expect_err("not an instance");
    aurae_tests::assert_refused(&err, tonic::Code::PermissionDenied, "is not an instance");

    // Freed, a's record is gone.
    c.free(pb::FreeRequest { id: "a".into() })
        .await
        .expect("free");
    let out = d.aer(&["meta", "get", "a"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("NotFound: id: no instance named \"a\""),
        "a's record went with it: {err}"
    );
}

#[tokio::test]
async fn bad_metadata_is_refused_by_name_and_leaves_nothing() {
    require_root!();
    let image = require_image!();
    let d = daemon(image, None).await;
    let mut c = d.client().await;
    c.list(pb::ListRequest {}).await.expect("list");
    let before = Snapshot::settled(&d);
    for (field, metadata) in [
        (
            "metadata: ",
            HashMap::from([("big".to_string(), "x".repeat(70 << 10))]),
        ),
        (
            "metadata[\"a b\"]: ",
            HashMap::from([("a b".to_string(), "v".to_string())]),
        ),
    ] {
        let err = c
            .spawn(pb::SpawnRequest {
                metadata,
                ..spawn_req("a")
            })
            .await
            .expect_err(field);
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{}",
            err.message()
        );
        assert!(err.message().starts_with(field), "{}", err.message());
    }
    before.assert_unchanged(&d);
    // A set that would take the record over the limit changes nothing:
    // 40 KiB fit, 40 KiB more do not.
    c.spawn(spawn_req("a")).await.expect("spawn a");
    let half = "x".repeat(40 << 10);
    d.aer_ok(&["meta", "set", "a", &format!("first={half}")]);
    let out = d.aer(&["meta", "set", "a", &format!("second={half}")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("InvalidArgument: set: "),
        "{err}"
    );
    let r = json(&d.aer_ok(&["-o", "json", "meta", "get", "a"]));
    assert_eq!(r["metadata"]["first"], half.as_str());
    assert!(r["metadata"].get("second").is_none(), "{r}");
    c.free(pb::FreeRequest { id: "a".into() })
        .await
        .expect("free");
}

#[tokio::test]
async fn unmodified_workloads_read_their_own_record_over_http() {
    require_root!();
    let image = require_image!();
    let d = daemon(image, None).await;
    let mut c = d.client().await;
    c.spawn(pb::SpawnRequest {
        metadata: HashMap::from([("role".to_string(), "db".to_string())]),
        ..spawn_req("a")
    })
    .await
    .unwrap_or_else(|e| panic!("spawn a: {}", e.message()));
    let route = aer::client::InstanceRoute::new(Some("a")).expect("route");
    pb::runtime_client::RuntimeClient::with_interceptor(d.channel().await.expect("ch"), route)
        .spawn(pb::SpawnRequest {
            metadata: HashMap::from([("role".to_string(), "cache".to_string())]),
            ..spawn_req("b")
        })
        .await
        .unwrap_or_else(|e| panic!("spawn a/b: {}", e.message()));

    let out = imds_from(&d, "a");
    assert!(out.contains("token-length=48"), "{out}");
    assert!(out.contains("role=db\n"), "{out}");
    assert!(out.contains("path=a\n"), "{out}");
    assert!(
        aurae_tests::instances::line_has(&out, "untokened: ", "401"),
        "{out}"
    );
    assert!(
        aurae_tests::instances::line_has(&out, "forwarded: ", "403"),
        "{out}"
    );
    // The endpoint takes no port in the instance: a workload there may
    // listen on port 80 (on every address), as a pod's web server does.
    let out = aurae_tests::instances::sh_in(
        &d,
        "a",
        "/bin/busybox timeout 1 /bin/busybox nc -l -p 80 2>&1; echo listened",
    );
    assert!(!out.contains("in use") && out.contains("listened"), "{out}");
    // b, one level down, reads its own record (its parent a serves it in
    // b's namespace), not a's.
    let out = imds_from(&d, "a/b");
    assert!(out.contains("role=cache\n"), "{out}");
    assert!(out.contains("path=a/b\n"), "{out}");
    c.free(pb::FreeRequest { id: "a".into() })
        .await
        .expect("free");
}
