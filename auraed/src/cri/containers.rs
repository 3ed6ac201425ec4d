//! Containers: each a cell in its pod's instance, rooted in its image and
//! sharing the instance's network. A cell-backed instance has the image
//! bound in read-only (the unpacked, verified entry of this auraed's image
//! cache; see [`super::container_binds`]); a microVM gets it over its link
//! (`PutImage`), checking every blob.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use aurae_proto::cri;
use aurae_proto::runtime as pb;
use tonic::Status;

use super::container_config::{executable_of, refuse_unbuilt, sc_of, seccomp_of, volumes};
use super::state::{new_id, now_ns, Container, Run, Sandbox};
use super::Cri;
use crate::instances::backend::Backend;
use crate::instances::Instance;
use crate::registry::Workload;

const CREATED: i32 = cri::ContainerState::ContainerCreated as i32;
const RUNNING: i32 = cri::ContainerState::ContainerRunning as i32;
const EXITED: i32 = cri::ContainerState::ContainerExited as i32;

impl Cri {
    /// The running instance of a ready sandbox.
    pub(super) fn instance_of(&self, s: &Sandbox) -> Result<Arc<Instance>, Status> {
        match self.runtime.get(&s.instance, "pod_sandbox_id") {
            Ok(Workload::Instance(i)) if s.is_ready() && i.running() => Ok(i),
            _ => Err(Status::failed_precondition(format!(
                "pod_sandbox_id: pod sandbox {} is not ready",
                s.id
            ))),
        }
    }

