//! The fs device: its config space (the tag), its two queues (hiprio and
//! one request queue) and the FUSE server that answers them.

use std::path::Path;
use std::sync::Arc;

use fs_queue::{QueueOwnedT as _, QueueT as _};
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::memory::{self, FsMemory, ViewError};
use super::metrics::FsMetrics;
use crate::devices::event_loop::WatchFault;
use crate::devices::virtio::{ActivateError, Interrupt, VirtioDevice, F_VERSION_1, TYPE_FS};

/// The longest tag (the config space's field, with no NUL when full).
pub const TAG_MAX: usize = 36;
/// hiprio (FORGET, INTERRUPT) and one request queue.
const QUEUE_SIZES: [u16; 2] = [128, 256];
/// How long the guest may trust a name or attributes before asking again:
/// short, since the host may change the folder (a kubelet rewrites its
/// projected volumes).
const CACHE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("tag {0:?}: 1 to {TAG_MAX} bytes, no NUL")]
    Tag(String),
    #[error("{0}: not a folder")]
    NotFolder(String),
    #[error("{0} is not UTF-8")]
    NotUtf8(std::path::PathBuf),
    #[error("the passthrough file system of {path} (PassthroughFs::new)")]
    New {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("opening {path} to share it (PassthroughFs::import)")]
    Import {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("an eventfd of the fs device")]
    EventFd(#[source] std::io::Error),
}

/// The device once the driver set it up: a view of guest memory (see
/// [`memory::view`]) and its queues, which the server works on.
pub(super) struct Active {
    mem: FsMemory,
    queues: Vec<fs_queue::Queue>,
    interrupt: Arc<Interrupt>,
}

pub struct Fs {
    tag: [u8; TAG_MAX],
    server: Server<Arc<PassthroughFs>>,
    pub(super) queue_evts: [EventFd; 2],
    active: Option<Active>,
    pub metrics: Arc<FsMetrics>,
    /// Records a failed event-loop registration, for the VM to report.
    pub watch_fault: WatchFault,
}

impl Fs {
    /// Shares the folder `root` under `tag`. The folder is opened now: the
    /// server works from its descriptor, whatever happens to the path.
    pub fn new(tag: &str, root: &Path) -> Result<Self, FsError> {
        if tag.is_empty() || tag.len() > TAG_MAX || tag.contains('\0') {
            return Err(FsError::Tag(tag.into()));
        }
        let path = root
            .to_str()
            .ok_or_else(|| FsError::NotUtf8(root.to_path_buf()))?
            .to_string();
        if !root.is_dir() {
            return Err(FsError::NotFolder(path));
        }
        let fs = PassthroughFs::<()>::new(Config {
            root_dir: path.clone(),
            do_import: true,
            cache_policy: CachePolicy::Auto,
            entry_timeout: CACHE_TIMEOUT,
            attr_timeout: CACHE_TIMEOUT,
            xattr: false,
            writeback: false,
            ..Default::default()
        })
        .map_err(|source| FsError::New {
            path: path.clone(),
            source,
        })?;
        fs.import()
            .map_err(|source| FsError::Import { path, source })?;
        let mut t = [0u8; TAG_MAX];
        t[..tag.len()].copy_from_slice(tag.as_bytes());
        let evt = || EventFd::new(EFD_NONBLOCK).map_err(FsError::EventFd);
        Ok(Self {
            tag: t,
            server: Server::new(Arc::new(fs)),
            queue_evts: [evt()?, evt()?],
            active: None,
            metrics: Arc::new(FsMetrics::default()),
            watch_fault: WatchFault::default(),
        })
    }

    /// Answers the available requests of queue `q`: at most a queue's
    /// worth per call, then its notification schedules the rest. A corrupt
    /// ring sets NEEDS_RESET. Returns the number of requests taken.
    pub fn process_queue(&mut self, q: usize) -> usize {
        let Some(active) = self.active.as_mut() else {
            return 0;
        };
        let (Some(queue), Some(kick)) = (active.queues.get_mut(q), self.queue_evts.get(q)) else {
            return 0;
        };
        let (mem, interrupt, metrics) = (&active.mem, &active.interrupt, &self.metrics);
        if interrupt.needs_reset() {
            return 0;
        }
        let mut served = 0;
        loop {
            if served >= usize::from(queue.size()) {
                // A write to an eventfd fails only when its counter is
                // full (EAGAIN): it is signalled already.
                let _ = kick.write(1);
                break;
            }
            let chain = match queue.iter(mem) {
                Ok(mut iter) => iter.next(),
                Err(_) => {
                    interrupt.set_needs_reset();
                    break;
                }
            };
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let len = answer(&self.server, mem, chain, metrics);
            if queue.add_used(mem, head, len).is_err() {
                interrupt.set_needs_reset();
                break;
            }
            served += 1;
        }
        if served > 0 && queue.needs_notification(mem).unwrap_or(true) {
            interrupt.signal_used_queue();
        }
        served
    }

    /// Whether the device stopped on bad guest input.
    pub fn active_needs_reset(&self) -> bool {
        self.active
            .as_ref()
            .is_some_and(|a| a.interrupt.needs_reset())
    }
}

/// One FUSE message: the bytes of the reply written into the chain's
/// writable buffers (none for a message without a reply, or one the
/// server could not take, which the driver sees as a request that never
/// completes properly: its reply header is missing).
fn answer(
    server: &Server<Arc<PassthroughFs>>,
    mem: &FsMemory,
    chain: fs_queue::DescriptorChain<&FsMemory>,
    metrics: &FsMetrics,
) -> u32 {
    FsMetrics::inc(&metrics.requests);
    let reader = Reader::from_descriptor_chain(mem, chain.clone());
    let writer = VirtioFsWriter::new(mem, chain);
    let (Ok(reader), Ok(writer)) = (reader, writer) else {
        FsMetrics::inc(&metrics.invalid_chains);
        return 0;
    };
    match server.handle_message(reader, writer.into(), None, None) {
        Ok(n) => u32::try_from(n).unwrap_or(0),
        Err(_) => {
            FsMetrics::inc(&metrics.failed);
            0
        }
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }
    fn avail_features(&self) -> u64 {
        F_VERSION_1
    }
    fn set_acked_features(&mut self, _features: u64) {}
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_fs_config: the tag, then num_request_queues.
        let mut config = [0u8; TAG_MAX + 4];
        config[..TAG_MAX].copy_from_slice(&self.tag);
        config[TAG_MAX..].copy_from_slice(&1u32.to_le_bytes());
        crate::devices::virtio::read_config_bytes(&config, offset, data);
    }
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        if queues.len() != QUEUE_SIZES.len() {
            return Err(ActivateError::QueueCount {
                expected: QUEUE_SIZES.len(),
                got: queues.len(),
            });
        }
        let view = memory::view(&mem).map_err(ActivateError::FsView)?;
        let queues = queues
            .iter()
            .map(memory::queue)
            .collect::<Result<Vec<_>, ViewError>>()
            .map_err(ActivateError::FsView)?;
        self.active = Some(Active {
            mem: view,
            queues,
            interrupt,
        });
        Ok(())
    }
    fn reset(&mut self) {
        self.active = None;
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }
    fn is_activated(&self) -> bool {
        self.active.is_some()
    }
}
