//! `guest-init serve`: the guest auraed. It is the auraed library with the
//! identity and trust bundle from the initramfs (`/etc/aurae`), serving on
//! eth0's address (from the kernel command line) with mTLS, and on a vsock
//! port if the command line names one.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use anyhow::Context;

use crate::bootparams::BootParams;

pub const CONFIG: &str = "/etc/aurae/auraed.toml";

/// The parameters of a cell-backed instance: a cell has no kernel command
/// line of its own (`/proc/cmdline` is the host's), so the parent writes
/// the same `aurae.*` words here, in the instance's overlay.
pub const CELL_PARAMS: &str = "/etc/aurae/bootparams";

/// The `aurae.*` parameters: from [`CELL_PARAMS`] in a cell, else from the
/// kernel command line.
fn params_text() -> anyhow::Result<String> {
    match std::fs::read_to_string(CELL_PARAMS) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::read_to_string("/proc/cmdline").context("reading /proc/cmdline")
        }
        Err(e) => Err(e).with_context(|| format!("reading {CELL_PARAMS}")),
    }
}

pub fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let params = BootParams::parse(&params_text()?).map_err(anyhow::Error::msg)?;
    let mut cfg = auraed::config::Config::load(std::path::Path::new(CONFIG))
        .with_context(|| format!("loading the instance identity and config ({CONFIG})"))?;
    let ip = params
        .ip
        .map(|(ip, _)| ip)
        .unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    cfg.server.tcp = Some(SocketAddr::new(ip, params.port));
    cfg.server.vsock_port = params.vsock_port;
    if let Err(e) = auraed::sys::mount_ns::enter_own() {
        tracing::warn!("staying in the root mount namespace (cells start slower): {e}");
    }
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    rt.block_on(auraed::daemon::run(cfg))?;
    Ok(())
}
