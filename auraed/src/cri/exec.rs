//! A process run in a container's cell, its output followed: collected
//! for `ExecSync` (each stream capped at 16 MiB, as the CRI asks; past the
//! request's timeout it is killed), or streamed for `Exec` (see
//! `streaming`).

use aurae_proto::cri;
use aurae_proto::runtime as pb;
use tokio_stream::StreamExt;
use tonic::Status;

use super::Cri;

/// The most of each stream an `ExecSync` answer carries.
const OUTPUT_CAP: usize = 16 << 20;

/// An exec's process, killed (unless its exit was collected) and freed by
/// [`Reaper::finish`]; if the call ends before that (its client went away
/// and tonic dropped it), on drop, in a task of its own.
struct Reaper {
    client: pb::runtime_client::RuntimeClient<tonic::transport::Channel>,
    id: String,
    armed: bool,
}

impl Reaper {
    /// Kills the process unless `exited`, then frees it; failures are
    /// logged (a killed process may have exited meanwhile).
    async fn finish(mut self, exited: bool) {
        self.armed = false;
        clean_up(self.client.clone(), std::mem::take(&mut self.id), exited).await;
    }
}

async fn clean_up(
    mut client: pb::runtime_client::RuntimeClient<tonic::transport::Channel>,
    id: String,
    exited: bool,
) {
    if !exited {
        if let Err(e) = client
            .stop(pb::StopRequest {
                id: id.clone(),
                signal: libc::SIGKILL,
                grace_period_ms: Some(0),
            })
            .await
        {
            tracing::debug!("exec {id}: killing it: {}", e.message());
        }
    }
    if let Err(e) = client.free(pb::FreeRequest { id: id.clone() }).await {
        tracing::warn!("exec {id}: freeing it: {}", e.message());
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if self.armed {
            let id = std::mem::take(&mut self.id);
            tokio::spawn(clean_up(self.client.clone(), id, false));
        }
    }
}

/// A log entry as the process wrote it: its stream, and the line with its
/// newline (none after a partial line).
pub(super) fn chunk_of(entry: pb::LogEntry) -> (Output, Vec<u8>) {
    let which = if entry.stream == pb::LogStream::Stderr as i32 {
        Output::Stderr
    } else {
        Output::Stdout
    };
    let mut chunk = entry.line;
    if !entry.partial {
        chunk.push(b'\n');
    }
    (which, chunk)
}

/// A fresh name for an exec's process in its pod's instance.
fn exec_name() -> Result<String, Status> {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| Status::internal(format!("naming an exec: drawing random bytes: {e}")))?;
    Ok(format!("exec-{}", hex::encode(bytes)))
}

/// An exec's process, started in its container's cell, its output
/// followed.
pub(super) struct Running {
    client: pb::runtime_client::RuntimeClient<tonic::transport::Channel>,
    guard: Reaper,
    output: tonic::Streaming<pb::LogEntry>,
    /// For errors: "exec in container <id>".
    what: String,
}

/// An exec's stdin and terminal.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Stdio {
    pub stdin: bool,
    pub tty: bool,
}

/// Which stream a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Output {
    Stdout,
    Stderr,
}

impl Running {
    /// The next chunk of the process's output (a line with its newline, or
    /// the part of one that was written); `None` once both streams ended.
    pub(super) async fn next_output(&mut self) -> Option<Result<(Output, Vec<u8>), Status>> {
        let entry = match self.output.next().await? {
            Ok(entry) => entry,
            Err(e) => return Some(Err(self.refused(e))),
        };
        if entry.dropped_before > 0 {
            return Some(Err(Status::data_loss(format!(
                "{}: {} lines of its output were lost (written faster than they were read)",
                self.what, entry.dropped_before
            ))));
        }
        Some(Ok(chunk_of(entry)))
    }

    /// Waits for the process's exit (its output has ended) and frees it;
    /// its exit code (128 + the signal that ended it).
    pub(super) async fn exit_code(self) -> Result<i32, Status> {
        let status = self
            .client
            .clone()
            .wait(pb::WaitRequest {
                id: self.guard.id.clone(),
                timeout_ms: Some(10_000),
            })
            .await;
        let status = match status {
            Ok(s) => s.into_inner(),
            Err(e) => {
                let e = self.refused(e);
                self.guard.finish(false).await;
                return Err(e);
            }
        };
        self.guard.finish(true).await;
        Ok(status
            .exit_code
            .or(status.signal.map(|s| 128 + s))
            .unwrap_or(255))
    }

    /// Its executable in the pod's instance, and a client of that
    /// instance (for `Input`).
    pub(super) fn target(
        &self,
    ) -> (
        String,
        pb::runtime_client::RuntimeClient<tonic::transport::Channel>,
    ) {
        (self.guard.id.clone(), self.client.clone())
    }

    /// Kills the process and frees it.
    pub(super) async fn kill(self) {
        self.guard.finish(false).await;
    }

    fn refused(&self, s: Status) -> Status {
        Status::new(s.code(), format!("{}: {}", self.what, s.message()))
    }
}

