//! Binding a host folder, read-only, into the mount namespace of a cell
//! that is already running (a pre-started instance that is given its pod's
//! images when it is claimed).
//!
//! The folder is cloned as a detached mount (`open_tree`, in auraed's own
//! namespace) and made read-only, nosuid and nodev, submounts included,
//! while still detached (`mount_setattr`); then a short-lived thread that
//! has joined the cell's mount namespace moves it into place
//! (`move_mount`). It is never writable there.
//! Paths inside the cell resolve against the cell's own root: nothing it
//! put there (a symlink) can reach the host's tree, which is not in its
//! namespace.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sched::{setns, unshare, CloneFlags};

use super::init_process::{MountAttr, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY};

/// `open_tree` flags (linux/mount.h), which libc does not define.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
/// `move_mount` flag: the source is the fd itself.
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("a path holds a NUL byte: {0:?}")]
    Nul(PathBuf),
    #[error("open_tree of {path}")]
    OpenTree {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the thread that enters the cell's mount namespace")]
    Thread(#[source] std::io::Error),
    #[error("that thread panicked")]
    Panicked,
    #[error("unshare(CLONE_FS) before entering the cell's mount namespace")]
    Unshare(#[source] nix::Error),
    #[error("setns into the cell's mount namespace")]
    Setns(#[source] nix::Error),
    #[error("making the mount point {path} in the cell")]
    MountPoint {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("move_mount to {path} in the cell")]
    MoveMount {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("umount2 of {path} in the cell")]
    Unmount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("{path} is on {mount}, a {has} mount of the host: {wanted}")]
    Propagation {
        path: PathBuf,
        mount: PathBuf,
        has: &'static str,
        wanted: &'static str,
    },
    #[error("reading the host's mounts")]
    Mountinfo(#[source] std::io::Error),
    #[error("{0} does not exist in the host's mount namespace")]
    Missing(PathBuf),
    #[error("setns into the host's mount namespace")]
    HostNs(#[source] nix::Error),
    #[error("mount_setattr (slave) of the copy of {path}")]
    Slave {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mount_setattr (read-only, nosuid, nodev) of the copy of {path}")]
    ReadOnly {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn c_path(path: &Path) -> Result<CString, InjectError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| InjectError::Nul(path.to_path_buf()))
}

/// A detached, recursive copy of the mount tree at `source`: nosuid and
/// nodev, and read-only unless `writable`.
pub(super) fn clone_tree(source: &Path, writable: bool) -> Result<OwnedFd, InjectError> {
    let c = c_path(source)?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call;
    // open_tree reads it and returns a new fd or -1, nothing else.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            OPEN_TREE_CLONE | AT_RECURSIVE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(InjectError::OpenTree {
            path: source.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: open_tree returned a new fd that nothing else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let attr = MountAttr {
        attr_set: if writable { 0 } else { MOUNT_ATTR_RDONLY }
            | MOUNT_ATTR_NOSUID
            | MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    set_tree_attr(&tree, &attr).map_err(|e| InjectError::ReadOnly {
        path: source.to_path_buf(),
        source: e,
    })?;
    Ok(tree)
}

/// `mount_setattr` of a detached tree and every mount in it.
pub(super) fn set_tree_attr(tree: &OwnedFd, attr: &MountAttr) -> std::io::Result<()> {
    // SAFETY: `tree` is a mount fd the caller owns; the empty path and
    // `attr` are valid for the call, and the size passed is `attr`'s.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
            attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// In the calling thread (which has joined the cell's mount namespace):
/// makes `target` (a file when `file`, else a folder) unless it is one
/// already, and moves `tree` onto it. Anything else in its place (a
/// symbolic link) is refused, not followed.
fn attach(tree: &OwnedFd, target: &Path, file: bool) -> Result<(), InjectError> {
    let point = |source| InjectError::MountPoint {
        path: target.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(target) {
        Ok(m) if is_point_of(&m, file) => {}
        Ok(_) => {
            let kind = if file { "file" } else { "folder" };
            return Err(point(std::io::Error::other(format!(
                "something else than a {kind} is in its place"
            ))));
        }
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(point(e)),
        Err(_) if file => {
            if let Some(dir) = target.parent() {
                std::fs::create_dir_all(dir).map_err(point)?;
            }
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(target)
                .map_err(point)?;
        }
        Err(_) => std::fs::create_dir_all(target).map_err(point)?,
    }
    let c_target = c_path(target)?;
    // SAFETY: `tree` is a detached mount fd we own, the paths are valid
    // NUL-terminated strings that outlive the call; move_mount only reads
    // them.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            c_target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(InjectError::MoveMount {
            path: target.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Binds each `(host, inside)` pair read-only into the mount namespace of
/// the process `ns` (a pidfd), creating the mount points there. A failure
/// part-way leaves the earlier binds in place: the caller discards the
/// cell.
pub fn bind_read_only(ns: BorrowedFd<'_>, binds: &[(PathBuf, PathBuf)]) -> Result<(), InjectError> {
    let binds: Vec<Inject> = binds
        .iter()
        .map(|(host, inside)| Inject {
            host: host.clone(),
            inside: inside.clone(),
            writable: false,
            propagation: crate::cells::Propagation::Private,
        })
        .collect();
    bind(ns, &binds)
}

/// Whether `m` (not followed) is a mount point for a file (`file`) or a
/// folder: a link or anything else in its place is not.
pub fn is_point_of(m: &std::fs::Metadata, file: bool) -> bool {
    m.is_file() == file && m.is_dir() != file
}

/// Removes a mount point (a link is removed, not followed); one that is
/// gone already is fine, and a failure is logged.
pub fn remove_point(at: &Path) {
    let removed = std::fs::remove_dir(at).or_else(|_| std::fs::remove_file(at));
    if let Err(e) = removed {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("removing the mount point {}: {e}", at.display());
        }
    }
}

/// A host file or folder to bind into another mount namespace.
#[derive(Debug, Clone)]
pub struct Inject {
    pub host: PathBuf,
    pub inside: PathBuf,
    pub writable: bool,
    /// Anything but private is copied in the host's mount namespace (see
    /// [`super::mount_propagation`]).
    pub propagation: crate::cells::Propagation,
}

impl Inject {
    /// Whether its mount point is a file (the host's path, followed, is
    /// not a folder).
    pub fn is_file(&self) -> bool {
        std::fs::metadata(&self.host).is_ok_and(|m| !m.is_dir())
    }
}

/// Binds each of `binds` into the mount namespace of the process `ns` (a
/// pidfd), nosuid and nodev, read-only unless asked otherwise, creating
/// the mount points there (a file for a file). A failure part-way leaves
/// the earlier binds in place: the caller discards the namespace's owner or
/// unbinds them.
pub fn bind(ns: BorrowedFd<'_>, binds: &[Inject]) -> Result<(), InjectError> {
    let trees = binds
        .iter()
        .map(|b| {
            let file = b.is_file();
            let tree = match b.propagation {
                crate::cells::Propagation::Private => clone_tree(&b.host, b.writable)?,
                p => super::mount_propagation::clone_in_host(&b.host, b.writable, p)?,
            };
            Ok((tree, b.inside.clone(), file))
        })
        .collect::<Result<Vec<_>, InjectError>>()?;
    let ns = ns.try_clone_to_owned().map_err(InjectError::Thread)?;
    let thread = std::thread::Builder::new()
        .name("mount-inject".into())
        .spawn(move || {
            // A thread that shares its fs context can't change mount
            // namespace; this one leaves it and exits afterwards.
            unshare(CloneFlags::CLONE_FS).map_err(InjectError::Unshare)?;
            setns(&ns, CloneFlags::CLONE_NEWNS).map_err(InjectError::Setns)?;
            for (tree, inside, file) in &trees {
                attach(tree, inside, *file)?;
            }
            Ok(())
        })
        .map_err(InjectError::Thread)?;
    thread.join().map_err(|_| InjectError::Panicked)?
}

/// Undoes [`bind`]: detaches each of `targets` in the mount namespace of
/// the process `ns` and removes its mount point. A target that isn't
/// mounted (a bind that never happened) is only removed.
pub fn unbind(ns: BorrowedFd<'_>, targets: &[PathBuf]) -> Result<(), InjectError> {
    detach(ns, targets, true)
}

/// [`unbind`], leaving the mount points (which their maker removes).
pub fn unmount(ns: BorrowedFd<'_>, targets: &[PathBuf]) -> Result<(), InjectError> {
    detach(ns, targets, false)
}

fn detach(ns: BorrowedFd<'_>, targets: &[PathBuf], remove: bool) -> Result<(), InjectError> {
    let targets = targets.to_vec();
    let ns = ns.try_clone_to_owned().map_err(InjectError::Thread)?;
    let thread = std::thread::Builder::new()
        .name("mount-unbind".into())
        .spawn(move || {
            unshare(CloneFlags::CLONE_FS).map_err(InjectError::Unshare)?;
            setns(&ns, CloneFlags::CLONE_NEWNS).map_err(InjectError::Setns)?;
            for t in &targets {
                // A symbolic link in its place is not followed.
                let flags =
                    nix::mount::MntFlags::MNT_DETACH | nix::mount::MntFlags::UMOUNT_NOFOLLOW;
                match nix::mount::umount2(t.as_path(), flags) {
                    Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
                    Err(source) => {
                        return Err(InjectError::Unmount {
                            path: t.clone(),
                            source,
                        })
                    }
                }
                if remove {
                    remove_point(t);
                }
            }
            Ok(())
        })
        .map_err(InjectError::Thread)?;
    thread.join().map_err(|_| InjectError::Panicked)?
}
