//! What the CRI endpoint keeps about its pod sandboxes and containers: each
//! sandbox is a pod instance of this auraed's, each container a cell in it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use aurae_proto::cri;

/// A new 64-hex-digit id, as the kubelet expects (and shortens to 13).
pub fn new_id() -> Result<String, std::io::Error> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(hex::encode(bytes))
}

/// Nanoseconds since the epoch, as the CRI reports times.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

pub struct Sandbox {
    pub id: String,
    /// The pod instance's name in this auraed.
    pub instance: String,
    pub config: cri::PodSandboxConfig,
    pub handler: String,
    pub created_at: i64,
    /// The pod IP: its CNI network's address, else its instance's address
    /// on auraed's bridge.
    pub ip: String,
    /// Its CNI network, detached when it stops.
    pub cni: tokio::sync::Mutex<Option<super::cni::Attachment>>,
    pub ready: Mutex<bool>,
    /// Its host ports' relays, closed when it stops.
    pub forwards: Mutex<Vec<crate::pods::ports::Forward>>,
    /// The resolv.conf its containers get, if its config sets DNS.
    pub resolv_conf: Option<PathBuf>,
}

impl Sandbox {
    pub fn is_ready(&self) -> bool {
        *self.ready.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn metadata(&self) -> Option<cri::PodSandboxMetadata> {
        self.config.metadata.clone()
    }
}

/// A container's state, as `ContainerStatus` reports it.
#[derive(Debug, Clone, Default)]
pub struct Run {
    pub state: i32,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    /// Its first process in the instance, once started.
    pub executable_id: String,
    /// A StartContainer is under way (a second one is refused).
    pub starting: bool,
}

pub struct Container {
    pub id: String,
    pub sandbox_id: String,
    /// Its cell in the pod's instance.
    pub cell: String,
    pub config: cri::ContainerConfig,
    /// The image as the request named it, its id and its digest name.
    pub image: String,
    pub image_id: String,
    pub image_ref: String,
    /// Where the instance sees the image.
    pub image_inside: PathBuf,
    /// The CRI log file (absolute), or none.
    pub log_path: Option<PathBuf>,
    /// Its volumes, as bound into the instance.
    pub mounts: Vec<aurae_proto::runtime::CellMount>,
    /// `run_as_username`, as the image resolves it: (uid, primary gid).
    pub user: Option<(u32, u32)>,
    /// Its supplementary groups.
    pub groups: Vec<u32>,
    /// Its seccomp profile (`None`: unconfined).
    pub seccomp: Option<aurae_proto::runtime::SeccompProfile>,
    pub created_at: i64,
    pub run: Mutex<Run>,
    /// Follows the container's output into its log file.
    pub logger: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Asks the logger to open its file again (`ReopenContainerLog`), and
    /// hears when it has.
    pub reopen: Mutex<Option<super::cri_log::Reopen>>,
}

impl Container {
    pub fn run(&self) -> Run {
        self.run.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn update(&self, f: impl FnOnce(&mut Run)) {
        f(&mut self.run.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Every sandbox and container, by id.
#[derive(Default)]
pub struct State {
    pub sandboxes: Mutex<HashMap<String, Arc<Sandbox>>>,
    pub containers: Mutex<HashMap<String, Arc<Container>>>,
}

/// Which of `ids` `wanted` names: the id, or a unique prefix of it.
fn resolve<'a>(ids: impl Iterator<Item = &'a String>, wanted: &str) -> Option<String> {
    let mut hit = None;
    for id in ids {
        if id == wanted {
            return Some(id.clone());
        }
        if !wanted.is_empty() && id.starts_with(wanted) {
            if hit.is_some() {
                return None;
            }
            hit = Some(id.clone());
        }
    }
    hit
}

impl State {
    pub fn sandbox(&self, field: &str, id: &str) -> Result<Arc<Sandbox>, tonic::Status> {
        let all = self.sandboxes.lock().unwrap_or_else(|e| e.into_inner());
        resolve(all.keys(), id)
            .and_then(|k| all.get(&k).cloned())
            .ok_or_else(|| tonic::Status::not_found(format!("{field}: no pod sandbox {id:?}")))
    }

    pub fn container(&self, field: &str, id: &str) -> Result<Arc<Container>, tonic::Status> {
        let all = self.containers.lock().unwrap_or_else(|e| e.into_inner());
        resolve(all.keys(), id)
            .and_then(|k| all.get(&k).cloned())
            .ok_or_else(|| tonic::Status::not_found(format!("{field}: no container {id:?}")))
    }

    pub fn containers_of(&self, sandbox_id: &str) -> Vec<Arc<Container>> {
        let all = self.containers.lock().unwrap_or_else(|e| e.into_inner());
        all.values()
            .filter(|c| c.sandbox_id == sandbox_id)
            .cloned()
            .collect()
    }

    pub fn all_sandboxes(&self) -> Vec<Arc<Sandbox>> {
        let all = self.sandboxes.lock().unwrap_or_else(|e| e.into_inner());
        all.values().cloned().collect()
    }

    pub fn all_containers(&self) -> Vec<Arc<Container>> {
        let all = self.containers.lock().unwrap_or_else(|e| e.into_inner());
        all.values().cloned().collect()
    }
}

/// Whether `labels` has every pair of `selector`.
pub fn matches(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_found_by_a_unique_prefix_only() {
        let ids = ["abc1".to_string(), "abc2".to_string(), "def".to_string()];
        assert_eq!(resolve(ids.iter(), "abc1").as_deref(), Some("abc1"));
        assert_eq!(resolve(ids.iter(), "d").as_deref(), Some("def"));
        assert_eq!(resolve(ids.iter(), "abc"), None);
        assert_eq!(resolve(ids.iter(), ""), None);
        assert!(new_id().unwrap().len() == 64);
    }
}
