//! What a daemon holds, to show that a refused request left nothing behind:
//! its fds, child processes and mounts, and the cgroups and cell state
//! directories it made.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::Daemon;

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn children(pid: u32) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.filter_map(Result::ok) {
            if let Ok(c) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(c.split_whitespace().map(str::to_string));
            }
        }
    }
    out
}

fn dirs(path: Option<PathBuf>) -> BTreeSet<String> {
    path.and_then(|p| std::fs::read_dir(p).ok())
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn mounts(pid: u32) -> usize {
    // auraed's own mount namespace, where a leaked mount would show.
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .expect("mountinfo")
        .lines()
        .count()
}

/// A daemon's holdings at one moment.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    mounts: usize,
    cgroups: BTreeSet<String>,
    state_dirs: BTreeSet<String>,
    children: BTreeSet<String>,
    fds: usize,
}

impl Snapshot {
    pub fn of(d: &Daemon) -> Snapshot {
        let pid = d.pid();
        Snapshot {
            mounts: mounts(pid),
            cgroups: dirs(d.cgroup_dir()),
            state_dirs: dirs(Some(d.seen_by_auraed("state/cells"))),
            children: children(pid),
            fds: fds(pid),
        }
    }

    /// A snapshot once the daemon's holdings stop changing (two readings
    /// 200 ms apart agree, within 3 s): connections and tasks of work just
    /// finished close in the background.
    pub fn settled(d: &Daemon) -> Snapshot {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        let mut last = Snapshot::of(d);
        loop {
            std::thread::sleep(std::time::Duration::from_millis(200));
            let now = Snapshot::of(d);
            if now == last || std::time::Instant::now() >= deadline {
                return now;
            }
            last = now;
        }
    }

    /// Panics, naming what differs, unless `d` holds what it held then,
    /// within 3 s (the daemon refills its pool of ready namespaces after a
    /// cell starts, in the background).
    pub fn assert_unchanged(&self, d: &Daemon) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        let mut now = Snapshot::of(d);
        while now != *self && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
            now = Snapshot::of(d);
        }
        assert_eq!(now.mounts, self.mounts, "mounts");
        assert_eq!(now.cgroups, self.cgroups, "cgroups");
        assert_eq!(now.state_dirs, self.state_dirs, "state dirs");
        assert_eq!(now.children, self.children, "processes");
        assert_eq!(now.fds, self.fds, "fds");
    }
}
