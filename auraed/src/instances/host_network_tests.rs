//! An auraed in its parent's network namespace (a hostNetwork pod's) makes
//! nothing there: no bridge, so no instances or VMs of its own.

use std::path::{Path, PathBuf};

use super::{Instances, InstancesConfig};

fn config(dir: &Path, bridge: &str, in_host_network: bool) -> InstancesConfig {
    let p = |name: &str| -> PathBuf { dir.join(name) };
    InstancesConfig {
        image_dir: p("image"),
        signing_key: p("ca.key"),
        signing_chain: p("ca.crt"),
        trust_bundle: p("ca.crt"),
        own_cert: p("server.crt"),
        own_key: p("server.key"),
        admins: Vec::new(),
        bridge: bridge.into(),
        port: 8443,
        cache_dir: p("cache"),
        instances_dir: p("instances"),
        vmm: p("aurae-vmm"),
        vms_dir: p("vms"),
        kept_dir: p("instances"),
        vm_restart: Default::default(),
        fail_at: None,
        path: "a".into(),
        pool: 0,
        in_host_network,
    }
}

#[tokio::test]
async fn it_makes_no_bridge_and_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bridge = "aurhn-test0";
    let i = Instances::new(config(dir.path(), bridge, true), "spiffe://td/a".into());
    let e = i.ensure_bridge().await.expect_err("refused");
    assert!(e.to_string().contains("parent's network namespace"), "{e}");
    assert!(!Path::new("/sys/class/net").join(bridge).exists());
    // What it would take for left behind is its parent's: it looks at
    // nothing (and so fails at nothing) either.
    i.remove_left_behind().await;
}
