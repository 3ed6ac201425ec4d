//! A `RunCell` request's security options, validated against each other
//! and the rest of the request.

use std::path::PathBuf;

use aurae_proto::runtime as pb;

use crate::cells::{HostShare, Security};
use crate::error::ApiError;
use crate::validation as v;

/// The host namespaces a request shares, by field name.
fn shared_namespaces(share: &HostShare) -> Vec<&'static str> {
    [
        ("mount", share.mount),
        ("pid", share.pid),
        ("net", share.net),
        ("ipc", share.ipc),
        ("uts", share.uts),
        ("cgroup", share.cgroup),
    ]
    .into_iter()
    .filter(|(_, shared)| *shared)
    .map(|(name, _)| name)
    .collect()
}

/// Validates the security options against each other and the rest of the
/// request: a jailed cell shares no host namespace and is not privileged,
/// writable paths are for a jailed cell over the host's root, devices are
/// host device nodes for a cell with a /dev of its own.
pub(super) fn security(
    r: &pb::RunCellRequest,
    share: &HostShare,
    has_image: bool,
) -> Result<Security, ApiError> {
    if r.jailed {
        if let Some(ns) = shared_namespaces(share).first() {
            return Err(ApiError::invalid(
                format!("share_host.{ns}"),
                format!("a jailed cell can't share the host's {ns} namespace"),
            ));
        }
        if r.privileged {
            return Err(ApiError::invalid(
                "privileged",
                "a jailed cell can't be privileged",
            ));
        }
    }
    v::list_len("writable_paths", r.writable_paths.len())?;
    let mut writable_paths = Vec::new();
    for (i, p) in r.writable_paths.iter().enumerate() {
        let field = format!("writable_paths[{i}]");
        if !r.jailed || has_image {
            return Err(ApiError::invalid(
                field,
                "only a jailed cell without an image has a read-only root to make paths \
                 writable in",
            ));
        }
        let path = host_path(&field, p)?;
        if let Some(own) = ["/proc", "/sys", "/dev", "/tmp", "/run"]
            .iter()
            .find(|own| path.starts_with(own))
        {
            return Err(ApiError::invalid(
                field,
                format!("{own} of a jailed cell is its own, not the host's"),
            ));
        }
        writable_paths.push(path);
    }
    v::list_len("devices", r.devices.len())?;
    let mut devices = Vec::new();
    for (i, p) in r.devices.iter().enumerate() {
        let field = format!("devices[{i}]");
        if !(r.jailed || has_image) {
            return Err(ApiError::invalid(
                field,
                "only a cell with a root of its own (an image, or jailed) has a minimal /dev \
                 to add devices to",
            ));
        }
        devices.push(device_path(&field, p)?);
    }
    if r.delegate_cgroup && share.cgroup {
        return Err(ApiError::invalid(
            "delegate_cgroup",
            "needs the cell's own cgroup namespace (share_host.cgroup is set)",
        ));
    }
    if r.net_sysctls && share.net {
        return Err(ApiError::invalid(
            "net_sysctls",
            "needs the cell's own network namespace (share_host.net is set)",
        ));
    }
    if (r.delegate_cgroup || r.net_sysctls) && share.mount {
        return Err(ApiError::invalid(
            if r.delegate_cgroup {
                "delegate_cgroup"
            } else {
                "net_sysctls"
            },
            "needs the cell's own mount namespace (share_host.mount is set)",
        ));
    }
    Ok(Security {
        privileged: r.privileged,
        writable_paths,
        devices,
        delegate_cgroup: r.delegate_cgroup,
        net_sysctls: r.net_sysctls,
        all_caps: false,
        read_only_binds: Vec::new(),
        caps: crate::cells::caps::parse(&r.cap_add, &r.cap_drop, &r.cap_ambient, r.jailed)?,
        no_new_privs: r.no_new_privs,
        mounts: super::cell_mounts::binds(&r.mounts, has_image)?,
        seccomp: crate::seccomp::Seccomp::from_request(r.seccomp.as_ref(), "seccomp")?,
        read_only_root: match r.read_only_root && !has_image {
            true => {
                return Err(ApiError::invalid(
                    "read_only_root",
                    "only a cell with an image",
                ))
            }
            false => r.read_only_root,
        },
        masked_paths: super::cell_mounts::inside_paths(
            "masked_paths",
            &r.masked_paths,
            !share.mount,
        )?,
        readonly_paths: super::cell_mounts::inside_paths(
            "readonly_paths",
            &r.readonly_paths,
            !share.mount,
        )?,
    })
}

/// An existing absolute host path, without `..` or symbolic links on the
/// way (so that what is made writable is what the request names).
fn host_path(field: &str, p: &str) -> Result<PathBuf, ApiError> {
    v::absolute_path(field, p)?;
    let path = PathBuf::from(p);
    if path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(ApiError::invalid(field, "must not contain '..'"));
    }
    let real = std::fs::canonicalize(&path)
        .map_err(|e| ApiError::invalid(field, format!("{}: {e}", v::shown(p))))?;
    if real != path {
        return Err(ApiError::invalid(
            field,
            format!(
                "{} leads through a symbolic link to {}; name the real path",
                v::shown(p),
                v::shown(&real.to_string_lossy())
            ),
        ));
    }
    if real == std::path::Path::new("/") {
        return Err(ApiError::invalid(field, "the whole root can't be writable"));
    }
    Ok(real)
}

/// A host character or block device under /dev.
fn device_path(field: &str, p: &str) -> Result<PathBuf, ApiError> {
    use std::os::unix::fs::FileTypeExt;
    let path = host_path(field, p)?;
    if !path.starts_with("/dev/") {
        return Err(ApiError::invalid(field, "must be a device under /dev"));
    }
    let meta = std::fs::metadata(&path)
        .map_err(|e| ApiError::invalid(field, format!("{}: {e}", v::shown(p))))?;
    let ft = meta.file_type();
    if !(ft.is_char_device() || ft.is_block_device()) {
        return Err(ApiError::invalid(
            field,
            format!("{} is not a device node", v::shown(p)),
        ));
    }
    Ok(path)
}
