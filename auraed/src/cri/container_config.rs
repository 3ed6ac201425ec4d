//! What a container's config asks of its cell: refused where not built,
//! its volumes checked, its first process.

use std::path::PathBuf;

use aurae_proto::cri;
use aurae_proto::runtime as pb;
use tonic::Status;

/// What a container's config asks for that is not built yet: refused,
/// naming the field, rather than ignored.
pub(super) fn refuse_unbuilt(c: &cri::ContainerConfig) -> Result<(), Status> {
    let unbuilt = |field: &str, what: &str| {
        Err(Status::unimplemented(format!(
            "{field}: {what} is not built yet"
        )))
    };
    for (i, m) in c.mounts.iter().enumerate() {
        if m.image.is_some() || !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
            return unbuilt(
                &format!("config.mounts[{i}]"),
                "image volumes and id-mapped mounts",
            );
        }
    }
    if !c.devices.is_empty() || !c.cdi_devices.is_empty() {
        return unbuilt("config.devices", "giving a container host devices");
    }
    if let Some(r) = c.linux.as_ref().and_then(|l| l.resources.as_ref()) {
        super::resources::limits_of(r, "config.linux.resources")?;
    }
    let sc = c.linux.as_ref().and_then(|l| l.security_context.as_ref());
    if let Some(sc) = sc {
        if let Some(cap) = sc.capabilities.as_ref() {
            use crate::cells::caps;
            // The cell's field names, as the CRI names them.
            let named = |e: crate::error::ApiError| match e {
                crate::error::ApiError::InvalidArgument { field, reason } => {
                    let field = [
                        ("cap_add", "add_capabilities"),
                        ("cap_drop", "drop_capabilities"),
                        ("cap_ambient", "add_ambient_capabilities"),
                    ]
                    .into_iter()
                    .find_map(|(ours, cri)| {
                        field
                            .strip_prefix(ours)
                            .map(|index| format!("{cri}{index}"))
                    })
                    .unwrap_or(field);
                    let reason = reason.replace("cap_add", "add_capabilities");
                    Status::invalid_argument(format!(
                        "config.linux.security_context.capabilities.{field}: {reason}"
                    ))
                }
                other => Status::from(other),
            };
            let change = caps::parse(
                &cap.add_capabilities,
                &cap.drop_capabilities,
                &cap.add_ambient_capabilities,
                false,
            )
            .map_err(named)?;
            caps::check_ambient(caps::keep(sc.privileged, change), change).map_err(named)?;
        }
    }
    Ok(())
}

/// The seccomp profile a container asks for, as its cell takes it (`None`:
/// unconfined). A privileged container runs unconfined, whatever it asks,
/// as with other runtimes; a `localhost/` profile is read from this host.
pub(super) async fn seccomp_of(
    c: &cri::ContainerConfig,
) -> Result<Option<pb::SeccompProfile>, Status> {
    use cri::security_profile::ProfileType;
    use pb::seccomp_profile::Kind;
    let Some(sc) = c.linux.as_ref().and_then(|l| l.security_context.as_ref()) else {
        return Ok(None);
    };
    let default = Some(pb::SeccompProfile {
        kind: Kind::RuntimeDefault as i32,
        json: String::new(),
    });
    let (field, localhost) = match &sc.seccomp {
        Some(p) => {
            let field = "config.linux.security_context.seccomp.localhost_ref";
            match ProfileType::try_from(p.profile_type) {
                Ok(ProfileType::RuntimeDefault) => return Ok(default.filter(|_| !sc.privileged)),
                Ok(ProfileType::Unconfined) => return Ok(None),
                Ok(ProfileType::Localhost) => (field, p.localhost_ref.clone()),
                Err(_) => {
                    return Err(Status::invalid_argument(format!(
                        "config.linux.security_context.seccomp.profile_type: {} is not a type",
                        p.profile_type
                    )))
                }
            }
        }
        None => {
            let field = "config.linux.security_context.seccomp_profile_path";
            #[allow(deprecated)]
            match sc.seccomp_profile_path.as_str() {
                "" | "unconfined" => return Ok(None),
                "runtime/default" | "docker/default" => {
                    return Ok(default.filter(|_| !sc.privileged))
                }
                p if p.starts_with("localhost/") => (field, p["localhost/".len()..].to_string()),
                other => {
                    return Err(Status::invalid_argument(format!(
                        "{field}: {} is not a profile (runtime/default, unconfined, or \
                         localhost/<path>)",
                        crate::validation::shown(other)
                    )))
                }
            }
        }
    };
    let json = read_profile(field, &localhost).await?;
    Ok((!sc.privileged).then_some(pb::SeccompProfile {
        kind: Kind::Custom as i32,
        json,
    }))
}

