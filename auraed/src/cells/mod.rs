//! Cells: a cgroup v2 with deny-by-default namespaces, optionally rooted in
//! an OCI image, shared by every process of the cell.
//!
//! A cell is anchored by its init process ([`init`]), which holds the new
//! namespaces. Executables join them (and the cell's cgroup) at start.

pub mod adopt;
mod leftovers;
pub use leftovers::clean_leftovers;
pub mod caps;
mod harden;
pub mod init;
pub mod ns_pool;
pub mod security;

pub use security::{Bind, Propagation, Security};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use crate::cgroup::{CellCgroup, Hierarchy, Limits};
use crate::error::ApiError;
use crate::oci::ImageDefaults;
use crate::sys::init_process::spawn_init;
use crate::sys::pidfd;
use init::InitConfig;

/// Host namespaces a cell shares instead of getting its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostShare {
    pub mount: bool,
    pub pid: bool,
    pub net: bool,
    pub ipc: bool,
    pub uts: bool,
    pub cgroup: bool,
}

/// A file written into a cell's writable layer before it starts.
#[derive(Debug, Clone)]
pub struct SeedFile {
    /// Relative to the cell's root.
    pub path: PathBuf,
    pub contents: Vec<u8>,
    pub mode: u32,
}

/// A root filesystem already unpacked (a spawned instance's image), used
/// as the read-only lower layer of the cell's overlay, with files of the
/// cell's own on top.
#[derive(Debug, Clone)]
pub struct PreparedRoot {
    pub lower: PathBuf,
    pub files: Vec<SeedFile>,
}

