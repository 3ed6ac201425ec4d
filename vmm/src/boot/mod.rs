//! Loading the guest: kernel, initrd, command line, boot parameters and the
//! initial vCPU state.

pub mod cpuid;
pub mod kernel;
pub mod layout;
pub mod mptable;
pub mod regs;
#[doc(hidden)]
pub mod test_elf;

/// Longest kernel command line accepted (including the NUL).
pub const CMDLINE_MAX: usize = 4096;
