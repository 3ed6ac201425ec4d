//! Pod networks from CNI plugins, as containerd and CRI-O make them: the
//! first network configuration in `[cri] cni_conf_dir` (by file name, as
//! libcni picks it), its plugins run in order with `ADD` for a pod's
//! network namespace and in reverse with `DEL` when the pod stops (the CNI
//! spec 1.0: configuration on stdin, result on stdout, `CNI_*` variables).
//!
//! The pod's instance already has `eth0` on auraed's own bridge (its link
//! to its parent); the CNI network is `eth1`, and its first address is the
//! pod IP. Host ports stay auraed's relay (`crate::pods::ports`), pointed
//! at that address: `portMappings` are not passed to plugins.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

/// The interface the CNI network gets in a pod.
pub const IFNAME: &str = "eth1";
/// How long one plugin may run.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest configuration file or plugin answer read.
const MAX_JSON: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("reading the CNI configuration {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the CNI configuration {path} is not usable: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("no CNI plugin {plugin:?} in {dirs:?}")]
    NoPlugin { plugin: String, dirs: Vec<PathBuf> },
    #[error("running the CNI plugin {plugin} ({command})")]
    Spawn {
        plugin: String,
        command: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the CNI plugin {plugin} ({command}) took more than {PLUGIN_TIMEOUT:?}")]
    Timeout {
        plugin: String,
        command: &'static str,
    },
    #[error("the CNI plugin {plugin} ({command}) failed: {message}")]
    Plugin {
        plugin: String,
        command: &'static str,
        message: String,
    },
    #[error("the CNI network {network} gave the pod no IP address")]
    NoAddress { network: String },
    #[error("the pod's network namespace")]
    Netns(#[source] Box<crate::net::NetError>),
}

/// A network configuration list.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Network {
    pub name: String,
    pub file: PathBuf,
    cni_version: String,
    plugins: Vec<Value>,
}

fn config_err(path: &Path, reason: impl Into<String>) -> CniError {
    CniError::Config {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The first network configuration in `dir` by name (`*.conflist`,
/// `*.conf`, `*.json`); `None` if there is none (or no such folder).
pub fn load(dir: &Path) -> Result<Option<Network>, CniError> {
    let read = |path: &Path, source| CniError::Read {
        path: path.to_path_buf(),
        source,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read(dir, e)),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x == "conflist" || x == "conf" || x == "json")
        })
        .collect();
    files.sort();
    let Some(path) = files.into_iter().next() else {
        return Ok(None);
    };
    let file = std::fs::File::open(&path).map_err(|e| read(&path, e))?;
    let len = file.metadata().map_err(|e| read(&path, e))?.len();
    if len > MAX_JSON {
        return Err(config_err(
            &path,
            format!("{len} bytes, more than {MAX_JSON}"),
        ));
    }
    let v: Value =
        serde_json::from_reader(file).map_err(|e| config_err(&path, format!("not JSON: {e}")))?;
    let name = v["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| config_err(&path, "no \"name\""))?
        .to_string();
    let cni_version = v["cniVersion"].as_str().unwrap_or("0.4.0").to_string();
    // A .conflist has "plugins"; a .conf is one plugin.
    let plugins = match v.get("plugins") {
        Some(Value::Array(p)) if !p.is_empty() => p.clone(),
        Some(_) => return Err(config_err(&path, "\"plugins\" is not a non-empty list")),
        None => vec![v.clone()],
    };
    for (i, p) in plugins.iter().enumerate() {
        let ok = p["type"]
            .as_str()
            .is_some_and(|t| !t.is_empty() && !t.contains('/') && t != "." && t != "..");
        if !ok {
            return Err(config_err(
                &path,
                format!("plugins[{i}].type is not a plugin name"),
            ));
        }
    }
    Ok(Some(Network {
        name,
        file: path,
        cni_version,
        plugins,
    }))
}

/// A pod attached to a network: what `DEL` needs.
#[derive(Debug)]
pub struct Attachment {
    network: Network,
    container_id: String,
    args: String,
    /// Holds the pod's network namespace while it is attached; plugins
    /// reach it through `/proc/<auraed>/fd/<fd>`.
    netns: OwnedFd,
    pub ip: IpAddr,
    /// The address's prefix length and gateway, as ADD gave them (unknown,
    /// 0 and `None`, for an attachment taken back after a restart).
    pub prefix: u8,
    pub gateway: Option<IpAddr>,
}

