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

/// Copies the entries of `src` into `dst` (except `skip`), keeping modes,
/// symlinks and device nodes.
fn copy_tree(
    src: &std::path::Path,
    dst: &std::path::Path,
    skip: &std::path::Path,
) -> anyhow::Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    for entry in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let entry = entry?;
        let from = entry.path();
        if from == skip {
            continue;
        }
        let to = dst.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&from)?;
        let ft = meta.file_type();
        if ft.is_dir() {
            std::fs::create_dir(&to).with_context(|| format!("creating {}", to.display()))?;
            copy_tree(&from, &to, skip)?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
        } else if ft.is_char_device() || ft.is_block_device() {
            let kind = if ft.is_char_device() {
                nix::sys::stat::SFlag::S_IFCHR
            } else {
                nix::sys::stat::SFlag::S_IFBLK
            };
            nix::sys::stat::mknod(
                &to,
                kind,
                nix::sys::stat::Mode::from_bits_truncate(meta.mode() & 0o7777),
                meta.rdev(),
            )
            .with_context(|| format!("creating {}", to.display()))?;
        } else if ft.is_file() {
            std::fs::copy(&from, &to).with_context(|| format!("copying {}", from.display()))?;
        }
    }
    Ok(())
}

/// Moves the root from the initramfs (rootfs, where `pivot_root` is not
/// allowed, so cells could not get a root of their own) onto a tmpfs, the
/// way switch_root does: copy, move the mount onto `/`, chroot into it.
/// Runs before anything else is mounted.
pub fn switch_root_to_tmpfs() -> anyhow::Result<()> {
    let new = std::path::Path::new("/.aurae-root");
    std::fs::create_dir_all(new)?;
    mount(
        Some("tmpfs"),
        new,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .context("mounting the new root")?;
    copy_tree(std::path::Path::new("/"), new, new)?;
    nix::unistd::chdir(new)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .context("moving the new root onto /")?;
    nix::unistd::chroot(".").context("chroot into the new root")?;
    nix::unistd::chdir("/")?;
    Ok(())
}
