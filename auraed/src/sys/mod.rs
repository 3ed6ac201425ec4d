//! Thin, audited wrappers over the Linux syscalls auraed needs that `nix`
//! does not cover (clone3 with `CLONE_INTO_CGROUP`, pidfds, capabilities, persistent TAPs).
//!
//! This is the only module of auraed with `unsafe` code; each block carries a
//! `// SAFETY:` comment.

mod clone;
pub mod init_process;
pub mod mount_inject;
pub mod mount_ns;
pub mod mount_propagation;
pub mod ns_sysctl;
pub mod pidfd;
pub mod pty;
pub mod spare_ns;
pub mod spawn;
pub mod tun;

pub use spawn::{spawn, NamespaceMode, SpawnError, SpawnSpec, SpawnStage, Spawned};

/// Registers `fd` with the tokio reactor for readability (a pidfd, an
/// inotify fd).
pub fn readable(
    fd: std::os::fd::OwnedFd,
) -> std::io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    // SAFETY: the OwnedFd is moved into the AsyncFd, which is then its only
    // owner, so the fd can't be closed or reused while it is registered.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

/// Registers `fd` with the tokio reactor for reading and writing (a
/// terminal's master).
pub fn pollable(
    fd: std::os::fd::OwnedFd,
) -> std::io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    // SAFETY: as in `readable`: the AsyncFd is the OwnedFd's only owner.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(
            fd,
            tokio::io::Interest::READABLE | tokio::io::Interest::WRITABLE,
        )
    }
    .map_err(|e| e.into_parts().1)
}
