//! Process creation with `clone3`.
//!
//! The child is placed in its cgroup by the kernel at clone time
//! (`CLONE_INTO_CGROUP`), so it is accounted and limited before it executes a
//! single instruction of the workload. A cell's namespaces are joined with
//! `setns` by a short-lived thread of auraed that then clones the workload
//! (the joined pid namespace applies to the thread's children), so the
//! workload is a direct child of auraed.
//!
//! auraed is multi-threaded, so between clone and exec the child may only use
//! raw syscalls: everything it needs is prepared before the clone, and errors
//! travel back to the parent over a close-on-exec pipe.

use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::clone::{clone3_vfork, reset_signals, CloneArgs, CLONE_INTO_CGROUP};
use super::pidfd;

/// Where the workload's namespaces come from.
pub enum NamespaceMode<'a> {
    /// Keep auraed's own namespaces.
    Host,
    /// Join the namespaces named by these `CLONE_NEW*` flags of the process
    /// behind this pidfd, in one `setns`.
    Join(BorrowedFd<'a>, libc::c_int),
}

/// Everything needed to start one process.
pub struct SpawnSpec<'a> {
    /// Paths to try in order; the first that exists is executed.
    pub candidates: Vec<CString>,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    pub cwd: Option<CString>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Supplementary groups, set (replacing the parent's) with a uid or gid.
    pub groups: Vec<u32>,
    /// Directory fd of the cgroup to start in.
    pub cgroup: Option<BorrowedFd<'a>>,
    pub namespaces: NamespaceMode<'a>,
    /// File descriptors for the child: (source, fd number in the child).
    pub fds: Vec<(OwnedFd, RawFd)>,
    /// Start a session whose controlling terminal is the child's fd 0.
    pub controlling_terminal: bool,
    /// Capabilities to keep (bit mask); all others are dropped from every set
    /// including the bounding set.
    pub caps_keep: Option<u64>,
    /// Of those, the ones raised in the ambient set (with `caps_keep`).
    pub caps_ambient: u64,
    pub no_new_privs: bool,
    /// Seccomp filters, installed in order right before exec.
    pub seccomp: Vec<Vec<libc::sock_filter>>,
    /// A PID namespace of the process's own, where it is PID 1, and a
    /// mount namespace of its own (copies of the joined ones' children):
    /// these ops run in them first (a /proc of its namespace).
    pub own_pid: Option<&'a [super::init_process::InitOp]>,
}

/// A started process: a direct child of the caller.
#[derive(Debug)]
pub struct Spawned {
    pub pid: i32,
    pub pidfd: OwnedFd,
}

/// The step at which starting a process failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum SpawnStage {
    Clone = 1,
    Fds = 2,
    Chdir = 3,
    Groups = 4,
    Gid = 5,
    Uid = 6,
    Capabilities = 7,
    NoNewPrivs = 8,
    Seccomp = 9,
    Exec = 10,
    Setns = 11,
    Terminal = 12,
    OwnPid = 13,
    Unknown = 99,
}

impl SpawnStage {
    fn from_u32(v: u32) -> Self {
        use SpawnStage::*;
        [
            Clone,
            Fds,
            Chdir,
            Groups,
            Gid,
            Uid,
            Capabilities,
            NoNewPrivs,
            Seccomp,
            Exec,
            Setns,
            Terminal,
            OwnPid,
        ]
        .into_iter()
        .find(|s| *s as u32 == v)
        .unwrap_or(Unknown)
    }

    pub fn describe(self) -> &'static str {
        match self {
            SpawnStage::Clone => "clone3",
            SpawnStage::Fds => "setting up stdio",
            SpawnStage::Chdir => "changing to the working directory",
            SpawnStage::Groups => "clearing supplementary groups",
            SpawnStage::Gid => "setting the gid",
            SpawnStage::Uid => "setting the uid",
            SpawnStage::Capabilities => "dropping capabilities",
            SpawnStage::NoNewPrivs => "setting no_new_privs",
            SpawnStage::Seccomp => "installing the seccomp filter",
            SpawnStage::Exec => "executing the command",
            SpawnStage::Setns => "joining the cell's namespaces",
            SpawnStage::Terminal => "making its terminal the controlling one (setsid, TIOCSCTTY)",
            SpawnStage::OwnPid => "setting up its own PID namespace (a /proc of its own)",
            SpawnStage::Unknown => "starting the process",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("{} failed: {source}", .stage.describe())]
    Child {
        stage: SpawnStage,
        source: io::Error,
    },
    #[error("preparing the process failed: {0}")]
    Prepare(io::Error),
}

