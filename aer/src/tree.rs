//! `aer ls` as a tree: the workloads of auraed, then those of each of its
//! instances (asked through the instance, hop by hop), with ids prefixed
//! by the instance path (`a/web`, `a/b/web`).

use aurae_proto::runtime as pb;
use aurae_proto::runtime::runtime_client::RuntimeClient;
use futures::future::BoxFuture;
use tonic::transport::Channel;

use crate::client::InstanceRoute;

/// How deep `aer ls` follows instances of instances.
pub const MAX_DEPTH: usize = 8;

/// The workloads at `path` (auraed itself when None), each followed by
/// those of the instance it is, to [`MAX_DEPTH`]. An instance that can't
/// be listed is reported on stderr and skipped.
pub fn list(
    channel: Channel,
    path: Option<String>,
    depth: usize,
) -> BoxFuture<'static, Result<Vec<pb::WorkloadStatus>, tonic::Status>> {
    Box::pin(async move {
        let route = InstanceRoute::new(path.as_deref())
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        let mut client = RuntimeClient::with_interceptor(channel.clone(), route);
        let mut workloads = client
            .list(pb::ListRequest {})
            .await?
            .into_inner()
            .workloads;
        workloads.sort_by(|a, b| a.id.cmp(&b.id));
        let mut out = Vec::new();
        for mut w in workloads {
            let own = w.id.clone();
            let full = match &path {
                Some(p) => format!("{p}/{own}"),
                None => own,
            };
            w.id = full.clone();
            let is_instance = w.kind == pb::WorkloadKind::Instance as i32
                && w.state == pb::WorkloadState::Running as i32;
            out.push(w);
            if is_instance && depth + 1 < MAX_DEPTH {
                match list(channel.clone(), Some(full.clone()), depth + 1).await {
                    Ok(children) => out.extend(children),
                    Err(e) => eprintln!(
                        "aer: listing instance {}: {}",
                        crate::text::escape(&full),
                        crate::text::escape(e.message())
                    ),
                }
            }
        }
        Ok(out)
    })
}
