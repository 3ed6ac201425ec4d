//! auraed's CRI endpoint driven by the upstream `crictl` (`../shared/cri`):
//! an image pulled through a registry mirror from a registry this test runs
//! on loopback, a pod sandbox (a cell-backed pod instance) with a container
//! whose log is in the CRI format, `exec --sync`, stop and removal, and
//! then nothing left behind; and bad requests refused, naming the field.

use std::time::{Duration, Instant};

use aurae_tests::cri::{
    cni_dir, cri_client, cri_image_client, daemon, requirements, workloads, write_json, Registry,
};
use aurae_tests::leaks::Snapshot;
use aurae_tests::pods::busybox_image;
use aurae_tests::report_skip;

use aurae_tests::cri::BUSYBOX as IMAGE;

#[tokio::test(flavor = "multi_thread")]
async fn crictl_runs_a_pod_from_a_mirrored_registry_and_leaves_nothing() {
    if let Some(why) = requirements() {
        report_skip(
            "crictl_runs_a_pod_from_a_mirrored_registry_and_leaves_nothing",
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
    let (d, crictl) = daemon(&registry).await;

    let version = crictl.ok(&["version"]);
    assert!(version.contains("RuntimeName:  auraed"), "{version}");
    // No CNI configuration: the network condition says so (pods are on
    // auraed's own bridge).
    let info = crictl.ok(&["info"]);
    assert!(info.contains("NoCniConfig"), "{info}");

    // The image, through the mirror.
    crictl.ok(&["pull", IMAGE]);
    let images = crictl.ok(&["images"]);
    assert!(
        images.contains("registry.k8s.io/e2e-test-images/busybox"),
        "{images}"
    );
    let inspect = crictl.ok(&["inspecti", IMAGE]);
    assert!(inspect.contains("sha256:"), "{inspect}");

    // The test's own connection to auraed, made before the snapshot.
    let mut client = d.client().await;
    workloads(&mut client).await;
    let before = Snapshot::settled(&d);
    let logs = work.path().join("logs");
    let pod = write_json(
        work.path(),
        "pod.json",
        serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u-1", "attempt": 0},
            "hostname": "web-host",
            "dns_config": {"servers": ["fd00::53"], "searches": ["pods.test"], "options": ["ndots:2"]},
            "log_directory": logs.display().to_string(),
            "linux": {"sysctls": {"kernel.shm_rmid_forced": "1", "net.ipv4.ip_unprivileged_port_start": "80"}},
        }),
    );
    // A volume: a host folder reached through a symbolic link, written from
    // the container before it logs (so the log line orders the check).
    let data = work.path().join("data");
    std::fs::create_dir(&data).expect("data");
    std::fs::write(data.join("in.txt"), "from-the-host").expect("in.txt");
    let link = work.path().join("data-link");
    std::os::unix::fs::symlink(&data, &link).expect("symlink");
    let container = write_json(
        work.path(),
        "container.json",
        serde_json::json!({
            "metadata": {"name": "main"},
            "image": {"image": IMAGE},
            "command": ["/bin/busybox", "sh", "-c",
                "cat /data/in.txt > /data/out.txt; echo hello-cri; echo to-stderr >&2; exec sleep 60"],
            "mounts": [{"container_path": "/data", "host_path": link.display().to_string()}],
            "log_path": "main.log",
            "linux": {"security_context": {"supplemental_groups": [4242]}},
        }),
    );
    let pod_id = crictl.ok(&["runp", "--runtime", "aurae-cell", &pod]);
    let pods = crictl.ok(&["pods"]);
    assert!(pods.contains("Ready") && pods.contains("web"), "{pods}");
    // GetContainerEvents, as the kubelet's evented PLEG subscribes.
    let mut events = cri_client(&crictl.socket)
        .await
        .get_container_events(aurae_proto::cri::GetEventsRequest {})
        .await
        .expect("GetContainerEvents")
        .into_inner();
    let id = crictl.ok(&["create", &pod_id, &container, &pod]);
    crictl.ok(&["start", &id]);

    // Its output, in the CRI log format, in the file the config named.
    let deadline = Instant::now() + Duration::from_secs(15);
    let log_file = logs.join("main.log");
    loop {
        let text = std::fs::read_to_string(&log_file).unwrap_or_default();
        if text.contains("stdout F hello-cri") && text.contains("stderr F to-stderr") {
            break;
        }
        assert!(Instant::now() < deadline, "the log file holds {text:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        std::fs::read_to_string(data.join("out.txt"))
            .ok()
            .as_deref(),
        Some("from-the-host"),
        "the container wrote through its volume"
    );
    streamed_lists_are_the_lists(&crictl.socket).await;
    let logged = crictl.ok(&["logs", &id]);
    assert!(logged.contains("hello-cri"), "{logged}");
    let exec = crictl.ok(&["exec", "--sync", &id, "/bin/busybox", "echo", "from-exec"]);
    assert_eq!(exec, "from-exec");
    // An exec whose client goes away is killed: nothing of it stays.
    let mut abandoned = std::process::Command::new(aurae_tests::cri::crictl_bin())
        .arg("--runtime-endpoint")
        .arg(format!("unix://{}", crictl.socket.display()))
        .args(["exec", "--sync", &id, "/bin/busybox", "sleep", "4242"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("crictl exec");
    let started = Instant::now() + Duration::from_secs(10);
    while !crictl
        .ok(&["exec", "--sync", &id, "/bin/busybox", "ps"])
        .contains("sleep 4242")
    {
        assert!(Instant::now() < started, "the abandoned exec never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    abandoned.kill().expect("kill crictl");
    abandoned.wait().expect("wait crictl");
    let gone = Instant::now() + Duration::from_secs(10);
    while crictl
        .ok(&["exec", "--sync", &id, "/bin/busybox", "ps"])
        .contains("sleep 4242")
    {
        assert!(Instant::now() < gone, "the abandoned exec still runs");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Its CPU time, from its cgroup.
    let stats = crictl.ok(&["stats", "-o", "json", &id]);
    assert!(stats.contains("usageCoreNanoSeconds"), "{stats}");
    // The pod's sysctls, in its IPC and network namespaces.
    let sysctls = crictl.ok(&[
        "exec",
        "--sync",
        &id,
        "/bin/busybox",
        "cat",
        "/proc/sys/kernel/shm_rmid_forced",
        "/proc/sys/net/ipv4/ip_unprivileged_port_start",
    ]);
    assert_eq!(sysctls, "1\n80");
    // Its supplementary group, in its own process and in an exec.
    let groups = crictl.ok(&["exec", "--sync", &id, "/bin/busybox", "id", "-G"]);
    assert!(groups.split_whitespace().any(|g| g == "4242"), "{groups}");
    // The pod's DNS configuration.
    let resolv = crictl.ok(&[
        "exec",
        "--sync",
        &id,
        "/bin/busybox",
        "cat",
        "/etc/resolv.conf",
    ]);
    assert_eq!(
        resolv,
        "nameserver fd00::53\nsearch pods.test\noptions ndots:2"
    );
    // The pod's hostname.
    let host = crictl.ok(&["exec", "--sync", &id, "/bin/busybox", "hostname"]);
    assert_eq!(host, "web-host");
    let failed = crictl.run(&["exec", "--sync", &id, "/bin/busybox", "false"]);
    assert!(!failed.status.success());

    // Stop: the container is exited at once.
    crictl.ok(&["stop", "--timeout", "2", &id]);
    let status = crictl.ok(&["inspect", "-o", "json", &id]);
    assert!(status.contains("CONTAINER_EXITED"), "{status}");
    // The container's image and volume are bound into its pod's instance
    // while it exists, and taken out when it is removed.
    let instance = client
        .status(aurae_proto::runtime::StatusRequest {
            id: format!("cri-{}", &pod_id[..12]),
        })
        .await
        .expect("the pod's instance")
        .into_inner();
    let binds = || {
        std::fs::read_to_string(format!("/proc/{}/mountinfo", instance.pid))
            .expect("the instance's mounts")
            .lines()
            .filter(|l| l.contains("/etc/aurae/volumes/") || l.contains("/etc/aurae/pods/c-"))
            .count()
    };
    assert_eq!(
        binds(),
        3,
        "the image, the volume and the pod's resolv.conf"
    );
    crictl.ok(&["rm", &id]);
    assert_eq!(binds(), 0, "unbound with the container");
    // Its events: created, started, stopped, deleted, each with its status.
    use aurae_proto::cri::ContainerEventType as E;
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let next = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .expect("an event within 10 s")
            .expect("the event stream")
            .expect("an event");
        assert_eq!(next.container_id, id);
        assert_eq!(next.containers_statuses.len(), 1);
        assert!(next.pod_sandbox_status.is_some());
        seen.push(E::try_from(next.container_event_type).expect("an event type"));
    }
    assert_eq!(
        seen,
        [
            E::ContainerCreatedEvent,
            E::ContainerStartedEvent,
            E::ContainerStoppedEvent,
            E::ContainerDeletedEvent
        ]
    );
    // (Its connection is closed before the leak check below.)
    drop(events);
    crictl.ok(&["stopp", &pod_id]);
    crictl.ok(&["rmp", &pod_id]);
    assert_eq!(crictl.ok(&["pods", "-q"]), "");
    let sandbox_files = d.dir.join("state/cri/sandboxes");
    let left: Vec<_> = std::fs::read_dir(&sandbox_files)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(crictl.ok(&["ps", "-a", "-q"]), "");
    let left = workloads(&mut client).await;
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(Snapshot::of(&d), before);

    crictl.ok(&["rmi", IMAGE]);
    assert!(!crictl.ok(&["images", "-q"]).contains("sha256"));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_cri_requests_name_the_field_and_leave_nothing() {
    if let Some(why) = requirements() {
        report_skip("bad_cri_requests_name_the_field_and_leave_nothing", why);
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start();
    let (d, crictl) = daemon(&registry).await;
    let mut client = d.client().await;
    workloads(&mut client).await;
    let before = Snapshot::settled(&d);
    let pod = write_json(
        work.path(),
        "pod.json",
        serde_json::json!({
            "metadata": {"name": "bad", "namespace": "default", "uid": "u-2", "attempt": 0},
            "log_directory": work.path().join("logs").display().to_string(),
            "linux": {},
        }),
    );
    let e = crictl.refused(&["runp", "--runtime", "no-such-handler", &pod]);
    assert!(
        e.contains("runtime_handler") && e.contains("no-such-handler"),
        "{e}"
    );
    // A CNI network whose plugin isn't there, and one that isn't JSON: the
    // pod is refused saying so, its instance is gone, and NetworkReady says
    // why.
    let net_d = cni_dir(&crictl.socket);
    std::fs::create_dir_all(&net_d).expect("net.d");
    let conf = net_d.join("10-bad.conflist");
    std::fs::write(
        &conf,
        r#"{"cniVersion":"1.0.0","name":"bad","plugins":[{"type":"no-such-plugin"}]}"#,
    )
    .expect("conflist");
    let e = crictl.refused(&["runp", "--runtime", "aurae-cell", &pod]);
    assert!(
        e.contains("no CNI plugin") && e.contains("no-such-plugin"),
        "{e}"
    );
    assert!(workloads(&mut client).await.is_empty());
    std::fs::write(&conf, "{not json").expect("conflist");
    let e = crictl.refused(&["runp", "--runtime", "aurae-cell", &pod]);
    assert!(
        e.contains("10-bad.conflist") && e.contains("not JSON"),
        "{e}"
    );
    let info = crictl.ok(&["info"]);
    assert!(info.contains("CniConfigInvalid"), "{info}");
    std::fs::remove_file(&conf).expect("rm conflist");
    // A sysctl of the whole node, not of a pod.
    let node_sysctl = write_json(
        work.path(),
        "node-sysctl.json",
        serde_json::json!({
            "metadata": {"name": "bad-sysctl", "namespace": "default", "uid": "u-3", "attempt": 0},
            "linux": {"sysctls": {"kernel.panic": "1"}},
        }),
    );
    let e = crictl.refused(&["runp", "--runtime", "aurae-cell", &node_sysctl]);
    assert!(e.contains("config.linux.sysctls[kernel.panic]"), "{e}");
    // An IPC sysctl of a pod in the node's IPC namespace would be the
    // node's: refused.
    let host_ipc_sysctl = write_json(
        work.path(),
        "host-ipc-sysctl.json",
        serde_json::json!({
            "metadata": {"name": "bad-ipc", "namespace": "default", "uid": "u-5", "attempt": 0},
            "linux": {"sysctls": {"kernel.shm_rmid_forced": "1"},
                      "security_context": {"namespace_options": {"ipc": 2}}},
        }),
    );
    let e = crictl.refused(&["runp", "--runtime", "aurae-cell", &host_ipc_sysctl]);
    assert!(
        e.contains("config.linux.sysctls[kernel.shm_rmid_forced]") && e.contains("node's own"),
        "{e}"
    );
    // So is a network sysctl of a pod in the node's network namespace.
    let host_net_sysctl = write_json(
        work.path(),
        "host-net-sysctl.json",
        serde_json::json!({
            "metadata": {"name": "bad-net", "namespace": "default", "uid": "u-6", "attempt": 0},
            "linux": {"sysctls": {"net.ipv4.ip_unprivileged_port_start": "80"},
                      "security_context": {"namespace_options": {"network": 2}}},
        }),
    );
    let e = crictl.refused(&["runp", "--runtime", "aurae-cell", &host_net_sysctl]);
    assert!(
        e.contains("config.linux.sysctls[net.ipv4.ip_unprivileged_port_start]"),
        "{e}"
    );
    // A host port on one address only: not built, refused by name.
    let one_address = write_json(
        work.path(),
        "one-address.json",
        serde_json::json!({
            "metadata": {"name": "bad-port", "namespace": "default", "uid": "u-4", "attempt": 0},
            "port_mappings": [{"container_port": 80, "host_port": 18080, "host_ip": "127.0.0.1"}],
            "linux": {},
        }),
    );
    let e = crictl.refused(&["runp", "--runtime", "aurae-cell", &one_address]);
    assert!(e.contains("config.port_mappings[0].host_ip"), "{e}");

    // An image the registry doesn't have.
    let e = crictl.refused(&["pull", "registry.k8s.io/e2e-test-images/absent:1"]);
    assert!(e.contains("NotFound") || e.contains("not found"), "{e}");
    // An image whose layer, as the registry serves it, doesn't hash to its
    // digest: refused, and the blobs the pull wrote (its config) are gone.
    registry.push(&busybox_image(work.path()), "e2e-test-images/corrupt:1");
    for data in registry.blob_files() {
        let mut bytes = std::fs::read(&data).expect("blob");
        if bytes.len() > 64 << 10 {
            bytes[..16].copy_from_slice(b"not-the-content!");
            std::fs::write(&data, bytes).expect("corrupt blob");
        }
    }
    let e = crictl.refused(&["pull", "registry.k8s.io/e2e-test-images/corrupt:1"]);
    assert!(e.contains("DataLoss") && e.contains("digest"), "{e}");
    let blobs = d.seen_by_auraed("state/cri/images/blobs/sha256");
    let left: Vec<_> = std::fs::read_dir(&blobs)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "a failed pull left blobs: {left:?}");
    let e = crictl.refused(&["pull", "Not//A:Reference::"]);
    assert!(e.contains("image.image"), "{e}");

    // A container of an image not pulled.
    let pod_id = crictl.ok(&["runp", "--runtime", "aurae-cell", &pod]);
    let container = write_json(
        work.path(),
        "container.json",
        serde_json::json!({
            "metadata": {"name": "c"},
            "image": {"image": "registry.k8s.io/e2e-test-images/absent:1"},
            "linux": {},
        }),
    );
    let e = crictl.refused(&["create", "--no-pull", &pod_id, &container, &pod]);
    assert!(e.contains("config.image.image"), "{e}");
    // Swap beyond the memory limit: not built, so refused by name, not
    // dropped.
    let limited = write_json(
        work.path(),
        "limited.json",
        serde_json::json!({
            "metadata": {"name": "m"},
            "image": {"image": "registry.k8s.io/e2e-test-images/absent:1"},
            "linux": {"resources": {"memory_limit_in_bytes": 67108864,
                "memory_swap_limit_in_bytes": 134217728, "cpu_shares": 2}},
        }),
    );
    let e = crictl.refused(&["create", "--no-pull", &pod_id, &limited, &pod]);
    assert!(
        e.contains("config.linux.resources.memory_swap_limit_in_bytes") && e.contains("not built"),
        "{e}"
    );
    // Propagation both ways: a privileged container's only.
    let shared = write_json(
        work.path(),
        "shared.json",
        serde_json::json!({
            "metadata": {"name": "p"},
            "image": {"image": "registry.k8s.io/e2e-test-images/absent:1"},
            "mounts": [{"container_path": "/data", "host_path": "/tmp", "propagation": 2}],
            "linux": {},
        }),
    );
    let e = crictl.refused(&["create", "--no-pull", &pod_id, &shared, &pod]);
    assert!(
        e.contains("config.mounts[0].propagation") && e.contains("privileged"),
        "{e}"
    );
    // A volume whose host path doesn't exist.
    let volume = write_json(
        work.path(),
        "volume.json",
        serde_json::json!({
            "metadata": {"name": "v"},
            "image": {"image": "registry.k8s.io/e2e-test-images/absent:1"},
            "mounts": [{"container_path": "/data", "host_path": "/no/such/folder"}],
            "linux": {},
        }),
    );
    let e = crictl.refused(&["create", "--no-pull", &pod_id, &volume, &pod]);
    assert!(e.contains("config.mounts[0].host_path"), "{e}");
    // A volume destination that climbs, and a log path that leaves the
    // pod's log folder.
    let climbing = write_json(
        work.path(),
        "climbing.json",
        serde_json::json!({
            "metadata": {"name": "v"},
            "image": {"image": "registry.k8s.io/e2e-test-images/absent:1"},
            "mounts": [{"container_path": "/data/../../x", "host_path": "/tmp"}],
            "linux": {},
        }),
    );
    let e = crictl.refused(&["create", "--no-pull", &pod_id, &climbing, &pod]);
    assert!(e.contains("config.mounts[0].container_path"), "{e}");
    let escaping = write_json(
        work.path(),
        "escaping.json",
        serde_json::json!({
            "metadata": {"name": "l"},
            "image": {"image": "registry.k8s.io/e2e-test-images/absent:1"},
            "log_path": "../../outside.log",
            "linux": {},
        }),
    );
    let e = crictl.refused(&["create", "--no-pull", &pod_id, &escaping, &pod]);
    assert!(e.contains("config.log_path"), "{e}");
    // Seccomp profiles: a missing file, one that isn't a profile, one
    // that isn't JSON.
    std::fs::write(work.path().join("not-json.json"), "{oops").expect("not-json");
    std::fs::write(
        work.path().join("bad-action.json"),
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_WHAT"}]}"#,
    )
    .expect("bad-action");
    for (file, says) in [
        ("/no/such/profile.json", "No such file"),
        ("not-json.json", "not a seccomp profile"),
        ("bad-action.json", "syscalls[0].action"),
    ] {
        let path = work.path().join(file);
        let config = write_json(
            work.path(),
            "seccomp.json",
            serde_json::json!({
                "metadata": {"name": "s"},
                "image": {"image": "registry.k8s.io/e2e-test-images/absent:1"},
                "linux": {"security_context": {"seccomp": {
                    "profile_type": 2, "localhost_ref": path.display().to_string()}}},
            }),
        );
        let e = crictl.refused(&["create", "--no-pull", &pod_id, &config, &pod]);
        assert!(
            e.contains("config.linux.security_context.seccomp.localhost_ref") && e.contains(says),
            "{file}: {e}"
        );
    }
    let e = crictl.refused(&["inspect", "0123456789ab"]);
    assert!(e.contains("container_id"), "{e}");
    let e = crictl.refused(&["inspectp", "0123456789ab"]);
    assert!(e.contains("pod_sandbox_id"), "{e}");
    crictl.ok(&["rmp", "-f", &pod_id]);
    let e = crictl.refused(&["update", "--memory", "100000000", "0123456789ab"]);
    assert!(e.contains("container_id"), "{e}");
    let left = workloads(&mut client).await;
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(Snapshot::of(&d), before);
}

/// The `Stream*` lists (the kubelet's `CRIListStreaming`) hold what the
/// `List*` calls answer, each item once.
async fn streamed_lists_are_the_lists(socket: &std::path::Path) {
    use aurae_proto::cri;
    use futures::StreamExt;
    async fn all<T, R>(s: tonic::Streaming<R>, items: impl Fn(R) -> Vec<T>) -> Vec<T> {
        s.map(|page| {
            let page = items(page.expect("a page"));
            assert!(!page.is_empty(), "an empty page");
            page
        })
        .concat()
        .await
    }
    let mut c = cri_client(socket).await;
    let listed = c
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await;
    let ids: Vec<String> = listed
        .expect("list")
        .into_inner()
        .items
        .into_iter()
        .map(|p| p.id)
        .collect();
    let s = c
        .stream_pod_sandboxes(cri::StreamPodSandboxesRequest::default())
        .await;
    let streamed = all(s.expect("stream").into_inner(), |r| r.pod_sandboxes).await;
    assert_eq!(streamed.into_iter().map(|p| p.id).collect::<Vec<_>>(), ids);
    let listed = c
        .list_containers(cri::ListContainersRequest::default())
        .await;
    let ids: Vec<String> = listed
        .expect("list")
        .into_inner()
        .containers
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids.len(), 1);
    let s = c
        .stream_containers(cri::StreamContainersRequest::default())
        .await;
    let streamed = all(s.expect("stream").into_inner(), |r| r.containers).await;
    assert_eq!(streamed.into_iter().map(|c| c.id).collect::<Vec<_>>(), ids);
    let s = c
        .stream_container_stats(cri::StreamContainerStatsRequest::default())
        .await;
    let stats = all(s.expect("stream").into_inner(), |r| r.container_stats).await;
    let of = |s: &cri::ContainerStats| s.attributes.as_ref().map(|a| a.id.clone());
    assert_eq!(stats.iter().filter_map(of).collect::<Vec<_>>(), ids);
    let s = c
        .stream_pod_sandbox_stats(cri::StreamPodSandboxStatsRequest::default())
        .await;
    assert_eq!(
        all(s.expect("stream").into_inner(), |r| r.pod_sandbox_stats)
            .await
            .len(),
        1
    );
    let mut images = cri_image_client(socket).await;
    let listed = images.list_images(cri::ListImagesRequest::default()).await;
    let ids: Vec<String> = listed
        .expect("list")
        .into_inner()
        .images
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert!(!ids.is_empty());
    let s = images
        .stream_images(cri::StreamImagesRequest::default())
        .await;
    let streamed = all(s.expect("stream").into_inner(), |r| r.images).await;
    assert_eq!(streamed.into_iter().map(|i| i.id).collect::<Vec<_>>(), ids);
    // Both connections close in tasks of this runtime, which the test's
    // blocking crictl calls would hold up until the leak check: let them
    // run now.
    drop((c, images));
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
}