    pub(super) async fn create_container(
        &self,
        r: cri::CreateContainerRequest,
    ) -> Result<cri::CreateContainerResponse, Status> {
        let sandbox = self.state.sandbox("pod_sandbox_id", &r.pod_sandbox_id)?;
        let config = r
            .config
            .ok_or_else(|| Status::invalid_argument("config: missing"))?;
        let name = config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| Status::invalid_argument("config.metadata.name: missing"))?;
        let image_name = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .filter(|i| !i.is_empty())
            .ok_or_else(|| Status::invalid_argument("config.image.image: missing"))?;
        refuse_unbuilt(&config)?;
        executable_of(&config, None, &[])?;
        let seccomp = seccomp_of(&config).await?;
        let log_path = super::container_config::log_path(&sandbox.config, &config)?;
        let instance = self.instance_of(&sandbox)?;
        let microvm = instance.choice.backend == Backend::MicroVm;
        let mut volumes = volumes(&config).await?;
        if microvm {
            super::container_binds::vm_propagation(&volumes)?;
        }
        // The pod's resolv.conf, unless the container mounts its own: in a
        // microVM's own root (from its initrd), else bound into the
        // instance with the volumes.
        let mut mounts = Vec::new();
        let own_resolv = volumes
            .iter()
            .any(|v| v.container_path == "/etc/resolv.conf");
        match &sandbox.resolv_conf {
            Some(_) if microvm && !own_resolv => mounts.push(pb::CellMount {
                source: super::sandboxes::GUEST_RESOLV.into(),
                destination: "/etc/resolv.conf".into(),
                read_only: true,
                ..Default::default()
            }),
            Some(resolv) if !own_resolv => volumes.push(super::container_config::Volume {
                host: resolv.clone(),
                container_path: "/etc/resolv.conf".into(),
                read_only: true,
                propagation: crate::cells::Propagation::Private,
            }),
            _ => {}
        }
        let image = self.find_image(&image_name).ok_or_else(|| {
            Status::not_found(format!(
                "config.image.image: {} is not pulled here (PullImage first)",
                crate::validation::shown(&image_name)
            ))
        })?;
        let layout = self
            .store
            .layout(&image.manifest)
            .map_err(|e| Status::internal(crate::error::chain(&e)))?;
        let host = self
            .runtime
            .unpacked_image(&layout, "config.image.image")
            .await?;
        let username = sc_of(&config)
            .map(|s| s.run_as_username.clone())
            .filter(|u| !u.is_empty());
        // Refused, naming the field, by executable_of above if not an id.
        let numeric = sc_of(&config)
            .and_then(|s| s.run_as_user.as_ref())
            .and_then(|v| u32::try_from(v.value).ok());
        let rootfs = host.join("rootfs");
        let user = crate::blocking::run("reading an image's passwd", move || {
            super::groups::run_as(&rootfs, username.as_deref(), numeric)
        })
        .await?
        .map_err(|e| {
            Status::invalid_argument(format!(
                "config.linux.security_context.run_as_username: {}",
                crate::error::chain(&e)
            ))
        })?;
        // Its supplementary groups: the config's, and the image's for its
        // user (the config's, else the image's).
        let uid = user.map(|(u, _)| u).or_else(|| {
            sc_of(&config)
                .and_then(|s| s.run_as_user.as_ref())
                .and_then(|v| u32::try_from(v.value).ok())
        });
        let (rootfs, image_user) = (host.join("rootfs"), image.user.clone());
        let from_image = crate::blocking::run("reading an image's groups", move || {
            let uid = match uid {
                Some(u) => Some(u),
                None => match image_user.as_deref() {
                    Some(u) => crate::oci::user::resolve(&rootfs, u).ok().map(|(u, _)| u),
                    None => Some(0),
                },
            };
            uid.map(|u| super::groups::image_groups(&rootfs, u))
                .unwrap_or_default()
        })
        .await?;
        let requested = sc_of(&config)
            .map(|s| s.supplemental_groups.clone())
            .unwrap_or_default();
        let groups = super::groups::merged(&requested, &from_image).map_err(|g| {
            Status::invalid_argument(format!(
                "config.linux.security_context.supplemental_groups: {g} is not a group id"
            ))
        })?;
        let id = new_id().map_err(|e| Status::internal(format!("a container id: {e}")))?;
        let cell = format!("c-{}", &id[..12]);
        let inside = if microvm {
            // A microVM gets the image over its link, and checks it.
            let channel = match &self.runtime.instances {
                Some(i) => i.own_channel(&instance)?,
                None => instance.channel(),
            };
            let inside = PathBuf::from(
                crate::instances::put_image::put_image(channel, &layout, "config.image.image")
                    .await?,
            );
            super::container_binds::bind_into_vm(&instance, &cell, volumes, &mut mounts).await?;
            inside
        } else {
            super::container_binds::bind_into(&instance, &cell, host, volumes, &mut mounts).await?
        };
        let container = Arc::new(Container {
            id: id.clone(),
            sandbox_id: sandbox.id.clone(),
            cell,
            image_ref: image
                .digests
                .first()
                .cloned()
                .unwrap_or(image.manifest.clone()),
            image_id: image.config.clone(),
            image: image_name,
            image_inside: inside,
            log_path,
            mounts,
            user,
            groups,
            seccomp,
            created_at: now_ns(),
            run: Mutex::new(Run {
                state: CREATED,
                ..Default::default()
            }),
            logger: Mutex::new(None),
            reopen: Mutex::new(None),
            config,
        });
        tracing::info!(
            "container {id} ({name}) created in pod sandbox {}",
            sandbox.id
        );
        self.state
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), container.clone());
        self.save(&container);
        self.emit(&container, cri::ContainerEventType::ContainerCreatedEvent);
        Ok(cri::CreateContainerResponse { container_id: id })
    }

    pub(super) async fn start_container(self: &Arc<Self>, id: &str) -> Result<(), Status> {
        let c = self.state.container("container_id", id)?;
        // Claimed under the lock: a second start is refused, not raced.
        let claimed = {
            let mut run = c.run.lock().unwrap_or_else(|e| e.into_inner());
            let free = run.state == CREATED && !run.starting;
            run.starting |= free;
            free
        };
        if !claimed {
            return Err(Status::failed_precondition(format!(
                "container_id: container {} is not in the created state",
                c.id
            )));
        }
        let started = self.start_claimed(&c).await;
        c.update(|run| run.starting = false);
        started
    }

    async fn start_claimed(self: &Arc<Self>, c: &Arc<Container>) -> Result<(), Status> {
        let sandbox = self.state.sandbox("pod_sandbox_id", &c.sandbox_id)?;
        let instance = self.instance_of(&sandbox)?;
        let sc = c
            .config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref());
        let privileged = sc.is_some_and(|s| s.privileged);
        // The pod's PID namespace (the instance's) unless the container
        // asks for its own; IPC and network are the pod's.
        let own_pid = sc
            .and_then(|s| s.namespace_options.as_ref())
            .is_some_and(|n| n.pid == cri::NamespaceMode::Container as i32);
        let hostname = match &sandbox.config.hostname {
            h if !h.is_empty() => h.clone(),
            _ => sandbox
                .metadata()
                .map(|m| m.name)
                .filter(|n| n.len() <= 63)
                .unwrap_or_default(),
        };
        // The log file exists before the container starts.
        let file = match &c.log_path {
            Some(p) => Some(super::cri_log::open(p).await.map_err(|e| {
                Status::internal(format!("container {}: opening {}: {e}", c.id, p.display()))
            })?),
            None => None,
        };
        let mut client = pb::runtime_client::RuntimeClient::new(instance.channel());
        let started = client
            .run_cell(pb::RunCellRequest {
                name: c.cell.clone(),
                share_host: Some(pb::HostNamespaces {
                    net: true,
                    ipc: true,
                    pid: !own_pid,
                    ..Default::default()
                }),
                // Its process is PID 1 of its own PID namespace.
                pid_one: own_pid,
                image: c.image_inside.display().to_string(),
                executable: executable_of(&c.config, c.user, &c.groups)?,
                privileged,
                hostname,
                cap_add: sc
                    .and_then(|s| s.capabilities.as_ref())
                    .map(|c| c.add_capabilities.clone())
                    .unwrap_or_default(),
                cap_drop: sc
                    .and_then(|s| s.capabilities.as_ref())
                    .map(|c| c.drop_capabilities.clone())
                    .unwrap_or_default(),
                cap_ambient: sc
                    .and_then(|s| s.capabilities.as_ref())
                    .map(|c| c.add_ambient_capabilities.clone())
                    .unwrap_or_default(),
                no_new_privs: sc.is_some_and(|s| s.no_new_privs),
                mounts: c.mounts.clone(),
                seccomp: c.seccomp.clone(),
                read_only_root: sc.is_some_and(|s| s.readonly_rootfs),
                masked_paths: sc.map(|s| s.masked_paths.clone()).unwrap_or_default(),
                readonly_paths: sc.map(|s| s.readonly_paths.clone()).unwrap_or_default(),
                limits: c
                    .config
                    .linux
                    .as_ref()
                    .and_then(|l| l.resources.as_ref())
                    .map(|r| super::resources::limits_of(r, "config.linux.resources"))
                    .transpose()?
                    .flatten(),
                ..Default::default()
            })
            .await;
        let started = match started {
            Ok(r) => r.into_inner(),
            Err(status) => {
                c.update(|run| {
                    run.state = EXITED;
                    run.finished_at = now_ns();
                    run.exit_code = 128;
                    run.reason = "StartError".into();
                    run.message = status.message().to_string();
                });
                self.save(c);
                self.emit(c, cri::ContainerEventType::ContainerStoppedEvent);
                return Err(Status::new(
                    status.code(),
                    format!(
                        "container {}: the pod's instance refused it: {}",
                        c.id,
                        status.message()
                    ),
                ));
            }
        };
        c.update(|run| {
            run.state = RUNNING;
            run.started_at = now_ns();
            run.executable_id = started.executable_id.clone();
        });
        self.save(c);
        self.emit(c, cri::ContainerEventType::ContainerStartedEvent);
        let (reopen, follow) = super::cri_log::follow(
            instance.channel(),
            started.executable_id.clone(),
            c.log_path.clone(),
            file,
            None,
        );
        *c.reopen.lock().unwrap_or_else(|e| e.into_inner()) = Some(reopen);
        let (cri, container) = (self.clone(), c.clone());
        let task = tokio::spawn(async move {
            follow.await;
            cri.record_exit(&container, instance.channel()).await;
        });
        *c.logger.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        Ok(())
    }

    /// Asks the instance how the container's first process ended, once.
    pub(super) async fn record_exit(&self, c: &Container, channel: tonic::transport::Channel) {
        let exe = c.run().executable_id;
        if exe.is_empty() || c.run().state == EXITED {
            return;
        }
        let mut client = pb::runtime_client::RuntimeClient::new(channel);
        let waited = client
            .wait(pb::WaitRequest {
                id: exe,
                timeout_ms: Some(30_000),
            })
            .await;
        let (code, reason) = match waited {
            Ok(s) => {
                let s = s.into_inner();
                let code = s.exit_code.or(s.signal.map(|sig| 128 + sig)).unwrap_or(255);
                let reason = if s.oom_killed {
                    "OOMKilled"
                } else if code == 0 {
                    "Completed"
                } else {
                    "Error"
                };
                (code, reason.to_string())
            }
            // Not known to have ended (the instance didn't say): the
            // state stays as it is.
            Err(e) => {
                tracing::warn!("container {}: waiting for its exit: {}", c.id, e.message());
                return;
            }
        };
        let mut exited = false;
        c.update(|run| {
            if run.state != EXITED {
                run.state = EXITED;
                run.finished_at = now_ns();
                run.exit_code = code;
                run.reason = reason;
                exited = true;
            }
        });
        if exited {
            self.save(c);
            self.emit(c, cri::ContainerEventType::ContainerStoppedEvent);
        }
    }

    /// Marks a container of a sandbox that stopped as exited.
    pub(super) fn container_gone(&self, c: &Container, why: &str) {
        if let Some(task) = c.logger.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
        let mut exited = false;
        c.update(|run| {
            if run.state != EXITED {
                run.state = EXITED;
                run.finished_at = now_ns();
                run.exit_code = 137;
                run.reason = "Killed".into();
                run.message = why.into();
                exited = true;
            }
        });
        if exited {
            self.save(c);
            self.emit(c, cri::ContainerEventType::ContainerStoppedEvent);
        }
    }

    /// Stops the container's cell: SIGTERM, then SIGKILL after `timeout`
    /// seconds; the container is exited when this returns.
    pub(super) async fn stop_container(&self, id: &str, timeout: i64) -> Result<(), Status> {
        let c = self.state.container("container_id", id)?;
        if c.run().state != RUNNING {
            return Ok(());
        }
        let sandbox = self.state.sandbox("pod_sandbox_id", &c.sandbox_id)?;
        let Ok(instance) = self.instance_of(&sandbox) else {
            self.container_gone(&c, "its pod sandbox is not ready");
            return Ok(());
        };
        let grace_ms = u32::try_from(timeout.max(0).saturating_mul(1000)).unwrap_or(u32::MAX);
        let mut client = pb::runtime_client::RuntimeClient::new(instance.channel());
        match client
            .stop(pb::StopRequest {
                id: c.cell.clone(),
                signal: 0,
                grace_period_ms: Some(grace_ms),
            })
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => {
                return Err(Status::new(
                    s.code(),
                    format!("stopping container {}: {}", c.id, s.message()),
                ))
            }
        }
        self.record_exit(&c, instance.channel()).await;
        Ok(())
    }

    /// Removes a container (stopping it at once if it runs); one that is
    /// gone is no error, as the CRI asks.
    pub(super) async fn remove_container(&self, id: &str) -> Result<(), Status> {
        let c = match self.state.container("container_id", id) {
            Ok(c) => c,
            Err(e) if e.code() == tonic::Code::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        self.stop_container(&c.id, 0).await?;
        if let Ok(sandbox) = self.state.sandbox("pod_sandbox_id", &c.sandbox_id) {
            if let Ok(instance) = self.instance_of(&sandbox) {
                let mut client = pb::runtime_client::RuntimeClient::new(instance.channel());
                match client.free(pb::FreeRequest { id: c.cell.clone() }).await {
                    Ok(_) => {}
                    Err(s) if s.code() == tonic::Code::NotFound => {}
                    Err(s) => {
                        return Err(Status::new(
                            s.code(),
                            format!("removing container {}: {}", c.id, s.message()),
                        ))
                    }
                }
            }
        }
        if let Some(task) = c.logger.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
        self.unbind(&c).await?;
        self.forget_saved(&c);
        self.emit(&c, cri::ContainerEventType::ContainerDeletedEvent);
        self.state
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&c.id);
        Ok(())
    }

    pub(super) async fn reopen_log(&self, id: &str) -> Result<(), Status> {
        let c = self.state.container("container_id", id)?;
        if c.run().state != RUNNING {
            return Err(Status::failed_precondition(format!(
                "container_id: container {} is not running",
                c.id
            )));
        }
        let tx = c.reopen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(tx) = tx else {
            return Ok(());
        };
        let (ack, done) = tokio::sync::oneshot::channel();
        if tx.send(ack).await.is_err() {
            return Ok(());
        }
        match done.await {
            Ok(Ok(())) | Err(_) => Ok(()),
            Ok(Err(e)) => Err(Status::internal(format!(
                "reopening the log of container {}: {e}",
                c.id
            ))),
        }
    }
}
