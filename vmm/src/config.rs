//! The configuration of a VM, validated before anything is created.

use std::path::{Path, PathBuf};

use crate::VmmError;

/// Where the serial console's output goes.
#[derive(Debug, Clone, Default)]
pub enum Console {
    /// Discarded.
    #[default]
    None,
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub read_only: bool,
}

/// A virtio-vsock device: the guest's context id, and the Unix socket the
/// VMM listens on for host connections (see
/// [`crate::devices::virtio::vsock::muxer`]).
#[derive(Debug, Clone)]
pub struct VsockConfig {
    pub cid: u64,
    pub uds_path: PathBuf,
}

/// A `--vsock` argument that is not `CID:PATH`.
#[derive(Debug, thiserror::Error)]
pub enum VsockArgError {
    #[error("{0:?} is not CID:PATH")]
    NotCidPath(String),
    #[error("the CID {cid:?} is not a number")]
    Cid {
        cid: String,
        #[source]
        source: std::num::ParseIntError,
    },
}

impl std::str::FromStr for VsockConfig {
    type Err = VsockArgError;

    /// `CID:PATH`, e.g. `3:/run/vm1.vsock`.
    fn from_str(s: &str) -> Result<Self, VsockArgError> {
        let (cid, path) = s
            .split_once(':')
            .ok_or_else(|| VsockArgError::NotCidPath(s.into()))?;
        Ok(Self {
            cid: cid.parse().map_err(|source| VsockArgError::Cid {
                cid: cid.into(),
                source,
            })?,
            uds_path: path.into(),
        })
    }
}

#[derive(Debug, Clone)]
pub struct VmConfig {
    /// A bzImage, an ELF vmlinux, or (for tests) a flat binary loaded at
    /// `flat_entry`.
    pub kernel: PathBuf,
    /// cpio archives loaded back to back as one initrd.
    pub initrds: Vec<PathBuf>,
    pub cmdline: String,
    pub mem_mib: u64,
    pub vcpus: u8,
    /// Existing TAP interfaces, one virtio-net device each: eth0, eth1...
    /// in the guest, in this order.
    pub taps: Vec<String>,
    /// The guest's MAC on some of those TAPs (a pod's CNI device's
    /// address, which its network knows the pod by); the others derive
    /// theirs from the TAP's name ([`crate::devices::virtio::net::guest_mac`]).
    pub macs: Vec<(String, [u8; 6])>,
    pub disks: Vec<DiskConfig>,
    /// Host folders shared over virtio-fs, one device each.
    pub shares: Vec<FsConfig>,
    pub console: Console,
    /// Pass the SVM/VMX CPUID bits through so the guest can run KVM.
    pub nested: bool,
    /// Ask the host to back guest memory with transparent huge pages
    /// (see [`crate::guest_ram`]). Worth it for Linux guests, which touch
    /// most of their memory; a tiny guest would only grow its footprint.
    pub huge_pages: bool,
    pub rng: bool,
    pub vsock: Option<VsockConfig>,
    /// Load `kernel` as a flat binary at this guest address and start there
    /// in 64-bit mode (test guests).
    pub flat_entry: Option<u64>,
    /// The debug-exit port (0x501): a write stops the VM and becomes the
    /// exit status. For test guests; off, the guest can't choose how the
    /// VMM exits.
    pub debug_exit: bool,
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            kernel: PathBuf::new(),
            initrds: vec![],
            cmdline: "console=ttyS0 reboot=k panic=1".into(),
            mem_mib: 256,
            vcpus: 1,
            taps: vec![],
            macs: vec![],
            disks: vec![],
            shares: vec![],
            console: Console::None,
            nested: false,
            huge_pages: false,
            rng: true,
            vsock: None,
            flat_entry: None,
            debug_exit: false,
        }
    }
}

/// A host folder shared with the guest over virtio-fs, which the guest
/// mounts by its tag (see [`crate::devices::virtio::fs`]).
#[derive(Debug, Clone)]
pub struct FsConfig {
    pub tag: String,
    pub path: PathBuf,
}

