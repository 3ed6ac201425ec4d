//! What a previous run of auraed left of its cells and executables,
//! removed when it starts.

use std::path::Path;
use std::time::Duration;

use crate::cgroup::Hierarchy;

/// Removes cells left behind by a previous run: their processes and
/// cgroups, but those of the cells named in `keep` (VMs to take back), and
/// every cell's files (those of a previous run's tmpfs are out of reach
/// anyway). Returns what was removed, for the log.
pub fn clean_leftovers(
    hierarchy: Option<&Hierarchy>,
    state_dir: &Path,
    keep: &[String],
) -> Vec<String> {
    let mut removed = Vec::new();
    if let Some(h) = hierarchy {
        for exe in h.executables() {
            let procs = exe.procs();
            match exe.remove(Duration::from_secs(10)) {
                Ok(()) => removed.push(format!(
                    "executable {} (killed {} process(es): {procs:?}) and its cgroup",
                    exe.name(),
                    procs.len()
                )),
                Err(e) => tracing::error!("could not remove leftover executable cgroup: {e}"),
            }
        }
        let _ = std::fs::remove_dir(h.root().join(crate::cgroup::EXECUTABLES));
        for cell in h.cells().into_iter().filter(|c| !keep.contains(&c.name())) {
            match cell.remove(Duration::from_secs(10)) {
                Ok(()) => removed.push(format!("cgroup {}", cell.dir().display())),
                Err(e) => tracing::error!("could not remove leftover cell cgroup: {e}"),
            }
        }
    }
    for partial in crate::oci::cache::clean_partial(&state_dir.join("images")) {
        removed.push(format!("partial image unpack {}", partial.display()));
    }
    for partial in crate::oci::import::clean_partial(&state_dir.join("imports")) {
        removed.push(format!("partial image import {}", partial.display()));
    }
    if let Ok(entries) = std::fs::read_dir(state_dir.join("cells")) {
        for e in entries.filter_map(Result::ok) {
            match std::fs::remove_dir_all(e.path()) {
                Ok(()) => removed.push(format!("directory {}", e.path().display())),
                Err(err) => tracing::error!("could not remove {}: {err}", e.path().display()),
            }
        }
    }
    removed
}
