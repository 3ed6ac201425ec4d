//! What exec and attach share in `v4.channel.k8s.io`: the streams the
//! client opens (`error`, and `stdin`, `stdout`, `stderr`, `resize` as
//! asked), the `Status` that ends a session, and the client's stdin and
//! terminal sizes passed on to the process's `Input`.

use std::time::Duration;

use aurae_proto::runtime as pb;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;

use crate::cri::exec::Output;
use crate::cri::spdy::{self, Inbound, StreamWriter};

pub const PROTOCOL: &str = "v4.channel.k8s.io";
/// How long the client may take to open its streams.
const STREAMS_TIMEOUT: Duration = Duration::from_secs(30);
/// The most of a resize stream held while a size is incomplete.
const MAX_RESIZE_BUFFER: usize = 4096;

/// Which streams a session has.
#[derive(Debug, Clone, Copy, Default)]
pub struct Want {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// The client's streams, once all that the request named are open.
pub struct Opened {
    pub error: StreamWriter,
    pub stdin: Option<Inbound>,
    pub stdout: Option<StreamWriter>,
    pub stderr: Option<StreamWriter>,
    pub resize: Option<Inbound>,
}

/// Waits for the streams `want` names (on a terminal, stderr is stdout's
/// and a resize stream comes instead); `None` if the client went away or
/// took too long.
pub async fn open(conn: &mut spdy::Connection, want: Want, what: &str) -> Option<Opened> {
    let (mut error, mut stdout, mut stderr) = (None, None, None);
    let (mut stdin, mut resize) = (None, None);
    let deadline = tokio::time::Instant::now() + STREAMS_TIMEOUT;
    let complete = |e: &Option<_>, i: &Option<_>, o: &Option<_>, r: &Option<_>, x: &Option<_>| {
        e.is_some()
            && (!want.stdin || i.is_some())
            && (!want.stdout || o.is_some())
            && (!want.stderr || want.tty || r.is_some())
            && (!want.tty || x.is_some())
    };
    while !complete(&error, &stdin, &stdout, &stderr, &resize) {
        let stream = match tokio::time::timeout_at(deadline, conn.incoming.recv()).await {
            Ok(Some(stream)) => stream,
            Ok(None) => return None,
            Err(_) => {
                tracing::debug!("{what}: the client did not open its streams in time");
                return None;
            }
        };
        // A stream the request did not name is reset: what it would carry
        // would wait unread.
        match stream.header("streamtype") {
            Some("error") => error = Some(stream.writer()),
            Some("stdout") => stdout = Some(stream.writer()),
            Some("stderr") => stderr = Some(stream.writer()),
            Some("stdin") if want.stdin => stdin = Some(stream.split().0),
            Some("resize") if want.tty => resize = Some(stream.split().0),
            other => {
                tracing::debug!("{what}: stream {} of type {other:?} reset", stream.id);
                let _ = stream.writer().reset(spdy::PROTOCOL_ERROR).await;
            }
        }
    }
    Some(Opened {
        error: error?,
        stdin,
        stdout,
        stderr,
        resize,
    })
}

impl Opened {
    /// Writes a chunk of the process's output to its stream (stdout on a
    /// terminal; dropped if the client did not ask for that stream).
    pub async fn send_output(&self, which: Output, tty: bool, data: Vec<u8>) -> Result<(), String> {
        let to = match which {
            Output::Stderr if !tty => &self.stderr,
            _ => &self.stdout,
        };
        match to {
            Some(w) => w
                .write(Bytes::from(data))
                .await
                .map_err(|_| "the client went away".to_string()),
            None => Ok(()),
        }
    }
}

/// What exec and attach need of their client, over SPDY or WebSocket.
pub trait Client {
    /// Sends a chunk of the process's output to the client (stdout's
    /// stream on a terminal; dropped if the client did not ask for it).
    fn send_output(
        &mut self,
        which: Output,
        data: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send;
    /// Resolves once the client has gone: why.
    fn gone(&mut self) -> impl std::future::Future<Output = String> + Send;
    /// The client's stdin and terminal sizes (once; `None` for those it
    /// does not send).
    fn input(&mut self) -> (Option<Incoming>, Option<Incoming>);
}

/// A SPDY session's client: its connection and the streams it opened.
pub struct Spdy<'a> {
    pub conn: &'a mut spdy::Connection,
    pub streams: &'a mut Opened,
    pub tty: bool,
}

impl Client for Spdy<'_> {
    async fn send_output(&mut self, which: Output, data: Vec<u8>) -> Result<(), String> {
        self.streams.send_output(which, self.tty, data).await
    }

    async fn gone(&mut self) -> String {
        loop {
            if let Err(why) = refuse_extra(self.conn.incoming.recv().await).await {
                return why;
            }
        }
    }

    fn input(&mut self) -> (Option<Incoming>, Option<Incoming>) {
        (
            self.streams.stdin.take().map(Incoming::Spdy),
            self.streams.resize.take().map(Incoming::Spdy),
        )
    }
}

/// What the client opens while a session runs: a stream the session does
/// not use is reset; the connection's end is the client going away.
pub async fn refuse_extra(more: Option<spdy::Stream>) -> Result<(), String> {
    match more {
        Some(extra) => {
            let _ = extra.writer().reset(spdy::PROTOCOL_ERROR).await;
            Ok(())
        }
        None => Err("the client went away".into()),
    }
}

