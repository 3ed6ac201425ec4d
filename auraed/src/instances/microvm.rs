//! The microVM backend of spawn: aurae-vmm boots the image's kernel with an
//! initrd of the instance's own (the image's base initramfs, decompressed,
//! followed by an overlay with the instance's identity, config and the
//! image for its own children), on a TAP on the bridge.
//!
//! The VMM is a process of its own in a cell of its own: own pid, ipc, uts,
//! cgroup and mount namespaces, the host's network namespace (the TAP is
//! there) and root, and a container's capabilities (no `all_caps`): it
//! opens `/dev/kvm`, and attaches to the TAP with `TUNSETIFF`, which a
//! persistent TAP without an owner or group (as [`net::create_tap`] makes
//! it) allows without `CAP_NET_ADMIN`. Its memory is limited to the guest's
//! plus [`VMM_OVERHEAD_MIB`] where the memory controller exists. A VMM
//! that crashes takes only its instance down. Its standard output is the
//! guest's serial console, so the instance's logs are the console.
//!
//! The instance's folder (its initrd, which holds its private keys) is on
//! the cells' tmpfs and goes with the instance. A kept one (a CRI pod's,
//! see [`super::kept`]) has a folder in `instances.kept_dir` too, with the
//! guest's console and the VMM's messages as files (pipes to auraed would
//! break with it); its initrd folder goes as soon as the guest runs (the
//! VMM loaded it at start).

use std::io::Read;
use std::net::Ipv6Addr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use initramfs::Manifest;

use super::backend::Choice;
use super::files::{self, Params};
use super::spawn::{injected, FailAt, Started};
use super::undo::Undo;
use super::vmm_process::{disks, vmm_cell_spec, vmm_process, VmmArgs};
use super::{Instance, InstanceSpec, Instances};
use crate::cells::{Cell, CellContext, SeedFile};
use crate::error::ApiError;
use crate::executables::Executable;
use crate::net;

/// Guest memory when the request names none, in MiB (aurae-vmm's default).
pub const DEFAULT_MEM_MIB: u64 = 256;
/// What the VMM itself may use beyond guest memory, in MiB.
pub const VMM_OVERHEAD_MIB: u64 = 64;
/// The instance's initrd, in its folder.
const INITRD: &str = "initrd";
/// The line aurae-vmm prints when the guest's /init reports to its boot
/// timer, followed by the milliseconds since launch.
pub const BOOT_TIMER_LINE: &str = "aurae-vmm: boot timer: /init reported after ";

/// What went wrong preparing a microVM's initrd.
#[derive(Debug, thiserror::Error)]
pub enum InitrdError {
    #[error("reading the base initramfs {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("decompressing the base initramfs {} (zstd)", path.display())]
    Decompress {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("building the instance's overlay archive")]
    Overlay(#[source] initramfs::CpioError),
    #[error("writing the instance's initrd {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("making the instance's folder {}", path.display())]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An error and its sources, as one message for the API.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(&format!(": {c}"));
        cur = c.source();
    }
    s
}

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The base initramfs as the instance boots it: uncompressed (unpacking
/// zstd costs a guest about 0.3 s of its boot when nested; copying raw
/// bytes costs the VMM a few tens of milliseconds).
pub fn read_base(path: &Path) -> Result<Vec<u8>, InitrdError> {
    let raw = std::fs::read(path).map_err(|source| InitrdError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if !raw.starts_with(&ZSTD_MAGIC) {
        return Ok(raw);
    }
    zstd::decode_all(raw.as_slice()).map_err(|source| InitrdError::Decompress {
        path: path.to_path_buf(),
        source,
    })
}

/// The overlay: the instance's seed files (as a cell-backed instance gets
/// them, less `/etc/aurae/bootparams`: a VM has a kernel command line of
/// its own) and `image`, the files of [`files::IMAGE`] for its own
/// children, as (name, host path).
pub fn overlay(seed: &[SeedFile], image: &[(String, PathBuf)]) -> Result<Vec<u8>, InitrdError> {
    let mut m = Manifest::new();
    let pki = files::PKI.trim_start_matches('/');
    m.dir(pki, 0o700).map_err(InitrdError::Overlay)?;
    for f in seed {
        let path = f.path.to_string_lossy();
        if path.ends_with("etc/aurae/bootparams") {
            continue;
        }
        m.bytes(&path, f.contents.clone(), f.mode)
            .map_err(InitrdError::Overlay)?;
    }
    let dir = files::IMAGE.trim_start_matches('/');
    for (name, src) in image {
        let mode = if name == "aurae-vmm" { 0o755 } else { 0o644 };
        m.file(&format!("{dir}/{name}"), src, mode)
            .map_err(InitrdError::Overlay)?;
    }
    m.write(Vec::new()).map_err(InitrdError::Overlay)
}

/// Makes `dir` (mode 0700, in `parent`, also 0700), replacing a stale one
/// (the registry holds the name, so no live instance has it).
fn make_dir(parent: &Path, dir: &Path) -> Result<(), InitrdError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| InitrdError::Dir { path, source }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)
        .map_err(err(parent))?;
    match std::fs::remove_dir_all(dir) {
        Ok(()) => tracing::warn!("removed a stale instance folder {}", dir.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(dir)(e)),
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(err(dir))
}

/// Removes an instance's folder; one already gone is fine.
pub fn remove_dir(dir: &Path) -> Result<(), ApiError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ApiError::io(format!("removing {}", dir.display()), e)),
    }
}

