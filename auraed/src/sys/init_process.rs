//! The init process of a cell, started without an exec.
//!
//! `clone3` creates it inside the cell's cgroup and new namespaces; it then
//! runs a list of setup steps ([`InitOp`], prepared by the parent, executed
//! with raw syscalls only, since the parent is multi-threaded), reports
//! success by closing its end of the report pipe, and reaps orphans as PID 1
//! until the cell is killed. Skipping an exec of auraed's own (large)
//! binary is what makes a cell start in a couple of milliseconds.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::clone::{clone3, CloneArgs, CLONE_INTO_CGROUP};
use super::spawn::{read_reports, report, MSG_ERROR};

/// One setup step, run in order inside the new namespaces.
#[derive(Debug)]
pub enum InitOp {
    /// Join an existing namespace of the given `CLONE_NEW*` type (a ready
    /// one from the pool).
    JoinNs(RawFd, libc::c_int),
    Hostname(CString),
    /// Set a network interface up (SIOCSIFFLAGS).
    LinkUp([libc::c_char; libc::IFNAMSIZ]),
    Mount {
        source: Option<CString>,
        target: CString,
        fstype: Option<CString>,
        flags: libc::c_ulong,
        data: Option<CString>,
    },
    /// mkdir, tolerating an existing directory.
    Mkdir(CString, libc::mode_t),
    Mknod(CString, libc::mode_t, libc::dev_t),
    Symlink {
        target: CString,
        link: CString,
    },
    Chdir(CString),
    /// pivot_root(".", ".") then detach the old root.
    PivotHere,
    /// Detach the mount at this path and everything under it
    /// (`umount2(MNT_DETACH)`); a path that is not a mount point, or does
    /// not exist, is left as it is.
    Detach(CString),
    /// Make the mount at this path and every mount under it read-only,
    /// nosuid and nodev (`mount_setattr` with `AT_RECURSIVE`).
    ReadOnlyTree(CString),
    /// Run the op; its failure with this errno counts as success (a path
    /// the kernel or the image does not have, say).
    Tolerate(Box<InitOp>, libc::c_int),
    /// Attaches the detached mount tree `fd` (inherited from auraed, which
    /// holds it until the init is done) at `target` (`move_mount`).
    MoveTree {
        fd: RawFd,
        target: CString,
    },
}

/// `move_mount` flag (linux/mount.h): the source is the fd itself.
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
pub(super) struct MountAttr {
    pub(super) attr_set: u64,
    pub(super) attr_clr: u64,
    pub(super) propagation: u64,
    pub(super) userns_fd: u64,
}

pub(super) const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub(super) const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub(super) const MOUNT_ATTR_NODEV: u64 = 0x4;

impl InitOp {
    /// A network interface name as `ifr_name`.
    pub fn link_up(name: &str) -> Option<InitOp> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
            return None;
        }
        let mut ifname = [0 as libc::c_char; libc::IFNAMSIZ];
        for (dst, src) in ifname.iter_mut().zip(bytes) {
            *dst = *src as libc::c_char;
        }
        Some(InitOp::LinkUp(ifname))
    }
}

/// A failed setup step: its index in the op list and the errno.
#[derive(Debug)]
pub struct InitError {
    pub op: usize,
    pub source: io::Error,
}

/// Starts the init process. On success it has completed every op.
pub fn spawn_init(
    cgroup: BorrowedFd<'_>,
    namespaces: libc::c_int,
    ops: &[InitOp],
) -> Result<super::Spawned, InitError> {
    let prepare = |e: io::Error| InitError {
        op: usize::MAX,
        source: e,
    };
    let (report_r, report_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| prepare(e.into()))?;
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: libc::CLONE_PIDFD as u64 | namespaces as u64 | CLONE_INTO_CGROUP,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..Default::default()
    };
    let report_raw = report_w.as_raw_fd();
    let pid = clone3(&mut args);
    if pid == 0 {
        init_main(ops, report_raw)
    }
    if pid < 0 {
        return Err(prepare(io::Error::last_os_error()));
    }
    // SAFETY: CLONE_PIDFD stored a new pidfd that we now own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    drop(report_w);
    let failure = read_reports(report_r);
    if let Some((op, errno)) = failure {
        let _ = super::pidfd::reap_blocking(&pidfd);
        return Err(InitError {
            op: op as usize,
            source: io::Error::from_raw_os_error(errno as i32),
        });
    }
    Ok(super::Spawned {
        pid: pid as i32,
        pidfd,
    })
}

fn errno() -> u32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0) as u32
}

fn opt_ptr(s: &Option<CString>) -> *const libc::c_char {
    s.as_ref().map(|c| c.as_ptr()).unwrap_or(std::ptr::null())
}

