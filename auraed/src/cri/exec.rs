//! `ExecSync`: a process run in a container's cell, its output collected
//! (each stream capped at 16 MiB, as the CRI asks) and its exit code
//! reported; past the request's timeout it is killed.

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

impl Cri {
    pub(super) async fn exec_sync(
        &self,
        r: cri::ExecSyncRequest,
    ) -> Result<cri::ExecSyncResponse, Status> {
        let c = self.state.container("container_id", &r.container_id)?;
        let Some((command, args)) = r.cmd.split_first() else {
            return Err(Status::invalid_argument("cmd: empty"));
        };
        if r.timeout < 0 {
            return Err(Status::invalid_argument(format!(
                "timeout: {} is negative",
                r.timeout
            )));
        }
        if c.run().state != cri::ContainerState::ContainerRunning as i32 {
            return Err(Status::failed_precondition(format!(
                "container_id: container {} is not running",
                c.id
            )));
        }
        let sandbox = self.state.sandbox("pod_sandbox_id", &c.sandbox_id)?;
        let instance = self.instance_of(&sandbox)?;
        // As the container's own process runs: its user, environment and
        // working directory.
        let first = super::container_config::executable_of(&c.config, c.user, &c.groups)?
            .unwrap_or_default();
        let mut client = pb::runtime_client::RuntimeClient::new(instance.channel());
        let refused = |s: Status| {
            Status::new(
                s.code(),
                format!("exec in container {}: {}", c.id, s.message()),
            )
        };
        let started = client
            .run_executable(pb::RunExecutableRequest {
                name: String::new(),
                cell: c.cell.clone(),
                executable: Some(pb::Executable {
                    command: command.clone(),
                    args: args.to_vec(),
                    env: first.env,
                    cwd: first.cwd,
                    uid: first.uid,
                    gid: first.gid,
                    groups: first.groups,
                }),
            })
            .await
            .map_err(refused)?
            .into_inner();
        // If the call ends early (its client went away and tonic dropped
        // it), the process is killed and freed all the same.
        let guard = Reaper {
            client: client.clone(),
            id: started.id.clone(),
            armed: true,
        };
        let collect = async {
            let mut stream = client
                .logs(pb::LogsRequest {
                    id: started.id.clone(),
                    follow: true,
                    wait_for_start: true,
                })
                .await?
                .into_inner();
            let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
            while let Some(entry) = stream.next().await {
                let entry = entry?;
                let out = if entry.stream == pb::LogStream::Stderr as i32 {
                    &mut stderr
                } else {
                    &mut stdout
                };
                if out.len() + entry.line.len() < OUTPUT_CAP {
                    out.extend_from_slice(&entry.line);
                    if !entry.partial {
                        out.push(b'\n');
                    }
                }
            }
            let status = client
                .clone()
                .wait(pb::WaitRequest {
                    id: started.id.clone(),
                    timeout_ms: Some(10_000),
                })
                .await?
                .into_inner();
            Ok::<_, Status>((stdout, stderr, status))
        };
        let outcome = if r.timeout > 0 {
            match tokio::time::timeout(std::time::Duration::from_secs(r.timeout as u64), collect)
                .await
            {
                Ok(r) => r.map(Some),
                Err(_) => Ok(None),
            }
        } else {
            collect.await.map(Some)
        };
        // The process goes, whatever happened: killed unless its exit was
        // collected.
        guard.finish(matches!(outcome, Ok(Some(_)))).await;
        match outcome.map_err(refused)? {
            Some((stdout, stderr, status)) => Ok(cri::ExecSyncResponse {
                stdout,
                stderr,
                exit_code: status
                    .exit_code
                    .or(status.signal.map(|s| 128 + s))
                    .unwrap_or(255),
            }),
            None => Err(Status::deadline_exceeded(format!(
                "exec in container {}: not done within the timeout of {} s; killed",
                c.id, r.timeout
            ))),
        }
    }
}
