//! RunPod on the development machine (the cell backend): two containers of
//! one pod talking over localhost, a pod port reached from the host
//! (through auraed's relay and at the instance's address), logs, wait,
//! stop and free through `<pod>/<container>`, and refusals that leave
//! nothing behind.

use std::path::{Path, PathBuf};

use aurae_proto::runtime as pb;
use aurae_tests::instances::{daemon, veths, TestBridge};
use aurae_tests::pods::{busybox_image, container, free_port, http_get, pod, CLIENT, PAGE, SERVER};
use aurae_tests::{leaks::Snapshot, require_image, require_root, Daemon};

#[tokio::test]
async fn two_containers_share_localhost_and_a_host_port_reaches_the_pod() {
    require_root!();
    let image = require_image!();
    let d = daemon(image, None).await;
    let img = busybox_image(&d.dir);
    let mut c = d.client().await;
    let before = Snapshot::settled(&d);
    let host_port = free_port();
    let r = c
        .run_pod(pod(
            "web",
            vec![
                container("server", &img, SERVER),
                container("client", &img, CLIENT),
            ],
            vec![pb::PodPort {
                container_port: 8080,
                host_port: Some(host_port.into()),
            }],
        ))
        .await
        .unwrap_or_else(|e| panic!("run_pod: {}\n{}", e.message(), d.log_text()))
        .into_inner();
    let status = r.pod.expect("pod status");
    let names: Vec<&str> = status.containers.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(names, ["server", "client"]);
    let address = status.instance.expect("instance").address;

    // The client reached the server over the pod's localhost.
    aurae_tests::pods::client_got_the_page(&mut c).await;

    // The host reaches the pod: through the relay, over IPv4 and IPv6, and
    // at the instance's own address.
    http_get(&format!("127.0.0.1:{host_port}"));
    http_get(&format!("[::1]:{host_port}"));
    let pod_addr = address.replace(":8443", ":8080");
    http_get(&pod_addr);

    // The pod, as Status, aer and List show it.
    let s = c
        .status(pb::StatusRequest { id: "web".into() })
        .await
        .expect("status web")
        .into_inner();
    assert_eq!(s.kind, pb::WorkloadKind::Pod as i32);
    assert_eq!(s.pod.as_ref().map(|p| p.containers.len()), Some(2));
    let ls = d.aer_ok(&["pod", "ls"]);
    assert!(ls.contains("web/server running"), "{ls}");
    assert!(ls.contains(&format!("{host_port}->8080")), "{ls}");
    let logs = d.aer_ok(&["logs", "web/client"]);
    assert!(logs.contains(PAGE), "{logs}");

    // Stop one container through the pod; then free the pod.
    let stopped = c
        .stop(pb::StopRequest {
            id: "web/server".into(),
            grace_period_ms: Some(2_000),
            ..Default::default()
        })
        .await
        .expect("stop web/server")
        .into_inner();
    assert_eq!(
        stopped.status.map(|s| s.state),
        Some(pb::WorkloadState::Stopped as i32)
    );
    let err = c
        .status(pb::StatusRequest {
            id: "web/nope".into(),
        })
        .await
        .expect_err("no such container");
    assert_eq!(err.code(), tonic::Code::NotFound, "{}", err.message());
    c.free(pb::FreeRequest { id: "web".into() })
        .await
        .expect("free web");
    assert!(
        std::net::TcpListener::bind(("::", host_port)).is_ok(),
        "the host port is free again"
    );
    before.assert_unchanged(&d);
    assert!(veths(&d).is_empty(), "{:?}", veths(&d));
}

#[tokio::test]
async fn aer_runs_a_pod_and_reads_its_logs() {
    require_root!();
    let image = require_image!();
    let d = daemon(image, None).await;
    let img = busybox_image(&d.dir);
    let out = d.aer_ok(&[
        "pod",
        "run",
        "--name",
        "hello",
        "--backend",
        "cell",
        "--image",
        &img.display().to_string(),
        "--port",
        "8080",
        "--",
        "/bin/busybox",
        "echo",
        "hello from a pod",
    ]);
    assert!(out.contains("hello/main"), "{out}");
    d.aer_ok(&["wait", "--timeout", "20s", "hello/main"]);
    let logs = d.aer_ok(&["logs", "hello/main"]);
    assert!(logs.contains("hello from a pod"), "{logs}");
    d.aer_ok(&["free", "hello"]);
}

