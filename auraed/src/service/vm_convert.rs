//! `RunVirtualMachineRequest` to a [`VmSpec`], every field checked by name,
//! and a VM's status.

use std::io::Read;
use std::path::{Path, PathBuf};

use aurae_proto::runtime as pb;

use super::convert::host_memory_mib;
use crate::error::ApiError;
use crate::instances::plain_vm::{Vm, VmSpec};
use crate::instances::Disk;
use crate::validation as v;

/// A VM's memory when the request leaves it at 0.
pub const DEFAULT_MEMORY_MIB: u64 = 256;
/// The longest kernel command line (x86's COMMAND_LINE_SIZE).
pub const MAX_CMDLINE: usize = 2048;
/// Initramfs parts and disks of one VM, at most each.
pub const MAX_PARTS: usize = 16;
/// The most initramfs bytes concatenated into a copy (on auraed's tmpfs).
pub const MAX_INITRAMFS_BYTES: u64 = 512 << 20;

fn io_field(field: &str, path: &Path, what: &str, e: std::io::Error) -> ApiError {
    ApiError::invalid(
        field,
        format!("{} {what}: {e}", v::shown(&path.display().to_string())),
    )
}

/// `value` names a regular file this auraed can open (for writing too when
/// `write`).
fn file(field: &str, value: &str, write: bool) -> Result<PathBuf, ApiError> {
    v::absolute_path(field, value)?;
    let path = PathBuf::from(value);
    let meta = std::fs::metadata(&path).map_err(|e| io_field(field, &path, "", e))?;
    if !meta.is_file() {
        return Err(ApiError::invalid(
            field,
            format!("{} is not a file", v::shown(value)),
        ));
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .open(&path)
        .map_err(|e| {
            let what = if write {
                "can't be opened for writing"
            } else {
                "can't be read"
            };
            io_field(field, &path, what, e)
        })?;
    Ok(path)
}

/// A bzImage ("HdrS" at 0x202) or an ELF vmlinux, named `field`.
pub fn kernel_file(field: &str, value: &str) -> Result<PathBuf, ApiError> {
    let path = file(field, value, false)?;
    let mut head = [0u8; 0x206];
    let n = std::fs::File::open(&path)
        .and_then(|f| f.take(head.len() as u64).read(&mut head))
        .map_err(|e| io_field(field, &path, "can't be read", e))?;
    let elf = n >= 4 && head[..4] == *b"\x7fELF";
    let bzimage = n >= 0x206 && head[0x202..0x206] == *b"HdrS";
    if !(elf || bzimage) {
        return Err(ApiError::invalid(
            field,
            format!(
                "{} is neither an ELF vmlinux nor a bzImage",
                v::shown(value)
            ),
        ));
    }
    Ok(path)
}

fn disk(field: &str, d: &pb::VmDisk) -> Result<Disk, ApiError> {
    if d.path.contains(':') {
        // The VMM's --disk takes PATH[:ro].
        return Err(ApiError::invalid(
            format!("{field}.path"),
            format!(
                "{} has a ':', which a disk path can't have",
                v::shown(&d.path)
            ),
        ));
    }
    let path = file(&format!("{field}.path"), &d.path, !d.read_only)?;
    let len = std::fs::metadata(&path)
        .map_err(|e| io_field(&format!("{field}.path"), &path, "", e))?
        .len();
    if len == 0 || len % 512 != 0 {
        return Err(ApiError::invalid(
            format!("{field}.path"),
            format!(
                "{} is {len} bytes: a disk is a whole, non-zero number of 512-byte sectors",
                v::shown(&d.path)
            ),
        ));
    }
    Ok(Disk {
        path,
        read_only: d.read_only,
    })
}

pub fn vm_spec(r: &pb::RunVirtualMachineRequest) -> Result<VmSpec, ApiError> {
    v::name("name", &r.name)?;
    let kernel = kernel_file("kernel", &r.kernel)?;
    if r.initramfs.len() > MAX_PARTS {
        return Err(ApiError::invalid(
            "initramfs",
            format!("{} parts; at most {MAX_PARTS}", r.initramfs.len()),
        ));
    }
    let initramfs = r
        .initramfs
        .iter()
        .enumerate()
        .map(|(i, p)| file(&format!("initramfs[{i}]"), p, false))
        .collect::<Result<Vec<_>, _>>()?;
    // Several parts are concatenated into a copy on auraed's tmpfs.
    if initramfs.len() > 1 {
        let total: u64 = initramfs
            .iter()
            .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum();
        if total > MAX_INITRAMFS_BYTES {
            return Err(ApiError::invalid(
                "initramfs",
                format!(
                    "{total} bytes in all; several parts are copied into memory, at most \
                     {MAX_INITRAMFS_BYTES} bytes (one part of any size is not copied)"
                ),
            ));
        }
    }
    if r.disks.len() >= MAX_PARTS {
        return Err(ApiError::invalid(
            "disks",
            format!("{} disks; at most {}", r.disks.len(), MAX_PARTS - 1),
        ));
    }
    let mut disks = Vec::new();
    if let Some(root) = &r.root_disk {
        disks.push(disk("root_disk", root)?);
    }
    for (i, d) in r.disks.iter().enumerate() {
        disks.push(disk(&format!("disks[{i}]"), d)?);
    }
    let cmdline = if r.cmdline.is_empty() {
        "console=ttyS0".to_string()
    } else {
        r.cmdline.clone()
    };
    v::c_string("cmdline", &cmdline)?;
    if cmdline.len() > MAX_CMDLINE {
        return Err(ApiError::invalid(
            "cmdline",
            format!("{} bytes; at most {MAX_CMDLINE}", cmdline.len()),
        ));
    }
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1)
        .min(255);
    v::range("vcpus", r.vcpus.into(), 0, cpus)?;
    let memory_mib = if r.memory_mib == 0 {
        DEFAULT_MEMORY_MIB
    } else {
        v::range("memory_mib", r.memory_mib, 16, host_memory_mib())?;
        r.memory_mib
    };
    Ok(VmSpec {
        name: r.name.clone(),
        kernel,
        initramfs,
        disks,
        cmdline,
        vcpus: r.vcpus.max(1) as u8,
        memory_mib,
        metadata: {
            let m: std::collections::BTreeMap<String, String> =
                r.metadata.clone().into_iter().collect();
            crate::metadata::validate("metadata", &m)?;
            m
        },
    })
}

pub fn vm_status(vm: &Vm) -> pb::VirtualMachineStatus {
    pb::VirtualMachineStatus {
        name: vm.name.clone(),
        address: vm.address_text(),
        tap: vm.tap_name.clone(),
        boot_ms: vm.boot_ms(),
        exit_reason: vm.exit_reason().unwrap_or_default(),
    }
}

pub fn vm_workload_status(vm: &Vm) -> pb::WorkloadStatus {
    pb::WorkloadStatus {
        vm: Some(vm_status(vm)),
        ..super::convert::process_status(
            &vm.name,
            pb::WorkloadKind::VirtualMachine,
            vm.running(),
            &vm.init,
            vm.created_at,
        )
    }
}
