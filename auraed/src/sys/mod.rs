//! Thin, audited wrappers over the Linux syscalls auraed needs that `nix`
//! does not cover (clone3 with `CLONE_INTO_CGROUP`, pidfds, capabilities, persistent TAPs).
//!
//! This is the only module of auraed with `unsafe` code; each block carries a
//! `// SAFETY:` comment.

mod clone;
pub mod init_process;
pub mod mount_ns;
pub mod pidfd;
pub mod spare_ns;
pub mod spawn;
pub mod tun;

pub use spawn::{spawn, NamespaceMode, SpawnError, SpawnSpec, SpawnStage, Spawned};
