//! A veth pair for a cell-backed instance: the host end on the bridge, the
//! peer end in the cell's network namespace.

use std::net::Ipv6Addr;
use std::os::fd::{AsFd, BorrowedFd};

use rtnetlink::LinkVeth;

use super::{
    addresses, check_link_name, del_index, enslave_up, link_index, move_to_netns, netns, set_up,
    BridgeLink, Conn, NetError,
};

/// A veth pair made by [`create_veth`]. Call [`Veth::remove`] to delete it;
/// dropping it deletes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a veth pair stays until remove() is called"]
pub struct Veth {
    /// The host end's name, on the bridge.
    pub host: String,
    pub host_index: u32,
    /// The peer end's name inside the peer's namespace (`eth0`).
    pub peer: String,
}

impl Veth {
    /// Deletes the pair (deleting the host end deletes the peer too).
    /// Returns whether it still existed: if the peer's namespace is gone,
    /// the kernel has already deleted the pair.
    pub async fn remove(self) -> Result<bool, NetError> {
        let conn = Conn::open()?;
        del_index(&conn.handle, self.host_index, &self.host).await
    }
}

/// Creates the veth pair `host` / `peer` in the caller's network namespace,
/// enslaves `host` to `bridge` and sets it up, then moves `peer` into the
/// network namespace `peer_netns` (a `/proc/<pid>/ns/net` fd, or a pidfd of
/// a process in it), renaming it `peer_name_in_ns` (`eth0`) in the same request. Inside that
/// namespace it adds `peer_addr` (with `IFA_F_NODAD`, so usable at once)
/// and sets the peer and `lo` up.
///
/// `host` and `peer` are temporary names in the caller's namespace, at most
/// 15 bytes (see [`super::host_link_name`]). If any step fails, the pair is
/// deleted before the error is returned.
pub async fn create_veth(
    host: &str,
    peer: &str,
    bridge: &BridgeLink,
    peer_netns: BorrowedFd<'_>,
    peer_name_in_ns: &str,
    peer_addr: Option<(Ipv6Addr, u8)>,
) -> Result<Veth, NetError> {
    check_link_name("veth host name", host)?;
    check_link_name("veth peer name", peer)?;
    check_link_name("veth peer name in the namespace", peer_name_in_ns)?;
    let netns_fd = netns::ns_file(peer_netns).await?;
    let conn = Conn::open()?;
    let handle = &conn.handle;
    handle
        .link()
        .add(LinkVeth::new(host, peer).build())
        .execute()
        .await
        .map_err(|source| NetError::AddVeth {
            link: host.to_string(),
            peer: peer.to_string(),
            source,
        })?;
    // The pair exists from here on: undo it if anything fails.
    let host_index = match link_index(handle, host).await {
        Ok(i) => i,
        Err(e) => {
            let _ = super::delete_link(host).await;
            return Err(e);
        }
    };
    let rest = async {
        enslave_up(handle, host_index, host, bridge).await?;
        let peer_index = link_index(handle, peer).await?;
        move_to_netns(handle, peer_index, peer, peer_name_in_ns, netns_fd.as_fd()).await?;
        let name = peer_name_in_ns.to_string();
        netns::run_in(netns_fd, move |handle| async move {
            let index = link_index(&handle, &name).await?;
            if let Some((addr, len)) = peer_addr {
                addresses::add_nodad(&handle, index, &name, addr, len).await?;
            }
            set_up(&handle, index, &name).await?;
            let lo = link_index(&handle, "lo").await?;
            set_up(&handle, lo, "lo").await
        })
        .await
    };
    if let Err(e) = rest.await {
        if let Err(undo) = del_index(handle, host_index, host).await {
            tracing::error!("removing veth {host} after a failed set-up: {undo}");
        }
        return Err(e);
    }
    Ok(Veth {
        host: host.to_string(),
        host_index,
        peer: peer_name_in_ns.to_string(),
    })
}