/// A validated cell request.
#[derive(Debug, Clone, Default)]
pub struct CellSpec {
    pub name: String,
    pub limits: Limits,
    pub share: HostShare,
    pub jailed: bool,
    pub image: Option<PathBuf>,
    pub security: Security,
    /// Instead of an image: a root made by auraed (never by a request).
    pub prepared_root: Option<PreparedRoot>,
    /// The hostname in its own UTS namespace; `None`: its name.
    pub hostname: Option<String>,
    /// Its first executable is PID 1 of a PID namespace of its own, beside
    /// the cell's (a Kubernetes container's `pid: CONTAINER`); later ones
    /// join it.
    pub pid_one: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellState {
    Running,
    Frozen,
    Stopped,
}

pub struct Cell {
    pub name: String,
    pub cgroup: CellCgroup,
    pub jailed: bool,
    /// Keeps every capability (see [`Security::privileged`]).
    pub privileged: bool,
    /// The capabilities its processes keep (`None`: every one auraed has).
    pub caps_keep: Option<u64>,
    /// Those of them raised in the ambient set.
    pub caps_ambient: u64,
    /// Its processes run with no_new_privs.
    pub no_new_privs: bool,
    /// The seccomp programs its processes install (compiled for the
    /// capabilities they keep).
    pub seccomp: Vec<Vec<libc::sock_filter>>,
    /// The image's defaults, for cells with an image.
    pub image: Option<ImageDefaults>,
    pub state_dir: PathBuf,
    pub init_pid: i32,
    pub created_at: SystemTime,
    pub executables: Mutex<Vec<String>>,
    leaf: OwnedFd,
    /// A pidfd of the init, for joining its namespaces.
    ns_pidfd: OwnedFd,
    ns_flags: libc::c_int,
    init_exit: watch::Receiver<bool>,
    stopped: AtomicBool,
    /// What its first executable does in its own PID and mount namespaces
    /// (`CellSpec::pid_one`), and that executable's pidfd once it runs.
    pub pid_one: Option<Vec<crate::sys::init_process::InitOp>>,
    main: std::sync::OnceLock<OwnedFd>,
}

/// What cell creation needs from the daemon.
#[derive(Clone)]
pub struct CellContext {
    pub hierarchy: Hierarchy,
    pub state_dir: PathBuf,
    /// Ready network and IPC namespaces, when the pool is running.
    pub spare_ns: Option<Arc<ns_pool::NamespacePool>>,
    /// auraed's own files (state, configuration, keys), hidden from a
    /// jailed cell's view of the host's root.
    pub hidden: Vec<PathBuf>,
    /// The most an image's unpack may write into the cache.
    pub image_unpack_limit_bytes: u64,
}

impl HostShare {
    fn new_namespace_flags(&self) -> libc::c_int {
        let shared = [
            (libc::CLONE_NEWCGROUP, self.cgroup),
            (libc::CLONE_NEWIPC, self.ipc),
            (libc::CLONE_NEWUTS, self.uts),
            (libc::CLONE_NEWNET, self.net),
            (libc::CLONE_NEWPID, self.pid),
            (libc::CLONE_NEWNS, self.mount),
        ];
        shared
            .iter()
            .filter(|(_, s)| !s)
            .fold(0, |acc, (f, _)| acc | f)
    }
}

/// Undoes a half-built cell when dropped before `disarm`.
struct Undo {
    state_dir: Option<PathBuf>,
    cgroup: Option<CellCgroup>,
    init: Option<OwnedFd>,
}

impl Undo {
    fn disarm(&mut self) {
        self.state_dir = None;
        self.cgroup = None;
        self.init = None;
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        if let Some(cg) = &self.cgroup {
            let _ = cg.kill();
        }
        if let Some(init) = &self.init {
            let _ = pidfd::reap_blocking(init);
        }
        if let Some(cg) = &self.cgroup {
            if let Err(e) = cg.remove(Duration::from_secs(10)) {
                tracing::error!("cleaning up cgroup {}: {e}", cg.dir().display());
            }
        }
        if let Some(dir) = &self.state_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Writes the seed files into a cell's writable layer.
fn seed(upper: &Path, files: &[SeedFile]) -> Result<(), ApiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    for f in files {
        let path = upper.join(&f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| ApiError::io(format!("creating {}", parent.display()), e))?;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(f.mode)
            .open(&path)
            .and_then(|mut file| file.write_all(&f.contents))
            .map_err(|e| ApiError::io(format!("writing {}", path.display()), e))?;
    }
    Ok(())
}

/// A writable path may not uncover auraed's own files.
fn refuse_hidden(writable: &[PathBuf], hidden: &[PathBuf]) -> Result<(), ApiError> {
    for (i, path) in writable.iter().enumerate() {
        if let Some(h) = hidden.iter().find(|h| path.starts_with(h)) {
            return Err(ApiError::invalid(
                format!("writable_paths[{i}]"),
                format!(
                    "{} would expose auraed's own {}",
                    path.display(),
                    h.display()
                ),
            ));
        }
    }
    Ok(())
}

fn internal(what: &str) -> impl FnOnce(std::io::Error) -> ApiError + '_ {
    move |e| ApiError::io(what, e)
}

struct Parts {
    cgroup: CellCgroup,
    leaf: OwnedFd,
    ns_pidfd: OwnedFd,
    ns_flags: libc::c_int,
    init_pid: i32,
    init_pidfd: OwnedFd,
    image: Option<ImageDefaults>,
    state_dir: PathBuf,
}

fn create_blocking(spec: &CellSpec, ctx: &CellContext) -> Result<Parts, ApiError> {
    ctx.hierarchy.check(&spec.limits)?;
    let state_dir = ctx.state_dir.join("cells").join(&spec.name);
    let _ = std::fs::remove_dir_all(&state_dir);
    std::fs::create_dir_all(&state_dir).map_err(internal("creating the cell's state directory"))?;
    let mut undo = Undo {
        state_dir: Some(state_dir.clone()),
        cgroup: None,
        init: None,
    };
    let rootfs = state_dir.join("rootfs");
    let cached = match &spec.image {
        Some(src) => {
            let cache = ctx.state_dir.join("images");
            std::fs::create_dir_all(&cache).map_err(internal("creating the image cache"))?;
            let cached = crate::oci::cache::get(src, &cache, ctx.image_unpack_limit_bytes)?;
            for dir in ["rootfs", "upper", "work"] {
                std::fs::create_dir(state_dir.join(dir))
                    .map_err(internal("creating the cell's root filesystem"))?;
            }
            Some(cached)
        }
        None => None,
    };
    if let Some(prepared) = &spec.prepared_root {
        for dir in ["rootfs", "upper", "work"] {
            std::fs::create_dir(state_dir.join(dir))
                .map_err(internal("creating the cell's root filesystem"))?;
        }
        seed(&state_dir.join("upper"), &prepared.files)?;
    }
    let image = cached.as_ref().map(|c| c.defaults.clone());
    let cgroup = ctx.hierarchy.create_cell(&spec.name, &spec.limits)?;
    undo.cgroup = Some(cgroup.clone());
    let leaf = cgroup.open_leaf()?;

    let flags = spec.share.new_namespace_flags();
    // Ready namespaces from the pool save creating them now: the init joins
    // them instead of getting new ones from clone3. A pair is only taken
    // for a cell that wants its own network namespace (the dear one); its
    // IPC namespace is used too unless the cell shares the host's.
    const POOLED: [(libc::c_int, &str); 2] =
        [(libc::CLONE_NEWNET, "network"), (libc::CLONE_NEWIPC, "IPC")];
    let spare = if flags & libc::CLONE_NEWNET != 0 {
        ctx.spare_ns.as_ref().and_then(|p| p.take())
    } else {
        None
    };
    let mut joins = Vec::new();
    let mut clone_flags = flags;
    if let Some(s) = &spare {
        for ((nstype, what), fd) in POOLED.into_iter().zip([&s.net, &s.ipc]) {
            if flags & nstype != 0 {
                joins.push((
                    crate::sys::init_process::InitOp::JoinNs(fd.as_raw_fd(), nstype),
                    format!("joining a ready {what} namespace"),
                ));
                clone_flags &= !nstype;
            }
        }
    }
    let root = match (&cached, &spec.prepared_root) {
        (None, Some(prepared)) => init::Root::Image {
            at: rootfs.clone(),
            overlay: Some(init::Overlay {
                lower: prepared.lower.clone(),
                upper: state_dir.join("upper"),
                work: state_dir.join("work"),
            }),
        },
        (Some(c), _) => init::Root::Image {
            at: rootfs.clone(),
            overlay: Some(init::Overlay {
                lower: c.rootfs.clone(),
                upper: state_dir.join("upper"),
                work: state_dir.join("work"),
            }),
        },
        (None, None) if spec.jailed => {
            refuse_hidden(&spec.security.writable_paths, &ctx.hidden)?;
            std::fs::create_dir(&rootfs)
                .map_err(internal("creating the cell's root mount point"))?;
            init::Root::HostReadOnly {
                at: rootfs.clone(),
                hidden: ctx.hidden.clone(),
            }
        }
        (None, None) => init::Root::Host,
    };
    // The request's mounts, resolved inside the image (its symbolic links
    // never lead out of it).
    let mut security = spec.security.clone();
    if let init::Root::Image {
        overlay: Some(o), ..
    } = &root
    {
        security.mounts = security::confine_mounts(&security.mounts, &o.lower)?;
    }
    // Held until the init has attached them.
    let trees = security::trees(&security.mounts)?;
    let config = InitConfig {
        trees: trees.iter().map(|t| t.as_raw_fd()).collect(),
        name: spec.name.clone(),
        hostname: spec.hostname.clone().unwrap_or_else(|| spec.name.clone()),
        new_uts: flags & libc::CLONE_NEWUTS != 0,
        new_net: clone_flags & libc::CLONE_NEWNET != 0,
        new_mount: flags & libc::CLONE_NEWNS != 0,
        new_pid: flags & libc::CLONE_NEWPID != 0,
        root,
        security,
    };
    let mut plan = init::Plan::new(&config)
        .map_err(|e| ApiError::Internal(format!("planning cell {}: {e}", spec.name)))?;
    for (op, what) in joins.into_iter().rev() {
        plan.ops.insert(0, op);
        plan.descriptions.insert(0, what);
    }
    let spawned = spawn_init(leaf.as_fd(), clone_flags, &plan.ops).map_err(|e| {
        let what = plan
            .descriptions
            .get(e.op)
            .map(String::as_str)
            .unwrap_or("starting the cell's init");
        ApiError::FailedPrecondition(format!(
            "setting up cell {}: {what}: {}",
            spec.name, e.source
        ))
    })?;
    let init_pid = spawned.pid;
    undo.init = Some(spawned.pidfd);
    // The init holds the namespaces now.
    drop(spare);
    let init_pidfd = undo
        .init
        .take()
        .ok_or_else(|| ApiError::Internal("init pidfd lost".into()))?;
    // Executables join the init's namespaces through a pidfd of it, all in
    // one setns; the other copy watches for its exit.
    let ns_pidfd = match init_pidfd.try_clone() {
        Ok(fd) => fd,
        Err(e) => {
            undo.init = Some(init_pidfd);
            return Err(ApiError::io("duplicating the init's pidfd", e));
        }
    };
    undo.disarm();
    Ok(Parts {
        cgroup,
        leaf,
        ns_pidfd,
        ns_flags: flags,
        init_pid,
        init_pidfd,
        image,
        state_dir,
    })
}

impl Cell {
    /// Creates the cell. On error nothing is left behind: no cgroup,
    /// process, mount or directory.
    pub async fn create(spec: CellSpec, ctx: CellContext) -> Result<Arc<Cell>, ApiError> {
        let privileged = spec.security.privileged || spec.security.all_caps;
        let caps_keep = caps::keep(privileged, spec.security.caps);
        caps::check_ambient(caps_keep, spec.security.caps)?;
        let seccomp = spec
            .security
            .seccomp
            .programs(caps_keep.unwrap_or_else(caps::own_permitted))
            .map_err(|e| ApiError::invalid("seccomp", crate::error::chain(&e)))?;
        let pid_one = spec
            .pid_one
            .then(|| init::Plan::pid_one(&spec.security))
            .transpose()
            .map_err(|e| ApiError::Internal(format!("planning cell {}: {e}", spec.name)))?;
        let spec2 = spec.clone();
        let parts =
            crate::blocking::run("cell task", move || create_blocking(&spec2, &ctx)).await??;
        let (exit_tx, exit_rx) = watch::channel(false);
        let init = pidfd::watch(parts.init_pidfd)
            .map_err(|e| ApiError::io("watching the cell's init", e))?;
        tokio::spawn(async move {
            loop {
                match init.readable().await {
                    Ok(mut guard) => match pidfd::try_reap(guard.get_inner()) {
                        Ok(None) => guard.clear_ready(),
                        _ => break,
                    },
                    Err(_) => {
                        let _ = pidfd::reap_blocking(init.get_ref());
                        break;
                    }
                }
            }
            let _ = exit_tx.send(true);
        });
        Ok(Arc::new(Cell {
            name: spec.name,
            cgroup: parts.cgroup,
            jailed: spec.jailed,
            privileged,
            caps_keep,
            caps_ambient: spec.security.caps.ambient,
            no_new_privs: spec.security.no_new_privs,
            seccomp,
            image: parts.image,
            state_dir: parts.state_dir,
            init_pid: parts.init_pid,
            created_at: SystemTime::now(),
            executables: Mutex::new(Vec::new()),
            leaf: parts.leaf,
            ns_pidfd: parts.ns_pidfd,
            ns_flags: parts.ns_flags,
            init_exit: exit_rx,
            stopped: AtomicBool::new(false),
            pid_one,
            main: Default::default(),
        }))
    }

