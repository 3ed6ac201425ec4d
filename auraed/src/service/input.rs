//! `Input`: a client stream of writes (and terminal resizes) to the stdin
//! of an executable started with `stdin` or `tty`; a pod's container
//! (`pod/container`) is passed on to its instance.

use aurae_proto::runtime as pb;
use tonic::{Status, Streaming};

use crate::error::ApiError;
use crate::input::InputError;
use crate::registry::Workload;
use crate::runtime::Runtime;
use crate::validation as v;

/// Serves one `Input` call.
pub(super) async fn input(
    runtime: &Runtime,
    mut requests: Streaming<pb::InputRequest>,
) -> Result<pb::InputResponse, Status> {
    let Some(first) = requests.message().await? else {
        return Err(
            ApiError::invalid("id", "missing: the stream ended before its first message").into(),
        );
    };
    let id = first.id.clone();
    if let Some(t) = runtime.pod_container(&id)? {
        let asked = pb::InputRequest {
            id: t.executable_id.clone(),
            ..first
        };
        // The rest as it comes; a broken client stream ends it.
        let rest = futures::StreamExt::filter_map(requests, |m| std::future::ready(m.ok()));
        let outbound = futures::StreamExt::chain(futures::stream::iter([asked]), rest);
        // A connection of its own: a stalled stdin must not hold up the
        // instance's other calls (see `Instances::own_channel`).
        let channel = match &runtime.instances {
            Some(instances) => instances.own_channel(&t.instance)?,
            None => t.instance.channel(),
        };
        let answer = pb::runtime_client::RuntimeClient::new(channel)
            .input(outbound)
            .await;
        return super::runtime_service::routed(&id, answer).map(|r| r.into_inner());
    }
    v::name("id", &id)?;
    let exe = match runtime.get(&id, "id")? {
        Workload::Executable(e) => e,
        _ => return Err(ApiError::invalid("id", format!("{id:?} is not an executable")).into()),
    };
    let Some(input) = exe.input.clone() else {
        return Err(ApiError::FailedPrecondition(format!(
            "id: {id} was started without stdin or tty"
        ))
        .into());
    };
    let refused = |e: InputError| -> Status {
        match e {
            InputError::Closed | InputError::NoTerminal => {
                ApiError::FailedPrecondition(format!("id: {id}: {e}")).into()
            }
            InputError::Write(_) | InputError::Resize(_) => {
                ApiError::Internal(format!("id: {id}: {}", crate::error::chain(&e))).into()
            }
        }
    };
    let mut written = 0u64;
    let mut next = Some(first);
    while let Some(m) = next {
        if let Some(size) = m.resize {
            let dim = |field: &str, n: u32| {
                u16::try_from(n).map_err(|_| ApiError::invalid(field, format!("{n} is over 65535")))
            };
            let (cols, rows) = (
                dim("resize.cols", size.cols)?,
                dim("resize.rows", size.rows)?,
            );
            input.resize(cols, rows).map_err(refused)?;
        }
        if !m.data.is_empty() {
            input.write(&m.data).await.map_err(refused)?;
            written += m.data.len() as u64;
        }
        if m.close {
            input.close().await.map_err(refused)?;
            break;
        }
        next = requests.message().await?;
    }
    Ok(pb::InputResponse { written })
}
