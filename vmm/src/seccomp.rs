//! Seccomp filters per VMM thread (seccompiler): each thread may make only
//! the system calls it needs; anything else fails with EPERM.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::VmmError;

/// What every thread needs: memory, locks, time, signals, exit.
const COMMON: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_mprotect,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_sched_yield,
    libc::SYS_getrandom,
    libc::SYS_gettid,
    libc::SYS_rseq,
    libc::SYS_exit,
    libc::SYS_exit_group,
    // A sleep interrupted by a stop (SIGSTOP, a cgroup freeze, a debugger)
    // resumes through it; refused, the sleep fails and std panics.
    libc::SYS_restart_syscall,
];

/// A vCPU thread: KVM_RUN and the device models it calls into (ioctl only
/// for the requests in [`VCPU_IOCTLS`]).
const VCPU: &[libc::c_long] = &[libc::SYS_fsync, libc::SYS_fdatasync];

const KVMIO: u64 = 0xae;
/// `_IO(KVMIO, 0x80)`.
const KVM_RUN: u64 = (KVMIO << 8) | 0x80;
/// `_IOR(KVMIO, 0x81, struct kvm_regs)`.
const KVM_GET_REGS: u64 = (2 << 30)
    | ((std::mem::size_of::<kvm_bindings::kvm_regs>() as u64) << 16)
    | (KVMIO << 8)
    | 0x81;
/// The only ioctls of a vCPU thread: running the guest, and reading its
/// registers (the guest profiler).
const VCPU_IOCTLS: [u64; 2] = [KVM_RUN, KVM_GET_REGS];

/// The device event loop: epoll, eventfds, the TAP and disk files, and the
/// vsock device's Unix sockets.
const EVENTS: &[libc::c_long] = &[
    libc::SYS_accept4,
    // socket(2) is allowed for Unix sockets only (see `filter`).
    libc::SYS_connect,
    libc::SYS_shutdown,
    libc::SYS_timerfd_settime,
    // std's socket reads and writes (MSG_NOSIGNAL).
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_lseek,
];

/// The event thread of a VM that shares folders (virtio-fs) also answers
/// FUSE requests on them (fuse-backend-rs's passthrough file system): file
/// system calls relative to the descriptors it holds, per-request
/// credentials (setresuid and setresgid, on the calling thread only) and
/// `CAP_FSETID`, which it drops around a write.
const FILES: &[libc::c_long] = &[
    libc::SYS_openat,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_fstatfs,
    libc::SYS_getdents64,
    libc::SYS_readlinkat,
    libc::SYS_mkdirat,
    libc::SYS_mknodat,
    libc::SYS_unlinkat,
    libc::SYS_renameat2,
    libc::SYS_linkat,
    libc::SYS_symlinkat,
    libc::SYS_fchownat,
    libc::SYS_fchown,
    libc::SYS_fchmodat,
    libc::SYS_fchmod,
    libc::SYS_utimensat,
    libc::SYS_fallocate,
    libc::SYS_ftruncate,
    libc::SYS_fcntl,
    libc::SYS_dup,
    libc::SYS_flock,
    libc::SYS_umask,
    libc::SYS_setresuid,
    libc::SYS_setresgid,
    libc::SYS_capget,
    libc::SYS_capset,
    libc::SYS_getuid,
    libc::SYS_getgid,
    libc::SYS_getpid,
];

/// A control thread once the VM runs: the thread that owns the `Vm` (it
/// waits for the VM, kicks and joins its threads, reports, and drops the VM,
/// which removes its socket file: keep `unlink`), a signal thread that stops
/// the VM, and the guest profiler. No ioctl, no new files or sockets.
const CONTROL: &[libc::c_long] = &[
    libc::SYS_rt_sigtimedwait,
    libc::SYS_getpid,
    libc::SYS_tgkill,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
];

#[derive(Debug, Clone, Copy)]
pub enum ThreadKind {
    Vcpu,
    Events,
    /// The event thread of a VM with a virtio-fs device.
    EventsWithFiles,
    Control,
}

/// The compiled filter for a kind of thread.
pub fn filter(kind: ThreadKind) -> Result<BpfProgram, VmmError> {
    let (extra, files): (_, &[libc::c_long]) = match kind {
        ThreadKind::Vcpu => (VCPU, &[]),
        ThreadKind::Events => (EVENTS, &[]),
        ThreadKind::EventsWithFiles => (EVENTS, FILES),
        ThreadKind::Control => (CONTROL, &[]),
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = COMMON
        .iter()
        .chain(extra)
        .chain(files)
        .map(|s| (*s, vec![]))
        .collect();
    let rule = |arg: u8, value: u64| -> Result<SeccompRule, VmmError> {
        let err = |source| VmmError::SeccompBuild {
            what: "an argument rule",
            source,
        };
        SeccompRule::new(vec![SeccompCondition::new(
            arg,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            value,
        )
        .map_err(err)?])
        .map_err(err)
    };
    match kind {
        ThreadKind::Vcpu => {
            let allowed = VCPU_IOCTLS
                .iter()
                .map(|r| rule(1, *r))
                .collect::<Result<_, _>>()?;
            rules.insert(libc::SYS_ioctl, allowed);
        }
        ThreadKind::Events | ThreadKind::EventsWithFiles => {
            rules.insert(libc::SYS_socket, vec![rule(0, libc::AF_UNIX as u64)?]);
        }
        ThreadKind::Control => {}
    }
    let f = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|source| VmmError::SeccompBuild {
        what: "the rules (SeccompFilter::new)",
        source,
    })?;
    f.try_into().map_err(|source| VmmError::SeccompBuild {
        what: "its BPF program",
        source,
    })
}

