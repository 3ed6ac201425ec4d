//! The endpoint: the [`Cri`] state, its socket and its server.

use std::future::Future;
use std::sync::Arc;

use aurae_proto::cri::image_service_server::ImageServiceServer;
use aurae_proto::cri::runtime_service_server::RuntimeServiceServer;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::StreamExt as _;

use super::config::CriSection;
use super::{authority, image_store, pull, state};
use crate::runtime::Runtime;

/// The CRI endpoint's state: the runtime it drives, its sandboxes and
/// containers, and its images.
pub struct Cri {
    pub runtime: Arc<Runtime>,
    pub cfg: CriSection,
    pub state: state::State,
    pub store: Arc<image_store::ImageStore>,
    pub puller: pull::Puller,
    /// Where each sandbox keeps its files (its resolv.conf).
    pub sandboxes_dir: std::path::PathBuf,
    /// `GetContainerEvents`' subscribers.
    pub events: super::events::EventSender,
    /// The streaming server (`Exec`, `PortForward`).
    pub streams: super::streaming::Streams,
}

/// What tonic serves: the services' handlers borrow it, and a container's
/// log follower keeps the [`Cri`] it belongs to.
#[derive(Clone)]
pub struct CriService(pub Arc<Cri>);

impl std::ops::Deref for CriService {
    type Target = Cri;
    fn deref(&self) -> &Cri {
        &self.0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CriServeError {
    #[error("opening the CRI image store")]
    Store(#[from] image_store::StoreError),
    #[error("binding {path}")]
    Bind {
        path: String,
        #[source]
        source: Box<crate::server::ServeError>,
    },
    #[error("serving the CRI")]
    Transport(#[from] tonic::transport::Error),
    #[error("the CRI streaming server")]
    Streams(#[from] super::streaming::BindError),
    #[error("the CRI streaming server's TLS")]
    StreamTls(#[from] super::streaming::tls::StreamTlsError),
}

impl Cri {
    pub fn new(
        runtime: Arc<Runtime>,
        cfg: CriSection,
        state_dir: &std::path::Path,
        unpack_limit: u64,
    ) -> Result<Self, CriServeError> {
        let root = cfg.root.clone().unwrap_or_else(|| state_dir.join("cri"));
        let store = Arc::new(image_store::ImageStore::open(&root.join("images"))?);
        let tls = cfg
            .stream_tls
            .then(|| {
                super::streaming::tls::server_config(
                    cfg.stream_tls_cert.as_deref(),
                    cfg.stream_tls_key.as_deref(),
                    cfg.stream_address,
                )
            })
            .transpose()?;
        let streams = super::streaming::Streams::bind(cfg.stream_address, tls)?;
        Ok(Self {
            puller: pull::Puller {
                cfg: cfg.clone(),
                store: store.clone(),
                limit: unpack_limit,
            },
            runtime,
            cfg,
            state: Default::default(),
            store,
            sandboxes_dir: root.join("sandboxes"),
            events: super::events::channel(),
            streams,
        })
    }
}

/// Binds the CRI socket (mode 0600: the kubelet runs as root).
pub fn bind(cfg: &CriSection) -> Result<tokio::net::UnixListener, CriServeError> {
    let path = &cfg.socket;
    let bind_err = |e| CriServeError::Bind {
        path: path.display().to_string(),
        source: Box::new(e),
    };
    let listener = crate::server::bind_socket(path).map_err(bind_err)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
        bind_err(crate::server::ServeError::Io {
            path: path.display().to_string(),
            source: e,
        })
    })?;
    Ok(listener)
}

/// Serves the CRI on `listener` until `shutdown` resolves.
pub async fn serve(
    cri: Arc<Cri>,
    listener: tokio::net::UnixListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CriServeError> {
    cri.restore().await;
    tracing::info!("serving the CRI on unix:{}", cri.cfg.socket.display());
    // The streaming server stops after the CRI's own.
    let (streams_stop, streams_stopped) = tokio::sync::oneshot::channel::<()>();
    let streams = tokio::spawn(super::streaming::serve(cri.clone(), async {
        let _ = streams_stopped.await;
    }));
    let served = tonic::transport::Server::builder()
        .add_service(RuntimeServiceServer::new(CriService(cri.clone())))
        .add_service(ImageServiceServer::new(CriService(cri.clone())))
        // Each connection through the front that fixes old Go clients'
        // `:authority` (see `authority`).
        .serve_with_incoming_shutdown(
            UnixListenerStream::new(listener).map(|c| c.map(authority::front)),
            shutdown,
        )
        .await;
    let _ = streams_stop.send(());
    if let Err(e) = streams.await {
        tracing::error!("the CRI streaming server's task: {e}");
    }
    let _ = std::fs::remove_file(&cri.cfg.socket);
    cri.shutdown().await;
    Ok(served?)
}

impl Cri {
    /// Stops following logs and detaches the pods that stop with auraed
    /// from their CNI network (so their addresses go back to its IPAM); the
    /// sandboxes' instances go with the runtime. Kept pods stay attached.
    async fn shutdown(&self) {
        for c in self.state.all_containers() {
            if let Some(task) = c.logger.lock().unwrap_or_else(|e| e.into_inner()).take() {
                task.abort();
            }
        }
        for s in self.state.all_sandboxes() {
            if self.kept(&s) {
                continue;
            }
            if let Some(a) = s.cni.lock().await.take() {
                if let Err(e) = super::cni::del(&a, &self.cfg.cni_bin_dirs).await {
                    tracing::error!(
                        "sandbox {}: detaching its CNI network at shutdown: {}",
                        s.id,
                        crate::error::chain(&e)
                    );
                }
            }
        }
    }
}
