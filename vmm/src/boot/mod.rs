//! Loading the guest: kernel, initrd, command line, boot parameters and the
//! initial vCPU state.

pub mod mptable;

/// Longest kernel command line accepted (including the NUL).
pub const CMDLINE_MAX: usize = 4096;
