//! `Exec` over `v4.channel.k8s.io`: the client opens an `error` stream and
//! the `stdout`/`stderr` streams it asked for; the process's output goes
//! to them as it comes, and its end to the error stream as a Kubernetes
//! `Status` (success, or the exit code as a `NonZeroExitCode` cause), as
//! client-go's executor reads it. (Stdin and TTYs are refused by `Exec`
//! until the runtime can carry them.)

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::cri::exec::Output;
use crate::cri::spdy::{self, StreamWriter};
use crate::cri::Cri;

pub const PROTOCOL: &str = "v4.channel.k8s.io";
/// How long the client may take to open its streams.
const STREAMS_TIMEOUT: Duration = Duration::from_secs(30);

/// The streams of one exec.
#[derive(Default)]
struct Streams {
    error: Option<StreamWriter>,
    stdout: Option<StreamWriter>,
    stderr: Option<StreamWriter>,
}

pub async fn serve<IO>(
    cri: &Cri,
    io: IO,
    container_id: &str,
    cmd: &[String],
    stdout: bool,
    stderr: bool,
) where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let what = format!("exec in container {container_id}");
    let mut conn = spdy::start(io, what.clone());
    // The streams the client opens, until it has those the request named.
    let mut s = Streams::default();
    let deadline = tokio::time::Instant::now() + STREAMS_TIMEOUT;
    while s.error.is_none() || (stdout && s.stdout.is_none()) || (stderr && s.stderr.is_none()) {
        let stream = match tokio::time::timeout_at(deadline, conn.incoming.recv()).await {
            Ok(Some(stream)) => stream,
            Ok(None) => return,
            Err(_) => {
                tracing::debug!("{what}: the client did not open its streams in time");
                return;
            }
        };
        let slot = match stream.header("streamtype") {
            Some("error") => &mut s.error,
            Some("stdout") => &mut s.stdout,
            Some("stderr") => &mut s.stderr,
            other => {
                tracing::debug!("{what}: stream {} of type {other:?} reset", stream.id);
                let _ = stream.writer().reset(spdy::PROTOCOL_ERROR).await;
                continue;
            }
        };
        *slot = Some(stream.writer());
    }
    let Some(error) = s.error.take() else {
        return;
    };
    let status = match run(cri, &mut conn, container_id, cmd, &s).await {
        Ok(0) => serde_json::json!({"metadata": {}, "status": "Success"}),
        Ok(code) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Err(e) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": e,
            "reason": "InternalError",
        }),
    };
    for w in [s.stdout, s.stderr].into_iter().flatten() {
        let _ = w.finish().await;
    }
    let _ = error.write_last(Bytes::from(status.to_string())).await;
}

/// Runs the process, its output to the streams; its exit code, or why it
/// could not run. A client that goes away kills it.
async fn run(
    cri: &Cri,
    conn: &mut spdy::Connection,
    container_id: &str,
    cmd: &[String],
    s: &Streams,
) -> Result<i32, String> {
    let mut running = cri
        .start_exec(container_id, cmd)
        .await
        .map_err(|e| e.message().to_string())?;
    loop {
        tokio::select! {
            chunk = running.next_output() => match chunk {
                None => break,
                Some(Err(e)) => {
                    running.kill().await;
                    return Err(e.message().to_string());
                }
                Some(Ok((which, data))) => {
                    let to = match which {
                        Output::Stdout => &s.stdout,
                        Output::Stderr => &s.stderr,
                    };
                    if let Some(w) = to {
                        if w.write(Bytes::from(data)).await.is_err() {
                            running.kill().await;
                            return Err("the client went away".into());
                        }
                    }
                }
            },
            more = conn.incoming.recv() => match more {
                // A stream the exec does not use.
                Some(extra) => {
                    let _ = extra.writer().reset(spdy::PROTOCOL_ERROR).await;
                }
                None => {
                    running.kill().await;
                    return Err("the client went away".into());
                }
            },
        }
    }
    running
        .exit_code()
        .await
        .map_err(|e| e.message().to_string())
}
