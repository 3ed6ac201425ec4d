//! Namespaces made ahead of time. Creating a network namespace is the
//! slowest part of starting a cell, and an IPC namespace the next slowest
//! (its mqueue instance), so a pool keeps a few pairs ready (`lo` up) and a
//! cell joins one pair instead of creating its own.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// Sets `lo` up in the calling thread's network namespace.
fn lo_up() -> io::Result<()> {
    let sock =
        std::net::UdpSocket::bind("0.0.0.0:0").or_else(|_| std::net::UdpSocket::bind("[::]:0"));
    // A fresh namespace has lo down, so binding may fail; any AF_INET
    // datagram socket will do for the ioctl.
    let fd: OwnedFd = match sock {
        Ok(s) => s.into(),
        Err(_) => nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Inet,
            nix::sys::socket::SockType::Datagram,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            None,
        )?,
    };
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS and SIOCSIFFLAGS read and write the ifreq we own.
    unsafe {
        if libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) != 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS, &req) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A fresh network namespace (`lo` up) and IPC namespace, held by fds.
#[derive(Debug)]
pub struct SpareNamespaces {
    pub net: OwnedFd,
    pub ipc: OwnedFd,
}

/// Creates a pair of spare namespaces. A short-lived thread does the work:
/// unshare and setns act on the calling thread only, so the rest of the
/// process is untouched.
pub fn create() -> io::Result<SpareNamespaces> {
    std::thread::Builder::new()
        .name("ns-pool".into())
        .spawn(|| -> io::Result<SpareNamespaces> {
            nix::sched::unshare(
                nix::sched::CloneFlags::CLONE_NEWNET | nix::sched::CloneFlags::CLONE_NEWIPC,
            )?;
            lo_up()?;
            Ok(SpareNamespaces {
                net: std::fs::File::open("/proc/thread-self/ns/net")?.into(),
                ipc: std::fs::File::open("/proc/thread-self/ns/ipc")?.into(),
            })
        })?
        .join()
        .map_err(|_| io::Error::other("the namespace pool thread panicked"))?
}