    pub fn leaf_fd(&self) -> BorrowedFd<'_> {
        self.leaf.as_fd()
    }

    /// A pidfd of the process whose namespaces executables join (the
    /// init's, or a `pid_one` cell's first executable's once it runs) and
    /// the `CLONE_NEW*` flags of the namespaces the cell does not share
    /// with the host.
    pub fn namespaces(&self) -> (BorrowedFd<'_>, libc::c_int) {
        (
            self.main.get().unwrap_or(&self.ns_pidfd).as_fd(),
            self.ns_flags,
        )
    }

    /// The set-up of the first executable's own PID namespace, if this is
    /// a `pid_one` cell whose first executable has not started.
    pub fn own_pid_ops(&self) -> Option<&[crate::sys::init_process::InitOp]> {
        self.pid_one
            .as_deref()
            .filter(|_| self.main.get().is_none())
    }

    /// Records the first executable of a `pid_one` cell: later executables
    /// join its namespaces.
    pub fn set_main(&self, pidfd: OwnedFd) {
        let _first = self.main.set(pidfd);
    }

    pub fn rootfs(&self) -> Option<PathBuf> {
        self.image.as_ref().map(|_| self.state_dir.join("rootfs"))
    }

    pub fn state(&self) -> CellState {
        if self.stopped.load(Ordering::SeqCst) || *self.init_exit.borrow() {
            CellState::Stopped
        } else if self.cgroup.is_frozen() {
            CellState::Frozen
        } else {
            CellState::Running
        }
    }

