//! How auraed runs `aurae-vmm`, for microVM instances and plain VMs: its
//! command line, its cell, and the disks it is given.

use std::path::{Path, PathBuf};

use crate::cells::{CellContext, CellSpec, HostShare};
use crate::error::ApiError;
use crate::executables::ProcessSpec;

use super::microvm::VMM_OVERHEAD_MIB;

/// How to run the VMM.
pub(super) struct VmmArgs<'a> {
    pub(super) vmm: &'a Path,
    pub(super) kernel: &'a Path,
    /// Where the serial console goes; standard output when `None`.
    pub(super) console: Option<&'a Path>,
    pub(super) initrd: Option<&'a Path>,
    pub(super) mem_mib: u64,
    pub(super) vcpus: u8,
    /// eth0's TAP first, then the instance's other networks'.
    pub(super) taps: &'a [String],
    /// The guest's MAC on some of them (a pod's CNI device's).
    pub(super) macs: &'a [(String, [u8; 6])],
    pub(super) cmdline: String,
    pub(super) nested: bool,
    /// Disks, in order: /dev/vda, /dev/vdb...
    pub(super) disks: &'a [Disk],
    /// The folder shared for a microVM's volumes (see [`super::volumes`]).
    pub(super) volumes: Option<&'a Path>,
}

/// A disk of a VM.
#[derive(Debug, Clone)]
pub struct Disk {
    pub path: PathBuf,
    pub read_only: bool,
}

/// The cell a VMM runs in: its own pid, ipc, uts, cgroup and mount
/// namespaces, the host's network (for its TAP), and memory limited to the
/// guest's plus [`VMM_OVERHEAD_MIB`] where the memory controller exists.
/// `host_net`: the host's network (a microVM instance's TAP is on the
/// bridge there), or a namespace of its own (a plain VM's, see
/// [`crate::net::make_vm_link`]).
pub(super) fn vmm_cell_spec(
    name: &str,
    mem_mib: u64,
    cells: &CellContext,
    host_net: bool,
) -> CellSpec {
    let mut limits = crate::cgroup::Limits::default();
    // A limit whose controller is missing would fail the cell.
    if cells.hierarchy.available().contains("memory") {
        limits.memory_max = Some((mem_mib + VMM_OVERHEAD_MIB) << 20);
    }
    CellSpec {
        name: name.to_string(),
        limits,
        share: HostShare {
            net: host_net,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The instance's shared files as read-only disks: each must be a file of
/// whole 512-byte sectors (a disk has no partial sector).
/// `networks` is how many more network devices it gets besides eth0: each
/// takes a virtio device, as each disk does.
pub(super) fn disks(shared: &[super::Shared], networks: usize) -> Result<Vec<Disk>, ApiError> {
    // aurae-vmm's 19 virtio devices, less the rng, eth0 and the others.
    let max_disks = 16usize.saturating_sub(networks.saturating_sub(1));
    if shared.len() > max_disks {
        return Err(ApiError::invalid(
            shared[max_disks].field.clone(),
            format!(
                "a microVM takes at most {max_disks} disks with {networks} more network devices"
            ),
        ));
    }
    shared
        .iter()
        .map(|s| {
            let meta = std::fs::metadata(&s.host).map_err(|e| {
                ApiError::invalid(s.field.clone(), format!("{}: {e}", s.host.display()))
            })?;
            if !meta.is_file() {
                return Err(ApiError::invalid(
                    s.field.clone(),
                    format!(
                        "{} is not a file: a microVM gets it as a disk, so give an archive",
                        s.host.display()
                    ),
                ));
            }
            if meta.len() % 512 != 0 {
                return Err(ApiError::invalid(
                    s.field.clone(),
                    format!(
                        "{} is {} bytes, not whole 512-byte sectors: a microVM gets it as a \
                         disk (an uncompressed tar archive always is)",
                        s.host.display(),
                        meta.len()
                    ),
                ));
            }
            Ok(Disk {
                path: s.host.clone(),
                read_only: true,
            })
        })
        .collect()
}

pub(super) fn vmm_process(a: &VmmArgs) -> Result<ProcessSpec, ApiError> {
    let c = |s: &str| crate::validation::c_string("instance", s);
    let path = |p: &Path| {
        p.to_str()
            .map(str::to_string)
            .ok_or_else(|| ApiError::FailedPrecondition(format!("{} is not UTF-8", p.display())))
    };
    let mut command = vec![
        path(a.vmm)?,
        "--kernel".into(),
        path(a.kernel)?,
        "--mem".into(),
        a.mem_mib.to_string(),
        "--vcpus".into(),
        a.vcpus.to_string(),
        // Recommended for Linux guests (aurae-vmm's --help).
        "--huge-pages".into(),
        "--cmdline".into(),
        a.cmdline.clone(),
    ];
    for (tap, mac) in a.macs {
        let hex: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
        command.push("--mac".into());
        command.push(format!("{tap}={}", hex.join(":")));
    }
    for tap in a.taps {
        command.push("--tap".into());
        command.push(tap.clone());
    }
    if a.nested {
        command.push("--nested".into());
    }
    if let Some(initrd) = a.initrd {
        command.push("--initrd".into());
        command.push(path(initrd)?);
    }
    for d in a.disks {
        command.push("--disk".into());
        let ro = if d.read_only { ":ro" } else { "" };
        command.push(format!("{}{ro}", path(&d.path)?));
    }
    if let Some(v) = a.volumes {
        command.push("--fs".into());
        command.push(format!("{}={}", super::volumes::TAG, path(v)?));
    }
    // Without --console, standard output: the instance's logs.
    if let Some(console) = a.console {
        command.push("--console".into());
        command.push(path(console)?);
    }
    let argv = command.iter().map(|s| c(s)).collect::<Result<_, _>>()?;
    Ok(ProcessSpec {
        candidates: vec![c(&path(a.vmm)?)?],
        argv,
        command,
        envp: vec![c(&format!("PATH={}", crate::runtime::DEFAULT_PATH))?],
        cwd: Some(c("/")?),
        uid: None,
        gid: None,
        groups: Vec::new(),
        stdin: Default::default(),
    })
}
