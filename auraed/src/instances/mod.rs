//! Spawned instances: a nested auraed in a microVM (aurae-vmm, in a cell of
//! its own) or in a cell, on a bridge of this auraed's, with an identity
//! this auraed signed, and a link this auraed routes requests over.

pub mod backend;
pub mod files;
#[cfg(test)]
mod host_network_tests;
pub mod kept;
mod left_behind;
mod lifecycle;
pub mod link;
mod microvm;
pub mod networks;
mod own;
pub mod plain_vm;
pub mod pod_network;
mod pool;
pub mod put_image;
mod ready;
pub mod root;
mod spawn;
mod undo;
mod vmm_process;
pub mod volumes;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tonic::transport::Channel;

use crate::cells::Cell;
use crate::error::ApiError;
use crate::executables::Executable;
use crate::net::{Bridge, Tap, Veth};
use backend::{Backend, Choice, Preference};

pub use microvm::DEFAULT_MEM_MIB;
pub use spawn::FailAt;
pub use vmm_process::Disk;

/// The parameters of a spawn, validated.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub nested: bool,
    pub preference: Preference,
    pub kernel: Option<PathBuf>,
    pub initramfs: Option<PathBuf>,
    pub ready_timeout: Duration,
    /// Host files or folders the instance sees read-only (a pod's images).
    pub read_only: Vec<Shared>,
    /// What the instance's record holds for it (validated).
    pub metadata: std::collections::BTreeMap<String, String>,
    /// Host bridges it gets a link on besides its own: eth1, eth2...
    pub networks: Vec<Network>,
    /// The host's IPC and PID namespaces, shared by the instance's cell
    /// (cell backend only: a Kubernetes pod's `hostIPC` / `hostPID`).
    pub host_ipc: bool,
    pub host_pid: bool,
    /// The host's network namespace (a Kubernetes pod's `hostNetwork`):
    /// the instance's auraed listens on an address of its own on this
    /// auraed's bridge, and it gets no link-local metadata endpoint.
    pub host_network: bool,
    /// Outlives this auraed: a restarted auraed takes it back (cell
    /// backend only; see [`kept`]).
    pub keep: bool,
    /// A pod network the VMM's own namespace joins (microVM; [`pod_network`]).
    pub pod_network: Option<pod_network::PodNetworkHook>,
    /// Files the instance finds in its root (a pod's resolv.conf).
    pub files: Vec<crate::cells::SeedFile>,
    /// A folder its VMM shares for a pod's volumes (microVM; [`volumes`]).
    pub volumes: bool,
}

/// A host bridge an instance gets a network device on.
#[derive(Debug, Clone)]
pub struct Network {
    pub bridge: String,
    /// The request field it came from, for errors.
    pub field: String,
}

/// Networks of one instance, at most: each takes a virtio device (and an
/// interrupt) of a microVM.
pub const MAX_NETWORKS: usize = 4;

/// A host file or folder an instance sees read-only: bound into a cell at
/// `inside`; attached to a microVM as a read-only virtio-blk disk (files
/// only, whole 512-byte sectors), `/dev/vda` for the first, and so on.
#[derive(Debug, Clone)]
pub struct Shared {
    pub host: PathBuf,
    pub inside: PathBuf,
    /// The request field it came from, for errors.
    pub field: String,
}

/// Where the `i`-th shared path appears in a microVM: its disk.
pub fn disk_path(i: usize) -> PathBuf {
    let letter = (b'a' + (i % 26) as u8) as char;
    PathBuf::from(format!("/dev/vd{letter}"))
}

