//! The instance network through the API: a bridge prefix that another
//! link already holds is refused before anything is made.

use std::net::Ipv6Addr;
use std::process::Command;

use aurae_proto::runtime as pb;
use aurae_tests::instances::{daemon, spawn_req, veths};
use aurae_tests::{leaks::Snapshot, require_image, require_root, Daemon, DaemonOptions};

/// A link of the test's own (a bridge: this host has no dummy driver), removed on drop.
struct Dummy(String);

impl Dummy {
    fn with_addr(name: &str, addr: &str) -> Dummy {
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("ip");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip(&["link", "add", name, "type", "bridge"]);
        let d = Dummy(name.to_string());
        ip(&["-6", "addr", "add", addr, "dev", name, "nodad"]);
        d
    }
}

impl Drop for Dummy {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

#[tokio::test]
async fn a_bridge_prefix_held_by_another_link_is_refused_naming_it() {
    require_root!();
    let image = require_image!();
    // The prefix this daemon's bridge takes (derived from its identity and
    // the bridge's name): learned from a first spawn. A graceful stop
    // removes the bridge it made.
    let mut d = daemon(image.clone(), None).await;
    let mut c = d.client().await;
    let probe = c
        .spawn(spawn_req("probe"))
        .await
        .expect("spawn probe")
        .into_inner()
        .instance
        .expect("instance");
    let addr: Ipv6Addr = probe
        .address
        .trim_start_matches('[')
        .split(']')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("an [ipv6]:port address: {}", probe.address));
    c.free(pb::FreeRequest { id: "probe".into() })
        .await
        .expect("free");
    drop(c);
    let bridge = d.bridge();
    d.stop();
    assert!(!link_exists(&bridge), "the stop removed {bridge}");
    let dir = aurae_tests::KeptDir(d.keep_dir());
    drop(d);

    // Another link takes an address in that /64.
    let s = addr.segments();
    let squatter = Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0xbeef);
    let name = format!("clash{}", std::process::id() % 100_000);
    let dummy = Dummy::with_addr(&name, &format!("{squatter}/64"));

    let d = Daemon::start_with(DaemonOptions {
        reuse: Some(dir.0.clone()),
        image_dir: Some(image),
        ..Default::default()
    })
    .await;
    let mut c = d.client().await;
    let before = Snapshot::settled(&d);
    let err = c.spawn(spawn_req("a")).await.expect_err("a prefix clash");
    assert_eq!(
        err.code(),
        tonic::Code::FailedPrecondition,
        "{}",
        err.message()
    );
    assert!(
        err.message().starts_with("bridge address: ") && err.message().contains(&name),
        "names the field and the link holding the prefix: {}",
        err.message()
    );
    before.assert_unchanged(&d);
    assert!(!link_exists(&bridge), "no bridge was made");
    assert!(veths(&d).is_empty(), "no veth: {:?}", veths(&d));
    let list = c.list(pb::ListRequest {}).await.expect("list").into_inner();
    assert!(list.workloads.is_empty(), "{:?}", list.workloads);

    // Once the other link goes, the same request works.
    drop(dummy);
    c.spawn(spawn_req("a"))
        .await
        .unwrap_or_else(|e| panic!("spawn after the clash: {}", e.message()));
    c.free(pb::FreeRequest { id: "a".into() })
        .await
        .expect("free");
}
