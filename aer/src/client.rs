//! Client config (`~/.aurae/config`, then `/etc/aurae/config`) and the mTLS
//! connection to auraed over its Unix socket or TCP.

use std::path::{Path, PathBuf};

use aurae_proto::runtime::runtime_client::RuntimeClient;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no client config: looked for {0}")]
    NoConfig(String),
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("connecting to {target}: {reason}")]
    Connect { target: String, reason: String },
}

#[derive(Debug, Clone, Deserialize)]
pub struct ClientConfig {
    pub auth: Auth,
    #[serde(default)]
    pub system: System,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Auth {
    pub ca_crt: PathBuf,
    pub client_crt: PathBuf,
    pub client_key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
pub struct System {
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Server name to verify in the server's certificate.
    #[serde(default = "default_server_name")]
    pub server_name: String,
}

fn default_socket() -> PathBuf {
    PathBuf::from("/run/aurae/aurae.sock")
}

fn default_server_name() -> String {
    "localhost".into()
}

impl Default for System {
    fn default() -> Self {
        Self {
            socket: default_socket(),
            server_name: default_server_name(),
        }
    }
}

/// Where the config is looked for, in order.
pub fn default_paths() -> Vec<PathBuf> {
    let mut paths = Vec::new();
    if let Some(home) = std::env::var_os("HOME") {
        paths.push(Path::new(&home).join(".aurae/config"));
    }
    paths.push(PathBuf::from("/etc/aurae/config"));
    paths
}

impl ClientConfig {
    pub fn load(path: &Path) -> Result<Self, ClientError> {
        let err = |reason: String| ClientError::Config {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        toml::from_str(&text).map_err(|e| err(e.to_string()))
    }

    /// Loads `explicit`, or the first default path that exists.
    pub fn find(explicit: Option<&Path>) -> Result<Self, ClientError> {
        if let Some(p) = explicit {
            return Self::load(p);
        }
        let paths = default_paths();
        match paths.iter().find(|p| p.exists()) {
            Some(p) => Self::load(p),
            None => Err(ClientError::NoConfig(
                paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            )),
        }
    }

    fn tls(&self) -> Result<ClientTlsConfig, ClientError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| ClientError::Config {
                path: p.to_path_buf(),
                reason: e.to_string(),
            })
        };
        Ok(ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&self.auth.ca_crt)?))
            .identity(Identity::from_pem(
                read(&self.auth.client_crt)?,
                read(&self.auth.client_key)?,
            ))
            .domain_name(self.system.server_name.clone()))
    }

    /// Connects over the Unix socket, or over TCP to `tcp` ("host:port").
    pub async fn connect(&self, tcp: Option<&str>) -> Result<Channel, ClientError> {
        let tls = self.tls()?;
        match tcp {
            Some(addr) => {
                let err = |reason: String| ClientError::Connect {
                    target: addr.to_string(),
                    reason,
                };
                Endpoint::from_shared(format!("https://{addr}"))
                    .map_err(|e| err(e.to_string()))?
                    .tls_config(tls)
                    .map_err(|e| err(e.to_string()))?
                    .connect()
                    .await
                    .map_err(|e| err(error_chain(&e)))
            }
            None => connect_unix(&self.system.socket, Some(tls)).await,
        }
    }

    /// Connects over vsock to `port` of a VM, through the Unix socket of
    /// its VMM's vsock device (`aurae-vmm --vsock CID:PATH`), with mTLS.
    pub async fn connect_vsock(
        &self,
        vmm_socket: &Path,
        port: u32,
    ) -> Result<Channel, ClientError> {
        connect_through_vsock(vmm_socket, port, self.tls()?).await
    }

    /// Connects with mTLS over the streams that `open` makes, to
    /// `target` (named in errors): for a transport of the caller's own,
    /// such as a TCP socket made in another network namespace.
    pub async fn connect_via<F, Fut, S>(
        &self,
        target: &str,
        open: F,
    ) -> Result<Channel, ClientError>
    where
        F: Fn() -> Fut + Send + Clone + 'static,
        Fut: std::future::Future<Output = std::io::Result<S>> + Send,
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        connect_with(target.to_string(), Some(self.tls()?), open).await
    }

    pub async fn runtime(&self, tcp: Option<&str>) -> Result<RuntimeClient<Channel>, ClientError> {
        Ok(RuntimeClient::new(self.connect(tcp).await?))
    }
}

