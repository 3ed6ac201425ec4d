//! A guest booted from our image (target/aurae-image) by QEMU, with its
//! identity and config in an initramfs overlay, reachable over mTLS through
//! a loopback port forward to its eth0.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aer::client::ClientConfig;
use aurae_proto::runtime::runtime_client::RuntimeClient;
use initramfs::Manifest;
use tonic::transport::Channel;

pub const GUEST_IP: &str = "10.0.2.15";
pub const GUEST_PORT: u16 = 8443;

/// The TAP, bridge and addresses of an instance network that a test (or
/// the demo) creates for itself.
pub const TAP: &str = "aurtap0";
pub const BRIDGE: &str = "aurbr0";
pub const BRIDGE_IP: &str = "10.77.0.1";
pub const INSTANCE_IP: &str = "10.77.0.2";

fn sh(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", cmd])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A bridge with a TAP on it, removed on drop.
pub struct TestNetwork;

impl TestNetwork {
    pub fn create() -> TestNetwork {
        let ok = (sh(&format!("ip tuntap add dev {TAP} mode tap"))
            || sh(&format!("tunctl -t {TAP}")))
            && (sh(&format!("ip link add name {BRIDGE} type bridge"))
                || sh(&format!("brctl addbr {BRIDGE}")))
            && (sh(&format!("ip link set {TAP} master {BRIDGE}"))
                || sh(&format!("brctl addif {BRIDGE} {TAP}")))
            && sh(&format!("ip addr add {BRIDGE_IP}/24 dev {BRIDGE}"))
            && sh(&format!("ip link set {BRIDGE} up && ip link set {TAP} up"));
        assert!(ok, "setting up the instance bridge and TAP failed");
        TestNetwork
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        sh(&format!("ip link del {TAP}; ip link del {BRIDGE}"));
    }
}

/// Whether this host's KVM can boot a standard Linux kernel (PVM can't).
pub fn kvm_boots_linux() -> bool {
    !Path::new("/sys/module/kvm_pvm").exists()
        && std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok()
}

/// The image directory, if the image has been built.
pub fn image_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("AURAE_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            crate::binary("auraed")
                .parent()
                .and_then(|p| p.parent())
                .map(|t| t.join("aurae-image"))
                .unwrap_or_default()
        });
    (dir.join("bzImage").is_file() && dir.join("initramfs.cpio.zst").is_file()).then_some(dir)
}

pub struct Guest {
    qemu: Child,
    pub dir: tempfile::TempDir,
    addr: String,
    pub console: PathBuf,
    config: ClientConfig,
    launched: Instant,
    /// Launch to the guest-init's "/init started" console line.
    pub init_started: Option<Duration>,
    /// Launch to the guest auraed answering health over mTLS.
    pub healthy: Option<Duration>,
}

fn add_dir_tree(m: &mut Manifest, src: &Path, dst: &str) {
    for entry in std::fs::read_dir(src)
        .expect("read dir")
        .filter_map(Result::ok)
    {
        let path = entry.path();
        let name = format!("{dst}/{}", entry.file_name().to_string_lossy());
        if path.is_dir() {
            add_dir_tree(m, &path, &name);
        } else {
            m.file(&name, &path, 0o644).expect("file");
        }
    }
}

/// How the guest is booted.
pub enum Launcher {
    /// QEMU `-M microvm` under KVM with a TAP on the bridge: the peer our
    /// VMM is measured against inside the test host.
    QemuMicrovm {
        /// The bzImage, or the vmlinux (which QEMU boots through PVH).
        kernel: PathBuf,
        tap: String,
        guest_ip: String,
        gateway: String,
        /// A read-only virtio-blk disk (the guest's /dev/vda).
        disk: Option<PathBuf>,
    },
    /// QEMU with TCG, user networking, and a loopback port forward.
    Qemu,
    /// Our VMM (`aurae-vmm`) with a TAP on a bridge; needs a KVM that boots
    /// standard kernels (the QEMU test host has one).
    AuraeVmm {
        vmm: PathBuf,
        kernel: PathBuf,
        vcpus: u8,
        /// Expose SVM/VMX so the guest can run KVM itself.
        nested: bool,
        /// Give the guest a virtio-vsock device (CID 3) whose host socket
        /// is [`Guest::vsock_path`].
        vsock: bool,
        /// A read-only virtio-blk disk (the guest's /dev/vda).
        disk: Option<PathBuf>,
        tap: String,
        guest_ip: String,
        gateway: String,
    },
}

