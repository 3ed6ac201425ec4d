//! Pods across a restart of auraed. With `[cri] pod_restart = "keep"` (the
//! default) a pod's instance outlives auraed (see `instances::kept`), and
//! the sandbox and its containers are recorded as they change (see
//! [`super::records`]): the next auraed lists them again, follows their
//! logs from where the last line was written, serves their exec, attach
//! and port-forward, and relays their host ports again. A sandbox whose
//! instance is gone is listed as not ready (its containers exited) until it
//! is removed. With `remove`, what a previous auraed left is released.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};

use aurae_proto::cri;

use super::config::PodRestart;
use super::state::{Container, Sandbox};
use super::{cni, records, Cri};
use crate::registry::Workload;

const RUNNING: i32 = cri::ContainerState::ContainerRunning as i32;

/// What became of a recorded sandbox at a restart.
enum Restored {
    /// Taken back: its instance runs (and is claimed), or is gone (the
    /// sandbox is listed not ready until it is removed).
    Taken(Option<String>),
    /// Not taken back: its folder is released.
    Not,
}

impl Cri {
    fn keeps_pods(&self) -> bool {
        self.cfg.pod_restart == PodRestart::Keep
    }

    /// Records the container as it is now, if pods are kept. A record that
    /// can't be written is logged: the container runs on, but a restart
    /// would not show it as it is.
    pub(super) fn save(&self, c: &Container) {
        if !self.keeps_pods() {
            return;
        }
        let dir = self.sandboxes_dir.join(&c.sandbox_id);
        if let Err(e) = records::save_container(&dir, c) {
            tracing::error!("container {}: {}", c.id, crate::error::chain(&e));
        }
    }

    /// Removes the container's record.
    pub(super) fn forget_saved(&self, c: &Container) {
        let dir = self.sandboxes_dir.join(&c.sandbox_id);
        if let Err(e) = records::remove_container(&dir, &c.id) {
            tracing::error!("container {}: removing its record: {e}", c.id);
        }
    }

    /// Takes back the sandboxes a previous auraed recorded (or releases
    /// them, see the module); then frees the kept instances no sandbox
    /// claims.
    pub(super) async fn restore(self: &Arc<Self>) {
        let mut claimed = Vec::new();
        if let Ok(dirs) = std::fs::read_dir(&self.sandboxes_dir) {
            for dir in dirs.flatten().map(|e| e.path()) {
                match self.restore_sandbox(&dir).await {
                    Restored::Taken(Some(instance)) => claimed.push(instance),
                    Restored::Taken(None) => {}
                    Restored::Not => self.release(&dir).await,
                }
            }
        }
        self.runtime.free_unclaimed(&claimed).await;
    }

    /// The CNI attachment a crashed auraed left in `dir` is deleted (its
    /// namespace is gone; the IPAM releases the address), then the folder.
    async fn release(&self, dir: &Path) {
        if let Err(e) = self.release_cni(dir).await {
            tracing::error!("{}", crate::error::chain(&e));
        }
        if let Err(e) = std::fs::remove_dir_all(dir) {
            tracing::error!("removing {}: {e}", dir.display());
        }
    }

    /// Deletes the CNI attachment recorded in a sandbox's folder `dir`
    /// whose namespace is gone (see [`cni::del_saved`]), and its record; on
    /// failure the record stays, for a later try (`RemovePodSandbox`).
    pub(super) async fn release_cni(&self, dir: &Path) -> Result<(), ReleaseError> {
        release_cni(dir, &self.cfg.cni_bin_dirs).await
    }
}

/// Releases every sandbox a previous auraed recorded under `cfg`'s root
/// (`state_dir` its default's base): for an auraed started with the CRI
/// disabled, which frees the kept pods' instances.
pub async fn release_all(cfg: &super::config::CriSection, state_dir: &Path) {
    let root = cfg.root.clone().unwrap_or_else(|| state_dir.join("cri"));
    let Ok(dirs) = std::fs::read_dir(root.join("sandboxes")) else {
        return;
    };
    for dir in dirs.flatten().map(|e| e.path()) {
        if let Err(e) = release_cni(&dir, &cfg.cni_bin_dirs).await {
            tracing::error!("{}", crate::error::chain(&e));
        }
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::error!("removing {}: {e}", dir.display());
        }
    }
}