impl SpawnError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            SpawnError::Child { source, .. } | SpawnError::Prepare(source) => source.raw_os_error(),
        }
    }
    /// The system call's error.
    pub fn into_source(self) -> io::Error {
        match self {
            SpawnError::Child { source, .. } | SpawnError::Prepare(source) => source,
        }
    }
    pub fn stage(&self) -> Option<SpawnStage> {
        match self {
            SpawnError::Child { stage, .. } => Some(*stage),
            SpawnError::Prepare(_) => None,
        }
    }
}

pub(super) const MSG_ERROR: u32 = 2;
const CAPS_VERSION_3: u32 = 0x2008_0522;
const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The spec flattened into raw pointers, ready for the child.
struct Prepared<'a> {
    candidates: &'a [CString],
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    cwd: Option<&'a CString>,
    uid: Option<u32>,
    gid: Option<u32>,
    groups: &'a [u32],
    fds: &'a [(RawFd, RawFd)],
    controlling_terminal: bool,
    caps_keep: Option<u64>,
    caps_ambient: u64,
    no_new_privs: bool,
    seccomp: Vec<libc::sock_fprog>,
    own_pid: Option<&'a [super::init_process::InitOp]>,
}

fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// Moves `fd` to a number at or above 64, so that no source collides with a
/// target number (0..=63) while the child rearranges them.
fn dup_high(fd: &OwnedFd) -> io::Result<OwnedFd> {
    let raw = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(64))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Starts a process as described by `spec`. Blocks until it has executed its
/// program (or failed to), so call it from a blocking context.
pub fn spawn(spec: SpawnSpec<'_>) -> Result<Spawned, SpawnError> {
    let (report_r, report_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| SpawnError::Prepare(e.into()))?;
    let mut owned_fds = Vec::with_capacity(spec.fds.len());
    for (fd, target) in &spec.fds {
        owned_fds.push((dup_high(fd).map_err(SpawnError::Prepare)?, *target));
    }
    let fds: Vec<(RawFd, RawFd)> = owned_fds
        .iter()
        .map(|(fd, t)| (fd.as_raw_fd(), *t))
        .collect();
    let report_raw = report_w.as_raw_fd();
    let (pid, child_pidfd) = match &spec.namespaces {
        NamespaceMode::Join(_, 0) => clone_workload(&spec, &fds, report_raw),
        NamespaceMode::Join(pidfd, flags) => {
            // A PID namespace of its own is made from the spawning thread's
            // (which must be the one it lives in: clone3 refuses another).
            let flags = if spec.own_pid.is_some() {
                *flags & !libc::CLONE_NEWPID
            } else {
                *flags
            };
            clone_joined(&spec, &fds, (pidfd.as_raw_fd(), flags), report_raw)?
        }
        NamespaceMode::Host => clone_workload(&spec, &fds, report_raw),
    };
    if pid < 0 {
        return Err(SpawnError::Child {
            stage: SpawnStage::Clone,
            source: io::Error::from_raw_os_error(child_pidfd),
        });
    }
    // SAFETY: with CLONE_PIDFD the kernel stored a new pidfd that we now own.
    let child = unsafe { OwnedFd::from_raw_fd(child_pidfd) };
    drop(report_w);
    drop(owned_fds);
    let error = read_reports(report_r);
    if let Some((stage, errno)) = error {
        let _ = pidfd::reap_blocking(&child);
        return Err(SpawnError::Child {
            stage: SpawnStage::from_u32(stage),
            source: io::Error::from_raw_os_error(errno as i32),
        });
    }
    Ok(Spawned {
        pid: pid as i32,
        pidfd: child,
    })
}

