//! How a pod's instance sees a container's image and volumes, taken out
//! again when the container is removed. A cell-backed instance: bound into
//! its mount namespace under the container's folder. A microVM gets the
//! image over its link, and the volumes through its VMM: bound into the
//! folder the VMM shares with the guest, in the VMM's mount namespace (see
//! [`crate::instances::volumes`]).

use std::path::{Path, PathBuf};

use aurae_proto::runtime as pb;
use tonic::Status;

use super::state::Container;
use super::Cri;
use crate::instances::backend::Backend;
use crate::instances::Instance;
use crate::sys::mount_inject::Inject;

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
    let mut binds = vec![Inject {
        host,
        inside: inside.clone(),
        writable: false,
        propagation: P::Private,
    }];
    binds.extend(plan(
        cell,
        volumes,
        Path::new(VOLUMES),
        Path::new(VOLUMES),
        mounts,
    ));
    inject(
        ns,
        binds,
        "binding the container's image and volumes into the pod",
    )
    .await?;
    Ok(inside)
}

/// Each volume's bind (at `<at>/<cell>-<i>` in the namespace it goes to)
/// and its mount in the container (from `<seen>/<cell>-<i>`, where the
/// instance sees it), appended to `mounts`.
fn plan(
    cell: &str,
    volumes: Vec<super::container_config::Volume>,
    at: &Path,
    seen: &Path,
    mounts: &mut Vec<pb::CellMount>,
) -> Vec<Inject> {
    use crate::cells::Propagation as P;
    let mut binds = Vec::new();
    for (i, v) in volumes.into_iter().enumerate() {
        let entry = format!("{cell}-{i}");
        mounts.push(pb::CellMount {
            source: seen.join(&entry).display().to_string(),
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
            inside: at.join(entry),
            writable: !v.read_only,
            propagation: v.propagation,
        });
    }
    binds
}

/// Refuses what a microVM pod's volumes can't do: a mount made in the
/// guest does not reach the host (`Bidirectional`).
pub(super) fn vm_propagation(volumes: &[super::container_config::Volume]) -> Result<(), Status> {
    match volumes
        .iter()
        .position(|v| v.propagation == crate::cells::Propagation::Shared)
    {
        Some(i) => Err(Status::unimplemented(format!(
            "config.mounts[{i}].propagation: bidirectional propagation in a microVM pod ({}) is \
             not built (a mount made in the guest does not reach the host)",
            super::sandboxes::MICROVM_HANDLER
        ))),
        None => Ok(()),
    }
}

/// Binds each volume into the folder a microVM pod's VMM shares with its
/// guest, in the VMM's mount namespace; appends where the guest sees them
/// to `mounts`. The mount points are made in this auraed's namespace (the
/// VMM sees the folder read-only). A bind that fails part-way takes back
/// the ones made before it, and the mount points.
pub(super) async fn bind_into_vm(
    instance: &Instance,
    cell: &str,
    volumes: Vec<super::container_config::Volume>,
    mounts: &mut Vec<pb::CellMount>,
) -> Result<(), Status> {
    if volumes.is_empty() {
        return Ok(());
    }
    let Some(folder) = instance.volumes_dir() else {
        return Err(Status::internal(format!(
            "instance {}: a microVM without a volumes folder",
            instance.name
        )));
    };
    let seen = Path::new(crate::instances::volumes::GUEST_DIR);
    let binds = plan(cell, volumes, &folder, seen, mounts);
    let ns = instance.pidfd()?;
    crate::blocking::run("binding volumes into a microVM", move || {
        use crate::instances::volumes;
        use crate::sys::mount_inject;
        use std::os::fd::AsFd;
        let points: Vec<(PathBuf, bool)> = binds
            .iter()
            .map(|b| (b.inside.clone(), b.is_file()))
            .collect();
        let targets: Vec<PathBuf> = points.iter().map(|(p, _)| p.clone()).collect();
        let made =
            volumes::mount_points(&points).map_err(|e| mount_inject::InjectError::MountPoint {
                path: folder.clone(),
                source: e,
            });
        made.and_then(|()| mount_inject::bind(ns.as_fd(), &binds))
            .inspect_err(|_| {
                if let Err(e) = mount_inject::unmount(ns.as_fd(), &targets) {
                    tracing::error!("unbinding after a failed bind: {}", crate::error::chain(&e));
                }
                targets.iter().for_each(|t| mount_inject::remove_point(t));
            })
    })
    .await?
    .map_err(|source| crate::error::ApiError::Mount {
        what: "binding the container's volumes into its microVM".into(),
        source,
    })?;
    Ok(())
}

/// Binds `binds` into the mount namespace of the process `ns`; a bind that
/// fails part-way takes back the ones made before it.
async fn inject(ns: std::os::fd::OwnedFd, binds: Vec<Inject>, what: &str) -> Result<(), Status> {
    crate::blocking::run("binding into a pod", move || {
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
        what: what.into(),
        source,
    })?;
    Ok(())
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
        let ns = instance.pidfd()?;
        let (targets, in_vmm) = match instance.choice.backend {
            // A microVM's copy of the image goes with the VM; its volumes
            // are in the VMM's folder, if it has one.
            Backend::MicroVm => {
                let Some(folder) = instance.volumes_dir() else {
                    return Ok(());
                };
                let targets: Vec<PathBuf> = c
                    .mounts
                    .iter()
                    .filter_map(|m| {
                        let entry = Path::new(&m.source)
                            .strip_prefix(crate::instances::volumes::GUEST_DIR)
                            .ok()?;
                        Some(folder.join(entry))
                    })
                    .collect();
                (targets, true)
            }
            Backend::Cell => {
                let targets = std::iter::once(c.image_inside.clone())
                    .chain(c.mounts.iter().map(|m| PathBuf::from(&m.source)))
                    .collect();
                (targets, false)
            }
        };
        if targets.is_empty() {
            return Ok(());
        }
        crate::blocking::run("unbinding a container's image and volumes", move || {
            use crate::sys::mount_inject;
            use std::os::fd::AsFd;
            if !in_vmm {
                return mount_inject::unbind(ns.as_fd(), &targets);
            }
            // The VMM sees its folder read-only: the mount points are
            // removed in this auraed's namespace, as they were made.
            mount_inject::unmount(ns.as_fd(), &targets)?;
            targets.iter().for_each(|t| mount_inject::remove_point(t));
            Ok(())
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
