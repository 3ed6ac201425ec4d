//! A microVM pod sandbox on the configured CNI network: CNI attaches the
//! VMM's own network namespace (before the guest boots), and the guest's
//! eth1 is joined to the device CNI made there by redirects
//! ([`crate::net::join_pod_tap`]), with the address CNI gave. The
//! attachment is the sandbox's once the instance runs, as a cell-backed
//! pod's is; its record is written as soon as ADD answers, so that an
//! auraed restarted after a crash during the boot releases the address.
//! The guest takes CNI's MAC and MTU too.

use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::sync::Mutex;

use futures::future::BoxFuture;

use super::cni::{self, Attachment, Network};
use crate::error::ApiError;
use crate::instances::pod_network::{PodLink, PodNetwork};

/// The guest's TAP in the VMM's namespace.
const POD_TAP: &str = "podtap";

/// A pod's CNI network, for its microVM's VMM to join.
pub struct CniPod {
    pub network: Network,
    pub bin_dirs: Vec<PathBuf>,
    pub sandbox_id: String,
    pub pod_name: String,
    pub pod_namespace: String,
    /// Where the attachment's record goes (the sandbox's `cni.json`).
    pub record: PathBuf,
    attached: Mutex<Option<Attachment>>,
}

impl CniPod {
    pub fn new(
        network: Network,
        bin_dirs: Vec<PathBuf>,
        sandbox_id: String,
        pod_name: String,
        pod_namespace: String,
        record: PathBuf,
    ) -> CniPod {
        CniPod {
            network,
            bin_dirs,
            sandbox_id,
            pod_name,
            pod_namespace,
            record,
            attached: Mutex::new(None),
        }
    }

    /// The attachment, once the instance runs (the sandbox's from then).
    pub fn take(&self) -> Option<Attachment> {
        self.attached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    async fn join(&self, netns: BorrowedFd<'_>) -> Result<PodLink, ApiError> {
        let failed = |e: &dyn std::error::Error| {
            ApiError::Internal(format!(
                "the pod's CNI network {}: {}",
                self.network.name,
                crate::error::chain(e)
            ))
        };
        let how = cni::Invocation {
            bin_dirs: &self.bin_dirs,
            container_id: &self.sandbox_id,
            pod_name: &self.pod_name,
            pod_namespace: &self.pod_namespace,
        };
        let a = cni::add(&self.network, &how, netns)
            .await
            .map_err(|e| failed(&e))?;
        let undo = |a: Attachment| async move {
            if let Err(undo) = cni::del(&a, &self.bin_dirs).await {
                tracing::error!(
                    "sandbox {}: detaching its CNI network: {undo}",
                    self.sandbox_id
                );
            }
            remove_record(&self.record);
        };
        if let Err(e) = save_record(&self.record, &a) {
            undo(a).await;
            return Err(e);
        }
        let device = match crate::net::join_pod_tap(netns, cni::IFNAME, POD_TAP).await {
            Ok(d) => d,
            Err(e) => {
                undo(a).await;
                return Err(failed(&e));
            }
        };
        let link = PodLink {
            tap: POD_TAP.into(),
            address: a.ip,
            prefix: a.prefix,
            gateway: a.gateway,
            mac: device.mac,
            mtu: device.mtu,
        };
        *self.attached.lock().unwrap_or_else(|e| e.into_inner()) = Some(a);
        Ok(link)
    }
}

/// Writes the record of `a`, for a DEL after a crash of this auraed.
fn save_record(path: &std::path::Path, a: &Attachment) -> Result<(), ApiError> {
    let json = serde_json::to_vec(&a.saved())
        .map_err(|e| ApiError::Internal(format!("encoding the CNI attachment's record: {e}")))?;
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(path, json));
    written.map_err(|e| ApiError::io(format!("writing {}", path.display()), e))
}

fn remove_record(path: &std::path::Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::error!("removing {}: {e}", path.display()),
    }
}

impl PodNetwork for CniPod {
    fn attach<'a>(&'a self, netns: BorrowedFd<'a>) -> BoxFuture<'a, Result<PodLink, ApiError>> {
        Box::pin(self.join(netns))
    }

    fn detach(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(a) = self.take() {
                if let Err(e) = cni::del(&a, &self.bin_dirs).await {
                    tracing::error!(
                        "sandbox {}: detaching its CNI network: {e}",
                        self.sandbox_id
                    );
                }
            }
        })
    }
}