/// Clones the workload from the calling thread, vfork-style; the child runs
/// `child_exec`. Returns (pid, pidfd), or (-1, errno) if the clone failed.
fn clone_workload(
    spec: &SpawnSpec<'_>,
    fds: &[(RawFd, RawFd)],
    report_fd: RawFd,
) -> (libc::c_long, RawFd) {
    let prep = Prepared {
        candidates: &spec.candidates,
        argv: null_terminated(&spec.argv),
        envp: null_terminated(&spec.envp),
        cwd: spec.cwd.as_ref(),
        uid: spec.uid,
        gid: spec.gid,
        groups: &spec.groups,
        fds,
        controlling_terminal: spec.controlling_terminal,
        caps_keep: spec.caps_keep,
        caps_ambient: spec.caps_ambient,
        no_new_privs: spec.no_new_privs,
        seccomp: spec
            .seccomp
            .iter()
            .map(|p| libc::sock_fprog {
                len: p.len() as u16,
                filter: p.as_ptr() as *mut libc::sock_filter,
            })
            .collect(),
        own_pid: spec.own_pid,
    };
    let mut child_pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: libc::CLONE_PIDFD as u64,
        pidfd: &mut child_pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    if spec.own_pid.is_some() {
        args.flags |= (libc::CLONE_NEWPID | libc::CLONE_NEWNS) as u64;
    }
    if let Some(cg) = spec.cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = cg.as_raw_fd() as u64;
    }
    let child = ChildArgs {
        prep: &prep,
        report_fd,
    };
    match clone3_vfork(
        &mut args,
        workload_main,
        &child as *const ChildArgs<'_> as *const libc::c_void,
    ) {
        Ok(pid) => (pid, child_pidfd),
        Err(e) => (-1, e.raw_os_error().unwrap_or(libc::EIO)),
    }
}

/// What the vfork-style child gets.
struct ChildArgs<'a> {
    prep: &'a Prepared<'a>,
    report_fd: RawFd,
}

extern "C" fn workload_main(arg: *const libc::c_void) -> ! {
    // SAFETY: `arg` points at the ChildArgs in clone_workload's frame, which
    // stays alive while the parent thread is suspended by CLONE_VFORK.
    let child = unsafe { &*(arg as *const ChildArgs<'_>) };
    child_exec(child.prep, child.report_fd)
}

/// Clones the workload from a short-lived thread that first joins the
/// cell's namespaces. Namespaces belong to a thread, so the rest of auraed
/// never sees them, and the thread ends with the spawn. The workload is a
/// direct child of auraed, in the cell's pid namespace (which applies to
/// the children of the thread that joined it), with no intermediate process.
fn clone_joined(
    spec: &SpawnSpec<'_>,
    fds: &[(RawFd, RawFd)],
    (pidfd, flags): (RawFd, libc::c_int),
    report_fd: RawFd,
) -> Result<(libc::c_long, RawFd), SpawnError> {
    let setns_failed = |source: io::Error| SpawnError::Child {
        stage: SpawnStage::Setns,
        source,
    };
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("cell-spawn".into())
            .spawn_scoped(scope, || {
                // Joining a mount namespace needs a private fs context.
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)
                    .map_err(|e| setns_failed(e.into()))?;
                // SAFETY: setns on a pidfd the caller keeps open for the
                // spawn's duration; it changes this thread only.
                if unsafe { libc::setns(pidfd, flags) } != 0 {
                    return Err(setns_failed(io::Error::last_os_error()));
                }
                Ok(clone_workload(spec, fds, report_fd))
            })
            .map_err(SpawnError::Prepare)?;
        worker.join().unwrap_or_else(|_| {
            Err(SpawnError::Prepare(io::Error::other(
                "the spawning thread panicked",
            )))
        })
    })
}

/// Reads `[kind, a, b]` messages until every writer has closed the pipe
/// (which happens when the child execs or exits). Returns the first reported
/// error as (stage, errno).
pub(super) fn read_reports(report_r: OwnedFd) -> Option<(u32, u32)> {
    let mut file = std::fs::File::from(report_r);
    let mut error = None;
    let mut buf = [0u8; 12];
    loop {
        match file.read_exact(&mut buf) {
            Ok(()) => {
                let word =
                    |i: usize| u32::from_ne_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
                if word(0) == MSG_ERROR && error.is_none() {
                    error = Some((word(4), word(8)));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    error
}

pub(super) fn report(fd: RawFd, kind: u32, a: u32, b: u32) {
    let mut msg = [0u8; 12];
    msg[0..4].copy_from_slice(&kind.to_ne_bytes());
    msg[4..8].copy_from_slice(&a.to_ne_bytes());
    msg[8..12].copy_from_slice(&b.to_ne_bytes());
    // SAFETY: writes 12 bytes from a stack buffer to an fd we hold.
    unsafe { libc::write(fd, msg.as_ptr().cast(), msg.len()) };
}

fn errno() -> u32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0) as u32
}

fn fail(fd: RawFd, stage: SpawnStage) -> ! {
    report(fd, MSG_ERROR, stage as u32, errno());
    // SAFETY: _exit never returns and is async-signal-safe.
    unsafe { libc::_exit(127) }
}

/// Installs the seccomp filters in order (in the child: raw syscalls only).
fn install_seccomp(p: &Prepared<'_>, report_fd: RawFd) {
    for prog in &p.seccomp {
        // SAFETY: `prog` points at a filter the parent built before the
        // clone, alive until exec.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                SECCOMP_SET_MODE_FILTER,
                0,
                prog as *const libc::sock_fprog,
            )
        };
        if r != 0 {
            fail(report_fd, SpawnStage::Seccomp);
        }
    }
}

