//! What the CRI tests and the `cri` tier share: a `docker-registry` on
//! loopback, and the upstream `crictl` (`../shared/cri`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::pods::free_port;

/// The upstream crictl: `$AURAE_CRICTL` (the QEMU test host has its own
/// copy), else `../shared/cri/crictl`.
pub fn crictl_bin() -> PathBuf {
    match std::env::var_os("AURAE_CRICTL") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/cri/crictl"),
    }
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
    /// A client of the CRI socket at `socket`.
    pub fn new(socket: PathBuf) -> Crictl {
        Crictl { socket }
    }

    pub fn run(&self, args: &[&str]) -> std::process::Output {
        let endpoint = format!("unix://{}", self.socket.display());
        Command::new(crictl_bin())
            .args([
                "--runtime-endpoint",
                &endpoint,
                "--image-endpoint",
                &endpoint,
            ])
            .args(["--timeout", "300s"])
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

/// A daemon with the CRI on, pulling `registry.k8s.io` images from
/// `registry` only; its pods stop with it (`pod_restart = "remove"`), so
/// that a failed test leaves none running.
pub async fn daemon(registry: &Registry) -> (crate::Daemon, Crictl) {
    let (options, crictl) = daemon_options(registry, "remove");
    (crate::Daemon::start_with(options).await, crictl)
}

/// What [`daemon`] starts auraed with, pods kept or removed at a restart
/// as `pod_restart` says; the same options start it again.
pub fn daemon_options(registry: &Registry, pod_restart: &str) -> (crate::DaemonOptions, Crictl) {
    let image = crate::instances::image().expect("checked by the caller");
    // The socket goes in the daemon's own folder, known once it exists:
    // a folder of the test's instead; the CNI configuration folder (empty:
    // pods are on auraed's bridge) beside it.
    let sockets = tempfile::tempdir().expect("tempdir").keep();
    let socket = sockets.join("cri.sock");
    let options = crate::DaemonOptions {
        image_dir: Some(image),
        extra_config: cri_config(&socket, registry, pod_restart),
        folder: Some(std::sync::Arc::new(crate::KeptDir(sockets))),
        ..Default::default()
    };
    (options, Crictl::new(socket))
}

/// The daemon's `[cri]` configuration: its socket, its (empty) CNI folder
/// beside it, `registry` as the mirror of `registry.k8s.io`, and what
/// becomes of its pods at a restart.
pub fn cri_config(socket: &Path, registry: &Registry, pod_restart: &str) -> String {
    format!(
        "\n[cri]\nenabled = true\nsocket = {:?}\ncni_conf_dir = {:?}\npod_restart = {pod_restart:?}\n\
         [cri.registries.\"registry.k8s.io\"]\nmirrors = [\"http://127.0.0.1:{}\"]\nskip_upstream = true\n",
        socket.display().to_string(),
        cni_dir(socket).display().to_string(),
        registry.port
    )
}

/// A CRI client of the daemon's socket (tonic, over the Unix socket).
pub async fn cri_client(
    socket: &Path,
) -> aurae_proto::cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel> {
    aurae_proto::cri::runtime_service_client::RuntimeServiceClient::new(cri_channel(socket).await)
}

/// A CRI image service client of the daemon's socket.
pub async fn cri_image_client(
    socket: &Path,
) -> aurae_proto::cri::image_service_client::ImageServiceClient<tonic::transport::Channel> {
    aurae_proto::cri::image_service_client::ImageServiceClient::new(cri_channel(socket).await)
}

async fn cri_channel(socket: &Path) -> tonic::transport::Channel {
    let path = socket.to_path_buf();
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .expect("the CRI socket")
}

/// The daemon's CNI configuration folder (beside its CRI socket).
pub fn cni_dir(socket: &Path) -> std::path::PathBuf {
    socket.with_file_name("net.d")
}

pub fn write_json(dir: &Path, name: &str, value: serde_json::Value) -> String {
    let p = dir.join(name);
    std::fs::write(&p, value.to_string()).expect("json");
    p.display().to_string()
}

/// What auraed runs (over the test's own connection).
pub async fn workloads(
    client: &mut aurae_proto::runtime::runtime_client::RuntimeClient<tonic::transport::Channel>,
) -> Vec<aurae_proto::runtime::WorkloadStatus> {
    client
        .list(aurae_proto::runtime::ListRequest {})
        .await
        .expect("list")
        .into_inner()
        .workloads
}

/// Why the CRI tests can't run here, if they can't.
pub fn requirements() -> Option<&'static str> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root");
    }
    if !crictl_bin().is_file() {
        return Some("no ../shared/cri/crictl");
    }
    if !have("docker-registry") || !have("skopeo") {
        return Some(
            "docker-registry and skopeo are not installed (cargo xtask test installs them)",
        );
    }
    if crate::instances::image().is_none() {
        return Some("no image: target/aurae-image/initramfs.cpio.zst (cargo xtask image)");
    }
    None
}

/// The busybox image the CRI tests pull, through the mirror.
pub const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";

