//! The guest's file systems, and a pure cgroup v2 hierarchy with every
//! controller enabled for auraed's cells.

use anyhow::Context;
use nix::mount::{mount, MsFlags};

fn mount_fs(fstype: &str, target: &str, flags: MsFlags, data: Option<&str>) -> anyhow::Result<()> {
    std::fs::create_dir_all(target).with_context(|| format!("creating {target}"))?;
    match mount(Some(fstype), target, Some(fstype), flags, data) {
        Ok(()) => Ok(()),
        // devtmpfs may already be mounted by the kernel.
        Err(nix::errno::Errno::EBUSY) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("mounting {fstype} on {target}")),
    }
}

pub fn mount_all() -> anyhow::Result<()> {
    let secure = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs("proc", "/proc", secure, None)?;
    mount_fs("sysfs", "/sys", secure, None)?;
    mount_fs("devtmpfs", "/dev", MsFlags::MS_NOSUID, Some("mode=0755"))?;
    mount_fs(
        "devpts",
        "/dev/pts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0620,ptmxmode=0666"),
    )?;
    mount_fs(
        "tmpfs",
        "/dev/shm",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    mount_fs(
        "tmpfs",
        "/run",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )?;
    mount_fs(
        "tmpfs",
        "/tmp",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    mount_fs("cgroup2", "/sys/fs/cgroup", secure, None)?;
    let controllers = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
        .context("reading cgroup.controllers")?;
    let enable: Vec<String> = controllers
        .split_whitespace()
        .map(|c| format!("+{c}"))
        .collect();
    if !enable.is_empty() {
        std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", enable.join(" "))
            .with_context(|| format!("enabling {} in cgroup.subtree_control", enable.join(" ")))?;
    }
    Ok(())
}

/// Mounts the host's folder for a pod's volumes (virtio-fs, by its `tag`)
/// where auraed looks for them, nosuid and nodev; shared, so that a
/// container may take a volume `HostToContainer` (a slave copy), as it may
/// from a host's shared mount. (No mount of the guest's reaches the host:
/// the host's mounts reach the guest through the VMM's file server.)
pub fn volumes(tag: &str) -> anyhow::Result<()> {
    let at = auraed::instances::volumes::GUEST_DIR;
    std::fs::create_dir_all(at).with_context(|| format!("creating {at}"))?;
    mount(
        Some(tag),
        at,
        Some("virtiofs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .with_context(|| format!("mounting the virtio-fs folder {tag} on {at}"))?;
    mount(
        None::<&str>,
        at,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )
    .with_context(|| format!("making {at} a shared mount"))
}

/// Puts the root on a mount of its own. The initramfs is rootfs, the
/// initial mount, where `pivot_root` is not allowed (it has no parent), so
/// cells could not get a root of their own. A bind mount of it, moved onto
/// `/` and chrooted into, is an ordinary mount whose parent is rootfs: the
/// same files, with nothing copied (copying them to a tmpfs, the way
/// switch_root does, cost about 0.1 s of every boot and kept two copies in
/// memory). Runs before anything else is mounted.
pub fn root_on_its_own_mount() -> anyhow::Result<()> {
    let new = std::path::Path::new("/.aurae-root");
    std::fs::create_dir_all(new)?;
    mount(Some("/"), new, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .context("binding the root")?;
    nix::unistd::chdir(new)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .context("moving the bound root onto /")?;
    nix::unistd::chroot(".").context("chroot into the bound root")?;
    nix::unistd::chdir("/")?;
    // The mount point, seen through the bind; no longer a mount point.
    std::fs::remove_dir(new).context("removing the bind's mount point")?;
    Ok(())
}
