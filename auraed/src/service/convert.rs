//! Validation of API messages into internal specs, and internal state into
//! API messages.

use std::path::PathBuf;
use std::time::SystemTime;

use aurae_proto::runtime as pb;

use crate::cells::{Cell, CellSpec, CellState, HostShare};
use crate::cgroup::{cpuset, Limits};
use crate::error::ApiError;
use crate::executables::Executable;
use crate::input::StdinMode;
use crate::instances::backend::{Backend, Preference};
use crate::instances::{Instance, InstanceSpec};
use crate::registry::Workload;
use crate::runtime::ExecRequest;
use crate::sys::pidfd::Exit;
use crate::validation as v;

/// Smallest memory limit accepted: below this a cell can't even start.
pub const MIN_MEMORY: u64 = 1 << 20;
pub const MAX_PIDS: u64 = 4_194_304;

pub fn exec_request(
    field: &str,
    e: &pb::Executable,
    command_required: bool,
) -> Result<ExecRequest, ApiError> {
    if command_required && e.command.is_empty() {
        return Err(ApiError::invalid(format!("{field}.command"), "is required"));
    }
    v::c_string(&format!("{field}.command"), &e.command)?;
    v::list_len(&format!("{field}.args"), e.args.len())?;
    for (i, a) in e.args.iter().enumerate() {
        v::c_string(&format!("{field}.args[{i}]"), a)?;
    }
    v::list_len(&format!("{field}.env"), e.env.len())?;
    for (i, kv) in e.env.iter().enumerate() {
        v::env_name(&format!("{field}.env[{i}].name"), &kv.name)?;
        v::c_string(&format!("{field}.env[{i}].value"), &kv.value)?;
    }
    if !e.cwd.is_empty() {
        v::absolute_path(&format!("{field}.cwd"), &e.cwd)?;
    }
    for (name, id) in [("uid", e.uid), ("gid", e.gid)] {
        if let Some(id) = id {
            if id == u32::MAX {
                return Err(ApiError::invalid(
                    format!("{field}.{name}"),
                    "4294967295 is not a valid id",
                ));
            }
        }
    }
    Ok(ExecRequest {
        command: e.command.clone(),
        args: e.args.clone(),
        env: e
            .env
            .iter()
            .map(|kv| (kv.name.clone(), kv.value.clone()))
            .collect(),
        cwd: (!e.cwd.is_empty()).then(|| e.cwd.clone()),
        uid: e.uid,
        gid: e.gid,
        groups: e.groups.clone(),
        stdin: if e.tty {
            StdinMode::Terminal
        } else if e.stdin {
            StdinMode::Pipe
        } else {
            StdinMode::Null
        },
    })
}

pub fn limits(l: &pb::CellLimits) -> Result<Limits, ApiError> {
    let mut out = Limits::default();
    match (l.cpu_quota_us, l.cpu_period_us) {
        (Some(q), p) => {
            let period = p.unwrap_or(100_000);
            v::range("limits.cpu_period_us", period, 1_000, 1_000_000)?;
            v::range("limits.cpu_quota_us", q, 1_000, 1_000_000u64 * 1024)?;
            out.cpu_max = Some((q, period));
        }
        (None, Some(_)) => {
            return Err(ApiError::invalid(
                "limits.cpu_period_us",
                "needs limits.cpu_quota_us",
            ));
        }
        (None, None) => {}
    }
    if let Some(w) = l.cpu_weight {
        v::range("limits.cpu_weight", w.into(), 1, 10_000)?;
        out.cpu_weight = Some(w);
    }
    let total = total_memory();
    if let Some(m) = l.memory_max_bytes {
        v::range("limits.memory_max_bytes", m, MIN_MEMORY, total)?;
        out.memory_max = Some(m);
    }
    if let Some(m) = l.memory_high_bytes {
        v::range("limits.memory_high_bytes", m, MIN_MEMORY, total)?;
        out.memory_high = Some(m);
    }
    if let Some(p) = l.pids_max {
        v::range("limits.pids_max", p, 1, MAX_PIDS)?;
        out.pids_max = Some(p);
    }
    let online = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    if !l.cpuset_cpus.is_empty() {
        let cpus = cpuset::parse_list(&l.cpuset_cpus).ok_or_else(|| {
            ApiError::invalid(
                "limits.cpuset_cpus",
                format!("{:?} is not a cpu list like \"0-1,3\"", l.cpuset_cpus),
            )
        })?;
        if let Some(bad) = cpus.iter().find(|c| **c >= online) {
            return Err(ApiError::invalid(
                "limits.cpuset_cpus",
                format!("cpu {bad} does not exist (this host has {online})"),
            ));
        }
        out.cpuset_cpus = Some(l.cpuset_cpus.clone());
    }
    if !l.cpuset_mems.is_empty() {
        cpuset::parse_list(&l.cpuset_mems).ok_or_else(|| {
            ApiError::invalid(
                "limits.cpuset_mems",
                format!("{:?} is not a node list like \"0\"", l.cpuset_mems),
            )
        })?;
        out.cpuset_mems = Some(l.cpuset_mems.clone());
    }
    Ok(out)
}

