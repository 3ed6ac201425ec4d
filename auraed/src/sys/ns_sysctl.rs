//! Namespaced sysctls written into another process's namespaces: a thread
//! joins the IPC or network namespace of a process (by pidfd) and writes
//! `/proc/sys`, whose IPC and network entries are those of the writing
//! thread's namespaces.

use std::os::fd::{AsFd, BorrowedFd};

use nix::sched::{setns, CloneFlags};

#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    #[error("{0:?} is not a namespaced sysctl (kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*, net.*)")]
    NotNamespaced(String),
    #[error("{0:?} is not a sysctl name")]
    Name(String),
    #[error("the value of {0} holds a line break or a NUL, or is too long")]
    Value(String),
    #[error("starting the thread that joins the namespace")]
    Thread(#[source] std::io::Error),
    #[error("setns into the process's {kind} namespace")]
    Setns {
        kind: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("writing {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the thread that joins the namespace panicked")]
    Panicked,
}

/// The namespace a sysctl lives in, or why it can't be set per pod.
pub fn namespace_of(key: &str) -> Result<CloneFlags, SysctlError> {
    let valid = !key.is_empty()
        && key.len() <= 256
        && key.split('.').all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
    if !valid {
        return Err(SysctlError::Name(key.to_string()));
    }
    const IPC: [&str; 7] = [
        "kernel.shmmax",
        "kernel.shmall",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
    ];
    if IPC.contains(&key) || key == "kernel.sem" || key.starts_with("fs.mqueue.") {
        Ok(CloneFlags::CLONE_NEWIPC)
    } else if key.starts_with("net.") {
        Ok(CloneFlags::CLONE_NEWNET)
    } else {
        Err(SysctlError::NotNamespaced(key.to_string()))
    }
}

/// Where a microVM pod's sysctls are in its guest: a `key=value` line each,
/// put into the initrd by the parent ([`file_text`]) and set by guest-init
/// at boot ([`parse_file`], [`write_here`]), before the guest's auraed
/// starts: the guest's own namespaces are the pod's.
pub const POD_FILE: &str = "/etc/aurae/pod/sysctls";

/// Each `(key, value)` checked: its namespace, its `/proc/sys` path, its
/// value.
fn plan(sysctls: &[(String, String)]) -> Result<Vec<(CloneFlags, String, String)>, SysctlError> {
    let mut planned = Vec::new();
    for (key, value) in sysctls {
        let ns = namespace_of(key)?;
        if value.contains(['\n', '\r', '\0']) || value.len() > 4096 {
            return Err(SysctlError::Value(key.clone()));
        }
        planned.push((
            ns,
            format!("/proc/sys/{}", key.replace('.', "/")),
            value.clone(),
        ));
    }
    Ok(planned)
}

/// The text of [`POD_FILE`] for `sysctls`, each checked.
pub fn file_text(sysctls: &[(String, String)]) -> Result<String, SysctlError> {
    plan(sysctls)?;
    Ok(sysctls.iter().map(|(k, v)| format!("{k}={v}\n")).collect())
}

/// The sysctls of a [`POD_FILE`]'s text, each checked.
pub fn parse_file(text: &str) -> Result<Vec<(String, String)>, SysctlError> {
    let sysctls = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| SysctlError::Name(l.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    plan(&sysctls)?;
    Ok(sysctls)
}

/// Writes each `(key, value)` in the calling process's own namespaces.
pub fn write_here(sysctls: &[(String, String)]) -> Result<(), SysctlError> {
    for (_, path, value) in plan(sysctls)? {
        std::fs::write(&path, &value).map_err(|source| SysctlError::Write { path, source })?;
    }
    Ok(())
}

/// Writes each `(key, value)` in the namespaces of the process `pidfd`.
pub fn write_in(pidfd: BorrowedFd<'_>, sysctls: &[(String, String)]) -> Result<(), SysctlError> {
    let planned = plan(sysctls)?;
    let fd = pidfd.try_clone_to_owned().map_err(SysctlError::Thread)?;
    std::thread::Builder::new()
        .name("ns-sysctl".into())
        .spawn(move || {
            // This thread joins the namespaces and exits afterwards.
            for (kind, flag) in [
                ("ipc", CloneFlags::CLONE_NEWIPC),
                ("net", CloneFlags::CLONE_NEWNET),
            ] {
                if planned.iter().any(|(ns, _, _)| *ns == flag) {
                    setns(fd.as_fd(), flag)
                        .map_err(|source| SysctlError::Setns { kind, source })?;
                }
            }
            for (_, path, value) in &planned {
                std::fs::write(path, value).map_err(|source| SysctlError::Write {
                    path: path.clone(),
                    source,
                })?;
            }
            Ok(())
        })
        .map_err(SysctlError::Thread)?
        .join()
        .map_err(|_| SysctlError::Panicked)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_namespaced_sysctls_are_taken() {
        assert_eq!(
            namespace_of("kernel.shm_rmid_forced").unwrap(),
            CloneFlags::CLONE_NEWIPC
        );
        assert_eq!(
            namespace_of("fs.mqueue.msg_max").unwrap(),
            CloneFlags::CLONE_NEWIPC
        );
        assert_eq!(
            namespace_of("net.ipv4.ip_forward").unwrap(),
            CloneFlags::CLONE_NEWNET
        );
        assert!(matches!(
            namespace_of("kernel.panic"),
            Err(SysctlError::NotNamespaced(_))
        ));
        assert!(matches!(
            namespace_of("net/../x"),
            Err(SysctlError::Name(_))
        ));
        assert!(matches!(namespace_of("net..x"), Err(SysctlError::Name(_))));
    }

    #[test]
    fn a_pod_file_round_trips_and_refuses_what_write_in_would() {
        let sysctls = vec![
            ("kernel.shm_rmid_forced".to_string(), "1".to_string()),
            (
                "net.ipv4.ping_group_range".to_string(),
                "0 2147483647".to_string(),
            ),
        ];
        let text = file_text(&sysctls).unwrap();
        assert_eq!(parse_file(&text).unwrap(), sysctls);
        // A value may hold '=': a line splits at its first.
        let eq = vec![("net.x".to_string(), "a=b".to_string())];
        assert_eq!(parse_file(&file_text(&eq).unwrap()).unwrap(), eq);
        assert!(matches!(
            file_text(&[("net.x".into(), "1\r".into())]),
            Err(SysctlError::Value(_))
        ));
        assert!(matches!(
            file_text(&[("kernel.panic".into(), "1".into())]),
            Err(SysctlError::NotNamespaced(_))
        ));
        assert!(matches!(
            file_text(&[("net.x".into(), "a\nb".into())]),
            Err(SysctlError::Value(_))
        ));
        assert!(matches!(
            parse_file("net.ipv4.ip_forward"),
            Err(SysctlError::Name(_))
        ));
        assert!(matches!(
            parse_file("kernel.panic=1\n"),
            Err(SysctlError::NotNamespaced(_))
        ));
    }
}
