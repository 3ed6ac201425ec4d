//! Binds that propagate: the copy of a host folder given to a cell is a
//! peer of the host's mount (both ways, `rshared`) or a slave of it (host
//! to cell, `rslave`), as Kubernetes' `Bidirectional` and
//! `HostToContainer` mount propagation ask.
//!
//! auraed runs in a mount namespace of its own, a slave of the host's
//! (see [`super::mount_ns`]): a copy taken there would only ever receive.
//! So the copy is taken in the host's namespace, by a short-lived thread
//! that joins it: a copy of a shared mount is a peer of it, made a slave
//! where only the host's mounts should cross. The host's mount must be
//! shared (or a slave, for host to cell), as with runc; otherwise nothing
//! would propagate, and the bind is refused, naming the mount.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::sched::{setns, unshare, CloneFlags};

use super::init_process::MountAttr;
use super::mount_inject::InjectError;
use crate::cells::Propagation;

/// How a mount of the host's propagates, from `/proc/<...>/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostMount {
    pub point: PathBuf,
    pub shared: bool,
    pub slave: bool,
}

/// The mount of `mountinfo` that holds `path` (canonical): the one with the
/// longest mount point above it, the last one mounted there.
pub fn mount_of(mountinfo: &str, path: &Path) -> Option<HostMount> {
    let mut best: Option<HostMount> = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(point) = fields.get(4) else { continue };
        let point = PathBuf::from(unescape(point));
        if !path.starts_with(&point) {
            continue;
        }
        let optional = fields
            .iter()
            .skip(6)
            .take_while(|f| **f != "-")
            .collect::<Vec<_>>();
        let m = HostMount {
            shared: optional.iter().any(|f| f.starts_with("shared:")),
            slave: optional.iter().any(|f| f.starts_with("master:")),
            point,
        };
        if best
            .as_ref()
            .is_none_or(|b| m.point.as_os_str().len() >= b.point.as_os_str().len())
        {
            best = Some(m);
        }
    }
    best
}

/// A mountinfo field with its octal escapes (`\\040` for a space, `\\134`
/// for a backslash...) decoded.
fn unescape(field: &str) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    std::ffi::OsString::from_vec(out)
}

/// Whether a copy of `m` would propagate as `wanted` asks; the refusal
/// otherwise.
pub fn check(path: &Path, m: &HostMount, wanted: Propagation) -> Result<(), InjectError> {
    let ok = match wanted {
        Propagation::Private => true,
        Propagation::Slave => m.shared || m.slave,
        Propagation::Shared => m.shared,
    };
    if ok {
        return Ok(());
    }
    Err(InjectError::Propagation {
        path: path.to_path_buf(),
        mount: m.point.clone(),
        has: if m.slave { "slave" } else { "private" },
        wanted: match wanted {
            Propagation::Shared => "bidirectional propagation needs a shared mount",
            _ => "host-to-container propagation needs a shared or slave mount",
        },
    })
}

/// Runs `work` on a thread in the host's mount namespace (auraed's own if
/// it never left it).
fn in_host_ns<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, InjectError> + Send + 'static,
) -> Result<T, InjectError> {
    let host = super::mount_ns::original()
        .map(|fd| fd.try_clone_to_owned())
        .transpose()
        .map_err(InjectError::Thread)?;
    let thread = std::thread::Builder::new()
        .name("mount-propagate".into())
        .spawn(move || {
            if let Some(host) = &host {
                // This thread leaves auraed's fs context to change mount
                // namespace, and exits afterwards.
                unshare(CloneFlags::CLONE_FS).map_err(InjectError::Unshare)?;
                setns(host, CloneFlags::CLONE_NEWNS).map_err(InjectError::HostNs)?;
            }
            work()
        })
        .map_err(InjectError::Thread)?;
    thread.join().map_err(|_| InjectError::Panicked)?
}

