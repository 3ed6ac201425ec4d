//! Process creation with `clone3`.
//!
//! The child is placed in its cgroup by the kernel at clone time
//! (`CLONE_INTO_CGROUP`), so it is accounted and limited before it executes a
//! single instruction of the workload. Namespaces are either created by the
//! same clone, or joined with `setns` in an intermediate child that then
//! clones the workload with `CLONE_PARENT` (the pid namespace only applies to
//! children of the caller), so the workload is a direct child of auraed.
//!
//! auraed is multi-threaded, so between clone and exec the child may only use
//! raw syscalls: everything it needs is prepared before the clone, and errors
//! travel back to the parent over a close-on-exec pipe.

use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::pidfd;

/// Where the workload's namespaces come from.
pub enum NamespaceMode<'a> {
    /// Keep auraed's own namespaces.
    Host,
    /// Create the namespaces named by these `CLONE_NEW*` flags.
    New(libc::c_int),
    /// Join these namespaces (an nsfs fd and its `CLONE_NEW*` type each),
    /// in order.
    Join(Vec<(BorrowedFd<'a>, libc::c_int)>),
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
    /// Directory fd of the cgroup to start in.
    pub cgroup: Option<BorrowedFd<'a>>,
    pub namespaces: NamespaceMode<'a>,
    /// File descriptors for the child: (source, fd number in the child).
    pub fds: Vec<(OwnedFd, RawFd)>,
    /// Capabilities to keep (bit mask); all others are dropped from every set
    /// including the bounding set.
    pub caps_keep: Option<u64>,
    pub no_new_privs: bool,
    /// Seccomp filters, installed in order right before exec.
    pub seccomp: Vec<Vec<libc::sock_filter>>,
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
        ]
        .into_iter()
        .find(|s| *s as u32 == v)
        .unwrap_or(Unknown)
    }

    fn describe(self) -> &'static str {
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
    pub fn stage(&self) -> Option<SpawnStage> {
        match self {
            SpawnError::Child { stage, .. } => Some(*stage),
            SpawnError::Prepare(_) => None,
        }
    }
}

/// `struct clone_args` of `<linux/sched.h>` (version 2, with `cgroup`).
#[repr(C)]
#[derive(Default)]
pub(super) struct CloneArgs {
    pub(super) flags: u64,
    pub(super) pidfd: u64,
    pub(super) child_tid: u64,
    pub(super) parent_tid: u64,
    pub(super) exit_signal: u64,
    pub(super) stack: u64,
    pub(super) stack_size: u64,
    pub(super) tls: u64,
    pub(super) set_tid: u64,
    pub(super) set_tid_size: u64,
    pub(super) cgroup: u64,
}