/// Connects to a Unix socket, with TLS when `tls` is set.
pub async fn connect_unix(
    socket: &Path,
    tls: Option<ClientTlsConfig>,
) -> Result<Channel, ClientError> {
    let path = socket.to_path_buf();
    connect_with(format!("unix:{}", socket.display()), tls, move || {
        tokio::net::UnixStream::connect(path.clone())
    })
    .await
}

/// A channel over the streams `open` makes (TLS on top when `tls` is set).
async fn connect_with<F, Fut, S>(
    target: String,
    tls: Option<ClientTlsConfig>,
    open: F,
) -> Result<Channel, ClientError>
where
    F: Fn() -> Fut + Send + Clone + 'static,
    Fut: std::future::Future<Output = std::io::Result<S>> + Send,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let err = |reason: String| ClientError::Connect {
        target: target.clone(),
        reason,
    };
    let endpoint = match tls {
        Some(tls) => Endpoint::from_static("https://localhost")
            .tls_config(tls)
            .map_err(|e| err(e.to_string()))?,
        None => Endpoint::from_static("http://localhost"),
    };
    endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let open = open.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(open().await?)) }
        }))
        .await
        .map_err(|e| err(error_chain(&e)))
}

/// Opens a stream to `port` of a VM through its VMM's vsock socket: writes
/// `CONNECT <port>`, and expects `OK <host port>` back before the stream.
async fn vsock_stream(socket: &Path, port: u32) -> std::io::Result<tokio::net::UnixStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(socket).await?;
    s.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
    let mut line = Vec::new();
    loop {
        let b = match s.read_u8().await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(std::io::Error::other(format!(
                    "the VMM closed the connection without an OK: nothing listens on vsock port {port} in the VM, or its guest did not answer"
                )))
            }
            Err(e) => return Err(e),
        };
        if b == b'\n' {
            break;
        }
        if line.len() >= 32 {
            return Err(std::io::Error::other("the VMM's answer is not a line"));
        }
        line.push(b);
    }
    if !line.starts_with(b"OK ") {
        return Err(std::io::Error::other(format!(
            "the VMM answered {:?} instead of OK",
            String::from_utf8_lossy(&line)
        )));
    }
    Ok(s)
}

async fn connect_through_vsock(
    socket: &Path,
    port: u32,
    tls: ClientTlsConfig,
) -> Result<Channel, ClientError> {
    let path = socket.to_path_buf();
    connect_with(
        format!("vsock:{port} via {}", socket.display()),
        Some(tls),
        move || {
            let path = path.clone();
            async move { vsock_stream(&path, port).await }
        },
    )
    .await
}

/// An error with its sources, for messages a user can act on.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        cur = s.source();
    }
    msg
}

/// Adds `aurae-instance: <path>` to every request, so that auraed routes it
/// hop by hop to that instance (`a/b` is instance `b` of instance `a`).
#[derive(Clone, Debug, Default)]
pub struct InstanceRoute {
    path: Option<tonic::metadata::AsciiMetadataValue>,
}

impl InstanceRoute {
    pub fn new(path: Option<&str>) -> Result<Self, ClientError> {
        let path = path
            .map(|p| {
                p.parse().map_err(|_| ClientError::Connect {
                    target: p.to_string(),
                    reason: "--instance: not a valid instance path".into(),
                })
            })
            .transpose()?;
        Ok(Self { path })
    }
}

impl tonic::service::Interceptor for InstanceRoute {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(path) = &self.path {
            req.metadata_mut().insert("aurae-instance", path.clone());
        }
        Ok(req)
    }
}

/// A Runtime client whose requests may be routed to an instance.
pub type Client =
    RuntimeClient<tonic::service::interceptor::InterceptedService<Channel, InstanceRoute>>;
