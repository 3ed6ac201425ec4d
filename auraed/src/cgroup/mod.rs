//! cgroup v2 management for cells.
//!
//! Layout: `<cgroup2 mount>/<root>/<cell>` carries the cell's limits, and
//! `<cell>/leaf` holds its processes (cgroup v2 forbids processes in a cgroup
//! that distributes resources to children).
//!
//! Only cgroup v2 is supported. On a hybrid host, where controllers are bound
//! to v1 hierarchies, cells still get membership, freeze and kill; a limit
//! whose controller is missing from v2 fails with a `MissingController` error.

pub mod controller;
pub mod cpu;
pub mod cpuset;
pub mod memory;
pub mod pids;

use std::collections::BTreeSet;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use controller::{Controller, Limits};

/// Name of the child cgroup that holds a cell's processes.
pub const LEAF: &str = "leaf";
/// The folder, beside the cells, of plain executables' cgroups (a name no
/// cell can have).
pub const EXECUTABLES: &str = ".executables";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup v2 hierarchy is mounted (looked in /proc/self/mountinfo)")]
    NoHierarchy,
    #[error(
        "{field} needs the cgroup v2 '{controller}' controller, which is not available at {mount} \
         (cgroup.controllers: '{available}'); on a hybrid host it is bound to a cgroup v1 hierarchy"
    )]
    MissingController {
        controller: &'static str,
        field: &'static str,
        mount: PathBuf,
        available: String,
    },
    #[error("enabling the '{controller}' controller in {path}: {source}")]
    Enable {
        controller: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing '{value}' to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cgroup {0} already exists")]
    Exists(PathBuf),
    #[error("cgroup {path} still has processes after {waited:?}")]
    Busy { path: PathBuf, waited: Duration },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// auraed's part of the cgroup v2 hierarchy.
#[derive(Debug, Clone)]
pub struct Hierarchy {
    mount: PathBuf,
    root: PathBuf,
}

impl Hierarchy {
    /// Finds the cgroup v2 mount and uses `<mount>/<root_name>` as auraed's
    /// root, creating it if needed.
    pub fn open(root_name: &str) -> Result<Self, CgroupError> {
        let mount = find_cgroup2_mount().ok_or(CgroupError::NoHierarchy)?;
        Self::at(mount, root_name)
    }

    /// Uses `<mount>/<root_name>` as auraed's root.
    pub fn at(mount: PathBuf, root_name: &str) -> Result<Self, CgroupError> {
        let root = mount.join(root_name);
        std::fs::create_dir_all(&root).map_err(io_err(&root))?;
        Ok(Self { mount, root })
    }

    pub fn mount(&self) -> &Path {
        &self.mount
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Controllers that cgroup v2 offers on this host.
    pub fn available(&self) -> BTreeSet<String> {
        read_set(&self.mount.join("cgroup.controllers"))
    }

    /// Checks that every controller the limits need is available, without
    /// changing anything. This runs before any resource is created.
    pub fn check(&self, limits: &Limits) -> Result<(), CgroupError> {
        let available = self.available();
        for c in controller::all() {
            if let Some(field) = c.needed_by(limits) {
                if !available.contains(c.name()) {
                    return Err(CgroupError::MissingController {
                        controller: c.name(),
                        field,
                        mount: self.mount.clone(),
                        available: available.iter().cloned().collect::<Vec<_>>().join(" "),
                    });
                }
            }
        }
        Ok(())
    }

    /// Enables `controller` on every level from the mount down to auraed's
    /// root, so that cells can use it.
    fn enable(&self, controller: &'static str) -> Result<(), CgroupError> {
        let mut dirs = vec![self.root.clone()];
        let mut cur = self.root.as_path();
        while let Some(parent) = cur.parent() {
            if !parent.starts_with(&self.mount) {
                break;
            }
            dirs.push(parent.to_path_buf());
            cur = parent;
        }
        for dir in dirs.iter().rev() {
            let control = dir.join("cgroup.subtree_control");
            if read_set(&control).contains(controller) {
                continue;
            }
            std::fs::write(&control, format!("+{controller}")).map_err(|source| {
                CgroupError::Enable {
                    controller,
                    path: control.clone(),
                    source,
                }
            })?;
        }
        Ok(())
    }

    /// Creates the cgroup of cell `name` with its limits and its leaf.
    /// Nothing is left behind on error.
    pub fn create_cell(&self, name: &str, limits: &Limits) -> Result<CellCgroup, CgroupError> {
        self.check(limits)?;
        for c in controller::all() {
            if c.needed_by(limits).is_some() {
                self.enable(c.name())?;
            }
        }
        let dir = self.root.join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(CgroupError::Exists(dir))
            }
            Err(e) => return Err(io_err(&dir)(e)),
        }
        let cell = CellCgroup {
            leaf: dir.join(LEAF),
            dir,
        };
        let setup = || -> Result<(), CgroupError> {
            for c in controller::all() {
                c.apply(&cell.dir, limits)?;
            }
            std::fs::create_dir(&cell.leaf).map_err(io_err(&cell.leaf))
        };
        if let Err(e) = setup() {
            let _ = cell.remove(Duration::from_secs(1));
            return Err(e);
        }
        Ok(cell)
    }

    /// Writes `limits` into a cell's cgroup (its fields that are set); a
    /// limit whose controller is missing fails first, changing nothing.
    pub fn update_cell(&self, cell: &CellCgroup, limits: &Limits) -> Result<(), CgroupError> {
        self.check(limits)?;
        for c in controller::all() {
            if c.needed_by(limits).is_some() {
                self.enable(c.name())?;
            }
        }
        for c in controller::all() {
            c.apply(&cell.dir, limits)?;
        }
        Ok(())
    }

    /// Makes the folder of executables' cgroups (at start, so that running
    /// an executable makes only its own cgroup).
    pub fn ensure_executables_dir(&self) -> Result<(), CgroupError> {
        let dir = self.root.join(EXECUTABLES);
        match std::fs::create_dir(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(io_err(&dir)(e)),
        }
    }

    /// The cgroup of a plain executable `id`: under [`EXECUTABLES`], so
    /// that a restarted auraed finds what a crashed one left running.
    pub fn create_executable(&self, id: &str) -> Result<CellCgroup, CgroupError> {
        let parent = self.root.join(EXECUTABLES);
        match std::fs::create_dir(&parent) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(&parent)(e)),
        }
        let dir = parent.join(id);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(CgroupError::Exists(dir))
            }
            Err(e) => return Err(io_err(&dir)(e)),
        }
        let cgroup = CellCgroup {
            leaf: dir.join(LEAF),
            dir,
        };
        if let Err(e) = std::fs::create_dir(&cgroup.leaf) {
            let _ = cgroup.remove(Duration::from_secs(1));
            return Err(io_err(&cgroup.leaf)(e));
        }
        Ok(cgroup)
    }

    fn children(dir: &Path) -> Vec<CellCgroup> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut found: Vec<CellCgroup> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .filter(|e| e.file_name() != EXECUTABLES)
            .map(|e| CellCgroup {
                leaf: e.path().join(LEAF),
                dir: e.path(),
            })
            .collect();
        found.sort_by(|a, b| a.dir.cmp(&b.dir));
        found
    }

    /// Cell cgroups under auraed's root, e.g. left behind by a previous run.
    pub fn cells(&self) -> Vec<CellCgroup> {
        Self::children(&self.root)
    }

    /// Cgroups of plain executables, e.g. left behind by a previous run.
    pub fn executables(&self) -> Vec<CellCgroup> {
        Self::children(&self.root.join(EXECUTABLES))
    }
}

