//! The container defaults of a cell's mounts, planned as [`InitOp`]s: what
//! OCI runtimes give every container, so that a cell can't reach host-wide
//! kernel settings, other cgroups or host devices through the filesystem.
//!
//! - `/proc`: a fresh instance; `sys`, `sysrq-trigger`, `irq`, `bus` and
//!   `fs` read-only (with `sys/net` writable where the cell asks for its
//!   own network namespace's sysctls); `kcore`, `keys`, `timer_list`,
//!   `sched_debug` and the like masked with `/dev/null`; `acpi` and `scsi`
//!   masked with an empty read-only tmpfs.
//! - `/sys`: a fresh, read-only sysfs (the host's, with its cgroup, debugfs
//!   and bpffs mounts, is detached), `firmware` masked; at `/sys/fs/cgroup`
//!   a cgroup2 mount made inside the cell's cgroup namespace, so it shows
//!   the cell's own subtree only (read-only unless delegated). No v1
//!   hierarchy is mounted.
//! - A jailed cell without an image: the host's root, read-only, nosuid and
//!   nodev, with auraed's own files hidden, a private `/tmp`, a minimal
//!   `/dev` and the writable paths and devices the request names.

use std::path::{Path, PathBuf};

use super::init::{c, cpath, Plan, PlanError};
use crate::sys::init_process::InitOp;

const NODEV: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV;
const NOEXEC: libc::c_ulong = NODEV | libc::MS_NOEXEC;

/// Under /proc: read-only.
pub const PROC_READ_ONLY: [&str; 5] = ["sys", "sysrq-trigger", "irq", "bus", "fs"];
/// Under /proc: files replaced by /dev/null.
pub const PROC_MASKED_FILES: [&str; 7] = [
    "kcore",
    "keys",
    "timer_list",
    "sched_debug",
    "latency_stats",
    "timer_stats",
    "kpagecount",
];
/// Under /proc: directories replaced by an empty read-only tmpfs.
pub const PROC_MASKED_DIRS: [&str; 2] = ["acpi", "scsi"];
/// Under /sys: directories replaced by an empty read-only tmpfs.
pub const SYS_MASKED_DIRS: [&str; 2] = ["firmware", "devices/virtual/powercap"];
/// Host files a jailed cell never reads, whatever its capabilities.
pub const HOST_SECRETS: [&str; 2] = ["/etc/shadow", "/etc/gshadow"];

/// How the cell's kernel filesystems are mounted.
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelFs {
    pub privileged: bool,
    pub net_sysctls: bool,
    pub delegate_cgroup: bool,
    /// The host's /proc and /sys are mounted at the target already (a cell
    /// that sees the host's root): detach them before mounting fresh ones.
    pub replace_host: bool,
}

impl Plan {
    fn tolerate(&mut self, op: InitOp, errno: libc::c_int, what: String) {
        self.push(InitOp::Tolerate(Box::new(op), errno), what);
    }

    fn bind(&mut self, source: &Path, target: &Path, recursive: bool) -> Result<InitOp, PlanError> {
        let rec = if recursive { libc::MS_REC } else { 0 };
        Ok(InitOp::Mount {
            source: Some(cpath(source)?),
            target: cpath(target)?,
            fstype: None,
            flags: libc::MS_BIND | rec,
            data: None,
        })
    }

    pub(super) fn remount_read_only(
        target: &Path,
        flags: libc::c_ulong,
    ) -> Result<InitOp, PlanError> {
        Ok(InitOp::Mount {
            source: None,
            target: cpath(target)?,
            fstype: None,
            flags: libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | flags,
            data: None,
        })
    }

    /// Hides a directory under an empty read-only tmpfs; one the kernel
    /// doesn't have is skipped.
    fn mask_dir(&mut self, target: &Path) -> Result<(), PlanError> {
        let op = InitOp::Mount {
            source: Some(c("tmpfs")?),
            target: cpath(target)?,
            fstype: Some(c("tmpfs")?),
            flags: NOEXEC | libc::MS_RDONLY,
            data: Some(c("size=0,mode=555")?),
        };
        self.tolerate(op, libc::ENOENT, format!("masking {}", target.display()));
        Ok(())
    }

    /// Hides a file under /dev/null; one that doesn't exist is skipped.
    fn mask_file(&mut self, target: &Path) -> Result<(), PlanError> {
        let op = self.bind(Path::new("/dev/null"), target, false)?;
        self.tolerate(op, libc::ENOENT, format!("masking {}", target.display()));
        Ok(())
    }

