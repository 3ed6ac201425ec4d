//! A pod in the node's network namespace (`hostNetwork`) through the
//! upstream `crictl`: its container reaches a server the test runs on the
//! host's loopback, `crictl port-forward` reaches a web server it runs on
//! a host port, and once the pod is removed nothing is left: no process,
//! cgroup or mount of it, and not its address on auraed's bridge; the
//! address a `kill -9` of auraed left is removed when it starts again.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use aurae_tests::cri::{
    cri_config, daemon, daemon_with_busybox, page_through_port_forward, pod_ip, requirements,
    workloads, write_json, Registry, BUSYBOX as IMAGE,
};
use aurae_tests::leaks::Snapshot;
use aurae_tests::pods::{free_port, http_get, PAGE};
use aurae_tests::{report_skip, Daemon, DaemonOptions};

/// The host's IPv6 addresses, as `ip` lists them.
fn host_addresses() -> String {
    let out = std::process::Command::new("ip")
        .args(["-6", "-o", "addr", "show"])
        .output()
        .expect("ip addr");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_network_pod_shares_the_hosts_network_and_leaves_nothing() {
    if let Some(why) = requirements() {
        report_skip(
            "a_host_network_pod_shares_the_hosts_network_and_leaves_nothing",
            why,
        );
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let (_registry, d, crictl) = daemon_with_busybox(work.path()).await;
    let mut client = d.client().await;
    let before = Snapshot::settled(&d);

    // A server on the host's loopback only, answering each connection once.
    let server = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let server_port = server.local_addr().expect("addr").port();
    server.set_nonblocking(true).expect("nonblocking");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let serving = std::thread::spawn(move || {
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
            match server.accept() {
                Ok((mut c, _)) => {
                    let mut buf = [0u8; 512];
                    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                    let _ = c.read(&mut buf);
                    let _ = c.write_all(b"HTTP/1.0 200 OK\r\n\r\nfrom-the-host\n");
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });

    let web_port = free_port();
    let pod = write_json(
        work.path(),
        "pod.json",
        serde_json::json!({
            "metadata": {"name": "hostnet", "namespace": "default", "uid": "u-h", "attempt": 0},
            "log_directory": work.path().join("logs").display().to_string(),
            "port_mappings": [{"container_port": web_port, "host_port": web_port}],
            "linux": {"security_context": {"namespace_options": {"network": 2}}},
        }),
    );
    let script = format!(
        "wget -qO- http://127.0.0.1:{server_port}/; mkdir -p /tmp/www && \
         echo {PAGE} > /tmp/www/index.html && exec httpd -f -p {web_port} -h /tmp/www"
    );
    let container = write_json(
        work.path(),
        "container.json",
        serde_json::json!({
            "metadata": {"name": "web"},
            "image": {"image": IMAGE},
            "command": ["/bin/busybox", "sh", "-c", script],
            "log_path": "web.log",
            "linux": {"security_context": {"namespace_options": {"network": 2}}},
        }),
    );
    let pod_id = crictl.ok(&["runp", "--runtime", "aurae-cell", &pod]);
    // The pod instance's address is on auraed's bridge in the host's
    // namespace while it runs.
    let ip = pod_ip(&crictl, &pod_id);
    assert!(
        host_addresses().contains(&format!(" {ip}/128 ")),
        "{ip}: {}",
        host_addresses()
    );
    let id = crictl.ok(&["create", &pod_id, &container, &pod]);
    crictl.ok(&["start", &id]);

    // The container reached the host's loopback.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let logs = crictl.ok(&["logs", &id]);
        if logs.contains("from-the-host") {
            break;
        }
        assert!(Instant::now() < deadline, "the container's log: {logs:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Its web server is on the host's port itself.
    http_get(&format!("127.0.0.1:{web_port}"));
    // And port-forward reaches it too.
    page_through_port_forward(&crictl, &pod_id, web_port);

    crictl.ok(&["stop", "--timeout", "1", &id]);
    crictl.ok(&["rm", &id]);
    crictl.ok(&["stopp", &pod_id]);
    crictl.ok(&["rmp", &pod_id]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    serving.join().expect("server thread");
    let left = workloads(&mut client).await;
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(Snapshot::settled(&d), before);
    assert!(
        !host_addresses().contains(&format!(" {ip}/128 ")),
        "{ip} is gone"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_address_a_crash_left_is_removed_at_the_restart() {
    if let Some(why) = requirements() {
        report_skip("the_address_a_crash_left_is_removed_at_the_restart", why);
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start();
    let (mut d, crictl) = daemon(&registry).await;
    let pod = write_json(
        work.path(),
        "pod.json",
        serde_json::json!({
            "metadata": {"name": "left", "namespace": "default", "uid": "u-l", "attempt": 0},
            "linux": {"security_context": {"namespace_options": {"network": 2}}},
        }),
    );
    let pod_id = crictl.ok(&["runp", "--runtime", "aurae-cell", &pod]);
    let ip = pod_ip(&crictl, &pod_id);
    let held = format!(" {ip}/128 ");
    assert!(host_addresses().contains(&held), "{ip}");

    d.crash();
    let dir = aurae_tests::KeptDir(d.keep_dir());
    assert!(host_addresses().contains(&held), "the crash left {ip}");
    let _again = Daemon::start_with(DaemonOptions {
        reuse: Some(dir.0.clone()),
        image_dir: aurae_tests::instances::image(),
        extra_config: cri_config(&crictl.socket, &registry, "remove"),
        ..Default::default()
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while host_addresses().contains(&held) {
        assert!(Instant::now() < deadline, "{ip} is still on the bridge");
        std::thread::sleep(Duration::from_millis(100));
    }
}
