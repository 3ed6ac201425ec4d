//! A cell's capabilities: the container default set (every capability for
//! a privileged cell), with what the request adds and drops, bounded by
//! what auraed itself holds.

use crate::error::ApiError;

/// Capability names in bit order (`CAP_` left off), as `capabilities(7)`.
const NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Every capability this table knows.
const ALL: u64 = (1 << NAMES.len()) - 1;

/// What a request changes of the default set (bit masks): `ALL` first,
/// then the named ones, as other runtimes do (`drop: [ALL], add: [X]`
/// keeps X).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapChange {
    pub add_all: bool,
    pub drop_all: bool,
    pub add: u64,
    pub drop: u64,
    /// Raised in the ambient set: kept across execve by a non-root user.
    pub ambient: u64,
}

impl CapChange {
    pub fn is_empty(&self) -> bool {
        *self == CapChange::default()
    }
}

/// A name's mask (`CAP_NET_ADMIN`, `net_admin`), or `None` for `ALL`;
/// `Err` for a name that isn't a capability.
fn parse_one(name: &str) -> Result<Option<u64>, ()> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    if bare == "ALL" {
        return Ok(None);
    }
    NAMES
        .iter()
        .position(|n| *n == bare)
        .map(|i| Some(1 << i))
        .ok_or(())
}

/// One capability's mask (`CAP_SYS_ADMIN`, `sys_admin`); `None` for a
/// name that isn't one (`ALL` included).
pub fn mask_of(name: &str) -> Option<u64> {
    parse_one(name).ok().flatten()
}

/// The request's `cap_add`, `cap_drop` and `cap_ambient`, each name
/// checked; a jailed cell keeps its own minimal set, and may not add to it
/// nor raise any.
pub fn parse(
    add: &[String],
    drop: &[String],
    ambient: &[String],
    jailed: bool,
) -> Result<CapChange, ApiError> {
    for (field, names) in [("cap_add", add), ("cap_ambient", ambient)] {
        if jailed && !names.is_empty() {
            return Err(ApiError::invalid(
                field,
                "a jailed cell keeps its own minimal set of capabilities",
            ));
        }
    }
    // (every one named, or ALL; the named ones' mask)
    let masks = |field: &str, names: &[String]| -> Result<(bool, u64), ApiError> {
        names
            .iter()
            .enumerate()
            .try_fold((false, 0u64), |(all, m), (i, n)| match parse_one(n) {
                Ok(Some(bit)) => Ok((all, m | bit)),
                Ok(None) => Ok((true, m)),
                Err(()) => Err(ApiError::invalid(
                    format!("{field}[{i}]"),
                    format!("{} is not a capability", crate::validation::shown(n)),
                )),
            })
    };
    let (add_all, add) = masks("cap_add", add)?;
    let (drop_all, drop) = masks("cap_drop", drop)?;
    if let Some(i) = ambient.iter().position(|n| parse_one(n) == Ok(None)) {
        return Err(ApiError::invalid(
            format!("cap_ambient[{i}]"),
            "ALL is not an ambient capability: name each one",
        ));
    }
    let (_, ambient) = masks("cap_ambient", ambient)?;
    Ok(CapChange {
        add_all,
        drop_all,
        add,
        drop,
        ambient,
    })
}

/// Checks that every ambient capability of `change` is among those the
/// cell keeps (`keep`, as [`keep`] gives it): one that isn't can't be
/// raised.
pub fn check_ambient(keep: Option<u64>, change: CapChange) -> Result<(), ApiError> {
    let kept = keep.unwrap_or_else(own_permitted);
    let missing = change.ambient & !kept;
    if missing == 0 {
        return Ok(());
    }
    let bit = missing.trailing_zeros() as usize;
    Err(ApiError::invalid(
        "cap_ambient",
        format!(
            "CAP_{} is not among the cell's capabilities (add it with cap_add)",
            NAMES.get(bit).copied().unwrap_or("?")
        ),
    ))
}

/// What auraed itself may give: its permitted set.
pub fn own_permitted() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapPrm:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// The mask a cell's processes keep: `None` for every capability auraed
/// has (a privileged cell that changes nothing; one that raises ambient
/// capabilities gets every one auraed has, as a mask, since the ambient
/// ones are raised from it).
pub fn keep(privileged: bool, change: CapChange) -> Option<u64> {
    if privileged && change.is_empty() {
        return None;
    }
    let base = if change.drop_all {
        0
    } else if privileged || change.add_all {
        ALL
    } else {
        crate::jail::container_caps()
    };
    Some(((base | change.add) & !change.drop) & own_permitted())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_with_or_without_the_prefix_and_all_covers_every_one() {
        let c = parse(
            &["CAP_NET_ADMIN".into(), "sys_admin".into()],
            &["ALL".into()],
            &["net_bind_service".into()],
            false,
        )
        .unwrap();
        assert_eq!(c.add, (1 << 12) | (1 << 21));
        assert!(c.drop_all && c.drop == 0);
        assert_eq!(c.ambient, 1 << 10);
        let e = parse(&[], &["CAP_NOPE".into()], &[], false)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cap_drop[0]"), "{e}");
        assert!(parse(&["CHOWN".into()], &[], &[], true).is_err());
        let e = parse(&[], &[], &["CHOWN".into()], true)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cap_ambient"), "{e}");
        for all in ["all", "CAP_ALL"] {
            let e = parse(&[], &[], &["CHOWN".into(), all.into()], false)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("cap_ambient[1]"), "{e}");
        }
    }

    #[test]
    fn an_ambient_capability_must_be_kept() {
        let change = CapChange {
            drop_all: true,
            add: 1 << 10,
            ambient: 1 << 10,
            ..Default::default()
        };
        assert!(check_ambient(Some(1 << 10), change).is_ok());
        let e = check_ambient(Some(0), change).unwrap_err().to_string();
        assert!(
            e.starts_with("cap_ambient") && e.contains("CAP_NET_BIND_SERVICE"),
            "{e}"
        );
    }

    #[test]
    fn the_kept_set_is_the_default_changed_and_bounded_by_auraeds_own() {
        let own = own_permitted();
        assert_eq!(keep(true, CapChange::default()), None);
        let none = keep(
            false,
            CapChange {
                drop_all: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(none, 0);
        // Dropping ALL, then adding one, keeps that one.
        let one = keep(
            false,
            CapChange {
                drop_all: true,
                add: 1 << 10,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(one, (1 << 10) & own);
        let more = keep(
            false,
            CapChange {
                add: 1 << 12,
                drop: 1,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(more, ((crate::jail::container_caps() | 1 << 12) & !1) & own);
    }
}
