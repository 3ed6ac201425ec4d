//! `Exec` and `PortForward`: the request checked, kept under a token, and
//! answered with the streaming server's URL for it.

use aurae_proto::cri;
use tonic::Status;

use super::Request;
use crate::cri::runtime_service::not_yet;
use crate::cri::Cri;

impl Cri {
    pub(in crate::cri) fn exec_url(&self, r: cri::ExecRequest) -> Result<String, Status> {
        let c = self.state.container("container_id", &r.container_id)?;
        if r.cmd.is_empty() {
            return Err(Status::invalid_argument("cmd: empty"));
        }
        if r.tty {
            return Err(not_yet("Exec", "a TTY for the process (tty: true)"));
        }
        if r.stdin {
            return Err(not_yet("Exec", "the process's stdin (stdin: true)"));
        }
        if !r.stdout && !r.stderr {
            return Err(Status::invalid_argument(
                "stdout, stderr: one of stdin, stdout and stderr must be true",
            ));
        }
        if c.run().state != cri::ContainerState::ContainerRunning as i32 {
            return Err(Status::failed_precondition(format!(
                "container_id: container {} is not running",
                c.id
            )));
        }
        self.streams.url_for(Request::Exec {
            container_id: c.id.clone(),
            cmd: r.cmd,
            stdout: r.stdout,
            stderr: r.stderr,
        })
    }

    pub(in crate::cri) fn port_forward_url(
        &self,
        r: cri::PortForwardRequest,
    ) -> Result<String, Status> {
        let s = self.state.sandbox("pod_sandbox_id", &r.pod_sandbox_id)?;
        self.instance_of(&s)?;
        if let Some((i, p)) = r
            .port
            .iter()
            .enumerate()
            .find(|(_, p)| !(1..=65535).contains(*p))
        {
            return Err(Status::invalid_argument(format!(
                "port[{i}]: {p} is not a port number"
            )));
        }
        self.streams.url_for(Request::PortForward {
            sandbox_id: s.id.clone(),
        })
    }

    /// A pidfd of a process in the pod's network namespace (its instance's
    /// auraed), while the pod is ready.
    pub(in crate::cri) fn sandbox_netns(
        &self,
        sandbox_id: &str,
    ) -> Result<std::os::fd::OwnedFd, Status> {
        let s = self.state.sandbox("pod_sandbox_id", sandbox_id)?;
        Ok(self.instance_of(&s)?.pidfd()?)
    }
}