    /// The request's masked and read-only paths, in the cell's own view
    /// (after the pivot, so an image's symbolic links lead inside it). A
    /// masked file gets /dev/null bound on it, a masked folder an empty
    /// read-only tmpfs (each mount fails with ENOTDIR on the other kind);
    /// a read-only path is bound on itself and made read-only with what is
    /// under it. Paths the cell does not have are left alone.
    pub(super) fn request_masks(
        &mut self,
        masked: &[PathBuf],
        readonly: &[PathBuf],
    ) -> Result<(), PlanError> {
        let tolerant = |op: InitOp, also: libc::c_int| {
            InitOp::Tolerate(Box::new(InitOp::Tolerate(Box::new(op), libc::ENOENT)), also)
        };
        for p in masked {
            let file = self.bind(Path::new("/dev/null"), p, false)?;
            self.push(
                tolerant(file, libc::ENOTDIR),
                format!("masking {} (a file)", p.display()),
            );
            let dir = InitOp::Mount {
                source: Some(c("tmpfs")?),
                target: cpath(p)?,
                fstype: Some(c("tmpfs")?),
                flags: NOEXEC | libc::MS_RDONLY,
                data: Some(c("size=0,mode=555")?),
            };
            self.push(
                tolerant(dir, libc::ENOTDIR),
                format!("masking {} (a folder)", p.display()),
            );
        }
        for p in readonly {
            let op = self.bind(p, p, true)?;
            self.tolerate(
                op,
                libc::ENOENT,
                format!("binding {} on itself", p.display()),
            );
            self.tolerate(
                InitOp::ReadOnlyTree(cpath(p)?),
                libc::ENOENT,
                format!("making {} read-only", p.display()),
            );
        }
        Ok(())
    }

    /// A fresh /proc, /sys and cgroup2 under `root`, with the defaults.
    pub(super) fn kernel_fs(&mut self, root: &Path, how: KernelFs) -> Result<(), PlanError> {
        let proc = root.join("proc");
        let sys = root.join("sys");
        if how.replace_host {
            for dir in [&proc, &sys] {
                self.push(
                    InitOp::Detach(cpath(dir)?),
                    format!("detaching the host's {}", dir.display()),
                );
            }
        }
        self.proc_fs(&proc, &how)?;
        let ro = if how.privileged { 0 } else { libc::MS_RDONLY };
        self.mount("sysfs", &sys, "sysfs", NOEXEC | ro, None)?;
        if !how.privileged {
            for name in SYS_MASKED_DIRS {
                self.mask_dir(&sys.join(name))?;
            }
        }
        let cgroup_ro = if how.privileged || how.delegate_cgroup {
            0
        } else {
            libc::MS_RDONLY
        };
        self.mount(
            "cgroup2",
            &sys.join("fs/cgroup"),
            "cgroup2",
            NOEXEC | cgroup_ro,
            None,
        )
    }

    /// A /proc at `proc`, with the OCI defaults' read-only and masked
    /// paths unless `how.privileged`.
    pub(super) fn proc_fs(&mut self, proc: &Path, how: &KernelFs) -> Result<(), PlanError> {
        self.mount("proc", proc, "proc", NOEXEC, None)?;
        if how.privileged {
            return Ok(());
        }
        if how.net_sysctls {
            let net = proc.join("sys/net");
            let op = self.bind(&net, &net, false)?;
            self.push(op, "keeping /proc/sys/net writable");
        }
        for name in PROC_READ_ONLY {
            let path = proc.join(name);
            let op = self.bind(&path, &path, true)?;
            self.tolerate(op, libc::ENOENT, format!("binding /proc/{name}"));
            let op = Self::remount_read_only(&path, NOEXEC)?;
            self.tolerate(op, libc::ENOENT, format!("making /proc/{name} read-only"));
        }
        for name in PROC_MASKED_FILES {
            self.mask_file(&proc.join(name))?;
        }
        for name in PROC_MASKED_DIRS {
            self.mask_dir(&proc.join(name))?;
        }
        Ok(())
    }