/// The cgroup of one cell.
#[derive(Debug, Clone)]
pub struct CellCgroup {
    dir: PathBuf,
    leaf: PathBuf,
}

impl CellCgroup {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn name(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Opens the leaf directory for `CLONE_INTO_CGROUP`.
    pub fn open_leaf(&self) -> Result<OwnedFd, CgroupError> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(&self.leaf)
            .map_err(io_err(&self.leaf))?;
        Ok(file.into())
    }

    /// Freezes (`true`) or thaws the cell and waits until the kernel reports
    /// the new state.
    pub fn set_frozen(&self, frozen: bool) -> Result<(), CgroupError> {
        controller::write_file(&self.dir, "cgroup.freeze", if frozen { "1" } else { "0" })?;
        let want = if frozen { "frozen 1" } else { "frozen 0" };
        let events = self.dir.join("cgroup.events");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let text = std::fs::read_to_string(&events).map_err(io_err(&events))?;
            if text.lines().any(|l| l == want) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Err(CgroupError::Busy {
            path: self.dir.clone(),
            waited: Duration::from_secs(5),
        })
    }

    pub fn is_frozen(&self) -> bool {
        std::fs::read_to_string(self.dir.join("cgroup.freeze"))
            .map(|s| s.trim() == "1")
            .unwrap_or(false)
    }

