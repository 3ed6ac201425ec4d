//! An instance's address on this auraed's bridge, in auraed's own network
//! namespace: what an instance in the host's network namespace (a
//! Kubernetes `hostNetwork` pod) listens on, instead of a veth of its own.

use std::net::{IpAddr, Ipv6Addr};

use futures::TryStreamExt;

use super::{errno, BridgeLink, Conn, NetError};

/// `addr/128` on a bridge; dropping it removes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "the address stays until remove() is called"]
pub struct HostAddress {
    pub link: String,
    pub index: u32,
    pub addr: Ipv6Addr,
}

/// Adds `addr/128` to `bridge` (usable at once, without duplicate address
/// detection). One already there, left by a crashed auraed, is taken.
pub async fn add_host_address(
    bridge: &BridgeLink,
    addr: Ipv6Addr,
) -> Result<HostAddress, NetError> {
    let conn = Conn::open()?;
    match super::addresses::add_nodad(&conn.handle, bridge.index, &bridge.name, addr, 128).await {
        Ok(()) => {}
        Err(NetError::AddAddress { source, .. }) if errno(&source) == Some(libc::EEXIST) => {}
        Err(e) => return Err(e),
    }
    Ok(HostAddress {
        link: bridge.name.clone(),
        index: bridge.index,
        addr,
    })
}

impl HostAddress {
    /// Removes the address; returns whether it was still there.
    pub async fn remove(self) -> Result<bool, NetError> {
        let conn = Conn::open()?;
        let mut found = conn
            .handle
            .address()
            .get()
            .set_link_index_filter(self.index)
            .set_address_filter(IpAddr::V6(self.addr))
            .execute();
        let Some(msg) = found
            .try_next()
            .await
            .map_err(|source| NetError::DelAddress {
                link: self.link.clone(),
                addr: self.addr,
                source,
            })?
        else {
            return Ok(false);
        };
        match conn.handle.address().del(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::EADDRNOTAVAIL) => Ok(false),
            Err(source) => Err(NetError::DelAddress {
                link: self.link,
                addr: self.addr,
                source,
            }),
        }
    }
}

/// Removes every /128 address on `bridge` but those in `keep`: what
/// host-network instances of a previous run left (this auraed's own address
/// there is a /64; `keep` has those of instances taken back).
/// Returns those removed.
pub async fn remove_host_addresses(
    bridge: &BridgeLink,
    keep: &[Ipv6Addr],
) -> Result<Vec<Ipv6Addr>, NetError> {
    let conn = Conn::open()?;
    let held = super::addresses::list_ipv6(&conn.handle).await?;
    let mut removed = Vec::new();
    for h in held
        .into_iter()
        .filter(|h| h.index == bridge.index && h.prefix.prefix_len() == 128)
        .filter(|h| !keep.contains(&h.prefix.addr()))
    {
        let a = HostAddress {
            link: bridge.name.clone(),
            index: bridge.index,
            addr: h.prefix.addr(),
        };
        if a.remove().await? {
            removed.push(h.prefix.addr());
        }
    }
    Ok(removed)
}

/// A TCP port free on every address of this host (for an instance's auraed
/// in the host's network namespace).
pub fn free_tcp_port() -> std::io::Result<u16> {
    std::net::TcpListener::bind((Ipv6Addr::UNSPECIFIED, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
}
