//! Spawning an instance, as a plan of steps with its rollback as a value:
//! each step that makes something records it in [`Undo`], and a failure at
//! any step (or one injected with [`FailAt`]) undoes every earlier one, so
//! nothing is left: no cgroup, process, veth, mount or file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use super::backend::{self, Backend};
use super::files::{self, Params};
use super::undo::Undo;
use super::{is_file, Instance, InstanceSpec, Instances};
use crate::cells::{Cell, CellContext, CellSpec, PreparedRoot, Security};
use crate::error::ApiError;
use crate::executables::{Executable, Output, Placement, ProcessSpec};
use crate::net::{self, Bridge, INSTANCE_PREFIX_LEN};

/// The steps of a spawn, in order; a test can make any of them fail. On a
/// microVM, `cell` is the instance's folder and initrd and the VMM's cell,
/// `veth` its TAP, and `init` the VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailAt {
    Backend,
    Image,
    Identity,
    Bridge,
    Cell,
    Veth,
    Init,
    Ready,
}

impl FailAt {
    pub const ALL: [FailAt; 8] = [
        FailAt::Backend,
        FailAt::Image,
        FailAt::Identity,
        FailAt::Bridge,
        FailAt::Cell,
        FailAt::Veth,
        FailAt::Init,
        FailAt::Ready,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FailAt::Backend => "backend",
            FailAt::Image => "image",
            FailAt::Identity => "identity",
            FailAt::Bridge => "bridge",
            FailAt::Cell => "cell",
            FailAt::Veth => "veth",
            FailAt::Init => "init",
            FailAt::Ready => "ready",
        }
    }

    pub fn parse(s: &str) -> Option<FailAt> {
        FailAt::ALL.into_iter().find(|f| f.name() == s)
    }
}

/// What either backend has started, for [`Instances::ready`].
pub(super) struct Started {
    pub(super) choice: super::backend::Choice,
    pub(super) spiffe_id: String,
    pub(super) address: std::net::Ipv6Addr,
    /// Where its auraed listens.
    pub(super) port: u16,
    pub(super) index: u32,
    /// The instance's process (its auraed, or its VMM): a name for it
    /// (`<instance>/<name>`) and what to run.
    pub(super) process: (&'static str, ProcessSpec),
    pub(super) cell: Arc<Cell>,
    /// Where its output goes.
    pub(super) output: Output,
    pub(super) started: Instant,
}

pub(super) fn injected(spec_fail: Option<FailAt>, step: FailAt) -> Result<(), ApiError> {
    if spec_fail == Some(step) {
        return Err(ApiError::Internal(format!(
            "spawn: failure injected at step {} (instances.fail_at)",
            step.name()
        )));
    }
    Ok(())
}

impl Instances {
    /// Spawns an instance, or makes a pre-started one `spec`'s; on error
    /// nothing is left behind.
    pub async fn spawn(
        &self,
        spec: &InstanceSpec,
        cells: &CellContext,
        log_bytes: usize,
    ) -> Result<Instance, ApiError> {
        if let Some(claimed) = self.claim(spec).await {
            return Ok(claimed);
        }
        self.spawn_new(spec, cells, log_bytes).await
    }

    /// Starts a new instance; on error nothing is left behind.
    pub(super) async fn spawn_new(
        &self,
        spec: &InstanceSpec,
        cells: &CellContext,
        log_bytes: usize,
    ) -> Result<Instance, ApiError> {
        let mut undo = Undo::default();
        let result = self.steps(spec, cells, log_bytes, &mut undo).await;
        match result {
            Ok(instance) => Ok(instance),
            Err(e) => {
                undo.rollback(self).await;
                Err(e)
            }
        }
    }

