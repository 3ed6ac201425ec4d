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
    (dir.join("bzImage").is_file() && dir.join("initramfs.cpio.gz").is_file()).then_some(dir)
}

pub struct Guest {
    qemu: Child,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub console: PathBuf,
    config: ClientConfig,
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

impl Guest {
    /// Boots the image with an overlay that carries a fresh identity,
    /// busybox, and a busybox OCI image at /images/busybox.
    pub async fn boot(image: &Path) -> Guest {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = dir.path().join("pki");
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
            &dir.path().join("oci"),
            &[crate::image::busybox_layer()],
            &Default::default(),
        );
        add_dir_tree(&mut overlay, &layout, "images/busybox");
        let mut initrd = std::fs::read(image.join("initramfs.cpio.gz")).expect("base initramfs");
        let overlay = overlay.write_gzip(Vec::new()).expect("overlay");
        initrd = initramfs::concat(&[&initrd, &overlay]);
        let initrd_path = dir.path().join("initrd");
        std::fs::write(&initrd_path, initrd).expect("initrd");

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("port")
            .local_addr()
            .expect("addr")
            .port();
        let console = dir.path().join("console.log");
        let qemu = Command::new("qemu-system-x86_64")
            .args(["-M", "pc,accel=tcg", "-cpu", "max", "-smp", "2", "-m", "1024"])
            .args(["-nographic", "-nodefaults", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-kernel")
            .arg(image.join("bzImage"))
            .arg("-initrd")
            .arg(&initrd_path)
            .arg("-append")
            .arg(format!(
                "console=ttyS0 reboot=t panic=-1 8250.nr_uarts=1 aurae.name=guest aurae.ip={GUEST_IP}/24 aurae.gw=10.0.2.2 aurae.port={GUEST_PORT}"
            ))
            // restrict=on: the guest reaches nothing outside; only the
            // loopback forward to its auraed exists.
            .arg("-netdev")
            .arg(format!("user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-{GUEST_IP}:{GUEST_PORT}"))
            .args(["-device", "virtio-net-pci,netdev=n0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64");
        let mut config = ClientConfig::load(&pki.join("config")).expect("client config");
        config.system.server_name = "localhost".into();
        let mut g = Guest {
            qemu,
            dir,
            port,
            console,
            config,
        };
        g.wait_healthy().await;
        g
    }

    pub fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn wait_healthy(&mut self) {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(300);
        loop {
            if let Ok(ch) = self.config.connect(Some(&self.addr())).await {
                let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
                let check = tokio::time::timeout(
                    Duration::from_secs(5),
                    h.check(tonic_health::pb::HealthCheckRequest::default()),
                )
                .await;
                if let Ok(Ok(_)) = check {
                    eprintln!(
                        "guest auraed healthy after {:.1}s",
                        started.elapsed().as_secs_f64()
                    );
                    return;
                }
            }
            if let Ok(Some(status)) = self.qemu.try_wait() {
                panic!("QEMU exited ({status}); console:\n{}", self.console_text());
            }
            assert!(
                Instant::now() < deadline,
                "the guest did not answer health; console:\n{}",
                self.console_text()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
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
        let _ = self.qemu.wait();
    }
}