    async fn wait_init_exit(&self, timeout: Duration) -> bool {
        let mut rx = self.init_exit.clone();
        let exited = tokio::time::timeout(timeout, rx.wait_for(|exited| *exited))
            .await
            .is_ok();
        exited
    }

    /// Sends `signal` to every process of the cell (but its init), waits up
    /// to `grace` for them to exit, then kills whatever is left.
    pub async fn stop(
        &self,
        signal: nix::sys::signal::Signal,
        grace: Duration,
    ) -> Result<(), ApiError> {
        self.stopped.store(true, Ordering::SeqCst);
        let procs_file = self
            .cgroup
            .dir()
            .join(crate::cgroup::LEAF)
            .join("cgroup.procs");
        let others = |path: &Path| -> Vec<i32> {
            std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .filter(|p| *p != self.init_pid)
                .collect()
        };
        if self.cgroup.is_frozen() {
            let cg = self.cgroup.clone();
            let _ = tokio::task::spawn_blocking(move || cg.set_frozen(false)).await;
        }
        for pid in others(&procs_file) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && !others(&procs_file).is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.cgroup.kill()?;
        if !self.wait_init_exit(Duration::from_secs(10)).await {
            return Err(ApiError::Stuck(format!(
                "cell {}: init did not exit after cgroup.kill",
                self.name
            )));
        }
        Ok(())
    }

