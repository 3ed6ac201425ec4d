//! `PortForward` over `portforward.k8s.io`: for every connection it
//! forwards, the client opens an `error` and a `data` stream with the same
//! `requestID` and the pod's `port`. Once both are there the server
//! connects to that port on loopback inside the pod's network namespace
//! (as containerd does) and copies both ways; a failure is written to the
//! error stream. The session lasts as long as the client's connection.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinSet;

use crate::cri::spdy::{self, Stream};
use crate::cri::streaming::requests::PodPorts;
use crate::cri::Cri;

pub const PROTOCOL: &str = "portforward.k8s.io";
/// How long a request may wait for its second stream.
const PAIR_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting to the pod's port may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most forwarded connections (and half-opened requests) at once on
/// one session.
const MAX_REQUESTS: usize = 128;

/// A request's streams as they arrive.
struct Pair {
    since: tokio::time::Instant,
    error: Option<Stream>,
    data: Option<Stream>,
}

pub async fn serve<IO>(cri: &Cri, io: IO, sandbox_id: &str)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let what = format!("port forward to pod sandbox {sandbox_id}");
    let mut conn = spdy::start(io, what.clone());
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut forwards = JoinSet::new();
    let mut sweep = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            stream = conn.incoming.recv() => {
                let Some(stream) = stream else { break };
                let kind = stream.header("streamtype").unwrap_or_default().to_string();
                let request = stream.header("requestid").unwrap_or_default().to_string();
                if pairs.len() + forwards.len() >= MAX_REQUESTS && !pairs.contains_key(&request) {
                    let _ = stream.writer().reset(spdy::REFUSED_STREAM).await;
                    continue;
                }
                let pair = pairs.entry(request.clone()).or_insert_with(|| Pair {
                    since: tokio::time::Instant::now(),
                    error: None,
                    data: None,
                });
                let slot = match kind.as_str() {
                    "error" => &mut pair.error,
                    "data" => &mut pair.data,
                    _ => {
                        let _ = stream.writer().reset(spdy::PROTOCOL_ERROR).await;
                        continue;
                    }
                };
                if slot.is_some() {
                    // A second stream of one kind for the request.
                    let _ = stream.writer().reset(spdy::PROTOCOL_ERROR).await;
                    continue;
                }
                *slot = Some(stream);
                if pair.error.is_some() && pair.data.is_some() {
                    if let Some(Pair { error: Some(error), data: Some(data), .. }) = pairs.remove(&request) {
                        forwards.spawn(forward(cri.sandbox_ports(sandbox_id), data, error));
                    }
                }
            }
            _ = sweep.tick() => {
                let now = tokio::time::Instant::now();
                let stale: Vec<String> = pairs
                    .iter()
                    .filter(|(_, p)| now.duration_since(p.since) >= PAIR_TIMEOUT)
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in stale {
                    if let Some(p) = pairs.remove(&k) {
                        for s in [p.error, p.data].into_iter().flatten() {
                            let _ = s.writer().reset(spdy::REFUSED_STREAM).await;
                        }
                    }
                }
            }
            Some(_) = forwards.join_next(), if !forwards.is_empty() => {}
        }
    }
    // The client is gone: so are its forwarded connections.
    forwards.shutdown().await;
    tracing::debug!("{what}: the client closed the session");
}

/// Connects to the pod's `port` (within [`CONNECT_TIMEOUT`]), or says why
/// not, as the kubelet's server words it.
pub(super) async fn connect(
    pod: Result<PodPorts, tonic::Status>,
    port: u16,
) -> Result<tokio::net::TcpStream, String> {
    let failed = |e: &dyn std::error::Error| {
        format!(
            "an error occurred forwarding {port} -> {port}: {}",
            crate::error::chain(e)
        )
    };
    match pod.map_err(|e| e.message().to_string())? {
        PodPorts::Netns(netns) => {
            use std::os::fd::AsFd;
            let tcp = crate::net::connect_in(netns.as_fd(), port, CONNECT_TIMEOUT)
                .await
                .map_err(|e| failed(&e))?;
            tcp.set_nonblocking(true)
                .and_then(|()| tokio::net::TcpStream::from_std(tcp))
                .map_err(|e| format!("port {port}: {e}"))
        }
        PodPorts::Address(ip) => {
            let to = std::net::SocketAddr::new(ip, port);
            match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(to)).await {
                Ok(Ok(tcp)) => Ok(tcp),
                Ok(Err(e)) => Err(failed(&e)),
                Err(e) => Err(failed(&e)),
            }
        }
    }
}

/// Forwards one connection: `data` to and from the pod's `port`, a failure
/// to `error`.
async fn forward(pod: Result<PodPorts, tonic::Status>, data: Stream, error: Stream) {
    let port_header = data.header("port").unwrap_or_default().to_string();
    let error = error.writer();
    let tcp = match port_header.parse::<u16>().ok().filter(|p| *p > 0) {
        Some(port) => connect(pod, port).await,
        None => Err(format!("port: {port_header:?} is not a port number")),
    };
    let (mut inbound, out) = data.split();
    let tcp = match tcp {
        Ok(tcp) => tcp,
        Err(message) => {
            let _ = error.write_last(Bytes::from(message)).await;
            let _ = out.finish().await;
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
                    if out.write(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = out.finish().await;
    };
    // The pod's end closing ends the forwarded connection (the client
    // closes its local one once the error stream ends, as the kubelet's
    // server has it); the client's end closing only half-closes the pod's.
    tokio::pin!(from_pod);
    tokio::select! {
        () = &mut from_pod => {}
        () = to_pod => from_pod.await,
    }
    let _ = error.finish().await;
}
