//! `PortForward` over WebSocket, as the kubelet's streaming server has it
//! for WebSocket clients: the ports are the request's (else the URL's
//! `port` query), fixed for the session. Port `i` has two channels, data
//! `2i` and error `2i + 1`; each message is one channel's, its first byte
//! the channel. The server opens each channel with the port (two bytes,
//! little-endian), connects to each port once, copies the data channel's
//! messages to it and what it sends back, and writes a failure to the
//! error channel. Sub-protocols: `v4.channel.k8s.io` (binary messages, also
//! when the client offers none) and `v4.base64.channel.k8s.io` (text: the
//! channel as an ASCII digit, then the data in base64). The session ends
//! when every port's connection has ended, or when the client leaves (its
//! connections with it).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::cri::Cri;

pub const BINARY: &str = "v4.channel.k8s.io";
pub const BASE64: &str = "v4.base64.channel.k8s.io";
/// The sub-protocols spoken, preferred first.
pub const PROTOCOLS: [&str; 2] = [BINARY, BASE64];
/// The most ports one session forwards (two channels each, one byte).
pub const MAX_PORTS: usize = 64;
/// The largest message a client may send.
const MAX_MESSAGE: usize = 1 << 20;
/// How long the closing handshake may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The ports of a WebSocket session: `requested` (the `PortForward`
/// request's), else the URL's `port` query (`port=80&port=8080` or
/// `port=80,8080`). Names the offending value.
pub fn ports(requested: &[u16], query: Option<&str>) -> Result<Vec<u16>, String> {
    let ports = if requested.is_empty() {
        let mut ports = Vec::new();
        for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            if key != "port" {
                continue;
            }
            for p in value.split(',') {
                let port = p
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("port: {p:?} is not a port number"))?;
                ports.push(port);
            }
        }
        ports
    } else {
        requested.to_vec()
    };
    if ports.is_empty() {
        return Err(
            "port: a WebSocket port-forward needs its ports (the request's \
                    `port`, or the URL's `port` query)"
                .into(),
        );
    }
    if ports.len() > MAX_PORTS {
        return Err(format!(
            "port: {} ports; one session forwards {MAX_PORTS} at most",
            ports.len()
        ));
    }
    Ok(ports)
}

/// One channel's message in the session's sub-protocol.
fn encode(base64: bool, channel: u8, data: &[u8]) -> Message {
    if base64 {
        let mut text = String::with_capacity(1 + data.len().div_ceil(3) * 4);
        text.push(char::from(b'0' + channel));
        base64::engine::general_purpose::STANDARD.encode_string(data, &mut text);
        Message::text(text)
    } else {
        let mut m = Vec::with_capacity(data.len() + 1);
        m.push(channel);
        m.extend_from_slice(data);
        Message::binary(m)
    }
}

/// A client's message: its channel and data; `None` if it is not one of
/// this protocol's (a ping, a frame of the other kind, bad base64).
fn decode(base64: bool, m: Message) -> Option<(u8, Bytes)> {
    match m {
        Message::Binary(data) if !base64 => {
            let channel = *data.first()?;
            Some((channel, data.slice(1..)))
        }
        Message::Text(text) if base64 => {
            let bytes = text.as_bytes();
            let channel = bytes.first()?.checked_sub(b'0')?;
            let data = base64::engine::general_purpose::STANDARD
                .decode(&bytes[1..])
                .ok()?;
            Some((channel, Bytes::from(data)))
        }
        _ => None,
    }
}

/// A port's end of what the client sends: the queue to its connection,
/// and the signal that it went over the session's [`MAX_UNREAD`].
struct Inbound {
    tx: mpsc::UnboundedSender<Bytes>,
    overflow: Arc<Notify>,
}

/// The most the session holds of what the client sent and the pods'
/// connections have not taken yet. The session reads the client all the
/// time (a client leaving is seen at once, and a port that does not read
/// holds up no other); the port whose message would go past this has its
/// input closed, with an error. (SPDY sessions hold as much.)
const MAX_UNREAD: usize = 8 << 20;

/// The writer task, ended with the session however it ends.
struct Writer(tokio::task::JoinHandle<()>);

impl Drop for Writer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How a session's reading ended.
enum End {
    /// Every forward ended and all was sent (then closed).
    Done,
    /// The client sent its close: it gets the close reply.
    ClientClosed,
    /// The client's connection ended or failed: nothing waits on it.
    ClientGone,
}

