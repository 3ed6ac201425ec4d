//! `aurae.metadata.v0.Metadata` on auraed's API (admins only, as every
//! service there): `Get` and `Set` on this auraed's instances' records;
//! `Own`, for a spawned auraed, asks its parent's bridge endpoint with its
//! own SVID.

use std::collections::BTreeMap;
use std::sync::Arc;

use aurae_proto::metadata as pb;
use aurae_proto::metadata::metadata_client::MetadataClient;
use aurae_proto::metadata::metadata_server::Metadata;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::assume::Assumer;
use super::Store;
use crate::error::ApiError;
use crate::validation as v;

/// How long `Own` waits for the parent.
const PARENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub struct MetadataService {
    /// This auraed's instances' records, if it can spawn.
    store: Option<Arc<Store>>,
    /// The link to the parent's endpoint, for a spawned auraed.
    parent: Option<Channel>,
    /// Taking an identity from the parent, for a pre-started auraed.
    assumer: Arc<Assumer>,
}

impl MetadataService {
    pub fn new(store: Option<Arc<Store>>, parent: Option<Channel>, assumer: Assumer) -> Self {
        Self {
            store,
            parent,
            assumer: Arc::new(assumer),
        }
    }

    fn store(&self) -> Result<&Store, ApiError> {
        self.store.as_deref().ok_or_else(|| {
            ApiError::FailedPrecondition(
                "id: this auraed has no instances configuration, so no instances".into(),
            )
        })
    }
}

#[tonic::async_trait]
impl Metadata for MetadataService {
    async fn own(
        &self,
        _: Request<pb::OwnRequest>,
    ) -> Result<Response<pb::InstanceRecord>, Status> {
        let parent = self.parent.clone().ok_or_else(|| {
            ApiError::FailedPrecondition(
                "this auraed was not spawned by another (it has no [instances] parent): it has \
                 no record of its own"
                    .into(),
            )
        })?;
        let mut client = MetadataClient::new(parent);
        let asked = client.own(pb::OwnRequest {});
        match tokio::time::timeout(PARENT_TIMEOUT, asked).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(status)) => Err(ApiError::Instance {
                what: "asking the parent for this instance's record".into(),
                status: Box::new(status),
            }
            .into()),
            Err(_) => Err(ApiError::DeadlineExceeded(format!(
                "the parent did not answer within {PARENT_TIMEOUT:?}"
            ))
            .into()),
        }
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::InstanceRecord>, Status> {
        let r = request.into_inner();
        v::name("id", &r.id)?;
        Ok(Response::new(self.store()?.get(&r.id)?.to_pb()))
    }

    async fn set(
        &self,
        request: Request<pb::SetRequest>,
    ) -> Result<Response<pb::InstanceRecord>, Status> {
        let r = request.into_inner();
        v::name("id", &r.id)?;
        let set: BTreeMap<String, String> = r.set.into_iter().collect();
        let record = self.store()?.update(&r.id, set, &r.remove)?;
        Ok(Response::new(record.to_pb()))
    }

    async fn assume(
        &self,
        request: Request<pb::AssumeRequest>,
    ) -> Result<Response<pb::AssumeResponse>, Status> {
        // The caller was authorized (and its chain checked) by the API's
        // SPIFFE check; only the parent may go on.
        let certs = request
            .extensions()
            .get::<crate::tls_accept::PeerCertificates>()
            .and_then(|p| p.certs.clone())
            .filter(|c| !c.is_empty())
            .ok_or_else(|| {
                ApiError::PermissionDenied("Assume: the caller presented no SVID".into())
            })?;
        let caller = crate::pki::check_subtree(&certs).map_err(|e| {
            ApiError::PermissionDenied(format!("Assume: the caller's SVID is refused: {e}"))
        })?;
        Ok(Response::new(
            self.assumer.assume(&caller, request.into_inner()).await?,
        ))
    }
}