    /// The host's root at `at`, read-only, nosuid and nodev, without the
    /// host's /proc, /sys, /dev and /tmp, with `hidden` masked and
    /// `writable` bound back read-write.
    pub(super) fn host_root_read_only(
        &mut self,
        at: &Path,
        hidden: &[PathBuf],
        writable: &[PathBuf],
    ) -> Result<(), PlanError> {
        let op = self.bind(Path::new("/"), at, true)?;
        self.push(op, "binding the host's root");
        for dir in ["proc", "sys", "dev", "tmp", "run"] {
            let path = at.join(dir);
            self.push(
                InitOp::Detach(cpath(&path)?),
                format!("detaching the host's /{dir}"),
            );
        }
        self.push(
            InitOp::ReadOnlyTree(cpath(at)?),
            "making the host's root read-only",
        );
        for path in writable {
            let inside = at.join(path.strip_prefix("/").unwrap_or(path));
            let op = self.bind(path, &inside, true)?;
            self.push(op, format!("making {} writable", path.display()));
        }
        // After the writable paths, so that none of them uncovers what is
        // hidden. /run holds sockets of host daemons (auraed's own among
        // them): an empty read-only tmpfs instead.
        self.mask_dir(&at.join("run"))?;
        for path in hidden
            .iter()
            .map(PathBuf::as_path)
            .chain(HOST_SECRETS.iter().map(Path::new))
        {
            let inside = at.join(path.strip_prefix("/").unwrap_or(path));
            match std::fs::symlink_metadata(path) {
                Ok(m) if m.is_dir() => self.mask_dir(&inside)?,
                Ok(_) => self.mask_file(&inside)?,
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// The folders from below `root` down to `target`'s parent, made in
    /// order (an existing one is fine).
    fn folders_between(&mut self, root: &Path, target: &Path) -> Result<(), PlanError> {
        let mut parents: Vec<&Path> = target
            .ancestors()
            .skip(1)
            .take_while(|p| *p != root)
            .collect();
        parents.reverse();
        for parent in parents {
            self.push(
                InitOp::Mkdir(cpath(parent)?, 0o755),
                format!("creating {}", parent.display()),
            );
        }
        Ok(())
    }

    /// Host devices bound into the cell's /dev at `dev`.
    pub(super) fn devices(&mut self, dev: &Path, devices: &[PathBuf]) -> Result<(), PlanError> {
        for device in devices {
            let rel = device.strip_prefix("/dev").unwrap_or(device);
            let target = dev.join(rel);
            self.folders_between(dev, &target)?;
            self.tolerate(
                InitOp::Mknod(cpath(&target)?, libc::S_IFREG | 0o600, 0),
                libc::EEXIST,
                format!("creating the mount point of {}", device.display()),
            );
            let op = self.bind(device, &target, false)?;
            self.push(op, format!("adding {}", device.display()));
        }
        Ok(())
    }

    /// `host` bound at `target` under `root`: the folders above it are
    /// made, then the mount point (a folder, or an empty file when `host`
    /// is a file, such as an image archive). With `tree`, that detached copy
    /// of `host` is attached instead of a bind.
    pub(super) fn bind_into_root(
        &mut self,
        host: &Path,
        root: &Path,
        target: &Path,
        read_only: bool,
        tree: Option<std::os::fd::RawFd>,
    ) -> Result<(), PlanError> {
        self.folders_between(root, target)?;
        if std::fs::metadata(host).is_ok_and(|m| m.is_file()) {
            self.tolerate(
                InitOp::Mknod(cpath(target)?, libc::S_IFREG | 0o444, 0),
                libc::EEXIST,
                format!("creating the mount point of {}", host.display()),
            );
        } else {
            self.push(
                InitOp::Mkdir(cpath(target)?, 0o755),
                format!("creating {}", target.display()),
            );
        }
        match tree {
            Some(fd) => self.push(
                InitOp::MoveTree {
                    fd,
                    target: cpath(target)?,
                },
                format!("attaching the copy of {}", host.display()),
            ),
            None => {
                let op = self.bind(host, target, true)?;
                self.push(op, format!("binding {}", host.display()));
            }
        }
        if read_only {
            let op = Self::remount_read_only(target, NODEV)?;
            self.push(op, format!("making {} read-only", target.display()));
        }
        Ok(())
    }

    /// A private devpts instance at `<dev>/pts`, with `<dev>/ptmx` leading
    /// to it.
    pub(super) fn devpts(&mut self, dev: &Path) -> Result<(), PlanError> {
        self.mount(
            "devpts",
            &dev.join("pts"),
            "devpts",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        )?;
        self.tolerate(
            InitOp::Symlink {
                target: c("pts/ptmx")?,
                link: cpath(&dev.join("ptmx"))?,
            },
            libc::EEXIST,
            "creating /dev/ptmx".into(),
        );
        Ok(())
    }
}