/// A registry holding the busybox image, and a daemon with the CRI on that
/// has pulled it.
pub async fn daemon_with_busybox(work: &Path) -> (Registry, crate::Daemon, Crictl) {
    let registry = Registry::start();
    registry.push(
        &crate::pods::busybox_image(work),
        "e2e-test-images/busybox:1.29-2",
    );
    let (d, crictl) = daemon(&registry).await;
    crictl.ok(&["pull", BUSYBOX]);
    (registry, d, crictl)
}

/// A pod sandbox's IP, as `crictl inspectp` reports it.
pub fn pod_ip(crictl: &Crictl, pod_id: &str) -> String {
    let status: serde_json::Value =
        serde_json::from_str(&crictl.ok(&["inspectp", "-o", "json", pod_id])).expect("json");
    status["status"]["network"]["ip"]
        .as_str()
        .expect("a pod IP")
        .to_string()
}

/// A cell-backed pod sandbox `name` whose one container, `web`, runs the
/// busybox web server of [`crate::pods::SERVER`] on 8080, started through
/// crictl (its files in `work`); the pod's and the container's ids.
pub fn web_pod(crictl: &Crictl, work: &Path, name: &str) -> (String, String) {
    let pod = write_json(
        work,
        "pod.json",
        serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("u-{name}"),
                         "attempt": 0},
            "log_directory": work.join("logs").display().to_string(),
        }),
    );
    let container = write_json(
        work,
        "container.json",
        serde_json::json!({
            "metadata": {"name": "web"},
            "image": {"image": BUSYBOX},
            "command": ["/bin/busybox", "sh", "-c", crate::pods::SERVER],
            "log_path": "web.log",
        }),
    );
    let pod_id = crictl.ok(&["runp", "--runtime", "aurae-cell", &pod]);
    let id = crictl.ok(&["create", &pod_id, &container, &pod]);
    crictl.ok(&["start", &id]);
    (pod_id, id)
}

/// Fetches the page of the web server on `port` in pod `pod_id` through
/// `crictl port-forward` from a free local port; panics without it.
pub fn page_through_port_forward(crictl: &Crictl, pod_id: &str, port: u16) {
    page_through_port_forward_with(crictl, pod_id, port, &[]);
}

/// [`page_through_port_forward`] with crictl given `envs` (such as
/// `SSL_CERT_FILE`, the roots it verifies an https stream server with).
pub fn page_through_port_forward_with(
    crictl: &Crictl,
    pod_id: &str,
    port: u16,
    envs: &[(&str, &Path)],
) {
    let local = crate::pods::free_port();
    let mut forward = Command::new(crictl_bin())
        .envs(envs.iter().copied())
        .arg("--runtime-endpoint")
        .arg(format!("unix://{}", crictl.socket.display()))
        .args(["port-forward", pod_id])
        .arg(format!("{local}:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("crictl port-forward");
    let page = std::panic::catch_unwind(|| crate::pods::http_get(&format!("127.0.0.1:{local}")));
    forward.kill().expect("kill crictl");
    forward.wait().expect("wait crictl");
    assert!(page.is_ok(), "no page through the forwarded port");
}

/// A CRI test on busybox from a registry of its own: its folder, auraed,
/// crictl, a client of auraed's API, and what auraed held before the test
/// (for its leak check). Dropped daemon first, folder last.
pub struct BusyboxCase {
    pub daemon: crate::Daemon,
    pub crictl: Crictl,
    pub client: aurae_proto::runtime::runtime_client::RuntimeClient<tonic::transport::Channel>,
    pub registry: Registry,
    pub before: crate::leaks::Snapshot,
    pub work: tempfile::TempDir,
}

impl BusyboxCase {
    /// The case, or `None` (reported as a skip of `test`) without what a
    /// CRI test needs here.
    pub async fn start(test: &str) -> Option<BusyboxCase> {
        if let Some(why) = requirements() {
            crate::report_skip(test, why);
            return None;
        }
        let work = tempfile::tempdir().expect("tempdir");
        let (registry, daemon, crictl) = daemon_with_busybox(work.path()).await;
        let client = daemon.client().await;
        let before = crate::leaks::Snapshot::settled(&daemon);
        Some(BusyboxCase {
            daemon,
            crictl,
            client,
            registry,
            before,
            work,
        })
    }

    /// `pod.json`: pod `name` in `namespace`, its logs under `logs/`.
    pub fn pod(&self, name: &str, namespace: &str, uid: &str) -> String {
        write_json(
            self.work.path(),
            "pod.json",
            serde_json::json!({
                "metadata": {"name": name, "namespace": namespace, "uid": uid, "attempt": 0},
                "log_directory": self.work.path().join("logs").display().to_string(),
            }),
        )
    }

    /// Nothing left: no workload in auraed, and what it holds as before.
    pub async fn assert_nothing_left(&mut self) {
        let left = workloads(&mut self.client).await;
        assert!(left.is_empty(), "{left:?}");
        assert_eq!(crate::leaks::Snapshot::settled(&self.daemon), self.before);
    }
}