/// On a thread in the host's namespace: `source` resolved, and the mount
/// that holds it.
fn host_mount(source: &Path) -> Result<(PathBuf, HostMount), InjectError> {
    let info =
        std::fs::read_to_string("/proc/thread-self/mountinfo").map_err(InjectError::Mountinfo)?;
    let real = std::fs::canonicalize(source).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            InjectError::Missing(source.to_path_buf())
        } else {
            InjectError::Mountinfo(e)
        }
    })?;
    let m = mount_of(&info, &real).ok_or_else(|| {
        InjectError::Mountinfo(std::io::Error::other(format!(
            "no mount holds {}",
            real.display()
        )))
    })?;
    Ok((real, m))
}

/// Whether a copy of `source`, taken in the host's namespace, would
/// propagate as `propagation` asks (see [`check`]).
pub fn check_host(source: &Path, propagation: Propagation) -> Result<(), InjectError> {
    let source = source.to_path_buf();
    in_host_ns(move || {
        let (_, m) = host_mount(&source)?;
        check(&source, &m, propagation)
    })
}

/// A detached copy of the tree at `source` taken in the host's mount
/// namespace, propagating as `propagation` says (see the module).
pub fn clone_in_host(
    source: &Path,
    writable: bool,
    propagation: Propagation,
) -> Result<OwnedFd, InjectError> {
    let source = source.to_path_buf();
    in_host_ns(move || {
        let (real, m) = host_mount(&source)?;
        check(&source, &m, propagation)?;
        let tree = super::mount_inject::clone_tree(&real, writable)?;
        if propagation == Propagation::Slave {
            make_slave(&tree, &source)?;
        }
        Ok(tree)
    })
}

/// Makes a detached tree a slave of its source's peers, submounts too.
fn make_slave(tree: &OwnedFd, path: &Path) -> Result<(), InjectError> {
    let attr = MountAttr {
        attr_set: 0,
        attr_clr: 0,
        propagation: libc::MS_SLAVE,
        userns_fd: 0,
    };
    super::mount_inject::set_tree_attr(tree, &attr).map_err(|source| InjectError::Slave {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:25 / /tmp rw shared:5 - tmpfs tmpfs rw
31 30 0:26 / /tmp/private rw - tmpfs tmpfs rw
32 30 0:27 / /tmp/slave rw master:5 - tmpfs tmpfs rw
";

    #[test]
    fn escapes_are_decoded() {
        assert_eq!(unescape("/a\\040b\\134c\\011"), "/a b\\c\t");
        assert_eq!(unescape("/plain\\9"), "/plain\\9");
    }

    #[test]
    fn the_longest_mount_point_above_a_path_holds_it() {
        let m = mount_of(INFO, Path::new("/tmp/a/b")).unwrap();
        assert_eq!(m.point, PathBuf::from("/tmp"));
        assert!(m.shared && !m.slave);
        let m = mount_of(INFO, Path::new("/tmp/private/x")).unwrap();
        assert!(!m.shared && !m.slave);
        let m = mount_of(INFO, Path::new("/tmp/slave")).unwrap();
        assert!(m.slave);
        assert_eq!(
            mount_of(INFO, Path::new("/etc")).unwrap().point,
            PathBuf::from("/")
        );
    }

    #[test]
    fn a_private_mount_is_refused_for_either_propagation_and_a_slave_for_both_ways() {
        let private = mount_of(INFO, Path::new("/tmp/private/x")).unwrap();
        let slave = mount_of(INFO, Path::new("/tmp/slave")).unwrap();
        let p = Path::new("/tmp/private/x");
        assert!(check(p, &private, Propagation::Private).is_ok());
        let e = check(p, &private, Propagation::Slave).unwrap_err();
        assert!(e.to_string().contains("/tmp/private"), "{e}");
        assert!(check(p, &private, Propagation::Shared).is_err());
        assert!(check(p, &slave, Propagation::Slave).is_ok());
        assert!(check(p, &slave, Propagation::Shared).is_err());
    }
}
