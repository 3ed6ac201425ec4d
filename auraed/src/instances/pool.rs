//! Pre-started cell-backed instances (`[instances] pool = N`): each is a
//! whole instance (its cell, veth, address and running auraed, answering
//! health over its link) under a provisional name and identity. A spawn or
//! pod that a plain cell instance of the default image can serve claims
//! one instead of starting an auraed:
//!
//! 1. this auraed issues the workload's own identity, as for any spawn;
//! 2. the instance takes it (`Metadata.Assume`, from its parent only): it
//!    presents the new SVID from its next handshake, and the link expects
//!    it from its next connection (the open one stays);
//! 3. the pod's images are bound read-only into the running instance's
//!    mount namespace.
//!
//! A claim that fails at any step discards the instance (nothing of it is
//! left) and the request is served by a new spawn instead. Taken
//! instances are replaced in the background once no claim has come for
//! [`QUIET`], so that neither the next claim nor the claimed pod's first
//! containers (a kubelet creates and starts them right after the sandbox)
//! share the CPU with a spawn.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aurae_proto::metadata as mpb;

use super::backend::{Backend, Preference};
use super::{Instance, InstanceSpec, Instances};
use crate::cells::CellContext;
use crate::error::ApiError;

/// No claim for this long counts as quiet: the refill may start. Longer
/// than a pod's sandbox-create-start sequence through crictl here (about
/// 130 ms; with 50 ms the refill ran during the container's start and
/// added about 10 ms to it, `bench cri`).
const QUIET: Duration = Duration::from_millis(300);
/// The longest a needed refill waits for quiet.
const MAX_DELAY: Duration = Duration::from_secs(1);
/// How long a pre-started instance has to start.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an instance has to take its identity.
const ASSUME_TIMEOUT: Duration = Duration::from_secs(5);
/// The wait after a failed refill before the next try.
const RETRY: Duration = Duration::from_secs(5);

/// The pre-started instances and the refill's state.
#[derive(Default)]
pub(super) struct Pool {
    ready: Mutex<Vec<Instance>>,
    last_take: Mutex<Option<Instant>>,
    /// Woken on a take, and on stop.
    wanted: tokio::sync::Notify,
    stopping: AtomicBool,
    /// Numbers the provisional names.
    seq: AtomicU64,
    refill: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Pool {
    fn len(&self) -> usize {
        self.ready.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn take(&self) -> Option<Instance> {
        let taken = self.ready.lock().unwrap_or_else(|e| e.into_inner()).pop();
        if taken.is_some() {
            *self.last_take.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            self.wanted.notify_one();
        }
        taken
    }

    /// Waits until no take has come for [`QUIET`], or [`MAX_DELAY`].
    async fn wait_quiet(&self) {
        let first = Instant::now();
        loop {
            let last = *self.last_take.lock().unwrap_or_else(|e| e.into_inner());
            let quiet_at = last.map_or(first, |t| t + QUIET);
            let at = quiet_at.min(first + MAX_DELAY);
            if Instant::now() >= at {
                return;
            }
            tokio::time::sleep_until(at.into()).await;
        }
    }
}

/// Binds the images of `spec` read-only into the mount namespace of
/// `slot`'s auraed (its own, a slave of its cell's, where its cells are
/// made from).
async fn bind_images(spec: &InstanceSpec, slot: &Instance) -> Result<(), ApiError> {
    if spec.read_only.is_empty() {
        return Ok(());
    }
    let binds: Vec<_> = spec
        .read_only
        .iter()
        .map(|s| (s.host.clone(), s.inside.clone()))
        .collect();
    let ns = slot.pidfd()?;
    crate::blocking::run("binding images into the instance", move || {
        crate::sys::mount_inject::bind_read_only(ns.as_fd(), &binds)
    })
    .await?
    .map_err(|source| ApiError::Mount {
        what: "binding images into the instance".into(),
        source,
    })
}

/// A provisional name: upper case, so that no request's name (lower case)
/// can be the same, and a valid hostname. It names the cell for good, so it
/// carries a token drawn at this auraed's start: a kept instance's cell,
/// left by a previous auraed, has another.
fn provisional_name(n: u64) -> String {
    static RUN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let run = RUN.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        // std's hasher keys are drawn from the OS's randomness.
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        format!("{:08x}", random as u32)
    });
    format!("{PROVISIONAL}{run}-{n}")
}

