//! A container's `linux.resources`, as its cell's limits: the memory limit
//! (`memory.max`, no swap beyond it), the CPU quota and period
//! (`cpu.max`), and cpusets. Each needs its cgroup v2 controller where the
//! container's cell is made: where one is missing, starting the container
//! (or updating it) fails, naming the controller, as every limit does.
//! CPU shares and the OOM score adjustment, which every kubelet container
//! carries, only weigh a container against others and are not applied;
//! what can't be honoured yet (swap beyond the memory limit, hugepages,
//! `unified`) is refused, naming the field.

use aurae_proto::cri;
use aurae_proto::runtime as pb;
use tonic::Status;

/// The kernel's default CFS period, the kubelet's too.
const DEFAULT_PERIOD_US: u64 = 100_000;

/// What a microVM pod's guest needs beside its containers: its kernel,
/// its auraed, and the images put into its RAM-backed root.
pub(super) const GUEST_BASE_MIB: u64 = 128;

/// The size of a microVM pod's VM, from the pod's `linux.resources` (the
/// sum of its containers' limits, as the kubelet gives it) and
/// `linux.overhead`: their memory plus [`GUEST_BASE_MIB`], and their CPU
/// quota in whole vCPUs, each at most what this host has. `(0, 0)`, the
/// instance defaults, when the pod sets no limit; never below them.
pub(super) fn vm_size(config: &cri::PodSandboxConfig) -> Result<(u32, u64), Status> {
    let Some(linux) = config.linux.as_ref() else {
        return Ok((0, 0));
    };
    let parts = [linux.resources.as_ref(), linux.overhead.as_ref()];
    let memory: u64 = parts
        .iter()
        .flatten()
        .map(|r| u64::try_from(r.memory_limit_in_bytes).unwrap_or(0))
        .sum();
    let cpu: f64 = parts
        .iter()
        .flatten()
        .filter(|r| r.cpu_quota > 0)
        .map(|r| {
            let period = u64::try_from(r.cpu_period).ok().filter(|p| *p > 0);
            r.cpu_quota as f64 / period.unwrap_or(DEFAULT_PERIOD_US) as f64
        })
        .sum();
    let host_mib = crate::service::convert::host_memory_mib();
    let memory_mib = match memory {
        0 => 0,
        m => (m.div_ceil(1 << 20) + GUEST_BASE_MIB).max(crate::instances::DEFAULT_MEM_MIB),
    };
    if memory_mib > host_mib {
        return Err(Status::invalid_argument(format!(
            "config.linux.resources.memory_limit_in_bytes: {memory_mib} MiB for the pod's VM, \
             more than this host's {host_mib} MiB"
        )));
    }
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let vcpus = cpu.ceil() as u64;
    if vcpus > host_cpus as u64 {
        return Err(Status::invalid_argument(format!(
            "config.linux.resources.cpu_quota: {vcpus} vCPUs for the pod's VM, more than this \
             host's {host_cpus}"
        )));
    }
    Ok((vcpus as u32, memory_mib))
}