    /// Kills everything and removes the cgroup and the cell's files
    /// (including the unpacked root filesystem).
    pub async fn destroy(&self) -> Result<(), ApiError> {
        self.stopped.store(true, Ordering::SeqCst);
        let cg = self.cgroup.clone();
        if let Err(e) = self.cgroup.kill() {
            // remove() kills again, and reports what is left.
            tracing::warn!("cell {}: cgroup.kill: {e}", self.name);
        }
        self.wait_init_exit(Duration::from_secs(10)).await;
        crate::blocking::run("cell cgroup removal", move || {
            cg.remove(Duration::from_secs(10))
        })
        .await??;
        let dir = self.state_dir.clone();
        crate::blocking::run("cell state removal", move || std::fs::remove_dir_all(&dir))
            .await?
            .or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(|e| ApiError::io(format!("removing {}", self.state_dir.display()), e))?;
        Ok(())
    }

    pub async fn set_frozen(&self, frozen: bool) -> Result<(), ApiError> {
        if self.state() == CellState::Stopped {
            return Err(ApiError::FailedPrecondition(format!(
                "cell {} is stopped",
                self.name
            )));
        }
        let cg = self.cgroup.clone();
        tokio::task::spawn_blocking(move || cg.set_frozen(frozen))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))??;
        Ok(())
    }
}
