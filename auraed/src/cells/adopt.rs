//! Taking back a cell that a previous auraed made and left running (the
//! cell of an instance kept across a restart): its cgroup and its init,
//! checked by pid, start time and cgroup so that a reused pid is never
//! taken for it.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::watch;

use super::Cell;
use crate::cgroup::CellCgroup;
use crate::error::ApiError;
use crate::sys::pidfd;

/// What a record says of a cell to take back.
#[derive(Debug, Clone)]
pub struct Survivor {
    pub cgroup: CellCgroup,
    pub init_pid: i32,
    /// The init's start time, in clock ticks since boot.
    pub init_start: u64,
    /// The `CLONE_NEW*` flags of the namespaces it does not share.
    pub ns_flags: libc::c_int,
    /// Where its files were (on the previous auraed's tmpfs, out of reach:
    /// removing them finds nothing).
    pub state_dir: PathBuf,
    pub created_at: SystemTime,
}

/// A process's start time in clock ticks since boot, if it exists.
pub fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command (in parentheses), start time is the 20th field.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// Whether `pid` is in the cgroup at `dir` or below it (`mount` is where
/// cgroup v2 is mounted).
pub fn in_cgroup(pid: i32, mount: &Path, dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return false;
    };
    text.lines()
        .filter_map(|l| l.strip_prefix("0::"))
        .any(|p| mount.join(p.trim_start_matches('/')).starts_with(dir))
}

impl Cell {
    /// The cell `s` describes, if its init is still the process the record
    /// names. Its init is not this auraed's child: its exit is seen through
    /// a pidfd, its status went to whoever reaped it.
    pub fn adopt(name: &str, s: Survivor, mount: &Path) -> Result<Arc<Cell>, ApiError> {
        let pid = s.init_pid;
        let fd = pidfd::open(pid).map_err(|e| ApiError::io(format!("pidfd_open({pid})"), e))?;
        // Checked through the pidfd: a pid reused since is refused.
        if start_ticks(pid) != Some(s.init_start) || !in_cgroup(pid, mount, s.cgroup.dir()) {
            return Err(ApiError::FailedPrecondition(format!(
                "cell {name}: pid {pid} is no longer its init"
            )));
        }
        let leaf = s.cgroup.open_leaf()?;
        let ns_pidfd = fd
            .try_clone()
            .map_err(|e| ApiError::io("duplicating the init's pidfd", e))?;
        let watched = pidfd::watch(fd).map_err(|e| ApiError::io("watching the cell's init", e))?;
        let (exit_tx, exit_rx) = watch::channel(false);
        tokio::spawn(async move {
            // Readable once it has exited; an error means it can't be
            // watched, which is taken as an exit too.
            if let Err(e) = watched.readable().await {
                tracing::error!("watching adopted cell init {pid}: {e}");
            }
            let _ = exit_tx.send(true);
        });
        let privileged = true;
        Ok(Arc::new(Cell {
            name: name.to_string(),
            cgroup: s.cgroup,
            jailed: false,
            privileged,
            caps_keep: None,
            caps_ambient: 0,
            no_new_privs: false,
            seccomp: Vec::new(),
            image: None,
            state_dir: s.state_dir,
            init_pid: pid,
            created_at: s.created_at,
            executables: Mutex::new(Vec::new()),
            leaf,
            ns_pidfd,
            ns_flags: s.ns_flags,
            init_exit: exit_rx,
            stopped: AtomicBool::new(false),
            pid_one: None,
            main: Default::default(),
        }))
    }

    /// The init's pid and start time, and the flags of the cell's own
    /// namespaces: what a record needs to take the cell back.
    pub fn identity(&self) -> Option<(i32, u64, libc::c_int)> {
        start_ticks(self.init_pid).map(|t| (self.init_pid, t, self.ns_flags))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_start_time_and_a_missing_one_has_none() {
        assert!(start_ticks(std::process::id() as i32).is_some());
        assert!(start_ticks(i32::MAX).is_none());
    }

    #[test]
    fn a_process_is_in_its_own_cgroup_and_not_in_another() {
        let pid = std::process::id() as i32;
        let text = std::fs::read_to_string("/proc/self/cgroup").expect("cgroup");
        let Some(own) = text.lines().find_map(|l| l.strip_prefix("0::")) else {
            return; // no cgroup v2 line on this host
        };
        let mount = Path::new("/sys/fs/cgroup");
        let dir = mount.join(own.trim_start_matches('/'));
        assert!(in_cgroup(pid, mount, &dir));
        assert!(!in_cgroup(pid, mount, &dir.join("elsewhere")));
    }
}
