//! A real auraed process on a temporary socket, with its own PKI, state
//! directory and cgroup root.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aer::client::ClientConfig;
use aurae_proto::runtime::runtime_client::RuntimeClient;
use tonic::transport::Channel;

#[derive(Debug, Clone, Default)]
pub struct DaemonOptions {
    /// Also listen on TCP (an ephemeral port on 127.0.0.1).
    pub tcp: bool,
    /// Reuse this directory (and its PKI and cgroup root) instead of a new
    /// one, e.g. to restart after a crash. The caller keeps it (see
    /// `KeptDir`); `Daemon::restart` hands it over instead.
    pub reuse: Option<PathBuf>,
    /// `runtime.image_unpack_limit_bytes` (auraed's default when `None`).
    pub image_unpack_limit_bytes: Option<u64>,
    /// `[server] tls_handshake_timeout_ms`, if not the default.
    pub handshake_timeout_ms: Option<u64>,
    /// `[server] tls_max_handshakes`, if not the default.
    pub max_handshakes: Option<usize>,
    /// `[instances] image_dir`: where spawned instances' image is.
    pub image_dir: Option<PathBuf>,
    /// `[instances] fail_at`: a spawn step that fails, to test rollback.
    pub spawn_fail_at: Option<String>,
    /// `[instances] vmm`: the VMM microVM instances run on.
    pub vmm: Option<PathBuf>,
    /// `[instances] vm_restart`: `remove` unless a test asks for `adopt`
    /// (auraed's default), so that a failed test's VMs don't outlive it.
    pub vm_restart: Option<&'static str>,
    /// `[instances] pool`: instances started ahead (none by default).
    pub pool: usize,
    /// A folder of the test's that the daemon uses (its CRI socket's),
    /// removed once every daemon started with it has stopped.
    pub folder: Option<std::sync::Arc<crate::KeptDir>>,
    /// Appended to the configuration (whole sections, such as `[cri]`).
    pub extra_config: String,
}

pub struct Daemon {
    pub dir: PathBuf,
    /// Whether dropping this handle removes `dir`: a new directory, or one
    /// handed over by `restart`, unless `keep_dir` took it back.
    owns_dir: bool,
    /// `DaemonOptions::folder`, dropped after the daemon stops.
    _folder: Option<std::sync::Arc<crate::KeptDir>>,
    pub child: Option<Child>,
    pub socket: PathBuf,
    pub tcp: Option<String>,
    pub cgroup_root: String,
    pub client_config: PathBuf,
    pub log: PathBuf,
}

fn unique_root(dir: &Path) -> String {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let clean: String = name.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    format!("aurae-test-{clean}")
}

/// The instance bridge of a test daemon: its own, named after its cgroup
/// root (9 characters, so that its veths' names fit in 15).
fn bridge_name(cgroup_root: &str) -> String {
    format!("a{}", &cgroup_root[cgroup_root.len().saturating_sub(8)..])
}

impl Daemon {
    /// The daemon's instance bridge; its instances' host veths are named
    /// `<bridge>v<n>`.
    pub fn bridge(&self) -> String {
        bridge_name(&self.cgroup_root)
    }

    pub async fn start() -> Daemon {
        Self::start_with(DaemonOptions::default()).await
    }

    pub async fn start_with(opts: DaemonOptions) -> Daemon {
        let owns_dir = opts.reuse.is_none();
        Self::start_owning(opts, owns_dir).await
    }

