//! Serving the API: the Runtime service, gRPC health and reflection, on a
//! Unix socket and optionally TCP and vsock, with mTLS and SPIFFE
//! authorization. TLS is accepted by [`crate::tls_accept`] (with a
//! handshake deadline and a bound), not by tonic.

use std::future::Future;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;

use aurae_proto::metadata::metadata_server::MetadataServer;
use aurae_proto::runtime::runtime_server::RuntimeServer;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::service::InterceptorLayer;
use tonic::transport::Server;

use crate::auth::SpiffeAuthz;
use crate::config::Config;
use crate::metadata::service::MetadataService;
use crate::route::RouteLayer;
use crate::runtime::Runtime;
use crate::service::RuntimeService;
use crate::tls_accept::{HandshakeLimits, TlsAcceptor};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("setting up TLS: {0}")]
    Tls(#[from] crate::tls_accept::TlsSetupError),
    #[error("serving: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(String),
    #[error("the link to the parent's metadata endpoint")]
    Link(#[source] Box<crate::instances::link::LinkError>),
    #[error("the link-local metadata endpoint")]
    LinkLocal(#[source] Box<crate::net::NetError>),
}

/// How long open connections may take to finish after shutdown starts.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

fn tls_acceptor(cfg: &Config) -> Result<TlsAcceptor, ServeError> {
    Ok(TlsAcceptor::from_files(
        &cfg.auth.ca_crt,
        &cfg.auth.server_crt,
        &cfg.auth.server_key,
        HandshakeLimits {
            timeout: std::time::Duration::from_millis(cfg.server.tls_handshake_timeout_ms),
            max_in_handshake: cfg.server.tls_max_handshakes,
        },
    )?)
}

/// The link to the parent's metadata endpoint, for a spawned auraed: its
/// own SVID as the client certificate, the parent's exact SPIFFE ID
/// expected.
fn parent_link(
    cfg: &Config,
    svid: Arc<crate::svid_swap::SwappableSvid>,
) -> Result<Option<tonic::transport::Channel>, ServeError> {
    let (Some(addr), Some(id)) = (cfg.instances.parent, cfg.instances.parent_id.clone()) else {
        return Ok(None);
    };
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| ServeError::Io {
            path: p.display().to_string(),
            source,
        })
    };
    let tls = crate::instances::link::LinkTls::with_svid(svid, &read(&cfg.auth.ca_crt)?)
        .map_err(|e| ServeError::Link(Box::new(e)))?;
    let channel = tls
        .channel(addr, id)
        .map_err(|e| ServeError::Link(Box::new(e)))?;
    Ok(Some(channel))
}

/// The link-local metadata endpoint in this auraed's own network namespace,
/// when its parent asked for it (a microVM instance), answering with the
/// record the parent keeps.
async fn link_local_metadata(
    cfg: &Config,
    parent: Option<tonic::transport::Channel>,
) -> Result<Option<AbortOnDrop>, ServeError> {
    use crate::metadata::imds;
    let (true, Some(parent)) = (cfg.instances.link_local_metadata, parent) else {
        return Ok(None);
    };
    let own = std::fs::File::open("/proc/self/ns/net").map_err(|source| ServeError::Io {
        path: "/proc/self/ns/net".into(),
        source,
    })?;
    let listener = crate::net::metadata_listener(own.as_fd(), imds::ADDR, imds::PORT)
        .await
        .map_err(|e| ServeError::LinkLocal(Box::new(e)))?;
    let task =
        imds::serve(listener, imds::Source::Parent(parent)).map_err(|source| ServeError::Io {
            path: format!("{}:{}", imds::ADDR, imds::PORT),
            source,
        })?;
    tracing::info!("metadata endpoint on {}:{}", imds::ADDR, imds::PORT);
    Ok(Some(AbortOnDrop(task)))
}