/// A `--fs` argument that is not `TAG=PATH`.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not TAG=PATH")]
pub struct FsArgError(String);

impl std::str::FromStr for FsConfig {
    type Err = FsArgError;

    /// `TAG=PATH`, e.g. `volumes=/run/pod/volumes`.
    fn from_str(s: &str) -> Result<Self, FsArgError> {
        match s.split_once('=') {
            Some((tag, path)) if !tag.is_empty() && !path.is_empty() => Ok(Self {
                tag: tag.into(),
                path: path.into(),
            }),
            _ => Err(FsArgError(s.into())),
        }
    }
}

/// Smallest guest memory accepted.
pub const MIN_MEM_MIB: u64 = 16;
/// Largest guest memory accepted (below the 32-bit MMIO gap; one region).
pub const MAX_MEM_MIB: u64 = 3 * 1024;

fn bad(option: &'static str, reason: impl Into<String>) -> VmmError {
    VmmError::Config {
        option,
        reason: reason.into(),
    }
}

fn readable(option: &'static str, p: &Path) -> Result<(), VmmError> {
    match std::fs::File::open(p) {
        Ok(f) if f.metadata().map(|m| m.is_file()).unwrap_or(false) => Ok(()),
        Ok(_) => Err(bad(
            option,
            format!("{} is not a regular file", p.display()),
        )),
        Err(e) => Err(VmmError::input(option, p.display())(e)),
    }
}

impl VmConfig {
    /// The seccomp filter of the VM's event thread: with file system calls
    /// where a folder is shared (its file server runs there).
    pub fn event_filter(&self) -> crate::seccomp::ThreadKind {
        match self.shares.is_empty() {
            true => crate::seccomp::ThreadKind::Events,
            false => crate::seccomp::ThreadKind::EventsWithFiles,
        }
    }

    /// Each share: a tag the device can carry, given once, and a folder.
    fn validate_shares(&self) -> Result<(), VmmError> {
        use crate::devices::virtio::fs::TAG_MAX;
        for (i, s) in self.shares.iter().enumerate() {
            if s.tag.is_empty() || s.tag.len() > TAG_MAX || s.tag.contains('\0') {
                return Err(bad(
                    "fs",
                    format!("tag {:?}: 1 to {TAG_MAX} bytes, no NUL", s.tag),
                ));
            }
            if s.path.to_str().is_none() {
                return Err(bad("fs", format!("{} is not UTF-8", s.path.display())));
            }
            if self.shares[..i].iter().any(|o| o.tag == s.tag) {
                return Err(bad("fs", format!("tag {:?} is given twice", s.tag)));
            }
            match std::fs::metadata(&s.path) {
                Err(e) => return Err(VmmError::input("fs", s.path.display())(e)),
                Ok(m) if !m.is_dir() => {
                    return Err(bad("fs", format!("{} is not a folder", s.path.display())))
                }
                Ok(_) => {}
            }
        }
        Ok(())
    }

