//! A plain VM outlives its auraed (`[instances] vm_restart = "adopt"`, the
//! default): its VMM runs on in its cell, writing its console and messages
//! to files in the VM's folder, and a record there (`vm.json`) says what a
//! restarted auraed needs to take it back: its name, address index, link
//! on the bridge, resources and metadata, and the VMM's pid with its start
//! time (so that a reused pid is never taken for it).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{Vm, VmCell};
use crate::cgroup::{CellCgroup, Hierarchy};
use crate::config::VmRestart;
use crate::error::ApiError;
use crate::executables::Executable;
use crate::instances::Instances;
use crate::net::Veth;

/// The record's file in the VM's folder.
const RECORD: &str = "vm.json";

/// What a restarted auraed needs to adopt a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    pub name: String,
    pub kernel: PathBuf,
    pub index: u32,
    /// Its link on the bridge (the host end of its uplink), and its index.
    pub tap: String,
    pub tap_index: u32,
    #[serde(default)]
    pub vcpus: u8,
    #[serde(default)]
    pub memory_mib: u64,
    /// As given at creation; an admin's changes since are in
    /// `metadata.json` beside it.
    #[serde(default)]
    pub metadata: std::collections::BTreeMap<String, String>,
    pub vmm_pid: i32,
    /// The VMM's start time, in clock ticks since boot (`/proc/<pid>/stat`).
    pub vmm_start: u64,
    pub created_at_unix_ms: u64,
    /// The VMM's command line, for its status.
    pub command: Vec<String>,
}

/// A VM whose VMM still runs, found at start.
pub struct Survivor {
    pub record: VmRecord,
    pub dir: PathBuf,
    pub cgroup: CellCgroup,
}

pub use crate::cells::adopt::start_ticks;

/// Writes the record into `dir`, replacing any (write, then rename).
pub fn write_record(dir: &Path, record: &VmRecord) -> Result<(), ApiError> {
    let json = serde_json::to_vec_pretty(record)
        .map_err(|e| ApiError::Internal(format!("encoding the VM's record: {e}")))?;
    let tmp = dir.join(format!("{RECORD}.tmp"));
    std::fs::write(&tmp, json)
        .map_err(|e| ApiError::io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, dir.join(RECORD))
        .map_err(|e| ApiError::io(format!("renaming {}", tmp.display()), e))
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The VMs of `instances_dir` whose VMM still runs in its cell: its record
/// reads, its pid has the recorded start time, and it is in the cell's
/// cgroup. Any other VM folder is left for the clean-up, and logged.
pub fn survivors(instances_dir: &Path, hierarchy: &Hierarchy) -> Vec<Survivor> {
    let Ok(entries) = std::fs::read_dir(instances_dir) else {
        return Vec::new();
    };
    let cells = hierarchy.cells();
    let mut found = Vec::new();
    for dir in entries.filter_map(Result::ok).map(|e| e.path()) {
        let is_vm = dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("vm."));
        if !is_vm {
            continue;
        }
        let folder = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let record: VmRecord = match std::fs::read(dir.join(RECORD))
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("{}: no VM record to adopt it by ({e})", dir.display());
                continue;
            }
        };
        if folder != format!("vm.{}", record.name) {
            tracing::warn!(
                "{}: its record names {:?}; not adopted",
                dir.display(),
                record.name
            );
            continue;
        }
        let Some(cgroup) = cells.iter().find(|c| c.name() == record.name).cloned() else {
            tracing::warn!("vm {}: its cell is gone; not adopted", record.name);
            continue;
        };
        let alive = start_ticks(record.vmm_pid) == Some(record.vmm_start)
            && cgroup.procs().contains(&record.vmm_pid);
        if !alive {
            tracing::warn!(
                "vm {}: its VMM (pid {}) is gone; not adopted",
                record.name,
                record.vmm_pid
            );
            continue;
        }
        found.push(Survivor {
            record,
            dir,
            cgroup,
        });
    }
    found
}

/// What a previous auraed left in `vms_dir`: with `adopt`, the VMs whose
/// VMM still runs (see [`survivors`]); every other VM folder is removed
/// (their cells are removed with every leftover cell), and logged.
pub fn left_running(vms_dir: &Path, hierarchy: &Hierarchy, policy: VmRestart) -> Vec<Survivor> {
    let found = match policy {
        VmRestart::Adopt => survivors(vms_dir, hierarchy),
        VmRestart::Remove => Vec::new(),
    };
    if let Ok(entries) = std::fs::read_dir(vms_dir) {
        for dir in entries.filter_map(Result::ok).map(|e| e.path()) {
            if found.iter().any(|s| s.dir == dir) {
                continue;
            }
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => tracing::warn!("removed {}, left by a previous run", dir.display()),
                Err(e) => tracing::error!("removing {}: {e}", dir.display()),
            }
        }
    }
    found
}

