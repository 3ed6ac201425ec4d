//! The CRI streaming server. `Exec`, `Attach` and `PortForward` answer a
//! URL of this server with a single-use token in it (see [`tokens`]); the
//! client then connects over HTTP/1.1 and upgrades to SPDY/3.1 with the
//! Kubernetes sub-protocol it offers (`v4.channel.k8s.io` for exec and
//! attach, `portforward.k8s.io`), as the kubelet's and containerd's
//! servers do, or to WebSocket: exec and attach with `v5.channel.k8s.io`
//! or `v4.channel.k8s.io` (see [`websocket`]), port-forward with
//! `v4.channel.k8s.io` or `v4.base64.channel.k8s.io` (see
//! [`portforward_ws`]).
//!
//! It listens on loopback by default (`[cri] stream_address`, as
//! containerd's `stream_server_address`): the token is the only
//! credential, so a wider address should only be one the API server alone
//! reaches. With `[cri] stream_tls` it speaks HTTPS (see [`tls`]).

mod attach;
mod channels;
mod exec;
mod portforward;
mod portforward_ws;
mod requests;
pub mod tls;
pub mod tokens;
mod websocket;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request as HttpRequest, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{oneshot, Semaphore};

use super::Cri;

/// The most streaming connections served at once.
const MAX_CONNECTIONS: usize = 128;
/// How long a client may take to send its request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What a token stands for.
#[derive(Debug, Clone)]
pub enum Request {
    Exec {
        container_id: String,
        cmd: Vec<String>,
        want: channels::Want,
    },
    Attach {
        container_id: String,
        want: channels::Want,
    },
    PortForward {
        sandbox_id: String,
        /// The request's ports (a WebSocket session's; over SPDY each
        /// stream names its own).
        ports: Vec<u16>,
    },
}

