//! auraed's TOML configuration.
//!
//! ```toml
//! [server]
//! socket = "/run/aurae/aurae.sock"   # always served
//! tcp = "[::1]:7443"                 # optional; always mTLS
//! vsock_port = 7443                  # optional, in a VM; always mTLS
//! insecure_socket = false            # serve the socket without TLS
//! tls_handshake_timeout_ms = 10000   # a TLS handshake not done by then is dropped
//! tls_max_handshakes = 64            # connections in TLS handshake at once, over
//!                                    # all listeners; more wait unaccepted in
//!                                    # the kernel's listen backlog
//!
//! [auth]
//! ca_crt = "/etc/aurae/pki/ca.crt"
//! server_crt = "/etc/aurae/pki/server.crt"
//! server_key = "/etc/aurae/pki/server.key"
//! allowed_spiffe_ids = ["spiffe://aurae.local/aer"]
//!
//! [runtime]
//! state_dir = "/var/lib/aurae"
//! cgroup_root = "aurae"
//! log_buffer_bytes = 1048576
//! image_unpack_limit_bytes = 4294967296   # at most this much written per image unpack
//!
//! [instances]
//! image_dir = "/usr/local/share/aurae/image"   # initramfs.cpio.zst (+ kernel) of instances
//! signing_key = "/etc/aurae/pki/ca.key"        # default: ca.key beside auth.ca_crt
//! signing_chain = "/etc/aurae/pki/ca.crt"      # default: auth.ca_crt
//! bridge = "aurae0"
//! port = 8443
//! vmm = "/usr/local/bin/aurae-vmm"   # default: aurae-vmm beside auraed, else this
//! vm_restart = "adopt"               # plain VMs outlive auraed; or "remove"
//! pool = 0                           # cell instances started ahead
//!
//! [cri]                              # the Kubernetes CRI endpoint: crate::cri::config
//! enabled = false
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const DEFAULT_CONFIG: &str = "/etc/aurae/auraed.toml";

/// What happens to plain VMs (`RunVirtualMachine`) across an auraed
/// restart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmRestart {
    /// They run on while auraed stops (at SIGTERM too), and the next auraed
    /// takes them back.
    #[default]
    Adopt,
    /// auraed stops them as it stops; what a crash leaves, the next one
    /// removes.
    Remove,
}
pub const DEFAULT_SOCKET: &str = "/run/aurae/aurae.sock";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerSection,
    pub auth: AuthSection,
    #[serde(default)]
    pub runtime: RuntimeSection,
    #[serde(default)]
    pub instances: InstancesSection,
    /// The Kubernetes CRI endpoint (`crate::cri::config`).
    #[serde(default)]
    pub cri: crate::cri::config::CriSection,
}

