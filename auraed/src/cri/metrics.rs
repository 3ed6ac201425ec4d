//! The CRI's metrics (`ListMetricDescriptors`, `ListPodSandboxMetrics`,
//! `StreamPodSandboxMetrics`: the kubelet's `PodAndContainerStatsFromCRI`,
//! which serves them as its `/metrics/cadvisor`): cAdvisor's names for what
//! a pod's and its containers' cgroups say, read when asked (timestamp 0).
//!
//! Read from the same cgroups as the stats (see `stats`). A value whose
//! cgroup file is missing (a controller this host's cgroup v2 lacks, a
//! container not running) is left out, never reported as zero. Counters in
//! seconds are whole seconds: a metric's value is an integer, so a rate
//! over a short window is coarse (the stats calls keep nanoseconds).

use std::path::{Path, PathBuf};

use aurae_proto::cri;

use super::state::{Container, Sandbox};
use super::stats::{keyed, single};
use super::Cri;

/// Every metric's labels, in this order (sorted, as the CRI asks): the
/// container's name (empty for the pod's own cgroup, as in cAdvisor), the
/// CRI id (the container's, or the pod sandbox's), the container's image,
/// the pod's namespace and name.
pub const LABEL_KEYS: [&str; 5] = ["container", "id", "image", "namespace", "pod"];

/// What one metric is read from.
pub struct Sample<'a> {
    /// The cgroup, if known.
    pub cgroup: Option<&'a Path>,
    /// When it started, in nanoseconds since the epoch (0: not started).
    pub started_ns: i64,
}

struct Def {
    name: &'static str,
    help: &'static str,
    kind: cri::MetricType,
    read: fn(&Sample) -> Option<u64>,
}

fn cpu_seconds(s: &Sample, key: &str) -> Option<u64> {
    keyed(s.cgroup?, "cpu.stat", key).map(|us| us / 1_000_000)
}

fn memory_stat(s: &Sample, key: &str) -> Option<u64> {
    keyed(s.cgroup?, "memory.stat", key)
}

fn memory_current(s: &Sample) -> Option<u64> {
    single(s.cgroup?, "memory.current")
}

const DEFS: &[Def] = &[
    Def {
        name: "container_cpu_usage_seconds_total",
        help: "Cumulative CPU time consumed, in whole seconds (cpu.stat usage_usec).",
        kind: cri::MetricType::Counter,
        read: |s| cpu_seconds(s, "usage_usec"),
    },
    Def {
        name: "container_cpu_user_seconds_total",
        help: "Cumulative user CPU time consumed, in whole seconds (cpu.stat user_usec).",
        kind: cri::MetricType::Counter,
        read: |s| cpu_seconds(s, "user_usec"),
    },
    Def {
        name: "container_cpu_system_seconds_total",
        help: "Cumulative system CPU time consumed, in whole seconds (cpu.stat system_usec).",
        kind: cri::MetricType::Counter,
        read: |s| cpu_seconds(s, "system_usec"),
    },
    Def {
        name: "container_memory_usage_bytes",
        help: "Current memory usage, in bytes (memory.current).",
        kind: cri::MetricType::Gauge,
        read: memory_current,
    },
    Def {
        name: "container_memory_working_set_bytes",
        help: "Current working set, in bytes (memory.current less inactive_file).",
        kind: cri::MetricType::Gauge,
        read: |s| {
            let current = memory_current(s)?;
            Some(current.saturating_sub(memory_stat(s, "inactive_file").unwrap_or(0)))
        },
    },
    Def {
        name: "container_memory_rss",
        help: "Anonymous memory, in bytes (memory.stat anon).",
        kind: cri::MetricType::Gauge,
        read: |s| memory_stat(s, "anon"),
    },
    Def {
        name: "container_memory_cache",
        help: "Page cache, in bytes (memory.stat file).",
        kind: cri::MetricType::Gauge,
        read: |s| memory_stat(s, "file"),
    },
    Def {
        name: "container_memory_mapped_file",
        help: "Mapped files, in bytes (memory.stat file_mapped).",
        kind: cri::MetricType::Gauge,
        read: |s| memory_stat(s, "file_mapped"),
    },
    Def {
        name: "container_spec_memory_limit_bytes",
        help: "Memory limit, in bytes, 0 without one (memory.max).",
        kind: cri::MetricType::Gauge,
        read: |s| {
            let text = std::fs::read_to_string(s.cgroup?.join("memory.max")).ok()?;
            match text.trim() {
                "max" => Some(0),
                v => v.parse().ok(),
            }
        },
    },
    Def {
        name: "container_oom_events_total",
        help: "Processes killed for want of memory (memory.events oom_kill).",
        kind: cri::MetricType::Counter,
        read: |s| keyed(s.cgroup?, "memory.events", "oom_kill"),
    },
    Def {
        name: "container_threads",
        help: "Tasks: processes and their threads (pids.current).",
        kind: cri::MetricType::Gauge,
        read: |s| single(s.cgroup?, "pids.current"),
    },
    Def {
        name: "container_start_time_seconds",
        help: "When it started, in whole seconds since the epoch.",
        kind: cri::MetricType::Gauge,
        read: |s| {
            u64::try_from(s.started_ns / 1_000_000_000)
                .ok()
                .filter(|s| *s > 0)
        },
    },
];