/// What spawning needs from auraed's configuration.
#[derive(Debug, Clone)]
pub struct InstancesConfig {
    /// The image: `bzImage`/`vmlinux` and `initramfs.cpio.zst`.
    pub image_dir: PathBuf,
    /// The CA key and chain that sign instances' identities, and the trust
    /// bundle (the root).
    pub signing_key: PathBuf,
    pub signing_chain: PathBuf,
    pub trust_bundle: PathBuf,
    /// This auraed's own SVID (chain and key): its client certificate
    /// towards its instances.
    pub own_cert: PathBuf,
    pub own_key: PathBuf,
    /// SPIFFE IDs allowed to manage this auraed: they may manage its
    /// instances too.
    pub admins: Vec<String>,
    pub bridge: String,
    pub port: u16,
    /// Where unpacked images are cached.
    pub cache_dir: PathBuf,
    /// Where each microVM instance gets a folder of its own (its initrd,
    /// with its keys): on the cells' tmpfs, removed with the instance.
    pub instances_dir: PathBuf,
    /// The VMM microVM instances run on.
    pub vmm: PathBuf,
    /// Where each plain VM gets a folder (its initrd, console, the VMM's
    /// messages and the record it is adopted by): on disk, as it may
    /// outlive this auraed (and its tmpfs).
    pub vms_dir: PathBuf,
    /// Where each cell-backed instance gets a folder (its auraed's output,
    /// and the record a kept one is taken back by): on disk, as it may
    /// outlive this auraed.
    pub kept_dir: PathBuf,
    /// What a restarted auraed does with the VMs a previous one left.
    pub vm_restart: crate::config::VmRestart,
    /// A spawn step at which to fail, for the fault-injection tests.
    pub fail_at: Option<FailAt>,
    /// This auraed's path in the instance tree ("" for the root).
    pub path: String,
    /// How many cell-backed instances to keep started ahead of requests.
    pub pool: usize,
    /// This auraed runs in its parent's network namespace (see
    /// `config::InstancesSection::in_host_network`).
    pub in_host_network: bool,
}

/// A spawned instance.
pub struct Instance {
    pub name: String,
    pub spiffe_id: String,
    pub address: SocketAddr,
    pub choice: Choice,
    pub ready_after: Duration,
    /// The VMM's boot timer (launch to the guest's /init), for a microVM.
    pub boot_ms: Option<u64>,
    pub created_at: SystemTime,
    /// The instance's auraed (`/init serve`) in a cell, or its VMM
    /// (`aurae-vmm`, whose standard output is the guest's serial console):
    /// its output is the console.
    pub init: Arc<Executable>,
    /// The instance's cell, or the VMM's.
    cell: Arc<Cell>,
    veth: Mutex<Option<Veth>>,
    /// Its address on the bridge, in the host's network namespace.
    host_address: Mutex<Option<crate::net::HostAddress>>,
    /// It shares the host's network namespace.
    pub host_network: bool,
    /// A microVM's TAP on the bridge.
    tap: Mutex<Option<Tap>>,
    /// Its devices on host bridges (a pod's `networks`), eth1...
    networks: Mutex<Vec<networks::Attached>>,
    /// Its folder: a microVM's (its initrd) on the cells' tmpfs, or a
    /// cell-backed instance's on disk (its auraed's console, and what a
    /// restarted auraed takes it back by; see [`kept`]).
    dir: Option<PathBuf>,
    index: u32,
    channel: Channel,
    /// The SPIFFE ID the link expects.
    expected: link::ExpectedId,
    torn_down: AtomicBool,
    /// Held for a whole teardown, so that a second one waits for it.
    tearing_down: tokio::sync::Mutex<()>,
    /// The link-local metadata endpoint in a cell-backed instance's network
    /// namespace (see [`crate::metadata::imds`]).
    pub(crate) imds: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Its listener, made ahead for a pre-started instance.
    imds_listener: Mutex<Option<std::net::TcpListener>>,
    /// Where the instance sees each of its spec's shared paths, in order.
    pub shared: Vec<PathBuf>,
    /// What the instance holds as a pod: its containers and host ports
    /// (set once, after its containers started; dropped at tear-down).
    pub pod: Mutex<Option<crate::pods::PodInfo>>,
    /// Left running when this auraed stops, for the next one to take
    /// back (set once its record is written; see [`kept`]).
    pub keep: AtomicBool,
}

impl Instance {
    /// The link to the instance's auraed.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// A pidfd of the instance's auraed (or VMM), to join its namespaces
    /// from another thread.
    pub fn pidfd(&self) -> Result<std::os::fd::OwnedFd, ApiError> {
        self.init
            .pidfd()
            .try_clone_to_owned()
            .map_err(|e| ApiError::io("a pidfd of the instance's auraed", e))
    }

