//! A network a microVM instance joins before its guest boots, made by
//! someone else: a CRI pod's CNI network. Its VMM then runs in a network
//! namespace of its own (its cell's), which the hook attaches to the pod's
//! network, making a TAP there for the guest and saying how the guest
//! configures it (`aurae.pod=` on its command line: its eth1). The guest's
//! eth0 reaches this auraed's bridge through an uplink and redirects, as a
//! plain VM's does ([`crate::net::make_vm_link`]).

use std::net::IpAddr;
use std::os::fd::BorrowedFd;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::error::ApiError;

/// The pod's link in the VMM's namespace, as the guest configures it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLink {
    /// A persistent TAP in the namespace, joined to the pod's network.
    pub tap: String,
    pub address: IpAddr,
    pub prefix: u8,
    pub gateway: Option<IpAddr>,
    /// The guest's MAC and MTU: those of the device the network made.
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
}

/// Attaches a VMM's namespace to a pod network.
pub trait PodNetwork: Send + Sync {
    /// Makes the pod's link in the namespace of `netns` (a pidfd of a
    /// process in it); on error, nothing is left.
    fn attach<'a>(&'a self, netns: BorrowedFd<'a>) -> BoxFuture<'a, Result<PodLink, ApiError>>;
    /// Takes back what `attach` made, after a later step of the spawn
    /// failed (each failure logged).
    fn detach(&self) -> BoxFuture<'_, ()>;
}

/// An instance spec's pod network.
#[derive(Clone)]
pub struct PodNetworkHook(pub Arc<dyn PodNetwork>);

impl std::fmt::Debug for PodNetworkHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PodNetworkHook")
    }
}

/// The guest's parameter for `link` on its device `iface`.
pub fn boot_param(link: &PodLink, iface: &str) -> String {
    let mut p = format!(" aurae.pod={iface},{}/{}", link.address, link.prefix);
    if let Some(gw) = link.gateway {
        p.push_str(&format!(",{gw}"));
    }
    if let Some(mtu) = link.mtu {
        p.push_str(&format!(",mtu={mtu}"));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_parameter_names_the_device_address_and_gateway() {
        let mut link = PodLink {
            tap: "t".into(),
            address: "10.88.0.5".parse().expect("ip"),
            prefix: 16,
            gateway: Some("10.88.0.1".parse().expect("gw")),
            mac: None,
            mtu: None,
        };
        assert_eq!(
            boot_param(&link, "eth1"),
            " aurae.pod=eth1,10.88.0.5/16,10.88.0.1"
        );
        link.gateway = None;
        assert_eq!(boot_param(&link, "eth1"), " aurae.pod=eth1,10.88.0.5/16");
        link.mtu = Some(1450);
        assert_eq!(
            boot_param(&link, "eth1"),
            " aurae.pod=eth1,10.88.0.5/16,mtu=1450"
        );
    }
}