/// `CLONE_INTO_CGROUP` (Linux 5.7), which needs a 64-bit flags word.
pub(super) const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
const MSG_PID: u32 = 1;
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
struct Prepared {
    candidates: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    cwd: Option<CString>,
    uid: Option<u32>,
    gid: Option<u32>,
    fds: Vec<(RawFd, RawFd)>,
    caps_keep: Option<u64>,
    no_new_privs: bool,
    seccomp: Vec<libc::sock_fprog>,
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

pub(super) fn clone3(args: &mut CloneArgs) -> libc::c_long {
    // SAFETY: clone3 reads `args`, which lives on our stack and has the size
    // we pass. With a zero stack the child continues on a copy of this stack,
    // like fork(); the child only runs `child_exec`/`intermediate`, which never
    // return and use raw syscalls only.
    unsafe {
        libc::syscall(
            libc::SYS_clone3,
            args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    }
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
    drop(spec.fds);
    let argv = null_terminated(&spec.argv);
    let envp = null_terminated(&spec.envp);
    let prep = Prepared {
        candidates: spec.candidates,
        argv,
        envp,
        cwd: spec.cwd,
        uid: spec.uid,
        gid: spec.gid,
        fds: owned_fds
            .iter()
            .map(|(fd, t)| (fd.as_raw_fd(), *t))
            .collect(),
        caps_keep: spec.caps_keep,
        no_new_privs: spec.no_new_privs,
        seccomp: spec
            .seccomp
            .iter()
            .map(|p| libc::sock_fprog {
                len: p.len() as u16,
                filter: p.as_ptr() as *mut libc::sock_filter,
            })
            .collect(),
    };

    let mut child_pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: libc::CLONE_PIDFD as u64,
        pidfd: &mut child_pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    if let Some(cg) = spec.cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = cg.as_raw_fd() as u64;
    }
    let joins: Vec<(RawFd, libc::c_int)> = match &spec.namespaces {
        NamespaceMode::Host => Vec::new(),
        NamespaceMode::New(flags) => {
            args.flags |= *flags as u64;
            Vec::new()
        }
        NamespaceMode::Join(list) => list.iter().map(|(fd, t)| (fd.as_raw_fd(), *t)).collect(),
    };
    let joining = matches!(spec.namespaces, NamespaceMode::Join(_));
    let report_raw = report_w.as_raw_fd();

    let pid = clone3(&mut args);
    if pid == 0 {
        if joining {
            intermediate(&prep, &joins, report_raw)
        }
        child_exec(&prep, report_raw)
    }
    if pid < 0 {
        return Err(SpawnError::Child {
            stage: SpawnStage::Clone,
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: with CLONE_PIDFD the kernel stored a new pidfd that we now own.
    let child = unsafe { OwnedFd::from_raw_fd(child_pidfd) };
    drop(report_w);
    drop(owned_fds);
    let (reported_pid, error) = read_reports(report_r);
    let error = error.map(|(stage, errno)| SpawnError::Child {
        stage: SpawnStage::from_u32(stage),
        source: io::Error::from_raw_os_error(errno as i32),
    });

    if !joining {
        if let Some(err) = error {
            let _ = pidfd::reap_blocking(&child);
            return Err(err);
        }
        return Ok(Spawned {
            pid: pid as i32,
            pidfd: child,
        });
    }
    // The intermediate exits right after cloning the workload.
    let _ = pidfd::reap_blocking(&child);
    let workload = match reported_pid {
        Some(p) => Some((p, pidfd::open(p).map_err(SpawnError::Prepare)?)),
        None => None,
    };
    match (workload, error) {
        (Some((_, fd)), Some(err)) => {
            let _ = pidfd::reap_blocking(&fd);
            Err(err)
        }
        (None, Some(err)) => Err(err),
        (Some((pid, fd)), None) => Ok(Spawned { pid, pidfd: fd }),
        (None, None) => Err(SpawnError::Child {
            stage: SpawnStage::Unknown,
            source: io::Error::other("the intermediate process exited without reporting"),
        }),
    }
}

/// Reads `[kind, a, b]` messages until every writer has closed the pipe
/// (which happens when the children exec or exit). Returns the reported pid
/// and the first reported error as (stage, errno).
pub(super) fn read_reports(report_r: OwnedFd) -> (Option<i32>, Option<(u32, u32)>) {
    let mut file = std::fs::File::from(report_r);
    let mut pid = None;
    let mut error = None;
    let mut buf = [0u8; 12];
    loop {
        match file.read_exact(&mut buf) {
            Ok(()) => {
                let word =
                    |i: usize| u32::from_ne_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
                match word(0) {
                    MSG_PID => pid = Some(word(4) as i32),
                    MSG_ERROR if error.is_none() => error = Some((word(4), word(8))),
                    _ => {}
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    (pid, error)
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

/// Joins the namespaces, then clones the workload as a sibling (a child of
/// our parent) so that it lands in the joined pid namespace.
fn intermediate(prep: &Prepared, joins: &[(RawFd, libc::c_int)], report_fd: RawFd) -> ! {
    for (fd, nstype) in joins {
        // SAFETY: setns on an fd the parent keeps open for the spawn's duration.
        if unsafe { libc::setns(*fd, *nstype) } != 0 {
            fail(report_fd, SpawnStage::Setns);
        }
    }
    let mut args = CloneArgs {
        flags: libc::CLONE_PARENT as u64,
        ..Default::default()
    };
    let pid = clone3(&mut args);
    if pid == 0 {
        child_exec(prep, report_fd)
    }
    if pid < 0 {
        fail(report_fd, SpawnStage::Clone);
    }
    report(report_fd, MSG_PID, pid as u32, 0);
    // SAFETY: _exit never returns.
    unsafe { libc::_exit(0) }
}

/// Runs in the child between clone and exec: raw syscalls only.
fn child_exec(p: &Prepared, report_fd: RawFd) -> ! {
    // SAFETY: every call below is a plain syscall on memory prepared by the
    // parent before the clone; nothing allocates or takes a lock.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);

        for (src, dst) in &p.fds {
            if libc::dup2(*src, *dst) < 0 {
                fail(report_fd, SpawnStage::Fds);
            }
        }
        if let Some(cwd) = &p.cwd {
            if libc::chdir(cwd.as_ptr()) != 0 {
                fail(report_fd, SpawnStage::Chdir);
            }
        }
        if (p.uid.is_some() || p.gid.is_some())
            && libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0
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
        }
        if let Some(uid) = p.uid {
            if libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0 {
                fail(report_fd, SpawnStage::Uid);
            }
        }
        if let Some(keep) = p.caps_keep {
            if p.uid.unwrap_or(0) == 0 {
                let header = CapHeader {
                    version: CAPS_VERSION_3,
                    pid: 0,
                };
                let lo = keep as u32;
                let hi = (keep >> 32) as u32;
                let data = [
                    CapData {
                        effective: lo,
                        permitted: lo,
                        inheritable: lo,
                    },
                    CapData {
                        effective: hi,
                        permitted: hi,
                        inheritable: hi,
                    },
                ];
                if libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) != 0
                {
                    fail(report_fd, SpawnStage::Capabilities);
                }
            }
        }
        if p.no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            fail(report_fd, SpawnStage::NoNewPrivs);
        }
        for prog in &p.seccomp {
            if libc::syscall(
                libc::SYS_seccomp,
                SECCOMP_SET_MODE_FILTER,
                0,
                prog as *const libc::sock_fprog,
            ) != 0
            {
                fail(report_fd, SpawnStage::Seccomp);
            }
        }
        let mut last = libc::ENOENT as u32;
        for cand in &p.candidates {
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
