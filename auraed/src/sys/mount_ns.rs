//! auraed's own mount namespace.
//!
//! Every cell starts with a copy of its creator's mount namespace. Copying
//! the host's initial namespace costs the kernel two to three times as much
//! as copying a namespace of auraed's own, so auraed moves into one as it
//! starts. It is a slave of the host's: mounts made on the host later still
//! appear in auraed (an image on a disk mounted afterwards is reachable),
//! and nothing auraed mounts reaches the host.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};

static OWN: AtomicBool = AtomicBool::new(false);

/// The mount namespace auraed started in (the host's), once it has left it.
static ORIGINAL: std::sync::OnceLock<std::os::fd::OwnedFd> = std::sync::OnceLock::new();

/// Whether binds that propagate are copied in this auraed's own namespace
/// (an instance's: its parent puts a pod's volumes there) rather than in
/// the one it started in (the host's).
static FROM_OWN: AtomicBool = AtomicBool::new(false);

/// Binds that propagate are copied in this auraed's own namespace from now
/// on (an instance's auraed).
pub fn propagate_from_own() {
    FROM_OWN.store(true, Ordering::SeqCst);
}

/// Where a bind that propagates is copied from: the mount namespace auraed
/// started in (the host's), if it moved into its own and is not an
/// instance; `None`: its own.
pub fn original() -> Option<std::os::fd::BorrowedFd<'static>> {
    use std::os::fd::AsFd;
    if FROM_OWN.load(Ordering::SeqCst) {
        return None;
    }
    ORIGINAL.get().map(|fd| fd.as_fd())
}

/// Moves the calling process into a new mount namespace that receives the
/// host's mount events. It must run before any thread is started
/// (`unshare(CLONE_NEWNS)` refuses a process that shares its fs context).
pub fn enter_own() -> nix::Result<()> {
    let original: std::os::fd::OwnedFd = std::fs::File::open("/proc/self/ns/mnt")
        .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?
        .into();
    unshare(CloneFlags::CLONE_NEWNS)?;
    let _ = ORIGINAL.set(original);
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )?;
    OWN.store(true, Ordering::SeqCst);
    Ok(())
}

/// Whether this process runs in a mount namespace of its own, where its
/// mounts stay invisible to the host.
pub fn is_own() -> bool {
    OWN.load(Ordering::SeqCst)
}

/// Mounts a tmpfs (mode 0700) at `dir`, in auraed's own mount namespace
/// only: it is gone, with everything in it, when auraed and its cells are.
pub fn mount_private_tmpfs(dir: &Path) -> nix::Result<()> {
    if !is_own() {
        return Err(nix::errno::Errno::EPERM);
    }
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID,
        Some("mode=0700"),
    )
}
