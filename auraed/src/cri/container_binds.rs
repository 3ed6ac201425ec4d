//! How a cell-backed pod's instance sees a container's image and volumes:
//! bound into its mount namespace under the container's folder, and taken
//! out again when the container is removed. (A microVM gets the image over
//! its link instead, and has no host paths.)

use std::path::PathBuf;

use aurae_proto::runtime as pb;
use tonic::Status;

use super::state::Container;
use super::Cri;
use crate::instances::backend::Backend;
use crate::instances::Instance;

/// Where a pod's instance sees its containers' volumes.
const VOLUMES: &str = "/etc/aurae/volumes";

/// Binds the image (read-only) and each volume (writable unless asked
/// otherwise) into a cell-backed pod's instance, under the container's
/// folder; answers where the instance sees the image. A bind that
/// fails part-way takes back the ones made before it.
pub(super) async fn bind_into(
    instance: &Instance,
    cell: &str,
    host: PathBuf,
    volumes: Vec<super::container_config::Volume>,
    mounts: &mut Vec<pb::CellMount>,
) -> Result<PathBuf, Status> {
    let inside = PathBuf::from(crate::pods::IMAGES).join(cell);
    let ns = instance.pidfd()?;
    // The image, read-only, and each volume (writable unless asked
    // otherwise) under the container's folder in the instance.
    use crate::cells::Propagation as P;
    use crate::sys::mount_inject::Inject;
    let mut binds = vec![Inject {
        host,
        inside: inside.clone(),
        writable: false,
        propagation: P::Private,
    }];
    for (i, v) in volumes.into_iter().enumerate() {
        let at = PathBuf::from(VOLUMES).join(format!("{cell}-{i}"));
        mounts.push(pb::CellMount {
            source: at.display().to_string(),
            destination: v.container_path,
            read_only: v.read_only,
            propagation: match v.propagation {
                P::Private => pb::MountPropagation::Private,
                P::Slave => pb::MountPropagation::HostToCell,
                P::Shared => pb::MountPropagation::Bidirectional,
            } as i32,
        });
        binds.push(Inject {
            host: v.host,
            inside: at,
            writable: !v.read_only,
            propagation: v.propagation,
        });
    }
    // A bind that fails part-way takes back the ones made before it.
    crate::blocking::run("binding an image into the pod", move || {
        use crate::sys::mount_inject;
        use std::os::fd::AsFd;
        mount_inject::bind(ns.as_fd(), &binds).inspect_err(|_| {
            let targets: Vec<PathBuf> = binds.iter().map(|b| b.inside.clone()).collect();
            if let Err(e) = mount_inject::unbind(ns.as_fd(), &targets) {
                tracing::error!("unbinding after a failed bind: {}", crate::error::chain(&e));
            }
        })
    })
    .await?
    .map_err(|source| crate::error::ApiError::Mount {
        what: "binding the container's image and volumes into the pod".into(),
        source,
    })?;
    Ok(inside)
}

impl Cri {
    /// Takes the container's image and volumes out of its pod's instance
    /// (if it still runs: its mount namespace goes with it otherwise).
    pub(super) async fn unbind(&self, c: &Container) -> Result<(), Status> {
        let Ok(sandbox) = self.state.sandbox("pod_sandbox_id", &c.sandbox_id) else {
            return Ok(());
        };
        let Ok(instance) = self.instance_of(&sandbox) else {
            return Ok(());
        };
        // A microVM's copy of the image goes with the VM.
        if instance.choice.backend == Backend::MicroVm {
            return Ok(());
        }
        let ns = instance.pidfd()?;
        let targets: Vec<PathBuf> = std::iter::once(c.image_inside.clone())
            .chain(c.mounts.iter().map(|m| PathBuf::from(&m.source)))
            .collect();
        crate::blocking::run("unbinding a container's image and volumes", move || {
            use std::os::fd::AsFd;
            crate::sys::mount_inject::unbind(ns.as_fd(), &targets)
        })
        .await?
        .map_err(|source| crate::error::ApiError::Mount {
            what: format!(
                "removing container {}: unbinding its image and volumes",
                c.id
            ),
            source,
        })?;
        Ok(())
    }
}
