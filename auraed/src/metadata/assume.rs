//! `Assume`, served by a pre-started instance: its parent, having claimed
//! it from its pool for a workload, gives it that workload's name, its
//! path in the tree and the identity the parent issued for it. The instance
//! then presents the new SVID on every new handshake (its listeners' and
//! its link to the parent's metadata endpoint), signs its own children
//! with the new CA, and takes the name as its hostname. Only the parent may
//! ask, and only before the instance has spawned anything.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use aurae_proto::metadata as pb;

use crate::error::ApiError;
use crate::runtime::Runtime;
use crate::svid_swap::SwappableSvid;
use crate::validation as v;

/// What `Assume` changes.
pub struct Assumer {
    /// The SVID this auraed presents.
    pub svid: Arc<SwappableSvid>,
    /// Its parent, the only caller allowed.
    pub parent_id: Option<String>,
    /// Whether its parent started it ahead (`[instances] pre_started`):
    /// no other auraed takes an identity.
    pub pre_started: bool,
    pub runtime: Arc<Runtime>,
    /// Set by the first `Assume` that got this far: there is no second.
    pub taken: std::sync::atomic::AtomicBool,
}

/// Writes `contents` to `path` through a temporary file and a rename, so
/// that a reader sees the old file or the new one (mode 0600 for keys).
fn replace_file(path: &Path, contents: &str, private: bool) -> Result<(), ApiError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = PathBuf::from(format!("{}.assume", path.display()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, path));
    written.map_err(|e| {
        // Best effort: the temporary file is ours alone.
        if let Err(rm) = std::fs::remove_file(&tmp) {
            tracing::debug!("Assume: removing {}: {rm}", tmp.display());
        }
        ApiError::io(format!("Assume: writing {}", path.display()), e)
    })
}

impl Assumer {
    /// Takes the identity in `r` if `caller` (the client's SPIFFE ID) is
    /// this auraed's parent; returns the SPIFFE ID now presented.
    pub async fn assume(
        &self,
        caller: &str,
        r: pb::AssumeRequest,
    ) -> Result<pb::AssumeResponse, ApiError> {
        if !self.pre_started {
            return Err(ApiError::FailedPrecondition(
                "Assume: this auraed was not started ahead by its parent; its identity is fixed"
                    .into(),
            ));
        }
        if self.parent_id.as_deref() != Some(caller) {
            return Err(ApiError::PermissionDenied(format!(
                "Assume: only this auraed's parent may give it an identity, not {caller}"
            )));
        }
        let instances = self.runtime.instances.as_ref().ok_or_else(|| {
            ApiError::FailedPrecondition(
                "Assume: this auraed has no instances configuration (no signing files)".into(),
            )
        })?;
        v::name("name", &r.name)?;
        let last = r.path.rsplit('/').next().unwrap_or_default();
        if last != r.name || r.path.split('/').any(|s| v::name("path", s).is_err()) {
            return Err(ApiError::invalid(
                "path",
                format!("{:?} is not a path of names ending in {:?}", r.path, r.name),
            ));
        }
        if self.taken.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(ApiError::FailedPrecondition(
                "Assume: this auraed has taken an identity already".into(),
            ));
        }
        if !self.runtime.registry.list().is_empty() {
            return Err(ApiError::FailedPrecondition(
                "Assume: this auraed runs workloads already; only an idle one takes an identity"
                    .into(),
            ));
        }
        // Both halves parse and match before anything changes.
        let next = SwappableSvid::from_pem(r.leaf_chain_pem.as_bytes(), r.leaf_key_pem.as_bytes())
            .map_err(|e| {
                ApiError::invalid(e.field("leaf_chain_pem", "leaf_key_pem"), e.to_string())
            })?;
        SwappableSvid::from_pem(r.ca_chain_pem.as_bytes(), r.ca_key_pem.as_bytes())
            .map_err(|e| ApiError::invalid(e.field("ca_chain_pem", "ca_key_pem"), e.to_string()))?;
        let id = next
            .spiffe_id()
            .ok_or_else(|| ApiError::invalid("leaf_chain_pem", "the leaf carries no SPIFFE ID"))?;
        let cfg = instances.config();
        instances
            .assume(id.clone(), r.path.clone(), || {
                replace_file(&cfg.own_cert, &r.leaf_chain_pem, false)?;
                replace_file(&cfg.own_key, &r.leaf_key_pem, true)?;
                replace_file(&cfg.signing_chain, &r.ca_chain_pem, false)?;
                replace_file(&cfg.signing_key, &r.ca_key_pem, true)?;
                self.svid.take_from(&next);
                Ok(())
            })
            .await?;
        // An instance runs in a UTS namespace of its own.
        if let Err(e) = nix::unistd::sethostname(&r.name) {
            tracing::warn!("Assume: setting the hostname to {}: {e}", r.name);
        }
        tracing::info!(name = %r.name, path = %r.path, id = %id, "took the identity the parent gave");
        Ok(pb::AssumeResponse { spiffe_id: id })
    }
}
