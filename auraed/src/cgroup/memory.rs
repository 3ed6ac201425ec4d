//! The `memory` controller: `memory.max` and `memory.high`, and OOM kill
//! accounting through `memory.events`.

use std::path::Path;

use super::controller::{write_file, Controller, Limits};
use super::CgroupError;

pub struct Memory;

impl Controller for Memory {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn needed_by(&self, limits: &Limits) -> Option<&'static str> {
        if limits.memory_max.is_some() {
            Some("limits.memory_max_bytes")
        } else if limits.memory_high.is_some() {
            Some("limits.memory_high_bytes")
        } else {
            None
        }
    }

    fn apply(&self, dir: &Path, limits: &Limits) -> Result<(), CgroupError> {
        if let Some(high) = limits.memory_high {
            write_file(dir, "memory.high", &high.to_string())?;
        }
        if let Some(max) = limits.memory_max {
            write_file(dir, "memory.max", &max.to_string())?;
            // Without swap accounting limits, the cell could swap instead of
            // being OOM-killed; cap swap when the knob exists.
            let swap = dir.join("memory.swap.max");
            if swap.exists() {
                write_file(dir, "memory.swap.max", "0")?;
            }
        }
        Ok(())
    }
}

/// The `oom_kill` counter of a `memory.events` file's contents.
pub fn parse_oom_kills(events: &str) -> u64 {
    events
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_oom_kill_counter() {
        let text = "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(parse_oom_kills(text), 2);
        assert_eq!(parse_oom_kills(""), 0);
    }
}
