//! Compiled profiles installed in a forked child, which reports what its
//! system calls returned: the stack of filters gives each call the action
//! its rule names.

use super::{compile, Profile, Seccomp};

/// Forks; the child installs `programs` (with no_new_privs), makes each
/// call of `calls` (no arguments) and exits with a bit set per call that
/// failed with the expected errno (`0` for success).
fn run(programs: &[Vec<libc::sock_filter>], calls: &[(libc::c_long, i32)]) -> i32 {
    let fprogs: Vec<libc::sock_fprog> = programs
        .iter()
        .map(|p| libc::sock_fprog {
            len: p.len() as u16,
            filter: p.as_ptr() as *mut libc::sock_filter,
        })
        .collect();
    // SAFETY: the child makes raw system calls only, on memory prepared
    // before the fork, and leaves with _exit.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork");
        if pid == 0 {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                libc::_exit(100);
            }
            for f in &fprogs {
                if libc::syscall(libc::SYS_seccomp, 1, 0, f as *const libc::sock_fprog) != 0 {
                    libc::_exit(101);
                }
            }
            let mut bits = 0;
            for (i, (nr, want)) in calls.iter().enumerate() {
                let r = libc::syscall(*nr, 0, 0, 0, 0, 0, 0);
                let got = if r == -1 {
                    *libc::__errno_location()
                } else {
                    0
                };
                if got == *want {
                    bits |= 1 << i;
                }
            }
            libc::_exit(bits);
        }
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        assert!(libc::WIFEXITED(status), "the child died: {status:#x}");
        libc::WEXITSTATUS(status)
    }
}

#[test]
fn each_call_gets_the_action_of_its_rule_and_the_rest_the_default() {
    let p = Profile::parse(
        r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":13,"syscalls":[
            {"names":["exit_group","exit","getppid","getpid"],"action":"SCMP_ACT_ALLOW"},
            {"names":["getuid"],"action":"SCMP_ACT_ERRNO","errnoRet":38},
            {"names":["getpid"],"action":"SCMP_ACT_ERRNO","errnoRet":22}]}"#,
    )
    .unwrap();
    let progs = compile(&p, 0).unwrap();
    let calls = [
        (libc::SYS_getppid, 0),
        (libc::SYS_getuid, 38),
        (libc::SYS_getgid, 13),
        // Both allowed and refused: the refusal wins.
        (libc::SYS_getpid, 22),
    ];
    assert_eq!(run(&progs, &calls), 0b1111);
}

#[test]
fn an_allow_by_default_profile_refuses_only_its_calls() {
    let p = Profile::parse(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["getuid"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
    )
    .unwrap();
    let progs = compile(&p, 0).unwrap();
    assert_eq!(
        run(&progs, &[(libc::SYS_getuid, 1), (libc::SYS_getgid, 0)]),
        0b11
    );
}

#[test]
fn the_runtime_default_refuses_what_the_capabilities_do_not_cover() {
    let d = Seccomp::RuntimeDefault;
    // Without CAP_SYS_ADMIN, unshare(0) fails with EPERM; clone3 with
    // ENOSYS; getppid works.
    let progs = d.programs(0).unwrap();
    let calls = [
        (libc::SYS_unshare, libc::EPERM),
        (libc::SYS_clone3, libc::ENOSYS),
        (libc::SYS_getppid, 0),
    ];
    assert_eq!(run(&progs, &calls), 0b111);
    // With it, unshare(0) succeeds (it changes nothing).
    let progs = d.programs(1 << 21).unwrap();
    assert_eq!(run(&progs, &[(libc::SYS_unshare, 0)]), 0b1);
}