/// Spawned instances.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstancesSection {
    /// The image instances run: `initramfs.cpio.zst` (and, for microVMs,
    /// `bzImage`/`vmlinux`), as `cargo xtask image` writes them.
    #[serde(default = "default_image_dir")]
    pub image_dir: PathBuf,
    /// The CA key that signs instances' identities; `ca.key` beside
    /// `auth.ca_crt` when unset (where `auraed pki init` writes it).
    pub signing_key: Option<PathBuf>,
    /// That CA's certificate chain; `auth.ca_crt` when unset.
    pub signing_chain: Option<PathBuf>,
    /// The bridge instances are attached to.
    #[serde(default = "default_bridge")]
    pub bridge: String,
    /// The port instances serve on, on the bridge.
    #[serde(default = "default_instance_port")]
    pub port: u16,
    /// Fault injection for tests: fail every spawn at this step (backend,
    /// image, identity, bridge, cell, veth, init, ready) and roll back.
    pub fail_at: Option<String>,
    /// What a restarted auraed does with the plain VMs a previous one left
    /// running: take them back (`adopt`, the default), or remove them.
    #[serde(default)]
    pub vm_restart: VmRestart,
    /// The VMM microVM instances run on (`aurae-vmm`). Unset: `aurae-vmm`
    /// beside the running auraed, else [`DEFAULT_VMM`].
    pub vmm: Option<PathBuf>,
    /// This auraed's path in the instance tree ("a/b"; empty for the root):
    /// its parent writes it.
    #[serde(default)]
    pub path: String,
    /// The parent's metadata endpoint ("[address]:port") and SPIFFE ID, for
    /// a spawned auraed: its parent writes them.
    pub parent: Option<std::net::SocketAddr>,
    pub parent_id: Option<String>,
    /// Serve the link-local metadata endpoint (169.254.169.254) in this
    /// auraed's own network namespace, with the record its parent keeps:
    /// set by the parent of a microVM instance (a cell-backed instance's
    /// parent serves it there itself).
    #[serde(default)]
    pub link_local_metadata: bool,
    /// Set by the parent of a pre-started instance: its parent may give it
    /// an identity once (`Metadata.Assume`); no other auraed takes one.
    #[serde(default)]
    pub pre_started: bool,
    /// Cell-backed instances kept started ahead of requests (0, the
    /// default: none). A spawn or pod that a plain cell of the default
    /// image serves takes one and is ready in milliseconds; each costs a
    /// running auraed's memory while it waits.
    #[serde(default)]
    pub pool: usize,
    /// Set by the parent of an instance in its host's network namespace (a
    /// Kubernetes `hostNetwork` pod): this auraed makes nothing in that
    /// namespace (no bridge, so no instances or VMs of its own) and removes
    /// nothing there as left behind.
    #[serde(default)]
    pub in_host_network: bool,
}

/// Where the VMM is when it is neither configured nor beside auraed.
pub const DEFAULT_VMM: &str = "/usr/local/bin/aurae-vmm";

impl InstancesSection {
    /// The VMM: `vmm`, else `aurae-vmm` in the running executable's folder
    /// if it is there, else [`DEFAULT_VMM`].
    pub fn vmm_path(&self) -> PathBuf {
        if let Some(p) = &self.vmm {
            return p.clone();
        }
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join("aurae-vmm")))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_VMM))
    }
}

fn default_image_dir() -> PathBuf {
    PathBuf::from(crate::instances::DEFAULT_IMAGE_DIR)
}
fn default_bridge() -> String {
    "aurae0".into()
}
fn default_instance_port() -> u16 {
    8443
}

impl Default for InstancesSection {
    fn default() -> Self {
        Self {
            image_dir: default_image_dir(),
            signing_key: None,
            signing_chain: None,
            bridge: default_bridge(),
            port: default_instance_port(),
            fail_at: None,
            vmm: None,
            vm_restart: VmRestart::default(),
            path: String::new(),
            parent: None,
            parent_id: None,
            link_local_metadata: false,
            pool: 0,
            in_host_network: false,
            pre_started: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    pub tcp: Option<SocketAddr>,
    /// A virtio-vsock port to serve on (any CID), as an instance does for
    /// its parent.
    pub vsock_port: Option<u32>,
    #[serde(default)]
    pub insecure_socket: bool,
    /// A TLS handshake not finished within this many milliseconds is
    /// dropped, so a client that connects and stalls holds no file
    /// descriptor for long.
    #[serde(default = "default_handshake_timeout_ms")]
    pub tls_handshake_timeout_ms: u64,
    /// How many connections, over all listeners, may be in TLS handshake at
    /// once. While that many are, auraed accepts no more: they wait in the
    /// kernel's listen backlog, holding none of auraed's file descriptors.
    #[serde(default = "default_max_handshakes")]
    pub tls_max_handshakes: usize,
}

/// Bounds of `server.tls_handshake_timeout_ms`.
const HANDSHAKE_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 100..=300_000;
/// Bounds of `server.tls_max_handshakes`.
const MAX_HANDSHAKES: std::ops::RangeInclusive<usize> = 1..=65_536;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    pub ca_crt: PathBuf,
    pub server_crt: PathBuf,
    pub server_key: PathBuf,
    #[serde(default)]
    pub allowed_spiffe_ids: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSection {
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default = "default_cgroup_root")]
    pub cgroup_root: String,
    #[serde(default = "default_log_buffer")]
    pub log_buffer_bytes: usize,
    /// The most an image's unpack may write into the image cache (file
    /// contents plus 512 bytes per entry, over all layers); an image that
    /// needs more is refused, naming the layer that crossed it. The free
    /// space of the cache's file system (less 5% of it, at most 256 MiB) bounds
    /// it too.
    #[serde(default = "default_image_unpack_limit")]
    pub image_unpack_limit_bytes: u64,
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}
fn default_handshake_timeout_ms() -> u64 {
    10_000
}
fn default_max_handshakes() -> usize {
    64
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/aurae")
}
fn default_cgroup_root() -> String {
    "aurae".into()
}
fn default_log_buffer() -> usize {
    1 << 20
}
fn default_image_unpack_limit() -> u64 {
    crate::oci::limits::DEFAULT_UNPACK_LIMIT
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            socket: default_socket(),
            tcp: None,
            vsock_port: None,
            insecure_socket: false,
            tls_handshake_timeout_ms: default_handshake_timeout_ms(),
            tls_max_handshakes: default_max_handshakes(),
        }
    }
}

