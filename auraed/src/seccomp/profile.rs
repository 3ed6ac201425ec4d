//! A seccomp profile as users write them: the OCI runtime spec's
//! `linux.seccomp`, or Docker's profile format (the same, plus rules that
//! apply only with some capabilities or on some architectures), which is
//! what Kubernetes `localhost/` profiles are.

use std::str::FromStr;

use serde::Deserialize;

/// The largest profile text accepted.
pub const MAX_PROFILE_BYTES: usize = 1 << 20;

/// What a filter does with a system call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    Allow,
    Errno(u32),
    KillThread,
    KillProcess,
    Log,
    Trace(u32),
    Trap,
}

/// A comparison of one argument, as libseccomp's `SCMP_CMP_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Ne,
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
    /// `(arg & mask) == value`.
    MaskedEq {
        mask: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArgCheck {
    pub index: u8,
    pub cmp: Cmp,
    pub value: u64,
}

/// One rule: these system calls, when every argument check holds, get the
/// action. Applies only when the process holds every capability of
/// `caps_all` and none of `caps_none` (bit masks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub syscalls: Vec<i64>,
    pub action: Action,
    pub args: Vec<ArgCheck>,
    pub caps_all: u64,
    pub caps_none: u64,
}

/// A validated profile: what is not matched by a rule gets `default`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub default: Action,
    pub rules: Vec<Rule>,
}

/// A profile that can't be used, with the JSON path of what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("the profile is {0} bytes, more than the {MAX_PROFILE_BYTES} accepted")]
    TooLarge(usize),
    #[error("not a seccomp profile")]
    Json(#[source] serde_json::Error),
    #[error("{path}: {reason}")]
    Field { path: String, reason: String },
}

