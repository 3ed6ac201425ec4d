//! Running the daemon: the runtime plus the servers, until a shutdown
//! signal. Shared by the `auraed` binary and the guest's init.

use std::sync::Arc;

use crate::config::Config;
use crate::runtime::{Runtime, RuntimeConfig};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Runtime(#[from] crate::error::ApiError),
    #[error("{0}")]
    Serve(#[from] crate::server::ServeError),
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Serves `cfg` until SIGTERM or SIGINT, then frees every workload.
pub async fn run(cfg: Config) -> Result<(), DaemonError> {
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = Arc::new(Runtime::new(RuntimeConfig {
        state_dir: cfg.runtime.state_dir.clone(),
        cgroup_root: cfg.runtime.cgroup_root.clone(),
        log_buffer_bytes: cfg.runtime.log_buffer_bytes,
    })?);
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutting down");
    };
    let served = crate::server::serve(&cfg, runtime.clone(), shutdown).await;
    runtime.shutdown().await;
    let _ = std::fs::remove_file(&cfg.server.socket);
    Ok(served?)
}
