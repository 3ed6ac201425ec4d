//! Pods outlive a restart of auraed (`[cri] pod_restart = "keep"`, the
//! default), as the kubelet relies on: after a `kill -9` and after a
//! SIGTERM, the restarted auraed lists the pods and containers again, the
//! container's log goes on where it stopped (no line twice), and exec, the
//! host port and port-forward work; a hostNetwork pod keeps its address on
//! the bridge; a stopped pod is listed, not ready, until removed. Then the
//! crictl clean-up leaves nothing behind.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aurae_tests::cri::{
    daemon_options, page_through_port_forward, requirements, workloads, write_json, Crictl,
    Registry, BUSYBOX,
};
use aurae_tests::pods::{busybox_image, free_port, http_get};
use aurae_tests::{dead, report_skip, Daemon};

/// Kills whatever is left in the daemon's cgroup root when the test ends,
/// passed or failed: kept pods outlive the daemon by design.
struct KillCells(Option<PathBuf>);

impl Drop for KillCells {
    fn drop(&mut self) {
        let Some(root) = &self.0 else { return };
        for cell in std::fs::read_dir(root).into_iter().flatten().flatten() {
            let _ = std::fs::write(cell.path().join("cgroup.kill"), "1");
        }
        // Then their cgroups, deepest first, once their processes are gone.
        std::thread::sleep(std::time::Duration::from_millis(200));
        fn remove(dir: &Path) {
            for sub in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if sub.path().is_dir() {
                    remove(&sub.path());
                }
            }
            let _ = std::fs::remove_dir(dir);
        }
        for cell in std::fs::read_dir(root).into_iter().flatten().flatten() {
            if cell.path().is_dir() {
                remove(&cell.path());
            }
        }
    }
}

