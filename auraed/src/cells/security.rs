//! What a cell may reach beyond the container defaults, as validated from
//! its request.

use std::path::PathBuf;

use super::caps;

/// What a cell may reach beyond the container defaults (see
/// [`init::Plan`]): all validated against the rest of the request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Security {
    /// Every capability, /proc and /sys writable, nothing masked.
    pub privileged: bool,
    /// Host paths that stay writable in a jailed cell's read-only host root.
    pub writable_paths: Vec<PathBuf>,
    /// Host device nodes added to the cell's minimal /dev.
    pub devices: Vec<PathBuf>,
    /// The cell's cgroup subtree is writable inside it.
    pub delegate_cgroup: bool,
    /// The sysctls of the cell's own network namespace are writable.
    pub net_sysctls: bool,
    /// Every capability, with the mounts still sealed: a spawned auraed's
    /// cell (set by auraed, never by a request).
    pub all_caps: bool,
    /// Host folders or files bound read-only into the cell: (host path,
    /// path inside).
    pub read_only_binds: Vec<(PathBuf, PathBuf)>,
    /// Capabilities added to and dropped from the default set.
    pub caps: caps::CapChange,
    /// Every process runs with no_new_privs.
    pub no_new_privs: bool,
    /// Files or folders bound into a cell with a root of its own.
    pub mounts: Vec<Bind>,
}

/// A file or folder of auraed's mount namespace bound into a cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub host: PathBuf,
    /// Absolute, inside the cell.
    pub inside: PathBuf,
    pub read_only: bool,
}
