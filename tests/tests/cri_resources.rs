//! A container's resources through the CRI: its memory limit and CPU quota
//! become its cell's `memory.max` and `cpu.max` (where this host's cgroup
//! v2 has the controllers; where it doesn't, starting or updating the
//! container fails, naming the controller and the field), and `crictl
//! update` changes a running container's; what can't be honoured is
//! refused naming the field, and nothing is left behind.

use std::path::PathBuf;

use aurae_tests::cri::{daemon_with_busybox, requirements, workloads, write_json, BUSYBOX};
use aurae_tests::leaks::Snapshot;
use aurae_tests::report_skip;

fn has(controller: &str) -> bool {
    aurae_tests::v2_controllers()
        .iter()
        .any(|c| c == controller)
}

#[tokio::test(flavor = "multi_thread")]
async fn container_limits_are_set_updated_or_refused_by_name() {
    if let Some(why) = requirements() {
        report_skip("container_limits_are_set_updated_or_refused_by_name", why);
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let (_registry, d, crictl) = daemon_with_busybox(work.path()).await;
    let mut client = d.client().await;
    let before = Snapshot::settled(&d);
    let pod = write_json(
        work.path(),
        "pod.json",
        serde_json::json!({
            "metadata": {"name": "limits", "namespace": "default", "uid": "u-l", "attempt": 0},
        }),
    );
    let container = |name: &str, resources: serde_json::Value| {
        write_json(
            work.path(),
            &format!("{name}.json"),
            serde_json::json!({
                "metadata": {"name": name},
                "image": {"image": BUSYBOX},
                "command": ["/bin/busybox", "sleep", "60"],
                "linux": {"resources": resources},
            }),
        )
    };
    let pod_id = crictl.ok(&["runp", "--runtime", "aurae-cell", &pod]);
    let instance = client
        .status(aurae_proto::runtime::StatusRequest {
            id: format!("cri-{}", &pod_id[..12]),
        })
        .await
        .expect("the pod's instance")
        .into_inner();
    // A container's cell, somewhere in its pod's instance's cgroup.
    let cell_cgroup = |id: &str| -> PathBuf {
        let name = format!("c-{}", &id[..12]);
        let mut dirs = vec![PathBuf::from(&instance.cgroup)];
        while let Some(dir) = dirs.pop() {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    if e.file_name().to_string_lossy() == name {
                        return e.path();
                    }
                    dirs.push(e.path());
                }
            }
        }
        panic!("no cgroup {name} under {}", instance.cgroup)
    };

    // Swap beyond the memory limit can't be honoured: refused at create.
    let swap = container(
        "swap",
        serde_json::json!({"memory_limit_in_bytes": 67108864, "memory_swap_limit_in_bytes": 134217728}),
    );
    let e = crictl.refused(&["create", &pod_id, &swap, &pod]);
    assert!(
        e.contains("config.linux.resources.memory_swap_limit_in_bytes"),
        "{e}"
    );

    // A memory limit: the cell's memory.max, or a loud refusal naming the
    // controller where this host has none.
    let limited = container(
        "limited",
        serde_json::json!({"memory_limit_in_bytes": 67108864, "memory_swap_limit_in_bytes": 67108864}),
    );
    let id = crictl.ok(&["create", &pod_id, &limited, &pod]);
    let started = crictl.run(&["start", &id]);
    if has("memory") {
        assert!(started.status.success(), "{started:?}");
        let max = std::fs::read_to_string(cell_cgroup(&id).join("memory.max")).expect("memory.max");
        assert_eq!(max.trim(), "67108864");
    } else {
        let e = String::from_utf8_lossy(&started.stderr);
        assert!(
            e.contains("'memory' controller") && e.contains("limits.memory_max_bytes"),
            "{e}"
        );
    }
    crictl.ok(&["rm", "-f", &id]);

    // A running container without limits, then updated.
    let free = container("free", serde_json::json!({}));
    let id = crictl.ok(&["create", &pod_id, &free, &pod]);
    // Not running yet: its limits come from its config as it starts.
    let e = crictl.refused(&["update", "--cpu-quota", "50000", &id]);
    assert!(e.contains("is not running"), "{e}");
    crictl.ok(&["start", &id]);
    let updated = crictl.run(&[
        "update",
        "--cpu-quota",
        "50000",
        "--cpu-period",
        "100000",
        &id,
    ]);
    if has("cpu") {
        assert!(updated.status.success(), "{updated:?}");
        let max = std::fs::read_to_string(cell_cgroup(&id).join("cpu.max")).expect("cpu.max");
        assert_eq!(max.trim(), "50000 100000");
    } else {
        let e = String::from_utf8_lossy(&updated.stderr);
        assert!(
            e.contains("'cpu' controller") && e.contains("limits.cpu_quota_us"),
            "{e}"
        );
    }
    let e = crictl.refused(&["update", "--memory", "10", &id]);
    assert!(e.contains("linux.memory_limit_in_bytes"), "{e}");
    let e = crictl.refused(&["update", "--cpu-quota", "50000", "no-such-container"]);
    assert!(e.contains("container_id"), "{e}");

    crictl.ok(&["rm", "-f", &id]);
    crictl.ok(&["stopp", &pod_id]);
    crictl.ok(&["rmp", &pod_id]);
    let left = workloads(&mut client).await;
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(Snapshot::settled(&d), before);
}
