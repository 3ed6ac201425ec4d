//! The parent's metadata endpoint on its bridge: `Own` only, over mTLS,
//! for the instances it spawned. The caller's SVID (checked against the
//! trust bundle by TLS, and against its intermediates' delegated subtrees
//! here) picks the record: an instance reads its own and can't name
//! another's. `Get` and `Set` are refused here: they are for admins, on the
//! API.

use std::net::SocketAddr;
use std::sync::Arc;

use aurae_proto::metadata as pb;
use aurae_proto::metadata::metadata_server::{Metadata, MetadataServer};
use tonic::{Request, Response, Status};

use super::Store;
use crate::tls_accept::{PeerCertificates, TlsAcceptor};

/// The port of the endpoint, on the bridge's address.
pub const PORT: u16 = 8444;

struct BridgeMetadata {
    store: Arc<Store>,
}

fn admins_only() -> Status {
    Status::permission_denied(
        "only Own is served on the bridge (an instance reads its own record); Get and Set are \
         for admins, on auraed's API",
    )
}

#[tonic::async_trait]
impl Metadata for BridgeMetadata {
    async fn own(
        &self,
        request: Request<pb::OwnRequest>,
    ) -> Result<Response<pb::InstanceRecord>, Status> {
        let certs = request
            .extensions()
            .get::<PeerCertificates>()
            .and_then(|p| p.certs.clone())
            .filter(|c| !c.is_empty())
            .ok_or_else(|| Status::permission_denied("no client certificate was presented"))?;
        let id = crate::pki::check_subtree(&certs)
            .map_err(|e| Status::permission_denied(format!("client certificate refused: {e}")))?;
        let record = self.store.by_spiffe_id(&id).ok_or_else(|| {
            Status::permission_denied(format!("{id} is not an instance of this auraed"))
        })?;
        tracing::debug!(instance = %record.name, "metadata: own record read");
        Ok(Response::new(record.to_pb()))
    }

    async fn get(
        &self,
        _: Request<pb::GetRequest>,
    ) -> Result<Response<pb::InstanceRecord>, Status> {
        Err(admins_only())
    }

    async fn set(
        &self,
        _: Request<pb::SetRequest>,
    ) -> Result<Response<pb::InstanceRecord>, Status> {
        Err(admins_only())
    }

    async fn assume(
        &self,
        _: Request<pb::AssumeRequest>,
    ) -> Result<Response<pb::AssumeResponse>, Status> {
        Err(Status::permission_denied(
            "Assume is a parent's call to its instance, on the instance's API, not on the bridge",
        ))
    }
}

/// Serves the endpoint at `addr` (the bridge's address) with `tls`; the
/// task runs until aborted.
pub fn serve(
    addr: SocketAddr,
    tls: TlsAcceptor,
    store: Arc<Store>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let incoming = tls.incoming(
        crate::tls_accept::tcp_connections(listener),
        format!("metadata:{addr}"),
    );
    tracing::info!("metadata endpoint on {addr}");
    Ok(tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(MetadataServer::new(BridgeMetadata { store }))
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = served {
            tracing::error!("metadata endpoint on {addr}: {e}");
        }
    }))
}
