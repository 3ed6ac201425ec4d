//! `runtime/default`: the profile a container gets when it asks for the
//! runtime's default, in the spirit of Docker's. It allows what ordinary
//! programs need (the jail's allowlist, with its argument checks on
//! `clone`, `socket` and `personality`), and the calls that reach past a
//! container only to processes holding the capability they are about, as
//! Docker's profile does. `clone3` fails with ENOSYS (its flags are out of a
//! filter's sight), so libc falls back to `clone`. Everything else fails
//! with EPERM.

use super::profile::{Action, ArgCheck, Cmp, Profile, Rule};

/// Calls of the jail's refused list that a process holding the
/// capability (by number) may make.
const WITH_CAPABILITY: &[(u32, &[libc::c_long])] = &[
    (
        21, // CAP_SYS_ADMIN
        &[
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_pivot_root,
            libc::SYS_open_tree,
            libc::SYS_move_mount,
            libc::SYS_fsopen,
            libc::SYS_fsconfig,
            libc::SYS_fsmount,
            libc::SYS_fspick,
            libc::SYS_mount_setattr,
            libc::SYS_fanotify_init,
            libc::SYS_name_to_handle_at,
            libc::SYS_quotactl,
            libc::SYS_lookup_dcookie,
            libc::SYS_bpf,
            libc::SYS_perf_event_open,
            libc::SYS_clone,
        ],
    ),
    (18, &[libc::SYS_chroot]), // CAP_SYS_CHROOT
    (
        19, // CAP_SYS_PTRACE
        &[
            libc::SYS_ptrace,
            libc::SYS_process_vm_readv,
            libc::SYS_process_vm_writev,
            libc::SYS_kcmp,
            libc::SYS_pidfd_getfd,
        ],
    ),
    (
        16, // CAP_SYS_MODULE
        &[
            libc::SYS_init_module,
            libc::SYS_finit_module,
            libc::SYS_delete_module,
        ],
    ),
    (22, &[libc::SYS_reboot]), // CAP_SYS_BOOT
    (20, &[libc::SYS_acct]),   // CAP_SYS_PACCT
    (
        25, // CAP_SYS_TIME
        &[
            libc::SYS_settimeofday,
            libc::SYS_clock_settime,
            libc::SYS_clock_adjtime,
            libc::SYS_adjtimex,
        ],
    ),
    (
        23, // CAP_SYS_NICE
        &[
            libc::SYS_mbind,
            libc::SYS_move_pages,
            libc::SYS_migrate_pages,
        ],
    ),
    (17, &[libc::SYS_iopl, libc::SYS_ioperm]), // CAP_SYS_RAWIO
    (26, &[libc::SYS_vhangup]),                // CAP_SYS_TTY_CONFIG
    (2, &[libc::SYS_open_by_handle_at]),       // CAP_DAC_READ_SEARCH
    (34, &[libc::SYS_syslog]),                 // CAP_SYSLOG
    (39, &[libc::SYS_bpf]),                    // CAP_BPF
    (38, &[libc::SYS_perf_event_open]),        // CAP_PERFMON
];

fn allow(syscalls: Vec<i64>, args: Vec<ArgCheck>, caps_all: u64) -> Rule {
    Rule {
        syscalls,
        action: Action::Allow,
        args,
        caps_all,
        caps_none: 0,
    }
}

fn check(index: u8, cmp: Cmp, value: u64) -> Vec<ArgCheck> {
    vec![ArgCheck { index, cmp, value }]
}

/// The profile (its capability rules apply when compiled for a process).
pub fn profile() -> Profile {
    let mut rules = vec![allow(crate::jail::ALLOWED.to_vec(), vec![], 0)];
    rules.push(allow(
        vec![libc::SYS_clone],
        check(
            0,
            Cmp::MaskedEq {
                mask: crate::jail::NAMESPACE_FLAGS as u64,
            },
            0,
        ),
        0,
    ));
    rules.push(allow(
        vec![libc::SYS_socket],
        check(0, Cmp::Ne, libc::AF_VSOCK as u64),
        0,
    ));
    for p in crate::jail::PERSONALITIES {
        rules.push(allow(vec![libc::SYS_personality], check(0, Cmp::Eq, p), 0));
    }
    for (cap, calls) in WITH_CAPABILITY {
        rules.push(allow(calls.to_vec(), vec![], 1 << cap));
    }
    rules.push(Rule {
        syscalls: vec![libc::SYS_clone3],
        action: Action::Errno(libc::ENOSYS as u32),
        args: vec![],
        caps_all: 0,
        caps_none: 0,
    });
    Profile {
        default: Action::Errno(libc::EPERM as u32),
        rules,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_capability_rule_lifts_a_refused_call_only() {
        for (cap, calls) in WITH_CAPABILITY {
            for c in *calls {
                assert!(
                    crate::jail::REFUSED.contains(c) || *c == libc::SYS_clone,
                    "{c} (capability {cap}) is not refused to begin with"
                );
            }
        }
        // What no capability lifts: keyrings, kexec, userfaultfd, io_uring,
        // swap.
        let lifted: Vec<i64> = WITH_CAPABILITY
            .iter()
            .flat_map(|(_, c)| c.iter().copied())
            .collect();
        for c in [
            libc::SYS_keyctl,
            libc::SYS_kexec_load,
            libc::SYS_userfaultfd,
            libc::SYS_io_uring_setup,
            libc::SYS_swapon,
        ] {
            assert!(!lifted.contains(&c), "{c} must stay refused");
        }
    }

    #[test]
    fn compiles_with_and_without_capabilities() {
        let p = profile();
        assert_eq!(super::super::compile(&p, 0).unwrap().len(), 2);
        assert_eq!(super::super::compile(&p, u64::MAX).unwrap().len(), 2);
    }
}
