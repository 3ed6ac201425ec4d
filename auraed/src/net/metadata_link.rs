//! The link an instance reaches its link-local metadata endpoint over.
//!
//! The endpoint's listening socket must not take a port in the instance's
//! own network namespace: a pod's web server binding `0.0.0.0:80` would
//! fail with EADDRINUSE next to a listener on `169.254.169.254:80`. So the
//! listener lives in a network namespace of its own (one per endpoint, kept
//! alive by the socket), joined to the instance by a veth pair:
//! `169.254.169.254/30` on this side, `169.254.169.253/30` on the
//! instance's end ([`LINK`]). Whatever connects comes from that one
//! instance, so the caller is still identified by where it is. When the
//! listener closes, its namespace goes, and with it the pair; a failed
//! set-up leaves nothing either (the namespace is only the setting-up
//! thread's until the listener exists).

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rtnetlink::{Handle, LinkVeth};

use super::{link_index, move_to_netns, netns, set_up, NetError};

/// The name of the instance's end of the link.
pub const LINK: &str = "aurae-meta";
const PREFIX_LEN: u8 = 30;

/// The instance's address on the link: the endpoint's address less one,
/// in the same /30.
fn instance_end(endpoint: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(endpoint) - 1)
}

async fn add_v4(handle: &Handle, index: u32, link: &str, addr: Ipv4Addr) -> Result<(), NetError> {
    handle
        .address()
        .add(index, std::net::IpAddr::V4(addr), PREFIX_LEN)
        .execute()
        .await
        .map_err(|source| NetError::AddAddressV4 {
            link: link.to_string(),
            addr,
            source,
        })
}

/// Makes the link and a listener on `endpoint:port` at its far side, for
/// the network namespace `netns` (a pidfd or an nsfs fd).
pub async fn metadata_listener(
    netns: BorrowedFd<'_>,
    endpoint: Ipv4Addr,
    port: u16,
) -> Result<TcpListener, NetError> {
    let target = netns::ns_file(netns).await?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("auraed-metadata-ns".into())
        .spawn(move || {
            let _ = tx.send(in_new_namespace(target, endpoint, port));
        })
        .map_err(|source| NetError::Netns {
            op: "spawning a thread",
            source,
        })?;
    rx.await.map_err(|_| NetError::NetnsThreadPanicked)?
}

/// On a thread of its own: moves into a new network namespace, makes the
/// pair there, sends one end to `target`, and binds the listener.
fn in_new_namespace(
    target: OwnedFd,
    endpoint: Ipv4Addr,
    port: u16,
) -> Result<TcpListener, NetError> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| NetError::Netns {
        op: "unshare(CLONE_NEWNET)",
        source: e.into(),
    })?;
    netns::with_handle_here(move |handle| async move {
        let handle = &handle;
        // Fresh namespace: these names are free.
        let (side, peer) = ("meta0", "meta1");
        handle
            .link()
            .add(LinkVeth::new(side, peer).build())
            .execute()
            .await
            .map_err(|source| NetError::AddVeth {
                link: side.to_string(),
                peer: peer.to_string(),
                source,
            })?;
        let side_index = link_index(handle, side).await?;
        let peer_index = link_index(handle, peer).await?;
        // One a previous auraed's endpoint left (its namespace goes
        // asynchronously after that auraed's exit) would take the name.
        let stale = target.try_clone().map_err(|source| NetError::Netns {
            op: "duplicating the namespace's fd",
            source,
        })?;
        netns::run_in(stale, |handle| async move {
            match super::get_link(&handle, LINK).await? {
                Some(l) => super::del_index(&handle, l.header.index, LINK)
                    .await
                    .map(drop),
                None => Ok(()),
            }
        })
        .await?;
        move_to_netns(handle, peer_index, peer, LINK, target.as_fd()).await?;
        add_v4(handle, side_index, side, endpoint).await?;
        set_up(handle, side_index, side).await?;
        netns::run_in(target, move |handle| async move {
            let index = link_index(&handle, LINK).await?;
            add_v4(&handle, index, LINK, instance_end(endpoint)).await?;
            set_up(&handle, index, LINK).await
        })
        .await?;
        let at = SocketAddr::from((endpoint, port));
        TcpListener::bind(at).map_err(|source| NetError::Listen { addr: at, source })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ends_share_a_slash_30_without_its_network_or_broadcast_address() {
        let endpoint = crate::metadata::imds::ADDR;
        let mask = u32::MAX << (32 - PREFIX_LEN);
        let (a, b) = (u32::from(endpoint), u32::from(instance_end(endpoint)));
        assert_eq!(a & mask, b & mask);
        for x in [a, b] {
            assert_ne!(x & !mask, 0, "network address");
            assert_ne!(x & !mask, !mask, "broadcast address");
        }
    }
}