pub(crate) fn total_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(u64::MAX)
}

pub fn cell_spec(r: &pb::RunCellRequest) -> Result<CellSpec, ApiError> {
    v::name("name", &r.name)?;
    if r.user_namespace {
        return Err(ApiError::Unimplemented(
            "user_namespace: cells in a user namespace are not implemented yet".into(),
        ));
    }
    let share = r.share_host.as_ref().map(|s| HostShare {
        mount: s.mount,
        pid: s.pid,
        net: s.net,
        ipc: s.ipc,
        uts: s.uts,
        cgroup: s.cgroup,
    });
    let share = share.unwrap_or_default();
    let image = if r.image.is_empty() {
        None
    } else {
        v::absolute_path("image", &r.image)?;
        let path = PathBuf::from(&r.image);
        if !path.exists() {
            return Err(ApiError::NotFound(format!(
                "image: {} does not exist",
                r.image
            )));
        }
        if share.mount {
            return Err(ApiError::invalid(
                "share_host.mount",
                "an image cell needs its own mount namespace",
            ));
        }
        Some(path)
    };
    let security = super::cell_security::security(r, &share, image.is_some())?;
    super::cell_mounts::refuse_under_shared(&security)?;
    if r.pid_one && (share.pid || share.mount) {
        return Err(ApiError::invalid(
            "pid_one",
            "needs the cell's own PID and mount namespaces (share_host.pid and \
             share_host.mount unset)",
        ));
    }
    Ok(CellSpec {
        name: r.name.clone(),
        limits: r
            .limits
            .as_ref()
            .map(limits)
            .transpose()?
            .unwrap_or_default(),
        share,
        jailed: r.jailed,
        image,
        security,
        prepared_root: None,
        hostname: hostname(r, &share)?,
        pid_one: r.pid_one,
    })
}

/// The hostname a cell asks for: a DNS name of at most 64 bytes, in a UTS
/// namespace of its own.
fn hostname(r: &pb::RunCellRequest, share: &HostShare) -> Result<Option<String>, ApiError> {
    if r.hostname.is_empty() {
        return Ok(None);
    }
    if share.uts {
        return Err(ApiError::invalid(
            "hostname",
            "a cell sharing the host's UTS namespace (share_host.uts) can't have its own",
        ));
    }
    let ok = r.hostname.len() <= 64
        && r.hostname.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !ok {
        return Err(ApiError::invalid(
            "hostname",
            format!(
                "{} is not a hostname (at most 64 bytes of dot-separated labels of letters, \
                 digits and '-')",
                v::shown(&r.hostname)
            ),
        ));
    }
    Ok(Some(r.hostname.clone()))
}

pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

pub fn executable_status(e: &Executable) -> pb::WorkloadStatus {
    let exit = e.exit_info();
    let (code, signal) = match exit.map(|x| x.exit) {
        Some(Exit::Code(c)) => (Some(c), None),
        Some(Exit::Signal(s)) => (None, Some(s)),
        Some(Exit::Unknown) | None => (None, None),
    };
    pb::WorkloadStatus {
        id: e.id.clone(),
        kind: pb::WorkloadKind::Executable as i32,
        state: if exit.is_some() {
            pb::WorkloadState::Exited
        } else {
            pb::WorkloadState::Running
        } as i32,
        cell: e.cell.clone().unwrap_or_default(),
        pid: e.pid as u32,
        started_at: Some(timestamp(e.started_at)),
        exited_at: exit.map(|x| timestamp(x.at)),
        exit_code: code,
        signal,
        oom_killed: exit.map(|x| x.oom_killed).unwrap_or(false),
        command: e.command.clone(),
        executables: vec![],
        cgroup: String::new(),
        instance: None,
        pod: None,
        vm: None,
    }
}

pub fn cell_status(c: &Cell) -> pb::WorkloadStatus {
    let state = match c.state() {
        CellState::Running => pb::WorkloadState::Running,
        CellState::Frozen => pb::WorkloadState::Frozen,
        CellState::Stopped => pb::WorkloadState::Stopped,
    };
    pb::WorkloadStatus {
        id: c.name.clone(),
        kind: pb::WorkloadKind::Cell as i32,
        state: state as i32,
        pid: c.init_pid as u32,
        started_at: Some(timestamp(c.created_at)),
        executables: c.executables.lock().map(|e| e.clone()).unwrap_or_default(),
        cgroup: c.cgroup.dir().display().to_string(),
        ..Default::default()
    }
}