/// How a session ended, as the error stream says it.
pub fn status(outcome: Result<i32, String>) -> Bytes {
    let json = match outcome {
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
    Bytes::from(json.to_string())
}

/// Ends a session: its output streams finished, then its status.
pub async fn end(o: &Opened, outcome: Result<i32, String>) {
    for w in [&o.stdout, &o.stderr].into_iter().flatten() {
        let _ = w.finish().await;
    }
    let _ = o.error.write_last(status(outcome)).await;
}

/// Client data for the process: a SPDY stream's, or what a WebSocket
/// channel carried.
pub enum Incoming {
    Spdy(Inbound),
    Channel(mpsc::Receiver<Bytes>),
}

impl Incoming {
    async fn recv(&mut self) -> Option<Bytes> {
        match self {
            Incoming::Spdy(i) => i.recv().await,
            Incoming::Channel(r) => r.recv().await,
        }
    }
}

/// Passes the client's stdin (closing the process's at its end when
/// `close_at_end`) and terminal sizes to executable `id`'s `Input`, until
/// both streams end; runs as a task the caller aborts at the session's end.
pub fn forward_input(
    mut client: pb::runtime_client::RuntimeClient<tonic::transport::Channel>,
    id: String,
    stdin: Option<Incoming>,
    resize: Option<Incoming>,
    close_at_end: bool,
) -> tokio::task::JoinHandle<()> {
    let (tx, rx) = mpsc::channel::<pb::InputRequest>(16);
    let first = pb::InputRequest {
        id: id.clone(),
        ..Default::default()
    };
    tokio::spawn(async move {
        let requests =
            tokio_stream::iter([first]).chain(tokio_stream::wrappers::ReceiverStream::new(rx));
        let feed = async move {
            let tx = &tx;
            let typed = async {
                let Some(mut stdin) = stdin else { return };
                while let Some(data) = stdin.recv().await {
                    let m = pb::InputRequest {
                        data: data.to_vec(),
                        ..Default::default()
                    };
                    if tx.send(m).await.is_err() {
                        return;
                    }
                }
                if close_at_end {
                    let close = pb::InputRequest {
                        close: true,
                        ..Default::default()
                    };
                    let _ = tx.send(close).await;
                }
            };
            let sized = async {
                let Some(mut resize) = resize else { return };
                let mut buf = Vec::new();
                while let Some(data) = resize.recv().await {
                    buf.extend_from_slice(&data);
                    for (cols, rows) in take_sizes(&mut buf) {
                        let m = pb::InputRequest {
                            resize: Some(pb::TerminalSize {
                                cols: cols.into(),
                                rows: rows.into(),
                            }),
                            ..Default::default()
                        };
                        if tx.send(m).await.is_err() {
                            return;
                        }
                    }
                }
            };
            tokio::join!(typed, sized);
        };
        let (answer, ()) = tokio::join!(client.input(requests), feed);
        if let Err(e) = answer {
            tracing::debug!("the stdin of {id}: {}", e.message());
        }
    })
}

/// A terminal size as client-go sends it on the resize stream.
#[derive(serde::Deserialize)]
struct Size {
    #[serde(rename = "Width")]
    width: u16,
    #[serde(rename = "Height")]
    height: u16,
}

/// The whole sizes at the start of `buf` (JSON objects one after another),
/// as (columns, rows); what is left of an incomplete one stays. Anything
/// else, or too much of it, is dropped.
fn take_sizes(buf: &mut Vec<u8>) -> Vec<(u16, u16)> {
    let mut sizes = Vec::new();
    let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<Size>();
    let used = loop {
        match it.next() {
            Some(Ok(s)) => sizes.push((s.width, s.height)),
            Some(Err(e)) if e.is_eof() => break it.byte_offset(),
            Some(Err(_)) => break buf.len(),
            None => break it.byte_offset(),
        }
    };
    buf.drain(..used);
    if buf.len() > MAX_RESIZE_BUFFER {
        buf.clear();
    }
    sizes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_taken_whole_and_the_rest_waits() {
        let mut buf = br#"{"Width":80,"Height":24}{"Width":120,"Hei"#.to_vec();
        assert_eq!(take_sizes(&mut buf), [(80, 24)]);
        assert_eq!(buf, br#"{"Width":120,"Hei"#);
        buf.extend_from_slice(br#"ght":40} "#);
        assert_eq!(take_sizes(&mut buf), [(120, 40)]);
        assert!(buf.iter().all(u8::is_ascii_whitespace), "{buf:?}");
    }

    #[test]
    fn garbage_and_oversized_sizes_are_dropped() {
        let mut buf = b"not json".to_vec();
        assert!(take_sizes(&mut buf).is_empty());
        assert!(buf.is_empty());
        let mut buf = br#"{"Width":70000,"Height":1}"#.to_vec();
        assert!(take_sizes(&mut buf).is_empty());
        assert!(buf.is_empty());
        let mut buf = vec![b'['; MAX_RESIZE_BUFFER + 1];
        take_sizes(&mut buf);
        assert!(buf.len() <= MAX_RESIZE_BUFFER);
    }

    #[test]
    fn the_status_carries_the_exit_code_as_client_go_reads_it() {
        let ok: serde_json::Value = serde_json::from_slice(&status(Ok(0))).expect("json");
        assert_eq!(ok["status"], "Success");
        let failed: serde_json::Value = serde_json::from_slice(&status(Ok(3))).expect("json");
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(failed["details"]["causes"][0]["message"], "3");
        let err: serde_json::Value =
            serde_json::from_slice(&status(Err("gone".into()))).expect("json");
        assert_eq!(err["status"], "Failure");
        assert_eq!(err["message"], "gone");
    }
}
