//! Authorization by SPIFFE ID: the client's certificate was already verified
//! against the CA by TLS; here its SPIFFE ID is checked against the config's
//! allow-list (after the delegated subtrees of its chain are checked).
//! Anyone else gets PERMISSION_DENIED. The chain comes from
//! the connection's [`PeerCertificates`], set by [`crate::tls_accept`].

use std::collections::BTreeSet;
use std::sync::Arc;

use tonic::{Request, Status};

use crate::tls_accept::PeerCertificates;

#[derive(Clone)]
pub struct SpiffeAuthz {
    allowed: Arc<BTreeSet<String>>,
}

impl SpiffeAuthz {
    pub fn new(allowed: impl IntoIterator<Item = String>) -> Self {
        Self {
            allowed: Arc::new(allowed.into_iter().collect()),
        }
    }

    fn check(
        &self,
        certs: Option<Arc<Vec<tonic::transport::CertificateDer<'static>>>>,
    ) -> Result<String, Status> {
        let certs = certs
            .ok_or_else(|| Status::permission_denied("no client certificate was presented"))?;
        if certs.is_empty() {
            return Err(Status::permission_denied(
                "no client certificate was presented",
            ));
        }
        // TLS verified the chain up to the root; here each intermediate's
        // delegated subtree must hold the leaf's SPIFFE ID, so an instance
        // can't mint a sibling's (or its parent's) identity.
        let id = crate::pki::check_subtree(&certs)
            .map_err(|e| Status::permission_denied(format!("client certificate refused: {e}")))?;
        if self.allowed.contains(&id) {
            Ok(id)
        } else {
            Err(Status::permission_denied(format!(
                "{id} is not allowed to use this auraed"
            )))
        }
    }
}

impl tonic::service::Interceptor for SpiffeAuthz {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        // Set by crate::tls_accept on every mTLS listener.
        let certs = request
            .extensions()
            .get::<PeerCertificates>()
            .and_then(|p| p.certs.clone());
        let id = self.check(certs)?;
        tracing::debug!(client = %id, "authorized");
        Ok(request)
    }
}