    /// Kills every process of the cell at once (`cgroup.kill`).
    pub fn kill(&self) -> Result<(), CgroupError> {
        controller::write_file(&self.dir, "cgroup.kill", "1")
    }

    /// The processes in the cgroup's leaf.
    pub fn procs(&self) -> Vec<i32> {
        std::fs::read_to_string(self.leaf.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Whether any process is left in the cell.
    pub fn populated(&self) -> bool {
        std::fs::read_to_string(self.dir.join("cgroup.events"))
            .map(|t| t.lines().any(|l| l == "populated 1"))
            .unwrap_or(false)
    }

    /// Number of OOM kills in the cell so far (0 without the memory
    /// controller).
    pub fn oom_kills(&self) -> u64 {
        std::fs::read_to_string(self.dir.join("memory.events"))
            .map(|t| memory::parse_oom_kills(&t))
            .unwrap_or(0)
    }

    /// Reads a file of the cell's cgroup, such as `cpu.stat`.
    pub fn read(&self, file: &str) -> Result<String, CgroupError> {
        let path = self.dir.join(file);
        std::fs::read_to_string(&path).map_err(io_err(&path))
    }

    /// Kills what is left, waits for the cgroup to empty, and removes it.
    pub fn remove(&self, timeout: Duration) -> Result<(), CgroupError> {
        if !self.dir.exists() {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        if self.populated() {
            // A frozen cgroup still dies from cgroup.kill.
            self.kill()?;
            while self.populated() {
                if Instant::now() >= deadline {
                    return Err(CgroupError::Busy {
                        path: self.dir.clone(),
                        waited: timeout,
                    });
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        // Remove children first (the leaf, and anything a workload made in a
        // delegated subtree), deepest first.
        let mut dirs = Vec::new();
        collect_dirs(&self.dir, &mut dirs);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs.iter().chain(std::iter::once(&self.dir)) {
            loop {
                match std::fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    // The last zombie can linger for a moment after
                    // `populated 0`.
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(2))
                    }
                    Err(e) => return Err(io_err(d)(e)),
                }
            }
        }
        Ok(())
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.filter_map(Result::ok) {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.push(e.path());
                collect_dirs(&e.path(), out);
            }
        }
    }
}

fn read_set(path: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(path)
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Finds the cgroup2 mount point, preferring `/sys/fs/cgroup` (pure v2),
/// then `/sys/fs/cgroup/unified` (hybrid), then any other.
pub fn find_cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut mounts: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let fstype = post.split_whitespace().next()?;
            if fstype == "cgroup2" {
                Some(PathBuf::from(pre.split_whitespace().nth(4)?))
            } else {
                None
            }
        })
        .collect();
    mounts.sort_by_key(|m| match m.to_str() {
        Some("/sys/fs/cgroup") => 0,
        Some("/sys/fs/cgroup/unified") => 1,
        _ => 2,
    });
    mounts.into_iter().next()
}
