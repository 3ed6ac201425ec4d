//! The minimal `/dev` of a cell: a few character devices, the stdio links
//! and the mount points for `pts` and `shm`.
//!
//! An image's unpacked root filesystem gets it once, in the image cache
//! (whatever the image had at `/dev` is replaced), so a cell started from
//! it only mounts `/dev/shm`. Cells over a root filesystem that is not a
//! cached image get the same set on a tmpfs, made by their init.

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

/// (name, major, minor) of the character devices, all mode 0666.
pub const DEVICES: [(&str, u32, u32); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// (name, target) of the symbolic links.
pub const LINKS: [(&str, &str); 4] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];

/// Directories inside `/dev`.
pub const DIRS: [&str; 2] = ["pts", "shm"];

/// Replaces `<rootfs>/dev` with the minimal set. The old entry is removed
/// without following a symbolic link there.
pub fn populate(rootfs: &Path) -> io::Result<()> {
    let dev = rootfs.join("dev");
    match std::fs::symlink_metadata(&dev) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(&dev)?,
        Ok(_) => std::fs::remove_file(&dev)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::DirBuilder::new().mode(0o755).create(&dev)?;
    for (name, major, minor) in DEVICES {
        nix::sys::stat::mknod(
            &dev.join(name),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(major.into(), minor.into()),
        )?;
        // mknod applies the umask.
        std::fs::set_permissions(
            dev.join(name),
            std::os::unix::fs::PermissionsExt::from_mode(0o666),
        )?;
    }
    for (name, target) in LINKS {
        std::os::unix::fs::symlink(target, dev.join(name))?;
    }
    for dir in DIRS {
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(dev.join(dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    #[test]
    fn replaces_whatever_the_image_had() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: mknod needs root");
            return;
        }
        let root = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("keep"), b"x").expect("write");
        // A hostile image: /dev is a link out of the root filesystem.
        std::os::unix::fs::symlink(outside.path(), root.path().join("dev")).expect("link");
        populate(root.path()).expect("populate");
        assert!(
            outside.path().join("keep").exists(),
            "the link was not followed"
        );
        let dev = root.path().join("dev");
        let null = std::fs::symlink_metadata(dev.join("null")).expect("null");
        assert!(null.file_type().is_char_device());
        assert_eq!(null.permissions().mode() & 0o777, 0o666);
        assert_eq!(
            std::fs::read_link(dev.join("stdout")).expect("link"),
            Path::new("/proc/self/fd/1")
        );
        assert!(dev.join("shm").is_dir() && dev.join("pts").is_dir());
        // Again, over the previous result.
        std::fs::write(dev.join("bogus"), b"x").expect("write");
        populate(root.path()).expect("again");
        assert!(!dev.join("bogus").exists());
    }
}
