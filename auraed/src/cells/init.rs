//! The plan of a cell's init process: PID 1 of the cell's pid namespace.
//!
//! auraed starts it with `clone3`, already inside the cell's cgroup and new
//! namespaces ([`crate::sys::init_process`]). It finishes the namespaces'
//! setup (hostname, `lo`, mounts and root filesystem) by running the steps
//! planned here, then reaps orphans until the cell is killed. Other
//! processes of the cell join its namespaces through `/proc/<pid>/ns/*`.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use super::harden::KernelFs;
use super::Security;
use crate::oci::minimal_dev;
use crate::sys::init_process::InitOp;

/// The root a cell's processes see.
#[derive(Debug, Clone)]
pub enum Root {
    /// The host's mounts, in a private mount namespace.
    Host,
    /// The host's root, read-only, assembled at `at` (a jailed cell).
    /// `hidden` are auraed's own files, masked.
    HostReadOnly { at: PathBuf, hidden: Vec<PathBuf> },
    /// An image's root filesystem, mounted at `at`.
    Image {
        at: PathBuf,
        overlay: Option<Overlay>,
    },
}

#[derive(Debug, Clone)]
pub struct InitConfig {
    pub name: String,
    pub hostname: String,
    pub new_uts: bool,
    pub new_net: bool,
    pub new_mount: bool,
    pub new_pid: bool,
    /// Pivot into a root of the cell's own (requires `new_mount`).
    pub root: Root,
    pub security: Security,
    /// A detached copy of each of `security.mounts` that propagates, in
    /// order (see `sys::mount_propagation`), attached instead of a bind.
    pub trees: Vec<std::os::fd::RawFd>,
}

/// An overlay of a cached, read-only image rootfs and the cell's own
/// writable layer.
#[derive(Debug, Clone)]
pub struct Overlay {
    pub lower: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
}

