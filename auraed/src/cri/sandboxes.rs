//! Pod sandboxes: each one a pod instance of this auraed, chosen by the
//! RuntimeClass handler, with the pod's host ports relayed to it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use aurae_proto::cri;
use tonic::Status;

use super::config::DefaultHandler;
use super::state::{new_id, now_ns, Sandbox};
use super::Cri;
use crate::instances::backend::{Backend, Preference};
use crate::instances::InstanceSpec;

/// The RuntimeClass handlers this runtime answers to.
pub const CELL_HANDLER: &str = "aurae-cell";
pub const MICROVM_HANDLER: &str = "aurae-microvm";

/// Where a microVM pod's resolv.conf is in its VM.
pub const GUEST_RESOLV: &str = "/etc/aurae/pod/resolv.conf";

/// The node's namespaces a pod asks for: `hostIPC`, `hostPID` and
/// `hostNetwork` make the pod's instance share the host's.
#[derive(Debug, Clone, Copy, Default)]
struct NodeNamespaces {
    ipc: bool,
    pid: bool,
    net: bool,
}

fn node_namespaces(config: &cri::PodSandboxConfig) -> Result<NodeNamespaces, Status> {
    let Some(ns) = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|c| c.namespace_options.as_ref())
    else {
        return Ok(NodeNamespaces::default());
    };
    let node = cri::NamespaceMode::Node as i32;
    if ns.pid == cri::NamespaceMode::Target as i32 {
        return Err(Status::unimplemented(
            "config.linux.security_context.namespace_options.pid: TARGET is not built yet",
        ));
    }
    Ok(NodeNamespaces {
        ipc: ns.ipc == node,
        pid: ns.pid == node,
        net: ns.network == node,
    })
}

/// Removes a sandbox's files after a failed start; what can't be removed
/// is logged (a later RemovePodSandbox of it does not exist).
fn remove_files(dir: &std::path::Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::error!("removing {} after a failed start: {e}", dir.display()),
    }
}

/// A value the kernel refuses (EINVAL) or a name that isn't a pod's is the
/// request's fault; anything else is this host's.
fn sysctl_status(e: crate::sys::ns_sysctl::SysctlError) -> Status {
    use crate::sys::ns_sysctl::SysctlError as S;
    let text = format!("config.linux.sysctls: {}", crate::error::chain(&e));
    match &e {
        S::NotNamespaced(_) | S::Name(_) | S::Value(_) => Status::invalid_argument(text),
        S::Write { source, .. } if source.raw_os_error() == Some(libc::EINVAL) => {
            Status::invalid_argument(text)
        }
        _ => Status::internal(text),
    }
}

impl Cri {
    fn preference(&self, handler: &str) -> Result<Preference, Status> {
        match handler {
            CELL_HANDLER => Ok(Preference::Cell),
            MICROVM_HANDLER => Ok(Preference::MicroVm),
            "" => Ok(match self.cfg.default_handler {
                DefaultHandler::Auto => Preference::Auto,
                DefaultHandler::Cell => Preference::Cell,
                DefaultHandler::Microvm => Preference::MicroVm,
            }),
            other => Err(Status::invalid_argument(format!(
                "runtime_handler: {} is not a handler of this runtime \
                 ({CELL_HANDLER}, {MICROVM_HANDLER}, or empty for the default)",
                crate::validation::shown(other)
            ))),
        }
    }

