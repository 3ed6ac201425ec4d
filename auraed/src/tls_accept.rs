//! Accepting mTLS connections with a deadline and a bound.
//!
//! tonic's own TLS accept (0.14) runs every handshake in a task of its own
//! with no deadline unless one is set, and keeps accepting however many
//! handshakes are under way, so a client that connects and sends nothing
//! holds one of auraed's file descriptors for as long as it likes, and many
//! such clients hold as many as they like. Here:
//!
//! - each handshake runs under [`HandshakeLimits::timeout`]; one that has
//!   not finished by then is dropped (logged at warn), as is one that fails
//!   (logged at debug);
//! - handshakes run concurrently, each in a task of its own, so a stalled
//!   one does not hold up the others; finished ones are fed, through an mpsc
//!   channel, to tonic's `serve_with_incoming_shutdown`;
//! - at most [`HandshakeLimits::max_in_handshake`] connections, over all
//!   listeners, are in handshake at once. When that many are, auraed does
//!   not accept: new connections wait in the kernel's listen backlog (and
//!   past it, are refused by the kernel), holding none of auraed's file
//!   descriptors, until a handshake finishes, fails or times out.
//!
//! The connections handed to tonic are [`TlsConn`]s, whose connect info,
//! [`PeerCertificates`], gives [`crate::auth::SpiffeAuthz`] the client's
//! verified certificate chain.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::Connected;

use crate::svid_swap::SwappableSvid;

/// The ALPN protocol offered: gRPC is HTTP/2 only.
const ALPN_H2: &[u8] = b"h2";

/// How long to wait before accepting again after accept(2) failed (e.g.
/// EMFILE: the pending connection stays in the backlog, so retrying at once
/// would spin).
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("reading the {what} from {path}: {source}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("adding the CA certificate from {path} to the client roots: {source}")]
    ClientRoot {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("building the client certificate verifier: {source}")]
    ClientVerifier {
        source: rustls::server::VerifierBuilderError,
    },
    #[error("choosing the TLS protocol versions: {source}")]
    ProtocolVersions { source: rustls::Error },
    #[error("using the server certificate and key: {source}")]
    ServerIdentity { source: rustls::Error },
}

/// Why a handshake was dropped (only logged).
#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("not finished within {0:?}")]
    Timeout(Duration),
    #[error("failed: {source}")]
    Accept { source: io::Error },
}

/// The deadline and the bound of TLS handshakes.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeLimits {
    pub timeout: Duration,
    pub max_in_handshake: usize,
}

/// The client's certificate chain as verified in the handshake, leaf first:
/// the connect info of a [`TlsConn`], in every request's extensions.
#[derive(Debug, Clone, Default)]
pub struct PeerCertificates {
    pub certs: Option<Arc<Vec<CertificateDer<'static>>>>,
}

/// A connection whose TLS handshake has finished.
pub struct TlsConn<IO>(tokio_rustls::server::TlsStream<IO>);

impl<IO> Connected for TlsConn<IO> {
    type ConnectInfo = PeerCertificates;

    fn connect_info(&self) -> PeerCertificates {
        let certs = self
            .0
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| Arc::new(c.iter().map(|c| c.clone().into_owned()).collect()));
        PeerCertificates { certs }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsConn<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsConn<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The connections of a TCP listener, with Nagle's algorithm off: gRPC
/// writes small frames, and Nagle holding one back until the peer's
/// (delayed, up to 40 ms) ACK of the previous one stalls a stream's next
/// message by that much.
pub fn tcp_connections(
    listener: tokio::net::TcpListener,
) -> impl Stream<Item = io::Result<tokio::net::TcpStream>> {
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        let conn = conn?;
        if let Err(e) = conn.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY on an accepted connection: {e}");
        }
        Ok(conn)
    })
}

/// Accepts mTLS connections on any number of listeners, sharing one bound.
#[derive(Clone)]
pub struct TlsAcceptor {
    /// What it presents: replaced when a pre-started instance is claimed.
    pub svid: Arc<SwappableSvid>,
    tls: tokio_rustls::TlsAcceptor,
    timeout: Duration,
    in_handshake: Arc<Semaphore>,
    max_in_handshake: usize,
}

fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let pem = |source| TlsSetupError::Pem {
        what,
        path: path.to_path_buf(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if certs.is_empty() {
        return Err(TlsSetupError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

impl TlsAcceptor {
    /// Server identity from `server_crt` and `server_key`; clients must
    /// present a certificate that chains to `ca_crt`. ALPN offers `h2`.
    pub fn from_files(
        ca_crt: &Path,
        server_crt: &Path,
        server_key: &Path,
        limits: HandshakeLimits,
    ) -> Result<Self, TlsSetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for ca in certs("CA certificate", ca_crt)? {
            roots.add(ca).map_err(|source| TlsSetupError::ClientRoot {
                path: ca_crt.to_path_buf(),
                source,
            })?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|source| TlsSetupError::ClientVerifier { source })?;
        let chain = certs("server certificate", server_crt)?;
        let key =
            PrivateKeyDer::from_pem_file(server_key).map_err(|source| TlsSetupError::Pem {
                what: "server key",
                path: server_key.to_path_buf(),
                source,
            })?;
        let certified = rustls::sign::CertifiedKey::from_der(chain, key, &provider)
            .map_err(|source| TlsSetupError::ServerIdentity { source })?;
        let svid = Arc::new(SwappableSvid::new(certified));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            // TLS 1.3 only, as the README's security model says.
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|source| TlsSetupError::ProtocolVersions { source })?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(svid.clone());
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        // At least one, or nothing would ever be accepted.
        let max_in_handshake = limits.max_in_handshake.max(1);
        Ok(Self {
            svid,
            tls: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            timeout: limits.timeout,
            in_handshake: Arc::new(Semaphore::new(max_in_handshake)),
            max_in_handshake,
        })
    }

    /// The connections of `listener` whose handshakes finished in time, for
    /// `serve_with_incoming_shutdown`. Accepting stops once the returned
    /// stream is dropped (tonic drops it when it shuts down), and with it
    /// the listener is closed. `name` (e.g. `unix:/run/aurae/aurae.sock`)
    /// is for the logs.
    pub fn incoming<S, IO>(
        &self,
        listener: S,
        name: String,
    ) -> ReceiverStream<Result<TlsConn<IO>, io::Error>>
    where
        S: Stream<Item = io::Result<IO>> + Unpin + Send + 'static,
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(self.max_in_handshake);
        tokio::spawn(self.clone().accept_loop(listener, name, tx));
        ReceiverStream::new(rx)
    }

    async fn accept_loop<S, IO>(
        self,
        mut listener: S,
        name: String,
        tx: mpsc::Sender<Result<TlsConn<IO>, io::Error>>,
    ) where
        S: Stream<Item = io::Result<IO>> + Unpin + Send + 'static,
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let name: Arc<str> = name.into();
        loop {
            // A place first, then accept(2): while every place is taken,
            // new connections stay in the kernel's backlog.
            let permit = tokio::select! {
                _ = tx.closed() => break,
                p = self.in_handshake.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    // The semaphore is never closed.
                    Err(_) => break,
                },
            };
            let io = tokio::select! {
                _ = tx.closed() => break,
                next = listener.next() => match next {
                    Some(Ok(io)) => io,
                    Some(Err(e)) => {
                        tracing::warn!(listener = %name, error = %e, "accepting a connection failed");
                        drop(permit);
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                        continue;
                    }
                    None => break,
                },
            };
            let tls = self.tls.clone();
            let timeout = self.timeout;
            let tx = tx.clone();
            let name = name.clone();
            tokio::spawn(async move {
                // Held until the connection is handed over (or dropped).
                let _permit = permit;
                let handshake = match tokio::time::timeout(timeout, tls.accept(io)).await {
                    Ok(Ok(stream)) => Ok(stream),
                    Ok(Err(source)) => Err(HandshakeError::Accept { source }),
                    Err(_) => Err(HandshakeError::Timeout(timeout)),
                };
                match handshake {
                    // Fails only once tonic stopped taking connections.
                    Ok(stream) => {
                        let _ = tx.send(Ok(TlsConn(stream))).await;
                    }
                    Err(e @ HandshakeError::Timeout(_)) => {
                        tracing::warn!(listener = %name, "TLS handshake {e}; connection dropped")
                    }
                    Err(e) => {
                        tracing::debug!(listener = %name, "TLS handshake {e}; connection dropped")
                    }
                }
            });
        }
        tracing::debug!(listener = %name, "no longer accepting");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> HandshakeLimits {
        HandshakeLimits {
            timeout: Duration::from_secs(1),
            max_in_handshake: 1,
        }
    }

    #[test]
    fn unreadable_or_empty_pem_files_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.crt");
        let Err(err) = TlsAcceptor::from_files(&missing, &missing, &missing, limits()) else {
            panic!("a missing CA was accepted");
        };
        assert!(matches!(
            err,
            TlsSetupError::Pem {
                what: "CA certificate",
                ..
            }
        ));
        assert!(err.to_string().contains("missing.crt"), "{err}");
        let empty = dir.path().join("empty.crt");
        std::fs::write(&empty, "").expect("write");
        let Err(err) = TlsAcceptor::from_files(&empty, &empty, &empty, limits()) else {
            panic!("an empty CA was accepted");
        };
        assert!(
            matches!(&err, TlsSetupError::NoCertificate { path } if path == &empty),
            "{err}"
        );
    }
}
