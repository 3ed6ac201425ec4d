//! The daemon's workload operations, independent of gRPC: run, stop, free,
//! freeze and look up executables and cells.

use std::ffi::CString;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::cells::{Cell, CellContext, CellSpec, CellState};
use crate::cgroup::{CgroupError, Hierarchy};
use crate::error::ApiError;
use crate::executables::{Executable, Placement, ProcessSpec};
use crate::instances::Instances;
use crate::registry::{Registry, Workload};
use crate::validation;

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A validated request for a process, before it is placed.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    pub command: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub groups: Vec<u32>,
    pub stdin: crate::input::StdinMode,
}

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub state_dir: PathBuf,
    pub cgroup_root: String,
    pub log_buffer_bytes: usize,
    /// auraed's own files, hidden from jailed cells.
    pub hidden: Vec<PathBuf>,
    /// Spawning instances, and this auraed's SPIFFE ID.
    pub instances: Option<(crate::instances::InstancesConfig, String)>,
    /// The most an image's unpack may write (`runtime.image_unpack_limit_bytes`).
    pub image_unpack_limit_bytes: u64,
}

pub struct Runtime {
    pub(crate) cells: Result<CellContext, Arc<CgroupError>>,
    pub(crate) instances: Option<Arc<Instances>>,
    pub(crate) registry: Registry,
    pub(crate) log_bytes: usize,
    next_id: AtomicU64,
    /// VMs a previous auraed left running, until they are taken back.
    pub(crate) left_running: std::sync::Mutex<Vec<crate::instances::plain_vm::Survivor>>,
    /// Instances a previous auraed kept running, until they are taken back.
    pub(crate) kept: std::sync::Mutex<Vec<crate::instances::kept::Survivor>>,
}

