//! `Exec`: the process starts once the client is ready (over SPDY, once it
//! has opened the streams the request named); its output goes to the
//! client as it comes (all of it to stdout on a terminal), the client's
//! stdin and terminal sizes to its `Input`, and its end to the client as a
//! Kubernetes `Status` (success, or the exit code as a `NonZeroExitCode`
//! cause), as client-go's executor reads it.

use tokio::io::{AsyncRead, AsyncWrite};

use super::channels::{self, Client, Want};
use crate::cri::exec::Stdio;
use crate::cri::spdy;
use crate::cri::Cri;

/// Serves an exec over SPDY (`v4.channel.k8s.io`).
pub async fn serve<IO>(cri: &Cri, io: IO, container_id: &str, cmd: &[String], want: Want)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let what = format!("exec in container {container_id}");
    let mut conn = spdy::start(io, what.clone());
    let Some(mut streams) = channels::open(&mut conn, want, &what).await else {
        return;
    };
    let mut client = channels::Spdy {
        conn: &mut conn,
        streams: &mut streams,
        tty: want.tty,
    };
    let outcome = run(cri, &mut client, container_id, cmd, want).await;
    channels::end(&streams, outcome).await;
}

/// Runs the process for `client`; its exit code, or why it could not run.
/// A client that goes away kills it.
pub async fn run(
    cri: &Cri,
    client: &mut impl Client,
    container_id: &str,
    cmd: &[String],
    want: Want,
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
        let (id, rpc) = running.target();
        let (stdin, resize) = client.input();
        channels::forward_input(rpc, id, stdin, resize, true)
    });
    let result = loop {
        tokio::select! {
            chunk = running.next_output() => match chunk {
                None => break Ok(()),
                Some(Err(e)) => break Err(e.message().to_string()),
                Some(Ok((which, data))) => {
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
