//! A microVM pod's volumes: a folder of the instance's, shared with the
//! guest by the VMM's virtio-fs device (`aurae-vmm --fs`) and mounted by
//! the guest's /init at [`GUEST_DIR`] (boot parameter `aurae.volumes`).
//! Only an instance spawned for a CRI pod has it (`InstanceSpec::volumes`):
//! a VMM with a share answers FUSE requests on its event thread, whose
//! seccomp filter then allows file system calls.
//!
//! The folder starts empty, and the VMM sees it read-only (a read-only bind
//! of it onto itself in the VMM's mount namespace, made before the VMM
//! starts): the guest can't put anything in it. A CRI container's host
//! paths are bound into it in the VMM's own mount namespace only
//! ([`crate::sys::mount_inject`]), one entry per volume, writable unless
//! asked otherwise: the VMM's file server, which serves nothing above the
//! folder, sees them; the host's own tree has only their empty mount points,
//! which this auraed makes and removes there (never following a link), and
//! which go with the instance's folder. The guest binds each entry into its
//! container.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use super::backend::Backend;
use super::Instance;
use crate::cells::Cell;
use crate::error::ApiError;
use crate::sys::mount_inject;

/// The virtio-fs tag of the folder.
pub const TAG: &str = "aurae-volumes";
/// Where the guest mounts it.
pub const GUEST_DIR: &str = "/run/aurae/volumes";
/// The folder, in the instance's own.
const FOLDER: &str = "volumes";

/// The boot parameter that has the guest mount the folder.
pub fn boot_param() -> String {
    format!(" aurae.volumes={TAG}")
}

/// The folder of an instance whose spec asks for one (`wanted`), made in
/// its lasting folder `dir`.
pub(super) async fn prepare(wanted: bool, dir: PathBuf) -> Result<Option<PathBuf>, ApiError> {
    if !wanted {
        return Ok(None);
    }
    crate::blocking::run("making the volumes folder", move || make(&dir))
        .await?
        .map(Some)
}

/// Makes the folder read-only in the mount namespace of the VMM's `cell`,
/// before the VMM starts in it.
pub(super) async fn seal(cell: &Cell, folder: Option<&Path>) -> Result<(), ApiError> {
    let Some(folder) = folder.map(Path::to_path_buf) else {
        return Ok(());
    };
    let (pidfd, _) = cell.namespaces();
    let ns = pidfd
        .try_clone_to_owned()
        .map_err(|e| ApiError::io("a pidfd of the VMM's cell", e))?;
    crate::blocking::run("sealing the volumes folder", move || {
        use std::os::fd::AsFd;
        mount_inject::bind_read_only(ns.as_fd(), &[(folder.clone(), folder)])
    })
    .await?
    .map_err(|source| ApiError::Mount {
        what: "binding the volumes folder read-only for the VMM".into(),
        source,
    })
}

/// Makes each mount point (a file for a file, else a folder) in this
/// auraed's own namespace, where the folder is writable; one there already
/// (a retried bind) is taken if it is what it should be.
pub fn mount_points(points: &[(PathBuf, bool)]) -> Result<(), std::io::Error> {
    for (at, file) in points {
        let made = match file {
            true => std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW)
                .mode(0o600)
                .open(at)
                .map(drop),
            false => std::fs::DirBuilder::new().mode(0o700).create(at),
        };
        match made {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if !mount_inject::is_point_of(&std::fs::symlink_metadata(at)?, *file) {
                    return Err(std::io::Error::other(format!(
                        "{} is in the way of a mount point",
                        at.display()
                    )));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Makes the folder in the instance's folder `dir`: root's only.
fn make(dir: &Path) -> Result<PathBuf, ApiError> {
    let at = dir.join(FOLDER);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&at)
        .map_err(|e| ApiError::io(format!("making {}", at.display()), e))?;
    Ok(at)
}

impl Instance {
    /// The host's path of a microVM's volumes folder, as its VMM sees it,
    /// if it was spawned with one (`InstanceSpec::volumes`; one taken back
    /// after a restart has its folder still).
    pub fn volumes_dir(&self) -> Option<PathBuf> {
        match self.choice.backend {
            Backend::MicroVm => self
                .dir
                .as_ref()
                .map(|d| d.join(FOLDER))
                .filter(|f| f.is_dir()),
            Backend::Cell => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_made_once_and_nothing_else_is_taken_for_one() {
        let t = tempfile::tempdir().expect("tempdir");
        let (dir, file) = (t.path().join("c-0"), t.path().join("c-1"));
        let points = [(dir.clone(), false), (file.clone(), true)];
        mount_points(&points).expect("made");
        assert!(dir.is_dir() && file.is_file());
        // A retried bind takes them as they are.
        mount_points(&points).expect("taken again");
        // A link in a mount point's place is refused, not followed.
        let target = t.path().join("elsewhere");
        let link = t.path().join("c-2");
        std::os::unix::fs::symlink(&target, &link).expect("link");
        assert!(mount_points(&[(link.clone(), true)]).is_err());
        assert!(!target.exists(), "the link was followed");
        std::fs::create_dir(&target).expect("target");
        assert!(mount_points(&[(link.clone(), false)]).is_err());
        for p in [&dir, &file, &link] {
            mount_inject::remove_point(p);
            assert!(std::fs::symlink_metadata(p).is_err(), "{}", p.display());
        }
        assert!(target.is_dir(), "removing a link leaves its target");
    }
}
