//! Executables: supervised processes with captured output and a recorded
//! exit, running in auraed's own context or inside a cell.

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nix::sys::signal::Signal;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use crate::cells::Cell;
use crate::cgroup::CellCgroup;
use crate::error::ApiError;
use crate::input::{Input, StdinMode, Terminal};
use crate::logs::{capture, LogBuffer, Partial, Stream};
use crate::sys::{self, pidfd, NamespaceMode, SpawnError, SpawnSpec, SpawnStage};

/// A validated request for one process.
#[derive(Debug, Clone, Default)]
pub struct ProcessSpec {
    /// The command as the user gave it, for display.
    pub command: Vec<String>,
    /// Paths to try for the program.
    pub candidates: Vec<CString>,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    pub cwd: Option<CString>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Supplementary groups, set with a uid or gid.
    pub groups: Vec<u32>,
    pub stdin: StdinMode,
}

/// How a finished process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    pub exit: pidfd::Exit,
    pub at: SystemTime,
    pub oom_killed: bool,
}

pub struct Executable {
    pub id: String,
    pub cell: Option<String>,
    pub command: Vec<String>,
    pub pid: i32,
    pub started_at: SystemTime,
    pub logs: Arc<LogBuffer>,
    /// Its stdin, where it was started with one (a pipe or a terminal).
    pub input: Option<Arc<Input>>,
    pidfd: Arc<AsyncFd<OwnedFd>>,
    exit: watch::Receiver<Option<ExitInfo>>,
    /// The cgroup of a plain executable, removed when it is freed.
    host_cgroup: Option<CellCgroup>,
}

/// Where a process's output goes.
pub enum Output {
    /// Pipes that auraed reads (it ends with auraed).
    Pipes,
    /// Files that outlive auraed (a VM's VMM): standard output is
    /// discarded, standard error appends to `stderr`, and each file of
    /// `follow` (the process writes them; `stderr` may be one) is read into
    /// the logs as it grows, until the process exits.
    Files {
        stderr: PathBuf,
        follow: Vec<(PathBuf, Stream)>,
        opts: crate::log_files::FollowOpts,
    },
}

/// What auraed reads a process's output from: the read ends of its pipes,
/// its terminal, or the files it writes.
enum Sources {
    Pipes(OwnedFd, OwnedFd),
    Terminal(Arc<Terminal>),
    Files(Vec<(PathBuf, Stream)>, crate::log_files::FollowOpts),
}

/// Where a process runs.
pub enum Placement {
    /// auraed's own namespaces, in a cgroup of the executable's own (when
    /// auraed has a cgroup hierarchy), so that it is found after a crash.
    Host(Option<CellCgroup>),
    Cell(Arc<Cell>),
}

fn pipe() -> Result<(OwnedFd, OwnedFd), ApiError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| ApiError::io("creating a pipe", e))
}

/// Turns a spawn failure into an error that names the request field.
fn spawn_error(e: SpawnError, spec: &ProcessSpec, field: &str) -> ApiError {
    let cmd = crate::validation::shown(spec.command.first().map(String::as_str).unwrap_or(""));
    match (e.stage(), e.errno()) {
        (Some(SpawnStage::Exec), Some(libc::ENOENT)) => {
            ApiError::NotFound(format!("{field}.command: {cmd} was not found"))
        }
        (Some(SpawnStage::Exec), Some(libc::EACCES)) => ApiError::FailedPrecondition(format!(
            "{field}.command: {cmd} is not executable (permission denied)"
        )),
        (Some(SpawnStage::Exec), Some(libc::ENOEXEC)) => ApiError::FailedPrecondition(format!(
            "{field}.command: {cmd} is not a valid executable format"
        )),
        (Some(SpawnStage::Chdir), _) => ApiError::NotFound(format!("{field}.cwd: {e}")),
        (Some(SpawnStage::Uid), _) => ApiError::invalid(format!("{field}.uid"), e.to_string()),
        (Some(SpawnStage::Gid), _) => ApiError::invalid(format!("{field}.gid"), e.to_string()),
        (Some(SpawnStage::Exec), Some(libc::E2BIG)) => ApiError::invalid(
            format!("{field}.args"),
            "the arguments and environment are too large for execve",
        ),
        _ => {
            let what = match e.stage() {
                Some(stage) => format!("starting {cmd}: {}", stage.describe()),
                None => format!("preparing to start {cmd}"),
            };
            ApiError::io(what, e.into_source())
        }
    }
}

impl Executable {
    /// Starts `spec` and supervises it. `field` names the request field the
    /// spec came from, for error messages.
    pub async fn start(
        id: String,
        spec: ProcessSpec,
        placement: Placement,
        log_bytes: usize,
        field: &str,
    ) -> Result<Arc<Executable>, ApiError> {
        Self::start_with(id, spec, placement, log_bytes, field, Output::Pipes).await
    }

