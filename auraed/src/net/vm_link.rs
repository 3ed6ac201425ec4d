//! A plain VM's network: its VMM runs in a network namespace of its own
//! (its cell's), where the VM's TAP and an uplink (a veth whose host end is
//! on the bridge) are joined by redirects (see [`super::tc`]). The guest is
//! on the bridge as if its TAP were; its link-local metadata traffic stays
//! in the namespace, where auraed's endpoint for it listens.

use std::net::Ipv4Addr;
use std::os::fd::BorrowedFd;

use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::RouteMessageBuilder;

use super::{create_veth, link_index, netns, set_up, tc, BridgeLink, NetError, Veth};

/// The uplink's name inside the VM's namespace.
pub const UPLINK: &str = "uplink";

/// Makes the VM's links in the namespace `netns` (a pidfd of a process in
/// it): the uplink (`host` on `bridge`, `peer` its temporary name), the
/// persistent TAP `tap` the VMM attaches to, a route to the guest's
/// link-local addresses through it, and the redirects that keep
/// `metadata` in the namespace. On error nothing is left (the TAP, made in
/// the namespace, goes with it).
pub async fn make_vm_link(
    netns: BorrowedFd<'_>,
    (host, peer): (&str, &str),
    bridge: &BridgeLink,
    tap: &str,
    metadata: Ipv4Addr,
) -> Result<Veth, NetError> {
    super::check_link_name("tap name", tap)?;
    let uplink = create_veth(host, peer, bridge, netns, UPLINK, None).await?;
    let ns = netns::ns_file(netns).await?;
    let tap = tap.to_string();
    let inside = netns::run_in(ns, move |handle| async move {
        crate::sys::tun::create_persistent_tap(&tap).map_err(|source| NetError::CreateTap {
            link: tap.clone(),
            source,
        })?;
        let tap_index = link_index(&handle, &tap).await?;
        set_up(&handle, tap_index, &tap).await?;
        // A new namespace inherits the host's IPv4 settings: answer ARP for
        // the metadata address (on lo) whatever the host's arp_ignore
        // (/proc/sys/net is this thread's namespace's).
        for dev in ["all", tap.as_str()] {
            let knob = format!("/proc/sys/net/ipv4/conf/{dev}/arp_ignore");
            std::fs::write(&knob, "0").map_err(|source| NetError::Netns {
                op: "setting arp_ignore",
                source,
            })?;
        }
        let uplink_index = link_index(&handle, UPLINK).await?;
        // Replies to the guest's link-local address go out its TAP.
        handle
            .route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(Ipv4Addr::new(169, 254, 0, 0), 16)
                    .output_interface(tap_index)
                    .scope(RouteScope::Link)
                    .build(),
            )
            .execute()
            .await
            .map_err(|source| NetError::Tc {
                what: "adding the link-local route",
                link: tap.clone(),
                source,
            })?;
        tc::join_with_redirects(&handle, (tap_index, &tap), (uplink_index, UPLINK), metadata).await
    })
    .await;
    if let Err(e) = inside {
        if let Err(undo) = uplink.clone().remove().await {
            tracing::error!("removing {host} after a failed set-up: {undo}");
        }
        return Err(e);
    }
    Ok(uplink)
}
