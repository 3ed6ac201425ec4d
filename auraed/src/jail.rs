//! The seal of a jailed cell (SerenityOS jail semantics): once inside, a
//! process and all its descendants can't create or join namespaces, change
//! mounts, trace other processes, load BPF or kernel modules, or use the
//! kernel keyring. `no_new_privs` is set and capabilities are reduced to a
//! minimal set, so nothing can be regained by executing a setuid binary.

use std::collections::BTreeMap;

use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};

#[derive(Debug, thiserror::Error)]
#[error("building the jail's seccomp filter: {0}")]
pub struct JailError(String);

/// Syscalls refused outright with EPERM.
const DENIED: &[libc::c_long] = &[
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_open_tree,
    libc::SYS_move_mount,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_bpf,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
];

/// Namespace flags refused in `clone`.
const NAMESPACE_FLAGS: &[libc::c_int] = &[
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWCGROUP,
    0x80, // CLONE_NEWTIME
];

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

/// The capability mask a jailed process keeps.
pub fn kept_caps() -> u64 {
    KEPT_CAPS.iter().fold(0u64, |m, c| m | (1 << c))
}

/// The BPF programs of the jail, to be installed in order.
///
/// `clone3` passes its flags in memory, where seccomp can't look, so it fails
/// with ENOSYS, which makes libc fall back to `clone`, whose flags are
/// checked.
pub fn seccomp_filters() -> Result<Vec<Vec<libc::sock_filter>>, JailError> {
    let arch = TargetArch::x86_64;
    let err = |e: seccompiler::BackendError| JailError(e.to_string());

    let mut denied: BTreeMap<i64, Vec<SeccompRule>> = DENIED.iter().map(|s| (*s, vec![])).collect();
    let clone_rules = NAMESPACE_FLAGS
        .iter()
        .map(|flag| {
            let cond = SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(*flag as u64),
                *flag as u64,
            )?;
            SeccompRule::new(vec![cond])
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    denied.insert(libc::SYS_clone, clone_rules);
    let eperm = SeccompFilter::new(
        denied,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(err)?;

    let enosys = SeccompFilter::new(
        [(libc::SYS_clone3, vec![])].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(err)?;

    [eperm, enosys]
        .into_iter()
        .map(|f| {
            let prog: seccompiler::BpfProgram = f
                .try_into()
                .map_err(|e: seccompiler::BackendError| JailError(e.to_string()))?;
            Ok(prog
                .into_iter()
                .map(|i| libc::sock_filter {
                    code: i.code,
                    jt: i.jt,
                    jf: i.jf,
                    k: i.k,
                })
                .collect())
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
    fn keeps_no_admin_capability() {
        let caps = kept_caps();
        assert_eq!(caps & (1 << 21), 0, "CAP_SYS_ADMIN must be dropped");
        assert_ne!(caps & (1 << 5), 0, "CAP_KILL stays");
    }
}