/// A `localhost/` profile's text, read and checked.
async fn read_profile(field: &str, path: &str) -> Result<String, Status> {
    let shown = crate::validation::shown(path);
    if !path.starts_with('/') {
        return Err(Status::invalid_argument(format!(
            "{field}: {shown} is not an absolute path"
        )));
    }
    let bad = |e: std::io::Error| Status::invalid_argument(format!("{field}: {shown}: {e}"));
    let file = tokio::fs::File::open(path).await.map_err(bad)?;
    let len = file.metadata().await.map_err(bad)?.len();
    if len > crate::seccomp::MAX_PROFILE_BYTES as u64 {
        return Err(Status::invalid_argument(format!(
            "{field}: {shown} is {len} bytes, more than the {} accepted",
            crate::seccomp::MAX_PROFILE_BYTES
        )));
    }
    let mut text = String::new();
    use tokio::io::AsyncReadExt;
    file.take(crate::seccomp::MAX_PROFILE_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .await
        .map_err(bad)?;
    crate::seccomp::Profile::parse(&text).map_err(|e| {
        Status::invalid_argument(format!("{field}: {shown}: {}", crate::error::chain(&e)))
    })?;
    Ok(text)
}

/// A container's volume, checked.
pub(super) struct Volume {
    pub host: PathBuf,
    pub container_path: String,
    pub read_only: bool,
    pub propagation: crate::cells::Propagation,
}

/// A container's volumes, checked: each host path exists (a symbolic link
/// is followed, as a bind mount does), each container path is absolute,
/// each propagation one the CRI has (and one the host's mount allows: see
/// `sys::mount_propagation`).
pub(super) async fn volumes(c: &cri::ContainerConfig) -> Result<Vec<Volume>, Status> {
    let volumes = checked_volumes(c)?;
    // Both ways: only for a privileged container (as the kubelet asks),
    // and nothing mounted inside it (it would reach the host).
    let privileged = sc_of(c).is_some_and(|s| s.privileged);
    for (i, v) in volumes.iter().enumerate() {
        if v.propagation != crate::cells::Propagation::Shared {
            continue;
        }
        if !privileged {
            return Err(Status::invalid_argument(format!(
                "config.mounts[{i}].propagation: bidirectional propagation needs a privileged \
                 container"
            )));
        }
        let inside = std::path::Path::new(&v.container_path);
        if let Some(j) = volumes.iter().enumerate().position(|(j, o)| {
            j != i && std::path::Path::new(&o.container_path).starts_with(inside)
        }) {
            return Err(Status::invalid_argument(format!(
                "config.mounts[{j}].container_path: is inside config.mounts[{i}], which \
                 propagates to the host"
            )));
        }
    }
    for (i, v) in volumes.iter().enumerate() {
        if v.propagation == crate::cells::Propagation::Private {
            continue;
        }
        let (host, p) = (v.host.clone(), v.propagation);
        crate::blocking::run("reading the host's mounts", move || {
            crate::sys::mount_propagation::check_host(&host, p)
        })
        .await?
        .map_err(|e| {
            let text = format!(
                "config.mounts[{i}].propagation: {}",
                crate::error::chain(&e)
            );
            match e {
                crate::sys::mount_inject::InjectError::Propagation { .. }
                | crate::sys::mount_inject::InjectError::Missing(_) => {
                    Status::invalid_argument(text)
                }
                _ => Status::internal(text),
            }
        })?;
    }
    Ok(volumes)
}

fn checked_volumes(c: &cri::ContainerConfig) -> Result<Vec<Volume>, Status> {
    c.mounts
        .iter()
        .enumerate()
        .map(|(i, m)| {
            if !m.host_path.starts_with('/') {
                return Err(Status::invalid_argument(format!(
                    "config.mounts[{i}].host_path: {} is not absolute",
                    crate::validation::shown(&m.host_path)
                )));
            }
            // A missing path is the request's fault; any other failure
            // is this host's.
            let host = std::fs::canonicalize(&m.host_path).map_err(|e| {
                let text = format!(
                    "config.mounts[{i}].host_path: resolving {}: {e}",
                    crate::validation::shown(&m.host_path)
                );
                if e.kind() == std::io::ErrorKind::NotFound {
                    Status::invalid_argument(text)
                } else {
                    Status::internal(text)
                }
            })?;
            let inside = std::path::Path::new(&m.container_path);
            if !inside.is_absolute()
                || inside
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(Status::invalid_argument(format!(
                    "config.mounts[{i}].container_path: {} is not an absolute path without '..'",
                    crate::validation::shown(&m.container_path)
                )));
            }
            use crate::cells::Propagation as P;
            let propagation = match cri::MountPropagation::try_from(m.propagation) {
                Ok(cri::MountPropagation::PropagationPrivate) => P::Private,
                Ok(cri::MountPropagation::PropagationHostToContainer) => P::Slave,
                Ok(cri::MountPropagation::PropagationBidirectional) => P::Shared,
                Err(_) => {
                    return Err(Status::invalid_argument(format!(
                        "config.mounts[{i}].propagation: {} is not a mount propagation",
                        m.propagation
                    )))
                }
            };
            Ok(Volume {
                host,
                container_path: m.container_path.clone(),
                read_only: m.readonly,
                propagation,
            })
        })
        .collect()
}

