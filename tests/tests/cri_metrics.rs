//! The CRI's metrics (`ListMetricDescriptors`, `ListPodSandboxMetrics`,
//! `StreamPodSandboxMetrics`) of a running pod and its container: every
//! metric described, with a value for each of its labels; the labels name
//! the container, its id, image, pod and namespace; the values are what
//! the container's stats and status say; a removed pod has none.

use std::collections::BTreeMap;

use aurae_proto::cri;
use aurae_tests::cri::{cri_client, write_json, BusyboxCase, BUSYBOX};
use futures::StreamExt;

/// `name`'s value among `metrics`.
fn value(metrics: &[cri::Metric], name: &str) -> Option<u64> {
    metrics
        .iter()
        .find(|m| m.name == name)
        .and_then(|m| m.value.as_ref())
        .map(|v| v.value)
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_and_container_metrics_are_their_cgroups_and_status() {
    let Some(mut case) =
        BusyboxCase::start("pod_and_container_metrics_are_their_cgroups_and_status").await
    else {
        return;
    };
    let (work, crictl) = (case.work.path().to_path_buf(), &case.crictl);
    let pod = case.pod("measured", "metrics", "u-m");
    let container = write_json(
        work.as_path(),
        "container.json",
        serde_json::json!({
            "metadata": {"name": "burner"},
            "image": {"image": BUSYBOX},
            // More than a second of CPU, then one process asleep.
            "command": ["/bin/sh", "-c",
                "end=$(($(date +%s) + 3)); while [ $(date +%s) -lt $end ]; do :; done; echo burnt; exec sleep 60"],
            "log_path": "burner.log",
        }),
    );
    let pod_id = crictl.ok(&["runp", "--runtime", "aurae-cell", &pod]);
    let id = crictl.ok(&["create", &pod_id, &container, &pod]);
    crictl.ok(&["start", &id]);
    let log = work.as_path().join("logs/burner.log");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !std::fs::read_to_string(&log).is_ok_and(|t| t.contains("burnt")) {
        assert!(
            std::time::Instant::now() < deadline,
            "the container never burnt its CPU"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    let mut cri_api = cri_client(&crictl.socket).await;
    let descriptors = cri_api
        .list_metric_descriptors(cri::ListMetricDescriptorsRequest {})
        .await
        .expect("ListMetricDescriptors")
        .into_inner()
        .descriptors;
    let keys: BTreeMap<String, usize> = descriptors
        .iter()
        .map(|d| (d.name.clone(), d.label_keys.len()))
        .collect();
    assert_eq!(keys.len(), descriptors.len(), "a metric described twice");
    let pods = cri_api
        .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
        .await
        .expect("ListPodSandboxMetrics")
        .into_inner()
        .pod_metrics;
    assert_eq!(pods.len(), 1, "{pods:?}");
    let p = &pods[0];
    assert_eq!(p.pod_sandbox_id, pod_id);
    let all = p
        .metrics
        .iter()
        .chain(p.container_metrics.iter().flat_map(|c| &c.metrics));
    for m in all {
        assert_eq!(
            keys.get(&m.name),
            Some(&m.label_values.len()),
            "{} is described, with a value per label",
            m.name
        );
    }
    // The pod's own: its cgroup (container label empty), since its creation.
    let status = cri_api
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.clone(),
            verbose: false,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner()
        .status
        .expect("a status");
    assert_eq!(
        value(&p.metrics, "container_start_time_seconds"),
        Some((status.created_at / 1_000_000_000) as u64)
    );
    let pod_cpu = value(&p.metrics, "container_cpu_usage_seconds_total").expect("the pod's CPU");
    assert!(p
        .metrics
        .iter()
        .all(|m| m.label_values == ["", pod_id.as_str(), "", "metrics", "measured"]));

    // The container's: its labels, its start, its CPU time as its stats say.
    assert_eq!(p.container_metrics.len(), 1);
    let c = &p.container_metrics[0];
    assert_eq!(c.container_id, id);
    assert!(c
        .metrics
        .iter()
        .all(|m| m.label_values == ["burner", id.as_str(), BUSYBOX, "metrics", "measured"]));
    let started = cri_api
        .container_status(cri::ContainerStatusRequest {
            container_id: id.clone(),
            verbose: false,
        })
        .await
        .expect("ContainerStatus")
        .into_inner()
        .status
        .expect("a status")
        .started_at;
    assert!(started > 0);
    assert_eq!(
        value(&c.metrics, "container_start_time_seconds"),
        Some((started / 1_000_000_000) as u64)
    );
    let stats = cri_api
        .container_stats(cri::ContainerStatsRequest {
            container_id: id.clone(),
        })
        .await
        .expect("ContainerStats")
        .into_inner()
        .stats
        .expect("stats");
    let cpu_ns = stats
        .cpu
        .and_then(|c| c.usage_core_nano_seconds)
        .expect("CPU time")
        .value;
    // Asleep now: the same cgroup file, read twice; the pod's holds it.
    let cpu = value(&c.metrics, "container_cpu_usage_seconds_total");
    assert_eq!(cpu, Some(cpu_ns / 1_000_000_000));
    assert!(cpu >= Some(1), "{cpu:?} s after burning CPU for up to 3 s");
    assert!(
        pod_cpu >= cpu.unwrap_or(0),
        "the pod's {pod_cpu} s holds its container's"
    );
    // One process (where the pids controller is).
    if let Some(tasks) = value(&c.metrics, "container_threads") {
        assert_eq!(tasks, 1);
    }
    let working_set = stats
        .memory
        .and_then(|m| m.working_set_bytes)
        .map(|v| v.value);
    assert_eq!(
        value(&c.metrics, "container_memory_working_set_bytes").is_some(),
        working_set.is_some(),
        "memory metrics where the memory controller is"
    );

    // The stream: the same pods.
    let mut streamed = Vec::new();
    let mut s = cri_api
        .stream_pod_sandbox_metrics(cri::StreamPodSandboxMetricsRequest {})
        .await
        .expect("StreamPodSandboxMetrics")
        .into_inner();
    while let Some(page) = s.next().await {
        streamed.extend(page.expect("a page").pod_sandbox_metrics);
    }
    let ids = |v: &[cri::PodSandboxMetrics]| -> Vec<String> {
        v.iter().map(|p| p.pod_sandbox_id.clone()).collect()
    };
    assert_eq!(ids(&streamed), ids(&pods));
    drop(s);

    crictl.ok(&["rm", "-f", &id]);
    crictl.ok(&["stopp", &pod_id]);
    crictl.ok(&["rmp", &pod_id]);
    let pods = cri_api
        .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
        .await
        .expect("ListPodSandboxMetrics")
        .into_inner()
        .pod_metrics;
    assert!(pods.is_empty(), "{pods:?}");
    drop(cri_api);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    case.assert_nothing_left().await;
}