/// A task that ends with its holder.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Binds the Unix socket, replacing a stale one.
pub fn bind_socket(path: &Path) -> Result<tokio::net::UnixListener, ServeError> {
    let io = |source| ServeError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(io)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io)?;
    Ok(listener)
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    cfg: &Config,
    runtime: Arc<Runtime>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<RuntimeServer<RuntimeService>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(aurae_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(aurae_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let runtime_service = RuntimeServer::new(RuntimeService::new(runtime.clone()));
    let tls = tls_acceptor(cfg)?;
    // The link to the parent presents the listeners' SVID, so that both
    // change together if this auraed is given another.
    let parent = parent_link(cfg, tls.svid.clone())?;
    let metadata_service = MetadataServer::new(MetadataService::new(
        runtime.instances.as_ref().map(|i| i.metadata.clone()),
        parent.clone(),
        crate::metadata::assume::Assumer {
            svid: tls.svid.clone(),
            parent_id: cfg.instances.parent_id.clone(),
            pre_started: cfg.instances.pre_started,
            runtime: runtime.clone(),
            taken: Default::default(),
        },
    ));
    // Aborted when serving ends.
    let _link_local = link_local_metadata(cfg, parent).await?;
    let authz = SpiffeAuthz::new(cfg.auth.allowed_spiffe_ids.clone());

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_rx_final = stop_rx.clone();
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    // Every listener but an insecure socket: mTLS (done by `tls` before
    // tonic sees the connection), and the SPIFFE check.
    let secure = || {
        Server::builder()
            .layer(InterceptorLayer::new(authz.clone()))
            .layer(RouteLayer::new(runtime.clone()))
            .add_service(health_service.clone())
            .add_service(reflection_v1.clone())
            .add_service(reflection_v1alpha.clone())
            .add_service(runtime_service.clone())
            .add_service(metadata_service.clone())
    };
    let uds = UnixListenerStream::new(bind_socket(&cfg.server.socket)?);
    type ServeFuture =
        std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>;
    let uds_server: ServeFuture = if cfg.server.insecure_socket {
        tracing::warn!(
            "serving {} without TLS (insecure_socket = true)",
            cfg.server.socket.display()
        );
        Box::pin(
            Server::builder()
                .add_service(health_service.clone())
                .add_service(reflection_v1.clone())
                .add_service(reflection_v1alpha.clone())
                .add_service(runtime_service.clone())
                .add_service(metadata_service.clone())
                .serve_with_incoming_shutdown(uds, stopped(stop_rx.clone())),
        )
    } else {
        let name = format!("unix:{}", cfg.server.socket.display());
        Box::pin(
            secure()
                .serve_with_incoming_shutdown(tls.incoming(uds, name), stopped(stop_rx.clone())),
        )
    };
    tracing::info!("serving on unix:{}", cfg.server.socket.display());
    let mut servers: Vec<ServeFuture> = vec![uds_server];
    if let Some(addr) = cfg.server.tcp {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Io {
                path: addr.to_string(),
                source,
            })?;
        let name = format!(
            "tcp:{}",
            listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default()
        );
        tracing::info!("serving on {name}");
        servers.push(Box::pin(secure().serve_with_incoming_shutdown(
            tls.incoming(crate::tls_accept::tcp_connections(listener), name),
            stopped(stop_rx.clone()),
        )));
    }
    if let Some(port) = cfg.server.vsock_port {
        let addr = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, port);
        let listener = tokio_vsock::VsockListener::bind(addr).map_err(|source| ServeError::Io {
            path: format!("vsock port {port}"),
            source,
        })?;
        tracing::info!("serving on vsock port {port}");
        servers.push(Box::pin(secure().serve_with_incoming_shutdown(
            tls.incoming(listener.incoming(), format!("vsock:{port}")),
            stopped(stop_rx.clone()),
        )));
    }
    let servers = async move {
        futures::future::join_all(servers)
            .await
            .into_iter()
            .collect::<Result<Vec<()>, _>>()
    };
    // After the shutdown signal, open connections get a short grace period
    // to finish their calls; followers of long log streams don't hold the
    // daemon up.
    let drained = async {
        stopped(stop_rx_final).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        r = servers => { r?; }
        _ = drained => tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; closing them"),
    }
    Ok(())
}
