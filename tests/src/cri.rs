//! What the CRI tests and the `cri` tier share: a `docker-registry` on
//! loopback, and the upstream `crictl` (`../shared/cri`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::pods::free_port;

pub fn crictl_bin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/cri/crictl")
}

/// A `docker-registry` on loopback, removed with the test.
pub struct Registry {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    pub fn start() -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .expect("registry config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry");
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry {
            child,
            port,
            _dir: dir,
        }
    }

    /// Pushes the image at `source` (a skopeo transport: `docker-archive:...`,
    /// `oci:...`) as `name`.
    pub fn push_from(&self, source: &str, name: &str) {
        let out = Command::new("skopeo")
            .args(["copy", "--dest-tls-verify=false", source])
            .arg(format!("docker://127.0.0.1:{}/{name}", self.port))
            .output()
            .expect("skopeo");
        assert!(
            out.status.success(),
            "skopeo copy {source}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Pushes the docker-save archive `image` as `name`.
    pub fn push(&self, image: &Path, name: &str) {
        self.push_from(&format!("docker-archive:{}", image.display()), name)
    }
}

pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

pub struct Crictl {
    pub socket: PathBuf,
}

impl Crictl {
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        let endpoint = format!("unix://{}", self.socket.display());
        Command::new(crictl_bin())
            .args([
                "--runtime-endpoint",
                &endpoint,
                "--image-endpoint",
                &endpoint,
            ])
            .args(["--timeout", "60s"])
            .args(args)
            .output()
            .expect("crictl")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "crictl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Fails, and says why on stderr.
    pub fn refused(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "crictl {args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

/// The images critest pulls, built on busybox-static under its names (as
/// `registry.k8s.io/...` and `gcr.io/...` reach them through a mirror),
/// pushed to `registry`. The nginx images and the digest-pinned one are not
/// among them.
pub fn push_critest_images(registry: &Registry, dir: &Path) {
    use crate::image::{busybox_every_applet_layer, files_layer, write_docker_save, ImageConfig};
    let busybox = busybox_every_applet_layer();
    let users = files_layer(&[
        (
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/bin/sh\n\
              user1000:x:1000:1000::/home:/bin/sh\n",
        ),
        (
            "etc/group",
            b"root:x:0:\nwww-data:x:33:\ngroup1000:x:1000:\ngroup50000:x:50000:user1000\n",
        ),
    ]);
    let push = |name: &str, layers: &[Vec<u8>], user: Option<&str>| {
        let file = dir.join(format!("{}.tar", name.replace(['/', ':'], "_")));
        let cfg = ImageConfig {
            cmd: vec!["/bin/sh".into()],
            user: user.map(str::to_string),
            ..ImageConfig::default()
        };
        write_docker_save(&file, layers, &cfg);
        registry.push(&file, name);
    };
    push(
        "e2e-test-images/busybox:1.29-2",
        std::slice::from_ref(&busybox),
        None,
    );
    let tools = "k8s-staging-cri-tools";
    let marked = |mark: &str| vec![busybox.clone(), files_layer(&[(mark, b"")])];
    push(
        &format!("{tools}/test-image-latest:latest"),
        &marked("test-image-latest"),
        None,
    );
    for tag in ["test", "all"] {
        push(
            &format!("{tools}/test-image-tag:{tag}"),
            &marked("test-image-tag"),
            None,
        );
    }
    for n in 1..=3 {
        let name = format!("test-image-{n}");
        push(&format!("{tools}/{name}:latest"), &marked(&name), None);
        push(
            &format!("{tools}/test-image-tags:{n}"),
            &marked("test-image-tags"),
            None,
        );
    }
    for (name, user) in [
        ("test-image-user-uid", "1002"),
        ("test-image-user-username", "www-data"),
        ("test-image-user-uid-group", "1003:1004"),
        ("test-image-user-username-group", "www-data:1004"),
        ("test-image-predefined-group", "1000"),
    ] {
        push(
            &format!("{tools}/{name}:latest"),
            &[busybox.clone(), users.clone()],
            Some(user),
        );
    }
}