const VSOCK_SOCKET: &str = "vsock.sock";

/// The CPU for guests under QEMU TCG (the QEMU test host too): `max`
/// without ERMS and FSRM, and model 1, an AMD K8 revision Linux does not
/// mark `REP_GOOD`. QEMU 7.2's TCG runs each iteration of a `rep movs`/
/// `rep stos` as its own trip through the translated-code loop, and Linux
/// copies and zeroes pages with those instructions on CPUs that advertise
/// ERMS (bytewise) or REP_GOOD (in quadwords). Zeroing and copying took a
/// large share of a boot in the test host, and boots there slowed down as
/// the test host aged. With neither flag, Linux (in the test host and in its
/// guests) uses unrolled loops of plain moves. Measured in the test host:
/// reading 64 MiB of /dev/zero (page clearing) took 80 ms with ERMS and
/// 10-20 ms without; also dropping REP_GOOD made no difference we could
/// measure (it is dropped for the same reason). Boot figures: `cargo xtask
/// bench vmm`.
pub const TCG_CPU: &str = "max,-erms,-fsrm,model=1";

/// The kernel command line of every launcher, so that boots compare like
/// with like: the serial console, a triple-fault reboot that ends the VM,
/// and the instance's address.
///
/// Tests get the kernel's timestamped boot log, so that a guest that hangs
/// shows where; the boot benchmark keeps the console quiet (every character
/// is a VM exit). With `AURAE_BOOT_TRACE` it still boots quietly, and the
/// guest prints the kernel's log once /init runs (`aurae.bootlog=1`), so
/// the timestamps are those of a quiet boot.
fn guest_cmdline(ip: &str, gateway: &str) -> String {
    let set = |v: &str| std::env::var_os(v).is_some_and(|v| !v.is_empty());
    let console = match (set("AURAE_BENCH"), set("AURAE_BOOT_TRACE")) {
        (true, false) => "quiet",
        (true, true) => "quiet printk.time=1 initcall_debug aurae.bootlog=1",
        // earlyprintk: a hang before the console is up still shows.
        _ => "printk.time=1 earlyprintk=serial",
    };
    // percpu_alloc=page: the per-CPU areas take the pages they need, instead
    // of a zeroed 2 MiB unit per CPU; every first touch of a guest page is a
    // (costly, when nested) page fault of the host.
    format!(
        "console=ttyS0 {console} reboot=t panic=-1 8250.nr_uarts=1 percpu_alloc=page aurae.name=guest aurae.ip={ip}/24 aurae.gw={gateway} aurae.port={GUEST_PORT}"
    )
}

