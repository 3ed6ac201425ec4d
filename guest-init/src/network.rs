//! `lo` and `eth0` over rtnetlink.

use anyhow::{bail, Context};
use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use rtnetlink::{LinkUnspec, RouteMessageBuilder};

use crate::bootparams::BootParams;

async fn link_index(handle: &rtnetlink::Handle, name: &str) -> anyhow::Result<Option<u32>> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(Some(link.header.index)),
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(e).with_context(|| format!("looking up {name}")),
    }
}

/// Makes the kernel send a gratuitous ARP for the interface's address when
/// it comes up, so that the host (the instance's parent) learns our MAC
/// address at once: its first packets to us then go out without waiting for
/// its ARP retries, which are a second apart.
fn announce_on_up(iface: &str) {
    let knob = format!("/proc/sys/net/ipv4/conf/{iface}/arp_notify");
    if let Err(e) = std::fs::write(&knob, "1") {
        eprintln!("aurae-guest-init: {knob}: {e} (the host learns our address on its own ARP)");
    }
}

/// Gives `iface` its address (and MTU), brings it up, and routes through
/// `gateway` (the default route of the address's family).
async fn up_with(
    handle: &rtnetlink::Handle,
    iface: &str,
    (ip, prefix): (std::net::IpAddr, u8),
    gateway: Option<std::net::IpAddr>,
    mtu: Option<u32>,
) -> anyhow::Result<()> {
    let Some(index) = link_index(handle, iface).await? else {
        bail!("an address for {iface}, but there is no {iface}");
    };
    if ip.is_ipv4() {
        announce_on_up(iface);
    }
    let mut add = handle.address().add(index, ip, prefix);
    if ip.is_ipv6() {
        // IFA_F_NODAD: usable at once. The parent assigns every address
        // of the prefix, so duplicate address detection has nothing to
        // find, and a tentative address can't be bound by auraed.
        let msg = add.message_mut();
        msg.header.flags |= AddressHeaderFlags::Nodad;
        msg.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    add.execute()
        .await
        .with_context(|| format!("adding {ip}/{prefix} to {iface}"))?;
    let mut link = LinkUnspec::new_with_index(index).up();
    if let Some(mtu) = mtu {
        link = link.mtu(mtu);
    }
    handle
        .link()
        .set(link.build())
        .execute()
        .await
        .with_context(|| format!("{iface} up (MTU {mtu:?})"))?;
    if let Some(gw) = gateway {
        let route = match gw {
            std::net::IpAddr::V4(v4) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .gateway(v4)
                .output_interface(index)
                .build(),
            std::net::IpAddr::V6(v6) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .gateway(v6)
                .output_interface(index)
                .build(),
        };
        handle
            .route()
            .add(route)
            .execute()
            .await
            .with_context(|| format!("default route via {gw} on {iface}"))?;
    }
    Ok(())
}

pub async fn configure(params: &BootParams) -> anyhow::Result<()> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening netlink")?;
    let task = tokio::spawn(conn);
    let result = async {
        let lo = link_index(&handle, "lo")
            .await?
            .context("no lo interface")?;
        handle
            .link()
            .set(LinkUnspec::new_with_index(lo).up().build())
            .execute()
            .await
            .context("lo up")?;
        // A pod's IPv6 network routes the guest's IPv6 traffic: eth0 then
        // reaches only its own prefix (auraed's bridge, on-link).
        let pod_v6 = params
            .pod
            .as_ref()
            .is_some_and(|p| p.ip.0.is_ipv6() && p.gateway.is_some());
        if let Some((ip, prefix)) = params.ip {
            let gateway = params.gateway.filter(|g| !(pod_v6 && g.is_ipv6()));
            up_with(&handle, "eth0", (ip, prefix), gateway, None).await?;
        }
        if let Some(pod) = &params.pod {
            up_with(&handle, &pod.iface, pod.ip, pod.gateway, pod.mtu).await?;
        }
        Ok(())
    }
    .await;
    task.abort();
    result
}