    async fn steps(
        &self,
        spec: &InstanceSpec,
        cells: &CellContext,
        log_bytes: usize,
        undo: &mut Undo,
    ) -> Result<Instance, ApiError> {
        let started = Instant::now();
        let fail = self.cfg.fail_at;

        // 1. The backend, and why.
        let kernel = spec.kernel.clone().unwrap_or_else(|| self.default_kernel());
        let choice = self.choice_for(spec)?;
        if (spec.host_ipc || spec.host_pid || spec.host_network)
            && choice.backend == Backend::MicroVm
        {
            return Err(ApiError::invalid(
                if spec.host_ipc {
                    "host_ipc"
                } else if spec.host_pid {
                    "host_pid"
                } else {
                    "host_network"
                },
                "a microVM has a kernel of its own: only a cell-backed instance shares the \
                 host's namespaces",
            ));
        }
        if spec.pod_network.is_some() && choice.backend == Backend::Cell {
            return Err(ApiError::Internal(format!(
                "instance {}: a pod network hook is for a microVM's VMM; a cell-backed \
                 instance's pod network is attached to its cell after it starts",
                spec.name
            )));
        }
        injected(fail, FailAt::Backend)?;
        let networks = self.resolve_networks(&spec.networks).await?;

        // 2. The image: on a microVM its base, decompressed; in a cell its
        // root, unpacked once.
        let (initramfs, field) = match &spec.initramfs {
            Some(p) => (p.clone(), "initramfs"),
            None => (self.image_file("initramfs.cpio.zst"), "instances.image_dir"),
        };
        if !is_file(&initramfs) {
            let why = format!(
                "{field}: {} is missing (build the image with `cargo xtask image`)",
                initramfs.display()
            );
            return Err(if spec.initramfs.is_some() {
                ApiError::invalid(
                    "initramfs",
                    format!("{} is not a file", initramfs.display()),
                )
            } else {
                ApiError::FailedPrecondition(why)
            });
        }
        if choice.backend == Backend::MicroVm {
            return self
                .spawn_microvm(
                    spec, choice, kernel, initramfs, field, &networks, cells, log_bytes, undo,
                    started,
                )
                .await;
        }
        let cache = self.cfg.cache_dir.clone();
        let image = initramfs.clone();
        let lower = crate::blocking::run("unpacking the initramfs", move || {
            std::fs::create_dir_all(&cache)
                .map_err(|e| super::root::RootError::Write {
                    path: cache.clone(),
                    source: e,
                })
                .and_then(|()| super::root::unpacked(&image, &cache))
        })
        .await?
        .map_err(|e| ApiError::invalid(field, e.to_string()))?;
        injected(fail, FailAt::Image)?;

        // 3. The instance's identity, signed by this auraed.
        let identity = self.issue(&spec.name)?;
        injected(fail, FailAt::Identity)?;

        // 4. The bridge, made on first use.
        let bridge = self.ensure_bridge().await?;
        injected(fail, FailAt::Bridge)?;

        // 5. The cell: the image's root with the instance's files on top.
        let index = self.take_index();
        undo.index = Some(index);
        let address = self.ula().instance_addr(index);
        let mut params = self.params(spec, address);
        if spec.host_network {
            // Among the host's own services: a port free there, not ours.
            params.port = net::free_tcp_port()
                .map_err(|e| ApiError::io("finding a free port for the instance's auraed", e))?;
            params.in_host_network = true;
        }
        let port = params.port;
        let image_dir = initramfs
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        let cell_spec = CellSpec {
            name: spec.name.clone(),
            limits: limits(spec),
            prepared_root: Some(PreparedRoot {
                lower,
                files: files::seed(&identity, &params)
                    .into_iter()
                    .chain(spec.files.iter().cloned())
                    .collect(),
            }),
            security: Security {
                all_caps: true,
                delegate_cgroup: true,
                // The host's own, in the host's network namespace.
                net_sysctls: !spec.host_network,
                read_only_binds: std::iter::once((image_dir, PathBuf::from(files::IMAGE)))
                    .chain(
                        spec.read_only
                            .iter()
                            .map(|s| (s.host.clone(), s.inside.clone())),
                    )
                    .collect(),
                ..Default::default()
            },
            share: crate::cells::HostShare {
                ipc: spec.host_ipc,
                pid: spec.host_pid,
                net: spec.host_network,
                ..Default::default()
            },
            ..Default::default()
        };
        let cell = Cell::create(cell_spec, cells.clone()).await?;
        undo.cell = Some(cell.clone());
        injected(fail, FailAt::Cell)?;

        // 6. The veth: eth0 inside, its host end on the bridge.
        // Named after the bridge, so that two auraeds on one host (each
        // with its own bridge) never pick the same names.
        let stem: String = self.cfg.bridge.chars().take(9).collect();
        let host = net::host_link_name(&format!("{stem}v"), index)?;
        let peer = net::host_link_name(&format!("{stem}p"), index)?;
        // In the host's network namespace, an address on the bridge
        // instead.
        let (pidfd, _) = cell.namespaces();
        if spec.host_network {
            undo.host_address = Some(net::add_host_address(&bridge.link(), address).await?);
        } else {
            // A host-network instance's address that a crashed auraed left
            // on the bridge would catch this instance's traffic.
            let stale = net::HostAddress {
                link: bridge.link().name,
                index: bridge.link().index,
                addr: address,
            };
            match stale.remove().await {
                Ok(true) => {
                    tracing::warn!("removed {address} from the bridge, left by a previous run")
                }
                Ok(false) => {}
                Err(e) => tracing::warn!("looking for a stale {address} on the bridge: {e}"),
            }
            let veth = net::create_veth(
                &host,
                &peer,
                &bridge.link(),
                pidfd,
                "eth0",
                Some((address, INSTANCE_PREFIX_LEN)),
            )
            .await?;
            undo.veth = Some(veth);
        }
        self.attach_veths(&networks, index, pidfd, &mut undo.networks)
            .await?;
        injected(fail, FailAt::Veth)?;

        // 7. The instance's auraed, its output in its folder on disk.
        let (dir, output) = self.console_files(&spec.name)?;
        undo.dir = Some(dir);
        self.ready(
            spec,
            Started {
                choice,
                spiffe_id: identity.spiffe_id,
                address,
                port,
                index,
                process: ("init", init_process()?),
                cell,
                output,
                started,
            },
            log_bytes,
            undo,
        )
        .await
    }

