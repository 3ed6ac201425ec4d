//! The seal of a jailed cell (SerenityOS jail semantics): once inside, a
//! process and all its descendants can't create or join namespaces, change
//! mounts, trace other processes, load BPF or kernel modules, or use the
//! kernel keyring. `no_new_privs` is set and capabilities are reduced to a
//! minimal set, so nothing can be regained by executing a setuid binary.

mod allowlist;

use std::collections::BTreeMap;

use seccompiler::{
    BackendError, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

pub use allowlist::{ALLOWED, REFUSED};

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("building the jail's seccomp rule for syscall {syscall}")]
    Rule {
        syscall: libc::c_long,
        #[source]
        source: BackendError,
    },
    #[error("building the jail's seccomp filter")]
    Filter(#[source] BackendError),
    #[error("compiling the jail's seccomp filter to BPF")]
    Compile(#[source] BackendError),
}

/// Namespace flags refused in `clone`.
pub(crate) const NAMESPACE_FLAGS: libc::c_int = libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP
    | 0x80; // CLONE_NEWTIME

/// `personality` values allowed, as in Docker's profile: the default, and
/// the 32-bit and no-randomisation flavours programs ask for.
pub(crate) const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// Capabilities a jailed process keeps (those of a default container,
/// without CAP_SYS_ADMIN and friends).
const KEPT_CAPS: &[u32] = &[
    0,  // CAP_CHOWN
    1,  // CAP_DAC_OVERRIDE
    3,  // CAP_FOWNER
    4,  // CAP_FSETID
    5,  // CAP_KILL
    6,  // CAP_SETGID
    7,  // CAP_SETUID
    10, // CAP_NET_BIND_SERVICE
];

/// Capabilities the processes of an ordinary (not privileged) cell keep:
/// the default set of OCI runtimes (Podman's), without CAP_SYS_ADMIN,
/// CAP_NET_ADMIN, CAP_SYS_PTRACE or CAP_MKNOD, so that the cell's sealed
/// /proc, /sys and cgroupfs can't be unmounted or remounted.
const CONTAINER_CAPS: &[u32] = &[
    0,  // CAP_CHOWN
    1,  // CAP_DAC_OVERRIDE
    3,  // CAP_FOWNER
    4,  // CAP_FSETID
    5,  // CAP_KILL
    6,  // CAP_SETGID
    7,  // CAP_SETUID
    8,  // CAP_SETPCAP
    10, // CAP_NET_BIND_SERVICE
    18, // CAP_SYS_CHROOT
    31, // CAP_SETFCAP
];

fn mask(caps: &[u32]) -> u64 {
    caps.iter().fold(0u64, |m, c| m | (1 << c))
}

/// The capability mask a jailed process keeps.
pub fn kept_caps() -> u64 {
    mask(KEPT_CAPS)
}

/// The capability mask the processes of an ordinary cell keep.
pub fn container_caps() -> u64 {
    mask(CONTAINER_CAPS)
}

fn rule(
    syscall: libc::c_long,
    arg: u8,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompRule, JailError> {
    let err = |source| JailError::Rule { syscall, source };
    let cond = SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value).map_err(err)?;
    SeccompRule::new(vec![cond]).map_err(err)
}

/// The allowlist: [`ALLOWED`] with any arguments; `clone` without
/// namespace flags; `socket` of any family but vsock (the host's, from a
/// guest); `personality` with the values of [`PERSONALITIES`]. Everything
/// else fails with EPERM.
fn allowlist() -> Result<SeccompFilter, JailError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = ALLOWED.iter().map(|s| (*s, vec![])).collect();
    rules.insert(
        libc::SYS_clone,
        vec![rule(
            libc::SYS_clone,
            0,
            SeccompCmpOp::MaskedEq(NAMESPACE_FLAGS as u64),
            0,
        )?],
    );
    // Decided by the second filter.
    rules.insert(libc::SYS_clone3, vec![]);
    rules.insert(
        libc::SYS_socket,
        vec![rule(
            libc::SYS_socket,
            0,
            SeccompCmpOp::Ne,
            libc::AF_VSOCK as u64,
        )?],
    );
    rules.insert(
        libc::SYS_personality,
        PERSONALITIES
            .iter()
            .map(|p| rule(libc::SYS_personality, 0, SeccompCmpOp::Eq, *p))
            .collect::<Result<_, _>>()?,
    );
    SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(JailError::Filter)
}

/// The BPF programs of the jail, to be installed in order.
///
/// `clone3` passes its flags in memory, where seccomp can't look, so it fails
/// with ENOSYS, which makes libc fall back to `clone`, whose flags are
/// checked.
pub fn seccomp_filters() -> Result<Vec<Vec<libc::sock_filter>>, JailError> {
    let enosys = SeccompFilter::new(
        [(libc::SYS_clone3, vec![])].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        TargetArch::x86_64,
    )
    .map_err(JailError::Filter)?;

    [allowlist()?, enosys]
        .into_iter()
        .map(|f| {
            let prog: seccompiler::BpfProgram = f.try_into().map_err(JailError::Compile)?;
            Ok(crate::seccomp::to_sock_filters(prog))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_two_nonempty_programs() {
        let progs = seccomp_filters().expect("filters");
        assert_eq!(progs.len(), 2);
        assert!(progs.iter().all(|p| !p.is_empty()));
    }

    #[test]
    fn the_allowlist_and_the_refused_list_do_not_meet() {
        for s in REFUSED {
            assert!(
                !ALLOWED.contains(s),
                "syscall {s} is both allowed and refused"
            );
        }
        for s in [
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_socket,
            libc::SYS_personality,
        ] {
            assert!(
                !ALLOWED.contains(&s),
                "{s} is allowed only with its argument checks"
            );
        }
        let mut sorted = ALLOWED.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ALLOWED.len(), "a syscall is listed twice");
    }

    #[test]
    fn ordinary_cells_keep_no_capability_that_unseals_their_mounts() {
        let caps = container_caps();
        for (cap, name) in [
            (21, "SYS_ADMIN"),
            (12, "NET_ADMIN"),
            (19, "SYS_PTRACE"),
            (27, "MKNOD"),
        ] {
            assert_eq!(caps & (1 << cap), 0, "CAP_{name} must be dropped");
        }
    }

    #[test]
    fn keeps_no_admin_capability() {
        let caps = kept_caps();
        assert_eq!(caps & (1 << 21), 0, "CAP_SYS_ADMIN must be dropped");
        assert_ne!(caps & (1 << 5), 0, "CAP_KILL stays");
    }
}