fn field(path: impl Into<String>, reason: impl Into<String>) -> ProfileError {
    ProfileError::Field {
        path: path.into(),
        reason: reason.into(),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawProfile {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    listener_path: String,
    #[serde(default)]
    syscalls: Vec<RawSyscall>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSyscall {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    names: Vec<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Vec<RawArg>,
    #[serde(default)]
    includes: RawFilter,
    #[serde(default)]
    excludes: RawFilter,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawArg {
    index: u32,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

#[derive(Deserialize, Default)]
struct RawFilter {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
}

/// Docker's names for this machine's architecture.
#[cfg(target_arch = "x86_64")]
const NATIVE_ARCHES: &[&str] = &["amd64", "x86_64", "SCMP_ARCH_X86_64"];
#[cfg(target_arch = "aarch64")]
const NATIVE_ARCHES: &[&str] = &["arm64", "aarch64", "SCMP_ARCH_AARCH64"];

fn action(path: &str, name: &str, errno: Option<u32>) -> Result<Action, ProfileError> {
    Ok(match name {
        "SCMP_ACT_ALLOW" => Action::Allow,
        "SCMP_ACT_ERRNO" => Action::Errno(errno.unwrap_or(libc::EPERM as u32)),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => Action::KillThread,
        "SCMP_ACT_KILL_PROCESS" => Action::KillProcess,
        "SCMP_ACT_LOG" => Action::Log,
        "SCMP_ACT_TRACE" => Action::Trace(errno.unwrap_or(libc::EPERM as u32)),
        "SCMP_ACT_TRAP" => Action::Trap,
        "SCMP_ACT_NOTIFY" => {
            return Err(field(
                path,
                "SCMP_ACT_NOTIFY needs a listener, which auraed does not provide",
            ))
        }
        other => {
            return Err(field(
                path,
                format!(
                    "{} is not a seccomp action",
                    crate::validation::shown(other)
                ),
            ))
        }
    })
}

fn arg(path: &str, a: &RawArg) -> Result<ArgCheck, ProfileError> {
    let index = u8::try_from(a.index)
        .ok()
        .filter(|i| *i < 6)
        .ok_or_else(|| {
            field(
                format!("{path}.index"),
                "a system call has arguments 0 to 5",
            )
        })?;
    let (cmp, value) = match a.op.as_str() {
        "SCMP_CMP_NE" => (Cmp::Ne, a.value),
        "SCMP_CMP_LT" => (Cmp::Lt, a.value),
        "SCMP_CMP_LE" => (Cmp::Le, a.value),
        "SCMP_CMP_EQ" => (Cmp::Eq, a.value),
        "SCMP_CMP_GE" => (Cmp::Ge, a.value),
        "SCMP_CMP_GT" => (Cmp::Gt, a.value),
        // libseccomp: `value` is the mask, `valueTwo` the datum.
        "SCMP_CMP_MASKED_EQ" => (Cmp::MaskedEq { mask: a.value }, a.value_two),
        other => {
            return Err(field(
                format!("{path}.op"),
                format!("{} is not a comparison", crate::validation::shown(other)),
            ))
        }
    };
    Ok(ArgCheck { index, cmp, value })
}

fn caps_mask(path: &str, caps: &[String]) -> Result<u64, ProfileError> {
    caps.iter().enumerate().try_fold(0u64, |m, (i, c)| {
        let bit = crate::cells::caps::mask_of(c).ok_or_else(|| {
            field(
                format!("{path}[{i}]"),
                format!("{} is not a capability", crate::validation::shown(c)),
            )
        })?;
        Ok(m | bit)
    })
}

impl Profile {
    /// Parses and checks a profile. System call names this machine does
    /// not know are left out, as other runtimes do (profiles are written
    /// for many kernels); so are rules for other architectures.
    pub fn parse(text: &str) -> Result<Profile, ProfileError> {
        if text.len() > MAX_PROFILE_BYTES {
            return Err(ProfileError::TooLarge(text.len()));
        }
        let raw: RawProfile = serde_json::from_str(text).map_err(ProfileError::Json)?;
        if !raw.flags.is_empty() {
            return Err(field("flags", "seccomp filter flags are not supported"));
        }
        if !raw.listener_path.is_empty() {
            return Err(field(
                "listenerPath",
                "a seccomp notify listener is not supported",
            ));
        }
        let default = action("defaultAction", &raw.default_action, raw.default_errno_ret)?;
        let mut rules = Vec::new();
        for (i, s) in raw.syscalls.iter().enumerate() {
            let path = format!("syscalls[{i}]");
            let action = action(&format!("{path}.action"), &s.action, s.errno_ret)?;
            let args = s
                .args
                .iter()
                .enumerate()
                .map(|(j, a)| arg(&format!("{path}.args[{j}]"), a))
                .collect::<Result<Vec<_>, _>>()?;
            let caps_all = caps_mask(&format!("{path}.includes.caps"), &s.includes.caps)?;
            let caps_none = caps_mask(&format!("{path}.excludes.caps"), &s.excludes.caps)?;
            let native =
                |arches: &[String]| arches.iter().any(|a| NATIVE_ARCHES.contains(&a.as_str()));
            if (!s.includes.arches.is_empty() && !native(&s.includes.arches))
                || native(&s.excludes.arches)
            {
                continue;
            }
            let names = s.name.iter().chain(&s.names);
            let syscalls: Vec<i64> = names
                .filter_map(|n| syscalls::Sysno::from_str(n).ok())
                .map(|s| i64::from(s.id()))
                .collect();
            if s.name.is_none() && s.names.is_empty() {
                return Err(field(format!("{path}.names"), "names no system call"));
            }
            rules.push(Rule {
                syscalls,
                action,
                args,
                caps_all,
                caps_none,
            });
        }
        Ok(Profile { default, rules })
    }

    /// The rules that apply to a process holding the capabilities `caps`.
    pub fn rules_for(&self, caps: u64) -> impl Iterator<Item = &Rule> {
        self.rules
            .iter()
            .filter(move |r| r.caps_all & caps == r.caps_all && r.caps_none & caps == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Profile::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn parses_docker_style_profiles() {
        let p = Profile::parse(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":38,
                "architectures":["SCMP_ARCH_X86_64"],
                "syscalls":[
                  {"names":["read","write","no_such_call"],"action":"SCMP_ACT_ALLOW"},
                  {"names":["personality"],"action":"SCMP_ACT_ALLOW",
                   "args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"}]},
                  {"names":["clone"],"action":"SCMP_ACT_ALLOW",
                   "args":[{"index":0,"value":2114060288,"valueTwo":0,"op":"SCMP_CMP_MASKED_EQ"}]},
                  {"names":["mount"],"action":"SCMP_ACT_ALLOW","includes":{"caps":["CAP_SYS_ADMIN"]}},
                  {"names":["ptrace"],"action":"SCMP_ACT_ALLOW","includes":{"arches":["s390x"]}},
                  {"names":["sethostname"],"action":"SCMP_ACT_ERRNO","errnoRet":1,"comment":"x"}
                ]}"#,
        )
        .unwrap();
        assert_eq!(p.default, Action::Errno(38));
        assert_eq!(p.rules.len(), 5, "the s390x rule is left out");
        assert_eq!(p.rules[0].syscalls, vec![libc::SYS_read, libc::SYS_write]);
        assert_eq!(p.rules[2].args[0].cmp, Cmp::MaskedEq { mask: 2114060288 });
        assert_eq!(p.rules[3].caps_all, 1 << 21);
        assert_eq!(p.rules_for(0).count(), 4);
        assert_eq!(p.rules_for(1 << 21).count(), 5);
        assert_eq!(p.rules[4].action, Action::Errno(1));
    }

    #[test]
    fn bad_profiles_name_what_is_wrong() {
        assert!(err("{").contains("not a seccomp profile"));
        assert!(err(r#"{"defaultAction":"SCMP_ACT_NOPE"}"#).contains("defaultAction"));
        assert!(err(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"X"}]}"#
        )
        .contains("syscalls[0].action"));
        assert!(err(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW","args":[{"index":6,"value":0,"op":"SCMP_CMP_EQ"}]}]}"#)
            .contains("syscalls[0].args[0].index"));
        assert!(err(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":0,"op":"LIKE"}]}]}"#)
            .contains("syscalls[0].args[0].op"));
        assert!(err(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW","includes":{"caps":["CAP_NOPE"]}}]}"#)
            .contains("syscalls[0].includes.caps[0]"));
        assert!(err(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#).contains("listener"));
        assert!(err(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"action":"SCMP_ACT_ALLOW"}]}"#
        )
        .contains("syscalls[0].names"));
        let big = format!(
            r#"{{"defaultAction":"SCMP_ACT_ALLOW","x":"{}"}}"#,
            "a".repeat(MAX_PROFILE_BYTES)
        );
        assert!(err(&big).contains("more than"));
    }
}