    /// [`Self::start_with`], the handle removing its directory when dropped
    /// if `owns_dir` (a new one is removed also if the start panics).
    async fn start_owning(opts: DaemonOptions, owns_dir: bool) -> Daemon {
        let tmp = match &opts.reuse {
            Some(_) => None,
            None => Some(
                tempfile::Builder::new()
                    .prefix("aurae")
                    .tempdir()
                    .expect("tempdir"),
            ),
        };
        let dir = match (&opts.reuse, &tmp) {
            (Some(d), _) => d.clone(),
            (None, Some(t)) => t.path().to_path_buf(),
            (None, None) => unreachable!("a new directory was made above"),
        };
        let socket = dir.join("aurae.sock");
        let pki = dir.join("pki");
        let cgroup_root = unique_root(&dir);
        if opts.reuse.is_none() {
            let out = Command::new(crate::binary("auraed"))
                .args(["pki", "init", "--trust-domain", "test.local", "--out"])
                .arg(&pki)
                .arg("--socket")
                .arg(&socket)
                .output()
                .expect("auraed pki init");
            assert!(
                out.status.success(),
                "pki init: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut config = std::fs::read_to_string(pki.join("auraed.toml")).expect("auraed.toml");
        let tcp = opts.tcp.then(|| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
            l.local_addr().expect("addr").to_string()
        });
        if let Some(addr) = &tcp {
            config = config.replacen("[server]\n", &format!("[server]\ntcp = \"{addr}\"\n"), 1);
        }
        if let Some(ms) = opts.handshake_timeout_ms {
            let line = format!("[server]\ntls_handshake_timeout_ms = {ms}\n");
            config = config.replacen("[server]\n", &line, 1);
        }
        if let Some(n) = opts.max_handshakes {
            let line = format!("[server]\ntls_max_handshakes = {n}\n");
            config = config.replacen("[server]\n", &line, 1);
        }
        config.push_str(&format!(
            "\n[runtime]\nstate_dir = {:?}\ncgroup_root = {cgroup_root:?}\nlog_buffer_bytes = 65536\n",
            dir.join("state").display().to_string()
        ));
        if let Some(limit) = opts.image_unpack_limit_bytes {
            config.push_str(&format!("image_unpack_limit_bytes = {limit}\n"));
        }
        config.push_str(&format!(
            "\n[instances]\nbridge = {:?}\n",
            bridge_name(&cgroup_root)
        ));
        if let Some(dir) = &opts.image_dir {
            config.push_str(&format!("image_dir = {:?}\n", dir.display().to_string()));
        }
        if let Some(step) = &opts.spawn_fail_at {
            config.push_str(&format!("fail_at = {step:?}\n"));
        }
        if let Some(vmm) = &opts.vmm {
            config.push_str(&format!("vmm = {:?}\n", vmm.display().to_string()));
        }
        config.push_str(&format!(
            "vm_restart = {:?}\npool = {}\n",
            opts.vm_restart.unwrap_or("remove"),
            opts.pool
        ));
        config.push_str(&opts.extra_config);
        let config_path = dir.join("auraed-run.toml");
        std::fs::write(&config_path, config).expect("config");
        let log = dir.join("auraed.log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log");
        let child = Command::new(crate::binary("auraed"))
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log"))
            .stderr(log_file)
            .spawn()
            .expect("spawn auraed");
        // From here on the handle removes it (see `Drop`).
        if let Some(t) = tmp {
            assert_eq!(t.keep(), dir, "the directory kept is the daemon's");
        }
        let d = Daemon {
            client_config: pki.join("config"),
            owns_dir,
            _folder: opts.folder.clone(),
            dir,
            child: Some(child),
            socket,
            tcp,
            cgroup_root,
            log,
        };
        d.wait_ready().await;
        d
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(ch) = self.channel().await {
                let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
                if h.check(tonic_health::pb::HealthCheckRequest::default())
                    .await
                    .is_ok()
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "auraed did not come up; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// `rel` (under the daemon's directory) as auraed sees it: auraed runs
    /// in a mount namespace of its own, where cell state lives on a private
    /// tmpfs that the host does not see.
    pub fn seen_by_auraed(&self, rel: &str) -> PathBuf {
        let dir = self.dir.strip_prefix("/").unwrap_or(&self.dir);
        PathBuf::from(format!("/proc/{}/root", self.pid()))
            .join(dir)
            .join(rel)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn config(&self) -> ClientConfig {
        ClientConfig::load(&self.client_config).expect("client config")
    }

    pub async fn channel(&self) -> Result<Channel, aer::client::ClientError> {
        self.config().connect(None).await
    }

    pub async fn client(&self) -> RuntimeClient<Channel> {
        RuntimeClient::new(self.channel().await.expect("connect"))
    }

    /// Directory of auraed's cgroup root, if cgroup v2 is mounted.
    pub fn cgroup_dir(&self) -> Option<PathBuf> {
        ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .iter()
            .map(|m| Path::new(m).join(&self.cgroup_root))
            .find(|p| p.exists())
    }

    /// Runs `aer` against this daemon.
    pub fn aer(&self, args: &[&str]) -> std::process::Output {
        Command::new(crate::binary("aer"))
            .env("AURAE_CONFIG", &self.client_config)
            .args(args)
            .output()
            .expect("run aer")
    }

    /// `aer` with `args`, which must succeed; its stdout. On failure, the
    /// panic shows aer's output and the daemon's log.
    pub fn aer_ok(&self, args: &[&str]) -> String {
        let out = self.aer(args);
        assert!(
            out.status.success(),
            "aer {args:?}: {}\n{}\nauraed log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Kills the daemon without letting it clean up (a crash).
    pub fn crash(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the daemon with SIGTERM and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// This daemon, once ended (`crash` or `stop`), started again on its
    /// directory (PKI, state) with `options`.
    /// The new daemon owns the directory if this one did.
    pub async fn restart(mut self, options: &DaemonOptions) -> Daemon {
        let owned = self.owns_dir;
        let dir = self.keep_dir();
        drop(self);
        let options = DaemonOptions {
            reuse: Some(dir),
            ..options.clone()
        };
        Daemon::start_owning(options, owned).await
    }

    /// Keeps the directory (PKI, state) after this handle is dropped, for
    /// a daemon started again on it (`reuse`); the caller removes it.
    pub fn keep_dir(&mut self) -> PathBuf {
        self.owns_dir = false;
        self.dir.clone()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        // Fails (harmlessly) while a crashed daemon's cells are still there
        // for a restarted one to clean up.
        if let Some(dir) = self.cgroup_dir() {
            let _ = std::fs::remove_dir(dir);
        }
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
