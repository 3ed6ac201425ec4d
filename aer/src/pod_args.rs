//! `aer pod run` and `aer pod ls`: their flags, the request they make, and
//! how a pod is shown.

use std::path::PathBuf;

use aurae_proto::runtime as pb;
use serde_json::{json, Value};

use crate::output::state;
use crate::spawn_args::FlagError;
use crate::text::escape;

#[derive(clap::Subcommand)]
pub enum PodCmd {
    /// Spawn an instance and run a container in it: the image's entrypoint,
    /// or the command after `--`.
    Run(Box<PodRunArgs>),
    /// List pods, with their containers.
    Ls,
}

#[derive(clap::Args)]
pub struct PodRunArgs {
    #[arg(long)]
    pub name: String,
    /// OCI image layout directory or OCI / docker-save archive.
    #[arg(long)]
    pub image: PathBuf,
    /// The container's name: `<pod>/<container>` names it afterwards.
    #[arg(long, default_value = "main")]
    pub container: String,
    /// A port the pod listens on, `PORT`, or `HOST:PORT` to have auraed
    /// forward host port HOST to it (repeatable).
    #[arg(long = "port", short = 'p')]
    pub ports: Vec<String>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(long = "env", short = 'e')]
    pub env: Vec<String>,
    /// A host bridge to give the pod a network device on: eth1, eth2...
    /// in this order (repeatable).
    #[arg(long = "network")]
    pub networks: Vec<String>,
    #[command(flatten)]
    pub instance: crate::spawn_args::InstanceFlags,
    /// The command and its arguments (the image's entrypoint when empty).
    #[arg(last = true)]
    pub command: Vec<String>,
}

fn port(flag: &'static str, text: &str) -> Result<u32, FlagError> {
    text.parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .map(u32::from)
        .ok_or_else(|| FlagError {
            flag,
            reason: format!("{text:?} is not a port (1-65535)"),
        })
}

impl PodRunArgs {
    pub fn request(self) -> Result<pb::RunPodRequest, FlagError> {
        let spawn = crate::spawn_args::SpawnArgs {
            name: self.name.clone(),
            instance: self.instance,
            initramfs: None,
            nested: false,
        }
        .request()?;
        let image = std::path::absolute(&self.image).map_err(|e| FlagError {
            flag: "image",
            reason: e.to_string(),
        })?;
        let mut ports = Vec::new();
        for p in &self.ports {
            ports.push(match p.split_once(':') {
                Some((host, inside)) => pb::PodPort {
                    container_port: port("port", inside)?,
                    host_port: Some(port("port", host)?),
                },
                None => pb::PodPort {
                    container_port: port("port", p)?,
                    host_port: None,
                },
            });
        }
        let mut env = Vec::new();
        for kv in &self.env {
            let (name, value) = kv.split_once('=').ok_or_else(|| FlagError {
                flag: "env",
                reason: format!("{kv:?} is not KEY=VALUE"),
            })?;
            env.push(pb::EnvVar {
                name: name.into(),
                value: value.into(),
            });
        }
        let mut command = self.command.into_iter();
        let executable = pb::Executable {
            command: command.next().unwrap_or_default(),
            args: command.collect(),
            env,
            ..Default::default()
        };
        let run_image_entrypoint = executable.command.is_empty() && executable.env.is_empty();
        Ok(pb::RunPodRequest {
            name: self.name,
            containers: vec![pb::PodContainer {
                name: self.container,
                image: image.display().to_string(),
                executable: (!run_image_entrypoint).then_some(executable),
                limits: None,
            }],
            vcpus: spawn.vcpus,
            memory_mib: spawn.memory_mib,
            ports,
            backend: spawn.backend,
            ready_timeout_ms: spawn.ready_timeout_ms,
            metadata: spawn.metadata,
            networks: self
                .networks
                .into_iter()
                .map(|bridge| pb::PodNetwork { bridge })
                .collect(),
        })
    }
}

fn ports_text(p: &pb::PodStatus) -> String {
    p.ports
        .iter()
        .map(|p| match p.host_port {
            Some(h) => format!("{h}->{}", p.container_port),
            None => p.container_port.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A pod as JSON: its instance, containers and ports.
pub fn pod_json(name: &str, p: &pb::PodStatus) -> Value {
    json!({
        "name": name,
        "instance": p.instance.as_ref().map(crate::output::instance_json),
        "containers": p.containers.iter().map(|c| json!({
            "name": c.id,
            "state": state(c),
            "executables": c.executables,
        })).collect::<Vec<_>>(),
        "ports": p.ports.iter().map(|p| json!({
            "container_port": p.container_port,
            "host_port": p.host_port,
        })).collect::<Vec<_>>(),
    })
}

/// A pod as one table line: name, address, backend, containers, ports.
pub fn pod_line(name: &str, p: &pb::PodStatus) -> String {
    let i = p.instance.clone().unwrap_or_default();
    let containers: Vec<String> = p
        .containers
        .iter()
        .map(|c| format!("{}/{} {}", name, c.id, state(c)))
        .collect();
    format!(
        "{}  {}  {}  [{}]  ports {}",
        escape(name),
        escape(&i.address),
        escape(&i.backend_reason),
        escape(&containers.join(", ")),
        escape(&ports_text(p)),
    )
}
