//! `Attach`: the container's own process. What it writes from now on goes
//! to the client, and the client's stdin and terminal sizes to its `Input`
//! (its stdin is closed when the client's ends only if the container asked
//! for `stdin_once`). The session ends when the process does (a success)
//! or when the client goes.

use aurae_proto::runtime as pb;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_stream::StreamExt as _;

use super::channels::{self, Client, Want};
use crate::cri::exec::chunk_of;
use crate::cri::spdy;
use crate::cri::Cri;

/// Serves an attach over SPDY (`v4.channel.k8s.io`).
pub async fn serve<IO>(cri: &Cri, io: IO, container_id: &str, want: Want)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let what = format!("attach to container {container_id}");
    let mut conn = spdy::start(io, what.clone());
    let Some(mut streams) = channels::open(&mut conn, want, &what).await else {
        return;
    };
    let mut client = channels::Spdy {
        conn: &mut conn,
        streams: &mut streams,
        tty: want.tty,
    };
    let outcome = run(cri, &mut client, container_id, want).await;
    channels::end(&streams, outcome).await;
}

/// Attaches `client` to the container's process until either ends.
pub async fn run(
    cri: &Cri,
    client: &mut impl Client,
    container_id: &str,
    want: Want,
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
        let (stdin, resize) = client.input();
        channels::forward_input(
            target.client.clone(),
            target.executable_id.clone(),
            stdin,
            resize,
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
                    if let Err(e) = client.send_output(which, data).await {
                        break Err(e);
                    }
                }
            },
            why = client.gone() => break Err(why),
        }
    };
    if let Some(task) = input {
        task.abort();
    }
    result
}