/// Runs in the child between clone and exec: raw syscalls only.
fn child_exec(p: &Prepared<'_>, report_fd: RawFd) -> ! {
    // SAFETY: every call below is a plain syscall on memory prepared by the
    // parent before the clone; nothing allocates or takes a lock.
    unsafe {
        reset_signals();
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());

        if let Some(ops) = p.own_pid {
            for op in ops {
                if !super::init_process::run_op(op) {
                    fail(report_fd, SpawnStage::OwnPid);
                }
            }
        }
        for (src, dst) in p.fds {
            if libc::dup2(*src, *dst) < 0 {
                fail(report_fd, SpawnStage::Fds);
            }
        }
        if p.controlling_terminal && (libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) != 0)
        {
            fail(report_fd, SpawnStage::Terminal);
        }
        if let Some(cwd) = &p.cwd {
            if libc::chdir(cwd.as_ptr()) != 0 {
                fail(report_fd, SpawnStage::Chdir);
            }
        }
        // Without no_new_privs, installing a filter takes CAP_SYS_ADMIN,
        // which the steps below may drop: the filters go in first (and have
        // to allow those steps, as any usable profile does).
        if !p.no_new_privs {
            install_seccomp(p, report_fd);
        }
        // Only the requested supplementary groups (none by default).
        if (p.uid.is_some() || p.gid.is_some() || !p.groups.is_empty())
            && libc::syscall(
                libc::SYS_setgroups,
                p.groups.len(),
                p.groups.as_ptr() as *const libc::gid_t,
            ) != 0
        {
            fail(report_fd, SpawnStage::Groups);
        }
        if let Some(gid) = p.gid {
            if libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0 {
                fail(report_fd, SpawnStage::Gid);
            }
        }
        if let Some(keep) = p.caps_keep {
            for cap in 0..64u64 {
                if keep & (1 << cap) == 0
                    && libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0
                    && errno() != libc::EINVAL as u32
                {
                    fail(report_fd, SpawnStage::Capabilities);
                }
            }
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            );
            // A user other than root keeps its permitted set through
            // setresuid only so, for the ambient ones to be raised.
            if p.caps_ambient != 0
                && p.uid.unwrap_or(0) != 0
                && libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0
            {
                fail(report_fd, SpawnStage::Capabilities);
            }
        }
        if let Some(uid) = p.uid {
            if libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0 {
                fail(report_fd, SpawnStage::Uid);
            }
        }
        if let Some(keep) = p.caps_keep {
            if p.uid.unwrap_or(0) == 0 || p.caps_ambient != 0 {
                let header = CapHeader {
                    version: CAPS_VERSION_3,
                    pid: 0,
                };
                // Inheritable: the ambient ones only (raising needs them
                // there), so no file's inheritable capabilities give more.
                let (lo, hi) = (keep as u32, (keep >> 32) as u32);
                let amb = p.caps_ambient;
                let data = [
                    CapData {
                        effective: lo,
                        permitted: lo,
                        inheritable: amb as u32,
                    },
                    CapData {
                        effective: hi,
                        permitted: hi,
                        inheritable: (amb >> 32) as u32,
                    },
                ];
                if libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) != 0
                {
                    fail(report_fd, SpawnStage::Capabilities);
                }
            }
            // Permitted and inheritable now: raised, they outlive execve.
            for cap in (0..64u64).filter(|c| p.caps_ambient & (1 << c) != 0) {
                if libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE, cap, 0, 0) != 0 {
                    fail(report_fd, SpawnStage::Capabilities);
                }
            }
        }
        if p.no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            fail(report_fd, SpawnStage::NoNewPrivs);
        }
        if p.no_new_privs {
            install_seccomp(p, report_fd);
        }
        let mut last = libc::ENOENT as u32;
        for cand in p.candidates {
            libc::execve(cand.as_ptr(), p.argv.as_ptr(), p.envp.as_ptr());
            let e = errno();
            if e != libc::ENOENT as u32 && e != libc::ENOTDIR as u32 {
                last = e;
            }
        }
        report(report_fd, MSG_ERROR, SpawnStage::Exec as u32, last);
        libc::_exit(127)
    }
}