    /// Checks everything that can be checked without creating the VM.
    /// `max_vcpus` is KVM's limit.
    pub fn validate(&self, max_vcpus: usize) -> Result<(), VmmError> {
        readable("kernel", &self.kernel)?;
        for i in &self.initrds {
            readable("initrd", i)?;
        }
        if self.vcpus == 0 {
            return Err(bad("vcpus", "must be at least 1"));
        }
        if usize::from(self.vcpus) > max_vcpus.min(crate::boot::mptable::MAX_CPUS) {
            return Err(bad(
                "vcpus",
                format!(
                    "{} is more than the maximum of {}",
                    self.vcpus,
                    max_vcpus.min(crate::boot::mptable::MAX_CPUS)
                ),
            ));
        }
        if self.mem_mib < MIN_MEM_MIB || self.mem_mib > MAX_MEM_MIB {
            return Err(bad(
                "mem",
                format!(
                    "{} MiB is out of range {MIN_MEM_MIB}..={MAX_MEM_MIB}",
                    self.mem_mib
                ),
            ));
        }
        if self.cmdline.len() >= crate::boot::CMDLINE_MAX {
            return Err(bad(
                "cmdline",
                format!("longer than {} bytes", crate::boot::CMDLINE_MAX - 1),
            ));
        }
        self.validate_shares()?;
        let others = usize::from(self.rng)
            + self.taps.len()
            + self.shares.len()
            + usize::from(self.vsock.is_some());
        let max_disks = crate::boot::layout::MAX_VIRTIO_DEVICES
            .checked_sub(others)
            .ok_or_else(|| {
                bad(
                    "tap",
                    format!(
                        "{} TAPs; at most {} virtio devices fit (one interrupt each)",
                        self.taps.len(),
                        crate::boot::layout::MAX_VIRTIO_DEVICES
                    ),
                )
            })?;
        if self.disks.len() > max_disks {
            return Err(bad(
                "disk",
                format!(
                    "{} disks; at most {max_disks} fit next to the other virtio devices (one interrupt each)",
                    self.disks.len()
                ),
            ));
        }
        for d in &self.disks {
            let opened = std::fs::OpenOptions::new()
                .read(true)
                .write(!d.read_only)
                .open(&d.path);
            match opened.and_then(|f| f.metadata()) {
                Err(e) => return Err(VmmError::input("disk", d.path.display())(e)),
                Ok(m) => {
                    use std::os::unix::fs::FileTypeExt;
                    if !m.is_file() && !m.file_type().is_block_device() {
                        return Err(bad(
                            "disk",
                            format!(
                                "{} is not a regular file or a block device",
                                d.path.display()
                            ),
                        ));
                    }
                }
            }
        }
        for (i, tap) in self.taps.iter().enumerate() {
            if self.taps[..i].contains(tap) {
                return Err(bad("tap", format!("{tap} is given twice")));
            }
            if tap.is_empty() || tap.len() >= libc::IFNAMSIZ {
                return Err(bad("tap", format!("{tap:?} is not a valid interface name")));
            }
            // Looked up in this process's network namespace (/sys may show
            // another's).
            if nix::net::if_::if_nametoindex(tap.as_str()).is_err() {
                return Err(bad("tap", format!("{tap} does not exist")));
            }
        }
        for (tap, mac) in &self.macs {
            if !self.taps.contains(tap) {
                return Err(bad("mac", format!("{tap} is not one of the TAPs")));
            }
            if mac[0] & 1 == 1 || mac == &[0; 6] {
                return Err(bad("mac", format!("{tap}: not a unicast address")));
            }
        }
        if let Some(v) = &self.vsock {
            // 0-2 are the hypervisor, the loopback and the host; -1 is "any".
            if !(3..u64::from(u32::MAX)).contains(&v.cid) {
                return Err(bad(
                    "vsock",
                    format!("the guest CID {} is reserved or out of range", v.cid),
                ));
            }
            if v.uds_path.exists() {
                return Err(bad(
                    "vsock",
                    format!("{} already exists", v.uds_path.display()),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    /// A file that can't be opened names the option and the path, and
    /// keeps the I/O error (not its text) as the source.
    #[test]
    fn an_unreadable_file_keeps_its_io_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("vmlinux");
        let e = readable("kernel", &missing).expect_err("missing");
        assert_eq!(e.config_option(), Some("kernel"));
        assert_eq!(e.to_string(), format!("--kernel: {}", missing.display()));
        let io = e
            .source()
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .expect("an io::Error source");
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn a_bad_vsock_argument_is_typed() {
        use std::str::FromStr;
        assert!(matches!(
            VsockConfig::from_str("/run/v.sock"),
            Err(VsockArgError::NotCidPath(_))
        ));
        let e = VsockConfig::from_str("x:/run/v.sock").expect_err("bad CID");
        assert_eq!(e.to_string(), "the CID \"x\" is not a number");
        assert!(e.source().is_some());
    }
}