fn cgroups(root: &Option<PathBuf>) -> Vec<String> {
    let mut names: Vec<String> = root
        .iter()
        .flat_map(std::fs::read_dir)
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Waits until the log file holds `text`; its contents.
fn log_with(path: &Path, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if log.contains(text) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "{} holds {log:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The pid of a pod's instance (its auraed), from auraed's own status.
async fn instance_pid(d: &Daemon, pod_id: &str) -> u32 {
    d.client()
        .await
        .status(aurae_proto::runtime::StatusRequest {
            id: format!("cri-{}", &pod_id[..12]),
        })
        .await
        .expect("the pod's instance")
        .into_inner()
        .pid
}

fn say(crictl: &Crictl, id: &str, what: &str) {
    let script = format!("echo {what} > /tmp/say");
    crictl.ok(&["exec", "--sync", id, "/bin/busybox", "sh", "-c", &script]);
}

fn host_addresses(bridge: &str) -> String {
    let out = std::process::Command::new("ip")
        .args(["-6", "-o", "addr", "show", "dev", bridge])
        .output()
        .expect("ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Both pods ready and the container running, as crictl lists them.
fn listed(d: &Daemon, crictl: &Crictl, pod: &str, host_pod: &str, id: &str) {
    let pods = crictl.ok(&["pods", "-q", "--state", "ready"]);
    assert!(
        pods.contains(pod) && pods.contains(host_pod),
        "{pods:?}; auraed's log:\n{}",
        d.log_text()
    );
    let ps = crictl.ok(&["ps", "-q", "--state", "running"]);
    assert!(ps.contains(id), "{ps}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_outlive_a_restart_of_auraed_and_then_leave_nothing() {
    if let Some(why) = requirements() {
        report_skip(
            "pods_outlive_a_restart_of_auraed_and_then_leave_nothing",
            why,
        );
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start();
    registry.push(
        &busybox_image(work.path()),
        "e2e-test-images/busybox:1.29-2",
    );
    let (options, crictl) = daemon_options(&registry, "keep");
    let mut d = Daemon::start_with(options.clone()).await;
    let _kill = KillCells(d.cgroup_dir());
    let before = cgroups(&d.cgroup_dir());
    crictl.ok(&["pull", BUSYBOX]);

    let host_port = free_port();
    let logs = work.path().join("logs");
    let pod = write_json(
        work.path(),
        "pod.json",
        serde_json::json!({
            "metadata": {"name": "kept", "namespace": "default", "uid": "u-k", "attempt": 0},
            "log_directory": logs.display().to_string(),
            "port_mappings": [{"container_port": 8080, "host_port": host_port}],
        }),
    );
    let container = write_json(
        work.path(),
        "container.json",
        serde_json::json!({
            "metadata": {"name": "main"},
            "image": {"image": BUSYBOX},
            "command": ["/bin/busybox", "sh", "-c",
                "mkdir -p /www; echo pod-says-hi > /www/index.html; /bin/busybox httpd -p 8080 -h /www; \
                 echo first-line; \
                 while true; do if [ -f /tmp/say ]; then cat /tmp/say; rm /tmp/say; fi; \
                 /bin/busybox sleep 0.1; done"],
            "log_path": "main.log",
        }),
    );
    let host_pod = write_json(
        work.path(),
        "host-pod.json",
        serde_json::json!({
            "metadata": {"name": "host", "namespace": "default", "uid": "u-h", "attempt": 0},
            "linux": {"security_context": {"namespace_options": {"network": 2}}},
        }),
    );
    let pod_id = crictl.ok(&["runp", "--runtime", "aurae-cell", &pod]);
    let host_pod_id = crictl.ok(&["runp", "--runtime", "aurae-cell", &host_pod]);
    // A stopped pod: listed (not ready) after each restart until removed.
    let stopped = write_json(
        work.path(),
        "stopped-pod.json",
        serde_json::json!({
            "metadata": {"name": "stopped", "namespace": "default", "uid": "u-s", "attempt": 0},
        }),
    );
    let stopped_id = crictl.ok(&["runp", "--runtime", "aurae-cell", &stopped]);
    crictl.ok(&["stopp", &stopped_id]);
    let id = crictl.ok(&["create", &pod_id, &container, &pod]);
    crictl.ok(&["start", &id]);
    let log_file = logs.join("main.log");
    log_with(&log_file, "stdout F first-line");
    assert!(http_get(&format!("127.0.0.1:{host_port}")).contains("pod-says-hi"));
    let host_ip = aurae_tests::cri::pod_ip(&crictl, &host_pod_id);
    let held = format!(" {host_ip}/128 ");
    assert!(host_addresses(&d.bridge()).contains(&held));
    let pids = [
        instance_pid(&d, &pod_id).await,
        instance_pid(&d, &host_pod_id).await,
    ];

    // A crash, then a graceful stop: each time the pods run on, and the
    // restarted auraed takes them back.
    for (round, how) in ["kill -9", "SIGTERM"].into_iter().enumerate() {
        if round == 0 {
            d.crash();
        } else {
            d.stop();
        }
        for pid in pids {
            assert!(!dead(pid), "{how} of auraed ended a pod's instance ({pid})");
        }
        d = d.restart(&options).await;
        listed(&d, &crictl, &pod_id, &host_pod_id, &id);
        let not_ready = crictl.ok(&["pods", "-q", "--state", "notready"]);
        assert_eq!(not_ready, stopped_id, "after {how}");
        // Its log goes on, without a line written twice.
        let word = format!("after-restart-{round}");
        say(&crictl, &id, &word);
        let log = log_with(&log_file, &format!("stdout F {word}"));
        assert_eq!(log.matches("first-line").count(), 1, "after {how}: {log}");
        assert!(crictl.ok(&["logs", &id]).contains(&word));
        // The host port is relayed again, and port-forward works.
        assert!(
            http_get(&format!("127.0.0.1:{host_port}")).contains("pod-says-hi"),
            "after {how}"
        );
        page_through_port_forward(&crictl, &pod_id, 8080);
        // The hostNetwork pod's address stayed on the bridge.
        assert!(host_addresses(&d.bridge()).contains(&held), "after {how}");
        let log_text = d.log_text();
        assert!(
            log_text.contains("took back an instance left running"),
            "{log_text}"
        );
    }

    // The crictl clean-up, then nothing is left.
    crictl.ok(&["stop", "--timeout", "2", &id]);
    crictl.ok(&["rm", &id]);
    crictl.ok(&["stopp", &pod_id]);
    crictl.ok(&["rmp", &pod_id]);
    crictl.ok(&["stopp", &host_pod_id]);
    crictl.ok(&["rmp", &host_pod_id]);
    crictl.ok(&["rmp", &stopped_id]);
    assert_eq!(crictl.ok(&["pods", "-q"]), "");
    assert_eq!(crictl.ok(&["ps", "-a", "-q"]), "");
    let left = workloads(&mut d.client().await).await;
    assert!(left.is_empty(), "{left:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|p| !dead(*p)) {
        assert!(Instant::now() < deadline, "a pod's instance still runs");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(cgroups(&d.cgroup_dir()), before, "cgroups left");
    for folder in ["state/instances", "state/cri/sandboxes"] {
        let left: Vec<_> = std::fs::read_dir(d.dir.join(folder))
            .map(|r| r.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{folder}: {left:?}");
    }
    assert!(
        !host_addresses(&d.bridge()).contains(&held),
        "{host_ip} left"
    );
    assert!(
        std::net::TcpListener::bind(("::", host_port)).is_ok(),
        "host port {host_port} still held"
    );
}