    /// [`Executable::start`], with its output where `output` says.
    pub async fn start_with(
        id: String,
        spec: ProcessSpec,
        placement: Placement,
        log_bytes: usize,
        field: &str,
        output: Output,
    ) -> Result<Arc<Executable>, ApiError> {
        let devnull: OwnedFd = std::fs::File::open("/dev/null")
            .map_err(|e| ApiError::io("opening /dev/null", e))?
            .into();
        let dup = |fd: &OwnedFd, what: &str| {
            fd.try_clone()
                .map_err(|e| ApiError::io(format!("duplicating {what}"), e))
        };
        // Its stdin, and the way to write to it.
        let (stdin, input, terminal) = match spec.stdin {
            StdinMode::Null => (dup(&devnull, "/dev/null")?, None, None),
            StdinMode::Pipe => {
                let (r, w) = pipe()?;
                let input = Input::pipe(w).map_err(|e| ApiError::io("the stdin pipe", e))?;
                (r, Some(Arc::new(input)), None)
            }
            StdinMode::Terminal => {
                // From the cell's own devpts, where the process finds it.
                let root = match &placement {
                    Placement::Cell(c) => PathBuf::from(format!("/proc/{}/root", c.init_pid)),
                    Placement::Host(_) => PathBuf::from("/"),
                };
                // (Resolved inside the cell's root: off the async threads.)
                let what = format!("opening a terminal from {}/dev/pts", root.display());
                let (master, slave) = crate::blocking::run("opening a terminal", move || {
                    crate::sys::pty::open_pair(&root)
                })
                .await?
                .map_err(|e| ApiError::io(what, e))?;
                let t = Terminal::from_master(master)
                    .map_err(|e| ApiError::io("registering the terminal", e))?;
                (slave, Some(Arc::new(Input::terminal(t.clone()))), Some(t))
            }
        };
        // The process's ends, and what auraed reads: pipes, its terminal,
        // or files.
        let (out_w, err_w, sources) = match (output, &terminal) {
            (Output::Pipes, Some(t)) => (
                dup(&stdin, "the terminal")?,
                dup(&stdin, "the terminal")?,
                Sources::Terminal(t.clone()),
            ),
            (Output::Pipes, None) => {
                let (out_r, out_w) = pipe()?;
                let (err_r, err_w) = pipe()?;
                (out_w, err_w, Sources::Pipes(out_r, err_r))
            }
            (
                Output::Files {
                    stderr,
                    follow,
                    opts,
                },
                _,
            ) => {
                let out_w = devnull
                    .try_clone()
                    .map_err(|e| ApiError::io("duplicating /dev/null", e))?;
                let err_w: OwnedFd = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&stderr)
                    .map_err(|e| ApiError::io(format!("opening {}", stderr.display()), e))?
                    .into();
                (out_w, err_w, Sources::Files(follow, opts))
            }
        };
        let (cell, host_cgroup) = match &placement {
            Placement::Cell(c) => (Some(c.clone()), None),
            Placement::Host(cg) => (None, cg.clone()),
        };
        let host_leaf = host_cgroup.as_ref().map(|c| c.open_leaf()).transpose()?;
        let jail = match &cell {
            Some(c) if c.jailed => Some(
                crate::jail::seccomp_filters().map_err(|e| ApiError::Internal(e.to_string()))?,
            ),
            _ => None,
        };
        let oom_baseline = cell.as_ref().map(|c| c.cgroup.oom_kills()).unwrap_or(0);
        let spec_for_spawn = spec.clone();
        let cell_for_spawn = cell.clone();
        // A `pid_one` cell's first executable gets its own PID namespace.
        let first_of_pid_one = cell.as_ref().is_some_and(|c| c.own_pid_ops().is_some());
        let spawned = crate::blocking::run("spawn task", move || {
            let leaf;
            let (cgroup, namespaces) = match &cell_for_spawn {
                Some(c) => {
                    leaf = c.leaf_fd();
                    let (pidfd, flags) = c.namespaces();
                    (Some(leaf), NamespaceMode::Join(pidfd, flags))
                }
                None => (host_leaf.as_ref().map(|f| f.as_fd()), NamespaceMode::Host),
            };
            sys::spawn(SpawnSpec {
                candidates: spec_for_spawn.candidates,
                argv: spec_for_spawn.argv,
                envp: spec_for_spawn.envp,
                cwd: spec_for_spawn.cwd,
                uid: spec_for_spawn.uid,
                gid: spec_for_spawn.gid,
                groups: spec_for_spawn.groups,
                cgroup,
                namespaces,
                fds: vec![(stdin, 0), (out_w, 1), (err_w, 2)],
                controlling_terminal: spec_for_spawn.stdin == StdinMode::Terminal,
                caps_keep: match &cell_for_spawn {
                    // A jailed cell's minimal set, less what it drops.
                    Some(c) if c.jailed => {
                        Some(crate::jail::kept_caps() & c.caps_keep.unwrap_or(u64::MAX))
                    }
                    Some(c) => c.caps_keep,
                    None => None,
                },
                caps_ambient: match &cell_for_spawn {
                    Some(c) if !c.jailed => c.caps_ambient,
                    _ => 0,
                },
                no_new_privs: jail.is_some()
                    || cell_for_spawn.as_ref().is_some_and(|c| c.no_new_privs),
                seccomp: jail
                    .unwrap_or_default()
                    .into_iter()
                    .chain(
                        cell_for_spawn
                            .iter()
                            .flat_map(|c| c.seccomp.iter().cloned()),
                    )
                    .collect(),
                own_pid: cell_for_spawn
                    .as_ref()
                    .and_then(|c| c.own_pid_ops())
                    .filter(|_| first_of_pid_one),
            })
        })
        .await?
        .map_err(|e| spawn_error(e, &spec, field))?;
        if let (true, Some(c)) = (first_of_pid_one, &cell) {
            match spawned.pidfd.try_clone() {
                Ok(main) => c.set_main(main),
                Err(e) => tracing::error!(
                    "cell {}: keeping its first executable's pidfd: {e}; later executables \
                     join the cell's own PID namespace",
                    c.name
                ),
            }
        }

