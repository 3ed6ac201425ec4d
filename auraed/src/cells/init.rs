//! The init process of a cell: PID 1 of the cell's pid namespace.
//!
//! auraed starts it (re-executing its own binary as `auraed cell-init`) with
//! `clone3`, already inside the cell's cgroup and new namespaces. It finishes
//! the namespaces' setup (hostname, `lo`, mounts and root filesystem), reports
//! readiness on fd 4, and then reaps orphans until the cell is killed. Other
//! processes of the cell join its namespaces through `/proc/<pid>/ns/*`.
//!
//! It reads its [`InitConfig`] as JSON from fd 3. It never starts threads:
//! the single-threaded runtime used for netlink is dropped before readiness.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd::{chdir, pivot_root, sethostname};

/// fd from which cell-init reads its config.
pub const CONFIG_FD: i32 = 3;
/// fd on which cell-init reports "ok" or an error message.
pub const STATUS_FD: i32 = 4;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct InitConfig {
    pub name: String,
    pub new_uts: bool,
    pub new_net: bool,
    pub new_mount: bool,
    pub new_pid: bool,
    /// Pivot into this root filesystem (requires `new_mount`).
    pub rootfs: Option<PathBuf>,
}

/// Entry point of `auraed cell-init`. Never returns.
pub fn main() -> ! {
    let mut config_pipe = crate::sys::take_inherited_fd(CONFIG_FD);
    let mut status = crate::sys::take_inherited_fd(STATUS_FD);
    let mut text = String::new();
    let result = config_pipe
        .read_to_string(&mut text)
        .map_err(|e| format!("reading the config: {e}"))
        .and_then(|_| serde_json::from_str::<InitConfig>(&text).map_err(|e| format!("parsing the config: {e}")))
        .and_then(|cfg| setup(&cfg));
    drop(config_pipe);
    match result {
        Ok(()) => {
            let _ = status.write_all(b"ok");
            drop(status);
            reap_forever()
        }
        Err(msg) => {
            let _ = status.write_all(msg.as_bytes());
            std::process::exit(1)
        }
    }
}

fn setup(cfg: &InitConfig) -> Result<(), String> {
    if cfg.new_uts {
        sethostname(&cfg.name).map_err(|e| format!("setting the hostname: {e}"))?;
    }
    if cfg.new_net {
        crate::net::link_up_blocking("lo").map_err(|e| format!("bringing up lo: {e}"))?;
    }
    if cfg.new_mount {
        mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
            .map_err(|e| format!("making / private: {e}"))?;
        match &cfg.rootfs {
            Some(rootfs) => pivot_into(rootfs)?,
            None if cfg.new_pid => {
                mount_fs("proc", "/proc", "proc", MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC, None)?
            }
            None => {}
        }
    }
    Ok(())
}

fn mount_fs(src: &str, target: &str, fstype: &str, flags: MsFlags, data: Option<&str>) -> Result<(), String> {
    mount(Some(src), target, Some(fstype), flags, data).map_err(|e| format!("mounting {fstype} on {target}: {e}"))
}

/// Makes `rootfs` the root: a fresh /proc, a minimal /dev and a /tmp.
fn pivot_into(rootfs: &Path) -> Result<(), String> {
    let at = |p: &str| rootfs.join(p);
    let s = |p: PathBuf| p.to_string_lossy().into_owned();
    mount(Some(rootfs), rootfs, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .map_err(|e| format!("bind-mounting the root filesystem: {e}"))?;
    for dir in ["proc", "dev", "tmp", "sys"] {
        std::fs::create_dir_all(at(dir)).map_err(|e| format!("creating /{dir}: {e}"))?;
    }
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount_fs("proc", &s(at("proc")), "proc", nodev | MsFlags::MS_NOEXEC, None)?;
    mount_fs("tmpfs", &s(at("dev")), "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME, Some("mode=755,size=65536k"))?;
    mount_fs("tmpfs", &s(at("tmp")), "tmpfs", nodev, Some("mode=1777"))?;
    for (name, major, minor) in [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)] {
        mknod(
            &at("dev").join(name),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        )
        .map_err(|e| format!("creating /dev/{name}: {e}"))?;
        let _ = nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            &at("dev").join(name),
            Mode::from_bits_truncate(0o666),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        );
    }
    for (link, target) in [("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")] {
        std::os::unix::fs::symlink(target, at("dev").join(link)).map_err(|e| format!("creating /dev/{link}: {e}"))?;
    }
    for dir in ["pts", "shm"] {
        std::fs::create_dir_all(at("dev").join(dir)).map_err(|e| format!("creating /dev/{dir}: {e}"))?;
    }
    mount_fs("tmpfs", &s(at("dev/shm")), "tmpfs", nodev | MsFlags::MS_NOEXEC, Some("mode=1777"))?;
    chdir(rootfs).map_err(|e| format!("entering the root filesystem: {e}"))?;
    pivot_root(".", ".").map_err(|e| format!("pivot_root: {e}"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| format!("detaching the old root: {e}"))?;
    chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}

/// PID 1 duty: reap every orphan, forever. The cell ends with `cgroup.kill`.
fn reap_forever() -> ! {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal};
    use nix::sys::wait::{waitpid, WaitPidFlag};
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&chld), None);
    crate::sys::install_noop_handler(Signal::SIGCHLD);
    loop {
        match waitpid(None::<nix::unistd::Pid>, Some(WaitPidFlag::__WALL)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            // No children right now: sleep until one exits (an orphan that
            // was reparented to us); SIGCHLD is unblocked atomically.
            Err(_) => SigSet::empty().suspend().unwrap_or(()),
        }
    }
}
