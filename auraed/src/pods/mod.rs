//! Pods: `RunPod` spawns an instance, then runs each of the pod's
//! containers there as a cell of its own whose root is the container's
//! image. Every container cell shares the instance's network namespace, so
//! the containers of a pod reach each other on localhost, and a pod's port
//! is the instance's port on the bridge; host ports are relayed by
//! [`ports`]. The images are not copied: a cell-backed instance sees each
//! one read-only at `/etc/aurae/pods/<container>`, as this auraed unpacked
//! and verified it into its image cache; a microVM gets the archive as a
//! read-only disk (`/dev/vda` for the first container), and its auraed
//! checks every blob against its digest as it unpacks the image.
//!
//! From the parent, `<pod>/<container>` names a container: `Status`, `Stop`
//! and `Free` reach its cell, `Logs` and `Wait` its first process, all
//! through the instance's link.

pub mod ports;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aurae_proto::runtime as pb;

use crate::error::ApiError;
use crate::instances::backend::Backend;
use crate::instances::{Instance, InstanceSpec, Shared};
use crate::registry::Workload;
use crate::runtime::Runtime;
use crate::validation as v;

/// Where an instance sees its pod's images.
pub const IMAGES: &str = "/etc/aurae/pods";

/// One container, validated.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub name: String,
    /// The image on this host.
    pub image: PathBuf,
    pub executable: Option<pb::Executable>,
    pub limits: Option<pb::CellLimits>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortSpec {
    pub container_port: u16,
    pub host_port: Option<u16>,
}

/// A pod, validated.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub instance: InstanceSpec,
    pub containers: Vec<ContainerSpec>,
    pub ports: Vec<PortSpec>,
}

/// A container as its instance runs it.
#[derive(Debug, Clone)]
pub struct Container {
    pub name: String,
    /// Its first process, in the instance.
    pub executable_id: String,
}

/// What an instance holds as a pod.
pub struct PodInfo {
    pub containers: Vec<Container>,
    pub ports: Vec<PortSpec>,
    /// Dropped with the pod: the host ports close.
    _forwards: Vec<ports::Forward>,
}

impl PodInfo {
    /// Closes the pod's host ports; once this returns, they are free.
    pub async fn close(self) {
        for f in self._forwards {
            f.close().await;
        }
    }
}

/// Where a `<pod>/<container>` id leads.
pub struct ContainerTarget {
    pub instance: Arc<Instance>,
    /// The container's cell in the instance.
    pub cell: String,
    /// Its first process in the instance.
    pub executable_id: String,
}

/// Why the instance refused what this auraed asked of it for the pod.
fn refused(what: String) -> impl FnOnce(tonic::Status) -> ApiError {
    move |status| ApiError::Instance {
        what,
        status: Box::new(status),
    }
}

impl Runtime {
    /// Runs a pod; a failure at any step leaves nothing (no instance, host
    /// port or cell).
    pub async fn run_pod(&self, mut spec: PodSpec) -> Result<Arc<Instance>, ApiError> {
        // 1. Host ports first: one that is taken fails before anything is
        // made. Dropped (closed) on any failure below.
        let mut listeners = Vec::new();
        for (i, p) in spec.ports.iter().enumerate() {
            if let Some(host_port) = p.host_port {
                let field = format!("ports[{i}].host_port");
                listeners.push((p.container_port, ports::bind(&field, host_port)?));
            }
        }
        // 2. The instance, with the images bound into it: a cell-backed
        // one shares this auraed's unpacked (and verified) copy from its
        // image cache; a microVM gets the archive as a disk, which its
        // auraed verifies as it unpacks it.
        let cell_backed = self
            .instances
            .as_ref()
            .and_then(|i| i.choice_for(&spec.instance).ok())
            .is_some_and(|c| c.backend == Backend::Cell);
        let mut shared = Vec::new();
        for (i, c) in spec.containers.iter().enumerate() {
            let field = format!("containers[{i}].image");
            let host = if cell_backed {
                self.unpacked_image(&c.image, &field).await?
            } else {
                c.image.clone()
            };
            shared.push(Shared {
                host,
                inside: PathBuf::from(IMAGES).join(&c.name),
                field,
            });
        }
        spec.instance.read_only = shared;
        let instance = self.spawn(spec.instance.clone()).await?;
        // 3. The containers, then the host ports' relays. A failure frees
        // the instance (and the containers started in it).
        match start_containers(&instance, &spec.containers)
            .await
            .and_then(|c| {
                let forwards = listeners
                    .into_iter()
                    .map(|(port, l)| ports::start(l, SocketAddr::new(instance.address.ip(), port)))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((c, forwards))
            }) {
            Ok((containers, forwards)) => {
                *instance.pod.lock().unwrap_or_else(|e| e.into_inner()) = Some(PodInfo {
                    containers,
                    ports: spec.ports.clone(),
                    _forwards: forwards,
                });
                Ok(instance)
            }
            Err(e) => {
                if let Err(undo) = self.free(&instance.name).await {
                    tracing::error!("pod {}: freeing it after a failure: {undo}", instance.name);
                }
                Err(e)
            }
        }
    }

