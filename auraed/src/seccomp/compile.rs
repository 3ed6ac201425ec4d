//! A profile compiled to BPF with `seccompiler`, as a stack of filters.
//!
//! A `seccompiler` filter has one action for what matches and one for the
//! rest, while a profile gives each rule its own. The kernel runs every
//! installed filter and keeps the most severe answer (KILL > TRAP > ERRNO >
//! TRACE > LOG > ALLOW; among equals, the filter installed last), so a
//! profile becomes, installed in this order:
//! 1. unless the default is ALLOW, a filter that allows what any rule
//!    matches and gives the default to the rest;
//! 2. for each other action a rule names, a filter that gives it to what
//!    those rules match and allows the rest.
//!
//! A call that two rules with different actions both match gets the more
//! severe one. Filters are installed with the `seccomp` call, so the one
//! filter that refuses it (if any) goes last. Filters whose other calls are allowed also match the x32
//! numbers of their calls, so a deny rule can't be stepped around through
//! the x32 ABI.

use std::collections::BTreeMap;

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

use super::profile::{Action, Cmp, Profile, Rule};

/// The kernel's limit on the length of one filter (`BPF_MAXINSNS`).
const MAX_INSNS: usize = 4096;
/// Added to a system call number by the x32 ABI.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: i64 = 0x4000_0000;

#[cfg(target_arch = "x86_64")]
const TARGET: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const TARGET: TargetArch = TargetArch::aarch64;

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("building the seccomp rule for system call {syscall}")]
    Rule {
        syscall: i64,
        #[source]
        source: BackendError,
    },
    #[error("building the seccomp filter for {action:?}")]
    Filter {
        action: Action,
        #[source]
        source: BackendError,
    },
    #[error("compiling the seccomp filter for {action:?} to BPF")]
    Bpf {
        action: Action,
        #[source]
        source: BackendError,
    },
    #[error(
        "the profile refuses the seccomp call itself in the filters for {0:?}; filters after \
         the first would not install (allow it, or refuse it with one action)"
    )]
    SeccompRefused(Vec<Action>),
    #[error(
        "the seccomp filter for {action:?} is {len} BPF instructions, more than the kernel's \
         {MAX_INSNS}"
    )]
    TooLong { action: Action, len: usize },
}

fn to_seccompiler(a: Action) -> SeccompAction {
    match a {
        Action::Allow => SeccompAction::Allow,
        Action::Errno(e) => SeccompAction::Errno(e),
        Action::KillThread => SeccompAction::KillThread,
        Action::KillProcess => SeccompAction::KillProcess,
        Action::Log => SeccompAction::Log,
        Action::Trace(t) => SeccompAction::Trace(t),
        Action::Trap => SeccompAction::Trap,
    }
}

/// Rules by system call: `None` matches the call whatever its arguments.
type Calls = BTreeMap<i64, Option<Vec<SeccompRule>>>;

