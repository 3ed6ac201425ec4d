//! The `Controller` trait: one implementation per cgroup v2 controller, each
//! knowing which limits need it and how to write them.

use std::path::Path;

use super::CgroupError;

/// Validated resource limits for a cell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// `cpu.max`: (quota, period) in microseconds.
    pub cpu_max: Option<(u64, u64)>,
    /// `cpu.weight`.
    pub cpu_weight: Option<u32>,
    pub memory_max: Option<u64>,
    pub memory_high: Option<u64>,
    pub pids_max: Option<u64>,
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
}

/// A cgroup v2 controller.
pub trait Controller: Sync {
    /// The controller's name in `cgroup.controllers`.
    fn name(&self) -> &'static str;
    /// The first request field that needs this controller, if any.
    fn needed_by(&self, limits: &Limits) -> Option<&'static str>;
    /// Writes the limits this controller owns into the cgroup at `dir`.
    fn apply(&self, dir: &Path, limits: &Limits) -> Result<(), CgroupError>;
}

/// Writes `value` to `dir/file`, naming the file on error.
pub(crate) fn write_file(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    std::fs::write(&path, value).map_err(|source| CgroupError::Write {
        path,
        value: value.to_string(),
        source,
    })
}

/// All controllers auraed manages, in the order they are applied.
pub fn all() -> [&'static dyn Controller; 4] {
    [
        &super::cpu::Cpu,
        &super::cpuset::Cpuset,
        &super::memory::Memory,
        &super::pids::Pids,
    ]
}
