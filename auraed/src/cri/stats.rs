//! Container and pod statistics, read from their cgroups on this host: a
//! container's cell is a cgroup under its pod instance's cgroup namespace
//! (where the instance reports it), a pod is its instance's cell. CPU time
//! comes from `cpu.stat` (always there in cgroup v2); memory from
//! `memory.current` and `memory.stat` when the memory controller is
//! enabled, and is left unset where it isn't (this machine's hybrid v2).

use std::path::{Path, PathBuf};

use aurae_proto::cri;
use aurae_proto::runtime as pb;
use tonic::Status;

use super::state::{matches, now_ns, Container};
use super::Cri;

fn value(v: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value: v })
}

/// `key`'s value in a flat-keyed cgroup file (`cpu.stat`, `memory.stat`).
pub(super) fn keyed(dir: &Path, file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join(file)).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The value of a single-value cgroup file (`memory.current`).
pub(super) fn single(dir: &Path, file: &str) -> Option<u64> {
    std::fs::read_to_string(dir.join(file))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

fn cpu(dir: Option<&Path>) -> cri::CpuUsage {
    cri::CpuUsage {
        timestamp: now_ns(),
        usage_core_nano_seconds: dir
            .and_then(|d| keyed(d, "cpu.stat", "usage_usec"))
            .and_then(|us| value(us.saturating_mul(1000))),
        usage_nano_cores: None,
        psi: None,
    }
}

fn memory(dir: Option<&Path>) -> cri::MemoryUsage {
    let current = dir.and_then(|d| single(d, "memory.current"));
    let inactive = dir.and_then(|d| keyed(d, "memory.stat", "inactive_file"));
    let stat = |key| dir.and_then(|d| keyed(d, "memory.stat", key));
    cri::MemoryUsage {
        timestamp: now_ns(),
        working_set_bytes: current.and_then(|c| value(c.saturating_sub(inactive.unwrap_or(0)))),
        available_bytes: None,
        usage_bytes: current.and_then(value),
        rss_bytes: stat("anon").and_then(value),
        page_faults: stat("pgfault").and_then(value),
        major_page_faults: stat("pgmajfault").and_then(value),
        psi: None,
    }
}

impl Cri {
    /// Where a started container's cgroup is on this host.
    pub(super) async fn container_cgroup(&self, c: &Container) -> Option<PathBuf> {
        if c.run().state != cri::ContainerState::ContainerRunning as i32 {
            return None;
        }
        let sandbox = self.state.sandbox("pod_sandbox_id", &c.sandbox_id).ok()?;
        let instance = self.instance_of(&sandbox).ok()?;
        let mut client = pb::runtime_client::RuntimeClient::new(instance.channel());
        let status = client
            .status(pb::StatusRequest { id: c.cell.clone() })
            .await
            .ok()?
            .into_inner();
        // The instance names it under its own /sys/fs/cgroup.
        let inside = status.cgroup.strip_prefix("/sys/fs/cgroup/")?;
        let path = instance.cgroup_ns_root().join(inside);
        (!inside.split('/').any(|p| p == ".." || p.is_empty())).then_some(path)
    }

    async fn container_stats_of(&self, c: &Container) -> cri::ContainerStats {
        let dir = self.container_cgroup(c).await;
        cri::ContainerStats {
            attributes: Some(cri::ContainerAttributes {
                id: c.id.clone(),
                metadata: c.config.metadata.clone(),
                labels: c.config.labels.clone(),
                annotations: c.config.annotations.clone(),
            }),
            cpu: Some(cpu(dir.as_deref())),
            memory: Some(memory(dir.as_deref())),
            writable_layer: None,
            swap: None,
            io: None,
        }
    }

    pub(super) async fn container_stats(&self, id: &str) -> Result<cri::ContainerStats, Status> {
        let c = self.state.container("container_id", id)?;
        Ok(self.container_stats_of(&c).await)
    }

    pub(super) async fn list_container_stats(
        &self,
        f: Option<cri::ContainerStatsFilter>,
    ) -> Vec<cri::ContainerStats> {
        let f = f.unwrap_or_default();
        let mut out = Vec::new();
        for c in self.state.all_containers() {
            if (f.id.is_empty() || c.id.starts_with(&f.id))
                && (f.pod_sandbox_id.is_empty() || c.sandbox_id.starts_with(&f.pod_sandbox_id))
                && matches(&c.config.labels, &f.label_selector)
            {
                out.push(self.container_stats_of(&c).await);
            }
        }
        out
    }

    pub(super) async fn list_pod_stats(
        &self,
        f: Option<cri::PodSandboxStatsFilter>,
    ) -> Vec<cri::PodSandboxStats> {
        let f = f.unwrap_or_default();
        let mut out = Vec::new();
        for s in self.state.all_sandboxes() {
            if !(f.id.is_empty() || s.id.starts_with(&f.id))
                || !matches(&s.config.labels, &f.label_selector)
            {
                continue;
            }
            let dir = self.instance_of(&s).ok().map(|i| i.cgroup_dir());
            let mut containers = Vec::new();
            for c in self.state.containers_of(&s.id) {
                containers.push(self.container_stats_of(&c).await);
            }
            out.push(cri::PodSandboxStats {
                attributes: Some(cri::PodSandboxAttributes {
                    id: s.id.clone(),
                    metadata: s.metadata(),
                    labels: s.config.labels.clone(),
                    annotations: s.config.annotations.clone(),
                }),
                linux: Some(cri::LinuxPodSandboxStats {
                    cpu: Some(cpu(dir.as_deref())),
                    memory: Some(memory(dir.as_deref())),
                    network: None,
                    process: None,
                    containers,
                    io: None,
                }),
                windows: None,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_files_are_read_and_missing_ones_are_unset() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("cpu.stat"),
            "usage_usec 1500\nuser_usec 1000\n",
        )
        .unwrap();
        let c = cpu(Some(dir.path()));
        assert_eq!(c.usage_core_nano_seconds.unwrap().value, 1_500_000);
        assert!(c.timestamp > 0);
        // No memory controller here: unset, not zero.
        let m = memory(Some(dir.path()));
        assert!(m.working_set_bytes.is_none() && m.usage_bytes.is_none());
        std::fs::write(dir.path().join("memory.current"), "4096\n").unwrap();
        std::fs::write(
            dir.path().join("memory.stat"),
            "anon 100\ninactive_file 1000\n",
        )
        .unwrap();
        let m = memory(Some(dir.path()));
        assert_eq!(m.working_set_bytes.unwrap().value, 3096);
        assert_eq!(m.rss_bytes.unwrap().value, 100);
    }
}