    /// Where the instance's own `/sys/fs/cgroup` is on this host: the root
    /// of its cell's cgroup namespace (its leaf).
    pub fn cgroup_ns_root(&self) -> PathBuf {
        self.cell.cgroup.dir().join(crate::cgroup::LEAF)
    }

    /// Its cell's cgroup on this host.
    pub fn cgroup_dir(&self) -> PathBuf {
        self.cell.cgroup.dir().to_path_buf()
    }

    /// Not torn down yet (its auraed may have exited).
    pub fn running_flag(&self) -> bool {
        !self.torn_down.load(Ordering::SeqCst)
    }

    pub fn running(&self) -> bool {
        !self.torn_down.load(Ordering::SeqCst) && self.init.exit_info().is_none()
    }

    /// Stops the instance and everything in it (its own instances run in
    /// its cell and network namespace, or in its VM, and go with them),
    /// then removes its veth, or its TAP and folder. A VMM gets SIGTERM
    /// (it stops the VM cleanly) and SIGKILL after [`VMM_STOP_GRACE`].
    /// Idempotent; a second caller waits until the first has finished.
    pub async fn tear_down(&self) -> Result<(), ApiError> {
        let _one_at_a_time = self.tearing_down.lock().await;
        if self.torn_down.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        // A pod's host ports close first: nothing is forwarded to a dying
        // instance.
        let pod = self.pod.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(pod) = pod {
            pod.close().await;
        }
        if self.choice.backend == Backend::MicroVm {
            if let Err(e) = self
                .init
                .stop(nix::sys::signal::Signal::SIGTERM, VMM_STOP_GRACE)
                .await
            {
                tracing::warn!("instance {}: stopping its VMM: {e}", self.name);
            }
        }
        // Its metadata socket holds its network namespace: closed before
        // the cell goes.
        networks::end_task(&self.imds).await;
        drop(
            self.imds_listener
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        // Every step runs; the first failure is returned.
        let destroyed = self.cell.destroy().await;
        let veth_removed = networks::remove_taken(&self.veth).await;
        let taken = self
            .host_address
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let address_removed = match taken {
            Some(a) => a.remove().await.map(drop).map_err(ApiError::from),
            None => Ok(()),
        };
        let tap_removed = networks::remove_taken(&self.tap).await;
        let attached =
            std::mem::take(&mut *self.networks.lock().unwrap_or_else(|e| e.into_inner()));
        let networks_removed = networks::remove_all(attached).await;
        let dir_removed = match &self.dir {
            Some(dir) => microvm::remove_dir(dir),
            None => Ok(()),
        };
        destroyed
            .and(veth_removed)
            .and(address_removed)
            .and(tap_removed)
            .and(networks_removed)
            .and(dir_removed)
    }

    /// Its devices on host bridges, eth1...
    pub fn networks(&self) -> Vec<networks::Attached> {
        self.networks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The last lines of the instance's console, for errors.
    pub fn console_tail(&self, lines: usize) -> String {
        console_tail(&self.init, lines)
    }
}

/// How long a VMM has to stop its VM after SIGTERM before it is killed.
pub const VMM_STOP_GRACE: Duration = Duration::from_secs(5);

/// How long `List` waits for an instance to list its own instances.
const CHILDREN_TIMEOUT: Duration = Duration::from_secs(2);

/// The instances of `instance`, each with its own (it fills them in the
/// same way): empty, logged, if it doesn't answer in time.
pub async fn children_of(instance: &Instance) -> Vec<aurae_proto::runtime::InstanceStatus> {
    use aurae_proto::runtime as pb;
    let mut client = pb::runtime_client::RuntimeClient::new(instance.channel());
    let listed = tokio::time::timeout(CHILDREN_TIMEOUT, client.list(pb::ListRequest {})).await;
    match listed {
        Ok(Ok(r)) => r
            .into_inner()
            .workloads
            .into_iter()
            .filter_map(|w| w.instance)
            .collect(),
        Ok(Err(e)) => {
            tracing::warn!(
                "listing the instances of {}: {}",
                instance.name,
                e.message()
            );
            Vec::new()
        }
        Err(_) => {
            tracing::warn!(
                "listing the instances of {}: no answer within {CHILDREN_TIMEOUT:?}",
                instance.name
            );
            Vec::new()
        }
    }
}

/// The last `lines` lines an executable printed.
pub fn console_tail(exe: &Executable, lines: usize) -> String {
    let sub = exe.logs.subscribe(false);
    let start = sub.history.len().saturating_sub(lines);
    sub.history[start..]
        .iter()
        .map(|l| String::from_utf8_lossy(&l.data).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// This auraed's instances: the bridge, the addresses in use, the signing
/// identity.
pub struct Instances {
    cfg: InstancesConfig,
    /// Replaced once if this auraed was pre-started and then claimed.
    own: std::sync::RwLock<own::Own>,
    bridge: tokio::sync::Mutex<Option<Bridge>>,
    /// Indexes of addresses in use on the bridge.
    used: Mutex<std::collections::BTreeSet<u32>>,
    /// What this auraed tells its instances about themselves.
    pub metadata: Arc<crate::metadata::Store>,
    /// The metadata endpoint on the bridge, once the bridge is made.
    metadata_server: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Pre-started instances.
    pool: pool::Pool,
}

impl Instances {
    /// `own_id` and the bridge's name seed the bridge's prefix, so nested
    /// bridges (and two auraeds' bridges on one host) never clash.
    pub fn new(cfg: InstancesConfig, own_id: String) -> Self {
        Self {
            own: std::sync::RwLock::new(own::Own::new(own_id, &cfg.bridge, cfg.path.clone())),
            cfg,
            bridge: tokio::sync::Mutex::new(None),
            used: Mutex::new(Default::default()),
            metadata: Arc::new(crate::metadata::Store::default()),
            metadata_server: Mutex::new(None),
            pool: Default::default(),
        }
    }

    /// Serves the metadata endpoint on the bridge's address, with this
    /// auraed's SVID, to the SVIDs it issued.
    /// Starts the endpoint if it is not serving, and adds `record`, under
    /// one lock with [`Instances::forget`]'s removal, so that a record never
    /// outlives or misses its endpoint.
    fn serve_metadata(&self, record: crate::metadata::Record) -> Result<(), ApiError> {
        let mut server = self
            .metadata_server
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if server.is_none() {
            *server = Some(self.start_metadata()?);
        }
        self.metadata.insert(record);
        Ok(())
    }

    fn start_metadata(&self) -> Result<tokio::task::JoinHandle<()>, ApiError> {
        let tls = crate::tls_accept::TlsAcceptor::from_files(
            &self.cfg.trust_bundle,
            &self.cfg.own_cert,
            &self.cfg.own_key,
            crate::tls_accept::HandshakeLimits {
                timeout: Duration::from_secs(10),
                max_in_handshake: 64,
            },
        )
        .map_err(|e| ApiError::Internal(format!("the metadata endpoint's TLS: {e}")))?;
        let addr = self.metadata_addr();
        // A server just stopped (its last instance freed) lets its port go
        // once its task has been dropped: a few tries, 10 ms apart.
        let mut tries = 0;
        loop {
            match crate::metadata::bridge::serve(addr, tls.clone(), self.metadata.clone()) {
                Ok(task) => return Ok(task),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 20 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(ApiError::io(format!("the metadata endpoint on {addr}"), e)),
            }
        }
    }

    fn take_metadata_server(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.metadata_server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Where instances reach this auraed's metadata endpoint.
    pub fn metadata_addr(&self) -> SocketAddr {
        SocketAddr::new(
            self.ula().bridge_addr().into(),
            crate::metadata::bridge::PORT,
        )
    }

    /// The instance's path in the tree: this auraed's, then its name.
    pub fn child_path(&self, name: &str) -> String {
        let own = self.own();
        if own.path.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", own.path)
        }
    }

    /// Records what instance `i` may read of itself, serves the metadata
    /// endpoint on the bridge while any instance has a record, and, in a
    /// cell-backed instance, the link-local one.
    pub async fn remember(&self, spec: &InstanceSpec, i: &Instance) -> Result<(), ApiError> {
        self.serve_metadata(crate::metadata::Record {
            name: i.name.clone(),
            path: self.child_path(&i.name),
            spiffe_id: i.spiffe_id.clone(),
            address: i.address.to_string(),
            parent_address: self.metadata_addr().to_string(),
            backend: match i.choice.backend {
                Backend::MicroVm => "microvm".into(),
                Backend::Cell => "cell".into(),
            },
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            metadata: spec.metadata.clone(),
        })?;
        // (An instance in the host's network namespace gets none: the
        // address would be the host's.)
        if i.choice.backend == Backend::Cell && !i.host_network {
            use crate::metadata::imds;
            let made = i
                .imds_listener
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            let listener = match made {
                Some(l) => l,
                None => imds_listener(i).await?,
            };
            let source = imds::Source::Records {
                store: self.metadata.clone(),
                name: i.name.clone(),
            };
            let task = imds::serve(listener, source)
                .map_err(|e| ApiError::io("serving the link-local metadata endpoint", e))?;
            *i.imds.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        }
        Ok(())
    }

    pub fn config(&self) -> &InstancesConfig {
        &self.cfg
    }

    /// Marks `index` used by a VM taken back after a restart.
    fn claim_index(&self, index: u32) -> Result<(), ApiError> {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        if !used.insert(index) {
            return Err(ApiError::FailedPrecondition(format!(
                "address index {index} is taken twice"
            )));
        }
        Ok(())
    }

    fn take_index(&self) -> u32 {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let index = (0..).find(|i| !used.contains(i)).unwrap_or(0);
        used.insert(index);
        index
    }

    fn release_index(&self, index: u32) {
        self.used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&index);
    }

    /// Releases what an instance held of this auraed's: its address.
    pub fn forget(&self, instance: &Instance) {
        self.forget_record(&instance.name);
        self.release_index(instance.index);
    }

    /// Removes `name`'s metadata record; the endpoint on the bridge closes
    /// with the last one, until the next spawn.
    fn forget_record(&self, name: &str) {
        let mut server = self
            .metadata_server
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.metadata.remove(name);
        if self.metadata.is_empty() {
            if let Some(task) = server.take() {
                task.abort();
            }
        }
    }

    /// Removes the bridge if this auraed made it, once its instances are
    /// gone (at shutdown), unless VMs left running for the next auraed are
    /// on it (`keep_bridge`).
    pub async fn shutdown(&self, keep_bridge: bool) {
        self.stop_pool().await;
        if let Some(task) = self.take_metadata_server() {
            task.abort();
            // Ended (its listener closed) before the bridge goes.
            let _cancelled = task.await;
        }
        let bridge = self.bridge.lock().await.take();
        if let Some(b) = bridge.filter(|b| b.created && !keep_bridge) {
            match crate::net::delete_link(&b.name).await {
                Ok(_) => tracing::info!("removed the instance bridge {}", b.name),
                Err(e) => tracing::error!("removing the instance bridge {}: {e}", b.name),
            }
        }
    }

    pub fn image_file(&self, name: &str) -> PathBuf {
        self.cfg.image_dir.join(name)
    }
}

/// A listener on the link-local metadata address in cell-backed instance
/// `i`'s network namespace.
async fn imds_listener(i: &Instance) -> Result<std::net::TcpListener, ApiError> {
    use crate::metadata::imds;
    let (pidfd, _) = i.cell.namespaces();
    Ok(crate::net::metadata_listener(pidfd, imds::ADDR, imds::PORT).await?)
}

/// The default folder of the image: `cargo xtask image` writes it there
/// too.
pub const DEFAULT_IMAGE_DIR: &str = "/usr/local/share/aurae/image";

/// Whether `path` names an existing file.
fn is_file(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file())
        .unwrap_or(false)
}
