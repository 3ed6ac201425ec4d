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

    /// The files holding the registry's blobs (its filesystem storage).
    pub fn blob_files(&self) -> Vec<PathBuf> {
        let root = self
            ._dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256");
        let mut out = Vec::new();
        for prefix in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            for blob in std::fs::read_dir(prefix.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let data = blob.path().join("data");
                if data.is_file() {
                    out.push(data);
                }
            }
        }
        out
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