/// Writes the base image plus an overlay with a fresh identity, busybox,
/// and a busybox OCI image at /images/busybox; returns the initrd and the
/// client config for the guest.
pub fn instance_initrd(image: &Path, dir: &Path) -> (PathBuf, ClientConfig) {
    let pki = dir.join("pki");
    let out = Command::new(crate::binary("auraed"))
        .args(["pki", "init", "--trust-domain", "guest.local", "--out"])
        .arg(&pki)
        .output()
        .expect("pki init");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut overlay = Manifest::new();
    for f in ["ca.crt", "server.crt", "server.key"] {
        overlay
            .file(&format!("etc/aurae/pki/{f}"), pki.join(f), 0o600)
            .expect("pki");
    }
    overlay
        .bytes(
            "etc/aurae/auraed.toml",
            "[server]\nsocket = \"/run/aurae/aurae.sock\"\n\n[auth]\nca_crt = \"/etc/aurae/pki/ca.crt\"\n\
             server_crt = \"/etc/aurae/pki/server.crt\"\nserver_key = \"/etc/aurae/pki/server.key\"\n\
             allowed_spiffe_ids = [\"spiffe://guest.local/aer\"]\n\n[runtime]\nstate_dir = \"/run/aurae/state\"\n\
             cgroup_root = \"aurae\"\n",
            0o644,
        )
        .expect("config");
    overlay
        .file("bin/busybox", crate::image::BUSYBOX, 0o755)
        .expect("busybox");
    let layout = crate::image::write_layout(
        &dir.join("oci"),
        &[crate::image::busybox_layer()],
        &Default::default(),
    );
    add_dir_tree(&mut overlay, &layout, "images/busybox");
    // The instance boots uncompressed archives: the image's base is
    // decompressed here, once per instance, and the overlay is written
    // raw. Unpacking zstd in the guest costs it about 0.3 s of its boot
    // under nested virtualization; copying raw bytes costs the VMM a few
    // tens of milliseconds. Every launcher gets the same initrd.
    let base = std::fs::read(image.join("initramfs.cpio.zst")).expect("base initramfs");
    let base = zstd::decode_all(base.as_slice()).expect("the base initramfs is zstd");
    let overlay = overlay.write(Vec::new()).expect("overlay");
    let initrd = dir.join("initrd");
    std::fs::write(&initrd, initramfs::concat(&[&base, &overlay])).expect("initrd");
    let mut config = ClientConfig::load(&pki.join("config")).expect("client config");
    config.system.server_name = "localhost".into();
    (initrd, config)
}

impl Guest {
    /// Boots the image under QEMU.
    pub async fn boot(image: &Path) -> Guest {
        Self::boot_with(image, Launcher::Qemu).await
    }

