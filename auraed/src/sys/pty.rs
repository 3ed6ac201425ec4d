//! Pseudo-terminals: a pair opened from the devpts instance under a given
//! root (a cell's own, so that the process sees its terminal under its own
//! `/dev/pts`), and the window size.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Opens a new terminal from the devpts instance at `dev/pts` under
/// `root` (a cell's root, which its processes may change: the path is
/// resolved inside `root` only, with no magic links, and what it leads to
/// must be a devpts `ptmx`): its master (non-blocking) and its slave, both
/// close-on-exec and neither a controlling terminal of auraed.
pub fn open_pair(root: &Path) -> io::Result<(OwnedFd, OwnedFd)> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
    let dir: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(root)?
        .into();
    let how = OpenHow::new()
        .flags(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let master = nix::fcntl::openat2(&dir, "dev/pts/ptmx", how)?;
    let fs = nix::sys::statfs::fstatfs(&master)?;
    let st = nix::sys::stat::fstat(&master)?;
    let is_ptmx = fs.filesystem_type() == nix::sys::statfs::DEVPTS_SUPER_MAGIC
        && st.st_mode & libc::S_IFMT == libc::S_IFCHR
        && (libc::major(st.st_rdev), libc::minor(st.st_rdev)) == (5, 2);
    if !is_ptmx {
        return Err(io::Error::other(format!(
            "{}/dev/pts/ptmx is not a devpts ptmx",
            root.display()
        )));
    }
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int through the pointer, which is valid
    // for the call; the fd is open.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: TIOCGPTPEER takes open flags by value and returns a new fd
    // (or -1); it touches no memory of ours.
    let slave = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if slave < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd the kernel just returned, owned by nothing else.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    Ok((master, slave))
}

/// Sets the terminal's window size (the foreground process group gets
/// SIGWINCH).
pub fn set_size(master: BorrowedFd<'_>, cols: u16, rows: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize through the pointer, valid for
    // the call.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_pair_is_a_terminal_whose_size_can_be_set() {
        let (master, slave) = open_pair(Path::new("/")).expect("a pty");
        assert!(nix::unistd::isatty(slave.as_fd()).expect("isatty"));
        set_size(master.as_fd(), 100, 40).expect("resize");
        let mut size = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one winsize through the pointer.
        assert_eq!(
            unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCGWINSZ, &mut size) },
            0
        );
        assert_eq!((size.ws_col, size.ws_row), (100, 40));
        // What the slave writes, the master reads.
        nix::unistd::write(&slave, b"hi\n").expect("write");
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut buf = [0u8; 16];
        let n = nix::unistd::read(&master, &mut buf).expect("read");
        assert_eq!(&buf[..n], b"hi\r\n");
    }
}

#[cfg(test)]
mod planted {
    use super::*;

    /// A root whose `dev/pts/ptmx` leads elsewhere (as a cell's process
    /// could arrange): refused, and nothing outside the root is opened.
    #[test]
    fn a_ptmx_that_is_not_a_devpts_one_is_refused() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("dev/pts")).expect("mkdir");
        std::os::unix::fs::symlink("/dev/null", root.path().join("dev/pts/ptmx")).expect("symlink");
        // Resolved inside the root, the link leads to its own dev/null,
        // which is not there.
        assert!(open_pair(root.path()).is_err());
        std::fs::write(root.path().join("dev/null"), b"").expect("file");
        let e = open_pair(root.path()).expect_err("a plain file is refused");
        assert!(e.to_string().contains("not a devpts ptmx"), "{e}");
    }
}