/// Serves a port-forward session on the upgraded connection `io`.
/// `protocol`: one of [`PROTOCOLS`], or `None` (binary). `ports` were
/// checked by [`ports`] and [`check_count`].
pub async fn serve<IO>(cri: &Cri, io: IO, sandbox_id: &str, ports: &[u16], protocol: Option<&str>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let base64 = protocol == Some(BASE64);
    if check_count(ports.len(), protocol).is_err() {
        return;
    }
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    let (mut sink, mut stream) = ws.split();
    // Room for every channel's opening, and 32 messages more.
    let (out_tx, mut out) = mpsc::channel::<(u8, Bytes)>(32 + 2 * ports.len());
    // Each channel opens with its port, before anything else is sent.
    for (i, port) in ports.iter().enumerate() {
        for channel in [data_channel(i), data_channel(i) + 1] {
            let opening = Bytes::copy_from_slice(&port.to_le_bytes());
            if out_tx.try_send((channel, opening)).is_err() {
                // Not reached: the queue has room for them all.
                return;
            }
        }
    }
    // The writer: what the forwards send, to the client, until every
    // forward has ended (their senders with them) or the client is gone.
    let mut writer = Writer(tokio::spawn(async move {
        while let Some((channel, data)) = out.recv().await {
            if sink.send(encode(base64, channel, &data)).await.is_err() {
                return;
            }
        }
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
    }));
    let unread = Arc::new(AtomicUsize::new(0));
    let mut to_pod = Vec::with_capacity(ports.len());
    let mut forwards = JoinSet::new();
    for (i, &port) in ports.iter().enumerate() {
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        let overflow = Arc::new(Notify::new());
        to_pod.push(Some(Inbound {
            tx,
            overflow: overflow.clone(),
        }));
        let pod = cri.sandbox_ports(sandbox_id);
        let from = Incoming {
            rx,
            overflow,
            unread: unread.clone(),
        };
        forwards.spawn(forward(pod, port, from, out_tx.clone(), data_channel(i)));
    }
    // The outgoing queue ends once every forward has.
    drop(out_tx);
    let end = loop {
        tokio::select! {
            m = stream.next() => match m {
                Some(Ok(Message::Close(_))) => break End::ClientClosed,
                Some(Err(_)) | None => break End::ClientGone,
                Some(Ok(m)) => {
                    let Some((channel, data)) = decode(base64, m) else { continue };
                    // Data channels only; the error channels are the server's.
                    if channel % 2 != 0 {
                        continue;
                    }
                    let Some(slot) = to_pod.get_mut(usize::from(channel / 2)) else { continue };
                    let Some(inbound) = slot else { continue };
                    let len = data.len();
                    if unread.fetch_add(len, Ordering::SeqCst) + len > MAX_UNREAD {
                        unread.fetch_sub(len, Ordering::SeqCst);
                        inbound.overflow.notify_one();
                        *slot = None;
                    } else if inbound.tx.send(data).is_err() {
                        // That port's connection has ended.
                        unread.fetch_sub(len, Ordering::SeqCst);
                        *slot = None;
                    }
                }
            },
            _ = &mut writer.0 => break End::Done,
        }
    };
    tracing::debug!(
        "port forward to pod sandbox {sandbox_id}: {}",
        match end {
            End::Done => "every connection ended",
            End::ClientClosed => "the client closed the session",
            End::ClientGone => "the client left",
        }
    );
    forwards.shutdown().await;
    drop(to_pod);
    if let End::ClientClosed = end {
        // The writer drains what is left and sends the close reply.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, &mut writer.0).await;
    }
}

/// Port `i`'s data channel (its error channel is the next).
fn data_channel(i: usize) -> u8 {
    // `check_count` keeps 2 * i + 1 below 128.
    u8::try_from(2 * i).unwrap_or(u8::MAX - 1)
}

/// Refuses more ports than the protocol can number: [`MAX_PORTS`], and in
/// base64 (whose channel is one ASCII digit from '0') 40.
pub fn check_count(n: usize, protocol: Option<&str>) -> Result<(), String> {
    let max = if protocol == Some(BASE64) {
        MAX_BASE64_PORTS
    } else {
        MAX_PORTS
    };
    if n > max {
        return Err(format!(
            "port: {n} ports; a session of {} forwards {max} at most",
            protocol.unwrap_or("the binary protocol")
        ));
    }
    Ok(())
}

/// In base64 a channel is the character '0' + channel, ASCII up to 127.
const MAX_BASE64_PORTS: usize = 40;

/// A port's share of what the client sends.
struct Incoming {
    rx: mpsc::UnboundedReceiver<Bytes>,
    overflow: Arc<Notify>,
    /// The session's unread bytes.
    unread: Arc<AtomicUsize>,
}

