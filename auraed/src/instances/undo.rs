//! What a spawn made so far, as a value: undone in reverse when a later
//! step fails.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::Instances;
use crate::cells::Cell;
use crate::executables::Executable;
use crate::net::{self, Tap, Veth};

/// What a spawn made so far, undone in reverse on failure.
#[derive(Default)]
pub(super) struct Undo {
    pub(super) index: Option<u32>,
    pub(super) cell: Option<Arc<Cell>>,
    pub(super) veth: Option<Veth>,
    pub(super) host_address: Option<net::HostAddress>,
    pub(super) tap: Option<Tap>,
    /// Its folder (see [`super::Instance`]'s).
    pub(super) dir: Option<PathBuf>,
    /// A kept microVM's initrd folder, on the cells' tmpfs (its folder is
    /// on disk).
    pub(super) boot_dir: Option<PathBuf>,
    pub(super) init: Option<Arc<Executable>>,
    /// Devices on host bridges (a pod's `networks`).
    pub(super) networks: Vec<super::networks::Attached>,
    /// A microVM's pod network, attached.
    pub(super) pod_network: Option<super::pod_network::PodNetworkHook>,
    /// A plain VM's metadata record (by name) and its link-local endpoint.
    pub(super) metadata: Option<(String, tokio::task::JoinHandle<()>)>,
}

impl Undo {
    pub(super) async fn rollback(mut self, instances: &Instances) {
        if let Some((name, endpoint)) = self.metadata.take() {
            endpoint.abort();
            instances.forget_record(&name);
        }
        if let Some(hook) = self.pod_network.take() {
            hook.0.detach().await;
        }
        if let Some(init) = self.init.take() {
            if let Err(e) = init
                .stop(nix::sys::signal::Signal::SIGKILL, Duration::ZERO)
                .await
            {
                tracing::error!("rolling back a spawn: stopping its init: {e}");
            }
        }
        if let Some(cell) = self.cell.take() {
            if let Err(e) = cell.destroy().await {
                tracing::error!("rolling back a spawn: removing its cell: {e}");
            }
        }
        if let Some(veth) = self.veth.take() {
            if let Err(e) = veth.remove().await {
                tracing::error!("rolling back a spawn: removing its veth: {e}");
            }
        }
        if let Some(a) = self.host_address.take() {
            if let Err(e) = a.remove().await {
                tracing::error!("rolling back a spawn: removing its host address: {e}");
            }
        }
        if let Some(tap) = self.tap.take() {
            if let Err(e) = tap.remove().await {
                tracing::error!("rolling back a spawn: removing its TAP: {e}");
            }
        }
        if let Err(e) = super::networks::remove_all(std::mem::take(&mut self.networks)).await {
            tracing::error!("rolling back a spawn: removing its network devices: {e}");
        }
        for dir in [self.dir.take(), self.boot_dir.take()]
            .into_iter()
            .flatten()
        {
            if let Err(e) = super::microvm::remove_dir(&dir) {
                tracing::error!("rolling back a spawn: {e}");
            }
        }
        if let Some(index) = self.index.take() {
            instances.release_index(index);
        }
    }
}
