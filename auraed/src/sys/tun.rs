//! Persistent TAP devices through `/dev/net/tun`.
//!
//! rtnetlink cannot make a TAP that outlives its creator's fd; the
//! `TUNSETIFF` and `TUNSETPERSIST` ioctls can. The VMM then attaches to the
//! TAP by name (its own `TUNSETIFF` with `IFF_TAP | IFF_NO_PI`), so the TAP
//! is made with the same flags and no `IFF_VNET_HDR`.

use std::io;
use std::os::fd::AsRawFd;

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
/// Fail with `EBUSY` instead of attaching to an existing device.
const IFF_TUN_EXCL: libc::c_short = 0x8000_u16 as libc::c_short;

// TUNSETIFF and TUNSETPERSIST are `_IOW('T', 202/203, int)`, but TUNSETIFF
// takes a `struct ifreq *` and TUNSETPERSIST an int by value: "bad" ioctls
// in nix's terms.
nix::ioctl_readwrite_bad!(
    tunsetiff,
    nix::request_code_write!(b'T', 202, std::mem::size_of::<libc::c_int>()),
    libc::ifreq
);
nix::ioctl_write_int_bad!(
    tunsetpersist,
    nix::request_code_write!(b'T', 203, std::mem::size_of::<libc::c_int>())
);

/// Creates the persistent TAP `name` (owned by root, no `IFF_VNET_HDR`).
/// Fails with `EBUSY` if a TUN/TAP device of that name exists, and with
/// `EINVAL` if the name is too long. The fd used to create it is closed on
/// return; the TAP stays until deleted (`RTM_DELLINK` or `TUNSETPERSIST 0`).
pub fn create_persistent_tap(name: &str) -> io::Result<()> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI | IFF_TUN_EXCL;
    // SAFETY: TUNSETIFF reads (and writes back the name into) the ifreq we
    // own, which outlives the call; the fd is open.
    unsafe { tunsetiff(file.as_raw_fd(), &mut req) }?;
    // SAFETY: TUNSETPERSIST takes an int by value on the fd we own. If it
    // fails, closing the fd deletes the not-yet-persistent TAP.
    unsafe { tunsetpersist(file.as_raw_fd(), 1) }?;
    Ok(())
}