/// Why a recorded CNI attachment could not be released.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("reading {0}")]
    Read(std::path::PathBuf, #[source] std::io::Error),
    #[error("{0}: not a CNI attachment's record")]
    Parse(std::path::PathBuf, #[source] serde_json::Error),
    #[error("releasing the CNI attachment in {0}")]
    Del(std::path::PathBuf, #[source] cni::CniError),
    #[error("removing {0}")]
    Remove(std::path::PathBuf, #[source] std::io::Error),
}

/// [`Cri::release_cni`], with the plugins' folders.
async fn release_cni(dir: &Path, bin_dirs: &[std::path::PathBuf]) -> Result<(), ReleaseError> {
    let record = dir.join(cni::SAVED);
    let bytes = match std::fs::read(&record) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ReleaseError::Read(record, e)),
    };
    let saved = serde_json::from_slice::<cni::Saved>(&bytes)
        .map_err(|e| ReleaseError::Parse(record.clone(), e))?;
    cni::del_saved(&saved, bin_dirs)
        .await
        .map_err(|e| ReleaseError::Del(dir.to_path_buf(), e))?;
    tracing::info!(
        "released the CNI attachment of a sandbox left by a previous auraed ({})",
        dir.display()
    );
    std::fs::remove_file(&record).map_err(|e| ReleaseError::Remove(record, e))
}

impl Cri {
    /// Takes back the sandbox recorded in `dir` (see [`Restored`]; why not
    /// is logged).
    async fn restore_sandbox(self: &Arc<Self>, dir: &Path) -> Restored {
        if !self.keeps_pods() {
            return Restored::Not;
        }
        let (r, config) = match records::read_sandbox(dir) {
            Ok(Some(found)) => found,
            Ok(None) => return Restored::Not,
            Err(e) => {
                tracing::error!("{}", crate::error::chain(&e));
                return Restored::Not;
            }
        };
        let running = match self.runtime.get(&r.instance, "id") {
            Ok(Workload::Instance(i)) if i.running() => Some(i),
            _ => None,
        };
        let ip: Option<IpAddr> = r.ip.parse().ok();
        if running.is_some() && ip.is_none() {
            tracing::error!(
                "sandbox {}: its IP {:?} does not parse; not taken back",
                r.id,
                r.ip
            );
            return Restored::Not;
        }
        let mut cni = None;
        let mut forwards = Vec::new();
        if let (Some(instance), Some(ip)) = (&running, ip) {
            // Unreadable, it would be forgotten and its address never
            // released: the pod is not taken back then.
            let saved = match std::fs::read(dir.join(cni::SAVED)) {
                Ok(b) => match serde_json::from_slice::<cni::Saved>(&b) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        tracing::error!("sandbox {}: its CNI record: {e}; not taken back", r.id);
                        return Restored::Not;
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    tracing::error!("sandbox {}: its CNI record: {e}; not taken back", r.id);
                    return Restored::Not;
                }
            };
            if let Some(saved) = saved {
                let reattached = match instance.pidfd() {
                    Ok(fd) => {
                        use std::os::fd::AsFd;
                        cni::reattach(saved, fd.as_fd(), ip)
                            .await
                            .map_err(|e| crate::error::chain(&e))
                    }
                    Err(e) => Err(e.to_string()),
                };
                match reattached {
                    Ok(a) => cni = Some(a),
                    Err(e) => {
                        tracing::error!("sandbox {}: its CNI network: {e}; not taken back", r.id);
                        return Restored::Not;
                    }
                }
            }
            forwards = host_ports(&r.id, &config, ip);
        } else if let Err(e) = self.release_cni(dir).await {
            // Stopped, or its instance is gone: listed as not ready; its
            // record stays for RemovePodSandbox to try again.
            tracing::error!("sandbox {}: {}", r.id, crate::error::chain(&e));
        }
        let ready = running.is_some();
        let sandbox = Arc::new(Sandbox {
            id: r.id.clone(),
            instance: r.instance.clone(),
            config,
            handler: r.handler,
            created_at: r.created_at,
            ip: r.ip,
            cni: tokio::sync::Mutex::new(cni),
            ready: Mutex::new(ready),
            forwards: Mutex::new(forwards),
            resolv_conf: r.resolv_conf,
        });
        self.state
            .sandboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(r.id.clone(), sandbox);
        let containers = records::read_containers(dir);
        let count = containers.len();
        for c in containers {
            let c = Arc::new(c);
            self.state
                .containers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(c.id.clone(), c.clone());
            match &running {
                Some(instance) if c.run().state == RUNNING => {
                    self.follow_again(&c, instance.channel()).await;
                }
                _ if c.run().state == RUNNING => {
                    self.container_gone(&c, "its pod's instance was gone after a restart");
                }
                _ => {}
            }
        }
        tracing::info!(
            "sandbox {} taken back ({}; {count} container(s))",
            r.id,
            if ready { "ready" } else { "not ready" }
        );
        Restored::Taken(running.map(|_| r.instance))
    }

    /// Follows a running container's output into its log again, after the
    /// last line written there, and records its exit.
    async fn follow_again(
        self: &Arc<Self>,
        c: &Arc<Container>,
        channel: tonic::transport::Channel,
    ) {
        let file = match &c.log_path {
            Some(p) => match super::cri_log::open(p).await {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::error!("container {}: opening {}: {e}", c.id, p.display());
                    None
                }
            },
            None => None,
        };
        let after = c.log_path.as_deref().and_then(super::cri_log::last_time);
        let (reopen, follow) = super::cri_log::follow(
            channel.clone(),
            c.run().executable_id,
            c.log_path.clone(),
            file,
            after,
        );
        *c.reopen.lock().unwrap_or_else(|e| e.into_inner()) = Some(reopen);
        let (cri, container) = (self.clone(), c.clone());
        let task = tokio::spawn(async move {
            follow.await;
            cri.record_exit(&container, channel).await;
        });
        *c.logger.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
    }

    /// Whether the sandbox's instance is kept across a restart (its CNI
    /// network stays attached when auraed stops).
    pub(super) fn kept(&self, s: &Sandbox) -> bool {
        matches!(
            self.runtime.get(&s.instance, "id"),
            Ok(Workload::Instance(i)) if i.keep.load(std::sync::atomic::Ordering::SeqCst) && i.running()
        )
    }
}

/// The host ports of a pod taken back, relayed again to `ip`; one that
/// can't be had is logged (the pod runs without it).
fn host_ports(
    id: &str,
    config: &cri::PodSandboxConfig,
    ip: IpAddr,
) -> Vec<crate::pods::ports::Forward> {
    let host_net = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|c| c.namespace_options.as_ref())
        .is_some_and(|n| n.network == cri::NamespaceMode::Node as i32);
    if host_net {
        return Vec::new();
    }
    let mut forwards = Vec::new();
    for (i, p) in config.port_mappings.iter().enumerate() {
        let (Ok(host), Ok(port)) = (u16::try_from(p.host_port), u16::try_from(p.container_port))
        else {
            continue;
        };
        if host == 0 {
            continue;
        }
        let field = format!("config.port_mappings[{i}].host_port");
        match crate::pods::ports::bind(&field, host)
            .and_then(|l| crate::pods::ports::start(l, SocketAddr::new(ip, port)))
        {
            Ok(f) => forwards.push(f),
            Err(e) => tracing::error!("sandbox {id}: host port {host} not relayed again: {e}"),
        }
    }
    forwards
}
