//! A container's ambient capabilities through the CRI: a container run as
//! a user other than root keeps those it raises (and only those); a name
//! that isn't a capability, `ALL`, or one the container doesn't keep is
//! refused at create, naming the field, and nothing is left behind.

use aurae_tests::cri::{write_json, BusyboxCase, BUSYBOX};

const FIELD: &str = "config.linux.security_context.capabilities.add_ambient_capabilities";

#[tokio::test(flavor = "multi_thread")]
async fn ambient_capabilities_reach_a_user_container_or_are_refused_by_name() {
    let Some(mut case) =
        BusyboxCase::start("ambient_capabilities_reach_a_user_container_or_are_refused_by_name")
            .await
    else {
        return;
    };
    let (work, crictl) = (case.work.path().to_path_buf(), &case.crictl);
    let pod = case.pod("caps", "default", "u-caps");
    let container = |name: &str, capabilities: serde_json::Value| {
        write_json(
            work.as_path(),
            &format!("{name}.json"),
            serde_json::json!({
                "metadata": {"name": name},
                "image": {"image": BUSYBOX},
                // Its own capability sets, in its log.
                "command": ["/bin/sh", "-c",
                    "grep -E '^Cap(Inh|Amb|Prm|Eff):' /proc/self/status; exec sleep 60"],
                "log_path": format!("{name}.log"),
                "linux": {"security_context": {
                    "run_as_user": {"value": 1000},
                    "capabilities": capabilities,
                }},
            }),
        )
    };
    let pod_id = crictl.ok(&["runp", "--runtime", "aurae-cell", &pod]);
    // The capability sets of the container's first process, as it logged
    // them.
    let sets = |id: &str| -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let out = crictl.ok(&["logs", id]);
            if out.lines().count() >= 4 {
                return out;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no capabilities logged: {out}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };

    let user = crictl.ok(&[
        "create",
        &pod_id,
        &container("user", serde_json::json!({})),
        &pod,
    ]);
    crictl.ok(&["start", &user]);
    let plain = sets(&user);
    assert!(
        ["CapInh", "CapAmb", "CapEff"]
            .iter()
            .all(|set| plain.contains(&format!("{set}:\t0000000000000000"))),
        "{plain}"
    );

    let raised = container(
        "raised",
        serde_json::json!({"add_ambient_capabilities": ["CAP_NET_BIND_SERVICE"]}),
    );
    let id = crictl.ok(&["create", &pod_id, &raised, &pod]);
    crictl.ok(&["start", &id]);
    let out = sets(&id);
    for set in ["CapInh", "CapAmb", "CapPrm", "CapEff"] {
        assert!(
            out.contains(&format!("{set}:\t0000000000000400")),
            "{set}: {out}"
        );
    }
    // And so does a process exec'd in it, as its user.
    let exec = crictl.ok(&[
        "exec",
        "--sync",
        &id,
        "/bin/busybox",
        "grep",
        "-E",
        "^(Uid|CapAmb):",
        "/proc/self/status",
    ]);
    assert!(
        exec.contains("CapAmb:\t0000000000000400") && exec.contains("Uid:\t1000"),
        "{exec}"
    );

    for (name, caps, field) in [
        (
            "nope",
            serde_json::json!({"add_ambient_capabilities": ["CAP_NOPE"]}),
            format!("{FIELD}[0]"),
        ),
        (
            "all",
            serde_json::json!({"add_ambient_capabilities": ["CHOWN", "ALL"]}),
            format!("{FIELD}[1]"),
        ),
        (
            "unkept",
            serde_json::json!({"drop_capabilities": ["ALL"], "add_ambient_capabilities": ["NET_BIND_SERVICE"]}),
            FIELD.to_string(),
        ),
    ] {
        let e = crictl.refused(&["create", &pod_id, &container(name, caps), &pod]);
        assert!(e.contains(&field), "{name}: {e}");
    }

    crictl.ok(&["rm", "-f", &id, &user]);
    crictl.ok(&["stopp", &pod_id]);
    crictl.ok(&["rmp", &pod_id]);
    case.assert_nothing_left().await;
}