/// What plugins run with.
pub struct Invocation<'a> {
    pub bin_dirs: &'a [PathBuf],
    pub container_id: &'a str,
    pub pod_name: &'a str,
    pub pod_namespace: &'a str,
}

/// The file in a sandbox's folder that holds its [`Saved`] attachment.
pub const SAVED: &str = "cni.json";

/// What `DEL` needs of an attachment once its namespace is gone (after a
/// crash of auraed), kept in the sandbox's folder while it is attached.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Saved {
    network: Network,
    container_id: String,
    args: String,
}

impl Attachment {
    pub fn saved(&self) -> Saved {
        Saved {
            network: self.network.clone(),
            container_id: self.container_id.clone(),
            args: self.args.clone(),
        }
    }
}

/// The attachment `saved` describes, of a pod taken back after a restart:
/// its namespace (`netns`, the pod's instance's) held again, and its IP.
pub async fn reattach(
    saved: Saved,
    netns: std::os::fd::BorrowedFd<'_>,
    ip: IpAddr,
) -> Result<Attachment, CniError> {
    let netns = crate::net::netns_file(netns)
        .await
        .map_err(|e| CniError::Netns(Box::new(e)))?;
    Ok(Attachment {
        network: saved.network,
        container_id: saved.container_id,
        args: saved.args,
        netns,
        ip,
        prefix: 0,
        gateway: None,
    })
}

/// `DEL` of an attachment whose namespace is gone (`CNI_NETNS` empty, as
/// the spec allows): plugins release what they hold for it (an IPAM's
/// address).
pub async fn del_saved(saved: &Saved, bin_dirs: &[PathBuf]) -> Result<(), CniError> {
    let env = vec![
        ("CNI_CONTAINERID", saved.container_id.clone()),
        ("CNI_NETNS", String::new()),
        ("CNI_IFNAME", IFNAME.to_string()),
        ("CNI_ARGS", saved.args.clone()),
    ];
    del_all(&saved.network, &env, bin_dirs).await
}

fn netns_path(fd: &OwnedFd) -> String {
    format!("/proc/{}/fd/{}", std::process::id(), fd.as_raw_fd())
}

fn find_plugin(dirs: &[PathBuf], plugin: &str) -> Result<PathBuf, CniError> {
    dirs.iter()
        .map(|d| d.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| CniError::NoPlugin {
            plugin: plugin.to_string(),
            dirs: dirs.to_vec(),
        })
}

/// Runs one plugin; its parsed stdout (`Null` when empty).
async fn run_plugin(
    bin_dirs: &[PathBuf],
    command: &'static str,
    conf: &Value,
    env: &[(&str, String)],
) -> Result<Value, CniError> {
    let plugin = conf["type"].as_str().unwrap_or_default().to_string();
    let exe = find_plugin(bin_dirs, &plugin)?;
    let spawn_err = |source| CniError::Spawn {
        plugin: plugin.clone(),
        command,
        source,
    };
    let path = std::env::join_paths(bin_dirs).unwrap_or_default();
    let mut child = tokio::process::Command::new(&exe)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", path)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_err)?;
    let input = serde_json::to_vec(conf).unwrap_or_default();
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&input).await.map_err(spawn_err)?;
    }
    let out = tokio::time::timeout(PLUGIN_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| CniError::Timeout {
            plugin: plugin.clone(),
            command,
        })?
        .map_err(spawn_err)?;
    let stdout = &out.stdout[..out.stdout.len().min(MAX_JSON as usize)];
    let parsed: Value = if stdout.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(stdout).unwrap_or(Value::Null)
    };
    if !out.status.success() {
        let message = parsed["msg"]
            .as_str()
            .map(|m| match parsed["details"].as_str() {
                Some(d) if !d.is_empty() => format!("{m}: {d}"),
                _ => m.to_string(),
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_string());
        return Err(CniError::Plugin {
            plugin,
            command,
            message,
        });
    }
    Ok(parsed)
}

/// A plugin's configuration as the spec hands it over: the list's name
/// and version, and the result so far.
fn plugin_conf(network: &Network, plugin: &Value, prev: Option<&Value>) -> Value {
    let mut conf = plugin.clone();
    conf["name"] = json!(network.name);
    conf["cniVersion"] = json!(network.cni_version);
    match prev {
        Some(p) if !p.is_null() => conf["prevResult"] = p.clone(),
        _ => {}
    }
    conf
}