impl Cri {
    /// A channel of its own to a sandbox's instance (see
    /// `Instances::own_channel`).
    pub(super) fn own_channel(
        &self,
        instance: &crate::instances::Instance,
    ) -> Result<tonic::transport::Channel, Status> {
        let instances = self.runtime.instances.as_ref().ok_or_else(|| {
            Status::failed_precondition("pod sandboxes are instances: this auraed has none")
        })?;
        Ok(instances.own_channel(instance)?)
    }

    /// Starts `cmd` in the running container `container_id` as its own
    /// process runs (its user, environment and working directory), its
    /// output followed from the start.
    pub(super) async fn start_exec(
        &self,
        container_id: &str,
        cmd: &[String],
        stdio: Stdio,
        streamed: bool,
    ) -> Result<Running, Status> {
        self.state.container("container_id", container_id)?;
        let Some((command, args)) = cmd.split_first() else {
            return Err(Status::invalid_argument("cmd: empty"));
        };
        let c = self.running_container(container_id)?;
        let sandbox = self.state.sandbox("pod_sandbox_id", &c.sandbox_id)?;
        let instance = self.instance_of(&sandbox)?;
        let first = super::container_config::executable_of(&c.config, c.user, &c.groups)?
            .unwrap_or_default();
        // A streamed exec (stdin, a terminal, output at the client's pace)
        // gets a connection of its own: a stalled one must not hold up
        // the instance's other calls.
        let channel = if streamed {
            self.own_channel(&instance)?
        } else {
            instance.channel()
        };
        let mut client = pb::runtime_client::RuntimeClient::new(channel);
        let what = format!("exec in container {}", c.id);
        let refused = |s: Status| Status::new(s.code(), format!("{what}: {}", s.message()));
        // Named here, so that the guard is armed before the process can
        // exist: if this call is dropped halfway, it goes all the same.
        let id = exec_name()?;
        let guard = Reaper {
            client: client.clone(),
            id: id.clone(),
            armed: true,
        };
        let started = client
            .run_executable(pb::RunExecutableRequest {
                name: id.clone(),
                cell: c.cell.clone(),
                executable: Some(pb::Executable {
                    command: command.clone(),
                    args: args.to_vec(),
                    env: first.env,
                    cwd: first.cwd,
                    uid: first.uid,
                    gid: first.gid,
                    groups: first.groups,
                    stdin: stdio.stdin,
                    tty: stdio.tty,
                }),
            })
            .await;
        if let Err(e) = started {
            use tonic::Code;
            let refused_outright = matches!(
                e.code(),
                Code::InvalidArgument
                    | Code::NotFound
                    | Code::AlreadyExists
                    | Code::FailedPrecondition
                    | Code::PermissionDenied
                    | Code::Unauthenticated
            );
            if refused_outright {
                // Refused before anything was made: nothing to clean up.
                let mut guard = guard;
                guard.armed = false;
            } else {
                // The process may exist (the answer was lost).
                guard.finish(false).await;
            }
            return Err(refused(e));
        }
        let output = match client
            .logs(pb::LogsRequest {
                id: id.clone(),
                follow: true,
                wait_for_start: true,
                new_only: false,
            })
            .await
        {
            Ok(o) => o.into_inner(),
            Err(e) => {
                guard.finish(false).await;
                return Err(refused(e));
            }
        };
        Ok(Running {
            client,
            guard,
            output,
            what,
        })
    }

    pub(super) async fn exec_sync(
        &self,
        r: cri::ExecSyncRequest,
    ) -> Result<cri::ExecSyncResponse, Status> {
        if r.timeout < 0 {
            return Err(Status::invalid_argument(format!(
                "timeout: {} is negative",
                r.timeout
            )));
        }
        let mut running = self
            .start_exec(&r.container_id, &r.cmd, Stdio::default(), false)
            .await?;
        let collect = async {
            let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
            while let Some(chunk) = running.next_output().await {
                let (which, chunk) = chunk?;
                let out = match which {
                    Output::Stdout => &mut stdout,
                    Output::Stderr => &mut stderr,
                };
                if out.len() + chunk.len() <= OUTPUT_CAP {
                    out.extend_from_slice(&chunk);
                }
            }
            Ok::<_, Status>((stdout, stderr))
        };
        let outcome = if r.timeout > 0 {
            tokio::time::timeout(std::time::Duration::from_secs(r.timeout as u64), collect)
                .await
                .ok()
        } else {
            Some(collect.await)
        };
        match outcome {
            Some(Ok((stdout, stderr))) => Ok(cri::ExecSyncResponse {
                stdout,
                stderr,
                exit_code: running.exit_code().await?,
            }),
            Some(Err(e)) => {
                running.kill().await;
                Err(e)
            }
            None => {
                running.kill().await;
                Err(Status::deadline_exceeded(format!(
                    "exec in container {}: not done within the timeout of {} s; killed",
                    r.container_id, r.timeout
                )))
            }
        }
    }
}