/// Forwards one port: `inbound` to the pod's `port`, what comes back to the
/// `channel`, a failure to the error channel after it.
async fn forward(
    pod: Result<super::requests::PodPorts, tonic::Status>,
    port: u16,
    inbound: Incoming,
    out: mpsc::Sender<(u8, Bytes)>,
    channel: u8,
) {
    let Incoming {
        mut rx,
        overflow,
        unread,
    } = inbound;
    let error = |message: String| {
        let out = out.clone();
        async move {
            // Fails only once the session is gone.
            let _ = out.send((channel + 1, Bytes::from(message))).await;
        }
    };
    let tcp = match super::portforward::connect(pod, port).await {
        Ok(tcp) => tcp,
        Err(message) => return error(message).await,
    };
    let (mut rd, mut wr) = tcp.into_split();
    let to_pod = async {
        let copy = async {
            while let Some(chunk) = rx.recv().await {
                unread.fetch_sub(chunk.len(), Ordering::SeqCst);
                if let Err(e) = wr.write_all(&chunk).await {
                    return Some(format!("port {port}: writing to the pod: {e}"));
                }
            }
            None
        };
        let failed = tokio::select! {
            failed = copy => failed,
            () = overflow.notified() => Some(format!(
                "port {port}: the pods left {MAX_UNREAD} bytes of what the client sent unread; \
                 this port's input is closed"
            )),
        };
        // What is queued for it goes, and no more comes.
        rx.close();
        while let Ok(chunk) = rx.try_recv() {
            unread.fetch_sub(chunk.len(), Ordering::SeqCst);
        }
        if let Some(message) = failed {
            error(message).await;
        }
        let _ = wr.shutdown().await;
    };
    let from_pod = async {
        let mut buf = vec![0u8; 32 << 10];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    let chunk = Bytes::copy_from_slice(&buf[..n]);
                    if out.send((channel, chunk)).await.is_err() {
                        return;
                    }
                }
                Err(e) => return error(format!("port {port}: reading from the pod: {e}")).await,
            }
        }
    };
    // As over SPDY: the pod's end closing ends the connection; the
    // client's only half-closes the pod's.
    tokio::pin!(from_pod);
    tokio::select! {
        () = &mut from_pod => {}
        () = to_pod => from_pod.await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_come_from_the_request_else_the_query() {
        assert_eq!(ports(&[80], Some("port=1")).unwrap(), vec![80]);
        assert_eq!(
            ports(&[], Some("port=80&port=8080,9090")).unwrap(),
            vec![80, 8080, 9090]
        );
        for (query, bad) in [
            (Some("port=0"), "\"0\""),
            (Some("port=http"), "\"http\""),
            (Some("port=70000"), "\"70000\""),
            (Some("other=1"), "needs its ports"),
            (None, "needs its ports"),
        ] {
            let e = ports(&[], query).unwrap_err();
            assert!(e.starts_with("port: ") && e.contains(bad), "{query:?}: {e}");
        }
        let many = vec![1u16; MAX_PORTS + 1];
        assert!(ports(&many, None).unwrap_err().contains("at most"));
        // base64 numbers channels with one ASCII character from '0'.
        assert!(check_count(MAX_BASE64_PORTS, Some(BASE64)).is_ok());
        let e = check_count(MAX_BASE64_PORTS + 1, Some(BASE64)).unwrap_err();
        assert!(e.starts_with("port: ") && e.contains("40 at most"), "{e}");
        assert!(check_count(MAX_PORTS, Some(BINARY)).is_ok());
        assert!(check_count(MAX_PORTS, None).is_ok());
        let last = data_channel(MAX_BASE64_PORTS - 1) + 1;
        assert_eq!(
            decode(true, encode(true, last, b"x")),
            Some((last, Bytes::from_static(b"x")))
        );
        assert_eq!(data_channel(MAX_PORTS - 1) + 1, 127);
    }

    #[test]
    fn messages_round_trip_in_both_encodings() {
        for base64 in [false, true] {
            let m = encode(base64, 3, b"\x00hello\xff");
            assert_eq!(
                decode(base64, m),
                Some((3, Bytes::from_static(b"\x00hello\xff")))
            );
            // The other encoding's messages are not this session's.
            assert_eq!(decode(!base64, encode(base64, 0, b"x")), None);
        }
        assert_eq!(encode(true, 1, &[80, 0]), Message::text("1UAA="));
        assert_eq!(encode(false, 1, &[80, 0]), Message::binary(vec![1, 80, 0]));
        // Not base64, or no channel.
        assert_eq!(decode(true, Message::text("0!!")), None);
        assert_eq!(decode(false, Message::binary(Vec::new())), None);
    }
}