fn env(a: &Attachment) -> Vec<(&'static str, String)> {
    vec![
        ("CNI_CONTAINERID", a.container_id.clone()),
        ("CNI_NETNS", netns_path(&a.netns)),
        ("CNI_IFNAME", IFNAME.to_string()),
        ("CNI_ARGS", a.args.clone()),
    ]
}

/// Attaches the network namespace `netns` (a pidfd or nsfs fd) to
/// `network`. On failure what was added is deleted again.
pub async fn add(
    network: &Network,
    how: &Invocation<'_>,
    netns: std::os::fd::BorrowedFd<'_>,
) -> Result<Attachment, CniError> {
    let netns = crate::net::netns_file(netns)
        .await
        .map_err(|e| CniError::Netns(Box::new(e)))?;
    let attachment = Attachment {
        network: network.clone(),
        container_id: how.container_id.to_string(),
        args: format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
            how.pod_namespace, how.pod_name, how.container_id
        ),
        netns,
        ip: IpAddr::from([0, 0, 0, 0]),
        prefix: 0,
        gateway: None,
    };
    let env = env(&attachment);
    let mut result = Value::Null;
    for plugin in &network.plugins {
        let conf = plugin_conf(network, plugin, Some(&result));
        match run_plugin(how.bin_dirs, "ADD", &conf, &env).await {
            Ok(r) if !r.is_null() => result = r,
            Ok(_) => {}
            Err(e) => {
                if let Err(undo) = del(&attachment, how.bin_dirs).await {
                    tracing::error!(
                        "CNI: deleting {} after a failed ADD: {undo}",
                        how.container_id
                    );
                }
                return Err(e);
            }
        }
    }
    // The first address of the result ("10.88.0.5/16"), its gateway.
    let first = result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|i| {
            let (ip, prefix) = i["address"].as_str()?.split_once('/')?;
            let ip: IpAddr = ip.parse().ok()?;
            let prefix: u8 = prefix.parse().ok()?;
            let gateway = i["gateway"].as_str().and_then(|g| g.parse().ok());
            Some((ip, prefix, gateway))
        });
    let Some((ip, prefix, gateway)) = first else {
        if let Err(undo) = del(&attachment, how.bin_dirs).await {
            tracing::error!("CNI: deleting {}: {undo}", how.container_id);
        }
        return Err(CniError::NoAddress {
            network: network.name.clone(),
        });
    };
    Ok(Attachment {
        ip,
        prefix,
        gateway,
        ..attachment
    })
}

/// Detaches: every plugin's `DEL`, in reverse order (each one runs even
/// if an earlier one failed; the first failure is returned).
pub async fn del(a: &Attachment, bin_dirs: &[PathBuf]) -> Result<(), CniError> {
    del_all(&a.network, &env(a), bin_dirs).await
}

async fn del_all(
    network: &Network,
    env: &[(&str, String)],
    bin_dirs: &[PathBuf],
) -> Result<(), CniError> {
    let mut first = None;
    for plugin in network.plugins.iter().rev() {
        let conf = plugin_conf(network, plugin, None);
        if let Err(e) = run_plugin(bin_dirs, "DEL", &conf, env).await {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_configuration_by_name_is_the_network() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        std::fs::write(
            dir.path().join("20-b.conflist"),
            r#"{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("10-a.conf"),
            r#"{"cniVersion":"0.4.0","name":"a","type":"ptp"}"#,
        )
        .unwrap();
        let n = load(dir.path()).unwrap().unwrap();
        assert_eq!((n.name.as_str(), n.plugins.len()), ("a", 1));
        std::fs::write(
            dir.path().join("05-bad.conflist"),
            r#"{"name":"x","plugins":[{"type":"../sh"}]}"#,
        )
        .unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("plugins[0].type"), "{e}");
    }

    #[test]
    fn a_plugin_gets_the_lists_name_version_and_the_result_so_far() {
        let n = Network {
            name: "pods".into(),
            file: PathBuf::from("x"),
            cni_version: "1.0.0".into(),
            plugins: vec![json!({"type": "portmap"})],
        };
        let prev = json!({"ips": [{"address": "10.88.0.2/16"}]});
        let c = plugin_conf(&n, &n.plugins[0], Some(&prev));
        assert_eq!(c["name"], "pods");
        assert_eq!(c["cniVersion"], "1.0.0");
        assert_eq!(c["prevResult"], prev);
        assert!(plugin_conf(&n, &n.plugins[0], None)
            .get("prevResult")
            .is_none());
    }
}
