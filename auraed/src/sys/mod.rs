//! Thin, audited wrappers over the Linux syscalls auraed needs that `nix`
//! does not cover (clone3 with `CLONE_INTO_CGROUP`, pidfds, capabilities).
//!
//! This is the only module of auraed with `unsafe` code; each block carries a
//! `// SAFETY:` comment.

pub mod pidfd;
pub mod spawn;

pub use spawn::{spawn, NamespaceMode, SpawnError, SpawnSpec, SpawnStage, Spawned};

use std::os::fd::{FromRawFd, RawFd};

/// Takes ownership of an fd that this process inherited from its parent at a
/// well-known number (for example cell-init's config and status pipes).
pub fn take_inherited_fd(fd: RawFd) -> std::fs::File {
    // SAFETY: the fd was placed at this number by auraed for this process
    // alone, and nothing else in the process refers to it.
    unsafe { std::fs::File::from_raw_fd(fd) }
}

extern "C" fn noop_handler(_: libc::c_int) {}

/// Installs a handler that does nothing, so that `signal` interrupts sleeps
/// instead of being ignored (the default for SIGCHLD).
pub fn install_noop_handler(signal: nix::sys::signal::Signal) {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet};
    let action = SigAction::new(SigHandler::Handler(noop_handler), SaFlags::SA_RESTART, SigSet::empty());
    // SAFETY: the handler does nothing, so it is async-signal-safe, and it
    // replaces no handler that other code relies on.
    let _ = unsafe { sigaction(signal, &action) };
}
