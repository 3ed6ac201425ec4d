//! Traffic control for a plain VM's network namespace: its TAP and its
//! uplink (a veth to the bridge) are joined by mirred redirects, not a
//! bridge, so that everything the guest sends goes out to the bridge and
//! everything from the bridge comes in to the guest, except the guest's
//! own link-local metadata traffic (IPv4 to 169.254.169.254, and ARP asking
//! for it), which stays in the namespace, where auraed's metadata endpoint
//! listens. Nothing from the bridge ever reaches that endpoint, so what
//! connects to it is the VM, identified by its TAP.

use std::net::Ipv4Addr;

use rtnetlink::packet_route::tc::{
    TcFilterU32Option, TcHandle, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use rtnetlink::Handle;

use super::NetError;

const ETH_P_ALL: u16 = 0x0003;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
/// The ingress qdisc's handle (`ffff:`).
const INGRESS: u32 = 0xffff_0000;
/// Where the destination is in an IPv4 header, and the target protocol
/// address in an Ethernet/IPv4 ARP packet.
const IPV4_DST: i32 = 16;
const ARP_TARGET: i32 = 24;

fn tc_err(what: &'static str, link: &str) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let link = link.to_string();
    move |source| NetError::Tc { what, link, source }
}

/// A u32 match of the 32 bits at `off` (from the network header) against
/// `addr`, ending classification: the packet goes on up the stack.
fn keep_local(off: i32, addr: Ipv4Addr) -> Vec<TcFilterU32Option> {
    let mut sel = TcU32Selector::default();
    sel.flags = TcU32SelectorFlags::Terminal;
    sel.nkeys = 1;
    let mut key = TcU32Key::default();
    key.mask = u32::MAX;
    key.val = u32::from(addr);
    key.off = off;
    sel.keys = vec![key];
    vec![
        TcFilterU32Option::ClassId(TcHandle::from(0x0001_0001)),
        TcFilterU32Option::Selector(sel),
    ]
}

/// Adds the ingress qdisc to each link (index, name).
async fn add_ingress(handle: &Handle, links: [(u32, &str); 2]) -> Result<(), NetError> {
    for (index, name) in links {
        handle
            .qdisc()
            .add(index as i32)
            .ingress()
            .execute()
            .await
            .map_err(tc_err("adding the ingress qdisc", name))?;
    }
    Ok(())
}

/// Joins `tap` and `uplink` (indexes, in the caller's namespace) as the
/// module says; `local` is the metadata address kept in the namespace.
pub async fn join_with_redirects(
    handle: &Handle,
    (tap, tap_name): (u32, &str),
    (uplink, uplink_name): (u32, &str),
    local: Ipv4Addr,
) -> Result<(), NetError> {
    add_ingress(handle, [(tap, tap_name), (uplink, uplink_name)]).await?;
    // From the guest: its metadata traffic stays, the rest goes out.
    for (prio, proto, off) in [(1, ETH_P_IP, IPV4_DST), (2, ETH_P_ARP, ARP_TARGET)] {
        handle
            .traffic_filter(tap as i32)
            .add()
            .parent(INGRESS)
            .priority(prio)
            .protocol(proto.to_be())
            .u32(&keep_local(off, local))
            .map_err(tc_err("building a u32 match", tap_name))?
            .execute()
            .await
            .map_err(tc_err("adding a metadata match", tap_name))?;
    }
    add_redirect(handle, (tap, tap_name), uplink, 3).await?;
    add_redirect(handle, (uplink, uplink_name), tap, 1).await
}

/// Redirects everything arriving on `from` out of `to`, at `prio`.
async fn add_redirect(
    handle: &Handle,
    (from, name): (u32, &str),
    to: u32,
    prio: u16,
) -> Result<(), NetError> {
    handle
        .traffic_filter(from as i32)
        .add()
        .parent(INGRESS)
        .priority(prio)
        .protocol(ETH_P_ALL.to_be())
        .redirect(to)
        .map_err(tc_err("building a redirect", name))?
        .execute()
        .await
        .map_err(tc_err("adding a redirect", name))?;
    Ok(())
}

/// Joins `a` and `b` (indexes, in the caller's namespace) by redirecting
/// everything that arrives on one out of the other, both ways.
pub async fn redirect_both(
    handle: &Handle,
    (a, a_name): (u32, &str),
    (b, b_name): (u32, &str),
) -> Result<(), NetError> {
    add_ingress(handle, [(a, a_name), (b, b_name)]).await?;
    add_redirect(handle, (a, a_name), b, 1).await?;
    add_redirect(handle, (b, b_name), a, 1).await
}