/// Installs the filter of `kind` on the calling thread.
pub fn apply(kind: ThreadKind) -> Result<(), VmmError> {
    let prog = filter(kind)?;
    seccompiler::apply_filter(&prog).map_err(|source| VmmError::SeccompApply { source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_forbidden_syscall_is_refused_on_a_filtered_thread() {
        let outcome = std::thread::spawn(|| {
            apply(ThreadKind::Vcpu).expect("apply");
            // socket(2) is not in the vCPU list; write(2) is.
            let sock = std::net::UdpSocket::bind("127.0.0.1:0");
            let wrote = std::io::Write::write(&mut std::io::sink(), b"x").is_ok();
            (sock.err().and_then(|e| e.raw_os_error()), wrote)
        })
        .join()
        .expect("thread");
        assert_eq!(outcome, (Some(libc::EPERM), true));
        // Other threads are not filtered.
        assert!(std::net::UdpSocket::bind("127.0.0.1:0").is_ok());
    }

    #[test]
    fn every_filter_compiles() {
        for kind in [
            ThreadKind::Vcpu,
            ThreadKind::Events,
            ThreadKind::EventsWithFiles,
            ThreadKind::Control,
        ] {
            assert!(!filter(kind).expect("filter").is_empty(), "{kind:?}");
        }
    }

    #[test]
    fn an_interrupted_sleep_may_resume_on_every_kind_of_thread() {
        for kind in [ThreadKind::Vcpu, ThreadKind::Events, ThreadKind::Control] {
            let errno = std::thread::spawn(move || {
                apply(kind).expect("apply");
                // With nothing to restart, the kernel answers EINTR; a
                // filter that refused the call would answer EPERM.
                // SAFETY: restart_syscall takes no arguments.
                let rc = unsafe { libc::syscall(libc::SYS_restart_syscall) };
                (rc == -1)
                    .then(|| std::io::Error::last_os_error().raw_os_error())
                    .flatten()
            })
            .join()
            .expect("thread");
            assert_eq!(errno, Some(libc::EINTR), "{kind:?}");
        }
    }

    #[test]
    fn a_control_thread_may_open_no_file_and_make_no_ioctl() {
        let outcome = std::thread::spawn(|| {
            apply(ThreadKind::Control).expect("apply");
            let open = std::fs::File::open("/dev/null").err();
            let socket = std::os::unix::net::UnixDatagram::unbound().err();
            let mut n: libc::c_int = 0;
            // SAFETY: FIONREAD on stdin writes at most one int into `n`.
            let rc = unsafe { libc::ioctl(0, libc::FIONREAD, &mut n) };
            let ioctl = std::io::Error::last_os_error().raw_os_error();
            [
                open.and_then(|e| e.raw_os_error()),
                socket.and_then(|e| e.raw_os_error()),
                (rc == -1).then_some(ioctl).flatten(),
            ]
        })
        .join()
        .expect("thread");
        assert_eq!(outcome, [Some(libc::EPERM); 3]);
    }

    #[test]
    fn a_vcpu_thread_may_make_no_ioctl_but_its_own() {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        let refused = std::thread::spawn(move || {
            apply(ThreadKind::Vcpu).expect("apply");
            let mut n: libc::c_int = 0;
            // SAFETY: FIONREAD on our pipe writes one int into `n`.
            let rc = unsafe { libc::ioctl(r.as_raw_fd(), libc::FIONREAD, &mut n) };
            (rc, std::io::Error::last_os_error().raw_os_error())
        })
        .join()
        .expect("thread");
        drop(w);
        assert_eq!(refused, (-1, Some(libc::EPERM)));
    }

    #[test]
    fn only_the_event_thread_of_a_vm_that_shares_folders_opens_files() {
        let open = |kind| {
            std::thread::spawn(move || {
                apply(kind).expect("apply");
                std::fs::File::open("/dev/null")
                    .err()
                    .and_then(|e| e.raw_os_error())
            })
            .join()
            .expect("thread")
        };
        assert_eq!(open(ThreadKind::Events), Some(libc::EPERM));
        assert_eq!(open(ThreadKind::EventsWithFiles), None);
    }

    #[test]
    fn the_event_thread_may_open_unix_sockets_only() {
        let outcome = std::thread::spawn(|| {
            apply(ThreadKind::Events).expect("apply");
            let unix = std::os::unix::net::UnixDatagram::unbound().is_ok();
            let inet = std::net::UdpSocket::bind("127.0.0.1:0");
            (unix, inet.err().and_then(|e| e.raw_os_error()))
        })
        .join()
        .expect("thread");
        assert_eq!(outcome, (true, Some(libc::EPERM)));
    }
}
