//! The `[cri]` section of auraed's configuration: the Kubernetes CRI
//! endpoint.
//!
//! ```toml
//! [cri]
//! enabled = true                      # default false
//! socket = "/run/aurae/cri.sock"      # root-only, plain gRPC (as the kubelet expects)
//! root = "/var/lib/aurae/cri"         # default: <runtime.state_dir>/cri
//! default_handler = "auto"            # the empty RuntimeClass handler: auto, cell, microvm
//! cni_conf_dir = "/etc/cni/net.d"     # pod networks: the first CNI config here
//! cni_bin_dirs = ["/opt/cni/bin", "/usr/lib/cni"]   # where the plugins are
//! stream_address = "127.0.0.1:0"      # Exec/PortForward URLs (port 0: any free one)
//! stream_tls = true                   # https URLs (containerd's enable_tls_streaming)
//! stream_tls_cert = "/etc/aurae/stream.crt"  # with _key; both unset: self-signed at start
//! stream_tls_key = "/etc/aurae/stream.key"
//! pod_restart = "keep"                # pods outlive auraed (cell backend); or "remove"
//! sandbox_ready_timeout_s = 60        # how long a pod's instance may take to be ready
//!
//! # Registry mirrors, as containerd's hosts.toml: the registry's own name,
//! # or "*" for every registry without an entry of its own.
//! [cri.registries."registry.k8s.io"]
//! mirrors = ["http://127.0.0.1:5000"]
//! skip_upstream = true                # never ask the registry itself
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::config::ConfigError;

pub const DEFAULT_CRI_SOCKET: &str = "/run/aurae/cri.sock";

/// What becomes of running pods when auraed stops or crashes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodRestart {
    /// They run on, and the next auraed takes them back: listed again,
    /// with their logs, exec and host ports (the kubelet relies on it).
    #[default]
    Keep,
    /// They stop with auraed; the next one removes what a crash left.
    Remove,
}

/// The backend the empty RuntimeClass handler means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultHandler {
    /// The microVM where KVM boots standard kernels, else a cell.
    #[default]
    Auto,
    Cell,
    Microvm,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CriSection {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Where pulled images and the pods' records are kept; unset:
    /// `<runtime.state_dir>/cri`.
    pub root: Option<PathBuf>,
    #[serde(default)]
    pub default_handler: DefaultHandler,
    #[serde(default)]
    pub registries: BTreeMap<String, RegistryHosts>,
    /// The CNI network configurations (`*.conflist`, `*.conf`, `*.json`;
    /// the first by name is the pods' network).
    #[serde(default = "default_cni_conf_dir")]
    pub cni_conf_dir: PathBuf,
    /// Where CNI plugins are looked for, in order.
    #[serde(default = "default_cni_bin_dirs")]
    pub cni_bin_dirs: Vec<PathBuf>,
    /// Where the streaming server listens (`Exec`, `PortForward`). Its
    /// single-use tokens are the only credential: keep it on loopback, or
    /// on an address only the API server reaches.
    #[serde(default = "default_stream_address")]
    pub stream_address: std::net::SocketAddr,
    /// The streaming server speaks HTTPS (TLS 1.2 or 1.3).
    #[serde(default)]
    pub stream_tls: bool,
    /// Its certificate chain (PEM) and key; both unset with `stream_tls`:
    /// a self-signed certificate made at start, for `localhost` and the
    /// stream address.
    pub stream_tls_cert: Option<PathBuf>,
    pub stream_tls_key: Option<PathBuf>,
    #[serde(default)]
    pub pod_restart: PodRestart,
    /// How long a pod sandbox's instance may take to be ready (a microVM
    /// boots; a slow machine may need more), in seconds.
    #[serde(default = "default_sandbox_ready_timeout_s")]
    pub sandbox_ready_timeout_s: u64,
}

fn default_sandbox_ready_timeout_s() -> u64 {
    60
}

fn default_stream_address() -> std::net::SocketAddr {
    std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0))
}

/// Where a registry's images are pulled from.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryHosts {
    /// Tried in order before the registry itself: `http://host:port` or
    /// `https://host:port`.
    #[serde(default)]
    pub mirrors: Vec<String>,
    /// Pull only from the mirrors (an air-gapped node).
    #[serde(default)]
    pub skip_upstream: bool,
}

fn default_cni_conf_dir() -> PathBuf {
    PathBuf::from("/etc/cni/net.d")
}

fn default_cni_bin_dirs() -> Vec<PathBuf> {
    vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_CRI_SOCKET)
}

impl Default for CriSection {
    fn default() -> Self {
        Self {
            enabled: false,
            socket: default_socket(),
            root: None,
            default_handler: DefaultHandler::default(),
            registries: BTreeMap::new(),
            cni_conf_dir: default_cni_conf_dir(),
            cni_bin_dirs: default_cni_bin_dirs(),
            stream_address: default_stream_address(),
            stream_tls: false,
            stream_tls_cert: None,
            stream_tls_key: None,
            pod_restart: PodRestart::default(),
            sandbox_ready_timeout_s: default_sandbox_ready_timeout_s(),
        }
    }
}

/// A mirror, parsed: the host (with port) and whether it speaks plain HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub host: String,
    pub plain_http: bool,
}

