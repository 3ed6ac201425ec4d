//! The `cpu` controller: `cpu.max` and `cpu.weight`.

use std::path::Path;

use super::controller::{write_file, Controller, Limits};
use super::CgroupError;

pub struct Cpu;

impl Controller for Cpu {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn needed_by(&self, limits: &Limits) -> Option<&'static str> {
        if limits.cpu_max.is_some() {
            Some("limits.cpu_quota_us")
        } else if limits.cpu_weight.is_some() {
            Some("limits.cpu_weight")
        } else {
            None
        }
    }

    fn apply(&self, dir: &Path, limits: &Limits) -> Result<(), CgroupError> {
        if let Some((quota, period)) = limits.cpu_max {
            write_file(dir, "cpu.max", &format!("{quota} {period}"))?;
        }
        if let Some(weight) = limits.cpu_weight {
            write_file(dir, "cpu.weight", &weight.to_string())?;
        }
        Ok(())
    }
}