impl Runtime {
    /// Sets up auraed's cgroup root and state directory and removes cells
    /// left behind by a previous run.
    pub fn new(cfg: RuntimeConfig) -> Result<Self, ApiError> {
        std::fs::create_dir_all(cfg.state_dir.join("cells"))
            .map_err(|e| ApiError::io(format!("state directory {}", cfg.state_dir.display()), e))?;
        let hierarchy = Hierarchy::open(&cfg.cgroup_root);
        // VMs left running are taken back (see `adopt_left_running`): their
        // cells are not leftovers.
        let left_running = match (&cfg.instances, &hierarchy) {
            (Some((icfg, _)), Ok(h)) => {
                crate::instances::plain_vm::left_running(&icfg.vms_dir, h, icfg.vm_restart)
            }
            _ => Vec::new(),
        };
        let kept = match (&cfg.instances, &hierarchy) {
            (Some((icfg, _)), Ok(h)) => crate::instances::kept::left_running(&icfg.kept_dir, h),
            _ => Vec::new(),
        };
        let keep: Vec<String> = left_running
            .iter()
            .map(|s| s.record.name.clone())
            .chain(kept.iter().map(|s| s.record.cell.clone()))
            .collect();
        let removed = crate::cells::clean_leftovers(hierarchy.as_ref().ok(), &cfg.state_dir, &keep);
        if let Ok(h) = &hierarchy {
            if let Err(e) = h.ensure_executables_dir() {
                tracing::warn!("making the folder of executables' cgroups: {e}");
            }
        }
        for r in &removed {
            tracing::warn!("removed leftover from a previous run: {r}");
        }
        // A cell's own files (its root mount point, and the writable layer
        // over an image) are made and removed with every cell: on a tmpfs
        // of auraed's own that takes a few microseconds instead of disk
        // metadata writes, and nothing outlives auraed. The writable layer
        // is memory, charged to the cell's memory limit (as gVisor's
        // default root overlay).
        let cells_dir = cfg.state_dir.join("cells");
        match crate::sys::mount_ns::mount_private_tmpfs(&cells_dir) {
            Ok(()) => tracing::info!("cell state on a private tmpfs at {}", cells_dir.display()),
            Err(e) => tracing::info!(
                "cell state on disk at {} (no private tmpfs: {e})",
                cells_dir.display()
            ),
        }
        let cells = match hierarchy {
            Ok(h) => {
                tracing::info!(
                    "cgroup v2 at {} (controllers: {:?}), cells under {}",
                    h.mount().display(),
                    h.available(),
                    h.root().display()
                );
                Ok(CellContext {
                    hierarchy: h,
                    state_dir: cfg.state_dir.clone(),
                    spare_ns: Some(crate::cells::ns_pool::NamespacePool::start()),
                    hidden: cfg.hidden.clone(),
                    image_unpack_limit_bytes: cfg.image_unpack_limit_bytes,
                })
            }
            Err(e) => {
                tracing::warn!(
                    "cells are unavailable, and plain executables run without a cgroup \
                     of their own (a crash of auraed leaves them running): {e}"
                );
                Err(Arc::new(e))
            }
        };
        let instances = cfg.instances.map(|(icfg, own_id)| {
            // The cache of unpacked instance roots, on the cells' tmpfs.
            if let Err(e) = std::fs::create_dir_all(&icfg.cache_dir) {
                tracing::warn!("instance root cache {}: {e}", icfg.cache_dir.display());
            }
            // The folders of microVM instances and VMs, made once.
            if let Err(e) = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&icfg.instances_dir)
            {
                tracing::warn!("instances folder {}: {e}", icfg.instances_dir.display());
            }
            Arc::new(Instances::new(icfg, own_id))
        });
        Ok(Self {
            cells,
            instances,
            registry: Registry::default(),
            log_bytes: cfg.log_buffer_bytes,
            next_id: AtomicU64::new(1),
            left_running: std::sync::Mutex::new(left_running),
            kept: std::sync::Mutex::new(kept),
        })
    }

    fn generated_name(&self, prefix: &str) -> String {
        loop {
            let n = self.next_id.fetch_add(1, Ordering::SeqCst);
            let name = format!("{prefix}-{n}");
            if self.registry.get(&name).is_none() {
                return name;
            }
        }
    }

    pub fn get(&self, id: &str, field: &str) -> Result<Workload, ApiError> {
        self.registry
            .get(id)
            .ok_or_else(|| ApiError::NotFound(format!("{field}: no workload named {id:?}")))
    }

    /// Like [`Runtime::get`], but waits up to `timeout` for `id` to appear.
    pub async fn get_or_wait(&self, id: &str, timeout: Duration) -> Result<Workload, ApiError> {
        self.registry.wait_for(id, timeout).await.ok_or_else(|| {
            ApiError::NotFound(format!(
                "id: no workload named {id:?} appeared within {timeout:?}"
            ))
        })
    }

    pub fn list(&self) -> Vec<Workload> {
        self.registry.list()
    }

    pub fn executables_in(&self, cell: &str) -> Vec<Arc<Executable>> {
        self.registry.executables_in(cell)
    }

    pub(crate) fn cell(&self, name: &str, field: &str) -> Result<Arc<Cell>, ApiError> {
        match self.get(name, field)? {
            Workload::Cell(c) => Ok(c),
            Workload::Executable(_) => Err(ApiError::invalid(
                field,
                format!("{name:?} is an executable, not a cell"),
            )),
            Workload::Instance(_) => Err(ApiError::invalid(
                field,
                format!("{name:?} is an instance, not a cell"),
            )),
            Workload::Vm(_) => Err(ApiError::invalid(
                field,
                format!("{name:?} is a virtual machine, not a cell"),
            )),
        }
    }

    /// Runs an executable, in auraed's context or in `cell`.
    pub async fn run_executable(
        &self,
        name: Option<String>,
        cell: Option<String>,
        req: ExecRequest,
    ) -> Result<Arc<Executable>, ApiError> {
        let placement = match &cell {
            Some(c) => {
                let cell = self.cell(c, "cell")?;
                if cell.state() == CellState::Stopped {
                    return Err(ApiError::FailedPrecondition(format!(
                        "cell: {c:?} is stopped"
                    )));
                }
                Placement::Cell(cell)
            }
            None => Placement::Host(None),
        };
        let id = name.unwrap_or_else(|| self.generated_name("exe"));
        let reservation = self.registry.reserve(&id, "name")?;
        let spec = resolve(&req, &placement)?;
        let placement = match (placement, &self.cells) {
            (Placement::Host(_), Ok(ctx)) => {
                let h = ctx.hierarchy.clone();
                let id2 = id.clone();
                let cgroup =
                    crate::blocking::run("executable cgroup", move || h.create_executable(&id2))
                        .await??;
                Placement::Host(Some(cgroup))
            }
            (p, _) => p,
        };
        let started = Executable::start(
            id.clone(),
            spec,
            placement_clone(&placement),
            self.log_bytes,
            "executable",
        )
        .await;
        let exe = match started {
            Ok(exe) => exe,
            Err(e) => {
                if let Placement::Host(Some(cg)) = placement {
                    if let Err(cleanup) = cg.remove(Duration::from_secs(1)) {
                        tracing::error!(
                            "removing the cgroup of {id} after a failed start: {cleanup}"
                        );
                    }
                }
                return Err(e);
            }
        };
        if let Placement::Cell(c) = &placement {
            lock(&c.executables).push(id);
        }
        reservation.commit(Workload::Executable(exe.clone()));
        Ok(exe)
    }

    /// Creates a cell, and starts its first executable when `first` is set
    /// (or, for an image, by default). A first executable that fails to
    /// start takes the cell down with it.
    pub async fn run_cell(
        &self,
        spec: CellSpec,
        first: Option<ExecRequest>,
        first_name: Option<String>,
    ) -> Result<(Arc<Cell>, Option<Arc<Executable>>), ApiError> {
        let ctx = self
            .cells
            .clone()
            .map_err(|e| ApiError::FailedPrecondition(format!("cells are unavailable: {e}")))?;
        let reservation = self.registry.reserve(&spec.name, "name")?;
        let exe_reservation = match (&first, &spec.image, first_name) {
            (None, None, _) => None,
            (_, _, Some(n)) => Some(self.registry.reserve(&n, "executable_name")?),
            (_, _, None) => Some(
                self.registry
                    .reserve(&self.generated_name(&spec.name), "executable_name")?,
            ),
        };
        let started = std::time::Instant::now();
        let cell = Cell::create(spec, ctx).await?;
        let created = started.elapsed();
        let first = match exe_reservation {
            None => None,
            Some(exe_reservation) => {
                let placement = Placement::Cell(cell.clone());
                let started = match image_request(&cell, first) {
                    Ok(req) => match resolve(&req, &placement) {
                        Ok(process) => {
                            Executable::start(
                                exe_reservation.id().to_string(),
                                process,
                                placement,
                                self.log_bytes,
                                "executable",
                            )
                            .await
                        }
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                };
                match started {
                    Ok(exe) => {
                        lock(&cell.executables).push(exe.id.clone());
                        exe_reservation.commit(Workload::Executable(exe.clone()));
                        Some(exe)
                    }
                    Err(e) => {
                        if let Err(cleanup) = cell.destroy().await {
                            tracing::error!("cleaning up cell {}: {cleanup}", cell.name);
                        }
                        return Err(e);
                    }
                }
            }
        };
        tracing::debug!(cell = %cell.name, ?created, total = ?started.elapsed(), "cell started");
        reservation.commit(Workload::Cell(cell.clone()));
        Ok((cell, first))
    }

    pub async fn stop(
        &self,
        id: &str,
        signal: Signal,
        grace: Duration,
    ) -> Result<Workload, ApiError> {
        let w = self.get(id, "id")?;
        match &w {
            Workload::Executable(e) => {
                e.stop(signal, grace).await?;
            }
            Workload::Cell(c) => {
                c.stop(signal, grace).await?;
                for e in self.registry.executables_in(&c.name) {
                    tokio::time::timeout(Duration::from_secs(10), e.wait())
                        .await
                        .map_err(|_| ApiError::Stuck(format!("{} did not exit", e.id)))?;
                }
            }
            Workload::Instance(i) => i.tear_down().await?,
            Workload::Vm(vm) => vm.stop(signal, grace).await?,
        }
        Ok(w)
    }

    pub async fn free(&self, id: &str) -> Result<(), ApiError> {
        match self.get(id, "id")? {
            Workload::Executable(e) => {
                if e.exit_info().is_none() {
                    return Err(ApiError::FailedPrecondition(format!(
                        "id: executable {id:?} is still running; stop it first"
                    )));
                }
                if let Some(Workload::Cell(c)) =
                    e.cell.as_deref().and_then(|c| self.registry.get(c))
                {
                    lock(&c.executables).retain(|x| x != id);
                }
                e.release().await?;
                self.registry.remove(id);
            }
            Workload::Cell(c) => {
                c.destroy().await?;
                for e in self.registry.executables_in(&c.name) {
                    let _ = tokio::time::timeout(Duration::from_secs(10), e.wait()).await;
                    self.registry.remove(&e.id);
                }
                self.registry.remove(id);
            }
            Workload::Instance(i) => {
                i.tear_down().await?;
                if let Some(instances) = &self.instances {
                    instances.forget(&i);
                }
                self.registry.remove(id);
            }
            Workload::Vm(vm) => {
                vm.tear_down().await?;
                if let Some(instances) = &self.instances {
                    instances.forget_vm(&vm);
                }
                self.registry.remove(id);
            }
        }
        Ok(())
    }

    pub async fn set_frozen(&self, id: &str, frozen: bool) -> Result<Arc<Cell>, ApiError> {
        let cell = self.cell(id, "id")?;
        cell.set_frozen(frozen).await?;
        Ok(cell)
    }

    /// Stops every workload, for daemon shutdown; running VMs stay for
    /// the next auraed where `vm_restart` says `adopt`.
    pub async fn shutdown(&self) {
        // No instance is pre-started, nor claimed, from here on.
        if let Some(instances) = &self.instances {
            instances.stop_pool().await;
        }
        let adopt = self
            .instances
            .as_ref()
            .is_some_and(|i| i.config().vm_restart == crate::config::VmRestart::Adopt);
        let mut kept = false;
        for w in self.registry.list() {
            match w {
                Workload::Cell(c) => {
                    if let Err(e) = self.free(&c.name).await {
                        tracing::error!("freeing cell {} at shutdown: {e}", c.name);
                    }
                }
                Workload::Executable(e) if e.cell.is_none() => {
                    if let Err(err) = e.stop(Signal::SIGTERM, Duration::from_secs(5)).await {
                        tracing::error!("stopping {} at shutdown: {err}", e.id);
                    }
                    if let Err(err) = e.release().await {
                        tracing::error!("removing the cgroup of {} at shutdown: {err}", e.id);
                    }
                }
                Workload::Executable(_) => {}
                Workload::Instance(i) if i.keep.load(Ordering::SeqCst) && i.running() => {
                    tracing::info!("instance {}: left running for the next auraed", i.name);
                    kept = true;
                }
                Workload::Instance(i) => {
                    if let Err(e) = self.free(&i.name).await {
                        tracing::error!("freeing instance {} at shutdown: {e}", i.name);
                    }
                }
                Workload::Vm(vm) if adopt && vm.running() => {
                    tracing::info!(
                        "vm {}: left running for the next auraed (vm_restart = \"adopt\")",
                        vm.name
                    );
                    kept = true;
                }
                Workload::Vm(vm) => {
                    if let Err(e) = self.free(&vm.name).await {
                        tracing::error!("freeing VM {} at shutdown: {e}", vm.name);
                    }
                }
            }
        }
        if let Some(instances) = &self.instances {
            instances.shutdown(kept).await;
        }
        if let Ok(ctx) = &self.cells {
            // Empty once every executable is freed.
            let dir = ctx.hierarchy.root().join(crate::cgroup::EXECUTABLES);
            if let Err(e) = std::fs::remove_dir(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!("removing {}: {e}", dir.display());
                }
            }
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn placement_clone(p: &Placement) -> Placement {
    match p {
        Placement::Host(cg) => Placement::Host(cg.clone()),
        Placement::Cell(c) => Placement::Cell(c.clone()),
    }
}

/// The first executable of a cell: the request, completed from the image's
/// entrypoint and cmd the way container runtimes do.
fn image_request(cell: &Cell, first: Option<ExecRequest>) -> Result<ExecRequest, ApiError> {
    let Some(image) = &cell.image else {
        return first.ok_or_else(|| ApiError::invalid("executable", "required without an image"));
    };
    let mut req = first.unwrap_or_default();
    if req.command.is_empty() {
        let args = if req.args.is_empty() {
            image.cmd.clone()
        } else {
            std::mem::take(&mut req.args)
        };
        let mut argv: Vec<String> = image.entrypoint.iter().cloned().chain(args).collect();
        if argv.is_empty() {
            return Err(ApiError::invalid(
                "executable.command",
                "empty, and the image has no entrypoint or cmd",
            ));
        }
        req.command = argv.remove(0);
        req.args = argv;
    }
    Ok(req)
}

/// Resolves a request against where it will run: the image's environment,
/// working directory and user are the defaults inside an image cell.
fn resolve(req: &ExecRequest, placement: &Placement) -> Result<ProcessSpec, ApiError> {
    let image = match placement {
        Placement::Cell(c) => c.image.clone(),
        Placement::Host(_) => None,
    };
    let mut env: Vec<(String, String)> = Vec::new();
    if let Some(img) = &image {
        for kv in &img.env {
            let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
            env.push((k.to_string(), v.to_string()));
        }
    }
    for (k, v) in &req.env {
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let candidates: Vec<CString> = if req.command.contains('/') {
        vec![validation::c_string("executable.command", &req.command)?]
    } else {
        path.split(':')
            .filter(|d| !d.is_empty())
            .map(|d| validation::c_string("env.PATH", &format!("{d}/{}", req.command)))
            .collect::<Result<_, _>>()?
    };
    let argv = std::iter::once(&req.command)
        .chain(&req.args)
        .enumerate()
        .map(|(i, a)| validation::c_string(&format!("executable.args[{i}]"), a))
        .collect::<Result<Vec<_>, _>>()?;
    let envp = env
        .iter()
        .map(|(k, v)| validation::c_string("executable.env", &format!("{k}={v}")))
        .collect::<Result<Vec<_>, _>>()?;
    validation::argv_env_size(
        "executable.args",
        argv.iter().chain(&envp).map(|s| s.as_bytes()),
    )?;
    let in_cell = matches!(placement, Placement::Cell(_));
    let cwd = req
        .cwd
        .clone()
        .or_else(|| image.as_ref().and_then(|i| i.working_dir.clone()))
        .or_else(|| in_cell.then(|| "/".to_string()));
    validation::list_len("executable.groups", req.groups.len())?;
    let (uid, gid) = match (req.uid, req.gid, &image) {
        (None, None, Some(img)) => (img.uid, img.gid),
        (u, g, _) => (u, g),
    };
    Ok(ProcessSpec {
        command: std::iter::once(req.command.clone())
            .chain(req.args.iter().cloned())
            .collect(),
        candidates,
        argv,
        envp,
        cwd: cwd
            .map(|c| validation::c_string("executable.cwd", &c))
            .transpose()?,
        uid,
        gid,
        groups: req.groups.clone(),
        stdin: req.stdin,
    })
}