impl Mirror {
    pub fn parse(url: &str) -> Option<Mirror> {
        let (plain_http, rest) = if let Some(r) = url.strip_prefix("http://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("https://") {
            (false, r)
        } else {
            return None;
        };
        let host = rest.trim_end_matches('/');
        let ok = !host.is_empty()
            && !host.contains('/')
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
        ok.then(|| Mirror {
            host: host.to_string(),
            plain_http,
        })
    }
}

impl CriSection {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.socket.is_absolute() {
            return Err(ConfigError::Invalid {
                field: "cri.socket",
                reason: format!("{} is not an absolute path", self.socket.display()),
            });
        }
        if let Some(root) = &self.root {
            if !root.is_absolute() {
                return Err(ConfigError::Invalid {
                    field: "cri.root",
                    reason: format!("{} is not an absolute path", root.display()),
                });
            }
        }
        if !(1..=3600).contains(&self.sandbox_ready_timeout_s) {
            return Err(ConfigError::Invalid {
                field: "cri.sandbox_ready_timeout_s",
                reason: format!(
                    "{} is not between 1 and 3600 seconds",
                    self.sandbox_ready_timeout_s
                ),
            });
        }
        match (&self.stream_tls_cert, &self.stream_tls_key) {
            (Some(_), None) => {
                return Err(ConfigError::Invalid {
                    field: "cri.stream_tls_key",
                    reason: "missing: stream_tls_cert is set, and needs its key".into(),
                })
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid {
                    field: "cri.stream_tls_cert",
                    reason: "missing: stream_tls_key is set, and needs its certificate".into(),
                })
            }
            (Some(_), Some(_)) if !self.stream_tls => {
                return Err(ConfigError::Invalid {
                    field: "cri.stream_tls",
                    reason: "false, but stream_tls_cert and stream_tls_key are set".into(),
                })
            }
            _ => {}
        }
        for (registry, hosts) in &self.registries {
            for m in &hosts.mirrors {
                if Mirror::parse(m).is_none() {
                    return Err(ConfigError::Invalid {
                        field: "cri.registries.mirrors",
                        reason: format!(
                            "{m:?} (for {registry:?}) is not http://host[:port] or https://host[:port]"
                        ),
                    });
                }
            }
            if hosts.skip_upstream && hosts.mirrors.is_empty() {
                return Err(ConfigError::Invalid {
                    field: "cri.registries.skip_upstream",
                    reason: format!("{registry:?} has no mirror to pull from instead"),
                });
            }
        }
        Ok(())
    }

    /// Where `registry`'s images come from, in order: its mirrors (else
    /// those of "*"), then the registry itself unless told not to.
    pub fn hosts_for(&self, registry: &str) -> Vec<Mirror> {
        let hosts = self
            .registries
            .get(registry)
            .or_else(|| self.registries.get("*"));
        let mut out: Vec<Mirror> = hosts
            .map(|h| h.mirrors.iter().filter_map(|m| Mirror::parse(m)).collect())
            .unwrap_or_default();
        if !hosts.is_some_and(|h| h.skip_upstream) {
            out.push(Mirror {
                host: registry.to_string(),
                plain_http: false,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_tls_files_come_in_pairs() {
        for (text, field) in [
            (
                "stream_tls = true\nstream_tls_cert = \"/c\"\n",
                "cri.stream_tls_key",
            ),
            (
                "stream_tls = true\nstream_tls_key = \"/k\"\n",
                "cri.stream_tls_cert",
            ),
            (
                "stream_tls_cert = \"/c\"\nstream_tls_key = \"/k\"\n",
                "cri.stream_tls",
            ),
        ] {
            let cfg: CriSection = toml::from_str(text).unwrap();
            match cfg.validate() {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        for ok in [
            "stream_tls = true\n",
            "stream_tls = true\nstream_tls_cert = \"/c\"\nstream_tls_key = \"/k\"\n",
        ] {
            let cfg: CriSection = toml::from_str(ok).unwrap();
            cfg.validate().expect(ok);
        }
    }

    #[test]
    fn mirrors_come_first_and_the_wildcard_covers_the_rest() {
        let cfg: CriSection = toml::from_str(
            r#"
            [registries."registry.k8s.io"]
            mirrors = ["http://127.0.0.1:5000"]
            skip_upstream = true
            [registries."*"]
            mirrors = ["https://mirror.example:443/"]
            "#,
        )
        .unwrap();
        cfg.validate().unwrap();
        let k8s = cfg.hosts_for("registry.k8s.io");
        assert_eq!(
            k8s,
            vec![Mirror {
                host: "127.0.0.1:5000".into(),
                plain_http: true
            }]
        );
        let other = cfg.hosts_for("gcr.io");
        assert_eq!(other.len(), 2);
        assert_eq!(other[0].host, "mirror.example:443");
        assert_eq!(other[1].host, "gcr.io");
    }

    #[test]
    fn a_bad_mirror_is_refused_by_name() {
        let cfg: CriSection =
            toml::from_str("[registries.\"x\"]\nmirrors = [\"ftp://a\"]\n").unwrap();
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.starts_with("cri.registries.mirrors"), "{e}");
        let cfg: CriSection = toml::from_str("[registries.\"x\"]\nskip_upstream = true\n").unwrap();
        assert!(cfg.validate().is_err());
    }
}