        let pidfd = Arc::new(
            pidfd::watch(spawned.pidfd).map_err(|e| ApiError::io("watching the pidfd", e))?,
        );
        let logs = Arc::new(LogBuffer::new(log_bytes));
        let (exit_tx, exit_rx) = watch::channel(None);
        let (exited_tx, exited_rx) = watch::channel(false);
        let readers = match sources {
            Sources::Pipes(out_r, err_r) => {
                let out = tokio::net::unix::pipe::Receiver::from_owned_fd(out_r)
                    .map_err(|e| ApiError::io("reading the stdout pipe", e))?;
                let err = tokio::net::unix::pipe::Receiver::from_owned_fd(err_r)
                    .map_err(|e| ApiError::io("reading the stderr pipe", e))?;
                // A process one talks to shows each prompt at once.
                let partial = if spec.stdin == StdinMode::Null {
                    Partial::AtEnd
                } else {
                    Partial::EachRead
                };
                vec![
                    tokio::spawn(capture(out, Stream::Stdout, logs.clone(), partial)),
                    tokio::spawn(capture(err, Stream::Stderr, logs.clone(), partial)),
                ]
            }
            Sources::Terminal(t) => vec![tokio::spawn(capture(
                t.reader(),
                Stream::Stdout,
                logs.clone(),
                Partial::EachRead,
            ))],
            Sources::Files(follow, opts) => followers(follow, opts, &logs, &exited_rx),
        };
        let exe = Arc::new(Executable {
            id,
            cell: cell.as_ref().map(|c| c.name.clone()),
            command: spec.command,
            pid: spawned.pid,
            started_at: SystemTime::now(),
            logs: logs.clone(),
            input,
            pidfd: pidfd.clone(),
            exit: exit_rx,
            host_cgroup,
        });
        tokio::spawn(async move {
            let exit = wait_exit(&pidfd).await;
            let oom_killed = exit == pidfd::Exit::Signal(libc::SIGKILL)
                && cell
                    .as_ref()
                    .map(|c| c.cgroup.oom_kills() > oom_baseline)
                    .unwrap_or(false);
            finish(exit, oom_killed, readers, exited_tx, &logs, exit_tx).await;
        });
        Ok(exe)
    }

    /// Supervises a process that a previous auraed started and left
    /// running (a VM's VMM): not this auraed's child, so its exit is seen
    /// through a pidfd but its status is [`pidfd::Exit::Unknown`]. Its
    /// output is `follow`'s files, read from their start. `fd` is a pidfd
    /// of `pid`, opened (and the process checked) by the caller.
    pub fn adopt(
        id: String,
        cell: Option<String>,
        command: Vec<String>,
        (pid, fd): (i32, OwnedFd),
        (follow, opts): (Vec<(PathBuf, Stream)>, crate::log_files::FollowOpts),
        log_bytes: usize,
    ) -> Result<Arc<Executable>, ApiError> {
        let pidfd = Arc::new(pidfd::watch(fd).map_err(|e| ApiError::io("watching the pidfd", e))?);
        let logs = Arc::new(LogBuffer::new(log_bytes));
        let (exit_tx, exit_rx) = watch::channel(None);
        let (exited_tx, exited_rx) = watch::channel(false);
        let readers = followers(follow, opts, &logs, &exited_rx);
        let exe = Arc::new(Executable {
            id,
            cell,
            command,
            pid,
            started_at: SystemTime::now(),
            logs: logs.clone(),
            input: None,
            pidfd: pidfd.clone(),
            exit: exit_rx,
            host_cgroup: None,
        });
        tokio::spawn(async move {
            // Readable once it has exited; an error means it can't be
            // watched, which is reported as an exit too.
            if let Err(e) = pidfd.readable().await {
                tracing::error!("watching adopted pid {pid}: {e}");
            }
            finish(
                pidfd::Exit::Unknown,
                false,
                readers,
                exited_tx,
                &logs,
                exit_tx,
            )
            .await;
        });
        Ok(exe)
    }

    /// Kills whatever the executable left running (daemonized children) and
    /// removes its cgroup; a no-op in a cell, whose cgroup is the cell's.
    pub async fn release(&self) -> Result<(), ApiError> {
        let Some(cg) = self.host_cgroup.clone() else {
            return Ok(());
        };
        crate::blocking::run("executable cgroup removal", move || {
            cg.remove(Duration::from_secs(10))
        })
        .await??;
        Ok(())
    }

    pub fn exit_info(&self) -> Option<ExitInfo> {
        *self.exit.borrow()
    }

    /// Waits until the process has exited and its output is complete.
    pub async fn wait(&self) -> ExitInfo {
        let mut rx = self.exit.clone();
        loop {
            if let Some(info) = *rx.borrow_and_update() {
                return info;
            }
            if rx.changed().await.is_err() {
                // The supervisor is gone without a result; report what the
                // kernel says.
                return ExitInfo {
                    exit: pidfd::Exit::Signal(0),
                    at: SystemTime::now(),
                    oom_killed: false,
                };
            }
        }
    }

    /// A pidfd of the process (valid while this is held, even after it
    /// exits).
    pub fn pidfd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.pidfd.get_ref().as_fd()
    }

    pub fn signal(&self, signal: Signal) -> Result<(), ApiError> {
        pidfd::send_signal(self.pidfd.get_ref(), signal)
            .map_err(|e| ApiError::io(format!("signalling {}", self.id), e))
    }

    /// Sends `signal`, waits up to `grace`, then kills.
    pub async fn stop(&self, signal: Signal, grace: Duration) -> Result<ExitInfo, ApiError> {
        if let Some(info) = self.exit_info() {
            return Ok(info);
        }
        self.signal(signal)?;
        if let Ok(info) = tokio::time::timeout(grace, self.wait()).await {
            return Ok(info);
        }
        self.signal(Signal::SIGKILL)?;
        tokio::time::timeout(Duration::from_secs(10), self.wait())
            .await
            .map_err(|_| ApiError::Stuck(format!("{} did not exit after SIGKILL", self.id)))
    }
}