/// Runs one op; returns false (with errno set) on failure.
pub(super) fn run_op(op: &InitOp) -> bool {
    // SAFETY: each call is a plain syscall on memory prepared by the parent
    // before the clone; nothing allocates or takes a lock.
    unsafe {
        match op {
            InitOp::JoinNs(fd, nstype) => libc::setns(*fd, *nstype) == 0,
            InitOp::Hostname(name) => libc::sethostname(name.as_ptr(), name.as_bytes().len()) == 0,
            InitOp::LinkUp(ifname) => {
                let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
                if sock < 0 {
                    return false;
                }
                let mut req: libc::ifreq = std::mem::zeroed();
                req.ifr_name = *ifname;
                let mut ok = libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req) == 0;
                if ok {
                    req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
                    ok = libc::ioctl(sock, libc::SIOCSIFFLAGS, &req) == 0;
                }
                let saved = errno();
                libc::close(sock);
                *libc::__errno_location() = saved as i32;
                ok
            }
            InitOp::Mount {
                source,
                target,
                fstype,
                flags,
                data,
            } => {
                libc::mount(
                    opt_ptr(source),
                    target.as_ptr(),
                    opt_ptr(fstype),
                    *flags,
                    opt_ptr(data).cast(),
                ) == 0
            }
            InitOp::Mkdir(path, mode) => {
                libc::mkdir(path.as_ptr(), *mode) == 0 || errno() == libc::EEXIST as u32
            }
            InitOp::Mknod(path, mode, dev) => libc::mknod(path.as_ptr(), *mode, *dev) == 0,
            InitOp::Symlink { target, link } => libc::symlink(target.as_ptr(), link.as_ptr()) == 0,
            InitOp::Chdir(path) => libc::chdir(path.as_ptr()) == 0,
            InitOp::PivotHere => {
                let dot = c".".as_ptr();
                libc::syscall(libc::SYS_pivot_root, dot, dot) == 0
                    && libc::umount2(dot, libc::MNT_DETACH) == 0
            }
            InitOp::Detach(path) => {
                libc::umount2(path.as_ptr(), libc::MNT_DETACH) == 0
                    || matches!(errno() as i32, libc::EINVAL | libc::ENOENT)
            }
            InitOp::ReadOnlyTree(path) => {
                let attr = MountAttr {
                    attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
                    attr_clr: 0,
                    propagation: 0,
                    userns_fd: 0,
                };
                libc::syscall(
                    libc::SYS_mount_setattr,
                    libc::AT_FDCWD,
                    path.as_ptr(),
                    libc::AT_RECURSIVE as libc::c_uint,
                    &attr as *const MountAttr,
                    std::mem::size_of::<MountAttr>(),
                ) == 0
            }
            InitOp::Tolerate(op, tolerated) => run_op(op) || errno() as i32 == *tolerated,
            InitOp::MoveTree { fd, target } => {
                libc::syscall(
                    libc::SYS_move_mount,
                    *fd,
                    c"".as_ptr(),
                    libc::AT_FDCWD,
                    target.as_ptr(),
                    MOVE_MOUNT_F_EMPTY_PATH,
                ) == 0
            }
        }
    }
}

/// The init process: set up, report, then reap forever. Raw syscalls only.
fn init_main(ops: &[InitOp], report_fd: RawFd) -> ! {
    // SAFETY: plain syscalls on stack memory; this process is a fresh,
    // single-threaded copy of the parent and never returns to its code.
    unsafe {
        // Behave like a freshly executed process: default signal handlers
        // (the parent's would run parent code) and nothing blocked.
        for sig in 1..libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        libc::prctl(
            libc::PR_SET_NAME,
            c"cell-init".as_ptr() as libc::c_ulong,
            0,
            0,
            0,
        );
        libc::umask(0o022);

        for (i, op) in ops.iter().enumerate() {
            if !run_op(op) {
                report(report_fd, MSG_ERROR, i as u32, errno());
                libc::_exit(1);
            }
        }
        // Only now (the ops may use inherited fds, such as a namespace to
        // join) close everything but stdio; closing the report pipe last
        // tells the parent the setup is done.
        if report_fd > 3 {
            libc::syscall(libc::SYS_close_range, 3u32, (report_fd - 1) as u32, 0u32);
        }
        libc::syscall(
            libc::SYS_close_range,
            (report_fd + 1) as u32,
            u32::MAX,
            0u32,
        );
        libc::close(report_fd);

        // PID 1 duty: reap orphans. SIGCHLD stays blocked except while
        // suspended, so no exit is missed between wait4 and the suspend.
        let mut chld: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut chld);
        libc::sigaddset(&mut chld, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &chld, std::ptr::null_mut());
        libc::signal(libc::SIGCHLD, noop as *const () as libc::sighandler_t);
        let empty: libc::sigset_t = std::mem::zeroed();
        loop {
            let r = libc::wait4(-1, std::ptr::null_mut(), libc::__WALL, std::ptr::null_mut());
            if r < 0 && errno() == libc::ECHILD as u32 {
                libc::sigsuspend(&empty);
            }
        }
    }
}

extern "C" fn noop(_: libc::c_int) {}