    pub(super) async fn run_sandbox(
        &self,
        r: cri::RunPodSandboxRequest,
    ) -> Result<cri::RunPodSandboxResponse, Status> {
        let config = r
            .config
            .ok_or_else(|| Status::invalid_argument("config: missing"))?;
        let meta = config
            .metadata
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("config.metadata: missing"))?;
        for (field, value) in [
            ("config.metadata.name", &meta.name),
            ("config.metadata.namespace", &meta.namespace),
        ] {
            if value.is_empty() {
                return Err(Status::invalid_argument(format!("{field}: empty")));
            }
        }
        let host = node_namespaces(&config)?;
        let resolv = super::dns::resolv_conf(config.dns_config.as_ref())?;
        let sysctls: Vec<(String, String)> = config
            .linux
            .as_ref()
            .map(|l| {
                l.sysctls
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        for (key, _) in &sysctls {
            let ns = crate::sys::ns_sysctl::namespace_of(key).map_err(|e| {
                Status::invalid_argument(format!("config.linux.sysctls[{key}]: {e}"))
            })?;
            let node = (host.ipc && ns == nix::sched::CloneFlags::CLONE_NEWIPC)
                || (host.net && ns == nix::sched::CloneFlags::CLONE_NEWNET);
            if node {
                return Err(Status::invalid_argument(format!(
                    "config.linux.sysctls[{key}]: a sysctl of a pod in the node's own \
                     namespace (hostIPC, hostNetwork) would be the node's"
                )));
            }
        }
        let preference = self.preference(&r.runtime_handler)?;
        let instances = self.runtime.instances.as_ref().ok_or_else(|| {
            Status::failed_precondition("pod sandboxes are instances: this auraed has none")
        })?;
        let id = new_id().map_err(|e| Status::internal(format!("a sandbox id: {e}")))?;
        let spec = InstanceSpec {
            name: format!("cri-{}", &id[..12]),
            vcpus: 0,
            memory_mib: 0,
            nested: false,
            preference,
            kernel: None,
            initramfs: None,
            ready_timeout: std::time::Duration::from_secs(self.cfg.sandbox_ready_timeout_s),
            read_only: Vec::new(),
            metadata: [
                ("cri.sandbox".to_string(), id.clone()),
                ("cri.name".to_string(), meta.name.clone()),
                ("cri.namespace".to_string(), meta.namespace.clone()),
            ]
            .into(),
            networks: Vec::new(),
            host_ipc: host.ipc,
            host_pid: host.pid,
            host_network: host.net,
            keep: self.cfg.pod_restart == super::config::PodRestart::Keep,
            pod_network: None,
            files: Vec::new(),
            // Its containers' host paths, on the microVM backend.
            volumes: true,
        };
        let choice = instances.choice_for(&spec).map_err(Status::from)?;
        let microvm = choice.backend == Backend::MicroVm;
        if microvm {
            self.refuse_in_microvm(host)?;
        }
        let mut spec = spec;
        // A VM the size of the pod (a cell-backed pod's containers are
        // limited one by one instead).
        if microvm {
            (spec.vcpus, spec.memory_mib) = super::resources::vm_size(&config)?;
            // Its resolv.conf is in the VM's own root, from its initrd.
            if let Some(text) = &resolv {
                spec.files.push(crate::cells::SeedFile {
                    path: GUEST_RESOLV.trim_start_matches('/').into(),
                    contents: text.clone().into_bytes(),
                    mode: 0o644,
                });
            }
            // Its sysctls are set by its guest-init at boot, in the VM's
            // own namespaces (the pod's).
            if !sysctls.is_empty() {
                let text = crate::sys::ns_sysctl::file_text(&sysctls).map_err(sysctl_status)?;
                spec.files.push(crate::cells::SeedFile {
                    path: crate::sys::ns_sysctl::POD_FILE
                        .trim_start_matches('/')
                        .into(),
                    contents: text.into_bytes(),
                    mode: 0o644,
                });
            }
        }
        // A microVM's VMM joins the pod's CNI network before its guest
        // boots; the attachment is the sandbox's once it runs.
        let cni_pod = match microvm {
            true => super::cni::load(&self.cfg.cni_conf_dir)
                .map_err(|e| {
                    Status::internal(format!(
                        "the pod's CNI network: {}",
                        crate::error::chain(&e)
                    ))
                })?
                .map(|network| {
                    Arc::new(super::microvm_net::CniPod::new(
                        network,
                        self.cfg.cni_bin_dirs.clone(),
                        id.clone(),
                        meta.name.clone(),
                        meta.namespace.clone(),
                        self.sandboxes_dir.join(&id).join(super::cni::SAVED),
                    ))
                }),
            false => None,
        };
        spec.pod_network = cni_pod
            .clone()
            .map(|p| crate::instances::pod_network::PodNetworkHook(p));
        // A microVM outlives this auraed on a pod network only (see
        // `instances::kept`): without one, its TAP is on the bridge.
        spec.keep &= !microvm || spec.pod_network.is_some();
        // Host ports first: one that is taken fails before anything is made.
        let mut listeners = Vec::new();
        for (i, p) in config.port_mappings.iter().enumerate() {
            if p.protocol != cri::Protocol::Tcp as i32 {
                return Err(Status::unimplemented(format!(
                    "config.port_mappings[{i}].protocol: only TCP is relayed"
                )));
            }
            let container_port = u16::try_from(p.container_port)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "config.port_mappings[{i}].container_port: {} is not a port",
                        p.container_port
                    ))
                })?;
            // In the node's network namespace the container's port is the
            // host's own: nothing to relay.
            if p.host_port == 0 || host.net {
                continue;
            }
            if !matches!(p.host_ip.as_str(), "" | "0.0.0.0" | "::") {
                return Err(Status::unimplemented(format!(
                    "config.port_mappings[{i}].host_ip: a host port on one address is not built \
                     yet (host ports listen on every address)"
                )));
            }
            let host_port = u16::try_from(p.host_port).map_err(|_| {
                Status::invalid_argument(format!(
                    "config.port_mappings[{i}].host_port: {} is not a port",
                    p.host_port
                ))
            })?;
            let field = format!("config.port_mappings[{i}].host_port");
            listeners.push((container_port, crate::pods::ports::bind(&field, host_port)?));
        }
        // The pod's resolv.conf, before anything runs.
        let dir = self.sandboxes_dir.join(&id);
        let resolv_path = match resolv {
            Some(text) => {
                let path = dir.join("resolv.conf");
                let written =
                    std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, text));
                if let Err(e) = written {
                    remove_files(&dir);
                    return Err(Status::internal(format!("writing {}: {e}", path.display())));
                }
                Some(path)
            }
            None => None,
        };
        let instance = match self.runtime.spawn(spec).await {
            Ok(i) => i,
            Err(e) => {
                // A failure after the instance was ready (its record, its
                // metadata) leaves its pod network attached: released.
                if let Some(p) = &cni_pod {
                    use crate::instances::pod_network::PodNetwork;
                    p.detach().await;
                }
                remove_files(&dir);
                return Err(e.into());
            }
        };
        // The pod's sysctls, in its instance's IPC and network namespaces
        // (a microVM's guest-init has set them).
        let applied = if sysctls.is_empty() || microvm {
            Ok(())
        } else {
            match instance.pidfd() {
                Ok(fd) => crate::blocking::run("setting the pod's sysctls", move || {
                    use std::os::fd::AsFd;
                    crate::sys::ns_sysctl::write_in(fd.as_fd(), &sysctls)
                })
                .await
                .map_err(Status::from)
                .and_then(|r| r.map_err(sysctl_status)),
                Err(e) => Err(e.into()),
            }
        };
        if let Err(e) = applied {
            self.undo_run(&id, &instance.name, None, &dir).await;
            return Err(e);
        }
        // Its CNI network, if one is configured (not in the node's).
        let attached = if host.net {
            Ok(None)
        } else if microvm {
            // Recorded as ADD answered (see `microvm_net`).
            Ok(cni_pod.as_ref().and_then(|p| p.take()))
        } else {
            self.attach_network(&id, meta, &instance).await
        };
        let attached = match attached {
            Ok(a) => a,
            Err(e) => {
                self.undo_run(&id, &instance.name, None, &dir).await;
                return Err(e);
            }
        };
        let pod_ip = attached.as_ref().map_or(instance.address.ip(), |a| a.ip);
        let forwards = listeners
            .into_iter()
            .map(|(port, l)| crate::pods::ports::start(l, SocketAddr::new(pod_ip, port)))
            .collect::<Result<Vec<_>, _>>();
        let forwards = match forwards {
            Ok(f) => f,
            Err(e) => {
                self.undo_run(&id, &instance.name, attached.as_ref(), &dir)
                    .await;
                return Err(e.into());
            }
        };
        let sandbox = Arc::new(Sandbox {
            id: id.clone(),
            instance: instance.name.clone(),
            handler: r.runtime_handler,
            created_at: now_ns(),
            ip: pod_ip.to_string(),
            cni: tokio::sync::Mutex::new(attached),
            config,
            ready: Mutex::new(true),
            forwards: Mutex::new(forwards),
            resolv_conf: resolv_path,
        });
        // What a restarted auraed takes it back by.
        if instance.keep.load(std::sync::atomic::Ordering::SeqCst) {
            if let Err(e) = super::records::save_sandbox(&dir, &sandbox) {
                let forwards = std::mem::take(
                    &mut *sandbox.forwards.lock().unwrap_or_else(|e| e.into_inner()),
                );
                for f in forwards {
                    f.close().await;
                }
                let attached = sandbox.cni.lock().await.take();
                self.undo_run(&id, &instance.name, attached.as_ref(), &dir)
                    .await;
                return Err(Status::internal(crate::error::chain(&e)));
            }
        }
        self.state
            .sandboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), sandbox);
        Ok(cri::RunPodSandboxResponse { pod_sandbox_id: id })
    }

    /// What a microVM pod sandbox can't have, refused before anything is
    /// made: the node's namespaces.
    fn refuse_in_microvm(&self, host: NodeNamespaces) -> Result<(), Status> {
        if host.ipc || host.pid || host.net {
            return Err(Status::invalid_argument(format!(
                "config.linux.security_context.namespace_options: a microVM pod ({MICROVM_HANDLER}) \
                 can't share the node's namespaces; use {CELL_HANDLER}"
            )));
        }
        Ok(())
    }

    /// Takes back what a failed RunPodSandbox made: its CNI network, its
    /// instance and its files (each failure logged).
    async fn undo_run(
        &self,
        id: &str,
        instance: &str,
        attached: Option<&super::cni::Attachment>,
        dir: &std::path::Path,
    ) {
        if let Some(a) = attached {
            if let Err(undo) = super::cni::del(a, &self.cfg.cni_bin_dirs).await {
                tracing::error!("sandbox {id}: detaching its CNI network: {undo}");
            }
        }
        if let Err(undo) = self.runtime.free(instance).await {
            tracing::error!("sandbox {id}: freeing its instance: {undo}");
        }
        remove_files(dir);
    }

    /// Stops every container and the instance; the sandbox stays listed
    /// (not ready) until removed. Stopping a stopped sandbox does nothing.
    pub(super) async fn stop_sandbox(&self, id: &str) -> Result<(), Status> {
        let sandbox = self.state.sandbox("pod_sandbox_id", id)?;
        for c in self.state.containers_of(&sandbox.id) {
            self.container_gone(&c, "the pod sandbox stopped");
        }
        let forwards =
            std::mem::take(&mut *sandbox.forwards.lock().unwrap_or_else(|e| e.into_inner()));
        for f in forwards {
            f.close().await;
        }
        // Detached while the namespace exists; kept for a retry if it fails.
        {
            let mut cni = sandbox.cni.lock().await;
            if let Some(a) = cni.as_ref() {
                super::cni::del(a, &self.cfg.cni_bin_dirs)
                    .await
                    .map_err(|e| {
                        Status::internal(format!(
                            "pod_sandbox_id: detaching {}'s CNI network: {}",
                            sandbox.id,
                            crate::error::chain(&e)
                        ))
                    })?;
                *cni = None;
                let record = self.sandboxes_dir.join(&sandbox.id).join(super::cni::SAVED);
                match std::fs::remove_file(&record) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => tracing::error!("removing {}: {e}", record.display()),
                }
            }
        }
        match self.runtime.free(&sandbox.instance).await {
            Ok(()) => {}
            Err(crate::error::ApiError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        *sandbox.ready.lock().unwrap_or_else(|e| e.into_inner()) = false;
        Ok(())
    }

    /// Removes a sandbox (stopping it first) and its containers' records;
    /// removing one that is gone is not an error, as the CRI asks.
    pub(super) async fn remove_sandbox(&self, id: &str) -> Result<(), Status> {
        let sandbox = match self.state.sandbox("pod_sandbox_id", id) {
            Ok(s) => s,
            Err(e) if e.code() == tonic::Code::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        self.stop_sandbox(&sandbox.id).await?;
        // An attachment a previous auraed could not release: the address
        // goes back to the IPAM before the record does.
        self.release_cni(&self.sandboxes_dir.join(&sandbox.id))
            .await
            .map_err(|e| {
                Status::internal(format!("pod_sandbox_id: {}", crate::error::chain(&e)))
            })?;
        let gone: Vec<String> = self
            .state
            .containers_of(&sandbox.id)
            .iter()
            .map(|c| c.id.clone())
            .collect();
        let mut containers = self
            .state
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for c in gone {
            containers.remove(&c);
        }
        drop(containers);
        self.state
            .sandboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&sandbox.id);
        let dir = self.sandboxes_dir.join(&sandbox.id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Status::internal(format!("removing {}: {e}", dir.display()))),
        }
        Ok(())
    }

    /// Attaches a new sandbox's instance to the configured CNI network;
    /// `None` without one.
    async fn attach_network(
        &self,
        id: &str,
        meta: &cri::PodSandboxMetadata,
        instance: &crate::instances::Instance,
    ) -> Result<Option<super::cni::Attachment>, Status> {
        let cni_status = |e: super::cni::CniError| {
            Status::internal(format!(
                "the pod's CNI network: {}",
                crate::error::chain(&e)
            ))
        };
        let Some(network) = super::cni::load(&self.cfg.cni_conf_dir).map_err(cni_status)? else {
            return Ok(None);
        };
        let pidfd = instance.pidfd()?;
        let how = super::cni::Invocation {
            bin_dirs: &self.cfg.cni_bin_dirs,
            container_id: id,
            pod_name: &meta.name,
            pod_namespace: &meta.namespace,
        };
        use std::os::fd::AsFd;
        let a = super::cni::add(&network, &how, pidfd.as_fd())
            .await
            .map_err(cni_status)?;
        tracing::info!(
            "sandbox {id}: CNI network {} ({}) gave {}",
            network.name,
            network.file.display(),
            a.ip
        );
        self.save_attachment(id, a).await.map(Some)
    }

    /// Keeps the record of `a` while it is attached, for a DEL after a
    /// crash of this auraed; on failure, `a` is detached.
    async fn save_attachment(
        &self,
        id: &str,
        a: super::cni::Attachment,
    ) -> Result<super::cni::Attachment, Status> {
        let record = self.sandboxes_dir.join(id).join(super::cni::SAVED);
        let saved = serde_json::to_vec(&a.saved())
            .map_err(std::io::Error::other)
            .and_then(|json| {
                std::fs::create_dir_all(self.sandboxes_dir.join(id))?;
                std::fs::write(&record, json)
            });
        if let Err(e) = saved {
            if let Err(undo) = super::cni::del(&a, &self.cfg.cni_bin_dirs).await {
                tracing::error!("sandbox {id}: detaching its CNI network: {undo}");
            }
            return Err(Status::internal(format!(
                "writing {}: {e}",
                record.display()
            )));
        }
        Ok(a)
    }
}