/// The cell limits `r` asks for (`None`: none); `field` names `r` in
/// errors (`config.linux.resources`, or `linux` of an update).
pub(super) fn limits_of(
    r: &cri::LinuxContainerResources,
    field: &str,
) -> Result<Option<pb::CellLimits>, Status> {
    let unbuilt = |name: &str, what: &str| {
        Err(Status::unimplemented(format!(
            "{field}.{name}: {what} is not built yet"
        )))
    };
    if !r.hugepage_limits.is_empty() {
        return unbuilt("hugepage_limits", "hugepage limits");
    }
    if !r.unified.is_empty() {
        return unbuilt("unified", "raw cgroup v2 settings");
    }
    let mut l = pb::CellLimits::default();
    // Kubernetes schedules by requests: a limit may exceed the node's
    // memory, which is no limit at all.
    if r.memory_limit_in_bytes > 0
        && (r.memory_limit_in_bytes as u64) < crate::service::convert::total_memory()
    {
        l.memory_max_bytes = Some(r.memory_limit_in_bytes as u64);
    }
    // The kubelet's "no swap" is a swap limit equal to the memory limit;
    // a cell with a memory limit never swaps.
    if r.memory_swap_limit_in_bytes > 0 {
        if r.memory_limit_in_bytes <= 0 {
            return Err(Status::invalid_argument(format!(
                "{field}.memory_swap_limit_in_bytes: set without memory_limit_in_bytes"
            )));
        }
        if r.memory_swap_limit_in_bytes < r.memory_limit_in_bytes {
            return Err(Status::invalid_argument(format!(
                "{field}.memory_swap_limit_in_bytes: {} is below memory_limit_in_bytes ({})",
                r.memory_swap_limit_in_bytes, r.memory_limit_in_bytes
            )));
        }
        if r.memory_swap_limit_in_bytes > r.memory_limit_in_bytes {
            return unbuilt("memory_swap_limit_in_bytes", "swap beyond the memory limit");
        }
    }
    if r.cpu_quota > 0 {
        l.cpu_quota_us = Some(r.cpu_quota as u64);
        l.cpu_period_us = Some(if r.cpu_period > 0 {
            r.cpu_period as u64
        } else {
            DEFAULT_PERIOD_US
        });
    } else if r.cpu_quota < -1 {
        return Err(Status::invalid_argument(format!(
            "{field}.cpu_quota: {} is not a quota (-1 or 0 for none)",
            r.cpu_quota
        )));
    }
    l.cpuset_cpus = r.cpuset_cpus.clone();
    l.cpuset_mems = r.cpuset_mems.clone();
    // Checked as RunCell checks them, named as the CRI names them.
    crate::service::convert::limits(&l).map_err(|e| match e {
        crate::error::ApiError::InvalidArgument { field: f, reason } => {
            let name = match f.as_str() {
                "limits.cpu_quota_us" => "cpu_quota",
                "limits.cpu_period_us" => "cpu_period",
                "limits.memory_max_bytes" => "memory_limit_in_bytes",
                "limits.cpuset_cpus" => "cpuset_cpus",
                "limits.cpuset_mems" => "cpuset_mems",
                other => other,
            };
            Status::invalid_argument(format!("{field}.{name}: {reason}"))
        }
        other => other.into(),
    })?;
    let none = pb::CellLimits::default();
    Ok((l != none).then_some(l))
}

