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

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
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

/// Serves a port-forward session on the upgraded connection `io`.
/// `protocol`: one of [`PROTOCOLS`], or `None` (binary).
pub async fn serve<IO>(cri: &Cri, io: IO, sandbox_id: &str, ports: &[u16], protocol: Option<&str>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let base64 = protocol == Some(BASE64);
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    let (mut sink, mut stream) = ws.split();
    // Each channel opens with its port.
    for (i, port) in ports.iter().enumerate() {
        let data = (2 * i) as u8;
        for channel in [data, data + 1] {
            if sink
                .send(encode(base64, channel, &port.to_le_bytes()))
                .await
                .is_err()
            {
                return;
            }
        }
    }
    let (out_tx, mut out) = mpsc::channel::<(u8, Bytes)>(32);
    let mut to_pod = Vec::with_capacity(ports.len());
    let mut forwards = JoinSet::new();
    for (i, &port) in ports.iter().enumerate() {
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        to_pod.push(Some(tx));
        let pod = cri.sandbox_ports(sandbox_id);
        forwards.spawn(forward(pod, port, rx, out_tx.clone(), (2 * i) as u8));
    }
    // The outgoing queue ends once every forward has.
    drop(out_tx);
    loop {
        tokio::select! {
            m = stream.next() => match m {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    tracing::debug!("port forward to pod sandbox {sandbox_id}: the client left");
                    break;
                }
                Some(Ok(m)) => {
                    let Some((channel, data)) = decode(base64, m) else { continue };
                    // Data channels only; the error channels are the server's.
                    if channel % 2 != 0 {
                        continue;
                    }
                    let Some(slot) = to_pod.get_mut(usize::from(channel / 2)) else { continue };
                    if let Some(tx) = slot {
                        if tx.send(data).await.is_err() {
                            // That port's connection has ended.
                            *slot = None;
                        }
                    }
                }
            },
            o = out.recv() => match o {
                Some((channel, data)) => {
                    if sink.send(encode(base64, channel, &data)).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
        }
    }
    // The client is gone, or every connection has ended.
    forwards.shutdown().await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
}

/// Forwards one port: `inbound` to the pod's `port`, what comes back to the
/// `channel`, a failure to the error channel after it.
async fn forward(
    pod: Result<super::requests::PodPorts, tonic::Status>,
    port: u16,
    mut inbound: mpsc::Receiver<Bytes>,
    out: mpsc::Sender<(u8, Bytes)>,
    channel: u8,
) {
    let tcp = match super::portforward::connect(pod, port).await {
        Ok(tcp) => tcp,
        Err(message) => {
            let _ = out.send((channel + 1, Bytes::from(message))).await;
            return;
        }
    };
    let (mut rd, mut wr) = tcp.into_split();
    let to_pod = async {
        while let Some(chunk) = inbound.recv().await {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    };
    let from_pod = async {
        let mut buf = vec![0u8; 32 << 10];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let chunk = Bytes::copy_from_slice(&buf[..n]);
                    if out.send((channel, chunk)).await.is_err() {
                        return;
                    }
                }
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
