//! The plan of a cell's init process: PID 1 of the cell's pid namespace.
//!
//! auraed starts it with `clone3`, already inside the cell's cgroup and new
//! namespaces ([`crate::sys::init_process`]). It finishes the namespaces'
//! setup (hostname, `lo`, mounts and root filesystem) by running the steps
//! planned here, then reaps orphans until the cell is killed. Other
//! processes of the cell join its namespaces through `/proc/<pid>/ns/*`.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use crate::oci::minimal_dev;
use crate::sys::init_process::InitOp;

#[derive(Debug, Clone)]
pub struct InitConfig {
    pub name: String,
    pub new_uts: bool,
    pub new_net: bool,
    pub new_mount: bool,
    pub new_pid: bool,
    /// Pivot into this root filesystem (requires `new_mount`).
    pub rootfs: Option<PathBuf>,
    /// Mount an overlay at `rootfs` first.
    pub overlay: Option<Overlay>,
}

/// An overlay of a cached, read-only image rootfs and the cell's own
/// writable layer.
#[derive(Debug, Clone)]
pub struct Overlay {
    pub lower: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
}

impl Overlay {
    /// The overlayfs mount options; paths with the option separators are
    /// refused rather than misparsed.
    pub fn options(&self) -> Result<String, String> {
        let mut parts = Vec::new();
        for (key, path) in [
            ("lowerdir", &self.lower),
            ("upperdir", &self.upper),
            ("workdir", &self.work),
        ] {
            let p = path
                .to_str()
                .ok_or_else(|| format!("{key} {path:?} is not UTF-8"))?;
            if p.contains([',', ':', '\\']) {
                return Err(format!("{key} {p:?} contains ',', ':' or a backslash"));
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

fn c(s: impl AsRef<str>) -> Result<CString, String> {
    CString::new(s.as_ref()).map_err(|_| format!("{:?} contains a NUL byte", s.as_ref()))
}

fn cpath(p: &Path) -> Result<CString, String> {
    c(p.to_str().ok_or_else(|| format!("{p:?} is not UTF-8"))?)
}

impl Plan {
    fn push(&mut self, op: InitOp, what: impl Into<String>) {
        self.ops.push(op);
        self.descriptions.push(what.into());
    }

    fn mount(
        &mut self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: libc::c_ulong,
        data: Option<&str>,
    ) -> Result<(), String> {
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
    pub fn new(cfg: &InitConfig) -> Result<Plan, String> {
        let mut plan = Plan {
            ops: Vec::new(),
            descriptions: Vec::new(),
        };
        if cfg.new_uts {
            plan.push(InitOp::Hostname(c(&cfg.name)?), "setting the hostname");
        }
        if cfg.new_net {
            plan.push(
                InitOp::link_up("lo").ok_or("bad interface name")?,
                "bringing up lo",
            );
        }
        if !cfg.new_mount {
            return Ok(plan);
        }
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
        match &cfg.rootfs {
            Some(rootfs) => plan.pivot_into(rootfs, cfg.overlay.as_ref())?,
            None if cfg.new_pid => plan.mount(
                "proc",
                Path::new("/proc"),
                "proc",
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                None,
            )?,
            None => {}
        }
        Ok(plan)
    }

    /// Makes `rootfs` the root: a fresh /proc, a minimal /dev and a /tmp.
    fn minimal_dev(&mut self, dev: &Path) -> Result<(), String> {
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

    fn pivot_into(&mut self, rootfs: &Path, overlay: Option<&Overlay>) -> Result<(), String> {
        let nodev = libc::MS_NOSUID | libc::MS_NODEV;
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
        self.mount(
            "proc",
            &rootfs.join("proc"),
            "proc",
            nodev | libc::MS_NOEXEC,
            None,
        )?;
        self.mount(
            "tmpfs",
            &rootfs.join("tmp"),
            "tmpfs",
            nodev,
            Some("mode=1777"),
        )?;
        let dev = rootfs.join("dev");
        // A cached image has its minimal /dev already (see
        // oci::minimal_dev); any other root gets one on a tmpfs.
        if overlay.is_none() {
            self.minimal_dev(&dev)?;
        }
        self.mount(
            "tmpfs",
            &dev.join("shm"),
            "tmpfs",
            nodev | libc::MS_NOEXEC,
            Some("mode=1777"),
        )?;
        self.push(
            InitOp::Chdir(cpath(rootfs)?),
            "entering the root filesystem",
        );
        self.push(InitOp::PivotHere, "pivot_root");
        self.push(InitOp::Chdir(c("/")?), "chdir /");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(rootfs: Option<&str>) -> InitConfig {
        InitConfig {
            name: "web".into(),
            new_uts: true,
            new_net: true,
            new_mount: true,
            new_pid: true,
            rootfs: rootfs.map(PathBuf::from),
            overlay: None,
        }
    }

    #[test]
    fn host_view_cells_get_a_fresh_proc_and_no_pivot() {
        let plan = Plan::new(&cfg(None)).expect("plan");
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
    fn image_cells_pivot_last() {
        let plan = Plan::new(&cfg(Some("/var/lib/aurae/cells/web/rootfs"))).expect("plan");
        assert_eq!(plan.ops.len(), plan.descriptions.len());
        assert_eq!(
            plan.descriptions.last().map(String::as_str),
            Some("chdir /")
        );
        assert!(plan.descriptions.iter().any(|d| d == "pivot_root"));
        assert!(plan.descriptions.iter().any(|d| d == "creating /dev/null"));
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
