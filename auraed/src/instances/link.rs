//! The parent's end of its mTLS link to an instance: TLS 1.3 over TCP on
//! the bridge, the parent's own SVID as the client certificate, the trust
//! domain's root as the only anchor, and the instance's chain checked to
//! carry exactly the SPIFFE ID the parent issued (inside the subtrees of
//! its intermediates).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tonic::transport::{Channel, Endpoint};

use crate::svid_swap::SwappableSvid;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("reading the parent's {what}")]
    Pem {
        what: &'static str,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the SVID presented on links")]
    Svid(#[source] crate::svid_swap::SvidError),
    #[error("setting up TLS to instances")]
    Tls(#[source] rustls::Error),
    #[error("the instances' trust anchor")]
    Roots(#[source] rustls::Error),
    #[error("the link to {addr}")]
    Endpoint {
        addr: SocketAddr,
        #[source]
        source: tonic::transport::Error,
    },
}

/// What the parent presents and trusts on its links to instances.
#[derive(Clone)]
pub struct LinkTls {
    config: Arc<rustls::ClientConfig>,
}

impl LinkTls {
    /// From PEM: the parent's SVID chain and key, and the trust bundle.
    pub fn new(chain_pem: &[u8], key_pem: &[u8], bundle_pem: &[u8]) -> Result<Self, LinkError> {
        let svid = SwappableSvid::from_pem(chain_pem, key_pem).map_err(LinkError::Svid)?;
        Self::with_svid(svid, bundle_pem)
    }

    /// Presenting `svid`, which may be replaced (a spawned auraed's link to
    /// its parent shares its listeners' SVID).
    pub fn with_svid(svid: Arc<SwappableSvid>, bundle_pem: &[u8]) -> Result<Self, LinkError> {
        use rustls::pki_types::pem::PemObject;
        let pem = |what| move |source| LinkError::Pem { what, source };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(bundle_pem) {
            roots
                .add(cert.map_err(pem("trust bundle"))?)
                .map_err(LinkError::Roots)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(LinkError::Tls)?
            .with_root_certificates(roots)
            .with_client_cert_resolver(svid);
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            config: Arc::new(config),
        })
    }

    /// A channel to the instance at `addr` whose SVID must be `spiffe_id`.
    /// It connects on first use and reconnects after a failure.
    pub fn channel(&self, addr: SocketAddr, spiffe_id: String) -> Result<Channel, LinkError> {
        self.channel_expecting(addr, ExpectedId::new(spiffe_id))
    }

    /// [`LinkTls::channel`], expecting whatever `expected` holds at each
    /// (re)connection.
    pub fn channel_expecting(
        &self,
        addr: SocketAddr,
        expected: ExpectedId,
    ) -> Result<Channel, LinkError> {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|source| LinkError::Endpoint { addr, source })?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10));
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        Ok(
            endpoint.connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
                let connector = connector.clone();
                let expected = expected.clone();
                async move { connect(addr, connector, &expected.get()).await }
            })),
        )
    }
}

/// The SPIFFE ID a link expects of its instance: set again when a
/// pre-started instance is claimed and given its own.
#[derive(Debug, Clone)]
pub struct ExpectedId(Arc<std::sync::RwLock<String>>);

impl ExpectedId {
    pub fn new(id: String) -> Self {
        Self(Arc::new(std::sync::RwLock::new(id)))
    }

    pub fn get(&self) -> String {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, id: String) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = id;
    }
}

/// Connects, shakes hands, and checks the instance's identity.
async fn connect(
    addr: SocketAddr,
    connector: tokio_rustls::TlsConnector,
    expected: &str,
) -> std::io::Result<TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>> {
    let invalid = |msg: String| std::io::Error::new(std::io::ErrorKind::PermissionDenied, msg);
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("localhost").map_err(|e| invalid(e.to_string()))?;
    let tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("TLS handshake with {addr} took over 10 s"),
            )
        })??;
    let chain: Vec<CertificateDer<'static>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    let id = crate::pki::check_subtree(&chain).map_err(|e| invalid(e.to_string()))?;
    if id != expected {
        return Err(invalid(format!(
            "the instance at {addr} is {id}, not {expected}"
        )));
    }
    Ok(TokioIo::new(tls))
}

impl super::Instances {
    /// A channel of its own to instance `i` (a connection apart from the
    /// one every call to it shares): for a long, interactive call whose
    /// stream may stall (a process that reads no stdin), so that HTTP/2
    /// flow control held up on it never holds up the instance's other calls.
    pub fn own_channel(&self, i: &super::Instance) -> Result<Channel, crate::error::ApiError> {
        self.link()?
            .channel_expecting(i.address, i.expected.clone())
            .map_err(|e| {
                crate::error::ApiError::Internal(format!("a link to instance {}: {e}", i.name))
            })
    }

    pub(super) fn link(&self) -> Result<LinkTls, crate::error::ApiError> {
        let read = |what: &'static str, path: &std::path::Path| {
            std::fs::read(path)
                .map_err(|e| crate::error::ApiError::io(format!("{what}: {}", path.display()), e))
        };
        LinkTls::new(
            &read("auth.server_crt", &self.cfg.own_cert)?,
            &read("auth.server_key", &self.cfg.own_key)?,
            &read("auth.ca_crt", &self.cfg.trust_bundle)?,
        )
        .map_err(|e| crate::error::ApiError::FailedPrecondition(format!("instance links: {e}")))
    }
}