/// The container's first process: the CRI's command replaces the image's
/// entrypoint, its args the image's cmd.
/// `user`: a `run_as_username` resolved in the image, (uid, primary gid);
/// `groups`: the supplementary groups.
pub(super) fn executable_of(
    c: &cri::ContainerConfig,
    user: Option<(u32, u32)>,
    groups: &[u32],
) -> Result<Option<pb::Executable>, Status> {
    let sc = c.linux.as_ref().and_then(|l| l.security_context.as_ref());
    let id = |v: Option<&cri::Int64Value>, field: &str| -> Result<Option<u32>, Status> {
        v.map(|v| {
            u32::try_from(v.value)
                .map_err(|_| Status::invalid_argument(format!("{field}: {} is not an id", v.value)))
        })
        .transpose()
    };
    let mut uid = id(
        sc.and_then(|s| s.run_as_user.as_ref()),
        "config.linux.security_context.run_as_user",
    )?;
    let mut gid = id(
        sc.and_then(|s| s.run_as_group.as_ref()),
        "config.linux.security_context.run_as_group",
    )?;
    if let Some((u, g)) = user {
        uid = Some(u);
        gid = gid.or(Some(g));
    }
    if gid.is_some() && uid.is_none() {
        return Err(Status::invalid_argument(
            "config.linux.security_context.run_as_group: set without run_as_user or \
             run_as_username",
        ));
    }
    let env = c
        .envs
        .iter()
        .enumerate()
        .map(|(i, kv)| {
            let value = String::from_utf8(kv.value.clone()).map_err(|_| {
                Status::invalid_argument(format!("config.envs[{i}].value: not UTF-8"))
            })?;
            Ok(pb::EnvVar {
                name: kv.key.clone(),
                value,
            })
        })
        .collect::<Result<Vec<_>, Status>>()?;
    if c.command.is_empty()
        && c.args.is_empty()
        && env.is_empty()
        && c.working_dir.is_empty()
        && uid.is_none()
        && gid.is_none()
        && groups.is_empty()
        && !c.stdin
        && !c.tty
    {
        return Ok(None);
    }
    let (command, args) = match c.command.split_first() {
        Some((cmd, rest)) => (cmd.clone(), rest.iter().chain(&c.args).cloned().collect()),
        None => (String::new(), c.args.clone()),
    };
    Ok(Some(pb::Executable {
        command,
        args,
        env,
        cwd: c.working_dir.clone(),
        uid,
        gid,
        groups: groups.to_vec(),
        // Kept open for Attach; on a terminal if asked.
        stdin: c.stdin,
        tty: c.tty,
    }))
}

/// The container's Linux security context, if it has one.
pub(super) fn sc_of(c: &cri::ContainerConfig) -> Option<&cri::LinuxContainerSecurityContext> {
    c.linux.as_ref().and_then(|l| l.security_context.as_ref())
}

/// The container's log file: the sandbox's `log_directory` (absolute) and
/// the container's `log_path` (relative, without `..`); none without both.
pub(super) fn log_path(
    pod: &cri::PodSandboxConfig,
    c: &cri::ContainerConfig,
) -> Result<Option<PathBuf>, Status> {
    if c.log_path.is_empty() || pod.log_directory.is_empty() {
        return Ok(None);
    }
    let dir = std::path::Path::new(&pod.log_directory);
    if !dir.is_absolute() {
        return Err(Status::invalid_argument(format!(
            "sandbox_config.log_directory: {} is not absolute",
            crate::validation::shown(&pod.log_directory)
        )));
    }
    let rel = std::path::Path::new(&c.log_path);
    if !rel
        .components()
        .all(|p| matches!(p, std::path::Component::Normal(_)))
    {
        return Err(Status::invalid_argument(format!(
            "config.log_path: {} is not a relative path without '..'",
            crate::validation::shown(&c.log_path)
        )));
    }
    Ok(Some(dir.join(rel)))
}
