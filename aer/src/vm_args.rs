//! `aer vm run` and `aer vm ls`: their flags, the request they make, and
//! how a VM is shown.

use std::path::PathBuf;

use aurae_proto::runtime as pb;
use serde_json::{json, Value};

use crate::spawn_args::FlagError;
use crate::text::escape;

#[derive(clap::Subcommand)]
pub enum VmCmd {
    /// Boot a long-lived VM from a kernel and disks of yours.
    Run(Box<VmRunArgs>),
    /// List VMs.
    Ls,
}

#[derive(clap::Args)]
pub struct VmRunArgs {
    #[arg(long)]
    pub name: String,
    /// A bzImage or an ELF vmlinux.
    #[arg(long)]
    pub kernel: PathBuf,
    /// A raw disk, PATH or PATH:ro; the first is the root disk (/dev/vda).
    /// Repeatable.
    #[arg(long = "disk")]
    pub disks: Vec<String>,
    /// An initramfs part (repeatable; concatenated in order).
    #[arg(long)]
    pub initramfs: Vec<PathBuf>,
    /// The kernel command line (console=ttyS0 when unset).
    #[arg(long)]
    pub cmdline: Option<String>,
    /// Memory, like 512M (256M when unset).
    #[arg(long)]
    pub mem: Option<String>,
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// A key of the VM's metadata record, KEY=VALUE (repeatable): the guest
    /// reads it at http://169.254.169.254/.
    #[arg(long = "meta")]
    pub meta: Vec<String>,
}

fn absolute(flag: &'static str, p: &std::path::Path) -> Result<String, FlagError> {
    std::path::absolute(p)
        .map(|p| p.display().to_string())
        .map_err(|e| FlagError {
            flag,
            reason: e.to_string(),
        })
}

impl VmRunArgs {
    pub fn request(self) -> Result<pb::RunVirtualMachineRequest, FlagError> {
        let mut disks = Vec::new();
        for d in &self.disks {
            let (path, read_only) = match d.strip_suffix(":ro") {
                Some(p) => (p, true),
                None => (d.as_str(), false),
            };
            disks.push(pb::VmDisk {
                path: absolute("disk", std::path::Path::new(path))?,
                read_only,
            });
        }
        let mut disks = disks.into_iter();
        let memory_mib = match self.mem.as_deref() {
            Some(m) => crate::spawn_args::whole_mib("mem", m)?,
            None => 0,
        };
        Ok(pb::RunVirtualMachineRequest {
            name: self.name,
            kernel: absolute("kernel", &self.kernel)?,
            root_disk: disks.next(),
            disks: disks.collect(),
            initramfs: self
                .initramfs
                .iter()
                .map(|p| absolute("initramfs", p))
                .collect::<Result<_, _>>()?,
            cmdline: self.cmdline.unwrap_or_default(),
            vcpus: self.vcpus,
            memory_mib,
            metadata: crate::spawn_args::meta_map(&self.meta)?,
        })
    }
}

/// A VM as JSON.
pub fn vm_json(v: &pb::VirtualMachineStatus) -> Value {
    json!({
        "name": v.name,
        "address": v.address,
        "tap": v.tap,
        "boot_ms": v.boot_ms,
        "exit_reason": v.exit_reason,
    })
}

/// A VM as one table line: name, address, TAP, and why it stopped.
pub fn vm_line(v: &pb::VirtualMachineStatus) -> String {
    let state = if v.exit_reason.is_empty() {
        "running".to_string()
    } else {
        format!("stopped: {}", v.exit_reason)
    };
    format!(
        "{}  {}  {}  {}",
        escape(&v.name),
        escape(&v.address),
        escape(&v.tap),
        escape(&state)
    )
}
