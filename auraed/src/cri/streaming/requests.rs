//! `Exec` and `PortForward`: the request checked, kept under a token, and
//! answered with the streaming server's URL for it.

use aurae_proto::cri;
use aurae_proto::runtime as pb;
use tonic::Status;

use super::channels::Want;
use super::Request;
use crate::cri::Cri;

/// The container's own process, for `Attach`.
pub struct AttachTarget {
    pub executable_id: String,
    pub client: pb::runtime_client::RuntimeClient<tonic::transport::Channel>,
    pub stdin_once: bool,
}

/// The streams of an exec or attach request, checked as the kubelet does.
fn wanted(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> Result<Want, Status> {
    if !stdin && !stdout && !stderr {
        return Err(Status::invalid_argument(
            "stdin, stdout, stderr: one of them must be true",
        ));
    }
    if tty && stderr {
        return Err(Status::invalid_argument(
            "stderr: a terminal has no stderr of its own (tty and stderr are both true)",
        ));
    }
    Ok(Want {
        stdin,
        stdout,
        stderr,
        tty,
    })
}

impl Cri {
    pub(in crate::cri) fn exec_url(&self, r: cri::ExecRequest) -> Result<String, Status> {
        let c = self.running_container(&r.container_id)?;
        if r.cmd.is_empty() {
            return Err(Status::invalid_argument("cmd: empty"));
        }
        let want = wanted(r.stdin, r.stdout, r.stderr, r.tty)?;
        self.streams.url_for(Request::Exec {
            container_id: c.id.clone(),
            cmd: r.cmd,
            want,
        })
    }

    pub(in crate::cri) fn attach_url(&self, r: cri::AttachRequest) -> Result<String, Status> {
        let c = self.running_container(&r.container_id)?;
        if r.stdin && !c.config.stdin {
            return Err(Status::failed_precondition(format!(
                "stdin: container {} was created without stdin",
                c.id
            )));
        }
        if r.tty != c.config.tty {
            return Err(Status::invalid_argument(format!(
                "tty: {} (container {} was created with tty {})",
                r.tty, c.id, c.config.tty
            )));
        }
        let want = wanted(r.stdin, r.stdout, r.stderr, r.tty)?;
        self.streams.url_for(Request::Attach {
            container_id: c.id.clone(),
            want,
        })
    }

    /// What `Attach` connects to: the container's own process in its
    /// pod's instance.
    pub(in crate::cri) fn attach_target(&self, container_id: &str) -> Result<AttachTarget, Status> {
        let c = self.running_container(container_id)?;
        let sandbox = self.state.sandbox("pod_sandbox_id", &c.sandbox_id)?;
        let instance = self.instance_of(&sandbox)?;
        Ok(AttachTarget {
            executable_id: c.run().executable_id,
            client: pb::runtime_client::RuntimeClient::new(self.own_channel(&instance)?),
            stdin_once: c.config.stdin_once,
        })
    }

    /// Container `container_id`, if it is running.
    pub(in crate::cri) fn running_container(
        &self,
        container_id: &str,
    ) -> Result<std::sync::Arc<crate::cri::state::Container>, Status> {
        let c = self.state.container("container_id", container_id)?;
        if c.run().state != cri::ContainerState::ContainerRunning as i32 {
            return Err(Status::failed_precondition(format!(
                "container_id: container {} is not running",
                c.id
            )));
        }
        Ok(c)
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
            // Each checked above to be a port number.
            ports: r.port.iter().map(|p| *p as u16).collect(),
        })
    }

    /// Where the pod's ports are, while the pod is ready: a cell-backed
    /// pod's network namespace (a pidfd of its instance's auraed), or a
    /// microVM's address on the instance bridge.
    pub(in crate::cri) fn sandbox_ports(&self, sandbox_id: &str) -> Result<PodPorts, Status> {
        let s = self.state.sandbox("pod_sandbox_id", sandbox_id)?;
        let instance = self.instance_of(&s)?;
        if instance.choice.backend == crate::instances::backend::Backend::MicroVm {
            // The pod's address: its CNI network's, else its instance's.
            let ip = s.ip.parse().unwrap_or(instance.address.ip());
            return Ok(PodPorts::Address(ip));
        }
        Ok(PodPorts::Netns(instance.pidfd()?))
    }
}

/// Where port-forward connects.
pub(in crate::cri) enum PodPorts {
    /// To localhost in this network namespace.
    Netns(std::os::fd::OwnedFd),
    /// To this address (a microVM's: its own localhost is out of reach).
    Address(std::net::IpAddr),
}
