//! Who an auraed is among instances: its SPIFFE ID, the prefix of its
//! bridge (derived from it) and its path in the tree; replaced once if it
//! was pre-started and then claimed by its parent.

use super::Instances;
use crate::error::ApiError;
use crate::net::Ula;

/// Who this auraed is: its SPIFFE ID, the prefix of its bridge (derived
/// from it), and its path in the tree.
#[derive(Debug, Clone)]
pub(super) struct Own {
    pub(super) id: String,
    pub(super) ula: Ula,
    pub(super) path: String,
}

impl Own {
    /// The ID and the bridge's name seed the bridge's prefix, so nested
    /// bridges (and two auraeds' bridges on one host) never clash.
    pub(super) fn new(id: String, bridge: &str, path: String) -> Self {
        Self {
            ula: Ula::derive(format!("{id} {bridge}").as_bytes()),
            id,
            path,
        }
    }
}

impl Instances {
    pub(super) fn own(&self) -> Own {
        self.own.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) fn ula(&self) -> Ula {
        self.own().ula
    }

    pub(super) fn own_id(&self) -> String {
        self.own().id
    }

    /// This pre-started auraed becomes `path` in the tree, with the SVID
    /// `own_id`, once `switch` (which writes its files) has succeeded, all
    /// under the bridge's lock, so that no spawn sees half of it. Refused
    /// once it has spawned anything (its bridge's prefix and its instances'
    /// identities derive from the old ones).
    pub async fn assume(
        &self,
        own_id: String,
        path: String,
        switch: impl FnOnce() -> Result<(), ApiError>,
    ) -> Result<(), ApiError> {
        let bridge = self.bridge.lock().await;
        let used = !self
            .used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty();
        if bridge.is_some() || used {
            return Err(ApiError::FailedPrecondition(
                "Assume: this auraed has spawned instances already; only a fresh one takes a \
                 new identity"
                    .into(),
            ));
        }
        switch()?;
        *self.own.write().unwrap_or_else(|e| e.into_inner()) =
            Own::new(own_id, &self.cfg.bridge, path);
        Ok(())
    }
}
