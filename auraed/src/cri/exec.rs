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

/// Kills and frees an exec's process unless disarmed (the call finished
/// and did so itself).
struct Reaper {
    client: pb::runtime_client::RuntimeClient<tonic::transport::Channel>,
    id: String,
    armed: bool,
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (mut client, id) = (self.client.clone(), std::mem::take(&mut self.id));
        tokio::spawn(async move {
            // (It may have exited already: then only the free counts.)
            if let Err(e) = client
                .stop(pb::StopRequest {
                    id: id.clone(),
                    signal: libc::SIGKILL,
                    grace_period_ms: Some(0),
                })
                .await
            {
                tracing::debug!("an abandoned exec {id}: killing it: {}", e.message());
            }
            if let Err(e) = client.free(pb::FreeRequest { id: id.clone() }).await {
                tracing::warn!("an abandoned exec {id}: freeing it: {}", e.message());
            }
        });
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
        let mut client_for_cleanup = client.clone();
        // If the call ends early (its client went away and tonic dropped
        // it), the process is killed and freed all the same.
        let mut guard = Reaper {
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
        if !matches!(outcome, Ok(Some(_))) {
            if let Err(e) = client_for_cleanup
                .stop(pb::StopRequest {
                    id: started.id.clone(),
                    signal: libc::SIGKILL,
                    grace_period_ms: Some(0),
                })
                .await
            {
                tracing::warn!("exec in {}: killing {}: {}", c.id, started.id, e.message());
            }
        }
        if let Err(e) = client_for_cleanup
            .free(pb::FreeRequest {
                id: started.id.clone(),
            })
            .await
        {
            tracing::warn!("exec in {}: freeing {}: {}", c.id, started.id, e.message());
        }
        guard.armed = false;
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