    /// The entry of this auraed's image cache that holds `image` unpacked
    /// (unpacking it first if needed): what a cell-backed pod instance
    /// sees of it.
    pub(crate) async fn unpacked_image(
        &self,
        image: &Path,
        field: &str,
    ) -> Result<PathBuf, ApiError> {
        let ctx = self.cells.clone().map_err(|e| {
            ApiError::FailedPrecondition(format!("{field}: cells are unavailable: {e}"))
        })?;
        let cache = ctx.state_dir.join("images");
        let (src, field) = (image.to_path_buf(), field.to_string());
        let cached = crate::blocking::run("unpacking a pod's image", move || {
            std::fs::create_dir_all(&cache)
                .map_err(|e| ApiError::io(format!("creating {}", cache.display()), e))?;
            crate::oci::cache::get(&src, &cache, ctx.image_unpack_limit_bytes)
                .map_err(|e| e.for_field(&field))
        })
        .await??;
        cached
            .rootfs
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| {
                ApiError::Internal(format!("{} has no cache entry", cached.rootfs.display()))
            })
    }

    /// The container an id of the form `<pod>/<container>` names, or `None`
    /// for any other id.
    pub fn pod_container(&self, id: &str) -> Result<Option<ContainerTarget>, ApiError> {
        let Some((pod, container)) = id.split_once('/') else {
            return Ok(None);
        };
        v::name("id", pod)?;
        v::name("id", container)?;
        let Workload::Instance(instance) = self.get(pod, "id")? else {
            return Err(ApiError::invalid("id", format!("{pod:?} is not a pod")));
        };
        let found = {
            let pod_info = instance.pod.lock().unwrap_or_else(|e| e.into_inner());
            let Some(info) = pod_info.as_ref() else {
                return Err(ApiError::invalid("id", format!("{pod:?} is not a pod")));
            };
            info.containers
                .iter()
                .find(|c| c.name == container)
                .cloned()
        };
        let c = found.ok_or_else(|| {
            ApiError::NotFound(format!("id: pod {pod:?} has no container {container:?}"))
        })?;
        Ok(Some(ContainerTarget {
            instance,
            cell: c.name,
            executable_id: c.executable_id,
        }))
    }
}

/// Runs each container as a cell of the instance, in the instance's
/// network namespace, with its image as its root.
async fn start_containers(
    instance: &Instance,
    containers: &[ContainerSpec],
) -> Result<Vec<Container>, ApiError> {
    let mut client = pb::runtime_client::RuntimeClient::new(instance.channel());
    let mut started = Vec::new();
    for (i, c) in containers.iter().enumerate() {
        // Where the instance sees the image: bound in, or its disk.
        let image = instance.shared.get(i).cloned().ok_or_else(|| {
            ApiError::Internal(format!("pod {}: container {i} has no image", instance.name))
        })?;
        let r = client
            .run_cell(pb::RunCellRequest {
                name: c.name.clone(),
                limits: c.limits.clone(),
                share_host: Some(pb::HostNamespaces {
                    net: true,
                    ..Default::default()
                }),
                image: image.display().to_string(),
                executable: c.executable.clone(),
                ..Default::default()
            })
            .await
            .map_err(refused(format!(
                "containers[{i}] ({}): the pod's instance refused it",
                c.name
            )))?
            .into_inner();
        started.push(Container {
            name: c.name.clone(),
            executable_id: r.executable_id,
        });
    }
    Ok(started)
}

/// The status of each container of `instance`'s pod, as the instance
/// reports it (a container it can't report is left out, logged).
pub async fn container_statuses(instance: &Instance) -> Vec<pb::WorkloadStatus> {
    let names: Vec<String> = match &*instance.pod.lock().unwrap_or_else(|e| e.into_inner()) {
        Some(p) => p.containers.iter().map(|c| c.name.clone()).collect(),
        None => return Vec::new(),
    };
    // All at once, each bounded: a hung instance costs a List one
    // STATUS_TIMEOUT, not that per container.
    let asked = names.into_iter().map(|name| {
        let mut client = pb::runtime_client::RuntimeClient::new(instance.channel());
        async move {
            let asked = client.status(pb::StatusRequest { id: name.clone() });
            (
                name.clone(),
                tokio::time::timeout(STATUS_TIMEOUT, asked).await,
            )
        }
    });
    let mut out = Vec::new();
    for (name, r) in futures::future::join_all(asked).await {
        match r {
            Ok(Ok(s)) => out.push(s.into_inner()),
            Ok(Err(e)) => {
                tracing::warn!("pod {}: status of {name}: {}", instance.name, e.message())
            }
            Err(_) => tracing::warn!(
                "pod {}: status of {name}: no answer within {STATUS_TIMEOUT:?}",
                instance.name
            ),
        }
    }
    out
}

/// How long a pod's status waits for its containers'.
const STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The ports of `instance`'s pod, if it is one.
pub fn pod_ports(instance: &Instance) -> Option<Vec<PortSpec>> {
    instance
        .pod
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(|p| p.ports.clone())
}
