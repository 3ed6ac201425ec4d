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
    #[error("the value of {0} holds a line break or is too long")]
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

/// Writes each `(key, value)` in the namespaces of the process `pidfd`.
pub fn write_in(pidfd: BorrowedFd<'_>, sysctls: &[(String, String)]) -> Result<(), SysctlError> {
    let mut planned = Vec::new();
    for (key, value) in sysctls {
        let ns = namespace_of(key)?;
        if value.contains('\n') || value.len() > 4096 {
            return Err(SysctlError::Value(key.clone()));
        }
        planned.push((
            ns,
            format!("/proc/sys/{}", key.replace('.', "/")),
            value.clone(),
        ));
    }
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
}