/// Writes the initrd, readable by its owner only (it holds keys).
fn write_initrd(path: &Path, parts: &[&[u8]]) -> Result<(), InitrdError> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(&initramfs::concat(parts)))
        .map_err(|source| InitrdError::Write {
            path: path.to_path_buf(),
            source,
        })
}

/// Whether `path` is an ELF executable without a program interpreter
/// (static): only such a VMM runs in the guest, which has no libc.
pub fn is_static_elf(path: &Path) -> bool {
    let mut head = Vec::new();
    let read = std::fs::File::open(path)
        .and_then(|f| f.take(64 * 1024).read_to_end(&mut head))
        .is_ok();
    read && static_elf(&head)
}

fn static_elf(b: &[u8]) -> bool {
    // ELF64, little endian: e_phoff at 0x20, e_phentsize at 0x36, e_phnum
    // at 0x38; PT_INTERP is 3.
    if b.len() < 64 || b[..4] != *b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        return false;
    }
    let u16_at = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let (Some(phoff), Some(entsize), Some(num)) = (
        b.get(0x20..0x28)
            .and_then(|s| <[u8; 8]>::try_from(s).ok())
            .map(u64::from_le_bytes),
        u16_at(0x36),
        u16_at(0x38),
    ) else {
        return false;
    };
    (0..usize::from(num)).all(|i| {
        let at = usize::try_from(phoff)
            .ok()
            .and_then(|p| p.checked_add(i * usize::from(entsize)));
        match at.and_then(|o| b.get(o..o + 4)) {
            Some(t) => u32::from_le_bytes([t[0], t[1], t[2], t[3]]) != 3,
            // Program headers beyond what was read: unknown, so not static.
            None => false,
        }
    })
}

/// The kernel command line: the serial console, a triple-fault reboot
/// that ends the VM, a quiet boot (every console character is a VM exit;
/// a panic still prints), and the instance's `aurae.*` parameters.
pub fn cmdline(params: &Params, gateway: Ipv6Addr) -> String {
    format!(
        "console=ttyS0 quiet reboot=t panic=-1 8250.nr_uarts=1 percpu_alloc=page \
         aurae.name={} aurae.ip={}/{} aurae.gw={gateway} aurae.port={}",
        params.name, params.address, params.prefix_len, params.port
    )
}

/// The boot timer aurae-vmm printed, in milliseconds.
pub fn boot_ms(exe: &Executable) -> Option<u64> {
    let sub = exe.logs.subscribe(false);
    // The VMM's own line, on its stderr: the guest's console (stdout)
    // can't forge it.
    sub.history
        .iter()
        .filter(|l| l.stream == crate::logs::Stream::Stderr)
        .find_map(|l| parse_boot_ms(&String::from_utf8_lossy(&l.data)))
}

/// The milliseconds of a [`BOOT_TIMER_LINE`].
fn parse_boot_ms(line: &str) -> Option<u64> {
    let rest = line.split_once(BOOT_TIMER_LINE)?.1;
    let ms: f64 = rest.split_whitespace().next()?.parse().ok()?;
    (ms.is_finite() && ms >= 0.0).then(|| ms.round() as u64)
}