#[tokio::test]
async fn a_taken_host_port_is_refused_naming_it_and_leaves_nothing() {
    require_root!();
    let image = require_image!();
    let d = daemon(image, None).await;
    let img = busybox_image(&d.dir);
    let mut c = d.client().await;
    let before = Snapshot::settled(&d);
    let taken = std::net::TcpListener::bind("[::]:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let err = c
        .run_pod(pod(
            "web",
            vec![container("main", &img, "sleep 30")],
            vec![pb::PodPort {
                container_port: 80,
                host_port: Some(port.into()),
            }],
        ))
        .await
        .expect_err("a taken port");
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{}", err.message());
    assert!(
        err.message()
            .starts_with(&format!("ports[0].host_port: port {port} ")),
        "{}",
        err.message()
    );
    before.assert_unchanged(&d);
    assert!(veths(&d).is_empty(), "{:?}", veths(&d));
}

#[tokio::test]
async fn a_container_its_instance_refuses_frees_the_pod() {
    require_root!();
    let image = require_image!();
    let d = daemon(image, None).await;
    let img = busybox_image(&d.dir);
    let not_an_image = d.dir.join("not-an-image.tar");
    std::fs::write(&not_an_image, b"this is not a tar archive").expect("write");
    let mut c = d.client().await;
    let before = Snapshot::settled(&d);
    let host_port = free_port();
    let ports = vec![pb::PodPort {
        container_port: 80,
        host_port: Some(host_port.into()),
    }];
    // A broken image is refused by this auraed as it unpacks it, before
    // the instance starts.
    let err = c
        .run_pod(pod(
            "web",
            vec![
                container("good", &img, "sleep 30"),
                container("bad", &not_an_image, "true"),
            ],
            ports.clone(),
        ))
        .await
        .expect_err("a broken image");
    assert!(
        err.message().starts_with("containers[1].image: "),
        "{:?}: {}",
        err.code(),
        err.message()
    );
    assert_eq!(
        err.code(),
        tonic::Code::InvalidArgument,
        "{}",
        err.message()
    );
    // A command the image doesn't have is refused by the instance, after
    // the first container started there: the pod is freed.
    let mut bad = container("bad", &img, "true");
    if let Some(e) = bad.executable.as_mut() {
        e.command = "/bin/no-such-command".into();
    }
    let err = c
        .run_pod(pod(
            "web",
            vec![container("good", &img, "sleep 30"), bad],
            ports,
        ))
        .await
        .expect_err("a missing command");
    assert!(
        err.message()
            .starts_with("containers[1] (bad): the pod's instance refused it: executable.command"),
        "{:?}: {}",
        err.code(),
        err.message()
    );
    assert_eq!(err.code(), tonic::Code::NotFound, "{}", err.message());
    before.assert_unchanged(&d);
    assert!(veths(&d).is_empty(), "{:?}", veths(&d));
    let list = c.list(pb::ListRequest {}).await.expect("list").into_inner();
    assert!(list.workloads.is_empty(), "{:?}", list.workloads);
    assert!(
        std::net::TcpListener::bind(("::", host_port)).is_ok(),
        "the host port was let go"
    );
}

#[tokio::test]
async fn a_pod_gets_a_network_device_on_a_host_bridge() {
    require_root!();
    let image = require_image!();
    let d = daemon(image, None).await;
    let img = busybox_image(&d.dir);
    let bridge = TestBridge::new("pb");
    let mut c = d.client().await;
    let before = Snapshot::settled(&d);
    let r = c
        .run_pod(pb::RunPodRequest {
            networks: vec![pb::PodNetwork {
                bridge: bridge.0.clone(),
            }],
            ..pod(
                "lan",
                // /proc/net/dev lists the devices of the reader's namespace.
                vec![container("main", &img, "cat /proc/net/dev")],
                vec![],
            )
        })
        .await
        .unwrap_or_else(|e| panic!("run_pod: {}\n{}", e.message(), d.log_text()))
        .into_inner();
    let instance = r.pod.and_then(|p| p.instance).expect("instance status");
    let [net] = instance.networks.as_slice() else {
        panic!("{:?}", instance.networks)
    };
    assert_eq!(
        (net.name.as_str(), net.bridge.as_str()),
        ("eth1", bridge.0.as_str())
    );
    assert_eq!(
        bridge.ports(),
        vec![net.host_link.clone()],
        "its host end is on the bridge"
    );
    d.aer_ok(&["wait", "--timeout", "20s", "lan/main"]);
    let devices = d.aer_ok(&["logs", "lan/main"]);
    assert!(devices.contains("eth1:"), "{devices}");
    assert!(devices.contains("eth0:"), "{devices}");
    let shown = d.aer_ok(&["-o", "json", "status", "lan"]);
    assert!(shown.contains(&net.host_link), "{shown}");
    c.free(pb::FreeRequest { id: "lan".into() })
        .await
        .expect("free");
    assert!(bridge.ports().is_empty(), "{:?}", bridge.ports());
    before.assert_unchanged(&d);
}

#[tokio::test]
async fn bad_pod_requests_name_the_field() {
    let image = aurae_tests::instances::image().unwrap_or_else(|| PathBuf::from("/nonexistent"));
    let d: Daemon = daemon(image, None).await;
    let img = busybox_image(&d.dir);
    let mut c = d.client().await;
    c.list(pb::ListRequest {}).await.expect("list");
    let before = Snapshot::settled(&d);
    let ok = || container("main", &img, "true");
    let on = |bridges: &[&str]| pb::RunPodRequest {
        networks: bridges
            .iter()
            .map(|b| pb::PodNetwork {
                bridge: b.to_string(),
            })
            .collect(),
        ..pod("p", vec![ok()], vec![])
    };
    let port = |inside: u32, host: Option<u32>| pb::PodPort {
        container_port: inside,
        host_port: host,
    };
    let cases: Vec<(&str, pb::RunPodRequest)> = vec![
        ("name", pod("Bad/Name", vec![ok()], vec![])),
        ("containers", pod("p", vec![], vec![])),
        (
            "containers[0].name",
            pod("p", vec![container("Main", &img, "true")], vec![]),
        ),
        ("containers[1].name", pod("p", vec![ok(), ok()], vec![])),
        (
            "containers[0].image",
            pod(
                "p",
                vec![container("main", Path::new("/no/such/image"), "true")],
                vec![],
            ),
        ),
        (
            "containers[0].image",
            pod(
                "p",
                vec![container("main", Path::new("relative.tar"), "true")],
                vec![],
            ),
        ),
        (
            "containers[0].image",
            pod(
                "p",
                vec![container("main", Path::new("/dev/null"), "true")],
                vec![],
            ),
        ),
        (
            "containers[0].limits.memory_max_bytes",
            pod(
                "p",
                vec![pb::PodContainer {
                    limits: Some(pb::CellLimits {
                        memory_max_bytes: Some(1),
                        ..Default::default()
                    }),
                    ..ok()
                }],
                vec![],
            ),
        ),
        (
            "containers[0].executable.env[0].name",
            pod(
                "p",
                vec![pb::PodContainer {
                    executable: Some(pb::Executable {
                        command: "/bin/true".into(),
                        env: vec![pb::EnvVar {
                            name: "A=B".into(),
                            value: "c".into(),
                        }],
                        ..Default::default()
                    }),
                    ..ok()
                }],
                vec![],
            ),
        ),
        (
            "ports[0].container_port",
            pod("p", vec![ok()], vec![port(0, None)]),
        ),
        (
            "ports[0].host_port",
            pod("p", vec![ok()], vec![port(80, Some(70_000))]),
        ),
        (
            "ports[1].container_port",
            pod("p", vec![ok()], vec![port(80, None), port(80, None)]),
        ),
        (
            "ports[1].host_port",
            pod(
                "p",
                vec![ok()],
                vec![port(80, Some(9000)), port(81, Some(9000))],
            ),
        ),
        (
            "memory_mib",
            pb::RunPodRequest {
                memory_mib: u64::MAX,
                ..pod("p", vec![ok()], vec![])
            },
        ),
        ("networks[0].bridge", on(&["no/such"])),
        ("networks[0].bridge", on(&["aurnosuchbr0"])),
        ("networks[0].bridge", on(&["lo"])),
        ("networks[0].bridge", on(&[&d.bridge()])),
        ("networks[1].bridge", on(&["lo", "lo"])),
        ("networks", on(&["a", "b", "c", "d", "e"])),
    ];
    for (field, req) in cases {
        let err = c.run_pod(req).await.expect_err(field);
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{field}: {}",
            err.message()
        );
        assert!(
            err.message().starts_with(&format!("{field}: ")),
            "{field}: {}",
            err.message()
        );
    }
    before.assert_unchanged(&d);
}