fn add(calls: &mut Calls, rule: &Rule) -> Result<(), CompileError> {
    for &nr in &rule.syscalls {
        let err = |source| CompileError::Rule {
            syscall: nr,
            source,
        };
        if rule.args.is_empty() {
            calls.insert(nr, None);
            continue;
        }
        let conditions = rule
            .args
            .iter()
            .map(|a| {
                let op = match a.cmp {
                    Cmp::Ne => SeccompCmpOp::Ne,
                    Cmp::Lt => SeccompCmpOp::Lt,
                    Cmp::Le => SeccompCmpOp::Le,
                    Cmp::Eq => SeccompCmpOp::Eq,
                    Cmp::Ge => SeccompCmpOp::Ge,
                    Cmp::Gt => SeccompCmpOp::Gt,
                    Cmp::MaskedEq { mask } => SeccompCmpOp::MaskedEq(mask),
                };
                SeccompCondition::new(a.index, SeccompCmpArgLen::Qword, op, a.value).map_err(err)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let r = SeccompRule::new(conditions).map_err(err)?;
        // (`None`: already matched whatever the arguments.)
        if let Some(rules) = calls.entry(nr).or_insert_with(|| Some(Vec::new())) {
            rules.push(r);
        }
    }
    Ok(())
}

fn build(
    calls: Calls,
    mismatch: Action,
    matched: Action,
    mirror_x32: bool,
) -> Result<Vec<libc::sock_filter>, CompileError> {
    let action = if matched == Action::Allow {
        mismatch
    } else {
        matched
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (nr, r) in calls {
        let r = r.unwrap_or_default();
        #[cfg(target_arch = "x86_64")]
        if mirror_x32 {
            rules.insert(nr | X32_SYSCALL_BIT, r.clone());
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = mirror_x32;
        rules.insert(nr, r);
    }
    let filter = SeccompFilter::new(
        rules,
        to_seccompiler(mismatch),
        to_seccompiler(matched),
        TARGET,
    )
    .map_err(|source| CompileError::Filter { action, source })?;
    let prog: BpfProgram = filter
        .try_into()
        .map_err(|source| CompileError::Bpf { action, source })?;
    if prog.len() > MAX_INSNS {
        return Err(CompileError::TooLong {
            action,
            len: prog.len(),
        });
    }
    Ok(crate::seccomp::to_sock_filters(prog))
}

/// The BPF programs for a process holding the capabilities `caps`, to be
/// installed in order.
pub fn compile(profile: &Profile, caps: u64) -> Result<Vec<Vec<libc::sock_filter>>, CompileError> {
    let mut covered = Calls::new();
    let mut by_action: BTreeMap<Action, Calls> = BTreeMap::new();
    for rule in profile.rules_for(caps) {
        add(&mut covered, rule)?;
        if rule.action != Action::Allow {
            add(by_action.entry(rule.action).or_default(), rule)?;
        }
    }
    // Each filter is installed with the `seccomp` call, so the ones before
    // the last must let it through.
    let mut passing = Vec::new();
    let mut last = Vec::new();
    if profile.default != Action::Allow {
        let lets_seccomp = matches!(covered.get(&libc::SYS_seccomp), Some(None));
        let prog = build(covered, profile.default, Action::Allow, false)?;
        if lets_seccomp {
            &mut passing
        } else {
            &mut last
        }
        .push((profile.default, prog));
    }
    for (action, calls) in by_action {
        let lets_seccomp = !calls.contains_key(&libc::SYS_seccomp);
        let prog = build(calls, Action::Allow, action, true)?;
        if lets_seccomp {
            &mut passing
        } else {
            &mut last
        }
        .push((action, prog));
    }
    if last.len() > 1 {
        return Err(CompileError::SeccompRefused(
            last.into_iter().map(|(a, _)| a).collect(),
        ));
    }
    Ok(passing.into_iter().chain(last).map(|(_, p)| p).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_allow_by_default_profile_is_one_filter_per_other_action() {
        let p = Profile::parse(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["sethostname"],"action":"SCMP_ACT_ERRNO"},
                {"names":["setdomainname"],"action":"SCMP_ACT_ERRNO"},
                {"names":["reboot"],"action":"SCMP_ACT_KILL_PROCESS"}]}"#,
        )
        .unwrap();
        let progs = compile(&p, 0).unwrap();
        assert_eq!(progs.len(), 2, "EPERM and KILL_PROCESS");
        assert!(progs.iter().all(|p| !p.is_empty()));
    }

    #[test]
    fn a_deny_by_default_profile_adds_a_filter_for_the_default() {
        let p = Profile::parse(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
                {"names":["read","write"],"action":"SCMP_ACT_ALLOW"},
                {"names":["clone"],"action":"SCMP_ACT_ALLOW",
                 "args":[{"index":0,"value":2114060288,"valueTwo":0,"op":"SCMP_CMP_MASKED_EQ"}]},
                {"names":["clone"],"action":"SCMP_ACT_ALLOW","includes":{"caps":["CAP_SYS_ADMIN"]}},
                {"names":["clone3"],"action":"SCMP_ACT_ERRNO","errnoRet":38}]}"#,
        )
        .unwrap();
        assert_eq!(compile(&p, 0).unwrap().len(), 2);
        assert_eq!(compile(&p, 1 << 21).unwrap().len(), 2);
    }

    #[test]
    fn the_filter_refusing_seccomp_goes_last_and_two_can_not() {
        let one = Profile::parse(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["seccomp"],"action":"SCMP_ACT_ERRNO"},
                {"names":["reboot","kexec_load"],"action":"SCMP_ACT_KILL_PROCESS"}]}"#,
        )
        .unwrap();
        let progs = compile(&one, 0).unwrap();
        let kill_first = compile(
            &Profile::parse(
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                    {"names":["reboot","kexec_load"],"action":"SCMP_ACT_KILL_PROCESS"}]}"#,
            )
            .unwrap(),
            0,
        )
        .unwrap();
        assert_eq!(progs[0].len(), kill_first[0].len(), "the KILL filter first");
        let two = Profile::parse(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["seccomp"],"action":"SCMP_ACT_ERRNO"},
                {"names":["seccomp"],"action":"SCMP_ACT_KILL_PROCESS"}]}"#,
        )
        .unwrap();
        let e = compile(&two, 0).unwrap_err().to_string();
        assert!(e.contains("refuses the seccomp call"), "{e}");
    }
}
