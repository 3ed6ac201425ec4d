//! A microVM pod's volumes: a folder of the instance's, shared with the
//! guest by the VMM's virtio-fs device (`aurae-vmm --fs`) and mounted by
//! the guest's /init at [`GUEST_DIR`] (boot parameter `aurae.volumes`).
//! Only an instance spawned for a CRI pod has it (`InstanceSpec::volumes`):
//! a VMM with a share answers FUSE requests on its event thread, whose
//! seccomp filter then allows file system calls.
//!
//! The folder starts empty. A CRI container's host paths are bound into it
//! in the VMM's own mount namespace only ([`crate::sys::mount_inject`]),
//! one entry per volume: the VMM's file server, which serves nothing above
//! the folder, sees them; the host's own tree has only their empty mount
//! points, which go with the instance's folder. The guest binds each entry
//! into its container.

use std::path::{Path, PathBuf};

use super::backend::Backend;
use super::Instance;
use crate::error::ApiError;

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

/// Makes the folder in the instance's folder `dir`: root's only.
pub(super) fn make(dir: &Path) -> Result<PathBuf, ApiError> {
    use std::os::unix::fs::DirBuilderExt;
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