impl super::Cri {
    /// `UpdateContainerResources`: the running container's cell gets the
    /// new limits (each one set; one left out keeps its value).
    pub(super) async fn update_resources(
        &self,
        r: cri::UpdateContainerResourcesRequest,
    ) -> Result<(), Status> {
        let c = self.state.container("container_id", &r.container_id)?;
        let Some(linux) = r.linux.as_ref() else {
            return Ok(());
        };
        let Some(limits) = limits_of(linux, "linux")? else {
            return Ok(());
        };
        if c.run().state != cri::ContainerState::ContainerRunning as i32 {
            return Err(Status::failed_precondition(format!(
                "container_id: container {} is not running (a container's limits are set \
                 as it starts, from its config)",
                c.id
            )));
        }
        let sandbox = self.state.sandbox("pod_sandbox_id", &c.sandbox_id)?;
        let instance = self.instance_of(&sandbox)?;
        let mut client = pb::runtime_client::RuntimeClient::new(instance.channel());
        client
            .update_limits(pb::UpdateLimitsRequest {
                id: c.cell.clone(),
                limits: Some(limits),
            })
            .await
            .map_err(|s| {
                Status::new(
                    s.code(),
                    format!("updating container {}: {}", c.id, s.message()),
                )
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(f: impl FnOnce(&mut cri::LinuxContainerResources)) -> cri::LinuxContainerResources {
        let mut r = cri::LinuxContainerResources::default();
        f(&mut r);
        r
    }

    #[test]
    fn the_kubelets_limits_become_the_cells() {
        let r = res(|r| {
            r.memory_limit_in_bytes = 64 << 20;
            r.memory_swap_limit_in_bytes = 64 << 20;
            r.cpu_quota = 50_000;
            r.cpu_shares = 512;
            r.oom_score_adj = 999;
        });
        let l = limits_of(&r, "config.linux.resources").unwrap().unwrap();
        assert_eq!(l.memory_max_bytes, Some(64 << 20));
        assert_eq!(
            (l.cpu_quota_us, l.cpu_period_us),
            (Some(50_000), Some(100_000))
        );
        // Shares and the OOM score alone are no limits.
        let weights = res(|r| {
            r.cpu_shares = 2;
            r.oom_score_adj = -997;
            r.cpu_quota = -1;
        });
        assert_eq!(limits_of(&weights, "linux").unwrap(), None);
    }

    #[test]
    fn what_cant_be_honoured_is_refused_naming_the_field() {
        let field = |r: cri::LinuxContainerResources| {
            let e = limits_of(&r, "linux").unwrap_err();
            (e.code(), e.message().to_string())
        };
        let (code, m) = field(res(|r| {
            r.memory_limit_in_bytes = 64 << 20;
            r.memory_swap_limit_in_bytes = 128 << 20;
        }));
        assert_eq!(code, tonic::Code::Unimplemented);
        assert!(m.starts_with("linux.memory_swap_limit_in_bytes"), "{m}");
        let (code, m) = field(res(|r| r.memory_swap_limit_in_bytes = 1 << 20));
        assert_eq!(code, tonic::Code::InvalidArgument);
        assert!(m.starts_with("linux.memory_swap_limit_in_bytes"), "{m}");
        let (code, m) = field(res(|r| r.memory_limit_in_bytes = 10));
        assert_eq!(code, tonic::Code::InvalidArgument);
        assert!(m.starts_with("linux.memory_limit_in_bytes"), "{m}");
        let (_, m) = field(res(|r| {
            r.cpu_quota = 50_000;
            r.cpu_period = 10;
        }));
        assert!(m.starts_with("linux.cpu_period"), "{m}");
        let (code, m) = field(res(|r| r.unified = [("a".into(), "b".into())].into()));
        assert_eq!(code, tonic::Code::Unimplemented);
        assert!(m.starts_with("linux.unified"), "{m}");
    }

    #[test]
    fn a_microvm_pod_is_sized_from_its_resources_and_overhead() {
        let mib = |m: i64| m << 20;
        let pod =
            |resources: Option<cri::LinuxContainerResources>, overhead| cri::PodSandboxConfig {
                linux: Some(cri::LinuxPodSandboxConfig {
                    resources,
                    overhead,
                    ..Default::default()
                }),
                ..Default::default()
            };
        assert_eq!(
            vm_size(&cri::PodSandboxConfig::default()).expect("none"),
            (0, 0)
        );
        assert_eq!(vm_size(&pod(None, None)).expect("no limits"), (0, 0));
        let r = cri::LinuxContainerResources {
            memory_limit_in_bytes: mib(256),
            cpu_quota: 100_000,
            cpu_period: 100_000,
            ..Default::default()
        };
        let o = cri::LinuxContainerResources {
            memory_limit_in_bytes: mib(64),
            ..Default::default()
        };
        assert_eq!(
            vm_size(&pod(Some(r.clone()), Some(o))).expect("sized"),
            (1, 256 + 64 + GUEST_BASE_MIB)
        );
        // Never below the instance default.
        let small = cri::LinuxContainerResources {
            memory_limit_in_bytes: mib(16),
            ..Default::default()
        };
        assert_eq!(
            vm_size(&pod(Some(small), None)).expect("small"),
            (0, crate::instances::DEFAULT_MEM_MIB)
        );
        // More than the host has: refused, naming the field.
        let huge = cri::LinuxContainerResources {
            memory_limit_in_bytes: i64::MAX,
            cpu_quota: 1_000_000_000,
            ..Default::default()
        };
        let e = vm_size(&pod(Some(huge), None)).expect_err("too big");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().starts_with("config.linux.resources."),
            "{}",
            e.message()
        );
    }
}