/// The kernel's name in the guest's image folder, by its format.
fn kernel_name(kernel: &Path) -> &'static str {
    let mut magic = [0u8; 4];
    let elf = std::fs::File::open(kernel)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF";
    if elf {
        "vmlinux"
    } else {
        "bzImage"
    }
}

impl Instances {
    /// Steps 2 to 8 of a spawn on a microVM (see [`FailAt`]).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn spawn_microvm(
        &self,
        spec: &InstanceSpec,
        choice: Choice,
        kernel: PathBuf,
        initramfs: PathBuf,
        field: &'static str,
        networks: &[crate::net::BridgeLink],
        cells: &CellContext,
        log_bytes: usize,
        undo: &mut Undo,
        started: Instant,
    ) -> Result<Instance, ApiError> {
        let fail = self.cfg.fail_at;
        // A TAP on the bridge is cleared as left behind when auraed
        // starts: only an instance on a pod network (an uplink) is kept.
        if spec.keep && spec.pod_network.is_none() {
            return Err(ApiError::FailedPrecondition(format!(
                "instance {}: a microVM outlives its auraed only on a pod network",
                spec.name
            )));
        }
        if spec.pod_network.is_some() && !networks.is_empty() {
            return Err(ApiError::invalid(
                "networks",
                "a microVM on a pod network takes no devices on host bridges",
            ));
        }
        let more_nets = networks.len() + usize::from(spec.pod_network.is_some());
        let disks = disks(&spec.read_only, more_nets)?;
        let vcpus = u8::try_from(spec.vcpus.max(1))
            .map_err(|_| ApiError::invalid("vcpus", "a microVM has at most 255"))?;
        let mem_mib = if spec.memory_mib > 0 {
            spec.memory_mib
        } else {
            DEFAULT_MEM_MIB
        };

        // 2. The image's base, decompressed.
        let image = initramfs.clone();
        let base = crate::blocking::run("reading the initramfs", move || read_base(&image))
            .await?
            .map_err(|e| ApiError::invalid(field, chain(&e)))?;
        injected(fail, FailAt::Image)?;

        // 3. The instance's identity, signed by this auraed.
        let identity = self.issue(&spec.name)?;
        injected(fail, FailAt::Identity)?;

        // 4. The bridge, made on first use.
        let bridge = self.ensure_bridge().await?;
        injected(fail, FailAt::Bridge)?;

        // 5. The instance's folder and initrd, and the VMM's cell.
        let index = self.take_index();
        undo.index = Some(index);
        let address = self.ula().instance_addr(index);
        let params = files::Params {
            // In a VM, the instance's own auraed serves 169.254.169.254.
            link_local_metadata: true,
            pre_started: false,
            ..self.params(spec, address)
        };
        let dir = self.cfg.instances_dir.join(&spec.name);
        let initrd = dir.join(INITRD);
        // The guest's own children boot the same image: its initramfs
        // always (cells), its kernel and the VMM when it can run KVM.
        let mut image = vec![("initramfs.cpio.zst".to_string(), initramfs.clone())];
        if spec.nested {
            image.push((kernel_name(&kernel).to_string(), kernel.clone()));
            if is_static_elf(&self.cfg.vmm) {
                image.push(("aurae-vmm".to_string(), self.cfg.vmm.clone()));
            }
        }
        let mut seed = files::seed(&identity, &params);
        seed.extend(spec.files.iter().cloned());
        let (parent, d, i) = (self.cfg.instances_dir.clone(), dir.clone(), initrd.clone());
        undo.dir = Some(dir.clone());
        crate::blocking::run("writing the instance's initrd", move || {
            make_dir(&parent, &d)?;
            let overlay = overlay(&seed, &image)?;
            write_initrd(&i, &[&base, &overlay])
        })
        .await?
        .map_err(|e| ApiError::Internal(format!("instance {}: {}", spec.name, chain(&e))))?;
        // A kept one's output outlives this auraed, in a folder of its own
        // on disk, which is its folder from here; the initrd's goes once
        // the guest runs.
        let (console, output) = match spec.keep {
            true => {
                let kept = self.kept_vm_dir(&spec.name);
                let (parent, k) = (self.cfg.kept_dir.clone(), kept.clone());
                undo.boot_dir = undo.dir.replace(kept.clone());
                crate::blocking::run("making the instance's kept folder", move || {
                    make_dir(&parent, &k)
                })
                .await?
                .map_err(|e| {
                    ApiError::Internal(format!("instance {}: {}", spec.name, chain(&e)))
                })?;
                let (console, output) = Self::vm_console_files(&kept)?;
                (Some(console), output)
            }
            false => (None, crate::executables::Output::Pipes),
        };
        // A pod's volumes folder, in the folder the instance keeps.
        let lasting = undo.dir.clone().unwrap_or_else(|| dir.clone());
        let volumes = super::volumes::prepare(spec.volumes, lasting).await?;
        // On a pod network, the VMM has a network namespace of its own.
        let own_netns = spec.pod_network.is_some();
        let cell_spec = vmm_cell_spec(&spec.name, mem_mib, cells, !own_netns);
        let cell = Cell::create(cell_spec, cells.clone()).await?;
        undo.cell = Some(cell.clone());
        super::volumes::seal(&cell, volumes.as_deref()).await?;
        injected(fail, FailAt::Cell)?;

        // 6. The TAP on the bridge (named like the veths, after it); on a
        // pod network, an uplink to the bridge instead, and the pod's TAP.
        let mut macs = Vec::new();
        let (taps, pod_param) = match &spec.pod_network {
            Some(hook) => {
                let (host, peer, tap) = self.vm_link_names(index)?;
                let (pidfd, _) = cell.namespaces();
                let uplink = net::make_vm_link(
                    pidfd,
                    (&host, &peer),
                    &bridge.link(),
                    &tap,
                    crate::metadata::imds::ADDR,
                )
                .await?;
                undo.veth = Some(uplink);
                let link = hook.0.attach(pidfd).await?;
                undo.pod_network = Some(hook.clone());
                let param = super::pod_network::boot_param(&link, "eth1");
                // The guest answers as CNI's device: its network knows the
                // pod by that address.
                if let Some(mac) = link.mac {
                    macs.push((link.tap.clone(), mac));
                }
                (vec![tap, link.tap], param)
            }
            None => {
                let stem: String = self.cfg.bridge.chars().take(9).collect();
                let tap_name = net::host_link_name(&format!("{stem}t"), index)?;
                let tap = net::create_tap(&tap_name, &bridge.link()).await?;
                undo.tap = Some(tap.clone());
                self.make_taps(networks, index, &mut undo.networks).await?;
                let taps: Vec<String> = std::iter::once(tap.name.clone())
                    .chain(undo.networks.iter().map(|n| n.host.name().to_string()))
                    .collect();
                (taps, String::new())
            }
        };
        injected(fail, FailAt::Veth)?;

        // 7. The VMM.
        let process = vmm_process(&VmmArgs {
            vmm: &self.cfg.vmm,
            kernel: &kernel,
            console: console.as_deref(),
            initrd: Some(&initrd),
            mem_mib,
            vcpus,
            taps: &taps,
            macs: &macs,
            cmdline: cmdline(&params, self.ula().bridge_addr())
                + &pod_param
                + &volumes
                    .as_ref()
                    .map(|_| super::volumes::boot_param())
                    .unwrap_or_default(),
            nested: spec.nested,
            disks: &disks,
            volumes: volumes.as_deref(),
        })?;
        let instance = self
            .ready(
                spec,
                Started {
                    choice,
                    spiffe_id: identity.spiffe_id,
                    address,
                    port: self.cfg.port,
                    index,
                    process: ("vmm", process),
                    cell,
                    output,
                    started,
                },
                log_bytes,
                undo,
            )
            .await?;
        if let Some(boot) = undo.boot_dir.take() {
            // The instance runs: a failure here is only logged.
            if let Err(e) = remove_dir(&boot) {
                tracing::error!("instance {}: its initrd: {e}", spec.name);
            }
        }
        Ok(instance)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Params {
        Params {
            name: "a".into(),
            address: "fd00::2".parse().expect("addr"),
            prefix_len: 64,
            port: 8443,
            allowed: vec!["spiffe://td/auraed".into()],
            path: "a".into(),
            parent: "[fd00::1]:8444".parse().expect("parent"),
            parent_id: "spiffe://td/auraed".into(),
            link_local_metadata: false,
            in_host_network: false,
            pre_started: false,
        }
    }

    #[test]
    fn the_command_line_names_the_instance_and_its_gateway() {
        let line = cmdline(&params(), "fd00::1".parse().expect("gw"));
        assert!(line.starts_with("console=ttyS0 "), "{line}");
        assert!(
            line.ends_with("aurae.name=a aurae.ip=fd00::2/64 aurae.gw=fd00::1 aurae.port=8443"),
            "{line}"
        );
    }

    #[test]
    fn the_overlay_has_the_seed_files_but_not_bootparams() {
        let t = tempfile::tempdir().expect("tempdir");
        let img = t.path().join("initramfs.cpio.zst");
        std::fs::write(&img, b"IMAGE").expect("image");
        let seed = vec![
            SeedFile {
                path: "etc/aurae/pki/server.key".into(),
                contents: b"KEY".to_vec(),
                mode: 0o600,
            },
            SeedFile {
                path: "etc/aurae/bootparams".into(),
                contents: b"aurae.name=a".to_vec(),
                mode: 0o644,
            },
        ];
        let cpio = overlay(&seed, &[("initramfs.cpio.zst".into(), img)]).expect("overlay");
        let text = String::from_utf8_lossy(&cpio);
        assert!(text.contains("etc/aurae/pki/server.key"));
        assert!(text.contains("etc/aurae/image/initramfs.cpio.zst"));
        assert!(text.contains("IMAGE") && text.contains("KEY"));
        assert!(!text.contains("bootparams"), "{text}");
        assert!(text.contains("TRAILER!!!"));
    }

    #[test]
    fn a_base_is_decompressed_when_it_is_zstd() {
        let t = tempfile::tempdir().expect("tempdir");
        let raw = t.path().join("raw");
        std::fs::write(&raw, b"070701 raw cpio").expect("raw");
        assert_eq!(read_base(&raw).expect("raw"), b"070701 raw cpio");
        let z = t.path().join("z");
        let packed = zstd::encode_all(&b"070701 packed"[..], 3).expect("zstd");
        std::fs::write(&z, packed).expect("z");
        assert_eq!(read_base(&z).expect("z"), b"070701 packed");
        let bad = t.path().join("bad");
        std::fs::write(&bad, [0x28, 0xb5, 0x2f, 0xfd, 0, 0]).expect("bad");
        assert!(matches!(
            read_base(&bad),
            Err(InitrdError::Decompress { .. })
        ));
        assert!(matches!(
            read_base(&t.path().join("missing")),
            Err(InitrdError::Read { .. })
        ));
    }

    #[test]
    fn static_and_dynamic_executables_are_told_apart() {
        // This test binary is dynamically linked (it has PT_INTERP).
        let me = std::env::current_exe().expect("exe");
        assert!(!is_static_elf(&me));
        assert!(!static_elf(b"not an elf"));
        // A minimal ELF64 header with no program headers is static.
        let mut h = vec![0u8; 64];
        h[..6].copy_from_slice(b"\x7fELF\x02\x01");
        assert!(static_elf(&h));
        // One PT_INTERP program header at 64.
        h[0x20] = 64;
        h[0x36] = 56;
        h[0x38] = 1;
        let mut ph = vec![0u8; 56];
        ph[0] = 3;
        h.extend(ph);
        assert!(!static_elf(&h));
        h[64] = 1; // PT_LOAD
        assert!(static_elf(&h));
        // Program headers past the end: not known to be static.
        h[0x20] = 200;
        assert!(!static_elf(&h));
    }

    #[test]
    fn the_boot_timer_line_is_parsed() {
        assert_eq!(
            parse_boot_ms(&format!("{BOOT_TIMER_LINE}123.6 ms")),
            Some(124)
        );
        assert_eq!(
            parse_boot_ms(&format!("x {BOOT_TIMER_LINE}7.0 ms")),
            Some(7)
        );
        assert_eq!(parse_boot_ms(&format!("{BOOT_TIMER_LINE}soon")), None);
        assert_eq!(parse_boot_ms(&format!("{BOOT_TIMER_LINE}-1 ms")), None);
        // The line aurae-vmm prints when it exits is another one.
        assert_eq!(
            parse_boot_ms("aurae-vmm: boot timer: /init started 80.0 ms after launch (1 CPU ms)"),
            None
        );
    }
}
