//! The `pids` controller: `pids.max`.

use std::path::Path;

use super::controller::{write_file, Controller, Limits};
use super::CgroupError;

pub struct Pids;

impl Controller for Pids {
    fn name(&self) -> &'static str {
        "pids"
    }

    fn needed_by(&self, limits: &Limits) -> Option<&'static str> {
        limits.pids_max.map(|_| "limits.pids_max")
    }

    fn apply(&self, dir: &Path, limits: &Limits) -> Result<(), CgroupError> {
        if let Some(max) = limits.pids_max {
            write_file(dir, "pids.max", &max.to_string())?;
        }
        Ok(())
    }
}
