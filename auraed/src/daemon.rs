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
    #[cfg(feature = "cri")]
    #[error("the CRI endpoint")]
    Cri(#[from] crate::cri::CriServeError),
    #[cfg(not(feature = "cri"))]
    #[error("cri.enabled: this auraed was built without the CRI endpoint (feature \"cri\")")]
    CriNotBuilt,
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
}

/// What a jailed cell must not see of auraed: its state, its socket and its
/// keys. A file's folder is hidden where it is auraed's own (at least two
/// levels deep, as `/etc/aurae/pki`), else the file alone.
fn hidden_paths(cfg: &Config) -> Vec<std::path::PathBuf> {
    let mut hidden = vec![cfg.runtime.state_dir.clone()];
    for file in [
        &cfg.server.socket,
        &cfg.auth.server_key,
        &cfg.auth.server_crt,
        &cfg.auth.ca_crt,
    ] {
        let folder = file.parent().filter(|p| p.components().count() >= 3);
        let path = folder.unwrap_or(file).to_path_buf();
        if !hidden.iter().any(|h| path.starts_with(h)) {
            hidden.push(path);
        }
    }
    hidden
}

/// What spawning needs, or None (logged) where this auraed's own SVID
/// can't be read.
fn instances_config(cfg: &Config) -> Option<(crate::instances::InstancesConfig, String)> {
    use rustls::pki_types::pem::PemObject;
    let own_id = rustls::pki_types::CertificateDer::pem_file_iter(&cfg.auth.server_crt)
        .ok()
        .and_then(|mut certs| certs.next())
        .and_then(|c| c.ok())
        .and_then(|der| crate::pki::spiffe_id_of(&der).ok());
    let Some(own_id) = own_id else {
        tracing::warn!(
            "spawning is unavailable: no SPIFFE ID in {}",
            cfg.auth.server_crt.display()
        );
        return None;
    };
    let i = &cfg.instances;
    // Unset, the image is also found beside auraed's build (`target/
    // aurae-image`, where `cargo xtask image` writes it), so that nothing
    // needs installing after the README's main command.
    let image_dir = if i.image_dir == std::path::Path::new(crate::instances::DEFAULT_IMAGE_DIR)
        && !i.image_dir.exists()
    {
        std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.join("aurae-image")))
            .filter(|d| d.join("initramfs.cpio.zst").is_file())
            .unwrap_or_else(|| i.image_dir.clone())
    } else {
        i.image_dir.clone()
    };
    let ca_dir = cfg
        .auth
        .ca_crt
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    Some((
        crate::instances::InstancesConfig {
            image_dir,
            signing_key: i
                .signing_key
                .clone()
                .unwrap_or_else(|| ca_dir.join("ca.key")),
            signing_chain: i
                .signing_chain
                .clone()
                .unwrap_or_else(|| cfg.auth.ca_crt.clone()),
            trust_bundle: cfg.auth.ca_crt.clone(),
            own_cert: cfg.auth.server_crt.clone(),
            own_key: cfg.auth.server_key.clone(),
            admins: cfg.auth.allowed_spiffe_ids.clone(),
            bridge: i.bridge.clone(),
            port: i.port,
            // On the cells' tmpfs: an overlay's lower layer there stacks
            // once however deep instances nest (a lower on an instance's
            // own overlay root would not mount two levels down).
            cache_dir: cfg.runtime.state_dir.join("cells").join(".instance-roots"),
            // Also on the cells' tmpfs: a microVM's initrd holds its
            // private keys, which never touch the disk.
            instances_dir: cfg.runtime.state_dir.join("cells").join(".instances"),
            vms_dir: cfg.runtime.state_dir.join("vms"),
            kept_dir: cfg.runtime.state_dir.join("instances"),
            vm_restart: i.vm_restart,
            path: i.path.clone(),
            pool: i.pool,
            in_host_network: i.in_host_network,
            vmm: i.vmm_path(),
            fail_at: i
                .fail_at
                .as_deref()
                .and_then(crate::instances::FailAt::parse),
        },
        own_id,
    ))
}

/// Raises the soft limit of open files to the hard one: auraed holds a few
/// per workload (pidfds, log pipes, relayed connections, metadata sockets).
fn raise_open_files() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!("raising the open-files limit from {soft} to {hard}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("reading the open-files limit: {e}"),
    }
}

/// Serves `cfg` until SIGTERM or SIGINT, then frees every workload.
pub async fn run(cfg: Config) -> Result<(), DaemonError> {
    raise_open_files();
    // An instance's pod volumes are put in its auraed's own namespace.
    if !cfg.instances.path.is_empty() {
        crate::sys::mount_ns::propagate_from_own();
    }
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = Arc::new(Runtime::new(RuntimeConfig {
        state_dir: cfg.runtime.state_dir.clone(),
        cgroup_root: cfg.runtime.cgroup_root.clone(),
        log_buffer_bytes: cfg.runtime.log_buffer_bytes,
        hidden: hidden_paths(&cfg),
        instances: instances_config(&cfg),
        image_unpack_limit_bytes: cfg.runtime.image_unpack_limit_bytes,
    })?);
    if let Some(instances) = &runtime.instances {
        runtime.adopt_left_running().await;
        runtime.adopt_kept().await;
        instances.remove_left_behind().await;
        runtime.start_pool();
    }
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    #[cfg_attr(not(feature = "cri"), allow(unused_variables))]
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    };
    // The CRI endpoint, when enabled: bound before serving starts, so that
    // a socket it can't have fails the start.
    #[cfg(not(feature = "cri"))]
    if cfg.cri.enabled {
        return Err(DaemonError::CriNotBuilt);
    }
    #[cfg(feature = "cri")]
    let cri = if cfg.cri.enabled {
        let cri = Arc::new(crate::cri::Cri::new(
            runtime.clone(),
            cfg.cri.clone(),
            &cfg.runtime.state_dir,
            cfg.runtime.image_unpack_limit_bytes,
        )?);
        let listener = crate::cri::bind(&cfg.cri)?;
        let mut stop = stop_rx.clone();
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        Some(tokio::spawn(crate::cri::serve(cri, listener, stopped)))
    } else {
        None
    };
    // Kept instances are CRI pods': without the CRI, nothing claims them;
    // their CNI addresses are released.
    if !cfg.cri.enabled {
        runtime.free_unclaimed(&[]).await;
        #[cfg(feature = "cri")]
        crate::cri::release_all(&cfg.cri, &cfg.runtime.state_dir).await;
    }
    let served = crate::server::serve(&cfg, runtime.clone(), shutdown).await;
    #[cfg(feature = "cri")]
    if let Some(task) = cri {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("the CRI endpoint: {}", crate::error::chain(&e)),
            Err(e) => tracing::error!("the CRI endpoint's task: {e}"),
        }
    }
    runtime.shutdown().await;
    let _ = std::fs::remove_file(&cfg.server.socket);
    Ok(served?)
}