pub fn status(w: &Workload) -> pb::WorkloadStatus {
    match w {
        Workload::Executable(e) => executable_status(e),
        Workload::Cell(c) => cell_status(c),
        Workload::Instance(i) => instance_status(i),
        Workload::Vm(vm) => super::vm_convert::vm_workload_status(vm),
    }
}

fn backend(b: Backend) -> pb::SpawnBackend {
    match b {
        Backend::MicroVm => pb::SpawnBackend::Microvm,
        Backend::Cell => pb::SpawnBackend::Cell,
    }
}

/// An instance as the API shows it.
pub fn instance(i: &Instance) -> pb::InstanceStatus {
    pb::InstanceStatus {
        name: i.name.clone(),
        spiffe_id: i.spiffe_id.clone(),
        address: i.address.to_string(),
        backend: backend(i.choice.backend) as i32,
        backend_reason: i.choice.reason.clone(),
        boot_ms: i.boot_ms,
        ready_ms: i.ready_after.as_millis() as u64,
        children: vec![],
        networks: i
            .networks()
            .into_iter()
            .map(|n| pb::InstanceNetwork {
                host_link: n.host.name().to_string(),
                name: n.inside,
                bridge: n.bridge,
            })
            .collect(),
    }
}

/// The status of a workload whose life is one process (an instance's
/// auraed or VMM, a VM's VMM), started at `created_at`.
pub fn process_status(
    id: &str,
    kind: pb::WorkloadKind,
    running: bool,
    process: &Executable,
    created_at: SystemTime,
) -> pb::WorkloadStatus {
    pb::WorkloadStatus {
        id: id.to_string(),
        kind: kind as i32,
        state: if running {
            pb::WorkloadState::Running
        } else {
            pb::WorkloadState::Exited
        } as i32,
        pid: process.pid as u32,
        started_at: Some(timestamp(created_at)),
        exited_at: process.exit_info().map(|x| timestamp(x.at)),
        command: process.command.clone(),
        ..Default::default()
    }
}

pub fn instance_status(i: &Instance) -> pb::WorkloadStatus {
    pb::WorkloadStatus {
        instance: Some(instance(i)),
        ..process_status(
            &i.name,
            pb::WorkloadKind::Instance,
            i.running(),
            &i.init,
            i.created_at,
        )
    }
}

/// Most memory a spawn may ask for: what the host has.
pub fn host_memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(u64::MAX)
}

pub fn spawn_spec(r: &pb::SpawnRequest) -> Result<InstanceSpec, ApiError> {
    v::name("name", &r.name)?;
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1);
    v::range("vcpus", r.vcpus.into(), 0, cpus)?;
    v::range("memory_mib", r.memory_mib, 0, host_memory_mib())?;
    if r.memory_mib != 0 && r.memory_mib < 64 {
        return Err(ApiError::invalid(
            "memory_mib",
            "at least 64 MiB (or 0 for no limit)",
        ));
    }
    let preference = match pb::SpawnBackend::try_from(r.backend) {
        Ok(pb::SpawnBackend::Auto) => Preference::Auto,
        Ok(pb::SpawnBackend::Microvm) => Preference::MicroVm,
        Ok(pb::SpawnBackend::Cell) => Preference::Cell,
        Err(_) => {
            return Err(ApiError::invalid(
                "backend",
                format!("{} is not a backend", r.backend),
            ))
        }
    };
    let file = |field: &str, p: &str| -> Result<Option<PathBuf>, ApiError> {
        if p.is_empty() {
            return Ok(None);
        }
        v::absolute_path(field, p)?;
        let path = PathBuf::from(p);
        if !std::fs::metadata(&path)
            .map(|m| m.is_file())
            .unwrap_or(false)
        {
            return Err(ApiError::invalid(
                field,
                format!("{} is not a file", v::shown(p)),
            ));
        }
        Ok(Some(path))
    };
    let ready_ms = r.ready_timeout_ms.unwrap_or(60_000);
    v::range("ready_timeout_ms", ready_ms.into(), 100, 600_000)?;
    Ok(InstanceSpec {
        name: r.name.clone(),
        vcpus: r.vcpus,
        memory_mib: r.memory_mib,
        nested: r.nested,
        preference,
        kernel: if r.kernel.is_empty() {
            None
        } else {
            Some(super::vm_convert::kernel_file("kernel", &r.kernel)?)
        },
        initramfs: file("initramfs", &r.initramfs)?,
        ready_timeout: std::time::Duration::from_millis(ready_ms.into()),
        read_only: Vec::new(),
        metadata: {
            let m: std::collections::BTreeMap<String, String> =
                r.metadata.clone().into_iter().collect();
            crate::metadata::validate("metadata", &m)?;
            m
        },
        networks: Vec::new(),
        host_ipc: false,
        host_pid: false,
        host_network: false,
        keep: false,
        pod_network: None,
        files: Vec::new(),
        volumes: false,
    })
}