    /// Steps 7 and 8, for both backends: starts the instance's process (its
    /// auraed, or its VMM) in its cell; waits until the instance's auraed
    /// serves and answers health over mTLS; then the instance takes over
    /// what `undo` held.
    pub(super) async fn ready(
        &self,
        spec: &InstanceSpec,
        s: Started,
        log_bytes: usize,
        undo: &mut Undo,
    ) -> Result<Instance, ApiError> {
        let (suffix, process) = s.process;
        let init = Executable::start_with(
            format!("{}/{suffix}", spec.name),
            process,
            Placement::Cell(s.cell.clone()),
            log_bytes,
            "instance",
            s.output,
        )
        .await?;
        undo.init = Some(init.clone());
        injected(self.cfg.fail_at, FailAt::Init)?;

        let addr = SocketAddr::new(s.address.into(), s.port);
        let expected = super::link::ExpectedId::new(s.spiffe_id.clone());
        let channel = self
            .link()?
            .channel_expecting(addr, expected.clone())
            .map_err(|e| ApiError::Internal(format!("the link to instance {}: {e}", spec.name)))?;
        let microvm = s.choice.backend == Backend::MicroVm;
        let what = if microvm { "VMM" } else { "auraed" };
        super::ready::wait_ready(&init, &channel, spec.ready_timeout, &spec.name, what).await?;
        injected(self.cfg.fail_at, FailAt::Ready)?;
        let veth = undo.veth.take();
        let host_address = undo.host_address.take();
        let tap = undo.tap.take();
        let dir = undo.dir.take();
        let networks = std::mem::take(&mut undo.networks);
        // The pod network is its owner's from here (a CRI sandbox's).
        undo.pod_network = None;
        undo.init = None;
        undo.cell = None;
        undo.index = None;
        Ok(Instance {
            name: spec.name.clone(),
            spiffe_id: s.spiffe_id,
            address: addr,
            choice: s.choice,
            ready_after: s.started.elapsed(),
            boot_ms: microvm.then(|| super::microvm::boot_ms(&init)).flatten(),
            created_at: SystemTime::now(),
            init,
            cell: s.cell,
            veth: Mutex::new(veth),
            host_address: Mutex::new(host_address),
            host_network: spec.host_network,
            tap: Mutex::new(tap),
            networks: Mutex::new(networks),
            dir,
            index: s.index,
            channel,
            expected,
            torn_down: AtomicBool::new(false),
            tearing_down: tokio::sync::Mutex::new(()),
            shared: spec
                .read_only
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    if microvm {
                        super::disk_path(i)
                    } else {
                        s.inside.clone()
                    }
                })
                .collect(),
            pod: Mutex::new(None),
            keep: AtomicBool::new(false),
            imds: Mutex::new(None),
            imds_listener: Mutex::new(None),
        })
    }

    /// The backend `spec` gets, and why.
    pub fn choice_for(&self, spec: &InstanceSpec) -> Result<backend::Choice, ApiError> {
        let kernel = spec.kernel.clone().unwrap_or_else(|| self.default_kernel());
        let support =
            backend::microvm_support(Path::new("/sys"), Path::new("/dev"), &kernel, &self.cfg.vmm);
        backend::choose(spec.preference, support)
            .map_err(|e| ApiError::FailedPrecondition(e.to_string()))
    }

    /// The kernel microVMs boot: the image's `vmlinux` (through its PVH
    /// entry), else its `bzImage`.
    fn default_kernel(&self) -> PathBuf {
        let vmlinux = self.image_file("vmlinux");
        let bzimage = self.image_file("bzImage");
        if !is_file(&vmlinux) && is_file(&bzimage) {
            bzimage
        } else {
            vmlinux
        }
    }

    /// The bridge, made on first use.
    /// Takes the bridge found as this auraed's own (removed at shutdown
    /// when nothing is left on it): a previous auraed of this
    /// configuration made it, and left VMs on it.
    pub(super) async fn own_bridge(&self) {
        if let Some(b) = self.bridge.lock().await.as_mut() {
            b.created = true;
        }
    }

    pub(super) async fn ensure_bridge(&self) -> Result<Bridge, ApiError> {
        if self.cfg.in_host_network {
            return Err(ApiError::FailedPrecondition(
                "this auraed runs in its parent's network namespace (a hostNetwork pod): it \
                 makes no bridge there, so it spawns no instances or VMs"
                    .into(),
            ));
        }
        let mut guard = self.bridge.lock().await;
        if let Some(b) = &*guard {
            return Ok(b.clone());
        }
        let b = net::ensure_bridge(
            &self.cfg.bridge,
            self.ula().bridge_addr(),
            INSTANCE_PREFIX_LEN,
        )
        .await?;
        tracing::info!(bridge = %b.name, prefix = %b.addr, "instance bridge ready");
        *guard = Some(b.clone());
        Ok(b)
    }

    /// What instance `spec` is told about itself and its parent.
    pub(super) fn params(&self, spec: &InstanceSpec, address: std::net::Ipv6Addr) -> Params {
        let mut allowed = vec![self.own_id()];
        allowed.extend(self.cfg.admins.iter().cloned());
        Params {
            name: spec.name.clone(),
            address,
            prefix_len: INSTANCE_PREFIX_LEN,
            port: self.cfg.port,
            allowed,
            path: self.child_path(&spec.name),
            parent: self.metadata_addr(),
            parent_id: self.own_id(),
            link_local_metadata: false,
            in_host_network: false,
            pre_started: super::pool::is_provisional(&spec.name),
        }
    }

    /// The identity of instance `name`, from this auraed's signing CA.
    pub(super) fn issue(&self, name: &str) -> Result<files::Identity, ApiError> {
        let read = |what: &'static str, path: &Path| {
            std::fs::read_to_string(path).map_err(|e| {
                ApiError::FailedPrecondition(format!(
                    "{what}: {} can't be read ({e}); spawning needs a CA to sign instance \
                     identities",
                    path.display()
                ))
            })
        };
        let key = read("instances.signing_key", &self.cfg.signing_key)?;
        let chain = read("instances.signing_chain", &self.cfg.signing_chain)?;
        let bundle = read("auth.ca_crt", &self.cfg.trust_bundle)?;
        let delegator = crate::pki::Delegator::new(&key, &chain, &bundle)
            .map_err(|e| ApiError::FailedPrecondition(format!("instances.signing_key: {e}")))?;
        let depth = delegator
            .max_child_depth()
            .map_err(|e| ApiError::FailedPrecondition(format!("spawn: {e}")))?;
        let id = delegator
            .issue(name, depth)
            .map_err(|e| ApiError::invalid("name", e.to_string()))?;
        Ok(files::Identity {
            spiffe_id: id.spiffe_id.clone(),
            leaf_chain_pem: id.leaf_chain_pem.clone(),
            leaf_key_pem: id.leaf_key_pem.clone(),
            ca_chain_pem: id.ca_chain_pem.clone(),
            ca_key_pem: id.ca_key_pem.clone(),
            trust_bundle_pem: id.trust_bundle_pem.clone(),
        })
    }
}

/// A cell's limits from the request: none unless asked for (a limit whose
/// controller is missing fails loudly, as for any cell).
fn limits(spec: &InstanceSpec) -> crate::cgroup::Limits {
    let mut limits = crate::cgroup::Limits::default();
    if spec.memory_mib > 0 {
        limits.memory_max = Some(spec.memory_mib << 20);
    }
    if spec.vcpus > 0 {
        limits.cpu_max = Some((u64::from(spec.vcpus) * 100_000, 100_000));
    }
    limits
}

/// `/init serve`: the image's guest-init serving the auraed library, with
/// its parameters from `/etc/aurae/bootparams`.
fn init_process() -> Result<ProcessSpec, ApiError> {
    let c = |s: &str| crate::validation::c_string("instance", s);
    Ok(ProcessSpec {
        command: vec!["/init".into(), "serve".into()],
        candidates: vec![c("/init")?],
        argv: vec![c("/init")?, c("serve")?],
        envp: vec![
            c(&format!("PATH={}", crate::runtime::DEFAULT_PATH))?,
            c("RUST_LOG=info")?,
        ],
        cwd: Some(c("/")?),
        uid: None,
        gid: None,
        groups: Vec::new(),
        stdin: Default::default(),
    })
}
