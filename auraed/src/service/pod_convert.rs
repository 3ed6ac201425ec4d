//! `RunPodRequest` to a [`PodSpec`]: every field checked, each error naming
//! it (`containers[1].image`, `ports[0].host_port`).

use std::collections::HashSet;
use std::path::PathBuf;

use aurae_proto::runtime as pb;

use super::convert;
use crate::error::ApiError;
use crate::instances::{Network, MAX_NETWORKS};
use crate::pods::{ContainerSpec, PodSpec, PortSpec};
use crate::validation as v;

/// Containers in one pod, at most.
pub const MAX_CONTAINERS: usize = 16;
/// Ports of one pod, at most.
pub const MAX_PORTS: usize = 64;

pub fn pod_spec(r: &pb::RunPodRequest) -> Result<PodSpec, ApiError> {
    let instance = convert::spawn_spec(&pb::SpawnRequest {
        name: r.name.clone(),
        vcpus: r.vcpus,
        memory_mib: r.memory_mib,
        backend: r.backend,
        ready_timeout_ms: r.ready_timeout_ms,
        metadata: r.metadata.clone(),
        ..Default::default()
    })?;
    if r.containers.is_empty() {
        return Err(ApiError::invalid("containers", "a pod needs at least one"));
    }
    if r.containers.len() > MAX_CONTAINERS {
        return Err(ApiError::invalid(
            "containers",
            format!(
                "{} containers; a pod has at most {MAX_CONTAINERS}",
                r.containers.len()
            ),
        ));
    }
    let mut names = HashSet::new();
    let mut containers = Vec::new();
    for (i, c) in r.containers.iter().enumerate() {
        let field = |f: &str| format!("containers[{i}].{f}");
        v::name(&field("name"), &c.name)?;
        if !names.insert(c.name.as_str()) {
            return Err(ApiError::invalid(
                field("name"),
                format!("{:?} is the name of another container of the pod", c.name),
            ));
        }
        v::absolute_path(&field("image"), &c.image)?;
        let image = PathBuf::from(&c.image);
        readable(&field("image"), &image)?;
        if let Some(e) = &c.executable {
            convert::exec_request(&field("executable"), e, false)?;
        }
        if let Some(l) = &c.limits {
            convert::limits(l).map_err(|e| match e {
                ApiError::InvalidArgument { field: f, reason } => {
                    ApiError::invalid(field(&f), reason)
                }
                other => other,
            })?;
        }
        containers.push(ContainerSpec {
            name: c.name.clone(),
            image,
            executable: c.executable.clone(),
            limits: c.limits.clone(),
        });
    }
    if r.ports.len() > MAX_PORTS {
        return Err(ApiError::invalid(
            "ports",
            format!("{} ports; a pod has at most {MAX_PORTS}", r.ports.len()),
        ));
    }
    let (mut inside, mut outside) = (HashSet::new(), HashSet::new());
    let mut ports = Vec::new();
    for (i, p) in r.ports.iter().enumerate() {
        let port = |f: &str, n: u32| -> Result<u16, ApiError> {
            let f = format!("ports[{i}].{f}");
            v::range(&f, n.into(), 1, 65535)?;
            Ok(n as u16)
        };
        let container_port = port("container_port", p.container_port)?;
        if !inside.insert(container_port) {
            return Err(ApiError::invalid(
                format!("ports[{i}].container_port"),
                format!("{container_port} is listed twice"),
            ));
        }
        let host_port = p.host_port.map(|n| port("host_port", n)).transpose()?;
        if host_port == Some(crate::metadata::bridge::PORT) {
            return Err(ApiError::invalid(
                format!("ports[{i}].host_port"),
                format!(
                    "{} is where this auraed serves its instances' metadata",
                    crate::metadata::bridge::PORT
                ),
            ));
        }
        if let Some(h) = host_port {
            if !outside.insert(h) {
                return Err(ApiError::invalid(
                    format!("ports[{i}].host_port"),
                    format!("{h} is listed twice"),
                ));
            }
        }
        ports.push(PortSpec {
            container_port,
            host_port,
        });
    }
    let networks = networks(&r.networks)?;
    // A microVM gets images as disks, so only archives: with an image
    // folder, `auto` means a cell.
    let mut instance = instance;
    if instance.preference == crate::instances::backend::Preference::Auto
        && containers.iter().any(|c| c.image.is_dir())
    {
        instance.preference = crate::instances::backend::Preference::Cell;
    }
    instance.networks = networks;
    Ok(PodSpec {
        instance,
        containers,
        ports,
    })
}

/// The pod's extra networks: each bridge once. Their names, and that each
/// is a bridge, are checked as the instance is made, before anything is.
fn networks(asked: &[pb::PodNetwork]) -> Result<Vec<Network>, ApiError> {
    if asked.len() > MAX_NETWORKS {
        return Err(ApiError::invalid(
            "networks",
            format!(
                "{} networks; an instance has at most {MAX_NETWORKS} besides its own",
                asked.len()
            ),
        ));
    }
    let mut seen = HashSet::new();
    asked
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let field = format!("networks[{i}].bridge");
            let b = &n.bridge;
            if !seen.insert(b.as_str()) {
                return Err(ApiError::invalid(field, format!("{b} is listed twice")));
            }
            Ok(Network {
                bridge: b.clone(),
                field,
            })
        })
        .collect()
}

/// `path` is an image this auraed can read: a folder (an OCI layout) or a
/// file (an archive).
fn readable(field: &str, path: &std::path::Path) -> Result<(), ApiError> {
    let shown = v::shown(&path.display().to_string());
    let meta =
        std::fs::metadata(path).map_err(|e| ApiError::invalid(field, format!("{shown}: {e}")))?;
    let opened = if meta.is_dir() {
        std::fs::read_dir(path).map(drop)
    } else if meta.is_file() {
        std::fs::File::open(path).map(drop)
    } else {
        return Err(ApiError::invalid(
            field,
            format!("{shown} is neither an OCI layout folder nor an image archive"),
        ));
    };
    opened.map_err(|e| ApiError::invalid(field, format!("{shown} can't be read: {e}")))
}

/// A pod's status: its instance, its containers, its ports.
pub fn pod_status(
    instance: &crate::instances::Instance,
    ports: Vec<PortSpec>,
    containers: Vec<pb::WorkloadStatus>,
) -> pb::PodStatus {
    pb::PodStatus {
        instance: Some(convert::instance(instance)),
        containers,
        ports: ports
            .into_iter()
            .map(|p| pb::PodPort {
                container_port: p.container_port.into(),
                host_port: p.host_port.map(u32::from),
            })
            .collect(),
    }
}