const PROVISIONAL: &str = "Pooled-";

/// Whether `name` is a pre-started instance's provisional name.
pub(super) fn is_provisional(name: &str) -> bool {
    name.starts_with(PROVISIONAL)
}

impl Instances {
    /// Whether a pre-started instance can serve `spec`: a cell of the
    /// default image, without devices on host bridges or limits.
    fn poolable(&self, spec: &InstanceSpec) -> bool {
        self.cfg.pool > 0
            && self.cfg.fail_at.is_none()
            && spec.preference != Preference::MicroVm
            && spec.kernel.is_none()
            && spec.initramfs.is_none()
            && spec.networks.is_empty()
            && !spec.host_ipc
            && !spec.host_pid
            && !spec.host_network
            && spec.vcpus == 0
            && spec.memory_mib == 0
            && matches!(self.choice_for(spec), Ok(c) if c.backend == Backend::Cell)
    }

    /// A pre-started instance made `spec`'s, or None (none ready, `spec`
    /// needs more, or the claim failed and the instance was discarded).
    pub(super) async fn claim(&self, spec: &InstanceSpec) -> Option<Instance> {
        if !self.poolable(spec) || self.pool.stopping.load(Ordering::SeqCst) {
            return None;
        }
        let started = Instant::now();
        loop {
            let slot = self.pool.take()?;
            if !slot.running() {
                tracing::warn!("pre-started instance {} had exited; discarded", slot.name);
                self.discard(slot).await;
                continue;
            }
            match self.make_own(spec, &slot).await {
                Ok(spiffe_id) => {
                    let mut choice = slot.choice.clone();
                    choice.reason = format!("{}; pre-started ({})", choice.reason, slot.name);
                    return Some(Instance {
                        name: spec.name.clone(),
                        spiffe_id,
                        choice,
                        ready_after: started.elapsed(),
                        created_at: SystemTime::now(),
                        shared: spec.read_only.iter().map(|s| s.inside.clone()).collect(),
                        ..slot
                    });
                }
                Err(e) => {
                    tracing::warn!(
                        "instance {}: claiming pre-started {} failed ({e}); discarding it and \
                         spawning anew",
                        spec.name,
                        slot.name
                    );
                    self.discard(slot).await;
                    return None;
                }
            }
        }
    }

    /// Steps 1 to 3 of a claim (the binds while the instance takes its
    /// identity); returns the instance's new SPIFFE ID.
    async fn make_own(&self, spec: &InstanceSpec, slot: &Instance) -> Result<String, ApiError> {
        let identity = self.issue(&spec.name)?;
        let mut client = mpb::metadata_client::MetadataClient::new(slot.channel());
        let asked = client.assume(mpb::AssumeRequest {
            name: spec.name.clone(),
            path: self.child_path(&spec.name),
            leaf_chain_pem: identity.leaf_chain_pem,
            leaf_key_pem: identity.leaf_key_pem,
            ca_chain_pem: identity.ca_chain_pem,
            ca_key_pem: identity.ca_key_pem,
        });
        let assumed = async {
            let taken = tokio::time::timeout(ASSUME_TIMEOUT, asked)
                .await
                .map_err(|_| {
                    ApiError::DeadlineExceeded(format!(
                        "the instance did not take its identity within {ASSUME_TIMEOUT:?}"
                    ))
                })?
                .map_err(|status| ApiError::Instance {
                    what: "giving the instance its identity".into(),
                    status: Box::new(status),
                })?
                .into_inner();
            if taken.spiffe_id != identity.spiffe_id {
                return Err(ApiError::Internal(format!(
                    "the instance took {}, not {}",
                    taken.spiffe_id, identity.spiffe_id
                )));
            }
            Ok(())
        };
        tokio::try_join!(assumed, bind_images(spec, slot))?;
        slot.expected.set(identity.spiffe_id.clone());
        Ok(identity.spiffe_id)
    }