impl Request {
    fn path(&self) -> &'static str {
        match self {
            Request::Exec { .. } => "exec",
            Request::Attach { .. } => "attach",
            Request::PortForward { .. } => "portforward",
        }
    }

    /// The sub-protocols this server speaks for the request, preferred
    /// first.
    fn protocols(&self) -> &'static [&'static str] {
        match self {
            Request::Exec { .. } | Request::Attach { .. } => &[channels::PROTOCOL],
            Request::PortForward { .. } => &[portforward::PROTOCOL],
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("binding the CRI streaming server to {addr}")]
pub struct BindError {
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// The streaming server's address and waiting requests.
pub struct Streams {
    pub tokens: tokens::Tokens<Request>,
    base: String,
    listener: Mutex<Option<std::net::TcpListener>>,
    /// HTTPS, if configured.
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Streams {
    /// Binds `addr` (port 0: any free one); serves HTTPS with `tls`.
    pub fn bind(
        addr: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<Self, BindError> {
        let bound = std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(|l| l.local_addr().map(|a| (l, a)));
        let (listener, at) = bound.map_err(|source| BindError { addr, source })?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        Ok(Self {
            tokens: Default::default(),
            base: format!("{scheme}://{at}"),
            listener: Mutex::new(Some(listener)),
            tls: tls.map(tokio_rustls::TlsAcceptor::from),
        })
    }

    /// A URL for `request`, good for one connection within a minute.
    pub fn url_for(&self, request: Request) -> Result<String, tonic::Status> {
        let path = request.path();
        let token = self.tokens.insert(request).map_err(|e| match e {
            tokens::TokenError::Full => tonic::Status::resource_exhausted(e.to_string()),
            tokens::TokenError::Random(_) => {
                tonic::Status::internal(crate::error::chain(&e).to_string())
            }
        })?;
        Ok(format!("{}/{path}/{token}", self.base))
    }
}

/// Serves streaming connections until `shutdown` resolves; the sessions
/// then running end with it.
pub async fn serve(cri: Arc<Cri>, shutdown: impl std::future::Future<Output = ()>) {
    let taken = cri
        .streams
        .listener
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let Some(listener) = taken.and_then(|l| tokio::net::TcpListener::from_std(l).ok()) else {
        tracing::error!("the CRI streaming server has no listener");
        return;
    };
    tracing::info!("serving CRI streams on {}", cri.streams.base);
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut sessions = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => a,
        };
        while sessions.try_join_next().is_some() {}
        match accepted {
            Ok((tcp, peer)) => {
                let cri = cri.clone();
                let accepted_at = std::time::Instant::now();
                sessions.spawn(async move {
                    match cri.streams.tls.clone() {
                        None => connection(cri, tcp, peer, HEADER_TIMEOUT).await,
                        // The handshake and the headers within one deadline.
                        Some(tls) => {
                            match tokio::time::timeout(HEADER_TIMEOUT, tls.accept(tcp)).await {
                                Ok(Ok(tls)) => {
                                    let left = HEADER_TIMEOUT.saturating_sub(accepted_at.elapsed());
                                    connection(cri, tls, peer, left).await
                                }
                                Ok(Err(e)) => {
                                    tracing::debug!("CRI stream connection from {peer}: TLS: {e}")
                                }
                                Err(_) => tracing::debug!(
                                    "CRI stream connection from {peer}: no TLS handshake within \
                                 {HEADER_TIMEOUT:?}"
                                ),
                            }
                        }
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!("accepting a CRI stream connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    sessions.shutdown().await;
}

/// An upgraded request's session, handed from the HTTP handler to the
/// connection's task.
struct Upgrade {
    on: hyper::upgrade::OnUpgrade,
    request: Request,
    transport: Transport,
}

/// What the connection was upgraded to.
enum Transport {
    Spdy,
    /// WebSocket, with this sub-protocol (none: the client offered none,
    /// which port-forward takes as binary).
    WebSocket(Option<&'static str>),
}

/// Serves one connection: its HTTP request, then the session it upgraded
/// to.
async fn connection<IO>(cri: Arc<Cri>, tcp: IO, peer: SocketAddr, header_timeout: Duration)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = oneshot::channel::<Upgrade>();
    let tx = Arc::new(Mutex::new(Some(tx)));
    let handler_cri = cri.clone();
    let service = hyper::service::service_fn(move |req| {
        let (response, upgrade) = handle(&handler_cri, req);
        if let Some(u) = upgrade {
            if let Some(tx) = tx.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = tx.send(u);
            }
        }
        std::future::ready(Ok::<_, std::convert::Infallible>(response))
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades()
        .await;
    if let Err(e) = served {
        tracing::debug!("CRI stream connection from {peer}: {e}");
    }
    let Ok(upgrade) = rx.await else {
        return;
    };
    let io = match upgrade.on.await {
        Ok(io) => TokioIo::new(io),
        Err(e) => {
            tracing::debug!("CRI stream connection from {peer}: the upgrade: {e}");
            return;
        }
    };
    if let Transport::WebSocket(protocol) = upgrade.transport {
        let (session, want) = match &upgrade.request {
            Request::Exec {
                container_id,
                cmd,
                want,
            } => (websocket::Session::Exec { container_id, cmd }, *want),
            Request::Attach { container_id, want } => {
                (websocket::Session::Attach { container_id }, *want)
            }
            Request::PortForward { sandbox_id, ports } => {
                return portforward_ws::serve(&cri, io, sandbox_id, ports, protocol).await;
            }
        };
        // Exec and attach always have one (see `websocket_upgrade`).
        let Some(protocol) = protocol else { return };
        return websocket::serve(&cri, io, session, want, protocol).await;
    }
    match upgrade.request {
        Request::Exec {
            container_id,
            cmd,
            want,
        } => exec::serve(&cri, io, &container_id, &cmd, want).await,
        Request::Attach { container_id, want } => {
            attach::serve(&cri, io, &container_id, want).await
        }
        Request::PortForward { sandbox_id, .. } => portforward::serve(&cri, io, &sandbox_id).await,
    }
}

/// A 101 switching to `upgrade`, naming the sub-protocol chosen (if any)
/// in the header `protocol.0`.
fn switching(
    upgrade: &'static str,
    protocol: Option<(&'static str, &'static str)>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    h.insert(header::UPGRADE, header::HeaderValue::from_static(upgrade));
    if let Some((name, value)) = protocol {
        h.insert(name, header::HeaderValue::from_static(value));
    }
    r
}

/// The comma-separated values of the request's headers `name`.
fn values(req: &HttpRequest<Incoming>, name: &str) -> Vec<String> {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

/// The first sub-protocol of `speaks` the client `offered`, or the 403
/// body saying why not.
fn negotiate(offered: &[String], speaks: &'static [&'static str]) -> Result<&'static str, String> {
    speaks
        .iter()
        .find(|p| offered.iter().any(|o| o == *p))
        .copied()
        .ok_or_else(|| {
            format!(
                "unable to negotiate a protocol: the client offers {offered:?}, this server \
                 speaks {speaks:?}"
            )
        })
}

/// A refusal: `code`, with `text` as its body.
fn answer(code: StatusCode, text: String) -> (Response<Full<Bytes>>, Option<Upgrade>) {
    let mut r = Response::new(Full::new(Bytes::from(text + "\n")));
    *r.status_mut() = code;
    (r, None)
}

/// Answers a request: 101 with the chosen sub-protocol and the session to
/// run, or an error.
fn handle(cri: &Cri, req: HttpRequest<Incoming>) -> (Response<Full<Bytes>>, Option<Upgrade>) {
    let mut parts = req.uri().path().trim_start_matches('/').splitn(2, '/');
    let (Some(kind), Some(token)) = (parts.next(), parts.next()) else {
        return answer(StatusCode::NOT_FOUND, "no such stream".into());
    };
    let (kind, token) = (kind.to_string(), token.to_string());
    // Used up only by an upgrade this server accepts (see `take`).
    let Some(request) = cri.streams.tokens.peek(&token) else {
        return answer(
            StatusCode::NOT_FOUND,
            "unknown or expired stream token".into(),
        );
    };
    if request.path() != kind {
        return answer(
            StatusCode::NOT_FOUND,
            format!("the token is for /{}", request.path()),
        );
    }
    let upgrade = values(&req, header::UPGRADE.as_str());
    if upgrade.iter().any(|u| u.eq_ignore_ascii_case("websocket")) {
        return take(cri, &token, websocket_upgrade(req, request));
    }
    if !upgrade.iter().any(|u| u.eq_ignore_ascii_case("SPDY/3.1")) {
        return answer(
            StatusCode::BAD_REQUEST,
            format!("this server upgrades to SPDY/3.1 only (asked for {upgrade:?})"),
        );
    }
    let offered = values(&req, "x-stream-protocol-version");
    let chosen = match negotiate(&offered, request.protocols()) {
        Ok(p) => p,
        Err(why) => return answer(StatusCode::FORBIDDEN, why),
    };
    let mut req = req;
    let on = hyper::upgrade::on(&mut req);
    let r = switching("SPDY/3.1", Some(("x-stream-protocol-version", chosen)));
    take(
        cri,
        &token,
        (
            r,
            Some(Upgrade {
                on,
                request,
                transport: Transport::Spdy,
            }),
        ),
    )
}

/// An accepted upgrade uses its token up; one already used (by another
/// connection meanwhile) is refused.
fn take(
    cri: &Cri,
    token: &str,
    answer_: (Response<Full<Bytes>>, Option<Upgrade>),
) -> (Response<Full<Bytes>>, Option<Upgrade>) {
    if answer_.1.is_some() && cri.streams.tokens.take(token).is_none() {
        return answer(
            StatusCode::NOT_FOUND,
            "unknown or expired stream token".into(),
        );
    }
    answer_
}

/// Answers a WebSocket upgrade (RFC 6455): exec or attach with the first
/// of [`websocket::PROTOCOLS`] the client offers, port-forward with the
/// first of [`portforward_ws::PROTOCOLS`] (binary if it offers none), its
/// ports the request's or the URL's.
fn websocket_upgrade(
    mut req: HttpRequest<Incoming>,
    request: Request,
) -> (Response<Full<Bytes>>, Option<Upgrade>) {
    let request = match request {
        Request::PortForward { sandbox_id, ports } => {
            match portforward_ws::ports(&ports, req.uri().query()) {
                Ok(ports) => Request::PortForward { sandbox_id, ports },
                Err(why) => return answer(StatusCode::BAD_REQUEST, why),
            }
        }
        other => other,
    };
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let Some(key) = header("sec-websocket-key") else {
        return answer(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key: missing".into());
    };
    if header("sec-websocket-version").as_deref() != Some("13") {
        return answer(
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Version: this server speaks 13".into(),
        );
    }
    let offered = values(&req, "sec-websocket-protocol");
    let chosen = match &request {
        Request::PortForward { .. } if offered.is_empty() => None,
        Request::PortForward { .. } => match negotiate(&offered, &portforward_ws::PROTOCOLS) {
            Ok(p) => Some(p),
            Err(why) => return answer(StatusCode::FORBIDDEN, why),
        },
        _ => match negotiate(&offered, &websocket::PROTOCOLS) {
            Ok(p) => Some(p),
            Err(why) => return answer(StatusCode::FORBIDDEN, why),
        },
    };
    if let Request::PortForward { ports, .. } = &request {
        if let Err(why) = portforward_ws::check_count(ports.len(), chosen) {
            return answer(StatusCode::BAD_REQUEST, why);
        }
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let on = hyper::upgrade::on(&mut req);
    let mut r = switching("websocket", chosen.map(|p| ("sec-websocket-protocol", p)));
    match header::HeaderValue::from_str(&accept) {
        Ok(v) => {
            r.headers_mut().insert("sec-websocket-accept", v);
        }
        Err(_) => return answer(StatusCode::INTERNAL_SERVER_ERROR, "the accept key".into()),
    }
    (
        r,
        Some(Upgrade {
            on,
            request,
            transport: Transport::WebSocket(chosen),
        }),
    )
}
