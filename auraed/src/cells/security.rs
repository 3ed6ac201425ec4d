//! What a cell may reach beyond the container defaults, as validated from
//! its request.

use std::path::PathBuf;

use super::caps;

/// What a cell may reach beyond the container defaults (see
/// [`init::Plan`]): all validated against the rest of the request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Security {
    /// Every capability, /proc and /sys writable, nothing masked.
    pub privileged: bool,
    /// Host paths that stay writable in a jailed cell's read-only host root.
    pub writable_paths: Vec<PathBuf>,
    /// Host device nodes added to the cell's minimal /dev.
    pub devices: Vec<PathBuf>,
    /// The cell's cgroup subtree is writable inside it.
    pub delegate_cgroup: bool,
    /// The sysctls of the cell's own network namespace are writable.
    pub net_sysctls: bool,
    /// Every capability, with the mounts still sealed: a spawned auraed's
    /// cell (set by auraed, never by a request).
    pub all_caps: bool,
    /// Host folders or files bound read-only into the cell: (host path,
    /// path inside).
    pub read_only_binds: Vec<(PathBuf, PathBuf)>,
    /// Capabilities added to and dropped from the default set.
    pub caps: caps::CapChange,
    /// Every process runs with no_new_privs.
    pub no_new_privs: bool,
    /// Files or folders bound into a cell with a root of its own.
    pub mounts: Vec<Bind>,
    /// The seccomp profile of its processes.
    pub seccomp: crate::seccomp::Seccomp,
    /// The image's root is mounted read-only.
    pub read_only_root: bool,
    /// Paths inside the cell hidden (a file by /dev/null, a folder by an
    /// empty read-only tmpfs), and made read-only.
    pub masked_paths: Vec<PathBuf>,
    pub readonly_paths: Vec<PathBuf>,
}

/// A file or folder of auraed's mount namespace bound into a cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub host: PathBuf,
    /// Absolute, inside the cell.
    pub inside: PathBuf,
    pub read_only: bool,
    pub propagation: Propagation,
}

/// Whether mounts made later under a bind's source or inside it cross to
/// the other side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Propagation {
    /// Neither way: the bind is a private copy.
    #[default]
    Private,
    /// From the source into the cell (the bind is a slave of the source's
    /// peer group).
    Slave,
    /// Both ways (the bind is a peer of the source's mount).
    Shared,
}

/// At most this many binds of a cell may propagate (the init holds a
/// detached copy of each while it sets up).
pub const MAX_PROPAGATING: usize = 16;

/// A detached copy of each of `mounts` that propagates (see
/// `sys::mount_propagation`), in order; a source whose mount can't
/// propagate as asked is refused, naming the field.
pub fn trees(mounts: &[Bind]) -> Result<Vec<std::os::fd::OwnedFd>, crate::error::ApiError> {
    use crate::sys::mount_inject::InjectError;
    mounts
        .iter()
        .enumerate()
        .filter(|(_, b)| b.propagation != Propagation::Private)
        .map(|(i, b)| {
            crate::sys::mount_propagation::clone_in_host(&b.host, !b.read_only, b.propagation)
                .map_err(|e| {
                    let field = format!("mounts[{i}].propagation");
                    match e {
                        InjectError::Propagation { .. } | InjectError::Missing(_) => {
                            crate::error::ApiError::invalid(field, e.to_string())
                        }
                        e => crate::error::ApiError::Mount {
                            what: field,
                            source: e,
                        },
                    }
                })
        })
        .collect()
}

/// `mounts` with each destination resolved inside the image's root `lower`
/// as the kernel would after a chroot: a symbolic link in the image (`/x ->
/// /etc`) leads inside the root, never to the host's. The cell's init then
/// makes and mounts on paths that hold no link.
pub fn confine_mounts(
    mounts: &[Bind],
    lower: &std::path::Path,
) -> Result<Vec<Bind>, crate::error::ApiError> {
    mounts
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let rel = b.inside.strip_prefix("/").unwrap_or(&b.inside);
            let resolved = crate::oci::safe_path::resolve(lower, rel, true).map_err(|e| {
                crate::error::ApiError::invalid(
                    format!("mounts[{i}].destination"),
                    format!("resolving it in the image: {e}"),
                )
            })?;
            let inside = resolved.strip_prefix(lower).map_err(|_| {
                crate::error::ApiError::invalid(
                    format!("mounts[{i}].destination"),
                    "resolves outside the image's root",
                )
            })?;
            if inside.as_os_str().is_empty() {
                return Err(crate::error::ApiError::invalid(
                    format!("mounts[{i}].destination"),
                    "resolves to the image's root",
                ));
            }
            Ok(Bind {
                inside: PathBuf::from("/").join(inside),
                ..b.clone()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destination_through_an_image_symlink_stays_in_the_image() {
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", root.path().join("x")).unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        let b = Bind {
            host: PathBuf::from("/tmp"),
            inside: PathBuf::from("/x/nologin"),
            read_only: true,
            propagation: Propagation::Private,
        };
        let out = confine_mounts(&[b], root.path()).unwrap();
        assert_eq!(out[0].inside, PathBuf::from("/etc/nologin"));
        std::os::unix::fs::symlink("/", root.path().join("top")).unwrap();
        let b = Bind {
            host: PathBuf::from("/tmp"),
            inside: PathBuf::from("/top"),
            read_only: true,
            propagation: Propagation::Private,
        };
        assert!(confine_mounts(&[b], root.path()).is_err());
    }
}