impl Default for RuntimeSection {
    fn default() -> Self {
        Self {
            state_dir: default_state_dir(),
            cgroup_root: default_cgroup_root(),
            log_buffer_bytes: default_log_buffer(),
            image_unpack_limit_bytes: default_image_unpack_limit(),
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, path) in [
            ("auth.ca_crt", &self.auth.ca_crt),
            ("auth.server_crt", &self.auth.server_crt),
            ("auth.server_key", &self.auth.server_key),
        ] {
            if !path.is_file() {
                return Err(ConfigError::Invalid {
                    field,
                    reason: format!("{} does not exist", path.display()),
                });
            }
        }
        for id in &self.auth.allowed_spiffe_ids {
            crate::pki::validate_spiffe_id(id).map_err(|e| ConfigError::Invalid {
                field: "auth.allowed_spiffe_ids",
                reason: e.to_string(),
            })?;
        }
        let root = &self.runtime.cgroup_root;
        if root.is_empty()
            || root
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(ConfigError::Invalid {
                field: "runtime.cgroup_root",
                reason: format!("{root:?} must be a relative path without '.' or '..'"),
            });
        }
        if self.server.vsock_port == Some(u32::MAX) {
            return Err(ConfigError::Invalid {
                field: "server.vsock_port",
                reason: "4294967295 is VMADDR_PORT_ANY, not a port".into(),
            });
        }
        if !HANDSHAKE_TIMEOUT_MS.contains(&self.server.tls_handshake_timeout_ms) {
            return Err(ConfigError::Invalid {
                field: "server.tls_handshake_timeout_ms",
                reason: format!(
                    "must be between {} and {}",
                    HANDSHAKE_TIMEOUT_MS.start(),
                    HANDSHAKE_TIMEOUT_MS.end()
                ),
            });
        }
        if !MAX_HANDSHAKES.contains(&self.server.tls_max_handshakes) {
            return Err(ConfigError::Invalid {
                field: "server.tls_max_handshakes",
                reason: format!(
                    "must be between {} and {}",
                    MAX_HANDSHAKES.start(),
                    MAX_HANDSHAKES.end()
                ),
            });
        }
        if self.runtime.log_buffer_bytes < 1024 || self.runtime.log_buffer_bytes > 1 << 30 {
            return Err(ConfigError::Invalid {
                field: "runtime.log_buffer_bytes",
                reason: "must be between 1 KiB and 1 GiB".into(),
            });
        }
        if self.runtime.image_unpack_limit_bytes < 1 << 20 {
            return Err(ConfigError::Invalid {
                field: "runtime.image_unpack_limit_bytes",
                reason: "must be at least 1 MiB".into(),
            });
        }
        if let Some(step) = &self.instances.fail_at {
            if crate::instances::FailAt::parse(step).is_none() {
                return Err(ConfigError::Invalid {
                    field: "instances.fail_at",
                    reason: format!("{step:?} is not a spawn step"),
                });
            }
        }
        let bridge = &self.instances.bridge;
        if bridge.is_empty()
            || bridge.len() > 15
            || !bridge
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(ConfigError::Invalid {
                field: "instances.bridge",
                reason: format!("{bridge:?} is not a link name (1 to 15 of a-z, 0-9, '-')"),
            });
        }
        self.cri.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_and_unknown_keys_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("auraed.toml");
        std::fs::write(
            &path,
            "[auth]\nca_crt='/nope'\nserver_crt='/nope'\nserver_key='/nope'\n",
        )
        .expect("write");
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.starts_with("auth.ca_crt:"), "{err}");
        std::fs::write(
            &path,
            "[auth]\nca_crt='/x'\nserver_crt='/x'\nserver_key='/x'\nbogus=1\n",
        )
        .expect("write");
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn the_any_vsock_port_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pem = dir.path().join("x.pem");
        std::fs::write(&pem, "x").expect("write");
        let path = dir.path().join("auraed.toml");
        let p = pem.display();
        std::fs::write(
            &path,
            format!("[server]\nvsock_port=4294967295\n[auth]\nca_crt='{p}'\nserver_crt='{p}'\nserver_key='{p}'\n"),
        )
        .expect("write");
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.starts_with("server.vsock_port:"), "{err}");
    }

    #[test]
    fn the_image_unpack_limit_has_a_default_and_a_floor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pem = dir.path().join("x.pem");
        std::fs::write(&pem, "x").expect("write");
        let path = dir.path().join("auraed.toml");
        let p = pem.display();
        let auth = format!("[auth]\nca_crt='{p}'\nserver_crt='{p}'\nserver_key='{p}'\n");
        std::fs::write(&path, &auth).expect("write");
        let cfg = Config::load(&path).expect("defaults");
        assert_eq!(cfg.runtime.image_unpack_limit_bytes, 4 << 30);
        std::fs::write(
            &path,
            format!("{auth}[runtime]\nimage_unpack_limit_bytes = 8388608\n"),
        )
        .expect("write");
        let cfg = Config::load(&path).expect("set");
        assert_eq!(cfg.runtime.image_unpack_limit_bytes, 8 << 20);
        std::fs::write(
            &path,
            format!("{auth}[runtime]\nimage_unpack_limit_bytes = 1000\n"),
        )
        .expect("write");
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(
            err.starts_with("runtime.image_unpack_limit_bytes:"),
            "{err}"
        );
    }

    #[test]
    fn handshake_limits_default_and_out_of_range_values_are_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pem = dir.path().join("x.pem");
        std::fs::write(&pem, "x").expect("write");
        let path = dir.path().join("auraed.toml");
        let p = pem.display();
        let auth = format!("[auth]\nca_crt='{p}'\nserver_crt='{p}'\nserver_key='{p}'\n");
        std::fs::write(&path, &auth).expect("write");
        let cfg = Config::load(&path).expect("defaults");
        assert_eq!(cfg.server.tls_handshake_timeout_ms, 10_000);
        assert_eq!(cfg.server.tls_max_handshakes, 64);
        for (line, field) in [
            (
                "tls_handshake_timeout_ms = 0",
                "server.tls_handshake_timeout_ms:",
            ),
            ("tls_max_handshakes = 0", "server.tls_max_handshakes:"),
        ] {
            std::fs::write(&path, format!("[server]\n{line}\n{auth}")).expect("write");
            let err = Config::load(&path).unwrap_err().to_string();
            assert!(err.starts_with(field), "{err}");
        }
    }
}
