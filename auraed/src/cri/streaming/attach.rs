//! `Attach` over `v4.channel.k8s.io`: the container's own process. What it
//! writes from now on goes to the client's streams, and the client's stdin
//! and terminal sizes to its `Input` (its stdin is closed when the
//! client's ends only if the container asked for `stdin_once`). The
//! session ends when the process does (a success) or when the client goes.

use aurae_proto::runtime as pb;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_stream::StreamExt as _;

use super::channels::{self, Opened, Want};
use crate::cri::exec::chunk_of;
use crate::cri::spdy;
use crate::cri::Cri;

pub async fn serve<IO>(cri: &Cri, io: IO, container_id: &str, want: Want)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let what = format!("attach to container {container_id}");
    let mut conn = spdy::start(io, what.clone());
    let Some(mut streams) = channels::open(&mut conn, want, &what).await else {
        return;
    };
    let outcome = run(cri, &mut conn, container_id, want, &mut streams).await;
    channels::end(&streams, outcome).await;
}

async fn run(
    cri: &Cri,
    conn: &mut spdy::Connection,
    container_id: &str,
    want: Want,
    s: &mut Opened,
) -> Result<i32, String> {
    let target = cri
        .attach_target(container_id)
        .map_err(|e| e.message().to_string())?;
    let mut output = target
        .client
        .clone()
        .logs(pb::LogsRequest {
            id: target.executable_id.clone(),
            follow: true,
            wait_for_start: false,
            new_only: true,
        })
        .await
        .map_err(|e| format!("following container {container_id}: {}", e.message()))?
        .into_inner();
    let input = (want.stdin || want.tty).then(|| {
        channels::forward_input(
            target.client.clone(),
            target.executable_id.clone(),
            s.stdin.take(),
            s.resize.take(),
            target.stdin_once,
        )
    });
    let result = loop {
        tokio::select! {
            entry = output.next() => match entry {
                // The process ended.
                None => break Ok(0),
                Some(Err(e)) => break Err(e.message().to_string()),
                Some(Ok(entry)) => {
                    let (which, data) = chunk_of(entry);
                    if let Err(e) = s.send_output(which, want.tty, data).await {
                        break Err(e);
                    }
                }
            },
            more = conn.incoming.recv() => {
                if let Err(e) = channels::refuse_extra(more).await {
                    break Err(e);
                }
            }
        }
    };
    if let Some(task) = input {
        task.abort();
    }
    result
}