    /// Removes a pre-started instance and releases its address.
    async fn discard(&self, slot: Instance) {
        if let Err(e) = slot.tear_down().await {
            tracing::error!("pre-started instance {}: tearing down: {e}", slot.name);
        }
        self.release_index(slot.index);
    }

    /// Starts the refill (with `[instances] pool` above 0).
    pub fn start_pool(self: &Arc<Self>, cells: CellContext, log_bytes: usize) {
        if self.cfg.pool == 0 {
            return;
        }
        let me = self.clone();
        let task = tokio::spawn(async move { me.refill(cells, log_bytes).await });
        *self.pool.refill.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
    }

    async fn refill(self: Arc<Self>, cells: CellContext, log_bytes: usize) {
        let pool = &self.pool;
        loop {
            while pool.len() >= self.cfg.pool && !pool.stopping.load(Ordering::SeqCst) {
                pool.wanted.notified().await;
            }
            pool.wait_quiet().await;
            if pool.stopping.load(Ordering::SeqCst) {
                return;
            }
            let name = provisional_name(pool.seq.fetch_add(1, Ordering::SeqCst));
            let spec = InstanceSpec {
                name: name.clone(),
                vcpus: 0,
                memory_mib: 0,
                nested: false,
                preference: Preference::Cell,
                kernel: None,
                initramfs: None,
                ready_timeout: READY_TIMEOUT,
                read_only: Vec::new(),
                metadata: Default::default(),
                networks: Vec::new(),
                host_ipc: false,
                host_pid: false,
                host_network: false,
                keep: false,
                pod_network: None,
                files: Vec::new(),
                volumes: false,
            };
            let started = match self.spawn_new(&spec, &cells, log_bytes).await {
                // Its metadata endpoint's listener, made ahead too.
                Ok(slot) => match super::imds_listener(&slot).await {
                    Ok(l) => {
                        *slot.imds_listener.lock().unwrap_or_else(|e| e.into_inner()) = Some(l);
                        Ok(slot)
                    }
                    Err(e) => {
                        self.discard(slot).await;
                        Err(e)
                    }
                },
                Err(e) => Err(e),
            };
            match started {
                Ok(slot) if pool.stopping.load(Ordering::SeqCst) => self.discard(slot).await,
                Ok(slot) => {
                    tracing::info!(
                        instance = %slot.name,
                        ready_ms = slot.ready_after.as_millis() as u64,
                        "pre-started an instance"
                    );
                    self.watch_slot(&slot);
                    pool.ready
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(slot);
                }
                Err(e) => {
                    tracing::warn!("pre-starting an instance: {e}; trying again in {RETRY:?}");
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY) => {}
                        _ = pool.wanted.notified() => {}
                    }
                }
            }
        }
    }

    /// Discards pre-started instance `slot` if its auraed exits while it
    /// waits (the kernel reports the exit), and wakes the refill. A slot
    /// claimed meanwhile has left the pool, under another name.
    fn watch_slot(self: &Arc<Self>, slot: &Instance) {
        let (me, init, name) = (self.clone(), slot.init.clone(), slot.name.clone());
        tokio::spawn(async move {
            init.wait().await;
            let waiting = {
                let mut ready = me.pool.ready.lock().unwrap_or_else(|e| e.into_inner());
                let at = ready.iter().position(|s| s.name == name);
                at.map(|i| ready.swap_remove(i))
            };
            if let Some(slot) = waiting {
                tracing::warn!("pre-started instance {name}: its auraed exited; replacing it");
                me.discard(slot).await;
                me.pool.wanted.notify_one();
            }
        });
    }

    /// Stops the refill and removes the pre-started instances.
    pub async fn stop_pool(&self) {
        self.pool.stopping.store(true, Ordering::SeqCst);
        self.pool.wanted.notify_one();
        let task = self
            .pool
            .refill
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(task) = task {
            // Bounded: a spawn in progress ends within its ready timeout.
            if let Err(e) = task.await {
                tracing::error!("the pool's refill: {e}");
            }
        }
        let slots = std::mem::take(&mut *self.pool.ready.lock().unwrap_or_else(|e| e.into_inner()));
        for slot in slots {
            self.discard(slot).await;
        }
    }
}