/// A task that follows the files.
fn followers(
    follow: Vec<(PathBuf, Stream)>,
    opts: crate::log_files::FollowOpts,
    logs: &Arc<LogBuffer>,
    exited: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let (logs, exited) = (logs.clone(), exited.clone());
    vec![tokio::spawn(async move {
        if let Err(e) = crate::log_files::follow(follow, logs, exited, opts).await {
            tracing::error!("following a process's output: {e}");
        }
    })]
}

/// After the exit: the output is read to its end (500 ms at most: a
/// descendant holding a pipe open doesn't hold the log open), then the logs
/// close and the exit is published.
async fn finish(
    exit: pidfd::Exit,
    oom_killed: bool,
    readers: Vec<tokio::task::JoinHandle<()>>,
    exited: watch::Sender<bool>,
    logs: &LogBuffer,
    exit_tx: watch::Sender<Option<ExitInfo>>,
) {
    // Nobody may be listening any more (pipes need no telling).
    let _ = exited.send(true);
    let drained = tokio::time::timeout(Duration::from_millis(500), async {
        for r in readers {
            if let Err(e) = r.await {
                tracing::error!("an output reader failed: {e}");
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::debug!("output still open 500 ms after the exit; the logs end here");
    }
    logs.close();
    // The receiver lives in the Executable; dropped, nobody asks.
    let _ = exit_tx.send(Some(ExitInfo {
        exit,
        at: SystemTime::now(),
        oom_killed,
    }));
}

async fn wait_exit(pidfd: &AsyncFd<OwnedFd>) -> pidfd::Exit {
    loop {
        match pidfd.readable().await {
            Ok(mut guard) => match pidfd::try_reap(guard.get_inner()) {
                Ok(Some(exit)) => return exit,
                Ok(None) => guard.clear_ready(),
                Err(_) => return pidfd::Exit::Signal(0),
            },
            Err(_) => {
                return pidfd::reap_blocking(pidfd.get_ref()).unwrap_or(pidfd::Exit::Signal(0));
            }
        }
    }
}
