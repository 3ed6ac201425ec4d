//! The `cpuset` controller: `cpuset.cpus` and `cpuset.mems`.

use std::path::Path;

use super::controller::{write_file, Controller, Limits};
use super::CgroupError;

pub struct Cpuset;

impl Controller for Cpuset {
    fn name(&self) -> &'static str {
        "cpuset"
    }

    fn needed_by(&self, limits: &Limits) -> Option<&'static str> {
        if limits.cpuset_cpus.is_some() {
            Some("limits.cpuset_cpus")
        } else if limits.cpuset_mems.is_some() {
            Some("limits.cpuset_mems")
        } else {
            None
        }
    }

    fn apply(&self, dir: &Path, limits: &Limits) -> Result<(), CgroupError> {
        if let Some(cpus) = &limits.cpuset_cpus {
            write_file(dir, "cpuset.cpus", cpus)?;
        }
        if let Some(mems) = &limits.cpuset_mems {
            write_file(dir, "cpuset.mems", mems)?;
        }
        Ok(())
    }
}

/// Parses the kernel's list format ("0-3,5") into sorted ids, rejecting
/// anything malformed.
pub fn parse_list(list: &str) -> Option<Vec<u32>> {
    let mut ids = Vec::new();
    for part in list.trim().split(',') {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?),
            None => {
                let v = part.parse::<u32>().ok()?;
                (v, v)
            }
        };
        if lo > hi || hi - lo > 4096 {
            return None;
        }
        ids.extend(lo..=hi);
    }
    ids.sort_unstable();
    ids.dedup();
    Some(ids)
}

#[cfg(test)]
mod tests {
    use super::parse_list;

    #[test]
    fn parses_cpu_lists() {
        assert_eq!(parse_list("0-2,5"), Some(vec![0, 1, 2, 5]));
        assert_eq!(parse_list("1"), Some(vec![1]));
        assert_eq!(parse_list("3-1"), None);
        assert_eq!(parse_list("a"), None);
        assert_eq!(parse_list(""), None);
        assert_eq!(parse_list("0,,1"), None);
    }
}