/// Every metric [`metrics`] reports.
pub fn descriptors() -> Vec<cri::MetricDescriptor> {
    DEFS.iter()
        .map(|d| cri::MetricDescriptor {
            name: d.name.to_string(),
            help: d.help.to_string(),
            label_keys: LABEL_KEYS.iter().map(|k| k.to_string()).collect(),
        })
        .collect()
}

/// The metrics of `sample` with `labels` (values of [`LABEL_KEYS`]); those
/// that can't be read are left out.
pub fn metrics(sample: &Sample, labels: &[String; 5]) -> Vec<cri::Metric> {
    DEFS.iter()
        .filter_map(|d| {
            Some(cri::Metric {
                name: d.name.to_string(),
                timestamp: 0,
                metric_type: d.kind as i32,
                label_values: labels.to_vec(),
                value: Some(cri::UInt64Value {
                    value: (d.read)(sample)?,
                }),
            })
        })
        .collect()
}

impl Cri {
    /// The metrics of every pod sandbox and its containers.
    pub(super) async fn list_pod_metrics(&self) -> Vec<cri::PodSandboxMetrics> {
        let mut out = Vec::new();
        for s in self.state.all_sandboxes() {
            out.push(self.pod_metrics(&s).await);
        }
        out
    }

    async fn pod_metrics(&self, s: &Sandbox) -> cri::PodSandboxMetrics {
        let meta = s.metadata().unwrap_or_default();
        let labels = |container: &str, id: &str, image: &str| {
            [
                container.to_string(),
                id.to_string(),
                image.to_string(),
                meta.namespace.clone(),
                meta.name.clone(),
            ]
        };
        let dir: Option<PathBuf> = self.instance_of(s).ok().map(|i| i.cgroup_dir());
        let pod = Sample {
            cgroup: dir.as_deref(),
            started_ns: s.created_at,
        };
        let mut container_metrics = Vec::new();
        for c in self.state.containers_of(&s.id) {
            let dir = self.container_cgroup(&c).await;
            let sample = Sample {
                cgroup: dir.as_deref(),
                started_ns: c.run().started_at,
            };
            container_metrics.push(cri::ContainerMetrics {
                container_id: c.id.clone(),
                metrics: metrics(&sample, &labels(&container_name(&c), &c.id, &c.image)),
            });
        }
        cri::PodSandboxMetrics {
            pod_sandbox_id: s.id.clone(),
            metrics: metrics(&pod, &labels("", &s.id, "")),
            container_metrics,
        }
    }
}

fn container_name(c: &Container) -> String {
    c.config
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_described_once_with_its_labels() {
        let names: std::collections::BTreeSet<_> =
            descriptors().into_iter().map(|d| d.name).collect();
        assert_eq!(names.len(), DEFS.len(), "a name is described twice");
        let mut sorted = LABEL_KEYS;
        sorted.sort_unstable();
        assert_eq!(sorted, LABEL_KEYS, "label keys are sorted");
    }

    #[test]
    fn values_come_from_the_cgroup_and_missing_ones_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("cpu.stat"),
            "usage_usec 2500000\nuser_usec 1999999\nsystem_usec 500001\n",
        )
        .unwrap();
        let labels = [
            "c".to_string(),
            "id".into(),
            "img".into(),
            "ns".into(),
            "p".into(),
        ];
        let sample = Sample {
            cgroup: Some(dir.path()),
            started_ns: 1_700_000_000_500_000_000,
        };
        let value = |ms: &[cri::Metric], name: &str| {
            ms.iter()
                .find(|m| m.name == name)
                .and_then(|m| m.value.as_ref())
                .map(|v| v.value)
        };
        let ms = metrics(&sample, &labels);
        assert_eq!(value(&ms, "container_cpu_usage_seconds_total"), Some(2));
        assert_eq!(value(&ms, "container_cpu_user_seconds_total"), Some(1));
        assert_eq!(
            value(&ms, "container_start_time_seconds"),
            Some(1_700_000_000)
        );
        // No memory controller: its metrics are absent, not zero.
        assert_eq!(value(&ms, "container_memory_usage_bytes"), None);
        assert!(ms
            .iter()
            .all(|m| m.label_values == labels && m.timestamp == 0));

        std::fs::write(dir.path().join("memory.current"), "10000\n").unwrap();
        std::fs::write(
            dir.path().join("memory.stat"),
            "anon 4000\nfile 6000\ninactive_file 2500\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("memory.max"), "max\n").unwrap();
        std::fs::write(
            dir.path().join("memory.events"),
            "low 0\noom 1\noom_kill 3\n",
        )
        .unwrap();
        let ms = metrics(&sample, &labels);
        assert_eq!(value(&ms, "container_memory_usage_bytes"), Some(10000));
        assert_eq!(value(&ms, "container_memory_working_set_bytes"), Some(7500));
        assert_eq!(value(&ms, "container_memory_rss"), Some(4000));
        assert_eq!(value(&ms, "container_spec_memory_limit_bytes"), Some(0));
        assert_eq!(value(&ms, "container_oom_events_total"), Some(3));
        let kinds: Vec<_> = ms
            .iter()
            .filter(|m| m.name.ends_with("_total"))
            .map(|m| m.metric_type)
            .collect();
        assert!(kinds.iter().all(|k| *k == cri::MetricType::Counter as i32));

        // Nothing at all without a cgroup or a start.
        let none = Sample {
            cgroup: None,
            started_ns: 0,
        };
        assert!(metrics(&none, &labels).is_empty());
    }
}