/// Why a plan could not be made: a path or name the kernel can't take.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{0:?} contains a NUL byte")]
    Nul(String),
    #[error("path {0:?} is not UTF-8")]
    NotUtf8(PathBuf),
    #[error("overlay {key} {path:?} contains ',', ':' or a backslash")]
    OverlaySeparator { key: &'static str, path: PathBuf },
    #[error("{0:?} is not a valid interface name")]
    Interface(&'static str),
    #[error("a mount that propagates has no copy of its tree")]
    NoTree,
}

impl Overlay {
    /// The overlayfs mount options; paths with the option separators are
    /// refused rather than misparsed.
    pub fn options(&self) -> Result<String, PlanError> {
        let mut parts = Vec::new();
        for (key, path) in [
            ("lowerdir", &self.lower),
            ("upperdir", &self.upper),
            ("workdir", &self.work),
        ] {
            let p = path
                .to_str()
                .ok_or_else(|| PlanError::NotUtf8(path.clone()))?;
            if p.contains([',', ':', '\\']) {
                return Err(PlanError::OverlaySeparator {
                    key,
                    path: path.clone(),
                });
            }
            parts.push(format!("{key}={p}"));
        }
        Ok(parts.join(","))
    }
}

/// Setup steps with what each one does, for error messages.
pub struct Plan {
    pub ops: Vec<InitOp>,
    pub descriptions: Vec<String>,
}

pub(super) fn c(s: impl AsRef<str>) -> Result<CString, PlanError> {
    CString::new(s.as_ref()).map_err(|_| PlanError::Nul(s.as_ref().to_string()))
}

pub(super) fn cpath(p: &Path) -> Result<CString, PlanError> {
    c(p.to_str()
        .ok_or_else(|| PlanError::NotUtf8(p.to_path_buf()))?)
}

impl Plan {
    pub(super) fn push(&mut self, op: InitOp, what: impl Into<String>) {
        self.ops.push(op);
        self.descriptions.push(what.into());
    }

    pub(super) fn mount(
        &mut self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: libc::c_ulong,
        data: Option<&str>,
    ) -> Result<(), PlanError> {
        self.push(
            InitOp::Mount {
                source: Some(c(source)?),
                target: cpath(target)?,
                fstype: Some(c(fstype)?),
                flags,
                data: data.map(c).transpose()?,
            },
            format!("mounting {fstype} on {}", target.display()),
        );
        Ok(())
    }

    /// Plans the setup of a cell's namespaces.
    pub fn new(cfg: &InitConfig) -> Result<Plan, PlanError> {
        let mut plan = Plan {
            ops: Vec::new(),
            descriptions: Vec::new(),
        };
        if cfg.new_uts {
            plan.push(InitOp::Hostname(c(&cfg.hostname)?), "setting the hostname");
        }
        if cfg.new_net {
            plan.push(
                InitOp::link_up("lo").ok_or(PlanError::Interface("lo"))?,
                "bringing up lo",
            );
        }
        if !cfg.new_mount {
            return Ok(plan);
        }
        let sec = &cfg.security;
        // auraed's read-only binds, then the request's mounts.
        let binds: Vec<super::Bind> = sec
            .read_only_binds
            .iter()
            .map(|(host, inside)| super::Bind {
                host: host.clone(),
                inside: inside.clone(),
                read_only: true,
                propagation: super::Propagation::Private,
            })
            .chain(sec.mounts.iter().cloned())
            .collect();
        // Each bind that propagates with its detached copy.
        let mut trees = cfg.trees.iter();
        let binds = binds
            .into_iter()
            .map(|b| {
                let tree = match b.propagation {
                    super::Propagation::Private => None,
                    _ => Some(*trees.next().ok_or(PlanError::NoTree)?),
                };
                Ok((b, tree))
            })
            .collect::<Result<Vec<_>, PlanError>>()?;
        plan.push(
            InitOp::Mount {
                source: None,
                target: c("/")?,
                fstype: None,
                flags: libc::MS_REC | libc::MS_PRIVATE,
                data: None,
            },
            "making / private",
        );
        let kernel_fs = KernelFs {
            privileged: sec.privileged,
            net_sysctls: sec.net_sysctls,
            delegate_cgroup: sec.delegate_cgroup,
            replace_host: false,
        };
        match &cfg.root {
            Root::Host if sec.privileged => {
                // The host's view as it is, with a /proc of the cell's own
                // pid namespace.
                if cfg.new_pid {
                    plan.mount("proc", Path::new("/proc"), "proc", NOEXEC, None)?;
                }
            }
            Root::Host => plan.kernel_fs(
                Path::new("/"),
                KernelFs {
                    replace_host: true,
                    ..kernel_fs
                },
            )?,
            Root::HostReadOnly { at, hidden } => {
                plan.host_root_read_only(at, hidden, &sec.writable_paths)?;
                plan.own_root(at, true, kernel_fs, &sec.devices, &binds, false)?;
            }
            Root::Image { at, overlay } => {
                plan.image_root(at, overlay.as_ref())?;
                let fresh_dev = overlay.is_none();
                let ro = sec.read_only_root;
                plan.own_root(at, fresh_dev, kernel_fs, &sec.devices, &binds, ro)?;
            }
        }
        plan.request_masks(&sec.masked_paths, &sec.readonly_paths)?;
        Ok(plan)
    }

    /// What the first process of a `pid_one` cell does in its own PID and
    /// mount namespaces before it runs: a /proc of its namespace over the
    /// cell's, with the cell's masks (the OCI defaults', and the request's
    /// under /proc). Its other mounts are the cell's (copies, still
    /// propagating as they did).
    pub fn pid_one(sec: &Security) -> Result<Vec<InitOp>, PlanError> {
        let mut plan = Plan {
            ops: Vec::new(),
            descriptions: Vec::new(),
        };
        plan.proc_fs(
            Path::new("/proc"),
            &KernelFs {
                privileged: sec.privileged,
                net_sysctls: sec.net_sysctls,
                delegate_cgroup: false,
                replace_host: false,
            },
        )?;
        let under_proc = |paths: &[PathBuf]| -> Vec<PathBuf> {
            paths
                .iter()
                .filter(|p| p.starts_with("/proc"))
                .cloned()
                .collect()
        };
        plan.request_masks(
            &under_proc(&sec.masked_paths),
            &under_proc(&sec.readonly_paths),
        )?;
        Ok(plan.ops)
    }

    /// A minimal /dev on a tmpfs at `dev`.
    fn minimal_dev(&mut self, dev: &Path) -> Result<(), PlanError> {
        self.mount(
            "tmpfs",
            dev,
            "tmpfs",
            libc::MS_NOSUID | libc::MS_STRICTATIME,
            Some("mode=755,size=65536k"),
        )?;
        for (name, major, minor) in minimal_dev::DEVICES {
            self.push(
                InitOp::Mknod(
                    cpath(&dev.join(name))?,
                    libc::S_IFCHR | 0o666,
                    libc::makedev(major, minor),
                ),
                format!("creating /dev/{name}"),
            );
        }
        for (link, target) in minimal_dev::LINKS {
            self.push(
                InitOp::Symlink {
                    target: c(target)?,
                    link: cpath(&dev.join(link))?,
                },
                format!("creating /dev/{link}"),
            );
        }
        for dir in minimal_dev::DIRS {
            self.push(
                InitOp::Mkdir(cpath(&dev.join(dir))?, 0o755),
                format!("creating /dev/{dir}"),
            );
        }
        Ok(())
    }

    /// Mounts an image's root at `rootfs`, with the mount points a cell
    /// needs.
    fn image_root(&mut self, rootfs: &Path, overlay: Option<&Overlay>) -> Result<(), PlanError> {
        match overlay {
            Some(o) => self.mount("overlay", rootfs, "overlay", 0, Some(&o.options()?))?,
            None => self.push(
                InitOp::Mount {
                    source: Some(cpath(rootfs)?),
                    target: cpath(rootfs)?,
                    fstype: None,
                    flags: libc::MS_BIND | libc::MS_REC,
                    data: None,
                },
                "bind-mounting the root filesystem",
            ),
        }
        for dir in ["proc", "dev", "tmp", "sys"] {
            self.push(
                InitOp::Mkdir(cpath(&rootfs.join(dir))?, 0o755),
                format!("creating /{dir}"),
            );
        }
        Ok(())
    }

    /// Kernel filesystems, /tmp and /dev in a root of the cell's own, then
    /// pivots into it. `fresh_dev`: /dev gets a minimal set on a tmpfs (a
    /// cached image has one already, see `oci::minimal_dev`); `read_only`:
    /// the root's own mount is read-only.
    fn own_root(
        &mut self,
        rootfs: &Path,
        fresh_dev: bool,
        kernel_fs: KernelFs,
        devices: &[PathBuf],
        binds: &[(super::Bind, Option<std::os::fd::RawFd>)],
        read_only: bool,
    ) -> Result<(), PlanError> {
        self.kernel_fs(rootfs, kernel_fs)?;
        self.mount(
            "tmpfs",
            &rootfs.join("tmp"),
            "tmpfs",
            NODEV,
            Some("mode=1777"),
        )?;
        let dev = rootfs.join("dev");
        if fresh_dev {
            self.minimal_dev(&dev)?;
        }
        self.mount(
            "tmpfs",
            &dev.join("shm"),
            "tmpfs",
            NOEXEC,
            Some("mode=1777"),
        )?;
        self.devpts(&dev)?;
        self.devices(&dev, devices)?;
        for (b, tree) in binds {
            let inside = &b.inside;
            self.bind_into_root(
                &b.host,
                rootfs,
                &rootfs.join(inside.strip_prefix("/").unwrap_or(inside)),
                b.read_only,
                *tree,
            )?;
        }
        if read_only {
            // Only the root's own mount: what is mounted on it keeps its
            // mode.
            self.push(
                Self::remount_read_only(rootfs, 0)?,
                "making the root read-only",
            );
        }
        self.push(
            InitOp::Chdir(cpath(rootfs)?),
            "entering the root filesystem",
        );
        self.push(InitOp::PivotHere, "pivot_root");
        self.push(InitOp::Chdir(c("/")?), "chdir /");
        Ok(())
    }
}

const NODEV: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV;
const NOEXEC: libc::c_ulong = NODEV | libc::MS_NOEXEC;

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(root: Root) -> InitConfig {
        InitConfig {
            name: "web".into(),
            hostname: "web".into(),
            new_uts: true,
            new_net: true,
            new_mount: true,
            new_pid: true,
            root,
            security: Security::default(),
            trees: Vec::new(),
        }
    }

    fn image() -> Root {
        Root::Image {
            at: "/var/lib/aurae/cells/web/rootfs".into(),
            overlay: None,
        }
    }

    fn has(plan: &Plan, what: &str) -> bool {
        plan.descriptions.iter().any(|d| d == what)
    }

    #[test]
    fn privileged_host_view_cells_get_a_fresh_proc_and_nothing_else() {
        let mut c = cfg(Root::Host);
        c.security.privileged = true;
        let plan = Plan::new(&c).expect("plan");
        assert_eq!(
            plan.descriptions,
            [
                "setting the hostname",
                "bringing up lo",
                "making / private",
                "mounting proc on /proc"
            ]
        );
    }

    #[test]
    fn host_view_cells_replace_the_hosts_proc_and_sys_with_sealed_ones() {
        let plan = Plan::new(&cfg(Root::Host)).expect("plan");
        for what in [
            "detaching the host's /proc",
            "detaching the host's /sys",
            "mounting proc on /proc",
            "making /proc/sys read-only",
            "making /proc/sysrq-trigger read-only",
            "masking /proc/kcore",
            "masking /proc/acpi",
            "mounting sysfs on /sys",
            "masking /sys/firmware",
            "mounting cgroup2 on /sys/fs/cgroup",
        ] {
            assert!(has(&plan, what), "{what}: {:?}", plan.descriptions);
        }
        assert!(!has(&plan, "pivot_root"));
        // /proc/sys is bound before it is made read-only, and /proc is
        // mounted before either.
        let at = |w: &str| plan.descriptions.iter().position(|d| d == w).expect(w);
        assert!(at("mounting proc on /proc") < at("binding /proc/sys"));
        assert!(at("binding /proc/sys") < at("making /proc/sys read-only"));
        assert!(at("mounting sysfs on /sys") < at("mounting cgroup2 on /sys/fs/cgroup"));
    }

    #[test]
    fn a_read_only_root_and_the_requests_masks_come_in_the_cells_own_view() {
        let mut c = cfg(image());
        c.security.read_only_root = true;
        c.security.masked_paths = vec!["/bin/ls".into()];
        c.security.readonly_paths = vec!["/tmp".into()];
        let plan = Plan::new(&c).expect("plan");
        let at = |w: &str| plan.descriptions.iter().position(|d| d == w).expect(w);
        // The root's own mount, last before the pivot; the masks after it.
        assert!(
            at("mounting tmpfs on /var/lib/aurae/cells/web/rootfs/tmp")
                < at("making the root read-only")
        );
        assert!(at("making the root read-only") < at("pivot_root"));
        for what in [
            "masking /bin/ls (a file)",
            "masking /bin/ls (a folder)",
            "binding /tmp on itself",
            "making /tmp read-only",
        ] {
            assert!(at("pivot_root") < at(what), "{what}");
        }
        assert!(!has(
            &Plan::new(&cfg(image())).expect("plan"),
            "making the root read-only"
        ));
    }

    #[test]
    fn sysfs_and_cgroupfs_are_read_only_unless_asked() {
        let flags_of = |plan: &Plan, fstype: &str| {
            plan.ops
                .iter()
                .find_map(|op| match op {
                    InitOp::Mount {
                        fstype: Some(t),
                        flags,
                        ..
                    } if t.to_str() == Ok(fstype) => Some(*flags),
                    _ => None,
                })
                .expect(fstype)
        };
        let plan = Plan::new(&cfg(image())).expect("plan");
        assert_ne!(flags_of(&plan, "sysfs") & libc::MS_RDONLY, 0);
        assert_ne!(flags_of(&plan, "cgroup2") & libc::MS_RDONLY, 0);
        let mut delegated = cfg(image());
        delegated.security.delegate_cgroup = true;
        let plan = Plan::new(&delegated).expect("plan");
        assert_ne!(flags_of(&plan, "sysfs") & libc::MS_RDONLY, 0);
        assert_eq!(flags_of(&plan, "cgroup2") & libc::MS_RDONLY, 0);
    }

    #[test]
    fn net_sysctls_stay_writable_inside_a_read_only_proc_sys() {
        let mut c = cfg(image());
        c.security.net_sysctls = true;
        let plan = Plan::new(&c).expect("plan");
        let at = |w: &str| plan.descriptions.iter().position(|d| d == w).expect(w);
        assert!(at("keeping /proc/sys/net writable") < at("binding /proc/sys"));
    }

    #[test]
    fn image_cells_pivot_last() {
        let plan = Plan::new(&cfg(image())).expect("plan");
        assert_eq!(plan.ops.len(), plan.descriptions.len());
        assert_eq!(
            plan.descriptions.last().map(String::as_str),
            Some("chdir /")
        );
        assert!(has(&plan, "pivot_root"));
        assert!(has(&plan, "creating /dev/null"));
        assert!(has(&plan, "making /proc/sys read-only"));
    }

    #[test]
    fn jailed_host_roots_are_read_only_with_named_exceptions() {
        let mut c = cfg(Root::HostReadOnly {
            at: "/s/cells/web/rootfs".into(),
            hidden: vec!["/tmp".into()],
        });
        c.security.writable_paths = vec!["/var/tmp".into()];
        c.security.devices = vec!["/dev/net/tun".into()];
        let plan = Plan::new(&c).expect("plan");
        let at = |w: &str| plan.descriptions.iter().position(|d| d == w).expect(w);
        assert!(at("binding the host's root") < at("making the host's root read-only"));
        assert!(at("detaching the host's /proc") < at("making the host's root read-only"));
        assert!(at("making the host's root read-only") < at("making /var/tmp writable"));
        assert!(at("making /var/tmp writable") < at("masking /s/cells/web/rootfs/etc/shadow"));
        assert!(
            at("masking /s/cells/web/rootfs/tmp") < at("mounting tmpfs on /s/cells/web/rootfs/tmp")
        );
        assert!(has(&plan, "creating /s/cells/web/rootfs/dev/net"));
        assert!(at("adding /dev/net/tun") < at("pivot_root"));
        assert!(has(&plan, "masking /s/cells/web/rootfs/etc/shadow"));
    }

    #[test]
    fn overlay_options_refuse_separators() {
        let o = Overlay {
            lower: "/a,b".into(),
            upper: "/u".into(),
            work: "/w".into(),
        };
        assert!(o.options().is_err());
        let o = Overlay {
            lower: "/l".into(),
            ..o
        };
        assert_eq!(
            o.options().expect("ok"),
            "lowerdir=/l,upperdir=/u,workdir=/w"
        );
    }
}
