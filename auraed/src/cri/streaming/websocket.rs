//! `Exec` and `Attach` over WebSocket, as newer Kubernetes clients speak
//! them: `v5.channel.k8s.io` (and `v4.channel.k8s.io`, binary). Each
//! message is one channel's: its first byte is the channel (0 stdin, 1
//! stdout, 2 stderr, 3 the session's `Status`, 4 terminal sizes), the rest
//! its data; in v5 the client closes a channel with `[255, channel]` (its
//! stdin, say). As the kubelet's server does, the first message is an empty
//! one on the lowest channel the client reads, and the `Status` ends the
//! session, then a close frame.

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::channels::{self, Client, Incoming, Want};
use crate::cri::exec::Output;
use crate::cri::Cri;

pub const V5: &str = "v5.channel.k8s.io";
pub const V4: &str = "v4.channel.k8s.io";
/// The sub-protocols spoken, preferred first.
pub const PROTOCOLS: [&str; 2] = [V5, V4];

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
/// v5: the client closes the channel in the next byte.
const CLOSE: u8 = 255;
/// The largest message a client may send.
const MAX_MESSAGE: usize = 1 << 20;
/// How long the closing handshake may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a session serves.
pub enum Session<'a> {
    Exec {
        container_id: &'a str,
        cmd: &'a [String],
    },
    Attach {
        container_id: &'a str,
    },
}

/// One channel's message.
fn message(channel: u8, data: &[u8]) -> Message {
    let mut m = Vec::with_capacity(data.len() + 1);
    m.push(channel);
    m.extend_from_slice(data);
    Message::binary(m)
}

/// A WebSocket session's client: the socket's sending half, and a task
/// reading the other that passes stdin and terminal sizes on (stdin's
/// channel closes at the client's close of it in v5) and says when the
/// client has left.
struct WsClient<IO> {
    sink: futures::stream::SplitSink<WebSocketStream<IO>, Message>,
    want: Want,
    stdin: Option<mpsc::Receiver<Bytes>>,
    resize: Option<mpsc::Receiver<Bytes>>,
    gone: watch::Receiver<bool>,
    _reader: Reader,
}

/// The reading task, ended with the session however it ends.
struct Reader(tokio::task::JoinHandle<()>);

impl Drop for Reader {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<IO> WsClient<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn new(ws: WebSocketStream<IO>, want: Want, v5: bool) -> Self {
        let (sink, mut stream) = ws.split();
        let (stdin_tx, stdin_rx) = mpsc::channel::<Bytes>(16);
        let (resize_tx, resize_rx) = mpsc::channel::<Bytes>(4);
        let (gone_tx, gone) = watch::channel(false);
        let reader = tokio::spawn(async move {
            let mut stdin_tx = want.stdin.then_some(stdin_tx);
            let resize_tx = want.tty.then_some(resize_tx);
            while let Some(Ok(m)) = stream.next().await {
                let data = match m {
                    Message::Binary(data) => data,
                    Message::Close(_) => break,
                    // Pings are answered by the library; text is not this
                    // protocol's.
                    _ => continue,
                };
                let Some(&channel) = data.first() else {
                    continue;
                };
                let rest = data.slice(1..);
                match channel {
                    STDIN => {
                        let taken = match &stdin_tx {
                            Some(tx) => tx.send(rest).await.is_ok(),
                            None => true,
                        };
                        // The process no longer reads it.
                        if !taken {
                            stdin_tx = None;
                        }
                    }
                    RESIZE => {
                        if let Some(tx) = &resize_tx {
                            let _ = tx.send(rest).await;
                        }
                    }
                    CLOSE if v5 && rest.first() == Some(&STDIN) => stdin_tx = None,
                    _ => {}
                }
            }
            let _ = gone_tx.send(true);
        });
        Self {
            sink,
            want,
            stdin: want.stdin.then_some(stdin_rx),
            resize: want.tty.then_some(resize_rx),
            gone,
            _reader: Reader(reader),
        }
    }
}

impl<IO> Client for WsClient<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn send_output(&mut self, which: Output, data: Vec<u8>) -> Result<(), String> {
        let channel = match which {
            Output::Stderr if !self.want.tty => STDERR,
            _ => STDOUT,
        };
        let asked = if channel == STDERR {
            self.want.stderr
        } else {
            self.want.stdout
        };
        if !asked {
            return Ok(());
        }
        self.sink
            .send(message(channel, &data))
            .await
            .map_err(|_| "the client went away".to_string())
    }

    async fn gone(&mut self) -> String {
        let _ = self.gone.wait_for(|g| *g).await;
        "the client went away".to_string()
    }

    fn input(&mut self) -> (Option<Incoming>, Option<Incoming>) {
        (
            self.stdin.take().map(Incoming::Channel),
            self.resize.take().map(Incoming::Channel),
        )
    }
}

/// Serves `session` on the upgraded connection `io`, with the sub-protocol
/// `protocol` (one of [`PROTOCOLS`]).
pub async fn serve<IO>(cri: &Cri, io: IO, session: Session<'_>, want: Want, protocol: &str)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    let mut client = WsClient::new(ws, want, protocol == V5);
    // The client learns the session is up.
    let first = if want.stdout {
        STDOUT
    } else if want.stderr {
        STDERR
    } else {
        ERROR
    };
    if client.sink.send(message(first, &[])).await.is_ok() {
        let outcome = match session {
            Session::Exec { container_id, cmd } => {
                super::exec::run(cri, &mut client, container_id, cmd, want).await
            }
            Session::Attach { container_id } => {
                super::attach::run(cri, &mut client, container_id, want).await
            }
        };
        let status = channels::status(outcome);
        let _ = client.sink.send(message(ERROR, &status)).await;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, client.sink.close()).await;
    }
}