    pub async fn boot_with(image: &Path, launcher: Launcher) -> Guest {
        let dir = tempfile::tempdir().expect("tempdir");
        let (initrd_path, config) = instance_initrd(image, dir.path());
        let console = dir.path().join("console.log");
        let launched = Instant::now();
        let (qemu, addr) = match launcher {
            Launcher::Qemu => {
                let port = std::net::TcpListener::bind("127.0.0.1:0")
                    .expect("port")
                    .local_addr()
                    .expect("addr")
                    .port();
                let child = Command::new("qemu-system-x86_64")
                    .args(["-M", "pc,accel=tcg", "-cpu", TCG_CPU])
                    .args(["-smp", "2", "-m", "1024"])
                    .args(["-nographic", "-nodefaults", "-no-reboot"])
                    .arg("-serial")
                    .arg(format!("file:{}", console.display()))
                    .arg("-kernel")
                    .arg(image.join("bzImage"))
                    .arg("-initrd")
                    .arg(&initrd_path)
                    .arg("-append")
                    .arg(guest_cmdline(GUEST_IP, "10.0.2.2"))
                    // restrict=on: the guest reaches nothing outside; only
                    // the loopback forward to its auraed exists.
                    .arg("-netdev")
                    .arg(format!("user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-{GUEST_IP}:{GUEST_PORT}"))
                    .args(["-device", "virtio-net-pci,netdev=n0"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("qemu-system-x86_64");
                (child, format!("127.0.0.1:{port}"))
            }
            Launcher::QemuMicrovm {
                kernel,
                tap,
                guest_ip,
                gateway,
                disk,
            } => {
                let mut qemu = Command::new("qemu-system-x86_64");
                if let Some(disk) = &disk {
                    qemu.arg("-drive")
                        .arg(format!(
                            "file={},if=none,id=d0,format=raw,readonly=on",
                            disk.display()
                        ))
                        .args(["-device", "virtio-blk-device,drive=d0"]);
                }
                let child = qemu
                    .args([
                        "-M",
                        "microvm,x-option-roms=off,rtc=off,isa-serial=on,acpi=off",
                        "-enable-kvm",
                        // The same guest as ours gets: no SVM/VMX (ours
                        // hides them unless nested is asked for), and a
                        // virtio-rng next to virtio-net.
                        "-cpu",
                        "host,-svm,-vmx",
                    ])
                    .args([
                        "-m",
                        "512",
                        "-smp",
                        "1",
                        "-nodefaults",
                        "-no-user-config",
                        "-nographic",
                        "-no-reboot",
                    ])
                    .arg("-serial")
                    .arg(format!("file:{}", console.display()))
                    .arg("-kernel")
                    .arg(kernel)
                    .arg("-initrd")
                    .arg(&initrd_path)
                    .arg("-append")
                    .arg(guest_cmdline(&guest_ip, &gateway))
                    .arg("-netdev")
                    .arg(format!("tap,id=n0,ifname={tap},script=no,downscript=no"))
                    .args(["-device", "virtio-net-device,netdev=n0"])
                    .args(["-device", "virtio-rng-device"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(
                        std::fs::File::create(dir.path().join("vmm.log"))
                            .map(Stdio::from)
                            .unwrap_or(Stdio::null()),
                    )
                    .spawn()
                    .expect("qemu-system-x86_64");
                (child, format!("{guest_ip}:{GUEST_PORT}"))
            }
            Launcher::AuraeVmm {
                vmm,
                kernel,
                vcpus,
                nested,
                vsock,
                disk,
                tap,
                guest_ip,
                gateway,
            } => {
                let mut cmd = Command::new(vmm);
                if let Some(disk) = disk {
                    cmd.arg("--disk").arg(format!("{}:ro", disk.display()));
                }
                if nested {
                    cmd.arg("--nested");
                }
                if vsock {
                    cmd.arg("--vsock")
                        .arg(format!("3:{}", dir.path().join(VSOCK_SOCKET).display()));
                }
                if std::env::var_os("AURAE_GUEST_PROFILE").is_some_and(|v| !v.is_empty()) {
                    // Samples of the guest's RIP (see aurae-vmm's main).
                    cmd.env("AURAE_VMM_GUEST_PROFILE", dir.path().join("profile.txt"));
                }
                let child = cmd
                    .arg("--kernel")
                    .arg(kernel)
                    .arg("--initrd")
                    .arg(&initrd_path)
                    .args(["--mem", "512", "--vcpus", &vcpus.to_string(), "--tap", &tap])
                    // As QEMU does for its guest RAM.
                    .arg("--huge-pages")
                    .arg("--console")
                    .arg(&console)
                    .arg("--cmdline")
                    .arg({
                        let mut c = guest_cmdline(&guest_ip, &gateway);
                        if vsock {
                            // The guest auraed serves on vsock too.
                            c.push_str(&format!(" aurae.vsock={GUEST_PORT}"));
                        }
                        c
                    })
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(
                        std::fs::File::create(dir.path().join("vmm.log"))
                            .map(Stdio::from)
                            .unwrap_or(Stdio::null()),
                    )
                    .spawn()
                    .expect("aurae-vmm");
                (child, format!("{guest_ip}:{GUEST_PORT}"))
            }
        };
        let mut g = Guest {
            qemu,
            dir,
            addr,
            console,
            config,
            launched,
            init_started: None,
            healthy: None,
        };
        g.wait_healthy().await;
        g
    }

    /// The VMM's process id.
    pub fn pid(&self) -> u32 {
        self.qemu.id()
    }

    pub fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    fn addr(&self) -> String {
        self.addr.clone()
    }

    /// The host side of the guest's vsock device (booted by our VMM with
    /// `vsock`).
    pub fn vsock_path(&self) -> PathBuf {
        self.dir.path().join(VSOCK_SOCKET)
    }

    /// The VMM's own log (boot timer, exit reason), when booted by it.
    pub fn vmm_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("vmm.log")).unwrap_or_default()
    }

    /// Stops the guest process and waits for it.
    pub fn shutdown(&mut self) -> Option<std::process::ExitStatus> {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.qemu.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.qemu.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.qemu.kill();
        self.reap()
    }

    /// Waits (10 s at most) for the killed VMM. One that won't die is stuck
    /// in the kernel: say where, rather than hang the test run.
    fn reap(&mut self) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.qemu.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let proc = format!("/proc/{}", self.qemu.id());
        let read = |f: &str| std::fs::read_to_string(format!("{proc}/{f}")).unwrap_or_default();
        eprintln!(
            "the VMM (pid {}) did not die after SIGKILL: {} wchan {}\n{}",
            self.qemu.id(),
            read("status")
                .lines()
                .find(|l| l.starts_with("State:"))
                .unwrap_or("State: ?"),
            read("wchan"),
            read("stack")
        );
        None
    }

    async fn wait_healthy(&mut self) {
        let started = self.launched;
        let deadline = started + Duration::from_secs(300);
        let mut next_check = Instant::now();
        loop {
            if self.init_started.is_none()
                && self
                    .console_text()
                    .contains("aurae-guest-init: /init started")
            {
                self.init_started = Some(started.elapsed());
            }
            // The network is tried only once /init has said it started
            // (auraed can't listen before), so that a hanging connect
            // attempt never delays noticing that line.
            if self.init_started.is_some() && Instant::now() >= next_check {
                next_check = Instant::now() + Duration::from_millis(20);
                // A bare TCP connect first, with a short timeout: until the
                // guest is up it hangs (no ARP answer), and a long attempt
                // would blur both measurements. Once auraed listens, the
                // mTLS health call gets longer. (Behind QEMU's user-mode
                // port forward the connect always succeeds; the health call
                // then fails fast, or at worst times out.)
                let listening = tokio::time::timeout(
                    Duration::from_millis(50),
                    tokio::net::TcpStream::connect(self.addr()),
                )
                .await
                .is_ok_and(|c| c.is_ok());
                let attempt = if listening {
                    tokio::time::timeout(Duration::from_secs(2), async {
                        let ch = self.config.connect(Some(&self.addr())).await.ok()?;
                        let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
                        h.check(tonic_health::pb::HealthCheckRequest::default())
                            .await
                            .ok()
                    })
                    .await
                } else {
                    Ok(None)
                };
                if let Ok(Some(_)) = attempt {
                    self.healthy = Some(started.elapsed());
                    eprintln!(
                        "guest auraed healthy after {:.1}s",
                        started.elapsed().as_secs_f64()
                    );
                    return;
                }
            }
            if let Ok(Some(status)) = self.qemu.try_wait() {
                panic!(
                    "the VM exited ({status}); VMM log:\n{}\nconsole:\n{}",
                    self.vmm_log(),
                    self.console_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the guest did not answer health; VMM log:\n{}\nconsole:\n{}",
                self.vmm_log(),
                self.console_text()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A client of the guest auraed over vsock, through the VMM's socket
    /// (booted by our VMM with `vsock`).
    pub async fn vsock_channel(&self) -> Result<Channel, aer::client::ClientError> {
        self.config
            .connect_vsock(&self.vsock_path(), u32::from(GUEST_PORT))
            .await
    }

    pub async fn client(&self) -> RuntimeClient<Channel> {
        self.config
            .runtime(Some(&self.addr()))
            .await
            .expect("connect to the guest")
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        self.reap();
    }
}

/// The gate of a test that boots our image with our VMM: it runs in the e2e
/// tier (`AURAE_E2E`), where KVM boots standard kernels (not PVM), with the
/// image built. Returns the image folder and `aurae-vmm`, or reports why the
/// test `name` skips.
pub fn e2e_kvm(name: &str) -> Option<(PathBuf, PathBuf)> {
    let skip = |why: &str| {
        crate::report_skip(name, why);
        None
    };
    if std::env::var_os("AURAE_E2E").is_none() {
        return skip("runs in the e2e tier, inside the QEMU test host");
    }
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        return skip("this host's KVM is PVM, which can't boot a standard kernel; the test runs inside the QEMU test host");
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return skip("/dev/kvm is not usable");
    }
    let Some(image) = image_dir() else {
        return skip("the image is not built (cargo xtask image)");
    };
    Some((image, crate::binary("aurae-vmm")))
}