/// Removes what is left of a VM that could not be taken back: its VMM
/// (through its cell's cgroup) and its folder.
pub fn discard(s: &Survivor) {
    discard_parts(&s.record.name, &s.cgroup, &s.dir);
}

/// [`discard`], by its parts.
pub fn discard_parts(name: &str, cgroup: &CellCgroup, dir: &Path) {
    if let Err(e) = cgroup.remove(Duration::from_secs(10)) {
        tracing::error!("vm {name}: removing its cell: {e}");
    }
    if let Err(e) = std::fs::remove_dir_all(dir) {
        tracing::error!("vm {name}: removing {}: {e}", dir.display());
    }
}

impl Instances {
    /// Takes back a VM that a previous auraed left running: its address
    /// index, its TAP on the bridge, and its VMM, followed through its
    /// files (the console from its start).
    pub async fn adopt_vm(&self, s: Survivor, log_bytes: usize) -> Result<Vm, ApiError> {
        let r = s.record;
        // The pidfd pins the process: checked again through it, a pid
        // reused since the first check is refused.
        let pid = r.vmm_pid;
        let fd = crate::sys::pidfd::open(pid)
            .map_err(|e| ApiError::io(format!("pidfd_open({pid})"), e))?;
        if start_ticks(pid) != Some(r.vmm_start) || !s.cgroup.procs().contains(&pid) {
            return Err(ApiError::FailedPrecondition(format!(
                "vm {}: pid {pid} is no longer its VMM",
                r.name
            )));
        }
        // Its link on the bridge, by name and index, named as this
        // auraed names them.
        let (host, _, _) = self.vm_link_names(r.index)?;
        let index = crate::net::link_index_of(&r.tap).await.ok().flatten();
        if r.tap != host || index != Some(r.tap_index) {
            return Err(ApiError::FailedPrecondition(format!(
                "vm {}: its link {} is gone or is another link",
                r.name, r.tap
            )));
        }
        // The bridge is there (the TAP is on it): this finds it, and takes
        // it as its own, as the auraed that made it did.
        self.ensure_bridge().await?;
        self.own_bridge().await;
        self.claim_index(r.index)?;
        let made = async {
            // Its metadata endpoint again, in its namespace (the VMM's).
            let endpoint = self
                .vm_metadata(
                    &r.name,
                    self.ula().instance_addr(r.index),
                    (r.vcpus, r.memory_mib),
                    &crate::metadata::saved(&s.dir.join(super::METADATA_FILE))
                        .unwrap_or_else(|| r.metadata.clone()),
                    std::os::fd::AsFd::as_fd(&fd),
                )
                .await?;
            match Executable::adopt(
                format!("{}/vmm", r.name),
                Some(r.name.clone()),
                r.command.clone(),
                (pid, fd),
                (super::vm_outputs(&s.dir), Default::default()),
                log_bytes,
            ) {
                Ok(init) => Ok((init, endpoint)),
                Err(e) => {
                    endpoint.abort();
                    self.forget_record(&r.name);
                    Err(e)
                }
            }
        };
        let (init, endpoint) = match made.await {
            Ok(made) => made,
            Err(e) => {
                self.release_index(r.index);
                return Err(e);
            }
        };
        Ok(Vm {
            name: r.name.clone(),
            kernel: r.kernel,
            address: self.ula().instance_addr(r.index),
            tap_name: r.tap.clone(),
            created_at: UNIX_EPOCH + Duration::from_millis(r.created_at_unix_ms),
            init,
            cell: VmCell::Adopted(s.cgroup),
            uplink: std::sync::Mutex::new(Some(Veth {
                host: r.tap,
                host_index: r.tap_index,
                peer: crate::net::UPLINK.into(),
            })),
            imds: std::sync::Mutex::new(Some(endpoint)),
            dir: s.dir,
            index: r.index,
            torn_down: std::sync::atomic::AtomicBool::new(false),
            tearing_down: tokio::sync::Mutex::new(()),
            asked: std::sync::atomic::AtomicBool::new(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_survives_a_round_trip_through_its_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let record = VmRecord {
            name: "db".into(),
            kernel: "/k".into(),
            index: 3,
            tap: "aurae0m3".into(),
            tap_index: 42,
            vcpus: 1,
            memory_mib: 64,
            metadata: [("k".to_string(), "v".to_string())].into(),
            vmm_pid: 1234,
            vmm_start: 99,
            created_at_unix_ms: 1_700_000_000_000,
            command: vec!["aurae-vmm".into()],
        };
        write_record(dir.path(), &record).expect("write");
        let read: VmRecord =
            serde_json::from_slice(&std::fs::read(dir.path().join(RECORD)).expect("read"))
                .expect("parse");
        assert_eq!(read, record);
    }
}
