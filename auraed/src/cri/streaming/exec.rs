//! `Exec` over `v4.channel.k8s.io`: the process starts once the client
//! has opened the streams the request named; its output goes to them as it
//! comes (all of it to stdout on a terminal), the client's stdin and
//! terminal sizes to its `Input`, and its end to the error stream as a
//! Kubernetes `Status` (success, or the exit code as a `NonZeroExitCode`
//! cause), as client-go's executor reads it.

use tokio::io::{AsyncRead, AsyncWrite};

use super::channels::{self, Opened, Want};
use crate::cri::exec::Stdio;
use crate::cri::spdy;
use crate::cri::Cri;

pub async fn serve<IO>(cri: &Cri, io: IO, container_id: &str, cmd: &[String], want: Want)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let what = format!("exec in container {container_id}");
    let mut conn = spdy::start(io, what.clone());
    let Some(mut streams) = channels::open(&mut conn, want, &what).await else {
        return;
    };
    let outcome = run(cri, &mut conn, container_id, cmd, want, &mut streams).await;
    channels::end(&streams, outcome).await;
}

/// Runs the process with the streams; its exit code, or why it could not
/// run. A client that goes away kills it.
async fn run(
    cri: &Cri,
    conn: &mut spdy::Connection,
    container_id: &str,
    cmd: &[String],
    want: Want,
    s: &mut Opened,
) -> Result<i32, String> {
    let stdio = Stdio {
        stdin: want.stdin,
        tty: want.tty,
    };
    let mut running = cri
        .start_exec(container_id, cmd, stdio, true)
        .await
        .map_err(|e| e.message().to_string())?;
    let input = (want.stdin || want.tty).then(|| {
        let (id, client) = running.target();
        channels::forward_input(client, id, s.stdin.take(), s.resize.take(), true)
    });
    let result = async {
        loop {
            tokio::select! {
                chunk = running.next_output() => match chunk {
                    None => return Ok(()),
                    Some(Err(e)) => return Err(e.message().to_string()),
                    Some(Ok((which, data))) => s.send_output(which, want.tty, data).await?,
                },
                more = conn.incoming.recv() => channels::refuse_extra(more).await?,
            }
        }
    }
    .await;
    if let Some(task) = input {
        task.abort();
    }
    match result {
        Ok(()) => running
            .exit_code()
            .await
            .map_err(|e| e.message().to_string()),
        Err(e) => {
            running.kill().await;
            Err(e)
        }
    }
}
